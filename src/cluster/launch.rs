//! Launching: a new cluster, or more workers for a live one. This is the one place that orders
//! the steps, and it only speaks to the `Provider` trait.
//!
//! A launch is a state machine kept in the store: reserved (the row, and the quota it takes,
//! written in one transaction; the cluster's group and key pair made) -> requested (the launch
//! calls, one per role) -> running (every node answers SSH) -> configured, or failed. Each
//! launch call is written down as a batch before it is made, and every instance it returns is
//! recorded, with an open usage interval, before anything else happens; instances of the
//! request that no call reported (a call that failed after all) are looked for and recorded too.
//! So a failure, an interrupt or a crash at any step leaves nothing that accounting and
//! rollback (or `reconcile`) cannot find.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::cluster::configure::{Step, configure};
use crate::cluster::interrupt::Interrupt;
use crate::cluster::journal::BatchJournal;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::locks::{GrowLock, LaunchLock};
use crate::cluster::meta::{Meta, Want, access, cluster_ref, node_row, target};
use crate::cluster::provider::{Instance, InstanceState, Provider, SshAccess};
use crate::cluster::ssh::{self, Client};
use crate::cluster::terminate::{adopt, live_nodes, request_selector, rollback, terminate_ids};
use crate::cluster::{Admit, Ctx};
use crate::config::profile::Profile;
use crate::core::error::{Error, InputError};
use crate::core::model::{
    ClusterName, ClusterState, Millis, Owner, ProviderKind, RequestId, Role, now_millis,
};
use crate::store::{
    BatchRow, ClusterRecord, ClusterRow, Created, NewCluster, NodeRow, Observation, Recorded,
};
use crate::templates::Renderer;

/// The state a launch records its nodes in.
const LAUNCHING: &[ClusterState] = &[ClusterState::Requested];
/// The states a cluster takes more workers in.
const UP: &[ClusterState] = &[ClusterState::Running, ClusterState::Configured];
/// How often a wait for SSH looks whether its nodes are still there.
const GONE_POLL: Duration = Duration::from_secs(2);
/// The longest pause between two reads of a node's console while its host keys are not there.
const CONSOLE_POLL: Duration = Duration::from_secs(5);

/// What `launch-cluster` and `launch-master` ask for, validated.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub name: ClusterName,
    pub workers: u32,
    pub profile: Profile,
    pub env: BTreeMap<String, String>,
    /// Configure the cluster (the profile's files and commands) once every node answers.
    pub configure: bool,
    /// Wait for every node to answer SSH, pinning its host key, even without configuring.
    pub wait_for_ssh: bool,
    /// Render the user-data for an image build (`cluster::image`): install only.
    pub image_build: bool,
}

/// Checks what a launch asks for against the profile and provider; nothing is created.
pub fn validate_request(
    profile: &Profile,
    provider: ProviderKind,
    workers: u32,
    existing_workers: u32,
) -> Result<(), Error> {
    if !profile.supports(provider) {
        let list: Vec<&str> = profile.providers.iter().map(|p| p.as_str()).collect();
        return Err(Error::invalid(format!(
            "profile {} runs on {}, but this site uses the {provider} provider",
            profile.name,
            list.join(", ")
        )));
    }
    if workers
        .checked_add(existing_workers)
        .is_none_or(|n| n > profile.max_workers)
    {
        return Err(Error::invalid(if existing_workers == 0 {
            format!(
                "{workers} workers is more than profile {} allows (max_workers = {})",
                profile.name, profile.max_workers
            )
        } else {
            format!(
                "adding {workers} workers to the {existing_workers} running would exceed profile {}'s max_workers = {}",
                profile.name, profile.max_workers
            )
        }));
    }
    Ok(())
}

/// Moves a launching cluster from one state to the next, unless something else (a terminate in
/// another process) moved it meanwhile: then the launch stops, and rolls back.
fn advance(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    from: ClusterState,
    to: ClusterState,
) -> Result<(), Error> {
    if ctx.store.transition(cluster.id, &[from], to, None)? {
        Ok(())
    } else {
        Err(Error::runtime(format!(
            "cluster {} changed state while it was being launched (terminated meanwhile?)",
            cluster.name
        )))
    }
}

/// Stops here for good, for tests that kill a launcher in a given state (debug builds only; see
/// `Ctx::pause_at`).
async fn pause_point(ctx: Ctx<'_>, state: ClusterState) {
    if ctx.pause_at == Some(state) {
        ctx.printer.status(format!(
            "pausing in state {} (STRATUS_TEST_PAUSE_AT)",
            state.as_str()
        ));
        std::future::pending::<()>().await;
    }
}

/// Launches a new cluster for `owner`: a master and `workers` workers, then (unless asked not
/// to) waits for SSH and configures it. `admission` checks and reserves quota in the transaction
/// that records the cluster. On any failure everything launched is terminated again.
pub async fn launch<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    owner: &Owner,
    request: &RequestId,
    req: LaunchRequest,
    admission: &dyn Admit,
) -> Result<ClusterRow, Error> {
    validate_request(&req.profile, provider.kind(), req.workers, 0)?;
    let interrupt = Interrupt::listen(ctx.hangup)?;
    let _lock = LaunchLock::acquire(ctx.state_dir, request)?;
    let meta = Meta {
        cluster: &req.name,
        owner,
        profile: &req.profile,
        env: &req.env,
        request,
        store: ctx.store.id(),
        image_build: req.image_build,
    };
    // Everything that can be checked without creating anything, first.
    let renderer = Renderer::for_profile(&req.profile)?;
    let mut wants = vec![Want {
        role: Role::Master,
        first_index: 0,
        count: 1,
        min_count: 1,
    }];
    if req.workers > 0 {
        let min = req
            .profile
            .min_workers
            .unwrap_or(req.workers)
            .min(req.workers);
        wants.push(Want {
            role: Role::Worker,
            first_index: 1,
            count: req.workers,
            min_count: min.max(1),
        });
    }
    for w in &wants {
        meta.batch(&renderer, *w, 0)?;
    }
    meta.check_configure_templates(&renderer)?;
    let key = ssh::generate_key()?;

    let record = ClusterRecord {
        profile: req.profile.clone(),
        env: req.env.clone(),
    };
    let new = NewCluster {
        name: &req.name,
        owner,
        provider: provider.kind(),
        request_id: request,
        record: &record,
    };
    let cluster = match ctx.store.create_cluster(&new, |tx, id| {
        admission.admit_launch(tx, id, &new, req.workers)
    })? {
        Created::Row(c) => c,
        Created::NameInUse => return Err(InputError::NameInUse(req.name.to_string()).into()),
        Created::Refused(refusal) => return Err(refusal),
    };
    tracing::info!(cluster = %cluster.name, request = %request, "launch reserved");

    let keys = ClusterKeys::of(ctx.state_dir, &cluster);
    let work = async {
        pause_point(ctx, ClusterState::Reserved).await;
        keys.create(&key)?;
        let access = access(&req.profile, &key);
        let client = Client::new(key.clone(), ctx.connect_timeout());
        provider
            .prepare(&cluster_ref(&cluster, ctx.store.id()), &access)
            .await?;
        interrupt.check()?;
        advance(
            ctx,
            &cluster,
            ClusterState::Reserved,
            ClusterState::Requested,
        )?;
        pause_point(ctx, ClusterState::Requested).await;
        let batch = Batch {
            ctx,
            provider,
            interrupt: &interrupt,
            cluster: &cluster,
            access: &access,
            client: &client,
            meta: &meta,
            renderer: &renderer,
            accepting: LAUNCHING,
            ssh: req.configure || req.wait_for_ssh,
        };
        let nodes = bring_up(&batch, wants).await?;
        // The launch calls are not interruptible (a call dropped mid-flight could create
        // instances nobody records); a ^C that came during them is honoured here, now that what
        // they created is recorded, even when nothing after them (`--no-configure`) would wait.
        interrupt.check()?;
        advance(
            ctx,
            &cluster,
            ClusterState::Requested,
            ClusterState::Running,
        )?;
        keys.write_known_hosts(&ctx.store.nodes_of(cluster.id)?)?;
        if req.configure {
            pause_point(ctx, ClusterState::Running).await;
            interrupt
                .race(configure(
                    ctx,
                    &cluster,
                    &client,
                    &renderer,
                    &meta,
                    &nodes,
                    &nodes,
                    Step::Launch,
                ))
                .await?;
            advance(
                ctx,
                &cluster,
                ClusterState::Running,
                ClusterState::Configured,
            )?;
        }
        Ok::<_, Error>(())
    };
    match work.await {
        Ok(()) => Ok(ctx.store.cluster_by_id(cluster.id)?.unwrap_or(cluster)),
        Err(e) => {
            let reason = crate::core::error::one_line(&e);
            let interrupted = e.signal();
            ctx.printer.warn(match interrupted {
                Some(_) => format!("{reason}; terminating everything it launched"),
                None => format!(
                    "launch of {} failed ({reason}); terminating everything it launched",
                    cluster.name
                ),
            });
            let rolled_back = rollback(ctx, provider, &cluster, request, true).await;
            // Unless someone else terminated it meanwhile, the launch failed.
            ctx.store.transition(
                cluster.id,
                &[
                    ClusterState::Reserved,
                    ClusterState::Requested,
                    ClusterState::Running,
                ],
                ClusterState::Failed,
                Some(&reason),
            )?;
            let done = match rolled_back {
                Ok(_) => "everything it launched was terminated".to_owned(),
                // The row stays failed with live nodes: the next reconcile (run before every
                // launch and terminate) finishes the rollback.
                Err(rb) => format!(
                    "the rollback is incomplete ({}): the next stratus command that launches or terminates finishes it, or run `stratus reconcile`",
                    crate::core::error::one_line(&rb),
                ),
            };
            Err(match interrupted {
                Some(signal) => Error::interrupted_with(signal, format!("{reason}; {done}")),
                None => {
                    ctx.printer.status(format!("{}: {done}", cluster.name));
                    e
                }
            })
        }
    }
}

/// Adds `count` workers to a live cluster, then rewrites the master's workers file and runs the
/// profile's `on_workers_change` commands. A failure terminates only the new workers. The
/// cluster must stay up throughout: its batches are refused, and nodes recorded after a
/// terminate started are terminated at once.
pub async fn add_workers<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
    count: u32,
    request: &RequestId,
    admission: &dyn Admit,
) -> Result<Vec<NodeRow>, Error> {
    let profile = &cluster.record.profile;
    // One launch-slaves at a time per cluster: the next indices and max_workers are read here.
    let _grow = GrowLock::acquire(ctx.state_dir, cluster)?;
    let existing = live_nodes(ctx, cluster)?;
    let existing_workers = existing.iter().filter(|n| n.role == Role::Worker).count() as u32;
    validate_request(profile, provider.kind(), count, existing_workers)?;
    if !existing.iter().any(|n| n.role == Role::Master) {
        return Err(Error::invalid(format!(
            "cluster {} has no running master; terminate it and launch a new one",
            cluster.name
        )));
    }
    let interrupt = Interrupt::listen(ctx.hangup)?;
    let _lock = LaunchLock::acquire(ctx.state_dir, request)?;
    let store_id = ctx.store.id().clone();
    let meta = Meta::of(cluster, request, &store_id);
    let renderer = Renderer::for_profile(profile)?;
    let next = ctx
        .store
        .nodes_of(cluster.id)?
        .iter()
        .filter(|n| n.role == Role::Worker)
        .map(|n| n.index)
        .max()
        .unwrap_or(0);
    let min = profile.min_workers.unwrap_or(count).min(count);
    let wants = vec![Want {
        role: Role::Worker,
        first_index: next + 1,
        count,
        min_count: min.max(1),
    }];
    let keys = ClusterKeys::of(ctx.state_dir, cluster);
    let key = keys.load()?;
    let access = access(profile, &key);
    let client = Client::new(key, ctx.connect_timeout());
    // The quota last, once nothing but the launch itself can fail: its failure path releases
    // what this reserves.
    admission.admit_growth(ctx.store, cluster, request, count)?;
    let work = async {
        let batch = Batch {
            ctx,
            provider,
            interrupt: &interrupt,
            cluster,
            access: &access,
            client: &client,
            meta: &meta,
            renderer: &renderer,
            accepting: UP,
            ssh: true,
        };
        let added = bring_up(&batch, wants).await?;
        let all = live_nodes(ctx, cluster)?;
        keys.write_known_hosts(&all)?;
        interrupt
            .race(configure(
                ctx,
                cluster,
                &client,
                &renderer,
                &meta,
                &all,
                &added,
                Step::AddWorkers,
            ))
            .await?;
        Ok::<_, Error>(added)
    };
    match work.await {
        Ok(added) => Ok(added),
        Err(e) => {
            ctx.printer.warn(format!(
                "adding workers failed ({}); terminating the new workers",
                crate::core::error::one_line(&e)
            ));
            if let Err(rb) = rollback(ctx, provider, cluster, request, false).await {
                ctx.printer.warn(format!(
                    "rollback incomplete: {}; `stratus reconcile` finishes it",
                    crate::core::error::one_line(&rb)
                ));
            }
            Err(e)
        }
    }
}

/// What one request's nodes are brought up with.
struct Batch<'a, P> {
    ctx: Ctx<'a>,
    provider: &'a P,
    interrupt: &'a Interrupt,
    cluster: &'a ClusterRow,
    access: &'a SshAccess,
    client: &'a Client,
    meta: &'a Meta<'a>,
    renderer: &'a Renderer,
    /// The cluster states in which this request's nodes are wanted.
    accepting: &'static [ClusterState],
    /// Wait for SSH too (not with `--no-configure`).
    ssh: bool,
}

/// Why nodes did not come up.
#[derive(Debug)]
struct Failure {
    role: Role,
    /// How many nodes this stands for (a launch call that created fewer than asked).
    nodes: u32,
    message: String,
}

impl Failure {
    fn source(&self) -> Box<std::io::Error> {
        Box::new(std::io::Error::other(self.message.clone()))
    }
}

/// Launches `wants`, waits for them to run and (when `ssh` is set) to answer SSH, replacing
/// failed workers while the profile allows. Returns the nodes that are up; an error if the master
/// failed or fewer than `min_workers` workers are left.
async fn bring_up<P: Provider>(b: &Batch<'_, P>, wants: Vec<Want>) -> Result<Vec<NodeRow>, Error> {
    let profile = b.meta.profile;
    let wanted_workers: u32 = wants
        .iter()
        .filter(|w| w.role == Role::Worker)
        .map(|w| w.count)
        .sum();
    let min_workers = wants
        .iter()
        .find(|w| w.role == Role::Worker)
        .map(|w| w.min_count)
        .unwrap_or(0);
    let mut replacements_left = profile.max_replacements;
    let mut ready: Vec<NodeRow> = Vec::new();
    let mut pending = wants;
    let mut round = 0u32;
    let mut first_failure: Option<Failure> = None;
    let total: u32 = pending.iter().map(|w| w.count).sum();
    let bar = b.ctx.printer.bar(u64::from(total), "launching");
    let mut next_index = pending
        .iter()
        .map(|w| w.first_index + w.count)
        .max()
        .unwrap_or(1);
    loop {
        let (up, failed) = bring_up_once(b, &pending, round, &bar).await?;
        ready.extend(up);
        if failed.is_empty() {
            break;
        }
        if let Some(f) = failed.iter().find(|f| f.role == Role::Master) {
            bar.finish_and_clear();
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
        round += 1;
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
        bar.inc_length(u64::from(replace));
    }
    bar.finish_and_clear();
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

/// Starts a phase of a round on the bar: its count from 0, the frame drawn at once. (The count is
/// reset before the message changes: a frame naming the new phase must not show the old one's
/// count, as "waiting for SSH 5/5" did before any node had answered.)
fn show_phase(bar: &indicatif::ProgressBar, message: &'static str) {
    bar.set_position(0);
    bar.set_message(message);
    bar.force_draw();
}

/// Counts `n` more nodes through the current phase, drawn at once: with a steady tick, indicatif
/// draws a new position only at the next tick, so counts that moved faster than the tick (nodes
/// answering within the same tenth of a second, as they do) were never shown, and the bar jumped
/// from 0 to done.
fn count_up(bar: &indicatif::ProgressBar, n: u64) {
    bar.inc(n);
    bar.force_draw();
}

/// One round: the launch calls, then the waits. Failed nodes are terminated before it returns.
async fn bring_up_once<P: Provider>(
    b: &Batch<'_, P>,
    wants: &[Want],
    round: u32,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<NodeRow>, Vec<Failure>), Error> {
    let ctx = b.ctx;
    let cluster = b.cluster;
    let request = b.meta.request;
    let cref = cluster_ref(cluster, ctx.store.id());
    let mut failed: Vec<Failure> = Vec::new();

    // 1. The launch calls, each written down first, all made together. Not interruptible: a
    // call dropped mid-flight could create instances nobody records.
    show_phase(bar, "launching");
    let mut specs = Vec::new();
    let mut journals = Vec::new();
    for w in wants {
        let spec = b.meta.batch(b.renderer, *w, round)?;
        let row = BatchRow {
            token: spec.client_token.clone(),
            cluster_id: cluster.id,
            request_id: request.to_string(),
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

    // 2. Record what every call created, before anything else. A recording that fails (a busy
    // or full disk) does not stop the others; what could not be recorded is terminated.
    let mut nodes: Vec<NodeRow> = Vec::new();
    let mut unrecorded: Vec<String> = Vec::new();
    let mut record_error: Option<Error> = None;
    let mut refused: Option<Error> = None;
    let mut moved_on: Option<Option<ClusterState>> = None;
    for (spec, launched) in specs.iter().zip(results) {
        let rows: Vec<NodeRow> = launched
            .instances
            .iter()
            .enumerate()
            .map(|(k, inst)| {
                node_row(
                    cluster,
                    request.as_str(),
                    spec.role,
                    spec.first_index + k as u32,
                    inst,
                )
            })
            .collect();
        // A call that failed may still have created instances: its batch stays pending for
        // reconcile, so those are found even if no describe below shows them yet.
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
        count_up(bar, rows.len() as u64);
        for r in &rows {
            tracing::info!(node = %crate::core::model::node_name(&cluster.name, r.role, r.index), instance = %r.instance_id, "launched");
        }
        let missing = spec.count.saturating_sub(rows.len() as u32);
        nodes.extend(rows);
        match launched.error {
            // The request itself is wrong (an unknown image, say), or the account is at a
            // quota: no other node will do better. Stop, once what did launch is recorded for
            // the rollback.
            Some(e) if e.stops_launch() => refused = refused.or(Some(e.into())),
            Some(e) => failed.push(Failure {
                role: spec.role,
                nodes: missing,
                message: format!("{}: {}", spec.name, crate::core::error::one_line(&e)),
            }),
            None if missing > 0 => failed.push(Failure {
                role: spec.role,
                nodes: missing,
                message: format!(
                    "{}: the provider launched {} of {} nodes",
                    spec.name,
                    spec.count - missing,
                    spec.count
                ),
            }),
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
    if let Some(e) = refused {
        return Err(e);
    }

    // 3. Wait until the provider reports them running. Instances of this request that no call
    // reported are recorded (so they are accounted) and terminated.
    show_phase(bar, "waiting for running");
    let selector = request_selector(ctx, cluster, request);
    let ready_timeout = Duration::from_secs(b.meta.profile.ready_timeout_secs);
    let deadline = Instant::now() + ready_timeout;
    let mut delay = Duration::from_millis(250);
    let mut waiting: BTreeSet<String> = nodes.iter().map(|r| r.instance_id.clone()).collect();
    let mut strays: BTreeSet<String> = BTreeSet::new();
    // A node missing from the provider's answers for longer than its consistency allows is
    // gone (terminated by another command, whose cleanup may have removed every trace of it).
    let grace = crate::core::model::millis_of(b.provider.consistency_grace());
    loop {
        let seen: HashMap<String, Instance> = b
            .provider
            .describe(&selector)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let unknown: Vec<Instance> = seen
            .values()
            .filter(|i| !nodes.iter().any(|n| n.instance_id == i.id))
            .filter(|i| !ctx.store.knows_instance(&i.id).unwrap_or(true))
            .cloned()
            .collect();
        strays.extend(adopt(ctx, cluster, &unknown, false)?);
        let now = now_millis();
        let mut observations = Vec::new();
        for row in nodes.iter_mut() {
            let Some(inst) = seen.get(&row.instance_id) else {
                if waiting.contains(&row.instance_id) && now - row.launched_at > grace {
                    observations.push(Observation::Vanished {
                        instance_id: row.instance_id.clone(),
                    });
                    row.state = InstanceState::Terminated;
                    waiting.remove(&row.instance_id);
                }
                continue;
            };
            observations.push(Observation::Seen {
                instance_id: row.instance_id.clone(),
                state: inst.state,
                address: inst.address.clone(),
                private_address: inst.private_address.clone(),
                at: now,
            });
            row.state = inst.state;
            if inst.address.is_some() {
                row.address = inst.address.clone();
            }
            if inst.private_address.is_some() {
                row.private_address = inst.private_address.clone();
            }
            if row.host_key.is_none() {
                row.host_key = inst.host_key.clone();
            }
            // Done waiting: running with an address, or never going to run.
            let up = inst.state == InstanceState::Running && row.address.is_some();
            if up || inst.state.is_gone() || inst.state == InstanceState::Stopped {
                waiting.remove(&row.instance_id);
            }
        }
        ctx.store.observe(&observations)?;
        if bar.position() != (nodes.len() - waiting.len()) as u64 {
            bar.set_position((nodes.len() - waiting.len()) as u64);
            bar.force_draw();
        }
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        b.interrupt.sleep(delay).await?;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let mut running: Vec<NodeRow> = Vec::new();
    let mut dead: BTreeSet<String> = strays;
    for row in nodes {
        let name = crate::core::model::node_name(&cluster.name, row.role, row.index);
        if row.state == InstanceState::Running && !waiting.contains(&row.instance_id) {
            running.push(row);
        } else {
            let message = if waiting.contains(&row.instance_id) {
                format!(
                    "{name} did not reach running within {}s",
                    ready_timeout.as_secs()
                )
            } else {
                format!("{name} went {} before it was ready", row.state)
            };
            dead.insert(row.instance_id.clone());
            failed.push(Failure {
                role: row.role,
                nodes: 1,
                message,
            });
        }
    }

    // 4. Wait until each answers SSH, with its host key pinned: read from its console before
    // first contact where the provider says so (EC2's `host_keys = "console"`), else learned on
    // first contact. A node the provider reports gone meanwhile fails its wait at once.
    let mut up: Vec<NodeRow> = Vec::new();
    // A node that presented another key than the one pinned: the whole launch fails.
    let mut intercepted: Option<String> = None;
    if b.ssh && !running.is_empty() {
        show_phase(bar, "waiting for SSH");
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let (gone_tx, gone_rx) = tokio::sync::watch::channel(BTreeSet::<String>::new());
        let watch_ids: BTreeMap<String, Millis> = running
            .iter()
            .map(|r| (r.instance_id.clone(), r.launched_at))
            .collect();
        let watcher = {
            let selector = selector.clone();
            async move {
                loop {
                    tokio::time::sleep(GONE_POLL).await;
                    if let Ok(found) = b.provider.describe(&selector).await {
                        let now = now_millis();
                        let found: HashMap<String, Instance> =
                            found.into_iter().map(|i| (i.id.clone(), i)).collect();
                        // Reported gone, or no longer reported at all past the grace.
                        let gone: BTreeSet<String> = watch_ids
                            .iter()
                            .filter(|(id, launched)| match found.get(*id) {
                                Some(i) => i.state.is_gone(),
                                None => now - **launched > grace,
                            })
                            .map(|(id, _)| id.clone())
                            .collect();
                        if !gone.is_empty() && gone_tx.send(gone).is_err() {
                            // Nobody waits any more; neither does this.
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        };
        // The nodes whose key comes from their console (those without one yet, where the
        // provider says so), by instance id, with their names.
        let console_keys = b.provider.host_keys_from_console();
        let from_console: BTreeMap<String, String> = if console_keys {
            running
                .iter()
                .filter(|r| r.host_key.is_none())
                .map(|r| {
                    let name = crate::core::model::node_name(&cluster.name, r.role, r.index);
                    (r.instance_id.clone(), name)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let (keys_tx, keys_rx) = tokio::sync::watch::channel(ConsoleKeys::new());
        let console = read_consoles(
            b,
            from_console,
            deadline,
            ready_timeout,
            gone_rx.clone(),
            keys_tx,
        );
        let mut jobs = Vec::new();
        for row in running {
            let t = target(&row, cluster)?;
            jobs.push((row, t));
        }
        let client = b.client.clone();
        let bar2 = bar.clone();
        let waits = ssh::fan_out(jobs, ctx.ssh.max_parallel, move |(mut row, mut t)| {
            let client = client.clone();
            let bar = bar2.clone();
            let mut gone = gone_rx.clone();
            let mut keys = keys_rx.clone();
            async move {
                let id = row.instance_id.clone();
                let mut remaining = remaining;
                if console_keys && row.host_key.is_none() {
                    // First the key from the node's console, then SSH must present that key.
                    let read = tokio::select! {
                        r = keys.wait_for(|k| k.contains_key(&id)) => match r {
                            Ok(k) => k[&id].clone(),
                            Err(_) => Err(format!("{}: the console reader ended", t.name)),
                        },
                        _ = gone.wait_for(|g| g.contains(&id)) => {
                            Err(format!("{} was terminated before it answered SSH", t.name))
                        }
                    };
                    let (line, key) = match read {
                        Ok(pinned) => pinned,
                        Err(e) => return (row, Err((e, false))),
                    };
                    t.host_key = Some(key);
                    row.host_key = Some(line);
                    remaining = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1));
                }
                let wait = client.wait_ready(&t, remaining);
                let r = tokio::select! {
                    r = wait => r.map_err(|e| {
                        let fatal = matches!(e, ssh::SshError::HostKeyMismatch { .. });
                        let e = match e {
                            // Report the profile's timeout, which the user set, not what was
                            // left.
                            ssh::SshError::Timeout { node, addr, last, .. } => {
                                ssh::SshError::Timeout {
                                    node,
                                    addr,
                                    after: ready_timeout,
                                    last,
                                }
                            }
                            other => other,
                        };
                        (crate::core::error::one_line(&e), fatal)
                    }),
                    _ = gone.wait_for(|g| g.contains(&id)) => {
                        Err((format!("{} was terminated before it answered SSH", t.name), false))
                    }
                };
                let r = match r {
                    Ok(session) => {
                        let key = ssh::public_key_openssh(&session.host_key);
                        session.close().await;
                        count_up(&bar, 1);
                        Ok(key)
                    }
                    Err(e) => Err(e),
                };
                (row, r)
            }
        });
        let results = b
            .interrupt
            .race(async {
                tokio::select! {
                    biased;
                    r = waits => Ok(r),
                    e = console => Err(e),
                    () = watcher => Err(Error::runtime("the watch on the nodes ended")),
                }
            })
            .await?;
        for (mut row, r) in results {
            match r {
                Ok(key) => {
                    if row.host_key.is_none() {
                        ctx.store.set_host_key(&row.instance_id, &key)?;
                        row.host_key = Some(key);
                    }
                    up.push(row);
                }
                Err((message, fatal)) => {
                    dead.insert(row.instance_id.clone());
                    if fatal && intercepted.is_none() {
                        intercepted = Some(message.clone());
                    }
                    failed.push(Failure {
                        role: row.role,
                        nodes: 1,
                        message,
                    });
                }
            }
        }
    } else {
        up.extend(running);
    }

    // Failed nodes are terminated now, whatever happens next.
    if !dead.is_empty() {
        terminate_ids(ctx, b.provider, &dead, &selector).await?;
    }
    if let Some(message) = intercepted {
        // Not a node to replace: the path to the cloud is not to be trusted.
        return Err(Error::runtime(message));
    }
    Ok((up, failed))
}

/// Why a node's host key could not be pinned from its console.
fn no_console_keys(name: &str, id: &str, waited: Duration, last: &str) -> String {
    format!(
        "{name} ({id}) showed no SSH host keys on its console within {}s{last}; stratus pins them from there before first contact. If the image does not print them (cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block), set `[ec2] host_keys = \"first-contact\"` in the site config",
        waited.as_secs()
    )
}

/// The host key to pin for one node, read from its console: polled with backoff (1 s growing to
/// 5 s) until it shows one or `timeout` has passed.
pub(crate) async fn console_host_key<P: Provider>(
    provider: &P,
    id: &str,
    name: &str,
    timeout: Duration,
) -> Result<russh::keys::PublicKey, Error> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_secs(1);
    let mut last = String::new();
    loop {
        match provider.console_host_keys(id).await {
            Ok(Some(found)) => return pinnable(&found, name, id).map_err(Error::runtime),
            Ok(None) => {}
            Err(e) => last = format!(" (last error: {})", crate::core::error::one_line(&e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::runtime(no_console_keys(name, id, timeout, &last)));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(CONSOLE_POLL);
    }
}

/// Of the host keys a node's console lists, the one to pin; else why there is none.
fn pinnable(
    found: &[russh::keys::PublicKey],
    name: &str,
    id: &str,
) -> Result<russh::keys::PublicKey, String> {
    ssh::preferred_host_key(found).ok_or_else(|| {
        format!(
            "{name} ({id}): its console lists no SSH host key of a type stratus can pin (ed25519, ECDSA or RSA)"
        )
    })
}

/// What the console reader has found, by instance id: the host key to pin (as stored, and
/// parsed), or why there is none.
type ConsoleKeys = BTreeMap<String, Result<(String, russh::keys::PublicKey), String>>;

/// Reads the host keys of `nodes` (instance id -> name) from their consoles, pinning each in the
/// store as it is found, and publishes them on `keys`. One call per node still waiting per
/// round, rounds 1 s apart growing to 5 s, until `deadline`; a node whose console shows no keys
/// by then gets an error that names the setting to change. Never returns unless the store fails.
async fn read_consoles<P: Provider>(
    b: &Batch<'_, P>,
    nodes: BTreeMap<String, String>,
    deadline: Instant,
    ready_timeout: Duration,
    gone: tokio::sync::watch::Receiver<BTreeSet<String>>,
    keys: tokio::sync::watch::Sender<ConsoleKeys>,
) -> Error {
    use futures_util::StreamExt;
    let mut left = nodes;
    let mut last_error: BTreeMap<String, String> = BTreeMap::new();
    let mut delay = Duration::from_secs(1);
    while !left.is_empty() {
        left.retain(|id, _| !gone.borrow().contains(id));
        let ids: Vec<String> = left.keys().cloned().collect();
        let answers: Vec<(String, Result<_, _>)> = futures_util::stream::iter(ids)
            .map(|id| async move {
                let r = b.provider.console_host_keys(&id).await;
                (id, r)
            })
            .buffer_unordered(b.ctx.ssh.max_parallel.max(1))
            .collect()
            .await;
        for (id, answer) in answers {
            let found = match answer {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(instance = %id, "cannot read the console: {e}");
                    last_error.insert(id, crate::core::error::one_line(&e));
                    continue;
                }
            };
            let Some(name) = left.remove(&id) else {
                continue;
            };
            let result = match pinnable(&found, &name, &id) {
                Ok(key) => {
                    let line = ssh::public_key_openssh(&key);
                    if let Err(e) = b.ctx.store.set_host_key(&id, &line) {
                        return e.into();
                    }
                    tracing::info!(node = %name, key = %ssh::fingerprint(&key), "pinned the host key its console shows");
                    Ok((line, key))
                }
                Err(e) => Err(e),
            };
            keys.send_modify(|k| {
                k.insert(id, result);
            });
        }
        if left.is_empty() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            keys.send_modify(|k| {
                for (id, name) in std::mem::take(&mut left) {
                    let last = last_error
                        .get(&id)
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default();
                    let message = no_console_keys(&name, &id, ready_timeout, &last);
                    k.insert(id, Err(message));
                }
            });
            break;
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(CONSOLE_POLL);
    }
    std::future::pending().await
}
