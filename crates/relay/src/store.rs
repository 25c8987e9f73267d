//! The relay's durable state: accounts, agent tokens and caller API keys.
//!
//! SQLite by default (the file is created if missing) or Postgres, through
//! sqlx's `Any` driver: one set of queries written in the SQL both accept
//! (`$N` parameters, `ON CONFLICT DO NOTHING`), and a schema per backend in
//! `migrations/{sqlite,postgres}/`, embedded in the binary. Secrets are
//! never stored, only SHA-256 hashes of them (see [`crate::credential`]).

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::credential::{self, Kind, NewCredential, Presented};

mod sqlite_file;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `[store] url` names a database this build cannot open.
    #[error("unsupported store url: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl,
    /// The database rejected a query or could not be opened.
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded schema could not be applied.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Postgres did not accept a connection; the cause is named.
    #[error("{0}")]
    Unreachable(String),
    /// An account name that cannot be used.
    #[error("invalid account name {0:?}: use 1-64 letters, digits, '.', '_' or '-'")]
    InvalidAccount(String),
}

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
    hash: Vec<u8>,
    /// SHA-256 of the previous secret while a rotation's grace lasts.
    prev_hash: Option<Vec<u8>>,
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

/// Which database a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file: one relay process, or several on one host.
    Sqlite,
    /// Postgres: any number of relays.
    Postgres,
}

impl Backend {
    /// The backend a `[store] url` names.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

/// Postgres channel notified (at commit) of every credential event.
const EVENTS_CHANNEL: &str = "tether_credential_events";

const TOKEN_COLUMNS: &str =
    "id, account, name, hash, prev_hash, prev_until, created, last_used, expires, revoked";
const KEY_COLUMNS: &str = "id, account, name, hash, NULL AS prev_hash, NULL AS prev_until, \
     created, last_used, NULL AS expires, revoked";

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the
    /// embedded schema.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let backend = Backend::of(url).ok_or(StoreError::UnsupportedUrl)?;
        if backend == Backend::Postgres {
            // Fail in seconds with the cause, not after the pool's 30 s
            // with "timed out while waiting for an open connection".
            crate::preflight::postgres_reachable(url)
                .await
                .map_err(StoreError::Unreachable)?;
        }
        sqlx::any::install_default_drivers();
        let url = match backend {
            // mode=rwc: create the file if missing.
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        if backend == Backend::Sqlite {
            sqlite_file::create_private(&url);
        }
        let pool = AnyPoolOptions::new()
            .acquire_timeout(crate::preflight::STORE_CONNECT_TIMEOUT)
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // Readers do not block the writer (the CLI writes while relays read).
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        migrator(backend).run(&pool).await?;
        Ok(Self { pool, backend, url })
    }

    /// On Postgres, a listener woken at the commit of every credential
    /// event (LISTEN/NOTIFY), so relays react at once rather than at their
    /// next poll. `None` on SQLite.
    pub async fn listen(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(Some(listener))
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Creates an agent token for `account` (creating the account).
    pub async fn create_token(
        &self,
        account: &str,
        name: Option<&str>,
        expires: Option<SystemTime>,
    ) -> Result<NewCredential, StoreError> {
        let new = credential::generate(Kind::AgentToken);
        let mut tx = self.pool.begin().await?;
        ensure_account(&mut tx, account).await?;
        sqlx::query(
            "INSERT INTO agent_tokens (id, account, name, hash, created, expires) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&new.id)
        .bind(account)
        .bind(name)
        .bind(&new.hash[..])
        .bind(unix_now())
        .bind(expires.map(unix_ceil))
        .execute(&mut *tx)
        .await?;
        record_event(&mut tx, Kind::AgentToken, &new.id, "created").await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Creates a caller API key for `account` (creating the account).
    pub async fn create_key(
        &self,
        account: &str,
        name: Option<&str>,
    ) -> Result<NewCredential, StoreError> {
        let new = credential::generate(Kind::ApiKey);
        let mut tx = self.pool.begin().await?;
        ensure_account(&mut tx, account).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, account, name, hash, created) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&new.id)
        .bind(account)
        .bind(name)
        .bind(&new.hash[..])
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        record_event(&mut tx, Kind::ApiKey, &new.id, "created").await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Agent tokens, optionally of one account, oldest first.
    pub async fn list_tokens(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        self.list(
            &format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens"),
            account,
        )
        .await
    }

    /// API keys, optionally of one account, oldest first.
    pub async fn list_keys(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        self.list(&format!("SELECT {KEY_COLUMNS} FROM api_keys"), account)
            .await
    }

    async fn list(
        &self,
        select: &str,
        account: Option<&str>,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let sql = format!(
            "{select} WHERE (CAST($1 AS TEXT) IS NULL OR account = $1) ORDER BY created, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(record)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Gives token `id` a new secret; the old one stays valid for `grace`.
    /// `Ok(None)` if there is no such token, or it is revoked.
    pub async fn rotate_token(
        &self,
        id: &str,
        grace: std::time::Duration,
    ) -> Result<Option<NewCredential>, StoreError> {
        let new = credential::regenerate(Kind::AgentToken, id);
        let until = unix_ceil(SystemTime::now() + grace);
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE agent_tokens SET prev_hash = hash, prev_until = $1, hash = $2 \
             WHERE id = $3 AND revoked IS NULL",
        )
        .bind(until)
        .bind(&new.hash[..])
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        record_event(&mut tx, Kind::AgentToken, id, "rotated").await?;
        tx.commit().await?;
        Ok(Some(new))
    }

    /// Revokes a token or key (both secrets of a rotating token). Returns
    /// whether it existed and was not revoked already.
    pub async fn revoke(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let sql = match kind {
            Kind::AgentToken => {
                "UPDATE agent_tokens SET revoked = $1 WHERE id = $2 AND revoked IS NULL"
            }
            Kind::ApiKey => "UPDATE api_keys SET revoked = $1 WHERE id = $2 AND revoked IS NULL",
        };
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(sql)
            .bind(unix_now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        record_event(&mut tx, kind, id, "revoked").await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Position of the newest credential event (0 if none).
    pub async fn last_event(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM credential_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Credential events after `seq`, in order (at most 1000).
    pub async fn events_after(&self, seq: i64) -> Result<Vec<CredentialEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, credential_id, event FROM credential_events \
             WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(CredentialEvent {
                    seq: r.try_get("seq")?,
                    kind: if kind == "key" {
                        Kind::ApiKey
                    } else {
                        Kind::AgentToken
                    },
                    credential_id: r.try_get("credential_id")?,
                    event: r.try_get("event")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The agent token with lookup id `id`.
    pub async fn token(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.fetch(
            &format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE id = $1"),
            id,
        )
        .await
    }

    /// The API key with lookup id `id`.
    pub async fn key(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.fetch(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"),
            id,
        )
        .await
    }

    /// Records a successful use of a credential.
    pub async fn touch(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        let sql = match kind {
            Kind::AgentToken => "UPDATE agent_tokens SET last_used = $1 WHERE id = $2",
            Kind::ApiKey => "UPDATE api_keys SET last_used = $1 WHERE id = $2",
        };
        sqlx::query(sql)
            .bind(unix_now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn fetch(&self, sql: &str, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| record(&r)).transpose().map_err(Into::into)
    }
}

fn record(row: &AnyRow) -> Result<CredentialRecord, sqlx::Error> {
    Ok(CredentialRecord {
        id: row.try_get("id")?,
        account: row.try_get("account")?,
        name: row.try_get("name")?,
        hash: row.try_get("hash")?,
        prev_hash: row.try_get("prev_hash")?,
        prev_until: row.try_get("prev_until")?,
        created: row.try_get("created")?,
        last_used: row.try_get("last_used")?,
        expires: row.try_get("expires")?,
        revoked: row.try_get("revoked")?,
    })
}

async fn record_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: Kind,
    id: &str,
    event: &str,
) -> Result<(), StoreError> {
    let kind = match kind {
        Kind::AgentToken => "token",
        Kind::ApiKey => "key",
    };
    sqlx::query(
        "INSERT INTO credential_events (kind, credential_id, event, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(kind)
    .bind(id)
    .bind(event)
    .bind(unix_now())
    .execute(&mut **tx)
    .await?;
    // Delivered when the transaction commits; SQLite relays just poll.
    if tx.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(EVENTS_CHANNEL)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn ensure_account(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    account: &str,
) -> Result<(), StoreError> {
    if !valid_account(account) {
        return Err(StoreError::InvalidAccount(account.to_owned()));
    }
    sqlx::query(
        "INSERT INTO accounts (name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(account)
    .bind(unix_now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Account names are identifiers that appear in logs and URLs.
pub fn valid_account(account: &str) -> bool {
    (1..=64).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn migrator(backend: Backend) -> Migrator {
    use sqlx::SqlSafeStr;
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    let (initial, events) = match backend {
        Backend::Sqlite => (
            include_str!("../migrations/sqlite/0001_initial.sql"),
            include_str!("../migrations/sqlite/0002_credential_events.sql"),
        ),
        Backend::Postgres => (
            include_str!("../migrations/postgres/0001_initial.sql"),
            include_str!("../migrations/postgres/0002_credential_events.sql"),
        ),
    };
    let mut migrations = vec![
        migration(1, "initial", initial),
        migration(2, "credential events", events),
    ];
    // Cluster presence: cluster mode needs Postgres.
    if backend == Backend::Postgres {
        migrations.push(migration(
            3,
            "cluster presence",
            include_str!("../migrations/postgres/0003_cluster_presence.sql"),
        ));
    }
    Migrator::with_migrations(migrations)
}

/// Seconds since the epoch of `t`.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the epoch of `t`, rounded up: an expiry or a grace end
/// stored in whole seconds then never comes before the time asked for.
pub fn unix_ceil(t: SystemTime) -> i64 {
    let secs = unix(t);
    let fraction = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    if fraction > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    unix(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sub.db").display());
        (dir, Store::open(&url).await.unwrap())
    }

    #[tokio::test]
    async fn created_token_is_found_and_accepts_only_its_secret() {
        let (_dir, store) = store().await;
        let token = store.create_token("acme", Some("eu"), None).await.unwrap();
        let record = store.token(&token.id).await.unwrap().expect("stored");
        assert_eq!(record.account, "acme");
        assert_eq!(record.name.as_deref(), Some("eu"));
        let presented = credential::parse(Kind::AgentToken, &token.secret).unwrap();
        assert!(record.accepts(&presented, unix_now()));
        let other = store.create_token("acme", None, None).await.unwrap();
        let other = credential::parse(Kind::AgentToken, &other.secret).unwrap();
        assert!(!record.accepts(&other, unix_now()));
    }

    #[tokio::test]
    async fn the_secret_is_not_in_the_database_file() {
        let (dir, store) = store().await;
        let key = store.create_key("acme", None).await.unwrap();
        drop(store);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let secret_part = &key.secret.as_bytes()[21..];
            assert!(!bytes.windows(secret_part.len()).any(|w| w == secret_part));
        }
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let (_dir, store) = store().await;
        let past = SystemTime::now() - Duration::from_secs(10);
        let token = store.create_token("acme", None, Some(past)).await.unwrap();
        let record = store.token(&token.id).await.unwrap().unwrap();
        let presented = credential::parse(Kind::AgentToken, &token.secret).unwrap();
        assert!(!record.accepts(&presented, unix_now()));
    }

    #[tokio::test]
    async fn keys_and_tokens_live_apart() {
        let (_dir, store) = store().await;
        let key = store.create_key("acme", None).await.unwrap();
        assert!(store.token(&key.id).await.unwrap().is_none());
        assert!(store.key(&key.id).await.unwrap().is_some());
        store.touch(Kind::ApiKey, &key.id).await.unwrap();
        assert!(
            store
                .key(&key.id)
                .await
                .unwrap()
                .unwrap()
                .last_used
                .is_some()
        );
    }

    #[tokio::test]
    async fn rotation_keeps_the_id_and_both_secrets_work_during_grace() {
        let (_dir, store) = store().await;
        let old = store.create_token("acme", None, None).await.unwrap();
        let new = store
            .rotate_token(&old.id, Duration::from_secs(3600))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.id, old.id);
        assert_ne!(new.secret, old.secret);
        let record = store.token(&old.id).await.unwrap().unwrap();
        let now = unix_now();
        assert!(record.accepts_hash(&old.hash, now));
        assert!(record.accepts_hash(&new.hash, now));
        assert!(matches!(record.status(now), Status::Rotating { .. }));
        assert_eq!(record.valid_until(&new.hash), None);
        assert!(record.valid_until(&old.hash).is_some());
        // After the grace only the new secret works.
        assert!(!record.accepts_hash(&old.hash, now + 3601));
        assert!(record.accepts_hash(&new.hash, now + 3601));
        // Revocation covers both.
        assert!(store.revoke(Kind::AgentToken, &old.id).await.unwrap());
        let record = store.token(&old.id).await.unwrap().unwrap();
        assert!(!record.accepts_hash(&new.hash, now) && !record.accepts_hash(&old.hash, now));
        assert_eq!(record.status(now), Status::Revoked);
        assert!(
            !store.revoke(Kind::AgentToken, &old.id).await.unwrap(),
            "already revoked"
        );
        assert!(
            store
                .rotate_token(&old.id, Duration::ZERO)
                .await
                .unwrap()
                .is_none()
        );
        let events: Vec<String> = store
            .events_after(0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, ["created", "rotated", "revoked"]);
    }

    #[tokio::test]
    async fn listing_shows_status_and_never_a_hash() {
        let (_dir, store) = store().await;
        store.create_token("acme", Some("eu"), None).await.unwrap();
        let k = store.create_key("globex", None).await.unwrap();
        store.revoke(Kind::ApiKey, &k.id).await.unwrap();
        let tokens = store.list_tokens(Some("acme")).await.unwrap();
        assert_eq!(tokens.len(), 1);
        let json = tokens[0].to_json(unix_now());
        assert_eq!(json["status"], "active");
        assert_eq!(json["name"], "eu");
        assert_eq!(json.as_object().unwrap().len(), 7);
        assert!(store.list_tokens(Some("globex")).await.unwrap().is_empty());
        let keys = store.list_keys(None).await.unwrap();
        assert_eq!(keys[0].to_json(unix_now())["status"], "revoked");
    }

    #[tokio::test]
    async fn bad_account_names_are_refused_and_nothing_is_written() {
        let (_dir, store) = store().await;
        assert!(matches!(
            store.create_key("a b", None).await,
            Err(StoreError::InvalidAccount(_))
        ));
        assert!(Store::open("mysql://x").await.is_err());
    }
}
