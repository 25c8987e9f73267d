//! Which request targets are accepted: the bytes RFC 3986 allows raw.
//!
//! A path is matched against the agent's `paths` rules, normalised, and
//! sent on to an internal service; every party must read it the same way.
//! Bytes outside RFC 3986 (non-ASCII, controls, `\`, `"`, `<`, `>`, `^`,
//! `` ` ``, `{`, `|`, `}`) and malformed percent-encodings (`%zz`, a lone
//! `%`) are where parsers disagree — one decodes UTF-8, another Latin-1,
//! one treats `\` as `/` — so they are refused with 400 before anything is
//! relayed. Callers percent-encode such bytes, as RFC 3986 requires.
//!
//! Two deliberate allowances: `[` and `]` in the path, which forward-mode
//! targets need for IPv6 literals (`/v1/forward/http/[::1]:8080/…`); and in
//! the query, which the relay passes on unchanged and no rule matches,
//! every visible ASCII byte but `"`, `<` and `>` — browsers (WHATWG URL)
//! send `[`, `]`, `{`, `}`, `|` raw there, as Jenkins' `?tree=jobs[name]`
//! does.

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A byte RFC 3986 does not allow raw in a path.
    #[error(
        "the request path has a byte RFC 3986 does not allow raw (0x{0:02x}): percent-encode it"
    )]
    PathByte(u8),
    /// A `%` not followed by two hexadecimal digits in the path.
    #[error("the request path has a malformed percent-encoding")]
    PercentEncoding,
    /// A non-ASCII, control or quoting byte in the query.
    #[error("the query has a byte that is not allowed raw (0x{0:02x}): percent-encode it")]
    QueryByte(u8),
}

/// Checks an origin-form target (`/path?query`).
pub fn check_path_and_query(target: &str) -> Result<(), TargetError> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    check_path(path)?;
    if let Some(query) = query {
        check_query(query)?;
    }
    Ok(())
}

/// `path-abempty` of RFC 3986 §3.3: `/`, `pchar` (unreserved,
/// pct-encoded, sub-delims, `:`, `@`), plus `[` and `]` (see the module
/// docs).
fn check_path(path: &str) -> Result<(), TargetError> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Err(TargetError::PercentEncoding);
            }
            i += 3;
            continue;
        }
        if !path_byte(b) {
            return Err(TargetError::PathByte(b));
        }
        i += 1;
    }
    Ok(())
}

fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            // unreserved
            b'-' | b'.' | b'_' | b'~'
            // sub-delims
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            // pchar extras, segment separator, IPv6 literals in forward targets
            | b':' | b'@' | b'/' | b'[' | b']'
        )
}

fn check_query(query: &str) -> Result<(), TargetError> {
    match query
        .bytes()
        .find(|b| !(0x21..=0x7e).contains(b) || matches!(b, b'"' | b'<' | b'>'))
    {
        Some(b) => Err(TargetError::QueryByte(b)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_targets_pass() {
        for target in [
            "/",
            "/v1/routes/jenkins/job/x/api/json?tree=jobs[name,color]&depth=1",
            "/v1/routes/k8s/api/v1/namespaces/a/pods?labelSelector=app%3Dx,tier!=db",
            "/v1/forward/http/[::1]:8080/path",
            "/v1/routes/api/echo/allowed/..;/%2e%2e/x~y@z:1",
            "/search?q={a|b}^`",
        ] {
            assert_eq!(check_path_and_query(target), Ok(()), "{target}");
        }
    }

    #[test]
    fn non_ascii_controls_and_unsafe_bytes_are_refused() {
        assert_eq!(
            check_path_and_query("/v1/routes/api/caf\u{e9}"),
            Err(TargetError::PathByte(0xc3))
        );
        for (target, byte) in [
            ("/a\\..\\admin", b'\\'),
            ("/a\"b", b'"'),
            ("/a<b>", b'<'),
            ("/a{b}", b'{'),
            ("/a|b", b'|'),
            ("/a^b", b'^'),
            ("/a`b", b'`'),
            ("/a\x7fb", 0x7f),
        ] {
            assert_eq!(
                check_path_and_query(target),
                Err(TargetError::PathByte(byte)),
                "{target:?}"
            );
        }
        assert_eq!(
            check_path_and_query("/a?q=\u{e9}"),
            Err(TargetError::QueryByte(0xc3))
        );
        assert_eq!(
            check_path_and_query("/a?q=\"x\""),
            Err(TargetError::QueryByte(b'"'))
        );
    }

    #[test]
    fn malformed_percent_encodings_in_the_path_are_refused() {
        for target in ["/a%zz", "/a%2", "/a%", "/%%41"] {
            assert_eq!(
                check_path_and_query(target),
                Err(TargetError::PercentEncoding),
                "{target}"
            );
        }
        assert_eq!(check_path_and_query("/a?q=100%"), Ok(()));
    }
}
