//! Instances nobody recorded: which ones are this store's, whether their launcher may still
//! record them, and which cluster's record they go into. Reconcile, the accounting snapshot and
//! the reaper all decide these the same way, here.

use crate::cluster::Ctx;
use crate::cluster::locks::{LaunchLock, Launcher};
use crate::cluster::meta::node_row;
use crate::cluster::provider::Instance;
use crate::core::error::Error;
use crate::core::model::{Millis, ProviderKind, Role};
use crate::store::ClusterRow;

/// Whether an instance is this store's: it carries this store's id, or (launched before stores
/// had ids) no store id and a request this store knows.
pub fn is_ours(ctx: Ctx<'_>, i: &Instance) -> Result<bool, Error> {
    Ok(match i.tags.as_ref() {
        None => false,
        Some(t) => match &t.store {
            Some(s) => s == ctx.store.id(),
            None => ctx.store.knows_request(t.request.as_str())?,
        },
    })
}

/// Whether an instance of this store that no row knows is an orphan now: not gone, and its
/// launcher cannot record it any more (its request lock is free; without a lock to tell, once
/// it is older than `grace`).
pub fn is_orphan(ctx: Ctx<'_>, i: &Instance, now: Millis, grace: Millis) -> Result<bool, Error> {
    let Some(t) = &i.tags else { return Ok(false) };
    if i.state.is_gone() || ctx.store.knows_instance(&i.id)? {
        return Ok(false);
    }
    Ok(match LaunchLock::launcher(ctx.state_dir, &t.request) {
        Launcher::Running => false,
        Launcher::Died => true,
        Launcher::Unknown => i.launched_at.is_some_and(|l| now - l > grace),
    })
}

/// Whether a live instance of this store is an orphan to terminate: one no row knows (as
/// `is_orphan` decides), or one a snapshot recorded as an orphan and left running.
pub fn to_terminate(ctx: Ctx<'_>, i: &Instance, now: Millis, grace: Millis) -> Result<bool, Error> {
    if i.state.is_gone() {
        return Ok(false);
    }
    Ok(is_orphan(ctx, i, now, grace)? || ctx.store.is_open_orphan(&i.id)?)
}

/// The cluster an orphan is recorded under: the row its node is in if it was recorded (by a
/// snapshot), else `cluster_for`.
pub fn record_of(ctx: Ctx<'_>, i: &Instance, kind: ProviderKind) -> Result<ClusterRow, Error> {
    if let Some(n) = ctx.store.node(&i.id)?
        && let Some(c) = ctx.store.cluster_by_id(n.cluster_id)?
    {
        return Ok(c);
    }
    cluster_for(ctx, i, kind)
}

/// The cluster whose record an unrecorded instance belongs in: the one its request launched or
/// grew, else a row made for it (already ended: nobody launched it through this store's
/// record). Never a live cluster that only shares its name.
pub fn cluster_for(ctx: Ctx<'_>, i: &Instance, kind: ProviderKind) -> Result<ClusterRow, Error> {
    let t = i
        .tags
        .as_ref()
        .ok_or_else(|| Error::runtime(format!("instance {} carries no stratus tags", i.id)))?;
    if let Some(c) = ctx.store.cluster_of_request(t.request.as_str())? {
        return Ok(c);
    }
    Ok(ctx.store.adopt_cluster(
        &t.owner,
        &t.cluster,
        kind,
        (t.profile.clone(), t.request.clone()),
    )?)
}

/// The record of an unrecorded instance in `cluster`.
pub fn row_for(cluster: &ClusterRow, i: &Instance) -> crate::store::NodeRow {
    let request = i
        .tags
        .as_ref()
        .map(|t| t.request.to_string())
        .unwrap_or_default();
    node_row(cluster, &request, Role::Worker, 0, i)
}
