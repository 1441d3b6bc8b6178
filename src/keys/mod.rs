//! Key distribution: identity, signed, last-resort and one-time prekeys for PQXDH.
//!
//! Invariants:
//! * every signed key was verified (XEdDSA, by the account's identity key) before it was stored;
//! * a one-time prekey is returned to at most one caller, ever (the pool's claim is atomic);
//! * a bundle always carries a Kyber key: a one-time one while the pool lasts, then the last-resort key.
//!
//! Never: holds or sees a private key; tells an anonymous caller whether an account exists.

pub mod http;
pub mod service;

pub use http::routes;
