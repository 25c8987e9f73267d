//! In-process cost of end-user identity (issue 19), without the network:
//! `cargo bench --bench identity`. Prints the median of each step:
//!
//! - uncached: verifying a token not seen before (ES256 signature, claims);
//! - cached: a token the verifier has seen (SHA-256 + cache lookup);
//! - policy: one evaluation of a small Rego policy.
//!
//! `bench/identity.sh` measures the added p50 through relay and agent.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tether_agent::identity::config::{IdentitySettings, KeySource};
use tether_agent::identity::jwks::KeySet;
use tether_agent::identity::keys::Verifier;
use tether_agent::identity::verify::verify;
use tether_agent::rego::Policy;
use tether_agent::rego::input::Input;

const ROUNDS: usize = 2_000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = pair.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "use": "sig",
        "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..])}]});
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k".into());
    let tokens: Vec<String> = (0..ROUNDS)
        .map(|i| {
            let claims = serde_json::json!({"iss": "https://idp.example", "aud": "tether",
                "sub": format!("user:default/u{i}"), "groups": ["group:default/platform", "dev"],
                "iat": now, "exp": now + 3600});
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        })
        .collect();

    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(jwks.to_string().as_bytes()).expect("write");
    let settings = IdentitySettings {
        issuer: "https://idp.example".into(),
        keys: KeySource::File(file.path().to_owned()),
        audiences: vec!["tether".into()],
        header: http::header::AUTHORIZATION,
        user_claim: "sub".into(),
        groups_claim: "groups".into(),
        leeway: Duration::from_secs(30),
        max_age: None,
        jwks_refresh: Duration::from_secs(300),
        jwks_max_age: Duration::from_secs(86_400),
        ca_file: None,
        proxy: None,
    };
    let keys = KeySet::parse(jwks.to_string().as_bytes()).expect("jwks");
    let rules = settings.rules();
    let uncached = median(
        tokens
            .iter()
            .map(|t| {
                let start = Instant::now();
                verify(t, &keys, &rules, now).expect("valid");
                start.elapsed()
            })
            .collect(),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let verifier = Verifier::new(&settings).expect("verifier");
    let bearer = format!("Bearer {}", tokens[0]);
    runtime.block_on(verifier.verify(&bearer)).expect("first");
    let cached = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                runtime.block_on(verifier.verify(&bearer)).expect("cached");
                start.elapsed()
            })
            .collect(),
    );

    let mut rego = tempfile::Builder::new()
        .suffix(".rego")
        .tempfile()
        .expect("temp file");
    rego.write_all(
        b"package tether\n\ndefault allow := false\n\nallow if {\n\tinput.method == \"GET\"\n\t\"group:default/platform\" in input.groups\n}\n",
    )
    .expect("write");
    let policy = Policy::load(rego.path()).expect("policy");
    let input = Input {
        method: "GET".into(),
        path: "/api/v1/pods".into(),
        query: String::new(),
        headers: [("accept".to_owned(), vec!["application/json".to_owned()])].into(),
        upgrade: None,
        route: "k8s".into(),
        caller_key_id: "0123456789abcdef".into(),
        user: Some("user:default/jane".into()),
        groups: vec!["group:default/platform".into(), "dev".into()],
    };
    let evaluated = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                assert!(policy.evaluate(&input, "bench").allow);
                start.elapsed()
            })
            .collect(),
    );
    println!("| step | median |");
    println!("|---|---|");
    println!("| verify, uncached (ES256 + claims) | {uncached:?} |");
    println!("| verify, cached (SHA-256 + lookup) | {cached:?} |");
    println!("| small policy evaluation | {evaluated:?} |");
}
