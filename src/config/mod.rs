//! The site configuration (`/etc/stratus/config.toml` or the file named by `--config` or
//! `STRATUS_CONFIG`) and the state directory.
//!
//! The file is optional: with none, stratus runs on the local provider with built-in defaults.
//! Every table denies unknown keys, so a typo is an error naming the file and the key rather than
//! a setting silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod identities;
pub mod images;
pub mod prices;
pub mod profile;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/stratus/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the site config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid site config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid site config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot find a state directory: set STRATUS_HOME or HOME")]
    NoStateDir,
}

pub use crate::core::model::ProviderKind;

/// Whose settings a process may read. A user's own command (`Caller`) may take its config
/// file, state directory, AWS endpoint and credentials from the environment it was started
/// with. The runner of a multi-user install (`Service`) runs with the service account's rights
/// on a caller's behalf, so it reads only its install's files: no `STRATUS_*`, no `AWS_*`, no
/// proxy or certificate variables, nothing from a home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A user's own command, with the AWS settings of the environment it was started with (read
    /// once, at the top).
    Caller(Box<crate::core::env::AwsEnv>),
    Service,
}

impl Trust {
    /// The caller's AWS environment, or `None` for a service (which reads none).
    pub fn caller_env(&self) -> Option<&crate::core::env::AwsEnv> {
        match self {
            Trust::Caller(env) => Some(env),
            Trust::Service => None,
        }
    }
}

/// How launches are made on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Each user launches with credentials of their own; the policy, if any, still applies.
    #[default]
    SingleUser,
    /// Students launch through the setuid wrapper and the runner, which holds the service
    /// account's credentials and enforces the policy.
    MultiUser,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// `single-user` (the default) or `multi-user` (launches go through the setuid wrapper).
    #[serde(default)]
    pub mode: Mode,
    /// The installed setuid wrapper (multi-user mode, `transport = "setuid"`).
    pub wrapper: Option<PathBuf>,
    /// How a multi-user install's CLI reaches the privileged side: the class service's socket
    /// (`service`, the default when a `[service]` table is present) or the setuid wrapper
    /// (`setuid`, the default otherwise).
    pub transport: Option<Transport>,
    /// The class service (`stratus serve`): its socket and its timers.
    pub service: Option<ServiceConfig>,
    /// The state directory of a multi-user install (the runner's; users' own state stays in
    /// their homes). Single-user installs use `STRATUS_HOME` or the home directory.
    pub state_dir: Option<PathBuf>,
    /// The quota policy; by default `policy.toml` beside this file.
    pub policy: Option<PathBuf>,
    /// `local` (the default) or `ec2`.
    #[serde(default)]
    pub provider: ProviderKind,
    /// A directory of extra cluster profiles; a profile here overrides a shipped one of the
    /// same name.
    pub profiles_dir: Option<PathBuf>,
    /// The profile `launch-cluster` uses without `--profile`.
    pub default_profile: Option<String>,
    #[serde(default)]
    pub local: LocalConfig,
    pub ec2: Option<Ec2Config>,
    #[serde(default)]
    pub ssh: SshConfig,
    /// On-demand price in dollars per instance-hour, by instance type; overrides the built-in
    /// table.
    #[serde(default)]
    pub prices: BTreeMap<String, f64>,
    /// The students' own AWS identities (`identities`, `admin identities`).
    pub identities: Option<identities::IdentitiesConfig>,
}

/// How a multi-user install's CLI reaches the privileged side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// The class service's Unix socket (`[service] socket`): one process for the class, outside
    /// every student's cgroup.
    Service,
    /// The setuid wrapper (`wrapper`), for hosts where no service can run.
    Setuid,
}

/// The class service: `stratus serve`, as the service account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The socket it listens on, in a directory only root may write to.
    pub socket: PathBuf,
    /// Run the accounting snapshot every this many minutes (none: cron does).
    pub snapshot_minutes: Option<u32>,
    /// Run the reaper every this many minutes (none: cron does).
    pub reap_minutes: Option<u32>,
}

pub const DEFAULT_SOCKET: &str = "/run/stratus/stratus.sock";

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            snapshot_minutes: None,
            reap_minutes: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The port every local node's SSH server listens on (each node has its own address).
    pub ssh_port: u16,
    /// The first address handed to a local node; later nodes count up from it.
    pub first_address: std::net::Ipv4Addr,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            ssh_port: 2222,
            first_address: std::net::Ipv4Addr::new(127, 77, 0, 2),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Seconds allowed for one TCP connect plus SSH handshake.
    pub connect_timeout_secs: u64,
    /// Most SSH sessions open at once when fanning out over a cluster's nodes.
    pub max_parallel: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            max_parallel: 16,
        }
    }
}

/// Which address of an EC2 instance stratus connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    #[default]
    PublicIp,
    PrivateIp,
    PublicDns,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Config {
    pub region: String,
    /// Any EC2-compatible endpoint (also taken from AWS_ENDPOINT_URL when unset here).
    pub endpoint_url: Option<String>,
    /// A named profile in the shared AWS config and credentials files.
    pub profile: Option<String>,
    /// A credentials file of the service account (INI, as the AWS CLI writes it).
    pub credentials_file: Option<PathBuf>,
    /// The VPC the site's subnets belong to (checked); needs `subnet_id` or `subnet_ids`.
    pub vpc_id: Option<String>,
    /// The subnet nodes launch into (one; `subnet_ids` lists several).
    pub subnet_id: Option<String>,
    /// Subnets to launch into, in order of preference, ideally one per availability zone: when
    /// EC2 has no capacity for a type in one, the launch tries the next (then the next type).
    /// All must be in one VPC. `subnet_id`, if also given, must be the first.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    pub address: AddressKind,
    /// Networks allowed to reach the nodes' SSH port.
    #[serde(default)]
    pub client_cidrs: Vec<String>,
    /// Networks allowed to reach the profiles' extra ports (web UIs). Empty by default: those
    /// accept jobs and files from anyone who reaches them, so users go through `stratus proxy`.
    #[serde(default)]
    pub ui_cidrs: Vec<String>,
    /// Allow 0.0.0.0/0 in `client_cidrs`. Off unless the site says so.
    #[serde(default)]
    pub allow_world: bool,
    /// Where a node's SSH host key comes from before it is pinned: its console output
    /// (`console`, the default) or the first SSH contact (`first-contact`, for images whose
    /// cloud-init does not print its keys to the console).
    #[serde(default)]
    pub host_keys: HostKeySource,
    /// An HTTP proxy every EC2 (and SSM) call goes through: `http://proxy.example.edu:3128`. Only
    /// from here, never from the environment (`HTTPS_PROXY`), which a caller controls.
    pub https_proxy: Option<String>,
    /// The SSM endpoint that resolves `resolve:ssm:` images; by default `endpoint_url` when that
    /// is set (an EC2-compatible API serving both), else AWS's in the region.
    pub ssm_endpoint_url: Option<String>,
    /// The IAM endpoint the students' identities are made at (`[identities]`); by default
    /// `endpoint_url` when that is set (an API serving both, as moto does), else AWS's.
    pub iam_endpoint_url: Option<String>,
    /// The Service Quotas endpoint `admin preflight` reads the account's vCPU quota at; by
    /// default `endpoint_url` when that is set (an API serving both, as moto does), else AWS's
    /// in the region.
    pub service_quotas_endpoint_url: Option<String>,
}

impl Ec2Config {
    /// The subnets to launch into, in order of preference; empty: the region's default VPC.
    pub fn subnets(&self) -> Vec<String> {
        if self.subnet_ids.is_empty() {
            self.subnet_id.iter().cloned().collect()
        } else {
            self.subnet_ids.clone()
        }
    }

    /// What is wrong with the `[ec2]` table on its own, before any call.
    fn problems(&self) -> Option<String> {
        let id_ok = |s: &str, prefix: &str| {
            s.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())
            })
        };
        for s in self.subnet_id.iter().chain(&self.subnet_ids) {
            if !id_ok(s, "subnet-") {
                return Some(format!("[ec2] {s:?} is not a subnet id (subnet-…)"));
            }
        }
        for (i, s) in self.subnet_ids.iter().enumerate() {
            if self.subnet_ids[..i].contains(s) {
                return Some(format!("[ec2] subnet_ids lists {s} twice"));
            }
        }
        if let (Some(one), Some(first)) = (&self.subnet_id, self.subnet_ids.first())
            && one != first
        {
            return Some(format!(
                "[ec2] subnet_id = {one:?} must be the first of subnet_ids ({}), or left out",
                self.subnet_ids.join(", ")
            ));
        }
        if let Some(vpc) = &self.vpc_id {
            if !id_ok(vpc, "vpc-") {
                return Some(format!("[ec2] vpc_id {vpc:?} is not a VPC id (vpc-…)"));
            }
            // EC2 would put the group in that VPC and the nodes in the default VPC's subnet,
            // and refuse the launch ("belong to different networks"); picking a subnet here
            // would choose an availability zone and a route to the internet for the site.
            if self.subnets().is_empty() {
                return Some(format!(
                    "[ec2] vpc_id = {vpc:?} needs subnet_id (or subnet_ids): the subnets of {vpc} to launch into (aws ec2 describe-subnets --filters Name=vpc-id,Values={vpc} lists them)"
                ));
            }
        }
        if let Some(proxy) = &self.https_proxy
            && let Err(e) = check_proxy_url(proxy)
        {
            return Some(format!("[ec2] https_proxy: {e}"));
        }
        for (key, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("ssm_endpoint_url", &self.ssm_endpoint_url),
            ("iam_endpoint_url", &self.iam_endpoint_url),
            (
                "service_quotas_endpoint_url",
                &self.service_quotas_endpoint_url,
            ),
        ] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Some(format!(
                    "[ec2] {key} {u:?} must be an http:// or https:// URL"
                ));
            }
        }
        None
    }
}

/// Checks a proxy URL: `http://host:port`, with no credentials in it (the site config is
/// readable by everyone).
pub fn check_proxy_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?} must be an http:// URL (the proxy is asked to CONNECT to AWS's HTTPS endpoints)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{url:?} holds a user name or password, which the site config (readable by everyone) must not"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(format!(
            "{url:?} is not a proxy URL like http://proxy.example.edu:3128"
        ));
    }
    Ok(())
}

/// Where stratus learns an EC2 node's host key, to pin it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeySource {
    /// From the instance's console output (GetConsoleOutput), where cloud-init prints the host
    /// keys between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`,
    /// before first contact: a connection presenting another key is refused.
    #[default]
    Console,
    /// Whatever the node presents on the first SSH contact (trust on first use), then pinned.
    FirstContact,
}

impl SiteConfig {
    /// Reads the site config: `explicit` (from `--config`), else `STRATUS_CONFIG`, else
    /// `/etc/stratus/config.toml` if it exists, else the defaults. Returns the path it read.
    pub fn load(
        explicit: Option<&Path>,
        env_path: Option<&Path>,
    ) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let path = match (explicit, env_path) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p.to_path_buf()),
            (None, None) => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                p.exists().then(|| p.to_path_buf())
            }
        };
        let Some(path) = path else {
            return Ok((Self::default(), None));
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Self::parse(&text, &path)?;
        Ok((config, Some(path)))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: SiteConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_message(&e),
        })?;
        // Relative paths are relative to the file that names them, as a reader of the file
        // would expect.
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for p in [
            &mut config.profiles_dir,
            &mut config.wrapper,
            &mut config.state_dir,
            &mut config.policy,
        ] {
            if let Some(dir) = p
                && dir.is_relative()
            {
                *p = Some(base.join(&*dir));
            }
        }
        if let Some(ec2) = &mut config.ec2
            && let Some(c) = &ec2.credentials_file
            && c.is_relative()
        {
            ec2.credentials_file = Some(base.join(c));
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.provider == ProviderKind::Ec2 && self.ec2.is_none() {
            return Err(invalid(
                "provider = \"ec2\" needs an [ec2] table with at least `region`".into(),
            ));
        }
        if let Some(problem) = self.identities.as_ref().and_then(|i| i.problem()) {
            return Err(invalid(problem));
        }
        if let Some(ec2) = &self.ec2 {
            if let Some(problem) = ec2.problems() {
                return Err(invalid(problem));
            }
            for (key, cidrs) in [
                ("client_cidrs", &ec2.client_cidrs),
                ("ui_cidrs", &ec2.ui_cidrs),
            ] {
                for cidr in cidrs {
                    parse_cidr(cidr).map_err(|m| invalid(format!("[ec2] {key}: {m}")))?;
                    if cidr.ends_with("/0") && !ec2.allow_world {
                        return Err(invalid(format!(
                            "[ec2] {key} contains {cidr}, which opens the cluster to the whole internet; set allow_world = true if that is really meant"
                        )));
                    }
                }
            }
        }
        if self.mode == Mode::MultiUser {
            if self.provider == ProviderKind::Local {
                return Err(invalid(
                    "mode = \"multi-user\" needs provider = \"ec2\": local nodes would run as the service account, and a shell on one could read its credentials".into(),
                ));
            }
            if self.transport() == Transport::Setuid && self.wrapper.is_none() {
                return Err(invalid(
                    "mode = \"multi-user\" with transport = \"setuid\" needs `wrapper`, the path of the installed stratus-wrap"
                        .into(),
                ));
            }
        }
        if let Some(s) = &self.service {
            if !s.socket.is_absolute() {
                return Err(invalid(format!(
                    "[service] socket = {:?} must be an absolute path",
                    s.socket.display()
                )));
            }
            for (key, v) in [
                ("snapshot_minutes", s.snapshot_minutes),
                ("reap_minutes", s.reap_minutes),
            ] {
                if v == Some(0) {
                    return Err(invalid(format!(
                        "[service] {key} must be at least 1 (leave it out for none)"
                    )));
                }
            }
        }
        // Checked where they are used: a multi-user (EC2) site never reads them.
        if self.provider == ProviderKind::Local && !self.local.first_address.is_loopback() {
            return Err(invalid(format!(
                "[local] first_address = \"{}\" is not a loopback address (127.0.0.0/8): local nodes listen on loopback addresses only",
                self.local.first_address
            )));
        }
        if self.provider == ProviderKind::Local && self.local.ssh_port == 0 {
            return Err(invalid(
                "[local] ssh_port must be a port number from 1 to 65535".into(),
            ));
        }
        if self.ssh.max_parallel == 0 {
            return Err(invalid("[ssh] max_parallel must be at least 1".into()));
        }
        use crate::config::prices;
        for (ty, price) in &self.prices {
            if !price.is_finite() || *price < 0.0 {
                return Err(invalid(format!("[prices] {ty:?} must be a price >= 0")));
            }
            if !ty.contains('.')
                && !crate::core::model::is_local_instance_type(ty)
                && ty != prices::GP3_KEY
                && ty != prices::IPV4_KEY
            {
                return Err(invalid(format!(
                    "[prices] {ty:?} is neither an instance type (like \"m5.large\") nor {} or {}",
                    prices::GP3_KEY,
                    prices::IPV4_KEY
                )));
            }
        }
        // Estimates and budgets need the region's prices: unknown ones must come from here.
        if self.provider == ProviderKind::Ec2
            && let Some(ec2) = &self.ec2
            && !prices::region_known(&ec2.region)
        {
            let types = self.prices.keys().any(|k| k.contains('.'));
            if !types || !self.prices.contains_key(prices::GP3_KEY) {
                return Err(invalid(format!(
                    "[ec2] region = {:?} has no built-in prices (stratus knows {}); give the region's under [prices]: dollars per hour by instance type (\"m5.large\" = 0.107) and {} (gp3 storage, dollars per GB-month)",
                    ec2.region,
                    prices::known_regions().join(", "),
                    prices::GP3_KEY
                )));
            }
        }
        Ok(())
    }
}

impl SiteConfig {
    /// How a multi-user install's CLI reaches the privileged side.
    pub fn transport(&self) -> Transport {
        self.transport.unwrap_or(if self.service.is_some() {
            Transport::Service
        } else {
            Transport::Setuid
        })
    }

    /// The class service's socket.
    pub fn socket(&self) -> PathBuf {
        self.service
            .as_ref()
            .map(|s| s.socket.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// The policy file: `policy`, else `policy.toml` beside the site config (none without one).
    pub fn policy_path(&self, config_path: Option<&Path>) -> Option<PathBuf> {
        self.policy.clone().or_else(|| {
            config_path.map(|p| p.parent().unwrap_or(Path::new("/")).join("policy.toml"))
        })
    }
}

/// The first line of a TOML error plus its location, without the multi-line source excerpt.
pub fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(_) => {
            // `Display` renders "TOML parse error at line L, column C" first; keep that part.
            let rendered = e.to_string();
            let location = rendered
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("TOML parse error at "))
                .map(str::to_owned);
            match location {
                Some(loc) => format!("{msg} (at {loc})"),
                None => msg,
            }
        }
        None => msg,
    }
}

/// The directory holding the state database, keys and local nodes: `STRATUS_HOME`, else
/// `$XDG_DATA_HOME/stratus`, else `~/.local/share/stratus`.
pub fn state_dir(
    stratus_home: Option<&Path>,
    xdg_data_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = stratus_home.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(p.join("stratus"));
    }
    if let Some(h) = home.filter(|p| p.is_absolute()) {
        return Ok(h.join(".local/share/stratus"));
    }
    Err(ConfigError::NoStateDir)
}

/// Checks an IPv4 CIDR block such as `203.0.113.0/24`: a network address (no host bits set)
/// and a prefix length.
pub fn parse_cidr(s: &str) -> Result<ipnet::Ipv4Net, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR block like 203.0.113.0/24"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let net = len
        .parse::<u8>()
        .ok()
        .and_then(|l| ipnet::Ipv4Net::new(addr, l).ok())
        .ok_or_else(|| format!("{s:?}: prefix length must be 0 to 32"))?;
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set"));
    }
    Ok(net)
}

impl From<ConfigError> for crate::core::error::Error {
    fn from(e: ConfigError) -> Self {
        crate::core::error::Error::wrap(crate::core::error::Kind::BadInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = SiteConfig::parse(
            "provider = \"local\"\nprovder = 1\n",
            Path::new("/x/c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/x/c.toml"), "{err}");
        assert!(err.contains("provder"), "{err}");
    }

    #[test]
    fn ec2_needs_its_table_and_refuses_the_world() {
        assert!(SiteConfig::parse("provider = \"ec2\"", Path::new("c")).is_err());
        let err = SiteConfig::parse(
            "provider = \"ec2\"\n[ec2]\nregion = \"us-east-1\"\nclient_cidrs = [\"0.0.0.0/0\"]\n",
            Path::new("c"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("allow_world"), "{err}");
    }

    #[test]
    fn ec2_host_keys_come_from_the_console_unless_the_site_says_otherwise() {
        let ec2 = |extra: &str| {
            SiteConfig::parse(
                &format!("provider = \"ec2\"\n[ec2]\nregion = \"us-east-1\"\n{extra}"),
                Path::new("c"),
            )
            .map(|c| c.ec2.unwrap().host_keys)
        };
        assert_eq!(ec2("").unwrap(), HostKeySource::Console);
        assert_eq!(
            ec2("host_keys = \"console\"\n").unwrap(),
            HostKeySource::Console
        );
        assert_eq!(
            ec2("host_keys = \"first-contact\"\n").unwrap(),
            HostKeySource::FirstContact
        );
        let err = ec2("host_keys = \"trust\"\n").unwrap_err().to_string();
        assert!(err.contains("first-contact"), "{err}");
    }

    #[test]
    fn ec2_networks_are_checked_at_load() {
        let ec2 = |extra: &str| {
            SiteConfig::parse(
                &format!("provider = \"ec2\"\n[ec2]\nregion = \"us-east-1\"\n{extra}"),
                Path::new("/x/c.toml"),
            )
        };
        // vpc_id alone would put the group in that VPC and the nodes in the default one.
        let err = ec2("vpc_id = \"vpc-0abc\"\n").unwrap_err().to_string();
        assert!(err.contains("/x/c.toml"), "{err}");
        assert!(
            err.contains("vpc_id = \"vpc-0abc\" needs subnet_id (or subnet_ids)"),
            "{err}"
        );
        assert!(err.contains("Name=vpc-id,Values=vpc-0abc"), "{err}");
        let ok = ec2("vpc_id = \"vpc-0abc\"\nsubnet_ids = [\"subnet-1\", \"subnet-2\"]\n").unwrap();
        assert_eq!(ok.ec2.unwrap().subnets(), ["subnet-1", "subnet-2"]);
        let one = ec2("subnet_id = \"subnet-1\"\n").unwrap().ec2.unwrap();
        assert_eq!(one.subnets(), ["subnet-1"]);
        for (extra, needle) in [
            (
                "subnet_id = \"subnet-2\"\nsubnet_ids = [\"subnet-1\", \"subnet-2\"]\n",
                "subnet_id = \"subnet-2\" must be the first of subnet_ids",
            ),
            (
                "subnet_ids = [\"subnet-1\", \"subnet-1\"]\n",
                "lists subnet-1 twice",
            ),
            ("subnet_ids = [\"sub net\"]\n", "is not a subnet id"),
            (
                "vpc_id = \"default\"\nsubnet_id = \"subnet-1\"\n",
                "is not a VPC id",
            ),
            (
                "https_proxy = \"socks5://p:1080\"\n",
                "must be an http:// URL",
            ),
            (
                "https_proxy = \"http://user:secret@p:3128\"\n",
                "holds a user name or password",
            ),
            ("https_proxy = \"http://p:0\"\n", "is not a proxy URL"),
            (
                "ssm_endpoint_url = \"localhost:4566\"\n",
                "ssm_endpoint_url",
            ),
        ] {
            let err = ec2(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        assert!(ec2("https_proxy = \"http://proxy.example.edu:3128\"\n").is_ok());
    }

    #[test]
    fn a_region_without_known_prices_needs_the_site_s() {
        let ec2 = |region: &str, prices: &str| {
            SiteConfig::parse(
                &format!("provider = \"ec2\"\n{prices}\n[ec2]\nregion = \"{region}\"\n"),
                Path::new("/x/c.toml"),
            )
        };
        assert!(ec2("us-east-2", "").is_ok());
        let err = ec2("eu-west-3", "").unwrap_err().to_string();
        assert!(err.contains("/x/c.toml"), "{err}");
        assert!(
            err.contains("region = \"eu-west-3\" has no built-in prices (stratus knows us-east-1"),
            "{err}"
        );
        let err = ec2("eu-west-3", "[prices]\n\"m5.large\" = 0.112\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ebs_gp3_gb_month"), "{err}");
        assert!(
            ec2(
                "eu-west-3",
                "[prices]\n\"m5.large\" = 0.112\nebs_gp3_gb_month = 0.0928\n"
            )
            .is_ok()
        );
        let err = ec2("us-east-1", "[prices]\ngp3 = 0.08\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"gp3\" is neither an instance type"), "{err}");
        // A local site never prices EC2.
        assert!(SiteConfig::parse("[ec2]\nregion = \"eu-west-3\"\n", Path::new("c")).is_ok());
    }

    #[test]
    fn local_nodes_need_a_loopback_address_and_a_port() {
        for (text, needle) in [
            (
                "[local]\nfirst_address = \"10.1.2.3\"\n",
                "[local] first_address = \"10.1.2.3\" is not a loopback address",
            ),
            ("[local]\nssh_port = 0\n", "[local] ssh_port must be"),
        ] {
            let err = SiteConfig::parse(text, Path::new("/x/c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("/x/c.toml"), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        let ok = SiteConfig::parse(
            "[local]\nfirst_address = \"127.9.0.2\"\nssh_port = 2022\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(ok.local.ssh_port, 2022);
    }

    #[test]
    fn state_dir_order() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            state_dir(Some(&p("/s")), Some(&p("/x")), Some(&p("/h"))).unwrap(),
            p("/s")
        );
        assert_eq!(
            state_dir(None, Some(&p("/x")), Some(&p("/h"))).unwrap(),
            p("/x/stratus")
        );
        assert_eq!(
            state_dir(None, None, Some(&p("/h"))).unwrap(),
            p("/h/.local/share/stratus")
        );
        assert!(state_dir(None, None, None).is_err());
    }
}
