//! What `tether-relay check` verifies: everything `serve` will need before
//! it binds, each problem named, none stopping the others from being
//! found. It reads files and may connect to Postgres; it never creates a
//! store or a file.

use std::path::Path;

use crate::config::RelayConfig;
use crate::store::{Backend, postgres_reachable};

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
/// [`crate::store::STORE_CONNECT_TIMEOUT`], or the cause (refused, DNS, auth) is named.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_sqlite_directory_is_named() {
        let e = store_reachable("sqlite:///nonexistent-dir-for-tether/r.db")
            .await
            .unwrap_err();
        assert!(e.contains("/nonexistent-dir-for-tether"), "{e}");
        assert!(store_reachable("sqlite://relay.db").await.is_ok());
    }
}
