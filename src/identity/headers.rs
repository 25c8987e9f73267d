//! What identity does to the headers of a request (DESIGN.md, "End-user
//! identity"): the token header removed unless the route forwards it,
//! caller `Impersonate-*` always dropped, and `${{ user.name }}` /
//! `${{ user.groups }}` in the route's own headers filled from verified
//! claims only.

use http::{HeaderMap, HeaderName};

use super::verify::User;
use crate::config::RouteHeader;
use crate::secrets::placeholder::{Template, UserField};

/// Most groups a user may have when a header repeats per group: beyond
/// this the request is refused rather than sent with hundreds of lines.
pub const MAX_GROUPS: usize = 100;

/// Whether a header template the agent's config writes may be used where
/// it is: user placeholders only on routes that require identity, and
/// `${{ user.groups }}` at most once per value.
pub fn check_template(template: &Template, user_allowed: bool) -> Result<(), String> {
    let fields: Vec<UserField> = template.user_fields().collect();
    if fields.is_empty() {
        return Ok(());
    }
    if !user_allowed {
        return Err(
            "${{ user.… }} only in the headers of routes that require identity (users, groups or identity = \"required\")"
                .into(),
        );
    }
    if fields.iter().filter(|f| **f == UserField::Groups).count() > 1 {
        return Err(
            "${{ user.groups }} at most once per value (the header repeats per group)".into(),
        );
    }
    Ok(())
}

/// Removes what a caller may not send on: the token header (unless the
/// route forwards it, `forward`) and any `Impersonate-*` header (only the
/// agent's config may write those, from verified claims).
pub fn strip_caller(headers: &mut HeaderMap, token_header: Option<&HeaderName>, forward: bool) {
    if let Some(name) = token_header
        && !forward
    {
        headers.remove(name);
    }
    let impersonate: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in impersonate {
        headers.remove(name);
    }
}

/// Whether the user's claims may go into the route's headers: no control
/// characters (CR and LF above all: a claim must not write a header of its
/// own) in a claim a header uses, and at most [`MAX_GROUPS`] groups when a
/// header repeats per group. The error is the 403 detail.
pub fn admit_claims(headers: &[RouteHeader], user: &User) -> Result<(), String> {
    let used: Vec<UserField> = headers
        .iter()
        .flat_map(|h| h.template.user_fields())
        .collect();
    if used.contains(&UserField::Name) && has_control(&user.name) {
        return Err("the user claim holds control characters".into());
    }
    if used.contains(&UserField::Groups) {
        if user.groups.len() > MAX_GROUPS {
            return Err(format!("more than {MAX_GROUPS} groups"));
        }
        if user.groups.iter().any(|g| has_control(g)) {
            return Err("a group claim holds control characters".into());
        }
    }
    Ok(())
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            issuer: "i".into(),
            expires: 0,
        }
    }

    fn header(value: &str) -> RouteHeader {
        RouteHeader {
            name: HeaderName::from_static("impersonate-group"),
            template: Template::parse(value).unwrap(),
            literal: None,
        }
    }

    #[test]
    fn claims_with_control_characters_or_too_many_groups_are_refused() {
        let groups = [header("g:${{ user.groups }}")];
        let name = [header("${{ user.name }}")];
        assert!(admit_claims(&groups, &user("a\r\nX-Evil: 1", &["ok"])).is_ok());
        assert!(admit_claims(&name, &user("a\r\nX-Evil: 1", &["ok"])).is_err());
        assert!(admit_claims(&name, &user("jane\t", &[])).is_err());
        assert!(admit_claims(&groups, &user("jane", &["a\nb"])).is_err());
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(admit_claims(&groups, &user("jane", &many)).is_err());
        assert!(admit_claims(&groups, &user("jane", &many[..MAX_GROUPS])).is_ok());
    }

    #[test]
    fn user_placeholders_only_where_identity_is_required() {
        let t = Template::parse("${{ user.name }}").unwrap();
        assert!(check_template(&t, true).is_ok());
        assert!(check_template(&t, false).is_err());
        let twice = Template::parse("${{ user.groups }},${{ user.groups }}").unwrap();
        assert!(check_template(&twice, true).is_err());
        assert!(check_template(&Template::parse("x").unwrap(), false).is_ok());
    }

    #[test]
    fn caller_token_and_impersonation_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("impersonate-user", "admin".parse().unwrap());
        h.insert("Impersonate-Extra-Scopes", "x".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        let auth = http::header::AUTHORIZATION;
        let mut forwarded = h.clone();
        strip_caller(&mut forwarded, Some(&auth), true);
        assert!(forwarded.contains_key("authorization"));
        assert!(!forwarded.contains_key("impersonate-user"));
        strip_caller(&mut h, Some(&auth), false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
