//! `[secrets.NAME]`, `[vault]` and `[aws]` as written, and their
//! validation into [`SecretSpec`], [`VaultSettings`] and [`AwsSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::placeholder::{CallerBinding, Origin, valid_secret_name};

/// Default time a resolved value is reused.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// Default time a value keeps being served while its store is unreachable.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(60 * 60);
/// Where a Kubernetes pod finds its service-account token.
pub const DEFAULT_K8S_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    vault: Option<RawVaultRef>,
    aws: Option<RawAwsRef>,
    env: Option<String>,
    file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_stale: Option<Duration>,
    callers: Option<RawCallers>,
    #[serde(default)]
    export: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultRef {
    path: String,
    field: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAwsRef {
    id: String,
    key: Option<String>,
    version_stage: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallers {
    targets: Vec<String>,
    headers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    address: String,
    auth: RawVaultAuth,
    namespace: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
enum RawVaultAuth {
    Token {
        token_file: PathBuf,
    },
    Approle {
        role_id: String,
        secret_id_file: PathBuf,
        mount: Option<String>,
    },
    Kubernetes {
        role: String,
        jwt_file: Option<PathBuf>,
        mount: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAws {
    region: Option<String>,
    endpoint: Option<String>,
    role_arn: Option<String>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A Vault logical read: KV v2 (`mount/data/path`), KV v1 or any other
    /// path whose answer's `data` has the field.
    Vault {
        /// Full logical path, e.g. `secret/data/ci/jenkins`.
        path: String,
        /// Field of the secret's data.
        field: String,
    },
    /// AWS Secrets Manager.
    Aws {
        /// Secret id or ARN.
        id: String,
        /// Field of a JSON secret string; the whole string without it.
        key: Option<String>,
        /// Version stage, `AWSCURRENT` by default.
        version_stage: Option<String>,
    },
    /// An environment variable of the agent.
    Env(String),
    /// A file (whitespace trimmed), e.g. a mounted Kubernetes Secret.
    File(PathBuf),
}

impl SourceSpec {
    /// Short name of the store, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Vault { .. } => "vault",
            Self::Aws { .. } => "aws",
            Self::Env(_) => "env",
            Self::File(_) => "file",
        }
    }
}

/// A validated `[secrets.NAME]`.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// The name placeholders use.
    pub name: String,
    /// Its store.
    pub source: SourceSpec,
    /// How long a resolved value is reused.
    pub ttl: Duration,
    /// How long past `ttl` the last value keeps serving while the store
    /// cannot be reached.
    pub max_stale: Duration,
    /// Caller-placed placeholders allowed for this secret (none by default).
    pub callers: Option<CallerBinding>,
    /// age recipients pipelines may have the value sealed to.
    pub export: Vec<String>,
}

/// How the agent logs in to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token read from a file; renewed before expiry when renewable.
    Token {
        /// The file.
        token_file: PathBuf,
    },
    /// AppRole login.
    AppRole {
        /// The role id (not a secret by Vault's design).
        role_id: String,
        /// File holding the secret id.
        secret_id_file: PathBuf,
        /// Auth mount, `approle` by default.
        mount: String,
    },
    /// Kubernetes service-account login.
    Kubernetes {
        /// Vault role.
        role: String,
        /// Service-account JWT file.
        jwt_file: PathBuf,
        /// Auth mount, `kubernetes` by default.
        mount: String,
    },
}

/// A validated `[vault]`.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// `https://vault:8200`.
    pub address: String,
    /// Login method.
    pub auth: VaultAuth,
    /// Enterprise/OpenBao namespace.
    pub namespace: Option<String>,
    /// Extra trust roots for Vault's certificate.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// A validated `[aws]`.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Region; otherwise the standard chain (AWS_REGION, profile).
    pub region: Option<String>,
    /// Another endpoint (tests use moto_server).
    pub endpoint: Option<String>,
    /// Role to assume with the chain's credentials.
    pub role_arn: Option<String>,
}

pub(crate) fn validate_secret(name: &str, raw: RawSecret) -> Result<SecretSpec, String> {
    if !valid_secret_name(name) {
        return Err(format!("secret name {name:?}: use 1-64 of A-Z a-z 0-9 _ -"));
    }
    let mut sources = Vec::new();
    if let Some(v) = raw.vault {
        if v.path.trim_matches('/').split('/').count() < 2 || v.field.is_empty() {
            return Err(format!(
                "secrets.{name}.vault: path needs a mount and a path, and field may not be empty"
            ));
        }
        sources.push(SourceSpec::Vault {
            path: v.path.trim_matches('/').to_owned(),
            field: v.field,
        });
    }
    if let Some(a) = raw.aws {
        if a.id.is_empty() {
            return Err(format!("secrets.{name}.aws.id may not be empty"));
        }
        sources.push(SourceSpec::Aws {
            id: a.id,
            key: a.key,
            version_stage: a.version_stage,
        });
    }
    if let Some(e) = raw.env {
        sources.push(SourceSpec::Env(e));
    }
    if let Some(f) = raw.file {
        sources.push(SourceSpec::File(f));
    }
    let source = match sources.len() {
        1 => sources.remove(0),
        0 => {
            return Err(format!(
                "secrets.{name}: needs one source: vault, aws, env or file"
            ));
        }
        _ => {
            let kinds: Vec<_> = sources.iter().map(SourceSpec::kind).collect();
            return Err(format!(
                "secrets.{name}: has {} sources ({}); give exactly one",
                kinds.len(),
                kinds.join(", ")
            ));
        }
    };
    let callers = match raw.callers {
        None => None,
        Some(c) => {
            if c.targets.is_empty() || c.headers.is_empty() {
                return Err(format!(
                    "secrets.{name}.callers: targets and headers may not be empty"
                ));
            }
            let targets = c
                .targets
                .iter()
                .map(|t| {
                    Origin::parse(t).map_err(|e| format!("secrets.{name}.callers.targets: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut headers = Vec::new();
            for h in c.headers {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(format!(
                        "secrets.{name}.callers.headers: {h:?} is not a header name"
                    ));
                }
                headers.push(h.to_ascii_lowercase());
            }
            Some(CallerBinding { targets, headers })
        }
    };
    let mut export = Vec::new();
    for recipient in &raw.export {
        let parsed = super::export::parse_recipient(recipient).ok_or_else(|| {
            format!("secrets.{name}.export: {recipient:?} is not an age X25519 recipient (age1…)")
        })?;
        export.push(parsed.to_string());
    }
    let ttl = raw.ttl.unwrap_or(DEFAULT_TTL);
    if ttl.is_zero() {
        return Err(format!("secrets.{name}.ttl must be above zero"));
    }
    Ok(SecretSpec {
        name: name.to_owned(),
        source,
        ttl,
        max_stale: raw.max_stale.unwrap_or(DEFAULT_MAX_STALE),
        callers,
        export,
    })
}

pub(crate) fn validate_vault(raw: RawVault) -> Result<VaultSettings, String> {
    let uri: http::Uri = raw
        .address
        .parse()
        .map_err(|e| format!("vault.address: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err("vault.address: expected https://host[:port]".into());
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("vault.address: credentials in the URL are not allowed".into());
    }
    let auth = match raw.auth {
        RawVaultAuth::Token { token_file } => VaultAuth::Token { token_file },
        RawVaultAuth::Approle {
            role_id,
            secret_id_file,
            mount,
        } => VaultAuth::AppRole {
            role_id,
            secret_id_file,
            mount: mount.unwrap_or_else(|| "approle".into()),
        },
        RawVaultAuth::Kubernetes {
            role,
            jwt_file,
            mount,
        } => VaultAuth::Kubernetes {
            role,
            jwt_file: jwt_file.unwrap_or_else(|| DEFAULT_K8S_JWT.into()),
            mount: mount.unwrap_or_else(|| "kubernetes".into()),
        },
    };
    Ok(VaultSettings {
        address: raw.address.trim_end_matches('/').to_owned(),
        auth,
        namespace: raw.namespace,
        ca_file: raw.ca_file,
        timeout: raw.timeout.unwrap_or(Duration::from_secs(10)),
    })
}

pub(crate) fn validate_aws(raw: RawAws) -> Result<AwsSettings, String> {
    if let Some(endpoint) = &raw.endpoint {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("aws.endpoint: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err("aws.endpoint: expected http(s)://host[:port]".into());
        }
    }
    Ok(AwsSettings {
        region: raw.region,
        endpoint: raw.endpoint,
        role_arn: raw.role_arn,
    })
}
