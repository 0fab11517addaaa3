//! The commands that create and end clusters: launch-cluster, launch-master, launch-slaves,
//! terminate-cluster, delete-cluster, reconcile.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use super::{find_cluster, fresh_cluster, invocation, parse_env};
use crate::app::App;
use crate::cli::LaunchOptions;
use crate::cluster::launch::{self, LaunchRequest};
use crate::cluster::provider::Provider;
use crate::cluster::terminate::live_nodes;
use crate::cluster::{reconcile, terminate};
use crate::error::Error;
use crate::model::{ClusterName, ClusterState, Owner, RequestId, Role};
use crate::quota::Admission;

/// Finishes or undoes what crashed or interrupted commands left behind, before a command that
/// launches or terminates (DESIGN.md: reconcile runs at the start of launch and terminate). A
/// failure here is reported, not fatal: the command itself may still work.
async fn reconcile_first<P: Provider>(app: &App, provider: &P, owner: &Owner) {
    let options = reconcile::Options::new(false);
    if let Err(e) = reconcile::reconcile(app.ctx(), provider, Some(owner), &options).await {
        app.printer.warn(format!(
            "could not reconcile leftovers first: {}",
            crate::error::one_line(&e)
        ));
    }
}

pub(super) async fn launch_cmd(
    app: &App,
    owner: &Owner,
    name: &str,
    workers: u32,
    opts: &LaunchOptions,
) -> Result<ExitCode, Error> {
    let name = ClusterName::parse(name)?;
    let profile_name = opts
        .profile
        .clone()
        .unwrap_or_else(|| app.default_profile());
    let profile = app.profiles.resolve(&profile_name)?;
    let env = parse_env(&opts.env)?;
    let req = LaunchRequest {
        name,
        workers,
        profile,
        env,
        configure: !opts.no_configure,
    };
    launch::validate_request(&req.profile, app.config.provider, req.workers, 0)?;
    let provider = app.provider(app.config.provider).await?;
    reconcile_first(app, provider.as_ref(), owner).await;
    let request = RequestId::new();
    let cluster = launch::launch(
        app.ctx(),
        provider.as_ref(),
        owner,
        &request,
        req,
        &Admission::unlimited(),
    )
    .await?;
    let nodes = live_nodes(app.ctx(), &cluster)?;
    let workers = nodes.iter().filter(|n| n.role == Role::Worker).count();
    app.printer.out(format!(
        "cluster {} is up: 1 master + {workers} workers (profile {}, {} provider)\nlog in with: {} login {}",
        cluster.name,
        cluster.profile,
        cluster.provider,
        invocation(),
        cluster.name
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn launch_slaves(
    app: &App,
    owner: &Owner,
    name: &str,
    count: u32,
) -> Result<ExitCode, Error> {
    if count == 0 {
        return Err(Error::invalid("launch-slaves needs a count of at least 1"));
    }
    let cluster = fresh_cluster(app, owner, name).await?;
    if !cluster.state.is_up() {
        return Err(Error::invalid(format!(
            "cluster {} is {}; workers can be added once it is running",
            cluster.name,
            cluster.state.as_str()
        )));
    }
    let provider = app.provider(cluster.provider).await?;
    reconcile_first(app, provider.as_ref(), owner).await;
    let request = RequestId::new();
    let added = launch::add_workers(
        app.ctx(),
        provider.as_ref(),
        &cluster,
        count,
        &request,
        &Admission::unlimited(),
    )
    .await?;
    let names: Vec<String> = added
        .iter()
        .map(|n| crate::model::node_name(&cluster.name, n.role, n.index))
        .collect();
    app.printer
        .out(format!("added {} to {}", names.join(", "), cluster.name))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn terminate_cmd(
    app: &App,
    owner: &Owner,
    name: &str,
    yes: bool,
) -> Result<ExitCode, Error> {
    let cluster = find_cluster(app, owner, name)?;
    let nodes = live_nodes(app.ctx(), &cluster)?;
    if cluster.state == ClusterState::Terminated && nodes.is_empty() {
        app.printer
            .status(format!("cluster {} is already terminated", cluster.name));
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::invalid(format!(
                "refusing to terminate {} without confirmation: pass --yes",
                cluster.name
            )));
        }
        let question = format!(
            "Terminate cluster {} ({} nodes, profile {})? [y/N] ",
            cluster.name,
            nodes.len(),
            cluster.profile
        );
        app.printer.suspend(|| {
            use std::io::Write;
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "{question}");
            let _ = e.flush();
        });
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            app.printer.status("not terminated");
            return Ok(ExitCode::from(crate::error::exit::BAD_INPUT));
        }
    }
    let provider = app.provider(cluster.provider).await?;
    reconcile_first(app, provider.as_ref(), owner).await;
    let n = terminate::terminate(app.ctx(), provider.as_ref(), &cluster).await?;
    app.printer
        .status(format!("terminated cluster {} ({n} nodes)", cluster.name));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn delete_cluster(
    app: &App,
    owner: &Owner,
    name: &str,
) -> Result<ExitCode, Error> {
    let cluster = find_cluster(app, owner, name)?;
    let provider = app.provider(cluster.provider).await?;
    let deleted = reconcile::delete_cluster(app.ctx(), provider.as_ref(), &cluster).await?;
    app.printer.status(format!(
        "deleted cluster {} ({} instances terminated); its usage stays in `stratus usage`",
        cluster.name,
        deleted.instances.len()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Reconciles the caller's clusters on every provider they use, and on the site's.
pub(super) async fn reconcile_cmd(
    app: &App,
    owner: &Owner,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut kinds = vec![app.config.provider];
    for c in app.store.list_clusters(Some(owner))? {
        if !kinds.contains(&c.provider) {
            kinds.push(c.provider);
        }
    }
    let mut actions = Vec::new();
    for kind in kinds {
        let provider = app.provider(kind).await?;
        let done = reconcile::reconcile(
            app.ctx(),
            provider.as_ref(),
            Some(owner),
            &reconcile::Options::new(dry_run),
        )
        .await?;
        actions.extend(done);
    }
    if json {
        app.printer.json(&actions)?;
    } else if actions.is_empty() {
        app.printer.status("nothing to reconcile");
    }
    Ok(ExitCode::SUCCESS)
}
