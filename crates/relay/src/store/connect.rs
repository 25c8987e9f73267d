//! Reaching Postgres: one direct connection first, so that `serve` and
//! `check` name the cause in seconds instead of a pool's timeout.

use std::time::Duration;

/// How long `check` and `serve` wait for Postgres to accept a connection.
pub const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
}
