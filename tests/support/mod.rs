//! Test harness: real `tether-relay` and `tether-agent` processes and the
//! sample upstream, all on 127.0.0.1 with ports chosen by the kernel.
//!
//! Processes log to stderr; a reader thread echoes their lines into the
//! test's output (shown on failure) and picks out the bound addresses from
//! their `listening`/`starting` lines. Every child is killed on drop.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tether_wire::BoxBody;
use tokio_util::sync::CancellationToken;

/// Path of a workspace binary. Cargo sets `CARGO_BIN_EXE_*` only for this
/// package's binaries; the relay's sits beside it in the same target dir.
pub fn bin(name: &str) -> PathBuf {
    if name == "tether-agent" {
        return PathBuf::from(env!("CARGO_BIN_EXE_tether-agent"));
    }
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_tether-agent"));
    let path = agent.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the whole workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Spawns `cmd`, echoes its stderr, and waits for a line containing
/// `marker`; returns the child and that line.
fn spawn_until(mut cmd: Command, marker: &'static str, tag: &'static str) -> (Child, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("TETHER_LOG", "info,tether=debug");
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            if line.contains(marker)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            panic!("{tag} did not print {marker:?} within 20 s");
        }
    }
}

/// Extracts the address after `key` (e.g. `public=`) in a log line.
fn addr_after(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("{key} not in {line}"))
        + key.len();
    let rest = line[start..].trim_start_matches("Some(");
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A relay process with its own temp dir and SQLite store.
pub struct Relay {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts a relay; `extra` is appended to its config file.
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "drain_timeout = \"2s\"\n{extra}\n[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
                 [store]\nurl = \"sqlite://{}\"\n",
                dir.path().join("relay.db").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin("tether-relay"));
        cmd.arg("--config").arg(&config).arg("serve");
        let (child, line) = spawn_until(cmd, "listening", "relay");
        Self {
            child,
            public: addr_after(&line, "public="),
            admin: addr_after(&line, "admin="),
            config,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin("tether-relay"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run relay CLI");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.lines().count(),
            1,
            "secret alone on stdout: {stdout:?}"
        );
        stdout.trim().to_owned()
    }

    /// `tokens create --account A`.
    pub fn token(&self, account: &str) -> String {
        self.cli(&["tokens", "create", "--account", account])
    }

    /// `keys create --account A`.
    pub fn key(&self, account: &str) -> String {
        self.cli(&["keys", "create", "--account", account])
    }

    /// `http://public/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// The WebSocket URL agents dial.
    pub fn agent_url(&self) -> String {
        format!("ws://{}/v1/agent/connect", self.public)
    }

    /// Connected sessions, from the admin metrics.
    pub async fn sessions(&self) -> usize {
        let (_, _, body) = get(&format!("http://{}/metrics", self.admin), &[]).await;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix("tether_relay_agent_sessions "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until exactly `n` sessions are registered.
    pub async fn wait_sessions(&self, n: usize) {
        for _ in 0..200 {
            if self.sessions().await == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "relay never had {n} sessions (has {})",
            self.sessions().await
        );
    }

    /// Process id, for reading /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent process.
pub struct Agent {
    child: Child,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent named `name` with `token` and the given `[routes…]`
    /// TOML.
    pub fn start(relay_url: &str, token: &str, name: &str, routes: &str) -> Self {
        Self::start_with(relay_url, token, name, "", routes)
    }

    /// Like [`Agent::start`], with extra `[relay]` keys.
    pub fn start_with(
        relay_url: &str,
        token: &str,
        name: &str,
        relay_extra: &str,
        routes: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "drain_timeout = \"2s\"\n[relay]\nurl = \"{relay_url}\"\ntoken = \"{token}\"\n{relay_extra}\n\
                 [agent]\nname = \"{name}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{routes}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin("tether-agent"));
        cmd.arg("run").arg("--config").arg(&config);
        let (child, line) = spawn_until(cmd, "starting", "agent");
        Self {
            child,
            admin: addr_after(&line, "admin="),
            _dir: dir,
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Process id, for reading /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An in-process sample upstream, stopped on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Upstream {
    pub async fn start() -> Self {
        let shutdown = CancellationToken::new();
        let addr = tether_sample_upstream::start("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        Self { addr, shutdown }
    }

    /// A `[routes.NAME]` table pointing at this upstream.
    pub fn route(&self, name: &str, methods: &str, paths: &str) -> String {
        format!(
            "[routes.{name}]\nurl = \"http://{}\"\nmethods = {methods}\npaths = {paths}\n",
            self.addr
        )
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A relay, one upstream and one agent with route `sample` (GET, POST on
/// `/**`), the agent's session registered, plus a key of the same account.
pub struct Stack {
    pub relay: Relay,
    pub upstream: Upstream,
    pub agent: Agent,
    pub key: String,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with("", "").await
    }

    /// With extra relay config and extra agent routes.
    pub async fn start_with(relay_extra: &str, extra_routes: &str) -> Self {
        let relay = Relay::start(relay_extra);
        let upstream = Upstream::start().await;
        let token = relay.token("acme");
        let key = relay.key("acme");
        let routes = format!(
            "{}\n{extra_routes}",
            upstream.route("sample", r#"["GET", "POST"]"#, r#"["/**"]"#)
        );
        let agent = Agent::start(&relay.agent_url(), &token, "agent-a", &routes);
        relay.wait_sessions(2).await;
        Self {
            relay,
            upstream,
            agent,
            key,
        }
    }

    /// `Proxy-Authorization` with this stack's key.
    pub fn auth(&self) -> (&'static str, String) {
        ("proxy-authorization", format!("Bearer {}", self.key))
    }
}

pub type TestClient = Client<HttpConnector, BoxBody>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub fn body(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Sends `req` and collects the whole response.
pub async fn send(req: Request<BoxBody>) -> (StatusCode, HeaderMap, Bytes) {
    let response = client().request(req).await.expect("request");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

/// GET with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(tether_wire::empty_body()).unwrap()).await
}

/// The `code` member of a problem document.
pub fn problem_code(headers: &HeaderMap, body: &[u8]) -> String {
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "body: {}",
        String::from_utf8_lossy(body)
    );
    let doc: serde_json::Value = serde_json::from_slice(body).expect("problem json");
    doc["code"].as_str().unwrap_or_default().to_owned()
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads a config file from the repository.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}
