//! The commands: each resolves its arguments into validated domain types (names, counts,
//! profiles, env), then calls the cluster lifecycle and prints through the printer.
//!
//! - `launch`: launch-cluster, launch-master, launch-slaves, terminate-cluster, delete-cluster,
//!   reconcile;
//! - `access`: list, login, exec, push, proxy, update-slaves-file;
//! - `info`: usage, profiles.

mod access;
mod accounting;
mod admin;
mod info;
mod launch;
pub(crate) mod remote;
pub(crate) mod table;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{App, Settings};
use crate::caller::Caller;
use crate::cli::{AdminAction, Cli, Command};
use crate::cluster::observe;
use crate::error::Error;
use crate::model::{ClusterName, Millis, Owner, ProviderKind};
use crate::printer::Printer;
use crate::quota::runner::find_cluster;
use crate::store::ClusterRow;

pub async fn run(cli: Cli, printer: Arc<Printer>) -> Result<ExitCode, Error> {
    let settings = Settings::for_caller(cli.config.as_deref())?;
    let caller = Caller::from_real_uid()?;
    if let Command::Admin {
        action: AdminAction::Install { .. } | AdminAction::Doctor { .. },
    } = &cli.command
    {
        // These work on an install, not on a state directory.
        return admin::run(&settings, &printer, cli.command).await;
    }
    if let Command::Admin {
        action: AdminAction::IamPolicy,
    } = &cli.command
    {
        return crate::cluster::provider::ec2::iam_policy::command(&settings, &printer);
    }
    let app = App::new(settings, printer)?;
    let owner = &caller.owner;
    match cli.command {
        Command::LaunchCluster(a) => {
            if a.count == 0 {
                return Err(Error::invalid(
                    "a cluster needs at least 1 worker; use launch-master for a master alone",
                ));
            }
            launch::launch_cmd(&app, &caller, &a.name, a.count, &a.options).await
        }
        Command::LaunchMaster(a) => launch::launch_cmd(&app, &caller, &a.name, 0, &a.options).await,
        Command::LaunchSlaves { name, count, owner } => {
            launch::launch_slaves(&app, &caller, &name, count, owner).await
        }
        Command::TerminateCluster { name, yes, owner } => {
            launch::terminate_cmd(&app, &caller, &name, yes, owner).await
        }
        Command::DeleteCluster { name } => launch::delete_cluster(&app, owner, &name).await,
        Command::Reconcile { dry_run, json } => {
            launch::reconcile_cmd(&app, owner, dry_run, json).await
        }
        Command::List {
            name,
            all,
            owner,
            everyone,
            json,
        } => access::list(&app, &caller, name.as_deref(), all, (owner, everyone), json).await,
        Command::Login { name, ssh_args } => access::login(&app, &caller, &name, &ssh_args).await,
        Command::Exec {
            name,
            all,
            json,
            command,
        } => access::exec(&app, &caller, &name, all, json, &command.join(" ")).await,
        Command::Push {
            name,
            file,
            dest,
            all,
        } => access::push(&app, &caller, &name, &file, dest.as_deref(), all).await,
        Command::Proxy { name, port } => access::proxy(&app, &caller, &name, port).await,
        Command::UpdateSlavesFile { name } => {
            access::update_slaves_file(&app, &caller, &name).await
        }
        Command::Usage {
            json,
            owner,
            everyone,
        } => info::usage(&app, &caller, json, owner, everyone).await,
        Command::Quota { json } => info::quota(&app, &caller, json).await,
        Command::Profiles { action } => info::profiles(&app, action),
        Command::Admin {
            action:
                AdminAction::Image {
                    action: crate::cli::ImageAction::Build { profile, dry_run },
                },
        } => crate::cluster::image::command(&app, &caller, &profile, dry_run).await,
        Command::Admin { action } => admin::audit(&app, &caller, action).await,
        Command::Accounting { action } => accounting::run(&app, &caller, action).await,
        Command::Node { .. } | Command::Runner => Err(Error::runtime(
            "__node and runner are handled before the app starts",
        )),
    }
}

/// `--env K=V` pairs, with keys fit for `{{env.KEY}}`.
pub fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut env = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--env {p:?}: expected KEY=VALUE")))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    check_env(env)
}

/// Checks `{{env.KEY}}` values: keys of letters, digits and `_` (not starting with a digit),
/// values without NUL, at most 64 of them and 64 KiB in all (the runner gets them from a
/// request).
pub fn check_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    let mut size = 0;
    for (k, v) in &env {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.len() <= 64
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::invalid(format!(
                "--env {k:?}: the key must be 1 to 64 letters, digits and '_', not starting with a digit"
            )));
        }
        if v.contains('\0') {
            return Err(Error::invalid(format!("--env {k}: the value contains NUL")));
        }
        size += k.len() + v.len();
    }
    if env.len() > 64 || size > 64 * 1024 {
        return Err(Error::invalid("--env: at most 64 values and 64 KiB in all"));
    }
    Ok(env)
}

/// A time given on the command line: RFC 3339, or a date (its start, UTC).
pub fn parse_time(s: &str) -> Result<crate::model::Millis, Error> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let day: jiff::civil::Date = s.parse().map_err(|_| {
        Error::invalid(format!(
            "{s:?} is not a time: use a date like 2026-11-01 or an RFC 3339 time"
        ))
    })?;
    Ok(day
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map_err(|e| Error::invalid(e.to_string()))?
        .timestamp()
        .as_millisecond())
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

/// How long an ended cluster stays on the default `list`.
const RECENT: Millis = 24 * 3600 * 1000;

/// Which clusters `list` shows: live ones and those that ended in the last day (all with
/// `all`); with a name, the live one of that name, else the most recent. Never one that
/// `delete-cluster` removed.
pub(crate) fn shown(
    clusters: Vec<ClusterRow>,
    name: Option<&ClusterName>,
    all: bool,
    now: Millis,
) -> Vec<ClusterRow> {
    let mut visible: Vec<ClusterRow> = clusters.into_iter().filter(|c| !c.hidden).collect();
    if let Some(n) = name {
        visible.retain(|c| c.name == *n);
        let pick = visible
            .iter()
            .rposition(|c| c.state.is_live())
            .or_else(|| visible.len().checked_sub(1));
        return pick.map(|i| visible.swap_remove(i)).into_iter().collect();
    }
    if !all {
        visible.retain(|c| {
            c.state.is_live() || now - c.terminated_at.unwrap_or(c.updated_at) < RECENT
        });
    }
    visible
}

/// Refreshes the store from every provider these clusters use. A provider that cannot be
/// reached is reported, not fatal: what was last recorded is shown.
pub(crate) async fn refresh_all(app: &App, clusters: &[ClusterRow]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterState, ProviderKind, RequestId};
    use crate::store::ClusterRecord;

    fn row(id: i64, name: &str, state: ClusterState, ended: Option<Millis>) -> ClusterRow {
        ClusterRow {
            id,
            name: ClusterName::parse(name).unwrap(),
            owner: Owner::parse("alice").unwrap(),
            profile: "p".into(),
            provider: ProviderKind::Local,
            state,
            request_id: RequestId::new(),
            created_at: 0,
            updated_at: ended.unwrap_or(0),
            terminated_at: ended,
            failure: None,
            record: ClusterRecord {
                profile: crate::cluster::profile::Profile::for_tests("p"),
                env: Default::default(),
            },
            hidden: false,
            reap_after: None,
            reap_reason: None,
        }
    }

    #[test]
    fn list_shows_live_and_recent_clusters_and_one_per_name() {
        let now = 10 * RECENT;
        let clusters = vec![
            row(1, "demo", ClusterState::Terminated, Some(now - 2 * RECENT)),
            row(2, "demo", ClusterState::Configured, None),
            row(3, "old", ClusterState::Failed, Some(now - 2 * RECENT)),
            row(4, "fresh", ClusterState::Terminated, Some(now - 1000)),
        ];
        let ids = |v: Vec<ClusterRow>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(shown(clusters.clone(), None, false, now)), vec![2, 4]);
        assert_eq!(
            ids(shown(clusters.clone(), None, true, now)),
            vec![1, 2, 3, 4]
        );
        let demo = ClusterName::parse("demo").unwrap();
        assert_eq!(
            ids(shown(clusters.clone(), Some(&demo), false, now)),
            vec![2]
        );
        let old = ClusterName::parse("old").unwrap();
        assert_eq!(
            ids(shown(clusters.clone(), Some(&old), false, now)),
            vec![3]
        );
        let mut hidden = clusters;
        hidden[3].hidden = true;
        assert_eq!(ids(shown(hidden, None, true, now)), vec![1, 2, 3]);
    }
}
