//! The EC2 provider: the `Provider` trait over aws-sdk-ec2, for AWS or any EC2-compatible API
//! (moto in the tests).
//!
//! Per cluster it owns a security group `stratus-<owner>-<cluster>` (all traffic among its
//! members; SSH and the profile's web ports only from the site's client networks) and a key pair
//! `<owner>-<cluster>` imported from the cluster key. Every resource is created with
//! TagSpecifications carrying the cluster's tags, so nothing it makes is ever untagged, even
//! after a crash (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html>).
//! Nodes are launched one RunInstances call per batch (all the nodes of one role, MinCount and
//! MaxCount), with one ClientToken per batch for idempotent retries, gzipped user-data, and
//! shutdown behaviour `terminate`; a node's index is the batch's first index (a tag) plus its
//! launch index. The SDK runs in adaptive retry mode, so throttling slows the client down
//! rather than failing a launch.
//!
//! Every resource carries the store id of the state database that launched it, and nothing
//! here touches a group or key pair of another store: a second state directory of the same user
//! never takes over, or deletes, the first one's.
//!
//! SDK types stay in this module: everything is converted to the provider's own types at the
//! edge, and every `Option` the SDK returns is handled, never unwrapped.

mod boot_image;
mod capacity;
mod client;
pub mod console;
pub mod credentials;
mod error;
pub mod iam;
pub mod iam_policy;
pub mod image;
pub mod key_pairs;
mod network;
pub mod preflight;
mod rate;
mod rules;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, InstanceInterruptionBehavior,
    InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceStateName,
    InstanceType, MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification, VolumeType,
};
use base64::Engine;

use super::{
    BatchSpec, ClusterRef, Instance, InstanceState, Journal, Launched, Provider, ProviderError,
    Selector, SshAccess, TerminateReport,
};
use crate::config::{AddressKind, Ec2Config, HostKeySource, Trust};
use crate::core::model::{
    ClusterName, Naming, Owner, ProviderKind, RequestId, Role, StoreId, TAG_CLUSTER, TAG_OWNER,
    TAG_PROFILE, TAG_REQUEST, TAG_ROLE, TAG_STORE, Tags,
};

/// The SSH port of the node's image, recorded at launch so that `describe` (in any later
/// process) reports the port stratus must connect to.
pub const TAG_SSH_PORT: &str = "stratus:ssh-port";
/// EC2's display name of a resource (the console shows it).
pub const TAG_NAME: &str = "Name";
/// The index of a batch's first node: a node's index is this plus its launch index.
pub const TAG_FIRST_INDEX: &str = "stratus:first-index";
/// How long a new instance may be unknown to EC2's API (NotFound, or missing from filtered
/// describes) before that means anything.
/// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/query-api-troubleshooting.html#eventual-consistency>
pub const CONSISTENCY_GRACE: Duration = Duration::from_secs(10 * 60);

/// EC2 allows ClientTokens of at most 64 ASCII characters.
const CLIENT_TOKEN_MAX: usize = 64;
/// Instance ids per TerminateInstances or filter value list.
const IDS_PER_CALL: usize = 200;
/// How long `release` keeps trying to delete a security group that instances still use (they
/// hold it until they are fully terminated, a minute or two after shutting-down).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The security group of a cluster: `stratus-<owner>@<cluster>` (`stratus-<owner>-<cluster>`
/// for clusters recorded before the store's migration 7).
pub fn group_name(owner: &Owner, cluster: &ClusterName, naming: Naming) -> String {
    format!("stratus-{}", naming.join(owner, cluster))
}

/// The key pair of a cluster: `<owner>@<cluster>` (`<owner>-<cluster>` before migration 7).
pub fn key_name(owner: &Owner, cluster: &ClusterName, naming: Naming) -> String {
    naming.join(owner, cluster)
}

/// The scheme a cluster's resources are not named by.
fn other_naming(naming: Naming) -> Naming {
    match naming {
        Naming::Dash => Naming::At,
        Naming::At => Naming::Dash,
    }
}

/// An I/O error's reason without the `(os error N)` suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

pub struct Ec2Provider {
    client: aws_sdk_ec2::Client,
    /// Resolves `resolve:ssm:` images.
    ssm: aws_sdk_ssm::Client,
    /// Reads the account's vCPU quotas (`admin preflight`).
    quotas: aws_sdk_servicequotas::Client,
    /// What the credentials are (temporary, until when).
    credentials: credentials::Facts,
    ctx: error::Context,
    config: Ec2Config,
    /// Security group ids by name, learned by `prepare` or looked up by `launch`.
    groups: Mutex<HashMap<String, String>>,
    /// Images as launched (AMI ids, `resolve:ssm:` ones resolved) by image as profiles name
    /// them, and root device names by AMI id.
    images: Mutex<HashMap<String, String>>,
    /// Root device names and root volume sizes by AMI id.
    root_devices: Mutex<HashMap<String, boot_image::RootVolume>>,
    /// Whether GetConsoleOutput is asked for the latest output (`Latest=true`); turned off for
    /// good when the endpoint refuses it (EC2 does on instance types without it).
    console_latest: AtomicBool,
    /// The site's subnets and VPC, looked up once.
    network: tokio::sync::OnceCell<network::Network>,
    /// Set once the VPC is known to give instances DNS host names.
    dns_checked: tokio::sync::OnceCell<()>,
    /// Placements (type and subnet) that lately had no room.
    shortages: Mutex<capacity::Shortages>,
    /// The last describe of the waiting clusters' instances, shared by the waits that poll
    /// (`poll`).
    polled: tokio::sync::Mutex<Option<Polled>>,
    /// stratus's own pace of GetConsoleOutput calls (`CONSOLE_READS`).
    console_reads: rate::Bucket,
    /// The clusters whose waits polled lately, by name, and when each last did: what the next
    /// shared describe asks for.
    waiting: Mutex<HashMap<ClusterName, std::time::Instant>>,
}

/// One describe of a store's instances (those of the clusters waiting, or all), and when it
/// answered.
struct Polled {
    at: std::time::Instant,
    store: Option<crate::core::model::StoreId>,
    /// The clusters it asked for; none: every cluster of the store.
    clusters: Option<std::collections::BTreeSet<ClusterName>>,
    instances: std::sync::Arc<Vec<Instance>>,
}

impl Polled {
    /// Whether it can answer this wait: the same store, fresh, and it asked for the wait's
    /// cluster.
    fn answers(&self, selector: &Selector) -> bool {
        self.store == selector.store
            && self.at.elapsed() < SHARED_POLL
            && match (&self.clusters, &selector.cluster) {
                (None, _) => true,
                (Some(asked), Some(c)) => asked.contains(c),
                (Some(_), None) => false,
            }
    }
}

/// GetConsoleOutput calls at once, then a second: half of EC2's documented example bucket (100,
/// refilled at 20 a second), so that a class's consoles are read as fast as EC2 lets one
/// process read them, with room left for other callers of the account.
const CONSOLE_READS: (u32, u32) = (50, 10);

/// A cluster whose wait has not polled for this long is no longer asked for: waits poll every
/// 10 to 15 s, and a describe under load can take tens.
const WAITING_LATELY: Duration = Duration::from_secs(60);

/// How long one describe answers every wait that polls: a wait polls every 10 to 15 s after its
/// first seconds, so a class of launches waiting at once costs a few describes per round.
const SHARED_POLL: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Ec2Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Provider")
            .field("endpoint", &self.ctx.endpoint)
            .field("region", &self.config.region)
            .finish_non_exhaustive()
    }
}

/// A filter on one value.
fn filter(name: &str, value: impl Into<String>) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag_spec(kind: ResourceType, pairs: &[(String, String)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in pairs {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The cluster's tags as EC2 holds them, when they are stratus's and valid.
fn parse_tags(tags: &[Tag]) -> Option<Tags> {
    Some(Tags {
        owner: Owner::parse(tag_value(tags, TAG_OWNER)?).ok()?,
        cluster: ClusterName::parse(tag_value(tags, TAG_CLUSTER)?).ok()?,
        role: tag_value(tags, TAG_ROLE).and_then(Role::parse),
        profile: tag_value(tags, TAG_PROFILE).unwrap_or_default().to_owned(),
        request: RequestId::from_stored(tag_value(tags, TAG_REQUEST)?.to_owned()),
        store: tag_value(tags, TAG_STORE).map(|s| StoreId::from_stored(s.to_owned())),
    })
}

/// Whether a per-cluster resource with these tags is this cluster's: it carries the cluster's
/// store id, or (launched before stores had ids) no store id and the cluster's own request.
fn belongs_to(tags: Option<&Tags>, cluster: &ClusterRef) -> bool {
    tags.is_some_and(|t| {
        t.owner == cluster.owner
            && t.cluster == cluster.name
            && match &t.store {
                Some(s) => *s == cluster.store,
                None => t.request == cluster.request,
            }
    })
}

/// The tag filters of a selector.
fn selector_filters(selector: &Selector) -> Vec<Filter> {
    let mut filters = Vec::new();
    if let Some(o) = &selector.owner {
        filters.push(filter(&format!("tag:{TAG_OWNER}"), o.as_str()));
    }
    if let Some(c) = &selector.cluster {
        filters.push(filter(&format!("tag:{TAG_CLUSTER}"), c.as_str()));
    }
    if let Some(r) = &selector.request {
        filters.push(filter(&format!("tag:{TAG_REQUEST}"), r.as_str()));
    }
    if let Some(s) = &selector.store {
        filters.push(filter(&format!("tag:{TAG_STORE}"), s.as_str()));
    }
    if filters.is_empty() {
        filters.push(filter("tag-key", TAG_CLUSTER));
    }
    filters
}

fn owned_pairs(tags: &Tags) -> Vec<(String, String)> {
    tags.pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// The node's ClientToken: as given when EC2 accepts it, else a stable digest of it (the same
/// node always gets the same token, so a retried call stays idempotent).
pub fn client_token(token: &str) -> String {
    let ok = |c: char| c.is_ascii_graphic();
    if token.len() <= CLIENT_TOKEN_MAX && !token.is_empty() && token.chars().all(ok) {
        return token.to_owned();
    }
    // FNV-1a, twice with different seeds: stable across processes and releases.
    let fnv = |seed: u64| {
        token
            .bytes()
            .fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    };
    let prefix: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(30)
        .collect();
    format!(
        "{prefix}-{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

fn state_of(name: &InstanceStateName) -> InstanceState {
    match name {
        InstanceStateName::Pending => InstanceState::Pending,
        InstanceStateName::Running => InstanceState::Running,
        InstanceStateName::Stopping => InstanceState::Stopping,
        InstanceStateName::Stopped => InstanceState::Stopped,
        InstanceStateName::ShuttingDown => InstanceState::ShuttingDown,
        InstanceStateName::Terminated => InstanceState::Terminated,
        _ => InstanceState::Unknown,
    }
}

impl Ec2Provider {
    /// Builds the client from the site's `[ec2]` table and checks that credentials are at hand.
    pub async fn new(config: &Ec2Config, trust: &Trust) -> Result<Self, ProviderError> {
        for cidr in config.client_cidrs.iter().chain(&config.ui_cidrs) {
            crate::config::parse_cidr(cidr).map_err(ProviderError::InvalidRequest)?;
        }
        let built = client::build(config, trust).await?;
        let provider = Self {
            client: built.client,
            ssm: built.ssm,
            quotas: client::build_quotas(config, trust)?,
            credentials: built.credentials,
            ctx: built.context,
            config: config.clone(),
            groups: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            root_devices: Mutex::new(HashMap::new()),
            console_latest: AtomicBool::new(true),
            network: tokio::sync::OnceCell::new(),
            dns_checked: tokio::sync::OnceCell::new(),
            shortages: Mutex::new(capacity::Shortages::default()),
            polled: tokio::sync::Mutex::new(None),
            waiting: Mutex::new(HashMap::new()),
            console_reads: rate::Bucket::new(CONSOLE_READS.0, CONSOLE_READS.1),
        };
        provider.check_access().await?;
        Ok(provider)
    }

    /// One cheap call the service account needs anyway, so that credentials EC2 rejects (or an
    /// endpoint that does not answer) stop a command before it records or creates anything.
    async fn check_access(&self) -> Result<(), ProviderError> {
        self.client
            .describe_instances()
            .filters(filter("tag-key", TAG_CLUSTER))
            .max_results(5)
            .send()
            .await
            .map_err(|e| self.err("DescribeInstances", e))?;
        Ok(())
    }

    fn err<E>(
        &self,
        op: &str,
        e: aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
    ) -> ProviderError
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        error::classify(op, &self.ctx, e)
    }

    /// The cluster's security group, if it exists (found by name and tags, so a group of the
    /// same name that is not stratus's is never touched). A group of this name that belongs to
    /// another state directory is refused: taking it over would let this one delete it under the
    /// other's live cluster.
    async fn find_group(
        &self,
        cluster: &ClusterRef,
        vpc: Option<&str>,
    ) -> Result<Option<String>, ProviderError> {
        let (owner, cname) = (&cluster.owner, &cluster.name);
        let name = group_name(owner, cname, cluster.naming);
        let mut filters = vec![
            filter("group-name", &name),
            filter(&format!("tag:{TAG_OWNER}"), owner.as_str()),
            filter(&format!("tag:{TAG_CLUSTER}"), cname.as_str()),
        ];
        if let Some(v) = vpc {
            filters.push(filter("vpc-id", v));
        }
        let mut pages = self
            .client
            .describe_security_groups()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("DescribeSecurityGroups", e))?;
            let found = page
                .security_groups()
                .iter()
                .find(|g| g.group_name() == Some(name.as_str()));
            if let Some(g) = found
                && !belongs_to(parse_tags(g.tags()).as_ref(), cluster)
            {
                return Err(foreign(&name, cluster));
            }
            if let Some(id) = found.and_then(|g| g.group_id()) {
                self.groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), id.to_owned());
                return Ok(Some(id.to_owned()));
            }
        }
        Ok(None)
    }

    /// The group id for launching into: from `prepare`, else looked up.
    async fn group_id(&self, cluster: &ClusterRef) -> Result<String, ProviderError> {
        let name = group_name(&cluster.owner, &cluster.name, cluster.naming);
        if let Some(id) = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
        {
            return Ok(id.clone());
        }
        let vpc = self.network().await?.vpc.clone();
        self.find_group(cluster, vpc.as_deref())
            .await?
            .ok_or_else(|| {
                ProviderError::Other(format!(
                    "the security group {name} of cluster {} does not exist (was the cluster deleted?)",
                    cluster.name
                ))
            })
    }

    async fn ensure_group(
        &self,
        cluster: &ClusterRef,
        vpc: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<String, ProviderError> {
        let name = group_name(&cluster.owner, &cluster.name, cluster.naming);
        if let Some(id) = self.find_group(cluster, vpc).await? {
            // A leftover of an earlier cluster of this name: it now belongs to this request.
            self.retag(&id, tags).await?;
            return Ok(id);
        }
        let created = self
            .client
            .create_security_group()
            .group_name(&name)
            .description(format!(
                "stratus cluster {} of {}",
                cluster.name, cluster.owner
            ))
            .set_vpc_id(vpc.map(str::to_owned))
            .tag_specifications(tag_spec(ResourceType::SecurityGroup, tags))
            .send()
            .await;
        match created {
            Ok(out) => {
                let id = out
                    .group_id()
                    .map(str::to_owned)
                    .ok_or_else(|| ProviderError::Api {
                        op: "CreateSecurityGroup".into(),
                        message: "the answer has no group id".into(),
                    })?;
                tracing::info!(group = %name, id = %id, "created security group");
                self.groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, id.clone());
                Ok(id)
            }
            Err(e) if error::code(&e) == Some("InvalidGroup.Duplicate") => {
                // Created meanwhile by another call, or a group of that name that is not ours.
                match self.find_group(cluster, vpc).await? {
                    Some(id) => Ok(id),
                    None => Err(ProviderError::InvalidRequest(format!(
                        "a security group named {name} exists but is not stratus's group for cluster {}; delete or rename it",
                        cluster.name
                    ))),
                }
            }
            Err(e) => Err(self.err("CreateSecurityGroup", e)),
        }
    }

    async fn retag(&self, id: &str, tags: &[(String, String)]) -> Result<(), ProviderError> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        self.client
            .create_tags()
            .resources(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| self.err("CreateTags", e))?;
        Ok(())
    }

    /// Makes the group's ingress rules exactly what the site and profile ask for.
    async fn sync_rules(
        &self,
        group_id: &str,
        access: &SshAccess,
        tags: &[(String, String)],
    ) -> Result<(), ProviderError> {
        let out = self
            .client
            .describe_security_groups()
            .group_ids(group_id)
            .send()
            .await
            .map_err(|e| self.err("DescribeSecurityGroups", e))?;
        let existing = out
            .security_groups()
            .iter()
            .find(|g| g.group_id() == Some(group_id))
            .map(|g| rules::from_permissions(g.ip_permissions()))
            .unwrap_or_default();
        let desired = rules::desired(
            group_id,
            access.port,
            &access.web_ports,
            &self.config.client_cidrs,
            &self.config.ui_cidrs,
        );
        let (add, remove) = rules::diff(&desired, &existing);
        if !remove.is_empty() {
            tracing::info!(group = %group_id, rules = remove.len(), "revoking rules the config no longer asks for");
            self.client
                .revoke_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(rules::permissions(&remove, access.port)))
                .send()
                .await
                .map_err(|e| self.err("RevokeSecurityGroupIngress", e))?;
        }
        if !add.is_empty() {
            let r = self
                .client
                .authorize_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(rules::permissions(&add, access.port)))
                .tag_specifications(tag_spec(ResourceType::SecurityGroupRule, tags))
                .send()
                .await;
            match r {
                Ok(_) => {}
                // Added meanwhile by a concurrent prepare: the rule is there, which is the point.
                Err(e) if error::code(&e) == Some("InvalidPermission.Duplicate") => {}
                Err(e) => return Err(self.err("AuthorizeSecurityGroupIngress", e)),
            }
        }
        if self.config.client_cidrs.is_empty() {
            tracing::warn!(
                "[ec2] client_cidrs is empty: no network outside the cluster may reach its SSH port"
            );
        }
        Ok(())
    }

    /// The cluster's key pair, imported from the cluster key; a stale one of an earlier cluster of
    /// the same name is replaced.
    async fn ensure_key_pair(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        tags: &[(String, String)],
    ) -> Result<(), ProviderError> {
        let name = key_name(&cluster.owner, &cluster.name, cluster.naming);
        for attempt in 0..2 {
            let out = self
                .client
                .describe_key_pairs()
                .filters(filter("key-name", &name))
                .include_public_key(true)
                .send()
                .await
                .map_err(|e| self.err("DescribeKeyPairs", e))?;
            if let Some(kp) = out
                .key_pairs()
                .iter()
                .find(|k| k.key_name() == Some(name.as_str()))
            {
                let theirs = parse_tags(kp.tags());
                let stratus = theirs
                    .as_ref()
                    .is_some_and(|t| t.owner == cluster.owner && t.cluster == cluster.name);
                if !stratus {
                    return Err(ProviderError::InvalidRequest(format!(
                        "an EC2 key pair named {name} exists but is not stratus's key pair for cluster {}; delete or rename it",
                        cluster.name
                    )));
                }
                if !belongs_to(theirs.as_ref(), cluster) {
                    return Err(foreign(&name, cluster));
                }
                let same_key = match kp.public_key() {
                    Some(k) => same_public_key(k, &access.public_key),
                    None => theirs.is_some_and(|t| t.request == cluster.request),
                };
                if same_key {
                    return Ok(());
                }
                tracing::info!(key_pair = %name, "replacing the key pair of an earlier cluster of this name");
                self.client
                    .delete_key_pair()
                    .key_name(&name)
                    .send()
                    .await
                    .map_err(|e| self.err("DeleteKeyPair", e))?;
            }
            let imported = self
                .client
                .import_key_pair()
                .key_name(&name)
                .public_key_material(Blob::new(access.public_key.trim().as_bytes()))
                .tag_specifications(tag_spec(ResourceType::KeyPair, tags))
                .send()
                .await;
            match imported {
                Ok(_) => {
                    tracing::info!(key_pair = %name, "imported key pair");
                    return Ok(());
                }
                Err(e) if error::code(&e) == Some("InvalidKeyPair.Duplicate") && attempt == 0 => {
                    continue;
                }
                Err(e) => return Err(self.err("ImportKeyPair", e)),
            }
        }
        Err(ProviderError::Other(format!(
            "the key pair {name} keeps being created by someone else"
        )))
    }

    /// One RunInstances of a batch, of one type in one subnet: MinCount is what the batch
    /// still needs at least, MaxCount what it still wants. EC2 launches between the two; moto
    /// launches MinCount.
    async fn run_instances(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        node: &BatchSpec,
        call: &capacity::Call<'_>,
    ) -> Result<Vec<Instance>, ProviderError> {
        let count = i32::try_from(call.count).map_err(|_| {
            ProviderError::InvalidRequest(format!("{} nodes is too many", call.count))
        })?;
        let min_count = i32::try_from(call.min_count.clamp(1, call.count)).unwrap_or(count);
        let group = self.group_id(cluster).await?;
        let image = self.resolve_image(&node.image).await?;
        let user_data = base64::engine::general_purpose::STANDARD
            .encode(crate::templates::gzip(node.user_data.as_bytes()));
        let mut tags = owned_pairs(&node.tags);
        tags.push((TAG_NAME.to_owned(), node.name.clone()));
        tags.push((TAG_FIRST_INDEX.to_owned(), call.first_index.to_string()));
        tags.push((TAG_SSH_PORT.to_owned(), access.port.to_string()));
        let mut req = self
            .client
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::from(call.placement.instance_type.as_str()))
            .min_count(min_count)
            .max_count(count)
            .key_name(key_name(&cluster.owner, &cluster.name, cluster.naming))
            .user_data(user_data)
            .client_token(client_token(call.token))
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            // IMDSv2 only: a process tricked into fetching a URL cannot read the metadata.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(HttpTokensState::Required)
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, &tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &tags))
            .tag_specifications(tag_spec(ResourceType::NetworkInterface, &tags));
        let public = matches!(
            self.config.address,
            AddressKind::PublicIp | AddressKind::PublicDns
        );
        req = placed(req, call.placement.subnet.as_ref(), group, public);
        if node.spot {
            req = on_spot(req, &tags);
        }
        let (device, image_gb) = self.root_volume(&image, node.volume_gb.is_some()).await?;
        if let Some(gb) = node.volume_gb {
            req = req.block_device_mappings(root_mapping(&image, device, gb)?);
        }
        // What the nodes will cost besides their type: the root volume, and a public address if
        // the network gives them one.
        let volume_gb = node.volume_gb.or(image_gb);
        let public_ipv4 = self
            .public_ipv4(call.placement.subnet.as_ref(), public)
            .await?;
        let out = req.send().await.map_err(|e| self.err("RunInstances", e))?;
        let instances: Vec<Instance> = out
            .instances()
            .iter()
            .filter_map(|i| self.convert(i))
            .map(|i| Instance {
                ssh_port: access.port,
                volume_gb,
                public_ipv4: Some(public_ipv4),
                ..i
            })
            .collect();
        if instances.is_empty() {
            return Err(ProviderError::Api {
                op: "RunInstances".into(),
                message: "the answer lists no instance".into(),
            });
        }
        tracing::info!(nodes = %node.name, instances = instances.len(), instance_type = %call.placement.instance_type, subnet = ?call.placement.subnet, token = %call.token, "RunInstances");
        Ok(instances)
    }

    /// Whether nodes placed in `subnet` get a public address: asked for, a subnet that maps
    /// them, or the default VPC's.
    async fn public_ipv4(
        &self,
        subnet: Option<&String>,
        asked: bool,
    ) -> Result<bool, ProviderError> {
        Ok(match subnet {
            Some(subnet) => {
                asked
                    || self
                        .network()
                        .await?
                        .subnets
                        .iter()
                        .any(|s| s.id == *subnet && s.public_ips)
            }
            None => true,
        })
    }

    /// Converts an SDK instance; `None` for one without an id (never seen, but not unwrapped).
    fn convert(&self, i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
        let id = i.instance_id()?.to_owned();
        let tags = parse_tags(i.tags());
        let role = tags.as_ref().and_then(|t| t.role);
        let index = match (&tags, role) {
            (_, Some(Role::Master)) => Some(0),
            (Some(t), Some(Role::Worker)) => {
                match tag_value(i.tags(), TAG_FIRST_INDEX).and_then(|n| n.parse::<u32>().ok()) {
                    Some(first) => i
                        .ami_launch_index()
                        .and_then(|k| u32::try_from(k).ok())
                        .map(|k| first + k),
                    // One node per call, named after it (before batches).
                    None => tag_value(i.tags(), TAG_NAME)
                        .and_then(|n| n.strip_prefix(&format!("{}-worker-", t.cluster)))
                        .and_then(|n| n.parse().ok()),
                }
            }
            _ => None,
        };
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(state_of)
            .unwrap_or(InstanceState::Unknown);
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let address = match self.config.address {
            AddressKind::PublicIp => non_empty(i.public_ip_address()),
            AddressKind::PrivateIp => non_empty(i.private_ip_address()),
            AddressKind::PublicDns => non_empty(i.public_dns_name()),
        };
        let reason = if state == InstanceState::Running {
            None
        } else {
            non_empty(i.state_reason().and_then(|r| r.message()))
                .or_else(|| non_empty(i.state_transition_reason()))
        };
        Some(Instance {
            id,
            role,
            index,
            state,
            reason,
            address,
            private_address: non_empty(i.private_ip_address()),
            ssh_port: tag_value(i.tags(), TAG_SSH_PORT)
                .and_then(|p| p.parse().ok())
                .unwrap_or(22),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            image: i.image_id().unwrap_or_default().to_owned(),
            spot: i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
            tags,
            host_key: None,
            launched_at: i.launch_time().and_then(|t| t.to_millis().ok()),
            volume_gb: None,
            // Known once EC2 has assigned one (not yet while pending).
            public_ipv4: i
                .public_ip_address()
                .filter(|a| !a.is_empty())
                .map(|_| true),
        })
    }

    /// Cancels the spot requests behind these instances, so none launches a replacement.
    async fn cancel_spot_requests(&self, ids: &[String]) -> Result<(), ProviderError> {
        let mut requests = Vec::new();
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut pages = self
                .client
                .describe_spot_instance_requests()
                .filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.err("DescribeSpotInstanceRequests", e))?;
                for r in page.spot_instance_requests() {
                    let open = matches!(
                        r.state().map(|s| s.as_str()),
                        Some("open") | Some("active") | Some("disabled")
                    );
                    if let (true, Some(id)) = (open, r.spot_instance_request_id()) {
                        requests.push(id.to_owned());
                    }
                }
            }
        }
        for chunk in requests.chunks(IDS_PER_CALL) {
            tracing::info!(requests = ?chunk, "cancelling spot requests");
            self.client
                .cancel_spot_instance_requests()
                .set_spot_instance_request_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| self.err("CancelSpotInstanceRequests", e))?;
        }
        Ok(())
    }

    /// Terminates `ids`, collecting those EC2 does not know (yet) into `not_found`: one unknown
    /// id fails the whole call, so the rest are then asked for one by one.
    async fn terminate_some(
        &self,
        ids: &[String],
        not_found: &mut Vec<String>,
    ) -> Result<(), ProviderError> {
        let r = self
            .client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if error::code(&e) == Some("InvalidInstanceID.NotFound") && ids.len() > 1 => {
                for id in ids {
                    Box::pin(self.terminate_some(std::slice::from_ref(id), not_found)).await?;
                }
                Ok(())
            }
            Err(e) if error::code(&e) == Some("InvalidInstanceID.NotFound") => {
                // Not "already gone": a new instance is unknown to the API for a while.
                tracing::debug!(instance = ?ids, "not known to EC2 (yet)");
                not_found.extend(ids.iter().cloned());
                Ok(())
            }
            Err(e) => Err(self.err("TerminateInstances", e)),
        }
    }

    async fn delete_group(&self, id: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        let mut delay = Duration::from_secs(2);
        loop {
            let r = self
                .client
                .delete_security_group()
                .group_id(id)
                .send()
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if error::code(&e) == Some("InvalidGroup.NotFound") => return Ok(()),
                // Instances still shutting down hold the group.
                Err(e)
                    if error::code(&e) == Some("DependencyViolation")
                        && Instant::now() + delay < deadline =>
                {
                    tracing::debug!(group = %id, "still in use; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                Err(e) => return Err(self.err("DeleteSecurityGroup", e)),
            }
        }
    }

    /// Every stratus security group and key pair matching the selector's tags, with the
    /// cluster each belongs to: what `reconcile` and `delete-cluster` look at.
    pub async fn resources(
        &self,
        selector: &Selector,
    ) -> Result<Vec<ClusterResource>, ProviderError> {
        let mut filters = selector_filters(selector);
        if !filters.iter().any(|f| f.name() == Some("tag-key")) {
            filters.push(filter("tag-key", TAG_CLUSTER));
        }
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_security_groups()
            .set_filters(Some(filters.clone()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("DescribeSecurityGroups", e))?;
            for g in page.security_groups() {
                if let (Some(id), Some(tags)) = (g.group_id(), parse_tags(g.tags())) {
                    out.push(ClusterResource {
                        kind: ResourceKind::SecurityGroup,
                        id: id.to_owned(),
                        name: g.group_name().unwrap_or_default().to_owned(),
                        tags,
                    });
                }
            }
        }
        let keys = self
            .client
            .describe_key_pairs()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| self.err("DescribeKeyPairs", e))?;
        for k in keys.key_pairs() {
            if let (Some(name), Some(tags)) = (k.key_name(), parse_tags(k.tags())) {
                out.push(ClusterResource {
                    kind: ResourceKind::KeyPair,
                    id: k.key_pair_id().unwrap_or(name).to_owned(),
                    name: name.to_owned(),
                    tags,
                });
            }
        }
        Ok(out)
    }
}

/// The refusal to touch a per-cluster resource of another state directory.
fn foreign(name: &str, cluster: &ClusterRef) -> ProviderError {
    ProviderError::InvalidRequest(format!(
        "{name} belongs to cluster {} of another stratus state directory in this AWS account (another machine's, or another install's); stratus never touches it: terminate that cluster there, or choose another name",
        cluster.name
    ))
}

/// A per-cluster resource other than an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterResource {
    pub kind: ResourceKind,
    pub id: String,
    pub name: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    SecurityGroup,
    KeyPair,
}

/// Whether two OpenSSH public key lines hold the same key (comments aside).
fn same_public_key(a: &str, b: &str) -> bool {
    let key = |s: &str| {
        let mut f = s.split_whitespace();
        (f.next().map(str::to_owned), f.next().map(str::to_owned))
    };
    let (ka, kb) = (key(a), key(b));
    ka.1.is_some() && ka == kb
}

impl Ec2Provider {
    /// The instances DescribeInstances lists under these filters that match the selector.
    async fn describe_filtered(
        &self,
        filters: Vec<Filter>,
        selector: &Selector,
    ) -> Result<Vec<Instance>, ProviderError> {
        // Always paginate: EC2 (and moto, at 100 reservations) splits long answers.
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("DescribeInstances", e))?;
            for r in page.reservations() {
                for i in r.instances() {
                    match self.convert(i) {
                        Some(inst) if inst.tags.as_ref().is_none_or(|t| selector.matches(t)) => {
                            out.push(inst)
                        }
                        Some(_) => {}
                        None => {
                            tracing::warn!("DescribeInstances listed an instance without an id")
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Provider for Ec2Provider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ec2
    }

    fn consistency_grace(&self) -> Duration {
        CONSISTENCY_GRACE
    }

    async fn prepare(&self, cluster: &ClusterRef, access: &SshAccess) -> Result<(), ProviderError> {
        for cidr in self.config.client_cidrs.iter().chain(&self.config.ui_cidrs) {
            if cidr.ends_with("/0") && !self.config.allow_world {
                return Err(ProviderError::InvalidRequest(format!(
                    "[ec2] {cidr} opens the cluster to the whole internet; set allow_world = true if that is really meant"
                )));
            }
        }
        let tags = owned_pairs(&cluster.tags());
        let vpc = self.network().await?.vpc.clone();
        self.check_dns().await?;
        let group = self.ensure_group(cluster, vpc.as_deref(), &tags).await?;
        self.sync_rules(&group, access, &tags).await?;
        self.ensure_key_pair(cluster, access, &tags).await?;
        Ok(())
    }

    async fn launch(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        batch: &BatchSpec,
        journal: &dyn Journal,
    ) -> Launched {
        self.launch_batch(cluster, access, batch, journal).await
    }

    /// A wait's describe: one DescribeInstances of the instances of the clusters waiting (those
    /// whose waits polled lately) answers every wait of this process that polls within
    /// `SHARED_POLL` of it; waits queue behind the one in flight rather than ask again. A
    /// runner, which serves one launch, so asks for its own cluster's instances, not for the
    /// store's (a class's 840 instances are megabytes of XML per describe, forty runners each
    /// asking every few seconds); the class service asks for the clusters of every launch
    /// waiting at once, in one call.
    async fn poll(&self, selector: &Selector) -> Result<Vec<Instance>, ProviderError> {
        // Known as waiting before the queue, so the describe that the next in line makes asks
        // for every cluster that queued behind the one in flight.
        if let Some(c) = &selector.cluster {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            waiting.retain(|_, at| now.duration_since(*at) < WAITING_LATELY);
            waiting.insert(c.clone(), now);
        }
        let mut polled = self.polled.lock().await;
        let instances = match polled.as_ref().filter(|p| p.answers(selector)) {
            Some(p) => p.instances.clone(),
            None => {
                // The waiting clusters, this one among them however long it queued (a describe
                // in flight can take minutes, past `WAITING_LATELY`). EC2 takes at most 200
                // values per filter, and the store's filter is one more.
                let clusters: Option<std::collections::BTreeSet<ClusterName>> =
                    selector.cluster.as_ref().and_then(|own| {
                        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                        waiting.insert(own.clone(), std::time::Instant::now());
                        (waiting.len() < IDS_PER_CALL).then(|| waiting.keys().cloned().collect())
                    });
                let all = Selector {
                    store: selector.store.clone(),
                    ..Default::default()
                };
                let mut filters = selector_filters(&all);
                if let Some(names) = &clusters {
                    filters.push(
                        Filter::builder()
                            .name(format!("tag:{TAG_CLUSTER}"))
                            .set_values(Some(names.iter().map(|c| c.to_string()).collect()))
                            .build(),
                    );
                }
                let instances = std::sync::Arc::new(self.describe_filtered(filters, &all).await?);
                *polled = Some(Polled {
                    at: std::time::Instant::now(),
                    store: selector.store.clone(),
                    clusters,
                    instances: instances.clone(),
                });
                instances
            }
        };
        drop(polled);
        Ok(instances
            .iter()
            .filter(|i| i.tags.as_ref().is_some_and(|t| selector.matches(t)))
            .cloned()
            .collect())
    }

    async fn describe(&self, selector: &Selector) -> Result<Vec<Instance>, ProviderError> {
        self.describe_filtered(selector_filters(selector), selector)
            .await
    }

    async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        // A filter, not InstanceIds: an id EC2 does not know yet is left out, not an error.
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut pages = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.err("DescribeInstances", e))?;
                for r in page.reservations() {
                    out.extend(r.instances().iter().filter_map(|i| self.convert(i)));
                }
            }
        }
        Ok(out)
    }

    async fn terminate(&self, ids: &[String]) -> Result<TerminateReport, ProviderError> {
        let mut report = TerminateReport::default();
        if ids.is_empty() {
            return Ok(report);
        }
        // Best effort: a spot request that cannot be cancelled (throttling, a missing
        // permission) must not keep its instances running. One-time requests close with their
        // instance anyway.
        if let Err(e) = self.cancel_spot_requests(ids).await {
            tracing::warn!("cannot cancel the spot requests of {ids:?}: {e}");
        }
        for chunk in ids.chunks(IDS_PER_CALL) {
            tracing::info!(instances = ?chunk, "TerminateInstances");
            self.terminate_some(chunk, &mut report.not_found).await?;
        }
        Ok(report)
    }

    async fn tag(&self, ids: &[String], pairs: &[(String, String)]) -> Result<(), ProviderError> {
        let tags: Vec<Tag> = pairs
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        for chunk in ids.chunks(IDS_PER_CALL) {
            self.client
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(|e| self.err("CreateTags", e))?;
        }
        Ok(())
    }

    async fn cluster_resources(&self, selector: &Selector) -> Result<Vec<Tags>, ProviderError> {
        Ok(self
            .resources(selector)
            .await?
            .into_iter()
            .map(|r| r.tags)
            .collect())
    }

    async fn release(&self, cluster: &ClusterRef) -> Result<(), ProviderError> {
        // By the record's scheme, then the other: a cluster found by its tags alone (reconcile)
        // may be of either, and only what its tags mark as its own is ever deleted.
        for naming in [cluster.naming, other_naming(cluster.naming)] {
            self.release_named(cluster, naming).await?;
        }
        Ok(())
    }

    fn host_keys_from_console(&self) -> bool {
        self.config.host_keys == HostKeySource::Console
    }

    async fn console_host_keys(
        &self,
        id: &str,
    ) -> Result<Option<Vec<russh::keys::PublicKey>>, ProviderError> {
        self.console_reads.take().await;
        let latest = self.console_latest.load(Ordering::Relaxed);
        let mut call = self.client.get_console_output().instance_id(id);
        if latest {
            call = call.latest(true);
        }
        let answer = match call.send().await {
            Ok(a) => a,
            Err(e) if latest => {
                // Only Nitro instances have the latest output; other types (Xen: t2, m4) refuse
                // `Latest=true`, with codes EC2 does not document. Whatever the error, ask for
                // the buffered output (EC2 updates it after boot: it still shows cloud-init's
                // keys, only later), and if that answers, stop asking for the latest.
                tracing::debug!(
                    "GetConsoleOutput with Latest=true failed ({}); asking without it",
                    error::code(&e).unwrap_or("no code")
                );
                self.console_reads.take().await;
                let answer = self
                    .client
                    .get_console_output()
                    .instance_id(id)
                    .send()
                    .await
                    .map_err(|e| self.err("GetConsoleOutput", e))?;
                self.console_latest.store(false, Ordering::Relaxed);
                answer
            }
            Err(e) => return Err(self.err("GetConsoleOutput", e)),
        };
        let Some(b64) = answer.output().filter(|o| !o.trim().is_empty()) else {
            return Ok(None);
        };
        let b64: String = b64.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ProviderError::Api {
                op: "GetConsoleOutput".into(),
                message: format!("the console output of {id} is not base64: {e}"),
            })?;
        Ok(console::host_keys(&String::from_utf8_lossy(&bytes)))
    }
}

type RunRequest = aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;

/// Puts the nodes in `subnet` (else the default VPC's) with the cluster's group. A subnet of the
/// site's own VPC may not hand out public addresses by default; stratus reaches nodes at theirs,
/// so it asks for one (group and subnet then belong to the network interface).
fn placed(req: RunRequest, subnet: Option<&String>, group: String, public: bool) -> RunRequest {
    match subnet {
        Some(subnet) if public => req.network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(subnet)
                .groups(group)
                .associate_public_ip_address(true)
                .delete_on_termination(true)
                .build(),
        ),
        subnet => req.security_group_ids(group).set_subnet_id(subnet.cloned()),
    }
}

/// One-time spot capacity, terminated on interruption, its request tagged like the nodes.
fn on_spot(req: RunRequest, tags: &[(String, String)]) -> RunRequest {
    req.instance_market_options(
        InstanceMarketOptionsRequest::builder()
            .market_type(MarketType::Spot)
            .spot_options(
                SpotMarketOptions::builder()
                    .spot_instance_type(SpotInstanceType::OneTime)
                    .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                    .build(),
            )
            .build(),
    )
    .tag_specifications(tag_spec(ResourceType::SpotInstancesRequest, tags))
}

/// The root volume of `gb` GB (gp3), on the image's own root device.
fn root_mapping(
    image: &str,
    device: Option<String>,
    gb: u32,
) -> Result<BlockDeviceMapping, ProviderError> {
    let device = device.ok_or_else(|| {
        ProviderError::InvalidRequest(format!(
            "image {image} names no root device, so its root volume cannot be sized; leave volume_gb out of the profile"
        ))
    })?;
    let size = i32::try_from(gb)
        .map_err(|_| ProviderError::InvalidRequest(format!("volume_gb = {gb} is too large")))?;
    Ok(BlockDeviceMapping::builder()
        .device_name(device)
        .ebs(
            EbsBlockDevice::builder()
                .volume_size(size)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .build(),
        )
        .build())
}

impl Ec2Provider {
    /// `release` of the cluster's resources named as `naming` names them.
    async fn release_named(
        &self,
        cluster: &ClusterRef,
        naming: Naming,
    ) -> Result<(), ProviderError> {
        let name = key_name(&cluster.owner, &cluster.name, naming);
        let owner_filter = filter(&format!("tag:{TAG_OWNER}"), cluster.owner.as_str());
        let cluster_filter = filter(&format!("tag:{TAG_CLUSTER}"), cluster.name.as_str());
        let keys = self
            .client
            .describe_key_pairs()
            .filters(filter("key-name", &name))
            .filters(owner_filter.clone())
            .filters(cluster_filter.clone())
            .send()
            .await
            .map_err(|e| self.err("DescribeKeyPairs", e))?;
        for k in keys.key_pairs() {
            if k.key_name() == Some(name.as_str())
                && belongs_to(parse_tags(k.tags()).as_ref(), cluster)
            {
                // By name: moto ignores KeyPairId here.
                self.client
                    .delete_key_pair()
                    .key_name(&name)
                    .send()
                    .await
                    .map_err(|e| self.err("DeleteKeyPair", e))?;
                tracing::info!(key_pair = %name, "deleted key pair");
            }
        }
        let gname = group_name(&cluster.owner, &cluster.name, naming);
        let mut ids = Vec::new();
        let mut pages = self
            .client
            .describe_security_groups()
            .filters(filter("group-name", &gname))
            .filters(owner_filter)
            .filters(cluster_filter)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("DescribeSecurityGroups", e))?;
            ids.extend(
                page.security_groups()
                    .iter()
                    .filter(|g| g.group_name() == Some(gname.as_str()))
                    .filter(|g| belongs_to(parse_tags(g.tags()).as_ref(), cluster))
                    .filter_map(|g| g.group_id().map(str::to_owned)),
            );
        }
        for id in ids {
            self.delete_group(&id).await?;
            tracing::info!(group = %gname, id = %id, "deleted security group");
        }
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&gname);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_poll_answers_only_the_clusters_it_asked_for_while_fresh() {
        let name = |n: &str| ClusterName::parse(n).unwrap();
        let store = Some(StoreId::from_stored("s1".into()));
        let polled = Polled {
            at: std::time::Instant::now(),
            store: store.clone(),
            clusters: Some([name("a"), name("b")].into_iter().collect()),
            instances: Default::default(),
        };
        let wait = |c: Option<&str>, store: Option<StoreId>| Selector {
            cluster: c.map(name),
            store,
            ..Default::default()
        };
        assert!(polled.answers(&wait(Some("a"), store.clone())));
        assert!(polled.answers(&wait(Some("b"), store.clone())));
        // A cluster that began to wait after it was asked: a describe of its own.
        assert!(!polled.answers(&wait(Some("c"), store.clone())));
        // Nothing of another store, nor a wait for every cluster.
        assert!(!polled.answers(&wait(Some("a"), Some(StoreId::from_stored("s2".into())))));
        assert!(!polled.answers(&wait(None, store.clone())));
        // A describe of the whole store answers every wait of the store.
        let whole = Polled {
            clusters: None,
            ..polled
        };
        assert!(whole.answers(&wait(Some("c"), store.clone())));
        assert!(whole.answers(&wait(None, store.clone())));
        // Not once it is older than a round.
        let old = Polled {
            at: std::time::Instant::now() - SHARED_POLL,
            ..whole
        };
        assert!(!old.answers(&wait(Some("c"), store)));
    }

    #[test]
    fn client_tokens_fit_and_are_stable() {
        assert_eq!(
            client_token("req-0123456789abcdef-w3"),
            "req-0123456789abcdef-w3"
        );
        let long = format!("req-0123456789abcdef-w3{}", "-r1".repeat(30));
        let t = client_token(&long);
        assert!(t.len() <= CLIENT_TOKEN_MAX, "{t}");
        assert_eq!(t, client_token(&long));
        assert_ne!(t, client_token(&format!("{long}-r2")));
    }

    #[test]
    fn tags_round_trip() {
        let t = Tags {
            owner: Owner::parse("alice").unwrap(),
            cluster: ClusterName::parse("demo").unwrap(),
            role: Some(Role::Worker),
            profile: "hadoop".into(),
            request: RequestId::from_stored("req-1".into()),
            store: Some(StoreId::from_stored("st-1".into())),
        };
        let sdk: Vec<Tag> = owned_pairs(&t)
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        assert_eq!(parse_tags(&sdk), Some(t));
        assert_eq!(parse_tags(&sdk[1..]), None);
    }

    #[test]
    fn public_keys_compare_without_comments() {
        assert!(same_public_key("ssh-ed25519 AAAA x@y", "ssh-ed25519 AAAA"));
        assert!(!same_public_key("ssh-ed25519 AAAA", "ssh-ed25519 AAAB"));
        assert!(!same_public_key("", ""));
    }
}
