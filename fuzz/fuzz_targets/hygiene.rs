//! Header and trailer hygiene never panics, and what it lets through keeps
//! its promises: no `Tether-*`, hop-by-hop or proxy-credential field ever
//! leaves, an admitted block fits the session's header-list limit, and an
//! admitted request trailer section holds no placeholder and none of the
//! fields the route writes.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tether_agent::hygiene;

/// Fields from the input: `name: value` lines; a line of `+N` repeats the
/// previous field N times (so that large blocks are reachable).
fn fields(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut last: Option<(HeaderName, HeaderValue)> = None;
    for line in data.split(|b| *b == b'\n') {
        if let Some(n) = line.strip_prefix(b"+") {
            let n = std::str::from_utf8(n).ok().and_then(|n| n.parse::<u16>().ok());
            if let (Some(n), Some((name, value))) = (n, &last) {
                for _ in 0..n.min(4096) {
                    map.append(name.clone(), value.clone());
                }
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name.clone(), value.clone());
        last = Some((name, value));
    }
    map
}

fn assert_clean(map: &HeaderMap) {
    for name in map.keys() {
        let n = name.as_str();
        assert!(!n.starts_with("tether-"), "{n}");
        assert!(
            !matches!(
                n,
                "connection" | "transfer-encoding" | "upgrade" | "keep-alive"
                    | "proxy-connection" | "proxy-authorization" | "proxy-authenticate"
            ),
            "{n}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let limit = tether_wire::protocol::MAX_HEADER_LIST_SIZE as usize;

    let mut head = fields(data);
    if hygiene::admit_response_head(StatusCode::OK, &mut head).is_ok() {
        assert_clean(&head);
        assert!(hygiene::block_size(Some(StatusCode::OK), &head) <= limit);
    }

    let mut trailers = fields(data);
    if hygiene::admit_response_trailers(&mut trailers).is_ok() {
        assert_clean(&trailers);
        assert!(!trailers.contains_key("te"));
        assert!(hygiene::block_size(None, &trailers) <= limit);
    }

    let route_writes = [http::header::AUTHORIZATION, HeaderName::from_static("x-api-key")];
    let mut trailers = fields(data);
    if hygiene::admit_request_trailers(&mut trailers, &route_writes).is_ok() {
        assert_clean(&trailers);
        for name in &route_writes {
            assert!(!trailers.contains_key(name));
        }
        assert!(
            trailers
                .values()
                .all(|v| !v.as_bytes().windows(3).any(|w| w == b"${{"))
        );
    }
});
