//! Route allow rules: methods and path globs, default deny.
//!
//! Paths are normalised before matching and the *normalised* path is what
//! the upstream receives, so the path that was checked is the path that is
//! served: `//` collapses, `.` and `..` segments (also percent-encoded, also
//! with `;params` as some servlet containers read them) are resolved, and a
//! path that climbs above the route's root, or carries an encoded `/`, `\`
//! or NUL that an upstream might decode into a separator, is refused.
//!
//! Globs: `*` is exactly one segment (or, inside a segment, any run of
//! characters within it), `**` is any number of segments including none,
//! so `/**` also matches `/`.

use http::Method;

/// Why a request was refused by policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The method is not in the route's `methods`.
    #[error("method {0} is not allowed on this route")]
    Method(String),
    /// No `paths` rule matches.
    #[error("path {0} matches no allow rule of this route")]
    Path(String),
    /// The path cannot be normalised safely.
    #[error("path refused: {0}")]
    BadPath(&'static str),
}

/// Normalises the path part of a request target (no query).
pub fn normalize(path: &str) -> Result<String, Denial> {
    if !path.starts_with('/') {
        return Err(Denial::BadPath("path must start with /"));
    }
    let lower = path.to_ascii_lowercase();
    if path.contains('\\') || ["%2f", "%5c", "%00"].iter().any(|e| lower.contains(e)) {
        return Err(Denial::BadPath("encoded separator or NUL in path"));
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(Denial::BadPath("control character in path"));
    }
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        match dot_kind(segment) {
            Dot::Current => {}
            Dot::Parent => {
                if out.pop().is_none() {
                    return Err(Denial::BadPath("path climbs above the route root"));
                }
            }
            Dot::None => out.push(segment),
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &out {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() || (path.ends_with('/') && !out.is_empty()) {
        normalized.push('/');
    }
    Ok(normalized)
}

enum Dot {
    None,
    Current,
    Parent,
}

/// Whether `segment` means "." or "..", seen the way lenient servers see it:
/// percent-decoded dots, and anything after `;` ignored.
fn dot_kind(segment: &str) -> Dot {
    let head = segment.split(';').next().unwrap_or("");
    let decoded = head.to_ascii_lowercase().replace("%2e", ".");
    match decoded.as_str() {
        "." => Dot::Current,
        ".." => Dot::Parent,
        _ => Dot::None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A segment pattern containing `*` (e.g. `build-*`), or `*` alone.
    Glob(String),
    AnyDepth,
}

/// One `paths` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    segments: Vec<Segment>,
}

impl PathRule {
    /// Parses a rule such as `/api/**` or `/job/*/api/json`.
    pub fn parse(rule: &str) -> Result<Self, String> {
        if !rule.starts_with('/') {
            return Err(format!("path rule {rule:?} must start with /"));
        }
        let mut segments = Vec::new();
        for segment in rule.split('/').skip(1) {
            if segment.is_empty() {
                continue;
            }
            if segment == "." || segment == ".." {
                return Err(format!("path rule {rule:?} may not contain . or .."));
            }
            segments.push(if segment == "**" {
                Segment::AnyDepth
            } else if segment.contains("**") {
                return Err(format!("path rule {rule:?}: ** must be a whole segment"));
            } else if segment.contains('*') {
                Segment::Glob(segment.to_owned())
            } else {
                Segment::Literal(segment.to_owned())
            });
        }
        if segments.iter().filter(|s| **s == Segment::AnyDepth).count() > 4 {
            return Err(format!("path rule {rule:?}: at most four ** segments"));
        }
        Ok(Self { segments })
    }

    /// Whether the normalised `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match_segments(&self.segments, &parts)
    }
}

/// Matches segment by segment, keeping the set of path positions the
/// pattern so far can end at: O(pattern × path), however many `**` a rule
/// has (backtracking would be exponential in them — found by fuzzing).
fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    let mut reach = vec![false; path.len() + 1];
    reach[0] = true;
    for segment in pattern {
        let mut next = vec![false; path.len() + 1];
        match segment {
            Segment::AnyDepth => {
                let mut any = false;
                for (j, slot) in next.iter_mut().enumerate() {
                    any |= reach[j];
                    *slot = any;
                }
            }
            Segment::Literal(l) => {
                for (j, part) in path.iter().enumerate() {
                    next[j + 1] = reach[j] && l == part;
                }
            }
            Segment::Glob(g) => {
                for (j, part) in path.iter().enumerate() {
                    next[j + 1] = reach[j] && glob_segment(g, part);
                }
            }
        }
        if !next.contains(&true) {
            return false;
        }
        reach = next;
    }
    reach[path.len()]
}

/// `*` in a segment pattern matches any run of characters of one segment.
fn glob_segment(pattern: &str, segment: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = segment.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A route's allow rules.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    methods: Vec<Method>,
    paths: Vec<PathRule>,
}

impl RoutePolicy {
    /// Rules from already-validated parts.
    pub fn new(methods: Vec<Method>, paths: Vec<PathRule>) -> Self {
        Self { methods, paths }
    }

    /// Normalises `path` and checks `method` and the path; returns the path
    /// to send upstream.
    pub fn check(&self, method: &Method, path: &str) -> Result<String, Denial> {
        if !self.methods.contains(method) {
            return Err(Denial::Method(method.to_string()));
        }
        let normalized = normalize(path)?;
        if self.paths.iter().any(|rule| rule.matches(&normalized)) {
            Ok(normalized)
        } else {
            Err(Denial::Path(normalized))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> PathRule {
        PathRule::parse(s).unwrap()
    }

    #[test]
    fn normalisation_resolves_dots_and_collapses_slashes() {
        assert_eq!(normalize("/a//b/./c/").unwrap(), "/a/b/c/");
        assert_eq!(normalize("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(normalize("/a/%2e%2E/c").unwrap(), "/c");
        assert_eq!(normalize("/a/.%2e/c").unwrap(), "/c");
        assert_eq!(normalize("/a/..;x=1/c").unwrap(), "/c");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/a/..").unwrap(), "/");
    }

    #[test]
    fn normalisation_refuses_escapes_and_encoded_separators() {
        for bad in [
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/a%2fb",
            "/a%2F..",
            "/a\\b",
            "/a%5cb",
            "/a%00",
            "a",
        ] {
            assert!(normalize(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn star_is_one_segment_and_double_star_any_depth() {
        let r = rule("/job/*/api/json");
        assert!(r.matches("/job/build/api/json"));
        assert!(!r.matches("/job/a/b/api/json"));
        assert!(!r.matches("/job/api/json"));
        let r = rule("/api/**");
        assert!(r.matches("/api"));
        assert!(r.matches("/api/x/y/z"));
        assert!(!r.matches("/apix"));
        assert!(!r.matches("/other/api"));
        let r = rule("/**");
        assert!(r.matches("/"));
        assert!(r.matches("/anything/at/all"));
        let r = rule("/a/**/z");
        assert!(r.matches("/a/z"));
        assert!(r.matches("/a/b/c/z"));
        assert!(!r.matches("/a/b/c"));
    }

    #[test]
    fn star_inside_a_segment_stays_inside_it() {
        let r = rule("/builds/build-*.log");
        assert!(r.matches("/builds/build-42.log"));
        assert!(!r.matches("/builds/build-42.txt"));
        assert!(!r.matches("/builds/x/build-42.log"));
        assert!(glob_segment("a*b*c", "aXXbYYc"));
        assert!(!glob_segment("a*b*c", "ac"));
        assert!(glob_segment("*", ""));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(PathRule::parse("api/**").is_err());
        assert!(PathRule::parse("/a/../b").is_err());
        assert!(PathRule::parse("/a**").is_err());
    }

    #[test]
    fn policy_checks_method_then_normalised_path() {
        let p = RoutePolicy::new(
            vec![Method::GET, Method::HEAD],
            vec![rule("/api/**"), rule("/job/*/api/json")],
        );
        assert_eq!(p.check(&Method::GET, "/api/x").unwrap(), "/api/x");
        assert_eq!(
            p.check(&Method::POST, "/api/x"),
            Err(Denial::Method("POST".into()))
        );
        assert!(matches!(
            p.check(&Method::GET, "/api/../admin"),
            Err(Denial::Path(_))
        ));
        assert!(matches!(
            p.check(&Method::GET, "/api/%2e%2e/admin"),
            Err(Denial::Path(_))
        ));
        assert!(matches!(
            p.check(&Method::GET, "/api/../../admin"),
            Err(Denial::BadPath(_))
        ));
        assert_eq!(p.check(&Method::GET, "//api//x").unwrap(), "/api/x");
        let none = RoutePolicy::new(vec![Method::GET], vec![]);
        assert!(
            none.check(&Method::GET, "/").is_err(),
            "no rules: default deny"
        );
    }

    #[test]
    fn many_any_depth_segments_do_not_backtrack_exponentially() {
        // Found by fuzzing: four `**` (the most a rule may have) against a
        // path of a few hundred segments took seconds with backtracking.
        let rule = PathRule::parse(&"/**/a".repeat(4)).unwrap();
        let path = "/a".repeat(3) + &"/b".repeat(2000);
        assert!(!rule.matches(&path));
        let path = "/x/a".repeat(4);
        assert!(rule.matches(&path));
        assert!(PathRule::parse("/**/**").unwrap().matches("/"));
        assert!(
            PathRule::parse("/api/**/json")
                .unwrap()
                .matches("/api/json")
        );
        assert!(
            PathRule::parse("/api/**/json")
                .unwrap()
                .matches("/api/a/b/json")
        );
        assert!(!PathRule::parse("/api/*/json").unwrap().matches("/api/json"));
    }
}
