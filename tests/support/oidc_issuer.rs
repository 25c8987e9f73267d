#![allow(dead_code, unreachable_pub)]
//! A real OpenID provider (panva's `oidc-provider`, tests/support/oidc/)
//! on 127.0.0.1: JWT access tokens for the test users of issuer.mjs, its
//! keys at `/jwks`. Installed by scripts/test.sh (`npm ci`). Included
//! by the tests that use it (`#[path]`), beside `support`; [`World`] is
//! their relay + upstream + issuer + agent.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};

use crate::support::{Agent, Relay, Upstream, body, get, repo_file, send};

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

/// A relay, one upstream, an issuer and an agent trusting it, with the
/// routes the tests use; `identity_extra`: more `[identity]` keys.
pub struct World {
    pub relay: Relay,
    pub upstream: Upstream,
    pub issuer: Issuer,
    pub agent: Agent,
    pub key: String,
    pub dir: tempfile::TempDir,
}

pub const POLICY: &str = r#"package tether

default allow := false

allow if {
    input.method == "GET"
    "group:default/platform" in input.groups
    not input.headers.authorization
    not input.headers.cookie
}

reason := sprintf("%s may only read\r\n", [input.user]) if input.method != "GET"
reason := "credentials reached the policy" if input.headers.authorization
"#;

impl World {
    pub async fn start(identity_extra: &str) -> Self {
        let issuer = Issuer::start(0, "key-1");
        Self::start_with(issuer, identity_extra, &[]).await
    }

    /// `identity_extra` may set `jwks_url` itself; `env`: the agent's.
    pub async fn start_with(issuer: Issuer, identity_extra: &str, env: &[(&str, &str)]) -> Self {
        let relay = Relay::start("");
        let upstream = Upstream::start().await;
        let token = relay.token("acme");
        let key = relay.key("acme");
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("k8s.rego");
        std::fs::write(&policy, POLICY).unwrap();
        let audit = dir.path().join("audit.jsonl");
        let up = upstream.addr;
        let iss = issuer.url();
        let jwks_url = if identity_extra.contains("jwks_url") {
            String::new()
        } else {
            format!("jwks_url = \"{iss}/jwks\"")
        };
        let config = format!(
            r#"drain_timeout = "2s"
[relay]
url = "{relay_url}"
token = "{token}"

[agent]
name = "agent-a"

[admin]
listen = "127.0.0.1:0"

[audit]
file = "{audit}"

[identity]
issuer = "{iss}"
{jwks_url}
audiences = ["tether"]
groups_claim = "groups"
{identity_extra}

[secrets.k8s_sa]
env = "K8S_SA"

[routes.k8s]
url = "http://{up}"
methods = ["GET", "POST"]
paths = ["/**"]
groups = ["group:default/platform"]
headers = {{ Authorization = "Bearer ${{{{ secrets.k8s_sa }}}}", Impersonate-User = "${{{{ user.name }}}}", Impersonate-Group = "tether:${{{{ user.groups }}}}" }}

[routes.admins]
url = "http://{up}"
paths = ["/**"]
users = ["bob"]
groups = ["group:default/platform-admins-none"]

[routes.open]
url = "http://{up}"
paths = ["/**"]

[routes.passthrough]
url = "http://{up}"
paths = ["/**"]
identity = "required"
forward_identity = true

[routes.policed]
url = "http://{up}"
methods = ["GET", "POST"]
paths = ["/**"]
identity = "required"
policy = "{policy}"

[forward]
allow = ["127.0.0.1/32"]
"#,
            relay_url = relay.agent_url(),
            audit = audit.display(),
            policy = policy.display(),
        );
        let mut env = env.to_vec();
        env.push(("K8S_SA", "sa-token"));
        let agent = Agent::spawn(&config, &env);
        relay.wait_sessions(2).await;
        Self {
            relay,
            upstream,
            issuer,
            agent,
            key,
            dir,
        }
    }

    /// A GET of the relay's `path` with the end-user `token`.
    pub async fn call_path(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        self.request("GET", path, token, &[]).await
    }

    /// A request to `route` with the end-user `token` (if any) and extra
    /// headers.
    pub async fn call(
        &self,
        method: &str,
        route_path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        self.request(method, &format!("/v1/routes/{route_path}"), token, extra)
            .await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(self.relay.url(path))
            .header("proxy-authorization", format!("Bearer {}", self.key));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let (status, headers, bytes) = send(req.body(body("")).unwrap()).await;
        let doc = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, doc)
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn header_values(doc: &serde_json::Value, name: &str) -> Vec<String> {
    doc["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn assert_invalid(
    status: StatusCode,
    headers: &HeaderMap,
    doc: &serde_json::Value,
    token: &str,
) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{doc}");
    assert_eq!(doc["code"], "identity_invalid", "{doc}");
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some("Bearer error=\"invalid_token\"")
    );
    let detail = doc["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("authorization"), "{detail}");
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(
        signature.is_empty() || !detail.contains(signature),
        "the detail echoes the token: {detail}"
    );
}
