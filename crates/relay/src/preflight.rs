//! What `tether-relay check` verifies: everything `serve` will need before
//! it binds, each problem named, none stopping the others from being
//! found. It reads files and may connect to Postgres; it never creates a
//! store or a file.

use std::path::Path;
use std::time::Duration;

use crate::config::RelayConfig;
use crate::store::Backend;

/// How long `check` and `serve` wait for Postgres to accept a connection.
pub const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every problem `serve` would stop at, in the order it would meet them.
/// With `offline`, the store is not contacted.
pub async fn check(config: &RelayConfig, offline: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(path) = &config.admin.key_file {
        match std::fs::read_to_string(path) {
            Ok(key) if key.trim().is_empty() => {
                problems.push(format!("[admin] key_file {}: empty", path.display()));
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("[admin] key_file {}: {e}", path.display())),
        }
    }
    if let Some(tls) = &config.tls
        && let Err(e) = crate::tls_acceptor(tls)
    {
        problems.push(format!("[tls] {e}"));
    }
    if let Some(cluster) = &config.cluster {
        match std::fs::read_to_string(&cluster.peer_key_file) {
            Ok(key) if key.trim().len() < 16 => problems.push(format!(
                "[cluster] peer_key_file {}: the peer key must be at least 16 characters",
                cluster.peer_key_file.display()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!(
                "[cluster] peer_key_file {}: {e}",
                cluster.peer_key_file.display()
            )),
        }
    }
    if !offline && let Err(e) = store_reachable(&config.store.url).await {
        problems.push(format!("[store] {e}"));
    }
    problems
}

/// SQLite: the database's directory exists (the file is created by
/// `serve`). Postgres: a connection is accepted within
/// [`STORE_CONNECT_TIMEOUT`], or the cause (refused, DNS, auth) is named.
pub async fn store_reachable(url: &str) -> Result<(), String> {
    match Backend::of(url) {
        Some(Backend::Sqlite) => {
            let path = url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap_or("");
            let dir = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "{url}: the directory {} does not exist",
                    dir.display()
                ))
            }
        }
        Some(Backend::Postgres) => postgres_reachable(url).await,
        None => Err(format!("{url}: expected sqlite://PATH or postgres://…")),
    }
}

/// One direct connection, so that the real cause is reported rather than
/// a pool's "timed out while waiting for an open connection".
pub async fn postgres_reachable(url: &str) -> Result<(), String> {
    use sqlx::Connection;
    let shown = redacted(url);
    match tokio::time::timeout(
        STORE_CONNECT_TIMEOUT,
        sqlx::postgres::PgConnection::connect(url),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(format!("Postgres at {shown}: {}", cause(&e))),
        Err(_) => Err(format!(
            "Postgres at {shown}: no connection within {STORE_CONNECT_TIMEOUT:?}"
        )),
    }
}

/// The innermost error's text: "Connection refused", a DNS failure, or
/// the server's authentication error.
fn cause(e: &sqlx::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    let inner = source.to_string();
    let outer = e.to_string();
    if outer.contains(&inner) {
        outer
    } else {
        format!("{outer}: {inner}")
    }
}

/// `postgres://user:password@host/db` without the password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("postgres://tether:s3cret@db:5432/tether"),
            "postgres://tether@db:5432/tether"
        );
        assert_eq!(redacted("postgres://db/tether"), "postgres://db/tether");
    }

    #[tokio::test]
    async fn a_missing_sqlite_directory_is_named() {
        let e = store_reachable("sqlite:///nonexistent-dir-for-tether/r.db")
            .await
            .unwrap_err();
        assert!(e.contains("/nonexistent-dir-for-tether"), "{e}");
        assert!(store_reachable("sqlite://relay.db").await.is_ok());
    }
}
