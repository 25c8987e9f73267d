//! [`HostileAgent`]: `hostile_agent.py`, an agent stand-in speaking the
//! real handshake and sending what tether-agent never would (oversized
//! header blocks, `Tether-*` response fields), as a real process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{Log, repo_file};

/// A running stand-in with one session; killed on drop.
pub struct HostileAgent {
    child: Child,
    /// Reads its stdout into `log` until the process ends.
    reader: Option<std::thread::JoinHandle<()>>,
    /// Its event lines: `connected`, `registered`, `request METHOD PATH`,
    /// `goaway CODE`, `closed`.
    pub log: Log,
}

impl HostileAgent {
    /// Connects to the relay at `relay` as agent `name` of `token`'s
    /// account, serving `route`; returns once the WebSocket is up.
    pub fn start(relay: SocketAddr, token: &str, name: &str, route: &str) -> Self {
        Self::start_with(relay, token, name, route, &[])
    }

    /// [`HostileAgent::start`] with extra arguments (`--instance TEXT`).
    pub fn start_with(
        relay: SocketAddr,
        token: &str,
        name: &str,
        route: &str,
        extra: &[&str],
    ) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_file("tests/support/hostile_agent.py"))
            .args(["--relay", &relay.to_string(), "--token", token])
            .args(["--name", name, "--route", route])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (with the h2 package) runs the hostile agent");
        let stdout = child.stdout.take().expect("stdout");
        let log: Log = Log::default();
        let sink = log.clone();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[hostile-agent] {line}");
                sink.lock().unwrap().push(line.clone());
                if line == "connected"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("the hostile agent did not connect within 20 s");
        }
        Self {
            child,
            reader: Some(reader),
            log,
        }
    }

    /// Stops the process and reads the rest of its output: after this the
    /// log is complete, so counts of what it received are exact (its lines
    /// reach the test through a pipe, a moment after it acted).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// How many relayed requests for route path `path` (e.g. `/echo` of
    /// `/v1/routes/sample/echo`) it has logged; exact after
    /// [`HostileAgent::stop`].
    pub fn requests(&self, path: &str) -> usize {
        let suffix = format!("/v1/routes/sample{path}");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("request ") && l.ends_with(&suffix))
            .count()
    }

    /// Whether it logged `line`.
    pub fn saw(&self, line: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l == line)
    }
}

impl Drop for HostileAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
