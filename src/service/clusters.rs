//! The requests that show clusters: list, the key of one (to its owner alone), and reach (what
//! `login`, `exec`, `push` and `proxy` connect with: the nodes refreshed, every host key pinned).

use std::time::Duration;

use super::protocol::{ClusterView, Launched, Response};
use super::{Asked, Service};
use crate::cluster::console::console_host_key;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::locks::{LaunchLock, Launcher};
use crate::cluster::meta::target_of;
use crate::cluster::provider::Provider;
use crate::cluster::{observe, ssh};
use crate::config::Mode;
use crate::core::error::Error;
use crate::core::model::{
    ClusterName, ClusterState, InputError, Millis, Owner, ProviderKind, now_millis,
};
use crate::store::{ClusterRow, NodeRow};

/// How long an ended cluster stays on the default `list`.
const RECENT: Millis = 24 * 3600 * 1000;

impl Service {
    pub(super) async fn list(
        &self,
        asked: &Asked<'_>,
        name: Option<&str>,
        all: bool,
        owner: Option<&str>,
        everyone: bool,
    ) -> Result<Response, Error> {
        let owners = asked.owners(owner, everyone, "list every user's clusters")?;
        let name = name.map(ClusterName::parse).transpose()?;
        let clusters = shown(
            self.store().list_clusters(owners.as_ref())?,
            name.as_ref(),
            all,
            now_millis(),
        );
        if let Some(n) = &name
            && clusters.is_empty()
        {
            return Err(InputError::UnknownCluster(n.to_string()).into());
        }
        self.refresh_all(&clusters).await;
        let views = clusters
            .iter()
            .map(|c| self.view(c))
            .collect::<Result<_, _>>()?;
        Ok(Response::Clusters(views))
    }

    /// The key goes to the cluster's owner and nobody else, instructors included.
    pub(super) fn key(&self, asked: &Asked<'_>, name: &str) -> Result<Response, Error> {
        let c = self.find_cluster(&asked.caller.owner, name)?;
        self.keyed(&c)
    }

    fn keyed(&self, c: &ClusterRow) -> Result<Response, Error> {
        Ok(Response::Key(Launched {
            cluster: self.view(c)?,
            private_key: ClusterKeys::of(self.state_dir(), c).load_text()?,
        }))
    }

    /// The owner's live cluster, its nodes refreshed from the provider (a node that died since
    /// the last look is no target), every running node's host key pinned, and its key.
    pub(super) async fn reach(
        &self,
        asked: &Asked<'_>,
        name: &str,
        all: bool,
    ) -> Result<Response, Error> {
        let c = self.fresh_cluster(&asked.caller.owner, name).await?;
        self.pin_first_contact(&c, all).await?;
        self.keyed(&c)
    }

    /// Pins the host keys of the running master (every running node, with `all`) where it was
    /// never reached over SSH yet (a cluster launched with `--no-configure`): from the node's console where the provider reads keys there (EC2's
    /// `host_keys = "console"`), else on this first contact. Every later connection insists on
    /// them.
    async fn pin_first_contact(&self, c: &ClusterRow, all: bool) -> Result<(), Error> {
        let unpinned: Vec<NodeRow> = self
            .store()
            .nodes_of(c.id)?
            .into_iter()
            .filter(|n| !n.state.is_gone() && n.host_key.is_none())
            .filter(|n| all || n.role == crate::core::model::Role::Master)
            .collect();
        if unpinned.is_empty() {
            return Ok(());
        }
        let provider = self.provider(c.provider).await?;
        let provider = provider.as_ref();
        let client = ssh::Client::new(
            ClusterKeys::of(self.state_dir(), c).load()?,
            self.ctx().connect_timeout(),
        );
        for n in unpinned {
            let t = target_of(&n, &c.name, &c.record.profile.ssh_user)?;
            let key = if provider.host_keys_from_console() {
                let timeout = Duration::from_secs(c.record.profile.ready_timeout_secs);
                let key = console_host_key(provider, &n.instance_id, &t.name, timeout).await?;
                tracing::info!(node = %t.name, key = %ssh::fingerprint(&key), "pinned the host key its console shows");
                ssh::public_key_openssh(&key)
            } else {
                let session = client.connect(&t).await?;
                let key = ssh::public_key_openssh(&session.host_key);
                session.close().await;
                tracing::info!(node = %t.name, "pinned its host key on first contact");
                key
            };
            self.store().set_host_key(&n.instance_id, &key)?;
        }
        Ok(())
    }

    /// A cluster with its nodes, as its owner or an instructor sees it.
    pub(crate) fn view(&self, c: &ClusterRow) -> Result<ClusterView, Error> {
        let reaped = c.reap_after.filter(|_| c.state.is_live()).map(|after| {
            // The reason says when, in local time.
            format!(
                "the reaper warned this cluster: {}",
                c.reap_reason.as_deref().map_or_else(
                    || format!(
                        "it breaks the policy; it will be terminated after {}",
                        crate::core::model::local_time(after)
                    ),
                    str::to_owned
                )
            )
        });
        let ended = match (&c.ended_by, c.terminated_at) {
            (Some(by), Some(at)) if c.state == ClusterState::Terminated => Some(format!(
                "terminated {} by {by}: {}",
                crate::core::model::local_time(at),
                c.ended_reason.as_deref().unwrap_or("no reason recorded")
            )),
            _ => None,
        };
        let cut_off = self.abandoned(c).then(|| {
            // In a multi-user install the runner reconciles before every launch and
            // terminate; a student's own `reconcile` does not reach its state.
            let by = if self.config().mode == Mode::MultiUser {
                "the next launch or terminate rolls it back"
            } else {
                "the next launch or terminate, or `stratus reconcile`, rolls it back"
            };
            format!("its launch was cut off (the launching process is gone): {by}")
        });
        Ok(ClusterView {
            id: c.id,
            name: c.name.to_string(),
            owner: c.owner.to_string(),
            profile: c.profile.clone(),
            provider: c.provider.to_string(),
            state: c.state.as_str().to_owned(),
            created_at: crate::core::model::rfc3339(c.created_at),
            failure: c.failure.clone(),
            ssh_user: c.record.profile.ssh_user.clone(),
            notes: reaped.into_iter().chain(cut_off).chain(ended).collect(),
            nodes: self.store().nodes_of(c.id)?,
            deadline: c.deadline.map(crate::core::model::rfc3339),
            extensions: c.extensions,
            ended_by: c.ended_by.clone(),
            ended_reason: c.ended_reason.clone(),
        })
    }

    /// A launch in progress whose launcher died (killed, or its machine rebooted): what
    /// reconcile rolls back. Only read here, never acted on.
    fn abandoned(&self, c: &ClusterRow) -> bool {
        matches!(
            c.state,
            ClusterState::Reserved | ClusterState::Requested | ClusterState::Running
        ) && LaunchLock::launcher(self.state_dir(), &c.request_id) == Launcher::Died
    }

    /// Refreshes the store from every provider these clusters use. A provider that cannot be
    /// reached is reported, not fatal: what was last recorded is shown.
    pub(crate) async fn refresh_all(&self, clusters: &[ClusterRow]) {
        let mut kinds: Vec<ProviderKind> = Vec::new();
        for c in clusters
            .iter()
            .filter(|c| c.state.is_live() || c.terminated_at.is_none())
        {
            if !kinds.contains(&c.provider) {
                kinds.push(c.provider);
            }
        }
        for kind in kinds {
            let r: Result<(), Error> = async {
                let p = self.provider(kind).await?;
                observe::refresh(self.ctx(), p.as_ref(), clusters).await
            }
            .await;
            if let Err(e) = r {
                self.printer().warn(format!(
                    "cannot refresh from the {kind} provider; showing what was last recorded: {}",
                    crate::core::error::one_line(&e)
                ));
            }
        }
    }

    /// The owner's live cluster of this name, with its nodes' states refreshed from the
    /// provider first: a node that died since the last look is no longer a target, nor in a
    /// workers file.
    pub(super) async fn fresh_cluster(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<ClusterRow, Error> {
        let cluster = self.live_cluster(owner, name)?;
        self.refresh_all(std::slice::from_ref(&cluster)).await;
        Ok(cluster)
    }
}

/// Which clusters `list` shows: live ones and those that ended in the last day (all with
/// `all`); with a name, the live one of that name, else the most recent. Never one that
/// `delete-cluster` removed.
pub(crate) fn shown(
    clusters: Vec<ClusterRow>,
    name: Option<&ClusterName>,
    all: bool,
    now: Millis,
) -> Vec<ClusterRow> {
    let mut visible: Vec<ClusterRow> = clusters.into_iter().filter(|c| !c.hidden).collect();
    if let Some(n) = name {
        visible.retain(|c| c.name == *n);
        let pick = visible
            .iter()
            .rposition(|c| c.state.is_live())
            .or_else(|| visible.len().checked_sub(1));
        return pick.map(|i| visible.swap_remove(i)).into_iter().collect();
    }
    if !all {
        visible.retain(|c| {
            c.state.is_live() || now - c.terminated_at.unwrap_or(c.updated_at) < RECENT
        });
    }
    visible
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::RequestId;
    use crate::store::ClusterRecord;

    fn row(id: i64, name: &str, state: ClusterState, ended: Option<Millis>) -> ClusterRow {
        ClusterRow {
            id,
            name: ClusterName::parse(name).unwrap(),
            owner: Owner::parse("alice").unwrap(),
            profile: "p".into(),
            provider: ProviderKind::Local,
            state,
            request_id: RequestId::new(),
            created_at: 0,
            updated_at: ended.unwrap_or(0),
            terminated_at: ended,
            failure: None,
            record: ClusterRecord {
                guard: None,
                profile: crate::config::profile::Profile::for_tests("p"),
                env: Default::default(),
                extra_keys: Vec::new(),
            },
            hidden: false,
            reap_after: None,
            reap_reason: None,
            naming: crate::core::model::Naming::At,
            deadline: None,
            extensions: 0,
            ended_by: None,
            ended_reason: None,
            idle_since: None,
            activity: None,
        }
    }

    #[test]
    fn list_shows_live_and_recent_clusters_and_one_per_name() {
        let now = 10 * RECENT;
        let clusters = vec![
            row(1, "demo", ClusterState::Terminated, Some(now - 2 * RECENT)),
            row(2, "demo", ClusterState::Configured, None),
            row(3, "old", ClusterState::Failed, Some(now - 2 * RECENT)),
            row(4, "fresh", ClusterState::Terminated, Some(now - 1000)),
        ];
        let ids = |v: Vec<ClusterRow>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(shown(clusters.clone(), None, false, now)), vec![2, 4]);
        assert_eq!(
            ids(shown(clusters.clone(), None, true, now)),
            vec![1, 2, 3, 4]
        );
        let demo = ClusterName::parse("demo").unwrap();
        assert_eq!(
            ids(shown(clusters.clone(), Some(&demo), false, now)),
            vec![2]
        );
        let old = ClusterName::parse("old").unwrap();
        assert_eq!(
            ids(shown(clusters.clone(), Some(&old), false, now)),
            vec![3]
        );
        let mut hidden = clusters;
        hidden[3].hidden = true;
        assert_eq!(ids(shown(hidden, None, true, now)), vec![1, 2, 3]);
    }
}
