//! The commands that create and end clusters: launch-cluster, launch-master, launch-slaves,
//! terminate-cluster, delete-cluster and reconcile.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use super::Hint;
use super::client::Client;
use crate::cli::LaunchOptions;
use crate::core::error::Error;
use crate::core::model::{ClusterName, Role};
use crate::core::money::dollars_text;
use crate::service::protocol::{Request, Response};

/// The answer `request` must have: anything else is the service's mistake.
macro_rules! expect_answer {
    ($answer:expr, $variant:path) => {
        match $answer {
            $variant(x) => x,
            other => {
                return Err(Error::runtime(format!(
                    "the service answered {other:?} to a request of another kind"
                )));
            }
        }
    };
}
pub(crate) use expect_answer as expect;

pub(super) async fn launch_cmd(
    client: &Client,
    hint: &Hint,
    name: &str,
    workers: u32,
    opts: &LaunchOptions,
) -> Result<ExitCode, Error> {
    // Checked here too, so a typo is reported before the wrapper is even started.
    ClusterName::parse(name)?;
    let env = crate::core::input::parse_env(&opts.env)?;
    // The launch says its rate itself, once its own checks pass; a dry run asks for it alone.
    if opts.dry_run {
        let quote = client
            .call(Request::Quote {
                name: name.to_owned(),
                workers,
                profile: opts.profile.clone(),
            })
            .await?;
        let quote = expect!(quote, Response::Quoted);
        let printer = client.printer();
        for (i, line) in quote.lines().into_iter().enumerate() {
            match i {
                0 => printer.out(format!("cluster {}: {line}", quote.cluster))?,
                _ => printer.out(line)?,
            }
        }
        return Ok(match &quote.refusal {
            None => {
                printer.out("the policy would admit it; nothing was launched")?;
                ExitCode::SUCCESS
            }
            Some(why) => {
                printer.out(format!("the policy would refuse it: {why}"))?;
                ExitCode::from(crate::core::error::exit::BAD_INPUT)
            }
        });
    }
    let answer = client
        .call(Request::Launch {
            name: name.to_owned(),
            workers,
            profile: opts.profile.clone(),
            env,
            configure: !opts.no_configure,
            key: opts.key.clone(),
        })
        .await?;
    let launched = expect!(answer, Response::Launched);
    client.keep(&launched)?;
    let c = &launched.cluster;
    let workers = c
        .nodes
        .iter()
        .filter(|n| n.role == Role::Worker && !n.state.is_gone())
        .count();
    client.printer().out(format!(
        "cluster {} is up: 1 master + {workers} workers (profile {}, {} provider)\nlog in with: {hint} login {}",
        c.name, c.profile, c.provider, c.name
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn launch_slaves(
    client: &Client,
    name: &str,
    count: u32,
    owner: Option<String>,
) -> Result<ExitCode, Error> {
    ClusterName::parse(name)?;
    if count == 0 {
        return Err(Error::invalid("launch-slaves needs a count of at least 1"));
    }
    let answer = client
        .call(Request::LaunchSlaves {
            name: name.to_owned(),
            count,
            owner,
        })
        .await?;
    let added = expect!(answer, Response::WorkersAdded);
    client.keep_host_keys(&added.cluster)?;
    client
        .printer()
        .out(format!("added {} to {name}", added.added.join(", ")))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn terminate_cmd(
    client: &Client,
    name: &str,
    yes: bool,
    owner: Option<String>,
) -> Result<ExitCode, Error> {
    ClusterName::parse(name)?;
    if !yes
        && !confirmed(
            client,
            &format!("Terminate cluster {name}? [y/N] "),
            &format!("terminate {name}"),
        )?
    {
        client.printer().status("not terminated");
        return Ok(ExitCode::from(crate::core::error::exit::BAD_INPUT));
    }
    let answer = client
        .call(Request::Terminate {
            name: name.to_owned(),
            owner,
        })
        .await?;
    let t = expect!(answer, Response::Terminated);
    client.printer().status(match &t.already {
        Some(a) => format!(
            "cluster {name} was already {} at {}{}",
            a.state,
            local_time_with_zone(&a.at),
            match t.terminated {
                0 => String::new(),
                n => format!("; {n} instance(s) still found under it were terminated"),
            }
        ),
        None => format!("terminated cluster {name} ({} nodes)", t.terminated),
    });
    Ok(ExitCode::SUCCESS)
}

/// `stratus extend NAME DURATION`: the new deadline, what the time costs, the budget left.
pub(super) async fn extend_cmd(
    client: &Client,
    name: &str,
    duration: &str,
    owner: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    ClusterName::parse(name)?;
    let by = crate::core::input::parse_duration(duration)?;
    let answer = client
        .call(Request::Extend {
            name: name.to_owned(),
            by_secs: (by / 1000) as u64,
            owner,
        })
        .await?;
    let e = expect!(answer, Response::Extended);
    let printer = client.printer();
    if json {
        printer.json(&e)?;
    } else {
        let at = local_time_with_zone(&e.deadline);
        let rate = e
            .rate
            .map(|r| format!(" at {}", crate::config::prices::rate_text(r)))
            .unwrap_or_default();
        let left = e
            .budget_left_micros
            .map(|l| format!("; {} of the budget left", dollars_text(l)))
            .unwrap_or_default();
        printer.out(format!(
            "extended cluster {} by {}: its deadline is now {at}",
            e.cluster,
            crate::core::model::span_text(e.added_secs as i64 * 1000),
        ))?;
        printer.out(format!(
            "the extension costs {}{rate}{left}",
            dollars_text(e.cost_micros)
        ))?;
    }
    for node in &e.unreachable {
        printer.warn(format!(
            "could not move the deadline on {node}; the reaper keeps to the new one"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// An RFC 3339 time as local minutes with the zone ("2026-12-03 14:05 CET"), for messages.
fn local_time_with_zone(rfc3339: &str) -> String {
    super::table::local_rfc3339(rfc3339, "%Y-%m-%d %H:%M %Z")
}

/// Asks `question` on the terminal; off a terminal, refuses to `what` (scripts pass `--yes`).
pub(super) fn confirmed(client: &Client, question: &str, what: &str) -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(format!(
            "refusing to {what} without confirmation: pass --yes"
        )));
    }
    client.printer().suspend(|| {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "{question}");
        let _ = e.flush();
    });
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub(super) async fn delete_cluster(client: &Client, name: &str) -> Result<ExitCode, Error> {
    let answer = client
        .call(Request::Delete {
            name: name.to_owned(),
        })
        .await?;
    let d = expect!(answer, Response::Deleted);
    client.printer().status(format!(
        "deleted cluster {} ({} instances terminated); its usage stays in `stratus usage`",
        d.cluster,
        d.instances.len()
    ));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn reconcile_cmd(
    client: &Client,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, Error> {
    let answer = client.call(Request::Reconcile { dry_run }).await?;
    let actions = expect!(answer, Response::Reconciled);
    if json {
        client.printer().json(&actions)?;
    } else if actions.is_empty() {
        client.printer().status("nothing to reconcile");
    }
    Ok(ExitCode::SUCCESS)
}
