//! Where an attachment's bytes are kept, and their deletion once it expires: the part of attachments the
//! job runner needs, apart from the request handling so that jobs depend on storage alone.
//!
//! Invariants: every part of an attachment is an object in one folder named by the id's keyed hash
//! (never the id), so deleting the folder deletes all of it, including parts whose recording failed;
//! objects go before their record, so a failed deletion leaves a record to try again with.

use crate::crypto::random_bytes;
use crate::storage::{Storage, StoreResult};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The folder of one attachment's parts.
fn folder(id_hash: &[u8; 32]) -> String {
    format!("attachments/{}", hex(id_hash))
}

/// A fresh object name for the part starting at `start` (random, so two racing writers never overwrite
/// each other's object).
pub fn part_name(id_hash: &[u8; 32], start: u64) -> String {
    format!("{}/{start:020}-{}", folder(id_hash), hex(&random_bytes::<8>()))
}

/// Deletes expired attachments and uploads abandoned past their window; returns how many records went.
pub async fn reap(storage: &Storage, now: i64) -> StoreResult<u64> {
    const BATCH: usize = 100;
    let mut deleted = 0;
    loop {
        let expired = storage.attachments.expired_attachments(now, BATCH).await?;
        for id_hash in &expired {
            storage.blobs.delete_prefix(&folder(id_hash)).await?;
        }
        deleted += storage.attachments.delete_attachments(&expired).await?;
        if expired.len() < BATCH {
            return Ok(deleted);
        }
    }
}
