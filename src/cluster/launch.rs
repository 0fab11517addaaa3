//! The cluster lifecycle: launch (and grow), configure over SSH, observe, terminate. This is the
//! one place that orders the steps, and it only speaks to the `Provider` trait.
//!
//! A launch is a state machine kept in the store (reserved -> requested -> running ->
//! configured, or failed): every node is recorded as soon as the provider returns it, so a
//! failure or an interrupt at any step rolls back exactly what this request launched, found both
//! from the store and from the provider by the request's tag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use russh::keys::PrivateKey;

use crate::app::App;
use crate::cluster::profile::{FileTarget, Profile, parse_mode};
use crate::cluster::provider::{
    ClusterRef, Instance, InstanceState, NodeSpec, Provider, Selector, SshAccess,
};
use crate::cluster::ssh::{self, Client, Target};
use crate::cluster::{ClusterName, Owner, RequestId, Role, Tags, node_name};
use crate::error::{Error, InputError};
use crate::store::{ClusterRecord, ClusterRow, ClusterState, NewCluster, NodeRow, now_millis};
use crate::templates::{BootContext, ConfigureContext, NodeFacts, Renderer};

/// Provider calls in flight at once during a launch (RunInstances and friends).
const PROVIDER_PARALLEL: usize = 8;
/// How long an instance may be missing from describe before it counts as vanished (EC2's
/// describe is eventually consistent just after a launch).
const VANISH_GRACE_MS: i64 = 10 * 60 * 1000;
/// How long terminate waits for the provider to report everything gone.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What `launch-cluster` and `launch-master` ask for, validated.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub name: ClusterName,
    pub workers: u32,
    pub profile: Profile,
    pub env: BTreeMap<String, String>,
    pub configure: bool,
}

/// The files of one cluster's SSH identity in the state directory.
#[derive(Debug, Clone)]
pub struct ClusterKeys {
    pub dir: PathBuf,
}

impl ClusterKeys {
    pub fn of(app: &App, cluster: &ClusterRow) -> Self {
        Self {
            dir: app.cluster_dir(cluster),
        }
    }
    pub fn private_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    pub fn public_key(&self) -> PathBuf {
        self.dir.join("id_ed25519.pub")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    fn create(&self, key: &PrivateKey) -> Result<(), Error> {
        crate::store::create_private_dir(&self.dir)?;
        let private = ssh::private_key_openssh(key)?;
        crate::cluster::provider::local::write_private(&self.private_key(), private.as_bytes())?;
        let public = ssh::public_key_openssh(key.public_key());
        crate::cluster::provider::local::write_atomic(
            &self.public_key(),
            format!("{public}\n").as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    pub fn load(&self) -> Result<PrivateKey, Error> {
        let text = std::fs::read_to_string(self.private_key()).map_err(|e| {
            Error::runtime(format!(
                "cannot read the cluster key {}",
                self.private_key().display()
            ))
            .with_source(e)
        })?;
        Ok(ssh::parse_private_key(&text)?)
    }

    /// Rewrites known_hosts from the pinned keys, for the system `ssh` (`login`, `proxy`).
    pub fn write_known_hosts(&self, nodes: &[NodeRow]) -> Result<(), Error> {
        let mut text = String::new();
        for n in nodes {
            if let (Some(addr), Some(key)) = (&n.address, &n.host_key) {
                if n.state.is_gone() {
                    continue;
                }
                let host = if n.ssh_port == 22 {
                    addr.clone()
                } else {
                    format!("[{addr}]:{}", n.ssh_port)
                };
                text.push_str(&format!("{host} {}\n", key.trim()));
            }
        }
        crate::cluster::provider::local::write_private(&self.known_hosts(), text.as_bytes())?;
        Ok(())
    }
}

/// Held by the process running a launch (or launch-slaves) for as long as it runs: a POSIX lock
/// on `<state>/launches/<request>.lock`. Its absence tells `reconcile` at once that a launch left
/// in `reserved` or `requested`, or an instance of that request no row knows, was abandoned by a
/// process that died, instead of waiting out a timeout. The state database is never on a
/// network file system, so the launcher and the reconciler share a host and the lock is good.
pub struct LaunchLock {
    path: PathBuf,
    _file: std::fs::File,
}

/// What the lock of a request says about its launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// A live process holds the request's lock.
    Running,
    /// The lock file is there and nobody holds it: the launcher died.
    Died,
    /// No lock file: the launch finished, or predates the locks.
    Unknown,
}

impl LaunchLock {
    fn path(app: &App, request: &RequestId) -> PathBuf {
        app.state_dir
            .join("launches")
            .join(format!("{}.lock", request.as_str()))
    }

    pub fn acquire(app: &App, request: &RequestId) -> Result<Self, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(app, request);
        if let Some(dir) = path.parent() {
            crate::store::create_private_dir(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        if !crate::sys::try_lock_file(&file)? {
            return Err(Error::runtime(format!(
                "request {request} is already being launched by another process"
            )));
        }
        Ok(Self { path, _file: file })
    }

    pub fn launcher(app: &App, request: &RequestId) -> Launcher {
        let path = Self::path(app, request);
        match std::fs::File::open(&path) {
            Err(_) => Launcher::Unknown,
            Ok(f) => match crate::sys::lock_holder(&f) {
                Ok(Some(_)) => Launcher::Running,
                Ok(None) => Launcher::Died,
                Err(_) => Launcher::Unknown,
            },
        }
    }

    /// Removes the lock file a dead launcher left.
    pub fn clear(app: &App, request: &RequestId) {
        if Self::launcher(app, request) == Launcher::Died {
            let _ = std::fs::remove_file(Self::path(app, request));
        }
    }
}

impl Drop for LaunchLock {
    fn drop(&mut self) {
        // Unlink before the descriptor (and with it the lock) goes: whoever still finds the file
        // finds it locked.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The facts every template of a cluster shares.
struct Meta<'a> {
    cluster: &'a ClusterName,
    owner: &'a Owner,
    profile: &'a Profile,
    env: &'a BTreeMap<String, String>,
    request: &'a RequestId,
}

impl<'a> Meta<'a> {
    /// The facts of an existing cluster, for a later request on it.
    fn of(cluster: &'a ClusterRow, request: &'a RequestId) -> Self {
        Self {
            cluster: &cluster.name,
            owner: &cluster.owner,
            profile: &cluster.record.profile,
            env: &cluster.record.env,
            request,
        }
    }

    fn boot(&self, role: Role, index: u32) -> BootContext<'a> {
        BootContext {
            cluster: self.cluster.as_str(),
            owner: self.owner.as_str(),
            role,
            index,
            node_name: node_name(self.cluster, role, index),
            request_id: self.request.as_str(),
            profile: self.profile.into(),
            env: self.env,
        }
    }

    fn tags(&self, role: Option<Role>) -> Tags {
        Tags {
            owner: self.owner.clone(),
            cluster: self.cluster.clone(),
            role,
            profile: self.profile.name.clone(),
            request: self.request.clone(),
        }
    }

    /// The node specs for `(role, index)` pairs, user-data rendered and checked.
    fn specs(&self, renderer: &Renderer, nodes: &[(Role, u32)]) -> Result<Vec<NodeSpec>, Error> {
        nodes
            .iter()
            .map(|&(role, index)| {
                let settings = self.profile.role(role);
                let user_data = renderer.user_data(&settings.user_data, &self.boot(role, index))?;
                let name = node_name(self.cluster, role, index);
                Ok(NodeSpec {
                    role,
                    index,
                    client_token: format!("{}-{}", self.request, name_suffix(role, index)),
                    name,
                    image: settings.image.clone(),
                    instance_type: settings.instance_type.clone(),
                    spot: settings.spot,
                    volume_gb: settings.volume_gb,
                    user_data,
                    tags: self.tags(Some(role)),
                })
            })
            .collect()
    }

    /// Renders every configure-time template once with stand-in addresses, so a missing
    /// variable is reported before anything is launched.
    fn check_configure_templates(&self, renderer: &Renderer) -> Result<(), Error> {
        let fake = |role, index, n: u8| NodeFacts {
            name: node_name(self.cluster, role, index),
            role,
            index,
            // TEST-NET-1 (RFC 5737): never a real node.
            address: format!("192.0.2.{n}"),
            private_address: format!("192.0.2.{}", 100 + n),
        };
        for f in &self.profile.files {
            let roles: &[Role] = match f.to {
                FileTarget::Master => &[Role::Master],
                FileTarget::Workers => &[Role::Worker],
                FileTarget::All => &[Role::Master, Role::Worker],
            };
            for &role in roles {
                let index = if role == Role::Master { 0 } else { 1 };
                let ctx = ConfigureContext {
                    boot: self.boot(role, index),
                    node: fake(role, index, 1 + index as u8),
                    master: fake(Role::Master, 0, 1),
                    workers: vec![fake(Role::Worker, 1, 2)],
                };
                renderer.render(&f.template, &ctx)?;
            }
        }
        Ok(())
    }
}

fn name_suffix(role: Role, index: u32) -> String {
    match role {
        Role::Master => "m".into(),
        Role::Worker => format!("w{index}"),
    }
}

fn cluster_ref(c: &ClusterRow) -> ClusterRef {
    ClusterRef {
        owner: c.owner.clone(),
        name: c.name.clone(),
        profile: c.profile.clone(),
        request: c.request_id.clone(),
    }
}

fn access(profile: &Profile, key: &PrivateKey) -> SshAccess {
    SshAccess {
        user: profile.ssh_user.clone(),
        public_key: ssh::public_key_openssh(key.public_key()),
        port: profile.ssh_port,
        web_ports: profile.ports.clone(),
    }
}

/// ^C, SIGTERM and SIGHUP during a launch: the moments it must roll back instead of leaving
/// instances behind. Listening starts when this is created, before anything exists, so no early
/// signal kills the process half-way. A signal never cuts a provider call short (an instance
/// whose RunInstances was dropped mid-flight could escape the record): the launch notices at its
/// next wait, and rolls back from there.
#[derive(Clone)]
pub struct Interrupt {
    rx: tokio::sync::watch::Receiver<Option<&'static str>>,
}

impl Interrupt {
    /// Starts listening. Must be called inside the runtime.
    pub fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = tokio::sync::watch::channel(None);
        // Registered here, synchronously: from now on these signals are ours.
        let streams = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        );
        if let (Ok(mut int), Ok(mut term), Ok(mut hup)) = streams {
            tokio::spawn(async move {
                loop {
                    let why = tokio::select! {
                        _ = int.recv() => "interrupted",
                        _ = term.recv() => "terminated by a signal",
                        _ = hup.recv() => "stopped: the terminal hung up",
                    };
                    if tx.send(Some(why)).is_err() {
                        return;
                    }
                }
            });
        }
        Self { rx }
    }

    fn error(why: &str) -> Error {
        Error::runtime(format!("launch {why}"))
    }

    /// An error if a signal has come.
    pub fn check(&self) -> Result<(), Error> {
        match *self.rx.borrow() {
            Some(why) => Err(Self::error(why)),
            None => Ok(()),
        }
    }

    /// Runs `fut` unless, or until, a signal comes.
    pub async fn race<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.check()?;
        let mut rx = self.rx.clone();
        tokio::select! {
            biased;
            r = rx.wait_for(Option::is_some) => match r {
                Ok(why) => Err(Self::error(why.unwrap_or("interrupted"))),
                // The listener is gone: no signal can come any more.
                Err(_) => std::future::pending().await,
            },
            r = fut => r,
        }
    }

    pub async fn sleep(&self, d: Duration) -> Result<(), Error> {
        self.race(async {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await
    }
}

/// Moves a launching cluster from one state to the next, unless something else (a terminate in
/// another process) moved it meanwhile: then the launch stops, and rolls back.
fn advance(
    app: &App,
    cluster: &ClusterRow,
    from: ClusterState,
    to: ClusterState,
) -> Result<(), Error> {
    if app.store.transition(cluster.id, &[from], to, None)? {
        Ok(())
    } else {
        Err(Error::runtime(format!(
            "cluster {} changed state while it was being launched (terminated meanwhile?)",
            cluster.name
        )))
    }
}

/// Checks what a launch asks for against the profile and provider; nothing is created.
pub fn validate_request(
    profile: &Profile,
    provider: crate::config::ProviderKind,
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
    if workers + existing_workers > profile.max_workers {
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

/// Launches a new cluster: a master and `workers` workers, then (unless asked not to) waits for
/// SSH and configures it. On any failure everything launched is terminated again.
pub async fn launch<P: Provider>(
    app: &App,
    provider: &P,
    req: LaunchRequest,
) -> Result<ClusterRow, Error> {
    validate_request(&req.profile, provider.kind(), req.workers, 0)?;
    let interrupt = Interrupt::listen();
    let request = RequestId::new();
    let _lock = LaunchLock::acquire(app, &request)?;
    let meta = Meta {
        cluster: &req.name,
        owner: &app.owner,
        profile: &req.profile,
        env: &req.env,
        request: &request,
    };
    // Everything that can be checked without creating anything, first.
    let renderer = Renderer::for_profile(&req.profile)?;
    let mut roles = vec![(Role::Master, 0)];
    roles.extend((1..=req.workers).map(|i| (Role::Worker, i)));
    let specs = meta.specs(&renderer, &roles)?;
    meta.check_configure_templates(&renderer)?;
    let key = ssh::generate_key()?;

    let record = ClusterRecord {
        profile: req.profile.clone(),
        env: req.env.clone(),
    };
    let cluster = app
        .store
        .create_cluster(&NewCluster {
            name: &req.name,
            owner: &app.owner,
            provider: provider.kind().as_str(),
            request_id: &request,
            record: &record,
        })?
        .ok_or_else(|| InputError::NameInUse(req.name.to_string()))?;
    tracing::info!(cluster = %cluster.name, request = %request, "launch reserved");

    let keys = ClusterKeys::of(app, &cluster);
    let work = async {
        keys.create(&key)?;
        let access = access(&req.profile, &key);
        let client = Client::new(key.clone(), connect_timeout(app));
        advance(
            app,
            &cluster,
            ClusterState::Reserved,
            ClusterState::Requested,
        )?;
        provider.prepare(&cluster_ref(&cluster), &access).await?;
        interrupt.check()?;
        let batch = Batch {
            app,
            provider,
            interrupt: &interrupt,
            cluster: &cluster,
            access: &access,
            client: &client,
            request: &request,
            profile: &req.profile,
            ssh: req.configure,
        };
        let nodes = bring_up(&batch, specs).await?;
        advance(
            app,
            &cluster,
            ClusterState::Requested,
            ClusterState::Running,
        )?;
        keys.write_known_hosts(&app.store.nodes_of(cluster.id)?)?;
        if req.configure {
            interrupt
                .race(configure(
                    app,
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
                app,
                &cluster,
                ClusterState::Running,
                ClusterState::Configured,
            )?;
        }
        Ok::<_, Error>(())
    };
    match work.await {
        Ok(()) => Ok(app.store.cluster_by_id(cluster.id)?.unwrap_or(cluster)),
        Err(e) => {
            app.printer.warn(format!(
                "launch of {} failed; terminating everything it launched",
                cluster.name
            ));
            if let Err(rb) = rollback(app, provider, &cluster, &request, true).await {
                // The row stays failed with live nodes: the next reconcile (run before every
                // launch and terminate) finishes the rollback.
                app.printer.warn(format!(
                    "rollback incomplete: {}; the next stratus command that launches or terminates finishes it (or run `stratus reconcile`)",
                    crate::error::render(&rb).trim_start_matches("error: "),
                ));
            }
            // Unless someone else terminated it meanwhile, the launch failed.
            app.store.transition(
                cluster.id,
                &[
                    ClusterState::Reserved,
                    ClusterState::Requested,
                    ClusterState::Running,
                ],
                ClusterState::Failed,
                Some(&crate::error::render(&e)),
            )?;
            Err(e)
        }
    }
}

/// Adds `count` workers to a live cluster, then rewrites the master's workers file and runs the
/// profile's `on_workers_change` commands. A failure terminates only the new workers.
pub async fn add_workers<P: Provider>(
    app: &App,
    provider: &P,
    cluster: &ClusterRow,
    count: u32,
) -> Result<Vec<NodeRow>, Error> {
    let profile = &cluster.record.profile;
    let existing = live_nodes(app, cluster)?;
    let existing_workers = existing.iter().filter(|n| n.role == Role::Worker).count() as u32;
    validate_request(profile, provider.kind(), count, existing_workers)?;
    if !existing.iter().any(|n| n.role == Role::Master) {
        return Err(Error::invalid(format!(
            "cluster {} has no running master",
            cluster.name
        )));
    }
    let interrupt = Interrupt::listen();
    let request = RequestId::new();
    let _lock = LaunchLock::acquire(app, &request)?;
    let meta = Meta::of(cluster, &request);
    let renderer = Renderer::for_profile(profile)?;
    let next = app
        .store
        .nodes_of(cluster.id)?
        .iter()
        .filter(|n| n.role == Role::Worker)
        .map(|n| n.index)
        .max()
        .unwrap_or(0);
    let roles: Vec<(Role, u32)> = (next + 1..=next + count)
        .map(|i| (Role::Worker, i))
        .collect();
    let specs = meta.specs(&renderer, &roles)?;
    let keys = ClusterKeys::of(app, cluster);
    let key = keys.load()?;
    let access = access(profile, &key);
    let client = Client::new(key, connect_timeout(app));
    let work = async {
        let batch = Batch {
            app,
            provider,
            interrupt: &interrupt,
            cluster,
            access: &access,
            client: &client,
            request: &request,
            profile,
            ssh: true,
        };
        let added = bring_up(&batch, specs).await?;
        let all = live_nodes(app, cluster)?;
        keys.write_known_hosts(&all)?;
        interrupt
            .race(configure(
                app,
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
            app.printer
                .warn("adding workers failed; terminating the new workers");
            if let Err(rb) = rollback(app, provider, cluster, &request, false).await {
                app.printer.warn(format!(
                    "rollback incomplete: {}",
                    crate::error::render(&rb)
                ));
            }
            Err(e)
        }
    }
}

/// Rewrites the master's workers file from the running workers and runs `on_workers_change`.
pub async fn update_workers_file(app: &App, cluster: &ClusterRow) -> Result<usize, Error> {
    let profile = &cluster.record.profile;
    let request = cluster.request_id.clone();
    let meta = Meta::of(cluster, &request);
    let renderer = Renderer::for_profile(profile)?;
    let key = ClusterKeys::of(app, cluster).load()?;
    let client = Client::new(key, connect_timeout(app));
    let all = live_nodes(app, cluster)?;
    configure(
        app,
        cluster,
        &client,
        &renderer,
        &meta,
        &all,
        &[],
        Step::WorkersFile,
    )
    .await?;
    Ok(all.iter().filter(|n| n.role == Role::Worker).count())
}

pub fn connect_timeout(app: &App) -> Duration {
    Duration::from_secs(app.config.ssh.connect_timeout_secs.max(1))
}

/// The cluster's nodes that are not gone, master first.
pub fn live_nodes(app: &App, cluster: &ClusterRow) -> Result<Vec<NodeRow>, Error> {
    Ok(app
        .store
        .nodes_of(cluster.id)?
        .into_iter()
        .filter(|n| !n.state.is_gone())
        .collect())
}

fn node_row(
    cluster: &ClusterRow,
    request: &RequestId,
    spec: &NodeSpec,
    inst: &Instance,
) -> NodeRow {
    NodeRow {
        instance_id: inst.id.clone(),
        cluster_id: cluster.id,
        role: spec.role,
        index: spec.index,
        request_id: request.to_string(),
        state: inst.state,
        address: inst.address.clone(),
        private_address: inst.private_address.clone(),
        ssh_port: inst.ssh_port,
        instance_type: inst.instance_type.clone(),
        image: inst.image.clone(),
        spot: inst.spot,
        host_key: inst.host_key.clone(),
        launched_at: inst.launched_at.unwrap_or_else(now_millis),
        ended_at: None,
    }
}

pub fn target(node: &NodeRow, cluster: &ClusterRow) -> Result<Target, Error> {
    let name = node_name(&cluster.name, node.role, node.index);
    let host = node.address.clone().ok_or_else(|| {
        Error::runtime(format!("{name} ({}) has no address yet", node.instance_id))
    })?;
    let host_key = node
        .host_key
        .as_deref()
        .map(ssh::parse_public_key)
        .transpose()?;
    Ok(Target {
        name,
        host,
        port: node.ssh_port,
        user: cluster.record.profile.ssh_user.clone(),
        host_key,
    })
}

/// What one request's nodes are brought up with.
struct Batch<'a, P> {
    app: &'a App,
    provider: &'a P,
    interrupt: &'a Interrupt,
    cluster: &'a ClusterRow,
    access: &'a SshAccess,
    client: &'a Client,
    request: &'a RequestId,
    profile: &'a Profile,
    /// Wait for SSH too (not with `--no-configure`).
    ssh: bool,
}

/// Launches `specs`, waits for them to run and (when `ssh` is set) to answer SSH, replacing
/// failed workers while the profile allows. Returns the nodes that are up; an error if the master
/// failed or fewer than `min_workers` workers are left.
async fn bring_up<P: Provider>(
    batch: &Batch<'_, P>,
    specs: Vec<NodeSpec>,
) -> Result<Vec<NodeRow>, Error> {
    let (app, profile) = (batch.app, batch.profile);
    let wanted_workers = specs.iter().filter(|s| s.role == Role::Worker).count() as u32;
    let min_workers = profile
        .min_workers
        .unwrap_or(wanted_workers)
        .min(wanted_workers);
    let mut replacements_left = profile.max_replacements as usize;
    let mut ready: Vec<NodeRow> = Vec::new();
    let mut pending = specs;
    let mut attempt = 0u32;
    let mut first_failure: Option<(String, NodeFailure)> = None;
    let bar = app.printer.bar(pending.len() as u64, "starting nodes");
    loop {
        let (up, failed) = bring_up_once(batch, &pending, &bar).await?;
        ready.extend(up);
        if failed.is_empty() {
            break;
        }
        if let Some((_, e)) = failed.iter().find(|(s, _)| s.role == Role::Master) {
            bar.finish_and_clear();
            return Err(Error::runtime("the master did not come up")
                .with_source(Box::new(e.clone_message())));
        }
        for (_, e) in &failed {
            app.printer.warn(&e.message);
        }
        // Replace as many as the profile still allows; the rest stay lost.
        let replace = failed.len().min(replacements_left);
        let mut failed = failed.into_iter();
        if first_failure.is_none() {
            first_failure = failed.as_slice().first().map(|(s, e)| {
                (
                    s.name.clone(),
                    NodeFailure {
                        message: e.message.clone(),
                    },
                )
            });
        }
        if replace == 0 {
            break;
        }
        replacements_left -= replace;
        attempt += 1;
        app.printer
            .status(format!("replacing {replace} failed worker(s)"));
        pending = failed
            .by_ref()
            .take(replace)
            .map(|(mut s, _)| {
                s.client_token = format!("{}-r{attempt}", s.client_token);
                s
            })
            .collect();
        bar.inc_length(pending.len() as u64);
    }
    bar.finish_and_clear();
    let up_workers = ready.iter().filter(|n| n.role == Role::Worker).count() as u32;
    if up_workers < min_workers {
        let (name, e) = first_failure.unwrap_or_else(|| {
            (
                "a worker".into(),
                NodeFailure {
                    message: "failed".into(),
                },
            )
        });
        return Err(Error::runtime(format!(
            "{name} failed, and only {up_workers} of {wanted_workers} workers are up (at least {min_workers} needed)"
        ))
        .with_source(Box::new(e.clone_message())));
    }
    if up_workers < wanted_workers {
        app.printer.warn(format!(
            "continuing with {up_workers} of {wanted_workers} workers (min_workers = {min_workers})"
        ));
    }
    Ok(ready)
}

/// Why one node did not come up; the message is kept for the final error.
#[derive(Debug)]
struct NodeFailure {
    message: String,
}

impl NodeFailure {
    fn from_err(e: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            message: crate::error::render(e)
                .trim_start_matches("error: ")
                .replace("\n  caused by: ", ": "),
        }
    }
    fn clone_message(&self) -> std::io::Error {
        std::io::Error::other(self.message.clone())
    }
}

async fn bring_up_once<P: Provider>(
    batch: &Batch<'_, P>,
    specs: &[NodeSpec],
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<NodeRow>, Vec<(NodeSpec, NodeFailure)>), Error> {
    let Batch {
        app,
        provider,
        interrupt,
        cluster,
        access,
        client,
        request,
        profile,
        ssh,
    } = *batch;
    let cref = cluster_ref(cluster);
    let mut failed: Vec<(NodeSpec, NodeFailure)> = Vec::new();

    // 1. Launch, recording each node the moment the provider returns it. Not interruptible: a
    // RunInstances dropped mid-flight could create an instance nobody records.
    bar.set_message("launching");
    let mut launches = futures_util::stream::iter(specs.iter().cloned())
        .map(|spec| async {
            let r = provider.launch(&cref, access, &spec).await;
            (spec, r)
        })
        .buffer_unordered(PROVIDER_PARALLEL);
    let mut nodes: Vec<(NodeSpec, NodeRow)> = Vec::new();
    let mut refused: Option<crate::cluster::provider::ProviderError> = None;
    while let Some((spec, r)) = launches.next().await {
        match r {
            Ok(inst) => {
                let row = node_row(cluster, request, &spec, &inst);
                app.store.insert_node(cluster, &row)?;
                tracing::info!(node = %spec.name, instance = %inst.id, "launched");
                nodes.push((spec, row));
            }
            // The request itself is wrong (an unknown image, say): no other node will do
            // better. Stop, once what did launch is recorded for the rollback.
            Err(e) if e.is_bad_input() => refused = refused.or(Some(e)),
            Err(e) => failed.push((spec, NodeFailure::from_err(&e))),
        }
    }
    drop(launches);
    if let Some(e) = refused {
        return Err(e.into());
    }
    interrupt.check()?;

    // 2. Wait until the provider reports them running.
    bar.set_message("waiting for running");
    let deadline = Instant::now() + Duration::from_secs(profile.ready_timeout_secs);
    let mut delay = Duration::from_millis(500);
    let mut waiting: BTreeSet<String> = nodes.iter().map(|(_, r)| r.instance_id.clone()).collect();
    let mut strays: Vec<String> = Vec::new();
    while !waiting.is_empty() {
        let seen: HashMap<String, Instance> = provider
            .describe(&Selector {
                request: Some(request.clone()),
                ..Default::default()
            })
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        // An instance of this request that no row knows (its RunInstances answered with an
        // error, yet created it): record it so it is accounted, and terminate it below.
        for inst in seen.values() {
            if inst.state.is_gone() || app.store.knows_instance(&inst.id)? {
                continue;
            }
            let stray = specs
                .iter()
                .find(|s| Some(s.role) == inst.role && Some(s.index) == inst.index);
            if let Some(spec) = stray {
                tracing::warn!(instance = %inst.id, node = %spec.name, "recording an instance whose launch reported failure");
                app.store
                    .insert_node(cluster, &node_row(cluster, request, spec, inst))?;
                strays.push(inst.id.clone());
            }
        }
        for (_, row) in nodes.iter_mut() {
            let Some(inst) = seen.get(&row.instance_id) else {
                continue;
            };
            if !waiting.contains(&row.instance_id) {
                continue;
            }
            app.store.observe_node(
                &row.instance_id,
                inst.state,
                inst.address.as_deref(),
                inst.private_address.as_deref(),
                now_millis(),
            )?;
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
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        interrupt.sleep(delay).await?;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let mut running: Vec<(NodeSpec, NodeRow)> = Vec::new();
    let mut dead: Vec<String> = strays;
    for (spec, row) in nodes {
        if row.state == InstanceState::Running && !waiting.contains(&row.instance_id) {
            running.push((spec, row));
        } else {
            let why = if waiting.contains(&row.instance_id) {
                format!(
                    "{} did not reach running within {}s",
                    spec.name, profile.ready_timeout_secs
                )
            } else {
                format!("{} went {} before it was ready", spec.name, row.state)
            };
            dead.push(row.instance_id.clone());
            failed.push((spec, NodeFailure { message: why }));
        }
    }

    // 3. Wait until each answers SSH; pin host keys learned on first contact.
    let mut up: Vec<NodeRow> = Vec::new();
    if ssh {
        bar.set_message("waiting for SSH");
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let full_timeout = Duration::from_secs(profile.ready_timeout_secs);
        let mut jobs = Vec::new();
        for (spec, row) in running {
            let t = target(&row, cluster)?;
            jobs.push((spec, row, t));
        }
        let client2 = client.clone();
        let bar2 = bar.clone();
        let waits = ssh::fan_out(jobs, app.config.ssh.max_parallel, move |(spec, row, t)| {
            let client = client2.clone();
            let bar = bar2.clone();
            async move {
                let r = client.wait_ready(&t, timeout).await.map_err(|e| match e {
                    // Report the profile's timeout, which the user set, not what was left of it.
                    ssh::SshError::Timeout {
                        node, addr, last, ..
                    } => ssh::SshError::Timeout {
                        node,
                        addr,
                        after: full_timeout,
                        last,
                    },
                    other => other,
                });
                let r = match r {
                    Ok(session) => {
                        let key = ssh::public_key_openssh(&session.host_key);
                        session.close().await;
                        bar.inc(1);
                        Ok(key)
                    }
                    Err(e) => Err(e),
                };
                (spec, row, r)
            }
        });
        let results = interrupt.race(async { Ok(waits.await) }).await?;
        for (spec, mut row, r) in results {
            match r {
                Ok(key) => {
                    if row.host_key.is_none() {
                        app.store.set_host_key(&row.instance_id, &key)?;
                        row.host_key = Some(key);
                    }
                    up.push(row);
                }
                Err(e) => {
                    dead.push(row.instance_id.clone());
                    failed.push((spec, NodeFailure::from_err(&e)));
                }
            }
        }
    } else {
        bar.inc(running.len() as u64);
        up.extend(running.into_iter().map(|(_, r)| r));
    }

    // Failed nodes are terminated now, whatever happens next.
    if !dead.is_empty() {
        provider.terminate(&dead).await?;
        for id in &dead {
            app.store
                .observe_node(id, InstanceState::Terminated, None, None, now_millis())?;
        }
    }
    Ok((up, failed))
}

/// A file to write on a node: destination, contents, mode.
type Upload = (String, Vec<u8>, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// First configuration after launch: every file, the workers file, `configure`.
    Launch,
    /// Workers were added: files to the master and the new workers, then `on_workers_change`.
    AddWorkers,
    /// `update-slaves-file`: the workers file, then `on_workers_change`.
    WorkersFile,
}

/// Pushes the profile's files, writes the workers file and runs the configure commands on the
/// master.
#[allow(clippy::too_many_arguments)]
async fn configure(
    app: &App,
    cluster: &ClusterRow,
    client: &Client,
    renderer: &Renderer,
    meta: &Meta<'_>,
    all: &[NodeRow],
    new_nodes: &[NodeRow],
    step: Step,
) -> Result<(), Error> {
    let profile = meta.profile;
    let facts = |n: &NodeRow| {
        let address = n.address.clone().unwrap_or_default();
        NodeFacts {
            name: node_name(&cluster.name, n.role, n.index),
            role: n.role,
            index: n.index,
            private_address: n.private_address.clone().unwrap_or_else(|| address.clone()),
            address,
        }
    };
    let master = all
        .iter()
        .find(|n| n.role == Role::Master)
        .ok_or_else(|| Error::runtime(format!("cluster {} has no master", cluster.name)))?;
    let mut workers: Vec<&NodeRow> = all.iter().filter(|n| n.role == Role::Worker).collect();
    workers.sort_by_key(|n| n.index);
    let worker_facts: Vec<NodeFacts> = workers.iter().map(|n| facts(n)).collect();

    // The intra-cluster key first: pushed files may start services that log in between nodes.
    if profile.intra_cluster_key && step != Step::WorkersFile {
        let others = new_nodes
            .iter()
            .filter(|n| n.role != Role::Master)
            .map(|n| target(n, cluster))
            .collect::<Result<Vec<_>, _>>()?;
        crate::cluster::intra_key::install(
            client,
            &target(master, cluster)?,
            others,
            step == Step::Launch,
            app.config.ssh.max_parallel,
        )
        .await?;
    }

    // Which files go where in this step.
    // Per node: (destination, contents, mode) of each file it gets.
    let mut uploads: Vec<(Target, Vec<Upload>)> = Vec::new();
    if step != Step::WorkersFile {
        let mut targets: Vec<&NodeRow> = new_nodes.iter().collect();
        if step == Step::AddWorkers {
            targets.push(master);
        }
        for node in targets {
            let mut files = Vec::new();
            for f in &profile.files {
                let wanted = match f.to {
                    FileTarget::All => true,
                    FileTarget::Master => node.role == Role::Master,
                    FileTarget::Workers => node.role == Role::Worker,
                };
                if !wanted {
                    continue;
                }
                let ctx = ConfigureContext {
                    boot: meta.boot(node.role, node.index),
                    node: facts(node),
                    master: facts(master),
                    workers: worker_facts.clone(),
                };
                let text = renderer.render(&f.template, &ctx)?;
                let mode = parse_mode(&f.mode).map_err(Error::invalid)?;
                files.push((f.dest.clone(), text.into_bytes(), mode));
            }
            if !files.is_empty() {
                uploads.push((target(node, cluster)?, files));
            }
        }
    }
    if !uploads.is_empty() {
        let spinner = app.printer.spinner("pushing files");
        let c = client.clone();
        let results = ssh::fan_out(uploads, app.config.ssh.max_parallel, move |(t, files)| {
            let client = c.clone();
            async move {
                let session = client.connect(&t).await?;
                for (dest, data, mode) in &files {
                    session.upload(data, dest, *mode).await?;
                }
                session.close().await;
                Ok::<_, ssh::SshError>(())
            }
        })
        .await;
        spinner.finish_and_clear();
        for r in results {
            r?;
        }
    }

    let session = client.connect(&target(master, cluster)?).await?;
    if let Some(path) = &profile.workers_file {
        let mut list = String::new();
        for w in &worker_facts {
            list.push_str(&w.private_address);
            list.push('\n');
        }
        session.upload(list.as_bytes(), path, 0o644).await?;
    }
    let commands = match step {
        Step::Launch => &profile.configure,
        Step::AddWorkers | Step::WorkersFile => &profile.on_workers_change,
    };
    if !commands.is_empty() {
        let spinner = app.printer.spinner("configuring the master");
        for command in commands {
            tracing::info!(cluster = %cluster.name, command = %command, "running on the master");
            let out = session.run(command).await;
            if let Err(e) = out {
                spinner.finish_and_clear();
                session.close().await;
                return Err(e.into());
            }
        }
        spinner.finish_and_clear();
    }
    session.close().await;
    Ok(())
}

/// Terminates what `request` launched in `cluster` (found in the store and by the request's tag
/// at the provider), waits until it is gone, and (for a whole cluster) releases the cluster's
/// resources.
async fn rollback<P: Provider>(
    app: &App,
    provider: &P,
    cluster: &ClusterRow,
    request: &RequestId,
    whole_cluster: bool,
) -> Result<(), Error> {
    let known = app
        .store
        .nodes_of(cluster.id)?
        .into_iter()
        .filter(|n| n.request_id == request.as_str() && !n.state.is_gone())
        .map(|n| n.instance_id);
    let selector = Selector {
        request: Some(request.clone()),
        ..Default::default()
    };
    terminate_all(app, provider, cluster, known, &selector).await?;
    if whole_cluster {
        provider.release(&cluster_ref(cluster)).await?;
    }
    Ok(())
}

/// Terminates the `known` instances and every one the provider reports under `selector` that is
/// not gone yet (it may have been launched but never recorded), then waits until all are gone.
/// Returns the ids it terminated.
async fn terminate_all<P: Provider>(
    app: &App,
    provider: &P,
    cluster: &ClusterRow,
    known: impl IntoIterator<Item = String>,
    selector: &Selector,
) -> Result<Vec<String>, Error> {
    let mut ids: BTreeSet<String> = known.into_iter().collect();
    let tagged = provider.describe(selector).await?;
    ids.extend(
        tagged
            .into_iter()
            .filter(|i| !i.state.is_gone())
            .map(|i| i.id),
    );
    let ids: Vec<String> = ids.into_iter().collect();
    terminate_and_wait(app, provider, cluster, &ids).await?;
    Ok(ids)
}

async fn terminate_and_wait<P: Provider>(
    app: &App,
    provider: &P,
    cluster: &ClusterRow,
    ids: &[String],
) -> Result<(), Error> {
    if !ids.is_empty() {
        provider.terminate(ids).await?;
    }
    let spinner = app
        .printer
        .spinner(format!("waiting for {} nodes to terminate", ids.len()));
    let deadline = Instant::now() + TERMINATE_TIMEOUT;
    let mut delay = Duration::from_millis(250);
    let selector = Selector {
        owner: Some(cluster.owner.clone()),
        cluster: Some(cluster.name.clone()),
        ..Default::default()
    };
    loop {
        let now = now_millis();
        let seen: HashMap<String, Instance> = provider
            .describe(&selector)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let mut left = 0;
        for id in ids {
            match seen.get(id) {
                Some(i) => {
                    app.store.observe_node(id, i.state, None, None, now)?;
                    if !i.state.is_gone() {
                        left += 1;
                    }
                }
                None => app
                    .store
                    .observe_node(id, InstanceState::Terminated, None, None, now)?,
            }
        }
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            spinner.finish_and_clear();
            return Err(Error::runtime(format!(
                "{left} nodes of {} are still not terminated after {} minutes",
                cluster.name,
                TERMINATE_TIMEOUT.as_secs() / 60
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    spinner.finish_and_clear();
    Ok(())
}

/// Finishes the rollback of a failed launch: terminates what the store still holds as live for
/// the cluster and what its request launched, then releases the cluster's resources unless a
/// newer cluster of the same name now holds them.
pub async fn finish_rollback<P: Provider>(
    app: &App,
    provider: &P,
    cluster: &ClusterRow,
) -> Result<usize, Error> {
    let known = live_nodes(app, cluster)?.into_iter().map(|n| n.instance_id);
    let selector = Selector {
        request: Some(cluster.request_id.clone()),
        ..Default::default()
    };
    let ids = terminate_all(app, provider, cluster, known, &selector).await?;
    let name_taken = app
        .store
        .find_cluster(&cluster.owner, &cluster.name)?
        .is_some_and(|c| c.id != cluster.id && c.state.is_live());
    if !name_taken {
        provider.release(&cluster_ref(cluster)).await?;
    }
    Ok(ids.len())
}

/// Terminates a whole cluster: every node the store knows and every instance the provider holds
/// under its tags, then its per-cluster resources.
pub async fn terminate<P: Provider>(
    app: &App,
    provider: &P,
    cluster: &ClusterRow,
) -> Result<usize, Error> {
    app.store
        .set_cluster_state(cluster.id, ClusterState::Terminating, None)?;
    let known = live_nodes(app, cluster)?.into_iter().map(|n| n.instance_id);
    let selector = Selector {
        owner: Some(cluster.owner.clone()),
        cluster: Some(cluster.name.clone()),
        ..Default::default()
    };
    let ids = terminate_all(app, provider, cluster, known, &selector).await?;
    provider.release(&cluster_ref(cluster)).await?;
    app.store
        .set_cluster_state(cluster.id, ClusterState::Terminated, None)?;
    Ok(ids.len())
}

/// Brings the store up to date with what the provider reports for the owner's clusters: node
/// states and addresses, and usage intervals (a sighting, or an end).
pub async fn refresh<P: Provider>(
    app: &App,
    provider: &P,
    clusters: &[ClusterRow],
) -> Result<(), Error> {
    let watched: Vec<&ClusterRow> = clusters
        .iter()
        .filter(|c| c.provider == provider.kind().as_str())
        .collect();
    let mut nodes: Vec<NodeRow> = Vec::new();
    for c in &watched {
        nodes.extend(
            app.store
                .nodes_of(c.id)?
                .into_iter()
                .filter(|n| n.ended_at.is_none()),
        );
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let seen: HashMap<String, Instance> = provider
        .describe(&Selector {
            owner: Some(app.owner.clone()),
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let now = now_millis();
    for n in nodes {
        match seen.get(&n.instance_id) {
            Some(i) => app.store.observe_node(
                &n.instance_id,
                i.state,
                i.address.as_deref(),
                i.private_address.as_deref(),
                now,
            )?,
            None if now - n.launched_at > VANISH_GRACE_MS => {
                app.store.node_vanished(&n.instance_id)?
            }
            None => {}
        }
    }
    Ok(())
}
