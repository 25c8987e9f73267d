//! Header hygiene both sides apply to what they forward.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy ones proxies know):
/// they describe one connection and must not be forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Legacy hop-by-hop fields without a constant in `http`.
const LEGACY_HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection"];

/// Removes hop-by-hop fields, including every field the `Connection` header
/// names ("Connection: x-internal" makes `x-internal` hop-by-hop).
///
/// This runs *before* anything is injected, so a caller cannot name an
/// injected header in `Connection` to have it stripped again.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    for name in LEGACY_HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Removes every `Tether-*` field: those are between relay and agent only.
pub fn strip_tether(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(crate::protocol::header::PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn removes_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret-Ish"));
        h.insert("x-secret-ish", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Bearer k"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer mine"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "left: {left:?}");
        assert!(h.contains_key("authorization") && h.contains_key("accept"));
    }

    #[test]
    fn removes_every_tether_field() {
        let mut h = HeaderMap::new();
        h.insert("tether-request-id", HeaderValue::from_static("1"));
        h.insert("Tether-Selector", HeaderValue::from_static("eu"));
        h.insert("tetherish", HeaderValue::from_static("kept"));
        strip_tether(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("tetherish"));
    }
}
