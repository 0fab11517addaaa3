//! `stratus accounting snapshot` (cron, every 5 minutes): one look at every instance of this
//! store, whoever owns it, recorded in one transaction.
//!
//! - A running instance extends its usage interval (its last sighting); a stopped one closes it
//!   (stopped hours are not billed); one running again opens a new one; one seen shutting down or
//!   terminated closes it at that sighting.
//! - One that disappears without ever being seen terminated is closed at its last sighting plus
//!   at most one snapshot interval, marked estimated: never billed forever, never lost.
//! - A cluster whose every instance ended that way (or was seen terminated) while stratus was
//!   not ending it is settled as terminated, its quota released (`cluster::observe`).
//! - An instance of this store that no row knows (its launcher died before recording it) is
//!   recorded as an orphan, with its hours from its launch, under the cluster its tags name, and
//!   reported (the reaper terminates orphans when asked).
//!
//! Two snapshots at once never double count: they take a lock, and each writes in one
//! transaction whose updates depend only on the state they read. The state grows with instances
//! and intervals, never with the number of snapshots: a snapshot writes one meta row, not a row
//! of its own.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cluster::provider::{Instance, Provider, Selector};
use crate::cluster::{Ctx, orphans};
use crate::core::error::Error;
use crate::core::model::Millis;
use crate::store::{ClusterRow, Observation};

/// The interval cron runs snapshots at: a missed end is estimated at the last sighting plus
/// at most this much (`store::written_off_end`, the one rule for every write-off).
pub const DEFAULT_INTERVAL: Millis = crate::core::model::SNAPSHOT_INTERVAL;

/// What one snapshot found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub at: Millis,
    /// Instances of this store the provider listed.
    pub seen: usize,
    /// Intervals that ended (observed).
    pub ended: usize,
    /// Instances gone without a sighting of their end, closed as estimated.
    pub missing: Vec<String>,
    /// Instances no row knew, now recorded (and reported: left running).
    pub orphans: Vec<String>,
    /// Orphans recorded and terminated first, where the policy's `[reaper] orphans` says so.
    #[serde(default)]
    pub orphans_terminated: Vec<String>,
    /// Clusters (`owner/name`) whose every instance ended outside stratus, now settled as
    /// terminated with their quota released.
    #[serde(default)]
    pub settled: Vec<String>,
}

/// Takes one snapshot of `provider`'s instances of this store, now.
pub async fn snapshot<P: Provider>(ctx: Ctx<'_>, provider: &P) -> Result<SnapshotReport, Error> {
    // One snapshot at a time: the lock is held until this one's transaction is committed, and
    // the time is read once it is held, so a later snapshot never records an earlier time.
    let _lock = SnapshotLock::acquire(ctx.state_dir).await?;
    let now = crate::core::model::now_millis();
    // Every stratus instance, this store's picked out below: one launched before stores had
    // ids carries none, and is this store's by its request.
    let mut listed = Vec::new();
    for i in provider.describe(&Selector::default()).await? {
        if orphans::is_ours(ctx, &i)? {
            listed.push(i);
        }
    }
    let grace = crate::core::model::millis_of(provider.consistency_grace());
    let mut report = ingest(ctx, provider.kind(), grace, listed, now)?;
    let clusters: Vec<ClusterRow> = ctx
        .store
        .list_clusters(None)?
        .into_iter()
        .filter(|c| c.provider == provider.kind())
        .collect();
    report.settled = crate::cluster::observe::settle_ended_outside(ctx, &clusters, "snapshot")?
        .iter()
        .map(|c| crate::store::AuditRecord::cluster_of(c.owner.as_str(), c.name.as_str()))
        .collect();
    Ok(report)
}

/// Records what one describe of `kind` listed at `now` (the part of a snapshot that writes).
pub fn ingest(
    ctx: Ctx<'_>,
    kind: crate::core::model::ProviderKind,
    grace: Millis,
    listed: Vec<Instance>,
    now: Millis,
) -> Result<SnapshotReport, Error> {
    let listed: HashMap<String, Instance> = listed.into_iter().map(|i| (i.id.clone(), i)).collect();

    let mut report = SnapshotReport {
        at: now,
        seen: listed.len(),
        ..Default::default()
    };
    let mut observations = Vec::new();
    let open = ctx.store.open_nodes()?;
    let mut on_provider: HashMap<i64, bool> = HashMap::new();
    for n in &open {
        match listed.get(&n.instance_id) {
            Some(i) => {
                if i.state.is_gone() {
                    report.ended += 1;
                }
                observations.push(Observation::Seen {
                    instance_id: n.instance_id.clone(),
                    state: i.state,
                    address: i.address.clone(),
                    private_address: i.private_address.clone(),
                    at: now,
                });
            }
            None => {
                // Only this provider's nodes can be missing from its answer.
                let on_this = match on_provider.get(&n.cluster_id) {
                    Some(b) => *b,
                    None => {
                        let b = ctx
                            .store
                            .cluster_by_id(n.cluster_id)?
                            .is_some_and(|c| c.provider == kind);
                        on_provider.insert(n.cluster_id, b);
                        b
                    }
                };
                if on_this && now - n.launched_at > grace {
                    observations.push(Observation::Vanished {
                        instance_id: n.instance_id.clone(),
                        at: now,
                    });
                    report.missing.push(n.instance_id.clone());
                }
            }
        }
    }
    // Orphans: listed, this store's, unknown, and not being recorded by a live launcher. The
    // open nodes matched above are known: no need to ask the store about them one by one.
    let open_ids: std::collections::HashSet<&str> =
        open.iter().map(|n| n.instance_id.as_str()).collect();
    let mut found: Vec<(ClusterRow, Instance)> = Vec::new();
    for i in listed
        .values()
        .filter(|i| !open_ids.contains(i.id.as_str()))
    {
        if orphans::is_orphan(ctx, i, now, grace)? {
            report.orphans.push(i.id.clone());
            found.push((orphans::cluster_for(ctx, i, kind)?, i.clone()));
        }
    }
    ctx.store.observe_with(&observations, 0, |tx| {
        for (cluster, i) in &found {
            crate::store::insert_orphan(tx, cluster, &orphans::row_for(cluster, i))?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_snapshot_at', ?1)",
            rusqlite::params![now.to_string()],
        )?;
        Ok(())
    })?;
    Ok(report)
}

/// Serialises snapshots: a POSIX lock on `<state>/accounting.lock`, waited for.
struct SnapshotLock {
    _file: std::fs::File,
}

impl SnapshotLock {
    async fn acquire(state_dir: &std::path::Path) -> Result<Self, Error> {
        let file = crate::cluster::locks::open_lock_file(&state_dir.join("accounting.lock"))?;
        let file =
            tokio::task::spawn_blocking(move || crate::sys::lock_file_wait(&file).map(|()| file))
                .await
                .map_err(|e| {
                    Error::runtime(format!("waiting for the snapshot lock failed: {e}"))
                })??;
        Ok(Self { _file: file })
    }
}
