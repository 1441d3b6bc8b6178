//! TURN credentials in coturn's REST form (`use-auth-secret`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::Serialize;

use crate::access::AuthedDevice;
use crate::error::ApiError;
use crate::state::App;

/// One TURN service and the credentials to use it, as WebRTC's `RTCIceServer` wants them.
#[derive(Debug, Serialize)]
pub struct Relay {
    pub urls: Vec<String>,
    pub username: String,
    pub password: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

/// Credentials for `device`, for every configured TURN URL; none when no TURN server is configured.
pub async fn relays(app: &App, device: AuthedDevice) -> Result<Vec<Relay>, ApiError> {
    let identity = format!("{}.{}", device.aci, device.device);
    app.limiter
        .check("turn_credentials_device", identity.as_bytes(), &app.config.limit_turn_credentials_per_device)
        .await?;
    let urls: Vec<String> = app
        .config
        .turn_urls
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let ttl = app.config.turn_credential_ttl_seconds;
    let expiry = crate::domain::now_millis() / 1000 + ttl as i64;
    // A pseudonym per device (keyed, so it cannot be linked to the account without the server's key).
    let pseudonym =
        URL_SAFE_NO_PAD.encode(crate::crypto::pseudonym(&app.keys.pseudonym_key, "turn", identity.as_bytes()));
    let username = format!("{expiry}:{pseudonym}");
    let password = credential(&app.keys.turn_secret, &username);
    metrics::counter!("sealpost_turn_credentials_total").increment(1);
    Ok(vec![Relay { urls, username, password, ttl }])
}

/// coturn's password for a REST username: base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_coturns_formula() {
        // Computed with: printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac 'north-south-east-west' -binary | base64
        assert_eq!(credential(b"north-south-east-west", "1700000000:alice"), "xfbW6MP9K0S2ba+Y4YNY+OH5u/M=");
    }
}
