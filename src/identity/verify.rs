//! Verifying an end user's token against the issuer's keys (DESIGN.md,
//! "End-user identity"): asymmetric algorithms only, bound to the key;
//! `jku`, `x5u`, `jwk` and `x5c` never consulted; an unknown `crit`
//! refused; `exp` required; `iss` exact; `aud` one of the configured;
//! `nbf`/`iat` within the leeway and `iat` no older than `max_age`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};

use super::jwks::KeySet;

/// Longest token looked at: a bearer token is a few KiB; anything far
/// larger is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What `[identity]` requires of a token.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `iss` must equal this.
    pub issuer: String,
    /// `aud` must contain one of these (not checked when empty).
    pub audiences: Vec<String>,
    /// The claim naming the user (e.g. `sub`).
    pub user_claim: String,
    /// The claim listing the user's groups (e.g. `ent`, `groups`).
    pub groups_claim: String,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Tokens issued longer ago than this are refused.
    pub max_age: Option<Duration>,
}

/// A verified end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user claim's value.
    pub name: String,
    /// The groups claim's values (none if the token has no such claim).
    pub groups: Vec<String>,
    /// The token's `iss`.
    pub issuer: String,
    /// Until when (unix seconds) the verification holds: the token's
    /// `exp`, or `iat + max_age` when that comes first. How long a
    /// verified token may be cached.
    pub expires: u64,
}

/// Why a token is refused (401 `identity_invalid`; the detail never
/// holds the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not a JWS compact token, or over [`MAX_TOKEN_BYTES`].
    #[error("not a signed token")]
    Malformed,
    /// `none`, HMAC or another algorithm this agent never accepts.
    #[error("algorithm not accepted")]
    Algorithm,
    /// A `crit` header parameter this agent does not understand.
    #[error("critical header parameter not understood")]
    Critical,
    /// No key with the token's `kid` (after one refresh, the caller's
    /// concern), or none whose algorithm matches.
    #[error("signed with an unknown key")]
    UnknownKey,
    /// Bad signature, or claims that fail the rules (issuer, audience,
    /// expiry, not-before).
    #[error("signature or claims invalid: {0}")]
    Rejected(String),
    /// Issued longer ago than `max_age`, or without `iat` when `max_age`
    /// is set.
    #[error("token too old")]
    TooOld,
    /// No usable user claim.
    #[error("no {0} claim")]
    NoUser(String),
}

const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Verifies `token` with `keys` under `rules`; `now` is unix seconds.
pub fn verify(token: &str, keys: &KeySet, rules: &Rules, now: u64) -> Result<User, Invalid> {
    if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
        return Err(Invalid::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(Invalid::Algorithm);
    }
    // RFC 7515 §4.1.11: a recipient that does not understand a listed
    // extension must refuse the token. This agent understands none.
    if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(Invalid::Critical);
    }
    let key = keys
        .candidates(header.kid.as_deref())
        .into_iter()
        .find(|k| k.algorithms.contains(&header.alg))
        .ok_or(Invalid::UnknownKey)?;

    let mut validation = Validation::new(header.alg);
    validation.leeway = rules.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[rules.issuer.as_str()]);
    let mut required = vec!["exp", "iss"];
    if rules.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rules.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
        .map_err(|e| Invalid::Rejected(reason(&e)))?
        .claims;

    if let Some(max_age) = rules.max_age {
        let iat = claims.get("iat").and_then(serde_json::Value::as_u64);
        let limit = max_age.as_secs() + rules.leeway.as_secs();
        match iat {
            Some(iat) if now.saturating_sub(iat) <= limit => {}
            _ => return Err(Invalid::TooOld),
        }
    }
    if let Some(iat) = claims.get("iat").and_then(serde_json::Value::as_u64)
        && iat > now + rules.leeway.as_secs()
    {
        return Err(Invalid::Rejected("issued in the future".into()));
    }
    let name = claims
        .get(&rules.user_claim)
        .and_then(serde_json::Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Invalid::NoUser(rules.user_claim.clone()))?
        .to_owned();
    let groups = match claims.get(&rules.groups_claim) {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let too_old_at = rules.max_age.and_then(|max_age| {
        let iat = claims.get("iat").and_then(serde_json::Value::as_u64)?;
        Some(iat + max_age.as_secs())
    });
    Ok(User {
        name,
        groups,
        issuer: rules.issuer.clone(),
        expires: too_old_at.map_or(exp, |t| t.min(exp)),
    })
}

/// The reason in words that never carry the token.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not yet valid".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("no {c} claim"),
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key".into(),
        _ => "unusable".into(),
    }
}
