//! `[relay]`: where the relay is, the token, the proxy and the timers.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;
use tether_wire::protocol::CONNECT_PATH;
use toml::Spanned;

use super::{Env, Problems, RelaySettings, TokenSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    url: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    connections: Option<Spanned<u32>>,
    #[serde(default)]
    accept_rotation: bool,
    ping_interval: Option<Spanned<String>>,
    ping_timeout: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    proxy_username: Option<Spanned<String>>,
    proxy_password_file: Option<Spanned<PathBuf>>,
    client_cert_file: Option<Spanned<PathBuf>>,
    client_key_file: Option<Spanned<PathBuf>>,
}

/// Defaults of `[relay]`: a dead or frozen relay is noticed within
/// interval + timeout (30 s); reconnect delays stop growing at 30 s.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// `[relay]` validated; every problem recorded.
pub(super) fn validate(
    raw: Spanned<RawRelay>,
    env: &impl Env,
    problems: &mut Problems<'_>,
) -> Option<RelaySettings> {
    let section = raw.span();
    let relay = raw.into_inner();
    let url = match (env.var("TETHER_RELAY_URL"), &relay.url) {
        (Some(url), _) => problems.take(
            section.clone(),
            parse_relay_url(&url).map_err(|m| format!("TETHER_RELAY_URL: {m}")),
        ),
        (None, Some(url)) => problems.take(
            url.span(),
            parse_relay_url(url.get_ref()).map_err(|m| format!("relay.url: {m}")),
        ),
        (None, None) => {
            problems.at(section.clone(), "[relay] url is required");
            None
        }
    };
    let token = token_source(&relay, env, section.clone(), problems);
    let connections = match &relay.connections {
        Some(c) if !(1..=16).contains(c.get_ref()) => {
            problems.at(c.span(), "relay.connections must be 1 to 16");
            None
        }
        Some(c) => Some(*c.get_ref()),
        None => Some(2),
    };
    let ping_interval = duration(
        &relay.ping_interval,
        "ping_interval",
        PING_INTERVAL,
        problems,
    );
    let ping_timeout = duration(&relay.ping_timeout, "ping_timeout", PING_TIMEOUT, problems);
    let backoff_max = duration(&relay.backoff_max, "backoff_max", BACKOFF_MAX, problems);
    let proxy = match relay_proxy(&relay, url.as_ref(), env) {
        Ok(proxy) => Some(proxy),
        Err((span, m)) => {
            problems.at(span.unwrap_or(section.clone()), m);
            None
        }
    };
    let client_cert = match (&relay.client_cert_file, &relay.client_key_file) {
        (Some(cert), Some(key)) => Some(Some((cert.get_ref().clone(), key.get_ref().clone()))),
        (None, None) => Some(None),
        (Some(s), None) => {
            problems.at(
                s.span(),
                "relay.client_cert_file needs relay.client_key_file",
            );
            None
        }
        (None, Some(s)) => {
            problems.at(
                s.span(),
                "relay.client_key_file needs relay.client_cert_file",
            );
            None
        }
    };
    Some(RelaySettings {
        url: url?,
        token: token?,
        ca_file: relay.ca_file.map(Spanned::into_inner),
        connections: connections?,
        accept_rotation: relay.accept_rotation,
        ping_interval: ping_interval?,
        ping_timeout: ping_timeout?,
        backoff_max: backoff_max?,
        proxy: proxy?,
        client_cert: client_cert?,
    })
}

fn token_source(
    relay: &RawRelay,
    env: &impl Env,
    section: Range<usize>,
    problems: &mut Problems<'_>,
) -> Option<TokenSource> {
    match (env.var("TETHER_TOKEN"), &relay.token, &relay.token_file) {
        (_, Some(t), Some(_)) => {
            problems.at(t.span(), "set relay.token or relay.token_file, not both");
            None
        }
        (Some(t), _, _) => Some(TokenSource::Inline(t.trim().to_owned().into())),
        (None, Some(t), None) => Some(TokenSource::Inline(t.get_ref().trim().to_owned().into())),
        (None, None, Some(f)) => Some(TokenSource::File(f.get_ref().clone())),
        (None, None, None) => match env.var("CREDENTIALS_DIRECTORY") {
            // systemd's LoadCredential=token:...
            Some(dir) => Some(TokenSource::File(Path::new(&dir).join("token"))),
            None => {
                problems.at(
                    section,
                    "[relay] needs token_file, token, or the TETHER_TOKEN environment variable",
                );
                None
            }
        },
    }
}

fn duration(
    field: &Option<Spanned<String>>,
    key: &str,
    default: Duration,
    problems: &mut Problems<'_>,
) -> Option<Duration> {
    let Some(text) = field else {
        return Some(default);
    };
    let parsed = match humantime::parse_duration(text.get_ref()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("relay.{key} must be above zero")),
        Err(e) => Err(format!("relay.{key}: {e} (write e.g. \"10s\")")),
    };
    problems.take(text.span(), parsed)
}

/// A relay URL the agent can dial: `wss://` (or `ws://`), a host, no
/// credentials, and the connect path.
pub(super) fn parse_relay_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("wss" | "ws") => {}
        _ => return Err("must start with wss:// (or ws:// for unencrypted)".into()),
    }
    let Some(host) = uri.host() else {
        return Err("has no host".into());
    };
    // The URL is logged at every connect: it must never carry credentials.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("credentials in the URL are not allowed; use token_file".into());
    }
    // Without the path the relay answers 404 at every connect, which
    // reads like a network problem; behind a reverse proxy a prefix is
    // fine as long as the path ends with it.
    if !uri.path().ends_with(CONNECT_PATH) {
        let authority = uri.authority().map_or(host, |a| a.as_str());
        return Err(format!(
            "the path must end with {CONNECT_PATH} (e.g. {}://{authority}{CONNECT_PATH})",
            uri.scheme_str().unwrap_or("wss"),
        ));
    }
    Ok(uri)
}

type SpannedError = (Option<Range<usize>>, String);

/// `[relay] proxy` (with `proxy_username` / `proxy_password_file`), else
/// the environment's proxy for the relay URL.
fn relay_proxy(
    relay: &RawRelay,
    url: Option<&Uri>,
    env: &impl Env,
) -> Result<Option<crate::egress::Proxy>, SpannedError> {
    use crate::egress::{ProxyAuth, parse_proxy_url, proxy_from_env};
    let file_auth = match (&relay.proxy_username, &relay.proxy_password_file) {
        (Some(user), Some(file)) => Some(ProxyAuth::File {
            username: user.get_ref().clone(),
            password_file: file.get_ref().clone(),
        }),
        (None, None) => None,
        (Some(s), None) => {
            return Err((
                Some(s.span()),
                "relay.proxy_username needs relay.proxy_password_file".into(),
            ));
        }
        (None, Some(s)) => {
            return Err((
                Some(s.span()),
                "relay.proxy_password_file needs relay.proxy_username".into(),
            ));
        }
    };
    let mut proxy = match (&relay.proxy, url) {
        (Some(text), _) => {
            let proxy = parse_proxy_url(text.get_ref())
                .map_err(|m| (Some(text.span()), format!("relay.proxy: {m}")))?;
            if proxy.auth.is_some() {
                return Err((
                    Some(text.span()),
                    "relay.proxy: put the password in proxy_password_file, not in the URL (it is logged)"
                        .into(),
                ));
            }
            Some(proxy)
        }
        (None, Some(url)) => proxy_from_env(
            env,
            url.scheme_str().unwrap_or("wss"),
            url.host().unwrap_or_default(),
        )
        .map_err(|m| (None, m))?,
        // The URL's own problem is reported already.
        (None, None) => None,
    };
    if let (Some(p), Some(auth)) = (proxy.as_mut(), file_auth) {
        p.auth = Some(auth);
    }
    Ok(proxy)
}
