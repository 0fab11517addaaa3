//! The SDK client, built explicitly from the site config: region, endpoint, credentials, retry
//! and timeouts are all set here, so nothing of the caller's AWS config files decides where
//! stratus's calls go or with which identity (DESIGN.md, "What the runner must not trust").
//!
//! Credentials come from, in order: `credentials_file` (the service account's INI file, read by
//! stratus itself, static keys only: a credentials file cannot make stratus run a program), a
//! named `profile` in the shared AWS files, else the SDK's standard chain.

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, SharedCredentialsProvider,
};

use super::error::Context;
use crate::cluster::provider::ProviderError;
use crate::config::Ec2Config;

/// Attempts per call, the first included; the SDK's standard retry strategy (exponential
/// backoff with jitter, throttling and transient errors only).
const MAX_ATTEMPTS: u32 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of one call. A RunInstances answer takes a few seconds at worst.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// One call, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Resolving credentials once at start-up (the standard chain may ask an instance's metadata
/// service).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(20);

/// The endpoint to use: the site config's, else the standard `AWS_ENDPOINT_URL_EC2` or
/// `AWS_ENDPOINT_URL`. In a multi-user install the runner's environment is scrubbed by the
/// setuid wrapper, so these only ever come from the service account's own setup.
fn endpoint(config: &Ec2Config) -> Result<Option<String>, ProviderError> {
    let from_env = || {
        ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    };
    let url = config.endpoint_url.clone().or_else(from_env);
    if let Some(u) = &url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(ProviderError::InvalidRequest(format!(
            "the EC2 endpoint {u:?} must be an http:// or https:// URL"
        )));
    }
    Ok(url)
}

pub(super) struct Built {
    pub client: aws_sdk_ec2::Client,
    pub context: Context,
}

pub(super) async fn build(config: &Ec2Config) -> Result<Built, ProviderError> {
    if config.region.trim().is_empty() {
        return Err(ProviderError::InvalidRequest(
            "[ec2] region must not be empty".into(),
        ));
    }
    let endpoint = endpoint(config)?;
    let (credentials, described) = credentials(config).await?;
    let mut builder = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(credentials)
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if let Some(url) = &endpoint {
        builder = builder.endpoint_url(url);
    }
    let context = Context {
        endpoint: match &endpoint {
            Some(u) => format!("the EC2 endpoint {u}"),
            None => format!("the EC2 API of {}", config.region),
        },
        credentials: described,
    };
    Ok(Built {
        client: aws_sdk_ec2::Client::from_conf(builder.build()),
        context,
    })
}

/// The credentials provider, checked once so a missing or unreadable credential is reported
/// before anything is attempted, and a description of where it came from for messages.
async fn credentials(
    config: &Ec2Config,
) -> Result<(SharedCredentialsProvider, String), ProviderError> {
    if let Some(path) = &config.credentials_file {
        let profile = config.profile.as_deref().unwrap_or("default");
        let described = format!(
            "the credentials file {} (profile {profile})",
            path.display()
        );
        let creds = read_credentials_file(path, profile)?;
        return Ok((SharedCredentialsProvider::new(creds), described));
    }
    let (provider, described) = match &config.profile {
        Some(name) => (
            SharedCredentialsProvider::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(name)
                    .build(),
            ),
            format!("the AWS profile {name} in the shared AWS config files"),
        ),
        None => (
            SharedCredentialsProvider::new(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(Region::new(config.region.clone()))
                    .build()
                    .await,
            ),
            "the standard AWS credential sources (set credentials_file or profile under [ec2] in the site config)".to_owned(),
        ),
    };
    match tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok((provider, described)),
        Ok(Err(e)) => {
            tracing::debug!(error = %aws_sdk_ec2::error::DisplayErrorContext(&e), "no credentials");
            Err(ProviderError::Auth(format!(
                "no usable AWS credentials were found in {described}"
            )))
        }
        Err(_) => Err(ProviderError::Auth(format!(
            "looking for AWS credentials in {described} took longer than {}s",
            CREDENTIALS_TIMEOUT.as_secs()
        ))),
    }
}

/// Reads static keys from an INI credentials file as the AWS CLI writes it:
/// `[profile]` then `aws_access_key_id`, `aws_secret_access_key` and optionally
/// `aws_session_token`.
pub(super) fn read_credentials_file(
    path: &Path,
    profile: &str,
) -> Result<Credentials, ProviderError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProviderError::Auth(format!(
            "cannot read the AWS credentials file {}: {}",
            path.display(),
            crate::cluster::provider::ec2::io_reason(&e)
        ))
    })?;
    parse_credentials(&text, profile).map_err(|what| {
        ProviderError::Auth(format!(
            "the AWS credentials file {} {what}",
            path.display()
        ))
    })
}

fn parse_credentials(text: &str, profile: &str) -> Result<Credentials, String> {
    let mut section: Option<String> = None;
    let mut found = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            // The shared config file spells non-default sections `[profile NAME]`.
            let name = name.strip_prefix("profile ").map(str::trim).unwrap_or(name);
            section = Some(name.to_owned());
            found |= name == profile;
            continue;
        }
        if section.as_deref() != Some(profile) {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    if !found {
        return Err(format!("has no [{profile}] section"));
    }
    match (
        key_id.filter(|v| !v.is_empty()),
        secret.filter(|v| !v.is_empty()),
    ) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            token.filter(|t| !t.is_empty()),
            None,
            "stratus-credentials-file",
        )),
        _ => Err(format!(
            "has no aws_access_key_id and aws_secret_access_key in [{profile}]"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_sections() {
        let text = "# service account\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n\n[profile ci]\naws_access_key_id=AKIA2\naws_secret_access_key = s2\naws_session_token = t\n";
        let c = parse_credentials(text, "default").unwrap();
        assert_eq!(c.access_key_id(), "AKIA1");
        assert_eq!(c.secret_access_key(), "s1");
        assert!(c.session_token().is_none());
        let c = parse_credentials(text, "ci").unwrap();
        assert_eq!(c.access_key_id(), "AKIA2");
        assert_eq!(c.session_token(), Some("t"));
        assert!(
            parse_credentials(text, "nope")
                .unwrap_err()
                .contains("no [nope] section")
        );
        assert!(
            parse_credentials("[default]\naws_access_key_id=x\n", "default")
                .unwrap_err()
                .contains("aws_secret_access_key")
        );
    }
}
