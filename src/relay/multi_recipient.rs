//! libsignal's multi-recipient sealed-sender message (`SealedSenderMultiRecipientEncrypt`), as a sender
//! uploads it, and the message each recipient's devices receive.
//!
//! The upload (all integers big-endian):
//!
//! ```text
//! u8      version: 0x23 (recipients as 17-byte service ids) or 0x22 (16-byte ACI UUIDs)
//! varint  count of recipient entries (recipients and excluded recipients)
//! count × entry:
//!   service id: 0x00 ‖ 16 UUID bytes for an ACI, 0x01 ‖ … for a PNI (0x22: the 16 bytes alone)
//!   devices: (u8 device id 1..=127, u16 registration id in bits 13..0 with bit 15 = "another device
//!            follows") …, then 32 bytes C_i and 16 bytes AT_i of key material for this recipient;
//!            or a single 0x00: an excluded recipient, with no key material
//! 32      the ephemeral public key E (raw Curve25519)
//! rest    the ciphertext shared by every recipient
//! ```
//!
//! A recipient's devices all receive `0x22 ‖ C_i ‖ AT_i ‖ E ‖ ciphertext`, which libsignal's
//! `sealedSenderDecryptToUsmc` opens. A service id listed twice has its devices joined (the first key
//! material counts). Invariants: anything truncated, an unknown version, a device id of 0 after a device
//! or above 127, or a service id both excluded and not, is refused; the server never looks inside the
//! shared ciphertext.

use crate::domain::{Aci, DeviceId};

/// Why an upload is refused (400 `invalid_multi_recipient_message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown version {0:#04x}")]
    Version(u8),
    #[error("truncated")]
    Truncated,
    #[error("a device id is 0 or above 127")]
    DeviceId,
    #[error("a recipient is both excluded and addressed")]
    Excluded,
    #[error("a recipient is not an ACI")]
    NotAci,
    #[error("no recipient")]
    Empty,
}

/// One addressed recipient: its devices with the registration ids the sender believes current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub aci: Aci,
    pub devices: Vec<(DeviceId, u16)>,
    /// Offset of this recipient's 48 bytes of key material in the upload.
    key_material: usize,
}

/// A parsed upload.
#[derive(Debug)]
pub struct MultiRecipientMessage<'a> {
    bytes: &'a [u8],
    pub recipients: Vec<Recipient>,
    /// Where E and the ciphertext begin.
    shared: usize,
}

const KEY_MATERIAL: usize = 32 + 16;
const EPHEMERAL_KEY: usize = 32;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.at.checked_add(n).ok_or(ParseError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(ParseError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, ParseError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ParseError::Truncated)
    }
}

impl<'a> MultiRecipientMessage<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.byte()?;
        if version != 0x22 && version != 0x23 {
            return Err(ParseError::Version(version));
        }
        let count = reader.varint()?;
        let mut recipients: Vec<Recipient> = Vec::new();
        let mut excluded: Vec<Aci> = Vec::new();
        for _ in 0..count {
            // An excluded recipient may be any kind of service id; an addressed one must be an ACI.
            let (is_aci, aci) = if version == 0x23 {
                let id = reader.take(17)?;
                (id[0] == 0x00, uuid::Uuid::from_slice(&id[1..]).map(Aci).map_err(|_| ParseError::Truncated)?)
            } else {
                (true, uuid::Uuid::from_slice(reader.take(16)?).map(Aci).map_err(|_| ParseError::Truncated)?)
            };
            let mut devices = Vec::new();
            loop {
                let device = reader.byte()?;
                if device == 0 {
                    if !devices.is_empty() {
                        return Err(ParseError::DeviceId);
                    }
                    break;
                }
                if u32::from(device) > DeviceId::MAX {
                    return Err(ParseError::DeviceId);
                }
                let tag = reader.take(2)?;
                let tag = u16::from_be_bytes([tag[0], tag[1]]);
                devices.push((DeviceId(u32::from(device)), tag & 0x3fff));
                if tag & 0x8000 == 0 {
                    break;
                }
            }
            if devices.is_empty() {
                if recipients.iter().any(|r| r.aci == aci) {
                    return Err(ParseError::Excluded);
                }
                excluded.push(aci);
                continue;
            }
            if !is_aci {
                return Err(ParseError::NotAci);
            }
            if excluded.contains(&aci) {
                return Err(ParseError::Excluded);
            }
            let key_material = reader.at;
            reader.take(KEY_MATERIAL)?;
            match recipients.iter_mut().find(|r| r.aci == aci) {
                Some(known) => known.devices.extend(devices),
                None => recipients.push(Recipient { aci, devices, key_material }),
            }
        }
        let shared = reader.at;
        if bytes.len() < shared + EPHEMERAL_KEY {
            return Err(ParseError::Truncated);
        }
        if recipients.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(MultiRecipientMessage { bytes, recipients, shared })
    }

    /// What every device of `recipient` receives as its envelope's content.
    pub fn message_for(&self, recipient: &Recipient) -> Vec<u8> {
        let key = &self.bytes[recipient.key_material..recipient.key_material + KEY_MATERIAL];
        let shared = &self.bytes[self.shared..];
        let mut out = Vec::with_capacity(1 + key.len() + shared.len());
        out.push(0x22);
        out.extend_from_slice(key);
        out.extend_from_slice(shared);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
    }

    /// A message made by the official client (tests/client/gen-mrm-fixtures.mjs): two recipients of two
    /// devices each, one excluded recipient, and what the client library says each recipient receives.
    #[test]
    fn parses_what_the_official_client_makes() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/multi_recipient.json")).expect("fixture");
        let upload = hex(fixture["message"].as_str().expect("message"));
        let parsed = MultiRecipientMessage::parse(&upload).expect("parses");
        let expected = fixture["recipients"].as_array().expect("recipients");
        assert_eq!(parsed.recipients.len(), expected.len());
        for (recipient, want) in parsed.recipients.iter().zip(expected) {
            assert_eq!(recipient.aci.to_string(), want["aci"].as_str().expect("aci"));
            let devices: Vec<(u64, u64)> =
                recipient.devices.iter().map(|(d, r)| (u64::from(d.0), u64::from(*r))).collect();
            let want_devices: Vec<(u64, u64)> = want["devices"]
                .as_array()
                .expect("devices")
                .iter()
                .map(|d| (d[0].as_u64().expect("id"), d[1].as_u64().expect("registration id")))
                .collect();
            assert_eq!(devices, want_devices);
            assert_eq!(parsed.message_for(recipient), hex(want["received"].as_str().expect("received")));
        }
    }

    #[test]
    fn refuses_what_is_not_one() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/multi_recipient.json")).expect("fixture");
        let upload = hex(fixture["message"].as_str().expect("message"));
        let shared = MultiRecipientMessage::parse(&upload).expect("parses").shared;
        // Cut inside the recipient table, or before the ephemeral key is whole (the ciphertext's length is
        // the sender's business).
        for cut in [0, 1, 2, 10, 30, 100, shared - 1, shared + 31] {
            assert_eq!(
                MultiRecipientMessage::parse(&upload[..cut]).unwrap_err(),
                ParseError::Truncated,
                "cut at {cut}"
            );
        }
        let mut wrong = upload.clone();
        wrong[0] = 0x24;
        assert_eq!(MultiRecipientMessage::parse(&wrong).unwrap_err(), ParseError::Version(0x24));
        // One recipient, a device id of 200.
        let mut bad = vec![0x23, 0x01, 0x00];
        bad.extend_from_slice(&[0x11; 16]);
        bad.extend_from_slice(&[200, 0x00, 0x01]);
        bad.extend_from_slice(&[0u8; 48 + 32 + 20]);
        assert_eq!(MultiRecipientMessage::parse(&bad).unwrap_err(), ParseError::DeviceId);
        // A PNI recipient.
        bad[2] = 0x01;
        bad[19] = 1;
        assert_eq!(MultiRecipientMessage::parse(&bad).unwrap_err(), ParseError::NotAci);
        // Only an excluded recipient.
        let mut none = vec![0x23, 0x01, 0x00];
        none.extend_from_slice(&[0x11; 16]);
        none.push(0);
        none.extend_from_slice(&[0u8; 40]);
        assert_eq!(MultiRecipientMessage::parse(&none).unwrap_err(), ParseError::Empty);
    }
}
