//! The adapter against tungstenite as the peer (an independent RFC 6455
//! implementation, and the one older agents and relays use), and against
//! itself.

use super::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};

/// Our end as `role`, tungstenite as the other end.
async fn pair(role: Role) -> (WsIo<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = duplex(64 * 1024);
    let peer_role = match role {
        Role::Client => WsRole::Server,
        Role::Server => WsRole::Client,
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(SESSION_MAX_MESSAGE))
        .max_frame_size(Some(SESSION_MAX_MESSAGE));
    let peer = WebSocketStream::from_raw_socket(b, peer_role, Some(config)).await;
    (WsIo::new(a, role), peer)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn partial_reads_return_a_message_across_calls() {
    for role in [Role::Client, Role::Server] {
        let (mut io, mut peer) = pair(role).await;
        peer.send(Message::Binary(Bytes::from_static(b"hello world")))
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 3];
        while out.len() < 11 {
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0 && n <= 3, "read {n} bytes into a 3-byte buffer");
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out, b"hello world");
    }
}

#[tokio::test]
async fn large_writes_are_split_into_bounded_frames_and_arrive_whole() {
    for role in [Role::Client, Role::Server] {
        let (a, b) = duplex(64 * 1024);
        let mut io = WsIo::with_max_message(a, role, 16 * 1024);
        let peer_role = if role == Role::Client {
            WsRole::Server
        } else {
            WsRole::Client
        };
        let mut peer = WebSocketStream::from_raw_socket(b, peer_role, None).await;
        let data = pattern(1_000_000);
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            io.write_all(&data).await.unwrap();
            io.flush().await.unwrap();
            io
        });
        let mut received = Vec::new();
        let mut messages = 0;
        while received.len() < expected.len() {
            match peer.next().await.unwrap().unwrap() {
                Message::Binary(b) => {
                    assert!(b.len() <= 16 * 1024, "message of {} bytes", b.len());
                    messages += 1;
                    received.extend_from_slice(&b);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.await.unwrap();
        assert_eq!(received, expected);
        assert!(messages >= 1_000_000 / (16 * 1024));
    }
}

#[tokio::test]
async fn a_vectored_write_is_one_frame_and_arrives_in_order() {
    let (mut io, mut peer) = pair(Role::Client).await;
    let parts = [
        IoSlice::new(b"head:"),
        IoSlice::new(b""),
        IoSlice::new(b"payload"),
    ];
    let n = io.write_vectored(&parts).await.unwrap();
    assert_eq!(n, 12);
    io.flush().await.unwrap();
    assert_eq!(
        peer.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"head:payload"))
    );
}

#[tokio::test]
async fn megabytes_cross_both_ways_between_two_adapters_byte_exact() {
    let (a, b) = duplex(32 * 1024);
    let up = pattern(3 * 1024 * 1024 + 17);
    let down: Vec<u8> = up.iter().rev().copied().collect();
    // Each end writes its bytes while reading the other's.
    async fn exchange(io: WsIo<DuplexStream>, send: Vec<u8>, expect: usize) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(io);
        let write = async {
            w.write_all(&send).await.unwrap();
            w.flush().await.unwrap();
        };
        let mut got = vec![0u8; expect];
        let (_, read) = tokio::join!(write, r.read_exact(&mut got));
        read.unwrap();
        got
    }
    let client = tokio::spawn(exchange(WsIo::new(a, Role::Client), up.clone(), down.len()));
    let at_server = exchange(WsIo::new(b, Role::Server), down.clone(), up.len()).await;
    assert!(at_server == up, "client → server bytes differ");
    assert!(
        client.await.unwrap() == down,
        "server → client bytes differ"
    );
}

#[tokio::test]
async fn a_fragmented_message_reads_as_its_bytes() {
    let (a, mut raw) = duplex(1024);
    let mut io = WsIo::new(a, Role::Client);
    // Binary "ab" without FIN, a ping between fragments, then "cd" with FIN.
    raw.write_all(&[0x02, 0x02, b'a', b'b', 0x89, 0x00, 0x80, 0x02, b'c', b'd'])
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"abcd");
}

#[tokio::test]
async fn close_frame_reads_as_eof_and_shutdown_sends_close() {
    let (mut io, mut peer) = pair(Role::Client).await;
    peer.send(Message::Binary(Bytes::from_static(b"last")))
        .await
        .unwrap();
    peer.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let mut all = Vec::new();
    io.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"last");
    // Reading again stays at EOF, and the close was answered with its code.
    assert_eq!(io.read(&mut [0u8; 8]).await.unwrap(), 0);
    io.flush().await.unwrap();
    match peer.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        None | Some(Err(_)) => {} // tungstenite ends the stream after the echo
        other => panic!("unexpected {other:?}"),
    }

    let (mut io, mut peer) = pair(Role::Server).await;
    io.write_all(b"bye").await.unwrap();
    io.shutdown().await.unwrap();
    assert_eq!(
        peer.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"bye"))
    );
    match peer.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn pings_are_answered_and_never_read_as_data() {
    for role in [Role::Client, Role::Server] {
        let (mut io, mut peer) = pair(role).await;
        peer.send(Message::Ping(Bytes::from_static(b"p1")))
            .await
            .unwrap();
        peer.send(Message::Pong(Bytes::from_static(b"stray")))
            .await
            .unwrap();
        peer.send(Message::Binary(Bytes::from_static(b"data")))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"data");
        // The pong was sent when the ping was read, before any data.
        io.write_all(b"x").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            peer.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p1"))
        );
        assert_eq!(
            peer.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"x"))
        );
    }
}

#[tokio::test]
async fn text_message_is_invalid_data() {
    let (mut io, mut peer) = pair(Role::Client).await;
    peer.send(Message::text("nope")).await.unwrap();
    let err = io.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn frames_that_break_the_rules_are_errors_not_panics() {
    let cases: &[(&str, Role, &[u8])] = &[
        ("reserved opcode", Role::Client, &[0x83, 0x02, 0xde, 0xad]),
        ("reserved bits", Role::Client, &[0xC2, 0x00]),
        (
            "unmasked frame to a server",
            Role::Server,
            &[0x82, 0x01, 0x00],
        ),
        (
            "masked frame to a client",
            Role::Client,
            &[0x82, 0x81, 1, 2, 3, 4, 0],
        ),
        ("continuation first", Role::Client, &[0x80, 0x01, 0x00]),
        (
            "binary inside a message",
            Role::Client,
            &[0x02, 0x00, 0x82, 0x00],
        ),
        // 2 MiB in one frame, and 1 MiB + 1 across two fragments.
        (
            "oversized frame",
            Role::Client,
            &[0x82, 127, 0, 0, 0, 0, 0, 0x20, 0, 0],
        ),
        (
            "oversized message",
            Role::Client,
            &[0x02, 127, 0, 0, 0, 0, 0, 0x10, 0, 0],
        ),
        ("ended inside a frame", Role::Client, &[0x82, 0x05, b'a']),
    ];
    for (what, role, bytes) in cases {
        let (a, mut raw) = duplex(4 * 1024 * 1024);
        let mut io = WsIo::new(a, *role);
        raw.write_all(bytes).await.unwrap();
        if *what == "oversized message" {
            // The first fragment's megabyte, then one byte more.
            raw.write_all(&vec![0u8; SESSION_MAX_MESSAGE])
                .await
                .unwrap();
            raw.write_all(&[0x80, 0x01, 0x00]).await.unwrap();
        }
        drop(raw);
        let mut sink = Vec::new();
        let err = io.read_to_end(&mut sink).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            "{what}: {err}"
        );
    }
}

#[tokio::test]
async fn the_end_of_the_socket_between_frames_is_eof() {
    let (mut io, peer) = pair(Role::Client).await;
    drop(peer);
    let mut all = Vec::new();
    assert_eq!(io.read_to_end(&mut all).await.unwrap(), 0);
}

#[tokio::test]
async fn write_after_peer_vanished_is_an_error() {
    let (mut io, peer) = pair(Role::Client).await;
    drop(peer);
    io.write_all(b"into the void").await.unwrap();
    assert!(io.flush().await.is_err());
}

#[tokio::test]
async fn a_slow_reader_never_lets_the_output_buffer_grow_past_two_frames() {
    // The peer reads 1 KiB at a time: the socket never takes a whole
    // buffer at once, so bytes already sent must be dropped as it goes.
    let (a, mut slow) = duplex(4 * 1024);
    let mut io = WsIo::with_max_message(a, Role::Server, 16 * 1024);
    let reader = tokio::spawn(async move {
        let mut chunk = [0u8; 1024];
        let mut total = 0usize;
        loop {
            match slow.read(&mut chunk).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let data = pattern(16 * 1024 * 1024);
    let mut peak = 0;
    for piece in data.chunks(3000) {
        io.write_all(piece).await.unwrap();
        peak = peak.max(io.out.len());
    }
    io.flush().await.unwrap();
    drop(io);
    assert!(reader.await.unwrap() > data.len());
    assert!(
        peak <= 2 * (16 * 1024 + 14) + 3000,
        "output buffer reached {peak} bytes"
    );
}

#[tokio::test]
async fn a_ping_flood_from_a_peer_that_never_reads_stays_bounded() {
    // A socket of 1 KiB that nobody reads: pongs cannot leave.
    let (a, mut raw) = duplex(1024);
    let mut io = WsIo::new(a, Role::Client);
    let flood = tokio::spawn(async move {
        let ping = [0x89u8, 0x04, b'p', b'i', b'n', b'g'];
        for _ in 0..20_000 {
            if raw.write_all(&ping).await.is_err() {
                break;
            }
        }
        raw
    });
    let mut buf = [0u8; 64];
    // Nothing but pings: the read waits, it never reports EOF or data.
    let read = tokio::time::timeout(std::time::Duration::from_millis(300), io.read(&mut buf)).await;
    assert!(read.is_err(), "a read over pings only returned {read:?}");
    assert!(
        io.out.len() - io.out_pos <= PONG_BACKLOG + 200,
        "{} bytes of pongs",
        io.out.len()
    );
    drop(flood);
}

#[tokio::test]
async fn an_empty_frame_is_not_the_end_of_the_stream() {
    let (a, mut raw) = duplex(1024);
    let mut io = WsIo::new(a, Role::Client);
    raw.write_all(&[0x82, 0x00]).await.unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(std::time::Duration::from_millis(200), io.read(&mut buf)).await;
    assert!(read.is_err(), "an empty frame read as {read:?}");
    raw.write_all(&[0x82, 0x01, b'z']).await.unwrap();
    assert_eq!(io.read(&mut buf).await.unwrap(), 1);
    assert_eq!(buf[0], b'z');
}

#[tokio::test]
async fn the_socket_ending_inside_a_message_is_an_error_and_errors_stay() {
    let (a, mut raw) = duplex(1024);
    let mut io = WsIo::new(a, Role::Client);
    // The first fragment of a message, then the end of the socket.
    raw.write_all(&[0x02, 0x02, b'a', b'b']).await.unwrap();
    drop(raw);
    let mut all = Vec::new();
    let err = io.read_to_end(&mut all).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

    // A text frame fails the stream; its payload is never read as frames.
    let (a, mut raw) = duplex(1024);
    let mut io = WsIo::new(a, Role::Client);
    raw.write_all(&[0x81, 0x03, 0x82, 0x01, b'x'])
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(io.read(&mut buf).await.is_err());
    assert!(io.read(&mut buf).await.is_err(), "a read after the failure");
}

#[tokio::test]
async fn a_close_is_answered_with_its_code_or_a_protocol_error() {
    for (sent, answered) in [(1001u16, 1001u16), (1005, 1002), (999, 1002), (4000, 4000)] {
        let (a, mut raw) = duplex(1024);
        let mut io = WsIo::new(a, Role::Client);
        let code = sent.to_be_bytes();
        raw.write_all(&[0x88, 0x02, code[0], code[1]])
            .await
            .unwrap();
        assert_eq!(io.read(&mut [0u8; 8]).await.unwrap(), 0);
        io.flush().await.unwrap();
        // Our close: masked (client), 2 bytes of code.
        let mut head = [0u8; 8];
        raw.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x88);
        assert_eq!(head[1], 0x82);
        let mut got = [head[6], head[7]];
        frame::apply_mask(&mut got, [head[2], head[3], head[4], head[5]], 0);
        assert_eq!(u16::from_be_bytes(got), answered, "close {sent}");
        // And nothing may follow our close.
        assert!(io.write_all(b"late").await.is_err());
    }
}

#[tokio::test]
async fn an_idle_session_holds_no_read_buffer() {
    for role in [Role::Client, Role::Server] {
        let (mut io, mut peer) = pair(role).await;
        peer.send(Message::Binary(Bytes::from(pattern(40_000))))
            .await
            .unwrap();
        let mut got = vec![0u8; 40_000];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(40_000));
        // Nothing more arrives: the read waits, holding no buffer.
        let mut one = [0u8; 1];
        let waited = futures_util::poll!(std::pin::pin!(io.read(&mut one)));
        assert!(waited.is_pending());
        assert_eq!(
            io.read_capacity(),
            0,
            "{role:?}: an idle session keeps its read chunk"
        );
        // And reading goes on when data comes.
        peer.send(Message::Binary(Bytes::from_static(b"more")))
            .await
            .unwrap();
        let mut more = [0u8; 4];
        io.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more");
    }
}

#[tokio::test]
async fn bytes_dripped_one_at_a_time_with_waits_between_read_whole() {
    // Review: the read chunk is given back while the socket has nothing
    // to read; a header, a control frame or a fragmented message split
    // across those waits must still read exactly.
    let (a, mut raw) = duplex(64);
    let mut io = WsIo::new(a, Role::Client);
    let mut wire = Vec::new();
    // BINARY without FIN (3 bytes), a ping inside the message, a
    // CONTINUATION of 300 bytes (16-bit length) with FIN, then a small one.
    wire.extend_from_slice(&[0x02, 3, b'a', b'b', b'c']);
    wire.extend_from_slice(&[0x89, 2, b'p', b'q']);
    wire.extend_from_slice(&[0x80, 126, 0x01, 0x2C]);
    wire.extend(pattern(300));
    wire.extend_from_slice(&[0x82, 2, b'y', b'z']);
    let mut expect = b"abc".to_vec();
    expect.extend(pattern(300));
    expect.extend_from_slice(b"yz");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 7];
        while got.len() < expect.len() {
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expect);
        io
    });
    for b in wire {
        raw.write_all(&[b]).await.unwrap();
        // Let the reader run dry and wait (Pending) between bytes.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }
    let _io = reader.await.unwrap();
    // The ping was answered (unmasked server frames in, masked pong out).
    let mut pong = [0u8; 8];
    raw.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong[0], 0x8A);
}
