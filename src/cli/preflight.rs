//! `stratus admin preflight`: the service's checks of the account, as a table of verdicts or
//! as JSON (`--json`: the `PreflightReport` as the service answers it). Exits 1 when a check
//! fails; `unknown` (what could not be checked) and `warn` do not.

use std::process::ExitCode;

use super::client::Client;
use super::launch::expect;
use super::table::Table;
use crate::core::error::{Error, exit};
use crate::service::protocol::{Request, Response};

pub(super) async fn preflight(
    client: &Client,
    profile: String,
    students: u32,
    workers: Option<u32>,
    json: bool,
) -> Result<ExitCode, Error> {
    let report = expect!(
        client
            .call(Request::Preflight {
                profile,
                students,
                workers,
            })
            .await?,
        Response::Preflight
    );
    let printer = client.printer();
    if json {
        printer.out(serde_json::to_string(&report).map_err(|e| Error::runtime(e.to_string()))?)?;
    } else {
        let mut table = Table::new(&["CHECK", "VERDICT", "DETAIL"]);
        for c in &report.checks {
            table.row(vec![
                c.check.clone(),
                c.verdict.as_str().to_owned(),
                c.detail.clone(),
            ]);
        }
        printer.out(format!(
            "{} students, profile {}: a master and {} workers each ({}), {} nodes in all\n{}",
            report.students,
            report.profile,
            report.workers,
            report.workers_from,
            u64::from(report.students) * u64::from(report.nodes_per_cluster),
            table.render()
        ))?;
    }
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.verdict == crate::cluster::provider::ec2::preflight::Verdict::Fail)
        .map(|c| c.check.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    printer.warn(format!("preflight failed: {}", failed.join(", ")));
    Ok(ExitCode::from(exit::FAILURE))
}
