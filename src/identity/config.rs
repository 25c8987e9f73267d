//! `[identity]` and the routes' identity keys (`users`, `groups`,
//! `identity`, `forward_identity`, `policy`), as written and validated.
//!
//! The validators return plain `Result<_, String>` problems with the span
//! they belong to, so `crate::config` records them with file:line like
//! every other section.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Uri};
use serde::Deserialize;
use toml::Spanned;

use crate::egress::Proxy;
use crate::env::Env;

/// `[identity]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    issuer: Spanned<String>,
    jwks_url: Option<Spanned<String>>,
    jwks_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    audiences: Vec<Spanned<String>>,
    header: Option<Spanned<String>>,
    user_claim: Option<Spanned<String>>,
    groups_claim: Option<Spanned<String>>,
    #[serde(default, with = "humantime_serde")]
    leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    jwks_refresh: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    jwks_max_age: Option<Duration>,
    ca_file: Option<Spanned<PathBuf>>,
}

/// Where the issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched by the agent itself (https, or http to a loopback host).
    Url(Uri),
    /// A local JWKS document, re-read at every refresh.
    File(PathBuf),
}

/// `[identity]` validated.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// `iss` must equal this.
    pub issuer: String,
    /// The issuer's keys.
    pub keys: KeySource,
    /// `aud` must contain one of these (not checked when empty).
    pub audiences: Vec<String>,
    /// The header the token arrives in (`Bearer <token>`).
    pub header: HeaderName,
    /// The claim naming the user.
    pub user_claim: String,
    /// The claim listing the user's groups.
    pub groups_claim: String,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Tokens issued longer ago than this are refused.
    pub max_age: Option<Duration>,
    /// How often the keys are fetched again.
    pub jwks_refresh: Duration,
    /// How long fetched keys stay usable while the issuer cannot be
    /// reached; then requests needing identity get 502.
    pub jwks_max_age: Duration,
    /// Extra trust roots for the JWKS URL.
    pub ca_file: Option<PathBuf>,
    /// The proxy the JWKS URL is reached through (`HTTPS_PROXY` unless
    /// `NO_PROXY` names the host; never for a loopback host).
    pub proxy: Option<Proxy>,
}

impl IdentitySettings {
    /// Whether `other` verifies the same tokens against the same keys
    /// fetched the same way (a reload can then keep the running verifier,
    /// its keys and its cache).
    pub fn same_as(&self, other: &Self) -> bool {
        let proxy = |s: &Self| s.proxy.as_ref().map(ToString::to_string);
        self.issuer == other.issuer
            && self.keys == other.keys
            && self.audiences == other.audiences
            && self.header == other.header
            && self.user_claim == other.user_claim
            && self.groups_claim == other.groups_claim
            && self.leeway == other.leeway
            && self.max_age == other.max_age
            && self.jwks_refresh == other.jwks_refresh
            && self.jwks_max_age == other.jwks_max_age
            && self.ca_file == other.ca_file
            && proxy(self) == proxy(other)
    }

    /// The verification rules for [`super::verify::verify`].
    pub fn rules(&self) -> super::verify::Rules {
        super::verify::Rules {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            user_claim: self.user_claim.clone(),
            groups_claim: self.groups_claim.clone(),
            leeway: self.leeway,
            max_age: self.max_age,
        }
    }
}

/// Headers the token may not arrive in: the agent's own, hop-by-hop
/// fields, the relay's caller credentials, routing and cookies.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "cookie",
];

/// `[identity]` validated; each problem with the span it belongs to.
pub fn validate(
    raw: RawIdentity,
    span: Range<usize>,
    env: &impl Env,
) -> Result<IdentitySettings, Vec<(Range<usize>, String)>> {
    let mut problems = Vec::new();
    let issuer = raw.issuer.get_ref().trim().to_owned();
    if issuer.is_empty() {
        problems.push((raw.issuer.span(), "identity.issuer is empty".to_owned()));
    }
    let mut proxy = None;
    let keys = match (&raw.jwks_url, &raw.jwks_file) {
        (Some(url), None) => match jwks_url(url.get_ref()) {
            Ok(uri) => {
                let host = uri.host().unwrap_or_default();
                if !is_loopback(host) {
                    match crate::egress::proxy_from_env(env, "wss", host) {
                        Ok(p) => proxy = p,
                        Err(m) => problems.push((url.span(), format!("identity.jwks_url: {m}"))),
                    }
                }
                Some(KeySource::Url(uri))
            }
            Err(m) => {
                problems.push((url.span(), format!("identity.jwks_url: {m}")));
                None
            }
        },
        (None, Some(file)) => Some(KeySource::File(file.get_ref().clone())),
        (Some(url), Some(_)) => {
            problems.push((
                url.span(),
                "identity: jwks_url and jwks_file both set; use one".to_owned(),
            ));
            None
        }
        (None, None) => {
            problems.push((
                span.clone(),
                "[identity] needs jwks_url or jwks_file (the issuer's keys)".to_owned(),
            ));
            None
        }
    };
    let mut audiences = Vec::new();
    for a in &raw.audiences {
        if a.get_ref().is_empty() {
            problems.push((a.span(), "identity.audiences: empty audience".to_owned()));
        } else {
            audiences.push(a.get_ref().clone());
        }
    }
    let header = match &raw.header {
        None => Some(http::header::AUTHORIZATION),
        Some(h) => match token_header(h.get_ref()) {
            Ok(name) => Some(name),
            Err(m) => {
                problems.push((h.span(), format!("identity.header: {m}")));
                None
            }
        },
    };
    let claim =
        |c: &Option<Spanned<String>>, key: &str, default: &str, problems: &mut Vec<_>| match c {
            None => default.to_owned(),
            Some(c) if c.get_ref().trim().is_empty() => {
                problems.push((c.span(), format!("identity.{key} is empty")));
                String::new()
            }
            Some(c) => c.get_ref().clone(),
        };
    let user_claim = claim(&raw.user_claim, "user_claim", "sub", &mut problems);
    let groups_claim = claim(&raw.groups_claim, "groups_claim", "ent", &mut problems);
    let jwks_refresh = raw.jwks_refresh.unwrap_or(Duration::from_secs(300));
    let jwks_max_age = raw.jwks_max_age.unwrap_or(Duration::from_secs(24 * 3600));
    if jwks_refresh.is_zero() {
        problems.push((
            span.clone(),
            "identity.jwks_refresh must be above zero".into(),
        ));
    }
    if jwks_max_age < jwks_refresh {
        problems.push((
            span.clone(),
            "identity.jwks_max_age must be at least jwks_refresh (keys would lapse between refreshes)"
                .into(),
        ));
    }
    if raw.max_age.is_some_and(|m| m.is_zero()) {
        problems.push((span.clone(), "identity.max_age must be above zero".into()));
    }
    if raw.ca_file.is_some() && !matches!(keys, Some(KeySource::Url(_))) {
        problems.push((
            raw.ca_file.as_ref().map_or(span.clone(), Spanned::span),
            "identity.ca_file is for jwks_url (an https URL)".into(),
        ));
    }
    match (keys, header) {
        (Some(keys), Some(header)) if problems.is_empty() => Ok(IdentitySettings {
            issuer,
            keys,
            audiences,
            header,
            user_claim,
            groups_claim,
            leeway: raw.leeway.unwrap_or(Duration::from_secs(30)),
            max_age: raw.max_age,
            jwks_refresh,
            jwks_max_age,
            ca_file: raw.ca_file.map(Spanned::into_inner),
            proxy,
        }),
        _ => Err(problems),
    }
}

/// The JWKS URL: https, or http only to a loopback host (the keys decide
/// who is who: they must not travel in the clear across a network).
fn jwks_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("has no host")?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("credentials in the URL are not allowed".into());
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err("must be https:// (http:// only for a loopback host)".into()),
        _ => Err("must be an https:// URL".into()),
    }
}

/// `localhost`, 127.0.0.0/8 or `::1`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The header the token arrives in: a valid name, not one the agent,
/// the relay or HTTP itself owns.
fn token_header(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if header
        .as_str()
        .starts_with(tether_wire::protocol::header::PREFIX)
    {
        return Err(format!(
            "{name:?}: Tether-* headers belong to the relay and agent"
        ));
    }
    if FORBIDDEN_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "{name:?} cannot carry the token (hop-by-hop, the relay's credentials, Host or Cookie)"
        ));
    }
    Ok(header)
}

/// A route's identity keys as written.
#[derive(Debug, Default)]
pub struct RawRouteAccess {
    /// `users = [...]`.
    pub users: Option<Vec<Spanned<String>>>,
    /// `groups = [...]`.
    pub groups: Option<Vec<Spanned<String>>>,
    /// `identity = "required"`.
    pub identity: Option<Spanned<String>>,
    /// `forward_identity = true`.
    pub forward_identity: Option<Spanned<bool>>,
    /// `policy = "file.rego"`.
    pub policy: Option<Spanned<PathBuf>>,
}

/// Who may use a route, beyond its methods and paths.
#[derive(Debug, Clone, Default)]
pub struct RouteAccess {
    /// Whether a verified end-user token is required (set by `users`,
    /// `groups` or `identity = "required"`).
    pub required: bool,
    /// Users allowed by name (exact match).
    pub users: Vec<String>,
    /// Groups allowed (exact, case-sensitive match).
    pub groups: Vec<String>,
    /// Pass the token header on to the upstream.
    pub forward_identity: bool,
    /// `policy = "file.rego"`: evaluated after the other rules.
    pub policy: Option<PathBuf>,
}

impl RouteAccess {
    /// Whether `user` may use the route: with neither `users` nor
    /// `groups` any verified user may; otherwise a match in either list.
    pub fn admits(&self, user: &super::verify::User) -> bool {
        if self.users.is_empty() && self.groups.is_empty() {
            return true;
        }
        self.users.contains(&user.name) || user.groups.iter().any(|g| self.groups.contains(g))
    }
}

/// A route's identity keys validated (`route`: its name, `span`: its
/// table). `identity`: whether `[identity]` is configured.
pub fn validate_route(
    route: &str,
    span: Range<usize>,
    raw: RawRouteAccess,
    identity: bool,
) -> Result<RouteAccess, Vec<(Range<usize>, String)>> {
    let mut problems = Vec::new();
    let mut list = |l: &Option<Vec<Spanned<String>>>, key: &str| -> Vec<String> {
        let mut out = Vec::new();
        for v in l.iter().flatten() {
            if v.get_ref().is_empty() || v.get_ref().chars().any(char::is_control) {
                problems.push((
                    v.span(),
                    format!("routes.{route}.{key}: empty or control characters"),
                ));
            } else {
                out.push(v.get_ref().clone());
            }
        }
        if l.as_ref().is_some_and(Vec::is_empty) {
            problems.push((
                span.clone(),
                format!("routes.{route}.{key} is empty: the route would deny every user"),
            ));
        }
        out
    };
    let users = list(&raw.users, "users");
    let groups = list(&raw.groups, "groups");
    let mut required = raw.users.is_some() || raw.groups.is_some();
    if let Some(mode) = &raw.identity {
        if mode.get_ref() == "required" {
            required = true;
        } else {
            problems.push((
                mode.span(),
                format!("routes.{route}.identity: the only value is \"required\""),
            ));
        }
    }
    let forward_identity = raw.forward_identity.as_ref().is_some_and(|f| *f.get_ref());
    if !identity {
        let key = if raw.users.is_some() {
            Some("users")
        } else if raw.groups.is_some() {
            Some("groups")
        } else if raw.identity.is_some() {
            Some("identity")
        } else if raw.forward_identity.is_some() {
            Some("forward_identity")
        } else {
            None
        };
        if let Some(key) = key {
            problems.push((
                span.clone(),
                format!("routes.{route}.{key} needs an [identity] section"),
            ));
        }
    }
    if problems.is_empty() {
        Ok(RouteAccess {
            required,
            users,
            groups,
            forward_identity,
            policy: raw.policy.map(Spanned::into_inner),
        })
    } else {
        Err(problems)
    }
}
