//! A relay and an agent built in the test's own process, over the library
//! entry points [`tether_relay::Relay::bind`] and
//! [`tether_agent::Agent::start`]: addresses come from the bound objects,
//! not from log lines, and sessions are counted in the relay's registry.
//!
//! For tests that need no separate process: nothing is killed, frozen or
//! signalled, and no log line is read. The rest (and at least one test of
//! each feature area) keeps the real binaries of [`super::Relay`] and
//! [`super::Agent`].
//!
//! ```ignore
//! let s = in_process::stack().route("api", r#"["GET"]"#, r#"["/echo/**"]"#).start().await;
//! let (status, _, _) = get(&s.relay.url("/v1/routes/api/echo/x"), &[s.auth_ref()]).await;
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_relay::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{Upstream, until};

/// What [`stack`] builds: relay config lines and the agent's routes.
#[derive(Default)]
pub struct StackBuilder {
    relay_extra: String,
    routes: Vec<(String, String, String)>,
}

/// A stack to build: a relay, the sample upstream and one agent
/// (`agent-a`, account `acme`) whose routes point at that upstream; by
/// default the route `sample` (GET, POST on `/**`).
pub fn stack() -> StackBuilder {
    StackBuilder::default()
}

impl StackBuilder {
    /// Appends `toml` to the relay's configuration (top-level keys and
    /// tables other than `[listen]` and `[store]`).
    pub fn relay(mut self, toml: &str) -> Self {
        self.relay_extra.push_str(toml);
        self.relay_extra.push('\n');
        self
    }

    /// A route `name` to the upstream instead of the default one (TOML
    /// arrays: `r#"["GET"]"#`).
    pub fn route(mut self, name: &str, methods: &str, paths: &str) -> Self {
        self.routes
            .push((name.to_owned(), methods.to_owned(), paths.to_owned()));
        self
    }

    /// Starts everything and returns once the agent's sessions are
    /// registered.
    pub async fn start(self) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let (token, key) = {
            let store = tether_relay::store::Store::open(&store_url).await.unwrap();
            let token = store.create_token("acme", None, None).await.unwrap();
            let key = store.create_key("acme", None).await.unwrap();
            (token.secret, key.secret)
        };

        let relay_text = format!(
            "drain_timeout = \"2s\"\n{}\n[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [store]\nurl = \"{store_url}\"\n",
            self.relay_extra
        );
        let relay_path = dir.path().join("relay.toml");
        let relay_config = tether_relay::config::RelayConfig::parse(&relay_path, &relay_text)
            .unwrap_or_else(|e| panic!("{e}"));
        let shutdown = CancellationToken::new();
        let bound = tether_relay::Relay::bind(relay_config, shutdown.clone())
            .await
            .unwrap();
        let relay = InProcessRelay {
            public: bound.public_addr(),
            admin: bound.admin_addr(),
            registry: bound.registry(),
        };
        tokio::spawn(bound.run());

        let upstream = Upstream::start().await;
        let routes: String = if self.routes.is_empty() {
            upstream.route("sample", r#"["GET", "POST"]"#, r#"["/**"]"#)
        } else {
            self.routes
                .iter()
                .map(|(name, methods, paths)| upstream.route(name, methods, paths))
                .collect()
        };
        let agent_text = format!(
            "drain_timeout = \"2s\"\n[relay]\nurl = \"ws://{}/v1/agent/connect\"\ntoken = \"{token}\"\n\
             [agent]\nname = \"agent-a\"\n\n{routes}\n",
            relay.public
        );
        let agent_path = dir.path().join("agent.toml");
        let no_env: BTreeMap<String, String> = BTreeMap::new();
        let agent_config =
            tether_agent::config::AgentConfig::parse(&agent_path, &agent_text, &no_env)
                .unwrap_or_else(|e| panic!("{e}"));
        let connections = agent_config.relay.connections as usize;
        let agent = tether_agent::Agent::start(agent_config).await.unwrap();
        tokio::spawn(agent.run(shutdown.clone()));
        relay.wait_sessions(connections).await;

        Stack {
            relay,
            upstream,
            key,
            token,
            shutdown,
            _dir: dir,
        }
    }
}

/// A relay running in this process.
pub struct InProcessRelay {
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    registry: Arc<Registry>,
}

impl InProcessRelay {
    /// `http://public/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// Waits until exactly `n` agent sessions are registered.
    pub async fn wait_sessions(&self, n: usize) {
        until(Duration::from_secs(10), "agent sessions registered", || {
            let registered = self.registry.len();
            async move { registered == n }
        })
        .await;
    }
}

/// A relay, the sample upstream and one agent in this process, stopped
/// when dropped.
pub struct Stack {
    /// The relay.
    pub relay: InProcessRelay,
    /// The upstream the agent's routes point at.
    pub upstream: Upstream,
    /// An API key of the agent's account.
    pub key: String,
    /// The agent's token.
    pub token: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// `Proxy-Authorization` with this stack's key.
    pub fn auth(&self) -> (&'static str, String) {
        ("proxy-authorization", format!("Bearer {}", self.key))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
