//! The SQL of the one-time prekey writes that run on the batch writer's thread (`writer.rs`): taking the
//! next keys of a device for a claim, inside the writer's shared transaction, and putting the reserved
//! keys (`reserve.rs`) back at a stop. Invariant: the rows a claim deletes are exactly the rows it gets.

use rusqlite::params;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::aci_text;
use crate::storage::embedded::reserve::{Reserves, Taken};
use crate::storage::rows::{self, KIND_EC, KIND_KEM};
use crate::storage::{StoreError, StoreResult};

/// A taken pool row: key id, public key, signature (Kyber keys only).
type TakenRow = (i64, Vec<u8>, Option<Vec<u8>>);

/// Deletes the device's `ec` EC and `kem` Kyber one-time keys with the smallest ids (fewer if it has
/// fewer) and returns them in key-id order. Runs in the batch writer's transaction: the rows a caller
/// deletes are the rows it receives, and nobody else can.
pub(super) fn take(
    tx: &rusqlite::Transaction<'_>,
    aci: Aci,
    device: DeviceId,
    ec: usize,
    kem: usize,
) -> StoreResult<Taken> {
    let ec = take_rows(tx, aci, device, KIND_EC, ec)?
        .into_iter()
        .map(|(id, public_key, _)| rows::one_time_ec(rows::key_id(id), &public_key))
        .collect::<StoreResult<_>>()?;
    let kem = take_rows(tx, aci, device, KIND_KEM, kem)?
        .into_iter()
        .map(|(id, public_key, signature)| {
            let signature = signature.ok_or(StoreError::Corrupt("kem signature"))?;
            rows::signed_kem(rows::key_id(id), public_key, &signature)
        })
        .collect::<StoreResult<_>>()?;
    Ok(Taken { ec, kem })
}

fn take_rows(
    tx: &rusqlite::Transaction<'_>,
    aci: Aci,
    device: DeviceId,
    kind: i16,
    n: usize,
) -> StoreResult<Vec<TakenRow>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut statement = tx.prepare_cached(
        "DELETE FROM one_time_keys WHERE rowid IN (
             SELECT rowid FROM one_time_keys WHERE aci = ?1 AND device_id = ?2 AND kind = ?3 ORDER BY key_id LIMIT ?4)
         RETURNING key_id, public_key, signature",
    )?;
    let mut taken = statement
        .query_map(params![aci_text(aci), i64::from(device.0), i64::from(kind), n as i64], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<Vec<TakenRow>, _>>()?;
    // RETURNING promises no order.
    taken.sort_unstable_by_key(|row| row.0);
    Ok(taken)
}

/// At a stop, after the last batch: every reserved key goes back into the table in one transaction,
/// unless its device's keys were replaced or removed since (checked while this transaction holds the
/// write lock, which those need) or the device is gone.
pub(super) fn put_back(conn: &mut rusqlite::Connection, reserves: &Reserves) -> StoreResult<()> {
    let returned = reserves.drain();
    if returned.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO one_time_keys (aci, device_id, kind, key_id, public_key, signature)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM devices WHERE aci = ?1 AND device_id = ?2)",
        )?;
        for device in returned.iter().filter(|r| reserves.unchanged(r)) {
            let (aci, id) = (aci_text(device.aci), i64::from(device.device.0));
            let ec = device.ec.iter().map(|k| (KIND_EC, k.key_id, &k.public_key.0[..], None));
            let kem = device.kem.iter().map(|k| (KIND_KEM, k.key_id, &k.public_key.0[..], Some(&k.signature.0[..])));
            for (kind, key_id, public_key, signature) in ec.chain(kem) {
                insert.execute(params![aci, id, i64::from(kind), i64::from(key_id), public_key, signature])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
