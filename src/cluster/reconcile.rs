//! Reconcile and delete-cluster: finding what a crash, a SIGKILL or an interrupted command left
//! behind, by comparing the store's rows with what the provider holds under stratus's tags, and
//! finishing or undoing it (DESIGN.md, "A launch is a state machine").
//!
//! - A terminate that stopped half-way (a row left `terminating`) is completed.
//! - A launch stuck in `reserved` or `requested` longer than any launch can take is rolled back:
//!   everything of its request is terminated, the cluster's resources released, the row failed.
//!   Finishing such a launch instead would need the launching process's SSH configure step, so it
//!   is always undone.
//! - A tagged instance that no row knows (launched, then the process died before recording it)
//!   is terminated once it is older than a grace period, so a launch in progress elsewhere is
//!   never raced.
//! - Per-cluster resources (EC2 security groups and key pairs) of a cluster with no live row
//!   and no live instance are released.
//!
//! `delete-cluster NAME` does the last three for one cluster, at once: everything tagged with it
//! goes, whatever the store says.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::app::App;
use crate::cluster::launch::{self, LaunchLock, Launcher};
use crate::cluster::provider::{ClusterRef, InstanceState, Provider, Selector};
use crate::cluster::{ClusterName, Owner, RequestId};
use crate::error::Error;
use crate::store::{ClusterRow, ClusterState, Millis, now_millis};

/// How long waiting for instances to be gone may take.
const GONE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What reconcile may do, and how long it leaves things to the command that may still be
/// working on them.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only report what would be done.
    pub dry_run: bool,
    /// An instance no row knows is left alone this long: its launcher may be about to record it.
    pub orphan_grace: Duration,
    /// A terminate in another process may still be running for this long.
    pub terminating_grace: Duration,
    /// A launch counts as abandoned after this long in `reserved` or `requested`; by default,
    /// every round of waiting its profile allows plus half an hour.
    pub stuck_after: Option<Duration>,
}

impl Options {
    pub fn new(dry_run: bool) -> Self {
        Self {
            dry_run,
            orphan_grace: Duration::from_secs(10 * 60),
            terminating_grace: Duration::from_secs(20 * 60),
            stuck_after: None,
        }
    }
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// One thing reconcile did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Action {
    pub cluster: String,
    pub what: String,
}

/// How long a launch may stay in `reserved` or `requested` before it counts as abandoned: every
/// round of waiting the profile allows (the first and each replacement), plus a margin.
fn stuck_after_ms(c: &ClusterRow) -> Millis {
    let p = &c.record.profile;
    let rounds = u64::from(p.max_replacements) + 1;
    let secs = 30 * 60 + rounds.saturating_mul(p.ready_timeout_secs);
    Millis::try_from(secs.saturating_mul(1000)).unwrap_or(Millis::MAX)
}

/// Brings the caller's clusters on `provider` in line with what the provider holds.
pub async fn reconcile<P: Provider>(
    app: &App,
    provider: &P,
    options: &Options,
) -> Result<Vec<Action>, Error> {
    let dry_run = options.dry_run;
    let owner = app.owner.clone();
    let kind = provider.kind().as_str();
    let now = now_millis();
    let clusters: Vec<ClusterRow> = app
        .store
        .list_clusters(Some(&owner))?
        .into_iter()
        .filter(|c| c.provider == kind)
        .collect();
    let mut actions = Vec::new();
    let mut act = |cluster: &ClusterName, what: String| {
        app.printer.status(format!(
            "{}{cluster}: {what}",
            if dry_run { "would reconcile " } else { "" }
        ));
        actions.push(Action {
            cluster: cluster.to_string(),
            what,
        });
    };

    // Rows: interrupted terminates are completed, abandoned launches rolled back.
    for c in &clusters {
        let age = now - c.updated_at;
        let (due, what) = match c.state {
            ClusterState::Terminating if age > ms(options.terminating_grace) => {
                (true, "completed an interrupted terminate".to_owned())
            }
            ClusterState::Reserved | ClusterState::Requested if launcher_died(app, c)? => (
                true,
                format!(
                    "rolled back a launch whose process died in state {}",
                    c.state.as_str()
                ),
            ),
            ClusterState::Reserved | ClusterState::Requested
                if age
                    > options
                        .stuck_after
                        .map(ms)
                        .unwrap_or_else(|| stuck_after_ms(c)) =>
            {
                (
                    true,
                    format!(
                        "rolled back a launch abandoned in state {} for {} minutes",
                        c.state.as_str(),
                        age / 60_000
                    ),
                )
            }
            // A launch that failed, and whose rollback did not get through (the cloud refused
            // or timed out): no process works on a failed cluster, so finish it now.
            ClusterState::Failed if !launch::live_nodes(app, c)?.is_empty() => {
                (true, "finished rolling back a failed launch".to_owned())
            }
            _ => (false, String::new()),
        };
        if !due {
            continue;
        }
        if !dry_run && c.state == ClusterState::Failed {
            launch::finish_rollback(app, provider, c).await?;
        } else if !dry_run {
            let was = c.state;
            launch::terminate(app, provider, c).await?;
            if was != ClusterState::Terminating {
                app.store.set_cluster_state(
                    c.id,
                    ClusterState::Failed,
                    Some("the launch was abandoned; rolled back by `stratus reconcile`"),
                )?;
            }
            LaunchLock::clear(app, &c.request_id);
        }
        act(&c.name, what);
    }

    // Instances no row knows.
    let mut known: BTreeSet<String> = BTreeSet::new();
    for c in &clusters {
        known.extend(app.store.nodes_of(c.id)?.into_iter().map(|n| n.instance_id));
    }
    let tagged = provider
        .describe(&Selector {
            owner: Some(owner.clone()),
            ..Default::default()
        })
        .await?;
    let mut orphans: HashMap<ClusterName, Vec<String>> = HashMap::new();
    for i in &tagged {
        if i.state.is_gone() || known.contains(&i.id) {
            continue;
        }
        let Some(tags) = &i.tags else { continue };
        // A launch (or launch-slaves) in progress elsewhere records its nodes right after
        // RunInstances returns: leave its instances alone while its launcher lives. A launcher
        // that died cannot record them any more; without a lock to tell, give it time.
        match LaunchLock::launcher(app, &tags.request) {
            Launcher::Running => continue,
            Launcher::Died => {
                // It may have recorded the instance after `known` was read, then exited.
                if app.store.knows_instance(&i.id)? {
                    continue;
                }
            }
            Launcher::Unknown => {
                if i.launched_at
                    .is_none_or(|t| now - t < ms(options.orphan_grace))
                {
                    continue;
                }
            }
        }
        orphans
            .entry(tags.cluster.clone())
            .or_default()
            .push(i.id.clone());
    }
    let mut names: Vec<&ClusterName> = orphans.keys().collect();
    names.sort_by_key(|n| n.as_str());
    for name in names {
        let ids = &orphans[name];
        if !dry_run {
            provider.terminate(ids).await?;
            for i in tagged.iter().filter(|i| ids.contains(&i.id)) {
                if let Some(t) = &i.tags {
                    LaunchLock::clear(app, &t.request);
                }
            }
        }
        act(
            name,
            format!(
                "terminated {} instance(s) no record knows: {}",
                ids.len(),
                ids.join(", ")
            ),
        );
    }
    if !dry_run && !orphans.is_empty() {
        let ids: Vec<String> = orphans.values().flatten().cloned().collect();
        wait_gone(provider, &owner, None, &ids).await?;
    }

    // Per-cluster resources of clusters that are gone. Listed first, the rows read after: a
    // launch records its row before it creates its group and key pair, so whatever is listed
    // here and belongs to a launch in progress has its live row read below.
    let with_resources = provider.clusters_with_resources(Some(&owner)).await?;
    let live_names: HashSet<ClusterName> = app
        .store
        .list_clusters(Some(&owner))?
        .into_iter()
        .filter(|c| c.state.is_live())
        .map(|c| c.name)
        .collect();
    let still_running: HashSet<ClusterName> = provider
        .describe(&Selector {
            owner: Some(owner.clone()),
            ..Default::default()
        })
        .await?
        .into_iter()
        .filter(|i| !i.state.is_gone())
        .filter_map(|i| i.tags.map(|t| t.cluster))
        .collect();
    for (o, name) in with_resources {
        if o != owner || live_names.contains(&name) || still_running.contains(&name) {
            continue;
        }
        if !dry_run {
            provider.release(&cluster_ref(&owner, &name)).await?;
        }
        act(
            &name,
            "released the resources of a cluster that is gone".to_owned(),
        );
    }
    Ok(actions)
}

/// Whether the process that was launching `c` died: its request's lock is free, and the row,
/// read again after that (a launcher updates the row before it lets go of the lock), is still
/// where the launch left it.
fn launcher_died(app: &App, c: &ClusterRow) -> Result<bool, Error> {
    if LaunchLock::launcher(app, &c.request_id) != Launcher::Died {
        return Ok(false);
    }
    let now = app.store.cluster_by_id(c.id)?.map(|r| r.state);
    Ok(matches!(
        now,
        Some(ClusterState::Reserved | ClusterState::Requested)
    ))
}

/// A reference to a cluster by owner and name, for releasing its resources (which are found by
/// name and tags; profile and request do not matter there).
fn cluster_ref(owner: &Owner, name: &ClusterName) -> ClusterRef {
    ClusterRef {
        owner: owner.clone(),
        name: name.clone(),
        profile: String::new(),
        request: RequestId::from_stored(String::new()),
    }
}

/// Waits until none of `ids` is live at the provider.
async fn wait_gone<P: Provider>(
    provider: &P,
    owner: &Owner,
    cluster: Option<&ClusterName>,
    ids: &[String],
) -> Result<(), Error> {
    let deadline = Instant::now() + GONE_TIMEOUT;
    let mut delay = Duration::from_millis(250);
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        let left = provider
            .describe(&Selector {
                owner: Some(owner.clone()),
                cluster: cluster.cloned(),
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|i| wanted.contains(i.id.as_str()) && !i.state.is_gone())
            .count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::runtime(format!(
                "{left} instances are still not terminated after {} minutes",
                GONE_TIMEOUT.as_secs() / 60
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// What `delete-cluster` removed.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    pub instances: Vec<String>,
}

/// Removes everything tagged with the caller's cluster `name`: instances (terminated, waited
/// for), then its per-cluster resources. Refuses a cluster the store holds as live: that is
/// `terminate-cluster`'s job.
pub async fn delete_cluster<P: Provider>(
    app: &App,
    provider: &P,
    name: &ClusterName,
) -> Result<Deleted, Error> {
    let owner = app.owner.clone();
    let row = app.store.find_cluster(&owner, name)?;
    if let Some(c) = &row
        && c.state.is_live()
    {
        return Err(Error::invalid(format!(
            "cluster {name} is {}; use `stratus terminate-cluster {name}`",
            c.state.as_str()
        )));
    }
    let selector = Selector {
        owner: Some(owner.clone()),
        cluster: Some(name.clone()),
        ..Default::default()
    };
    let ids: Vec<String> = provider
        .describe(&selector)
        .await?
        .into_iter()
        .filter(|i| !i.state.is_gone())
        .map(|i| i.id)
        .collect();
    if !ids.is_empty() {
        provider.terminate(&ids).await?;
        wait_gone(provider, &owner, Some(name), &ids).await?;
    }
    provider.release(&cluster_ref(&owner, name)).await?;
    if let Some(c) = &row {
        let now = now_millis();
        for n in app.store.nodes_of(c.id)? {
            if !n.state.is_gone() {
                app.store.observe_node(
                    &n.instance_id,
                    InstanceState::Terminated,
                    None,
                    None,
                    now,
                )?;
            }
        }
    }
    Ok(Deleted { instances: ids })
}
