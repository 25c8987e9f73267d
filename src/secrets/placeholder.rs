//! `${{ secrets.NAME }}` placeholders in header values: parsing and the
//! rules for where a secret may be substituted.
//!
//! DESIGN.md, "Where a placeholder is substituted": the cloud side must
//! never be able to steer a secret somewhere it can read it back. So:
//! - header values the agent's own config writes may use any secret;
//! - a header the caller sent may use a secret only if that secret lists
//!   the header name in `callers.headers` and the upstream's
//!   `scheme://host[:port]` in `callers.targets`;
//! - never the path, query or body (nothing there is ever parsed);
//! - an unknown or malformed placeholder is refused, never passed on.
//!
//! `${{ user.name }}` and `${{ user.groups }}` (DESIGN.md, "End-user
//! identity") parse here too, so a value is read once: what a verified
//! claim fills in becomes literal text and is never parsed again.

use std::fmt;

/// One piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is.
    Literal(String),
    /// The value of the named secret.
    Secret(String),
    /// A claim of the verified end user.
    User(UserField),
}

/// What `${{ user.… }}` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserField {
    /// `${{ user.name }}`: the user claim.
    Name,
    /// `${{ user.groups }}`: one group; the header is repeated per group.
    Groups,
}

/// A placeholder as [`Template::render`] asks for its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder<'a> {
    /// `${{ secrets.NAME }}`.
    Secret(&'a str),
    /// `${{ user.… }}` not filled by [`Template::for_user`].
    User(UserField),
}

/// A header value with zero or more placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a value is not a valid template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${{` without a closing `}}`.
    #[error("unterminated placeholder: `${{{{` without `}}}}`")]
    Unterminated,
    /// Something other than `secrets.NAME`, `user.name` or `user.groups`
    /// between the braces.
    #[error(
        "placeholder must read `${{{{ secrets.NAME }}}}`, `${{{{ user.name }}}}` or `${{{{ user.groups }}}}`, found {0:?}"
    )]
    Malformed(String),
}

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

impl Template {
    /// Parses `value`.
    pub fn parse(value: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = value;
        while let Some(start) = rest.find(OPEN) {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + OPEN.len()..];
            let end = after.find(CLOSE).ok_or(TemplateError::Unterminated)?;
            let inner = after[..end].trim();
            let part = match inner {
                "user.name" => Part::User(UserField::Name),
                "user.groups" => Part::User(UserField::Groups),
                _ => {
                    let name = inner
                        .strip_prefix("secrets.")
                        .filter(|n| valid_secret_name(n))
                        .ok_or_else(|| {
                            TemplateError::Malformed(inner.chars().take(64).collect())
                        })?;
                    Part::Secret(name.to_owned())
                }
            };
            parts.push(part);
            rest = &after[end + CLOSE.len()..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Whether `value` contains anything that looks like a placeholder; a
    /// cheap test before parsing caller headers.
    pub fn mentions_placeholder(value: &[u8]) -> bool {
        value.windows(OPEN.len()).any(|w| w == OPEN.as_bytes())
    }

    /// Names of the secrets used, in order (may repeat).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            Part::Literal(_) | Part::User(_) => None,
        })
    }

    /// The `${{ user.… }}` placeholders used, in order (may repeat).
    pub fn user_fields(&self) -> impl Iterator<Item = UserField> {
        self.parts.iter().filter_map(|p| match p {
            Part::User(field) => Some(*field),
            Part::Literal(_) | Part::Secret(_) => None,
        })
    }

    /// Whether the template has no placeholder.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The template with the user's claims filled in as literal text (so
    /// never parsed again): one template, or one per group when the value
    /// uses `${{ user.groups }}` (none for a user without groups).
    pub fn for_user(&self, name: &str, groups: &[String]) -> Vec<Self> {
        let fill = |group: Option<&str>| Self {
            parts: self
                .parts
                .iter()
                .map(|p| match p {
                    Part::User(UserField::Name) => Part::Literal(name.to_owned()),
                    Part::User(UserField::Groups) => {
                        Part::Literal(group.unwrap_or_default().to_owned())
                    }
                    other => other.clone(),
                })
                .collect(),
        };
        if self.user_fields().any(|f| f == UserField::Groups) {
            groups.iter().map(|g| fill(Some(g))).collect()
        } else {
            vec![fill(None)]
        }
    }

    /// Renders the template, asking `lookup` for each placeholder's value.
    pub fn render<E>(
        &self,
        mut lookup: impl FnMut(Placeholder<'_>) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Secret(name) => out.push_str(&lookup(Placeholder::Secret(name))?),
                Part::User(field) => out.push_str(&lookup(Placeholder::User(*field))?),
            }
        }
        Ok(out)
    }
}

/// Secret names: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn valid_secret_name(name: &str) -> bool {
    tether_wire::protocol::valid_route_name(name)
}

/// `scheme://host[:port]` in canonical form: lower case, default port
/// dropped, so `HTTPS://Jenkins:443` and `https://jenkins` compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin(String);

impl Origin {
    /// Parses an origin (`scheme://host[:port]`, nothing after).
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
        if !path_ok || !text.contains("://") {
            return Err(format!("{text:?}: expected scheme://host[:port] only"));
        }
        Self::of(&uri).ok_or_else(|| format!("{text:?}: expected http:// or https:// and a host"))
    }

    /// The origin of an absolute URI.
    pub fn of(uri: &http::Uri) -> Option<Self> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(match uri.port_u16() {
            Some(port) if port != default_port => Self(format!("{scheme}://{host}:{port}")),
            _ => Self(format!("{scheme}://{host}")),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret's opt-in for caller-placed placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerBinding {
    /// Upstreams the secret may be sent to.
    pub targets: Vec<Origin>,
    /// Header names (lower case) it may be placed in.
    pub headers: Vec<String>,
}

impl CallerBinding {
    /// Whether a caller may place the secret in `header` towards `target`.
    pub fn permits(&self, header: &str, target: &Origin) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(header))
            && self.targets.iter().any(|t| t == target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_placeholders() {
        let t = Template::parse("Bearer ${{ secrets.jenkins_token }}!").unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), ["jenkins_token"]);
        let out: Result<_, ()> = t.render(|n| match n {
            Placeholder::Secret(n) => Ok(format!("<{n}>")),
            Placeholder::User(_) => Err(()),
        });
        assert_eq!(out.unwrap(), "Bearer <jenkins_token>!");
        let t = Template::parse("${{secrets.a}}:${{  secrets.b  }}").unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), ["a", "b"]);
        assert!(Template::parse("plain, value; x=1").unwrap().is_literal());
    }

    #[test]
    fn malformed_placeholders_are_errors_never_literals() {
        assert_eq!(
            Template::parse("x ${{ secrets.a"),
            Err(TemplateError::Unterminated)
        );
        assert!(matches!(
            Template::parse("${{ env.HOME }}"),
            Err(TemplateError::Malformed(_))
        ));
        assert!(matches!(
            Template::parse("${{ secrets. }}"),
            Err(TemplateError::Malformed(_))
        ));
        assert!(matches!(
            Template::parse("${{ secrets.a b }}"),
            Err(TemplateError::Malformed(_))
        ));
        assert!(matches!(
            Template::parse("${{ secrets.${{ secrets.a }} }}"),
            Err(TemplateError::Malformed(_))
        ));
    }

    #[test]
    fn user_placeholders_fill_once_and_repeat_per_group() {
        let t = Template::parse("tether:${{ user.groups }}").unwrap();
        assert!(!t.is_literal());
        assert_eq!(t.secrets().count(), 0);
        let groups = ["a".to_owned(), "${{ secrets.x }}".to_owned()];
        let filled = t.for_user("jane", &groups);
        let text: Vec<String> = filled
            .iter()
            .map(|t| t.render(|_| Err::<String, ()>(())).unwrap())
            .collect();
        // A claim holding a placeholder stays text: single pass.
        assert_eq!(text, ["tether:a", "tether:${{ secrets.x }}"]);
        assert!(t.for_user("jane", &[]).is_empty());
        let t = Template::parse("${{ user.name }} ${{ secrets.k }}").unwrap();
        let filled = t.for_user("${{ secrets.k }}", &groups);
        assert_eq!(filled.len(), 1);
        let out = filled[0].render(|p| match p {
            Placeholder::Secret(_) => Ok::<_, ()>("S".to_owned()),
            Placeholder::User(_) => Err(()),
        });
        assert_eq!(out.unwrap(), "${{ secrets.k }} S");
        assert!(matches!(
            Template::parse("${{ user.email }}"),
            Err(TemplateError::Malformed(_))
        ));
    }

    #[test]
    fn origins_compare_canonically() {
        let a = Origin::parse("HTTPS://Jenkins.Corp:443").unwrap();
        let b = Origin::of(&"https://jenkins.corp/x/y?z".parse().unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "https://jenkins.corp");
        let other_port = Origin::of(&"https://jenkins.corp:8443/".parse().unwrap()).unwrap();
        let plain = Origin::of(&"http://jenkins.corp/".parse().unwrap()).unwrap();
        assert_ne!(a, other_port);
        assert_ne!(a, plain);
        assert!(Origin::parse("https://jenkins.corp/path").is_err());
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("jenkins.corp").is_err());
    }

    #[test]
    fn caller_binding_needs_both_header_and_target() {
        let binding = CallerBinding {
            targets: vec![Origin::parse("https://jenkins.corp").unwrap()],
            headers: vec!["authorization".into()],
        };
        let jenkins = Origin::parse("https://jenkins.corp").unwrap();
        let evil = Origin::parse("https://echo.corp").unwrap();
        assert!(binding.permits("Authorization", &jenkins));
        assert!(!binding.permits("X-Reflected", &jenkins));
        assert!(!binding.permits("authorization", &evil));
        assert!(!CallerBinding::default().permits("authorization", &jenkins));
    }
}
