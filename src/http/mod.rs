//! HTTP plumbing below the capabilities: the listener, extractors that turn bad input into our error body,
//! the client address as rate limits see it, request metrics and privacy-preserving request logs.
//! Capabilities own their handlers and `routes` composes them; nothing here knows a capability.

pub mod browser;
pub mod docs;
pub mod extract;
pub mod listener;
pub mod openapi;
pub mod ops;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::App;

/// Counts and times every request by route template (never by concrete path, which holds ids), and logs
/// method, template, status and latency at debug level: no path, query, header or address.
pub async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("sealpost_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("sealpost_http_request_duration_seconds", "method" => method, "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(instance = %app.instance, method, %route, status, latency_us = elapsed.as_micros() as u64, "request");
    response
}

/// The method as a metric label: one of the standard methods, or `other`. Anyone can send any method
/// string, and a label value per string would let them grow `/metrics` without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Address of the client as rate limits see it: the TCP peer, or what a trusted proxy says, with an IPv6
/// address cut to its network prefix (one subscriber usually holds a whole /64). Used only in memory, for
/// rate-limit buckets; never stored or logged.
pub struct ClientIp(pub IpAddr);

impl axum::extract::FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let told = app.config.trusted_proxy_header.as_deref().and_then(|name| forwarded_client(&parts.headers, name));
        let ip = match told {
            Some(ip) => ip,
            None => parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
                .ok_or_else(|| ApiError::Internal("connection info missing".into()))?,
        };
        Ok(ClientIp(bucket_address(ip, app.config.ipv6_prefix_length)))
    }
}

/// The client address a trusted proxy appended to `header`: the last address over every line of the
/// header, since a client may send lines (and addresses) of its own before the proxy adds its one.
pub fn forwarded_client(headers: &axum::http::HeaderMap, header: &str) -> Option<IpAddr> {
    let last = headers.get_all(header).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).last()?;
    let last = last.trim();
    last.parse::<IpAddr>().ok().or_else(|| last.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// IPv4 as it is (an IPv4-mapped IPv6 address counts as IPv4); IPv6 cut to its first `prefix` bits.
pub fn bucket_address(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
                IpAddr::V6(std::net::Ipv6Addr::from(bits & mask))
            }
        },
    }
}
