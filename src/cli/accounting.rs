//! `stratus accounting`: the snapshot and the reaper (cron: the service account in a
//! multi-user install, the user in a single-user one; instructors through the runner), and the
//! report (instructors).

use std::process::ExitCode;

use super::client::Client;
use super::launch::expect;
use crate::accounting::snapshot::SnapshotReport;
use crate::cli::AccountingAction;
use crate::core::error::Error;
use crate::service::protocol::{Request, Response};

/// `accounting snapshot --json`: the report, its time in RFC 3339 as every JSON time.
#[derive(serde::Serialize)]
struct SnapshotJson<'a> {
    at: String,
    seen: usize,
    ended: usize,
    missing: &'a [String],
    orphans: &'a [String],
    orphans_terminated: &'a [String],
    settled: &'a [String],
}

impl<'a> From<&'a SnapshotReport> for SnapshotJson<'a> {
    fn from(r: &'a SnapshotReport) -> Self {
        Self {
            at: crate::core::model::rfc3339(r.at),
            seen: r.seen,
            ended: r.ended,
            missing: &r.missing,
            orphans: &r.orphans,
            orphans_terminated: &r.orphans_terminated,
            settled: &r.settled,
        }
    }
}

/// The reaper's orphans, counted: "orphans: N reported, M terminated" (what was done, or in a
/// dry run what would be).
fn orphans_summary(
    printer: &crate::core::printer::Printer,
    actions: &[crate::accounting::reaper::ReapAction],
    dry_run: bool,
) {
    let orphans: Vec<_> = actions.iter().filter(|a| a.action == "orphan").collect();
    if orphans.is_empty() {
        return;
    }
    let terminated = orphans
        .iter()
        .filter(|a| a.reason.ends_with("; terminated"))
        .count();
    printer.status(format!(
        "{}orphans: {} reported, {terminated} terminated",
        if dry_run { "would be: " } else { "" },
        orphans.len() - terminated
    ));
}

pub(super) async fn run(client: &Client, action: AccountingAction) -> Result<ExitCode, Error> {
    let printer = client.printer();
    match action {
        AccountingAction::Snapshot { json } => {
            let r = expect!(client.call(Request::Snapshot {}).await?, Response::Snapshot);
            if json {
                printer.json(&SnapshotJson::from(&r))?;
                return Ok(ExitCode::SUCCESS);
            }
            printer.status(format!(
                "snapshot: {} instances seen, {} ended, {} gone without a sighting of their end; {} orphan(s) reported, {} terminated",
                r.seen,
                r.ended,
                r.missing.len(),
                r.orphans.len(),
                r.orphans_terminated.len()
            ));
            for c in &r.settled {
                printer.warn(format!(
                    "cluster {c}: {}; settled as terminated, its quota released",
                    crate::cluster::observe::ENDED_OUTSIDE
                ));
            }
            for o in &r.orphans {
                printer.warn(format!(
                    "instance {o} runs under this store's tags with no record; it is now accounted (`stratus accounting reap --orphans terminate` ends it)"
                ));
            }
        }
        AccountingAction::Reap {
            dry_run,
            orphans,
            json,
        } => {
            let actions = expect!(
                client.call(Request::Reap { dry_run, orphans }).await?,
                Response::Reaped
            );
            for a in &actions {
                if json {
                    printer.out(
                        serde_json::to_string(a).map_err(|e| Error::runtime(e.to_string()))?,
                    )?;
                } else {
                    printer.out(format!(
                        "{}{} {}/{}: {}",
                        if dry_run { "would " } else { "" },
                        a.action,
                        a.owner,
                        a.cluster,
                        a.reason
                    ))?;
                }
            }
            if actions.is_empty() && !json {
                printer.status("nothing to reap");
            }
            orphans_summary(printer, &actions, dry_run);
        }
        AccountingAction::Report {
            by,
            since,
            until,
            term,
            csv,
            json,
        } => {
            for t in [&since, &until].into_iter().flatten() {
                crate::core::input::parse_time(t)?;
            }
            let answer = expect!(
                client
                    .call(Request::Report {
                        by,
                        since,
                        until,
                        term
                    })
                    .await?,
                Response::Report
            );
            let r = answer.report;
            if !r.unknown_types.is_empty() {
                printer.warn(format!(
                    "no price known for {}; add them under [prices] in the site config",
                    r.unknown_types.join(", ")
                ));
            }
            if json {
                printer.out(super::report::json_text(&r)?)?;
            } else if csv {
                printer.out(super::report::csv(&r)?.trim_end())?;
            } else {
                printer.out(super::report::table(&r))?;
                if term {
                    let (n, ms, micros) = r
                        .rows
                        .iter()
                        .filter(|row| row.estimated)
                        .fold((0, 0, 0), |(n, ms, m), row| {
                            (n + 1, ms + row.millis, m + row.micros)
                        });
                    printer.out(format!(
                        "of which estimated (runs whose end stratus did not see, closed by its rule): {} over {} instance hours, in {n} rows",
                        crate::core::money::dollars_text(micros),
                        crate::core::model::hours_text(ms)
                    ))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
