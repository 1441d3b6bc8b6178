//! Every Redis key and pub/sub channel name sealpost uses, built (and, for channels, parsed back) here and
//! nowhere else.
//!
//! Invariants:
//! * every name starts with the configured prefix, so deployments and tests can share one Redis;
//! * keys that one script touches together carry the same hash tag, so every script runs in one cluster
//!   slot: `{aci}` for an account's queues, sequence counter and removal marks (and a send's rate bucket,
//!   through [`slot_tag`]), `{aci.device}` for a device's two prekey pools, `{name}` for a lease and its
//!   fence counter;
//! * a rate-limit bucket never names an account: it is keyed by an opaque pseudonym, and when it must
//!   share an account's slot it borrows a neutral word of that slot instead of the aci.
//!
//! It must never issue a command: it only spells names.

use crate::domain::{Aci, DeviceId};
use crate::storage::Recipient;

/// The names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    /// An account's queue sequence counter: every envelope queued for any of its devices takes the next
    /// number, so a device's queue is ordered by it.
    pub fn queue_counter(&self, aci: Aci) -> String {
        format!("{}q:{{{aci}}}:seq", self.prefix)
    }

    /// A device's queue: the sorted set of envelopes (score = sequence number) and the index guid → sequence
    /// number used by acknowledgements.
    pub fn queue(&self, aci: Aci, device: DeviceId) -> [String; 2] {
        let base = format!("{}q:{{{aci}}}:{device}", self.prefix);
        [format!("{base}{QUEUE_SUFFIX}"), format!("{base}{INDEX_SUFFIX}")]
    }

    /// A `SCAN … MATCH` pattern for the sorted set of every device queue.
    pub fn queue_pattern(&self) -> String {
        format!("{}q:*{QUEUE_SUFFIX}", glob_escape(&self.prefix))
    }

    /// The index beside a queue's sorted set found by [`Keys::queue_pattern`]; `None` for any other key.
    pub fn queue_index_of(&self, queue: &str) -> Option<String> {
        let base = queue.strip_prefix(&self.prefix)?.strip_prefix("q:")?.strip_suffix(QUEUE_SUFFIX)?;
        Some(format!("{}q:{base}{INDEX_SUFFIX}", self.prefix))
    }

    /// Set when a device is removed, and checked by every push that names that device and incarnation.
    pub fn removal_mark(&self, aci: Aci, recipient: Recipient) -> String {
        format!("{}q:{{{aci}}}:{}:gone:{}", self.prefix, recipient.device, recipient.incarnation.0)
    }

    /// A device's one-time prekey pools: EC keys, then Kyber keys.
    pub fn pre_key_pools(&self, aci: Aci, device: DeviceId) -> [String; 2] {
        let base = format!("{}pk:{{{aci}.{device}}}", self.prefix);
        [format!("{base}:ec"), format!("{base}:kem")]
    }

    /// Set once an import has filled a device's pools, so a second import never puts back keys that were
    /// handed out meanwhile (same slot as the pools).
    pub fn pools_imported(&self, aci: Aci, device: DeviceId) -> String {
        format!("{}pk:{{{aci}.{device}}}:imported", self.prefix)
    }

    /// Set once an import has queued all of a device's envelopes (same slot as the queue).
    pub fn queue_imported(&self, aci: Aci, device: DeviceId) -> String {
        format!("{}q:{{{aci}}}:{device}:imported", self.prefix)
    }

    /// A rate-limit bucket, by its name and the pseudonym of whoever it limits.
    pub fn rate_bucket(&self, bucket: &str, key: &[u8; 16]) -> String {
        format!("{}rl:{bucket}:{}", self.prefix, hex(key))
    }

    /// A rate-limit bucket in the cluster slot of `aci`'s queues, so the push script can take its token in
    /// the same call, without the name saying whose slot it is.
    pub fn rate_bucket_beside(&self, bucket: &str, key: &[u8; 16], aci: Aci) -> String {
        format!("{}rl:{bucket}:{{{}}}:{}", self.prefix, slot_tag(aci), hex(key))
    }

    /// A rate-limit bucket in the cluster slot of the key `beside`, so one script can take from both,
    /// without the name saying which key that is (only its slot).
    pub fn rate_bucket_in_slot_of(&self, bucket: &str, key: &[u8; 16], beside: &str) -> String {
        let tag = tag_of_slot(fred::util::redis_keyslot(beside.as_bytes()));
        format!("{}rl:{bucket}:{{{tag}}}:{}", self.prefix, hex(key))
    }

    /// Where a device is marked connected, holding the id of the connection that marked it.
    pub fn presence(&self, aci: Aci, device: DeviceId) -> String {
        format!("{}presence:{aci}.{device}", self.prefix)
    }

    /// Set while a device was woken lately (its value: 1 normal, 2 urgent), so a burst wakes it once.
    pub fn wakeup_mark(&self, aci: Aci, device: DeviceId) -> String {
        format!("{}wake:{aci}.{device}", self.prefix)
    }

    /// The sorted set of wakeups to send again (score: when each is due, in ms).
    pub fn wakeup_retries(&self) -> String {
        format!("{}wake-retries", self.prefix)
    }

    /// A named lease (holding its fencing token and holder) and the counter its tokens come from, which
    /// never expires so a token never repeats.
    pub fn lease(&self, name: &str) -> [String; 2] {
        let base = format!("{}lease:{{{name}}}", self.prefix);
        [base.clone(), format!("{base}:fence")]
    }

    /// The bus channel of one device (the queue's push script publishes its wake-ups on it too).
    pub fn device_channel(&self, aci: Aci, device: DeviceId) -> String {
        format!("{}{DEVICE_CHANNELS}{aci}.{device}", self.prefix)
    }

    /// The device a [`Keys::device_channel`] belongs to; `None` for any other channel.
    pub fn parse_device_channel(&self, channel: &str) -> Option<(Aci, DeviceId)> {
        let (aci, device) = channel.strip_prefix(&self.prefix)?.strip_prefix(DEVICE_CHANNELS)?.split_once('.')?;
        Some((Aci::parse(aci)?, DeviceId::parse(device)?))
    }

    /// The channel of one provisioning socket.
    pub fn provisioning_channel(&self, address: &str) -> String {
        format!("{}{PROVISIONING_CHANNELS}{address}", self.prefix)
    }

    /// The address a [`Keys::provisioning_channel`] belongs to; `None` for any other channel.
    pub fn parse_provisioning_channel<'c>(&self, channel: &'c str) -> Option<&'c str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix(PROVISIONING_CHANNELS)
    }

    /// Exists while a provisioning socket listens: in a cluster, PUBLISH cannot tell whether anyone did.
    pub fn provisioning_presence(&self, address: &str) -> String {
        format!("{}provpresence:{address}", self.prefix)
    }

    /// The channel on which every instance hears that an account's cached facts changed.
    pub fn invalidation_channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }
}

const QUEUE_SUFFIX: &str = ":z";
const INDEX_SUFFIX: &str = ":i";
const DEVICE_CHANNELS: &str = "dev:";
const PROVISIONING_CHANNELS: &str = "prov:";

/// `text` with the characters `SCAN … MATCH` treats as a pattern escaped, so a prefix matches itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

/// A short word whose cluster slot is the one of `{aci}`, so a key can share the slot of an account's keys
/// without naming the account.
fn slot_tag(aci: Aci) -> &'static str {
    tag_of_slot(fred::util::redis_keyslot(aci.to_string().as_bytes()))
}

/// A short word whose cluster slot is `slot`: the decimal numbers, the first found for each of the 16384
/// slots.
fn tag_of_slot(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        let mut n: u64 = 0;
        while missing > 0 {
            let word = n.to_string();
            let slot = usize::from(fred::util::redis_keyslot(word.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = word;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Incarnation;
    use fred::util::redis_keyslot;

    #[test]
    fn keys_a_script_touches_together_share_a_slot() {
        let keys = Keys::new("p:");
        let aci = Aci::random();
        let [queue, index] = keys.queue(aci, DeviceId(2));
        let mark = keys.removal_mark(aci, Recipient { device: DeviceId(2), incarnation: Incarnation(9) });
        let bucket = keys.rate_bucket_beside("sends", &[7; 16], aci);
        let slot = redis_keyslot(keys.queue_counter(aci).as_bytes());
        for key in [&queue, &index, &mark, &bucket] {
            assert_eq!(redis_keyslot(key.as_bytes()), slot, "{key}");
        }
        assert!(!bucket.contains(&aci.to_string()), "a bucket never names an account");
        let first = keys.rate_bucket("prekey_fetch_requester", &[8; 16]);
        let second = keys.rate_bucket_in_slot_of("prekey_fetch_requester_target", &[9; 16], &first);
        assert_eq!(redis_keyslot(first.as_bytes()), redis_keyslot(second.as_bytes()), "{second}");
        assert!(!second.contains(&hex(&[8; 16])), "the second bucket names only the first one's slot");
        let [ec, kem] = keys.pre_key_pools(aci, DeviceId(2));
        assert_eq!(redis_keyslot(ec.as_bytes()), redis_keyslot(kem.as_bytes()));
        let [lease, fence] = keys.lease("reaper");
        assert_eq!(redis_keyslot(lease.as_bytes()), redis_keyslot(fence.as_bytes()));
    }

    #[test]
    fn channels_parse_back_to_what_they_name() {
        let keys = Keys::new("t_1:");
        let aci = Aci::random();
        assert_eq!(keys.parse_device_channel(&keys.device_channel(aci, DeviceId(3))), Some((aci, DeviceId(3))));
        assert_eq!(keys.parse_provisioning_channel(&keys.provisioning_channel("abc")), Some("abc"));
        assert_eq!(keys.parse_device_channel(&keys.provisioning_channel("abc")), None);
        assert_eq!(keys.parse_provisioning_channel(&keys.invalidation_channel()), None);
        assert_eq!(Keys::new("other:").parse_device_channel(&keys.device_channel(aci, DeviceId(3))), None);
    }

    #[test]
    fn the_queue_pattern_finds_queues_and_their_index() {
        let keys = Keys::new("a*b:");
        let [queue, index] = keys.queue(Aci::random(), DeviceId(1));
        assert_eq!(keys.queue_pattern(), "a\\*b:q:*:z");
        assert_eq!(keys.queue_index_of(&queue), Some(index));
        assert_eq!(keys.queue_index_of(&keys.queue_counter(Aci::random())), None);
    }
}
