//! The process environment, read once, at the top (`lib.rs`), into plain data that is passed
//! down: below the CLI nothing reads `std::env`. The runner of a multi-user install never reads
//! it at all (it builds `Environment::empty()` after cutting its own environment down), so
//! nothing the caller sets reaches a privileged process by accident.

use std::ffi::OsString;
use std::path::PathBuf;

/// The AWS settings of a user's own environment, for the EC2 client of their own commands
/// (`Trust::Caller`): endpoints, static keys, the shared credentials file and profile.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AwsEnv {
    pub endpoint_url: Option<String>,
    pub endpoint_url_ec2: Option<String>,
    pub endpoint_url_ssm: Option<String>,
    pub endpoint_url_iam: Option<String>,
    pub endpoint_url_service_quotas: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `AWS_CREDENTIAL_EXPIRATION`, as `aws configure export-credentials` sets it.
    pub credential_expiration: Option<String>,
    pub profile: Option<String>,
    pub shared_credentials_file: Option<String>,
    pub home: Option<String>,
}

/// No secret in a `{:?}` of the environment (a settings dump at `RUST_LOG=trace`).
impl std::fmt::Debug for AwsEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("AwsEnv")
            .field("endpoint_url", &self.endpoint_url)
            .field("endpoint_url_ec2", &self.endpoint_url_ec2)
            .field("endpoint_url_ssm", &self.endpoint_url_ssm)
            .field("endpoint_url_iam", &self.endpoint_url_iam)
            .field(
                "endpoint_url_service_quotas",
                &self.endpoint_url_service_quotas,
            )
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("credential_expiration", &self.credential_expiration)
            .field("profile", &self.profile)
            .field("shared_credentials_file", &self.shared_credentials_file)
            .field("home", &self.home)
            .finish()
    }
}

impl AwsEnv {
    /// This process's AWS variables.
    pub fn of_this_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            endpoint_url: var("AWS_ENDPOINT_URL"),
            endpoint_url_ec2: var("AWS_ENDPOINT_URL_EC2"),
            endpoint_url_ssm: var("AWS_ENDPOINT_URL_SSM"),
            endpoint_url_iam: var("AWS_ENDPOINT_URL_IAM"),
            // The SDKs' name for Service Quotas' own endpoint variable.
            endpoint_url_service_quotas: var("AWS_ENDPOINT_URL_SERVICE_QUOTAS"),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            credential_expiration: var("AWS_CREDENTIAL_EXPIRATION"),
            profile: var("AWS_PROFILE"),
            shared_credentials_file: var("AWS_SHARED_CREDENTIALS_FILE"),
            home: var("HOME"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `STRATUS_CONFIG`: the site config file; without it, the config of the install this
    /// binary belongs to (`core::install_area`), if it is an installed copy.
    pub config: Option<PathBuf>,
    /// `STRATUS_HOME`: the state directory.
    pub stratus_home: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// How the program was started, for hints a user can copy (`stratus`, `cargo run --`).
    pub argv0: Option<String>,
    /// Run by `cargo run` (cargo sets `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME`).
    pub under_cargo: bool,
    pub path: Option<OsString>,
    /// The AWS settings of this environment (a user's own EC2 commands only).
    pub aws: AwsEnv,
    /// `LISTEN_PID` and `LISTEN_FDS`: a listening socket passed by the supervisor of
    /// `stratus serve` (systemd's socket activation).
    pub listen: Option<(u32, u32)>,
    /// Debug builds only: `STRATUS_TEST_PAUSE_AT` and `STRATUS_TEST_NOW` (tests).
    pub test_pause_at: Option<String>,
    pub test_now: Option<String>,
    /// Debug builds only: `STRATUS_TEST_LEASE_SECS`, the lease of terminate and grow locks.
    pub test_lease_secs: Option<u64>,
    /// Debug builds only: `STRATUS_TEST_CRASH_AT`, a step of `identity rotate` at which the
    /// client dies as a crash would (`created`: the new key made, the files not yet written;
    /// `written`: the files written, the old key not yet deleted).
    pub test_crash_at: Option<String>,
    /// Debug builds only: `STRATUS_TEST_LEGACY_NAMES`, new clusters' resources named as before
    /// the store's migration 7 (a state as an earlier version made it).
    pub test_legacy_names: bool,
}

impl Environment {
    /// This process's environment (a user's own command).
    pub fn read() -> Self {
        let path_var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let test = |k: &str| {
            if cfg!(debug_assertions) {
                std::env::var(k).ok()
            } else {
                None
            }
        };
        Self {
            config: path_var("STRATUS_CONFIG").or_else(crate::core::install_area::config),
            stratus_home: path_var("STRATUS_HOME"),
            xdg_data_home: path_var("XDG_DATA_HOME"),
            home: path_var("HOME"),
            argv0: std::env::args_os()
                .next()
                .map(|a| a.to_string_lossy().into_owned()),
            under_cargo: std::env::var_os("CARGO_MANIFEST_DIR").is_some()
                && std::env::var("CARGO_PKG_NAME").as_deref() == Ok("stratus"),
            path: std::env::var_os("PATH"),
            aws: AwsEnv::of_this_process(),
            listen: std::env::var("LISTEN_PID")
                .ok()
                .and_then(|p| p.parse().ok())
                .zip(
                    std::env::var("LISTEN_FDS")
                        .ok()
                        .and_then(|n| n.parse().ok()),
                ),
            test_pause_at: test("STRATUS_TEST_PAUSE_AT"),
            test_now: test("STRATUS_TEST_NOW"),
            test_lease_secs: test("STRATUS_TEST_LEASE_SECS").and_then(|s| s.parse().ok()),
            test_crash_at: test("STRATUS_TEST_CRASH_AT"),
            test_legacy_names: test("STRATUS_TEST_LEGACY_NAMES").is_some(),
        }
    }

    /// Nothing: what a privileged process reads of its caller's environment.
    pub fn empty() -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn a_debug_of_the_aws_environment_shows_no_secret() {
        let env = AwsEnv {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("very/secret".into()),
            session_token: Some("token-secret".into()),
            ..Default::default()
        };
        let shown = format!("{env:?}");
        assert!(shown.contains("AKIAEXAMPLE"), "{shown}");
        assert!(
            !shown.contains("very/secret") && !shown.contains("token-secret"),
            "{shown}"
        );
    }
}
