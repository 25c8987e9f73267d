//! What the store holds about a credential, as the relay and its CLI see
//! it (never a secret).

use std::time::UNIX_EPOCH;

use crate::credential::{self, Kind, Presented};

/// A stored credential (agent token or API key), without any secret.
#[derive(Debug, Clone)]
pub struct CredentialRecord {
    /// Lookup id.
    pub id: String,
    /// Account the credential belongs to.
    pub account: String,
    /// Optional human name.
    pub name: Option<String>,
    /// SHA-256 of the current secret.
    pub(super) hash: Vec<u8>,
    /// SHA-256 of the previous secret while a rotation's grace lasts.
    pub(super) prev_hash: Option<Vec<u8>>,
    /// End of the rotation grace (unix seconds).
    pub prev_until: Option<i64>,
    /// Creation time (unix seconds).
    pub created: i64,
    /// Last successful use (unix seconds), updated at most once a minute.
    pub last_used: Option<i64>,
    /// Expiry (unix seconds), if any.
    pub expires: Option<i64>,
    /// Revocation time (unix seconds), if revoked.
    pub revoked: Option<i64>,
}

/// Where a credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Usable.
    Active,
    /// Rotated: the previous secret stays valid until this time.
    Rotating {
        /// End of the grace (unix seconds).
        until: i64,
    },
    /// Revoked: refused, sessions closed.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Active => f.write_str("active"),
            Self::Rotating { until } => write!(f, "rotating until {}", rfc3339(*until)),
            Self::Revoked => f.write_str("revoked"),
            Self::Expired => f.write_str("expired"),
        }
    }
}

impl CredentialRecord {
    /// Whether `presented` is a currently valid secret for this record.
    pub fn accepts(&self, presented: &Presented<'_>, now: i64) -> bool {
        self.accepts_hash(&presented.hash(), now)
    }

    /// Whether a secret hashing to `hash` is currently valid. Both stored
    /// hashes are always compared, so the time taken does not depend on
    /// which one matched.
    pub fn accepts_hash(&self, hash: &[u8], now: i64) -> bool {
        if self.revoked.is_some() || self.expires.is_some_and(|e| now >= e) {
            return false;
        }
        let current = credential::same_hash(hash, &self.hash);
        let previous = match (&self.prev_hash, self.prev_until) {
            (Some(h), Some(until)) => credential::same_hash(hash, h) && now < until,
            _ => false,
        };
        current | previous
    }

    /// Until when a secret hashing to `hash` stays valid if nothing else
    /// changes: the expiry, or the end of a rotation grace for the old
    /// secret. `None`: no end.
    pub fn valid_until(&self, hash: &[u8]) -> Option<i64> {
        let grace_end = if credential::same_hash(hash, &self.hash) {
            None
        } else {
            self.prev_until
        };
        match (self.expires, grace_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Where it stands at `now`.
    pub fn status(&self, now: i64) -> Status {
        if self.revoked.is_some() {
            Status::Revoked
        } else if self.expires.is_some_and(|e| now >= e) {
            Status::Expired
        } else if let Some(until) = self.prev_until.filter(|u| now < *u) {
            Status::Rotating { until }
        } else {
            Status::Active
        }
    }

    /// The listing shape: `{id, account, name, created, last_used, expires,
    /// status}`; never a secret or hash.
    pub fn to_json(&self, now: i64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "account": self.account,
            "name": self.name,
            "created": rfc3339(self.created),
            "last_used": self.last_used.map(rfc3339),
            "expires": self.expires.map(rfc3339),
            "status": self.status(now).to_string(),
        })
    }
}

/// A change recorded in `credential_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEvent {
    /// Position in the log.
    pub seq: i64,
    /// Token or key.
    pub kind: Kind,
    /// Which credential.
    pub credential_id: String,
    /// `created`, `rotated` or `revoked`.
    pub event: String,
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(t: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
