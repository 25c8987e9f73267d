//! The issuer's signing keys (a JWKS document), each bound to the one
//! algorithm family its type and curve allow, so a token can never pick
//! how its signature is checked: no `none`, no HMAC (a public key used as
//! an HMAC secret is the classic forgery), no RSA key checked as EC.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Largest JWKS document taken (DESIGN.md: 256 KiB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Most keys taken from one document (DESIGN.md: 100).
pub const MAX_KEYS: usize = 100;

/// One usable verification key.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The algorithms a token signed with this key may name.
    pub algorithms: &'static [Algorithm],
    /// The key itself.
    pub key: DecodingKey,
}

/// The issuer's usable keys, by `kid` (keys without one are usable only by
/// tokens without one).
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyingKey>,
    without_kid: Vec<VerifyingKey>,
}

/// A JWKS document that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Over [`MAX_JWKS_BYTES`].
    #[error("JWKS document over {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// Not JSON with a `keys` array.
    #[error("not a JWKS document (JSON with a \"keys\" array)")]
    Malformed,
    /// Over [`MAX_KEYS`] keys.
    #[error("JWKS document with more than {MAX_KEYS} keys")]
    TooManyKeys,
    /// No key it holds can verify a token.
    #[error("no usable signing key (RSA, EC P-256 or Ed25519, not use=enc)")]
    NoUsableKey,
}

impl KeySet {
    /// Parses a JWKS document; keys this agent cannot or must not use are
    /// skipped (encryption keys, symmetric keys, unknown types or curves).
    pub fn parse(document: &[u8]) -> Result<Self, JwksError> {
        if document.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let value: serde_json::Value =
            serde_json::from_slice(document).map_err(|_| JwksError::Malformed)?;
        let keys = value
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or(JwksError::Malformed)?;
        if keys.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut set = Self::default();
        for key in keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else {
                continue;
            };
            let Some(verifying) = usable(&jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid.clone(), verifying);
                }
                None => set.without_kid.push(verifying),
            }
        }
        if set.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(set)
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.without_kid.is_empty()
    }

    /// The keys a token with header `kid` may be checked against.
    pub fn candidates(&self, kid: Option<&str>) -> Vec<&VerifyingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).into_iter().collect(),
            None => self.without_kid.iter().collect(),
        }
    }
}

const RSA: &[Algorithm] = &[Algorithm::RS256, Algorithm::PS256];
const ES256: &[Algorithm] = &[Algorithm::ES256];
const EDDSA: &[Algorithm] = &[Algorithm::EdDSA];

/// The key bound to its algorithms, or `None` for a key never to use.
fn usable(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithms = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => ES256,
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => EDDSA,
        // HMAC secrets, other curves, unknown types: never.
        _ => return None,
    };
    // A key that names its algorithm allows only that one, and only if it
    // belongs to the key's family.
    let algorithms: &'static [Algorithm] = match jwk.common.key_algorithm {
        None => algorithms,
        Some(named) => {
            let named = match named {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return None,
            };
            let index = algorithms.iter().position(|a| *a == named)?;
            &algorithms[index..=index]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey { algorithms, key })
}
