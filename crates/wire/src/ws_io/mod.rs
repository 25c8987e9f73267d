//! [`WsIo`]: a WebSocket seen as a byte stream.
//!
//! HTTP/2 wants an ordered byte stream; a WebSocket carries messages. Once
//! the handshake is done (by hyper on either side), the adapter reads the
//! payloads of binary frames as one continuous stream and writes each
//! write as one binary frame.
//!
//! It frames and unframes bytes itself rather than through tungstenite's
//! `WebSocketStream`, for the data path's sake (issue 17, measured in
//! docs/BENCHMARKS.md): tungstenite copies every frame written into its
//! own output buffer after our write buffer, and on read copies frames
//! into its input buffer, then into a message, then into HTTP/2's buffer.
//! Here a write is framed (and masked, by the agent) once into the output
//! buffer, and frame payloads are read from the socket straight into the
//! reader's buffer and unmasked there. tungstenite still makes the
//! handshake keys, and it is the peer the tests below check against.
//!
//! Pings are answered (the latest one, with the next write or read) and
//! pongs ignored; neither reaches the reader. A close frame (or the end of
//! the socket between frames) reads as EOF and is answered with a close.
//! A text message, a frame with reserved bits, a frame not masked as its
//! sender's role requires, or a message over [`SESSION_MAX_MESSAGE`] reads
//! as `InvalidData`, and so does every read after it. The socket ending
//! inside a frame or a fragmented message is `UnexpectedEof`.
//!
//! Memory is bounded whatever the peer does: the read buffer holds one
//! socket read, the output buffer at most two frames not yet sent (bytes
//! already sent are dropped as the socket takes them), and pings are
//! answered only while that backlog is small — a peer flooding pings and
//! never reading gets the latest one answered, later.
//!
//! Reads and writes must be polled from one task (hyper's HTTP/2
//! connection does): answering a ping from `poll_read` writes with the
//! reader's waker.

mod frame;
#[cfg(test)]
mod tests;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use frame::FrameError;
use frame::opcode;

/// Default size of the largest frame a write makes.
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024;

/// Largest WebSocket message either side of a Tether session accepts.
pub const SESSION_MAX_MESSAGE: usize = 1024 * 1024;

/// Bytes asked of the socket per read when frames are small. Given back
/// while the socket has nothing to read and nothing is buffered, so an
/// idle session holds none of it (the relay's memory per agent).
const READ_CHUNK: usize = 16 * 1024;

/// A payload read goes straight into the reader's buffer when at least
/// this much of it is wanted and nothing is buffered.
const DIRECT_READ: usize = 4 * 1024;

/// The output buffer is given back after a flush once it grew past this
/// (two of the default frames: bulk transfers keep theirs).
const KEEP_OUT_CAPACITY: usize = 2 * DEFAULT_MAX_MESSAGE + 64;

/// Pings are answered only while fewer bytes than this wait to be sent.
const PONG_BACKLOG: usize = 4 * 1024;

/// Which end of the WebSocket this is: a client masks what it sends, a
/// server requires masked frames (RFC 6455 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent, which dialled.
    Client,
    /// The relay, which accepted.
    Server,
}

#[derive(Debug)]
enum ReadState {
    /// Between frames.
    Header,
    /// Inside a binary (or continuation) frame's payload.
    Payload {
        remaining: u64,
        mask: Option<[u8; 4]>,
        /// Bytes of this frame's payload already read (for the mask).
        offset: usize,
    },
}

/// A WebSocket as `AsyncRead + AsyncWrite` (see the module docs).
#[derive(Debug)]
pub struct WsIo<S> {
    io: S,
    role: Role,
    /// Bytes read from the socket and not yet parsed or handed out.
    rbuf: BytesMut,
    read: ReadState,
    /// Inside a fragmented binary message: its size so far.
    message: Option<u64>,
    /// A close frame (or the end of the socket) was read.
    read_eof: bool,
    /// A read failed: the stream's framing cannot be trusted any more.
    read_failed: bool,
    /// Encoded frames not yet written to the socket, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The payload of the latest ping not yet answered.
    pong: Option<Vec<u8>>,
    /// The close frame payload to answer a peer's close with.
    close_reply: Option<Vec<u8>>,
    close_sent: bool,
    /// Largest frame a write makes.
    max_message: usize,
}

impl<S> WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps `io`, on which a WebSocket handshake has completed.
    pub fn new(io: S, role: Role) -> Self {
        Self::with_max_message(io, role, DEFAULT_MAX_MESSAGE)
    }

    /// Wraps `io`, making frames of at most `max_message` bytes. The
    /// peer's maximum message size must be at least this.
    pub fn with_max_message(io: S, role: Role, max_message: usize) -> Self {
        Self {
            io,
            role,
            rbuf: BytesMut::new(),
            read: ReadState::Header,
            message: None,
            read_eof: false,
            read_failed: false,
            out: Vec::new(),
            out_pos: 0,
            pong: None,
            close_reply: None,
            close_sent: false,
            max_message: max_message.clamp(1, SESSION_MAX_MESSAGE),
        }
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(rand::random()),
            Role::Server => None,
        }
    }

    /// Appends one final frame holding the first `len` bytes of `parts`.
    fn put_frame(&mut self, op: u8, len: usize, parts: &[IoSlice<'_>]) {
        // Bytes the socket took already are dropped before the buffer grows.
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        let mask = self.mask_key();
        frame::put_header(&mut self.out, op, len, mask);
        let start = self.out.len();
        let mut left = len;
        for part in parts {
            let take = part.len().min(left);
            self.out.extend_from_slice(&part[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        if let Some(key) = mask {
            frame::apply_mask(&mut self.out[start..], key, 0);
        }
    }

    /// Bytes framed and not yet taken by the socket.
    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queues the owed answers if the backlog is small, and tries to send
    /// them without waiting.
    fn answer_control(&mut self, cx: &mut Context<'_>) {
        if (self.pong.is_none() && self.close_reply.is_none()) || self.backlog() >= PONG_BACKLOG {
            return;
        }
        self.queue_control();
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            tracing::debug!(error = %e, "websocket control answer not sent");
        }
    }

    /// Queues the answers owed to the peer's ping and close.
    fn queue_control(&mut self) {
        if let Some(payload) = self.pong.take() {
            self.put_frame(opcode::PONG, payload.len(), &[IoSlice::new(&payload)]);
        }
        if let Some(payload) = self.close_reply.take() {
            if !self.close_sent {
                self.put_frame(opcode::CLOSE, payload.len(), &[IoSlice::new(&payload)]);
            }
            self.close_sent = true;
        }
    }

    /// Writes the output buffer to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out_pos = 0;
        if self.out.capacity() > KEEP_OUT_CAPACITY {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more of the socket into `rbuf`; the count read (0 at EOF).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(READ_CHUNK);
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf);
        if polled.is_pending() && self.rbuf.is_empty() {
            // Waiting with nothing buffered: the chunk is given back (one
            // allocation per wait costs far less than the read itself).
            self.rbuf = BytesMut::new();
        }
        polled
    }

    /// Bytes held for reading (a test's view of idle memory).
    #[cfg(test)]
    fn read_capacity(&self) -> usize {
        self.rbuf.capacity()
    }

    /// Reads the next frame header and handles control frames; returns
    /// once a data payload starts, or at EOF.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let parsed = frame::parse(&self.rbuf, SESSION_MAX_MESSAGE as u64).map_err(invalid)?;
            let Some((header, used)) = parsed else {
                // About to wait for the peer: answer its pings first.
                self.answer_control(cx);
                if ready!(self.poll_fill(cx))? == 0 {
                    if !self.rbuf.is_empty() || self.message.is_some() {
                        return Poll::Ready(Err(ended_inside_a_frame()));
                    }
                    self.read_eof = true;
                    return Poll::Ready(Ok(()));
                }
                continue;
            };
            let masked_as_required = match self.role {
                Role::Client => header.mask.is_none(),
                Role::Server => header.mask.is_some(),
            };
            if !masked_as_required {
                return Poll::Ready(Err(invalid(FrameError::Masking)));
            }
            if header.is_control() {
                // Control payloads are at most 125 bytes: read them whole.
                let whole = used + header.len as usize;
                while self.rbuf.len() < whole {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(ended_inside_a_frame()));
                    }
                }
                self.rbuf.advance(used);
                let mut payload = self.rbuf.split_to(header.len as usize);
                if let Some(key) = header.mask {
                    frame::apply_mask(&mut payload, key, 0);
                }
                match header.opcode {
                    // Only the latest ping is owed an answer (RFC 6455 §5.5.3).
                    opcode::PING => self.pong = Some(payload.to_vec()),
                    opcode::CLOSE => {
                        self.read_eof = true;
                        self.close_reply = Some(close_echo(&payload));
                        self.answer_control(cx);
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
                continue;
            }
            let size = match (header.opcode, self.message) {
                (opcode::TEXT, _) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary tunnel",
                    )));
                }
                (opcode::BINARY, None) => header.len,
                (opcode::CONTINUATION, Some(so_far)) => so_far + header.len,
                _ => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "websocket fragments out of order",
                    )));
                }
            };
            if size > SESSION_MAX_MESSAGE as u64 {
                return Poll::Ready(Err(invalid(FrameError::TooLarge(size))));
            }
            self.rbuf.advance(used);
            self.message = (!header.fin).then_some(size);
            self.read = ReadState::Payload {
                remaining: header.len,
                mask: header.mask,
                offset: 0,
            };
            return Poll::Ready(Ok(()));
        }
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
            let ReadState::Payload {
                remaining,
                mask,
                offset,
            } = &mut this.read
            else {
                if this.read_failed {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "websocket stream failed earlier",
                    )));
                }
                if this.read_eof {
                    return Poll::Ready(Ok(()));
                }
                if let Err(e) = ready!(this.poll_header(cx)) {
                    this.read_failed = true;
                    return Poll::Ready(Err(e));
                }
                continue;
            };
            if *remaining == 0 {
                this.read = ReadState::Header;
                continue;
            }
            let want = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(buf.remaining());
            if want == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.rbuf.is_empty() {
                let n = want.min(this.rbuf.len());
                let chunk = &mut this.rbuf[..n];
                if let Some(key) = *mask {
                    frame::apply_mask(chunk, key, *offset);
                }
                buf.put_slice(chunk);
                this.rbuf.advance(n);
                *remaining -= n as u64;
                *offset += n;
                return Poll::Ready(Ok(()));
            }
            if want >= DIRECT_READ {
                // Straight from the socket into the reader's buffer.
                let dst = buf.initialize_unfilled_to(want);
                let mut direct = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(ended_inside_a_frame()));
                }
                if let Some(key) = *mask {
                    frame::apply_mask(&mut dst[..n], key, *offset);
                }
                buf.advance(n);
                *remaining -= n as u64;
                *offset += n;
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(ended_inside_a_frame()));
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
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    /// One binary frame of (up to `max_message` bytes of) all of `bufs`:
    /// HTTP/2 hands over its encoded frames and a DATA payload together.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            // No data after our close (RFC 6455 §5.5.1).
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.backlog() >= this.max_message {
            ready!(this.poll_drain(cx))?;
        }
        this.queue_control();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let n = total.min(this.max_message);
        if n > 0 {
            this.put_frame(opcode::BINARY, n, bufs);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_control();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.close_reply.is_none() {
            // 1000: normal closure.
            this.close_reply = Some(1000u16.to_be_bytes().to_vec());
        }
        this.queue_control();
        let done = match ready!(this.poll_drain(cx)) {
            Ok(()) => ready!(Pin::new(&mut this.io).poll_shutdown(cx)),
            Err(e) => Err(e),
        };
        match done {
            Err(e) if is_gone(&e) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

/// The payload of the close answering a peer's close with `payload`: its
/// code when it is one a peer may send, else 1002 (protocol error).
fn close_echo(payload: &[u8]) -> Vec<u8> {
    let code = match *payload {
        [] => return Vec::new(),
        [a, b, ..] => u16::from_be_bytes([a, b]),
        [_] => 1002,
    };
    let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
    let code = if valid { code } else { 1002 };
    code.to_be_bytes().to_vec()
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn ended_inside_a_frame() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "websocket ended inside a frame",
    )
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}
