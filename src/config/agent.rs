//! `[agent]` (who this agent is) and `[admin]` (its health and metrics
//! listener).

use std::net::SocketAddr;

use serde::Deserialize;
use tether_wire::protocol::valid_route_name;
use toml::Spanned;

use super::{Env, Identity, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    name: Spanned<String>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    instance: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<Spanned<String>>,
}

/// `[agent]` validated; every problem recorded.
pub(super) fn validate_identity(
    raw: Spanned<RawAgent>,
    env: &impl Env,
    problems: &mut Problems<'_>,
) -> Option<Identity> {
    let agent = raw.into_inner();
    let mut ok = true;
    if !valid_route_name(agent.name.get_ref()) {
        problems.at(agent.name.span(), "agent.name: use 1-64 of A-Z a-z 0-9 _ -");
        ok = false;
    }
    let mut tags = Vec::new();
    for tag in &agent.tags {
        if valid_route_name(tag.get_ref()) {
            tags.push(tag.get_ref().clone());
        } else {
            problems.at(tag.span(), "agent.tags: use 1-64 of A-Z a-z 0-9 _ -");
            ok = false;
        }
    }
    let instance = match &agent.instance {
        Some(i) if i.get_ref().is_empty() || i.get_ref().contains(',') => {
            problems.at(
                i.span(),
                "agent.instance may not be empty or contain a comma",
            );
            None
        }
        Some(i) => Some(i.get_ref().clone()),
        None => Some(hostname(env).unwrap_or_else(|| agent.name.get_ref().clone())),
    };
    let instance = instance?;
    ok.then(|| Identity {
        name: agent.name.into_inner(),
        tags,
        instance,
    })
}

/// `[admin] listen`; `None` when off or invalid (the problem recorded).
pub(super) fn validate_admin(
    raw: Option<RawAdmin>,
    problems: &mut Problems<'_>,
) -> Option<SocketAddr> {
    let listen = raw.and_then(|a| a.listen)?;
    problems.take(
        listen.span(),
        listen
            .get_ref()
            .parse::<SocketAddr>()
            .map_err(|e| format!("admin.listen: {e}")),
    )
}

fn hostname(env: &impl Env) -> Option<String> {
    env.var("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
