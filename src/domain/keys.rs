//! Keys, signatures and secrets in libsignal's serialised forms, and the base64 they travel in.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::DomainError;

/// Decodes a standard-base64 (padded) JSON field, naming the field on failure.
pub fn decode_b64(field: &'static str, value: &str) -> Result<Vec<u8>, DomainError> {
    STANDARD.decode(value).map_err(|_| DomainError::BadBase64(field))
}

pub fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A libsignal Curve25519 public key: type byte 0x05 followed by 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EcPublicKey(pub [u8; 33]);

impl EcPublicKey {
    pub const TYPE: u8 = 0x05;

    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, DomainError> {
        Self::from_bytes(field, &decode_b64(field, value)?)
    }

    pub fn from_bytes(field: &'static str, bytes: &[u8]) -> Result<Self, DomainError> {
        let key: [u8; 33] = bytes.try_into().map_err(|_| DomainError::InvalidKeyLength(field))?;
        if key[0] != Self::TYPE {
            return Err(DomainError::InvalidKeyType(field));
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

    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, DomainError> {
        let bytes = decode_b64(field, value)?;
        if bytes.len() != Self::LEN {
            return Err(DomainError::InvalidKeyLength(field));
        }
        if bytes[0] != Self::TYPE {
            return Err(DomainError::InvalidKeyType(field));
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
    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, DomainError> {
        let bytes = decode_b64(field, value)?;
        let sig: [u8; 64] = bytes.as_slice().try_into().map_err(|_| DomainError::InvalidKeyLength(field))?;
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
    pub fn from_b64(value: &str) -> Result<Self, DomainError> {
        let bytes = decode_b64("deviceSecret", value)?;
        if !(32..=64).contains(&bytes.len()) {
            return Err(DomainError::InvalidDeviceSecret);
        }
        Ok(DeviceSecret(bytes))
    }
}

/// The 16-byte key that authorises sealed-sender access to an account.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AccessKey(pub [u8; 16]);

impl AccessKey {
    pub fn from_b64(field: &'static str, value: &str) -> Result<Self, DomainError> {
        let bytes = decode_b64(field, value)?;
        let key: [u8; 16] = bytes.as_slice().try_into().map_err(|_| DomainError::InvalidKeyLength(field))?;
        Ok(AccessKey(key))
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(..)")
    }
}
