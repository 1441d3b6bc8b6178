//! TLS on the API listener of the real binary: handshakes with a test CA, HSTS, plain HTTP and untrusted
//! clients refused, and the certificate swapped on disk reaching new connections without a restart (by the
//! file check, and by SIGHUP), never half: a certificate whose key has not arrived yet is not taken.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::temp_dir;
use crate::pki::{Pair, Pki};
use crate::processes::{Process, spawn_server};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost");

/// A client that trusts only `ca` and reports the peer's certificate. Make a new one for every look at the
/// certificate: a client resumes its earlier TLS session, and a resumed session shows the certificate of
/// the first handshake.
fn client(ca: &Pair) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca.cert).expect("ca")).expect("ca pem");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// The certificate the server presents to a new connection (and the answer, which must be 200).
async fn presented(client: &reqwest::Client, base: &str) -> (Vec<u8>, reqwest::header::HeaderMap) {
    let reply = client.get(format!("{base}/healthz")).send().await.expect("TLS request");
    assert_eq!(reply.status(), 200);
    let info = reply.extensions().get::<reqwest::tls::TlsInfo>().expect("tls info").clone();
    (info.peer_certificate().expect("peer certificate").to_vec(), reply.headers().clone())
}

/// Waits until new connections see `expected`; returns how long that took.
async fn until_presented(ca: &Pair, base: &str, expected: &[u8], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if presented(&client(ca), base).await.0 == expected {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            let seen = presented(&client(ca), base).await.0;
            panic!(
                "the new certificate was not served within {limit:?}; served {} bytes, expected {}",
                seen.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tls_server(live: &Pair, interval: &str) -> (Process, std::path::PathBuf) {
    let data = temp_dir();
    let process = spawn_server(&[
        ("SEALPOST_DATA_DIR", data.display().to_string()),
        ("SEALPOST_TLS_CERT_FILE", live.cert.display().to_string()),
        ("SEALPOST_TLS_KEY_FILE", live.key.display().to_string()),
        ("SEALPOST_TLS_RELOAD_INTERVAL_SECONDS", interval.into()),
    ])
    .await;
    (process, data)
}

fn live_files(pki: &Pki) -> Pair {
    Pair { cert: pki.dir.join("live.pem"), key: pki.dir.join("live.key") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_listener_serves_tls_and_reloads_a_changed_certificate() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (first, second) = (pki.server(&ca, "first"), pki.server(&ca, "second"));
    let live = live_files(&pki);
    first.install(&live);
    let (mut server, data) = tls_server(&live, "1").await;
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);

    let started = Instant::now();
    let (cert, headers) = presented(&client(&ca), &server.base).await;
    eprintln!("first TLS handshake and request: {} ms", started.elapsed().as_millis());
    assert_eq!(cert, first.der());
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    // Plain HTTP to the TLS port, and a client that does not trust the test CA, get nothing.
    let plain = server.base.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err(), "plain HTTP answered on the TLS port");
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    assert!(untrusting.get(format!("{}/healthz", server.base)).send().await.is_err());

    // Half a renewal: the new certificate without its key. Not taken; the old one keeps being served.
    crate::pki::install_file(&second.cert, &live.cert);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(presented(&client(&ca), &server.base).await.0, first.der(), "a certificate without its key was taken");
    assert!(server.output().contains("TLS certificate reload failed"), "{}", server.output());
    // The key arrives: new connections get the new certificate.
    crate::pki::install_file(&second.key, &live.key);
    let took = until_presented(&ca, &server.base, &second.der(), Duration::from_secs(10)).await;
    eprintln!("certificate change on disk seen by new connections after {} ms (check every 1 s)", took.as_millis());
    assert!(server.output().contains("TLS certificate reloaded"), "{}", server.output());

    // The container health check speaks TLS to the listener too; with nothing listening it fails.
    let listen = server.base.trim_start_matches("https://").to_owned();
    for (address, healthy) in [(listen.as_str(), true), ("127.0.0.1:1", false)] {
        let status = tokio::process::Command::new(BIN)
            .arg("healthcheck")
            .env_clear()
            .env("SEALPOST_LISTEN", address)
            .env("SEALPOST_TLS_CERT_FILE", &live.cert)
            .env("SEALPOST_TLS_KEY_FILE", &live.key)
            .output()
            .await
            .expect("healthcheck");
        assert_eq!(status.status.success(), healthy, "healthcheck on {address}: {status:?}");
    }

    server.child.kill().await.expect("kill");
    let _ = std::fs::remove_dir_all(data);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (first, second) = (pki.server(&ca, "first"), pki.server(&ca, "second"));
    let live = live_files(&pki);
    first.install(&live);
    // No periodic check: only the signal reloads.
    let (mut server, data) = tls_server(&live, "0").await;
    assert_eq!(presented(&client(&ca), &server.base).await.0, first.der());
    second.install(&live);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(presented(&client(&ca), &server.base).await.0, first.der(), "reloaded without being asked");

    let pid = server.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
    assert!(status.success());
    let took = until_presented(&ca, &server.base, &second.der(), Duration::from_secs(10)).await;
    eprintln!("certificate reloaded {} ms after SIGHUP", took.as_millis());
    // The server is still there (SIGHUP does not stop it) and still serves.
    assert!(server.child.try_wait().expect("wait").is_none(), "SIGHUP stopped the server");
    server.child.kill().await.expect("kill");
    let _ = std::fs::remove_dir_all(data);
}

/// A key that does not belong to the certificate stops the start with a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_key_stops_the_start() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (first, second) = (pki.server(&ca, "first"), pki.server(&ca, "second"));
    let data = temp_dir();
    let output = tokio::process::Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("SEALPOST_DATA_DIR", &data)
        .env("SEALPOST_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_METRICS_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_TLS_CERT_FILE", &first.cert)
        .env("SEALPOST_TLS_KEY_FILE", &second.key)
        .output()
        .await
        .expect("run");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("SEALPOST_TLS_KEY_FILE") && text.contains("does not fit"), "{text}");
    assert!(!text.contains("listening on"), "{text}");
    let _ = std::fs::remove_dir_all(Path::new(&data));
}
