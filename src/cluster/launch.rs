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

use std::collections::BTreeMap;

use crate::cluster::clock::Clock;
use crate::cluster::configure::{Step, configure};
use crate::cluster::interrupt::Interrupt;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::locks::{GrowLock, LaunchLock};
use crate::cluster::meta::{Meta, Want, access, cluster_ref};
use crate::cluster::provider::Provider;
use crate::cluster::rounds::{Batch, bring_up};
use crate::cluster::ssh::{self, Client};
use crate::cluster::terminate::{live_nodes, rollback};
use crate::cluster::{Admit, Ctx};
use crate::config::profile::Profile;
use crate::core::error::{Error, InputError};
use crate::core::model::{
    ClusterName, ClusterState, Owner, ProviderKind, RequestId, Role, now_millis,
};
use crate::store::{ClusterRecord, ClusterRow, Created, NewCluster, NodeRow};
use crate::templates::Renderer;

/// The state a launch records its nodes in.
const LAUNCHING: &[ClusterState] = &[ClusterState::Requested];
/// The states a cluster takes more workers in.
const UP: &[ClusterState] = &[ClusterState::Running, ClusterState::Configured];

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
    /// The owner's own key pairs to authorise on every node (name, OpenSSH public key).
    pub extra_keys: Vec<(String, String)>,
    /// How long the cluster may live (the policy's lifetime, or the profile's): its deadline is
    /// its creation plus this. `None`: no lifetime applies.
    pub lifetime: Option<crate::core::model::Millis>,
    /// The guard's settings for every node (`cluster::clock`); none for an image build.
    pub guard: Option<crate::store::GuardRecord>,
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

/// Records the new cluster, its reservation checked and written by `admission` in the same
/// transaction: the row, or why not.
fn reserve(
    ctx: Ctx<'_>,
    provider: ProviderKind,
    owner: &Owner,
    request: &RequestId,
    req: &LaunchRequest,
    admission: &dyn Admit,
) -> Result<ClusterRow, Error> {
    let record = ClusterRecord {
        profile: req.profile.clone(),
        env: req.env.clone(),
        extra_keys: req.extra_keys.clone(),
        guard: req.guard.clone(),
    };
    let new = NewCluster {
        name: &req.name,
        owner,
        provider,
        request_id: request,
        record: &record,
        lifetime: req.lifetime,
    };
    let cluster = match ctx.store.create_cluster(&new, |tx, id| {
        admission.admit_launch(tx, id, &new, req.workers)
    })? {
        Created::Row(c) => c,
        Created::NameInUse => return Err(InputError::NameInUse(req.name.to_string()).into()),
        Created::Refused(refusal) => return Err(refusal),
    };
    Ok(cluster)
}

/// Until the cluster's row is written, its clock with a deadline from now: the user-data checked
/// before anything is created is as large as the one sent.
fn provisional_clock(req: &LaunchRequest) -> Option<Clock> {
    req.guard.as_ref().map(|g| Clock {
        deadline: req.lifetime.map(|l| now_millis().saturating_add(l)),
        grace: g.grace_ms,
        started: now_millis(),
        rate: g.rate,
    })
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
        clock: provisional_clock(&req),
    };
    // Everything that can be checked without creating anything, first.
    let renderer = Renderer::for_profile(&req.profile)?;
    let wants = wants(&req);
    for w in &wants {
        meta.batch(&renderer, *w, 0)?;
    }
    meta.check_configure_templates(&renderer)?;
    let key = ssh::generate_key()?;

    let cluster = reserve(ctx, provider.kind(), owner, request, &req, admission)?;
    tracing::info!(cluster = %cluster.name, request = %request, "launch reserved");
    let meta = Meta {
        clock: Clock::of(&cluster),
        ..meta
    };

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
        Err(e) => Err(fail(ctx, provider, &cluster, request, e).await?),
    }
}

/// A new cluster's master, and its workers.
fn wants(req: &LaunchRequest) -> Vec<Want> {
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
    wants
}

/// A launch that failed with `e`: everything it launched is terminated, and the cluster is
/// failed. The error to report (`Err` only if the store itself fails).
async fn fail<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    cluster: &ClusterRow,
    request: &RequestId,
    e: Error,
) -> Result<Error, Error> {
    let reason = crate::core::error::one_line(&e);
    let interrupted = e.signal();
    ctx.printer.warn(match interrupted {
        Some(_) => format!("{reason}; terminating everything it launched"),
        None => format!(
            "launch of {} failed ({reason}); terminating everything it launched",
            cluster.name
        ),
    });
    let rolled_back = rollback(ctx, provider, cluster, request, true).await;
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
        // The row stays failed with live nodes: the next reconcile (run before every launch
        // and terminate) finishes the rollback.
        Err(rb) => format!(
            "the rollback is incomplete ({}): the next stratus command that launches or terminates finishes it, or run `stratus reconcile`",
            crate::core::error::one_line(&rb),
        ),
    };
    Ok(match interrupted {
        Some(signal) => Error::interrupted_with(signal, format!("{reason}; {done}")),
        None => {
            ctx.printer.status(format!("{}: {done}", cluster.name));
            e
        }
    })
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
