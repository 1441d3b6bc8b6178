//! Day-two commands through the real binary: a backup taken under write load restores every acknowledged
//! envelope; an embedded deployment moves to scale-out with its accounts, keys and queues; `sealpost stats`
//! counts what the API filled.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealpost::config::Config;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::both_backends;
use crate::harness::*;
use crate::messages::{message, ready_user};
use crate::socket::{Incoming, Socket};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost");

both_backends!(stats_count_what_the_api_filled);

/// The settings a CLI run needs to see the same stores as the test server with `config`.
pub fn cli_envs(config: &Config) -> Vec<(&'static str, String)> {
    let mut envs = vec![("SEALPOST_DATA_DIR", config.data_dir.display().to_string())];
    let optional = [
        ("SEALPOST_DATABASE_URL", config.database_url.clone()),
        ("SEALPOST_DATABASE_SCHEMA", config.database_schema.clone()),
        ("SEALPOST_REDIS_URL", config.redis_url.clone()),
    ];
    envs.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    if config.redis_url.is_some() {
        envs.push(("SEALPOST_REDIS_KEY_PREFIX", config.redis_key_prefix.clone()));
    }
    let s3 = [
        ("SEALPOST_S3_ENDPOINT", &config.s3_endpoint),
        ("SEALPOST_S3_BUCKET", &config.s3_bucket),
        ("SEALPOST_S3_PREFIX", &config.s3_prefix),
        ("SEALPOST_S3_ACCESS_KEY_ID", &config.s3_access_key_id),
        ("SEALPOST_S3_SECRET_ACCESS_KEY", &config.s3_secret_access_key),
    ];
    envs.extend(s3.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
    envs
}

/// Runs the binary; returns whether it succeeded and everything it printed.
pub async fn cli(args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let mut command = Command::new(BIN);
    command.args(args).env_clear().env("SEALPOST_LOG_FORMAT", "text");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().await.expect("run sealpost");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Every envelope queued for `user` (content → times seen), acknowledging each, until the queue is empty.
pub async fn drain(base: &str, user: &User) -> HashMap<Vec<u8>, usize> {
    let mut socket = Socket::connect(base, &user.token).await;
    let mut seen = HashMap::new();
    loop {
        match socket.next_within(Duration::from_secs(20)).await.expect("a frame") {
            Incoming::Envelope(id, envelope, _) => {
                *seen.entry(envelope.content.unwrap_or_default()).or_default() += 1;
                socket.respond(id, 200).await;
            }
            Incoming::QueueEmpty(id) => {
                socket.respond(id, 200).await;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    socket.request(1, "GET", "/v1/keepalive").await;
    assert!(matches!(socket.next().await, Incoming::Response(1, 200)));
    socket.close().await;
    seen
}

/// An envelope's content and when its send was acknowledged.
type Acknowledged = (Vec<u8>, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_every_acknowledged_envelope() {
    let config = test_config(Backend::Embedded);
    let server = start_config(config.clone()).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;

    // A writer sends envelopes one after another and notes when each send was acknowledged.
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (acknowledged, running) = (acknowledged.clone(), running.clone());
        let (http, url, token, bob) =
            (server.http.clone(), format!("{}/v1/messages/{}", server.base, bob.aci), alice.token.clone(), bob.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let content = format!("envelope {i}").into_bytes();
                let body = json!({"messages": [message(&bob, 1, &content)], "timestamp": 1});
                let sent = http.put(&url).bearer_auth(&token).json(&body).send().await.expect("send");
                if sent.status() == 200 {
                    acknowledged.lock().expect("lock").push((content, Instant::now()));
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let dir = temp_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let archive = dir.join("backup.tar");
    let started = Instant::now();
    let (ok, out) = cli(&["backup", archive.to_str().expect("path")], &cli_envs(&config)).await;
    let took = started.elapsed();
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
    let before: Vec<Vec<u8>> =
        acknowledged.lock().expect("lock").iter().filter(|(_, at)| *at < started).map(|(c, _)| c.clone()).collect();
    let total = acknowledged.lock().expect("lock").len();
    assert!(before.len() >= 20, "the load acknowledged only {} envelopes before the backup", before.len());
    assert_eq!(mode(&archive), 0o600, "the archive is private");
    let size = std::fs::metadata(&archive).expect("archive").len();
    eprintln!(
        "backup under load: {size} bytes in {} ms; {} envelopes acknowledged before it began, {total} in all",
        took.as_millis(),
        before.len()
    );
    server.stop().await;

    // Restored into an empty data directory, then refused over a full one unless forced.
    let mut restored = test_config(Backend::Embedded);
    restored.data_dir = dir.join("restored");
    let archive_arg = archive.to_str().expect("path");
    let (ok, out) = cli(&["restore", archive_arg], &cli_envs(&restored)).await;
    assert!(ok, "{out}");
    assert!(out.contains("6 key files"), "{out}");
    let (ok, out) = cli(&["restore", archive_arg], &cli_envs(&restored)).await;
    assert!(!ok && out.contains("already holds data") && out.contains("--force"), "{out}");
    let (ok, out) = cli(&["restore", "--force", archive_arg], &cli_envs(&restored)).await;
    assert!(ok, "{out}");
    for name in ["sealpost.db", "jwt_ed25519.pem", "trust_root.key", "pseudonym.key"] {
        assert_eq!(mode(&restored.data_dir.join(name)), 0o600, "{name} is private");
    }
    // Not an archive of ours: refused, nothing written.
    std::fs::write(dir.join("junk.tar"), b"not an archive").expect("write");
    let mut elsewhere = test_config(Backend::Embedded);
    elsewhere.data_dir = dir.join("other");
    let (ok, out) = cli(&["restore", dir.join("junk.tar").to_str().expect("path")], &cli_envs(&elsewhere)).await;
    assert!(!ok && !out.contains("panicked"), "{out}");
    assert!(!elsewhere.data_dir.join("sealpost.db").exists());

    let server = start_config(restored).await;
    // Tokens signed before the backup still work: the key files came along.
    server.get("/v1/devices", bob.bearer()).await.expect(200);
    server.token(&bob).await;
    let served = drain(&server.base, &bob).await;
    let missing = before.iter().filter(|c| !served.contains_key(*c)).count();
    assert_eq!(missing, 0, "{missing} acknowledged envelopes are missing after the restore");
    assert!(served.values().all(|&n| n == 1), "each envelope once");
    eprintln!("restored server served {} envelopes ({} acknowledged before the backup)", served.len(), before.len());
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn stats_count_what_the_api_filled(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let carol = ready_user(&server).await;
    let laptop = server.add_device(&carol, 77).await;
    for i in 0..5u32 {
        crate::messages::send(&server, &alice, &bob, format!("stats {i}").as_bytes()).await.expect(200);
    }
    server.post("/v1/contact-tokens", alice.bearer(), json!({})).await.expect(201);
    sealpost::accounts::service::create_invite(&server.app.storage, 3600).await.expect("invite");
    let _ = laptop;

    let (ok, out) = cli(&["stats", "--json"], &cli_envs(&server.config)).await;
    assert!(ok, "{out}");
    let json_start = out.find('{').expect("json");
    let stats: Value = serde_json::from_str(&out[json_start..out.rfind('}').expect("json") + 1]).expect("stats json");
    assert_eq!(stats["accounts"], 3, "{stats}");
    assert_eq!(stats["devices"], 4);
    assert_eq!(stats["queued_envelopes"], 5);
    assert_eq!(stats["queues"], 1);
    assert!(stats["oldest_envelope_age_seconds"].as_u64().is_some_and(|s| s < 600), "{stats}");
    // ready_user uploads two of each kind; the linked laptop has none.
    assert_eq!(stats["ec_prekeys"], json!({"min": 0, "median": 2, "max": 2}));
    assert_eq!(stats["kyber_prekeys"], json!({"min": 0, "median": 2, "max": 2}));
    assert_eq!(stats["contact_tokens"], 1);
    assert_eq!(stats["invites"], 1);
    assert_eq!(stats["attachments"], 0);
    assert_eq!(stats["push_subscriptions"], 0);
    for user in [&bob, &alice, &carol] {
        assert!(!out.contains(&user.aci), "stats name no account");
    }
    let (ok, text) = cli(&["stats"], &cli_envs(&server.config)).await;
    assert!(ok && text.contains("accounts 3") && text.contains("ec_prekeys_per_device min 0 median 2 max 2"), "{text}");
    server.stop().await;
}
