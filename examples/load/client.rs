//! The client side: accounts with real keys over HTTP, the envelope body the senders PUT, and the
//! WebSocket receivers that acknowledge every delivery and report it with its latency.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use sealpost::crypto::xeddsa::KeyPair;
use sealpost::delivery::proto::{Envelope, WebSocketMessage, ws_type};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stats::now_ns;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A registered device as the load generator holds it.
#[derive(Clone)]
pub struct Account {
    pub aci: String,
    pub token: String,
    pub registration_id: u16,
    pub identity: KeyPair,
}

async fn expect(response: reqwest::Response, status: u16, what: &str) -> Result<Vec<u8>, String> {
    let got = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if got != status {
        return Err(format!("{what}: status {got} (expected {status}): {}", String::from_utf8_lossy(&body)));
    }
    Ok(body.to_vec())
}

fn field(body: &[u8], name: &str, what: &str) -> Result<String, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("{what}: {e}"))?;
    value[name].as_str().map(str::to_owned).ok_or_else(|| format!("{what}: no {name} in {value}"))
}

/// `POST /v1/accounts` with a fresh identity key, then `POST /v1/auth/token`.
pub async fn register(http: &reqwest::Client, base: &str) -> Result<Account, String> {
    let identity = KeyPair::generate();
    let secret: [u8; 32] = sealpost::crypto::random_bytes();
    let registration_id = 1 + (u16::from_be_bytes(sealpost::crypto::random_bytes()) % 16380);
    let body = json!({
        "identityKey": B64.encode(identity.public_serialized()),
        "registrationId": registration_id,
        "deviceSecret": B64.encode(secret),
    });
    let response =
        http.post(format!("{base}/v1/accounts")).json(&body).send().await.map_err(|e| format!("register: {e}"))?;
    let aci = field(&expect(response, 201, "register").await?, "aci", "register")?;
    let token = login(http, base, &aci, 1, &secret).await?;
    Ok(Account { aci, token, registration_id, identity })
}

/// `POST /v1/auth/token` with the device's secret: its access token.
async fn login(http: &reqwest::Client, base: &str, aci: &str, device: u32, secret: &[u8]) -> Result<String, String> {
    let basic = B64.encode(format!("{aci}.{device}:{}", B64.encode(secret)));
    let response = http
        .post(format!("{base}/v1/auth/token"))
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .map_err(|e| format!("token: {e}"))?;
    field(&expect(response, 200, "token").await?, "token", "token")
}

/// Registers `n` accounts, `concurrency` at a time.
pub async fn register_many(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<Account>, String> {
    register_fleet(http, base, n, concurrency, false).await
}

/// As [`register_many`], each account then uploading its signed prekey and last-resort Kyber key, as every
/// client does at registration.
pub async fn register_many_with_keys(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<Account>, String> {
    register_fleet(http, base, n, concurrency, true).await
}

async fn register_fleet(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    concurrency: usize,
    with_keys: bool,
) -> Result<Vec<Account>, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(n).max(1) {
        let (http, base, next) = (http.clone(), base.to_owned(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let account = register(&http, &base).await?;
                if with_keys {
                    upload_keys(&http, &base, &account, 0).await?;
                }
                mine.push(account);
            }
            Ok::<_, String>(mine)
        }));
    }
    let mut accounts = Vec::with_capacity(n);
    for worker in workers {
        accounts.extend(worker.await.map_err(|e| format!("register task: {e}"))??);
    }
    Ok(accounts)
}

fn signed_ec(identity: &KeyPair, key_id: u32) -> Value {
    let key = KeyPair::generate().public_serialized();
    json!({"keyId": key_id, "publicKey": B64.encode(key), "signature": B64.encode(identity.sign(&key))})
}

/// A Kyber-1024-shaped public key (type byte and 1568 random bytes) signed by `identity`: the server checks
/// form and signature, not the lattice.
fn signed_kem(identity: &KeyPair, key_id: u32) -> Value {
    let mut key = vec![0x08u8];
    key.extend_from_slice(&sealpost::crypto::random_bytes::<1568>());
    json!({"keyId": key_id, "publicKey": B64.encode(&key), "signature": B64.encode(identity.sign(&key))})
}

/// Id of the last-resort Kyber key; one-time Kyber keys get ids from 1001 on.
pub const LAST_RESORT_KEY_ID: u64 = 1;

/// `PUT /v1/keys`: signed prekey, last-resort key and `one_time` one-time keys of each kind.
pub async fn upload_keys(http: &reqwest::Client, base: &str, account: &Account, one_time: u32) -> Result<(), String> {
    let identity = &account.identity;
    let mut body = json!({
        "signedPreKey": signed_ec(identity, 1),
        "pqLastResortPreKey": signed_kem(identity, LAST_RESORT_KEY_ID as u32),
    });
    if one_time > 0 {
        body["preKeys"] = (1..=one_time)
            .map(|id| json!({"keyId": id, "publicKey": B64.encode(KeyPair::generate().public_serialized())}))
            .collect();
        body["pqPreKeys"] = (1..=one_time).map(|id| signed_kem(identity, 1000 + id)).collect();
    }
    let response = http
        .put(format!("{base}/v1/keys"))
        .bearer_auth(&account.token)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("key upload: {e}"))?;
    expect(response, 204, "key upload").await.map(drop)
}

/// Links a new device to `primary`'s account the way a client does (link code from the primary, then
/// `PUT /v1/devices/link` with keys signed by the account's identity key) and logs it in. The returned
/// account is that device: same aci, its own token and registration id.
pub async fn link_device(http: &reqwest::Client, base: &str, primary: &Account) -> Result<(Account, u32), String> {
    let response = http
        .get(format!("{base}/v1/devices/provisioning/code"))
        .bearer_auth(&primary.token)
        .send()
        .await
        .map_err(|e| format!("link code: {e}"))?;
    let code = field(&expect(response, 200, "link code").await?, "verificationCode", "link code")?;
    let secret: [u8; 32] = sealpost::crypto::random_bytes();
    let registration_id = 1 + (u16::from_be_bytes(sealpost::crypto::random_bytes()) % 16380);
    let body = json!({
        "verificationCode": code,
        "deviceSecret": B64.encode(secret),
        "registrationId": registration_id,
        "signedPreKey": signed_ec(&primary.identity, 1),
        "pqLastResortPreKey": signed_kem(&primary.identity, LAST_RESORT_KEY_ID as u32),
    });
    let response =
        http.put(format!("{base}/v1/devices/link")).json(&body).send().await.map_err(|e| format!("link: {e}"))?;
    let linked: Value = serde_json::from_slice(&expect(response, 200, "link").await?).map_err(|e| e.to_string())?;
    let device_id = linked["deviceId"].as_u64().ok_or("link: no deviceId")? as u32;
    let token = login(http, base, &primary.aci, device_id, &secret).await?;
    let device = Account { aci: primary.aci.clone(), token, registration_id, identity: primary.identity.clone() };
    Ok((device, device_id))
}

/// Gives `account` a random unidentified-access key (`PUT /v1/accounts/me/attributes`) and returns it.
pub async fn set_access_key(http: &reqwest::Client, base: &str, account: &Account) -> Result<[u8; 16], String> {
    let key: [u8; 16] = sealpost::crypto::random_bytes();
    let response = http
        .put(format!("{base}/v1/accounts/me/attributes"))
        .bearer_auth(&account.token)
        .json(&json!({"unidentifiedAccessKey": B64.encode(key)}))
        .send()
        .await
        .map_err(|e| format!("attributes: {e}"))?;
    expect(response, 204, "attributes").await?;
    Ok(key)
}

/// Opens a WebSocket (Nagle off on our side; small buffers so thousands of idle sockets stay cheap here).
pub async fn connect(url: &str, bearer: Option<&str>) -> Result<Ws, String> {
    connect_from(url, bearer, None).await
}

/// [`connect`] from a chosen local address: one address has only the ephemeral port range (about 28,000
/// ports here) to connect from, so very many sockets to one server need several (`127.0.0.x` on loopback).
pub async fn connect_from(url: &str, bearer: Option<&str>, source: Option<IpAddr>) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| format!("websocket request: {e}"))?;
    if let Some(token) = bearer {
        let value = format!("Bearer {token}").parse().map_err(|_| "token is not a header value".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
    let Some(source) = source else {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|e| format!("websocket {url}: {e}"))?;
        return Ok(ws);
    };
    let uri = request.uri();
    let target: SocketAddr = format!("{}:{}", uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(80))
        .parse()
        .map_err(|e| format!("websocket {url}: not an address: {e}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(target).await.map_err(|e| format!("connect from {source}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config))
        .await
        .map_err(|e| format!("websocket {url}: {e}"))?;
    Ok(ws)
}

fn response_frame(id: u64, status: u32) -> Message {
    Message::Binary(WebSocketMessage::response(id, status, "OK").encode_to_vec().into())
}

/// Reads until the server's `PUT /api/v1/queue/empty` and acknowledges it: the socket is then registered
/// and its (empty) backlog drained.
pub async fn await_queue_empty(ws: &mut Ws, wait: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "no queue/empty from the server in time".to_string())?;
        match frame {
            Some(Ok(Message::Binary(bytes))) => {
                let message = WebSocketMessage::decode(bytes.as_ref()).map_err(|e| format!("bad frame: {e}"))?;
                let Some(request) = message.request else { continue };
                let id = request.id.unwrap_or(0);
                match request.path.as_deref() {
                    Some("/api/v1/queue/empty") => {
                        ws.send(response_frame(id, 200)).await.map_err(|e| format!("ack: {e}"))?;
                        return Ok(());
                    }
                    other => return Err(format!("unexpected request {other:?} before queue/empty")),
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("socket closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("socket error: {e}")),
            None => return Err("socket closed".into()),
        }
    }
}

// ---- the envelope content --------------------------------------------------------------------------

/// Size of every envelope's content.
pub const CONTENT_BYTES: usize = 512;
const MAGIC: u32 = 0x5EA1_B0DE;
const HEADER_BYTES: usize = 28;

/// What a sender writes into the first bytes of a content, so that the receiver can check and time it.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub pair: u32,
    pub phase: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

fn filler() -> &'static [u8] {
    static FILLER: OnceLock<Vec<u8>> = OnceLock::new();
    FILLER.get_or_init(|| sealpost::crypto::random_bytes::<CONTENT_BYTES>().to_vec())
}

pub fn encode_content(stamp: &Stamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTENT_BYTES);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&stamp.pair.to_be_bytes());
    out.extend_from_slice(&stamp.phase.to_be_bytes());
    out.extend_from_slice(&stamp.seq.to_be_bytes());
    out.extend_from_slice(&stamp.sent_ns.to_be_bytes());
    out.extend_from_slice(&filler()[HEADER_BYTES..]);
    out
}

pub fn decode_content(bytes: &[u8]) -> Option<Stamp> {
    if bytes.len() != CONTENT_BYTES || bytes[..4] != MAGIC.to_be_bytes() {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Some(Stamp { pair: u32_at(4), phase: u32_at(8), seq: u64_at(12), sent_ns: u64_at(20) })
}

/// Bytes of the per-recipient part of a multi-recipient share: the version byte and 48 bytes of key material.
pub const SHARE_HEADER_BYTES: usize = 49;

/// What a recipient device of a group send receives: `0x22`, its 48 bytes of key material (here: its index
/// and zeros), then the shared content.
pub fn encode_share(recipient: u32, shared: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SHARE_HEADER_BYTES + shared.len());
    out.push(0x22);
    out.extend_from_slice(&share_key(recipient));
    out.extend_from_slice(shared);
    out
}

/// The 48 bytes of key material a group send gives `recipient`.
pub fn share_key(recipient: u32) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..4].copy_from_slice(&recipient.to_be_bytes());
    key
}

/// A share's stamp, with the pair taken from the key material (the shared part is the same for everyone).
fn decode_share(bytes: &[u8]) -> Option<Stamp> {
    if bytes.len() <= SHARE_HEADER_BYTES || bytes[0] != 0x22 {
        return None;
    }
    let stamp = decode_content(&bytes[SHARE_HEADER_BYTES..])?;
    let pair = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
    Some(Stamp { pair, ..stamp })
}

/// The JSON of `PUT /v1/messages/{aci}`: one envelope of type `kind` (1 ciphertext, 6 sealed sender) for
/// device 1.
pub fn send_body(stamp: &Stamp, registration_id: u16, kind: u8) -> String {
    let content = B64.encode(encode_content(stamp));
    format!(
        r#"{{"messages":[{{"type":{kind},"destinationDeviceId":1,"destinationRegistrationId":{registration_id},"content":"{content}"}}],"timestamp":{}}}"#,
        stamp.seq + 1
    )
}

/// The content of a send body as the relay floor forwards it verbatim.
fn content_of_body(body: &[u8]) -> Option<Vec<u8>> {
    const KEY: &[u8] = br#""content":""#;
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    B64.decode(&body[start..start + len]).ok()
}

// ---- receivers ---------------------------------------------------------------------------------------

/// What a receiver's frames carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// sealpost: the request body is an `Envelope`.
    Sealpost,
    /// The relay floor: the request body is the sender's JSON, forwarded as it came.
    Floor,
    /// sealpost carrying a multi-recipient share (see `groups.rs`): the pair is in the key material.
    Share,
}

/// One envelope received (and acknowledged) on a socket.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The receiver's own pair (or recipient) number.
    pub pair: u32,
    pub phase: u32,
    pub seq: u64,
    pub latency_ns: u64,
    /// The stamp named another pair: a misdelivery.
    pub wrong_pair: bool,
}

/// Things that go wrong on a receiver, for the loss check.
#[derive(Debug, Default)]
pub struct Health {
    /// The socket ended while we still wanted it.
    pub closed: AtomicBool,
    pub close_reason: Mutex<Option<String>>,
    /// Frames we could not read or contents that were not ours.
    pub bad_frames: AtomicU64,
    pub queue_empty: AtomicU64,
}

impl Health {
    pub fn problem(&self) -> Option<String> {
        if self.closed.load(Ordering::Relaxed) {
            let reason = self.close_reason.lock().ok().and_then(|r| r.clone()).unwrap_or_default();
            return Some(format!("socket closed by the server: {reason}"));
        }
        let bad = self.bad_frames.load(Ordering::Relaxed);
        (bad > 0).then(|| format!("{bad} unreadable frames"))
    }
}

/// Reads the socket until `stop`: acknowledges each envelope with a 200 RESPONSE (and `queue/empty` too) and
/// reports it, with its latency from the sender's stamp to its arrival here.
pub fn spawn_receiver(
    ws: Ws,
    framing: Framing,
    pair: u32,
    deliveries: mpsc::UnboundedSender<Delivery>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let ended = |reason: String| {
            health.closed.store(true, Ordering::Relaxed);
            if let Ok(mut slot) = health.close_reason.lock() {
                *slot = Some(reason);
            }
        };
        loop {
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(Message::Binary(bytes))) => {
                        let arrived = now_ns();
                        let Ok(message) = WebSocketMessage::decode(bytes.as_ref()) else {
                            health.bad_frames.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if message.r#type != Some(ws_type::REQUEST) {
                            continue;
                        }
                        let Some(request) = message.request else { continue };
                        let id = request.id.unwrap_or(0);
                        let stamp = match request.path.as_deref() {
                            Some("/api/v1/message") => {
                                let body = request.body.unwrap_or_default();
                                let content = match framing {
                                    Framing::Sealpost | Framing::Share => {
                                        Envelope::decode(body.as_slice()).ok().and_then(|e| e.content)
                                    }
                                    Framing::Floor => content_of_body(&body),
                                };
                                let decode = if framing == Framing::Share { decode_share } else { decode_content };
                                Some(content.as_deref().and_then(decode))
                            }
                            Some("/api/v1/queue/empty") => {
                                health.queue_empty.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                            _ => {
                                health.bad_frames.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                        };
                        if let Err(err) = sink.send(response_frame(id, 200)).await {
                            ended(format!("ack failed: {err}"));
                            break;
                        }
                        match stamp {
                            Some(Some(stamp)) => {
                                let _ = deliveries.send(Delivery {
                                    pair,
                                    phase: stamp.phase,
                                    seq: stamp.seq,
                                    latency_ns: arrived.saturating_sub(stamp.sent_ns),
                                    wrong_pair: stamp.pair != pair,
                                });
                            }
                            Some(None) => {
                                health.bad_frames.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {}
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if !*stop.borrow() {
                            ended(format!("close frame {frame:?}"));
                        }
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        if !*stop.borrow() {
                            ended(format!("socket error {err}"));
                        }
                        break;
                    }
                    None => {
                        if !*stop.borrow() {
                            ended("socket ended".into());
                        }
                        break;
                    }
                },
                _ = stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
                    break;
                }
            }
        }
    })
}
