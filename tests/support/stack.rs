//! The sample upstream in this process, and the usual stack of real
//! processes around it: a relay and one agent.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::{Agent, Relay, get};

/// An in-process sample upstream, stopped on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// On `addr` (a test's own network namespace may have more addresses
    /// than loopback).
    pub async fn start_on(addr: &str) -> Self {
        let shutdown = CancellationToken::new();
        let addr = tether_sample_upstream::start(addr.parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        Self { addr, shutdown }
    }

    /// Requests this upstream has answered.
    pub async fn count(&self) -> u64 {
        let (_, _, body) = get(&format!("http://{}/__count", self.addr), &[]).await;
        String::from_utf8_lossy(&body).parse().unwrap()
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
    pub token: String,
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
            token,
        }
    }

    /// `Proxy-Authorization` with this stack's key.
    pub fn auth(&self) -> (&'static str, String) {
        ("proxy-authorization", format!("Bearer {}", self.key))
    }
}
