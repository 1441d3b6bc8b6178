//! `sealpost stats`: aggregate counts of a deployment, either backend, with no identifier in them.
//!
//! Owns the figures and their text form. Pool levels are the per-device counts of unused one-time
//! prekeys (EC and Kyber), summarised as min/median/max over every device, so a fleet running dry shows
//! before clients have to fall back to last-resort keys.

use prost::Message;

use crate::delivery::proto::Envelope;
use crate::domain::{Aci, DeviceId};
use crate::storage::transfer::{DurableCounts, QueueCounts};
use crate::storage::{Storage, StoreResult};

/// Min, median and max of a set of levels (all zero when there is none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Levels {
    pub min: u32,
    pub median: u32,
    pub max: u32,
}

impl Levels {
    fn of(mut values: Vec<u32>) -> Levels {
        values.sort_unstable();
        match (values.first(), values.last()) {
            (Some(&min), Some(&max)) => Levels { min, median: values[values.len() / 2], max },
            _ => Levels::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub accounts: u64,
    pub devices: u64,
    pub queued_envelopes: u64,
    pub queues: u64,
    /// Age in seconds of the oldest queued envelope.
    pub oldest_envelope_age_seconds: Option<u64>,
    pub ec_prekeys: Levels,
    pub kyber_prekeys: Levels,
    pub attachments: u64,
    pub attachment_bytes: u64,
    pub push_subscriptions: u64,
    pub contact_tokens: u64,
    pub invites: u64,
}

/// When an envelope was queued: the server timestamp the relay stamped into it.
fn queued_at(stored: &[u8]) -> Option<i64> {
    Envelope::decode(stored).ok()?.server_timestamp.map(|t| t as i64)
}

const DEVICES_PER_PAGE: u32 = 500;

pub async fn collect(storage: &Storage, now: i64) -> StoreResult<Stats> {
    let durable: DurableCounts = storage.inventory.counts().await?;
    let queues: QueueCounts = storage.queue_inventory.queue_counts(&queued_at, now).await?;
    let (mut ec, mut kem) = (Vec::new(), Vec::new());
    let mut after: Option<(Aci, DeviceId)> = None;
    loop {
        let page = storage.inventory.devices_after(after, DEVICES_PER_PAGE).await?;
        for &(aci, device) in &page {
            let (e, k) = storage.pre_keys.counts(aci, device).await?;
            ec.push(e);
            kem.push(k);
        }
        if page.len() < DEVICES_PER_PAGE as usize {
            break;
        }
        after = page.last().copied();
    }
    Ok(Stats {
        accounts: durable.accounts,
        devices: durable.devices,
        queued_envelopes: queues.envelopes,
        queues: queues.queues,
        oldest_envelope_age_seconds: queues.oldest_queued_at.map(|at| (now - at).max(0) as u64 / 1000),
        ec_prekeys: Levels::of(ec),
        kyber_prekeys: Levels::of(kem),
        attachments: durable.attachments,
        attachment_bytes: durable.attachment_bytes,
        push_subscriptions: durable.push_subscriptions,
        contact_tokens: durable.contact_tokens,
        invites: durable.invites,
    })
}

impl Stats {
    /// `name value` lines, for people and for `grep`/`awk`.
    pub fn text(&self) -> String {
        let oldest = self.oldest_envelope_age_seconds.map_or("-".to_owned(), |s| s.to_string());
        let levels = |l: Levels| format!("min {} median {} max {}", l.min, l.median, l.max);
        [
            format!("accounts {}", self.accounts),
            format!("devices {}", self.devices),
            format!("queued_envelopes {}", self.queued_envelopes),
            format!("queues {}", self.queues),
            format!("oldest_envelope_age_seconds {oldest}"),
            format!("ec_prekeys_per_device {}", levels(self.ec_prekeys)),
            format!("kyber_prekeys_per_device {}", levels(self.kyber_prekeys)),
            format!("attachments {}", self.attachments),
            format!("attachment_bytes {}", self.attachment_bytes),
            format!("push_subscriptions {}", self.push_subscriptions),
            format!("contact_tokens {}", self.contact_tokens),
            format!("invites {}", self.invites),
        ]
        .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_summarise_any_set() {
        assert_eq!(Levels::of(vec![]), Levels::default());
        assert_eq!(Levels::of(vec![5]), Levels { min: 5, median: 5, max: 5 });
        assert_eq!(Levels::of(vec![9, 0, 3, 100]), Levels { min: 0, median: 9, max: 100 });
    }
}
