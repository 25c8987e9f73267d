//! Vault (or OpenBao) as a secret store, through vaultrs.
//!
//! One logical read serves every engine: KV v2 (`mount/data/path`, whose
//! answer nests the secret under `data.data` next to `data.metadata`), KV v1
//! and any other read path (the field of `data`). The client token comes
//! from the configured login method; it is renewed (token method) or
//! obtained again (AppRole, Kubernetes) before it expires, and once more
//! when Vault answers 403 (token revoked or expired early).
//!
//! Every client setting is given explicitly: vaultrs' defaults read
//! `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_SKIP_VERIFY`, `VAULT_CACERT`, … and
//! the agent's own config must be the only authority (in particular,
//! nothing in the environment can turn TLS verification off).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::config::{VaultAuth, VaultSettings};
use super::{FetchError, json_field};
use crate::secret::SecretString;

/// Renew or log in again once this fraction of the token's TTL has passed.
const RENEW_AT_FRACTION: f64 = 2.0 / 3.0;

pub(super) struct VaultStore {
    settings: VaultSettings,
    session: tokio::sync::Mutex<Option<Session>>,
}

struct Session {
    client: Arc<VaultClient>,
    /// When to renew (token method) or log in again; `None`: never expires.
    refresh_at: Option<Instant>,
    renewable: bool,
}

impl VaultStore {
    pub(super) fn new(settings: VaultSettings) -> Result<Self, FetchError> {
        url_check(&settings.address)?;
        Ok(Self {
            settings,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// Reads `field` of the secret at `path`.
    pub(super) async fn read(&self, path: &str, field: &str) -> Result<SecretString, FetchError> {
        let client = self.client(false).await?;
        match read_field(&client, path, field).await {
            Err(ReadError::Forbidden) => {
                tracing::info!(store = "vault", "403 from Vault: logging in again");
                let client = self.client(true).await?;
                read_field(&client, path, field)
                    .await
                    .map_err(ReadError::into_fetch)
            }
            other => other.map_err(ReadError::into_fetch),
        }
    }

    /// A client with a live token; logs in (or renews) when due or forced.
    async fn client(&self, force_login: bool) -> Result<Arc<VaultClient>, FetchError> {
        let mut session = self.session.lock().await;
        let now = Instant::now();
        if let Some(s) = session.as_ref()
            && !force_login
            && s.refresh_at.is_none_or(|t| now < t)
        {
            return Ok(s.client.clone());
        }
        if let (Some(s), false, VaultAuth::Token { .. }) =
            (session.as_ref(), force_login, &self.settings.auth)
            && s.renewable
        {
            match vaultrs::token::renew_self(s.client.as_ref(), None).await {
                Ok(auth) => {
                    let client = s.client.clone();
                    *session = Some(Session {
                        client: client.clone(),
                        refresh_at: refresh_at(auth.lease_duration),
                        renewable: auth.renewable,
                    });
                    tracing::debug!(
                        store = "vault",
                        ttl_s = auth.lease_duration,
                        "token renewed"
                    );
                    return Ok(client);
                }
                Err(e) => {
                    tracing::warn!(store = "vault", error = %describe(&e), "token renewal failed; reading the token file again")
                }
            }
        }
        let fresh = self.login().await?;
        let client = fresh.client.clone();
        *session = Some(fresh);
        Ok(client)
    }

    async fn login(&self) -> Result<Session, FetchError> {
        match &self.settings.auth {
            VaultAuth::Token { token_file } => {
                let token = read_trimmed(token_file).await?;
                let client = Arc::new(self.build(token.expose())?);
                // A token's own TTL tells when to renew; root tokens have none.
                let lookup = vaultrs::token::lookup_self(client.as_ref())
                    .await
                    .map_err(|e| FetchError(format!("vault token lookup: {}", describe(&e))))?;
                Ok(Session {
                    client,
                    refresh_at: (lookup.ttl > 0).then(|| refresh_at(lookup.ttl)).flatten(),
                    renewable: lookup.renewable.unwrap_or(false),
                })
            }
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
                mount,
            } => {
                let secret_id = read_trimmed(secret_id_file).await?;
                let anonymous = self.build("")?;
                let auth =
                    vaultrs::auth::approle::login(&anonymous, mount, role_id, secret_id.expose())
                        .await
                        .map_err(|e| {
                            FetchError(format!("vault approle login: {}", describe(&e)))
                        })?;
                self.session_from(auth)
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read_trimmed(jwt_file).await?;
                let anonymous = self.build("")?;
                let auth = vaultrs::auth::kubernetes::login(&anonymous, mount, role, jwt.expose())
                    .await
                    .map_err(|e| FetchError(format!("vault kubernetes login: {}", describe(&e))))?;
                self.session_from(auth)
            }
        }
    }

    fn session_from(&self, auth: vaultrs::api::AuthInfo) -> Result<Session, FetchError> {
        let token = SecretString::from(auth.client_token);
        tracing::info!(
            store = "vault",
            ttl_s = auth.lease_duration,
            "logged in to Vault"
        );
        Ok(Session {
            client: Arc::new(self.build(token.expose())?),
            refresh_at: refresh_at(auth.lease_duration),
            renewable: auth.renewable,
        })
    }

    fn build(&self, token: &str) -> Result<VaultClient, FetchError> {
        let s = &self.settings;
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(&s.address)
            .token(token)
            .verify(true)
            .identity(None)
            .timeout(Some(s.timeout))
            .ca_certs(s.ca_file.iter().map(|p| p.display().to_string()).collect());
        if let Some(ns) = &s.namespace {
            builder.set_namespace(ns.clone());
        } else {
            builder.namespace(None);
        }
        let settings = builder
            .build()
            .map_err(|e| FetchError(format!("vault client settings: {e}")))?;
        VaultClient::new(settings)
            .map_err(|e| FetchError(format!("vault client: {}", describe(&e))))
    }
}

enum ReadError {
    Forbidden,
    Other(String),
}

impl ReadError {
    fn into_fetch(self) -> FetchError {
        match self {
            Self::Forbidden => FetchError("vault: permission denied".into()),
            Self::Other(m) => FetchError(m),
        }
    }
}

async fn read_field(
    client: &VaultClient,
    path: &str,
    field: &str,
) -> Result<SecretString, ReadError> {
    let (mount, rest) = path
        .split_once('/')
        .ok_or_else(|| ReadError::Other(format!("vault path {path:?} has no mount")))?;
    let response = vaultrs::kv1::get_raw(client, mount, rest)
        .await
        .map_err(|e| match e {
            ClientError::APIError { code: 403, .. } => ReadError::Forbidden,
            ClientError::APIError { code: 404, .. } => {
                ReadError::Other(format!("vault: nothing at {path}"))
            }
            other => ReadError::Other(format!("vault read {path}: {}", describe(&other))),
        })?;
    let data = &response.data;
    // KV v2 nests the secret's fields under data.data, beside data.metadata.
    let is_kv2 = data.get("data").is_some_and(serde_json::Value::is_object)
        && data
            .get("metadata")
            .is_some_and(serde_json::Value::is_object);
    let fields = if is_kv2 { &data["data"] } else { data };
    json_field(fields, field).map_err(|e| ReadError::Other(format!("vault {path}: {}", e.0)))
}

fn refresh_at(ttl_seconds: u64) -> Option<Instant> {
    (ttl_seconds > 0)
        .then(|| Instant::now() + Duration::from_secs_f64(ttl_seconds as f64 * RENEW_AT_FRACTION))
}

async fn read_trimmed(path: &std::path::Path) -> Result<SecretString, FetchError> {
    tokio::fs::read_to_string(path)
        .await
        .map(|s| SecretString::from(s.trim().to_owned()))
        .map_err(|e| FetchError(format!("{}: {e}", path.display())))
}

/// An error with its causes. vaultrs errors name status codes, Vault's
/// messages and URLs, never the token (a header) or a secret value.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } => {
            format!("status {code}: {}", errors.join("; "))
        }
        other => crate::error_chain(other),
    }
}

fn url_check(address: &str) -> Result<(), FetchError> {
    // vaultrs' address setter panics on an unparsable URL: check first.
    url::Url::parse(address)
        .map(drop)
        .map_err(|e| FetchError(format!("vault.address {address:?}: {e}")))
}
