//! A hostile relay stand-in (`relay_standin.py`): it takes the agent's
//! first session itself, speaking the real handshake and HTTP/2 (Python's
//! `h2`), and sends what a compromised relay could; every later connection
//! is piped to a real relay.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The stand-in process, killed on drop.
pub struct StandIn {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl StandIn {
    /// Starts it in front of the real relay at `relay` (its public address).
    pub fn start(relay: std::net::SocketAddr) -> Self {
        let script = super::repo_file("tests/support/relay_standin.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(relay.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with the h2 package");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[standin] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("stand-in started");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {first:?}"));
        Self {
            child,
            stdin,
            lines,
            port,
        }
    }

    /// The URL agents dial.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/agent/connect", self.port)
    }

    /// Waits for the agent's first session.
    pub fn wait_held(&self) {
        assert_eq!(self.next_line(), "held");
    }

    /// Sends one command; its one-line answer.
    pub fn command(&mut self, line: &str) -> String {
        assert!(!line.contains('\n'));
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.next_line()
    }

    /// Sends a rotation notice (JSON); the status the agent answered.
    pub fn notice(&mut self, notice: &serde_json::Value) -> String {
        self.command(&format!("notice {notice}"))
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the stand-in answered")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
