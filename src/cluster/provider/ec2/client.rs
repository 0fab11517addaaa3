//! The SDK client, built explicitly from the site config: region, endpoint, credentials, retry
//! and timeouts are all set here, so nothing of the caller's AWS config files decides where
//! stratus's calls go or with which identity (docs/architecture.md, "The privilege model").
//!
//! Credentials are static keys read by stratus itself (see `credentials`): no source can make
//! stratus run a program or ask a metadata service. With `Trust::Service` (the runner of a
//! multi-user install) nothing comes from the environment: not the endpoint, not credentials,
//! not proxies (the HTTP client is built here with none), not certificate locations (the trust
//! store is the system's bundle, named here).

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};

use super::error::Context;
use crate::cluster::provider::ProviderError;
use crate::config::{Ec2Config, Trust};

/// Attempts per call, the first included. The SDK's adaptive retry mode backs off with jitter on
/// throttling and transient errors, and on throttling also slows the client's own sending rate,
/// so a class launching at once against EC2's RunInstances bucket slows down instead of failing.
const MAX_ATTEMPTS: u32 = 8;
/// The system's CA bundle (Debian's), the trust store of a runner.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of one call. A RunInstances or a DescribeInstances of a thousand instances takes
/// seconds; an EC2-compatible server under load (moto on a busy machine) can take tens.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// One call, retries included: room for the adaptive retry mode to slow down under throttling
/// (it waits tens of seconds between attempts on a fresh client) through every attempt.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The endpoint to use: the site config's, else (for a user's own command only) the standard
/// `AWS_ENDPOINT_URL_EC2` or `AWS_ENDPOINT_URL`.
fn endpoint(config: &Ec2Config, trust: Trust) -> Result<Option<String>, ProviderError> {
    let from_env = || {
        ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    };
    let url = match trust {
        Trust::Caller => config.endpoint_url.clone().or_else(from_env),
        Trust::Service => config.endpoint_url.clone(),
    };
    if let Some(u) = &url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(ProviderError::InvalidRequest(format!(
            "the EC2 endpoint {u:?} must be an http:// or https:// URL"
        )));
    }
    Ok(url)
}

/// The HTTPS client: rustls, never a proxy (this version of the SDK's client reads no proxy
/// variables, and none is configured here), and for a runner the system's CA bundle rather than
/// whatever `SSL_CERT_FILE` or `SSL_CERT_DIR` would name.
fn http_client(trust: Trust) -> Result<aws_sdk_ec2::config::SharedHttpClient, ProviderError> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let mut builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
    if trust == Trust::Service
        && let Ok(pem) = std::fs::read(SYSTEM_CA_BUNDLE)
    {
        let context = TlsContext::builder()
            .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
            .build()
            .map_err(|e| ProviderError::Other(format!("cannot set up TLS: {e}")))?;
        builder = builder.tls_context(context);
    }
    Ok(builder.build_https())
}

pub(super) struct Built {
    pub client: aws_sdk_ec2::Client,
    pub context: Context,
}

pub(super) async fn build(config: &Ec2Config, trust: Trust) -> Result<Built, ProviderError> {
    if config.region.trim().is_empty() {
        return Err(ProviderError::InvalidRequest(
            "[ec2] region must not be empty".into(),
        ));
    }
    let endpoint = endpoint(config, trust)?;
    let (credentials, described) = credentials(config, trust)?;
    let mut builder = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(credentials)
        .http_client(http_client(trust)?)
        .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
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

/// The credentials, and a description of where they came from for messages. Static keys only,
/// read by stratus itself: no source can make stratus run a program (`credential_process`) or
/// reach a metadata service.
///
/// With `Trust::Service` (the runner) only `credentials_file` counts. With `Trust::Caller` (a
/// user's own command): `credentials_file`, else the environment's `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, else the named `profile` (or `AWS_PROFILE`, or `default`) of the
/// shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`).
fn credentials(
    config: &Ec2Config,
    trust: Trust,
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
    if trust == Trust::Service {
        return Err(ProviderError::Auth(
            "the site config has no credentials_file under [ec2]; a multi-user install reads the service account's keys only from there".into(),
        ));
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        let creds = Credentials::new(id, secret, var("AWS_SESSION_TOKEN"), None, "environment");
        return Ok((
            SharedCredentialsProvider::new(creds),
            "the environment (AWS_ACCESS_KEY_ID)".into(),
        ));
    }
    let profile = config
        .profile
        .clone()
        .or_else(|| var("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let path = match var("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => std::path::PathBuf::from(h).join(".aws/credentials"),
            None => {
                return Err(ProviderError::Auth(
                    "no AWS credentials: set credentials_file under [ec2] in the site config, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                ));
            }
        },
    };
    if !path.exists() {
        return Err(ProviderError::Auth(format!(
            "no AWS credentials: {} does not exist, and neither credentials_file under [ec2] nor AWS_ACCESS_KEY_ID is set",
            path.display()
        )));
    }
    let creds = read_credentials_file(&path, &profile)?;
    Ok((
        SharedCredentialsProvider::new(creds),
        format!(
            "the credentials file {} (profile {profile})",
            path.display()
        ),
    ))
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
