//! The issuer's keys kept fresh, and tokens verified against them with a
//! cache (DESIGN.md: refreshed every `jwks_refresh` and on an unknown
//! `kid` at most once per 30 s; served up to `jwks_max_age` while the
//! issuer cannot be reached; verified tokens cached by their SHA-256 until
//! `exp`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderName;
use sha2::{Digest, Sha256};

use super::config::IdentitySettings;
use super::fetch::{FetchError, Fetcher};
use super::jwks::KeySet;
use super::verify::{Invalid, Rules, User, verify};

/// An unknown `kid` makes the agent fetch the keys again at most this
/// often: a stream of made-up `kid`s must not become a stream of fetches.
pub const KID_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// After a failed fetch, the next try comes after this or `jwks_refresh`,
/// whichever is shorter.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Most verified tokens kept: beyond this, expired entries go, then all.
const CACHE_ENTRIES: usize = 10_000;

/// Why a request needing identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, or one that fails verification: 401 `identity_invalid`.
    #[error("{0}")]
    Invalid(Invalid),
    /// No token in the header.
    #[error("no bearer token")]
    Missing,
    /// No usable keys (never fetched, or the issuer unreachable for longer
    /// than `jwks_max_age`): 502 `identity_unavailable`.
    #[error("no usable issuer keys")]
    Unavailable,
}

/// The keys as last fetched.
#[derive(Default)]
struct Keys {
    set: Option<Arc<KeySet>>,
    /// When `set` was last fetched successfully.
    fetched: Option<Instant>,
    /// SHA-256 of the document `set` came from: a changed document
    /// empties the token cache (a removed key stops working at once).
    digest: [u8; 32],
    /// Fetch attempts finished so far; a request that waited for a fetch
    /// in progress does not start another.
    attempts: u64,
    /// When an unknown `kid` last caused a fetch.
    kid_refresh: Option<Instant>,
}

/// Verifies end-user tokens for one `[identity]`.
pub struct Verifier {
    settings: IdentitySettings,
    rules: Rules,
    fetcher: Fetcher,
    keys: RwLock<Keys>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    cache: Mutex<HashMap<[u8; 32], Arc<User>>>,
}

impl Verifier {
    /// A verifier for `settings`; keys are fetched by [`Self::spawn_refresh`]
    /// or on first use.
    pub fn new(settings: &IdentitySettings) -> Result<Self, FetchError> {
        Ok(Self {
            rules: settings.rules(),
            fetcher: Fetcher::new(settings)?,
            settings: settings.clone(),
            keys: RwLock::new(Keys::default()),
            fetching: tokio::sync::Mutex::new(()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The settings it verifies with.
    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// The header the token arrives in.
    pub fn header(&self) -> &HeaderName {
        &self.settings.header
    }

    /// The issuer, for audit lines.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Fetches the keys every `jwks_refresh` (sooner after a failure)
    /// while the verifier lives; a reload's new verifier takes over.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                let Some(verifier) = weak.upgrade() else {
                    return;
                };
                let ok = verifier.refresh().await.is_ok();
                let every = verifier.settings.jwks_refresh;
                drop(verifier);
                let wait = if ok {
                    every
                } else {
                    every.min(RETRY_AFTER_FAILURE)
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Fetches the keys now (unless a fetch finished while this one
    /// waited for its turn).
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let seen = self.read().attempts;
        let _turn = self.fetching.lock().await;
        if self.read().attempts != seen {
            return Ok(());
        }
        let result = self.fetcher.fetch().await;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.attempts += 1;
        let document = match result {
            Ok(document) => document,
            Err(e) => {
                tracing::warn!(issuer = %self.settings.issuer, error = %e,
                    "identity: cannot fetch the issuer's keys; the last ones stay in use up to jwks_max_age");
                return Err(e);
            }
        };
        match KeySet::parse(&document) {
            Ok(set) => {
                let digest: [u8; 32] = Sha256::digest(&document).into();
                if digest != keys.digest {
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    tracing::info!(issuer = %self.settings.issuer, "identity: issuer keys loaded");
                }
                keys.set = Some(Arc::new(set));
                keys.digest = digest;
                keys.fetched = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.settings.issuer, error = %e,
                    "identity: the issuer's JWKS document is unusable; the last keys stay in use");
                Ok(())
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys if usable: fetched, and (from a URL) within
    /// `jwks_max_age` of the last successful fetch.
    fn usable_keys(&self) -> Option<Arc<KeySet>> {
        let keys = self.read();
        let fresh = self.fetcher.is_file()
            || keys
                .fetched
                .is_some_and(|t| t.elapsed() <= self.settings.jwks_max_age);
        keys.set.clone().filter(|_| fresh)
    }

    /// The user `value` (the token header's value) is for.
    pub async fn verify(&self, value: &str) -> Result<Arc<User>, Refusal> {
        let token = bearer(value).ok_or(Refusal::Missing)?;
        let keys = match self.usable_keys() {
            Some(keys) => keys,
            None => {
                // Never fetched yet (the agent just started): wait for the
                // fetch in progress, or make one.
                if self.read().attempts == 0 {
                    let _ = self.refresh().await;
                }
                self.usable_keys().ok_or(Refusal::Unavailable)?
            }
        };
        let now = unix_now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.cached(&digest, now) {
            return Ok(user);
        }
        let user = match verify(token, &keys, &self.rules, now) {
            Err(Invalid::UnknownKey) if self.may_refresh_for_kid() => {
                let _ = self.refresh().await;
                let keys = self.usable_keys().ok_or(Refusal::Unavailable)?;
                verify(token, &keys, &self.rules, now)
            }
            other => other,
        }
        .map_err(Refusal::Invalid)?;
        let user = Arc::new(user);
        self.remember(digest, user.clone(), now);
        Ok(user)
    }

    /// Whether an unknown `kid` may cause a fetch now (and notes that it
    /// does).
    fn may_refresh_for_kid(&self) -> bool {
        if self.fetcher.is_file() {
            return false;
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        match keys.kid_refresh {
            Some(t) if t.elapsed() < KID_REFRESH_INTERVAL => false,
            _ => {
                keys.kid_refresh = Some(Instant::now());
                true
            }
        }
    }

    fn cached(&self, digest: &[u8; 32], now: u64) -> Option<Arc<User>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(digest).filter(|user| user.expires > now).cloned()
    }

    fn remember(&self, digest: [u8; 32], user: Arc<User>, now: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, u| u.expires > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(digest, user);
    }
}

/// The token in `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_tokens_only() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
