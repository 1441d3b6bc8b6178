//! Accounts and devices: anonymous registration, device tokens, the device list, linking by QR code,
//! unlinking, account removal.
//!
//! Owns: the account record (random `aci`, public identity key, sealed-sender access key), its devices
//! (registration id, incarnation, salted hash of the device secret), invite and link codes.
//! Never: accepts or stores a phone number, e-mail or name; keeps a device secret or a code in the clear;
//! logs an aci, device id, IP or secret.

pub mod http;
pub mod link;
mod link_http;
pub mod service;

use std::sync::Arc;

use axum::Router;

use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().merge(http::routes()).merge(link_http::routes())
}
