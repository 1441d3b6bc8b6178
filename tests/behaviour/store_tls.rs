//! TLS to the stores: a scale-out server talks to a Postgres that accepts only TLS (`hostssl`, a test CA's
//! certificate) and to a Redis that has no plain port at all (`--port 0 --tls-port …`), and a message goes
//! through both. A store whose certificate the configured CA did not sign is refused, saying why.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Connection;

use crate::harness::*;
use crate::messages::{ready_user, send};
use crate::pki::{Pair, Pki};

/// A free loopback port below the ephemeral range.
fn free_port() -> u16 {
    use rand::Rng;
    for _ in 0..200 {
        let port: u16 = rand::thread_rng().gen_range(10_000..22_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn find(name: &str) -> String {
    let script = format!("command -v {name} || ls /usr/lib/postgresql/*/bin/{name} 2>/dev/null | tail -1");
    let listed = Command::new("sh").args(["-c", &script]).output().expect("sh");
    let path = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
    assert!(!path.is_empty(), "{name} is not installed; install it with: apt-get install -y postgresql redis-server");
    path
}

/// A Postgres that takes only TLS connections, with `tls` as its certificate.
struct TlsPostgres {
    dir: PathBuf,
    port: u16,
    pg_ctl: String,
    owner: Option<&'static str>,
}

impl TlsPostgres {
    fn start(tls: &Pair) -> TlsPostgres {
        let (initdb, pg_ctl) = (find("initdb"), find("pg_ctl"));
        let dir = temp_dir();
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        // The server reads its key only when it is private to the server's user.
        std::fs::copy(&tls.cert, dir.join("server.crt")).expect("cert");
        std::fs::copy(&tls.key, dir.join("server.key")).expect("key");
        let owner = (Command::new("id").arg("-u").output().expect("id").stdout == b"0\n").then_some("postgres");
        if let Some(owner) = owner {
            assert!(Command::new("chown").args(["-R", owner]).arg(&dir).status().expect("chown").success());
        }
        let postgres = TlsPostgres { dir, port: free_port(), pg_ctl, owner };
        let chmod = postgres.as_owner("chmod").arg("600").arg(postgres.dir.join("server.key")).status();
        assert!(chmod.expect("chmod").success());
        let data = postgres.dir.join("data").display().to_string();
        let status = postgres
            .as_owner(&initdb)
            .args(["-D", &data, "-U", "postgres", "--auth=trust"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        // Over TCP, TLS or nothing.
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
        std::fs::write(postgres.dir.join("data/pg_hba.conf"), hba).expect("pg_hba");
        let options = format!(
            "-p {} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on -c ssl_cert_file={dir}/server.crt \
             -c ssl_key_file={dir}/server.key",
            postgres.port,
            dir = postgres.dir.display()
        );
        let log = postgres.dir.join("pg.log").display().to_string();
        let status = postgres
            .as_owner(&postgres.pg_ctl)
            .args(["-D", &data, "-l", &log, "-w", "-o", &options, "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl");
        if !status.success() {
            panic!("Postgres with TLS did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
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

    fn url(&self, sslmode: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode={sslmode}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ =
            self.as_owner(&self.pg_ctl).args(["-D", &data, "-m", "immediate", "stop"]).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server that listens only for TLS.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(tls: &Pair, ca: &Pair) -> TlsRedis {
        find("redis-server");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (built with TLS)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server with TLS did not start (is it built with TLS?)");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsRedis { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_reaches_postgres_and_redis_over_tls_and_refuses_a_wrong_ca() {
    let pki = Pki::new();
    let (ca, other_ca) = (pki.ca("ca"), pki.ca("other-ca"));
    let store = pki.server(&ca, "store");
    let postgres = TlsPostgres::start(&store);
    let redis = TlsRedis::start(&store, &ca);

    // Without TLS, this Postgres lets nobody in: whatever works below went over TLS.
    let plain = sqlx::PgConnection::connect(&postgres.url("disable")).await;
    assert!(plain.is_err(), "Postgres accepted a connection without TLS");

    let started = Instant::now();
    let server = start_with(Backend::ScaleOut, |c| {
        c.database_url = Some(postgres.url("verify-full"));
        c.database_schema = None;
        c.redis_url = Some(redis.url());
        c.store_ca_file = Some(ca.cert.clone());
    })
    .await;
    eprintln!("scale-out server up over TLS to both stores in {} ms", started.elapsed().as_millis());
    let (alice, bob) = (ready_user(&server).await, ready_user(&server).await);
    send(&server, &alice, &bob, b"over tls both ways").await.expect(200);
    let waiting = server.get("/v1/messages", bob.bearer()).await.expect(200);
    assert_eq!(waiting["messages"][0]["content"], STANDARD.encode(b"over tls both ways"));
    server.get("/readyz", Auth::None).await.expect(200);
    // The server's own connections are TLS ones, as Postgres sees them.
    let options = postgres.url("verify-full").parse::<sqlx::postgres::PgConnectOptions>().expect("url");
    let mut check = sqlx::PgConnection::connect_with(&options.ssl_root_cert(&ca.cert)).await.expect("TLS check");
    let tls_connections: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_ssl WHERE ssl")
        .fetch_one(&mut check)
        .await
        .expect("pg_stat_ssl");
    assert!(tls_connections >= 2, "only {tls_connections} TLS connections");
    check.close().await.expect("close");
    server.stop().await;

    // The CA setting names another authority: Postgres is refused ...
    let mut config = test_config(Backend::ScaleOut);
    config.database_url = Some(postgres.url("verify-full"));
    config.database_schema = None;
    config.redis_url = Some(redis.url());
    config.store_ca_file = Some(other_ca.cert.clone());
    config.store_startup_wait_seconds = 0;
    let refused = sealpost::build_app(config.clone()).await.err().expect("a wrong CA is refused").to_string();
    eprintln!("wrong CA for Postgres: {refused}");
    assert!(refused.contains("database") && refused.to_lowercase().contains("certificate"), "{refused}");

    // ... and so is Redis (Postgres trusts the right CA through its URL, which wins over the setting).
    config.database_url = Some(format!("{}&sslrootcert={}", postgres.url("verify-full"), ca.cert.display()));
    let refused = sealpost::build_app(config.clone()).await.err().expect("a wrong CA is refused").to_string();
    eprintln!("wrong CA for Redis: {refused}");
    assert!(refused.to_lowercase().contains("redis"), "{refused}");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"), "{refused}");
    let _ = std::fs::remove_dir_all(&config.data_dir);
}
