//! systemd's readiness protocol (`sd_notify`), without libsystemd.
//!
//! Under `Type=notify` systemd passes `NOTIFY_SOCKET`; the daemon sends
//! `READY=1` when it is useful, `WATCHDOG=1` at least every half of
//! `WATCHDOG_USEC` (from its async runtime, so a wedged runtime gets it
//! restarted), and `STOPPING=1` when it starts draining. Datagrams are sent
//! non-blocking: a slow or missing systemd never stalls the daemon.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to systemd's notification socket (a no-op without one).
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            let socket = UnixDatagram::unbound().ok()?;
            socket.set_nonblocking(true).ok()?;
            Some((socket, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2));
        Self { socket, watchdog }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1` (half the configured timeout).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog)
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STATUS=…` only.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify send failed");
        }
    }
}

/// Drives systemd notifications until `shutdown`: `READY=1` once `ready()`
/// holds (checked every 100 ms), `WATCHDOG=1` at the watchdog interval,
/// `STOPPING=1` when shutdown begins. Runs on the daemon's runtime, so a
/// wedged runtime stops the watchdog and systemd restarts the service.
pub async fn run(
    notifier: Notifier,
    ready: impl Fn() -> Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if !notifier.enabled() {
        return;
    }
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut watchdog = tokio::time::interval(
        notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600)),
    );
    let mut is_ready = false;
    loop {
        tokio::select! {
            _ = poll.tick(), if !is_ready => {
                if let Some(status) = ready() {
                    notifier.ready(&status);
                    is_ready = true;
                }
            }
            _ = watchdog.tick() => {
                if notifier.watchdog_interval().is_some() {
                    notifier.watchdog();
                }
            }
            () = shutdown.cancelled() => {
                notifier.stopping();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_never_block() {
        let dir = std::env::temp_dir().join(format!("tether-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let socket = UnixDatagram::unbound().unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier = Notifier {
            socket: Some((
                socket,
                std::os::unix::net::SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_millis(50)),
        };
        notifier.ready("up");
        notifier.watchdog();
        notifier.stopping();
        let mut buf = [0u8; 256];
        let got: Vec<String> = (0..3)
            .map(|_| {
                let n = listener.recv(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
            .collect();
        assert!(got[0].starts_with("READY=1"));
        assert_eq!(got[1], "WATCHDOG=1");
        assert!(got[2].starts_with("STOPPING=1"));
        // Nobody reading and the buffer full: sends fail fast, never block.
        for _ in 0..10_000 {
            notifier.watchdog();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
