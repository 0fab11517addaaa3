//! The commands that create and end clusters: launch-cluster, launch-master, launch-slaves,
//! terminate-cluster (through the runner: the setuid wrapper's in a multi-user install, the same
//! code in this process otherwise), delete-cluster and reconcile (the caller's own state).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use super::client::{self, call};
use super::{find_cluster, invocation};
use crate::cli::LaunchOptions;
use crate::cluster::reconcile;
use crate::core::error::Error;
use crate::core::model::{ClusterName, Owner};
use crate::service::app::App;
use crate::service::caller::Caller;
use crate::service::protocol::{ClusterView, Launched, Request};

pub(super) async fn launch_cmd(
    app: &App,
    caller: &Caller,
    name: &str,
    workers: u32,
    opts: &LaunchOptions,
) -> Result<ExitCode, Error> {
    // Checked here too, so a typo is reported before the wrapper is even started.
    ClusterName::parse(name)?;
    let env = super::parse_env(&opts.env)?;
    let answer = call(
        app,
        caller,
        Request::Launch {
            name: name.to_owned(),
            workers,
            profile: opts.profile.clone(),
            env,
            configure: !opts.no_configure,
        },
    )
    .await?;
    let launched: Launched = serde_json::from_value(answer)
        .map_err(|e| Error::runtime(format!("the runner's answer is not a launch: {e}")))?;
    if client::multi_user(app) {
        client::keep_key(app, &launched.cluster, &launched.private_key)?;
    }
    let c = &launched.cluster;
    let workers = c
        .nodes
        .iter()
        .filter(|n| n.role == crate::core::model::Role::Worker && !n.state.is_gone())
        .count();
    app.printer.out(format!(
        "cluster {} is up: 1 master + {workers} workers (profile {}, {} provider)\nlog in with: {} login {}",
        c.name,
        c.profile,
        c.provider,
        invocation(),
        c.name
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn launch_slaves(
    app: &App,
    caller: &Caller,
    name: &str,
    count: u32,
    owner: Option<String>,
) -> Result<ExitCode, Error> {
    ClusterName::parse(name)?;
    if count == 0 {
        return Err(Error::invalid("launch-slaves needs a count of at least 1"));
    }
    let answer = call(
        app,
        caller,
        Request::LaunchSlaves {
            name: name.to_owned(),
            count,
            owner,
        },
    )
    .await?;
    let added: Vec<String> = answer["added"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if client::multi_user(app)
        && let Ok(view) = serde_json::from_value::<ClusterView>(answer["cluster"].clone())
    {
        client::keys_of(app, &view).write_known_hosts(&view.nodes)?;
    }
    app.printer
        .out(format!("added {} to {name}", added.join(", ")))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn terminate_cmd(
    app: &App,
    caller: &Caller,
    name: &str,
    yes: bool,
    owner: Option<String>,
) -> Result<ExitCode, Error> {
    ClusterName::parse(name)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::invalid(format!(
                "refusing to terminate {name} without confirmation: pass --yes"
            )));
        }
        let question = format!("Terminate cluster {name}? [y/N] ");
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
            return Ok(ExitCode::from(crate::core::error::exit::BAD_INPUT));
        }
    }
    let answer = call(
        app,
        caller,
        Request::Terminate {
            name: name.to_owned(),
            owner,
        },
    )
    .await?;
    app.printer.status(format!(
        "terminated cluster {name} ({} nodes)",
        answer["terminated"].as_u64().unwrap_or(0)
    ));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn delete_cluster(
    app: &App,
    owner: &Owner,
    name: &str,
) -> Result<ExitCode, Error> {
    if client::multi_user(app) {
        return Err(Error::invalid(
            "in a multi-user install, delete-cluster is the instructor's (as the service account) or reconcile's job",
        ));
    }
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
