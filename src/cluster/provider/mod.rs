//! The provider seam: one trait, spoken in stratus's own types, with an implementation per
//! cloud. The launch orchestration only ever talks to this trait; the EC2 adapter converts to and
//! from SDK types at its edge, and the local provider runs nodes as processes on this machine.
//!
//! Launching is per node (each node has its own rendered user-data), so the orchestration decides
//! the concurrency, replaces failed workers and rolls back; a provider only has to do each step
//! once, tag everything it creates as it creates it, and describe what exists truthfully.

pub mod ec2;
pub mod local;

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterName, Owner, RequestId, Role, Tags};
use crate::config::ProviderKind;
use crate::store::Millis;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request itself is wrong (an unknown image or instance type, say): exit code 2.
    #[error("{0}")]
    InvalidRequest(String),
    /// The cloud has no capacity for this now; another try may work.
    #[error("no capacity: {0}")]
    Capacity(String),
    #[error("{0}")]
    Auth(String),
    #[error("{op} failed: {message}")]
    Api { op: String, message: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ProviderError {
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ProviderError::InvalidRequest(_))
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| ProviderError::Io { what, source }
    }
}

/// An instance's state, in EC2's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
    Unknown,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            _ => InstanceState::Unknown,
        }
    }

    /// Gone for good: it will never run again and no longer bills.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }

    /// Billed by the hour in this state.
    pub fn is_billed(self) -> bool {
        matches!(
            self,
            InstanceState::Pending | InstanceState::Running | InstanceState::Stopping
        )
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cluster a provider call is about.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    pub owner: Owner,
    pub name: ClusterName,
    pub profile: String,
    /// The request that created the cluster (per-cluster resources carry it).
    pub request: RequestId,
}

/// How stratus reaches the nodes: the user, and the cluster's public key to authorise.
#[derive(Debug, Clone)]
pub struct SshAccess {
    pub user: String,
    /// OpenSSH public key line of the cluster key.
    pub public_key: String,
    /// The port the image's sshd listens on (a provider may use its own, see `Instance`).
    pub port: u16,
    /// Extra ports (web UIs) the profile wants reachable from the client networks.
    pub web_ports: Vec<u16>,
}

/// One node to launch.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub role: Role,
    pub index: u32,
    pub name: String,
    pub image: String,
    pub instance_type: String,
    pub spot: bool,
    pub volume_gb: Option<u32>,
    pub user_data: String,
    pub tags: Tags,
    /// Idempotency token for this node (EC2's ClientToken): the request id plus the node.
    pub client_token: String,
}

/// An instance as the provider reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    pub role: Option<Role>,
    pub index: Option<u32>,
    pub state: InstanceState,
    /// Why it is in this state, when the provider says (a crash, a spot interruption).
    pub reason: Option<String>,
    pub address: Option<String>,
    /// The address other nodes of the cluster reach it at (its private IP on EC2). Templates
    /// and the workers file use this one.
    pub private_address: Option<String>,
    pub ssh_port: u16,
    pub instance_type: String,
    pub image: String,
    pub spot: bool,
    pub tags: Option<Tags>,
    /// The host key, when the provider knows it before first contact.
    pub host_key: Option<String>,
    pub launched_at: Option<Millis>,
}

/// Which instances a describe call is about; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub owner: Option<Owner>,
    pub cluster: Option<ClusterName>,
    pub request: Option<RequestId>,
}

impl Selector {
    pub fn matches(&self, tags: &Tags) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == tags.owner)
            && self.cluster.as_ref().is_none_or(|c| *c == tags.cluster)
            && self.request.as_ref().is_none_or(|r| *r == tags.request)
    }
}

pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Creates the per-cluster resources (EC2: security group and key pair). Idempotent.
    fn prepare(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Launches one node, tagged from the moment it exists.
    fn launch(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        node: &NodeSpec,
    ) -> impl Future<Output = Result<Instance, ProviderError>> + Send;

    /// Every instance matching the selector, terminated ones included while the provider still
    /// reports them.
    fn describe(
        &self,
        selector: &Selector,
    ) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send;

    /// Terminates instances and returns once the provider has them shutting down or gone.
    fn terminate(&self, ids: &[String]) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// The clusters (owner, name) holding per-cluster resources at the provider (EC2: security
    /// groups and key pairs), all owners' with `None`: `reconcile` releases those of clusters
    /// that are gone. Providers without such resources have none to report.
    fn clusters_with_resources(
        &self,
        owner: Option<&Owner>,
    ) -> impl Future<Output = Result<Vec<(Owner, ClusterName)>, ProviderError>> + Send {
        let _ = owner;
        std::future::ready(Ok(Vec::new()))
    }

    /// Deletes the per-cluster resources once none of its instances is left.
    fn release(
        &self,
        cluster: &ClusterRef,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

/// Checks an IPv4 CIDR block such as `203.0.113.0/24`.
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR block like 203.0.113.0/24"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: prefix length must be 0 to 32"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(addr) & !mask != 0 {
        return Err(format!("{s:?} has host bits set"));
    }
    Ok((addr, len))
}
