//! Starts the real server on `127.0.0.1:0` against a chosen backend, and talks to it over a real socket.
//!
//! Embedded: a fresh data directory (SQLite file) per test. Scale-out: the Postgres and Redis named by
//! `SEALPOST_TEST_DATABASE_URL` / `SEALPOST_TEST_REDIS_URL` (default: the local ones), with a schema and a
//! key prefix of the test's own, removed again by [`TestServer::stop`].

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fred::prelude::{ClientLike, LuaInterface};
use reqwest::{Method, StatusCode, header::HeaderMap};
use sealpost::config::{Config, ConfigValue, RateLimit};
use sealpost::crypto::xeddsa::KeyPair;
use sealpost::state::App;
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    ScaleOut,
}

pub fn database_url() -> String {
    std::env::var("SEALPOST_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("SEALPOST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The S3-compatible server for scale-out attachments (scripts/test.sh starts moto and sets it), if any.
pub fn s3_endpoint() -> Option<String> {
    std::env::var("SEALPOST_TEST_S3_ENDPOINT").ok().filter(|v| !v.is_empty())
}

pub fn limit(text: &str) -> RateLimit {
    RateLimit::parse_value(text).expect("valid limit")
}

/// A configuration for a test: its own data dir, schema and prefix, limits high enough not to interfere.
pub fn test_config(backend: Backend) -> Config {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Config {
        data_dir: std::env::temp_dir().join(format!("sealpost-test-{id}")),
        listen: "127.0.0.1:0".parse().expect("address"),
        metrics_listen: "127.0.0.1:0".parse().expect("address"),
        limit_registration_per_ip: limit("100000/1m"),
        limit_auth_per_ip: limit("100000/1m"),
        limit_prekey_fetch_per_requester: limit("100000/1m"),
        limit_prekey_fetch_per_requester_target: limit("100000/1m"),
        shutdown_grace_seconds: 2,
        ..Config::default()
    };
    if backend == Backend::ScaleOut {
        config.database_url = Some(database_url());
        config.database_schema = Some(format!("t_{id}"));
        config.redis_url = Some(redis_url());
        config.redis_key_prefix = format!("t_{id}:");
        config.database_max_connections = 8;
        if let Some(endpoint) = s3_endpoint() {
            config.s3_endpoint = Some(endpoint);
            config.s3_bucket = Some("sealpost-test".into());
            config.s3_prefix = Some(format!("t_{id}"));
            config.s3_access_key_id = Some("test".into());
            config.s3_secret_access_key = Some("test".into());
        }
    }
    config
}

pub struct TestServer {
    pub base: String,
    pub metrics_base: String,
    pub app: Arc<App>,
    pub http: reqwest::Client,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    secrets: std::sync::Mutex<Vec<String>>,
}

pub async fn start(backend: Backend) -> TestServer {
    start_with(backend, |_| {}).await
}

pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = test_config(backend);
    tweak(&mut config);
    start_config(config).await
}

pub async fn start_config(config: Config) -> TestServer {
    logs::install();
    let app = match sealpost::build_app(config.clone()).await {
        Ok(app) => app,
        Err(err) => panic!(
            "cannot start sealpost ({err}); for scale-out tests Postgres and Redis must be reachable at \
             SEALPOST_TEST_DATABASE_URL / SEALPOST_TEST_REDIS_URL (scripts/test.sh starts throwaway ones)"
        ),
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind api");
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen).await.expect("bind metrics");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let metrics_base = format!("http://{}", metrics_listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sealpost::serve(app.clone(), listener, metrics_listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    TestServer {
        base,
        metrics_base,
        app,
        http,
        config,
        stop: Some(stop),
        task: Some(task),
        secrets: Default::default(),
    }
}

/// A response as the tests look at it.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body {}", self.body);
        self.body
    }

    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body {}", self.body);
        assert_eq!(self.code(), code, "unexpected error code; body {}", self.body);
        assert!(self.body["message"].is_string(), "error body lacks a message: {}", self.body);
    }
}

pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    AccessKey(&'a [u8; 16]),
    Header(&'a str, &'a str),
}

impl TestServer {
    pub async fn call(&self, method: Method, path: &str, auth: Auth<'_>, body: Option<Value>) -> Reply {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        request = match auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::AccessKey(key) => request.header("Unidentified-Access-Key", STANDARD.encode(key)),
            Auth::Header(name, value) => request.header(name, value),
        };
        if let Some(body) = body {
            self.remember_secrets(&body);
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
        };
        self.remember_secrets(&body);
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str, auth: Auth<'_>) -> Reply {
        self.call(Method::GET, path, auth, None).await
    }

    pub async fn post(&self, path: &str, auth: Auth<'_>, body: Value) -> Reply {
        self.call(Method::POST, path, auth, Some(body)).await
    }

    pub async fn put(&self, path: &str, auth: Auth<'_>, body: Value) -> Reply {
        self.call(Method::PUT, path, auth, Some(body)).await
    }

    pub async fn delete(&self, path: &str, auth: Auth<'_>) -> Reply {
        self.call(Method::DELETE, path, auth, None).await
    }

    /// Sends raw bytes with a content type, for malformed-input tests.
    pub async fn raw(&self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let response = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    /// Registers a new account with a fresh identity and returns it with a token.
    pub async fn register(&self) -> User {
        let identity = KeyPair::generate();
        let secret: [u8; 32] = sealpost::crypto::random_bytes();
        let registration_id = 1 + (u16::from_be_bytes(sealpost::crypto::random_bytes()) % 16380);
        let body = self
            .post(
                "/v1/accounts",
                Auth::None,
                json!({
                    "identityKey": STANDARD.encode(identity.public_serialized()),
                    "registrationId": registration_id,
                    "deviceSecret": STANDARD.encode(secret),
                }),
            )
            .await
            .expect(201);
        let aci = body["aci"].as_str().expect("aci").to_owned();
        assert_eq!(body["deviceId"], 1);
        let mut user =
            User { aci, device_id: 1, secret: secret.to_vec(), identity, registration_id, token: String::new() };
        user.token = self.token(&user).await;
        user
    }

    pub async fn token(&self, user: &User) -> String {
        let body = self.token_reply(&user.aci, user.device_id, &user.secret).await.expect(200);
        assert!(body["expiresIn"].as_u64().is_some_and(|s| s > 0));
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn token_reply(&self, aci: &str, device: u32, secret: &[u8]) -> Reply {
        let basic = STANDARD.encode(format!("{aci}.{device}:{}", STANDARD.encode(secret)));
        let header = format!("Basic {basic}");
        self.call(Method::POST, "/v1/auth/token", Auth::Header("authorization", &header), None).await
    }

    /// Adds a device to the user's account straight through storage (the linking flow is tested apart).
    pub async fn add_device(&self, user: &User, registration_id: u16) -> User {
        let slots = sealpost::accounts::link::device_slots(&self.config, sealpost::domain::now_millis());
        self.add_device_reusing_ids_after(user, registration_id, slots.reuse_after).await
    }

    /// As [`Self::add_device`], but an id given up after `reuse_after` (ms) may be handed out again: with
    /// `now`, a removed device's id goes at once to the next device.
    pub async fn add_device_reusing_ids_after(&self, user: &User, registration_id: u16, reuse_after: i64) -> User {
        let secret: [u8; 32] = sealpost::crypto::random_bytes();
        let salt = sealpost::crypto::new_salt();
        let device = sealpost::storage::NewDevice {
            registration_id: sealpost::domain::RegistrationId(registration_id),
            incarnation: sealpost::domain::Incarnation::random(),
            secret_salt: salt,
            secret_hash: sealpost::crypto::hash_secret(&salt, &secret),
            name: None,
            created_at: sealpost::domain::now_millis(),
        };
        let aci = sealpost::domain::Aci::parse(&user.aci).expect("aci");
        let id = self
            .app
            .storage
            .accounts
            .add_device(
                aci,
                &device,
                &sealpost::domain::DeviceSlots { max_devices: self.config.max_devices, reuse_after },
            )
            .await
            .expect("storage")
            .expect("device added");
        // Writes that bypass the API must tell the account cache, as the API's own writes do.
        self.app.directory.invalidate(aci).await.expect("invalidate");
        let mut linked = User {
            aci: user.aci.clone(),
            device_id: id.0,
            secret: secret.to_vec(),
            identity: user.identity.clone(),
            registration_id,
            token: String::new(),
        };
        linked.token = self.token(&linked).await;
        linked
    }

    /// Notes every identifier, token, key and content a request or response carried, so [`Self::stop`]
    /// can check that none of them reached the logs.
    fn remember_secrets(&self, value: &Value) {
        const FIELDS: [&str; 13] = [
            "aci",
            "guid",
            "token",
            "content",
            "identityKey",
            "deviceSecret",
            "unidentifiedAccessKey",
            "body",
            "id",
            "uploadCredential",
            "endpoint",
            "p256dh",
            "auth",
        ];
        let mut found = Vec::new();
        collect(value, &FIELDS, &mut found);
        self.secrets.lock().expect("lock").extend(found.into_iter().filter(|s| s.len() >= 8));

        fn collect(value: &Value, fields: &[&str], out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (key, inner) in map {
                        match inner {
                            Value::String(s) if fields.contains(&key.as_str()) => out.push(s.clone()),
                            other => collect(other, fields, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|item| collect(item, fields, out)),
                _ => {}
            }
        }
    }

    /// Stops the server and removes the test's schema, keys and data directory.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
        if let Some(schema) = &self.config.database_schema {
            drop_schema(schema).await;
        }
        if self.config.redis_url.is_some() {
            delete_prefix(&self.config.redis_key_prefix).await;
        }
        let _ = std::fs::remove_dir_all(&self.config.data_dir);
        let logs = logs::captured();
        // This server's own request lines (the buffer is shared by every server of the test binary).
        let mine = format!("instance={}", self.app.instance);
        assert!(
            logs.lines().any(|line| line.contains(&mine) && line.contains("request")),
            "this server's request logs were captured"
        );
        for secret in self.secrets.lock().expect("lock").iter() {
            assert!(!logs.contains(secret.as_str()), "the server's logs contain a value a client sent or received");
        }
    }
}

pub async fn drop_schema(schema: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&database_url()).await.expect("postgres for cleanup");
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .expect("drop schema");
}

/// Every node of the test Redis as a plain `redis://` URL: the one server, or each node of a cluster
/// (`redis-cluster://host:port?node=host:port&…`), so a test can look at every key.
pub fn redis_nodes() -> Vec<String> {
    let url = redis_url();
    let Some(rest) = url.strip_prefix("redis-cluster://") else { return vec![url] };
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    std::iter::once(first)
        .chain(query.split('&').filter_map(|pair| pair.strip_prefix("node=")))
        .map(|node| format!("redis://{}", node.trim_end_matches('/')))
        .collect()
}

/// Runs `script` (KEYS ARGV[1] and whatever it does with them) on every node; returns what each returned.
async fn on_every_node<T: fred::types::FromValue>(script: &str, pattern: &str) -> Vec<T> {
    let mut out = Vec::new();
    for node in redis_nodes() {
        let config = fred::prelude::Config::from_url(&node).expect("redis url");
        let client = fred::prelude::Builder::from_config(config).build().expect("redis client");
        client.init().await.expect("redis");
        // Test-only: KEYS is fine on a small test Redis.
        out.push(client.eval(script, Vec::<String>::new(), vec![pattern.to_owned()]).await.expect("script"));
        let _ = client.quit().await;
    }
    out
}

/// Every key matching `pattern`, on every node.
pub async fn redis_keys(pattern: &str) -> Vec<String> {
    on_every_node::<Vec<String>>("return redis.call('KEYS', ARGV[1])", pattern).await.concat()
}

pub async fn delete_prefix(prefix: &str) {
    let script =
        "local keys = redis.call('KEYS', ARGV[1]) for _, k in ipairs(keys) do redis.call('DEL', k) end return #keys";
    on_every_node::<i64>(script, &format!("{prefix}*")).await;
}

/// An answer read off a raw TCP exchange.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Value,
}

/// Sends `request` as raw bytes on a new connection and reads the answer, for requests no HTTP client
/// would send (odd methods, malformed lines, duplicate headers).
pub async fn raw_exchange(base: &str, request: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    // The server may answer and close before reading everything (a too-long head): ignore write errors.
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
            if let Some(reply) = parse_raw(&bytes) {
                return Some(reply);
            }
        }
        parse_raw(&bytes)
    })
    .await;
    read.ok().flatten().unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(&bytes)))
}

fn parse_raw(bytes: &[u8]) -> Option<RawReply> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))?
        .parse()
        .ok()?;
    if body.len() < length {
        return None;
    }
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if length == 0 { Value::Null } else { serde_json::from_str(&body[..length]).unwrap_or(Value::Null) };
    Some(RawReply { status, head: head.to_owned(), body })
}

/// A registered device as a test client holds it.
#[derive(Clone)]
pub struct User {
    pub aci: String,
    pub device_id: u32,
    pub secret: Vec<u8>,
    pub identity: KeyPair,
    pub registration_id: u16,
    pub token: String,
}

impl User {
    pub fn bearer(&self) -> Auth<'_> {
        Auth::Bearer(&self.token)
    }
}

/// A fresh EC public key (libsignal form) signed by `identity`.
pub fn signed_ec(identity: &KeyPair, key_id: u32) -> Value {
    let key = KeyPair::generate().public_serialized();
    json!({"keyId": key_id, "publicKey": STANDARD.encode(key), "signature": STANDARD.encode(identity.sign(&key))})
}

pub fn kem_public() -> Vec<u8> {
    let mut key = vec![0x08u8];
    key.extend_from_slice(&sealpost::crypto::random_bytes::<1568>());
    key
}

/// A Kyber-1024-shaped public key signed by `identity` (the server checks form and signature, not the lattice).
pub fn signed_kem(identity: &KeyPair, key_id: u32) -> Value {
    let key = kem_public();
    json!({"keyId": key_id, "publicKey": STANDARD.encode(&key), "signature": STANDARD.encode(identity.sign(&key))})
}

pub fn one_time_ec(key_id: u32) -> Value {
    json!({"keyId": key_id, "publicKey": STANDARD.encode(KeyPair::generate().public_serialized())})
}

/// A full upload: signed prekey 1, last-resort 1, and `n` one-time keys of each kind (ids 1..=n).
pub fn full_upload(identity: &KeyPair, n: u32) -> Value {
    json!({
        "signedPreKey": signed_ec(identity, 1),
        "pqLastResortPreKey": signed_kem(identity, 1),
        "preKeys": (1..=n).map(one_time_ec).collect::<Vec<_>>(),
        "pqPreKeys": (1..=n).map(|id| signed_kem(identity, 1000 + id)).collect::<Vec<_>>(),
    })
}

#[allow(dead_code)]
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("sealpost-test-{}", uuid::Uuid::new_v4().simple()))
}

/// Runs a test body once per backend, each as its own `#[tokio::test]`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::harness::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn scale_out() {
                super::$name($crate::harness::Backend::ScaleOut).await
            }
        }
    )*};
}

/// Every test server in this process logs (at debug level for sealpost) into one buffer; each server's
/// `stop` checks it for the values its test exchanged. `TEST_LOG=1` also prints the logs.
pub mod logs {
    use std::io::Write;
    use std::sync::{Mutex, Once};

    static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    struct Capture;

    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            BUFFER.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            if std::env::var_os("TEST_LOG").is_some() {
                std::io::stderr().write_all(bytes)?;
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("sealpost=debug,info"))
                .with_ansi(false)
                .with_writer(|| Capture)
                .try_init();
        });
    }

    pub fn captured() -> String {
        String::from_utf8_lossy(&BUFFER.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
