//! Handshake, reserved authorities and control messages.

use serde::{Deserialize, Serialize};

/// Path of the agent's WebSocket upgrade on the relay's public listener.
pub const CONNECT_PATH: &str = "/v1/agent/connect";

/// The WebSocket subprotocol naming version 1 of this protocol.
pub const SUBPROTOCOL_V1: &str = "tether.v1";

/// Every protocol version the code in this crate speaks, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[SUBPROTOCOL_V1];

/// `:authority` of control requests (relay → agent) on the HTTP/2 connection.
///
/// A `.invalid` name (RFC 2606) cannot be a real host, and callers never
/// choose the authority of a relayed request: the relay sets it. Control
/// traffic is told apart by this authority, never by a path prefix a caller
/// could reach through a normalisation mismatch.
pub const CONTROL_AUTHORITY: &str = "control.tether.invalid";

/// `:authority` the relay puts on every caller request it relays.
pub const TUNNEL_AUTHORITY: &str = "tunnel.tether.invalid";

/// Control path answering [`AgentInfo`].
pub const CONTROL_INFO_PATH: &str = "/v1/info";

/// Control path sealing exported secrets for a pipeline ([`ResolveRequest`]).
pub const CONTROL_RESOLVE_PATH: &str = "/v1/secrets/resolve";

/// Control path telling an agent its token was rotated ([`RotationNotice`]).
pub const CONTROL_ROTATED_PATH: &str = "/v1/token/rotated";

/// Control path: the relay (replica) holding this session is shutting
/// down; the agent opens a replacement session (landing on another
/// replica) and then drains this one with GOAWAY.
pub const CONTROL_DRAINING_PATH: &str = "/v1/relay/draining";

/// `SETTINGS_MAX_HEADER_LIST_SIZE` of every HTTP/2 connection that carries
/// relayed traffic (relay ⇄ agent sessions, relay ⇄ peer replicas), in
/// RFC 7541 §4.1 terms: the sum of name + value + 32 octets per field,
/// pseudo-headers included. The relay's HTTP/2 clients advertise it; the
/// agent never sends a header block (response headers or trailers) over
/// it, answering 502 `upstream_headers_too_large` instead, because a
/// block far over it is a connection error that would end the session and
/// every other stream on it.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// HTTP/2 flow-control window of each stream of a session, both ends.
///
/// Data a stream received and its reader has not taken counts against the
/// connection's window too (RFC 9113 §6.9). hyper's adaptive window gives
/// stream and connection the same size, so one stream whose reader stops
/// (a caller that no longer reads its WebSocket, an upstream that stops
/// reading an exec) would use up the whole session's window and stall
/// every other stream on it. Fixed windows with the connection's at least
/// [`SESSION_MAX_STREAMS`] times a stream's keep the others moving; what a
/// session can hold unread is bounded by the connection window.
pub const SESSION_STREAM_WINDOW: u32 = 512 * 1024;

/// Largest HTTP/2 frame payload either end of a session accepts (the
/// default is 16 KiB): bulk transfers take an eighth of the frames. h2
/// keeps a read buffer as large as the largest frame it received; relay
/// RSS after bulk traffic on 50 sessions measured the same at 16, 64 and
/// 128 KiB (docs/BENCHMARKS.md), while 64 KiB cost 18 % of a download's
/// speed.
pub const SESSION_MAX_FRAME: u32 = 128 * 1024;

/// Streams an agent accepts at once on one session.
pub const SESSION_MAX_STREAMS: u32 = 1024;

/// HTTP/2 connection window of a session: every stream's window at once
/// (512 MiB: only ever filled by streams whose readers all stopped).
pub const SESSION_CONNECTION_WINDOW: u32 = SESSION_STREAM_WINDOW * SESSION_MAX_STREAMS;

/// Sent to the sessions opened with a token's old secret after a rotation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationNotice {
    /// The token's id.
    pub token_id: String,
    /// When the secret this session uses stops working (unix seconds).
    pub valid_until: Option<i64>,
    /// The new token, only when the rotation went through this relay's
    /// admin API (the only time the relay sees it). Agents store it only
    /// with `accept_rotation = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for RotationNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationNotice")
            .field("token_id", &self.token_id)
            .field("valid_until", &self.valid_until)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Prefix of agent tokens.
pub const AGENT_TOKEN_PREFIX: &str = "tta_";

/// Hex digits of a credential's id part (the relay's `credential` module
/// generates them).
pub const CREDENTIAL_ID_HEX: usize = 16;

/// Hex digits of a credential's secret part (256 bits).
pub const CREDENTIAL_SECRET_HEX: usize = 64;

/// The id of `token` if it is a well-formed agent token,
/// `tta_<16 lower-case hex>_<64 lower-case hex>` and nothing else (no
/// whitespace, no control characters); `None` otherwise. What an agent
/// checks a token pushed by the relay against: the relay generates exactly
/// this form and accepts no other.
pub fn agent_token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(AGENT_TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (id.len() == CREDENTIAL_ID_HEX
        && secret.len() == CREDENTIAL_SECRET_HEX
        && lower_hex(id)
        && lower_hex(secret))
    .then_some(id)
}

/// Caller API path for pipeline secret resolution (same body and answer).
pub const RESOLVE_PATH: &str = "/v1/secrets/resolve";

/// Header names of the handshake and of relayed requests and responses.
pub mod header {
    /// Agent name (handshake, required).
    pub const AGENT_NAME: &str = "tether-agent-name";
    /// Comma-separated agent tags (handshake, optional).
    pub const AGENT_TAGS: &str = "tether-agent-tags";
    /// Agent software version (handshake, optional).
    pub const AGENT_VERSION: &str = "tether-agent-version";
    /// Instance of the agent, e.g. the pod's hostname (handshake, optional).
    pub const AGENT_INSTANCE: &str = "tether-agent-instance";
    /// Name of the agent that served a relayed response.
    pub const AGENT: &str = "tether-agent";
    /// Id the relay gives each relayed request; on the response too.
    pub const REQUEST_ID: &str = "tether-request-id";
    /// Caller's agent selector: comma-separated tags, all required.
    pub const SELECTOR: &str = "tether-selector";
    /// Caller key id, passed to the agent for its audit trail.
    pub const CALLER_KEY_ID: &str = "tether-caller-key-id";
    /// Versions the relay speaks, sent with a 426 answer.
    pub const SUPPORTED_VERSIONS: &str = "tether-supported-versions";
    /// Handshake response, cluster mode: the id of the relay replica that
    /// holds the session, so an agent can spread its sessions.
    pub const REPLICA: &str = "tether-replica";
    /// Prefix every Tether header has; none is ever forwarded upstream.
    pub const PREFIX: &str = "tether-";
}

/// What an agent tells the relay about itself after the session is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent name from its config.
    pub name: String,
    /// Instance (hostname by default): replicas share a name, not an instance.
    pub instance: String,
    /// Agent software version.
    pub version: String,
    /// Tags used by callers' selectors.
    pub tags: Vec<String>,
    /// Names of the routes this agent serves, so that the relay can answer
    /// `no_such_route` without a round trip.
    pub routes: Vec<String>,
    /// Whether it serves forward mode (`[forward] allow` is not empty).
    #[serde(default)]
    pub forward: bool,
}

/// Authority of forward-mode streams; the path is
/// `/{scheme}/{host[:port]}/{path…}`.
pub const FORWARD_AUTHORITY: &str = "forward.tether.invalid";

/// Prefix of the caller API for forward mode.
pub const FORWARD_PREFIX: &str = "/v1/forward/";

/// Prefix of the caller API that relays to a named route.
pub const ROUTES_PREFIX: &str = "/v1/routes/";

/// Splits `/v1/routes/{route}/{rest…}` into the route name and the rest of
/// the path (always starting with `/`). The route name must be a valid
/// [route name](valid_route_name).
pub fn split_route_path(path: &str) -> Option<(&str, &str)> {
    let tail = path.strip_prefix(ROUTES_PREFIX)?;
    let (route, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, "/"),
    };
    valid_route_name(route).then_some((route, rest))
}

/// Route and agent names: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn valid_route_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A pipeline's request for exported secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Secret names.
    pub names: Vec<String>,
    /// age X25519 recipient (`age1…`) the values are sealed to; must be in
    /// each secret's `export` list.
    #[serde(default)]
    pub recipient: Option<String>,
}

/// Sealed values, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveResponse {
    /// `NAME → {"age": "<armored ciphertext>"}`.
    pub secrets: std::collections::BTreeMap<String, SealedSecret>,
}

/// One sealed value: only the holder of the recipient's identity opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// ASCII-armored age file.
    pub age: String,
}

/// Picks the first protocol version offered in a `Sec-WebSocket-Protocol`
/// header value that this crate speaks.
pub fn negotiate_version(offered: &str) -> Option<&'static str> {
    offered
        .split(',')
        .map(str::trim)
        .find_map(|v| SUPPORTED_VERSIONS.iter().copied().find(|s| *s == v))
}

/// Splits a comma-separated tag list, trimming blanks and dropping empties.
pub fn parse_tags(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_token_id_takes_only_the_exact_form() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(64);
        let good = format!("tta_{id}_{secret}");
        assert_eq!(agent_token_id(&good), Some(id));
        for bad in [
            format!("ttk_{id}_{secret}"),
            format!("tta_{id}_{secret}\r\nX: y"),
            format!("tta_{id}_{secret} "),
            format!(" tta_{id}_{secret}"),
            format!("tta_{id}_{}", "a".repeat(63)),
            format!("tta_{id}_{}", "A".repeat(64)),
            format!("tta_0123456789ABCDEF_{secret}"),
            format!("tta_{id}x_{secret}"),
            format!("tta_{id}_{secret}_"),
            format!("tta_{id}{secret}"),
            String::new(),
        ] {
            assert_eq!(agent_token_id(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn negotiates_known_version_among_others() {
        assert_eq!(negotiate_version("tether.v9, tether.v1"), Some("tether.v1"));
        assert_eq!(negotiate_version("tether.v1"), Some("tether.v1"));
        assert_eq!(negotiate_version("tether.v0"), None);
        assert_eq!(negotiate_version(""), None);
    }

    #[test]
    fn route_paths_split_into_name_and_rest() {
        assert_eq!(
            split_route_path("/v1/routes/jenkins/api/json"),
            Some(("jenkins", "/api/json"))
        );
        assert_eq!(
            split_route_path("/v1/routes/jenkins"),
            Some(("jenkins", "/"))
        );
        assert_eq!(
            split_route_path("/v1/routes/jenkins/"),
            Some(("jenkins", "/"))
        );
        assert_eq!(split_route_path("/v1/routes/../x"), None);
        assert_eq!(split_route_path("/v1/routes/%6aenkins/x"), None);
        assert_eq!(split_route_path("/v1/routes//x"), None);
        assert_eq!(split_route_path("/v1/forward/x"), None);
    }

    #[test]
    fn tags_are_trimmed_and_empties_dropped() {
        assert_eq!(parse_tags(" eu, prod ,,"), vec!["eu", "prod"]);
        assert!(parse_tags("").is_empty());
    }
}
