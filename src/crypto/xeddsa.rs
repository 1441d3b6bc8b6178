//! XEdDSA over Curve25519, as libsignal defines it: a Montgomery (X25519) key signs Ed25519-style.
//!
//! Verification turns the Montgomery u-coordinate into the Edwards point whose sign bit is carried in the top
//! bit of the signature's last byte, then checks `R == s·B − h·A` with `h = SHA-512(R ‖ A ‖ M)`, exactly as
//! libsignal's `verify_signature` does (it also rejects an `s` with any of its top three bits set). Signing
//! uses the clamped private scalar, its Edwards public key and a nonce hashed from a 0xFE‖0xFF×31 prefix,
//! the key, the message and 64 random bytes.

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Verifies a 64-byte XEdDSA signature by the 32-byte Montgomery public key over `message`.
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let sign_bit = (signature[63] & 0x80) >> 7;
    let Some(edwards) = MontgomeryPoint(*public_key).to_edwards(sign_bit) else {
        return false;
    };
    let compressed_a = edwards.compress();
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&signature[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&signature[32..]);
    s_bytes[31] &= 0x7f;
    if s_bytes[31] & 0xe0 != 0 {
        return false;
    }
    let mut hash = Sha512::new();
    hash.update(r_bytes);
    hash.update(compressed_a.as_bytes());
    hash.update(message);
    let h = Scalar::from_hash(hash);
    let check =
        EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &-edwards, &Scalar::from_bytes_mod_order(s_bytes));
    bool::from(check.compress().as_bytes().ct_eq(&r_bytes))
}

/// A Curve25519 key pair of the server's own (trust root, server certificate).
#[derive(Clone)]
pub struct KeyPair {
    secret: [u8; 32],
    public: [u8; 32],
}

impl KeyPair {
    /// Builds a key pair from 32 private-key bytes (clamped as X25519 does).
    pub fn from_private(bytes: [u8; 32]) -> Self {
        let secret = clamp(bytes);
        let public = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
        KeyPair { secret, public }
    }

    pub fn generate() -> Self {
        Self::from_private(super::random_bytes())
    }

    pub fn private_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// Montgomery u-coordinate (32 bytes).
    pub fn public_bytes(&self) -> [u8; 32] {
        self.public
    }

    /// libsignal's serialised form: 0x05 followed by the u-coordinate.
    pub fn public_serialized(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = 0x05;
        out[1..].copy_from_slice(&self.public);
        out
    }

    /// Signs `message` with XEdDSA.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let random: [u8; 64] = super::random_bytes();
        let a = Scalar::from_bytes_mod_order(self.secret);
        let ed_public = (&a * ED25519_BASEPOINT_TABLE).compress();
        let sign_bit = ed_public.as_bytes()[31] & 0x80;

        let mut nonce_hash = Sha512::new();
        let mut prefix = [0xffu8; 32];
        prefix[0] = 0xfe;
        nonce_hash.update(prefix);
        nonce_hash.update(self.secret);
        nonce_hash.update(message);
        nonce_hash.update(random);
        let r = Scalar::from_hash(nonce_hash);
        let cap_r = (&r * ED25519_BASEPOINT_TABLE).compress();

        let mut hash = Sha512::new();
        hash.update(cap_r.as_bytes());
        hash.update(ed_public.as_bytes());
        hash.update(message);
        let h = Scalar::from_hash(hash);
        let s = h * a + r;

        let mut out = [0u8; 64];
        out[..32].copy_from_slice(cap_r.as_bytes());
        out[32..].copy_from_slice(s.as_bytes());
        out[63] &= 0x7f;
        out[63] |= sign_bit;
        out
    }
}

fn clamp(mut bytes: [u8; 32]) -> [u8; 32] {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decode_b64;

    #[test]
    fn own_signatures_verify_and_tampering_fails() {
        let pair = KeyPair::generate();
        for message in [&b""[..], b"hello", &[0x05; 33], &[0x08; 1569]] {
            let sig = pair.sign(message);
            assert!(verify(&pair.public_bytes(), message, &sig));
            let mut bad = sig;
            bad[5] ^= 1;
            assert!(!verify(&pair.public_bytes(), message, &bad));
            let other = KeyPair::generate();
            assert!(!verify(&other.public_bytes(), message, &sig));
        }
    }

    /// Vectors made by the official libsignal client (tests/client/gen-xeddsa-fixtures.mjs).
    #[test]
    fn libsignal_vectors() {
        let text = include_str!("../../tests/fixtures/xeddsa.json");
        let vectors: Vec<serde_json::Value> = serde_json::from_str(text).expect("fixture is JSON");
        assert!(vectors.len() >= 6, "fixture holds too few vectors");
        let mut valid = 0;
        for v in &vectors {
            let key = decode_b64("publicKey", v["publicKey"].as_str().unwrap()).unwrap();
            let message = decode_b64("message", v["message"].as_str().unwrap()).unwrap();
            let sig = decode_b64("signature", v["signature"].as_str().unwrap()).unwrap();
            let expected = v["valid"].as_bool().unwrap_or(true);
            assert_eq!(key.len(), 33);
            let key: [u8; 32] = key[1..].try_into().unwrap();
            let sig: [u8; 64] = sig.as_slice().try_into().unwrap();
            assert_eq!(verify(&key, &message, &sig), expected, "vector {v}");
            valid += usize::from(expected);
        }
        assert!(valid >= 4);
    }
}
