//! `stratus accounting`: the snapshot and the reaper (cron: the service account in a
//! multi-user install, the user in a single-user one), and the report (instructors; through the
//! runner in a multi-user install).

use std::process::ExitCode;

use super::remote::{self, call};
use crate::accounting::{reaper, snapshot};
use crate::app::App;
use crate::caller::Caller;
use crate::cli::AccountingAction;
use crate::error::Error;
use crate::model::now_millis;
use crate::quota::policy::Policy;
use crate::quota::protocol::Request;
use crate::quota::runner::LoadedPolicy;

pub(super) async fn run(
    app: &App,
    caller: &Caller,
    action: AccountingAction,
) -> Result<ExitCode, Error> {
    match action {
        AccountingAction::Snapshot { json } => {
            let provider = app.provider(app.config.provider).await?;
            if let Some(w) = crate::cluster::provider::ec2::credentials::notice(&provider) {
                app.printer.warn(w);
            }
            // Cron's chance to finish what interrupted commands of anyone left behind (a
            // terminate cut short, a rollback that did not get through, an unfinished launch
            // call): nobody else may come back to it.
            if let Err(e) = crate::cluster::reconcile::reconcile(
                app.ctx(),
                provider.as_ref(),
                None,
                &crate::cluster::reconcile::Options::new(false),
            )
            .await
            {
                app.printer.warn(format!(
                    "could not reconcile first: {}",
                    crate::error::one_line(&e)
                ));
            }
            let r = snapshot::snapshot(app.ctx(), provider.as_ref()).await?;
            if json {
                app.printer.json(&r)?;
            } else {
                app.printer.status(format!(
                    "snapshot: {} instances seen, {} ended, {} gone without a sighting of their end, {} orphans recorded",
                    r.seen,
                    r.ended,
                    r.missing.len(),
                    r.orphans.len()
                ));
                for o in &r.orphans {
                    app.printer.warn(format!(
                        "instance {o} runs under this store's tags with no record; it is now accounted (`stratus accounting reap --orphans terminate` ends it)"
                    ));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountingAction::Reap {
            dry_run,
            orphans,
            json,
        } => {
            let policy = match LoadedPolicy::load(app) {
                LoadedPolicy::Present(p) => p,
                LoadedPolicy::Broken(e) => return Err(Error::invalid(crate::error::one_line(&e))),
                // No policy: no lifetime or budget to enforce; orphans are still found.
                _ => Policy::parse("", std::path::Path::new("(no policy)"))
                    .map_err(|e| Error::runtime(e.to_string()))?,
            };
            let provider = app.provider(app.config.provider).await?;
            if let Some(w) = crate::cluster::provider::ec2::credentials::notice(&provider) {
                app.printer.warn(w);
            }
            let actions = reaper::reap(
                app.ctx(),
                provider.as_ref(),
                &policy,
                &app.config,
                now_millis(),
                dry_run,
                orphans,
            )
            .await?;
            for a in &actions {
                if json {
                    app.printer.out(
                        serde_json::to_string(a).map_err(|e| Error::runtime(e.to_string()))?,
                    )?;
                } else {
                    app.printer.out(format!(
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
                app.printer.status("nothing to reap");
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountingAction::Report {
            by,
            since,
            until,
            csv,
            json,
        } => {
            for t in [&since, &until].into_iter().flatten() {
                super::parse_time(t)?;
            }
            let answer = if remote::multi_user(app) {
                call(app, caller, Request::Report { by, since, until }).await?
            } else {
                // The service account, or a single-user install: the store is at hand.
                crate::quota::runner::report_answer(app, by, since.as_deref(), until.as_deref())?
            };
            if let Some(types) = answer["unknown_types"].as_array()
                && !types.is_empty()
            {
                let names: Vec<&str> = types.iter().filter_map(|t| t.as_str()).collect();
                app.printer.warn(format!(
                    "no price known for {}; add them under [prices] in the site config",
                    names.join(", ")
                ));
            }
            if json {
                app.printer.json(&answer["report"])?;
            } else if csv {
                app.printer
                    .out(answer["csv"].as_str().unwrap_or_default().trim_end())?;
            } else {
                app.printer
                    .out(answer["table"].as_str().unwrap_or_default())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
