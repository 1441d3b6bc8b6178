//! The little cryptography a server needs: hashing secrets it must recognise but never keep, XEdDSA
//! signatures (verify clients' prekey signatures, sign sender certificates), and constant-time comparison.
//!
//! The server never holds a user's private key; the only private keys here are the server's own.

pub mod sender_certificate;
pub mod xeddsa;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Salted hash of a high-entropy secret (device secrets are ≥ 256 random bits, so a slow KDF adds nothing
/// but latency; a salt keeps equal secrets from producing equal rows).
pub fn hash_secret(salt: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"sealpost device secret v1");
    hasher.update((salt.len() as u32).to_be_bytes());
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

/// A fresh random salt for [`hash_secret`].
pub fn new_salt() -> [u8; 16] {
    random_bytes()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

/// Compares two secrets without leaking, through timing, where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Unsalted SHA-256, for random single-use codes (invites, link codes, contact tokens) that are looked up by hash.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Keyed hash of a value within a domain (HMAC-SHA256 of `domain ‖ 0 ‖ value`): without the key, a stored
/// hash can neither be reversed nor confirmed.
pub fn keyed_hash(key: &[u8; 32], domain: &str, value: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(domain.as_bytes());
    mac.update(&[0]);
    mac.update(value);
    mac.finalize().into_bytes().into()
}

/// Keyed pseudonym of an identifier (an IP, an account) so rate-limit buckets name no one.
pub fn pseudonym(key: &[u8; 32], domain: &str, value: &[u8]) -> [u8; 16] {
    let full = keyed_hash(key, domain, value);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// What is stored of a contact token (the text a QR code holds): its keyed hash, never the token.
pub fn contact_token_hash(key: &[u8; 32], token: &str) -> [u8; 32] {
    keyed_hash(key, "contact-token", token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_hash_depends_on_salt_and_secret() {
        let a = hash_secret(b"salt1", b"secret");
        assert_eq!(a, hash_secret(b"salt1", b"secret"));
        assert_ne!(a, hash_secret(b"salt2", b"secret"));
        assert_ne!(a, hash_secret(b"salt1", b"secreu"));
        assert!(constant_time_eq(&a, &hash_secret(b"salt1", b"secret")));
        assert!(!constant_time_eq(&a, &a[..31]));
    }
}
