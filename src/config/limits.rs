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
            Err(_) => problems.at(max.span(), "limits.max_upgraded: 0 (no upgrades) or more"),
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
