//! Sends content-free Web Push wakeups (RFC 8030, VAPID per RFC 8292) and guards where they may go.
//!
//! A wakeup is a POST with no body to the subscription's endpoint: nothing to encrypt (RFC 8291 applies
//! to payloads), nothing for the push service to learn but that this subscription should wake. Headers:
//! `TTL` (the envelope's), `Urgency` (`high` for urgent envelopes such as call offers, else `normal`), a
//! fixed `Topic` so the service keeps only the latest of several waiting wakeups, and the VAPID
//! `Authorization` (an ES256 JWT for the endpoint's origin, signed with the server's P-256 key).
//!
//! Why not the `web-push` crate: it links OpenSSL through its payload encryption even when no payload is
//! sent (a second crypto and TLS stack next to rustls), and it attaches the VAPID header only to messages
//! with a payload. A wakeup needs neither, and the rest is a JWT the project already knows how to sign.
//!
//! SSRF: an endpoint is a URL a client chose, so the server must not become a way to reach the operator's
//! network. Endpoints must be `https` and every address their host resolves to must be public (not
//! loopback, private, link-local, CGNAT, multicast, documentation, or a cloud metadata address), checked
//! when the subscription is stored and again by the resolver of every connection (DNS rebinding), with
//! redirects and proxies off. Origins in `SEALPOST_PUSH_ALLOWED_ORIGINS` (a self-hosted ntfy on the LAN,
//! the tests' local push service) are exempt.
//! Never: puts an account, device, sender, count or content in a request.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an endpoint is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("the endpoint is not a valid URL")]
    NotAUrl,
    #[error("the endpoint is longer than the server accepts")]
    TooLong,
    #[error("the endpoint must use https")]
    NotHttps,
    #[error("the endpoint's host resolves to a loopback, private, link-local or otherwise non-public address")]
    NotPublic,
    #[error("the endpoint's host does not resolve")]
    Unresolvable,
}

/// What became of one wakeup.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// 404 or 410: the subscription is gone for good; delete it.
    Gone,
    /// 400 or 413: the service refused this request; retrying will not help.
    Rejected(u16),
    /// 429, 5xx or no answer: try again later (after the service's `Retry-After` when it gave one).
    Retry(Option<Duration>),
}

/// The fixed `Topic`: the push service keeps one waiting wakeup per subscription instead of a pile.
const TOPIC: &str = "wakeup";
/// How long a VAPID JWT is valid (RFC 8292 allows up to 24 h).
const VAPID_LIFETIME_SECONDS: u64 = 12 * 3600;

pub struct PushSender {
    client: reqwest::Client,
    key: jsonwebtoken::EncodingKey,
    public_key: String,
    subject: String,
    allowed: Arc<AllowedOrigins>,
}

/// Origins exempt from the https and public-address rules, as `scheme://host:port`.
#[derive(Debug, Default)]
pub struct AllowedOrigins {
    origins: HashSet<String>,
    hosts: HashSet<String>,
}

impl EndpointError {
    /// The stable, machine-readable reason (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            EndpointError::NotAUrl | EndpointError::TooLong => "invalid_push_endpoint",
            EndpointError::NotHttps => "push_endpoint_not_https",
            EndpointError::NotPublic => "push_endpoint_not_public",
            EndpointError::Unresolvable => "push_endpoint_unresolvable",
        }
    }
}

impl AllowedOrigins {
    /// From a comma-separated list of URLs (only their origins count).
    pub fn parse(list: Option<&str>) -> Result<AllowedOrigins, String> {
        let mut allowed = AllowedOrigins::default();
        for item in list.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let url = Url::parse(item).map_err(|_| format!("{item:?} is not a URL"))?;
            let host = url.host_str().ok_or_else(|| format!("{item:?} has no host"))?;
            allowed.origins.insert(url.origin().ascii_serialization());
            allowed.hosts.insert(host.trim_start_matches('[').trim_end_matches(']').to_owned());
        }
        Ok(allowed)
    }

    fn allows(&self, url: &Url) -> bool {
        self.origins.contains(&url.origin().ascii_serialization())
    }
}

impl PushSender {
    pub fn new(
        vapid: &p256::SecretKey,
        subject: String,
        allowed: AllowedOrigins,
        timeout: Duration,
        extra_root: Option<reqwest::Certificate>,
    ) -> Result<PushSender, String> {
        let der = vapid.to_pkcs8_der().map_err(|e| format!("VAPID key: {e}"))?;
        let key = jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes());
        let public_key = URL_SAFE_NO_PAD.encode(vapid.public_key().to_encoded_point(false).as_bytes());
        let allowed = Arc::new(allowed);
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(PublicOnly { allowed: allowed.clone() }));
        if let Some(root) = extra_root {
            builder = builder.add_root_certificate(root);
        }
        let client = builder.build().map_err(|e| format!("push client: {e}"))?;
        Ok(PushSender { client, key, public_key, subject, allowed })
    }

    /// The VAPID public key as browsers take it (`applicationServerKey`): base64url, uncompressed point.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Checks an endpoint a client wants to be woken at (resolving its host now; connections check again).
    pub async fn check_endpoint(&self, endpoint: &str) -> Result<Url, EndpointError> {
        let url = Url::parse(endpoint).map_err(|_| EndpointError::NotAUrl)?;
        if self.allowed.allows(&url) {
            return Ok(url);
        }
        if url.scheme() != "https" {
            return Err(EndpointError::NotHttps);
        }
        let host = url.host_str().ok_or(EndpointError::NotAUrl)?.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if is_public(ip) { Ok(url) } else { Err(EndpointError::NotPublic) };
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|_| EndpointError::Unresolvable)?.collect();
        if addresses.is_empty() {
            return Err(EndpointError::Unresolvable);
        }
        if addresses.iter().any(|a| !is_public(a.ip())) {
            return Err(EndpointError::NotPublic);
        }
        Ok(url)
    }

    /// Sends one wakeup.
    pub async fn send(&self, endpoint: &str, urgent: bool, ttl_seconds: u64) -> Delivery {
        // Checked again at send time: an IP literal never reaches the resolver.
        let url = match self.check_endpoint_syntax(endpoint) {
            Some(url) => url,
            None => return Delivery::Rejected(400),
        };
        let Ok(jwt) = self.vapid_jwt(&url) else { return Delivery::Retry(None) };
        let request = self
            .client
            .post(url)
            .header("TTL", ttl_seconds.to_string())
            .header("Urgency", if urgent { "high" } else { "normal" })
            .header("Topic", TOPIC)
            .header("Authorization", format!("vapid t={jwt}, k={}", self.public_key))
            .header("Content-Length", "0");
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200..=299 => Delivery::Sent,
                    404 | 410 => Delivery::Gone,
                    429 | 500..=599 => {
                        let wait = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        Delivery::Retry(wait)
                    }
                    other => Delivery::Rejected(other),
                }
            }
            Err(_) => Delivery::Retry(None),
        }
    }

    /// The https and literal-address rules, without resolving (the connection's resolver does that).
    fn check_endpoint_syntax(&self, endpoint: &str) -> Option<Url> {
        let url = Url::parse(endpoint).ok()?;
        if self.allowed.allows(&url) {
            return Some(url);
        }
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']');
        let literal_ok = host.parse::<IpAddr>().map_or(true, is_public);
        (url.scheme() == "https" && literal_ok).then_some(url)
    }

    /// The VAPID JWT for the endpoint's origin.
    fn vapid_jwt(&self, url: &Url) -> Result<String, jsonwebtoken::errors::Error> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            aud: String,
            exp: u64,
            sub: &'a str,
        }
        let exp = (crate::domain::now_millis() / 1000) as u64 + VAPID_LIFETIME_SECONDS;
        let claims = Claims { aud: url.origin().ascii_serialization(), exp, sub: &self.subject };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &self.key)
    }
}

/// Resolves names for the push client, keeping only public addresses (unless the host is allowed), so a
/// name that pointed somewhere public when the subscription was stored cannot point inside later.
struct PublicOnly {
    allowed: Arc<AllowedOrigins>,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let exempt = self.allowed.hosts.contains(&host);
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addresses: Vec<SocketAddr> = found.filter(|a| exempt || is_public(a.ip())).collect();
            if addresses.is_empty() {
                return Err(Box::new(EndpointError::NotPublic) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// Whether an address is on the public internet: not loopback, private, link-local (where cloud metadata
/// services live), CGNAT, unspecified, broadcast, multicast, documentation, benchmarking or reserved, also
/// when wrapped in IPv6 (IPv4-mapped, NAT64).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..=127).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..=19).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                || (segments[0] == 0x2001 && segments[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_count_as_public() {
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} counted as public");
        }
        for public in ["1.1.1.1", "142.250.74.46", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public} counted as private");
        }
    }

    #[tokio::test]
    async fn endpoints_must_be_https_and_public_unless_allowed() {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let allowed = AllowedOrigins::parse(Some("http://127.0.0.1:9000")).unwrap();
        let sender =
            PushSender::new(&key, "mailto:ops@example.org".into(), allowed, Duration::from_secs(5), None).unwrap();
        assert_eq!(sender.check_endpoint("http://push.example.org/x").await, Err(EndpointError::NotHttps));
        assert_eq!(sender.check_endpoint("https://127.0.0.1/x").await, Err(EndpointError::NotPublic));
        assert_eq!(sender.check_endpoint("https://10.0.0.1/x").await, Err(EndpointError::NotPublic));
        assert_eq!(sender.check_endpoint("https://169.254.169.254/latest").await, Err(EndpointError::NotPublic));
        assert_eq!(sender.check_endpoint("https://[::1]/x").await, Err(EndpointError::NotPublic));
        assert_eq!(sender.check_endpoint("https://localhost/x").await, Err(EndpointError::NotPublic));
        assert_eq!(sender.check_endpoint("not a url").await, Err(EndpointError::NotAUrl));
        assert!(sender.check_endpoint("http://127.0.0.1:9000/push/abc").await.is_ok(), "allow-listed origin");
        assert_eq!(sender.check_endpoint("http://127.0.0.1:9001/push").await, Err(EndpointError::NotHttps));
        assert_eq!(sender.public_key().len(), 87, "65 bytes, base64url");
    }

    /// The check at connect time: a name that resolves only to non-public addresses yields no address to
    /// connect to (a subscription stored while it pointed elsewhere is refused once it points inside).
    #[tokio::test]
    async fn the_connection_resolver_drops_non_public_addresses() {
        use std::str::FromStr;
        let strict = PublicOnly { allowed: Arc::new(AllowedOrigins::default()) };
        let refused = strict.resolve(Name::from_str("localhost").expect("name")).await;
        assert!(refused.is_err(), "localhost resolved to something connectable");
        let allowed = AllowedOrigins::parse(Some("http://localhost:8080")).expect("list");
        let exempt = PublicOnly { allowed: Arc::new(allowed) };
        let addresses: Vec<SocketAddr> =
            exempt.resolve(Name::from_str("localhost").expect("name")).await.expect("allowed").collect();
        assert!(addresses.iter().all(|a| a.ip().is_loopback()) && !addresses.is_empty());
    }
}
