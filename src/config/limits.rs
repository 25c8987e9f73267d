//! `[limits]` and the `upgrades` lists of routes and `[forward]`.

use std::time::Duration;

use serde::Deserialize;
use tether_wire::upgrade::UpgradeToken;
use toml::Spanned;

use super::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_upgraded: Option<Spanned<i64>>,
    #[serde(default, with = "humantime_serde")]
    upgrade_idle_timeout: Option<Duration>,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Upgraded connections (WebSocket, SPDY) open at once on this agent;
    /// above it an upgrade is answered 429 `rate_limited`.
    pub max_upgraded: usize,
    /// An upgraded connection with no byte either way for this long is
    /// closed, so that forgotten terminals do not hold upstream sessions.
    pub upgrade_idle_timeout: Duration,
}

/// Default `[limits] max_upgraded`.
pub const DEFAULT_MAX_UPGRADED: usize = 1000;

/// Default `[limits] upgrade_idle_timeout`.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upgraded: DEFAULT_MAX_UPGRADED,
            upgrade_idle_timeout: DEFAULT_UPGRADE_IDLE_TIMEOUT,
        }
    }
}

/// `[limits]` validated (`span`: the table).
pub(super) fn validate(raw: Option<Spanned<RawLimits>>, problems: &mut Problems<'_>) -> Limits {
    let mut limits = Limits::default();
    let Some(raw) = raw else {
        return limits;
    };
    let span = raw.span();
    let raw = raw.into_inner();
    if let Some(max) = raw.max_upgraded {
        match usize::try_from(*max.get_ref()) {
            Ok(n) => limits.max_upgraded = n,
            Err(_) => problems.at(
                max.span(),
                "limits.max_upgraded must be 0 (no upgrades) or more",
            ),
        }
    }
    if let Some(idle) = raw.upgrade_idle_timeout {
        if idle.is_zero() {
            problems.at(span, "limits.upgrade_idle_timeout must be above zero");
        }
        limits.upgrade_idle_timeout = idle;
    }
    limits
}

/// A route's or `[forward]`'s `upgrades` (`key` names it in errors): each
/// a protocol token (`websocket`, `SPDY/3.1`), never `h2c`, none twice.
pub(super) fn validate_upgrades(
    key: &str,
    raw: Option<&Vec<Spanned<String>>>,
    problems: &mut Problems<'_>,
) -> Vec<UpgradeToken> {
    let mut tokens: Vec<UpgradeToken> = Vec::new();
    for entry in raw.into_iter().flatten() {
        let parsed = UpgradeToken::parse(entry.get_ref()).map_err(|e| format!("{key}: {e}"));
        let Some(token) = problems.take(entry.span(), parsed) else {
            continue;
        };
        if tokens.iter().any(|t| t.matches(token.as_str())) {
            problems.at(
                entry.span(),
                format!("{key}: {:?} is listed twice", entry.get_ref()),
            );
            continue;
        }
        tokens.push(token);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::config::{AgentConfig, ConfigError};

    const BASE: &str = "[relay]\nurl = \"wss://relay.example.com/v1/agent/connect\"\ntoken = \"tta_x\"\n\
                        [agent]\nname = \"a\"\n";

    fn parse(extra: &str) -> Result<AgentConfig, ConfigError> {
        let text = format!("{BASE}{extra}");
        AgentConfig::parse(
            Path::new("a.toml"),
            &text,
            &BTreeMap::<String, String>::new(),
        )
    }

    fn problems(extra: &str) -> String {
        parse(extra).unwrap_err().to_string()
    }

    #[test]
    fn upgrades_default_to_none_and_limits_to_their_defaults() {
        let c = parse("[routes.r]\nurl = \"http://x\"\npaths = [\"/**\"]\n").unwrap();
        assert!(c.routes["r"].upgrades.is_empty());
        assert!(c.forward_upgrades.is_empty());
        assert_eq!(c.limits.max_upgraded, 1000);
        assert_eq!(c.limits.upgrade_idle_timeout.as_secs(), 3600);
        let c = parse(
            "[routes.r]\nurl = \"http://x\"\npaths = [\"/**\"]\nupgrades = [\"websocket\", \"SPDY/3.1\"]\n\
             [limits]\nmax_upgraded = 0\nupgrade_idle_timeout = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(c.routes["r"].upgrades.len(), 2);
        assert_eq!(c.limits.max_upgraded, 0);
    }

    #[test]
    fn bad_upgrades_and_limits_name_file_and_line() {
        let e = problems(
            "[routes.r]\nurl = \"http://x\"\npaths = [\"/**\"]\n\
             upgrades = [\"websocket\", \"h2c\", \"a b\", \"WebSocket\"]\n\
             [forward]\nallow = [\"x.internal\"]\nupgrades = [\"h2c\"]\n\
             [limits]\nmax_upgraded = -1\nupgrade_idle_timeout = \"0s\"\n",
        );
        assert!(e.contains("a.toml:9:26: routes.r.upgrades"), "{e}");
        assert!(e.contains("routes.r.upgrades: h2c is never allowed"), "{e}");
        assert!(
            e.contains("routes.r.upgrades: \"a b\" is not an upgrade protocol"),
            "{e}"
        );
        assert!(e.contains("\"WebSocket\" is listed twice"), "{e}");
        assert!(e.contains("forward.upgrades: h2c is never allowed"), "{e}");
        assert!(e.contains("limits.max_upgraded"), "{e}");
        assert!(
            e.contains("limits.upgrade_idle_timeout must be above zero"),
            "{e}"
        );
        assert!(problems("[limits]\nmax_upgrades = 3\n").contains("unknown field"));
    }
}
