//! `[routes.NAME]`, and the headers routes and forward targets set.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use tether_wire::protocol::valid_route_name;
use toml::Spanned;

use super::{DEFAULT_ROUTE_TIMEOUT, Problems, Route, RouteHeader};
use crate::identity::config::{IdentitySettings, RawRouteAccess};
use crate::policy::{PathRule, RoutePolicy};
use crate::secrets::placeholder::{Origin, Template};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    url: Spanned<String>,
    methods: Option<Vec<Spanned<String>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    keys: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_override_headers: bool,
    #[serde(default)]
    upstream_http2: bool,
    users: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<String>>>,
    identity: Option<Spanned<String>>,
    forward_identity: Option<Spanned<bool>>,
    policy: Option<Spanned<PathBuf>>,
    upgrades: Option<Vec<Spanned<String>>>,
}

/// `[routes.NAME]` validated (`span`: the table); every problem recorded.
/// `identity`: the `[identity]` section, if any.
pub(super) fn validate(
    name: &str,
    span: Range<usize>,
    raw: RawRoute,
    secrets: &BTreeSet<String>,
    identity: Option<&IdentitySettings>,
    problems: &mut Problems<'_>,
) -> Option<Route> {
    let before = problems.found.len();
    if !valid_route_name(name) {
        problems.at(
            span.clone(),
            format!("route name {name:?}: use 1-64 of A-Z a-z 0-9 _ -"),
        );
    } else if crate::metrics::RESERVED_ROUTE_LABELS.contains(&name) {
        problems.at(
            span.clone(),
            format!("route name {name:?} is reserved (a metrics label of its own)"),
        );
    }
    let upstream = problems.take(
        raw.url.span(),
        upstream_url(raw.url.get_ref()).map_err(|m| format!("routes.{name}.url: {m}")),
    );

    let methods = match &raw.methods {
        None => vec![Method::GET, Method::HEAD],
        Some(list) => list
            .iter()
            .filter_map(|m| {
                let upper = m.get_ref().to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                    format!("routes.{name}.methods: {:?} is not a method", m.get_ref())
                });
                problems.take(m.span(), method)
            })
            .collect(),
    };
    // A route without paths would deny every request: surely a mistake,
    // refused here rather than found by callers' 403s.
    let paths = match &raw.paths {
        Some(list) if !list.get_ref().is_empty() => list
            .get_ref()
            .iter()
            .filter_map(|p| {
                let rule =
                    PathRule::parse(p.get_ref()).map_err(|m| format!("routes.{name}.paths: {m}"));
                problems.take(p.span(), rule)
            })
            .collect(),
        Some(list) => {
            problems.at(
                list.span(),
                format!("routes.{name}.paths is empty: the route would deny every request; list the paths callers may use (\"/**\" for all)"),
            );
            Vec::new()
        }
        None => {
            problems.at(
                span.clone(),
                format!("routes.{name} has no paths: the route would deny every request; add e.g. paths = [\"/api/**\"] (\"/**\" for all)"),
            );
            Vec::new()
        }
    };
    let access = crate::identity::config::validate_route(
        name,
        span.clone(),
        RawRouteAccess {
            users: raw.users,
            groups: raw.groups,
            identity: raw.identity,
            forward_identity: raw.forward_identity,
            policy: raw.policy,
        },
        identity.is_some(),
    )
    .map_err(|found| found.into_iter().for_each(|(s, m)| problems.at(s, m)))
    .unwrap_or_default();
    let headers = validate_headers(
        &format!("routes.{name}.headers"),
        &raw.headers,
        secrets,
        access.required,
        problems,
    );
    if let Some(identity) = identity
        && access.forward_identity
        && headers.iter().any(|h| h.name == identity.header)
    {
        problems.at(
            span.clone(),
            format!(
                "routes.{name}: forward_identity with a route header {} of the same name",
                identity.header
            ),
        );
    }
    let timeout = raw.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    if timeout.is_zero() {
        problems.at(
            span.clone(),
            format!("routes.{name}.timeout must be above zero"),
        );
    }
    let keys = raw.keys.as_ref().map(|list| {
        list.iter()
            .filter_map(|k| {
                let id = k.get_ref();
                let valid = if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(id.to_ascii_lowercase())
                } else {
                    Err(format!(
                        "routes.{name}.keys: {id:?} is not an API key id (16 hex digits, as `keys list` shows)"
                    ))
                };
                problems.take(k.span(), valid)
            })
            .collect()
    });
    let upgrades = super::limits::validate_upgrades(
        &format!("routes.{name}.upgrades"),
        raw.upgrades.as_ref(),
        problems,
    );
    if raw.upstream_http2 && !upgrades.is_empty() {
        // An upgrade is an HTTP/1.1 handshake on a dedicated connection;
        // an HTTP/2-only upstream has no such thing.
        problems.at(
            span.clone(),
            format!("routes.{name}: upgrades cannot be used with upstream_http2 = true"),
        );
    }
    let (origin, target, base_path) = upstream?;
    if problems.found.len() > before {
        return None;
    }
    Some(Route {
        name: name.to_owned(),
        origin,
        target,
        base_path,
        policy: RoutePolicy::new(methods, paths),
        headers,
        ca_file: raw.ca_file.map(Spanned::into_inner),
        timeout,
        keys,
        allow_override_headers: raw.allow_override_headers,
        upstream_http2: raw.upstream_http2,
        access,
        upgrades,
    })
}

/// A route's `url`: its origin (as written and canonical) and path prefix
/// without trailing `/`.
fn upstream_url(url: &str) -> Result<(String, Origin, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err("must be http:// or https://".into());
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host".into());
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not allowed; use headers".into());
    }
    if uri.query().is_some() {
        return Err("may not have a query".into());
    }
    let origin = format!("{scheme}://{authority}");
    let target = Origin::parse(&origin)?;
    Ok((origin, target, uri.path().trim_end_matches('/').to_owned()))
}

/// Headers the agent's own config sets (route `headers`, forward
/// `headers`): names valid, placeholders naming declared secrets, user
/// placeholders only where identity is required (`user_allowed`). Every
/// problem is recorded; the valid headers are returned.
pub(super) fn validate_headers(
    key: &str,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
    secrets: &BTreeSet<String>,
    user_allowed: bool,
    problems: &mut Problems<'_>,
) -> Vec<RouteHeader> {
    let mut headers = Vec::new();
    for (name, value) in raw {
        let Ok(header_name) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
            problems.at(
                name.span(),
                format!("{key}: {:?} is not a header name", name.get_ref()),
            );
            continue;
        };
        let here = format!("{key}.{}", name.get_ref());
        let template = match Template::parse(value.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                problems.at(value.span(), format!("{here}: {e}"));
                continue;
            }
        };
        if let Err(m) = crate::identity::headers::check_template(&template, user_allowed) {
            problems.at(value.span(), format!("{here}: {m}"));
            continue;
        }
        let mut known = true;
        for secret in template.secrets() {
            if !secrets.contains(secret) {
                problems.at(
                    value.span(),
                    format!("{here}: unknown secret {secret:?} (no [secrets.{secret}])"),
                );
                known = false;
            }
        }
        let literal = if template.is_literal() {
            match HeaderValue::from_str(value.get_ref()) {
                Ok(v) => Some(v),
                Err(_) => {
                    problems.at(value.span(), format!("{here}: invalid header value"));
                    continue;
                }
            }
        } else {
            None
        };
        if known {
            headers.push(RouteHeader {
                name: header_name,
                template,
                literal,
            });
        }
    }
    headers
}
