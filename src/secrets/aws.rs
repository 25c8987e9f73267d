//! AWS Secrets Manager as a secret store.
//!
//! Credentials come from the standard chain (environment, profile, web
//! identity / IRSA, ECS, IMDS), optionally used to assume `role_arn`. The
//! HTTP client is the SDK's own hyper client with rustls on ring, the
//! agent's only TLS stack.

use aws_config::BehaviorVersion;
use aws_config::sts::AssumeRoleProvider;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::SharedCredentialsProvider;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use super::config::AwsSettings;
use super::{FetchError, json_field};
use crate::secret::SecretString;

pub(super) struct AwsStore {
    client: Client,
    /// Where requests go, for errors: the configured endpoint, or the
    /// region's.
    place: String,
}

impl AwsStore {
    pub(super) async fn new(settings: AwsSettings) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let mut config = loader.load().await;
        let place = match (&settings.endpoint, config.region()) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(region)) => format!("region {region}"),
            (None, None) => "no region".to_owned(),
        };
        if let Some(role) = &settings.role_arn {
            let provider = AssumeRoleProvider::builder(role.clone())
                .session_name("tether-agent")
                .configure(&config)
                .build()
                .await;
            config = config
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build();
        }
        Self {
            client: Client::new(&config),
            place,
        }
    }

    /// The secret string of `id` (at `version_stage`), or its JSON field `key`.
    pub(super) async fn read(
        &self,
        id: &str,
        key: Option<&str>,
        version_stage: Option<&str>,
    ) -> Result<SecretString, FetchError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(id)
            .set_version_stage(version_stage.map(str::to_owned))
            .send()
            .await
            .map_err(|e| {
                FetchError(format!(
                    "AWS Secrets Manager at {}, secret {id}: {}",
                    self.place,
                    describe(&e)
                ))
            })?;
        let Some(text) = output.secret_string() else {
            return Err(FetchError(format!("aws secret {id} has no string value")));
        };
        let text = SecretString::from(text.to_owned());
        match key {
            None => Ok(text),
            Some(key) => {
                let doc: serde_json::Value = serde_json::from_str(text.expose())
                    .map_err(|_| FetchError(format!("aws secret {id} is not a JSON object")))?;
                json_field(&doc, key).map_err(|e| FetchError(format!("aws secret {id}: {}", e.0)))
            }
        }
    }
}

/// What went wrong, on one line: the SDK's service error code and message,
/// or the kind of failure and its innermost cause (`Connection refused`),
/// never the SDK's debug dump.
fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match e {
        SdkError::ServiceError(service) => {
            let meta = service.err().meta();
            return one_line(&format!(
                "{}: {}",
                meta.code().unwrap_or("service error"),
                meta.message().unwrap_or("no message")
            ));
        }
        SdkError::DispatchFailure(failure) if failure.is_timeout() => "timed out",
        SdkError::DispatchFailure(failure) if failure.is_io() => "cannot connect",
        SdkError::DispatchFailure(_) => "request failed",
        SdkError::TimeoutError(_) => "timed out",
        SdkError::ResponseError(_) => "unreadable response",
        SdkError::ConstructionFailure(_) => "request not sent",
        _ => "error",
    };
    let mut innermost: &dyn std::error::Error = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    one_line(&format!("{detail}: {innermost}"))
}

/// Whitespace collapsed and at most 200 characters: a store's message is
/// for one line of `check` or the log.
fn one_line(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = out.char_indices().nth(MAX) {
        out.truncate(cut);
        out.push('…');
    }
    out
}
