//! Calls: the server's part is small on purpose. Calls are WebRTC, peer to peer; their signaling (offer,
//! answer, ICE candidates, hang-up, busy) travels as end-to-end-encrypted envelopes through the one send
//! path, like any message, and call state and history live on the clients (docs/calls.md). What the server
//! adds: short-lived credentials for the operator's coturn, so two devices behind NATs can still reach
//! each other through a relay.
//!
//! Invariants: a credential is coturn's TURN REST form (`username = expiry:pseudonym`, `password =
//! base64(HMAC-SHA1(secret, username))`), valid `SEALPOST_TURN_CREDENTIAL_TTL_SECONDS`; the pseudonym is
//! stable per device (so coturn can apply per-user quotas) and names no one.
//! Never: carries or records call media, or who calls whom.

pub mod service;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::access::AuthedDevice;
use crate::error::ApiError;
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/calling/relays", get(relays))
}

#[derive(Serialize)]
struct RelaysResponse {
    relays: Vec<service::Relay>,
}

async fn relays(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let relays = service::relays(&app, authed).await?;
    Ok(axum::Json(RelaysResponse { relays }))
}
