//! One device's WebSocket: pushes queued envelopes oldest first with a window of unacknowledged ones,
//! deletes each on a 2xx answer, signals `queue/empty` once the backlog is drained, and pushes new
//! envelopes as they arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use futures_util::{FutureExt, SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;
use tokio::time::Instant;

use super::proto::{WebSocketMessage, ws_type};
use crate::access::extract::bearer;
use crate::access::{AuthedDevice, authenticate};
use crate::domain::now_millis;
use crate::error::ApiError;
use crate::http::extract::Query;
use crate::state::App;
use crate::storage::BusEvent;

/// Close codes.
pub const CLOSE_DISPLACED: u16 = 4409;
pub const CLOSE_REVOKED: u16 = 4401;
/// A store the socket needs is unavailable: the client should reconnect after a short wait (RFC 6455's
/// "try again later"), and will then be served from its queue, which lost nothing.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_ERROR: u16 = 1011;

/// Client frames handled in one go (their acknowledgements become one storage call).
const MAX_FRAMES_AT_ONCE: usize = 256;

/// Read buffer per socket, allocated up front and grown only for a frame that needs more. A client sends
/// acknowledgements and keepalives (tens of bytes each, a dozen fit), so 512 bytes serve; at 4 KiB the
/// buffer was the largest single allocation of an idle socket (docs/benchmarks.md).
const READ_BUFFER_BYTES: usize = 512;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/websocket", get(upgrade))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Browsers cannot set headers on a WebSocket: they pass the token in the query (never logged: request
    // logs name only the route template).
    let token = bearer(&headers).map(str::to_owned).or(query.token).ok_or(ApiError::Unauthorized)?;
    let device = authenticate(&app, &token).await?;
    let ws = ws.map_err(|_| ApiError::UpgradeRequired)?;
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(app.config.ws_max_frame_bytes)
        .max_frame_size(app.config.ws_max_frame_bytes)
        .on_upgrade(move |socket| async move {
            if let Err(err) = run(app, device, socket).await {
                tracing::debug!(error = %err, "websocket ended with an error");
            }
        }))
}

#[derive(Debug, thiserror::Error)]
enum SocketError {
    #[error("socket: {0}")]
    Socket(#[from] axum::Error),
    #[error("storage: {0}")]
    Store(#[from] crate::storage::StoreError),
}

/// Why the loop stopped, and the close frame to send for it.
enum Ending {
    ClientGone,
    Close(u16, &'static str),
}

struct Delivery {
    /// Highest queue position read from the queue on this socket; later reads start after it. Envelopes
    /// sent straight from their `Queued` event do not move it: a read may meet them again, and skips them
    /// (`sent_directly`; the acknowledged ones are gone from the queue by then).
    cursor: u64,
    /// Request id → guid of envelopes sent and not yet answered.
    in_flight: HashMap<u64, [u8; 16]>,
    /// Envelopes sent straight from their event and not yet acknowledged: a queue read skips them. One
    /// answered with another status stays here, so this socket does not send it again (as with a read one).
    sent_directly: HashSet<[u8; 16]>,
    next_request_id: u64,
    /// The queue may hold envelopes this socket has not sent yet.
    unread: bool,
    queue_empty_sent: bool,
    /// A keepalive arrived: check again that the device still exists (in case a revocation was lost).
    recheck: bool,
}

async fn run(app: Arc<App>, device: AuthedDevice, mut socket: WebSocket) -> Result<(), SocketError> {
    let registration = match app.hub.register(device.aci, device.device).await {
        Ok(registration) => registration,
        Err(err) => {
            tracing::debug!(error = %err, "cannot register a socket");
            let frame = CloseFrame { code: CLOSE_TRY_AGAIN_LATER, reason: "service unavailable; reconnect".into() };
            let _ = socket.send(Message::Close(Some(frame))).await;
            return Ok(());
        }
    };
    let result = deliver(&app, device, socket, registration.connection_id, registration.events).await;
    app.hub.unregister(device.aci, device.device, registration.connection_id).await;
    result
}

async fn deliver(
    app: &App,
    device: AuthedDevice,
    socket: WebSocket,
    connection_id: u64,
    mut events: tokio::sync::mpsc::Receiver<BusEvent>,
) -> Result<(), SocketError> {
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = app.shutdown.clone();
    let idle = Duration::from_secs(app.config.ws_idle_timeout_seconds);
    let mut deadline = Instant::now() + idle;
    let window = app.config.ws_window;
    let mut state = Delivery {
        cursor: 0,
        in_flight: HashMap::new(),
        sent_directly: HashSet::new(),
        next_request_id: 1,
        unread: true,
        queue_empty_sent: false,
        recheck: false,
    };
    // Presence is renewed while the socket lives, so other instances (and the push wakeups) know it is here.
    let mut presence = tokio::time::interval_at(Instant::now() + super::PRESENCE_RENEW, super::PRESENCE_RENEW);

    let outcome = async {
    let ending = loop {
        if state.unread && state.in_flight.len() < window {
            let want = window - state.in_flight.len();
            let batch = app.storage.queue.peek(device.aci, device.device, state.cursor, want, now_millis()).await?;
            let fetched = batch.len();
            let mut sent = 0;
            for item in batch {
                state.cursor = state.cursor.max(item.seq);
                if state.sent_directly.contains(&item.guid) {
                    continue;
                }
                let id = state.next_request_id;
                state.next_request_id += 1;
                state.in_flight.insert(id, item.guid);
                // Queue the frames and flush once per batch: one write for many envelopes.
                sink.feed(envelope_request(id, item.envelope)).await?;
                sent += 1;
            }
            metrics::counter!("sealpost_envelopes_sent_total").increment(sent);
            if fetched < want {
                state.unread = false;
                if !state.queue_empty_sent {
                    state.queue_empty_sent = true;
                    let id = state.next_request_id;
                    state.next_request_id += 1;
                    let message = WebSocketMessage::request(id, "PUT", "/api/v1/queue/empty", None, Vec::new());
                    sink.feed(Message::Binary(message.encode_to_vec().into())).await?;
                }
            }
            sink.flush().await?;
        }

        tokio::select! {
            frame = stream.next() => {
                deadline = Instant::now() + idle;
                match frame {
                    Some(Ok(Message::Binary(bytes))) => {
                        // Take every frame that is already here, so their acknowledgements cost one
                        // storage call together.
                        let mut acks = Vec::new();
                        let mut replies = 0;
                        let mut frame = Some(bytes);
                        let mut bad = false;
                        while let Some(bytes) = frame.take() {
                            let Ok(message) = WebSocketMessage::decode(bytes.as_ref()) else {
                                bad = true;
                                break;
                            };
                            if let Some(reply) = handle_client_message(&mut state, message, &mut acks) {
                                sink.feed(reply).await?;
                                replies += 1;
                            }
                            if acks.len() + replies < MAX_FRAMES_AT_ONCE
                                && let Some(Some(Ok(Message::Binary(next)))) = stream.next().now_or_never()
                            {
                                frame = Some(next);
                            }
                        }
                        if !acks.is_empty() {
                            app.storage.queue.ack_many(device.aci, device.device, &acks).await?;
                            metrics::counter!("sealpost_envelopes_acknowledged_total").increment(acks.len() as u64);
                        }
                        if replies > 0 {
                            sink.flush().await?;
                        }
                        if bad {
                            break Ending::Close(CLOSE_UNSUPPORTED, "not a WebSocketMessage");
                        }
                        if std::mem::take(&mut state.recheck)
                            && !app.directory.get(device.aci).await?.device_active(device.device, device.incarnation)
                        {
                            break Ending::Close(CLOSE_REVOKED, "device removed");
                        }
                    }
                    Some(Ok(Message::Text(_))) => break Ending::Close(CLOSE_UNSUPPORTED, "binary frames only"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break Ending::ClientGone,
                    Some(Err(_)) => break Ending::ClientGone,
                }
            }
            event = events.recv() => match event {
                Some(BusEvent::Wake) => state.unread = true,
                Some(BusEvent::Queued(item)) => {
                    if item.seq <= state.cursor {
                        // A read already met it.
                    } else if state.unread || state.in_flight.len() >= window {
                        state.unread = true;
                    } else {
                        // Everything queued before it was read: send it without reading it back.
                        let id = state.next_request_id;
                        state.next_request_id += 1;
                        state.in_flight.insert(id, item.guid);
                        state.sent_directly.insert(item.guid);
                        sink.send(envelope_request(id, item.envelope)).await?;
                        metrics::counter!("sealpost_envelopes_sent_total").increment(1);
                    }
                }
                Some(BusEvent::Ephemeral(envelope)) => {
                    // Not tracked for acknowledgement: it was never stored.
                    let id = state.next_request_id;
                    state.next_request_id += 1;
                    sink.send(envelope_request(id, envelope)).await?;
                }
                Some(BusEvent::Displace(_)) => break Ending::Close(CLOSE_DISPLACED, "connected elsewhere"),
                Some(BusEvent::Revoke) => break Ending::Close(CLOSE_REVOKED, "device removed"),
                None => break Ending::Close(CLOSE_ERROR, "hub closed"),
            },
            _ = presence.tick() => app.hub.renew_presence(device.aci, device.device, connection_id).await?,
            _ = tokio::time::sleep_until(deadline) => break Ending::Close(CLOSE_NORMAL, "idle"),
            _ = stopped(&mut shutdown) => break Ending::Close(CLOSE_GOING_AWAY, "server shutting down"),
        }
    };
    Ok::<_, SocketError>(ending)
    }
    .await;
    let ending = match outcome {
        Ok(ending) => ending,
        // A store call failed or timed out: say so and let the client come back, rather than leave it
        // waiting on a socket that cannot serve it.
        Err(SocketError::Store(err)) => {
            tracing::debug!(error = %err, "closing a socket: a store is unavailable");
            Ending::Close(CLOSE_TRY_AGAIN_LATER, "service unavailable; reconnect")
        }
        Err(SocketError::Socket(_)) => Ending::ClientGone,
    };
    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    Ok(())
}

fn envelope_request(id: u64, envelope: Vec<u8>) -> Message {
    let headers = vec![format!("X-Signal-Timestamp:{}", now_millis())];
    let message = WebSocketMessage::request(id, "PUT", "/api/v1/message", Some(envelope), headers);
    Message::Binary(message.encode_to_vec().into())
}

/// Acknowledgements and the few requests a client may make on the socket.
/// Handles one client frame: an acknowledgement adds its guid to `acks` (deleted by the caller, together
/// with the others that arrived at once); a request gets its reply.
fn handle_client_message(state: &mut Delivery, message: WebSocketMessage, acks: &mut Vec<[u8; 16]>) -> Option<Message> {
    match (message.r#type, message.request, message.response) {
        (Some(ws_type::RESPONSE), _, Some(response)) => {
            let guid = response.id.and_then(|id| state.in_flight.remove(&id))?;
            if (200..300).contains(&response.status.unwrap_or(0)) {
                state.sent_directly.remove(&guid);
                acks.push(guid);
            }
            // Any other status leaves the envelope queued for the next connection.
            None
        }
        (Some(ws_type::REQUEST), Some(request), _) => {
            let id = request.id.unwrap_or(0);
            let reply = match (request.verb.as_deref(), request.path.as_deref()) {
                (Some("GET"), Some("/v1/keepalive")) => {
                    // A keepalive is also a chance to catch any wake or revocation lost on the way.
                    state.unread = true;
                    state.recheck = true;
                    WebSocketMessage::response(id, 200, "OK")
                }
                _ => WebSocketMessage::response(id, 404, "Not found"),
            };
            Some(Message::Binary(reply.encode_to_vec().into()))
        }
        _ => None,
    }
}

/// Completes once the shutdown flag is set (the guard `wait_for` returns is dropped at once, so the future
/// stays `Send`).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
