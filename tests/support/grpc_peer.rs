//! A real gRPC server and client (`grpc_peer.py`, PyPI `grpcio` with
//! generic handlers: service `tether.test.Echo`, methods `Echo`, `Fail`,
//! `Chat`, `Hang`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The gRPC server process, killed on drop.
pub struct GrpcServer {
    child: Child,
    /// Held open: the server runs until its stdin closes or it is killed.
    _stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
}

impl GrpcServer {
    /// Starts a plain-text (h2c) server on 127.0.0.1.
    pub fn start() -> Self {
        Self::spawn(&[])
    }

    /// Starts a TLS server with the PEM `cert` and `key`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::spawn(&[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ])
    }

    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(super::repo_file("tests/support/grpc_peer.py"))
            .arg("server")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with the grpcio package");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[grpc-server] {line}");
                if let Some(port) = line.strip_prefix("listening ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port.to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let port: u16 = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gRPC server started")
            .parse()
            .expect("a port");
        Self {
            child,
            _stdin: stdin,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// How many times the server printed `line`.
    pub fn printed_count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    /// A `[routes.NAME]` table for this server: HTTP/2 to the upstream,
    /// the service's methods in `paths`, and an `x-route` header the agent
    /// sets on every call.
    pub fn route(&self, name: &str, paths: &str) -> String {
        format!(
            "[routes.{name}]\nurl = \"http://{}\"\nmethods = [\"POST\"]\npaths = {paths}\n\
             upstream_http2 = true\nheaders = {{ x-route = \"set-by-agent\" }}\n",
            self.addr
        )
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client call ended with (the client's JSON line).
#[derive(Debug)]
pub struct GrpcOutcome {
    /// The status code's name: `OK`, `PERMISSION_DENIED`, …
    pub code: String,
    pub details: String,
    pub responses: Vec<String>,
    pub trailers: serde_json::Value,
}

/// Runs the gRPC client with `args` (`--target`, `--method`, …) off the
/// async runtime, without proxy settings from the environment.
pub async fn grpc_call(args: &[String]) -> GrpcOutcome {
    let args = args.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("python3");
        cmd.arg(super::repo_file("tests/support/grpc_peer.py"))
            .arg("call")
            .args(&args);
        for var in [
            "http_proxy",
            "https_proxy",
            "grpc_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .output()
            .expect("python3 grpc client")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_else(|| {
        panic!(
            "gRPC client printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let doc: serde_json::Value = serde_json::from_str(line).expect("client JSON");
    eprintln!("[grpc-client] {doc}");
    GrpcOutcome {
        code: doc["code"].as_str().unwrap_or_default().to_owned(),
        details: doc["details"].as_str().unwrap_or_default().to_owned(),
        responses: doc["responses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default(),
        trailers: doc["trailers"].clone(),
    }
}
