//! Identifiers: of accounts, of devices within one, of one life of a device, and the client's own
//! registration id.

use std::fmt;

use uuid::Uuid;

use super::DomainError;

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
    pub fn new(value: i64) -> Result<Self, DomainError> {
        if (1..=16380).contains(&value) {
            Ok(RegistrationId(value as u16))
        } else {
            Err(DomainError::InvalidRegistrationId)
        }
    }
}
