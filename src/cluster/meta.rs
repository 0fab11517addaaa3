//! What one request on a cluster is made of, before anything is created: the facts every
//! template shares, the batches to launch (one per role, user-data rendered and checked), the
//! tags, and the conversions between provider instances, store rows and SSH targets.

use std::collections::BTreeMap;

use russh::keys::PrivateKey;

use crate::cluster::clock::Clock;
use crate::cluster::provider::{BatchSpec, ClusterRef, Instance, SshAccess};
use crate::cluster::ssh::{self, Target};
use crate::config::profile::{FileTarget, Profile};
use crate::core::error::Error;
use crate::core::model::{
    ClusterName, Owner, RequestId, Role, StoreId, Tags, node_name, now_millis,
};
use crate::store::{ClusterRow, NodeRow};
use crate::templates::{BootContext, ConfigureContext, NodeFacts, Renderer};

/// The facts every template of a cluster shares, for one request.
pub struct Meta<'a> {
    pub cluster: &'a ClusterName,
    pub owner: &'a Owner,
    pub profile: &'a Profile,
    pub env: &'a BTreeMap<String, String>,
    pub request: &'a RequestId,
    pub store: &'a StoreId,
    /// The launch bakes an image (`BootContext::image_build`).
    pub image_build: bool,
    /// The guard every node's user-data starts with (`cluster::clock`); none for a cluster
    /// launched before it existed, and for an image build (the image must not keep it).
    pub clock: Option<Clock>,
}

/// Nodes of one role to launch in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub role: Role,
    pub first_index: u32,
    pub count: u32,
    /// The fewest the call may launch and still be of use.
    pub min_count: u32,
}

impl<'a> Meta<'a> {
    /// The facts of an existing cluster, for a later request on it.
    pub fn of(cluster: &'a ClusterRow, request: &'a RequestId, store: &'a StoreId) -> Self {
        Self {
            cluster: &cluster.name,
            owner: &cluster.owner,
            profile: &cluster.record.profile,
            env: &cluster.record.env,
            request,
            store,
            image_build: false,
            clock: Clock::of(cluster),
        }
    }

    pub fn boot(&self, role: Role) -> BootContext<'a> {
        BootContext {
            cluster: self.cluster.as_str(),
            owner: self.owner.as_str(),
            role,
            request_id: self.request.as_str(),
            profile: self.profile.into(),
            env: self.env,
            image_build: self.image_build,
        }
    }

    pub fn tags(&self, role: Option<Role>) -> Tags {
        Tags {
            owner: self.owner.clone(),
            cluster: self.cluster.clone(),
            role,
            profile: self.profile.name.clone(),
            request: self.request.clone(),
            store: Some(self.store.clone()),
        }
    }

    /// The launch call for `want`, user-data rendered and checked. `round` numbers the
    /// replacement rounds (0 for the first), so each call gets its own idempotency token, and a
    /// retried call (the same token) can never launch twice.
    pub fn batch(&self, renderer: &Renderer, want: Want, round: u32) -> Result<BatchSpec, Error> {
        let settings = self.profile.role(want.role);
        let mut user_data = renderer.user_data(&settings.user_data, &self.boot(want.role))?;
        if let Some(clock) = self.clock.as_ref().filter(|_| !self.image_build) {
            let part = clock.user_data_part(
                self.cluster.as_str(),
                self.owner.as_str(),
                &self.profile.ssh_user,
            );
            user_data = crate::cluster::clock::user_data(&part, &user_data);
            crate::templates::check_user_data(&settings.user_data, &user_data)?;
        }
        let role = match want.role {
            Role::Master => "m",
            Role::Worker => "w",
        };
        let client_token = match round {
            0 => format!("{}-{role}", self.request),
            n => format!("{}-{role}-r{n}", self.request),
        };
        Ok(BatchSpec {
            role: want.role,
            first_index: want.first_index,
            count: want.count,
            min_count: want.min_count.clamp(1, want.count.max(1)),
            name: match want.role {
                Role::Master => node_name(self.cluster, Role::Master, 0),
                Role::Worker => format!("{}-worker", self.cluster),
            },
            image: settings.image.clone(),
            instance_type: settings.types()[0].to_owned(),
            instance_types: settings.types().into_iter().map(str::to_owned).collect(),
            spot: settings.spot,
            volume_gb: settings.volume_gb,
            user_data,
            tags: self.tags(Some(want.role)),
            client_token,
        })
    }

    /// The context of a pushed file on one node.
    pub fn configure_context(
        &self,
        node: NodeFacts,
        master: NodeFacts,
        workers: Vec<NodeFacts>,
    ) -> ConfigureContext<'a> {
        ConfigureContext {
            boot: self.boot(node.role),
            index: node.index,
            node_name: node.name.clone(),
            node,
            master,
            workers,
        }
    }

    /// Renders every configure-time template once with stand-in addresses, so a missing
    /// variable is reported before anything is launched.
    pub fn check_configure_templates(&self, renderer: &Renderer) -> Result<(), Error> {
        let fake = |role, index, n: u8| NodeFacts {
            name: node_name(self.cluster, role, index),
            role,
            index,
            // TEST-NET-1 (RFC 5737): never a real node.
            address: format!("192.0.2.{n}"),
            private_address: format!("192.0.2.{}", 100 + n),
        };
        for f in &self.profile.files {
            let roles: &[Role] = match f.to {
                FileTarget::Master => &[Role::Master],
                FileTarget::Workers => &[Role::Worker],
                FileTarget::All => &[Role::Master, Role::Worker],
            };
            for &role in roles {
                let index = if role == Role::Master { 0 } else { 1 };
                let ctx = self.configure_context(
                    fake(role, index, 1 + index as u8),
                    fake(Role::Master, 0, 1),
                    vec![fake(Role::Worker, 1, 2)],
                );
                renderer.render(&f.template, &ctx)?;
            }
        }
        Ok(())
    }
}

/// The provider's view of a cluster.
pub fn cluster_ref(c: &ClusterRow, store: &StoreId) -> ClusterRef {
    ClusterRef {
        owner: c.owner.clone(),
        name: c.name.clone(),
        profile: c.profile.clone(),
        request: c.request_id.clone(),
        store: store.clone(),
        naming: c.naming,
    }
}

pub fn access(profile: &Profile, key: &PrivateKey) -> SshAccess {
    SshAccess {
        user: profile.ssh_user.clone(),
        public_key: ssh::public_key_openssh(key.public_key()),
        port: profile.ssh_port,
        web_ports: profile.ports.clone(),
    }
}

/// The row of an instance a launch call (or a describe) returned. `fallback_index` is used
/// when the provider does not say which node of its batch the instance is.
pub fn node_row(
    cluster: &ClusterRow,
    request: &str,
    role: Role,
    fallback_index: u32,
    inst: &Instance,
) -> NodeRow {
    use crate::config::prices::DEFAULT_ROOT_GB;
    let local = crate::core::model::is_local_instance_type(&inst.instance_type);
    NodeRow {
        instance_id: inst.id.clone(),
        cluster_id: cluster.id,
        role: inst.role.unwrap_or(role),
        index: inst.index.unwrap_or(fallback_index),
        request_id: request.to_owned(),
        state: inst.state,
        address: inst.address.clone(),
        private_address: inst.private_address.clone(),
        ssh_port: inst.ssh_port,
        instance_type: inst.instance_type.clone(),
        image: inst.image.clone(),
        spot: inst.spot,
        host_key: inst.host_key.clone(),
        launched_at: inst.launched_at.unwrap_or_else(now_millis),
        ended_at: None,
        // What the provider says, else what the profile asks for; a cloud node without either
        // is estimated with the usual image's root volume and an address.
        volume_gb: inst
            .volume_gb
            .or(cluster
                .record
                .profile
                .role(inst.role.unwrap_or(role))
                .volume_gb)
            .unwrap_or(if local { 0 } else { DEFAULT_ROOT_GB }),
        public_ipv4: inst.public_ipv4.unwrap_or(!local),
    }
}

/// Where and how to reach a node over SSH, its host key pinned when known.
pub fn target(node: &NodeRow, cluster: &ClusterRow) -> Result<Target, Error> {
    target_of(node, &cluster.name, &cluster.record.profile.ssh_user)
}

/// `target`, for a node of cluster `cluster` whose image's login user is `user`.
pub fn target_of(node: &NodeRow, cluster: &ClusterName, user: &str) -> Result<Target, Error> {
    let name = node_name(cluster, node.role, node.index);
    let host = node.address.clone().ok_or_else(|| {
        Error::runtime(format!("{name} ({}) has no address yet", node.instance_id))
    })?;
    let host_key = node
        .host_key
        .as_deref()
        .map(ssh::parse_public_key)
        .transpose()?;
    Ok(Target {
        name,
        host,
        port: node.ssh_port,
        user: user.to_owned(),
        host_key,
    })
}

/// A node as configure-time templates see it.
pub fn facts(cluster: &ClusterName, n: &NodeRow) -> NodeFacts {
    let address = n.address.clone().unwrap_or_default();
    NodeFacts {
        name: node_name(cluster, n.role, n.index),
        role: n.role,
        index: n.index,
        private_address: n.private_address.clone().unwrap_or_else(|| address.clone()),
        address,
    }
}
