//! Turning stored values back into records, once for every backend.
//!
//! Each backend fetches its columns (or Redis values) in its own dialect and hands the plain values here:
//! `i64` for every integer column (Postgres queries cast to `BIGINT`), `Vec<u8>` for every key. What a
//! stored value must look like to count as a key, signature or id is decided in this one place, so the
//! backends cannot drift apart on it.
//!
//! Invariants: a value that does not decode is [`StoreError::Corrupt`], never a panic and never a record
//! with a default in its place. This module never touches a store and never applies a rule of the service
//! (which device id is free, whether a code is still live): those live in `domain`, above the seam.

use crate::domain::{self, AccessKey, Aci, DeviceId, DeviceSlots, EcPublicKey, Incarnation, KemPublicKey};
use crate::domain::{RegistrationId, Signature};
use crate::storage::error::{StoreError, StoreResult};
use crate::storage::model::{
    Account, AddDeviceError, Attachment, AttachmentPart, ContactToken, CreateAccountError, Device, DeviceCredentials,
    DeviceKeys, EcOneTimeKey, SignedEcKey, SignedKemKey,
};

/// The `kind` column of `signed_keys` and `one_time_keys`: an EC key (signed prekey or one-time key).
pub const KIND_EC: i16 = 1;
/// The `kind` column: a Kyber key (last-resort or one-time), always with its signature.
pub const KIND_KEM: i16 = 2;

pub fn ec_key(bytes: &[u8]) -> StoreResult<EcPublicKey> {
    EcPublicKey::from_bytes("stored", bytes).map_err(|_| StoreError::Corrupt("ec key"))
}

pub fn kem_key(bytes: Vec<u8>) -> StoreResult<KemPublicKey> {
    if bytes.len() == KemPublicKey::LEN { Ok(KemPublicKey(bytes)) } else { Err(StoreError::Corrupt("kem key")) }
}

pub fn signature(bytes: &[u8]) -> StoreResult<Signature> {
    Ok(Signature(bytes.try_into().map_err(|_| StoreError::Corrupt("signature"))?))
}

pub fn registration_id(value: i64) -> StoreResult<RegistrationId> {
    RegistrationId::new(value).map_err(|_| StoreError::Corrupt("registration id"))
}

pub fn device_id(value: i64) -> StoreResult<DeviceId> {
    u32::try_from(value).map(DeviceId).map_err(|_| StoreError::Corrupt("device id"))
}

/// A key id as stored. Key ids are `u32`; Postgres keeps them in a signed `INTEGER`, where ids above
/// `i32::MAX` wrap to negative numbers, so the low 32 bits are the id on every backend.
pub fn key_id(value: i64) -> u32 {
    value as u32
}

fn access_key(bytes: Option<Vec<u8>>) -> StoreResult<Option<AccessKey>> {
    bytes
        .map(|bytes| bytes.as_slice().try_into().map(AccessKey).map_err(|_| StoreError::Corrupt("access key")))
        .transpose()
}

/// `identity_key, access_key, unrestricted_access, approved` of an account.
pub type AccountColumns = (Vec<u8>, Option<Vec<u8>>, bool, bool);

pub fn account(
    aci: Aci,
    (identity_key, access, unrestricted_access, approved): AccountColumns,
) -> StoreResult<Account> {
    Ok(Account {
        aci,
        identity_key: ec_key(&identity_key)?,
        access_key: access_key(access)?,
        unrestricted_access,
        approved,
    })
}

/// `incarnation, secret_salt, secret_hash, approved` of a device and its account.
pub type CredentialColumns = (i64, Vec<u8>, Vec<u8>, bool);

pub fn credentials((incarnation, secret_salt, secret_hash, approved): CredentialColumns) -> DeviceCredentials {
    DeviceCredentials { incarnation: Incarnation(incarnation), secret_salt, secret_hash, approved }
}

/// `device_id, registration_id, incarnation, created_at, last_seen_day, name` of a device.
pub type DeviceColumns = (i64, i64, i64, i64, i64, Option<Vec<u8>>);

pub fn device((id, registration, incarnation, created_at, last_seen_day, name): DeviceColumns) -> StoreResult<Device> {
    Ok(Device {
        id: device_id(id)?,
        registration_id: registration_id(registration)?,
        incarnation: Incarnation(incarnation),
        created_at,
        last_seen_day,
        name,
    })
}

/// `device_id, registration_id`, the signed EC prekey (`key_id, public_key, signature`), then the
/// last-resort Kyber key (the same three).
pub type DeviceKeyColumns = (i64, i64, i64, Vec<u8>, Vec<u8>, i64, Vec<u8>, Vec<u8>);

pub fn device_keys(columns: DeviceKeyColumns) -> StoreResult<DeviceKeys> {
    let (device, registration, ec_id, ec_public, ec_signature, kem_id, kem_public, kem_signature) = columns;
    Ok(DeviceKeys {
        device: device_id(device)?,
        registration_id: registration_id(registration)?,
        signed_pre_key: SignedEcKey {
            key_id: key_id(ec_id),
            public_key: ec_key(&ec_public)?,
            signature: signature(&ec_signature)?,
        },
        pq_last_resort: signed_kem(key_id(kem_id), kem_public, &kem_signature)?,
    })
}

pub fn one_time_ec(key_id: u32, public_key: &[u8]) -> StoreResult<EcOneTimeKey> {
    Ok(EcOneTimeKey { key_id, public_key: ec_key(public_key)? })
}

pub fn signed_kem(key_id: u32, public_key: Vec<u8>, signature_bytes: &[u8]) -> StoreResult<SignedKemKey> {
    Ok(SignedKemKey { key_id, public_key: kem_key(public_key)?, signature: signature(signature_bytes)? })
}

/// One signed key as the `signed_keys` table holds it: kind, key id, public key, signature.
pub type SignedKeyRow = (i16, u32, Vec<u8>, [u8; 64]);

/// The rows a `put_signed` writes: the signed EC prekey and the last-resort key, each when given.
pub fn signed_key_rows(signed: Option<&SignedEcKey>, last_resort: Option<&SignedKemKey>) -> Vec<SignedKeyRow> {
    let signed = signed.map(|k| (KIND_EC, k.key_id, k.public_key.0.to_vec(), k.signature.0));
    let last_resort = last_resort.map(|k| (KIND_KEM, k.key_id, k.public_key.0.clone(), k.signature.0));
    [signed, last_resort].into_iter().flatten().collect()
}

/// Whether an invite deleted on use (its expiry, `None` when there was none) lets an account be created.
pub fn invite_accepted(expires_at: Option<i64>, now: i64) -> Result<(), CreateAccountError> {
    match expires_at {
        Some(at) if domain::is_live(at, now) => Ok(()),
        _ => Err(CreateAccountError::InvalidInvite),
    }
}

/// The id a new device gets, from the ids the account's devices hold and those given up (with when), as
/// each backend read them inside the transaction that will insert the device.
pub fn free_device_id(
    slots: &DeviceSlots,
    taken: &[i64],
    given_up: &[(i64, i64)],
) -> StoreResult<Result<DeviceId, AddDeviceError>> {
    let taken = taken.iter().map(|id| device_id(*id)).collect::<StoreResult<Vec<_>>>()?;
    let given_up = given_up.iter().map(|(id, at)| Ok((device_id(*id)?, *at))).collect::<StoreResult<Vec<_>>>()?;
    Ok(slots.pick(&taken, &given_up).ok_or(AddDeviceError::TooManyDevices))
}

/// `id, token_hash, label, created_at, expires_at, max_uses, uses, revoked` of a contact token (the owner
/// is decoded by each backend, whose aci columns differ).
pub type ContactTokenColumns = (Vec<u8>, Vec<u8>, Option<Vec<u8>>, i64, i64, Option<i64>, i64, bool);

pub fn contact_token(
    owner: Aci,
    (id, hash, label, created_at, expires_at, max_uses, uses, revoked): ContactTokenColumns,
) -> StoreResult<ContactToken> {
    let count = |value: i64| u32::try_from(value).map_err(|_| StoreError::Corrupt("contact token count"));
    Ok(ContactToken {
        id: id.as_slice().try_into().map_err(|_| StoreError::Corrupt("contact token id"))?,
        owner,
        token_hash: hash.as_slice().try_into().map_err(|_| StoreError::Corrupt("contact token hash"))?,
        label,
        created_at,
        expires_at,
        max_uses: max_uses.map(count).transpose()?,
        uses: count(uses)?,
        revoked,
    })
}

/// `id_hash, credential_hash, length, received, created_at, upload_until, expires_at, completed_at` of an
/// attachment.
pub type AttachmentColumns = (Vec<u8>, Vec<u8>, i64, i64, i64, i64, i64, Option<i64>);

/// `start, length, object` of an attachment part.
pub type AttachmentPartColumns = (i64, i64, String);

pub fn attachment(
    (id_hash, credential_hash, length, received, created_at, upload_until, expires_at, completed_at): AttachmentColumns,
    parts: Vec<AttachmentPartColumns>,
) -> StoreResult<Attachment> {
    let size = |value: i64| u64::try_from(value).map_err(|_| StoreError::Corrupt("attachment size"));
    let hash = |bytes: Vec<u8>| <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Corrupt("attachment hash"));
    let parts = parts
        .into_iter()
        .map(|(start, length, object)| Ok(AttachmentPart { start: size(start)?, length: size(length)?, object }))
        .collect::<StoreResult<Vec<_>>>()?;
    let attachment = Attachment {
        id_hash: hash(id_hash)?,
        credential_hash: hash(credential_hash)?,
        length: size(length)?,
        received: size(received)?,
        created_at,
        upload_until,
        expires_at,
        completed_at,
        parts,
    };
    // The parts must tile 0..received exactly, or a download would hand out wrong bytes.
    let mut next = 0;
    for part in &attachment.parts {
        if part.start != next {
            return Err(StoreError::Corrupt("attachment parts"));
        }
        next += part.length;
    }
    if next != attachment.received || attachment.received > attachment.length {
        return Err(StoreError::Corrupt("attachment parts"));
    }
    Ok(attachment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_keep_their_low_32_bits() {
        assert_eq!(key_id(7), 7);
        assert_eq!(key_id(i64::from(u32::MAX as i32)), u32::MAX, "a Postgres INTEGER of -1 is id u32::MAX");
        assert_eq!(key_id(i64::from(u32::MAX)), u32::MAX, "SQLite keeps the id as it is");
    }

    #[test]
    fn bad_values_are_corrupt_not_panics() {
        assert!(matches!(ec_key(&[5u8; 32]), Err(StoreError::Corrupt("ec key"))));
        assert!(matches!(kem_key(vec![8u8; 10]), Err(StoreError::Corrupt("kem key"))));
        assert!(matches!(signature(&[0u8; 63]), Err(StoreError::Corrupt("signature"))));
        assert!(matches!(registration_id(0), Err(StoreError::Corrupt("registration id"))));
        assert!(matches!(device_id(-1), Err(StoreError::Corrupt("device id"))));
        let columns = (vec![5u8; 33], Some(vec![1u8; 15]), false, true);
        assert!(matches!(account(Aci::random(), columns), Err(StoreError::Corrupt("access key"))));
    }

    #[test]
    fn invites_must_be_known_and_live() {
        assert_eq!(invite_accepted(Some(11), 10), Ok(()));
        assert_eq!(invite_accepted(Some(10), 10), Err(CreateAccountError::InvalidInvite));
        assert_eq!(invite_accepted(None, 10), Err(CreateAccountError::InvalidInvite));
    }
}
