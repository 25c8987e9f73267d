//! Checking agent tokens and caller API keys against the store.
//!
//! Verified records are cached for a few seconds so the hot path neither
//! queries the database nor waits on it; hashing the presented secret costs
//! one SHA-256 of 64 bytes. `last_used` is written at most once a minute per
//! credential, off the request path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::credential::{self, Kind};
use crate::store::{CredentialRecord, Store, StoreError, unix_now};

/// How long a record read from the store is trusted.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// How often `last_used` is written for one credential.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Bound on cached records, so random ids cannot grow memory without end.
const CACHE_MAX: usize = 100_000;

/// Who a valid credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account.
    pub account: String,
    /// The credential's lookup id (safe to log).
    pub credential_id: String,
    /// SHA-256 of the secret presented: tells a session opened with a
    /// rotated-out secret from one opened with the current one.
    pub secret_hash: [u8; 32],
    /// When this secret stops being valid if nothing changes (expiry or end
    /// of a rotation grace), unix seconds.
    pub valid_until: Option<i64>,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, or not of the expected form.
    #[error("missing or malformed credential")]
    Malformed,
    /// Unknown id, wrong secret, revoked or expired.
    #[error("invalid credential")]
    Invalid,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Cached {
    record: Option<CredentialRecord>,
    fetched: Instant,
    touched: Option<Instant>,
}

/// Verifies credentials; shared by all connections.
pub struct Authenticator {
    store: Store,
    cache: Mutex<HashMap<(KindKey, String), Cached>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KindKey {
    Token,
    Key,
}

impl From<Kind> for KindKey {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::AgentToken => Self::Token,
            Kind::ApiKey => Self::Key,
        }
    }
}

impl Authenticator {
    /// An authenticator reading `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a bearer credential `value` of `kind`.
    pub async fn verify(&self, kind: Kind, value: &str) -> Result<Identity, AuthError> {
        let presented = credential::parse(kind, value).ok_or(AuthError::Malformed)?;
        let key = (KindKey::from(kind), presented.id.to_owned());
        let now = Instant::now();
        let cached = self.cached(&key, now);
        let record = match cached {
            Some(record) => record,
            None => {
                let record = match kind {
                    Kind::AgentToken => self.store.token(presented.id).await?,
                    Kind::ApiKey => self.store.key(presented.id).await?,
                };
                self.remember(key.clone(), record.clone(), now);
                record
            }
        };
        let record = record.ok_or(AuthError::Invalid)?;
        let secret_hash = presented.hash();
        if !record.accepts_hash(&secret_hash, unix_now()) {
            return Err(AuthError::Invalid);
        }
        if self.due_for_touch(&key, now) {
            let store = self.store.clone();
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch(kind, &id).await {
                    tracing::warn!(error = %e, credential_id = %id, "could not record last use");
                }
            });
        }
        Ok(Identity {
            valid_until: record.valid_until(&secret_hash),
            account: record.account,
            credential_id: record.id,
            secret_hash,
        })
    }

    /// Drops the cached record of a credential (it changed in the store).
    pub fn forget(&self, kind: Kind, id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(&(KindKey::from(kind), id.to_owned()));
    }

    /// The store this authenticator reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn cached(&self, key: &(KindKey, String), now: Instant) -> Option<Option<CredentialRecord>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|c| now.duration_since(c.fetched) < CACHE_TTL)
            .map(|c| c.record.clone())
    }

    fn remember(&self, key: (KindKey, String), record: Option<CredentialRecord>, now: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, c| now.duration_since(c.fetched) < CACHE_TTL);
        }
        if cache.len() >= CACHE_MAX {
            return;
        }
        let touched = cache.get(&key).and_then(|c| c.touched);
        cache.insert(
            key,
            Cached {
                record,
                fetched: now,
                touched,
            },
        );
    }

    fn due_for_touch(&self, key: &(KindKey, String), now: Instant) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get_mut(key) {
            Some(c)
                if c.touched
                    .is_none_or(|t| now.duration_since(t) >= TOUCH_EVERY) =>
            {
                c.touched = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_valid_and_refuses_forged_or_cross_kind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Store::open(&url).await.unwrap();
        let key = store.create_key("acme", None).await.unwrap();
        let token = store.create_token("acme", None, None).await.unwrap();
        let auth = Authenticator::new(store);

        let id = auth.verify(Kind::ApiKey, &key.secret).await.unwrap();
        assert_eq!(id.account, "acme");
        assert_eq!(id.secret_hash, key.hash);
        assert_eq!(id.credential_id, key.id);
        // Second time from the cache: same answer.
        assert_eq!(auth.verify(Kind::ApiKey, &key.secret).await.unwrap(), id);

        let forged = format!("{}{}", &key.secret[..key.secret.len() - 1], "0");
        let forged = if forged == key.secret {
            format!("{}{}", &key.secret[..key.secret.len() - 1], "1")
        } else {
            forged
        };
        assert!(matches!(
            auth.verify(Kind::ApiKey, &forged).await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            auth.verify(Kind::ApiKey, &token.secret).await,
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            auth.verify(Kind::AgentToken, "ttk_nope").await,
            Err(AuthError::Malformed)
        ));
    }
}
