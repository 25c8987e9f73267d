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
    /// Its event lines: `connected`, `registered`, `request METHOD PATH`,
    /// `goaway CODE`, `closed`.
    pub log: Log,
}

impl HostileAgent {
    /// Connects to the relay at `relay` as agent `name` of `token`'s
    /// account, serving `route`; returns once the WebSocket is up.
    pub fn start(relay: SocketAddr, token: &str, name: &str, route: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_file("tests/support/hostile_agent.py"))
            .args(["--relay", &relay.to_string(), "--token", token])
            .args(["--name", name, "--route", route])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (with the h2 package) runs the hostile agent");
        let stdout = child.stdout.take().expect("stdout");
        let log: Log = Log::default();
        let sink = log.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
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
        Self { child, log }
    }

    /// How many relayed requests for route path `path` (e.g. `/echo` of
    /// `/v1/routes/sample/echo`) it received.
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
