//! Validated values, parsed once at the edge so inner code never re-checks a length or a range.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;

use crate::error::ApiError;

/// Decodes a standard-base64 (padded) JSON field, naming the field on failure.
pub fn decode_b64(field: &'static str, value: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD.decode(value).map_err(|_| ApiError::BadBase64(field))
}

pub fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Server-assigned account identifier (a random UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aci(pub Uuid);

impl Aci {
    pub fn random() -> Self {
        Aci(Uuid::new_v4())
    }
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(Aci)
    }
}

impl fmt::Display for Aci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Device number within an account: 1 is the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl DeviceId {
    pub const PRIMARY: DeviceId = DeviceId(1);
    /// Largest device id any configuration allows.
    pub const MAX: u32 = 127;

    pub fn parse(text: &str) -> Option<Self> {
        let n: u32 = text.parse().ok()?;
        (1..=Self::MAX).contains(&n).then_some(DeviceId(n))
    }
    pub fn is_primary(self) -> bool {
        self == Self::PRIMARY
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One life of a device slot. A device id is a small number that can, in time, be given to a new device of
/// the same account; the incarnation is a random number drawn when the device is added, carried in its
/// tokens and checked on every request, so a token of a removed device never opens its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(pub i64);

impl Incarnation {
    /// Devices created before incarnations existed carry this one, as do tokens issued for them.
    pub const LEGACY: Incarnation = Incarnation(0);

    /// A fresh random incarnation: positive, never [`Incarnation::LEGACY`], and safe in a signed 64-bit
    /// column and in a JSON number (below 2^53).
    pub fn random() -> Self {
        Incarnation(1 + (rand::random::<u64>() % ((1u64 << 53) - 1)) as i64)
    }
}

/// Client-chosen registration id, 1..=16380, used by clients to notice a reinstalled device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationId(pub u16);

impl RegistrationId {
    pub fn new(value: i64) -> Result<Self, ApiError> {
        if (1..=16380).contains(&value) {
            Ok(RegistrationId(value as u16))
        } else {
            Err(ApiError::InvalidRegistrationId)
        }
    }
}

/// A libsignal Curve25519 public key: type byte 0x05 followed by 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EcPublicKey(pub [u8; 33]);

impl EcPublicKey {
    pub const TYPE: u8 = 0x05;

    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, ApiError> {
        Self::from_bytes(field, &decode_b64(field, value)?)
    }

    pub fn from_bytes(field: &'static str, bytes: &[u8]) -> Result<Self, ApiError> {
        let key: [u8; 33] = bytes.try_into().map_err(|_| ApiError::InvalidKeyLength(field))?;
        if key[0] != Self::TYPE {
            return Err(ApiError::InvalidKeyType(field));
        }
        Ok(EcPublicKey(key))
    }

    /// The 32-byte Montgomery u-coordinate without the type byte.
    pub fn montgomery(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0[1..]);
        out
    }
}

impl fmt::Debug for EcPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EcPublicKey(..)")
    }
}

/// A libsignal Kyber-1024 public key: type byte 0x08 followed by 1568 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KemPublicKey(pub Vec<u8>);

impl KemPublicKey {
    pub const TYPE: u8 = 0x08;
    pub const LEN: usize = 1569;

    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, ApiError> {
        let bytes = decode_b64(field, value)?;
        if bytes.len() != Self::LEN {
            return Err(ApiError::InvalidKeyLength(field));
        }
        if bytes[0] != Self::TYPE {
            return Err(ApiError::InvalidKeyType(field));
        }
        Ok(KemPublicKey(bytes))
    }
}

impl fmt::Debug for KemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KemPublicKey(..)")
    }
}

/// A 64-byte XEdDSA signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, ApiError> {
        let bytes = decode_b64(field, value)?;
        let sig: [u8; 64] = bytes.as_slice().try_into().map_err(|_| ApiError::InvalidKeyLength(field))?;
        Ok(Signature(sig))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(..)")
    }
}

/// A device's shared secret as sent by the client (32..=64 random bytes). Only its salted hash is stored.
pub struct DeviceSecret(pub Vec<u8>);

impl DeviceSecret {
    pub fn from_b64(value: &str) -> Result<Self, ApiError> {
        let bytes = decode_b64("deviceSecret", value)?;
        if !(32..=64).contains(&bytes.len()) {
            return Err(ApiError::InvalidDeviceSecret);
        }
        Ok(DeviceSecret(bytes))
    }
}

/// The 16-byte key that authorises sealed-sender access to an account.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AccessKey(pub [u8; 16]);

impl AccessKey {
    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, ApiError> {
        let bytes = decode_b64(field, value)?;
        let key: [u8; 16] = bytes.as_slice().try_into().map_err(|_| ApiError::InvalidKeyLength(field))?;
        Ok(AccessKey(key))
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(..)")
    }
}

/// Whether something that expires at `expires_at` (ms) is still good at `now`: the one rule for codes,
/// invites, tokens of contact and leases alike.
pub fn is_live(expires_at: i64, now: i64) -> bool {
    expires_at > now
}

/// Which id a new device of an account gets. The primary is 1; a new device gets the smallest id from 2 up
/// that no device holds and that no device gave up after `reuse_after` (a token of that device could still
/// be alive), as long as the account has fewer than `max_devices` devices.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSlots {
    pub max_devices: u32,
    pub reuse_after: i64,
}

impl DeviceSlots {
    /// `taken`: ids of the account's devices; `given_up`: ids removed, with when (ms). `None`: no room.
    pub fn pick(&self, taken: &[DeviceId], given_up: &[(DeviceId, i64)]) -> Option<DeviceId> {
        if taken.len() >= self.max_devices as usize {
            return None;
        }
        let resting = |id: DeviceId| given_up.iter().any(|(gone, at)| *gone == id && *at > self.reuse_after);
        (2..=DeviceId::MAX).map(DeviceId).find(|id| !taken.contains(id) && !resting(*id))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A timestamp rounded down to the start of its UTC day, so "last seen" says little about habits.
pub fn round_to_day(millis: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    millis - millis.rem_euclid(DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_keys_check_length_and_type() {
        let mut key = [7u8; 33];
        key[0] = 0x05;
        assert!(EcPublicKey::from_bytes("k", &key).is_ok());
        assert_eq!(EcPublicKey::from_bytes("k", &key[..32]).unwrap_err().code(), "invalid_key_length");
        key[0] = 0x08;
        assert_eq!(EcPublicKey::from_bytes("k", &key).unwrap_err().code(), "invalid_key_type");
        assert_eq!(EcPublicKey::from_b64("k", "not base64!").unwrap_err().code(), "bad_base64");
    }

    #[test]
    fn registration_id_range() {
        assert!(RegistrationId::new(0).is_err());
        assert!(RegistrationId::new(1).is_ok());
        assert!(RegistrationId::new(16380).is_ok());
        assert!(RegistrationId::new(16381).is_err());
        assert!(RegistrationId::new(-5).is_err());
    }

    #[test]
    fn device_slots_take_the_smallest_free_rested_id() {
        let slots = DeviceSlots { max_devices: 4, reuse_after: 1000 };
        let ids = |v: &[u32]| v.iter().map(|n| DeviceId(*n)).collect::<Vec<_>>();
        assert_eq!(slots.pick(&ids(&[1]), &[]), Some(DeviceId(2)));
        assert_eq!(slots.pick(&ids(&[1, 2, 4]), &[]), Some(DeviceId(3)));
        // 2 was given up recently, 3 long ago.
        assert_eq!(slots.pick(&ids(&[1]), &[(DeviceId(2), 2000), (DeviceId(3), 500)]), Some(DeviceId(3)));
        assert_eq!(slots.pick(&ids(&[1, 2, 3, 5]), &[]), None, "four devices: full");
    }

    #[test]
    fn days_round_down() {
        assert_eq!(round_to_day(86_400_000 * 3 + 5), 86_400_000 * 3);
        assert_eq!(round_to_day(86_400_000 * 3), 86_400_000 * 3);
    }
}
