//! The records that cross the storage seam: what the capabilities hand to the stores and get back.

use std::time::Duration;

use crate::config::RateLimit;
use crate::domain::{AccessKey, Aci, DeviceId, EcPublicKey, Incarnation, KemPublicKey, RegistrationId, Signature};

/// What registration writes for a new account and its primary device.
pub struct NewAccount {
    pub aci: Aci,
    pub identity_key: EcPublicKey,
    pub registration_id: RegistrationId,
    /// Incarnation of the primary device.
    pub incarnation: Incarnation,
    pub secret_salt: [u8; 16],
    pub secret_hash: [u8; 32],
    pub approved: bool,
    pub created_at: i64,
}

/// Why an account could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateAccountError {
    InvalidInvite,
}

/// A device being linked to an existing account.
pub struct NewDevice {
    pub registration_id: RegistrationId,
    pub incarnation: Incarnation,
    pub secret_salt: [u8; 16],
    pub secret_hash: [u8; 32],
    /// Client-encrypted device name; opaque to the server.
    pub name: Option<Vec<u8>>,
    pub created_at: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddDeviceError {
    NoAccount,
    TooManyDevices,
}

/// The parts of an account other capabilities read.
#[derive(Debug, Clone)]
pub struct Account {
    pub aci: Aci,
    pub identity_key: EcPublicKey,
    pub access_key: Option<AccessKey>,
    pub unrestricted_access: bool,
    pub approved: bool,
}

/// What token issuance needs to check a device secret.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    pub incarnation: Incarnation,
    pub secret_salt: Vec<u8>,
    pub secret_hash: Vec<u8>,
    pub approved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub registration_id: RegistrationId,
    pub incarnation: Incarnation,
    pub created_at: i64,
    /// Start of the UTC day the device last obtained a token.
    pub last_seen_day: i64,
    /// Client-encrypted name, opaque to the server.
    pub name: Option<Vec<u8>>,
}

/// A signed key as uploaded: EC signed prekey or Kyber key with the identity key's XEdDSA signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEcKey {
    pub key_id: u32,
    pub public_key: EcPublicKey,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKemKey {
    pub key_id: u32,
    pub public_key: KemPublicKey,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcOneTimeKey {
    pub key_id: u32,
    pub public_key: EcPublicKey,
}

/// One validated `PUT /v1/keys`: each part present replaces what the device had of that kind.
#[derive(Debug, Default)]
pub struct KeyUpload {
    pub signed_pre_key: Option<SignedEcKey>,
    pub pq_last_resort: Option<SignedKemKey>,
    pub pre_keys: Option<Vec<EcOneTimeKey>>,
    pub pq_pre_keys: Option<Vec<SignedKemKey>>,
}

/// The durable keys of one device.
#[derive(Debug, Clone)]
pub struct DeviceKeys {
    pub device: DeviceId,
    pub registration_id: RegistrationId,
    pub signed_pre_key: SignedEcKey,
    pub pq_last_resort: SignedKemKey,
}

/// An envelope on its way into a device queue: already serialised, as it will be delivered.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    pub guid: [u8; 16],
    /// Milliseconds since the epoch after which the envelope is never delivered.
    pub expires_at: i64,
    pub envelope: Vec<u8>,
}

/// An envelope waiting in a device queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// Position in the device's queue: increases with every insert.
    pub seq: u64,
    pub guid: [u8; 16],
    pub expires_at: i64,
    pub envelope: Vec<u8>,
}

/// A rate-limit bucket as storage sees it: a name, an opaque (pseudonymous) key and the limit.
#[derive(Debug, Clone)]
pub struct RateBucket {
    pub name: &'static str,
    pub key: [u8; 16],
    pub limit: RateLimit,
}

/// A device an envelope is queued for, in the incarnation the sender's view of the account names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipient {
    pub device: DeviceId,
    pub incarnation: Incarnation,
}

/// What a push did. Every outcome but `Queued` queued nothing for any device.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for every device, and their listening sockets woken.
    Queued,
    /// This device's queue already holds the most envelopes allowed.
    Full(DeviceId),
    /// This device, in the incarnation named, has been removed (the sender's view was stale).
    Gone(DeviceId),
    /// The bucket was empty; a token is due after this long.
    Limited(Duration),
}

/// What travels between instances about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// New envelopes were queued: look at the queue.
    Wake,
    /// This envelope was queued (and committed): a socket that has read everything before it may send it
    /// without reading the queue; any other socket treats it as [`BusEvent::Wake`].
    Queued(Box<QueuedEnvelope>),
    /// An envelope for connected sockets only (`online: true`): never stored.
    Ephemeral(Vec<u8>),
    /// A socket with this connection id opened: every older socket of the device must close (4409).
    Displace(u64),
    /// The device was removed: its sockets must close (4401).
    Revoke,
}

impl BusEvent {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BusEvent::Wake => vec![0],
            BusEvent::Ephemeral(bytes) => [&[1u8][..], bytes].concat(),
            BusEvent::Displace(id) => [&[2u8][..], &id.to_be_bytes()].concat(),
            BusEvent::Revoke => vec![3],
            // The queue position in decimal, then what a Redis queue member holds, so that the push script
            // can publish the very same event.
            BusEvent::Queued(item) => [
                &[4u8][..],
                item.seq.to_string().as_bytes(),
                b":",
                &item.expires_at.to_be_bytes(),
                &item.guid,
                &item.envelope,
            ]
            .concat(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<BusEvent> {
        match bytes.split_first()? {
            (0, []) => Some(BusEvent::Wake),
            (1, rest) => Some(BusEvent::Ephemeral(rest.to_vec())),
            (2, rest) => Some(BusEvent::Displace(u64::from_be_bytes(rest.try_into().ok()?))),
            (3, []) => Some(BusEvent::Revoke),
            (4, rest) => {
                let colon = rest.iter().position(|&b| b == b':')?;
                let seq = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
                let member = &rest[colon + 1..];
                if member.len() < 24 {
                    return None;
                }
                Some(BusEvent::Queued(Box::new(QueuedEnvelope {
                    seq,
                    expires_at: i64::from_be_bytes(member[..8].try_into().ok()?),
                    guid: member[8..24].try_into().ok()?,
                    envelope: member[24..].to_vec(),
                })))
            }
            _ => None,
        }
    }
}

/// What the bus hands to this instance's delivery hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    Device(Aci, DeviceId, BusEvent),
    /// A provisioning message for the socket holding this address.
    Provisioning(String, Vec<u8>),
    /// Cached facts about this account changed: forget them.
    Invalidate(Aci),
    /// Some events were lost on the way (the subscriber fell behind): every local socket re-reads its queue.
    WakeAll,
}

/// A contact token as its owner creates it.
#[derive(Debug, Clone)]
pub struct NewContactToken {
    pub id: [u8; 16],
    pub owner: Aci,
    /// Keyed hash of the token; the token itself is never stored.
    pub token_hash: [u8; 32],
    /// Encrypted by the owner's client for itself; opaque.
    pub label: Option<Vec<u8>>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: Option<u32>,
}

/// A stored contact token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactToken {
    pub id: [u8; 16],
    pub owner: Aci,
    pub token_hash: [u8; 32],
    pub label: Option<Vec<u8>>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: Option<u32>,
    /// Distinct requesters that have used it.
    pub uses: u32,
    pub revoked: bool,
}

impl ContactToken {
    /// Neither revoked nor expired: its holders may still use it.
    pub fn usable(&self, now: i64) -> bool {
        !self.revoked && crate::domain::is_live(self.expires_at, now)
    }

    /// Room for one more requester it has not seen.
    pub fn has_room(&self) -> bool {
        self.max_uses.is_none_or(|max| self.uses < max)
    }

    /// What a stranger can still use: usable and not used up. (The four ways to fail, unknown, revoked,
    /// expired and used up, all look the same from outside.)
    pub fn live(&self, now: i64) -> bool {
        self.usable(now) && self.has_room()
    }
}

/// How many live contact tokens one account may hold.
#[derive(Debug, Clone, Copy)]
pub struct ContactCap {
    pub max_live: u32,
    pub now: i64,
}

impl ContactCap {
    /// Whether one more token fits beside `existing` (the owner's tokens).
    pub fn allows(&self, existing: &[ContactToken]) -> bool {
        existing.iter().filter(|t| t.live(self.now)).count() < self.max_live as usize
    }
}

/// An attachment upload as `POST /v1/attachments` creates it.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// SHA-256 of the attachment id (the id is the download capability and is never stored).
    pub id_hash: [u8; 32],
    /// SHA-256 of the one-time upload credential.
    pub credential_hash: [u8; 32],
    pub length: u64,
    pub created_at: i64,
    pub upload_until: i64,
    pub expires_at: i64,
}

/// One stored part of an attachment: bytes `start..start + length`, in object `object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentPart {
    pub start: u64,
    pub length: u64,
    pub object: String,
}

/// A stored attachment, with its parts in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id_hash: [u8; 32],
    pub credential_hash: [u8; 32],
    pub length: u64,
    /// Bytes received so far: the tus `Upload-Offset`.
    pub received: u64,
    pub created_at: i64,
    pub upload_until: i64,
    pub expires_at: i64,
    pub completed_at: Option<i64>,
    pub parts: Vec<AttachmentPart>,
}

impl Attachment {
    /// Every declared byte is stored.
    pub fn complete(&self) -> bool {
        self.completed_at.is_some()
    }

    /// Its credential may still add bytes: not complete and within the upload window.
    pub fn open_for_upload(&self, now: i64) -> bool {
        !self.complete()
            && crate::domain::is_live(self.upload_until, now)
            && crate::domain::is_live(self.expires_at, now)
    }

    /// Whoever holds its id may download it.
    pub fn downloadable(&self, now: i64) -> bool {
        self.complete() && crate::domain::is_live(self.expires_at, now)
    }
}

/// A wakeup that the push service asked to be sent again later (429, 5xx, or no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeupRetry {
    pub aci: Aci,
    pub device: DeviceId,
    pub urgent: bool,
    /// When the envelopes it announces expire (ms): a wakeup after that would wake the device for nothing.
    pub expires_at: i64,
    /// Sends tried so far.
    pub attempt: u32,
    /// When it is due (ms).
    pub due_at: i64,
}

impl WakeupRetry {
    /// The retry's fields as one string (for stores that keep it as a member of a sorted set).
    pub fn encode(&self) -> String {
        format!("{}.{}.{}.{}.{}", self.aci, self.device, u8::from(self.urgent), self.expires_at, self.attempt)
    }

    /// The inverse of [`WakeupRetry::encode`], with the due time kept beside it.
    pub fn decode(text: &str, due_at: i64) -> Option<WakeupRetry> {
        let mut parts = text.split('.');
        let aci = Aci::parse(parts.next()?)?;
        let device = DeviceId::parse(parts.next()?)?;
        let urgent = parts.next()? == "1";
        let expires_at = parts.next()?.parse().ok()?;
        let attempt = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(WakeupRetry { aci, device, urgent, expires_at, attempt, due_at })
    }
}

/// A device the inactive-device sweep found: not seen since the cut-off day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleDevice {
    pub aci: Aci,
    pub device: DeviceId,
}
