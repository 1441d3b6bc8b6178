//! Per-device envelope queues in Redis.
//!
//! Per account a sequence counter; per device a sorted set (score = sequence number, member = expiry ‖
//! guid ‖ envelope) and a hash guid → sequence number for acknowledgements, all under the account's hash
//! tag, so one script queues for every device of a send, takes the sender's rate-limit token and
//! publishes the wake-ups in one round trip.
//!
//! Invariants: a push is all or nothing; an expired envelope is never returned (reads filter on expiry and
//! drop what they meet); a push naming a removed device incarnation is refused, because removal deletes the
//! queue and sets a mark in one step. Redis expires a whole queue with its newest envelope; the reaper
//! deletes expired envelopes inside live queues, a bounded number of queues per run, resuming where the
//! last run stopped. It never names a key itself (see `keys.rs`) and never blocks Redis for longer than one
//! queue's script.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, ClientLike, ClusterInterface, KeysInterface, Pool};
use fred::types::Value;
use fred::types::config::Server;
use fred::types::scan::ScanType;
use fred::types::scripts::Script;

use crate::domain::{Aci, DeviceId};
use crate::storage::redis::bytes_of;
use crate::storage::redis::keys::Keys;
use crate::storage::redis::limits::bucket_args;
use crate::storage::{
    MessageQueue, NewEnvelope, PushOutcome, QueuedEnvelope, RateBucket, Recipient, StoreError, StoreResult,
};

/// How long an account's sequence counter outlives its last push: longer than any envelope can live, so a
/// counter never restarts under a connected socket's cursor.
const COUNTER_TTL_MS: i64 = 400 * 86_400_000;
/// Queues one reaper run purges at most, over all nodes.
const REAP_QUEUES_PER_RUN: usize = 4096;
/// `SCAN` pages one reaper run reads at most on each node, so a run over many keys but few queues is
/// short too.
const REAP_PAGES_PER_RUN: usize = 32;
/// Keys one `SCAN` call looks at.
const SCAN_COUNT: u32 = 1000;

/// Redis: the message queues.
pub struct RedisQueue {
    pool: Pool,
    keys: Keys,
    push: Script,
    peek: Script,
    ack: Script,
    remove_queue: Script,
    reap: Script,
    /// Where the reaper's scan of each node (by address; "" without a cluster) stopped, "0" after a full pass.
    reap_cursors: Mutex<HashMap<String, String>>,
}

impl RedisQueue {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        RedisQueue {
            pool,
            keys,
            push: Script::from_lua(concat!(
                include_str!("scripts/token_bucket.lua"),
                include_str!("scripts/purge_expired.lua"),
                include_str!("scripts/push.lua")
            )),
            peek: Script::from_lua(include_str!("scripts/peek.lua")),
            ack: Script::from_lua(include_str!("scripts/ack.lua")),
            remove_queue: Script::from_lua(include_str!("scripts/remove_queue.lua")),
            reap: Script::from_lua(concat!(
                include_str!("scripts/purge_expired.lua"),
                include_str!("scripts/reap.lua")
            )),
            reap_cursors: Mutex::default(),
        }
    }
}

#[async_trait]
impl MessageQueue for RedisQueue {
    async fn push(
        &self,
        aci: Aci,
        items: &[(Recipient, NewEnvelope)],
        max_len: u32,
        bucket: Option<&RateBucket>,
    ) -> StoreResult<PushOutcome> {
        let now = crate::domain::now_millis();
        let ttl = items.iter().map(|(_, e)| e.expires_at - now).max().unwrap_or(1).max(1);
        let rate_key = match bucket {
            Some(bucket) => self.keys.rate_bucket_beside(bucket.name, &bucket.key, aci),
            None => self.keys.queue_counter(aci),
        };
        let mut keys = vec![self.keys.queue_counter(aci), rate_key];
        let mut args: Vec<Value> = vec![i64::from(max_len).into(), ttl.into(), COUNTER_TTL_MS.into()];
        match bucket {
            Some(bucket) => args.extend(bucket_args(&bucket.limit).map(Value::from)),
            None => args.extend(["", "", ""].map(Value::from)),
        }
        for (recipient, item) in items {
            keys.extend(self.keys.queue(aci, recipient.device));
            keys.push(self.keys.removal_mark(aci, *recipient));
            args.push(Value::Bytes(queue_member(item).into()));
            args.push(Value::Bytes(item.guid.to_vec().into()));
            args.push(self.keys.device_channel(aci, recipient.device).into());
        }
        let reply: Vec<i64> = self.push.evalsha_with_reload(self.pool.next_connected(), keys, args).await?;
        match reply.as_slice() {
            [0, _] => Ok(PushOutcome::Queued),
            [1, wait] => Ok(PushOutcome::Limited(Duration::from_millis((*wait).max(1) as u64))),
            [code @ (2 | 3), index] => {
                let device = items.get((*index - 1).max(0) as usize).map(|(r, _)| r.device);
                let device = device.ok_or(StoreError::Corrupt("push reply"))?;
                Ok(if *code == 2 { PushOutcome::Full(device) } else { PushOutcome::Gone(device) })
            }
            _ => Err(StoreError::Corrupt("push reply")),
        }
    }

    async fn peek(
        &self,
        aci: Aci,
        device: DeviceId,
        after: u64,
        limit: usize,
        now: i64,
    ) -> StoreResult<Vec<QueuedEnvelope>> {
        let [queue, _] = self.keys.queue(aci, device);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut expired = Vec::new();
        let mut cursor = after;
        // Expired envelopes met on the way are skipped, and the page is refilled past them, so a short
        // page always means the end of the queue.
        while out.len() < limit {
            let wanted = limit - out.len();
            let reply: Vec<Value> = self
                .peek
                .evalsha_with_reload(
                    self.pool.next_connected(),
                    vec![queue.clone()],
                    vec![cursor.to_string(), wanted.to_string()],
                )
                .await?;
            let fetched = reply.len() / 2;
            sort_page(&reply, now, &mut cursor, &mut out, &mut expired)?;
            if fetched < wanted {
                break;
            }
        }
        // Expired envelopes are dropped as they are met; whole queues also expire with their last envelope.
        if !expired.is_empty() {
            self.ack_many(aci, device, &expired).await?;
        }
        Ok(out)
    }

    async fn ack(&self, aci: Aci, device: DeviceId, guid: [u8; 16]) -> StoreResult<bool> {
        Ok(self.ack_many(aci, device, &[guid]).await? == 1)
    }

    async fn ack_many(&self, aci: Aci, device: DeviceId, guids: &[[u8; 16]]) -> StoreResult<u64> {
        let keys = self.keys.queue(aci, device).to_vec();
        let args: Vec<Value> = guids.iter().map(|g| Value::Bytes(g.to_vec().into())).collect();
        let removed: i64 = self.ack.evalsha_with_reload(self.pool.next_connected(), keys, args).await?;
        Ok(removed.max(0) as u64)
    }

    async fn remove_device(&self, aci: Aci, device: Recipient) -> StoreResult<()> {
        let [queue, index] = self.keys.queue(aci, device.device);
        let mark = self.keys.removal_mark(aci, device);
        let _: i64 =
            self.remove_queue.evalsha_with_reload(self.pool.next_connected(), vec![queue, index, mark], ()).await?;
        Ok(())
    }

    async fn remove_account(&self, aci: Aci) -> StoreResult<()> {
        let _: i64 = self.pool.next_connected().del(self.keys.queue_counter(aci)).await?;
        Ok(())
    }

    async fn reap(&self, now: i64) -> StoreResult<u64> {
        let client = self.pool.next_connected();
        // SCAN walks one node's keys: in a cluster, every primary's in turn.
        let nodes = scan_nodes(client);
        let budget = REAP_QUEUES_PER_RUN / nodes.len().max(1);
        let pattern = self.keys.queue_pattern();
        let mut reaped = 0;
        for node in nodes {
            let name = node.as_ref().map(Server::to_string).unwrap_or_default();
            let saved = self.cursors().get(&name).cloned();
            let mut cursor = saved.unwrap_or_else(|| "0".to_owned());
            let mut visited = 0;
            for _ in 0..REAP_PAGES_PER_RUN {
                let (next, queues) = queue_page(client, node.as_ref(), &cursor, &pattern).await?;
                for queue in queues {
                    let Some(index) = self.keys.queue_index_of(&queue) else { continue };
                    let purged: i64 = self.reap.evalsha_with_reload(client, vec![queue, index], vec![now]).await?;
                    reaped += purged.max(0) as u64;
                    visited += 1;
                }
                cursor = next;
                if cursor == "0" || visited >= budget {
                    break;
                }
            }
            self.cursors().insert(name, cursor);
        }
        Ok(reaped)
    }
}

impl RedisQueue {
    fn cursors(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.reap_cursors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue's sorted-set member: expiry ‖ guid ‖ envelope.
pub(super) fn queue_member(item: &NewEnvelope) -> Vec<u8> {
    let mut member = Vec::with_capacity(24 + item.envelope.len());
    member.extend_from_slice(&item.expires_at.to_be_bytes());
    member.extend_from_slice(&item.guid);
    member.extend_from_slice(&item.envelope);
    member
}

/// The nodes a `SCAN` over every key must visit: each primary of a cluster, or the one server (`None`).
pub(super) fn scan_nodes(client: &Client) -> Vec<Option<Server>> {
    if client.is_clustered() {
        let primaries = client.cached_cluster_state().map(|state| state.unique_primary_nodes());
        primaries.unwrap_or_default().into_iter().map(Some).collect()
    } else {
        vec![None]
    }
}

/// One `SCAN` page of queue keys on `node` (or on the one server) from `cursor`: the next cursor and the keys.
pub(super) async fn queue_page(
    client: &Client,
    node: Option<&Server>,
    cursor: &str,
    pattern: &str,
) -> StoreResult<(String, Vec<String>)> {
    let (cursor, pattern, count, kind) =
        (cursor.to_owned(), pattern.to_owned(), Some(SCAN_COUNT), Some(ScanType::ZSet));
    Ok(match node {
        Some(server) => client.with_cluster_node(server.clone()).scan_page(cursor, pattern, count, kind).await?,
        None => client.scan_page(cursor, pattern, count, kind).await?,
    })
}

/// Splits a ZRANGEBYSCORE … WITHSCORES reply into live and expired envelopes, advancing the cursor.
fn sort_page(
    reply: &[Value],
    now: i64,
    cursor: &mut u64,
    out: &mut Vec<QueuedEnvelope>,
    expired: &mut Vec<[u8; 16]>,
) -> StoreResult<()> {
    for pair in reply.chunks(2) {
        let [member, score] = pair else { return Err(StoreError::Corrupt("peek reply")) };
        let member = bytes_of(member).ok_or(StoreError::Corrupt("queue member"))?;
        let seq: u64 = match score {
            Value::String(s) => s.parse::<f64>().map_err(|_| StoreError::Corrupt("queue score"))? as u64,
            Value::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or(StoreError::Corrupt("queue score"))? as u64,
            Value::Integer(i) => *i as u64,
            Value::Double(d) => *d as u64,
            _ => return Err(StoreError::Corrupt("queue score")),
        };
        if member.len() < 24 {
            return Err(StoreError::Corrupt("queue member"));
        }
        let expires_at = i64::from_be_bytes(member[..8].try_into().map_err(|_| StoreError::Corrupt("expiry"))?);
        let guid: [u8; 16] = member[8..24].try_into().map_err(|_| StoreError::Corrupt("guid"))?;
        *cursor = (*cursor).max(seq);
        if expires_at <= now {
            expired.push(guid);
            continue;
        }
        out.push(QueuedEnvelope { seq, guid, expires_at, envelope: member[24..].to_vec() });
    }
    Ok(())
}
