//! The commands: each resolves its arguments into validated domain types (names, counts,
//! profiles, env), then calls the cluster lifecycle and prints through the printer.
//!
//! - `launch`: launch-cluster, launch-master, launch-slaves, terminate-cluster, delete-cluster,
//!   reconcile;
//! - `access`: list, login, exec, push, proxy, update-slaves-file;
//! - `info`: usage, profiles.

mod access;
mod info;
mod launch;
pub(crate) mod table;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{App, Settings};
use crate::caller::Caller;
use crate::cli::{Cli, Command};
use crate::cluster::observe;
use crate::error::{Error, InputError};
use crate::model::{ClusterName, Owner, ProviderKind};
use crate::printer::Printer;
use crate::store::ClusterRow;

pub async fn run(cli: Cli, printer: Arc<Printer>) -> Result<ExitCode, Error> {
    let settings = Settings::for_caller(cli.config.as_deref())?;
    let caller = Caller::from_real_uid()?;
    let app = App::new(settings, printer)?;
    let owner = &caller.owner;
    match cli.command {
        Command::LaunchCluster(a) => {
            if a.count == 0 {
                return Err(Error::invalid(
                    "a cluster needs at least 1 worker; use launch-master for a master alone",
                ));
            }
            launch::launch_cmd(&app, owner, &a.name, a.count, &a.options).await
        }
        Command::LaunchMaster(a) => launch::launch_cmd(&app, owner, &a.name, 0, &a.options).await,
        Command::LaunchSlaves { name, count } => {
            launch::launch_slaves(&app, owner, &name, count).await
        }
        Command::TerminateCluster { name, yes } => {
            launch::terminate_cmd(&app, owner, &name, yes).await
        }
        Command::DeleteCluster { name } => launch::delete_cluster(&app, owner, &name).await,
        Command::Reconcile { dry_run, json } => {
            launch::reconcile_cmd(&app, owner, dry_run, json).await
        }
        Command::List { name, all, json } => {
            access::list(&app, owner, name.as_deref(), all, json).await
        }
        Command::Login { name, ssh_args } => access::login(&app, owner, &name, &ssh_args).await,
        Command::Exec {
            name,
            all,
            json,
            command,
        } => access::exec(&app, owner, &name, all, json, &command.join(" ")).await,
        Command::Push {
            name,
            file,
            dest,
            all,
        } => access::push(&app, owner, &name, &file, dest.as_deref(), all).await,
        Command::Proxy { name, port } => access::proxy(&app, owner, &name, port).await,
        Command::UpdateSlavesFile { name } => access::update_slaves_file(&app, owner, &name).await,
        Command::Usage { json } => info::usage(&app, owner, json).await,
        Command::Profiles { action } => info::profiles(&app, action),
        Command::Node { .. } => Err(Error::runtime("__node is handled before the app starts")),
    }
}

/// `--env K=V` pairs, with keys fit for `{{env.KEY}}`.
pub fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut env = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--env {p:?}: expected KEY=VALUE")))?;
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::invalid(format!(
                "--env {p:?}: the key must be letters, digits and '_', not starting with a digit"
            )));
        }
        env.insert(k.to_owned(), v.to_owned());
    }
    Ok(env)
}

/// The caller's cluster of this name: the live one, else the most recent.
fn find_cluster(app: &App, owner: &Owner, name: &str) -> Result<ClusterRow, Error> {
    let name = ClusterName::parse(name)?;
    app.store
        .find_cluster(owner, &name)?
        .filter(|c| !c.hidden)
        .ok_or_else(|| InputError::UnknownCluster(name.to_string()).into())
}

/// The caller's live cluster of this name.
fn live_cluster(app: &App, owner: &Owner, name: &str) -> Result<ClusterRow, Error> {
    let c = find_cluster(app, owner, name)?;
    if c.state.is_live() {
        Ok(c)
    } else {
        Err(Error::invalid(format!(
            "cluster {} is {}",
            c.name,
            c.state.as_str()
        )))
    }
}

/// Refreshes the store from every provider these clusters use. A provider that cannot be
/// reached is reported, not fatal: what was last recorded is shown.
async fn refresh_all(app: &App, clusters: &[ClusterRow]) {
    let mut kinds: Vec<ProviderKind> = Vec::new();
    for c in clusters
        .iter()
        .filter(|c| c.state.is_live() || c.terminated_at.is_none())
    {
        if !kinds.contains(&c.provider) {
            kinds.push(c.provider);
        }
    }
    for kind in kinds {
        let r: Result<(), Error> = async {
            let p = app.provider(kind).await?;
            observe::refresh(app.ctx(), p.as_ref(), clusters).await
        }
        .await;
        if let Err(e) = r {
            app.printer.warn(format!(
                "cannot refresh from the {kind} provider; showing what was last recorded: {}",
                crate::error::one_line(&e)
            ));
        }
    }
}

/// The caller's live cluster of this name, with its nodes' states refreshed from the provider
/// first: a node that died since the last look is no longer a target, nor in a workers file.
async fn fresh_cluster(app: &App, owner: &Owner, name: &str) -> Result<ClusterRow, Error> {
    let cluster = live_cluster(app, owner, name)?;
    refresh_all(app, std::slice::from_ref(&cluster)).await;
    Ok(cluster)
}

/// How the user typed this command's program, for hints they can copy: `stratus` when it is
/// on PATH, `cargo run --` under `cargo run`, else the path it was run by.
pub fn invocation() -> String {
    let argv0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stratus".into());
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some()
        && std::env::var("CARGO_PKG_NAME").as_deref() == Ok("stratus")
    {
        return "cargo run --".into();
    }
    if !argv0.contains('/') {
        return argv0;
    }
    // On PATH under its own name: the short form works.
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            d.join("stratus")
                .canonicalize()
                .ok()
                .zip(std::path::Path::new(&argv0).canonicalize().ok())
                .is_some_and(|(a, b)| a == b)
        })
    });
    if on_path { "stratus".into() } else { argv0 }
}
