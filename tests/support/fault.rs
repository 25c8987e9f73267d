//! A TCP fault proxy for the tests: sits between an agent and the relay
//! and can pass bytes, delay them, stall them (a half-open link: sockets
//! stay open, nothing moves) or cut every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Read nothing more, forward nothing, keep the sockets open.
    Stall,
}

/// The proxy; stops (and closes every connection) on drop.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a port of its own) and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (cut, cut_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let (count, stop) = (accepted.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    () = stop.cancelled() => return,
                };
                count.fetch_add(1, Ordering::Relaxed);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (mode, mut cut, stop) = (mode_rx.clone(), cut_rx.clone(), stop.clone());
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pipe(cr, sw, mode.clone()) => {}
                        () = pipe(sr, cw, mode) => {}
                        _ = cut.changed() => {}
                        () = stop.cancelled() => {}
                    }
                    // Dropping both halves closes both sockets.
                });
            }
        });
        Self {
            addr,
            mode,
            cut,
            accepted,
            shutdown,
        }
    }

    /// Changes what happens to bytes on every connection, open or new.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every open connection (new ones are still accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Copies `from` to `to` chunk by chunk, obeying the mode before each
/// read and each write.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if wait_unstalled(&mut mode).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *mode.borrow();
        if let Mode::Delay(d) = current {
            tokio::time::sleep(d).await;
        }
        if wait_unstalled(&mut mode).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_unstalled(mode: &mut watch::Receiver<Mode>) -> Result<(), ()> {
    loop {
        if *mode.borrow_and_update() != Mode::Stall {
            return Ok(());
        }
        mode.changed().await.map_err(|_| ())?;
    }
}
