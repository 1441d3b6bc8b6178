//! Push subscriptions, the rules: what a subscription must look like, how often a device may set one.

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};

use crate::access::AuthedDevice;
use crate::domain::now_millis;
use crate::error::ApiError;
use crate::push::sender::EndpointError;
use crate::state::App;

/// A subscription as a browser's `PushSubscription.toJSON()` gives it.
pub struct Subscription {
    pub endpoint: String,
    /// The subscription's P-256 key and auth secret (RFC 8291), base64url. Checked, never stored: a wakeup
    /// has no payload to encrypt.
    pub p256dh: String,
    pub auth: String,
}

fn base64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok().or_else(|| URL_SAFE.decode(text).ok())
}

/// Stores the calling device's subscription (replacing any earlier one).
pub async fn subscribe(app: &App, device: AuthedDevice, subscription: Subscription) -> Result<(), ApiError> {
    let identity = format!("{}.{}", device.aci, device.device);
    app.limiter
        .check("push_subscriptions_device", identity.as_bytes(), &app.config.limit_push_subscriptions_per_device)
        .await?;
    let p256dh = base64url(&subscription.p256dh).ok_or(ApiError::InvalidPushKeys)?;
    let auth = base64url(&subscription.auth).ok_or(ApiError::InvalidPushKeys)?;
    if auth.len() != 16 || p256dh.len() != 65 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
        return Err(ApiError::InvalidPushKeys);
    }
    if subscription.endpoint.len() > app.config.max_push_endpoint_bytes {
        return Err(EndpointError::TooLong.into());
    }
    app.wakeups.check_endpoint(&subscription.endpoint).await?;
    if !app.storage.push.put_subscription(device.aci, device.device, &subscription.endpoint, now_millis()).await? {
        // The device was removed while this request was on its way.
        return Err(ApiError::Unauthorized);
    }
    // A note from before the subscription must not hold back the next wakeup.
    app.storage.wakeups.clear(device.aci, device.device).await?;
    metrics::counter!("sealpost_push_subscriptions_set_total").increment(1);
    Ok(())
}

/// Removes the calling device's subscription, if it has one.
pub async fn unsubscribe(app: &App, device: AuthedDevice) -> Result<(), ApiError> {
    app.storage.push.delete_subscription(device.aci, device.device, None).await?;
    Ok(())
}
