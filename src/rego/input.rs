//! The `input` document a route policy sees (DESIGN.md): built from the
//! caller's request **before** injection, so no secret the agent adds can
//! reach a policy (or a `print` in one), and without the caller's
//! credentials: `authorization`, `proxy-authorization`, `cookie` and the
//! identity header are removed.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName};
use serde_json::{Value, json};

/// Headers a policy never sees: credentials.
const HIDDEN: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// What a policy is asked about.
#[derive(Debug, Clone)]
pub struct Input {
    /// The caller's method (for an upgrade, the original one).
    pub method: String,
    /// The normalised path within the route.
    pub path: String,
    /// The query string as sent (empty when none).
    pub query: String,
    /// Lower-case names → every value, credentials removed.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The upgrade token (`websocket`, `SPDY/3.1`), if any.
    pub upgrade: Option<String>,
    /// The route's name.
    pub route: String,
    /// The caller's API key id.
    pub caller_key_id: String,
    /// The verified end user, if the route required one.
    pub user: Option<String>,
    /// The user's groups.
    pub groups: Vec<String>,
}

impl Input {
    /// The caller's headers as a policy sees them: `token_header` and the
    /// credentials removed, names lower-case, values as text.
    pub fn headers(
        headers: &HeaderMap,
        token_header: Option<&HeaderName>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            if HIDDEN.contains(&name.as_str()) || Some(name) == token_header {
                continue;
            }
            out.entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        out
    }

    /// The JSON document, with `time` (RFC 3339) now.
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "upgrade": self.upgrade,
            "route": self.route,
            "caller_key_id": self.caller_key_id,
            "user": self.user,
            "groups": self.groups,
            "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_policy() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("proxy-authorization", "Bearer k".parse().unwrap());
        h.insert("cookie", "s=1".parse().unwrap());
        h.insert("x-backstage-token", "t".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        let token = HeaderName::from_static("x-backstage-token");
        let seen = Input::headers(&h, Some(&token));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen["accept"], ["a", "b"]);
    }
}
