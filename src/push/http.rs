//! The HTTP surface of push: a device's subscription, and the VAPID key clients subscribe with.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use super::service::{self, Subscription};
use crate::access::AuthedDevice;
use crate::error::ApiError;
use crate::http::extract::Json;
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/devices/me/push", put(subscribe).delete(unsubscribe)).route("/v1/push/vapid", get(vapid))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscriptionRequest {
    endpoint: String,
    keys: Keys,
    /// Browsers include it in `PushSubscription.toJSON()`; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    expiration_time: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    p256dh: String,
    auth: String,
}

async fn subscribe(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Json(req): Json<SubscriptionRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let subscription = Subscription { endpoint: req.endpoint, p256dh: req.keys.p256dh, auth: req.keys.auth };
    service::subscribe(&app, authed, subscription).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unsubscribe(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    service::unsubscribe(&app, authed).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VapidResponse {
    public_key: String,
}

async fn vapid(State(app): State<Arc<App>>) -> impl IntoResponse {
    axum::Json(VapidResponse { public_key: app.wakeups.public_key().to_owned() })
}
