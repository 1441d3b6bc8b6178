//! The provisioning socket of a device that is being linked: it receives a random address, then the one
//! message the primary relays to that address, and closes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;

use super::proto::{WebSocketMessage, ws_type};
use crate::error::ApiError;
use crate::http::ClientIp;
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/websocket/provisioning", get(upgrade))
}

async fn upgrade(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|_| ApiError::UpgradeRequired)?;
    app.limiter.check("provisioning_ip", ip.to_string().as_bytes(), &app.config.limit_provisioning_per_ip).await?;
    Ok(ws.read_buffer_size(4096).write_buffer_size(0).max_message_size(4096).on_upgrade(move |socket| async move {
        if let Err(err) = run(app, socket).await {
            tracing::debug!(error = %err, "provisioning socket ended with an error");
        }
    }))
}

async fn run(app: Arc<App>, mut socket: WebSocket) -> Result<(), axum::Error> {
    let (address, mut message) = match app.hub.register_provisioning().await {
        Ok(registered) => registered,
        Err(err) => {
            tracing::debug!(error = %err, "cannot register a provisioning socket");
            let code = super::websocket::CLOSE_TRY_AGAIN_LATER;
            let frame = CloseFrame { code, reason: "service unavailable; reconnect".into() };
            let _ = socket.send(Message::Close(Some(frame))).await;
            return Ok(());
        }
    };
    let (mut sink, mut stream) = socket.split();
    let result = async {
        let hello = WebSocketMessage::request(1, "PUT", "/v1/address", Some(address.clone().into_bytes()), Vec::new());
        sink.send(Message::Binary(hello.encode_to_vec().into())).await?;
        let mut shutdown = app.shutdown.clone();
        let timeout = tokio::time::sleep(Duration::from_secs(app.config.provisioning_timeout_seconds));
        tokio::pin!(timeout);
        let (code, reason) = loop {
            tokio::select! {
                body = &mut message => {
                    let Ok(body) = body else { break (1011, "hub closed") };
                    // The address is single-use: retire it before the message goes out, so a second relay
                    // is answered 404 instead of vanishing.
                    app.hub.unregister_provisioning(&address).await;
                    let request = WebSocketMessage::request(2, "PUT", "/v1/message", Some(body), Vec::new());
                    sink.send(Message::Binary(request.encode_to_vec().into())).await?;
                    break (1000, "provisioned");
                }
                frame = stream.next() => match frame {
                    Some(Ok(Message::Binary(bytes))) => {
                        if let Ok(message) = WebSocketMessage::decode(bytes.as_ref())
                            && message.r#type == Some(ws_type::REQUEST)
                            && let Some(request) = message.request
                        {
                            let ok = request.verb.as_deref() == Some("GET") && request.path.as_deref() == Some("/v1/keepalive");
                            let reply = WebSocketMessage::response(request.id.unwrap_or(0), if ok { 200 } else { 404 }, "");
                            sink.send(Message::Binary(reply.encode_to_vec().into())).await?;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => {}
                },
                _ = &mut timeout => break (1000, "timed out"),
                _ = super::websocket::stopped(&mut shutdown) => break (1001, "server shutting down"),
            }
        };
        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
        Ok(())
    }
    .await;
    app.hub.unregister_provisioning(&address).await;
    result
}
