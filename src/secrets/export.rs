//! Sealing exported secrets for pipelines.
//!
//! A pipeline asks (through the relay) for secrets by name and names an age
//! X25519 recipient. The agent answers only if *every* name is a secret
//! whose `export` list contains exactly that recipient, and seals each
//! value to it, so the relay, its logs and anyone holding an API key only
//! ever see ciphertext: the recipients are chosen by the customer in the
//! agent's config, never by the cloud side.

use std::collections::BTreeMap;
use std::str::FromStr;

use tether_wire::protocol::{ResolveRequest, ResolveResponse, SealedSecret};

use super::{SecretError, Secrets};

/// Most names one request may ask for.
pub const MAX_NAMES: usize = 100;

/// Why a resolve request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed: no or bad recipient, no or too many names.
    BadRequest(String),
    /// These names are unknown or not exported to the recipient.
    Refused(Vec<String>),
    /// A store could not give a value.
    Unavailable(SecretError),
}

/// Canonical text of an age recipient, or `None` if it is not one.
pub fn parse_recipient(text: &str) -> Option<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(text.trim()).ok()
}

/// Answers `request` (see the module docs).
pub async fn resolve(
    secrets: &Secrets,
    request: &ResolveRequest,
) -> Result<ResolveResponse, Refusal> {
    let Some(text) = request.recipient.as_deref() else {
        return Err(Refusal::BadRequest(
            "recipient is required (an age1… public key)".into(),
        ));
    };
    let recipient = parse_recipient(text)
        .ok_or_else(|| Refusal::BadRequest("recipient is not an age X25519 public key".into()))?;
    if request.names.is_empty() || request.names.len() > MAX_NAMES {
        return Err(Refusal::BadRequest(format!("names: give 1 to {MAX_NAMES}")));
    }
    let canonical = recipient.to_string();
    let refused: Vec<String> = request
        .names
        .iter()
        .filter(|name| {
            !secrets
                .spec(name)
                .is_some_and(|spec| spec.export.contains(&canonical))
        })
        .cloned()
        .collect();
    if !refused.is_empty() {
        return Err(Refusal::Refused(refused));
    }
    let mut sealed = BTreeMap::new();
    for name in &request.names {
        let value = secrets.get(name).await.map_err(Refusal::Unavailable)?;
        let armored =
            age::encrypt_and_armor(&recipient, value.expose().as_bytes()).map_err(|e| {
                Refusal::Unavailable(SecretError::Unavailable {
                    name: name.clone(),
                    reason: format!("sealing failed: {e}"),
                })
            })?;
        sealed.insert(name.clone(), SealedSecret { age: armored });
    }
    Ok(ResolveResponse { secrets: sealed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::config::{SecretSpec, SourceSpec};
    use std::sync::Arc;
    use std::time::Duration;

    async fn setup(export_to: &str) -> Secrets {
        let spec = SecretSpec {
            name: "deploy".into(),
            source: SourceSpec::Env("DEPLOY".into()),
            ttl: Duration::from_secs(60),
            max_stale: Duration::ZERO,
            callers: None,
            export: vec![export_to.to_owned()],
        };
        let mut env = std::collections::BTreeMap::new();
        env.insert("DEPLOY".to_owned(), "dp-value".to_owned());
        Secrets::new(&[spec], None, None, Arc::new(env))
            .await
            .unwrap()
    }

    fn request(names: &[&str], recipient: Option<String>) -> ResolveRequest {
        ResolveRequest {
            names: names.iter().map(|s| s.to_string()).collect(),
            recipient,
        }
    }

    #[tokio::test]
    async fn sealed_value_opens_with_the_identity_only() {
        let identity = age::x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let secrets = setup(&public).await;
        let answer = resolve(&secrets, &request(&["deploy"], Some(public)))
            .await
            .unwrap();
        let armored = &answer.secrets["deploy"].age;
        assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!armored.contains("dp-value"));
        let plain = age::decrypt(&identity, &decode_armor(armored)).unwrap();
        assert_eq!(plain, b"dp-value");
    }

    fn decode_armor(armored: &str) -> Vec<u8> {
        use std::io::Read;
        let mut reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn other_recipients_unknown_names_and_bad_requests_are_refused() {
        let allowed = age::x25519::Identity::generate().to_public().to_string();
        let other = age::x25519::Identity::generate().to_public().to_string();
        let secrets = setup(&allowed).await;
        assert_eq!(
            resolve(&secrets, &request(&["deploy"], Some(other))).await,
            Err(Refusal::Refused(vec!["deploy".into()]))
        );
        assert_eq!(
            resolve(
                &secrets,
                &request(&["deploy", "nope"], Some(allowed.clone()))
            )
            .await,
            Err(Refusal::Refused(vec!["nope".into()]))
        );
        assert!(matches!(
            resolve(&secrets, &request(&["deploy"], None)).await,
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            resolve(&secrets, &request(&["deploy"], Some("age1nope".into()))).await,
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            resolve(&secrets, &request(&[], Some(allowed))).await,
            Err(Refusal::BadRequest(_))
        ));
    }
}
