//! Live delivery to a connected socket: envelopes sent while it listens arrive exactly once, whether the socket takes them straight from the send or reads them back from its queue (a full
//! window, a full event buffer, a slow reader).

use std::collections::HashSet;
use std::time::Duration;

use crate::both_backends;
use crate::harness::*;
use crate::messages::{ready_user, send};
use crate::socket::{Incoming, Socket};

both_backends!(
    a_burst_to_a_listening_socket_arrives_once_each,
    a_reader_too_slow_for_a_burst_of_big_envelopes_misses_none,
    one_at_a_time_each_arrives_at_once,
);

const BURST: usize = 300;

async fn a_burst_to_a_listening_socket_arrives_once_each(backend: Backend) {
    // A window of 4 and 300 sends at once: most envelopes find the window full, and the socket's event
    // buffer (64) overflows while the test does not read.
    let server = start_with(backend, |c| c.ws_window = 4).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    socket.expect_queue_empty().await;

    let sends = (0..BURST).map(|i| {
        let (server, alice, bob) = (&server, &alice, &bob);
        async move { send(server, alice, bob, format!("burst {i:03}").as_bytes()).await.expect(200) }
    });
    futures_util::future::join_all(sends).await;

    let mut seen = HashSet::new();
    while seen.len() < BURST {
        match socket.next().await {
            Incoming::Envelope(id, envelope, _) => {
                let content = envelope.content.expect("content");
                assert!(seen.insert(content.clone()), "delivered twice: {}", String::from_utf8_lossy(&content));
                socket.respond(id, 200).await;
            }
            Incoming::QueueEmpty(id) => socket.respond(id, 200).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Nothing more comes, and nothing is left behind.
    match socket.next_within(Duration::from_millis(500)).await {
        None => {}
        Some(other) => panic!("after {BURST} envelopes: {other:?}"),
    }
    let left = server.get("/v1/messages", bob.bearer()).await.expect(200);
    assert_eq!(left["messages"].as_array().map(Vec::len), Some(0), "{left}");
    socket.close().await;
    server.stop().await;
}

async fn a_reader_too_slow_for_a_burst_of_big_envelopes_misses_none(backend: Backend) {
    // A wide window, so the socket sends each envelope as it is queued; 48 KiB each, and the test reads
    // nothing until all are sent: the socket blocks on a full connection, its event buffer (64) overflows,
    // and whatever fell out of it must still come from the queue.
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    socket.expect_queue_empty().await;
    const BIG: usize = 200;
    let sends = (0..BIG).map(|i| {
        let (server, alice, bob) = (&server, &alice, &bob);
        let mut content = vec![(i % 251) as u8; 48 * 1024];
        content[..8].copy_from_slice(&(i as u64).to_be_bytes());
        async move { send(server, alice, bob, &content).await.expect(200) }
    });
    futures_util::future::join_all(sends).await;
    let mut seen = HashSet::new();
    while seen.len() < BIG {
        match socket.next().await {
            Incoming::Envelope(id, envelope, _) => {
                let content = envelope.content.expect("content");
                let n = u64::from_be_bytes(content[..8].try_into().expect("8 bytes"));
                assert!(seen.insert(n), "envelope {n} delivered twice");
                socket.respond(id, 200).await;
            }
            Incoming::QueueEmpty(id) => socket.respond(id, 200).await,
            other => panic!("after {} of {BIG}: {other:?}", seen.len()),
        }
    }
    assert!(socket.next_within(Duration::from_millis(500)).await.is_none(), "nothing more");
    socket.close().await;
    server.stop().await;
}

async fn one_at_a_time_each_arrives_at_once(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    socket.expect_queue_empty().await;
    for i in 0..20 {
        let content = format!("single {i}");
        send(&server, &alice, &bob, content.as_bytes()).await.expect(200);
        match socket.next_within(Duration::from_secs(2)).await {
            Some(Incoming::Envelope(id, envelope, _)) => {
                assert_eq!(envelope.content.as_deref(), Some(content.as_bytes()));
                // Unacknowledged for a moment: the next send must not bring this one again.
                if i % 2 == 0 {
                    socket.respond(id, 200).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    socket.respond(id, 200).await;
                }
            }
            other => panic!("send {i}: {other:?}"),
        }
    }
    assert!(socket.next_within(Duration::from_millis(300)).await.is_none(), "nothing more");
    let left = server.get("/v1/messages", bob.bearer()).await.expect(200);
    assert_eq!(left["messages"].as_array().map(Vec::len), Some(0), "{left}");
    socket.close().await;
    server.stop().await;
}
