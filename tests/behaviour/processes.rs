//! The real binary: start-up of several replicas, the CLI, the embedded default.

use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_sealpost");

/// A running `sealpost serve`, its API address and everything it printed.
pub struct Process {
    pub child: Child,
    pub base: String,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Process {
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }
}

pub async fn spawn_server(envs: &[(&str, String)]) -> Process {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env_clear()
        .env("SEALPOST_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_METRICS_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_LOG_FORMAT", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn sealpost");
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = output.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("lock").push_str(&format!("{line}\n"));
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let sink = output.clone();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("lock").push_str(&format!("{line}\n"));
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("server did not start; output so far: {}", sink.lock().expect("lock")));
    // Keep collecting so the child never blocks on a full pipe.
    let sink = output.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("lock").push_str(&format!("{line}\n"));
        }
    });
    Process { child, base, output }
}

async fn run_cli(args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let (code, text) = run_cli_code(args, envs).await;
    (code == Some(0), text)
}

/// Runs the binary; returns its exit code and everything it printed.
async fn run_cli_code(args: &[&str], envs: &[(&str, String)]) -> (Option<i32>, String) {
    let mut command = Command::new(BIN);
    command.args(args).env_clear();
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().await.expect("run sealpost");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// Unparsable settings exit with 2 and name the variable; stores that stay unreachable are waited for as
/// long as configured, then the process exits with 1 and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_missing_stores_fail_clearly() {
    let dir = temp_dir();
    let base = vec![("SEALPOST_DATA_DIR", dir.display().to_string())];
    for (variable, value) in [
        ("SEALPOST_REDIS_URL", "redis://127.0.0.1:notaport"),
        ("SEALPOST_DATABASE_URL", "postgres://host:port:what/db"),
        ("SEALPOST_STORE_TIMEOUT_MS", "soon"),
    ] {
        let mut envs = base.clone();
        envs.push(("SEALPOST_DATABASE_URL", "postgres://127.0.0.1:1/db".into()));
        envs.push(("SEALPOST_REDIS_URL", "redis://127.0.0.1:1".into()));
        envs.retain(|(k, _)| *k != variable);
        envs.push((variable, value.into()));
        let (code, out) = run_cli_code(&["serve"], &envs).await;
        assert_eq!(code, Some(2), "{variable}={value}: {out}");
        assert!(out.contains(variable), "{out}");
    }
    // Nothing listens on port 1: the server retries for the configured wait, then gives up.
    let mut envs = base.clone();
    envs.push(("SEALPOST_DATABASE_URL", "postgres://postgres@127.0.0.1:1/db".into()));
    envs.push(("SEALPOST_REDIS_URL", "redis://127.0.0.1:1".into()));
    envs.push(("SEALPOST_STORE_STARTUP_WAIT_SECONDS", "2".into()));
    envs.push(("SEALPOST_LISTEN", "127.0.0.1:0".into()));
    envs.push(("SEALPOST_METRICS_LISTEN", "127.0.0.1:0".into()));
    let started = std::time::Instant::now();
    let (code, out) = run_cli_code(&["serve"], &envs).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not reachable yet; retrying") && out.contains("unavailable"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up before the wait was over");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_start_together_and_share_postgres() {
    let dir = temp_dir();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("{schema}:");
    let envs = vec![
        ("SEALPOST_DATA_DIR", dir.display().to_string()),
        ("SEALPOST_DATABASE_URL", database_url()),
        ("SEALPOST_DATABASE_SCHEMA", schema.clone()),
        ("SEALPOST_REDIS_URL", redis_url()),
        ("SEALPOST_REDIS_KEY_PREFIX", prefix.clone()),
    ];
    // Replicas share their keys (one data directory or secret mount), made once.
    let (ok, out) = run_cli(&["keygen"], &envs).await;
    assert!(ok, "{out}");
    assert!(out.contains("trust root public key"), "{out}");

    // Both start at the same moment against an empty schema: the migration lock lets one migrate.
    let (mut a, mut b) = tokio::join!(spawn_server(&envs), spawn_server(&envs));
    let http = reqwest::Client::new();
    let server_a = Remote { base: a.base.clone(), http: http.clone() };
    let server_b = Remote { base: b.base.clone(), http };
    let (aci, secret) = server_a.register().await;
    let token = server_b.token(&aci, &secret).await;
    let devices = server_a.devices(&token).await;
    assert_eq!(devices, 200);
    // The test Redis keeps no append-only file: the server says, loudly, what that costs.
    assert!(a.output().contains("REDIS HAS NO APPEND-ONLY FILE"), "{}", a.output());

    let mut conn = sqlx::PgConnection::connect(&database_url()).await.expect("postgres");
    let stored: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".accounts WHERE aci = $1::uuid"))
        .bind(&aci)
        .fetch_one(&mut conn)
        .await
        .expect("query");
    assert_eq!(stored, 1, "the account is in Postgres");
    let migrations: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".sealpost_migrations"))
        .fetch_one(&mut conn)
        .await
        .expect("query");
    let distinct: i64 =
        sqlx::query_scalar(&format!("SELECT count(DISTINCT version) FROM \"{schema}\".sealpost_migrations"))
            .fetch_one(&mut conn)
            .await
            .expect("query");
    assert_eq!(migrations, distinct, "every migration applied once");
    assert!(migrations >= 2);

    a.child.kill().await.expect("kill");
    b.child.kill().await.expect("kill");
    drop_schema(&schema).await;
    delete_prefix(&prefix).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_needs_no_configuration() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    // No data dir given: the server creates ./data under its working directory.
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .current_dir(&dir)
        .env_clear()
        .env("SEALPOST_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("server started");
    let remote = Remote { base, http: reqwest::Client::new() };
    let (aci, secret) = remote.register().await;
    let token = remote.token(&aci, &secret).await;
    assert_eq!(remote.devices(&token).await, 200);
    assert!(dir.join("data/sealpost.db").exists());
    assert!(dir.join("data/jwt_ed25519.pem").exists());
    child.kill().await.expect("kill");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_migrates_masks_secrets_and_manages_accounts() {
    let dir = temp_dir();
    let envs =
        vec![("SEALPOST_DATA_DIR", dir.display().to_string()), ("SEALPOST_REGISTRATION_POLICY", "invite".to_owned())];
    let (ok, out) = run_cli(&["migrate"], &envs).await;
    assert!(
        ok && out.contains("applied ") && !out.contains("applied 0 "),
        "the first migrate applies the schema: {out}"
    );
    let (ok, out) = run_cli(&["migrate"], &envs).await;
    assert!(ok && out.contains("applied 0 migration(s)"), "{out}");

    let mut with_secret = envs.clone();
    with_secret.push(("SEALPOST_REDIS_URL", "redis://:sup3rsecret@cache:6379".to_owned()));
    with_secret.push(("SEALPOST_DATABASE_URL", "postgres://app:pa55word@db:5432/sealpost".to_owned()));
    let (ok, out) = run_cli(&["config"], &with_secret).await;
    assert!(ok, "{out}");
    assert!(!out.contains("sup3rsecret") && !out.contains("pa55word"), "secrets printed: {out}");
    assert!(
        out.contains("registration_policy = \"invite\"") && out.contains("SEALPOST_REGISTRATION_POLICY, env"),
        "{out}"
    );

    let (ok, out) = run_cli(&["config"], &[("SEALPOST_REGISTRATION_POLICY", "nobody".to_owned())]).await;
    assert!(!ok && out.contains("SEALPOST_REGISTRATION_POLICY"), "{out}");

    // An invite made by the CLI registers exactly one account on a server using the same data dir.
    let (ok, code) = run_cli(&["invite", "create"], &envs).await;
    assert!(ok, "{code}");
    let code = code.trim().to_owned();
    let mut config = test_config(Backend::Embedded);
    config.data_dir = dir.clone();
    config.registration_policy = sealpost::config::RegistrationPolicy::Invite;
    let server = start_config(config).await;
    let body = invite_registration(&code);
    let created = server.post("/v1/accounts", Auth::None, body.clone()).await.expect(201);
    server.post("/v1/accounts", Auth::None, body).await.expect_error(403, "invalid_invite");

    let aci = created["aci"].as_str().expect("aci");
    let (ok, out) = run_cli(&["approve", aci], &envs).await;
    assert!(ok && out.contains("approved"), "{out}");
    let (ok, out) = run_cli(&["approve", &uuid::Uuid::new_v4().to_string()], &envs).await;
    assert!(!ok && out.contains("no such account"), "{out}");
    server.stop().await;
}

fn invite_registration(code: &str) -> serde_json::Value {
    use base64::Engine;
    let key = sealpost::crypto::xeddsa::KeyPair::generate().public_serialized();
    serde_json::json!({
        "identityKey": base64::engine::general_purpose::STANDARD.encode(key),
        "registrationId": 42,
        "deviceSecret": base64::engine::general_purpose::STANDARD.encode([4u8; 32]),
        "inviteCode": code,
    })
}

/// Minimal client for a server in another process.
struct Remote {
    base: String,
    http: reqwest::Client,
}

impl Remote {
    async fn register(&self) -> (String, [u8; 32]) {
        use base64::Engine;
        let secret: [u8; 32] = sealpost::crypto::random_bytes();
        let key = sealpost::crypto::xeddsa::KeyPair::generate().public_serialized();
        let response = self
            .http
            .post(format!("{}/v1/accounts", self.base))
            .json(&serde_json::json!({
                "identityKey": base64::engine::general_purpose::STANDARD.encode(key),
                "registrationId": 7,
                "deviceSecret": base64::engine::general_purpose::STANDARD.encode(secret),
            }))
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        (body["aci"].as_str().expect("aci").to_owned(), secret)
    }

    async fn token(&self, aci: &str, secret: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let response = self
            .http
            .post(format!("{}/v1/auth/token", self.base))
            .header("authorization", format!("Basic {}", b64.encode(format!("{aci}.1:{}", b64.encode(secret)))))
            .send()
            .await
            .expect("token");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    async fn devices(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/v1/devices", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("devices")
            .status()
            .as_u16()
    }
}

pub fn backend_env(backend: Backend, dir: &std::path::Path) -> (Vec<(&'static str, String)>, Option<String>) {
    let mut envs = vec![("SEALPOST_DATA_DIR", dir.display().to_string())];
    let mut schema = None;
    if backend == Backend::ScaleOut {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        envs.push(("SEALPOST_DATABASE_URL", database_url()));
        envs.push(("SEALPOST_DATABASE_SCHEMA", name.clone()));
        envs.push(("SEALPOST_REDIS_URL", redis_url()));
        envs.push(("SEALPOST_REDIS_KEY_PREFIX", format!("{name}:")));
        schema = Some(name);
    }
    (envs, schema)
}

pub async fn cleanup(schema: Option<String>, dir: std::path::PathBuf) {
    if let Some(schema) = schema {
        drop_schema(&schema).await;
        delete_prefix(&format!("{schema}:")).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A registered device of a server in another process, with keys uploaded.
pub struct RemoteUser {
    pub aci: String,
    pub token: String,
    registration_id: u16,
}

/// Registers a device on the server at `base` and uploads its keys, with 2 one-time keys of each kind.
pub async fn remote_user(base: &str) -> RemoteUser {
    remote_user_with(base, 2).await
}

/// Registers a device on the server at `base` and uploads its keys, with `one_time` one-time keys of each kind.
pub async fn remote_user_with(base: &str, one_time: u32) -> RemoteUser {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let http = reqwest::Client::new();
    let identity = sealpost::crypto::xeddsa::KeyPair::generate();
    let secret: [u8; 32] = sealpost::crypto::random_bytes();
    let created: serde_json::Value = http
        .post(format!("{base}/v1/accounts"))
        .json(&serde_json::json!({
            "identityKey": b64.encode(identity.public_serialized()),
            "registrationId": 321,
            "deviceSecret": b64.encode(secret),
        }))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let aci = created["aci"].as_str().expect("aci").to_owned();
    let token: serde_json::Value = http
        .post(format!("{base}/v1/auth/token"))
        .header("authorization", format!("Basic {}", b64.encode(format!("{aci}.1:{}", b64.encode(secret)))))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = token["token"].as_str().expect("token").to_owned();
    let status = http
        .put(format!("{base}/v1/keys"))
        .bearer_auth(&token)
        .json(&full_upload(&identity, one_time))
        .send()
        .await
        .expect("keys")
        .status();
    assert_eq!(status, 204);
    RemoteUser { aci, token, registration_id: 321 }
}

async fn remote_send(base: &str, from: &RemoteUser, to: &RemoteUser, content: &[u8]) -> u16 {
    use base64::Engine;
    reqwest::Client::new()
        .put(format!("{base}/v1/messages/{}", to.aci))
        .bearer_auth(&from.token)
        .json(&serde_json::json!({"messages": [{
            "type": 1, "destinationDeviceId": 1, "destinationRegistrationId": to.registration_id,
            "content": base64::engine::general_purpose::STANDARD.encode(content)}], "timestamp": 1}))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

/// `GET {base}{path}` as `user`, its JSON body.
pub async fn remote_get(base: &str, path: &str, user: &RemoteUser) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json()
        .await
        .expect("json")
}

/// A send answered 200 is on disk (SQLite) or in Redis before the answer: killing the server with SIGKILL
/// right after loses nothing.
async fn accepted_envelopes_survive_a_crash(backend: Backend) {
    let dir = temp_dir();
    let (envs, schema) = backend_env(backend, &dir);
    let mut first = spawn_server(&envs).await;
    let bob = remote_user(&first.base).await;
    let alice = remote_user(&first.base).await;
    for i in 0..20u32 {
        assert_eq!(remote_send(&first.base, &alice, &bob, &i.to_be_bytes()).await, 200);
    }
    first.child.kill().await.expect("SIGKILL");
    let second = spawn_server(&envs).await;
    let pending = remote_get(&second.base, "/v1/messages", &bob).await;
    assert_eq!(pending["messages"].as_array().map(Vec::len), Some(20), "{pending}");
    drop(second);
    cleanup(schema, dir).await;
}

/// Runs a whole exchange with debug logging and checks that the logs name no account, envelope, content,
/// token or client address.
async fn logs_carry_no_identifiers_or_content(backend: Backend) {
    exchange_and_check_logs(backend, "sealpost=debug,info").await;
}

/// At `SEALPOST_LOG=trace` the libraries below sealpost (WebSocket, HTTP, database, Redis) would write
/// whole frames, queries and key names; they are held at `info`, so the same checks hold.
async fn trace_logging_keeps_library_internals_out(backend: Backend) {
    exchange_and_check_logs(backend, "trace").await;
}

async fn exchange_and_check_logs(backend: Backend, filter: &str) {
    use base64::Engine;
    let dir = temp_dir();
    let (mut envs, schema) = backend_env(backend, &dir);
    envs.push(("SEALPOST_LOG", filter.to_owned()));
    let server = spawn_server(&envs).await;
    let bob = remote_user(&server.base).await;
    let alice = remote_user(&server.base).await;
    let mut socket = crate::socket::Socket::connect(&server.base, &bob.token).await;
    socket.expect_queue_empty().await;
    let content = b"the content must never be logged";
    assert_eq!(remote_send(&server.base, &alice, &bob, content).await, 200);
    let (id, envelope) = socket.envelope().await;
    socket.respond(id, 200).await;
    let status = reqwest::Client::new()
        .get(format!("{}/v1/keys/{}/1", server.base, bob.aci))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("bundle")
        .status();
    assert_eq!(status, 200);
    socket.request(9, "GET", "/v1/keepalive").await;
    let _ = socket.next().await;
    socket.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let output = server.output();
    assert!(output.contains("request"), "debug request logs were written: {output}");
    let guid = uuid::Uuid::from_slice(envelope.server_guid.as_deref().expect("guid")).expect("uuid").to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    // Libraries print bytes as hex: the content, and the acis as the 16 bytes an envelope carries.
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let simple = |aci: &str| uuid::Uuid::parse_str(aci).expect("aci").simple().to_string();
    for (what, needle) in [
        ("bob's aci", bob.aci.clone()),
        ("alice's aci", alice.aci.clone()),
        ("bob's aci as bytes", simple(&bob.aci)),
        ("alice's aci as bytes", simple(&alice.aci)),
        ("envelope guid", guid.clone()),
        ("envelope guid as bytes", simple(&guid)),
        ("content", b64.encode(content)),
        ("content as bytes", hex(content)),
        ("token", bob.token.clone()),
        ("token signature", bob.token.rsplit('.').next().expect("sig").to_owned()),
    ] {
        assert!(!output.contains(&needle), "the logs contain {what}: {output}");
    }
    for line in output.lines().filter(|l| l.contains("127.0.0.1")) {
        assert!(line.contains("listening on") || line.contains("metrics on"), "an address in the logs: {line}");
    }
    drop(server);
    cleanup(schema, dir).await;
}

crate::both_backends!(
    accepted_envelopes_survive_a_crash,
    logs_carry_no_identifiers_or_content,
    trace_logging_keeps_library_internals_out
);
