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
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tether_wire::BoxBody;

pub mod connect_proxy;
pub mod netns;

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

/// Every log line of a process, kept for tests that grep them.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Spawns `cmd`, echoes its stderr, and waits for a line containing
/// `marker`; returns the child, that line and the log so far and to come.
/// Processes log at debug level (dependencies included) so that tests
/// grepping for leaked secrets see everything.
fn spawn_until(mut cmd: Command, marker: &'static str, tag: &'static str) -> (Child, String, Log) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("TETHER_LOG", "debug")
        // Never let an AWS SDK reach for instance metadata or real keys.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE");
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let log: Log = Arc::default();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            eprintln!("[{tag}] {line}");
            if line.contains(marker)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => (child, line, log),
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
    let rest = &line[start..];
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
    pub log: Log,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The forward-proxy listener, when started with one.
    pub proxy: Option<SocketAddr>,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts a relay; `extra` is appended to its config file.
    pub fn start(extra: &str) -> Self {
        Self::start_on(extra, None)
    }

    /// Starts a relay on the store at `store_url` (its own SQLite file if
    /// `None`).
    pub fn start_on(extra: &str, store_url: Option<&str>) -> Self {
        Self::start_full(extra, "", store_url, false)
    }

    /// Starts a relay with extra `[listen]` keys (`listen`), a
    /// forward-proxy listener if `proxy`, and `extra` config.
    pub fn start_listening(listen: &str, extra: &str, proxy: bool) -> Self {
        Self::start_full(extra, listen, None, proxy)
    }

    /// Starts replica `replica_id` of a cluster on the Postgres store at
    /// `store_url`, sharing the peer key in `peer_key_file` (also its admin
    /// API key).
    pub fn start_replica(store_url: &str, replica_id: &str, peer_key_file: &Path) -> Self {
        Self::replica(store_url, replica_id, peer_key_file, "", false)
    }

    /// [`Relay::start_replica`] with extra `[listen]` keys.
    pub fn start_replica_listening(
        store_url: &str,
        replica_id: &str,
        peer_key_file: &Path,
        listen: &str,
    ) -> Self {
        Self::replica(store_url, replica_id, peer_key_file, listen, false)
    }

    /// [`Relay::start_replica`] with a forward-proxy listener too.
    pub fn start_replica_with_proxy(
        store_url: &str,
        replica_id: &str,
        peer_key_file: &Path,
    ) -> Self {
        Self::replica(store_url, replica_id, peer_key_file, "", true)
    }

    fn replica(
        store_url: &str,
        replica_id: &str,
        peer_key_file: &Path,
        listen: &str,
        proxy: bool,
    ) -> Self {
        let peer = free_port();
        Self::start_full(
            &format!(
                "[agents]\nping_interval = \"1s\"\nping_timeout = \"2s\"\n\
                 [cluster]\nreplica_id = \"{replica_id}\"\npeer_listen = \"127.0.0.1:{peer}\"\n\
                 peer_key_file = \"{key}\"\nlease = \"3s\"\n\
                 [admin]\nkey_file = \"{key}\"\n",
                key = peer_key_file.display()
            ),
            listen,
            Some(store_url),
            proxy,
        )
    }

    /// Starts a relay with a forward-proxy listener too.
    pub fn start_with_proxy(extra: &str) -> Self {
        Self::start_full(extra, "", None, true)
    }

    fn start_full(extra: &str, listen: &str, store_url: Option<&str>, proxy: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("relay.toml");
        let store = store_url.map_or_else(
            || format!("sqlite://{}", dir.path().join("relay.db").display()),
            str::to_owned,
        );
        std::fs::write(
            &config,
            format!(
                "drain_timeout = \"2s\"\n{extra}\n[listen]\n{listen}\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}\
                 [store]\nurl = \"{store}\"\n",
                if proxy { "proxy = \"127.0.0.1:0\"\n" } else { "" }
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin("tether-relay"));
        cmd.arg("--config").arg(&config).arg("serve");
        let (child, line, log) = spawn_until(cmd, "listening", "relay");
        Self {
            child,
            log,
            public: addr_after(&line, "public="),
            admin: addr_after(&line, "admin="),
            proxy: proxy.then(|| addr_after(&line, "proxy=")),
            config,
            _dir: dir,
        }
    }

    /// Runs a relay CLI command whose stdout is one line (a new secret).
    pub fn cli(&self, args: &[&str]) -> String {
        let stdout = self.cli_output(args);
        assert_eq!(
            stdout.lines().count(),
            1,
            "secret alone on stdout: {stdout:?}"
        );
        stdout.trim().to_owned()
    }

    /// Runs a relay CLI command against this relay's store; its stdout.
    pub fn cli_output(&self, args: &[&str]) -> String {
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
        String::from_utf8(out.stdout).unwrap()
    }

    /// A metric of the admin listener (first sample with that name).
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, _, body) = get(&format!("http://{}/metrics", self.admin), &[]).await;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in metrics"))
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

    /// SIGKILLs the relay and starts it again on the same ports and store;
    /// returns when it listens again.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text
            .replace(
                "public = \"127.0.0.1:0\"",
                &format!("public = \"{}\"", self.public),
            )
            .replace(
                "admin = \"127.0.0.1:0\"",
                &format!("admin = \"{}\"", self.admin),
            );
        std::fs::write(&self.config, text).unwrap();
        let mut cmd = Command::new(bin("tether-relay"));
        cmd.arg("--config").arg(&self.config).arg("serve");
        let (child, _, log) = spawn_until(cmd, "listening", "relay");
        self.child = child;
        self.log = log;
    }

    /// SIGKILLs the relay and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `TERM`) to the relay.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the relay to exit; its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

/// Polls `check` every 20 ms until it holds; how long that took. Panics
/// after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`, …) to process `pid` with
/// kill(1): the tests need no unsafe code for it.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
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
    pub log: Log,
    pub admin: SocketAddr,
    /// Its configuration file (tests rewrite it and send SIGHUP).
    pub config: PathBuf,
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
        Self::spawn(
            &format!(
                "drain_timeout = \"2s\"\n[relay]\nurl = \"{relay_url}\"\ntoken = \"{token}\"\n{relay_extra}\n\
                 [agent]\nname = \"{name}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{routes}\n"
            ),
            &[],
        )
    }

    /// Starts an agent from a whole config text, with extra environment.
    pub fn spawn(config_text: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut cmd = Command::new(bin("tether-agent"));
        cmd.arg("run").arg("--config").arg(&config);
        cmd.envs(env.iter().copied());
        let (child, line, log) = spawn_until(cmd, "starting", "agent");
        Self {
            child,
            log,
            admin: addr_after(&line, "admin="),
            config,
            _dir: dir,
        }
    }

    /// The agent's admin metrics text.
    pub async fn metrics(&self) -> String {
        let (_, _, body) = get(&format!("http://{}/metrics", self.admin), &[]).await;
        String::from_utf8_lossy(&body).into_owned()
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

    /// Sends `signal` (e.g. `STOP`) to the agent.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits (bounded) for the agent to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub mod balancer;
mod calls;
pub mod cluster;
pub mod fault;
pub mod grpc_peer;
pub mod hostile_agent;
pub mod in_process;
pub mod isolation;
mod peers;
pub mod raw_http;
mod stack;
pub mod standin;

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use calls::*;
#[allow(unused_imports)]
pub use peers::{Moto, OpenBao, Postgres};
#[allow(unused_imports)]
pub use stack::{Stack, Upstream};

/// What a finished process printed, stdout then stderr.
pub fn all_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

/// A port that was free a moment ago, for servers that cannot bind port 0
/// and report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebSocket upgrade request to the relay's agent endpoint, as an agent
/// would send it (each part optional, to test refusals).
pub fn upgrade_request(
    relay: &Relay,
    token: Option<&str>,
    protocol: Option<&str>,
    name: Option<&str>,
) -> Request<tether_wire::BoxBody> {
    let mut req = Request::get(relay.url("/v1/agent/connect"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(p) = protocol {
        req = req.header("sec-websocket-protocol", p);
    }
    if let Some(n) = name {
        req = req.header("tether-agent-name", n);
    }
    req.body(tether_wire::empty_body()).unwrap()
}
