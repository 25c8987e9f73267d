//! Secrets: resolved inside the customer network, injected into headers the
//! agent's config (or an opted-in caller) places them in, never logged.
//!
//! # Layout
//! - [`placeholder`]: `${{ secrets.NAME }}` templates, origins and the
//!   caller binding rule (pure).
//! - [`config`]: `[secrets.NAME]`, `[vault]`, `[aws]` and their validation.
//! - [`export`]: sealing exported secrets to a pipeline's age recipient.
//! - `vault`, `aws`: the two remote stores.
//!
//! [`Secrets::get`] serves each secret from a cache: a value is reused for
//! its `ttl`; concurrent requests for an expired value wait for one store
//! read (single flight); when the store fails, the last value keeps being
//! served until `ttl + max_stale` has passed since it was read, and a log
//! line and a metric say so.

mod aws;
pub mod config;
pub mod export;
pub mod placeholder;
mod vault;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::env::Env;
use crate::secret::SecretString;
use config::{AwsSettings, SecretSpec, SourceSpec, VaultSettings};

/// After a failed read, how long requests use the stale value (or fail)
/// before the store is asked again, so an outage costs one timeout per
/// secret per interval rather than one per request.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `[secrets.NAME]` with that name.
    #[error("unknown secret {0:?}")]
    Unknown(String),
    /// The store could not give a value and no usable stale one is left.
    #[error("secret {name:?} unavailable: {reason}")]
    Unavailable {
        /// The secret.
        name: String,
        /// What the store said (never the value).
        reason: String,
    },
}

/// Why `value` cannot be used, if it cannot (never quoting it). No use
/// takes CR or LF ([`Secrets::get`] refuses them); a header value
/// (`in_headers`) also takes nothing `HeaderValue` refuses: no control
/// character but tab (NUL, ESC, DEL…; injection answers 502
/// `secret_unavailable` for those).
pub fn unusable(value: &str, in_headers: bool) -> Option<&'static str> {
    if value.contains(['\r', '\n']) {
        return Some("value contains CR or LF, which cannot go in a header");
    }
    if in_headers && http::HeaderValue::from_str(value).is_err() {
        return Some("value contains control characters, which cannot go in a header");
    }
    None
}

/// A store read failed; the message never holds a secret value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

struct Entry {
    spec: SecretSpec,
    state: Mutex<State>,
    /// Held while reading the store: the single flight.
    flight: tokio::sync::Mutex<()>,
    /// Store reads made, for metrics and the single-flight test.
    reads: AtomicU64,
    /// Lookups answered from the cache.
    hits: AtomicU64,
    /// Requests served with a stale value.
    stale_served: AtomicU64,
}

#[derive(Default)]
struct State {
    value: Option<(SecretString, Instant)>,
    failed_at: Option<Instant>,
}

/// The remote stores, built once from config.
struct Stores {
    env: Arc<dyn Env + Send + Sync>,
    vault: Option<vault::VaultStore>,
    aws: Option<aws::AwsStore>,
}

/// Every configured secret with its cache.
pub struct Secrets {
    entries: HashMap<String, Entry>,
    stores: Stores,
}

/// Counters of one secret, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretStats {
    /// The secret.
    pub name: String,
    /// Store reads made (cache misses).
    pub reads: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Requests served with a stale value.
    pub stale_served: u64,
}

impl Secrets {
    /// Builds the stores the specs need.
    pub async fn new(
        specs: &[SecretSpec],
        vault: Option<&VaultSettings>,
        aws: Option<&AwsSettings>,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<Self, FetchError> {
        let needs = |kind: &str| specs.iter().any(|s| s.source.kind() == kind);
        let vault = match (needs("vault"), vault) {
            (true, Some(settings)) => Some(vault::VaultStore::new(settings.clone())?),
            (true, None) => {
                return Err(FetchError(
                    "a secret uses vault but there is no [vault] section".into(),
                ));
            }
            (false, _) => None,
        };
        let aws = if needs("aws") {
            Some(aws::AwsStore::new(aws.cloned().unwrap_or_default()).await)
        } else {
            None
        };
        let entries = specs
            .iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    Entry {
                        spec: spec.clone(),
                        state: Mutex::new(State::default()),
                        flight: tokio::sync::Mutex::new(()),
                        reads: AtomicU64::new(0),
                        hits: AtomicU64::new(0),
                        stale_served: AtomicU64::new(0),
                    },
                )
            })
            .collect();
        Ok(Self {
            entries,
            stores: Stores { env, vault, aws },
        })
    }

    /// The spec of `name`, if configured.
    pub fn spec(&self, name: &str) -> Option<&SecretSpec> {
        self.entries.get(name).map(|e| &e.spec)
    }

    /// Names of every configured secret.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The value of `name` (see the module docs for caching).
    pub async fn get(&self, name: &str) -> Result<SecretString, SecretError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| SecretError::Unknown(name.to_owned()))?;
        if let Some(value) = entry.fresh(Instant::now()) {
            entry.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(value);
        }
        let _flight = entry.flight.lock().await;
        let now = Instant::now();
        // Another request may have refreshed it while we waited.
        if let Some(value) = entry.fresh(now) {
            entry.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(value);
        }
        let recently_failed = {
            let state = entry.lock();
            state
                .failed_at
                .is_some_and(|t| now.duration_since(t) < RETRY_AFTER_FAILURE)
        };
        let reason = if recently_failed {
            "store unreachable (retrying shortly)".to_owned()
        } else {
            entry.reads.fetch_add(1, Ordering::Relaxed);
            match self.fetch(&entry.spec.source).await {
                Ok(value) => match unusable(value.expose(), false) {
                    Some(why) => why.to_owned(),
                    None => {
                        let mut state = entry.lock();
                        state.value = Some((value.clone(), now));
                        state.failed_at = None;
                        return Ok(value);
                    }
                },
                Err(e) => {
                    entry.lock().failed_at = Some(now);
                    e.0
                }
            }
        };
        // The store failed: serve the last value while it is within max_stale.
        let state = entry.lock();
        if let Some((value, read_at)) = &state.value
            && now.duration_since(*read_at) < entry.spec.ttl + entry.spec.max_stale
        {
            entry.stale_served.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(secret = %name, store = entry.spec.source.kind(), error = %reason,
                age_s = now.duration_since(*read_at).as_secs(), "serving a stale secret value");
            return Ok(value.clone());
        }
        tracing::warn!(secret = %name, store = entry.spec.source.kind(), error = %reason, "secret unavailable");
        Err(SecretError::Unavailable {
            name: name.to_owned(),
            reason,
        })
    }

    /// Reads the store once, bypassing the cache (for `tether-agent
    /// check`), and checks the value as a request would use it: never with
    /// CR or LF, and, when the secret goes into headers (`in_headers`),
    /// only bytes a header value may hold ([`unusable`]).
    pub async fn check(&self, name: &str, in_headers: bool) -> Result<(), SecretError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| SecretError::Unknown(name.to_owned()))?;
        let unavailable = |reason: String| SecretError::Unavailable {
            name: name.to_owned(),
            reason,
        };
        let value = self
            .fetch(&entry.spec.source)
            .await
            .map_err(|e| unavailable(e.0))?;
        match unusable(value.expose(), in_headers) {
            Some(why) => Err(unavailable(format!("unusable: {why}"))),
            None => Ok(()),
        }
    }

    /// Counters per secret.
    pub fn stats(&self) -> Vec<SecretStats> {
        let mut stats: Vec<_> = self
            .entries
            .values()
            .map(|e| SecretStats {
                name: e.spec.name.clone(),
                reads: e.reads.load(Ordering::Relaxed),
                hits: e.hits.load(Ordering::Relaxed),
                stale_served: e.stale_served.load(Ordering::Relaxed),
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    async fn fetch(&self, source: &SourceSpec) -> Result<SecretString, FetchError> {
        match source {
            SourceSpec::Env(var) => self
                .stores
                .env
                .var(var)
                .map(SecretString::from)
                .ok_or_else(|| FetchError(format!("environment variable {var} is not set"))),
            SourceSpec::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|s| SecretString::from(s.trim().to_owned()))
                .map_err(|e| FetchError(format!("{}: {e}", path.display()))),
            SourceSpec::Vault { path, field } => match &self.stores.vault {
                Some(vault) => vault.read(path, field).await,
                None => Err(FetchError("no [vault] configured".into())),
            },
            SourceSpec::Aws {
                id,
                key,
                version_stage,
            } => match &self.stores.aws {
                Some(aws) => aws.read(id, key.as_deref(), version_stage.as_deref()).await,
                None => Err(FetchError("AWS store not initialised".into())),
            },
        }
    }
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, now: Instant) -> Option<SecretString> {
        let state = self.lock();
        state
            .value
            .as_ref()
            .filter(|(_, read_at)| now.duration_since(*read_at) < self.spec.ttl)
            .map(|(value, _)| value.clone())
    }
}

/// Pulls `field` out of a JSON object, as a string (numbers and booleans
/// are rendered; nested values refused).
pub(crate) fn json_field(doc: &serde_json::Value, field: &str) -> Result<SecretString, FetchError> {
    match doc.get(field) {
        Some(serde_json::Value::String(s)) => Ok(SecretString::from(s.clone())),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(SecretString::from(v.to_string()))
        }
        Some(_) => Err(FetchError(format!("field {field:?} is not a string"))),
        None => Err(FetchError(format!("no field {field:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn spec(name: &str, source: SourceSpec, ttl: Duration, max_stale: Duration) -> SecretSpec {
        SecretSpec {
            name: name.into(),
            source,
            ttl,
            max_stale,
            callers: None,
            export: vec![],
        }
    }

    async fn secrets(specs: &[SecretSpec]) -> Secrets {
        let mut env = BTreeMap::new();
        env.insert("TOKEN_VAR".to_owned(), "from-env".to_owned());
        env.insert("BAD_VAR".to_owned(), "line1\r\nInjected: yes".to_owned());
        Secrets::new(specs, None, None, Arc::new(env))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn env_and_file_sources_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "  from-file\n").unwrap();
        let s = secrets(&[
            spec(
                "a",
                SourceSpec::Env("TOKEN_VAR".into()),
                Duration::from_secs(60),
                Duration::ZERO,
            ),
            spec(
                "b",
                SourceSpec::File(file),
                Duration::from_secs(60),
                Duration::ZERO,
            ),
        ])
        .await;
        assert_eq!(s.get("a").await.unwrap().expose(), "from-env");
        assert_eq!(s.get("b").await.unwrap().expose(), "from-file");
        assert_eq!(s.get("zzz").await, Err(SecretError::Unknown("zzz".into())));
    }

    #[test]
    fn unusable_values_are_named_never_quoted() {
        assert_eq!(unusable("Bearer abc\tdef ~", true), None);
        assert!(unusable("a\r\nInjected: yes", false).is_some());
        assert!(unusable("a\nb", false).is_some());
        // Bytes past ASCII are obs-text, which a header value may hold.
        assert_eq!(unusable("pässword", true), None);
        for bad in ["a\u{0}b", "a\u{1b}[31m", "a\u{7f}", "a\u{1}"] {
            assert!(unusable(bad, true).is_some(), "{bad:?}");
            // Export seals any bytes but CR and LF.
            assert_eq!(unusable(bad, false), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn values_with_cr_or_lf_are_refused() {
        let s = secrets(&[spec(
            "bad",
            SourceSpec::Env("BAD_VAR".into()),
            Duration::from_secs(60),
            Duration::ZERO,
        )])
        .await;
        let err = s.get("bad").await.unwrap_err();
        assert!(err.to_string().contains("CR or LF"), "{err}");
        assert!(!err.to_string().contains("Injected"));
    }

    #[tokio::test]
    async fn cache_serves_within_ttl_then_rereads_and_single_flights() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "v1").unwrap();
        let s = Arc::new(
            secrets(&[spec(
                "f",
                SourceSpec::File(file.clone()),
                Duration::from_millis(300),
                Duration::ZERO,
            )])
            .await,
        );
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move { s.get("f").await.unwrap() }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().expose(), "v1");
        }
        assert_eq!(s.stats()[0].reads, 1, "100 concurrent requests, one read");
        std::fs::write(&file, "v2").unwrap();
        assert_eq!(s.get("f").await.unwrap().expose(), "v1", "still within ttl");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(s.get("f").await.unwrap().expose(), "v2");
        assert_eq!(s.stats()[0].reads, 2);
    }

    #[tokio::test]
    async fn stale_value_serves_during_outage_until_max_stale() {
        let dir = tempfile::tempdir().unwrap();
        let file: PathBuf = dir.path().join("s");
        std::fs::write(&file, "good").unwrap();
        let s = secrets(&[spec(
            "f",
            SourceSpec::File(file.clone()),
            Duration::from_millis(100),
            Duration::from_millis(400),
        )])
        .await;
        assert_eq!(s.get("f").await.unwrap().expose(), "good");
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            s.get("f").await.unwrap().expose(),
            "good",
            "stale while the store is down"
        );
        assert_eq!(s.stats()[0].stale_served, 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(matches!(
            s.get("f").await,
            Err(SecretError::Unavailable { .. })
        ));
    }
}
