//! Unit tests of the verification rules, with keys made here (rcgen) and
//! tokens signed here. The end-to-end tests use a real issuer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::jwks::{JwksError, KeySet};
use super::verify::{Invalid, Rules, verify};

struct Issuer {
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn issuer(kid: &str) -> Issuer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65);
    Issuer {
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..])}),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rules() -> Rules {
    Rules {
        issuer: "https://idp.example".into(),
        audiences: vec!["tether".into()],
        user_claim: "sub".into(),
        groups_claim: "groups".into(),
        leeway: Duration::from_secs(30),
        max_age: Some(Duration::from_secs(3600)),
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://idp.example", "aud": "tether", "sub": "user:default/jane",
        "groups": ["group:default/platform", "dev"], "iat": now(), "exp": now() + 600})
}

fn sign(issuer: &Issuer, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &issuer.key).unwrap()
}

fn keys(jwks: &[&serde_json::Value]) -> KeySet {
    KeySet::parse(json!({ "keys": jwks }).to_string().as_bytes()).unwrap()
}

/// A token with `header` (JSON) and `claims`, its signature part copied
/// from `signed` (so only what the test changes differs).
fn forged(header: serde_json::Value, claims: &serde_json::Value, signed: &str) -> String {
    let sig = signed.rsplit('.').next().unwrap();
    format!(
        "{}.{}.{sig}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[test]
fn a_good_token_gives_its_user_and_groups() {
    let idp = issuer("k1");
    let set = keys(&[&idp.jwk]);
    let user = verify(&sign(&idp, Some("k1"), &claims()), &set, &rules(), now()).unwrap();
    assert_eq!(user.name, "user:default/jane");
    assert_eq!(user.groups, ["group:default/platform", "dev"]);
    // A single group as a string is one group.
    let mut c = claims();
    c["groups"] = json!("ops");
    let user = verify(&sign(&idp, Some("k1"), &c), &set, &rules(), now()).unwrap();
    assert_eq!(user.groups, ["ops"]);
}

#[test]
fn none_hmac_and_wrong_family_are_refused() {
    let idp = issuer("k1");
    let set = keys(&[&idp.jwk]);
    let good = sign(&idp, Some("k1"), &claims());
    for alg in ["none", "HS256", "RS256", "ES384"] {
        let token = forged(json!({"alg": alg, "kid": "k1"}), &claims(), &good);
        assert!(verify(&token, &set, &rules(), now()).is_err(), "{alg}");
    }
    // The public key as an HMAC secret: the classic forgery.
    let secret = serde_json::to_vec(&idp.jwk).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hmac =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(
        verify(&hmac, &set, &rules(), now()),
        Err(Invalid::Algorithm)
    );
}

#[test]
fn embedded_keys_and_key_urls_are_never_used() {
    let idp = issuer("k1");
    let attacker = issuer("k1");
    let set = keys(&[&idp.jwk]);
    let signed = sign(&attacker, Some("k1"), &claims());
    let header = json!({"alg": "ES256", "kid": "k1", "jwk": attacker.jwk,
        "jku": "http://127.0.0.1:1/jwks", "x5u": "http://127.0.0.1:1/x5u"});
    let token = forged(header, &claims(), &signed);
    assert!(matches!(
        verify(&token, &set, &rules(), now()),
        Err(Invalid::Rejected(_) | Invalid::Malformed)
    ));
}

#[test]
fn unknown_kid_crit_issuer_audience_and_times_are_refused() {
    let idp = issuer("k1");
    let set = keys(&[&idp.jwk]);
    assert_eq!(
        verify(&sign(&idp, Some("k2"), &claims()), &set, &rules(), now()),
        Err(Invalid::UnknownKey)
    );
    let good = sign(&idp, Some("k1"), &claims());
    let crit = forged(
        json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
        &claims(),
        &good,
    );
    assert_eq!(verify(&crit, &set, &rules(), now()), Err(Invalid::Critical));

    let cases: [(&str, serde_json::Value); 7] = [
        ("iss", json!("https://other.example")),
        ("aud", json!("someone-else")),
        ("exp", json!(now() - 120)),
        ("nbf", json!(now() + 600)),
        ("iat", json!(now() - 7200)),
        ("iat", json!(now() + 600)),
        ("sub", json!("")),
    ];
    for (claim, value) in cases {
        let mut c = claims();
        c[claim] = value.clone();
        assert!(
            verify(&sign(&idp, Some("k1"), &c), &set, &rules(), now()).is_err(),
            "{claim} = {value}"
        );
    }
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert!(
        verify(&sign(&idp, Some("k1"), &c), &set, &rules(), now()).is_err(),
        "no exp"
    );

    // A tampered payload fails the signature.
    let mut c = claims();
    c["sub"] = json!("user:default/admin");
    let tampered = forged(json!({"alg": "ES256", "kid": "k1"}), &c, &good);
    assert!(matches!(
        verify(&tampered, &set, &rules(), now()),
        Err(Invalid::Rejected(_))
    ));
    // The detail never carries the token.
    let err = verify(&tampered, &set, &rules(), now())
        .unwrap_err()
        .to_string();
    assert!(!err.contains(&tampered[..20]), "{err}");
}

#[test]
fn jwks_documents_are_bounded_and_unusable_keys_skipped() {
    let idp = issuer("k1");
    let mut enc = idp.jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc");
    let hmac = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
    let set = keys(&[&idp.jwk, &enc, &hmac]);
    assert_eq!(set.candidates(Some("enc")).len(), 0);
    assert_eq!(set.candidates(Some("h")).len(), 0);
    assert_eq!(set.candidates(Some("k1")).len(), 1);

    assert_eq!(
        KeySet::parse(json!({"keys": [hmac]}).to_string().as_bytes()).err(),
        Some(JwksError::NoUsableKey)
    );
    let many: Vec<_> = (0..101).map(|_| idp.jwk.clone()).collect();
    assert_eq!(
        KeySet::parse(json!({ "keys": many }).to_string().as_bytes()).err(),
        Some(JwksError::TooManyKeys)
    );
    assert_eq!(KeySet::parse(b"not json").err(), Some(JwksError::Malformed));
    assert_eq!(
        KeySet::parse(&vec![b' '; 300 * 1024]).err(),
        Some(JwksError::TooLarge)
    );
    // A key naming an algorithm of another family is never usable.
    let mut wrong = idp.jwk.clone();
    wrong["alg"] = json!("RS256");
    assert_eq!(
        KeySet::parse(json!({"keys": [wrong]}).to_string().as_bytes()).err(),
        Some(JwksError::NoUsableKey)
    );
}
