//! Moving records between deployments and counting them: the dialect-neutral half.
//!
//! An export is a consistent copy of the embedded SQLite file (`embedded::snapshot`); an import copies its
//! durable tables into Postgres (`postgres::import`) and its one-time prekey pools and pending envelopes
//! into Redis (`redis::import`). Both sides agree on the tables through [`DURABLE_TABLES`]: column names
//! and what each column holds, never SQL. The inventory seams give aggregate counts (`sealpost stats`).
//!
//! Invariants: an import never overwrites or duplicates a record: durable rows that are already there are
//! left alone (their keys decide), a device's pool and queue are written once and marked as imported, and
//! envelopes are keyed by guid. A count never carries an identifier.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::error::StoreResult;
use crate::storage::model::{EcOneTimeKey, NewEnvelope, SignedKemKey};

/// What a column holds, so each dialect can read and write it in its own types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// An account id: text in SQLite, `UUID` in Postgres.
    Aci,
    /// An integer, with the Postgres type of its column.
    Int(&'static str),
    /// A flag: 0/1 in SQLite, `BOOLEAN` in Postgres.
    Bool,
    Bytes,
    Text,
}

/// A durable table both deployments hold, with its columns in the order rows carry them.
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Column)],
}

const INT: Column = Column::Int("integer");
const SMALL: Column = Column::Int("smallint");
const BIG: Column = Column::Int("bigint");

/// Every durable table an import copies, parents before the rows that refer to them.
pub const DURABLE_TABLES: &[Table] = &[
    Table {
        name: "accounts",
        columns: &[
            ("aci", Column::Aci),
            ("identity_key", Column::Bytes),
            ("access_key", Column::Bytes),
            ("unrestricted_access", Column::Bool),
            ("approved", Column::Bool),
            ("created_at", BIG),
        ],
    },
    Table {
        name: "devices",
        columns: &[
            ("aci", Column::Aci),
            ("device_id", INT),
            ("registration_id", INT),
            ("secret_salt", Column::Bytes),
            ("secret_hash", Column::Bytes),
            ("name", Column::Bytes),
            ("created_at", BIG),
            ("last_seen_day", BIG),
            ("incarnation", BIG),
        ],
    },
    Table { name: "removed_devices", columns: &[("aci", Column::Aci), ("device_id", INT), ("removed_at", BIG)] },
    Table {
        name: "signed_keys",
        columns: &[
            ("aci", Column::Aci),
            ("device_id", INT),
            ("kind", SMALL),
            ("key_id", INT),
            ("public_key", Column::Bytes),
            ("signature", Column::Bytes),
        ],
    },
    Table { name: "invites", columns: &[("code_hash", Column::Bytes), ("expires_at", BIG)] },
    Table { name: "link_codes", columns: &[("code_hash", Column::Bytes), ("aci", Column::Aci), ("expires_at", BIG)] },
    Table {
        name: "contact_tokens",
        columns: &[
            ("id", Column::Bytes),
            ("aci", Column::Aci),
            ("token_hash", Column::Bytes),
            ("label", Column::Bytes),
            ("created_at", BIG),
            ("expires_at", BIG),
            ("max_uses", BIG),
            ("uses", BIG),
            ("revoked", Column::Bool),
        ],
    },
    Table { name: "contact_token_uses", columns: &[("token_id", Column::Bytes), ("requester", Column::Bytes)] },
    Table {
        name: "push_subscriptions",
        columns: &[("aci", Column::Aci), ("device_id", INT), ("endpoint", Column::Text), ("created_at", BIG)],
    },
    Table {
        name: "attachments",
        columns: &[
            ("id_hash", Column::Bytes),
            ("credential_hash", Column::Bytes),
            ("length", BIG),
            ("received", BIG),
            ("created_at", BIG),
            ("upload_until", BIG),
            ("expires_at", BIG),
            ("completed_at", BIG),
        ],
    },
    Table {
        name: "attachment_parts",
        columns: &[("id_hash", Column::Bytes), ("start", BIG), ("length", BIG), ("object", Column::Text)],
    },
];

/// One value of a row, as read from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
}

/// One device's one-time prekeys and pending envelopes, as the snapshot holds them.
#[derive(Debug, Clone)]
pub struct DeviceEphemera {
    pub aci: Aci,
    pub device: DeviceId,
    pub ec: Vec<EcOneTimeKey>,
    pub kem: Vec<SignedKemKey>,
    /// Oldest first; those expired at export time are left out.
    pub envelopes: Vec<NewEnvelope>,
}

/// What one import step did: rows written now, and rows (or devices) found already there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub new: u64,
    pub existing: u64,
}

/// Where an import writes durable rows (Postgres).
#[async_trait]
pub trait DurableImport: Send + Sync {
    /// Inserts the rows of `table` that are not there yet, in one transaction.
    async fn insert_rows(&self, table: &Table, rows: &[Vec<Cell>]) -> StoreResult<Imported>;
}

/// Where an import writes one-time prekeys and envelopes (Redis).
#[async_trait]
pub trait EphemeralImport: Send + Sync {
    /// Fills the device's pools unless an earlier import did: `new` counts keys written, `existing` keys
    /// skipped because the device was done before.
    async fn import_pools(&self, device: &DeviceEphemera) -> StoreResult<Imported>;
    /// Queues the device's envelopes that are not there yet (by guid), once per device.
    async fn import_queue(&self, device: &DeviceEphemera, now: i64) -> StoreResult<Imported>;
}

/// The targets of an import: present in the scale-out deployment only.
#[derive(Clone)]
pub struct Importers {
    pub durable: std::sync::Arc<dyn DurableImport>,
    pub ephemeral: std::sync::Arc<dyn EphemeralImport>,
}

/// Counts of the durable records, without any identifier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DurableCounts {
    pub accounts: u64,
    pub devices: u64,
    pub push_subscriptions: u64,
    pub contact_tokens: u64,
    pub invites: u64,
    pub attachments: u64,
    /// Declared lengths of complete attachments.
    pub attachment_bytes: u64,
}

/// The one row both backends' count query answers, in [`DurableCounts`]' field order.
pub type DurableCountsRow = (i64, i64, i64, i64, i64, i64, i64);

impl From<DurableCountsRow> for DurableCounts {
    fn from((accounts, devices, push, tokens, invites, attachments, bytes): DurableCountsRow) -> Self {
        let n = |v: i64| v.max(0) as u64;
        DurableCounts {
            accounts: n(accounts),
            devices: n(devices),
            push_subscriptions: n(push),
            contact_tokens: n(tokens),
            invites: n(invites),
            attachments: n(attachments),
            attachment_bytes: n(bytes),
        }
    }
}

/// Counts of the queued envelopes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub envelopes: u64,
    /// Device queues holding at least one envelope.
    pub queues: u64,
    /// The earliest time (ms) `queued_at` found among the envelopes at the head of each queue.
    pub oldest_queued_at: Option<i64>,
}

/// When an envelope was queued, read from its stored bytes (the caller knows their format).
pub type QueuedAt<'a> = &'a (dyn Fn(&[u8]) -> Option<i64> + Sync);

/// Aggregate counts of the durable records, and a walk over every device.
#[async_trait]
pub trait DurableInventory: Send + Sync {
    async fn counts(&self) -> StoreResult<DurableCounts>;
    /// Up to `limit` devices after `after` in (aci, device id) order.
    async fn devices_after(&self, after: Option<(Aci, DeviceId)>, limit: u32) -> StoreResult<Vec<(Aci, DeviceId)>>;
}

/// Aggregate counts of the message queues.
#[async_trait]
pub trait QueueInventory: Send + Sync {
    async fn queue_counts(&self, queued_at: QueuedAt<'_>, now: i64) -> StoreResult<QueueCounts>;
}
