//! What the agent removes or refuses in what crosses it, apart from the
//! request head's hop-by-hop fields (`tether_wire::headers`):
//!
//! - the upstream's response head and trailers: hop-by-hop and `Tether-*`
//!   fields never go back to the relay (a relayed `Tether-*` field could
//!   pose as one the relay sets), and a header block over
//!   [`MAX_HEADER_LIST_SIZE`] is refused here, because the relay's HTTP/2
//!   client treats a block far over its advertised limit as a connection
//!   error: one upstream answer would end the session and every other
//!   caller's stream on it;
//! - the caller's request trailers: the same rules as its headers — no
//!   hop-by-hop or framing fields, no `Tether-*`, no proxy credentials, no
//!   field the route writes itself, and a placeholder is refused, never
//!   passed on literally;
//! - method-override headers, which would make an upstream serve another
//!   method or path than the one the route's rules checked;
//! - a flood of interim (1xx) responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderName};
use http::{HeaderMap, StatusCode};
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::MAX_HEADER_LIST_SIZE;
use tokio::sync::Notify;

use crate::secrets::placeholder::Template;

/// RFC 7541 §4.1: a field's size is its name's and value's octets plus 32.
const FIELD_OVERHEAD: usize = 32;

/// A header block the session could not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} of {size} octets, over the session's limit of {limit}")]
pub struct TooLarge {
    /// `response headers` or `response trailers`.
    pub what: &'static str,
    /// The block's size in RFC 7541 terms.
    pub size: usize,
    /// The limit it broke.
    pub limit: usize,
}

/// The size HTTP/2 gives a header block (RFC 7541 §4.1), as the relay's
/// decoder counts it against `SETTINGS_MAX_HEADER_LIST_SIZE`.
pub fn block_size(status: Option<StatusCode>, fields: &HeaderMap) -> usize {
    let pseudo = status.map_or(0, |_| ":status".len() + 3 + FIELD_OVERHEAD);
    pseudo + tether_wire::headers::header_list_size(fields)
}

/// Prepares an upstream's response head for the session: hop-by-hop and
/// `Tether-*` fields removed, then the block measured.
pub fn admit_response_head(status: StatusCode, headers: &mut HeaderMap) -> Result<(), TooLarge> {
    strip_hop_by_hop(headers);
    strip_tether(headers);
    // hyper's server adds `date` to a head that has none, after this check.
    let date = if headers.contains_key(header::DATE) {
        0
    } else {
        DATE_FIELD
    };
    bounded("response headers", block_size(Some(status), headers) + date)
}

/// `date: Tue, 01 Jan 2030 00:00:00 GMT` in RFC 7541 terms.
const DATE_FIELD: usize = "date".len() + "Tue, 01 Jan 2030 00:00:00 GMT".len() + FIELD_OVERHEAD;

/// The same for the upstream's response trailers.
pub fn admit_response_trailers(trailers: &mut HeaderMap) -> Result<(), TooLarge> {
    strip_trailer_fields(trailers);
    bounded("response trailers", block_size(None, trailers))
}

fn bounded(what: &'static str, size: usize) -> Result<(), TooLarge> {
    let limit = MAX_HEADER_LIST_SIZE as usize;
    // h2 refuses a block whose size reaches the limit, not only one over it.
    if size >= limit {
        Err(TooLarge { what, size, limit })
    } else {
        Ok(())
    }
}

/// Fields a trailer section may not carry (RFC 9110 §6.5.1: framing,
/// routing, authentication and control data), besides hop-by-hop and
/// `Tether-*` ones: a recipient that merges trailers into the head would
/// otherwise take them as if the sender had put them there.
const NOT_IN_TRAILERS: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::HOST,
    header::TRAILER,
    header::AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
    header::EXPECT,
    header::MAX_FORWARDS,
];

/// Removes from a trailer section what may not travel in one.
pub fn strip_trailer_fields(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    // `TE: trailers` is kept in a head; a trailer has no use for it.
    trailers.remove(header::TE);
    strip_tether(trailers);
    for name in NOT_IN_TRAILERS {
        trailers.remove(name);
    }
}

/// A caller trailer the agent refuses to pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request trailer {0} holds a placeholder; placeholders are never expanded in trailers")]
pub struct PlaceholderInTrailer(pub HeaderName);

/// Applies the caller-header rules to the caller's request trailers:
/// [`strip_trailer_fields`], then every field the route writes itself is
/// dropped (so a trailer cannot pose as an injected header), then a
/// placeholder anywhere is refused.
pub fn admit_request_trailers(
    trailers: &mut HeaderMap,
    route_writes: &[HeaderName],
) -> Result<(), PlaceholderInTrailer> {
    strip_trailer_fields(trailers);
    for name in route_writes {
        trailers.remove(name);
    }
    match trailers
        .iter()
        .find(|(_, v)| Template::mentions_placeholder(v.as_bytes()))
    {
        Some((name, _)) => Err(PlaceholderInTrailer(name.clone())),
        None => Ok(()),
    }
}

/// Headers that ask an upstream framework to serve another method or URL
/// than the request line's (Express, Symfony, IIS URL Rewrite, Spring…):
/// the route's rules checked the request line, so these are removed unless
/// the route sets `allow_override_headers = true`.
pub const OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
];

/// Removes every [`OVERRIDE_HEADERS`] field.
pub fn strip_override_headers(headers: &mut HeaderMap) {
    for name in OVERRIDE_HEADERS {
        headers.remove(*name);
    }
}

/// The request id an upstream sees, in `X-Request-Id`: the caller's own
/// when it is usable — 1 to 128 visible ASCII characters, one field —
/// otherwise the relay's. Returns the caller's id when it was kept, for
/// the log and the audit line.
pub fn set_request_id(headers: &mut HeaderMap, relay_id: &str) -> Option<String> {
    let mut sent = headers.get_all(X_REQUEST_ID).iter();
    let caller = match (sent.next(), sent.next()) {
        (Some(one), None) if usable_request_id(one.as_bytes()) => one.to_str().ok(),
        _ => None,
    }
    .map(str::to_owned);
    if caller.is_none() {
        headers.remove(X_REQUEST_ID);
        if let Ok(v) = http::HeaderValue::from_str(relay_id) {
            headers.insert(X_REQUEST_ID, v);
        }
    }
    caller
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn usable_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Interim (1xx) responses an upstream may send before its final one.
/// hyper reads and discards them; without a bound an upstream could keep
/// the request (and its connection) busy with them until the route's
/// timeout.
pub const MAX_INFORMATIONAL: usize = 32;

/// Counts the interim responses of one upstream request (HTTP/1.1: HTTP/2
/// upstreams' are bounded by the HTTP/2 stack).
pub struct Informational(Arc<InformationalCount>);

struct InformationalCount {
    seen: AtomicUsize,
    flooded: Notify,
}

impl Informational {
    /// Starts counting the interim responses to `request`.
    pub fn watch<B>(request: &mut http::Request<B>) -> Self {
        let count = Arc::new(InformationalCount {
            seen: AtomicUsize::new(0),
            flooded: Notify::new(),
        });
        let seen = count.clone();
        hyper::ext::on_informational(request, move |_| {
            if seen.seen.fetch_add(1, Ordering::Relaxed) + 1 > MAX_INFORMATIONAL {
                // Keeps a permit if nobody waits yet.
                seen.flooded.notify_one();
            }
        });
        Self(count)
    }

    /// Completes once more than [`MAX_INFORMATIONAL`] were seen.
    pub async fn flooded(&self) {
        self.0.flooded.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn block_size_counts_as_rfc_7541_does() {
        let h = map(&[("a", "bc"), ("de", "")]);
        assert_eq!(block_size(None, &h), (1 + 2 + 32) + (2 + 32));
        assert_eq!(block_size(Some(StatusCode::OK), &h), 42 + 35 + 34);
    }

    #[test]
    fn a_20k_head_passes_and_a_100k_one_is_refused() {
        let mut ok = map(&[("x-big", &"a".repeat(20_000))]);
        assert!(admit_response_head(StatusCode::OK, &mut ok).is_ok());
        let mut big = map(&[("x-big", &"a".repeat(100_000))]);
        let err = admit_response_head(StatusCode::OK, &mut big).unwrap_err();
        assert_eq!(err.limit, 65_536);
        // Many small fields add up the same way.
        let mut many = HeaderMap::new();
        for i in 0..2_000 {
            many.append(
                HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert!(admit_response_head(StatusCode::OK, &mut many).is_err());
    }

    #[test]
    fn the_limit_counts_the_date_hyper_adds_and_is_exclusive() {
        let limit = MAX_HEADER_LIST_SIZE as usize;
        // With a date of its own: the block as measured, one under the limit.
        let date = ("date", "Tue, 01 Jan 2030 00:00:00 GMT");
        let fixed = 42 + DATE_FIELD + ("x".len() + FIELD_OVERHEAD);
        let mut h = map(&[date, ("x", &"v".repeat(limit - 1 - fixed))]);
        assert_eq!(block_size(Some(StatusCode::OK), &h), limit - 1);
        assert!(admit_response_head(StatusCode::OK, &mut h).is_ok());
        let mut h = map(&[date, ("x", &"v".repeat(limit - fixed))]);
        assert!(
            admit_response_head(StatusCode::OK, &mut h).is_err(),
            "at the limit"
        );
        // Without one, the date hyper will add is counted.
        let mut h = map(&[("x", &"v".repeat(limit - fixed))]);
        assert!(admit_response_head(StatusCode::OK, &mut h).is_err());
        let mut h = map(&[("x", &"v".repeat(limit - 1 - fixed))]);
        assert!(admit_response_head(StatusCode::OK, &mut h).is_ok());
    }

    #[test]
    fn upstream_tether_and_hop_by_hop_fields_never_go_back() {
        let mut h = map(&[
            ("tether-peer-miss", "1"),
            ("Tether-Agent", "spoofed"),
            ("connection", "close, x-named"),
            ("x-named", "1"),
            ("keep-alive", "5"),
            ("content-type", "text/plain"),
        ]);
        admit_response_head(StatusCode::OK, &mut h).unwrap();
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn request_trailers_follow_the_header_rules() {
        let injected = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];
        let mut t = map(&[
            ("connection", "close"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("tether-caller-key-id", "0011223344556677"),
            ("proxy-authorization", "Bearer ttk_x"),
            ("x-api-key", "caller's own"),
            ("content-length", "5"),
            ("x-checksum", "abc"),
        ]);
        admit_request_trailers(&mut t, &injected).unwrap();
        let left: Vec<_> = t.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-checksum"]);

        for spelling in ["${{ secrets.tok }}", "a${{secrets.tok}}b", "${{ x"] {
            let mut t = map(&[("x-sum", spelling)]);
            assert_eq!(
                admit_request_trailers(&mut t, &injected),
                Err(PlaceholderInTrailer(HeaderName::from_static("x-sum"))),
                "{spelling}"
            );
        }
    }

    #[test]
    fn the_callers_request_id_is_kept_only_when_usable() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(
            set_request_id(&mut h, "relayid").as_deref(),
            Some("abc-123")
        );
        assert_eq!(h["x-request-id"], "abc-123");
        for bad in [&"a".repeat(129), "has space", "tab\there", "é"] {
            let mut h = HeaderMap::new();
            h.insert(
                "x-request-id",
                HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            assert_eq!(set_request_id(&mut h, "relayid"), None, "{bad:?}");
            assert_eq!(h["x-request-id"], "relayid");
        }
        let mut h = map(&[("x-request-id", "one"), ("x-request-id", "two")]);
        assert_eq!(set_request_id(&mut h, "relayid"), None);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = HeaderMap::new();
        assert_eq!(set_request_id(&mut h, "relayid"), None);
        assert_eq!(h["x-request-id"], "relayid");
    }

    #[test]
    fn override_headers_are_removed_in_any_case() {
        let mut h = map(&[
            ("X-HTTP-Method-Override", "DELETE"),
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("accept", "*/*"),
        ]);
        strip_override_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
