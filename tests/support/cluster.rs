//! Cluster mode's harness: relay replicas (real processes) on one real
//! PostgreSQL server, a TCP balancer in front of them, and what tests read
//! off them.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, StatusCode};

use super::balancer::Balancer;
use super::{Agent, Postgres, Relay, Upstream, body, client, send, until};
use http_body_util::BodyExt;

/// Replicas on one Postgres, a balancer in front of them, an upstream, a
/// token and a key of account `acme`.
pub struct Cluster {
    pub relays: Vec<Relay>,
    pub balancer: Balancer,
    pub upstream: Upstream,
    pub token: String,
    pub key: String,
    pub pg: Postgres,
    _dir: tempfile::TempDir,
}

pub async fn cluster(replicas: usize) -> Cluster {
    cluster_of(replicas, false).await
}

/// [`cluster`], each replica with a forward-proxy listener if `proxy`.
pub async fn cluster_of(replicas: usize, proxy: bool) -> Cluster {
    build(replicas, proxy, "").await
}

/// [`cluster`] with extra `[listen]` keys on every replica.
pub async fn cluster_listening(replicas: usize, listen: &str) -> Cluster {
    build(replicas, false, listen).await
}

async fn build(replicas: usize, proxy: bool, listen: &str) -> Cluster {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let peer_key = dir.path().join("peer.key");
    std::fs::write(&peer_key, "cluster-test-peer-key-0123456789\n").unwrap();
    let relays: Vec<Relay> = (1..=replicas)
        .map(|i| {
            let id = format!("relay-{i}");
            if proxy {
                Relay::start_replica_with_proxy(&pg.url, &id, &peer_key)
            } else {
                Relay::start_replica_listening(&pg.url, &id, &peer_key, listen)
            }
        })
        .collect();
    let balancer = Balancer::start(relays.iter().map(|r| r.public).collect());
    let upstream = Upstream::start().await;
    let token = relays[0].token("acme");
    let key = relays[0].key("acme");
    Cluster {
        relays,
        balancer,
        upstream,
        token,
        key,
        pg,
        _dir: dir,
    }
}

impl Cluster {
    /// An agent named `name` serving `route` (GET and POST) with
    /// `connections` sessions, dialling `url`.
    pub fn agent_on(&self, url: &str, name: &str, route: &str, connections: u32) -> Agent {
        Agent::spawn(
            &format!(
                "drain_timeout = \"5s\"\n[relay]\nurl = \"{url}\"\ntoken = \"{}\"\nconnections = {connections}\n\
                 ping_interval = \"1s\"\nping_timeout = \"2s\"\n\
                 [agent]\nname = \"{name}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
                self.token,
                self.upstream
                    .route(route, r#"["GET", "POST"]"#, r#"["/**"]"#)
            ),
            &[],
        )
    }

    /// Sessions per replica.
    pub async fn sessions(&self) -> Vec<usize> {
        let mut counts = Vec::new();
        for relay in &self.relays {
            counts.push(relay.sessions().await);
        }
        counts
    }

    pub async fn wait_total(&self, n: usize) {
        until(Duration::from_secs(20), "sessions registered", || async {
            self.sessions().await.iter().sum::<usize>() == n
        })
        .await;
    }
}

/// `method` to `url` with the key, bounded so a hung request fails the
/// test instead of stalling it.
pub async fn call(method: &str, url: &str, key: &str) -> (StatusCode, http::HeaderMap) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("proxy-authorization", format!("Bearer {key}"))
        .body(body(if method == "POST" { "payload" } else { "" }))
        .unwrap();
    let (status, headers, _) = tokio::time::timeout(Duration::from_secs(15), send(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer in 15 s"));
    (status, headers)
}

/// A POST under a replica's kill: its status, or `None` when the answer
/// began and its body was then cut (the replica that held the agent's
/// session died mid-answer: the caller sees an error, never a short body
/// passed off as whole).
pub async fn post_through_failover(url: &str, key: &str) -> Option<StatusCode> {
    let req = Request::builder()
        .method("POST")
        .uri(url)
        .header("proxy-authorization", format!("Bearer {key}"))
        .body(body("payload"))
        .unwrap();
    let answer = async {
        let response = client().request(req).await.expect("request");
        let status = response.status();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        // A body that ended cleanly must be the whole answer: the
        // upstream's echo of this request.
        if status == StatusCode::OK {
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("a 200 whose body is not whole ({e}): {bytes:?}"));
            assert_eq!(doc["body"], "payload", "a 200 that is not this POST's echo");
        }
        Some(status)
    };
    tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .unwrap_or_else(|_| panic!("POST {url}: no answer in 15 s"))
}

/// The replica each slot's latest session is on, from the agent's log.
pub fn replicas_of(agent: &Agent) -> BTreeMap<String, String> {
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let mut by_slot = BTreeMap::new();
    for line in agent.log.lock().unwrap().iter() {
        if (line.contains("session up") || line.contains("new session in use"))
            && let (Some(slot), Some(replica)) = (field(line, "slot="), field(line, "replica="))
        {
            by_slot.insert(slot, replica);
        }
    }
    by_slot
}

pub fn agent_of(headers: &http::HeaderMap) -> String {
    headers
        .get("tether-agent")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The `[cluster] peer_listen` address of `relay`, from its config file.
pub fn peer_listen(relay: &Relay) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(&relay.config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("peer_listen = "))
        .map(|v| v.trim_matches('"').parse().unwrap())
        .expect("peer_listen in the config")
}
