//! Validated values, parsed once at the edge so inner code never re-checks a length or a range, and the
//! few rules about them that several capabilities and both storage backends share.
//!
//! Nothing here knows HTTP or storage: parse failures are [`DomainError`]s, which the API maps to its
//! error codes.

mod devices;
mod error;
mod ids;
mod keys;

pub use devices::DeviceSlots;
pub use error::DomainError;
pub use ids::{Aci, DeviceId, Incarnation, RegistrationId};
pub use keys::{AccessKey, DeviceSecret, EcPublicKey, KemPublicKey, Signature, decode_b64, encode_b64};

/// Whether something that expires at `expires_at` (ms) is still good at `now`: the one rule for codes,
/// invites, tokens of contact and leases alike.
pub fn is_live(expires_at: i64, now: i64) -> bool {
    expires_at > now
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
