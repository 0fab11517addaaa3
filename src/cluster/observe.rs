//! Bringing the store up to date with what a provider reports, for the read paths (`list`,
//! `usage`, `exec`, `push`, `login`): node states and addresses, and the usage intervals that end
//! or restart. One describe per provider and owner, and one transaction for whatever changed;
//! nothing is written when nothing changed.
//!
//! A cluster whose every node has ended without stratus ending it (terminated in the console,
//! vanished from EC2's answers past its consistency grace) is settled here too, for the reads
//! and the accounting snapshot alike: it goes to `terminated` with the reason as its failure
//! text and in the audit trail, and its reservations (the quota's units and its cluster slot)
//! are released.

use std::collections::HashMap;

use crate::cluster::Ctx;
use crate::cluster::locks::{GrowLock, LaunchLock, Launcher, TerminateLock};
use crate::cluster::provider::{Instance, Provider, Selector};
use crate::core::error::Error;
use crate::core::model::{ClusterState, Owner, now_millis};
use crate::store::{AuditRecord, ClusterRow, Observation};

/// Why a settled cluster ended, as its failure text and its audit row say.
pub const ENDED_OUTSIDE: &str = "all its instances ended outside stratus";

/// Observes the live nodes of `clusters` (those on this provider) at the provider.
pub async fn refresh<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    clusters: &[ClusterRow],
) -> Result<(), Error> {
    let mut nodes = Vec::new();
    let mut owners: Vec<&Owner> = Vec::new();
    for c in clusters.iter().filter(|c| c.provider == provider.kind()) {
        let live: Vec<_> = ctx
            .store
            .nodes_of(c.id)?
            .into_iter()
            .filter(|n| n.ended_at.is_none())
            .collect();
        if !live.is_empty() && !owners.contains(&&c.owner) {
            owners.push(&c.owner);
        }
        nodes.extend(live);
    }
    if nodes.is_empty() {
        settle_ended_outside(ctx, clusters, "observe")?;
        return Ok(());
    }
    let mut seen: HashMap<String, Instance> = HashMap::new();
    for owner in owners {
        let found = provider
            // By owner only: a node is matched by its id, and one launched before stores had
            // ids carries no store tag.
            .describe(&Selector {
                owner: Some(owner.clone()),
                ..Default::default()
            })
            .await?;
        seen.extend(found.into_iter().map(|i| (i.id.clone(), i)));
    }
    let now = now_millis();
    let grace = crate::core::model::millis_of(provider.consistency_grace());
    let observations: Vec<Observation> = nodes
        .into_iter()
        .filter_map(|n| match seen.get(&n.instance_id) {
            Some(i) => Some(Observation::Seen {
                instance_id: n.instance_id,
                state: i.state,
                address: i.address.clone(),
                private_address: i.private_address.clone(),
                at: now,
            }),
            None if now - n.launched_at > grace => Some(Observation::Vanished {
                instance_id: n.instance_id,
                at: now,
            }),
            // Too new to be missing for good (eventual consistency): say nothing yet.
            None => None,
        })
        .collect();
    ctx.store.observe(&observations)?;
    settle_ended_outside(ctx, clusters, "observe")?;
    Ok(())
}

/// Settles the clusters of `clusters` whose every node has ended while nothing of stratus was
/// ending them: `terminated`, with `ENDED_OUTSIDE` as the failure text, their reservations
/// released, one audit row each (as `by`). A cluster a launch, a launch-slaves or a terminate
/// is still working on is left to it; a node within the provider's consistency grace has not
/// ended (it is written off only after the grace). Returns the clusters settled.
pub fn settle_ended_outside(
    ctx: Ctx<'_>,
    clusters: &[ClusterRow],
    by: &str,
) -> Result<Vec<ClusterRow>, Error> {
    let mut settled = Vec::new();
    for c in clusters {
        if !matches!(c.state, ClusterState::Running | ClusterState::Configured)
            || !all_nodes_ended(ctx, c)?
            || worked_on(ctx, c)
        {
            continue;
        }
        if !ctx.store.transition(
            c.id,
            &[c.state],
            ClusterState::Terminated,
            Some(&format!("{ENDED_OUTSIDE}; stratus recorded its end")),
        )? {
            continue;
        }
        ctx.store.release_reservations(c.id, None)?;
        // Past its deadline and the grace, its nodes' guard powered them off (or someone did).
        let guarded = match (&c.record.guard, c.deadline) {
            (Some(g), Some(d)) if now_millis() >= d.saturating_add(g.grace_ms) => {
                "; it was past its deadline, when its nodes power themselves off"
            }
            _ => "",
        };
        ctx.store.set_ended_by(
            c.id,
            "outside stratus",
            &format!("{ENDED_OUTSIDE}{guarded}"),
        )?;
        tracing::warn!(cluster = %c.name, owner = %c.owner, "{ENDED_OUTSIDE}: settled as terminated");
        let record = AuditRecord {
            at: String::new(),
            user: by.to_owned(),
            action: "settle".into(),
            cluster: Some(AuditRecord::cluster_of(c.owner.as_str(), c.name.as_str())),
            decision: "done".into(),
            reason: Some(format!("{ENDED_OUTSIDE}: terminated, its quota released")),
            instances: Vec::new(),
        };
        if let Err(e) = ctx.store.audit(&record, now_millis()) {
            tracing::error!("cannot write the audit trail: {e}");
        }
        settled.push(c.clone());
    }
    Ok(settled)
}

/// Whether a cluster had nodes and every one of them has ended.
fn all_nodes_ended(ctx: Ctx<'_>, c: &ClusterRow) -> Result<bool, Error> {
    let nodes = ctx.store.nodes_of(c.id)?;
    Ok(!nodes.is_empty() && nodes.iter().all(|n| n.ended_at.is_some()))
}

/// Whether a live process works on the cluster: its launch, a launch-slaves, a terminate.
fn worked_on(ctx: Ctx<'_>, c: &ClusterRow) -> bool {
    LaunchLock::launcher(ctx.state_dir, &c.request_id) == Launcher::Running
        || GrowLock::is_held(ctx.state_dir, c.id)
        || TerminateLock::is_held(ctx.state_dir, c.id)
}
