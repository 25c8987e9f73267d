//! Header hygiene both sides apply to what they forward.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the proxy credentials, which
/// belong to the hop that asked for them): they describe one connection and
/// must not be forwarded. `Trailer` is end-to-end (it declares the trailer
/// fields) and stays.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
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
///
/// `TE: trailers` is the one TE value carried on: it says the client can
/// take trailers, which the upstream needs to know to send them (HTTP/2
/// allows exactly this value, RFC 9113 §8.2.2).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let wants_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
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
    if wants_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
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

/// Fields a trailer section must not carry (RFC 9110 §6.5.1: framing,
/// routing, request modifiers, authentication, response control), beyond
/// the hop-by-hop ones. A trailer arrives after the head was checked and
/// forwarded, so none of these may act on the message any more.
const NOT_IN_TRAILERS: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::CONTENT_TYPE,
    header::HOST,
    header::TRAILER,
    header::EXPECT,
    header::MAX_FORWARDS,
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::CACHE_CONTROL,
    header::AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
];

/// Applies header hygiene to a trailer section: removes hop-by-hop fields
/// (with those `Connection` names, and `TE` altogether), every `Proxy-*`
/// and `Tether-*` field, and the fields RFC 9110 §6.5.1 keeps out of
/// trailers (`NOT_IN_TRAILERS`). What is left is end-to-end metadata
/// such as `grpc-status` or a checksum.
///
/// Trailers get the same rules as headers: a `Tether-*` trailer must not
/// reach an agent or a caller, and a connection-specific field in a trailer
/// is one HTTP/2 refuses to send (RFC 9113 §8.2.2), which would leave the
/// stream unfinished.
pub fn filter_trailers(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    strip_tether(trailers);
    trailers.remove(header::TE);
    for name in NOT_IN_TRAILERS {
        trailers.remove(name);
    }
    let proxy: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| n.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        trailers.remove(name);
    }
}

/// Size of a header list as HTTP/2 counts it against
/// `SETTINGS_MAX_HEADER_LIST_SIZE` (RFC 9113 §6.5.2): the octets of each
/// name and value plus 32 per field. Pseudo-header fields are not in a
/// [`HeaderMap`]; add theirs to compare with a limit.
pub fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn removes_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, X-Secret-Ish"),
        );
        h.insert("x-secret-ish", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Bearer k"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer mine"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "left: {left:?}");
        assert!(h.contains_key("authorization") && h.contains_key("accept"));
    }

    #[test]
    fn te_trailers_is_kept_alone() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("trailer", HeaderValue::from_static("x-checksum"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["trailer"], "x-checksum");
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

    #[test]
    fn trailers_keep_only_end_to_end_metadata() {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-named"),
            ("x-named", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Bearer k"),
            ("proxy-connection", "close"),
            ("proxy-anything", "x"),
            ("tether-x", "1"),
            ("tether-request-id", "forged"),
            ("content-length", "5"),
            ("host", "elsewhere"),
            ("authorization", "Bearer other"),
            ("trailer", "x-ok"),
            ("x-ok", "1"),
            ("grpc-status", "0"),
        ] {
            t.append(name, HeaderValue::from_static(value));
        }
        filter_trailers(&mut t);
        let mut left: Vec<_> = t.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-ok"]);
    }

    #[test]
    fn header_list_size_counts_32_octets_per_field() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("12345"));
        h.append("x-a", HeaderValue::from_static("1"));
        assert_eq!(header_list_size(&h), (3 + 5 + 32) + (3 + 1 + 32));
    }
}
