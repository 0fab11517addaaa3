//! Configuring a cluster over SSH once every node answers: the intra-cluster key, the
//! profile's files (rendered per node, with every address known), the master's workers file, and
//! the profile's commands on the master. Every step has a deadline: a command that hangs fails
//! the launch (which then rolls back) instead of keeping instances running forever.

use std::time::Duration;

use crate::cluster::Ctx;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::meta::{Meta, facts, target};
use crate::cluster::ssh::{self, Client, Target};
use crate::cluster::terminate::live_nodes;
use crate::config::profile::{FileTarget, parse_mode};
use crate::core::error::Error;
use crate::core::model::{RequestId, Role};
use crate::store::{ClusterRow, NodeRow};
use crate::templates::{NodeFacts, Renderer};

/// A file to write on a node: destination, contents, mode.
type Upload = (String, Vec<u8>, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// First configuration after launch: every file, the workers file, `configure`.
    Launch,
    /// Workers were added: files to the master and the new workers, then `on_workers_change`.
    AddWorkers,
    /// `update-slaves-file`: the workers file, then `on_workers_change`.
    WorkersFile,
}

/// Pushes the profile's files, writes the workers file and runs the configure commands on the
/// master, all within the profile's `configure_timeout_secs`.
#[allow(clippy::too_many_arguments)]
pub async fn configure(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    client: &Client,
    renderer: &Renderer,
    meta: &Meta<'_>,
    all: &[NodeRow],
    new_nodes: &[NodeRow],
    step: Step,
) -> Result<(), Error> {
    let limit = Duration::from_secs(meta.profile.configure_timeout_secs.max(1));
    match tokio::time::timeout(
        limit,
        configure_steps(ctx, cluster, client, renderer, meta, all, new_nodes, step),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Error::runtime(format!(
            "configuring {} took longer than {}s (the profile's configure_timeout_secs)",
            cluster.name,
            limit.as_secs()
        ))),
    }
}

/// The intra-cluster key (when the profile asks for it), then the owner's own keys
/// (`launch-cluster --key`), on every node this step adds (the master too, at launch).
#[allow(clippy::too_many_arguments)]
async fn keys_step(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    client: &Client,
    intra_cluster_key: bool,
    master: &NodeRow,
    new_nodes: &[NodeRow],
    step: Step,
) -> Result<(), Error> {
    if intra_cluster_key {
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
            ctx.ssh.max_parallel,
        )
        .await?;
    }
    if cluster.record.extra_keys.is_empty() {
        return Ok(());
    }
    let nodes = new_nodes
        .iter()
        .map(|n| target(n, cluster))
        .collect::<Result<Vec<_>, _>>()?;
    crate::cluster::intra_key::authorize_own_keys(
        client,
        nodes,
        &cluster.record.extra_keys,
        ctx.ssh.max_parallel,
    )
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn configure_steps(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    client: &Client,
    renderer: &Renderer,
    meta: &Meta<'_>,
    all: &[NodeRow],
    new_nodes: &[NodeRow],
    step: Step,
) -> Result<(), Error> {
    let profile = meta.profile;
    let facts = |n: &NodeRow| facts(&cluster.name, n);
    let master = all
        .iter()
        .find(|n| n.role == Role::Master)
        .ok_or_else(|| Error::runtime(format!("cluster {} has no master", cluster.name)))?;
    let mut workers: Vec<&NodeRow> = all.iter().filter(|n| n.role == Role::Worker).collect();
    workers.sort_by_key(|n| n.index);
    let worker_facts: Vec<NodeFacts> = workers.iter().map(|n| facts(n)).collect();

    // The keys first: pushed files may start services that log in between nodes.
    if step != Step::WorkersFile {
        keys_step(
            ctx,
            cluster,
            client,
            profile.intra_cluster_key,
            master,
            new_nodes,
            step,
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
                let context =
                    meta.configure_context(facts(node), facts(master), worker_facts.clone());
                let text = renderer.render(&f.template, &context)?;
                let mode = parse_mode(&f.mode).map_err(Error::invalid)?;
                files.push((f.dest.clone(), text.into_bytes(), mode));
            }
            if !files.is_empty() {
                uploads.push((target(node, cluster)?, files));
            }
        }
    }
    if !uploads.is_empty() {
        let spinner = ctx.printer.spinner("pushing files");
        let c = client.clone();
        let results = ssh::fan_out(uploads, ctx.ssh.max_parallel, move |(t, files)| {
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
        let spinner = ctx.printer.spinner("configuring the master");
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

/// Rewrites the master's workers file from the running workers and runs `on_workers_change`.
pub async fn update_workers_file(ctx: Ctx<'_>, cluster: &ClusterRow) -> Result<usize, Error> {
    let profile = &cluster.record.profile;
    let request: RequestId = cluster.request_id.clone();
    let store_id = ctx.store.id().clone();
    let meta = Meta::of(cluster, &request, &store_id);
    let renderer = Renderer::for_profile(profile)?;
    let key = ClusterKeys::of(ctx.state_dir, cluster).load()?;
    let client = Client::new(key, ctx.connect_timeout());
    let all = live_nodes(ctx, cluster)?;
    configure(
        ctx,
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
