//! Floors measured in the same run: what the same machine and the same client reach without sealpost.
//!
//! * relay floor: an in-process axum server that forwards the body of `PUT /relay/{n}` to WebSocket `n` in
//!   a `PUT /api/v1/message` request frame, reads the client's acknowledgement, and stores nothing;
//! * JSON floor: an in-process axum endpoint returning a small JSON document;
//! * storage floors: the queue's storage operations alone, per message (Redis push + ack scripts in a
//!   pipelined loop; SQLite insert + delete in WAL mode).
//!
//! The floor servers run on a runtime of their own (two worker threads, like sealpost on this machine) whose
//! threads are named `floor-srv`, so their CPU time can be told apart from the load generator's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use sealpost::delivery::proto::WebSocketMessage;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stats::CpuProbe;

pub const FLOOR_THREADS: &str = "floor-srv";

#[derive(Default)]
struct Relay {
    sockets: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
}

pub struct FloorServer {
    runtime: Option<tokio::runtime::Runtime>,
    pub base: String,
}

impl FloorServer {
    pub fn start() -> Result<FloorServer, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(FLOOR_THREADS)
            .enable_all()
            .build()
            .map_err(|e| format!("floor runtime: {e}"))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("floor bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| format!("floor listener: {e}"))?;
        let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let router = Router::new()
            .route("/json", get(json_doc))
            .route("/relay/{n}", put(relay_put))
            .route("/ws/{n}", get(relay_socket))
            .with_state(Arc::new(Relay::default()));
        runtime.spawn(async move {
            // Same serving stack as sealpost: plain `axum::serve` on a tokio listener.
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(err) = axum::serve(listener, router).await {
                        eprintln!("floor server: {err}");
                    }
                }
                Err(err) => eprintln!("floor listener: {err}"),
            }
        });
        Ok(FloorServer { runtime: Some(runtime), base })
    }

    pub fn probe() -> CpuProbe {
        CpuProbe::Threads(FLOOR_THREADS)
    }

    pub fn shutdown(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Serialize)]
struct Doc {
    status: &'static str,
    service: &'static str,
    version: u32,
    features: [&'static str; 3],
}

async fn json_doc() -> axum::Json<Doc> {
    axum::Json(Doc { status: "ok", service: "floor", version: 1, features: ["json", "relay", "ws"] })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sent {
    needs_sync: bool,
}

async fn relay_put(State(relay): State<Arc<Relay>>, Path(n): Path<u32>, body: Bytes) -> Response {
    let sender = relay.sockets.lock().unwrap_or_else(|p| p.into_inner()).get(&n).cloned();
    match sender {
        Some(sender) if sender.send(body).await.is_ok() => axum::Json(Sent { needs_sync: false }).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn relay_socket(State(relay): State<Arc<Relay>>, Path(n): Path<u32>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(4096).write_buffer_size(0).on_upgrade(move |socket| relay_loop(relay, n, socket))
}

async fn relay_loop(relay: Arc<Relay>, n: u32, socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    relay.sockets.lock().unwrap_or_else(|p| p.into_inner()).insert(n, tx);
    let (mut sink, mut stream) = socket.split();
    let mut next_id = 1u64;
    let mut unacknowledged = 0usize;
    loop {
        tokio::select! {
            body = rx.recv() => {
                let Some(body) = body else { break };
                let message = WebSocketMessage::request(next_id, "PUT", "/api/v1/message", Some(body.to_vec()), Vec::new());
                next_id += 1;
                unacknowledged += 1;
                if sink.send(Message::Binary(message.encode_to_vec().into())).await.is_err() {
                    break;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Binary(bytes))) => {
                    if WebSocketMessage::decode(bytes.as_ref()).is_ok_and(|m| m.response.is_some()) {
                        unacknowledged = unacknowledged.saturating_sub(1);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = unacknowledged;
    relay.sockets.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
}

/// The storage work of one queued message without the server around it.
#[derive(Debug, Clone, Serialize)]
pub struct StorageFloor {
    pub label: String,
    pub messages: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    /// Storage operations per message (Redis commands, or SQL statements).
    pub ops_per_msg: u32,
    pub ops_per_sec: f64,
    pub note: &'static str,
}

/// The design's queue push (INCR, ZADD, HSET in one script) and ack (HGET, ZREMRANGEBYSCORE, HDEL in one
/// script), pipelined `batch` messages at a time, over 64 queues.
pub async fn redis_floor(redis_url: &str, prefix: &str, duration: Duration, max: u64) -> Result<StorageFloor, String> {
    use fred::prelude::{ClientLike, LuaInterface};
    use fred::types::{ClusterHash, CustomCommand, Value};
    const PUSH: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], seq)
return seq
"#;
    const ACK: &str = r#"
local seq = redis.call('HGET', KEYS[2], ARGV[1])
if not seq then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], seq, seq)
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;
    const BATCH: u64 = 64;
    const QUEUES: u64 = 64;
    let client = crate::server::redis_client(redis_url)?;
    client.init().await.map_err(|e| format!("redis: {e}"))?;
    let push: String = client.script_load(PUSH).await.map_err(|e| format!("script load: {e}"))?;
    let ack: String = client.script_load(ACK).await.map_err(|e| format!("script load: {e}"))?;
    // A queued member is expiry (8) ‖ guid (16) ‖ envelope: a 512-byte content makes a ~600-byte envelope.
    let envelope = sealpost::crypto::random_bytes::<600>();
    let keys = |q: u64| {
        let base = format!("{prefix}floor:{{{q}}}");
        [format!("{base}:seq"), format!("{base}:z"), format!("{base}:i")]
    };
    // Scripts cannot be queued on a fred pipeline through `LuaInterface`; EVALSHA goes as a raw command, hashed
    // on its first key (argument 2).
    let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
    let start = Instant::now();
    let end = start + duration;
    let mut done = 0u64;
    let mut failure = None;
    while done < max && Instant::now() < end {
        let guids: Vec<[u8; 16]> = (0..BATCH).map(|_| sealpost::crypto::random_bytes()).collect();
        let pipeline = client.pipeline();
        for (i, guid) in guids.iter().enumerate() {
            let [seq, z, idx] = keys((done + i as u64) % QUEUES);
            let mut member = Vec::with_capacity(24 + envelope.len());
            member.extend_from_slice(&i64::MAX.to_be_bytes());
            member.extend_from_slice(guid);
            member.extend_from_slice(&envelope);
            let args = vec![
                Value::from(push.as_str()),
                Value::Integer(3),
                Value::from(seq),
                Value::from(z),
                Value::from(idx),
                Value::Bytes(member.into()),
                Value::Bytes(guid.to_vec().into()),
            ];
            let _: () = pipeline.custom(evalsha.clone(), args).await.map_err(|e| e.to_string())?;
        }
        if let Err(err) = pipeline.all::<Vec<Value>>().await {
            failure = Some(format!("push: {err}"));
            break;
        }
        let pipeline = client.pipeline();
        for (i, guid) in guids.iter().enumerate() {
            let [_, z, idx] = keys((done + i as u64) % QUEUES);
            let args = vec![
                Value::from(ack.as_str()),
                Value::Integer(2),
                Value::from(z),
                Value::from(idx),
                Value::Bytes(guid.to_vec().into()),
            ];
            let _: () = pipeline.custom(evalsha.clone(), args).await.map_err(|e| e.to_string())?;
        }
        match pipeline.all::<Vec<i64>>().await {
            Ok(acked) if acked.iter().all(|&n| n == 1) => {}
            Ok(_) => {
                failure = Some("an ack found nothing to remove".into());
                break;
            }
            Err(err) => {
                failure = Some(format!("ack: {err}"));
                break;
            }
        }
        done += BATCH;
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = client.quit().await;
    if let Some(failure) = failure {
        return Err(format!("redis floor: {failure}"));
    }
    Ok(StorageFloor {
        label: "Redis push+ack scripts, pipelined 64 deep".into(),
        messages: done,
        seconds,
        msgs_per_sec: done as f64 / seconds,
        ops_per_msg: 6,
        ops_per_sec: 6.0 * done as f64 / seconds,
        note: "per message: EVALSHA push (INCR, ZADD, HSET) + EVALSHA ack (HGET, ZREMRANGEBYSCORE, HDEL)",
    })
}

/// One INSERT and one DELETE per message (each its own transaction) on the queue table's shape, in WAL
/// mode with synchronous=NORMAL, one connection, one message at a time.
pub async fn sqlite_floor(dir: &std::path::Path, duration: Duration, max: u64) -> Result<StorageFloor, String> {
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let fail = |e: sqlx::Error| format!("sqlite floor: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("sqlite floor dir: {e}"))?;
    let options = SqliteConnectOptions::new()
        .filename(dir.join("floor.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.map_err(fail)?;
    sqlx::raw_sql(
        "CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            aci TEXT NOT NULL,
            device_id INTEGER NOT NULL,
            guid BLOB NOT NULL UNIQUE,
            expires_at INTEGER NOT NULL,
            envelope BLOB NOT NULL
        );
        CREATE INDEX messages_by_device ON messages (aci, device_id, seq);
        CREATE INDEX messages_by_expiry ON messages (expires_at);",
    )
    .execute(&mut conn)
    .await
    .map_err(fail)?;
    let envelope = sealpost::crypto::random_bytes::<600>().to_vec();
    let aci = uuid::Uuid::new_v4().hyphenated().to_string();
    let start = Instant::now();
    let end = start + duration;
    let mut done = 0u64;
    while done < max && Instant::now() < end {
        let guid = sealpost::crypto::random_bytes::<16>().to_vec();
        sqlx::query("INSERT INTO messages (aci, device_id, guid, expires_at, envelope) VALUES (?, ?, ?, ?, ?)")
            .bind(&aci)
            .bind(1i64)
            .bind(&guid)
            .bind(i64::MAX)
            .bind(&envelope)
            .execute(&mut conn)
            .await
            .map_err(fail)?;
        let deleted = sqlx::query("DELETE FROM messages WHERE guid = ? AND aci = ? AND device_id = ?")
            .bind(&guid)
            .bind(&aci)
            .bind(1i64)
            .execute(&mut conn)
            .await
            .map_err(fail)?;
        if deleted.rows_affected() != 1 {
            return Err("sqlite floor: a delete found nothing".into());
        }
        done += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = conn.close().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(StorageFloor {
        label: "SQLite insert+delete, WAL, synchronous=NORMAL".into(),
        messages: done,
        seconds,
        msgs_per_sec: done as f64 / seconds,
        ops_per_msg: 2,
        ops_per_sec: 2.0 * done as f64 / seconds,
        note: "per message: INSERT then DELETE by guid, each autocommitted, one connection, sequential",
    })
}
