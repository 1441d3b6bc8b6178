//! Encrypted attachments: photos, voice notes and files too large for an envelope. The client encrypts an
//! attachment itself and sends the key inside a message; the server stores opaque bytes under a random id
//! and hands them to whoever knows the id.
//!
//! A device asks for an upload (`POST /v1/attachments`, declaring the length) and gets an id and a
//! one-time upload credential; it uploads with the tus 1.0.0 core protocol (`HEAD` for the offset,
//! `PATCH` from the offset), so an interrupted upload resumes where it broke off, on any instance. Anyone
//! holding the id downloads it (`GET /v1/attachments/{id}`, ranges supported) until it expires.
//!
//! Owns: attachment records (hashes of the id and credential, the declared length, the offset, the
//! parts) and the bytes (one object per part, in the attachments directory or an S3-compatible bucket).
//! Invariants: an upload's parts tile `0..offset` exactly; bytes that arrived are stored even when the
//! connection breaks; the credential is spent once the upload completes; an expired attachment is never
//! served and the reaper deletes it.
//! Never: stores who uploaded an attachment, or logs or labels anything (id, size, address) that ties
//! an attachment to a person; metrics are totals.

mod http;
pub mod objects;
mod range;
pub mod service;

pub use http::routes;
