//! Bringing nodes up, in rounds: each round makes the launch calls (each written down first),
//! records what they created, then waits (`waits`): for the nodes to run, to answer SSH with
//! their host keys pinned, and, where the profile says so, to finish their install. Failed
//! nodes are terminated at the end of their round; failed workers are replaced in the next one,
//! while the profile allows.

use std::collections::BTreeSet;

use crate::cluster::Ctx;
use crate::cluster::interrupt::Interrupt;
use crate::cluster::journal::BatchJournal;
use crate::cluster::meta::{Meta, Want, cluster_ref, node_row};
use crate::cluster::progress::Progress;
use crate::cluster::provider::{BatchSpec, Launched, Provider, SshAccess};
use crate::cluster::ssh::Client;
use crate::cluster::terminate::{request_selector, terminate_ids};
use crate::cluster::waits;
use crate::core::error::{Error, one_line};
use crate::core::model::{ClusterState, Role, node_name, now_millis};
use crate::store::{BatchRow, ClusterRow, NodeRow, Recorded};
use crate::templates::Renderer;

/// What one request's nodes are brought up with.
pub(crate) struct Batch<'a, P> {
    pub ctx: Ctx<'a>,
    pub provider: &'a P,
    pub interrupt: &'a Interrupt,
    pub cluster: &'a ClusterRow,
    pub access: &'a SshAccess,
    pub client: &'a Client,
    pub meta: &'a Meta<'a>,
    pub renderer: &'a Renderer,
    /// The cluster states in which this request's nodes are wanted.
    pub accepting: &'static [ClusterState],
    /// Wait for SSH too (not with `--no-configure`).
    pub ssh: bool,
}

impl<P> Batch<'_, P> {
    pub fn name(&self, row: &NodeRow) -> String {
        node_name(&self.cluster.name, row.role, row.index)
    }
}

/// Why nodes did not come up.
#[derive(Debug)]
pub(crate) struct Failure {
    pub role: Role,
    /// How many nodes this stands for (a launch call that created fewer than asked).
    pub nodes: u32,
    pub message: String,
}

impl Failure {
    pub fn of(row: &NodeRow, message: String) -> Self {
        Self {
            role: row.role,
            nodes: 1,
            message,
        }
    }

    fn source(&self) -> Box<std::io::Error> {
        Box::new(std::io::Error::other(self.message.clone()))
    }
}

/// What a round's waits found: the nodes that are up, the failures, and the instances to
/// terminate.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub up: Vec<NodeRow>,
    pub failed: Vec<Failure>,
    pub dead: BTreeSet<String>,
}

/// Launches `wants`, waits for them to run and (when `ssh` is set) to answer SSH and finish
/// their boot, replacing failed workers while the profile allows. Returns the nodes that are
/// up; an error if the master failed or fewer than `min_workers` workers are left.
pub(crate) async fn bring_up<P: Provider>(
    b: &Batch<'_, P>,
    wants: Vec<Want>,
) -> Result<Vec<NodeRow>, Error> {
    let workers =
        |w: &Vec<Want>| -> Option<Want> { w.iter().find(|w| w.role == Role::Worker).copied() };
    let wanted_workers = workers(&wants).map_or(0, |w| w.count);
    let min_workers = workers(&wants).map_or(0, |w| w.min_count);
    let mut replacements_left = b.meta.profile.max_replacements;
    let mut ready: Vec<NodeRow> = Vec::new();
    let mut first_failure: Option<Failure> = None;
    let progress = Progress::new(
        b.ctx.printer,
        b.cluster.name.as_str(),
        wants.iter().map(|w| u64::from(w.count)).sum(),
    );
    let mut next_index = wants
        .iter()
        .map(|w| w.first_index + w.count)
        .max()
        .unwrap_or(1);
    let mut pending = wants;
    for round in 0.. {
        let round_result = bring_up_once(b, &pending, round, &progress).await;
        let (up, failed) = match round_result {
            Ok(r) => r,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        ready.extend(up);
        if failed.is_empty() {
            break;
        }
        if let Some(f) = failed.iter().find(|f| f.role == Role::Master) {
            progress.finish();
            return Err(Error::runtime("the master did not come up").with_source(f.source()));
        }
        for f in &failed {
            b.ctx.printer.warn(&f.message);
        }
        let lost: u32 = failed.iter().map(|f| f.nodes).sum();
        if first_failure.is_none() {
            first_failure = failed.into_iter().next();
        }
        // Replace as many as the profile still allows; the rest stay lost.
        let replace = lost.min(replacements_left);
        if replace == 0 {
            break;
        }
        replacements_left -= replace;
        b.ctx
            .printer
            .status(format!("replacing {replace} failed worker(s)"));
        pending = vec![Want {
            role: Role::Worker,
            first_index: next_index,
            count: replace,
            min_count: 1,
        }];
        next_index += replace;
        progress.more(u64::from(replace));
    }
    progress.finish();
    let up_workers = ready.iter().filter(|n| n.role == Role::Worker).count() as u32;
    if up_workers < min_workers {
        let f = first_failure.unwrap_or(Failure {
            role: Role::Worker,
            nodes: 1,
            message: "a worker failed".into(),
        });
        return Err(Error::runtime(format!(
            "only {up_workers} of {wanted_workers} workers are up (at least {min_workers} needed)"
        ))
        .with_source(f.source()));
    }
    if up_workers < wanted_workers {
        b.ctx.printer.warn(format!(
            "continuing with {up_workers} of {wanted_workers} workers (min_workers = {min_workers})"
        ));
    }
    Ok(ready)
}

/// One round: the launch calls, then the waits. Failed nodes are terminated before it returns.
async fn bring_up_once<P: Provider>(
    b: &Batch<'_, P>,
    wants: &[Want],
    round: u32,
    progress: &Progress<'_>,
) -> Result<(Vec<NodeRow>, Vec<Failure>), Error> {
    progress.phase("launching", wants.iter().map(|w| w.count as usize).sum());
    let calls = launch_calls(b, wants, round).await?;
    let (nodes, mut failed) = record_calls(b, calls, progress).await?;

    let selector = request_selector(b.ctx, b.cluster, b.meta.request);
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(b.meta.profile.ready_timeout_secs);
    let running = waits::running(b, &selector, nodes, deadline, progress).await?;
    let mut outcome = Outcome {
        up: Vec::new(),
        failed: running.failed,
        dead: running.dead,
    };
    // A node that presented another key than the one pinned: the whole launch fails.
    let mut intercepted = None;
    if b.ssh && !running.up.is_empty() {
        let ssh = waits::ssh(b, &selector, running.up, deadline, progress).await?;
        intercepted = ssh.intercepted;
        outcome.failed.extend(ssh.outcome.failed);
        outcome.dead.extend(ssh.outcome.dead);
        match b.meta.profile.boot_timeout_secs {
            Some(secs) if !ssh.outcome.up.is_empty() && intercepted.is_none() => {
                let boot = waits::boot(b, &selector, ssh.outcome.up, secs, progress).await?;
                outcome.up = boot.up;
                outcome.failed.extend(boot.failed);
                outcome.dead.extend(boot.dead);
            }
            _ => outcome.up = ssh.outcome.up,
        }
    } else {
        outcome.up = running.up;
    }

    // Failed nodes are terminated now, whatever happens next.
    if !outcome.dead.is_empty() {
        terminate_ids(b.ctx, b.provider, &outcome.dead, &selector).await?;
    }
    if let Some(message) = intercepted {
        // Not a node to replace: the path to the cloud is not to be trusted.
        return Err(Error::runtime(message));
    }
    failed.append(&mut outcome.failed);
    Ok((outcome.up, failed))
}

/// The launch calls of a round, each written down first, all made together. Not
/// interruptible: a call dropped mid-flight could create instances nobody records.
async fn launch_calls<P: Provider>(
    b: &Batch<'_, P>,
    wants: &[Want],
    round: u32,
) -> Result<Vec<(BatchSpec, Launched)>, Error> {
    let ctx = b.ctx;
    let cluster = b.cluster;
    let cref = cluster_ref(cluster, ctx.store.id());
    let mut specs = Vec::new();
    let mut journals = Vec::new();
    for w in wants {
        let spec = b.meta.batch(b.renderer, *w, round)?;
        let row = BatchRow {
            token: spec.client_token.clone(),
            cluster_id: cluster.id,
            request_id: b.meta.request.to_string(),
            role: spec.role,
            first_index: spec.first_index,
            count: spec.count,
            created_at: now_millis(),
            settled_at: None,
        };
        if let Err(state) = ctx.store.begin_batch(&row, b.accepting)? {
            return Err(Error::runtime(format!(
                "cluster {} is {}; no nodes are launched for it any more",
                cluster.name,
                state.map(|s| s.as_str()).unwrap_or("gone")
            )));
        }
        // Further calls of the batch (a provider's fallback) are written down the same way.
        journals.push(BatchJournal::new(ctx.store, row, b.accepting));
        specs.push(spec);
    }
    let results = futures_util::future::join_all(
        specs
            .iter()
            .zip(&journals)
            .map(|(spec, journal)| b.provider.launch(&cref, b.access, spec, journal)),
    )
    .await;
    Ok(specs.into_iter().zip(results).collect())
}

/// Records what every call created, before anything else. A recording that fails (a busy or
/// full disk) does not stop the others; what could not be recorded is terminated. Returns the
/// nodes recorded, and the calls that launched fewer than asked.
async fn record_calls<P: Provider>(
    b: &Batch<'_, P>,
    calls: Vec<(BatchSpec, Launched)>,
    progress: &Progress<'_>,
) -> Result<(Vec<NodeRow>, Vec<Failure>), Error> {
    let ctx = b.ctx;
    let cluster = b.cluster;
    let mut failed = Vec::new();
    let mut nodes: Vec<NodeRow> = Vec::new();
    let mut unrecorded: Vec<String> = Vec::new();
    let mut record_error: Option<Error> = None;
    let mut refused: Option<Error> = None;
    let mut moved_on: Option<Option<ClusterState>> = None;
    for (spec, launched) in calls {
        let rows: Vec<NodeRow> = launched
            .instances
            .iter()
            .enumerate()
            .map(|(k, inst)| {
                let index = spec.first_index + k as u32;
                node_row(cluster, b.meta.request.as_str(), spec.role, index, inst)
            })
            .collect();
        // A call that failed may still have created instances: its batch stays pending for
        // reconcile, so those are found even if no describe shows them yet.
        let settled = &launched.settled;
        if !rows.is_empty() || !settled.is_empty() {
            match ctx
                .store
                .record_launch(cluster, settled, &rows, b.accepting)
            {
                Ok(Recorded::Accepted) => {}
                Ok(Recorded::ClusterNotAccepting(state)) => moved_on = Some(state),
                Err(e) => {
                    unrecorded.extend(rows.iter().map(|r| r.instance_id.clone()));
                    record_error.get_or_insert(e.into());
                    continue;
                }
            }
        }
        progress.count(rows.len() as u64);
        for r in &rows {
            tracing::info!(node = %b.name(r), instance = %r.instance_id, "launched");
        }
        let missing = spec.count.saturating_sub(rows.len() as u32);
        nodes.extend(rows);
        let failure = |message| Failure {
            role: spec.role,
            nodes: missing,
            message,
        };
        match launched.error {
            // The request itself is wrong (an unknown image, say), or the account is at a
            // quota: no other node will do better. Stop, once what did launch is recorded for
            // the rollback.
            Some(e) if e.stops_launch() => refused = refused.or(Some(e.into())),
            Some(e) => failed.push(failure(format!("{}: {}", spec.name, one_line(&e)))),
            None if missing > 0 => failed.push(failure(format!(
                "{}: the provider launched {} of {} nodes",
                spec.name,
                spec.count - missing,
                spec.count
            ))),
            None => {}
        }
    }
    if let Some(e) = record_error {
        if !unrecorded.is_empty() {
            // Not recorded, so nothing else would ever terminate them.
            if let Err(t) = b.provider.terminate(&unrecorded).await {
                tracing::error!(instances = ?unrecorded, "cannot terminate unrecorded instances: {t}");
            }
        }
        return Err(e);
    }
    if let Some(state) = moved_on {
        return Err(Error::runtime(format!(
            "cluster {} became {} while nodes were launched for it; terminating them",
            cluster.name,
            state.map(|s| s.as_str()).unwrap_or("gone")
        )));
    }
    match refused {
        Some(e) => Err(e),
        None => Ok((nodes, failed)),
    }
}
