//! HTTP Upgrade (RFC 9110 §7.8) through the tunnel: which protocol a
//! caller asks for, and how the agent checks the upstream's 101.
//!
//! The relay reads a caller's HTTP/1.1 `Connection: upgrade` +
//! `Upgrade: <token>` ([`requested`]) and sends the agent an HTTP/2
//! extended CONNECT (RFC 8441) whose `:protocol` is the token; the
//! caller's method travels in [`METHOD_HEADER`], which the relay sets
//! after removing every caller `Tether-*` field. The agent dials the
//! upstream with HTTP/1.1 Upgrade and lets no caller byte through before
//! it has verified the 101 ([`verify_switch`]).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

/// The relay-set field carrying the caller's original method (GET for
/// WebSocket, POST for kubectl's SPDY exec) on the extended CONNECT.
pub const METHOD_HEADER: &str = "tether-upgrade-method";

/// Longest upgrade token accepted (`SPDY/3.1`, `websocket` are short).
const MAX_TOKEN_LEN: usize = 64;

/// A protocol an upgrade asks for (`websocket`, `SPDY/3.1`): an RFC 9110
/// `protocol-name ["/" protocol-version]`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeToken(String);

/// Why an `Upgrade` value (or a configured token) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `name[/version]` of RFC 9110 token characters, or too long.
    #[error("{0:?} is not an upgrade protocol (name[/version], at most 64 characters)")]
    Malformed(String),
    /// `h2c` is never allowed: HTTP/2 towards the upstream is decided by
    /// the route, never by a caller.
    #[error("h2c is never allowed")]
    H2c,
}

impl UpgradeToken {
    /// Parses one token as written.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let valid_part = |p: &str| !p.is_empty() && p.bytes().all(is_tchar);
        let well_formed = text.len() <= MAX_TOKEN_LEN
            && match text.split_once('/') {
                Some((name, version)) => valid_part(name) && valid_part(version),
                None => valid_part(text),
            };
        if !well_formed {
            return Err(TokenError::Malformed(text.chars().take(80).collect()));
        }
        if text
            .split('/')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case("h2c"))
        {
            return Err(TokenError::H2c);
        }
        Ok(Self(text.to_owned()))
    }

    /// The token as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` names the same protocol (case-insensitively).
    pub fn matches(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other.trim())
    }

    /// Whether this is the WebSocket protocol (RFC 6455), whose 101 the
    /// agent checks against the key.
    pub fn is_websocket(&self) -> bool {
        self.0.eq_ignore_ascii_case("websocket")
    }
}

impl std::fmt::Display for UpgradeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Why a caller's upgrade request is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRequestError {
    /// `Connection: upgrade` without an `Upgrade` field.
    #[error("Connection: upgrade without an Upgrade field")]
    NoUpgrade,
    /// Zero or several tokens (`Upgrade: websocket, h2c`).
    #[error("exactly one Upgrade protocol is allowed")]
    NotOne,
    /// The token is malformed or `h2c`.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A body on an upgrade request would reach the upstream before its
    /// 101 was verified.
    #[error("an upgrade request may not have a body")]
    Body,
    /// Only HTTP/1.1 has the Upgrade mechanism.
    #[error("Upgrade needs HTTP/1.1")]
    Version,
}

/// The protocol an HTTP/1.x request asks to switch to: `None` for an
/// ordinary request (no `Connection: upgrade`; a lone `Upgrade` field is
/// hop-by-hop and dropped like any other), else exactly one valid token on
/// a bodiless HTTP/1.1 request.
pub fn requested(
    version: http::Version,
    headers: &HeaderMap,
) -> Result<Option<UpgradeToken>, UpgradeRequestError> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return Ok(None);
    }
    if version != http::Version::HTTP_11 {
        return Err(UpgradeRequestError::Version);
    }
    let mut values = headers.get_all(header::UPGRADE).iter();
    let Some(value) = values.next() else {
        return Err(UpgradeRequestError::NoUpgrade);
    };
    if values.next().is_some() {
        return Err(UpgradeRequestError::NotOne);
    }
    let text = value.to_str().map_err(|_| UpgradeRequestError::NotOne)?;
    let mut tokens = text.split(',').map(str::trim).filter(|t| !t.is_empty());
    let (Some(token), None) = (tokens.next(), tokens.next()) else {
        return Err(UpgradeRequestError::NotOne);
    };
    let token = UpgradeToken::parse(token)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if headers.contains_key(header::TRANSFER_ENCODING) || declared.is_some_and(|n| n != "0") {
        return Err(UpgradeRequestError::Body);
    }
    Ok(Some(token))
}

/// An HTTP/2 extended CONNECT (RFC 8441) from a caller: its `:protocol`,
/// `None` for anything else. Only WebSocket is defined over HTTP/2.
pub fn requested_h2<B>(req: &http::Request<B>) -> Option<Result<UpgradeToken, TokenError>> {
    if req.method() != Method::CONNECT {
        return None;
    }
    let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
    Some(UpgradeToken::parse(protocol.as_str()))
}

/// The caller's method as the relay wrote it in [`METHOD_HEADER`].
pub fn original_method(headers: &HeaderMap) -> Option<Method> {
    let value = headers.get(METHOD_HEADER)?.to_str().ok()?;
    Method::from_bytes(value.as_bytes()).ok()
}

/// Why an upstream's answer to an upgrade is not a switch the agent may
/// pass bytes through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The 101's `Upgrade` does not name the protocol asked for.
    #[error("101 names protocol {got:?}, not {asked:?}")]
    WrongProtocol {
        /// What was asked.
        asked: String,
        /// What the 101 said (empty when absent).
        got: String,
    },
    /// WebSocket: `Sec-WebSocket-Accept` does not match the key.
    #[error("101 has a wrong or missing Sec-WebSocket-Accept")]
    BadAccept,
}

/// Checks an upstream's 101 to an upgrade for `token`: its `Upgrade` names
/// exactly that protocol and, for WebSocket, `Sec-WebSocket-Accept` is
/// derived from the `key` the request carried (RFC 6455 §4.1).
pub fn verify_switch(
    token: &UpgradeToken,
    key: Option<&HeaderValue>,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(), SwitchError> {
    debug_assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let mut values = headers.get_all(header::UPGRADE).iter();
    let got = match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().unwrap_or("").trim().to_owned(),
        _ => String::new(),
    };
    if !token.matches(&got) {
        return Err(SwitchError::WrongProtocol {
            asked: token.as_str().to_owned(),
            got: got.chars().take(80).collect(),
        });
    }
    if token.is_websocket() {
        let Some(key) = key else {
            return Err(SwitchError::BadAccept);
        };
        let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut accepts = headers.get_all("sec-websocket-accept").iter();
        match (accepts.next(), accepts.next()) {
            (Some(v), None) if v.as_bytes() == expected.as_bytes() => {}
            _ => return Err(SwitchError::BadAccept),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn ask(pairs: &[(&str, &str)]) -> Result<Option<UpgradeToken>, UpgradeRequestError> {
        requested(http::Version::HTTP_11, &headers(pairs))
    }

    #[test]
    fn tokens() {
        assert!(UpgradeToken::parse("websocket").is_ok());
        assert!(UpgradeToken::parse("SPDY/3.1").is_ok());
        assert_eq!(UpgradeToken::parse("h2c"), Err(TokenError::H2c));
        assert_eq!(UpgradeToken::parse("H2C/1"), Err(TokenError::H2c));
        for bad in ["", "a b", "a/", "/1", "a/b/c", "x\u{e9}", &"a".repeat(65)] {
            assert!(UpgradeToken::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            UpgradeToken::parse("WebSocket")
                .unwrap()
                .matches("websocket")
        );
    }

    #[test]
    fn ordinary_requests_are_not_upgrades() {
        assert_eq!(ask(&[]), Ok(None));
        assert_eq!(ask(&[("upgrade", "websocket")]), Ok(None));
        assert_eq!(ask(&[("connection", "keep-alive")]), Ok(None));
    }

    #[test]
    fn one_token_exactly() {
        let ok = ask(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(ok.unwrap().unwrap().as_str(), "websocket");
        for bad in [
            vec![("connection", "upgrade")],
            vec![("connection", "upgrade"), ("upgrade", "websocket, h2c")],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "x"),
            ],
            vec![("connection", "upgrade"), ("upgrade", "h2c")],
            vec![("connection", "upgrade"), ("upgrade", "")],
            vec![("connection", "upgrade"), ("upgrade", &*"a".repeat(5000))],
        ] {
            assert!(ask(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_body_or_another_version_is_refused() {
        let up = [("connection", "upgrade"), ("upgrade", "websocket")];
        let with = |extra: (&'static str, &'static str)| {
            let mut all = up.to_vec();
            all.push(extra);
            ask(&all)
        };
        assert_eq!(
            with(("content-length", "5")),
            Err(UpgradeRequestError::Body)
        );
        assert_eq!(
            with(("transfer-encoding", "chunked")),
            Err(UpgradeRequestError::Body)
        );
        assert!(with(("content-length", "0")).is_ok());
        assert_eq!(
            requested(http::Version::HTTP_10, &headers(&up)),
            Err(UpgradeRequestError::Version)
        );
    }

    #[test]
    fn switch_checks() {
        let ws = UpgradeToken::parse("websocket").unwrap();
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let good = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        let s = StatusCode::SWITCHING_PROTOCOLS;
        assert_eq!(verify_switch(&ws, Some(&key), s, &good), Ok(()));
        let wrong = headers(&[("upgrade", "websocket"), ("sec-websocket-accept", "x")]);
        assert_eq!(
            verify_switch(&ws, Some(&key), s, &wrong),
            Err(SwitchError::BadAccept)
        );
        let missing = headers(&[("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]);
        assert!(matches!(
            verify_switch(&ws, Some(&key), s, &missing),
            Err(SwitchError::WrongProtocol { .. })
        ));
        let spdy = UpgradeToken::parse("SPDY/3.1").unwrap();
        assert_eq!(
            verify_switch(&spdy, None, s, &headers(&[("upgrade", "spdy/3.1")])),
            Ok(())
        );
        assert!(verify_switch(&spdy, None, s, &headers(&[("upgrade", "websocket")])).is_err());
    }
}
