//! The provider seam: one trait, spoken in stratus's own types, with an implementation per
//! cloud, and `AnyProvider`, the one dispatch over them that commands build once. The launch
//! orchestration only ever talks to this trait; the EC2 adapter converts to and from SDK types at
//! its edge, and the local provider runs nodes as processes on this machine.
//!
//! Launching is per batch: all the nodes of one role in one call (one RunInstances on EC2, with
//! one idempotency token), so a launch costs the same few calls at 1+1 as at 1+100. The
//! orchestration replaces failed workers and rolls back; a provider only has to do each step
//! once, tag everything it creates as it creates it, and describe what exists truthfully.

pub mod ec2;
pub mod local;

use std::future::Future;
use std::time::Duration;

use russh::keys::PublicKey;
use serde::Serialize;

pub use crate::core::model::InstanceState;
use crate::core::model::{
    ClusterName, Millis, Owner, ProviderKind, RequestId, Role, StoreId, Tags,
};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request itself is wrong (an unknown image or instance type, say): exit code 2.
    #[error("{0}")]
    InvalidRequest(String),
    /// The cloud has no capacity for this now; another try (another type, another zone, later)
    /// may work.
    #[error("no capacity: {0}")]
    Capacity(String),
    /// A limit of the cloud account (a vCPU quota, a subnet without free addresses) that only
    /// whoever runs the account can raise: no retry helps, so a launch stops at once.
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Auth(String),
    /// The account's request rate for this action is spent (after the SDK's retries): a wait
    /// tries again at its next round, a launch call is retried by the provider.
    #[error("{0}")]
    Throttled(String),
    #[error("{op} failed: {message}")]
    Api { op: String, message: String },
    /// The endpoint did not answer in time, could not be reached, or answered that it is briefly
    /// unavailable (InternalError, Unavailable): a wait looks again at its next round.
    #[error("{op} failed: {message}")]
    Unavailable { op: String, message: String },
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

    /// Whether a wait should simply look again later: throttled, or the endpoint briefly
    /// unavailable.
    pub fn try_later(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled(_) | ProviderError::Unavailable { .. }
        )
    }

    /// Whether no other node of the launch can do better: the request is wrong, or the
    /// account is at a limit. The launch stops and rolls back instead of replacing nodes.
    pub fn stops_launch(&self) -> bool {
        matches!(
            self,
            ProviderError::InvalidRequest(_) | ProviderError::Quota(_)
        )
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| ProviderError::Io { what, source }
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
    /// The state database the cluster belongs to (every resource carries it).
    pub store: StoreId,
    /// How its own resources are named (what its record says).
    pub naming: crate::core::model::Naming,
}

impl ClusterRef {
    /// The tags of the cluster's own resources (its group and key pair): no role.
    pub fn tags(&self) -> Tags {
        Tags {
            owner: self.owner.clone(),
            cluster: self.name.clone(),
            role: None,
            profile: self.profile.clone(),
            request: self.request.clone(),
            store: Some(self.store.clone()),
        }
    }
}

/// How stratus reaches the nodes: the user, and the cluster's public key to authorise.
#[derive(Debug, Clone)]
pub struct SshAccess {
    pub user: String,
    /// OpenSSH public key line of the cluster key.
    pub public_key: String,
    /// The port the image's sshd listens on (a provider may use its own, see `Instance`).
    pub port: u16,
    /// Extra ports the profile lists; EC2 opens them only to the site's `ui_cidrs`.
    pub web_ports: Vec<u16>,
}

/// The nodes of one role to launch in one call. They share their user-data and tags; node `k` of
/// the batch (its launch index) is node `first_index + k` of the cluster.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub role: Role,
    pub first_index: u32,
    /// How many nodes are wanted.
    pub count: u32,
    /// The fewest the call may launch and still succeed (EC2's MinCount).
    pub min_count: u32,
    /// `demo-master`, `demo-worker`: what the nodes are called at the provider.
    pub name: String,
    pub image: String,
    /// The preferred instance type (the first of `instance_types`).
    pub instance_type: String,
    /// Every type the nodes may run on, in order of preference: a provider that meets a
    /// capacity shortage for one tries the next.
    pub instance_types: Vec<String>,
    pub spot: bool,
    pub volume_gb: Option<u32>,
    pub user_data: String,
    pub tags: Tags,
    /// Idempotency token of the call (EC2's ClientToken): a retried call never launches twice.
    /// A provider that makes more than one call for the batch (another subnet, another type)
    /// derives a token of its own for each from this one, and writes it down first.
    pub client_token: String,
}

/// Where a provider writes down each launch call before making it: the store's launch batches,
/// which `reconcile` goes through should the process die with a call in flight. The batch's own
/// `client_token` is written before `launch` is called; a provider that makes further calls
/// (a fallback to another subnet or type) must `begin` each one's token before its call.
pub trait Journal: Sync {
    /// Writes down a call with this token, before it is made. An error means the call must not
    /// be made (the cluster moved on, or the store failed): the launch stops.
    fn begin(&self, token: &str) -> Result<(), String>;
}

/// What a launch call created. A call may create some instances and still fail (a local node
/// that did not start): the ones it created are listed either way, so they are recorded.
#[derive(Debug)]
pub struct Launched {
    pub instances: Vec<Instance>,
    pub error: Option<ProviderError>,
    /// The tokens of the calls known to have created exactly `instances` and nothing more (they
    /// succeeded, or the cloud refused them outright): settled when the instances are recorded.
    /// A call whose answer was lost stays unsettled, for `reconcile`.
    pub settled: Vec<String>,
}

/// What a terminate call could not act on yet.
#[derive(Debug, Default)]
pub struct TerminateReport {
    /// Ids the provider says it does not know. Right after a launch that is EC2's eventual
    /// consistency, not proof of anything: these must be asked again.
    pub not_found: Vec<String>,
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
    /// Its root volume in GiB, when the provider knows it (EC2: at launch).
    pub volume_gb: Option<u32>,
    /// Whether it holds a public IPv4 address, when the provider knows.
    pub public_ipv4: Option<bool>,
}

/// Which instances a describe call is about; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub owner: Option<Owner>,
    pub cluster: Option<ClusterName>,
    pub request: Option<RequestId>,
    pub store: Option<StoreId>,
}

impl Selector {
    pub fn matches(&self, tags: &Tags) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == tags.owner)
            && self.cluster.as_ref().is_none_or(|c| *c == tags.cluster)
            && self.request.as_ref().is_none_or(|r| *r == tags.request)
            && self
                .store
                .as_ref()
                .is_none_or(|s| tags.store.as_ref() == Some(s))
    }
}

pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// How long a new instance may be missing from `describe`, or unknown to `terminate`,
    /// before that means anything (EC2 is eventually consistent).
    fn consistency_grace(&self) -> Duration;

    /// Creates the per-cluster resources (EC2: security group and key pair). Idempotent.
    fn prepare(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Launches one batch of nodes, tagged from the moment they exist. Every call beyond the
    /// batch's first is written to `journal` before it is made.
    fn launch(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        batch: &BatchSpec,
        journal: &dyn Journal,
    ) -> impl Future<Output = Launched> + Send;

    /// Every instance matching the selector, terminated ones included while the provider still
    /// reports them.
    fn describe(
        &self,
        selector: &Selector,
    ) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send;

    /// `describe`, for a wait that polls: the provider may answer from a describe of all its
    /// instances made a moment ago for another wait (the class service's launches waiting at
    /// once then cost one DescribeInstances per round, however many they are). Never for a
    /// decision that must see the latest answer (reconcile, a terminate's confirmation).
    fn poll(
        &self,
        selector: &Selector,
    ) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send {
        self.describe(selector)
    }

    /// The instances of these ids that the provider lists now, whatever their tags (to check
    /// whose they are). Ids it does not list are left out.
    fn describe_ids(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send {
        let ids: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
        async move {
            Ok(self
                .describe(&Selector::default())
                .await?
                .into_iter()
                .filter(|i| ids.contains(&i.id))
                .collect())
        }
    }

    /// Asks for instances to be terminated. Ids the provider does not know are reported, not
    /// taken as gone.
    fn terminate(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<TerminateReport, ProviderError>> + Send;

    /// The tags of the per-cluster resources (EC2: security groups and key pairs) matching the
    /// selector: `reconcile` releases those of clusters that are gone. Providers without such
    /// resources have none to report.
    fn cluster_resources(
        &self,
        selector: &Selector,
    ) -> impl Future<Output = Result<Vec<Tags>, ProviderError>> + Send {
        let _ = selector;
        std::future::ready(Ok(Vec::new()))
    }

    /// Deletes the per-cluster resources once none of its instances is left. Only resources
    /// carrying the cluster's store id are touched.
    fn release(
        &self,
        cluster: &ClusterRef,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Adds tags to instances (the reaper's warning). Providers without tags ignore it.
    fn tag(
        &self,
        ids: &[String],
        pairs: &[(String, String)],
    ) -> impl Future<Output = Result<(), ProviderError>> + Send {
        let _ = (ids, pairs);
        std::future::ready(Ok(()))
    }

    /// Leftovers of node starts that never got as far as a node (the local provider's node
    /// directories without a configuration), older than `grace`.
    fn half_made(
        &self,
        grace: Duration,
    ) -> impl Future<Output = Result<Vec<String>, ProviderError>> + Send {
        let _ = grace;
        std::future::ready(Ok(Vec::new()))
    }

    /// Removes what `half_made` listed.
    fn remove_half_made(
        &self,
        leftovers: &[String],
    ) -> impl Future<Output = Result<(), ProviderError>> + Send {
        let _ = leftovers;
        std::future::ready(Ok(()))
    }

    /// Whether a node's host key, when `describe` does not know it, must be read from the node's
    /// console (`console_host_keys`) and pinned before first contact, rather than learned on
    /// first contact. EC2 with `[ec2] host_keys = "console"`; the local provider knows its keys.
    fn host_keys_from_console(&self) -> bool {
        false
    }

    /// The SSH host keys instance `id` printed on its console (one call: EC2's
    /// GetConsoleOutput); `None` while it has printed none yet.
    fn console_host_keys(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Vec<PublicKey>>, ProviderError>> + Send {
        let _ = id;
        std::future::ready(Ok(None))
    }
}

/// The providers a command may use, as one type: built once per command and passed down.
pub enum AnyProvider {
    Local(local::LocalProvider),
    Ec2(Box<ec2::Ec2Provider>),
}

impl Provider for AnyProvider {
    fn kind(&self) -> ProviderKind {
        match self {
            AnyProvider::Local(p) => p.kind(),
            AnyProvider::Ec2(p) => p.kind(),
        }
    }

    fn consistency_grace(&self) -> Duration {
        match self {
            AnyProvider::Local(p) => p.consistency_grace(),
            AnyProvider::Ec2(p) => p.consistency_grace(),
        }
    }

    async fn prepare(&self, cluster: &ClusterRef, access: &SshAccess) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.prepare(cluster, access).await,
            AnyProvider::Ec2(p) => p.prepare(cluster, access).await,
        }
    }

    async fn launch(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        batch: &BatchSpec,
        journal: &dyn Journal,
    ) -> Launched {
        match self {
            AnyProvider::Local(p) => p.launch(cluster, access, batch, journal).await,
            AnyProvider::Ec2(p) => p.launch(cluster, access, batch, journal).await,
        }
    }

    async fn describe(&self, selector: &Selector) -> Result<Vec<Instance>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.describe(selector).await,
            AnyProvider::Ec2(p) => p.describe(selector).await,
        }
    }

    async fn poll(&self, selector: &Selector) -> Result<Vec<Instance>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.poll(selector).await,
            AnyProvider::Ec2(p) => p.poll(selector).await,
        }
    }

    async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Instance>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.describe_ids(ids).await,
            AnyProvider::Ec2(p) => p.describe_ids(ids).await,
        }
    }

    async fn terminate(&self, ids: &[String]) -> Result<TerminateReport, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.terminate(ids).await,
            AnyProvider::Ec2(p) => p.terminate(ids).await,
        }
    }

    async fn cluster_resources(&self, selector: &Selector) -> Result<Vec<Tags>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.cluster_resources(selector).await,
            AnyProvider::Ec2(p) => p.cluster_resources(selector).await,
        }
    }

    async fn release(&self, cluster: &ClusterRef) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.release(cluster).await,
            AnyProvider::Ec2(p) => p.release(cluster).await,
        }
    }

    async fn tag(&self, ids: &[String], pairs: &[(String, String)]) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.tag(ids, pairs).await,
            AnyProvider::Ec2(p) => p.tag(ids, pairs).await,
        }
    }

    async fn half_made(&self, grace: Duration) -> Result<Vec<String>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.half_made(grace).await,
            AnyProvider::Ec2(p) => p.half_made(grace).await,
        }
    }

    async fn remove_half_made(&self, leftovers: &[String]) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.remove_half_made(leftovers).await,
            AnyProvider::Ec2(p) => p.remove_half_made(leftovers).await,
        }
    }

    fn host_keys_from_console(&self) -> bool {
        match self {
            AnyProvider::Local(p) => p.host_keys_from_console(),
            AnyProvider::Ec2(p) => p.host_keys_from_console(),
        }
    }

    async fn console_host_keys(&self, id: &str) -> Result<Option<Vec<PublicKey>>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.console_host_keys(id).await,
            AnyProvider::Ec2(p) => p.console_host_keys(id).await,
        }
    }
}

impl From<ProviderError> for crate::core::error::Error {
    fn from(e: ProviderError) -> Self {
        let kind = if e.is_bad_input() {
            crate::core::error::Kind::BadInput
        } else {
            crate::core::error::Kind::Failed
        };
        crate::core::error::Error::wrap(kind, e)
    }
}
