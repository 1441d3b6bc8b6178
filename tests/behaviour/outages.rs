//! Scale-out against stores that fail: Redis killed and restarted (alone and as a cluster master), Redis
//! frozen, Postgres stopped. Each test runs its own throwaway store on its own port, so it can kill it.
//!
//! What must hold: requests during an outage fail fast with 503 `unavailable` and `Retry-After`; sealpost
//! recovers by itself once the store is back (no restart); a connected device keeps or regains its socket;
//! every send answered 200 is delivered exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::messages::{message, ready_user};
use crate::socket::{Incoming, Socket};

/// Store calls give up after this long in these tests (the default is 2 s).
const STORE_TIMEOUT_MS: u64 = 1000;
/// A request during an outage must be answered within this: the store timeout and some slack, far below
/// the minutes such requests hung before.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// A free TCP port on loopback; with `cluster`, also its cluster-bus port (+10000) is free. Both lie below
/// the kernel's range of ephemeral ports (32768 and up here), so while a test has its store stopped, no
/// outgoing connection can be given the store's port as its own and keep it from starting again.
fn free_port(cluster: bool) -> u16 {
    use rand::Rng;
    for _ in 0..200 {
        let port: u16 = rand::thread_rng().gen_range(10_000..22_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && (!cluster || free(port + 10_000)) {
            return port;
        }
    }
    panic!("no free port");
}

fn require(binary: &str, install: &str) -> String {
    let found = Command::new("sh").args(["-c", &format!("command -v {binary}")]).output().expect("sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    assert!(!path.is_empty(), "{binary} is not installed; install it with: {install}");
    path
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A redis-server of the test's own, with the append-only file written on every write.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    cluster: bool,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(cluster: bool) -> OwnRedis {
        require("redis-server", "apt-get install -y redis-server");
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).expect("dir");
        let mut redis = OwnRedis { port: free_port(cluster), dir, cluster, child: None };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        }
        self.child = Some(command.spawn().expect("start redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(Instant::now() < deadline, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to write anything more.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether something answers `PING` with `+PONG` on the port.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scale-out server on the shared Postgres (its own schema) and the given Redis URL.
async fn server_on(redis_url: String) -> TestServer {
    start_with(Backend::ScaleOut, |c| {
        c.redis_url = Some(redis_url);
        c.store_timeout_ms = STORE_TIMEOUT_MS;
        c.limit_messages_per_sender_recipient = limit("100000/1m");
    })
    .await
}

/// Sends one numbered message; returns the status and how long the answer took.
async fn send_numbered(server: &TestServer, from: &User, to: &User, n: u32) -> (u16, Duration) {
    let started = Instant::now();
    let reply = server
        .put(
            &format!("/v1/messages/{}", to.aci),
            from.bearer(),
            json!({"messages": [message(to, 1, &n.to_be_bytes())], "timestamp": n}),
        )
        .await;
    if reply.status.as_u16() == 503 {
        reply.expect_error(503, "unavailable");
        assert!(reply.headers.contains_key("retry-after"), "a 503 tells when to retry");
    }
    (reply.status.as_u16(), started.elapsed())
}

/// What a stream of sends to two recipients saw.
#[derive(Default)]
struct Ledger {
    /// Numbers answered 200, per recipient.
    accepted: HashMap<String, Vec<u32>>,
    unavailable: u32,
    slowest_refusal: Duration,
    next: u32,
}

impl Ledger {
    async fn send(&mut self, server: &TestServer, from: &User, to: &User) -> u16 {
        self.next += 1;
        let (status, took) = send_numbered(server, from, to, self.next).await;
        match status {
            200 => self.accepted.entry(to.aci.clone()).or_default().push(self.next),
            503 => {
                self.unavailable += 1;
                self.slowest_refusal = self.slowest_refusal.max(took);
            }
            other => panic!("a send answered {other}: neither success nor 503"),
        }
        status
    }

    /// Sends, alternating recipients, for `span`.
    async fn stream(&mut self, server: &TestServer, from: &User, to: [&User; 2], span: Duration) {
        let until = Instant::now() + span;
        let mut i = 0;
        while Instant::now() < until {
            self.send(server, from, to[i % 2]).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends until one to each recipient succeeds (Redis is back); panics after `limit`.
    async fn until_recovered(&mut self, server: &TestServer, from: &User, to: [&User; 2], limit: Duration) {
        let deadline = Instant::now() + limit;
        for recipient in to {
            while self.send(server, from, recipient).await != 200 {
                assert!(Instant::now() < deadline, "sends still fail {limit:?} after the store came back");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one device received: the number each envelope carried, by the envelope's guid. The same guid may
/// come twice (an acknowledgement lost with a closing socket is redelivered, as it should be); two guids
/// with one number would be one send stored twice.
type Received = HashMap<Vec<u8>, u32>;

/// Reads every envelope a device gets, acknowledging each, until every number in `expected` has come and
/// the socket has been quiet for a while (so duplicates would have shown); a socket closed by the server
/// (1013 while a store is away) is opened again. A socket must keep answering keepalives.
async fn drain(server: &TestServer, user: &User, socket: Option<Socket>, expected: &[u32]) -> Received {
    let mut socket = match socket {
        Some(socket) => socket,
        None => Socket::connect(&server.base, &user.token).await,
    };
    let mut got = Received::new();
    let take = |got: &mut Received, envelope: sealpost::delivery::proto::Envelope| {
        let bytes: [u8; 4] = envelope.content.as_deref().expect("content").try_into().expect("4 bytes");
        got.insert(envelope.server_guid.expect("guid"), u32::from_be_bytes(bytes));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut keepalive = 1_000_000;
    loop {
        assert!(Instant::now() < deadline, "still missing envelopes after 60 s; got {got:?}");
        match socket.next_within(Duration::from_millis(1500)).await {
            Some(Incoming::Envelope(id, envelope, _)) => {
                take(&mut got, envelope);
                socket.try_respond(id, 200).await;
            }
            Some(Incoming::QueueEmpty(id)) => {
                socket.try_respond(id, 200).await;
            }
            Some(Incoming::Closed(code)) => {
                assert!(matches!(code, Some(1013) | None), "closed with {code:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                socket = Socket::connect(&server.base, &user.token).await;
            }
            Some(Incoming::Response(..)) => {}
            None => {
                // Quiet: the socket must still answer, and once everything has come, we are done.
                keepalive += 1;
                socket.request(keepalive, "GET", "/v1/keepalive").await;
                let answered = loop {
                    match socket.next_within(Duration::from_secs(5)).await {
                        Some(Incoming::Response(id, 200)) if id == keepalive => break true,
                        Some(Incoming::Envelope(id, envelope, _)) => {
                            take(&mut got, envelope);
                            socket.try_respond(id, 200).await;
                        }
                        Some(Incoming::QueueEmpty(id)) => {
                            socket.try_respond(id, 200).await;
                        }
                        Some(Incoming::Closed(_)) => break false,
                        Some(Incoming::Response(..)) => {}
                        None => panic!("the socket went silent: a keepalive got no answer"),
                    }
                };
                if !answered {
                    socket = Socket::connect(&server.base, &user.token).await;
                    continue;
                }
                if expected.iter().all(|n| got.values().any(|v| v == n)) {
                    break;
                }
            }
        }
    }
    socket.close().await;
    got
}

/// Every number answered 200 arrived under exactly one guid; anything else that arrived was a send whose
/// answer was lost (503) and arrived under one guid at most.
fn assert_exactly_once(accepted: &[u32], got: &Received, refused_may_appear: bool) {
    let mut guids: HashMap<u32, u32> = HashMap::new();
    for n in got.values() {
        *guids.entry(*n).or_default() += 1;
    }
    for n in accepted {
        assert_eq!(guids.get(n), Some(&1), "envelope {n} answered 200 was stored {:?} times", guids.get(n));
    }
    for (n, count) in &guids {
        assert_eq!(*count, 1, "envelope {n} was stored {count} times");
        assert!(refused_may_appear || accepted.contains(n), "envelope {n} arrived though its send failed");
    }
}

/// The shared part of the Redis outage tests: a stream of sends to an offline and a connected recipient
/// across `outage`, which takes Redis away and brings it back.
async fn sends_survive(server: TestServer, outage: impl AsyncFnOnce(), refused_may_appear: bool) {
    let alice = ready_user(&server).await;
    let bob = ready_user(&server).await; // offline throughout
    let carol = ready_user(&server).await; // connected throughout
    let mut carol_socket = Socket::connect(&server.base, &carol.token).await;
    carol_socket.expect_queue_empty().await;
    let mut ledger = Ledger::default();

    ledger.stream(&server, &alice, [&bob, &carol], Duration::from_millis(600)).await;
    let before = ledger.next;
    let outage_running = async {
        outage().await;
    };
    let sending = ledger.stream(&server, &alice, [&bob, &carol], Duration::from_secs(4));
    tokio::join!(outage_running, sending);
    assert!(ledger.unavailable > 0, "some of the {} sends during the outage failed", ledger.next - before);
    assert!(ledger.slowest_refusal < FAIL_FAST, "a refused send took {:?}", ledger.slowest_refusal);
    let back = Instant::now();
    ledger.until_recovered(&server, &alice, [&bob, &carol], Duration::from_secs(30)).await;
    eprintln!(
        "outage: {} sends, {} answered 503 (slowest {:?}); both recipients reachable again {:?} after the outage ended",
        ledger.next - before,
        ledger.unavailable,
        ledger.slowest_refusal,
        back.elapsed()
    );
    ledger.stream(&server, &alice, [&bob, &carol], Duration::from_millis(400)).await;

    let carol_got = drain(&server, &carol, Some(carol_socket), &ledger.accepted[&carol.aci]).await;
    let bob_got = drain(&server, &bob, None, &ledger.accepted[&bob.aci]).await;
    assert_exactly_once(&ledger.accepted[&carol.aci], &carol_got, refused_may_appear);
    assert_exactly_once(&ledger.accepted[&bob.aci], &bob_got, refused_may_appear);
    eprintln!(
        "delivered: carol {} of {} accepted, bob {} of {} accepted",
        carol_got.len(),
        ledger.accepted[&carol.aci].len(),
        bob_got.len(),
        ledger.accepted[&bob.aci].len()
    );

    // This server saw the outage begin and end (each is logged once, when it is seen).
    let redis = server.app.storage.health.iter().find(|h| h.name() == "redis").expect("redis health");
    assert!(redis.outages() >= 1 && redis.is_up(), "outages {}, up {}", redis.outages(), redis.is_up());
    let logs = logs::captured();
    assert!(logs.contains("store unavailable") && logs.contains("store available again"), "outage logged");
    // No socket or task was left behind by the clients that went away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.app.hub.open_sockets(), 0, "every socket's task ended with its client");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_survives_a_redis_restart() {
    let mut redis = OwnRedis::start(false);
    let server = server_on(redis.url()).await;
    sends_survive(
        server,
        async || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis.launch();
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_survives_a_frozen_redis() {
    let redis = OwnRedis::start(false);
    let server = server_on(redis.url()).await;
    let pid = redis.pid();
    sends_survive(
        server,
        async || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            signal(pid, "STOP");
            tokio::time::sleep(Duration::from_millis(2500)).await;
            signal(pid, "CONT");
        },
        // Commands that timed out still run once Redis thaws: a send answered 503 may arrive (once).
        true,
    )
    .await;
    drop(redis);
}

/// Three masters of the test's own; the one holding the connected recipient's queue is killed and
/// restarted with its cluster configuration and append-only file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_survives_a_cluster_master_restart() {
    require("redis-cli", "apt-get install -y redis-tools");
    let mut nodes: Vec<OwnRedis> = (0..3).map(|_| OwnRedis::start(true)).collect();
    let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = redis_cli(nodes[0].port, &create);
    assert!(out.contains("[OK]"), "cluster create: {out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| redis_cli(n.port, &["cluster", "info"]).contains("cluster_state:ok")) {
        assert!(Instant::now() < deadline, "the cluster did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("redis-cluster://{}?node={}&node={}", addresses[0], addresses[1], addresses[2]);
    let server = server_on(url).await;
    // Kill the master of some slot that queue keys use; which one does not matter for the claim, as
    // every instance and every recipient goes through the cluster's routing.
    let victim = 1;
    let nodes_ref = &mut nodes;
    sends_survive(
        server,
        async move || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            nodes_ref[victim].kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            nodes_ref[victim].launch();
        },
        true,
    )
    .await;
}

/// A Postgres of the test's own, stopped and started again.
struct OwnPostgres {
    dir: PathBuf,
    port: u16,
    pg_ctl: String,
    owner: Option<&'static str>,
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let find = |name: &str| -> String {
            let listed = Command::new("sh")
                .args([
                    "-c",
                    &format!("command -v {name} || ls /usr/lib/postgresql/*/bin/{name} 2>/dev/null | tail -1"),
                ])
                .output()
                .expect("sh");
            let path = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
            assert!(!path.is_empty(), "{name} is not installed; install it with: apt-get install -y postgresql");
            path
        };
        let (initdb, pg_ctl) = (find("initdb"), find("pg_ctl"));
        let dir = temp_dir();
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        // Postgres refuses to run as root.
        let owner = (Command::new("id").arg("-u").output().expect("id").stdout == b"0\n").then_some("postgres");
        if let Some(owner) = owner {
            let status = Command::new("chown").args(["-R", owner]).arg(&dir).status().expect("chown");
            assert!(status.success());
        }
        let postgres = OwnPostgres { dir, port: free_port(false), pg_ctl, owner };
        let data = postgres.dir.join("data").display().to_string();
        let status = postgres
            .as_owner(&initdb)
            .args(["-D", &data, "-U", "postgres", "--auth=trust"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        postgres.ctl("start");
        postgres
    }

    fn as_owner(&self, program: &str) -> Command {
        match self.owner {
            Some(owner) => {
                let mut command = Command::new("runuser");
                command.args(["-u", owner, "--", program]);
                command
            }
            None => Command::new(program),
        }
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.join("data").display().to_string();
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("pg.log").display().to_string();
        let mut command = self.as_owner(&self.pg_ctl);
        command.args(["-D", &data, "-l", &log, "-w", "-o", &options, "-m", "fast", action]);
        let status = command.stdout(Stdio::null()).status().expect("pg_ctl");
        if !status.success() {
            let log = std::fs::read_to_string(self.dir.join("pg.log")).unwrap_or_default();
            panic!("pg_ctl {action} failed; its log ends:\n{}", &log[log.len().saturating_sub(2000)..]);
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ =
            self.as_owner(&self.pg_ctl).args(["-D", &data, "-m", "immediate", "stop"]).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With Postgres stopped, what needs it answers 503 with `Retry-After`, fast; once it is back, everything
/// works again without restarting sealpost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_survives_a_postgres_restart() {
    let postgres = OwnPostgres::start();
    let server = start_with(Backend::ScaleOut, |c| {
        c.database_url = Some(postgres.url());
        c.database_schema = None;
        c.store_timeout_ms = STORE_TIMEOUT_MS;
    })
    .await;
    let user = server.register().await;

    postgres.ctl("stop");
    for _ in 0..3 {
        let started = Instant::now();
        let reply = server.token_reply(&user.aci, 1, &user.secret).await;
        reply.expect_error(503, "unavailable");
        assert!(reply.headers.contains_key("retry-after"));
        assert!(started.elapsed() < FAIL_FAST, "a refused request took {:?}", started.elapsed());
    }
    let key = sealpost::crypto::xeddsa::KeyPair::generate().public_serialized();
    let body = json!({"identityKey": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key),
        "registrationId": 9, "deviceSecret": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [5u8; 32])});
    server.post("/v1/accounts", Auth::None, body).await.expect_error(503, "unavailable");
    let ready = server.get("/readyz", Auth::None).await;
    assert_eq!(ready.status.as_u16(), 503, "{}", ready.body);

    postgres.ctl("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = server.token_reply(&user.aci, 1, &user.secret).await;
        if reply.status.as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still failing after Postgres came back: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.register().await;
    server.get("/readyz", Auth::None).await.expect(200);
    // The schema belongs to the throwaway Postgres; the harness must not try to drop it elsewhere.
    server.stop().await;
}
