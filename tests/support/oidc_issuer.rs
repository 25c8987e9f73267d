#![allow(unreachable_pub)]
//! A real OpenID provider (panva's `oidc-provider`, tests/support/oidc/)
//! on 127.0.0.1: JWT access tokens for the test users of issuer.mjs, its
//! keys at `/jwks`. Installed by scripts/test.sh (`npm ci`). Included
//! by the tests that use it (`#[path]`), beside `support`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::{Request, StatusCode};

use crate::support::{body, get, repo_file, send};

/// One issuer process, killed on drop.
pub struct Issuer {
    child: Child,
    pub port: u16,
}

impl Issuer {
    /// Starts an issuer signing with a fresh key named `kid`, on `port`
    /// (0: any).
    pub fn start(port: u16, kid: &str) -> Self {
        let dir = repo_file("tests/support/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/support/oidc` (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg("issuer.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("KID", kid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (the test issuer)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[issuer] {line}");
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap_or(0));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(port) => Self { child, port },
            Err(_) => {
                let _ = child.kill();
                panic!("the test issuer did not start within 90 s");
            }
        }
    }

    /// `iss` of its tokens.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An access token for `user` (client credentials: the user is the
    /// client; its groups come from issuer.mjs).
    pub async fn token(&self, user: &str) -> String {
        let form = format!(
            "grant_type=client_credentials&client_id={user}&client_secret=secret-{user}&scope=api&resource=urn%3Atether"
        );
        let req = Request::post(format!("{}/token", self.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body(form))
            .unwrap();
        let (status, _, bytes) = send(req).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        doc["access_token"].as_str().unwrap().to_owned()
    }

    /// Its published keys.
    pub async fn jwks(&self) -> serde_json::Value {
        let (status, _, bytes) = get(&format!("{}/jwks", self.url()), &[]).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Stops it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.kill();
    }
}
