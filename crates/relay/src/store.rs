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

use crate::credential::{self, Kind, NewCredential};

mod connect;
mod record;
mod sqlite_file;

pub use connect::{STORE_CONNECT_TIMEOUT, postgres_reachable};
pub use record::{CredentialEvent, CredentialRecord, Status, rfc3339};

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
            postgres_reachable(url)
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
            .acquire_timeout(STORE_CONNECT_TIMEOUT)
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
mod tests;
