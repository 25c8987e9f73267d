//! Agent versions: what an agent reports is shown to operators and counted
//! in a metric only once validated, and `[agents] min_version` refuses
//! older agents at the handshake.
//!
//! This is hygiene, not a security control: the version is whatever the
//! agent says, and anyone holding a valid token can say anything.

/// What a report that is not a version reads as.
pub const UNKNOWN: &str = "unknown";

/// Longest version string taken as one: an agent-chosen string must not
/// become an unbounded label.
const MAX_LEN: usize = 32;

/// The reported version, if it is semver of at most 32 characters.
pub fn parse(reported: &str) -> Option<semver::Version> {
    if reported.len() > MAX_LEN {
        return None;
    }
    semver::Version::parse(reported).ok()
}

/// The reported version as operators and metrics see it: itself if valid,
/// otherwise [`UNKNOWN`].
pub fn label(reported: &str) -> &str {
    if parse(reported).is_some() {
        reported
    } else {
        UNKNOWN
    }
}

/// Why an agent's version is refused under `[agents] min_version`.
pub fn refusal(minimum: &semver::Version, reported: Option<&str>) -> Option<String> {
    match reported.map(|r| (r, parse(r))) {
        Some((_, Some(v))) if v >= *minimum => None,
        Some((r, Some(_))) => Some(format!(
            "this relay requires tether-agent {minimum} or later; this agent is {r}: upgrade it"
        )),
        Some(_) => Some(format!(
            "this relay requires tether-agent {minimum} or later; this agent reported no usable version: upgrade it"
        )),
        None => Some(format!(
            "this relay requires tether-agent {minimum} or later; this agent sent no Tether-Agent-Version: upgrade it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_semver_is_a_version() {
        assert_eq!(label("0.3.1"), "0.3.1");
        assert_eq!(label("1.0.0-rc.1+build.5"), "1.0.0-rc.1+build.5");
        for bad in [
            "",
            "1.0",
            "v1.0.0",
            "1.0.0\n",
            &format!("1.0.0-{}", "a".repeat(40)),
            "x{y=\"z\"}",
        ] {
            assert_eq!(label(bad), UNKNOWN, "{bad:?}");
        }
    }

    #[test]
    fn min_version_refuses_older_unknown_and_silent_agents() {
        let min = semver::Version::parse("0.3.0").unwrap();
        assert!(refusal(&min, Some("0.3.0")).is_none());
        assert!(refusal(&min, Some("1.0.0")).is_none());
        assert!(
            refusal(&min, Some("0.2.9"))
                .unwrap()
                .contains("0.3.0 or later")
        );
        // A pre-release sorts before its release.
        assert!(refusal(&min, Some("0.3.0-rc.1")).is_some());
        assert!(refusal(&min, Some("garbage")).is_some());
        assert!(
            refusal(&min, None)
                .unwrap()
                .contains("no Tether-Agent-Version")
        );
    }
}
