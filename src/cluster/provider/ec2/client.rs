//! The SDK client, built explicitly from the site config: region, endpoint, credentials, retry
//! and timeouts are all set here, so nothing of the caller's AWS config files decides where
//! stratus's calls go or with which identity (docs/architecture.md, "The privilege model").
//!
//! Credentials are static keys read by stratus itself (see `credentials`): no source can make
//! stratus run a program or ask a metadata service. Temporary keys carry their expiry (see
//! `super::credentials`); expired ones stop every command before it calls anything. With
//! `Trust::Service` (the runner of a multi-user install) nothing comes from the environment: not
//! the endpoint, not credentials, not proxies (the HTTP client goes through `[ec2] https_proxy`
//! or nothing, never `HTTPS_PROXY`), not certificate locations (the trust store is the system's
//! bundle, named here).
//!
//! The SSM client (which resolves `resolve:ssm:` images) is built the same way and shares the
//! HTTP client, so it goes through the same proxy with the same identity.

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextMut;
use aws_sdk_ec2::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_ec2::config::{ConfigBag, Intercept, Layer, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use super::credentials::Facts;
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

/// Keeps the SDK from retrying a RunInstances that EC2 refused for want of capacity or at a
/// quota: EC2 answers `InsufficientInstanceCapacity` and its kind with HTTP 500, which the SDK
/// takes as transient and retries on the same type in the same zone, up to every attempt, before
/// stratus sees it. stratus moves on itself (the next subnet, the next type, a paused round; or
/// it stops at a quota), so each of those retries is only a wasted call against the account's
/// RunInstances bucket, and time.
#[derive(Debug)]
struct NoRetryOfRefusals;

impl aws_sdk_ec2::config::retry::ClassifyRetry for NoRetryOfRefusals {
    fn classify_retry(
        &self,
        ctx: &aws_sdk_ec2::config::interceptors::InterceptorContext,
    ) -> aws_sdk_ec2::config::retry::RetryAction {
        use aws_sdk_ec2::config::retry::RetryAction;
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        let code = match ctx.output_or_error() {
            Some(Err(e)) => e
                .as_operation_error()
                .and_then(|e| {
                    e.downcast_ref::<aws_sdk_ec2::operation::run_instances::RunInstancesError>()
                })
                .and_then(|e| e.code()),
            _ => None,
        };
        match code {
            Some(code) if super::error::handled_by_stratus(code) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "stratus: no retry of capacity and quota refusals"
    }
}

/// Gives each EC2 action a retry partition of its own. EC2 throttles each action on its own
/// bucket (per account and region): a dry CreateSecurityGroup bucket says nothing of
/// GetConsoleOutput's. The SDK's adaptive mode, once a call is throttled, slows every call of
/// its retry partition (and the retry quota is per partition too), and by default a client's
/// partition is the whole service. In the class service, whose one client carries the class's
/// calls, two throttled DescribeSecurityGroups in a burst of 40 launches slowed every console
/// read and poll of the class for minutes (`scripts/bench-class`: 311 s until the last of 40
/// clusters was configured, against 138 s unthrottled; BENCHMARKS.md). With a partition per
/// action, the class slows down only on the action EC2 throttles, as EC2 does.
#[derive(Debug)]
struct PartitionPerAction {
    region: String,
}

impl PartitionPerAction {
    fn partition(&self, action: &str) -> RetryPartition {
        RetryPartition::new(format!("stratus-ec2-{}-{action}", self.region))
    }
}

impl Intercept for PartitionPerAction {
    fn name(&self) -> &'static str {
        "stratus: a retry partition per EC2 action"
    }

    // After the operation's own configuration (which names the action), before the retry loop
    // (which picks the rate limiter and retry quota of the partition then in the bag).
    fn modify_before_serialization(
        &self,
        _context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(action) = cfg.load::<Metadata>().map(|m| m.name().to_owned()) else {
            return Ok(());
        };
        let mut layer = Layer::new("stratus: retry partition per action");
        layer.store_put(self.partition(&action));
        cfg.push_layer(layer);
        Ok(())
    }
}

/// The endpoint to use: the site config's, else (for a user's own command only) the standard
/// `AWS_ENDPOINT_URL_EC2` or `AWS_ENDPOINT_URL`.
fn endpoint(config: &Ec2Config, trust: &Trust) -> Result<Option<String>, ProviderError> {
    endpoint_of(
        config.endpoint_url.as_ref(),
        trust.caller_env().and_then(|e| e.endpoint_url_ec2.as_ref()),
        trust,
    )
}

/// The SSM endpoint: `ssm_endpoint_url`, else `endpoint_url` (an EC2-compatible API serving
/// both, such as moto), else (a user's own command) `AWS_ENDPOINT_URL_SSM` or
/// `AWS_ENDPOINT_URL`.
fn ssm_endpoint(config: &Ec2Config, trust: &Trust) -> Result<Option<String>, ProviderError> {
    beside_ec2(config, &config.ssm_endpoint_url, trust, |e| {
        &e.endpoint_url_ssm
    })
}

/// The endpoint of another service of the site: its own setting (`own`), else `endpoint_url`
/// (an API serving them all, as moto does), else (a user's own command) its own variable
/// (`own_env`) or `AWS_ENDPOINT_URL`.
fn beside_ec2(
    config: &Ec2Config,
    own: &Option<String>,
    trust: &Trust,
    own_env: impl Fn(&crate::core::env::AwsEnv) -> &Option<String>,
) -> Result<Option<String>, ProviderError> {
    endpoint_of(
        own.as_ref().or(config.endpoint_url.as_ref()),
        trust.caller_env().and_then(|e| own_env(e).as_ref()),
        trust,
    )
}

fn endpoint_of(
    configured: Option<&String>,
    for_the_service: Option<&String>,
    trust: &Trust,
) -> Result<Option<String>, ProviderError> {
    let url = match trust {
        Trust::Caller(env) => configured
            .or(for_the_service)
            .or(env.endpoint_url.as_ref())
            .cloned(),
        Trust::Service => configured.cloned(),
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

/// The HTTPS client: rustls; for a runner the system's CA bundle rather than whatever
/// `SSL_CERT_FILE` or `SSL_CERT_DIR` would name; and the site's `https_proxy`, or no proxy at
/// all (the SDK's client reads no proxy variables unless asked to, and it is not asked). Through
/// the proxy, an https:// endpoint (AWS) is reached with CONNECT, an http:// one (moto) with
/// requests in absolute form.
fn http_client(
    trust: &Trust,
    proxy: Option<&str>,
) -> Result<aws_sdk_ec2::config::SharedHttpClient, ProviderError> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let mut context = TlsContext::default();
    if *trust == Trust::Service
        && let Ok(pem) = std::fs::read(SYSTEM_CA_BUNDLE)
    {
        context = TlsContext::builder()
            .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
            .build()
            .map_err(|e| ProviderError::Other(format!("cannot set up TLS: {e}")))?;
    }
    let Some(url) = proxy else {
        return Ok(aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(context)
            .build_https());
    };
    crate::config::check_proxy_url(url)
        .map_err(|e| ProviderError::InvalidRequest(format!("[ec2] https_proxy: {e}")))?;
    let proxy = ProxyConfig::all(url)
        .map_err(|e| ProviderError::InvalidRequest(format!("[ec2] https_proxy {url:?}: {e}")))?;
    Ok(
        aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut b = aws_smithy_http_client::Connector::builder();
                b.set_connector_settings(settings.cloned());
                if let Some(c) = components {
                    b.set_sleep_impl(c.sleep_impl());
                }
                b.proxy_config(proxy.clone())
                    .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                    .tls_context(context.clone())
                    .build()
            },
        ),
    )
}

pub(super) struct Built {
    pub client: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub context: Context,
    /// What the credentials are (temporary, until when), for warnings.
    pub credentials: Facts,
}

/// What every client of an install shares: the credentials (refused when expired), the HTTP
/// client and the timeouts.
fn common(
    config: &Ec2Config,
    trust: &Trust,
) -> Result<
    (
        SharedCredentialsProvider,
        Facts,
        aws_sdk_ec2::config::SharedHttpClient,
        TimeoutConfig,
    ),
    ProviderError,
> {
    let (credentials, facts) = credentials(config, trust)?;
    // Expired keys would fail every call with ExpiredToken; say so plainly before any.
    if let Some(message) = facts.expired(jiff::Timestamp::now()) {
        return Err(ProviderError::Auth(message));
    }
    let http = http_client(trust, config.https_proxy.as_deref())?;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    Ok((credentials, facts, http, timeouts))
}

pub(super) async fn build(config: &Ec2Config, trust: &Trust) -> Result<Built, ProviderError> {
    if config.region.trim().is_empty() {
        return Err(ProviderError::InvalidRequest(
            "[ec2] region must not be empty".into(),
        ));
    }
    let endpoint = endpoint(config, trust)?;
    let ssm_endpoint = ssm_endpoint(config, trust)?;
    let (credentials, facts, http, timeouts) = common(config, trust)?;
    let retry = RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS);
    let mut builder = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(credentials.clone())
        .http_client(http.clone())
        .retry_config(retry.clone())
        .retry_classifier(NoRetryOfRefusals)
        .interceptor(PartitionPerAction {
            region: config.region.clone(),
        })
        .timeout_config(timeouts.clone());
    if let Some(url) = &endpoint {
        builder = builder.endpoint_url(url);
    }
    let mut ssm = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(config.region.clone()))
        .credentials_provider(credentials)
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(url) = &ssm_endpoint {
        ssm = ssm.endpoint_url(url);
    }
    let context = Context {
        endpoint: match &endpoint {
            Some(u) => format!("the EC2 endpoint {u}"),
            None => format!("the EC2 API of {}", config.region),
        },
        credentials: facts.described.clone(),
    };
    Ok(Built {
        client: aws_sdk_ec2::Client::from_conf(builder.build()),
        ssm: aws_sdk_ssm::Client::from_conf(ssm.build()),
        context,
        credentials: facts,
    })
}

/// The IAM endpoint: `iam_endpoint_url`, else `endpoint_url` (an API serving both, as moto
/// does), else (a user's own command) `AWS_ENDPOINT_URL_IAM` or `AWS_ENDPOINT_URL`.
fn iam_endpoint(config: &Ec2Config, trust: &Trust) -> Result<Option<String>, ProviderError> {
    beside_ec2(config, &config.iam_endpoint_url, trust, |e| {
        &e.endpoint_url_iam
    })
}

/// The IAM client of the students' identities: the same credentials, HTTP client (proxy, trust
/// store), timeouts and retries as the EC2 client. IAM is global: its calls are signed for
/// `us-east-1` whatever the site's region.
pub(super) fn build_iam(
    config: &Ec2Config,
    trust: &Trust,
) -> Result<(aws_sdk_iam::Client, Context), ProviderError> {
    let endpoint = iam_endpoint(config, trust)?;
    let (credentials, facts, http, timeouts) = common(config, trust)?;
    let mut builder = aws_sdk_iam::Config::builder()
        .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
        .region(aws_sdk_iam::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .http_client(http)
        .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(timeouts);
    if let Some(url) = &endpoint {
        builder = builder.endpoint_url(url);
    }
    let context = Context {
        endpoint: match &endpoint {
            Some(u) => format!("the IAM endpoint {u}"),
            None => "AWS's IAM API".to_owned(),
        },
        credentials: facts.described.clone(),
    };
    Ok((aws_sdk_iam::Client::from_conf(builder.build()), context))
}

/// The Service Quotas endpoint: `service_quotas_endpoint_url`, else `endpoint_url` (an API
/// serving both, as moto does), else (a user's own command) `AWS_ENDPOINT_URL_SERVICE_QUOTAS`
/// or `AWS_ENDPOINT_URL`.
fn quotas_endpoint(config: &Ec2Config, trust: &Trust) -> Result<Option<String>, ProviderError> {
    beside_ec2(config, &config.service_quotas_endpoint_url, trust, |e| {
        &e.endpoint_url_service_quotas
    })
}

/// The Service Quotas client of `admin preflight` (the account's vCPU quota): the same
/// credentials, HTTP client, timeouts and retries as the EC2 client, in the site's region.
pub(super) fn build_quotas(
    config: &Ec2Config,
    trust: &Trust,
) -> Result<aws_sdk_servicequotas::Client, ProviderError> {
    use aws_sdk_servicequotas::config as sq;
    let endpoint = quotas_endpoint(config, trust)?;
    let (credentials, _, http, timeouts) = common(config, trust)?;
    let mut builder = sq::Builder::new()
        .behavior_version(sq::BehaviorVersion::latest())
        .region(sq::Region::new(config.region.clone()))
        .credentials_provider(credentials)
        .http_client(http)
        .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(timeouts);
    if let Some(url) = &endpoint {
        builder = builder.endpoint_url(url);
    }
    Ok(aws_sdk_servicequotas::Client::from_conf(builder.build()))
}

/// An EC2 client that signs with `key` alone (a student's new access key, as their files now
/// hold it), for checking that the key works: the site's region and endpoint, no retries of
/// its own (the caller waits for IAM to make the key known).
pub(super) fn with_key(
    config: &Ec2Config,
    trust: &Trust,
    id: &str,
    secret: &str,
) -> Result<(aws_sdk_ec2::Client, Context), ProviderError> {
    let endpoint = endpoint(config, trust)?;
    let credentials =
        SharedCredentialsProvider::new(Credentials::new(id, secret, None, None, "stratus-new-key"));
    let mut builder = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(credentials)
        .http_client(http_client(trust, config.https_proxy.as_deref())?)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_timeout(ATTEMPT_TIMEOUT)
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
        credentials: format!("the new access key {id}"),
    };
    Ok((aws_sdk_ec2::Client::from_conf(builder.build()), context))
}

/// The credentials, and a description of where they came from for messages. Static keys only,
/// read by stratus itself: no source can make stratus run a program (`credential_process`) or
/// reach a metadata service.
///
/// With `Trust::Service` (the runner) only `credentials_file` counts. With `Trust::Caller` (a
/// user's own command): `credentials_file`, else the environment's `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, else the named `profile` (or `AWS_PROFILE`, or `default`) of the
/// shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`).
pub(super) fn credentials(
    config: &Ec2Config,
    trust: &Trust,
) -> Result<(SharedCredentialsProvider, Facts), ProviderError> {
    if let Some(path) = &config.credentials_file {
        let profile = config.profile.as_deref().unwrap_or("default");
        let described = format!(
            "the credentials file {} (profile {profile})",
            path.display()
        );
        let (creds, expires) = read_credentials_file(path, profile)?;
        let facts = Facts::of(&creds, expires, described, "aws_credential_expiration");
        return Ok((SharedCredentialsProvider::new(creds), facts));
    }
    let Some(env) = trust.caller_env() else {
        return Err(ProviderError::Auth(
            "the site config has no credentials_file under [ec2]; a multi-user install reads the service account's keys only from there".into(),
        ));
    };
    if let (Some(id), Some(secret)) = (env.access_key_id.clone(), env.secret_access_key.clone()) {
        // The variable `aws configure export-credentials --format env` sets with the keys.
        let expires = match &env.credential_expiration {
            Some(t) => Some(
                super::credentials::parse_expiry(t)
                    .map_err(|e| ProviderError::Auth(format!("AWS_CREDENTIAL_EXPIRATION: {e}")))?,
            ),
            None => None,
        };
        let token = env.session_token.clone();
        let creds = Credentials::new(
            id,
            secret,
            token,
            expires.map(super::credentials::system_time),
            "environment",
        );
        let facts = Facts::of(
            &creds,
            expires,
            "the environment (AWS_ACCESS_KEY_ID)".into(),
            "AWS_CREDENTIAL_EXPIRATION",
        );
        return Ok((SharedCredentialsProvider::new(creds), facts));
    }
    let profile = config
        .profile
        .clone()
        .or_else(|| env.profile.clone())
        .unwrap_or_else(|| "default".into());
    let path = match &env.shared_credentials_file {
        Some(p) => std::path::PathBuf::from(p),
        None => match &env.home {
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
    let (creds, expires) = read_credentials_file(&path, &profile)?;
    let facts = Facts::of(
        &creds,
        expires,
        format!(
            "the credentials file {} (profile {profile})",
            path.display()
        ),
        "aws_credential_expiration",
    );
    Ok((SharedCredentialsProvider::new(creds), facts))
}

/// Reads static keys from an INI credentials file as the AWS CLI writes it:
/// `[profile]` then `aws_access_key_id`, `aws_secret_access_key` and optionally
/// `aws_session_token` with its expiry, `aws_credential_expiration` (or
/// `x_security_token_expires`, as SAML and Okta tools write it), an RFC 3339 time.
pub(super) fn read_credentials_file(
    path: &Path,
    profile: &str,
) -> Result<(Credentials, Option<jiff::Timestamp>), ProviderError> {
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

fn parse_credentials(
    text: &str,
    profile: &str,
) -> Result<(Credentials, Option<jiff::Timestamp>), String> {
    let mut section: Option<String> = None;
    let mut found = false;
    let (mut key_id, mut secret, mut token, mut expires) = (None, None, None, None);
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
            key @ ("aws_credential_expiration" | "x_security_token_expires") => {
                expires = Some(
                    super::credentials::parse_expiry(&v)
                        .map_err(|e| format!("has an invalid {key} in [{profile}]: {e}"))?,
                )
            }
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
        (Some(id), Some(secret)) => Ok((
            Credentials::new(
                id,
                secret,
                token.filter(|t| !t.is_empty()),
                expires.map(super::credentials::system_time),
                "stratus-credentials-file",
            ),
            expires,
        )),
        _ => Err(format!(
            "has no aws_access_key_id and aws_secret_access_key in [{profile}]"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What retry partition each call ran in, as the retry strategy reads it.
    #[derive(Debug, Default, Clone)]
    struct SeenPartitions(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Intercept for SeenPartitions {
        fn name(&self) -> &'static str {
            "test: the partition of each attempt"
        }
        fn read_before_attempt(
            &self,
            _context: &aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _components: &RuntimeComponents,
            cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let p = cfg
                .load::<RetryPartition>()
                .map(|p| p.to_string())
                .unwrap_or_default();
            self.0.lock().unwrap().push(p);
            Ok(())
        }
    }

    #[test]
    fn each_ec2_action_retries_and_slows_down_in_a_partition_of_its_own() {
        let seen = SeenPartitions::default();
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("a", "b", None, None, "test"))
            // Nothing listens on port 1: each call is one attempt, refused.
            .endpoint_url("http://127.0.0.1:1")
            .retry_config(RetryConfig::adaptive().with_max_attempts(1))
            .interceptor(PartitionPerAction {
                region: "eu-west-1".into(),
            })
            .interceptor(seen.clone())
            .build();
        let client = aws_sdk_ec2::Client::from_conf(config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(client.describe_instances().send().await.is_err());
            let console = client.get_console_output().instance_id("i-1");
            assert!(console.send().await.is_err());
            assert!(client.describe_instances().send().await.is_err());
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "stratus-ec2-eu-west-1-DescribeInstances",
                "stratus-ec2-eu-west-1-GetConsoleOutput",
                "stratus-ec2-eu-west-1-DescribeInstances",
            ]
        );
    }

    #[test]
    fn credentials_file_sections() {
        let text = "# service account\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n\n[profile ci]\naws_access_key_id=AKIA2\naws_secret_access_key = s2\naws_session_token = t\n";
        let (c, expires) = parse_credentials(text, "default").unwrap();
        assert!(expires.is_none());
        assert_eq!(c.access_key_id(), "AKIA1");
        assert_eq!(c.secret_access_key(), "s1");
        assert!(c.session_token().is_none());
        let (c, _) = parse_credentials(text, "ci").unwrap();
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

    #[test]
    fn temporary_keys_carry_their_expiry() {
        let text = "[default]\naws_access_key_id=A\naws_secret_access_key=s\naws_session_token=t\naws_credential_expiration = 2026-11-01T12:00:00Z\n[saml]\naws_access_key_id=A\naws_secret_access_key=s\naws_session_token=t\nx_security_token_expires = 2026-11-01T14:00:00+02:00\n[bad]\naws_access_key_id=A\naws_secret_access_key=s\naws_credential_expiration = tomorrow\n";
        let want: jiff::Timestamp = "2026-11-01T12:00:00Z".parse().unwrap();
        for profile in ["default", "saml"] {
            let (c, expires) = parse_credentials(text, profile).unwrap();
            assert_eq!(expires, Some(want), "{profile}");
            assert!(c.expiry().is_some(), "{profile}");
        }
        let err = parse_credentials(text, "bad").unwrap_err();
        assert!(
            err.contains("invalid aws_credential_expiration in [bad]"),
            "{err}"
        );
    }
}
