//! [`WsIo`]: a WebSocket seen as a byte stream.
//!
//! HTTP/2 wants an ordered byte stream; a WebSocket carries messages. The
//! adapter reads the payloads of binary messages as one continuous stream and
//! turns writes into binary messages: bytes written are buffered and sent as
//! one message per flush (hyper flushes after each batch of HTTP/2 frames),
//! or earlier once the buffer reaches [`WsIo::with_max_message`]'s size so a
//! large write never needs an unbounded buffer.
//!
//! Pings are answered by tungstenite itself and pongs are ignored; neither
//! reaches the reader. A close frame (or the end of the socket) reads as EOF.
//! A text message is a protocol violation and reads as `InvalidData`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Default size at which buffered writes are sent even before a flush.
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024;

/// Largest WebSocket message either side of a Tether session accepts.
pub const SESSION_MAX_MESSAGE: usize = 1024 * 1024;

/// tungstenite's read buffer per session. Its default (128 KiB, allocated
/// when the socket is made) would cost an idle relay 128 KiB per agent;
/// 16 KiB reads cost little throughput (measured in bench/), and a larger
/// message still grows the buffer for as long as it needs to.
const SESSION_READ_BUFFER: usize = 16 * 1024;

/// The WebSocket settings of a Tether session, the same on both sides.
pub fn session_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(SESSION_MAX_MESSAGE))
        .max_frame_size(Some(SESSION_MAX_MESSAGE))
        .read_buffer_size(SESSION_READ_BUFFER)
}

/// A WebSocket as `AsyncRead + AsyncWrite` (see the module docs).
#[derive(Debug)]
pub struct WsIo<S> {
    /// The socket; owns framing, masking and ping answers.
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    read_buf: Bytes,
    /// Set once a close frame or the end of the socket was seen.
    read_eof: bool,
    /// Bytes written since the last message was sent.
    write_buf: BytesMut,
    /// Size at which `write_buf` is sent without waiting for a flush.
    max_message: usize,
}

impl<S> WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an established WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self::with_max_message(ws, DEFAULT_MAX_MESSAGE)
    }

    /// Wraps `ws`, sending a message whenever `max_message` bytes are
    /// buffered. The peer's maximum message size must be at least this.
    pub fn with_max_message(ws: WebSocketStream<S>, max_message: usize) -> Self {
        Self {
            ws,
            read_buf: Bytes::new(),
            read_eof: false,
            write_buf: BytesMut::new(),
            max_message: max_message.max(1),
        }
    }

    /// Queues the buffered bytes as one binary message, if there are any.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(write_error)?;
        let message = Message::Binary(self.write_buf.split().freeze());
        Pin::new(&mut self.ws)
            .start_send(message)
            .map_err(write_error)?;
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncRead for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf[..n]);
                this.read_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.read_buf = data,
                // Answered (ping) or meaningless (pong) at this layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary tunnel",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => this.read_eof = true,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.read_eof = true
                }
                Some(Err(e)) => return Poll::Ready(Err(read_error(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_buf.len() >= this.max_message {
            ready!(this.poll_send_buffered(cx))?;
        }
        let n = data.len().min(this.max_message - this.write_buf.len());
        this.write_buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(write_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(write_error(e))),
        }
    }
}

fn read_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

fn write_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (client, server)
    }

    #[tokio::test]
    async fn partial_reads_return_a_message_across_calls() {
        let (client, mut server) = pair().await;
        let mut io = WsIo::new(client);
        server
            .send(Message::Binary(Bytes::from_static(b"hello world")))
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

    #[tokio::test]
    async fn large_write_is_split_into_bounded_messages_and_arrives_whole() {
        let (client, mut server) = pair().await;
        let mut io = WsIo::with_max_message(client, 16 * 1024);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            io.write_all(&data).await.unwrap();
            io.flush().await.unwrap();
            io
        });
        let mut received = Vec::new();
        let mut messages = 0;
        while received.len() < expected.len() {
            match server.next().await.unwrap().unwrap() {
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

    #[tokio::test]
    async fn small_writes_are_batched_into_one_message_per_flush() {
        let (client, mut server) = pair().await;
        let mut io = WsIo::new(client);
        for _ in 0..10 {
            io.write_all(b"abc").await.unwrap();
        }
        io.flush().await.unwrap();
        match server.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], "abc".repeat(10).as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn close_frame_reads_as_eof_and_shutdown_sends_close() {
        let (client, mut server) = pair().await;
        let mut io = WsIo::new(client);
        server
            .send(Message::Binary(Bytes::from_static(b"last")))
            .await
            .unwrap();
        server.close(None).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"last");
        // Reading again stays at EOF.
        assert_eq!(io.read(&mut [0u8; 8]).await.unwrap(), 0);

        let (client, mut server) = pair().await;
        let mut io = WsIo::new(client);
        io.write_all(b"bye").await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"bye"))
        );
        assert!(matches!(
            server.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }

    #[tokio::test]
    async fn pings_are_answered_and_never_read_as_data() {
        let (client, mut server) = pair().await;
        let mut io = WsIo::new(client);
        server
            .send(Message::Ping(Bytes::from_static(b"p1")))
            .await
            .unwrap();
        server
            .send(Message::Pong(Bytes::from_static(b"stray")))
            .await
            .unwrap();
        server
            .send(Message::Binary(Bytes::from_static(b"data")))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"data");
        // The pong goes out with the next write.
        io.write_all(b"x").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p1"))
        );
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"x"))
        );
    }

    #[tokio::test]
    async fn text_message_is_invalid_data() {
        let (client, mut server) = pair().await;
        let mut io = WsIo::new(client);
        server.send(Message::text("nope")).await.unwrap();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn garbage_frames_are_an_error_not_a_panic() {
        let (a, mut raw) = duplex(1024);
        let ws = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut io = WsIo::new(ws);
        // Reserved opcode 0x3 with FIN: a protocol error.
        raw.write_all(&[0x83, 0x02, 0xde, 0xad]).await.unwrap();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn write_after_peer_vanished_is_an_error() {
        let (client, server) = pair().await;
        drop(server);
        let mut io = WsIo::new(client);
        io.write_all(b"into the void").await.unwrap();
        assert!(io.flush().await.is_err());
    }
}
