//! The command line: presentation only. Each command checks what it can of its arguments (so a
//! typo is reported before any wrapper starts), sends one typed request through the `client`
//! (to the service in this process, or through the setuid wrapper to the runner: decided once,
//! there), and renders the typed answer through the printer. No JSON is indexed by key here,
//! and no text arrives pre-rendered.
//!
//! - `args`: the clap types;
//! - `launch`: launch-cluster, launch-master, launch-slaves, terminate-cluster, delete-cluster,
//!   reconcile;
//! - `access`: list, login, exec, push, proxy, update-slaves-file (the SSH side runs here, as
//!   the user);
//! - `info`: usage, quota, profiles;
//! - `accounting`: snapshot, report, reap;
//! - `admin`: install, doctor, audit;
//! - `preflight`: admin preflight (the account checked before a lab);
//! - `identity`: identity init, rotate, show, delete; admin identities sync, list, rotate;
//! - `aws_files`: the student's own `~/.aws/credentials` and `~/.aws/config`, for `identity`.

mod access;
mod accounting;
mod admin;
pub(crate) mod args;
mod aws_files;
mod identity;
mod info;
mod launch;
mod preflight;
pub use args::*;
mod client;
pub mod report;
mod table;
mod units;
mod wrapper_check;

use std::process::ExitCode;
use std::sync::Arc;

use crate::core::env::Environment;
use crate::core::error::Error;
use crate::core::printer::Printer;
use crate::service::Settings;
use client::Client;

pub async fn run(cli: Cli, env: Environment, printer: Arc<Printer>) -> Result<ExitCode, Error> {
    // These work on an install, whatever its site config says (doctor reports a broken one).
    if let Command::Admin {
        action: action @ (AdminAction::Install { .. } | AdminAction::Doctor { .. }),
    } = cli.command
    {
        return admin::install_or_doctor(&printer, action);
    }
    let settings = Settings::for_caller(cli.config.as_deref(), &env)?;
    let hint = Hint(invocation(&env));
    match cli.command {
        Command::Admin {
            action: AdminAction::Install { .. } | AdminAction::Doctor { .. },
        } => unreachable!("handled above"),
        // This works on the profiles, not through the service.
        Command::Profiles { action } => return info::profiles(&settings, &printer, action),
        Command::Admin {
            action: AdminAction::IamPolicy,
        } => return admin::iam_policy(&settings, &printer),
        Command::Admin {
            action:
                AdminAction::Identities {
                    action: IdentitiesAction::Policy,
                },
        } => return admin::identities_policy(&settings, &printer),
        Command::Node { .. } | Command::Runner | Command::Serve => {
            return Err(Error::runtime(
                "__node, runner and serve are handled before the CLI starts",
            ));
        }
        _ => {}
    }
    let client = Client::new(settings, printer)?;
    match cli.command {
        Command::LaunchCluster(a) => {
            if a.count == 0 {
                return Err(Error::invalid(
                    "a cluster needs at least 1 worker; use launch-master for a master alone",
                ));
            }
            launch::launch_cmd(&client, &hint, &a.name, a.count, &a.options).await
        }
        Command::LaunchMaster(a) => {
            launch::launch_cmd(&client, &hint, &a.name, 0, &a.options).await
        }
        Command::LaunchSlaves { name, count, owner } => {
            launch::launch_slaves(&client, &name, count, owner).await
        }
        Command::TerminateCluster { name, yes, owner } => {
            launch::terminate_cmd(&client, &name, yes, owner).await
        }
        Command::Extend {
            name,
            duration,
            owner,
            json,
        } => launch::extend_cmd(&client, &name, &duration, owner, json).await,
        Command::DeleteCluster { name } => launch::delete_cluster(&client, &name).await,
        Command::Reconcile { dry_run, json } => launch::reconcile_cmd(&client, dry_run, json).await,
        Command::List {
            name,
            all,
            owner,
            everyone,
            json,
        } => {
            access::list(
                &client,
                &hint,
                name.as_deref(),
                all,
                (owner, everyone),
                json,
            )
            .await
        }
        Command::Login { name, ssh_args } => access::login(&client, &name, &ssh_args).await,
        Command::Exec {
            name,
            all,
            json,
            command,
        } => access::exec(&client, &name, all, json, &command.join(" ")).await,
        Command::Push {
            name,
            file,
            dest,
            all,
        } => access::push(&client, &name, &file, dest.as_deref(), all).await,
        Command::Proxy { name, port } => access::proxy(&client, &name, port).await,
        Command::UpdateSlavesFile { name } => access::update_slaves_file(&client, &name).await,
        Command::Usage {
            json,
            owner,
            everyone,
        } => info::usage(&client, json, owner, everyone).await,
        Command::Quota { json, user } => info::quota(&client, json, user).await,
        Command::Identity { action } => identity::run(&client, action, &env).await,
        Command::Keys { action } => identity::keys(&client, action, &env).await,
        Command::Admin { action } => admin_cmd(&client, action, &env).await,
        Command::Accounting { action } => accounting::run(&client, action).await,
        Command::Profiles { .. } | Command::Node { .. } | Command::Runner | Command::Serve => {
            unreachable!("handled above")
        }
    }
}

/// The instructor's commands that go through the service.
async fn admin_cmd(
    client: &Client,
    action: AdminAction,
    env: &Environment,
) -> Result<ExitCode, Error> {
    match action {
        AdminAction::Image {
            action: ImageAction::Build { profile, dry_run },
        } => admin::image_build(client, profile, dry_run).await,
        AdminAction::Preflight {
            students,
            profile,
            workers,
            json,
        } => preflight::preflight(client, profile, students, workers, json).await,
        AdminAction::Identities { action } => identity::admin(client, action, env).await,
        AdminAction::Class { json } => admin::class(client, json).await,
        action => admin::audit(client, action).await,
    }
}

/// How to run stratus again, for hints the user can copy (`stratus`, `cargo run --`).
pub(crate) struct Hint(String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the user typed this command's program, for hints they can copy: `stratus` when it is
/// on PATH, `cargo run --` under `cargo run`, else the path it was run by.
fn invocation(env: &Environment) -> String {
    let argv0 = env.argv0.clone().unwrap_or_else(|| "stratus".into());
    if env.under_cargo {
        return "cargo run --".into();
    }
    if !argv0.contains('/') {
        return argv0;
    }
    // On PATH under its own name: the short form works.
    let on_path = env.path.as_ref().is_some_and(|path| {
        std::env::split_paths(path).any(|d| {
            d.join("stratus")
                .canonicalize()
                .ok()
                .zip(std::path::Path::new(&argv0).canonicalize().ok())
                .is_some_and(|(a, b)| a == b)
        })
    });
    if on_path { "stratus".into() } else { argv0 }
}
