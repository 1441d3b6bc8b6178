//! A test WebSocket client speaking the server's framing.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use sealpost::delivery::proto::{Envelope, WebSocketMessage, ws_type};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Socket {
    stream: Stream,
}

/// What the server sent.
#[derive(Debug)]
pub enum Incoming {
    /// `PUT /api/v1/message`: request id and the decoded envelope.
    Envelope(u64, Envelope, Vec<String>),
    QueueEmpty(u64),
    Response(u64, u32),
    Closed(Option<u16>),
}

impl Socket {
    pub async fn connect(base: &str, token: &str) -> Socket {
        Self::try_connect(base, token).await.expect("websocket connects")
    }

    pub async fn try_connect(base: &str, token: &str) -> Result<Socket, u16> {
        let url = format!("{}/v1/websocket", base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Socket { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(other) => panic!("websocket failed: {other}"),
        }
    }

    /// Next frame from the server, within `wait`; `None` when nothing came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        loop {
            let frame = match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Incoming::Closed(None)),
                Ok(Some(Err(_))) => return Some(Incoming::Closed(None)),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Binary(bytes) => {
                    let message = WebSocketMessage::decode(bytes.as_ref()).expect("WebSocketMessage");
                    if message.r#type == Some(ws_type::RESPONSE) {
                        let response = message.response.expect("response");
                        return Some(Incoming::Response(response.id.unwrap_or(0), response.status.unwrap_or(0)));
                    }
                    let request = message.request.expect("request");
                    let id = request.id.expect("request id");
                    match (request.verb.as_deref(), request.path.as_deref()) {
                        (Some("PUT"), Some("/api/v1/message")) => {
                            let envelope =
                                Envelope::decode(request.body.unwrap_or_default().as_slice()).expect("envelope");
                            return Some(Incoming::Envelope(id, envelope, request.headers));
                        }
                        (Some("PUT"), Some("/api/v1/queue/empty")) => return Some(Incoming::QueueEmpty(id)),
                        other => panic!("unexpected request {other:?}"),
                    }
                }
                Message::Close(frame) => return Some(Incoming::Closed(frame.map(|f| u16::from(f.code)))),
                _ => continue,
            }
        }
    }

    pub async fn next(&mut self) -> Incoming {
        self.next_within(Duration::from_secs(10)).await.expect("a frame within 10 s")
    }

    /// Reads the next envelope, failing on anything else.
    pub async fn envelope(&mut self) -> (u64, Envelope) {
        match self.next().await {
            Incoming::Envelope(id, envelope, _) => (id, envelope),
            other => panic!("expected an envelope, got {other:?}"),
        }
    }

    pub async fn expect_queue_empty(&mut self) {
        match self.next().await {
            Incoming::QueueEmpty(id) => self.respond(id, 200).await,
            other => panic!("expected queue/empty, got {other:?}"),
        }
    }

    pub async fn respond(&mut self, id: u64, status: u32) {
        assert!(self.try_respond(id, status).await, "the socket is open");
    }

    /// Answers a request; false when the connection is already gone.
    pub async fn try_respond(&mut self, id: u64, status: u32) -> bool {
        let message = WebSocketMessage::response(id, status, "OK");
        self.stream.send(Message::Binary(message.encode_to_vec().into())).await.is_ok()
    }

    /// Sends a request; a connection the server already closed shows in the next [`Self::next`].
    pub async fn request(&mut self, id: u64, verb: &str, path: &str) {
        let message = WebSocketMessage::request(id, verb, path, None, Vec::new());
        let _ = self.stream.send(Message::Binary(message.encode_to_vec().into())).await;
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
