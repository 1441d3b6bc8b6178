//! The sealpost server under test: a separate `sealpost serve` process on loopback ports, with a fresh data
//! directory (and, for scale-out, a schema and Redis key prefix of its own, removed again afterwards).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    ScaleOut,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::ScaleOut => "scale-out",
        }
    }
}

/// Where the scale-out services are.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
}

impl Services {
    pub fn from_env() -> Services {
        Services {
            database_url: std::env::var("SEALPOST_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            redis_url: std::env::var("SEALPOST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        }
    }

    /// Fails with a clear message when Postgres or Redis does not answer.
    pub async fn check(&self) -> Result<(), String> {
        use sqlx::Connection;
        let conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&self.database_url))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match conn {
            Ok(conn) => {
                let _ = conn.close().await;
            }
            Err(err) => {
                return Err(format!(
                    "Postgres is not reachable at {} ({err}); set SEALPOST_TEST_DATABASE_URL or start it \
                     (README: pg_ctlcluster ... main start)",
                    self.database_url
                ));
            }
        }
        let client = redis_client(&self.redis_url)?;
        let ping = tokio::time::timeout(Duration::from_secs(5), async {
            use fred::prelude::ClientLike;
            client.init().await.map_err(|e| e.to_string())?;
            let _ = client.quit().await;
            Ok::<(), String>(())
        })
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r);
        ping.map_err(|err| {
            format!(
                "Redis is not reachable at {} ({err}); set SEALPOST_TEST_REDIS_URL or start it \
                 (README: redis-server --daemonize yes ...)",
                self.redis_url
            )
        })
    }
}

pub fn redis_client(url: &str) -> Result<fred::prelude::Client, String> {
    let config = fred::prelude::Config::from_url(url).map_err(|e| format!("redis url {url}: {e}"))?;
    fred::prelude::Builder::from_config(config).build().map_err(|e| format!("redis client: {e}"))
}

/// Rate limits so high that they never interfere with the measurement.
const NO_LIMIT: &str = "100000000/1m";

pub struct Server {
    child: Child,
    pub pid: u32,
    pub base: String,
    pub metrics_base: String,
    pub backend: Backend,
    data_dir: PathBuf,
    schema: Option<String>,
    prefix: Option<String>,
    /// Whether stopping removes the data directory, schema and keys (a peer shares the first's).
    owns_state: bool,
    services: Services,
    /// WARN and ERROR lines the server logged (the first few).
    pub problems: Arc<Mutex<Vec<String>>>,
}

const KEEP_PROBLEMS: usize = 20;

fn watch_output<R: AsyncRead + Unpin + Send + 'static>(
    mut lines: tokio::io::Lines<BufReader<R>>,
    problems: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked") {
                let mut problems = problems.lock().unwrap_or_else(|p| p.into_inner());
                if problems.len() < KEEP_PROBLEMS {
                    problems.push(line);
                }
            }
        }
    });
}

/// The address that follows `marker` in a log line (`listening on http://127.0.0.1:PORT backend=...`).
fn address_after(line: &str, marker: &str) -> Option<String> {
    let rest = line.split(marker).nth(1)?;
    let address: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || ":/.[]".contains(*c)).collect();
    let address = address.trim_end_matches("/metrics").trim_end_matches('/').to_owned();
    address.starts_with("http://").then_some(address)
}

pub async fn start(bin: &Path, backend: Backend, services: &Services) -> Result<Server, String> {
    start_instance(bin, backend, services, None).await
}

/// A second scale-out instance on the first one's schema, key prefix and key files (its data directory): a
/// token from one is good on the other, and a message sent to one reaches a socket on the other. Stopping
/// it leaves the shared state to the first.
pub async fn start_peer(bin: &Path, first: &Server) -> Result<Server, String> {
    start_instance(bin, first.backend, &first.services, Some(first)).await
}

async fn start_instance(
    bin: &Path,
    backend: Backend,
    services: &Services,
    peer_of: Option<&Server>,
) -> Result<Server, String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let data_dir = match peer_of {
        Some(first) => first.data_dir.clone(),
        None => std::env::temp_dir().join(format!("sealpost-bench-{id}")),
    };
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .env_clear()
        .env("SEALPOST_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_METRICS_LISTEN", "127.0.0.1:0")
        .env("SEALPOST_DATA_DIR", &data_dir)
        // Requests log at debug; at this level only the start-up lines and problems are written.
        .env("SEALPOST_LOG", "warn,sealpost=info")
        .env("SEALPOST_LOG_FORMAT", "text")
        .env("SEALPOST_LIMIT_REGISTRATION_PER_IP", NO_LIMIT)
        .env("SEALPOST_LIMIT_AUTH_PER_IP", NO_LIMIT)
        .env("SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER", NO_LIMIT)
        .env("SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER_TARGET", NO_LIMIT)
        .env("SEALPOST_LIMIT_MESSAGES_PER_SENDER_RECIPIENT", NO_LIMIT)
        .env("SEALPOST_LIMIT_MULTI_RECIPIENT_PER_IP", NO_LIMIT)
        .env("SEALPOST_LIMIT_LINK_CODES_PER_ACCOUNT", NO_LIMIT)
        .env("SEALPOST_LIMIT_LINK_PER_IP", NO_LIMIT)
        .env("SEALPOST_MAX_QUEUE_LEN", "1000000")
        // Every client of the tool connects from loopback: one address holds all the idle sockets.
        .env("SEALPOST_MAX_CONNECTIONS_PER_IP", "1000000")
        // A full run lasts longer than the default token lifetime and holds sockets idle on purpose.
        .env("SEALPOST_TOKEN_TTL_SECONDS", "86400")
        .env("SEALPOST_WS_IDLE_TIMEOUT_SECONDS", "3600")
        .env("SEALPOST_SHUTDOWN_GRACE_SECONDS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (schema, prefix) = match backend {
        Backend::Embedded => (None, None),
        Backend::ScaleOut => {
            let (schema, prefix) = match peer_of {
                Some(first) => (first.schema.clone().unwrap_or_default(), first.prefix.clone().unwrap_or_default()),
                None => (format!("bench_{id}"), format!("bench_{id}:")),
            };
            command
                .env("SEALPOST_DATABASE_URL", &services.database_url)
                .env("SEALPOST_DATABASE_SCHEMA", &schema)
                .env("SEALPOST_REDIS_URL", &services.redis_url)
                .env("SEALPOST_REDIS_KEY_PREFIX", &prefix);
            (Some(schema), Some(prefix))
        }
    };
    let mut child = command.spawn().map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let pid = child.id().ok_or("the server exited at once")?;
    let problems = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        watch_output(BufReader::new(stderr).lines(), problems.clone());
    }
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        let mut metrics = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = address_after(&line, "metrics on ") {
                metrics = Some(address);
            } else if let Some(address) = address_after(&line, "listening on ") {
                return Some((address, metrics));
            }
            seen.push(line);
        }
        None
    })
    .await
    .ok()
    .flatten();
    let mut server = Server {
        child,
        pid,
        base: String::new(),
        metrics_base: String::new(),
        backend,
        data_dir,
        schema,
        prefix,
        owns_state: peer_of.is_none(),
        services: services.clone(),
        problems: problems.clone(),
    };
    let Some((base, metrics)) = found else {
        let stderr = problems.lock().map(|p| p.join("\n")).unwrap_or_default();
        server.stop().await;
        return Err(format!("the server did not start; its output: {seen:?} {stderr}"));
    };
    server.base = base;
    server.metrics_base = metrics.unwrap_or_default();
    // Keep reading so the server never blocks on a full pipe.
    watch_output(lines, problems);
    Ok(server)
}

impl Server {
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Value of an unlabelled gauge or counter on the metrics endpoint.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        if self.metrics_base.is_empty() {
            return None;
        }
        let text = http.get(format!("{}/metrics", self.metrics_base)).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and removes its data directory, schema and keys.
    pub async fn stop(mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let term = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        let exited = match term {
            Ok(status) if status.success() => {
                tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_ok()
            }
            _ => false,
        };
        if !exited {
            warnings.push("the server did not stop on SIGTERM within 10 s; killed".into());
            let _ = self.child.kill().await;
        }
        if !self.owns_state {
            return warnings;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(schema) = &self.schema
            && let Err(err) = drop_schema(&self.services.database_url, schema).await
        {
            warnings.push(format!("could not drop schema {schema}: {err}"));
        }
        if let Some(prefix) = &self.prefix
            && let Err(err) = delete_prefix(&self.services.redis_url, prefix).await
        {
            warnings.push(format!("could not delete Redis keys {prefix}*: {err}"));
        }
        warnings
    }
}

pub async fn drop_schema(database_url: &str, schema: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await.map_err(|e| e.to_string())?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

/// Deletes every key under `prefix` (SCAN in a script on this single local Redis; the prefix is ours alone).
pub async fn delete_prefix(redis_url: &str, prefix: &str) -> Result<u64, String> {
    use fred::prelude::{ClientLike, LuaInterface};
    let client = redis_client(redis_url)?;
    client.init().await.map_err(|e| e.to_string())?;
    let script = r#"
local cursor = '0'
local deleted = 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    deleted = deleted + redis.call('DEL', key)
  end
until cursor == '0'
return deleted
"#;
    let deleted: Result<i64, _> = client.eval(script, Vec::<String>::new(), vec![format!("{prefix}*")]).await;
    let _ = client.quit().await;
    deleted.map(|n| n as u64).map_err(|e| e.to_string())
}
