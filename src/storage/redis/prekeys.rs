//! One-time prekey pools in Redis: per device a list of EC keys and a list of Kyber keys, in one slot.
//!
//! Owns the pool scripts and the entry format (key id ‖ public key, Kyber: key id ‖ signature ‖ public
//! key). Invariant: a one-time prekey is returned to at most one caller, because a claim pops it (LPOP is
//! atomic, on one Redis or a cluster). It never reads a key without removing it, and never touches Postgres:
//! the signed and last-resort keys are durable records, the pools are not.

use async_trait::async_trait;
use fred::prelude::{KeysInterface, Pool};
use fred::types::Value;
use fred::types::scripts::Script;

use crate::domain::{Aci, DeviceId, KemPublicKey};
use crate::storage::redis::bytes_of;
use crate::storage::redis::keys::Keys;
use crate::storage::rows;
use crate::storage::{EcOneTimeKey, PreKeyPool, SignedKemKey, StoreError, StoreResult};

/// Redis: the one-time prekey pools.
pub struct RedisPreKeys {
    pool: Pool,
    keys: Keys,
    claim: Script,
    replace: Script,
    counts: Script,
}

impl RedisPreKeys {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        RedisPreKeys {
            pool,
            keys,
            claim: Script::from_lua(include_str!("scripts/claim.lua")),
            replace: Script::from_lua(include_str!("scripts/replace.lua")),
            counts: Script::from_lua(include_str!("scripts/counts.lua")),
        }
    }
}

const EC_ENTRY: usize = 4 + 33;
const KEM_ENTRY: usize = 4 + 64 + KemPublicKey::LEN;

pub(super) fn encode_ec(key: &EcOneTimeKey) -> Value {
    let mut out = Vec::with_capacity(EC_ENTRY);
    out.extend_from_slice(&key.key_id.to_be_bytes());
    out.extend_from_slice(&key.public_key.0);
    Value::Bytes(out.into())
}

fn decode_ec(bytes: &[u8]) -> StoreResult<EcOneTimeKey> {
    let (id, public_key) = split_key_id(bytes, EC_ENTRY).ok_or(StoreError::Corrupt("pooled ec key"))?;
    rows::one_time_ec(id, public_key)
}

pub(super) fn encode_kem(key: &SignedKemKey) -> Value {
    let mut out = Vec::with_capacity(KEM_ENTRY);
    out.extend_from_slice(&key.key_id.to_be_bytes());
    out.extend_from_slice(&key.signature.0);
    out.extend_from_slice(&key.public_key.0);
    Value::Bytes(out.into())
}

fn decode_kem(bytes: &[u8]) -> StoreResult<SignedKemKey> {
    let (id, rest) = split_key_id(bytes, KEM_ENTRY).ok_or(StoreError::Corrupt("pooled kem key"))?;
    let (signature, public_key) = rest.split_at(64);
    rows::signed_kem(id, public_key.to_vec(), signature)
}

/// The key id in front of an entry of exactly `len` bytes, and the rest.
fn split_key_id(bytes: &[u8], len: usize) -> Option<(u32, &[u8])> {
    if bytes.len() != len {
        return None;
    }
    let (id, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*id), rest))
}

#[async_trait]
impl PreKeyPool for RedisPreKeys {
    async fn replace(
        &self,
        aci: Aci,
        device: DeviceId,
        ec: Option<&[EcOneTimeKey]>,
        kem: Option<&[SignedKemKey]>,
    ) -> StoreResult<()> {
        let [ec_pool, kem_pool] = self.keys.pre_key_pools(aci, device);
        let client = self.pool.next_connected();
        if let Some(ec) = ec {
            let values: Vec<Value> = ec.iter().map(encode_ec).collect();
            let _: i64 = self.replace.evalsha_with_reload(client, vec![ec_pool], values).await?;
        }
        if let Some(kem) = kem {
            let values: Vec<Value> = kem.iter().map(encode_kem).collect();
            let _: i64 = self.replace.evalsha_with_reload(client, vec![kem_pool], values).await?;
        }
        Ok(())
    }

    async fn counts(&self, aci: Aci, device: DeviceId) -> StoreResult<(u32, u32)> {
        let pools = self.keys.pre_key_pools(aci, device).to_vec();
        let counts: Vec<i64> = self.counts.evalsha_with_reload(self.pool.next_connected(), pools, ()).await?;
        match counts.as_slice() {
            [ec, kem] => Ok((*ec as u32, *kem as u32)),
            _ => Err(StoreError::Corrupt("pool counts")),
        }
    }

    async fn claim(&self, aci: Aci, device: DeviceId) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)> {
        let pools = self.keys.pre_key_pools(aci, device).to_vec();
        let popped: Vec<Value> = self.claim.evalsha_with_reload(self.pool.next_connected(), pools, ()).await?;
        let [ec, kem] = popped.as_slice() else { return Err(StoreError::Corrupt("claim reply")) };
        Ok((bytes_of(ec).map(decode_ec).transpose()?, bytes_of(kem).map(decode_kem).transpose()?))
    }

    async fn remove_device(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        // Separate DELs: in a cluster a multi-key DEL must stay in one slot, and these do, but one call
        // per key keeps the command valid whatever the key layout becomes.
        for key in self.keys.pre_key_pools(aci, device) {
            let _: i64 = self.pool.next_connected().del(key).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EcPublicKey, Signature};

    #[test]
    fn pool_entries_round_trip_and_wrong_lengths_are_corrupt() {
        let mut public = [9u8; 33];
        public[0] = EcPublicKey::TYPE;
        let ec = EcOneTimeKey { key_id: u32::MAX, public_key: EcPublicKey(public) };
        let Value::Bytes(bytes) = encode_ec(&ec) else { panic!("bytes") };
        assert_eq!(decode_ec(&bytes).expect("decodes"), ec);
        assert!(decode_ec(&bytes[1..]).is_err());
        let kem = SignedKemKey {
            key_id: 7,
            public_key: KemPublicKey(vec![KemPublicKey::TYPE; KemPublicKey::LEN]),
            signature: Signature([3; 64]),
        };
        let Value::Bytes(bytes) = encode_kem(&kem) else { panic!("bytes") };
        assert_eq!(decode_kem(&bytes).expect("decodes"), kem);
        assert!(decode_kem(&bytes[..bytes.len() - 1]).is_err());
    }
}
