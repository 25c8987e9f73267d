//! `[forward]`: the targets `/v1/forward/…` may reach, and the headers set
//! per target.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use tether_wire::upgrade::UpgradeToken;
use toml::Spanned;

use super::routes::validate_headers;
use super::{Problems, RouteHeader};
use crate::forward::{Entry, ForwardPolicy};
use crate::secrets::placeholder::Origin;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    connect_ports: Option<Vec<Spanned<i64>>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<String>>>,
    upgrades: Option<Vec<Spanned<String>>>,
}

/// `[forward.headers."scheme://host[:port]"]`: headers per target origin.
pub type ForwardHeaders = Vec<(Origin, Vec<RouteHeader>)>;

/// `[forward]` validated (`span`: the table): the policy, and the headers
/// per target origin. Every problem recorded; what is valid is kept.
pub(super) fn validate(
    raw: RawForward,
    span: Range<usize>,
    secrets: &BTreeSet<String>,
    problems: &mut Problems<'_>,
) -> (ForwardPolicy, ForwardHeaders, Vec<UpgradeToken>) {
    let mut entries = |list: &[Spanned<String>], key: &str| -> Vec<Entry> {
        list.iter()
            .filter_map(|e| {
                let entry = Entry::parse(e.get_ref()).map_err(|m| format!("forward.{key}: {m}"));
                problems.take(e.span(), entry)
            })
            .collect()
    };
    let allow = entries(&raw.allow, "allow");
    let deny = entries(&raw.deny, "deny");
    let connect_ports = match &raw.connect_ports {
        Some(ports) => ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(*p.get_ref())
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| "forward.connect_ports: 1 to 65535".to_owned());
                problems.take(p.span(), port)
            })
            .collect(),
        None => vec![443],
    };
    let mut headers = Vec::new();
    for (origin, table) in &raw.headers {
        let key = format!("forward.headers.{:?}", origin.get_ref());
        let parsed = problems.take(
            origin.span(),
            Origin::parse(origin.get_ref()).map_err(|m| format!("{key}: {m}")),
        );
        let list = validate_headers(&key, table, secrets, false, problems);
        if let Some(parsed) = parsed {
            headers.push((parsed, list));
        }
    }
    let upgrades =
        super::limits::validate_upgrades("forward.upgrades", raw.upgrades.as_ref(), problems);
    if raw.allow.is_empty() && !raw.headers.is_empty() {
        problems.at(
            span,
            "forward.headers without forward.allow: forward mode is off",
        );
    }
    (
        ForwardPolicy {
            allow,
            deny,
            connect_ports,
            admin: None,
            services: Vec::new(),
        },
        headers,
        upgrades,
    )
}
