//! Reconcile and delete-cluster: finding what a crash, a SIGKILL or an interrupted command left
//! behind, by comparing the store's rows with what the provider holds under stratus's tags, and
//! finishing or undoing it (docs/architecture.md, "A launch is a state machine").
//!
//! What it does, by what it finds:
//! - a cluster `terminating` whose terminate is not running any more: the terminate is finished;
//! - a launch in `reserved`, `requested` or `running` (configuring) whose process died (its
//!   request lock is free), or stuck in `reserved` or `requested` longer than any launch takes:
//!   rolled back, as a failed launch would be (everything of its request terminated, the
//!   cluster's resources released, the row failed);
//! - a `failed` launch whose rollback did not get through: the rollback is finished;
//! - a launch call whose launcher died before recording what it created: the instances of its
//!   request that no row knows are recorded and terminated;
//! - an instance the provider reports live that the store holds as ended: its usage is reopened,
//!   and it is terminated;
//! - an instance of this store that no row knows, once its launcher is gone (or, without a lock
//!   to tell, once it is older than a grace period): recorded as an orphan, with its hours, under
//!   the cluster its tags name, and terminated;
//! - per-cluster resources (EC2 security groups and key pairs) of a cluster with no live row and
//!   no live instance: released.
//!
//! It acts only on what carries this store's id (`stratus:store`). Resources of the same owner
//! from another state directory are reported as foreign and never touched.
//!
//! The plan is made first and then carried out, so `--dry-run` lists exactly what a real run
//! does, in the conditional.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cluster::Ctx;
use crate::cluster::locks::{LaunchLock, Launcher, TerminateLock};
use crate::cluster::meta::cluster_ref;
use crate::cluster::orphans;
use crate::cluster::provider::{ClusterRef, Instance, Provider, Selector};
use crate::cluster::terminate::{
    adopt, cluster_selector, finish_rollback, live_nodes, request_selector, terminate,
    terminate_ids,
};
use crate::core::error::Error;
use crate::core::model::millis_of as ms;
use crate::core::model::{
    ClusterName, ClusterState, Millis, Owner, RequestId, StoreId, now_millis,
};
use crate::store::{BatchRow, ClusterRow};

/// What reconcile may do, and how long it leaves things to the command that may still be
/// working on them.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only report what would be done.
    pub dry_run: bool,
    /// An instance no row knows is left alone this long when no lock tells whether its
    /// launcher lives: it may be about to record it.
    pub orphan_grace: Duration,
    /// A launch counts as abandoned after this long in `reserved` or `requested`; by default,
    /// every round of waiting its profile allows plus half an hour.
    pub stuck_after: Option<Duration>,
    /// Whether orphans are recorded and terminated here (by hand, and where the policy's
    /// `[reaper] orphans` says `terminate`), or left to the snapshot to record and report.
    pub terminate_orphans: bool,
}

impl Options {
    pub fn new(dry_run: bool) -> Self {
        Self {
            dry_run,
            orphan_grace: Duration::from_secs(10 * 60),
            stuck_after: None,
            terminate_orphans: true,
        }
    }
}

/// One thing reconcile did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    pub cluster: String,
    /// `roll-back`, `finish-terminate`, `finish-rollback`, `record-strays`, `reopen`,
    /// `orphans`, `release`, `foreign`, `tidy`.
    pub action: String,
    /// What it is, said in the mood of the run ("would terminate …" in a dry run).
    pub what: String,
    /// The instances concerned.
    pub instances: Vec<String>,
}

/// A step of the plan.
///
/// The steps that end a cluster's nodes carry the ids of the nodes the store holds as live when
/// the plan is made, so a dry run names the instances the real run terminates.
enum Step {
    RollBack(ClusterRow, String, Vec<String>),
    FinishTerminate(ClusterRow, Vec<String>),
    FinishRollback(ClusterRow, Vec<String>),
    /// Instances of unfinished launch calls no row knows, and the calls that are settled.
    Strays {
        cluster: ClusterRow,
        request: RequestId,
        found: Vec<Instance>,
        settle: Vec<String>,
    },
    Reopen(ClusterRow, Vec<Instance>),
    Orphans(ClusterName, Vec<Instance>),
    Release(ClusterRef),
    Foreign(Owner, ClusterName, StoreId, Vec<String>, usize),
    Tidy(Vec<String>),
}

impl Step {
    fn action(&self, dry_run: bool) -> Action {
        Action {
            cluster: self.cluster(),
            action: self.kind().into(),
            what: self.what(dry_run),
            instances: self.instances(),
        }
    }

    fn cluster(&self) -> String {
        match self {
            Step::RollBack(c, ..)
            | Step::FinishTerminate(c, _)
            | Step::FinishRollback(c, _)
            | Step::Strays { cluster: c, .. }
            | Step::Reopen(c, _) => c.name.to_string(),
            Step::Orphans(name, _) | Step::Foreign(_, name, ..) => name.to_string(),
            Step::Release(c) => c.name.to_string(),
            Step::Tidy(_) => String::new(),
        }
    }

    /// Whose cluster the step is about, where that is known.
    fn owner(&self) -> Option<String> {
        match self {
            Step::RollBack(c, ..)
            | Step::FinishTerminate(c, _)
            | Step::FinishRollback(c, _)
            | Step::Strays { cluster: c, .. }
            | Step::Reopen(c, _) => Some(c.owner.to_string()),
            Step::Orphans(_, found) => found
                .first()
                .and_then(|i| i.tags.as_ref())
                .map(|t| t.owner.to_string()),
            Step::Release(c) => Some(c.owner.to_string()),
            Step::Foreign(owner, ..) => Some(owner.to_string()),
            Step::Tidy(_) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Step::RollBack(..) => "roll-back",
            Step::FinishTerminate(..) => "finish-terminate",
            Step::FinishRollback(..) => "finish-rollback",
            Step::Strays { .. } => "record-strays",
            Step::Reopen(..) => "reopen",
            Step::Orphans(..) => "orphans",
            Step::Release(_) => "release",
            Step::Foreign(..) => "foreign",
            Step::Tidy(_) => "tidy",
        }
    }

    fn instances(&self) -> Vec<String> {
        let ids = |v: &[Instance]| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        match self {
            Step::RollBack(_, _, live)
            | Step::FinishTerminate(_, live)
            | Step::FinishRollback(_, live) => live.clone(),
            Step::Strays { found, .. } | Step::Reopen(_, found) | Step::Orphans(_, found) => {
                ids(found)
            }
            Step::Release(_) => Vec::new(),
            Step::Foreign(_, _, _, instances, _) => instances.clone(),
            Step::Tidy(dirs) => dirs.clone(),
        }
    }

    /// What the step is, said in the mood of the run ("would terminate …" in a dry run).
    fn what(&self, dry_run: bool) -> String {
        let would = |now: &str, then: &str| {
            if dry_run {
                format!("would {now}")
            } else {
                then.to_owned()
            }
        };
        match self {
            Step::RollBack(c, why, _) => format!(
                "{} ({why})",
                would(
                    &format!("roll back the launch left in state {}", c.state.as_str()),
                    &format!("rolled back the launch left in state {}", c.state.as_str())
                )
            ),
            Step::FinishTerminate(..) => would(
                "finish an interrupted terminate",
                "finished an interrupted terminate",
            ),
            Step::FinishRollback(..) => would(
                "finish rolling back a failed launch",
                "finished rolling back a failed launch",
            ),
            Step::Strays {
                request,
                found,
                settle,
                ..
            } => {
                if found.is_empty() {
                    let n = settle.len();
                    would(
                        &format!(
                            "close {n} launch call(s) of {request} that created nothing unrecorded"
                        ),
                        &format!(
                            "closed {n} launch call(s) of {request} that created nothing unrecorded"
                        ),
                    )
                } else {
                    let n = found.len();
                    would(
                        &format!(
                            "record and terminate {n} instance(s) that an interrupted launch call of {request} created"
                        ),
                        &format!(
                            "recorded and terminated {n} instance(s) that an interrupted launch call of {request} created"
                        ),
                    )
                }
            }
            Step::Reopen(_, found) => {
                let n = found.len();
                would(
                    &format!(
                        "terminate {n} instance(s) recorded as ended that still run, counting their hours until they end"
                    ),
                    &format!(
                        "terminated {n} instance(s) recorded as ended that still ran, counting their hours until they ended"
                    ),
                )
            }
            Step::Orphans(_, found) => {
                let n = found.len();
                would(
                    &format!("record and terminate {n} instance(s) no record knows"),
                    &format!("recorded and terminated {n} instance(s) no record knew"),
                )
            }
            Step::Release(_) => would(
                "release the resources of a cluster that is gone",
                "released the resources of a cluster that is gone",
            ),
            Step::Foreign(owner, name, store, instances, resources) => format!(
                "left alone: {} instance(s) and {resources} other resource(s) of {owner}'s cluster {name} in another state directory (store {store})",
                instances.len()
            ),
            Step::Tidy(dirs) => would(
                &format!("remove {} half-made node directorie(s)", dirs.len()),
                &format!("removed {} half-made node directorie(s)", dirs.len()),
            ),
        }
    }
}

/// How long a launch may stay in `reserved` or `requested` before it counts as abandoned: every
/// round of waiting the profile allows (the first and each replacement: boot, SSH and the
/// install), plus a margin.
fn stuck_after_ms(c: &ClusterRow) -> Millis {
    let p = &c.record.profile;
    let rounds = u64::from(p.max_replacements) + 1;
    let round = p
        .ready_timeout_secs
        .saturating_add(p.boot_timeout_secs.unwrap_or(0));
    let secs = 30 * 60 + rounds.saturating_mul(round);
    Millis::try_from(secs.saturating_mul(1000)).unwrap_or(Millis::MAX)
}

/// Brings the clusters of `owner` (every owner's with `None`) on `provider` in line with what
/// the provider holds. Returns what it did, or would do.
pub async fn reconcile<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    owner: Option<&Owner>,
    options: &Options,
) -> Result<Vec<Action>, Error> {
    let plan = plan(ctx, provider, owner, options).await?;
    let mut actions = Vec::new();
    let mut failed: Option<Error> = None;
    for step in plan {
        let action = step.action(options.dry_run);
        let owner_of = step.owner();
        // One step that fails (a cloud call refused) does not keep the others from being done;
        // the next reconcile tries it again.
        if !options.dry_run
            && let Err(e) = carry_out(ctx, provider, step).await
        {
            ctx.printer.warn(format!(
                "{}: could not {}: {}",
                action.cluster,
                action.action,
                crate::core::error::one_line(&e)
            ));
            failed.get_or_insert(e);
            continue;
        }
        ctx.printer.status(format!(
            "{}{}",
            if action.cluster.is_empty() {
                String::new()
            } else {
                format!("{}: ", action.cluster)
            },
            action.what
        ));
        if !options.dry_run {
            audit(ctx, &action, owner_of.as_deref());
        }
        actions.push(action);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(actions),
    }
}

/// Each thing reconcile did to a cluster (a rollback, a terminate finished, instances recorded
/// or ended, resources released) is a row of the audit trail. What it leaves alone is not.
fn audit(ctx: Ctx<'_>, action: &Action, owner: Option<&str>) {
    if matches!(action.action.as_str(), "foreign" | "tidy") {
        return;
    }
    let record = crate::store::AuditRecord {
        at: String::new(),
        user: "reconcile".into(),
        action: format!("reconcile-{}", action.action),
        cluster: Some(match owner {
            Some(o) => crate::store::AuditRecord::cluster_of(o, &action.cluster),
            None => action.cluster.clone(),
        }),
        decision: "done".into(),
        reason: Some(action.what.clone()),
        instances: action.instances.clone(),
    };
    if let Err(e) = ctx.store.audit(&record, now_millis()) {
        tracing::error!("cannot write the audit trail: {e}");
    }
}

async fn plan<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    owner: Option<&Owner>,
    options: &Options,
) -> Result<Vec<Step>, Error> {
    let mut p = Planner {
        ctx,
        owner,
        options,
        now: now_millis(),
        grace: ms(provider.consistency_grace()),
        clusters: ctx
            .store
            .list_clusters(owner)?
            .into_iter()
            .filter(|c| c.provider == provider.kind())
            .collect(),
        steps: Vec::new(),
        handled: BTreeSet::new(),
        claimed: BTreeSet::new(),
    };
    p.rows()?;
    p.strays(provider).await?;
    let tagged = provider
        .describe(&Selector {
            owner: owner.cloned(),
            ..Default::default()
        })
        .await?;
    let foreign = p.instances(&tagged)?;
    p.resources(provider, &tagged, foreign).await?;
    let half_made = provider.half_made(options.orphan_grace).await?;
    if !half_made.is_empty() {
        p.steps.push(Step::Tidy(half_made));
    }
    Ok(p.steps)
}

/// Instances of the same owner from another state directory, by cluster and store.
type Foreign = BTreeMap<(Owner, ClusterName, StoreId), Vec<String>>;

/// A plan in the making: the clusters it looks at, and what its phases found so far.
struct Planner<'a> {
    ctx: Ctx<'a>,
    owner: Option<&'a Owner>,
    options: &'a Options,
    now: Millis,
    grace: Millis,
    clusters: Vec<ClusterRow>,
    steps: Vec<Step>,
    /// Clusters a step already takes care of, with all their instances.
    handled: BTreeSet<i64>,
    /// Instances a step already takes care of.
    claimed: BTreeSet<String>,
}

impl Planner<'_> {
    /// Rows: interrupted terminates are finished, abandoned launches rolled back, failed
    /// rollbacks finished.
    fn rows(&mut self) -> Result<(), Error> {
        let ctx = self.ctx;
        for c in &self.clusters {
            // Read only for the few rows a step may concern, not for every cluster ever made.
            let live = || -> Result<Vec<String>, Error> {
                Ok(live_nodes(ctx, c)?
                    .into_iter()
                    .map(|n| n.instance_id)
                    .collect())
            };
            let step = match c.state {
                ClusterState::Terminating if !TerminateLock::is_held(ctx.state_dir, c.id) => {
                    Some(Step::FinishTerminate(c.clone(), live()?))
                }
                ClusterState::Reserved | ClusterState::Requested | ClusterState::Running => self
                    .abandoned(c)?
                    .map(|why| -> Result<Step, Error> {
                        Ok(Step::RollBack(c.clone(), why, live()?))
                    })
                    .transpose()?,
                // A launch that failed, and whose rollback did not get through (the cloud
                // refused or timed out): no process works on a failed cluster, so finish it.
                ClusterState::Failed => {
                    let live = live()?;
                    (!live.is_empty()).then(|| Step::FinishRollback(c.clone(), live))
                }
                _ => None,
            };
            if let Some(s) = step {
                self.handled.insert(c.id);
                self.steps.push(s);
            }
        }
        Ok(())
    }

    /// Why a launch in progress counts as abandoned, if it does: its launcher died, or it has
    /// been stuck in `reserved` or `requested` longer than any launch takes.
    fn abandoned(&self, c: &ClusterRow) -> Result<Option<String>, Error> {
        let ctx = self.ctx;
        let age = self.now - c.updated_at;
        let launcher = LaunchLock::launcher(ctx.state_dir, &c.request_id);
        if launcher == Launcher::Died && launcher_died(ctx, c)? {
            return Ok(Some("its launcher died".to_owned()));
        }
        let stuck_after = self
            .options
            .stuck_after
            .map(ms)
            .unwrap_or_else(|| stuck_after_ms(c));
        Ok(
            (c.state != ClusterState::Running
                && launcher != Launcher::Running
                && age > stuck_after)
                .then(|| format!("abandoned for {} minutes", age / 60_000)),
        )
    }

    /// Launch calls whose launcher is gone, and what they created that no row knows.
    async fn strays<P: Provider>(&mut self, provider: &P) -> Result<(), Error> {
        let ctx = self.ctx;
        let by_id: BTreeMap<i64, &ClusterRow> = self.clusters.iter().map(|c| (c.id, c)).collect();
        let mut batches: BTreeMap<String, Vec<BatchRow>> = BTreeMap::new();
        for b in ctx.store.pending_batches()? {
            if by_id.contains_key(&b.cluster_id) {
                batches.entry(b.request_id.clone()).or_default().push(b);
            }
        }
        for (request, rows) in batches {
            let request = RequestId::from_stored(request);
            if LaunchLock::launcher(ctx.state_dir, &request) == Launcher::Running {
                continue;
            }
            let cluster = by_id[&rows[0].cluster_id];
            let found: Vec<Instance> = provider
                .describe(&request_selector(ctx, cluster, &request))
                .await?
                .into_iter()
                .filter(|i| !i.state.is_gone())
                .filter(|i| !ctx.store.knows_instance(&i.id).unwrap_or(true))
                .collect();
            // A call is closed once nothing unrecorded of it is found after EC2 has had time
            // to show it.
            let settle: Vec<String> = if found.is_empty() {
                rows.iter()
                    .filter(|b| self.now - b.created_at > self.grace)
                    .map(|b| b.token.clone())
                    .collect()
            } else {
                Vec::new()
            };
            if found.is_empty() && settle.is_empty() {
                continue;
            }
            self.claimed.extend(found.iter().map(|i| i.id.clone()));
            self.steps.push(Step::Strays {
                cluster: cluster.clone(),
                request,
                found,
                settle,
            });
        }
        Ok(())
    }

    /// Instances: this store's live ones that no row knows (orphans), or that a row holds as
    /// ended (reopened). Returns those of other stores.
    fn instances(&mut self, tagged: &[Instance]) -> Result<Foreign, Error> {
        let ctx = self.ctx;
        let mut orphans: BTreeMap<(Owner, ClusterName), Vec<Instance>> = BTreeMap::new();
        let mut reopen: BTreeMap<i64, Vec<Instance>> = BTreeMap::new();
        let mut foreign: Foreign = BTreeMap::new();
        for i in tagged {
            let Some(tags) = &i.tags else { continue };
            if i.state.is_gone() || self.claimed.contains(&i.id) {
                continue;
            }
            if !orphans::is_ours(ctx, i)? {
                if let Some(store) = &tags.store {
                    foreign
                        .entry((tags.owner.clone(), tags.cluster.clone(), store.clone()))
                        .or_default()
                        .push(i.id.clone());
                }
                continue;
            }
            match ctx.store.node(&i.id)? {
                Some(n) if n.state.is_gone() || n.ended_at.is_some() => {
                    if !self.handled.contains(&n.cluster_id) {
                        reopen.entry(n.cluster_id).or_default().push(i.clone());
                    }
                }
                Some(_) => {
                    // Recorded as an orphan by a snapshot that only reports them.
                    if self.options.terminate_orphans && ctx.store.is_open_orphan(&i.id)? {
                        orphans
                            .entry((tags.owner.clone(), tags.cluster.clone()))
                            .or_default()
                            .push(i.clone());
                    }
                }
                None => {
                    // A launch (or launch-slaves) in progress records its nodes right after its
                    // call returns: leave its instances alone while its launcher lives. Without
                    // terminating them, orphans are the snapshot's to record and report.
                    if self.options.terminate_orphans
                        && orphans::is_orphan(ctx, i, self.now, ms(self.options.orphan_grace))?
                    {
                        orphans
                            .entry((tags.owner.clone(), tags.cluster.clone()))
                            .or_default()
                            .push(i.clone());
                    }
                }
            }
        }
        for (cluster_id, found) in reopen {
            if let Some(c) = ctx.store.cluster_by_id(cluster_id)? {
                self.steps.push(Step::Reopen(c, found));
            }
        }
        for ((_, name), found) in orphans {
            self.steps.push(Step::Orphans(name, found));
        }
        Ok(foreign)
    }

    /// Per-cluster resources of clusters that are gone, released; and what belongs to other
    /// stores, reported. Listed first, the rows read after: a launch records its row before it
    /// creates its group and key pair, so whatever is listed here and belongs to a launch in
    /// progress has its live row read below.
    async fn resources<P: Provider>(
        &mut self,
        provider: &P,
        tagged: &[Instance],
        mut foreign: Foreign,
    ) -> Result<(), Error> {
        let ctx = self.ctx;
        let resources = provider
            .cluster_resources(&Selector {
                owner: self.owner.cloned(),
                ..Default::default()
            })
            .await?;
        let live_names: BTreeSet<(Owner, ClusterName)> = ctx
            .store
            .list_clusters(self.owner)?
            .into_iter()
            .filter(|c| c.state.is_live() || self.handled.contains(&c.id))
            .map(|c| (c.owner, c.name))
            .collect();
        let still_running: BTreeSet<(Owner, ClusterName)> = tagged
            .iter()
            .filter(|i| !i.state.is_gone())
            .filter_map(|i| {
                i.tags
                    .as_ref()
                    .map(|t| (t.owner.clone(), t.cluster.clone()))
            })
            .collect();
        let mut foreign_resources: BTreeMap<(Owner, ClusterName, StoreId), usize> = BTreeMap::new();
        let mut released: BTreeSet<(Owner, ClusterName)> = BTreeSet::new();
        for t in resources {
            let key = (t.owner.clone(), t.cluster.clone());
            let mine = match &t.store {
                Some(s) => s == ctx.store.id(),
                None => ctx.store.knows_request(t.request.as_str())?,
            };
            if !mine {
                if let Some(s) = t.store {
                    *foreign_resources
                        .entry((t.owner, t.cluster, s))
                        .or_default() += 1;
                }
                continue;
            }
            if live_names.contains(&key) || still_running.contains(&key) || !released.insert(key) {
                continue;
            }
            self.steps.push(Step::Release(ClusterRef {
                owner: t.owner,
                name: t.cluster,
                profile: t.profile,
                request: t.request,
                store: ctx.store.id().clone(),
                // Found by its tags: a release looks under every scheme's names.
                naming: crate::core::model::Naming::for_new_clusters(),
            }));
        }
        let mut keys: BTreeSet<(Owner, ClusterName, StoreId)> = foreign.keys().cloned().collect();
        keys.extend(foreign_resources.keys().cloned());
        for k in keys {
            let instances = foreign.remove(&k).unwrap_or_default();
            let resources = foreign_resources.get(&k).copied().unwrap_or(0);
            self.steps
                .push(Step::Foreign(k.0, k.1, k.2, instances, resources));
        }
        Ok(())
    }
}

async fn carry_out<P: Provider>(ctx: Ctx<'_>, provider: &P, step: Step) -> Result<(), Error> {
    match step {
        Step::FinishTerminate(c, _) => {
            terminate(ctx, provider, &c).await?;
        }
        Step::RollBack(c, why, _) => {
            let was = c.state;
            finish_rollback(ctx, provider, &c).await?;
            ctx.store.transition(
                c.id,
                &[was],
                ClusterState::Failed,
                Some(&format!(
                    "the launch was abandoned in state {} ({why}); rolled back by `stratus reconcile`",
                    was.as_str()
                )),
            )?;
            LaunchLock::clear(ctx.state_dir, &c.request_id);
        }
        Step::FinishRollback(c, _) => {
            finish_rollback(ctx, provider, &c).await?;
        }
        Step::Strays {
            cluster,
            request,
            found,
            settle,
        } => {
            let ids: BTreeSet<String> = adopt(ctx, &cluster, &found, false)?.into_iter().collect();
            terminate_ids(
                ctx,
                provider,
                &ids,
                &request_selector(ctx, &cluster, &request),
            )
            .await?;
            for token in settle {
                ctx.store.settle_batch(&token)?;
            }
            LaunchLock::clear(ctx.state_dir, &request);
        }
        Step::Reopen(c, found) => {
            let now = now_millis();
            for i in &found {
                ctx.store.reopen_node(&i.id, i.state, now)?;
            }
            let ids: BTreeSet<String> = found.into_iter().map(|i| i.id).collect();
            terminate_ids(ctx, provider, &ids, &cluster_selector(ctx, &c)).await?;
        }
        Step::Orphans(_, found) => {
            // Each into the record of the request that launched it (never a live cluster that
            // only shares its name), then terminated.
            let mut by_cluster: BTreeMap<i64, (ClusterRow, BTreeSet<String>)> = BTreeMap::new();
            for i in &found {
                let cluster = orphans::record_of(ctx, i, provider.kind())?;
                ctx.store
                    .record_orphan(&cluster, &orphans::row_for(&cluster, i))?;
                if let Some(t) = &i.tags {
                    LaunchLock::clear(ctx.state_dir, &t.request);
                }
                by_cluster
                    .entry(cluster.id)
                    .or_insert_with(|| (cluster, BTreeSet::new()))
                    .1
                    .insert(i.id.clone());
            }
            for (cluster, ids) in by_cluster.values() {
                terminate_ids(ctx, provider, ids, &cluster_selector(ctx, cluster)).await?;
            }
        }
        Step::Release(c) => provider.release(&c).await?,
        Step::Foreign(..) => {}
        Step::Tidy(dirs) => provider.remove_half_made(&dirs).await?,
    }
    Ok(())
}

/// Whether the process that was launching `c` died: its request's lock is free, and the row,
/// read again after that (a launcher updates the row before it lets go of the lock), is still
/// where the launch left it.
fn launcher_died(ctx: Ctx<'_>, c: &ClusterRow) -> Result<bool, Error> {
    if LaunchLock::launcher(ctx.state_dir, &c.request_id) != Launcher::Died {
        return Ok(false);
    }
    Ok(ctx.store.cluster_state(c.id)? == Some(c.state))
}

/// What `delete-cluster` removed.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    pub instances: Vec<String>,
}

/// Removes everything of this store tagged with `owner`'s cluster `name`: instances (recorded
/// if unknown, terminated, waited for), then its per-cluster resources, and takes the ended
/// cluster off the list (its usage stays). Refuses a cluster the store holds as live: that is
/// `terminate-cluster`'s job.
pub async fn delete_cluster<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
) -> Result<Deleted, Error> {
    if cluster.state.is_live() {
        return Err(Error::invalid(format!(
            "cluster {} is {}; use `stratus terminate-cluster {}`",
            cluster.name,
            cluster.state.as_str(),
            cluster.name
        )));
    }
    // Held while it works, like a terminate: two deletes, or a delete and a terminate that
    // still finishes this row, never act at once; and its lock file is unlinked while held.
    let _lock = TerminateLock::acquire(ctx.state_dir, cluster.id)?;
    let selector = cluster_selector(ctx, cluster);
    let tagged = provider.describe(&selector).await?;
    let mut ids: BTreeSet<String> = adopt(ctx, cluster, &tagged, true)?.into_iter().collect();
    ids.extend(live_nodes(ctx, cluster)?.into_iter().map(|n| n.instance_id));
    terminate_ids(ctx, provider, &ids, &selector).await?;
    let name_taken = ctx
        .store
        .find_cluster(&cluster.owner, &cluster.name)?
        .is_some_and(|c| c.id != cluster.id && c.state.is_live());
    if !name_taken {
        provider
            .release(&cluster_ref(cluster, ctx.store.id()))
            .await?;
    }
    ctx.store.hide_cluster(cluster.id)?;
    // Its key (useless now that its key pair and instances are gone) and its lock files go too;
    // the usage stays in the database.
    let keys = crate::cluster::keys::ClusterKeys::of(ctx.state_dir, cluster);
    if let Err(e) = std::fs::remove_dir_all(&keys.dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", keys.dir.display());
    }
    crate::cluster::locks::remove_cluster_locks(ctx.state_dir, cluster.id);
    Ok(Deleted {
        instances: ids.into_iter().collect(),
    })
}
