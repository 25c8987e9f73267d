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
use aws_smithy_http_client::tls;

use super::config::AwsSettings;
use super::{FetchError, json_field};
use crate::secret::SecretString;

pub(super) struct AwsStore {
    client: Client,
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
                use aws_sdk_secretsmanager::error::DisplayErrorContext;
                FetchError(format!(
                    "aws secretsmanager {id}: {}",
                    DisplayErrorContext(&e)
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
