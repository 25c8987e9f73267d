//! The relay's durable state: accounts, agent tokens and caller API keys.
//!
//! SQLite by default (the file is created if missing); the schema lives in
//! `migrations/` and is embedded in the binary. Secrets are never stored,
//! only SHA-256 hashes of them (see [`crate::credential`]).

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::credential::{self, Kind, NewCredential, Presented};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `[store] url` names a database this build cannot open.
    #[error("unsupported store url {0:?}: expected sqlite://PATH")]
    UnsupportedUrl(String),
    /// The database rejected a query or could not be opened.
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded schema could not be applied.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

impl CredentialRecord {
    /// Whether `presented` is a currently valid secret for this record.
    ///
    /// Both hashes are always compared so the time taken does not depend on
    /// which one matched.
    pub fn accepts(&self, presented: &Presented<'_>, now: i64) -> bool {
        if self.revoked.is_some() || self.expires.is_some_and(|e| now >= e) {
            return false;
        }
        let current = presented.matches(&self.hash);
        let previous = match (&self.prev_hash, self.prev_until) {
            (Some(h), Some(until)) => presented.matches(h) && now < until,
            _ => false,
        };
        current | previous
    }
}

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

const TOKEN_COLUMNS: &str =
    "id, account, name, hash, prev_hash, prev_until, created, last_used, expires, revoked";
const KEY_COLUMNS: &str = "id, account, name, hash, NULL AS prev_hash, NULL AS prev_until, \
     created, last_used, NULL AS expires, revoked";

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the
    /// embedded schema.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
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
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(account)
        .bind(name)
        .bind(&new.hash[..])
        .bind(unix_now())
        .bind(expires.map(unix))
        .execute(&mut *tx)
        .await?;
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
            "INSERT INTO api_keys (id, account, name, hash, created) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(account)
        .bind(name)
        .bind(&new.hash[..])
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(new)
    }

    /// The agent token with lookup id `id`.
    pub async fn token(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.fetch(
            &format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE id = ?"),
            id,
        )
        .await
    }

    /// The API key with lookup id `id`.
    pub async fn key(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.fetch(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"),
            id,
        )
        .await
    }

    /// Records a successful use of a credential.
    pub async fn touch(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        let sql = match kind {
            Kind::AgentToken => "UPDATE agent_tokens SET last_used = ? WHERE id = ?",
            Kind::ApiKey => "UPDATE api_keys SET last_used = ? WHERE id = ?",
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

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<CredentialRecord, sqlx::Error> {
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

async fn ensure_account(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    account: &str,
) -> Result<(), StoreError> {
    if !valid_account(account) {
        return Err(StoreError::InvalidAccount(account.to_owned()));
    }
    sqlx::query("INSERT OR IGNORE INTO accounts (name, created) VALUES (?, ?)")
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

fn migrator() -> Migrator {
    use sqlx::SqlSafeStr;
    Migrator::with_migrations(vec![Migration::new(
        1,
        "initial".into(),
        MigrationType::Simple,
        include_str!("../migrations/0001_initial.sql").into_sql_str(),
        false,
    )])
}

/// Seconds since the epoch of `t`.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    async fn bad_account_names_are_refused_and_nothing_is_written() {
        let (_dir, store) = store().await;
        assert!(matches!(
            store.create_key("a b", None).await,
            Err(StoreError::InvalidAccount(_))
        ));
        assert!(Store::open("postgres://x").await.is_err());
    }
}
