//! Imported one-time prekeys and envelopes into Redis, and the queue counts of `sealpost stats`.
//!
//! Owns the import scripts and the walk over every queue. Invariants: a device's pools are filled by an
//! import at most once (a mark in the pools' slot says it was done), so keys handed out since are never
//! put back; an envelope is queued at most once (by guid), and a device's queue at most once as a whole;
//! an envelope keeps the expiry it had. The walk only reads, and counts without naming anyone.

use async_trait::async_trait;
use fred::prelude::{Pool, SortedSetsInterface};
use fred::types::Value;
use fred::types::scripts::Script;

use crate::storage::redis::bytes_of;
use crate::storage::redis::keys::Keys;
use crate::storage::redis::prekeys::{encode_ec, encode_kem};
use crate::storage::redis::queue::{queue_member, queue_page, scan_nodes};
use crate::storage::transfer::{DeviceEphemera, EphemeralImport, Imported, QueueCounts, QueueInventory, QueuedAt};
use crate::storage::{NewEnvelope, StoreResult};

/// How long an import mark stays: longer than any envelope or unused prekey is worth keeping apart.
const MARK_TTL_MS: i64 = 400 * 86_400_000;
/// As the queue's own counter (see `queue.rs`).
const COUNTER_TTL_MS: i64 = 400 * 86_400_000;
/// Envelopes per script call, so one call never holds Redis for long.
const ENVELOPES_PER_CALL: usize = 200;

/// Redis as the target of an import, and the source of queue counts.
pub struct RedisImport {
    pool: Pool,
    keys: Keys,
    pools: Script,
    queue: Script,
}

impl RedisImport {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        RedisImport {
            pool,
            keys,
            pools: Script::from_lua(include_str!("scripts/import_pools.lua")),
            queue: Script::from_lua(include_str!("scripts/import_queue.lua")),
        }
    }
}

#[async_trait]
impl EphemeralImport for RedisImport {
    async fn import_pools(&self, device: &DeviceEphemera) -> StoreResult<Imported> {
        let [ec, kem] = self.keys.pre_key_pools(device.aci, device.device);
        let mark = self.keys.pools_imported(device.aci, device.device);
        let mut args: Vec<Value> = vec![MARK_TTL_MS.into(), (device.ec.len() as i64).into()];
        args.extend(device.ec.iter().map(encode_ec));
        args.extend(device.kem.iter().map(encode_kem));
        let written: i64 =
            self.pools.evalsha_with_reload(self.pool.next_connected(), vec![ec, kem, mark], args).await?;
        let total = (device.ec.len() + device.kem.len()) as u64;
        Ok(if written < 0 {
            Imported { new: 0, existing: total }
        } else {
            Imported { new: written as u64, existing: 0 }
        })
    }

    async fn import_queue(&self, device: &DeviceEphemera, now: i64) -> StoreResult<Imported> {
        let [queue, index] = self.keys.queue(device.aci, device.device);
        let keys = vec![
            self.keys.queue_counter(device.aci),
            queue,
            index,
            self.keys.queue_imported(device.aci, device.device),
        ];
        let live: Vec<&NewEnvelope> = device.envelopes.iter().filter(|e| e.expires_at > now).collect();
        let batches: Vec<&[&NewEnvelope]> =
            if live.is_empty() { vec![&[]] } else { live.chunks(ENVELOPES_PER_CALL).collect() };
        let mut done = Imported::default();
        for (i, batch) in batches.iter().enumerate() {
            let last = i + 1 == batches.len();
            let mut args: Vec<Value> = vec![COUNTER_TTL_MS.into(), MARK_TTL_MS.into(), i64::from(last).into()];
            for envelope in batch.iter() {
                args.push(Value::Bytes(queue_member(envelope).into()));
                args.push(Value::Bytes(envelope.guid.to_vec().into()));
                args.push((envelope.expires_at - now).max(1).into());
            }
            let queued: i64 = self.queue.evalsha_with_reload(self.pool.next_connected(), keys.clone(), args).await?;
            if queued < 0 {
                // An earlier import finished this device: everything counts as there.
                return Ok(Imported { new: done.new, existing: live.len() as u64 - done.new });
            }
            done.new += queued as u64;
            done.existing += batch.len() as u64 - queued as u64;
        }
        Ok(done)
    }
}

#[async_trait]
impl QueueInventory for RedisImport {
    async fn queue_counts(&self, queued_at: QueuedAt<'_>, _now: i64) -> StoreResult<QueueCounts> {
        let client = self.pool.next_connected();
        let pattern = self.keys.queue_pattern();
        let mut counts = QueueCounts::default();
        for node in scan_nodes(client) {
            let mut cursor = "0".to_owned();
            loop {
                let (next, queues) = queue_page(client, node.as_ref(), &cursor, &pattern).await?;
                for queue in queues {
                    let len: i64 = self.pool.next_connected().zcard(&queue).await?;
                    if len <= 0 {
                        continue;
                    }
                    counts.envelopes += len as u64;
                    counts.queues += 1;
                    let head: Vec<Value> =
                        self.pool.next_connected().zrange(&queue, 0, 0, None, false, None, false).await?;
                    let at =
                        head.first().and_then(bytes_of).filter(|m| m.len() >= 24).and_then(|m| queued_at(&m[24..]));
                    counts.oldest_queued_at = match (counts.oldest_queued_at, at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                cursor = next;
                if cursor == "0" {
                    break;
                }
            }
        }
        Ok(counts)
    }
}
