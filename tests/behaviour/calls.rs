//! Calls: TURN credentials from `GET /v1/calling/relays`, proven on a real coturn with coturn's own client.
//!
//! coturn runs with the repository's `coturn/turnserver.conf`, plus what a loopback test needs on the
//! command line (a loopback address, a free port, loopback peers allowed for the relay between the two test
//! clients); `turnutils_uclient` allocates relays and sends through them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::both_backends;
use crate::harness::*;

both_backends!(relays_need_a_device_and_are_empty_without_turn);

/// coturn of the test's own, on a free UDP port of loopback.
struct Coturn {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Coturn {
    fn start(secret: &str) -> Coturn {
        for binary in ["turnserver", "turnutils_uclient"] {
            let found = Command::new("sh").args(["-c", &format!("command -v {binary}")]).output().expect("sh");
            assert!(found.status.success(), "{binary} is not installed; install it with: apt-get install -y coturn");
        }
        let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).expect("dir");
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/coturn/turnserver.conf");
        let child = Command::new("turnserver")
            .args(["-c", config])
            .arg(format!("--static-auth-secret={secret}"))
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", &format!("--listening-port={port}")])
            // The two test clients relay to each other on loopback, which the shipped file denies.
            .args(["--allow-loopback-peers", "--allowed-peer-ip=127.0.0.1"])
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!("--pidfile={}", dir.join("turnserver.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        // Owned before the wait, so a turnserver that never answers is still stopped (on drop).
        let coturn = Coturn { child, port, dir };
        // Listening once a STUN binding request gets an answer. Generous: on a loaded 2-core machine,
        // with the whole suite running beside it, coturn has been seen to need more than 10 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stun_answers(port) {
            assert!(Instant::now() < deadline, "turnserver did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        coturn
    }

    /// Runs coturn's client: two clients allocate relays with these credentials and send to each other
    /// (or, with `peer`, to that address). Returns the exit status and the output.
    fn uclient(&self, username: &str, password: &str, peer: Option<&str>) -> (bool, String) {
        let mut command = Command::new("turnutils_uclient");
        command.args(["-p", &self.port.to_string(), "-c", "-n", "2", "-m", "1", "-u", username, "-w", password]);
        match peer {
            Some(peer) => command.args(["-e", peer]),
            None => command.arg("-y"),
        };
        let output = command.arg("127.0.0.1").output().expect("turnutils_uclient");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a STUN binding request on the port gets a binding success answer.
fn stun_answers(port: u16) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    // Binding request, no attributes, magic cookie, a transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&[7u8; 12]);
    if socket.send_to(&request, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut answer = [0u8; 512];
    matches!(socket.recv_from(&mut answer), Ok((n, _)) if n >= 20 && answer[0] == 0x01 && answer[1] == 0x01)
}

/// A send relayed by coturn, both ways, lost nothing.
fn relayed(output: &str) -> bool {
    output.contains("Total lost packets 0 (0.000000%)")
}

/// A refusal of the credentials: coturn answered the allocation with 401 every time.
fn refused(output: &str) -> bool {
    output.contains("Cannot complete Allocation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_work_on_coturn_until_they_expire_and_only_untampered() {
    // The server's keys first: coturn must start with the server's TURN secret, the server with coturn's port.
    let mut config = test_config(Backend::Embedded);
    config.turn_credential_ttl_seconds = 600;
    sealpost::server_keys::generate_missing(&config).expect("keys");
    let keys = sealpost::server_keys::ServerKeys::load(&config).expect("keys");
    let coturn = Coturn::start(std::str::from_utf8(&keys.turn_secret).expect("text secret"));
    let port = coturn.port;
    config.turn_urls = Some(format!("turn:127.0.0.1:{port}?transport=udp, turn:127.0.0.1:{port}?transport=tcp"));
    let server = start_config(config).await;
    let user = server.register().await;

    let body = server.get("/v1/calling/relays", user.bearer()).await.expect(200);
    let relay = &body["relays"][0];
    let urls: Vec<&str> = relay["urls"].as_array().expect("urls").iter().filter_map(|u| u.as_str()).collect();
    assert_eq!(
        urls,
        [
            format!("turn:127.0.0.1:{}?transport=udp", coturn.port),
            format!("turn:127.0.0.1:{}?transport=tcp", coturn.port)
        ]
    );
    assert_eq!(relay["ttl"], 600);
    let username = relay["username"].as_str().expect("username").to_owned();
    let password = relay["password"].as_str().expect("password").to_owned();
    let (expiry, pseudonym) = username.split_once(':').expect("expiry:pseudonym");
    let expiry: i64 = expiry.parse().expect("unix seconds");
    let now = sealpost::domain::now_millis() / 1000;
    assert!((now + 590..=now + 610).contains(&expiry), "expiry {expiry}, now {now}");
    assert!(!pseudonym.contains(&user.aci) && pseudonym.len() >= 16, "an opaque pseudonym: {pseudonym}");
    // The same device gets the same pseudonym; another device another one.
    let again = server.get("/v1/calling/relays", user.bearer()).await.expect(200);
    assert!(again["relays"][0]["username"].as_str().expect("username").ends_with(pseudonym));
    let other = server.register().await;
    let theirs = server.get("/v1/calling/relays", other.bearer()).await.expect(200);
    assert!(!theirs["relays"][0]["username"].as_str().expect("username").ends_with(pseudonym));

    // Valid: coturn allocates, and two clients relay to each other without loss.
    let (ok, output) = coturn.uclient(&username, &password, None);
    assert!(ok && relayed(&output), "valid credentials were not accepted:\n{output}");
    let summary = output.lines().find(|l| l.contains("Total lost packets")).unwrap_or_default();
    eprintln!(
        "valid credentials: allocated and relayed ({})",
        summary.trim_start_matches(|c: char| !c.is_alphabetic())
    );

    // Expired: a correctly signed username whose time is up.
    let expired = format!("{}:{pseudonym}", now - 5);
    let expired_password = sealpost::calls::service::credential(&server.app.keys.turn_secret, &expired);
    let (ok, output) = coturn.uclient(&expired, &expired_password, None);
    assert!(!ok && refused(&output), "expired credentials were accepted:\n{output}");

    // Tampered: a longer life claimed with the old password, or a password changed by one character.
    let extended = format!("{}:{pseudonym}", expiry + 86_400);
    let (ok, output) = coturn.uclient(&extended, &password, None);
    assert!(!ok && refused(&output), "a tampered username was accepted:\n{output}");
    let mut altered = password.clone().into_bytes();
    altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
    let (ok, output) = coturn.uclient(&username, &String::from_utf8(altered).expect("ascii"), None);
    assert!(!ok && refused(&output), "a tampered password was accepted:\n{output}");
    eprintln!("expired and tampered credentials: refused (\"Cannot complete Allocation\")");

    // The shipped configuration keeps relays out of private networks.
    let (ok, output) = coturn.uclient(&username, &password, Some("10.0.0.1"));
    assert!(!ok && output.contains("403 (Forbidden IP)"), "a relay to a private address was allowed:\n{output}");
    server.stop().await;
}

async fn relays_need_a_device_and_are_empty_without_turn(backend: Backend) {
    let server = start_with(backend, |c| c.limit_turn_credentials_per_device = limit("2/1h")).await;
    let user = server.register().await;
    server.get("/v1/calling/relays", Auth::None).await.expect_error(401, "unauthorized");
    server.get("/v1/calling/relays", Auth::AccessKey(&[1u8; 16])).await.expect_error(401, "unauthorized");
    let body = server.get("/v1/calling/relays", user.bearer()).await.expect(200);
    assert_eq!(body["relays"], serde_json::json!([]), "no TURN server configured");
    server.get("/v1/calling/relays", user.bearer()).await.expect(200);
    server.get("/v1/calling/relays", user.bearer()).await.expect_error(429, "rate_limited");
    server.stop().await;
}
