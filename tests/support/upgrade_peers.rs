//! The peers and callers of tests/upgrades.rs: the `websockets` server
//! and client (tests/support/ws_peers.py), a relay and agent set up for
//! them, raw TCP upstreams and a raw HTTP/1.1 caller.

#![allow(unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

pub const LIMIT: Duration = Duration::from_secs(20);
pub const SECRET: &str = "s3cret-handshake-value";

/// Starts a Python peer that prints `listening PORT` first; the child and
/// its address on 127.0.0.1.
pub fn spawn_python_listener(mut cmd: Command, what: &str) -> (Child, SocketAddr) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with websockets (scripts/test.sh installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what} said {line:?}"));
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

pub fn peers_script() -> PathBuf {
    repo_file("tests/support/ws_peers.py")
}

/// The `websockets` echo server, killed on drop.
pub struct WsServer {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("connections.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(peers_script()).arg("server").arg(&log);
        let (child, addr) = spawn_python_listener(cmd, "ws server");
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// One JSON document per connection that ended.
    pub fn connections(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn route(&self, name: &str, extra: &str) -> String {
        format!(
            "[routes.{name}]\nurl = \"http://{}\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n{extra}\n",
            self.addr
        )
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `websockets` client running `scenario` through the relay; its last
/// JSON line (bounded by [`LIMIT`]).
pub async fn ws_client(relay: &Relay, path: &str, key: &str, scenario: &str) -> serde_json::Value {
    let child = ws_client_spawn(relay, path, key, scenario);
    tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap()
}

pub fn ws_client_spawn(relay: &Relay, path: &str, key: &str, scenario: &str) -> Child {
    let stdin = if scenario == "drain" {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    Command::new("python3")
        .arg(peers_script())
        .arg("client")
        .arg(format!("ws://{}{path}", relay.public))
        .arg(key)
        .arg(scenario)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a client and parses its last line.
pub fn finish(mut child: Child) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ws client still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let last = out.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(last).unwrap()
}

/// A client in the `hold` scenario, its connection up.
pub struct Held {
    pub child: Child,
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Held {
    /// Waits (bounded) until the connection ended; what the client saw.
    pub async fn ended(mut self) -> serde_json::Value {
        let deadline = std::time::Instant::now() + LIMIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "connection still open after {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = self.rest.take().unwrap().join().unwrap();
        serde_json::from_str(out.lines().last().unwrap_or("{}")).unwrap()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client in the `hold` scenario: its first line once the connection
/// is up, and the client.
pub fn hold(relay: &Relay, path: &str, key: &str) -> (serde_json::Value, Held) {
    hold_in(relay, path, key, "hold")
}

/// [`hold`] with another holding scenario (`drain`).
pub fn hold_in(relay: &Relay, path: &str, key: &str, scenario: &str) -> (serde_json::Value, Held) {
    let mut child = ws_client_spawn(relay, path, key, scenario);
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut s);
        s
    });
    (
        first,
        Held {
            child,
            rest: Some(rest),
        },
    )
}

/// Relay + agent of account `acme` with `config` (routes, limits…), its
/// secret file holding [`SECRET`].
pub struct Setup {
    pub relay: Relay,
    pub agent: Agent,
    pub key: String,
    _dir: tempfile::TempDir,
}

pub async fn setup(relay_extra: &str, config: &str) -> Setup {
    let relay = Relay::start(relay_extra);
    let token = relay.token("acme");
    let key = relay.key("acme");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = format!("{config}\n[secrets.ws]\nfile = \"{}\"\n", secret.display());
    let agent = Agent::start(&relay.agent_url(), &token, "agent-a", &config);
    relay.wait_sessions(2).await;
    Setup {
        relay,
        agent,
        key,
        _dir: dir,
    }
}

pub const INJECT: &str =
    "upgrades = [\"websocket\"]\nheaders = { X-Handshake-Token = \"Bearer ${{ secrets.ws }}\" }";

// ---- raw peers -------------------------------------------------------------

/// What a raw upstream got on one connection: the request head and every
/// byte after it.
#[derive(Debug, Default, Clone)]
pub struct Got {
    pub head: String,
    pub after: Vec<u8>,
    /// The other side closed the connection.
    pub closed: bool,
}

/// How a raw upstream answers an upgrade.
#[derive(Clone, Copy)]
pub enum Answer {
    /// These bytes, then it only listens.
    Bytes(&'static [u8]),
    /// A correct WebSocket 101, then bytes as fast as the caller takes them.
    Flood,
    /// `Upgrade: SPDY/3.1`, then an echo.
    Spdy,
}

/// A raw TCP upstream; what each connection brought.
pub async fn raw_upstream(answer: Answer) -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Got>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut tcp).await;
                let index = {
                    let mut all = record.lock().unwrap();
                    all.push(Got {
                        head: head.clone(),
                        after: rest.clone(),
                        closed: false,
                    });
                    all.len() - 1
                };
                match answer {
                    Answer::Bytes(bytes) => {
                        let _ = tcp.write_all(bytes).await;
                        let mut buf = [0u8; 4096];
                        // Until the agent closes it (FIN or reset).
                        while let Ok(read) =
                            tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await
                        {
                            match read {
                                Ok(n) if n > 0 => {
                                    record.lock().unwrap()[index]
                                        .after
                                        .extend_from_slice(&buf[..n]);
                                }
                                _ => {
                                    record.lock().unwrap()[index].closed = true;
                                    break;
                                }
                            }
                        }
                    }
                    Answer::Flood => {
                        let key = header_of(&head, "sec-websocket-key").unwrap_or_default();
                        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                            key.as_bytes(),
                        );
                        let reply = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        );
                        let _ = tcp.write_all(reply.as_bytes()).await;
                        let chunk = vec![0x42u8; 64 * 1024];
                        while tcp.write_all(&chunk).await.is_ok() {}
                    }
                    Answer::Spdy => {
                        let reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n\r\n";
                        let _ = tcp.write_all(reply).await;
                        let _ = tcp.write_all(&rest).await;
                        let (mut r, mut w) = tcp.into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads a head up to its blank line; the head and what came after.
pub async fn read_head(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return (head, buf[i + 4..].to_vec());
        }
        let n = tcp.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return (String::from_utf8_lossy(&buf).into_owned(), Vec::new());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A raw caller: `head_lines` (each ending CRLF) after the request line
/// and `extra` bytes right behind the head (a pipelining caller); the
/// answer's head, what followed it, and the open connection.
pub async fn raw_caller(
    relay: &Relay,
    request_line: &str,
    key: &str,
    head_lines: &str,
    extra: &[u8],
) -> (String, Vec<u8>, TcpStream) {
    let mut tcp = TcpStream::connect(relay.public).await.unwrap();
    let mut bytes = format!(
        "{request_line} HTTP/1.1\r\nHost: relay\r\nProxy-Authorization: Bearer {key}\r\n{head_lines}\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(extra);
    tcp.write_all(&bytes).await.unwrap();
    let (head, rest) = tokio::time::timeout(LIMIT, read_head(&mut tcp))
        .await
        .expect("an answer head");
    (head, rest, tcp)
}

pub const WS_HEAD: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

pub fn raw_route(name: &str, addr: SocketAddr, methods: &str, upgrades: &str) -> String {
    format!(
        "[routes.{name}]\nurl = \"http://{addr}\"\nmethods = {methods}\npaths = [\"/**\"]\nupgrades = {upgrades}\n"
    )
}
