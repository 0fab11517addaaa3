//! Terminating: a whole cluster, what one request launched (a rollback), or a set of
//! instances; and waiting until the provider confirms each one gone.
//!
//! An instance counts as gone only on a positive sighting (`shutting-down` or `terminated`), or
//! once it has been missing from the provider's answers for longer than the provider's
//! consistency grace, measured from its launch. EC2 is eventually consistent: a new instance can
//! be unknown to TerminateInstances, and missing from filtered describes, for a while. So an id
//! EC2 does not know yet is asked again, not written off; and a cluster whose instances are not
//! all confirmed gone stays `terminating`, for a later command or `reconcile` to finish.
//!
//! Instances found under a cluster's tags that no row knows (a crashed launch-slaves, a launch
//! behind stratus's back) are recorded before they are terminated, so their hours are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::cluster::Ctx;
use crate::cluster::locks::TerminateLock;
use crate::cluster::meta::{cluster_ref, node_row};
use crate::cluster::provider::{Instance, Provider, Selector};
use crate::core::error::Error;
use crate::core::model::{ClusterState, Millis, RequestId, Role, now_millis};
use crate::store::{ClusterRow, NodeRow, Observation};

/// How long a terminate waits for the provider to confirm everything gone.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The live states a terminate may start from.
const TERMINABLE: &[ClusterState] = &[
    ClusterState::Reserved,
    ClusterState::Requested,
    ClusterState::Running,
    ClusterState::Configured,
    ClusterState::Terminating,
];

/// The selector of everything tagged as this cluster of this store.
pub fn cluster_selector(ctx: Ctx<'_>, c: &ClusterRow) -> Selector {
    Selector {
        owner: Some(c.owner.clone()),
        cluster: Some(c.name.clone()),
        store: Some(ctx.store.id().clone()),
        ..Default::default()
    }
}

/// The selector of everything one request of this store launched.
pub fn request_selector(ctx: Ctx<'_>, c: &ClusterRow, request: &RequestId) -> Selector {
    Selector {
        owner: Some(c.owner.clone()),
        request: Some(request.clone()),
        store: Some(ctx.store.id().clone()),
        ..Default::default()
    }
}

/// The cluster's nodes that are not gone, master first.
pub fn live_nodes(ctx: Ctx<'_>, cluster: &ClusterRow) -> Result<Vec<NodeRow>, Error> {
    Ok(ctx
        .store
        .nodes_of(cluster.id)?
        .into_iter()
        .filter(|n| !n.state.is_gone())
        .collect())
}

/// Records the instances in `found` that no row knows, attached to `cluster` (as orphans when
/// `orphan`: nobody launched them through this request), so their hours are counted. Returns
/// the ids of every live instance in `found` that belongs to this cluster's record.
pub fn adopt(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    found: &[Instance],
    orphan: bool,
) -> Result<Vec<String>, Error> {
    let mut ids = Vec::new();
    for inst in found.iter().filter(|i| !i.state.is_gone()) {
        match ctx.store.node(&inst.id)? {
            Some(n) if n.cluster_id == cluster.id => ids.push(inst.id.clone()),
            // Another row's (an earlier cluster of the same name): its own cleanup's business.
            Some(_) => {}
            None => {
                let request = inst
                    .tags
                    .as_ref()
                    .map(|t| t.request.to_string())
                    .unwrap_or_default();
                let row = node_row(cluster, &request, Role::Worker, 0, inst);
                if orphan {
                    ctx.store.record_orphan(cluster, &row)?;
                } else {
                    ctx.store.record_nodes(cluster, None, &[row], &[])?;
                }
                tracing::warn!(instance = %inst.id, cluster = %cluster.name, "recording an instance no row knew");
                ids.push(inst.id.clone());
            }
        }
    }
    Ok(ids)
}

/// Asks for `ids` to be terminated and waits until the provider confirms each one gone,
/// recording each end as it is seen. Ids the provider does not know yet are asked again; one
/// missing from describes counts as gone only once its launch is older than the provider's
/// consistency grace.
pub async fn terminate_ids<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    ids: &BTreeSet<String>,
    selector: &Selector,
) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // Only what belongs to the owner being acted for is ever terminated: every id the provider
    // lists must carry that owner's tag (an id it does not list yet is a new one of ours, from
    // the record or from a describe by our tags).
    if let Some(owner) = &selector.owner {
        let ask: Vec<String> = ids.iter().cloned().collect();
        for i in provider.describe_ids(&ask).await? {
            let theirs = i.tags.as_ref().map(|t| &t.owner);
            if theirs != Some(owner) {
                return Err(Error::runtime(format!(
                    "refusing to terminate {}: it is tagged as {}'s, not {owner}'s",
                    i.id,
                    theirs.map(|o| o.as_str()).unwrap_or("nobody")
                )));
            }
        }
    }
    let spinner = ctx
        .printer
        .spinner(format!("waiting for {} nodes to terminate", ids.len()));
    let grace = crate::core::model::millis_of(provider.consistency_grace());
    let deadline = Instant::now() + TERMINATE_TIMEOUT;
    let mut delay = Duration::from_millis(250);
    // Launch times, from the record or from a describe, for the grace of the missing.
    let mut launched: BTreeMap<String, Millis> = BTreeMap::new();
    for id in ids {
        if let Some(n) = ctx.store.node(id)? {
            launched.insert(id.clone(), n.launched_at);
        }
    }
    let mut ask: Vec<String> = ids.iter().cloned().collect();
    let mut left: BTreeSet<String> = ids.clone();
    loop {
        if !ask.is_empty() {
            let report = provider.terminate(&ask).await?;
            if !report.not_found.is_empty() {
                tracing::info!(instances = ?report.not_found, "not known to the provider yet; asking again");
            }
        }
        let now = now_millis();
        let seen: BTreeMap<String, Instance> = provider
            .describe(selector)
            .await?
            .into_iter()
            .filter(|i| left.contains(&i.id))
            .map(|i| (i.id.clone(), i))
            .collect();
        let mut observations = Vec::new();
        ask.clear();
        for id in left.clone() {
            match seen.get(&id) {
                Some(i) => {
                    if let Some(t) = i.launched_at {
                        launched.entry(id.clone()).or_insert(t);
                    }
                    observations.push(Observation::Seen {
                        instance_id: id.clone(),
                        state: i.state,
                        address: None,
                        private_address: None,
                        at: now,
                    });
                    if i.state.is_gone() {
                        left.remove(&id);
                    } else {
                        ask.push(id);
                    }
                }
                None => match launched.get(&id) {
                    Some(t) if now - t > grace => {
                        observations.push(Observation::Vanished {
                            instance_id: id.clone(),
                            at: now,
                        });
                        left.remove(&id);
                    }
                    // Too new to be missing for good: ask again.
                    _ => ask.push(id),
                },
            }
        }
        ctx.store.observe(&observations)?;
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            spinner.finish_and_clear();
            return Err(Error::runtime(format!(
                "{} of {} instances are not confirmed terminated after {} minutes ({}); `stratus reconcile` finishes the job",
                left.len(),
                ids.len(),
                TERMINATE_TIMEOUT.as_secs() / 60,
                left.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    spinner.finish_and_clear();
    Ok(())
}

/// Terminates what `request` launched in `cluster` (found in the store and by the request's tag
/// at the provider), waits until it is gone, and (for a whole cluster) releases the cluster's
/// resources. Returns how many instances it terminated.
pub async fn rollback<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
    request: &RequestId,
    whole_cluster: bool,
) -> Result<usize, Error> {
    let selector = request_selector(ctx, cluster, request);
    let mut ids: BTreeSet<String> = ctx
        .store
        .nodes_of(cluster.id)?
        .into_iter()
        .filter(|n| n.request_id == request.as_str() && !n.state.is_gone())
        .map(|n| n.instance_id)
        .collect();
    let tagged = provider.describe(&selector).await?;
    ids.extend(adopt(ctx, cluster, &tagged, false)?);
    terminate_ids(ctx, provider, &ids, &selector).await?;
    // Everything of the request is gone: the quota it held is free.
    ctx.store
        .release_reservations(cluster.id, (!whole_cluster).then_some(request.as_str()))?;
    if whole_cluster {
        provider
            .release(&cluster_ref(cluster, ctx.store.id()))
            .await?;
    }
    Ok(ids.len())
}

/// Finishes the rollback of a failed launch: terminates what the store still holds as live for
/// the cluster and what its request launched, then releases the cluster's resources unless a
/// newer cluster of the same name now holds them.
pub async fn finish_rollback<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
) -> Result<usize, Error> {
    let selector = cluster_selector(ctx, cluster);
    let mut ids: BTreeSet<String> = live_nodes(ctx, cluster)?
        .into_iter()
        .map(|n| n.instance_id)
        .collect();
    let tagged = provider
        .describe(&request_selector(ctx, cluster, &cluster.request_id))
        .await?;
    ids.extend(adopt(ctx, cluster, &tagged, false)?);
    terminate_ids(ctx, provider, &ids, &selector).await?;
    ctx.store.release_reservations(cluster.id, None)?;
    let name_taken = ctx
        .store
        .find_cluster(&cluster.owner, &cluster.name)?
        .is_some_and(|c| c.id != cluster.id && c.state.is_live());
    if !name_taken {
        provider
            .release(&cluster_ref(cluster, ctx.store.id()))
            .await?;
    }
    Ok(ids.len())
}

/// Terminates a whole cluster: every node the store knows and every instance the provider holds
/// under its tags, then its per-cluster resources; then, with the cluster marked terminated (so
/// no launch-slaves can record a node for it any more), one more look for stragglers. Returns
/// how many instances were terminated.
pub async fn terminate<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
) -> Result<usize, Error> {
    // Held while this process works on the cluster: reconcile finishes a `terminating` cluster
    // only when no terminate runs.
    let _lock = TerminateLock::acquire(ctx.state_dir, cluster.id)?;
    if !ctx
        .store
        .transition(cluster.id, TERMINABLE, ClusterState::Terminating, None)?
    {
        // Not live: a failed launch may still have nodes to roll back; a terminated one may
        // have a straggler.
        return match ctx.store.cluster_state(cluster.id)? {
            Some(ClusterState::Failed) => finish_rollback(ctx, provider, cluster).await,
            _ => stragglers(ctx, provider, cluster).await,
        };
    }
    let selector = cluster_selector(ctx, cluster);
    let mut ids: BTreeSet<String> = live_nodes(ctx, cluster)?
        .into_iter()
        .map(|n| n.instance_id)
        .collect();
    let tagged = provider.describe(&selector).await?;
    ids.extend(adopt(ctx, cluster, &tagged, true)?);
    terminate_ids(ctx, provider, &ids, &selector).await?;
    ctx.store.release_reservations(cluster.id, None)?;
    provider
        .release(&cluster_ref(cluster, ctx.store.id()))
        .await?;
    ctx.store.transition(
        cluster.id,
        &[ClusterState::Terminating],
        ClusterState::Terminated,
        None,
    )?;
    Ok(ids.len() + stragglers(ctx, provider, cluster).await?)
}

/// Instances still live under a terminated cluster's tags: a launch-slaves whose call returned
/// after the terminate looked. Recorded and terminated.
async fn stragglers<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
) -> Result<usize, Error> {
    let selector = cluster_selector(ctx, cluster);
    let tagged = provider.describe(&selector).await?;
    let mut ids: BTreeSet<String> = adopt(ctx, cluster, &tagged, true)?.into_iter().collect();
    // A node the record still holds as live (its end not seen yet) is one too.
    ids.extend(live_nodes(ctx, cluster)?.into_iter().map(|n| n.instance_id));
    if ids.is_empty() {
        return Ok(0);
    }
    tracing::warn!(cluster = %cluster.name, instances = ?ids, "terminating stragglers");
    terminate_ids(ctx, provider, &ids, &selector).await?;
    Ok(ids.len())
}
