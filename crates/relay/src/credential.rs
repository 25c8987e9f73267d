//! Agent tokens and caller API keys: format, generation, hashing, checking.
//!
//! A credential reads `<prefix><id>_<secret>`: `tta_` for agent tokens,
//! `ttk_` for API keys (recognisable by secret scanners), a 16-hex-digit id
//! used to look the record up, and 64 hex digits (256 bits) of secret from
//! the OS's CSPRNG. Only SHA-256 of the secret is stored: a fast hash is right
//! for random secrets of that size (no dictionary to slow down), and the
//! comparison is constant-time.

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which kind of credential a string claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An agent token (`tta_`).
    AgentToken,
    /// A caller API key (`ttk_`).
    ApiKey,
}

impl Kind {
    /// The prefix credentials of this kind start with.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::AgentToken => "tta_",
            Self::ApiKey => "ttk_",
        }
    }
}

const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A freshly generated credential: shown once, then only its hash is kept.
pub struct NewCredential {
    /// Lookup id (not secret).
    pub id: String,
    /// The whole credential string to hand to the user.
    pub secret: String,
    /// SHA-256 of the secret part, to store.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("id", &self.id)
            .field("secret", &"***")
            .finish()
    }
}

/// A credential string split into its parts, not yet checked.
#[derive(PartialEq, Eq)]
pub struct Presented<'a> {
    /// Lookup id.
    pub id: &'a str,
    /// Secret part.
    secret: &'a str,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Presented<'_> {
    /// Whether the secret hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        self.hash().ct_eq(stored).into()
    }

    /// SHA-256 of the secret part: what a session remembers to tell later
    /// whether it was opened with the current or the rotated-out secret.
    pub fn hash(&self) -> [u8; 32] {
        hash_secret(self.secret)
    }
}

/// Constant-time equality of two hashes.
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Generates a new credential of `kind`.
pub fn generate(kind: Kind) -> NewCredential {
    let mut id = [0u8; ID_HEX / 2];
    random(&mut id);
    regenerate(kind, &hex(&id))
}

/// A new secret for the existing id `id` (rotation keeps the id).
pub fn regenerate(kind: Kind, id: &str) -> NewCredential {
    let mut secret = [0u8; SECRET_HEX / 2];
    random(&mut secret);
    let secret_hex = hex(&secret);
    NewCredential {
        hash: hash_secret(&secret_hex),
        secret: format!("{}{id}_{secret_hex}", kind.prefix()),
        id: id.to_owned(),
    }
}

fn random(buf: &mut [u8]) {
    // The OS RNG failing leaves nothing safe to do but stop.
    OsRng
        .try_fill_bytes(buf)
        .expect("the operating system's random number generator failed");
}

/// Splits `value` into id and secret if it is well-formed for `kind`.
pub fn parse(kind: Kind, value: &str) -> Option<Presented<'_>> {
    let rest = value.strip_prefix(kind.prefix())?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == ID_HEX
        && secret.len() == SECRET_HEX
        && id.bytes().all(is_lower_hex)
        && secret.bytes().all(is_lower_hex);
    well_formed.then_some(Presented { id, secret })
}

/// Extracts the credential from an `Authorization`-style `Bearer` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|s| !s.is_empty())
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_agent_tokens_have_the_form_agents_accept() {
        // Agents accept a pushed token only in this form (tether-wire).
        let token = generate(Kind::AgentToken);
        assert_eq!(
            tether_wire::protocol::agent_token_id(&token.secret),
            Some(token.id.as_str())
        );
        assert_eq!(ID_HEX, tether_wire::protocol::CREDENTIAL_ID_HEX);
        assert_eq!(SECRET_HEX, tether_wire::protocol::CREDENTIAL_SECRET_HEX);
    }

    #[test]
    fn generated_credentials_parse_and_match_their_hash() {
        for kind in [Kind::AgentToken, Kind::ApiKey] {
            let new = generate(kind);
            assert!(new.secret.starts_with(kind.prefix()));
            assert_eq!(new.secret.len(), 4 + ID_HEX + 1 + SECRET_HEX);
            let presented = parse(kind, &new.secret).expect("parses");
            assert_eq!(presented.id, new.id);
            assert!(presented.matches(&new.hash));
        }
    }

    #[test]
    fn two_credentials_differ() {
        let a = generate(Kind::ApiKey);
        let b = generate(Kind::ApiKey);
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let new = generate(Kind::AgentToken);
        let mut forged = new.secret.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(!parse(Kind::AgentToken, &forged).unwrap().matches(&new.hash));
    }

    #[test]
    fn malformed_or_wrong_kind_is_rejected() {
        let token = generate(Kind::AgentToken).secret;
        assert!(parse(Kind::ApiKey, &token).is_none());
        assert!(parse(Kind::AgentToken, "tta_").is_none());
        assert!(parse(Kind::AgentToken, "tta_0123456789abcdef_short").is_none());
        assert!(parse(Kind::AgentToken, &token.to_uppercase()).is_none());
        assert!(parse(Kind::AgentToken, &format!("{token}x")).is_none());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let new = generate(Kind::ApiKey);
        assert!(!format!("{new:?}").contains(&new.secret[20..]));
        let p = parse(Kind::ApiKey, &new.secret).unwrap();
        assert!(!format!("{p:?}").contains(&new.secret[21..]));
    }
}
