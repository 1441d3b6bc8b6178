//! The one typed configuration of a sealpost process.
//!
//! Every field has a default in code and an environment variable (`SEALPOST_…`); secrets can also be read
//! from a file named by `…_FILE`. An optional TOML file (`SEALPOST_CONFIG` or `--config`) may set the same
//! fields by their snake_case names, but the environment always wins, and every field the environment takes
//! away from the file is reported at start-up, so a file never silently overrides (or is silently overridden).
//! `docs/configuration.md` lists every field; a test keeps that page and [`Config::fields`] in step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Error while assembling the configuration; names the field and the source so operators can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where a field's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
        })
    }
}

/// Parsing and printing of one configuration value, shared by the environment and the file.
pub trait ConfigValue: Sized {
    fn parse_value(raw: &str) -> Result<Self, String>;
    fn render(&self) -> String;
}

macro_rules! from_str_value {
    ($($t:ty),*) => {$(
        impl ConfigValue for $t {
            fn parse_value(raw: &str) -> Result<Self, String> {
                raw.trim().parse::<$t>().map_err(|e| e.to_string())
            }
            fn render(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
from_str_value!(SocketAddr, u8, u16, u32, u64, usize, bool);

impl ConfigValue for String {
    fn parse_value(raw: &str) -> Result<Self, String> {
        Ok(raw.to_owned())
    }
    fn render(&self) -> String {
        self.clone()
    }
}

impl ConfigValue for PathBuf {
    fn parse_value(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("empty path".into());
        }
        Ok(PathBuf::from(raw))
    }
    fn render(&self) -> String {
        self.display().to_string()
    }
}

/// An unset optional field is written as the empty string in the environment.
impl<T: ConfigValue> ConfigValue for Option<T> {
    fn parse_value(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() { Ok(None) } else { T::parse_value(raw).map(Some) }
    }
    fn render(&self) -> String {
        self.as_ref().map(ConfigValue::render).unwrap_or_default()
    }
}

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationPolicy {
    /// Anyone who can reach the server (rate limited per client IP).
    Open,
    /// Only holders of a single-use code from `sealpost invite create`.
    Invite,
    /// Anyone, but the account is refused (`pending_approval`) until `sealpost approve <aci>`.
    Approval,
}

impl ConfigValue for RegistrationPolicy {
    fn parse_value(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "open" => Ok(Self::Open),
            "invite" => Ok(Self::Invite),
            "approval" => Ok(Self::Approval),
            other => Err(format!("unknown policy {other:?} (expected open, invite or approval)")),
        }
    }
    fn render(&self) -> String {
        match self {
            Self::Open => "open",
            Self::Invite => "invite",
            Self::Approval => "approval",
        }
        .into()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl ConfigValue for LogFormat {
    fn parse_value(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
    fn render(&self) -> String {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
        .into()
    }
}

/// A token-bucket limit written `COUNT/PERIOD`, e.g. `20/1h`: at most COUNT requests in a burst, refilled
/// evenly over PERIOD (suffix `s`, `m`, `h` or `d`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub burst: u32,
    pub period: Duration,
}

impl RateLimit {
    /// Tokens regained per second.
    pub fn refill_per_second(&self) -> f64 {
        f64::from(self.burst) / self.period.as_secs_f64()
    }
}

impl ConfigValue for RateLimit {
    fn parse_value(raw: &str) -> Result<Self, String> {
        let bad = || format!("{raw:?} is not COUNT/PERIOD like 20/1h");
        let (count, period) = raw.trim().split_once('/').ok_or_else(bad)?;
        let burst: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let (digits, unit) = period.split_at(period.len().saturating_sub(1));
        let n: u64 = if digits.is_empty() { 1 } else { digits.parse().map_err(|_| bad())? };
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => return Err(bad()),
        };
        if burst == 0 || secs == 0 {
            return Err(format!("{raw:?}: count and period must be positive"));
        }
        Ok(Self { burst, period: Duration::from_secs(secs) })
    }
    fn render(&self) -> String {
        let secs = self.period.as_secs();
        let (n, unit) = if secs.is_multiple_of(86_400) {
            (secs / 86_400, "d")
        } else if secs.is_multiple_of(3600) {
            (secs / 3600, "h")
        } else if secs.is_multiple_of(60) {
            (secs / 60, "m")
        } else {
            (secs, "s")
        };
        format!("{}/{n}{unit}", self.burst)
    }
}

/// Static description of one field, for `sealpost config`, the docs check and error messages.
#[derive(Debug, Clone)]
pub struct FieldInfo {
    pub name: &'static str,
    pub env: &'static str,
    pub default: String,
    pub doc: &'static str,
    pub secret: bool,
}

macro_rules! config_struct {
    ($( #[doc = $doc:literal] $field:ident : $ty:ty = $default:expr, $env:literal, $secret:literal; )*) => {
        /// The effective configuration. Build it with [`Config::load`] (environment + optional file) or
        /// start from [`Config::default`] in tests.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( #[doc = $doc] pub $field: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $field: <$ty as ConfigValue>::parse_value($default)
                    .expect(concat!("default of ", stringify!($field), " parses (checked by a unit test)")), )* }
            }
        }

        impl Config {
            /// Every field with its environment variable, default and description.
            pub fn fields() -> Vec<FieldInfo> {
                vec![$( FieldInfo {
                    name: stringify!($field),
                    env: $env,
                    default: $default.to_string(),
                    doc: $doc.trim(),
                    secret: $secret,
                }, )*]
            }

            /// Sets one field from its textual form.
            pub fn set(&mut self, name: &str, raw: &str) -> Result<(), String> {
                match name {
                    $( stringify!($field) => { self.$field = <$ty as ConfigValue>::parse_value(raw)?; Ok(()) } )*
                    other => Err(format!("unknown configuration field {other:?}")),
                }
            }

            /// The textual form of one field's effective value (unmasked).
            pub fn get(&self, name: &str) -> Option<String> {
                match name {
                    $( stringify!($field) => Some(ConfigValue::render(&self.$field)), )*
                    _ => None,
                }
            }
        }
    };
}

config_struct! {
    /// Address the HTTP and WebSocket API listens on.
    listen: SocketAddr = "127.0.0.1:8080", "SEALPOST_LISTEN", false;
    /// Address of the Prometheus `/metrics` listener (kept apart from the public API).
    metrics_listen: SocketAddr = "127.0.0.1:9464", "SEALPOST_METRICS_LISTEN", false;
    /// Certificate chain (PEM, leaf first) for TLS on the API listener. Empty: plain HTTP (TLS ends at a proxy). Set together with `SEALPOST_TLS_KEY_FILE`.
    tls_cert_file: Option<PathBuf> = "", "SEALPOST_TLS_CERT_FILE", false;
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of the API listener's certificate.
    tls_key_file: Option<PathBuf> = "", "SEALPOST_TLS_KEY_FILE", false;
    /// Seconds between checks of the certificate and key files' modification times; a change loads them for new connections without a restart (so does SIGHUP). 0: only on SIGHUP.
    tls_reload_interval_seconds: u64 = "60", "SEALPOST_TLS_RELOAD_INTERVAL_SECONDS", false;
    /// Web origins allowed to call the API from a browser (CORS), comma-separated, exactly as browsers send them (e.g. `https://chat.example.org,http://localhost:5173`). Empty: no cross-origin access.
    cors_allowed_origins: Option<String> = "", "SEALPOST_CORS_ALLOWED_ORIGINS", false;
    /// Directory for the SQLite database (embedded mode) and the server key files.
    data_dir: PathBuf = "./data", "SEALPOST_DATA_DIR", false;
    /// Durable store: `sqlite://PATH` or `postgres://…`. Empty means `sqlite://<data_dir>/sealpost.db`.
    database_url: Option<String> = "", "SEALPOST_DATABASE_URL", true;
    /// Postgres schema to use (created if missing). Empty means the server's default search path.
    database_schema: Option<String> = "", "SEALPOST_DATABASE_SCHEMA", false;
    /// Maximum connections in the database pool. The embedded store opens at most this many reader connections and no more than two per CPU.
    database_max_connections: u32 = "16", "SEALPOST_DATABASE_MAX_CONNECTIONS", false;
    /// Embedded store: page cache of each reader connection, in KiB (SQLite's own default is 2,000). A reader drops its cache whenever another connection has written since its last read, so under steady writes a large cache holds memory without saving reads; the operating system's file cache serves them.
    sqlite_reader_cache_kib: u32 = "256", "SEALPOST_SQLITE_READER_CACHE_KIB", false;
    /// Milliseconds one call to a store (database, Redis) may take; a store that is down or does not answer in time makes the request fail fast with 503 `unavailable` and `Retry-After`.
    store_timeout_ms: u64 = "2000", "SEALPOST_STORE_TIMEOUT_MS", false;
    /// Seconds `serve` keeps retrying to reach the database and Redis at start-up before it gives up (0: give up at once).
    store_startup_wait_seconds: u64 = "30", "SEALPOST_STORE_STARTUP_WAIT_SECONDS", false;
    /// Ephemeral store for scale-out: `redis://…` or `redis-cluster://host:port?node=host:port…`. Required with Postgres.
    redis_url: Option<String> = "", "SEALPOST_REDIS_URL", true;
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    redis_key_prefix: String = "sealpost:", "SEALPOST_REDIS_KEY_PREFIX", false;
    /// CA certificates (PEM) to trust, instead of the system's, for TLS to Postgres (`sslmode=verify-full` or `verify-ca` in the URL; a `sslrootcert` there wins) and to Redis (`rediss://`, `rediss-cluster://`). Empty: the system's roots.
    store_ca_file: Option<PathBuf> = "", "SEALPOST_STORE_CA_FILE", false;
    /// Who may register: `open`, `invite` or `approval`.
    registration_policy: RegistrationPolicy = "open", "SEALPOST_REGISTRATION_POLICY", false;
    /// Lifetime of a code from `sealpost invite create`, in seconds.
    invite_ttl_seconds: u64 = "604800", "SEALPOST_INVITE_TTL_SECONDS", false;
    /// Lifetime of a device access token (JWT), in seconds.
    token_ttl_seconds: u64 = "900", "SEALPOST_TOKEN_TTL_SECONDS", false;
    /// Devices per account, the primary included.
    max_devices: u32 = "6", "SEALPOST_MAX_DEVICES", false;
    /// Largest accepted request body, in bytes (413 `payload_too_large` above it).
    max_request_bytes: usize = "1048576", "SEALPOST_MAX_REQUEST_BYTES", false;
    /// Largest request head (request line and headers), in bytes (431 `headers_too_large` above it). The request line alone may not exceed 65,534 bytes (414 `uri_too_long`).
    max_header_bytes: usize = "131072", "SEALPOST_MAX_HEADER_BYTES", false;
    /// One-time prekeys of one kind accepted in a single `PUT /v1/keys`.
    max_keys_per_upload: usize = "100", "SEALPOST_MAX_KEYS_PER_UPLOAD", false;
    /// Embedded store: one-time prekeys of one kind a device whose bundle is fetched often may have taken from the database ahead of demand (claims then cost no write; a crash loses them, never hands one out twice; a stop puts them back). 0 or 1 takes every claim from the database.
    prekey_reserve_max: usize = "16", "SEALPOST_PREKEY_RESERVE_MAX", false;
    /// Embedded store: devices holding such a reserve at once, at most (beyond it claims take one key at a time).
    prekey_reserve_devices: usize = "10000", "SEALPOST_PREKEY_RESERVE_DEVICES", false;
    /// Header holding the client address when sealpost runs behind a trusted proxy (e.g. `x-forwarded-for`; the last address over all lines of the header, the one the proxy appended, is used). Empty means the TCP peer address.
    trusted_proxy_header: Option<String> = "", "SEALPOST_TRUSTED_PROXY_HEADER", false;
    /// Per-IP rate limits count an IPv6 client by this many leading bits of its address (one subscriber usually holds a whole /64); 128 counts every address apart.
    ipv6_prefix_length: u8 = "64", "SEALPOST_IPV6_PREFIX_LENGTH", false;
    /// Seconds a connection may take to send a request's headers (also how long an idle keep-alive connection stays open); then it is closed.
    header_read_timeout_seconds: u64 = "10", "SEALPOST_HEADER_READ_TIMEOUT_SECONDS", false;
    /// Seconds a request may take to send its body; then it is answered 408 `request_timeout` and the connection closed.
    body_read_timeout_seconds: u64 = "15", "SEALPOST_BODY_READ_TIMEOUT_SECONDS", false;
    /// Open connections (HTTP and WebSocket) the API listener accepts in total; beyond it new connections get 503 `too_many_connections` and are closed.
    max_connections: usize = "200000", "SEALPOST_MAX_CONNECTIONS", false;
    /// Open connections from one client address (an IPv6 client: its prefix, see `SEALPOST_IPV6_PREFIX_LENGTH`). Not applied behind a trusted proxy, where every connection comes from the proxy.
    max_connections_per_ip: usize = "1000", "SEALPOST_MAX_CONNECTIONS_PER_IP", false;
    /// Registrations per client IP.
    limit_registration_per_ip: RateLimit = "20/1h", "SEALPOST_LIMIT_REGISTRATION_PER_IP", false;
    /// Token requests per client IP.
    limit_auth_per_ip: RateLimit = "300/1m", "SEALPOST_LIMIT_AUTH_PER_IP", false;
    /// Prekey bundle fetches per requester (device, or client IP for access-key requests).
    limit_prekey_fetch_per_requester: RateLimit = "300/1m", "SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER", false;
    /// Prekey bundle fetches of one target account by one requester. There is deliberately no limit per target alone: it would let anyone lock everyone out of starting a session with a chosen account.
    limit_prekey_fetch_per_requester_target: RateLimit = "60/1h", "SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER_TARGET", false;
    /// Largest envelope `content`, in bytes after base64 decoding (413 `message_too_large` above it).
    max_message_bytes: usize = "98304", "SEALPOST_MAX_MESSAGE_BYTES", false;
    /// Envelopes a device queue holds; a send that would exceed it is refused (507 `queue_full`), never dropped silently.
    max_queue_len: u32 = "10000", "SEALPOST_MAX_QUEUE_LEN", false;
    /// Longest envelope lifetime, in seconds; also the lifetime when a send names none.
    max_message_ttl_seconds: u64 = "2592000", "SEALPOST_MAX_MESSAGE_TTL_SECONDS", false;
    /// Lifetime of a device link code from `GET /v1/devices/provisioning/code`, in seconds.
    link_code_ttl_seconds: u64 = "600", "SEALPOST_LINK_CODE_TTL_SECONDS", false;
    /// Largest relayed provisioning message, in bytes after base64 decoding.
    max_provisioning_message_bytes: usize = "65536", "SEALPOST_MAX_PROVISIONING_MESSAGE_BYTES", false;
    /// Largest encrypted device name, in bytes after base64 decoding.
    max_device_name_bytes: usize = "256", "SEALPOST_MAX_DEVICE_NAME_BYTES", false;
    /// Seconds a provisioning socket waits for its message before closing.
    provisioning_timeout_seconds: u64 = "600", "SEALPOST_PROVISIONING_TIMEOUT_SECONDS", false;
    /// Provisioning sockets opened per client IP.
    limit_provisioning_per_ip: RateLimit = "60/1h", "SEALPOST_LIMIT_PROVISIONING_PER_IP", false;
    /// Link codes issued per account.
    limit_link_codes_per_account: RateLimit = "20/1h", "SEALPOST_LIMIT_LINK_CODES_PER_ACCOUNT", false;
    /// Device link attempts per client IP (each consumes the code it names).
    limit_link_per_ip: RateLimit = "30/1h", "SEALPOST_LIMIT_LINK_PER_IP", false;
    /// Sends per sender and recipient (sender = device, or client IP for sealed sender).
    limit_messages_per_sender_recipient: RateLimit = "1200/1m", "SEALPOST_LIMIT_MESSAGES_PER_SENDER_RECIPIENT", false;
    /// Multi-recipient (group) sends per client IP.
    limit_multi_recipient_per_ip: RateLimit = "300/1m", "SEALPOST_LIMIT_MULTI_RECIPIENT_PER_IP", false;
    /// Recipients (accounts) of one multi-recipient send.
    max_multi_recipients: usize = "1000", "SEALPOST_MAX_MULTI_RECIPIENTS", false;
    /// Largest multi-recipient send body, in bytes (413 `payload_too_large` above it).
    max_multi_recipient_bytes: usize = "2097152", "SEALPOST_MAX_MULTI_RECIPIENT_BYTES", false;
    /// Unacknowledged envelopes in flight on one WebSocket.
    ws_window: usize = "256", "SEALPOST_WS_WINDOW", false;
    /// Seconds without any frame from the client after which a WebSocket is closed.
    ws_idle_timeout_seconds: u64 = "90", "SEALPOST_WS_IDLE_TIMEOUT_SECONDS", false;
    /// Largest frame a client may send on a WebSocket, in bytes.
    ws_max_frame_bytes: usize = "65536", "SEALPOST_WS_MAX_FRAME_BYTES", false;
    /// Lifetime of a sender certificate from `GET /v1/certificate/delivery`, in seconds.
    certificate_validity_seconds: u64 = "86400", "SEALPOST_CERTIFICATE_VALIDITY_SECONDS", false;
    /// Seconds an instance may keep account facts (devices, access key) cached; changes through any instance invalidate them at once over the bus, so this only bounds staleness while the bus is down.
    directory_cache_seconds: u64 = "10", "SEALPOST_DIRECTORY_CACHE_SECONDS", false;
    /// When the reapers run (cron, six fields `sec min hour day month weekday`, UTC): they delete expired envelopes and empty queues, expired invite and link codes, and expired or revoked contact tokens.
    job_reap_schedule: String = "0 * * * * *", "SEALPOST_JOB_REAP_SCHEDULE", false;
    /// When wakeups that a push service answered with 429 or 5xx (or not at all) are sent again (cron, six fields, UTC).
    job_push_retry_schedule: String = "*/5 * * * * *", "SEALPOST_JOB_PUSH_RETRY_SCHEDULE", false;
    /// When the inactive-device sweep runs (cron, six fields, UTC); it does nothing unless `SEALPOST_INACTIVE_DEVICE_DAYS` is set.
    job_inactive_devices_schedule: String = "0 17 3 * * *", "SEALPOST_JOB_INACTIVE_DEVICES_SCHEDULE", false;
    /// Seconds a job's cluster lease lasts without renewal: the holder renews it on every tick and while a run lasts; if the holder dies, another instance takes the job over within this time (plus one tick).
    job_lease_seconds: u64 = "30", "SEALPOST_JOB_LEASE_SECONDS", false;
    /// Remove devices not seen (no token issued) for this many days: linked devices are unlinked, and an account whose every device is that idle is deleted whole. 0 (the default) turns the sweep off. Signal unlinks after 30 and removes accounts after 180 days.
    inactive_device_days: u32 = "0", "SEALPOST_INACTIVE_DEVICE_DAYS", false;
    /// Contact for push services, sent as the `sub` of every VAPID token (`mailto:` or `https:` URL); push services write here when something is wrong.
    push_contact: String = "mailto:postmaster@localhost", "SEALPOST_PUSH_CONTACT", false;
    /// Push endpoints exempt from the https and public-address rules, comma-separated URLs of which only the origin counts (e.g. `http://ntfy.lan:8080` for a self-hosted ntfy on the LAN). Empty: every endpoint must be https on a public address.
    push_allowed_origins: Option<String> = "", "SEALPOST_PUSH_ALLOWED_ORIGINS", false;
    /// Longest push endpoint URL accepted, in bytes (400 `invalid_push_endpoint` above it).
    max_push_endpoint_bytes: usize = "2048", "SEALPOST_MAX_PUSH_ENDPOINT_BYTES", false;
    /// Milliseconds a push service gets to accept a wakeup (connect and answer); no answer in time counts as a failure to retry.
    push_timeout_ms: u64 = "10000", "SEALPOST_PUSH_TIMEOUT_MS", false;
    /// Seconds after a wakeup during which further envelopes for the device wake it no more (unless it connects first, or an urgent envelope follows a normal wakeup).
    push_quiet_seconds: u64 = "60", "SEALPOST_PUSH_QUIET_SECONDS", false;
    /// Sends of one wakeup at most (the first and its retries) when the push service answers 429 or 5xx.
    push_max_attempts: u32 = "5", "SEALPOST_PUSH_MAX_ATTEMPTS", false;
    /// Seconds before the first retry of a wakeup; doubled for each further one (a push service's `Retry-After` wins when longer), up to `SEALPOST_PUSH_RETRY_MAX_SECONDS`.
    push_retry_base_seconds: u64 = "10", "SEALPOST_PUSH_RETRY_BASE_SECONDS", false;
    /// Longest wait before a retry of a wakeup, in seconds.
    push_retry_max_seconds: u64 = "900", "SEALPOST_PUSH_RETRY_MAX_SECONDS", false;
    /// Wakeups waiting for a retry at most (in memory, or one Redis sorted set for the cluster); beyond it, failed wakeups are not retried.
    push_retry_backlog: usize = "100000", "SEALPOST_PUSH_RETRY_BACKLOG", false;
    /// Wakeup retries one run of the push-retry job sends at most; the rest wait for the next tick.
    push_retry_batch: usize = "500", "SEALPOST_PUSH_RETRY_BATCH", false;
    /// Devices waiting for a wakeup decision on one instance; beyond it, wakeups are dropped and counted (`sealpost_push_wakeups_total{outcome="dropped"}`), never a send delayed.
    push_backlog: usize = "10000", "SEALPOST_PUSH_BACKLOG", false;
    /// Wakeups one instance sends at the same time.
    push_concurrency: usize = "64", "SEALPOST_PUSH_CONCURRENCY", false;
    /// Push subscriptions set per device.
    limit_push_subscriptions_per_device: RateLimit = "20/1h", "SEALPOST_LIMIT_PUSH_SUBSCRIPTIONS_PER_DEVICE", false;
    /// Live contact tokens (QR codes) one account may hold at once; 409 `too_many_contact_tokens` beyond.
    max_contact_tokens_per_account: u32 = "20", "SEALPOST_MAX_CONTACT_TOKENS_PER_ACCOUNT", false;
    /// Lifetime of a contact token when its owner names none, in seconds.
    contact_token_ttl_seconds: u64 = "604800", "SEALPOST_CONTACT_TOKEN_TTL_SECONDS", false;
    /// Longest lifetime an owner may give a contact token, in seconds.
    max_contact_token_ttl_seconds: u64 = "31536000", "SEALPOST_MAX_CONTACT_TOKEN_TTL_SECONDS", false;
    /// Largest encrypted contact-token label, in bytes after base64 decoding.
    max_contact_token_label_bytes: usize = "512", "SEALPOST_MAX_CONTACT_TOKEN_LABEL_BYTES", false;
    /// Contact tokens created per account.
    limit_contact_tokens_per_account: RateLimit = "60/1h", "SEALPOST_LIMIT_CONTACT_TOKENS_PER_ACCOUNT", false;
    /// Contact-token resolutions per client IP (IPv6: per prefix).
    limit_contact_resolve_per_ip: RateLimit = "60/1m", "SEALPOST_LIMIT_CONTACT_RESOLVE_PER_IP", false;
    /// Failed contact-token resolutions per client IP; once spent, every resolution from the address is refused until it refills.
    limit_contact_resolve_failures_per_ip: RateLimit = "20/1h", "SEALPOST_LIMIT_CONTACT_RESOLVE_FAILURES_PER_IP", false;
    /// Largest attachment, in bytes (413 `attachment_too_large` when one is declared larger).
    max_attachment_bytes: u64 = "104857600", "SEALPOST_MAX_ATTACHMENT_BYTES", false;
    /// Attachment bytes an account may declare per period, in MiB (each attachment counts at least 1 MiB; 429 `rate_limited` beyond).
    limit_attachment_mib_per_account: RateLimit = "2048/1d", "SEALPOST_LIMIT_ATTACHMENT_MIB_PER_ACCOUNT", false;
    /// Attachment downloads per client IP (IPv6: per prefix).
    limit_attachment_downloads_per_ip: RateLimit = "600/1m", "SEALPOST_LIMIT_ATTACHMENT_DOWNLOADS_PER_IP", false;
    /// Lifetime of an attachment from its creation, in seconds; the reaper deletes it afterwards.
    attachment_ttl_seconds: u64 = "2592000", "SEALPOST_ATTACHMENT_TTL_SECONDS", false;
    /// Seconds an upload credential works; an upload unfinished by then is deleted.
    attachment_upload_window_seconds: u64 = "86400", "SEALPOST_ATTACHMENT_UPLOAD_WINDOW_SECONDS", false;
    /// Bytes of an upload held in memory before they are stored as one part (one object); the memory one upload holds.
    attachment_part_bytes: usize = "4194304", "SEALPOST_ATTACHMENT_PART_BYTES", false;
    /// Seconds an upload may go without receiving a byte before it is cut off (what was received is kept).
    attachment_idle_timeout_seconds: u64 = "30", "SEALPOST_ATTACHMENT_IDLE_TIMEOUT_SECONDS", false;
    /// Directory for attachments when no S3 bucket is set. Empty means `<data_dir>/attachments`.
    attachments_dir: Option<PathBuf> = "", "SEALPOST_ATTACHMENTS_DIR", false;
    /// S3-compatible bucket for attachments (needed when several instances serve one deployment). Empty: the attachments directory.
    s3_bucket: Option<String> = "", "SEALPOST_S3_BUCKET", false;
    /// S3 endpoint URL for a store other than AWS (MinIO, Ceph, Garage, R2, …), e.g. `http://minio:9000`; requests then use path-style URLs. Empty: AWS.
    s3_endpoint: Option<String> = "", "SEALPOST_S3_ENDPOINT", false;
    /// S3 region.
    s3_region: String = "us-east-1", "SEALPOST_S3_REGION", false;
    /// S3 access key id. Empty: `AWS_ACCESS_KEY_ID`, or the instance's credentials.
    s3_access_key_id: Option<String> = "", "SEALPOST_S3_ACCESS_KEY_ID", false;
    /// S3 secret access key. Empty: `AWS_SECRET_ACCESS_KEY`, or the instance's credentials.
    s3_secret_access_key: Option<String> = "", "SEALPOST_S3_SECRET_ACCESS_KEY", true;
    /// Prefix of every object name in the bucket or directory (e.g. `sealpost/`), so one bucket can serve several deployments.
    s3_prefix: Option<String> = "", "SEALPOST_S3_PREFIX", false;
    /// TURN server URLs handed to clients with their credentials, comma-separated (e.g. `turn:turn.example.org:3478?transport=udp,turn:turn.example.org:3478?transport=tcp,turns:turn.example.org:5349?transport=tcp`). Empty: `GET /v1/calling/relays` answers an empty list.
    turn_urls: Option<String> = "", "SEALPOST_TURN_URLS", false;
    /// Lifetime of a TURN credential, in seconds: coturn refuses it afterwards, also for refreshing a running call's allocation, so keep it above the longest call.
    turn_credential_ttl_seconds: u64 = "14400", "SEALPOST_TURN_CREDENTIAL_TTL_SECONDS", false;
    /// TURN credentials issued per device.
    limit_turn_credentials_per_device: RateLimit = "60/1h", "SEALPOST_LIMIT_TURN_CREDENTIALS_PER_DEVICE", false;
    /// Serve the browser demo at `/demo/`: a page that registers throwaway accounts through this API and makes a QR-initiated call (static files built into the binary; see docs/demo.md). On by default so that a fresh deployment can be tried from a browser; `false` answers 404 there.
    demo_enabled: bool = "true", "SEALPOST_DEMO", false;
    /// JWT signing key (Ed25519, PKCS#8 PEM). Empty means `<data_dir>/jwt_ed25519.pem`.
    jwt_key_file: Option<PathBuf> = "", "SEALPOST_JWT_KEY_FILE", false;
    /// Sealed-sender trust root private key (Curve25519). Empty means `<data_dir>/trust_root.key`.
    trust_root_key_file: Option<PathBuf> = "", "SEALPOST_TRUST_ROOT_KEY_FILE", false;
    /// Sealed-sender server certificate private key (Curve25519). Empty means `<data_dir>/server_cert.key`.
    server_cert_key_file: Option<PathBuf> = "", "SEALPOST_SERVER_CERT_KEY_FILE", false;
    /// Web Push VAPID key (P-256, PKCS#8 PEM). Empty means `<data_dir>/vapid_p256.pem`.
    vapid_key_file: Option<PathBuf> = "", "SEALPOST_VAPID_KEY_FILE", false;
    /// Shared secret for coturn's REST credentials. Empty means `<data_dir>/turn_secret`.
    turn_secret_file: Option<PathBuf> = "", "SEALPOST_TURN_SECRET_FILE", false;
    /// Key for pseudonymising rate-limit bucket names (so no IP or id is kept in a bucket). Empty means `<data_dir>/pseudonym.key`.
    pseudonym_key_file: Option<PathBuf> = "", "SEALPOST_PSEUDONYM_KEY_FILE", false;
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `sealpost=debug`.
    log_filter: String = "info", "SEALPOST_LOG", false;
    /// Log line format: `text` or `json`.
    log_format: LogFormat = "text", "SEALPOST_LOG_FORMAT", false;
    /// Seconds that graceful shutdown waits for open requests and sockets.
    shutdown_grace_seconds: u64 = "10", "SEALPOST_SHUTDOWN_GRACE_SECONDS", false;
}

/// Settings that earlier versions read, with what replaces them: setting one is warned about at start-up
/// rather than ignored in silence.
const REMOVED_SETTINGS: &[(&str, &str)] = &[(
    "SEALPOST_REAP_INTERVAL_SECONDS",
    "the reapers run on the job runner's schedule, SEALPOST_JOB_REAP_SCHEDULE (cron, with seconds)",
)];

/// The configuration together with where each value came from and the warnings collected on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub sources: BTreeMap<&'static str, Source>,
    pub warnings: Vec<String>,
}

impl Config {
    /// Defaults, then the optional file, then the environment (`vars`), which wins.
    pub fn load(file: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut config = Config::default();
        let mut sources: BTreeMap<&'static str, Source> =
            Config::fields().iter().map(|f| (f.name, Source::Default)).collect();
        let mut warnings = Vec::new();

        let file = file.map(Path::to_path_buf).or_else(|| vars.get("SEALPOST_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e| ConfigError(format!("config file {} is not valid TOML: {e}", path.display())))?;
            for (key, value) in table {
                let field = Config::fields()
                    .into_iter()
                    .find(|f| f.name == key)
                    .ok_or_else(|| ConfigError(format!("config file {}: unknown field {key:?}", path.display())))?;
                let raw = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(ConfigError(format!(
                            "config file: field {key:?} has an unsupported value type ({})",
                            other.type_str()
                        )));
                    }
                };
                config.set(field.name, &raw).map_err(|e| ConfigError(format!("config file: field {key}: {e}")))?;
                sources.insert(field.name, Source::File);
            }
        }

        for field in Config::fields() {
            let file_var = format!("{}_FILE", field.env);
            let from_env = match (vars.get(field.env), field.secret.then(|| vars.get(&file_var)).flatten()) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError(format!("both {} and {file_var} are set; set only one", field.env)));
                }
                (Some(value), None) => Some(value.clone()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| ConfigError(format!("{file_var}: cannot read {path}: {e}")))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                (None, None) => None,
            };
            if let Some(raw) = from_env {
                if sources.get(field.name) == Some(&Source::File) {
                    warnings.push(format!(
                        "{} from the environment overrides `{}` in the config file",
                        field.env, field.name
                    ));
                }
                config.set(field.name, &raw).map_err(|e| ConfigError(format!("{}: {e}", field.env)))?;
                sources.insert(field.name, Source::Env);
            }
        }
        for (gone, instead) in REMOVED_SETTINGS {
            if vars.contains_key(*gone) {
                warnings.push(format!("{gone} is no longer read: {instead}"));
            }
        }
        config.validate()?;
        Ok(Loaded { config, sources, warnings })
    }

    /// Cross-field checks that a single field's parser cannot make.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.backend() {
            Backend::ScaleOut { .. } => {}
            Backend::Embedded { .. } if self.redis_url.is_some() => {
                return Err(ConfigError(
                    "SEALPOST_REDIS_URL is set but SEALPOST_DATABASE_URL is not postgres://; scale-out needs both"
                        .into(),
                ));
            }
            Backend::Embedded { .. } => {}
            Backend::Invalid(reason) => return Err(ConfigError(reason)),
        }
        if let Some(schema) = &self.database_schema
            && (schema.is_empty()
                || schema.len() > 63
                || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            return Err(ConfigError("SEALPOST_DATABASE_SCHEMA must be 1-63 characters of a-z, 0-9 and _".into()));
        }
        if self.max_devices == 0 || self.max_devices > 127 {
            return Err(ConfigError("SEALPOST_MAX_DEVICES must be 1..=127".into()));
        }
        if self.ws_window == 0 || self.max_queue_len == 0 || self.max_message_ttl_seconds == 0 {
            return Err(ConfigError(
                "SEALPOST_WS_WINDOW, SEALPOST_MAX_QUEUE_LEN and SEALPOST_MAX_MESSAGE_TTL_SECONDS must be positive"
                    .into(),
            ));
        }
        if self.redis_key_prefix.contains(['{', '}']) {
            return Err(ConfigError(
                "SEALPOST_REDIS_KEY_PREFIX must not contain { or } (they mark cluster hash tags)".into(),
            ));
        }
        if self.token_ttl_seconds == 0 {
            return Err(ConfigError("SEALPOST_TOKEN_TTL_SECONDS must be positive".into()));
        }
        if self.store_timeout_ms == 0 {
            return Err(ConfigError("SEALPOST_STORE_TIMEOUT_MS must be positive".into()));
        }
        if self.attachment_part_bytes < 65536 || self.attachment_ttl_seconds == 0 || self.max_attachment_bytes == 0 {
            return Err(ConfigError(
                "SEALPOST_ATTACHMENT_PART_BYTES must be at least 65536, SEALPOST_ATTACHMENT_TTL_SECONDS and \
                 SEALPOST_MAX_ATTACHMENT_BYTES positive"
                    .into(),
            ));
        }
        if let Some(prefix) = &self.s3_prefix
            && object_store::path::Path::parse(prefix.trim_end_matches('/')).is_err()
        {
            return Err(ConfigError("SEALPOST_S3_PREFIX must be a plain path like `sealpost/`".into()));
        }
        if let Backend::ScaleOut { database_url, redis_url } = self.backend() {
            if let Err(err) = sqlx::postgres::PgConnectOptions::from_str(&database_url) {
                return Err(ConfigError(format!("SEALPOST_DATABASE_URL is not a valid Postgres URL: {err}")));
            }
            if let Err(err) = fred::prelude::Config::from_url(&redis_url) {
                return Err(ConfigError(format!("SEALPOST_REDIS_URL is not a valid Redis URL: {}", err.details())));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError("SEALPOST_TLS_CERT_FILE and SEALPOST_TLS_KEY_FILE must be set together".into()));
        }
        if let Some(origins) = &self.cors_allowed_origins {
            for origin in origins.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                let plain = origin.split_once("://").is_some_and(|(scheme, host)| {
                    (scheme == "https" || scheme == "http") && !host.is_empty() && !host.contains(['/', '?', '#', '*'])
                });
                if !plain {
                    return Err(ConfigError(format!(
                        "SEALPOST_CORS_ALLOWED_ORIGINS: {origin:?} is not an origin like https://chat.example.org \
                         (scheme and host, no path, no wildcard)"
                    )));
                }
            }
        }
        if self.ipv6_prefix_length > 128 {
            return Err(ConfigError("SEALPOST_IPV6_PREFIX_LENGTH must be 0..=128".into()));
        }
        for (variable, schedule) in [
            ("SEALPOST_JOB_REAP_SCHEDULE", &self.job_reap_schedule),
            ("SEALPOST_JOB_PUSH_RETRY_SCHEDULE", &self.job_push_retry_schedule),
            ("SEALPOST_JOB_INACTIVE_DEVICES_SCHEDULE", &self.job_inactive_devices_schedule),
        ] {
            sealpost_jobs::check_schedule(schedule).map_err(|e| ConfigError(format!("{variable}: {e}")))?;
        }
        if self.job_lease_seconds == 0 || self.push_timeout_ms == 0 || self.push_concurrency == 0 {
            return Err(ConfigError(
                "SEALPOST_JOB_LEASE_SECONDS, SEALPOST_PUSH_TIMEOUT_MS and SEALPOST_PUSH_CONCURRENCY must be positive"
                    .into(),
            ));
        }
        if !(self.push_contact.starts_with("mailto:") || self.push_contact.starts_with("https:")) {
            return Err(ConfigError("SEALPOST_PUSH_CONTACT must be a mailto: or https: URL".into()));
        }
        if self.max_header_bytes < 1024 {
            return Err(ConfigError("SEALPOST_MAX_HEADER_BYTES must be at least 1024".into()));
        }
        if self.header_read_timeout_seconds == 0 || self.body_read_timeout_seconds == 0 {
            return Err(ConfigError(
                "SEALPOST_HEADER_READ_TIMEOUT_SECONDS and SEALPOST_BODY_READ_TIMEOUT_SECONDS must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Which storage backend the URLs select.
    pub fn backend(&self) -> Backend {
        let db = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("sealpost.db").display()));
        if db.starts_with("sqlite:") {
            Backend::Embedded { database_url: db }
        } else if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            match &self.redis_url {
                Some(redis)
                    if ["redis://", "redis-cluster://", "rediss://", "rediss-cluster://"]
                        .iter()
                        .any(|scheme| redis.starts_with(scheme)) =>
                {
                    Backend::ScaleOut { database_url: db, redis_url: redis.clone() }
                }
                Some(_) => Backend::Invalid(
                    "SEALPOST_REDIS_URL must start with redis://, rediss:// (TLS), redis-cluster:// or \
                     rediss-cluster:// (TLS)"
                        .into(),
                ),
                None => {
                    Backend::Invalid("SEALPOST_DATABASE_URL is postgres:// but SEALPOST_REDIS_URL is not set".into())
                }
            }
        } else {
            Backend::Invalid("SEALPOST_DATABASE_URL must start with sqlite: or postgres://".into())
        }
    }

    /// Path of a key file: the configured one or its default name in the data directory.
    pub fn key_path(&self, configured: &Option<PathBuf>, default_name: &str) -> PathBuf {
        configured.clone().unwrap_or_else(|| self.data_dir.join(default_name))
    }

    /// `name = value  # source` lines with secrets (and passwords inside URLs) masked.
    pub fn describe(&self, sources: &BTreeMap<&'static str, Source>) -> String {
        let mut out = String::new();
        for field in Config::fields() {
            let value = self.get(field.name).unwrap_or_default();
            let shown = if field.secret && !value.is_empty() { mask_secret(&value) } else { value };
            let source = sources.get(field.name).copied().unwrap_or(Source::Default);
            out.push_str(&format!("{} = {:?}  # {}, {}\n", field.name, shown, field.env, source));
        }
        out
    }
}

/// Masks a secret value; a URL keeps its scheme and host so operators can still see where it points.
fn mask_secret(value: &str) -> String {
    if let Some((scheme, rest)) = value.split_once("://") {
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = host.split(['/', '?']).next().unwrap_or_default();
        format!("{scheme}://****@{host}/****")
    } else {
        "****".into()
    }
}

/// The storage deployment chosen by the URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Embedded { database_url: String },
    ScaleOut { database_url: String, redis_url: String },
    Invalid(String),
}

impl FromStr for RegistrationPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_value(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_parse_and_match_the_documented_values() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.registration_policy, RegistrationPolicy::Open);
        assert_eq!(config.backend(), Backend::Embedded { database_url: "sqlite://./data/sealpost.db".into() });
    }

    #[test]
    fn a_removed_setting_is_warned_about_not_ignored() {
        let loaded = Config::load(None, env(&[("SEALPOST_REAP_INTERVAL_SECONDS", "30")])).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("SEALPOST_JOB_REAP_SCHEDULE"), "{:?}", loaded.warnings);
        assert!(Config::load(None, env(&[])).unwrap().warnings.is_empty());
    }

    #[test]
    fn environment_wins_over_file_and_says_so() {
        let dir = std::env::temp_dir().join(format!("sealpost-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sealpost.toml");
        std::fs::write(&file, "max_devices = 3\nregistration_policy = \"invite\"\n").unwrap();
        let loaded = Config::load(Some(&file), env(&[("SEALPOST_MAX_DEVICES", "4")])).unwrap();
        assert_eq!(loaded.config.max_devices, 4);
        assert_eq!(loaded.config.registration_policy, RegistrationPolicy::Invite);
        assert_eq!(loaded.sources["max_devices"], Source::Env);
        assert_eq!(loaded.sources["registration_policy"], Source::File);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("SEALPOST_MAX_DEVICES"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_come_from_files_and_are_masked() {
        let dir = std::env::temp_dir().join(format!("sealpost-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("db");
        std::fs::write(&secret, "postgres://u:hunter2@db.example:5432/x\n").unwrap();
        let loaded = Config::load(
            None,
            env(&[
                ("SEALPOST_DATABASE_URL_FILE", secret.to_str().unwrap()),
                ("SEALPOST_REDIS_URL", "redis://:pw@cache:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.config.database_url.as_deref(), Some("postgres://u:hunter2@db.example:5432/x"));
        let described = loaded.config.describe(&loaded.sources);
        assert!(!described.contains("hunter2"), "{described}");
        assert!(!described.contains(":pw@"), "{described}");
        assert!(described.contains("db.example:5432"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::load(None, env(&[("SEALPOST_REGISTRATION_POLICY", "everyone")])).unwrap_err();
        assert!(err.0.contains("SEALPOST_REGISTRATION_POLICY"), "{err}");
        let err = Config::load(None, env(&[("SEALPOST_DATABASE_URL", "postgres://x/y")])).unwrap_err();
        assert!(err.0.contains("SEALPOST_REDIS_URL"), "{err}");
        let err = Config::load(None, env(&[("SEALPOST_LIMIT_AUTH_PER_IP", "10 per minute")])).unwrap_err();
        assert!(err.0.contains("SEALPOST_LIMIT_AUTH_PER_IP"), "{err}");
    }

    #[test]
    fn tls_files_come_in_pairs_and_cors_takes_plain_origins() {
        let err = Config::load(None, env(&[("SEALPOST_TLS_CERT_FILE", "/etc/cert.pem")])).unwrap_err();
        assert!(err.0.contains("SEALPOST_TLS_KEY_FILE"), "{err}");
        let both = env(&[("SEALPOST_TLS_CERT_FILE", "/c.pem"), ("SEALPOST_TLS_KEY_FILE", "/k.pem")]);
        assert!(Config::load(None, both).is_ok());
        let good = "https://chat.example.org, http://localhost:5173";
        assert!(Config::load(None, env(&[("SEALPOST_CORS_ALLOWED_ORIGINS", good)])).is_ok());
        for bad in ["*", "https://*.example.org", "chat.example.org", "https://chat.example.org/app", "ftp://x"] {
            let err = Config::load(None, env(&[("SEALPOST_CORS_ALLOWED_ORIGINS", bad)])).unwrap_err();
            assert!(err.0.contains("SEALPOST_CORS_ALLOWED_ORIGINS"), "{bad}: {err}");
        }
        // TLS to Redis is accepted now, centralised and clustered.
        for url in ["rediss://cache:6380", "rediss-cluster://a:6380?node=b:6380"] {
            let scale_out = env(&[("SEALPOST_DATABASE_URL", "postgres://x/y"), ("SEALPOST_REDIS_URL", url)]);
            assert!(Config::load(None, scale_out).is_ok(), "{url}");
        }
    }

    #[test]
    fn rate_limits_round_trip() {
        for text in ["20/1h", "300/1m", "5/30s", "1/2d"] {
            assert_eq!(RateLimit::parse_value(text).unwrap().render(), text);
        }
        assert_eq!(RateLimit::parse_value("10/m").unwrap().period, Duration::from_secs(60));
        assert!(RateLimit::parse_value("0/1m").is_err());
        assert!(RateLimit::parse_value("10/1y").is_err());
    }

    #[test]
    fn every_field_is_documented() {
        let docs = include_str!("../docs/configuration.md");
        for field in Config::fields() {
            let row = format!("| `{}` | `{}` |", field.env, field.default);
            assert!(docs.contains(&row), "docs/configuration.md lacks the row starting {row}");
        }
    }
}
