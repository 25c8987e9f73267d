//! Two byte streams joined after an upgrade: bytes copied both ways, a
//! side's end of stream passed on as a half-close (FIN, or HTTP/2
//! END_STREAM), counted, ended early by an idle timeout or a stop token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Buffer per direction.
const CHUNK: usize = 16 * 1024;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed their sending half.
    Closed,
    /// A side failed (reset, connection lost).
    Failed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The stop token was cancelled (drain, key revoked).
    Stopped,
}

impl SpliceEnd {
    /// For logs and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Failed => "failed",
            Self::Idle => "idle_timeout",
            Self::Stopped => "stopped",
        }
    }
}

/// Bytes each way and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    /// Why it ended.
    pub end: SpliceEnd,
}

/// Copies `a` ⇄ `b` until both directions ended, either failed, nothing
/// moved for `idle` (if set), or `stop` is cancelled.
pub async fn splice<A, B>(a: A, b: B, idle: Option<Duration>, stop: &CancellationToken) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let activity = AtomicU64::new(0);
    let started = Instant::now();
    let both = async {
        tokio::try_join!(
            pump(a_read, b_write, &a_to_b, &activity, started),
            pump(b_read, a_write, &b_to_a, &activity, started),
        )
    };
    let idle_watch = async {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        result = both => if result.is_ok() { SpliceEnd::Closed } else { SpliceEnd::Failed },
        () = idle_watch => SpliceEnd::Idle,
        () = stop.cancelled() => SpliceEnd::Stopped,
    };
    Spliced {
        a_to_b: a_to_b.load(Ordering::Relaxed),
        b_to_a: b_to_a.load(Ordering::Relaxed),
        end,
    }
}

/// One direction: read, write, count; on end of stream, shut the writing
/// side down (the half-close reaches the other peer).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    count: &AtomicU64,
    activity: &AtomicU64,
    started: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let task = tokio::spawn(async move { splice(a, b, None, &stop).await });
        a_peer.write_all(b"hello").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The other direction still flows after the half-close.
        b_peer.write_all(b"back").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        let spliced = task.await.unwrap();
        assert_eq!((spliced.a_to_b, spliced.b_to_a), (5, 4));
        assert_eq!(spliced.end, SpliceEnd::Closed);
    }

    #[tokio::test]
    async fn idle_and_stop_end_it() {
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        let stop = CancellationToken::new();
        let spliced = splice(a, b, Some(Duration::from_millis(50)), &stop).await;
        assert_eq!(spliced.end, SpliceEnd::Idle);
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        stop.cancel();
        assert_eq!(splice(a, b, None, &stop).await.end, SpliceEnd::Stopped);
    }
}
