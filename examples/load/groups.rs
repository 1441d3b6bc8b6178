//! The group line: one multi-recipient sealed-sender upload to N recipients against N single sealed-sender
//! sends that deliver the same bytes, on the same recipients and sockets.
//!
//! Every recipient is an account with one device, its own unidentified-access key and a socket that
//! acknowledges each envelope. A group send is `PUT /v1/messages/multi_recipient` authorised by the XOR of
//! all recipients' keys; a single send is `PUT /v1/messages/{aci}` with type 6 and that recipient's key. Both
//! deliver `0x22 ‖ key material ‖ shared content` to each device, so the per-device work compared is the
//! same; the cost that differs is the sender's uploads and the server's work per request.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::client::{self, Account, Delivery, Framing, Health, Stamp};
use crate::stats::{CpuProbe, CpuSpan, Percentiles, now_ns, per, percentiles};

const MRM: &str = "application/vnd.signal-messenger.mrm";

/// Sizes of the group line.
pub struct GroupPlan {
    pub recipients: usize,
    pub duration: Duration,
    /// Group uploads in flight at once (each fans out to every recipient).
    pub group_concurrency: usize,
    /// Single sends in flight at once.
    pub single_concurrency: usize,
}

/// One of the two ways of reaching the group.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub label: String,
    /// HTTP requests the sender made.
    pub requests: u64,
    /// Envelopes the recipients' sockets received and acknowledged.
    pub deliveries: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub send_errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Group messages per second: group uploads, or `recipients` single sends counted as one.
    pub group_msgs_per_sec: f64,
    pub deliveries_per_sec: f64,
    /// Send → delivery on the recipient's socket, over every delivery.
    pub latency: Option<Percentiles>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub client_cpu_us_per_delivery: Option<f64>,
    pub services_cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub recipients: usize,
    pub group: ModeResult,
    pub single: ModeResult,
    /// Server CPU per recipient device of a group send ÷ that of single sends.
    pub cpu_per_delivery_ratio: Option<f64>,
}

impl ModeResult {
    pub fn lossless(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.send_errors == 0 && self.deliveries == self.expected
    }
}

struct Recipient {
    account: Account,
    key: [u8; 16],
}

/// Registers the recipients, gives each an access key and a listening socket, runs both modes.
pub async fn measure(
    http: &reqwest::Client,
    base: &str,
    plan: &GroupPlan,
    probe: &CpuProbe,
    services: bool,
    phases: impl Fn() -> u32,
) -> Result<GroupResult, String> {
    let accounts = client::register_many(http, base, plan.recipients, 32).await?;
    let mut recipients = Vec::with_capacity(accounts.len());
    for account in accounts {
        // A device counts as one of its account's devices once it has published its keys.
        client::upload_keys(http, base, &account, 0).await?;
        let key = client::set_access_key(http, base, &account).await?;
        recipients.push(Recipient { account, key });
    }
    let ws_url = format!("{}/v1/websocket", base.replacen("http://", "ws://", 1));
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let health = Arc::new(Health::default());
    let mut receivers = Vec::new();
    for (i, recipient) in recipients.iter().enumerate() {
        let mut socket = client::connect(&ws_url, Some(&recipient.account.token)).await?;
        client::await_queue_empty(&mut socket, Duration::from_secs(10)).await?;
        receivers.push(client::spawn_receiver(
            socket,
            Framing::Share,
            i as u32,
            tx.clone(),
            health.clone(),
            stop_rx.clone(),
        ));
    }
    drop(tx);
    let recipients = Arc::new(recipients);

    let group = run_mode(http, base, plan, &recipients, Mode::Group, phases(), probe, services, &mut rx).await;
    let single = run_mode(http, base, plan, &recipients, Mode::Single, phases(), probe, services, &mut rx).await;
    let _ = stop_tx.send(true);
    for receiver in receivers {
        let _ = receiver.await;
    }
    if let Some(problem) = health.problem() {
        return Err(format!("group recipients: {problem}"));
    }
    let cpu_per_delivery_ratio = match (group.server_cpu_us_per_delivery, single.server_cpu_us_per_delivery) {
        (Some(g), Some(s)) if s > 0.0 => Some(g / s),
        _ => None,
    };
    Ok(GroupResult { recipients: plan.recipients, group, single, cpu_per_delivery_ratio })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Group,
    Single,
}

/// What the senders of one mode counted.
#[derive(Default)]
struct Sent {
    requests: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Sent {
    fn error(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert_with(|| error.chars().take(300).collect());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_mode(
    http: &reqwest::Client,
    base: &str,
    plan: &GroupPlan,
    recipients: &Arc<Vec<Recipient>>,
    mode: Mode,
    phase: u32,
    probe: &CpuProbe,
    services: bool,
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
) -> ModeResult {
    let n = recipients.len() as u64;
    let (label, concurrency) = match mode {
        Mode::Group => (format!("group send to {n}"), plan.group_concurrency),
        Mode::Single => (format!("{n} single sealed sends"), plan.single_concurrency),
    };
    let sent = Arc::new(Sent::default());
    let seq = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + plan.duration;
    let cpu = CpuSpan::start(probe, services);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, base, recipients, sent, seq) =
            (http.clone(), base.to_owned(), recipients.clone(), sent.clone(), seq.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let seq = seq.fetch_add(1, Ordering::Relaxed);
                let stamp = Stamp { pair: 0, phase, seq, sent_ns: now_ns() };
                let shared = client::encode_content(&stamp);
                let result = match mode {
                    Mode::Group => send_group(&http, &base, &recipients, &shared, seq).await,
                    Mode::Single => {
                        let i = (seq % recipients.len() as u64) as usize;
                        send_single(&http, &base, &recipients[i], i as u32, &shared, seq).await
                    }
                };
                sent.requests.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = result {
                    sent.error(err);
                }
            }
        }));
    }
    for worker in workers {
        if let Err(err) = worker.await {
            sent.error(format!("sender task: {err}"));
        }
    }
    let requests = sent.requests.load(Ordering::Relaxed);
    let send_errors = sent.errors.load(Ordering::Relaxed);
    let expected = match mode {
        Mode::Group => (requests - send_errors) * n,
        Mode::Single => requests - send_errors,
    };

    // Every accepted send must arrive exactly once; wait for the stragglers, then stop the clock.
    let mut seen = HashSet::new();
    let (mut duplicates, mut stray) = (0u64, 0u64);
    let mut latencies = Vec::with_capacity(expected as usize);
    let wait_until = tokio::time::Instant::now() + Duration::from_secs(20);
    while (seen.len() as u64) < expected {
        match tokio::time::timeout_at(wait_until, rx.recv()).await {
            Ok(Some(delivery)) => {
                if delivery.phase != phase || delivery.wrong_pair {
                    stray += 1;
                } else if seen.insert((delivery.pair, delivery.seq)) {
                    latencies.push(delivery.latency_ns);
                } else {
                    duplicates += 1;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let used = cpu.stop();
    let deliveries = seen.len() as u64;
    let services_us = match (used.redis_us, used.postgres_us) {
        (Some(r), Some(p)) => per(r + p, deliveries),
        _ => None,
    };
    let group_messages = match mode {
        Mode::Group => requests - send_errors,
        Mode::Single => (requests - send_errors) / n.max(1),
    };
    ModeResult {
        label,
        requests,
        deliveries,
        expected,
        lost: expected.saturating_sub(deliveries),
        duplicates: duplicates + stray,
        send_errors,
        first_error: sent.first_error.lock().ok().and_then(|e| e.clone()),
        seconds,
        group_msgs_per_sec: group_messages as f64 / seconds,
        deliveries_per_sec: deliveries as f64 / seconds,
        latency: percentiles(latencies),
        server_cpu_us_per_delivery: per(used.server_us, deliveries),
        client_cpu_us_per_delivery: per(used.client_us, deliveries),
        services_cpu_us_per_delivery: services_us,
    }
}

/// libsignal's multi-recipient layout (version 0x23): count, then per recipient its ACI, its one device
/// (id and registration id) and 48 bytes of key material, then the shared part.
fn upload(recipients: &[Recipient], shared: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + recipients.len() * 68 + shared.len());
    out.push(0x23);
    let mut count = recipients.len();
    loop {
        let byte = (count & 0x7f) as u8;
        count >>= 7;
        out.push(if count > 0 { byte | 0x80 } else { byte });
        if count == 0 {
            break;
        }
    }
    for (i, recipient) in recipients.iter().enumerate() {
        out.push(0x00);
        let aci = uuid::Uuid::parse_str(&recipient.account.aci).unwrap_or_default();
        out.extend_from_slice(aci.as_bytes());
        out.push(1);
        out.extend_from_slice(&recipient.account.registration_id.to_be_bytes());
        out.extend_from_slice(&client::share_key(i as u32));
    }
    out.extend_from_slice(shared);
    out
}

async fn send_group(
    http: &reqwest::Client,
    base: &str,
    recipients: &[Recipient],
    shared: &[u8],
    seq: u64,
) -> Result<(), String> {
    let mut combined = [0u8; 16];
    for recipient in recipients {
        combined.iter_mut().zip(&recipient.key).for_each(|(c, k)| *c ^= k);
    }
    let response = http
        .put(format!("{base}/v1/messages/multi_recipient?ts={}&urgent=true", seq + 1))
        .header("content-type", MRM)
        .header("unidentified-access-key", B64.encode(combined))
        .body(upload(recipients, shared))
        .send()
        .await
        .map_err(|e| format!("group send: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status != 200 || !body.contains(r#""uuids404":[]"#) {
        return Err(format!("group send: status {status}: {body}"));
    }
    Ok(())
}

async fn send_single(
    http: &reqwest::Client,
    base: &str,
    recipient: &Recipient,
    index: u32,
    shared: &[u8],
    seq: u64,
) -> Result<(), String> {
    let content = B64.encode(client::encode_share(index, shared));
    let body = format!(
        r#"{{"messages":[{{"type":6,"destinationDeviceId":1,"destinationRegistrationId":{},"content":"{content}"}}],"timestamp":{}}}"#,
        recipient.account.registration_id,
        seq + 1
    );
    let response = http
        .put(format!("{base}/v1/messages/{}", recipient.account.aci))
        .header("content-type", "application/json")
        .header("unidentified-access-key", B64.encode(recipient.key))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("single send: {e}"))?;
    let status = response.status();
    if status != 200 {
        return Err(format!("single send: status {status}: {}", response.text().await.unwrap_or_default()));
    }
    Ok(())
}
