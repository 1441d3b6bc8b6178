//! The group-commit writer of the embedded store and the queue lengths it remembers.
//!
//! The per-message writes (queue pushes, acknowledgements, one-time prekey claims) are sent here as
//! [`WriteOp`]s; one thread that owns its own SQLite connection commits whatever has accumulated in one
//! transaction, so under load one commit serves many messages. The thread runs the statements itself: a
//! message costs one hand-off in and one answer out, not a hand-off per statement to a driver's worker
//! thread (which is what made a message cost hundreds of microseconds of futex wake-ups). The SQL of the
//! pushes and acknowledgements lives here, beside the queue lengths it keeps current; that of the claims
//! (and of putting reserved prekeys back at a stop) in `prekey_rows.rs`.
//!
//! Invariants: an op is answered only after its transaction committed (a push is acknowledged only once
//! it is durable), and a failing batch is retried op by op so one bad op cannot fail its neighbours. Every
//! transaction here begins IMMEDIATE, and so must every other write transaction of the embedded store
//! (the pool connection of `mod.rs`): a deferred one that read first could not take the write lock once
//! this thread committed in between. On shutdown the writer takes no new op but answers every one already
//! queued before it stops; then the checkpointer (`checkpoint.rs`) copies the WAL into the database file
//! once more. Neither must ever be started other than through `start` (the thread is watched by a
//! task of `shutdown::Tasks`).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Aci, DeviceId};
use crate::shutdown::{Shutdown, Tasks};
use crate::storage::embedded::gate::PoolWrites;
use crate::storage::embedded::memory::LocalBus;
use crate::storage::embedded::prekey_rows;
use crate::storage::embedded::reserve::{Reserves, Taken};
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::{NewEnvelope, PushOutcome, QueuedEnvelope, Recipient, StoreError, StoreResult};

/// Ops waiting for the batch writer before senders have to wait for room.
const BATCH_QUEUE: usize = 4096;
/// Ops committed together at most.
const MAX_BATCH: usize = 256;

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// Where the store sends its per-message writes.
pub type Batches = mpsc::Sender<WriteOp>;

/// One per-message write for the batch writer, with where to send its result.
pub enum WriteOp {
    Push {
        aci: Aci,
        items: Vec<(Recipient, NewEnvelope)>,
        max_len: u32,
        reply: Reply<PushOutcome>,
    },
    Ack {
        aci: Aci,
        device: DeviceId,
        guids: Vec<[u8; 16]>,
        reply: Reply<u64>,
    },
    /// Take up to `ec` and `kem` one-time keys of the device, in key-id order (`prekey_rows.rs`).
    Claim {
        aci: Aci,
        device: DeviceId,
        ec: usize,
        kem: usize,
        reply: Reply<Taken>,
    },
    /// Sent by the watching task when the server stops: take nothing new, answer what is queued, end.
    Stop,
}

/// The result of one op inside a transaction that is not committed yet.
enum Applied {
    /// The outcome, and when queued the queue position of each item.
    Push(PushOutcome, Vec<u64>),
    Ack(u64),
    Claim(Taken),
}

/// Opens the writer thread's own connection to the database file at `path`, with the settings of every
/// connection (`mod.rs`). It never checkpoints on commit (that would put an fsync of the database file in
/// front of some unlucky message); the checkpointer does that in the background.
pub fn open(path: &std::path::Path) -> StoreResult<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(super::BUSY_TIMEOUT)?;
    for (name, value) in super::PRAGMAS {
        conn.pragma_update(None, name, value)?;
    }
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// What the writer thread shares with the store: the bus a committed push hands its envelopes to, the
/// rare writes it yields to, and the prekey reserves it puts back into the table at a stop.
pub struct Shared {
    pub bus: Arc<LocalBus>,
    pub pool_writes: Arc<PoolWrites>,
    pub reserves: Arc<Reserves>,
}

/// Starts the batch writer's thread on `conn` (its own connection), a task that tells it when the server
/// stops, and the checkpointer on its own connection; returns where to send ops.
pub fn start(
    tasks: &Tasks,
    conn: rusqlite::Connection,
    checkpointer: sqlx::SqliteConnection,
    shared: Shared,
) -> StoreResult<Batches> {
    let (batches, queued) = mpsc::channel(BATCH_QUEUE);
    let (thread_finished, thread_done) = oneshot::channel();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || run_batches(conn, queued, shared, thread_finished))
        .map_err(|e| StoreError::Failed(format!("cannot start the SQLite writer thread: {e}")))?;
    // Only a weak handle: the store dropping its senders must still end the thread.
    let stop = batches.downgrade();
    let (writer_finished, writer_done) = oneshot::channel::<()>();
    tasks.spawn("sqlite writer", move |shutdown| watch_writer(stop, thread_done, shutdown, writer_finished));
    tasks.spawn("sqlite checkpointer", move |shutdown| {
        super::checkpoint::checkpoint_regularly(checkpointer, writer_done, shutdown)
    });
    Ok(batches)
}

/// Waits for the stop signal and passes it to the thread, then for the thread's last commit; dropping
/// `_finished` on return tells the checkpointer.
async fn watch_writer(
    stop: mpsc::WeakSender<WriteOp>,
    mut thread_done: oneshot::Receiver<()>,
    mut shutdown: Shutdown,
    _finished: oneshot::Sender<()>,
) {
    tokio::select! {
        _ = &mut thread_done => return,
        _ = shutdown.recv() => {}
    }
    if let Some(batches) = stop.upgrade() {
        let _ = batches.send(WriteOp::Stop).await;
    }
    let _ = thread_done.await;
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

/// The writer thread: takes whatever ops are waiting (at least one, at most [`MAX_BATCH`]) and commits
/// them in one transaction, until the store is dropped or [`WriteOp::Stop`] comes and the ops queued by
/// then are answered; then the reserved prekeys go back into the table. `_finished` is dropped on return.
fn run_batches(
    mut conn: rusqlite::Connection,
    mut queued: mpsc::Receiver<WriteOp>,
    shared: Shared,
    _finished: oneshot::Sender<()>,
) {
    let Shared { bus, pool_writes, reserves } = shared;
    let mut lengths = QueueLengths::default();
    while let Some(first) = queued.blocking_recv() {
        if lengths.known.len() > MAX_KNOWN_LENGTHS {
            lengths.known.clear();
        }
        let mut ops = Vec::with_capacity(8);
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                // Senders get an error from now on; what is already queued is still received.
                WriteOp::Stop => queued.close(),
                op => ops.push(op),
            }
            if ops.len() < MAX_BATCH {
                next = queued.try_recv().ok();
            }
        }
        if ops.is_empty() {
            continue;
        }
        pool_writes.yield_to_pool();
        metrics::histogram!("sealpost_sqlite_batch_size").record(ops.len() as f64);
        match apply_batch(&mut conn, &ops, &mut lengths) {
            Ok(results) => {
                for (mut op, result) in ops.into_iter().zip(results) {
                    wake_if_queued(&bus, &mut op, &result);
                    answer(op, Ok(result));
                }
            }
            Err(_) if ops.len() > 1 => {
                for mut op in ops {
                    let result =
                        apply_batch(&mut conn, std::slice::from_ref(&op), &mut lengths).map(|mut r| r.remove(0));
                    if let Ok(applied) = &result {
                        wake_if_queued(&bus, &mut op, applied);
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
    if let Err(err) = prekey_rows::put_back(&mut conn, &reserves) {
        tracing::warn!(error = %err, "could not put the reserved one-time prekeys back; they are lost");
    }
}

/// Once a push is committed, the sockets of its devices get its envelopes (the queue owns the wake-up).
/// The committed op needs its envelopes no more, so they move to the bus rather than being copied.
fn wake_if_queued(bus: &LocalBus, op: &mut WriteOp, result: &Applied) {
    if let (WriteOp::Push { aci, items, .. }, Applied::Push(PushOutcome::Queued, seqs)) = (op, result) {
        for ((recipient, item), &seq) in items.iter_mut().zip(seqs) {
            let envelope = std::mem::take(&mut item.envelope);
            let queued = QueuedEnvelope { seq, guid: item.guid, expires_at: item.expires_at, envelope };
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
        (WriteOp::Stop, _) => {}
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

fn apply_batch(
    conn: &mut rusqlite::Connection,
    ops: &[WriteOp],
    lengths: &mut QueueLengths,
) -> StoreResult<Vec<Applied>> {
    lengths.pending.clear();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            WriteOp::Push { aci, items, max_len, .. } => {
                let (outcome, seqs) = push_in(&tx, *aci, items, *max_len, lengths)?;
                Applied::Push(outcome, seqs)
            }
            WriteOp::Ack { aci, device, guids, .. } => Applied::Ack(ack_in(&tx, *aci, *device, guids, lengths)?),
            WriteOp::Claim { aci, device, ec, kem, .. } => {
                Applied::Claim(prekey_rows::take(&tx, *aci, *device, *ec, *kem)?)
            }
            WriteOp::Stop => return Err(StoreError::Corrupt("a stop op in a batch")),
        });
    }
    tx.commit()?;
    let committed = std::mem::take(&mut lengths.pending);
    lengths.known.extend(committed);
    Ok(results)
}

fn push_in(
    tx: &rusqlite::Transaction<'_>,
    aci: Aci,
    items: &[(Recipient, NewEnvelope)],
    max_len: u32,
    lengths: &mut QueueLengths,
) -> StoreResult<(PushOutcome, Vec<u64>)> {
    let now = crate::domain::now_millis();
    let max = i64::from(max_len);
    let aci_text = aci_text(aci);
    for (recipient, _) in items {
        // A device removed (or replaced) since the sender looked: refuse rather than fail on the foreign
        // key, or worse, queue for a successor.
        let incarnation: Option<i64> = tx
            .prepare_cached("SELECT incarnation FROM devices WHERE aci = ?1 AND device_id = ?2")?
            .query_row(params![aci_text, i64::from(recipient.device.0)], |row| row.get(0))
            .optional()?;
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
                let counted: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM messages WHERE aci = ?1 AND device_id = ?2 AND expires_at > ?3",
                    )?
                    .query_row(params![aci_text, i64::from(device.0), now], |row| row.get(0))?;
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
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages (aci, device_id, guid, expires_at, envelope) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
    )?;
    let mut seqs = Vec::with_capacity(items.len());
    for (recipient, item) in items {
        let seq: i64 = insert.query_row(
            params![aci_text, i64::from(recipient.device.0), &item.guid[..], item.expires_at, &item.envelope[..]],
            |row| row.get(0),
        )?;
        seqs.push(seq as u64);
    }
    Ok((PushOutcome::Queued, seqs))
}

fn ack_in(
    tx: &rusqlite::Transaction<'_>,
    aci: Aci,
    device: DeviceId,
    guids: &[[u8; 16]],
    lengths: &mut QueueLengths,
) -> StoreResult<u64> {
    let aci_text = aci_text(aci);
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE guid = ?1 AND aci = ?2 AND device_id = ?3")?;
    let mut deleted = 0;
    for guid in guids {
        deleted += delete.execute(params![&guid[..], aci_text, i64::from(device.0)])? as u64;
    }
    if let Some(length) = lengths.get(&(aci, device)) {
        lengths.pending.insert((aci, device), (length - deleted as i64).max(0));
    }
    Ok(deleted)
}
