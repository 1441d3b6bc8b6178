//! The API listener. It accepts connections itself, instead of leaving that to `axum::serve`, so that a slow
//! or hostile client can hold only so much:
//!
//! * a connection must send a request's headers within `SEALPOST_HEADER_READ_TIMEOUT_SECONDS` (also the
//!   longest an idle keep-alive connection stays open); request bodies have their own timeout, in the JSON
//!   extractor;
//! * at most `SEALPOST_MAX_CONNECTIONS` connections are open at once, and at most
//!   `SEALPOST_MAX_CONNECTIONS_PER_IP` from one address (not behind a trusted proxy, where every
//!   connection comes from the proxy); a connection over a cap gets a 503 JSON body and is closed. An
//!   upgraded WebSocket keeps its place until it closes.
//! * the answers hyper writes by itself to requests it cannot parse (400, 414, 431, with an empty body)
//!   are rewritten to carry our JSON error body, like every other error;
//! * with TLS, a handshake must finish within the header timeout too (`crate::http::tls`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// What the listener enforces.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// `None`: no cap per address (behind a trusted proxy).
    pub max_connections_per_ip: Option<usize>,
    /// IPv6 addresses count by this many leading bits.
    pub ipv6_prefix_length: u8,
    /// Largest request head (request line and headers) in bytes: 431 above it.
    pub max_header_bytes: usize,
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `stop` turns true, then stops
/// accepting and waits for open HTTP exchanges to finish (upgraded sockets are closed by their own shutdown
/// handling).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let counts = Arc::new(Counts::default());
    let mut builder = http1::Builder::new();
    // hyper checks its read buffer's size only while a head is incomplete; a head that arrives whole in
    // one large read is measured only against an explicit `max_header_size`.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // Every connection task holds a sender; once they are all gone, the last exchange has ended.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let address = crate::http::bucket_address(peer.ip(), limits.ipv6_prefix_length);
        let Some(slot) = Counts::admit(&counts, address, &limits) else {
            metrics::counter!("sealpost_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let (open, stop, builder, tls) = (open.clone(), stop.clone(), builder.clone(), tls.clone());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => {
                    let io = TokioIo::new(Guarded { inner: stream, slot, rewrite: Rewrite::default() });
                    drive(builder.serve_connection(io, service).with_upgrades(), stop).await;
                }
                Some(acceptor) => {
                    // A handshake must finish within the header timeout, like a request's headers.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = TokioIo::new(Guarded { inner: stream, slot, rewrite: Rewrite::default() });
                            drive(builder.serve_connection(io, service).with_upgrades(), stop).await;
                        }
                        // The client's failure (wrong trust, plain HTTP, gone): counted, not logged.
                        Ok(Err(_)) | Err(_) => metrics::counter!("sealpost_tls_handshake_failures_total").increment(1),
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Runs one connection until it ends or the server stops.
async fn drive<I, S>(
    connection: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = std::pin::pin!(connection);
    // Errors here are the client's (reset, timed out, malformed): nothing to report.
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped(&mut stop) => {
            // Finish the exchange in progress, then close (a WebSocket has left this task already).
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Completes once `stop` turns true (the guard `wait_for` returns is dropped at once, so the future stays
/// `Send`).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Answers a connection over a cap and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"code":"too_many_connections","message":"too many open connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Open connections, in total and per address.
#[derive(Default)]
struct Counts {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Counts {
    fn admit(counts: &Arc<Counts>, address: IpAddr, limits: &ListenerLimits) -> Option<Slot> {
        let mut guard = counts.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        if *total >= limits.max_connections {
            return None;
        }
        let mine = per_ip.entry(address).or_insert(0);
        if limits.max_connections_per_ip.is_some_and(|cap| *mine >= cap) {
            if *mine == 0 {
                per_ip.remove(&address);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        metrics::gauge!("sealpost_connections_open").set(*total as f64);
        Some(Slot { counts: counts.clone(), address })
    }
}

/// A connection's place in [`Counts`], given back when the connection (or the socket it was upgraded to)
/// is dropped.
struct Slot {
    counts: Arc<Counts>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.counts.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_ip.get_mut(&self.address) {
            *mine -= 1;
            if *mine == 0 {
                per_ip.remove(&self.address);
            }
        }
        metrics::gauge!("sealpost_connections_open").set(*total as f64);
    }
}

/// A connection's stream (TCP, or TLS over TCP) that holds its [`Slot`] and rewrites hyper's own bodiless
/// error answers.
struct Guarded<S> {
    inner: S,
    #[allow(dead_code)] // held for its Drop
    slot: Slot,
    rewrite: Rewrite,
}

/// State of the error-answer rewriting on one connection.
#[derive(Default)]
struct Rewrite {
    /// Our replacement answer, not yet fully written.
    pending: Option<(Vec<u8>, usize)>,
    /// The connection became a WebSocket: its bytes are frames, never looked at.
    upgraded: bool,
}

impl Rewrite {
    /// Our JSON answer for a head hyper wrote by itself, if `head` is one: a 400, 414 or 431 with an empty
    /// body. Our own error answers always have a JSON body, so they never match.
    fn replacement(head: &[u8]) -> Option<Vec<u8>> {
        let (status, code, message) = if head.starts_with(b"HTTP/1.1 400 ") {
            ("400 Bad Request", "malformed_request", "the request is not valid HTTP/1.1")
        } else if head.starts_with(b"HTTP/1.1 414 ") {
            ("414 URI Too Long", "uri_too_long", "the request target is too long")
        } else if head.starts_with(b"HTTP/1.1 431 ") {
            ("431 Request Header Fields Too Large", "headers_too_large", "the request headers are too large")
        } else {
            return None;
        };
        let text = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
        if !text.ends_with("\r\n\r\n") || !text.contains("\r\ncontent-length: 0\r\n") {
            return None;
        }
        let body = format!(r#"{{"code":"{code}","message":"{message}"}}"#);
        Some(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Writes what is left of a replacement answer; ready once nothing is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.rewrite.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                self.rewrite.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Looks at the start of a write: a switch to WebSocket ends all looking; an answer hyper made by itself
    /// is replaced (the caller is told it was written).
    fn intercept(&mut self, first: &[u8]) -> bool {
        if self.rewrite.upgraded {
            return false;
        }
        if first.starts_with(b"HTTP/1.1 101 ") {
            self.rewrite.upgraded = true;
            return false;
        }
        match Rewrite::replacement(first) {
            Some(bytes) => {
                self.rewrite.pending = Some((bytes, 0));
                true
            }
            None => false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.intercept(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        // hyper encodes a response head into one buffer, so a head is always the first slice whole.
        if bufs.len() == 1 && this.intercept(&bufs[0]) {
            return Poll::Ready(Ok(bufs[0].len()));
        }
        if let Some(first) = bufs.first()
            && !this.rewrite.upgraded
            && first.starts_with(b"HTTP/1.1 101 ")
        {
            this.rewrite.upgraded = true;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_parse_errors_are_rewritten() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let rewritten = Rewrite::replacement(hyper_400).expect("rewritten");
        let text = String::from_utf8(rewritten).expect("text");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.ends_with(r#"{"code":"malformed_request","message":"the request is not valid HTTP/1.1"}"#));
        assert!(
            Rewrite::replacement(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                .is_some()
        );
        // Our own errors carry a body, and successes are never touched.
        assert!(Rewrite::replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n").is_none());
        assert!(Rewrite::replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
