//! The group-commit writer of the embedded store, the queue lengths it remembers, and the WAL checkpointer.
//!
//! The per-message writes (queue pushes, acknowledgements, one-time prekey claims) are sent here as
//! [`WriteOp`]s; one task commits whatever has accumulated in one transaction, so under load one fsync
//! serves many messages. The SQL of those three writes lives here because it runs inside that shared
//! transaction, beside the queue lengths it keeps current.
//!
//! Invariants: an op is answered only after its transaction committed (a push is acknowledged only once
//! it is durable), and a failing batch is retried op by op so one bad op cannot fail its neighbours. On
//! shutdown the writer takes no new op but answers every one already queued before it stops; then the
//! checkpointer copies the WAL into the database file once more and closes its connection. Neither task
//! must ever be started other than through `shutdown::Tasks`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Aci, DeviceId};
use crate::shutdown::{Shutdown, Tasks};
use crate::storage::embedded::memory::LocalBus;
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::rows::{self, KIND_EC, KIND_KEM};
use crate::storage::{
    EcOneTimeKey, NewEnvelope, PushOutcome, QueuedEnvelope, Recipient, SignedKemKey, StoreError, StoreResult,
};

/// Ops waiting for the batch writer before senders have to wait for room.
const BATCH_QUEUE: usize = 4096;
/// Ops committed together at most.
const MAX_BATCH: usize = 256;
/// How often the background checkpoint copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// Where the store sends its per-message writes.
pub type Batches = mpsc::Sender<WriteOp>;

/// One per-message write for the batch writer, with where to send its result.
pub enum WriteOp {
    Push { aci: Aci, items: Vec<(Recipient, NewEnvelope)>, max_len: u32, reply: Reply<PushOutcome> },
    Ack { aci: Aci, device: DeviceId, guids: Vec<[u8; 16]>, reply: Reply<u64> },
    Claim { aci: Aci, device: DeviceId, reply: Reply<(Option<EcOneTimeKey>, Option<SignedKemKey>)> },
}

/// The result of one op inside a transaction that is not committed yet.
enum Applied {
    /// The outcome, and when queued the queue position of each item.
    Push(PushOutcome, Vec<u64>),
    Ack(u64),
    Claim((Option<EcOneTimeKey>, Option<SignedKemKey>)),
}

/// Starts the batch writer on `pool` (the one writer connection) and the checkpointer on its own
/// connection; returns where to send ops. A committed push wakes its devices' sockets through `bus`.
pub fn start(tasks: &Tasks, pool: SqlitePool, checkpointer: sqlx::SqliteConnection, bus: Arc<LocalBus>) -> Batches {
    let (batches, queued) = mpsc::channel(BATCH_QUEUE);
    let (finished, writer_finished) = oneshot::channel();
    tasks.spawn("sqlite writer", move |shutdown| run_batches(pool, queued, bus, shutdown, finished));
    tasks.spawn("sqlite checkpointer", move |shutdown| checkpoint_regularly(checkpointer, writer_finished, shutdown));
    batches
}

impl Sqlite {
    /// Hands an op to the batch writer and waits for its answer, which comes after the commit.
    pub(super) async fn batched<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> StoreResult<T> {
        let stopped = || StoreError::Failed("the batch writer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.batches.send(op(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes whatever ops are waiting (at least one, at most [`MAX_BATCH`]) and commits them in one
/// transaction, until the store is dropped or `shutdown` fires and the ops queued by then are answered.
/// `_finished` is dropped on return, which tells the checkpointer that the last commit is done.
async fn run_batches(
    pool: SqlitePool,
    mut queued: mpsc::Receiver<WriteOp>,
    bus: Arc<LocalBus>,
    mut shutdown: Shutdown,
    _finished: oneshot::Sender<()>,
) {
    let mut lengths = QueueLengths::default();
    let mut stopping = false;
    loop {
        let next = if stopping {
            queued.recv().await
        } else {
            tokio::select! {
                op = queued.recv() => op,
                _ = shutdown.recv() => {
                    // Senders get an error from now on; what is already queued is still received below.
                    queued.close();
                    stopping = true;
                    continue;
                }
            }
        };
        let Some(first) = next else { break };
        if lengths.known.len() > MAX_KNOWN_LENGTHS {
            lengths.known.clear();
        }
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        metrics::histogram!("sealpost_sqlite_batch_size").record(ops.len() as f64);
        match apply_batch(&pool, &ops, &mut lengths).await {
            Ok(results) => {
                for (op, result) in ops.into_iter().zip(results) {
                    wake_if_queued(&bus, &op, &result);
                    answer(op, Ok(result));
                }
            }
            Err(_) if ops.len() > 1 => {
                for op in ops {
                    let result =
                        apply_batch(&pool, std::slice::from_ref(&op), &mut lengths).await.map(|mut r| r.remove(0));
                    if let Ok(applied) = &result {
                        wake_if_queued(&bus, &op, applied);
                    }
                    answer(op, result);
                }
            }
            Err(err) => {
                for op in ops {
                    answer(op, Err(StoreError::Failed(err.to_string())));
                }
            }
        }
    }
}

/// Once a push is committed, the sockets of its devices hear of it (the queue owns the wake-up).
fn wake_if_queued(bus: &LocalBus, op: &WriteOp, result: &Applied) {
    if let (WriteOp::Push { aci, items, .. }, Applied::Push(PushOutcome::Queued, seqs)) = (op, result) {
        for ((recipient, item), &seq) in items.iter().zip(seqs) {
            let queued =
                QueuedEnvelope { seq, guid: item.guid, expires_at: item.expires_at, envelope: item.envelope.clone() };
            bus.queued(*aci, recipient.device, queued);
        }
    }
}

fn answer(op: WriteOp, result: StoreResult<Applied>) {
    // A caller that went away (request cancelled) just does not hear the answer.
    match (op, result) {
        (WriteOp::Push { reply, .. }, Ok(Applied::Push(r, _))) => drop(reply.send(Ok(r))),
        (WriteOp::Ack { reply, .. }, Ok(Applied::Ack(r))) => drop(reply.send(Ok(r))),
        (WriteOp::Claim { reply, .. }, Ok(Applied::Claim(r))) => drop(reply.send(Ok(r))),
        (WriteOp::Push { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (WriteOp::Ack { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (WriteOp::Claim { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (op, Ok(_)) => answer(op, Err(StoreError::Corrupt("batch result of the wrong kind"))),
    }
}

/// Queue lengths the batch writer has counted, so a push need not count its queue with a query each time.
///
/// Only the writer changes queues, except device removal and the reaper, which can only shorten them; so
/// a known length is never below the truth, and a queue that looks full is counted again before a push is
/// refused.
#[derive(Default)]
struct QueueLengths {
    known: HashMap<(Aci, DeviceId), i64>,
    /// Lengths changed by the transaction in progress; merged into `known` only once it commits.
    pending: HashMap<(Aci, DeviceId), i64>,
}

/// Devices whose queue length the writer remembers at most.
const MAX_KNOWN_LENGTHS: usize = 100_000;

impl QueueLengths {
    fn get(&self, key: &(Aci, DeviceId)) -> Option<i64> {
        self.pending.get(key).or_else(|| self.known.get(key)).copied()
    }
}

type Transaction<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

async fn apply_batch(pool: &SqlitePool, ops: &[WriteOp], lengths: &mut QueueLengths) -> StoreResult<Vec<Applied>> {
    lengths.pending.clear();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            WriteOp::Push { aci, items, max_len, .. } => {
                let (outcome, seqs) = push_in(&mut tx, *aci, items, *max_len, lengths).await?;
                Applied::Push(outcome, seqs)
            }
            WriteOp::Ack { aci, device, guids, .. } => {
                Applied::Ack(ack_in(&mut tx, *aci, *device, guids, lengths).await?)
            }
            WriteOp::Claim { aci, device, .. } => Applied::Claim(claim_in(&mut tx, *aci, *device).await?),
        });
    }
    tx.commit().await?;
    let committed = std::mem::take(&mut lengths.pending);
    lengths.known.extend(committed);
    Ok(results)
}

async fn push_in(
    tx: &mut Transaction<'_>,
    aci: Aci,
    items: &[(Recipient, NewEnvelope)],
    max_len: u32,
    lengths: &mut QueueLengths,
) -> StoreResult<(PushOutcome, Vec<u64>)> {
    let now = crate::domain::now_millis();
    let max = i64::from(max_len);
    for (recipient, _) in items {
        // A device removed (or replaced) since the sender looked: refuse rather than fail on the foreign
        // key, or worse, queue for a successor.
        let incarnation: Option<i64> =
            sqlx::query_scalar("SELECT incarnation FROM devices WHERE aci = ? AND device_id = ?")
                .bind(aci_text(aci))
                .bind(i64::from(recipient.device.0))
                .fetch_optional(&mut **tx)
                .await?;
        if incarnation != Some(recipient.incarnation.0) {
            return Ok((PushOutcome::Gone(recipient.device), Vec::new()));
        }
    }
    for (recipient, _) in items {
        let device = &recipient.device;
        let key = (aci, *device);
        let queued = match lengths.get(&key) {
            Some(known) if known < max => known,
            // Unknown, or looks full: count (expired envelopes are invisible and do not count).
            _ => {
                let counted: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM messages WHERE aci = ? AND device_id = ? AND expires_at > ?",
                )
                .bind(aci_text(aci))
                .bind(i64::from(device.0))
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                lengths.pending.insert(key, counted);
                counted
            }
        };
        if queued >= max {
            return Ok((PushOutcome::Full(*device), Vec::new()));
        }
    }
    for (recipient, _) in items {
        let key = (aci, recipient.device);
        let length = lengths.get(&key).unwrap_or(0);
        lengths.pending.insert(key, length + 1);
    }
    let mut seqs = Vec::with_capacity(items.len());
    for (recipient, item) in items {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO messages (aci, device_id, guid, expires_at, envelope) VALUES (?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(aci_text(aci))
        .bind(i64::from(recipient.device.0))
        .bind(&item.guid[..])
        .bind(item.expires_at)
        .bind(&item.envelope)
        .fetch_one(&mut **tx)
        .await?;
        seqs.push(seq as u64);
    }
    Ok((PushOutcome::Queued, seqs))
}

async fn ack_in(
    tx: &mut Transaction<'_>,
    aci: Aci,
    device: DeviceId,
    guids: &[[u8; 16]],
    lengths: &mut QueueLengths,
) -> StoreResult<u64> {
    let mut deleted = 0;
    for guid in guids {
        let done = sqlx::query("DELETE FROM messages WHERE guid = ? AND aci = ? AND device_id = ?")
            .bind(&guid[..])
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .execute(&mut **tx)
            .await?;
        deleted += done.rows_affected();
    }
    if let Some(length) = lengths.get(&(aci, device)) {
        lengths.pending.insert((aci, device), (length - deleted as i64).max(0));
    }
    Ok(deleted)
}

async fn claim_in(
    tx: &mut Transaction<'_>,
    aci: Aci,
    device: DeviceId,
) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)> {
    let ec = claim_one(tx, aci, device, KIND_EC).await?;
    let kem = claim_one(tx, aci, device, KIND_KEM).await?;
    let ec = ec.map(|(id, public_key, _)| rows::one_time_ec(rows::key_id(id), &public_key)).transpose()?;
    let kem = kem
        .map(|(id, public_key, signature)| {
            let signature = signature.ok_or(StoreError::Corrupt("kem signature"))?;
            rows::signed_kem(rows::key_id(id), public_key, &signature)
        })
        .transpose()?;
    Ok((ec, kem))
}

/// Deletes the device's one-time key of `kind` with the smallest id and returns its `key_id, public_key,
/// signature`. One DELETE … RETURNING inside the writer's transaction: the row a caller deletes is the row
/// it receives, and nobody else can.
async fn claim_one(
    tx: &mut Transaction<'_>,
    aci: Aci,
    device: DeviceId,
    kind: i16,
) -> StoreResult<Option<(i64, Vec<u8>, Option<Vec<u8>>)>> {
    Ok(sqlx::query_as(
        "DELETE FROM one_time_keys WHERE rowid = (
             SELECT rowid FROM one_time_keys WHERE aci = ? AND device_id = ? AND kind = ? ORDER BY key_id LIMIT 1)
         RETURNING key_id, public_key, signature",
    )
    .bind(aci_text(aci))
    .bind(i64::from(device.0))
    .bind(i64::from(kind))
    .fetch_optional(&mut **tx)
    .await?)
}

/// Keeps the WAL short with PASSIVE checkpoints, which wait for nobody and block no writer, so the fsync
/// they need happens off every request's path. Once the writer has made its last commit (it stopped, or
/// the store was dropped), checkpoints one last time so the database file holds everything.
async fn checkpoint_regularly(
    mut conn: sqlx::SqliteConnection,
    mut writer_finished: oneshot::Receiver<()>,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => checkpoint(&mut conn).await,
            _ = &mut writer_finished => break,
            _ = shutdown.recv() => {
                // The writer is answering what was queued: its last commit must be in the final checkpoint.
                let _ = writer_finished.await;
                break;
            }
        }
    }
    checkpoint(&mut conn).await;
    if let Err(err) = sqlx::Connection::close(conn).await {
        tracing::debug!(error = %err, "closing the checkpointer's connection failed");
    }
}

async fn checkpoint(conn: &mut sqlx::SqliteConnection) {
    if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(conn).await {
        tracing::warn!(error = %err, "WAL checkpoint failed");
    }
}
