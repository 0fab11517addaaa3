//! The commands that report: usage, profiles.

use std::process::ExitCode;

use super::client::call;
use super::table::Table;
use crate::cli::ProfilesAction;
use crate::core::error::Error;
use crate::policy::dollars_text;
use crate::service::app::App;
use crate::service::caller::Caller;
use crate::service::protocol::Request;
use crate::service::quota::QuotaReport;

pub(super) async fn usage(
    app: &App,
    caller: &Caller,
    json: bool,
    owner: Option<String>,
    everyone: bool,
) -> Result<ExitCode, Error> {
    let answer = call(app, caller, Request::Usage { owner, everyone }).await?;
    if json {
        app.printer.json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<UsageLine> = serde_json::from_value(answer)
        .map_err(|e| Error::runtime(format!("the runner's answer is not usage: {e}")))?;
    let mut t = Table::new(&["CLUSTER", "PROFILE", "HOURS", "COST", "OPEN"]);
    let (mut hours, mut micros) = (0.0, 0);
    for r in &rows {
        let cost = crate::config::prices::dollars_to_micros(r.cost_dollars).unwrap_or(0);
        hours += r.instance_hours;
        micros += cost;
        t.row(vec![
            r.cluster.clone(),
            r.profile.clone(),
            format!("{:.2}", r.instance_hours),
            format!(
                "{}{}",
                dollars_text(cost),
                if r.estimated { " (estimated)" } else { "" }
            ),
            if r.open { "yes".into() } else { "no".into() },
        ]);
    }
    t.row(vec![
        "total".into(),
        String::new(),
        format!("{hours:.2}"),
        dollars_text(micros),
        String::new(),
    ]);
    app.printer.out(t.render())?;
    Ok(ExitCode::SUCCESS)
}

/// A row of `usage --json`, as read back.
#[derive(serde::Deserialize)]
struct UsageLine {
    cluster: String,
    profile: String,
    instance_hours: f64,
    cost_dollars: f64,
    open: bool,
    #[serde(default)]
    estimated: bool,
}

pub(super) async fn quota(app: &App, caller: &Caller, json: bool) -> Result<ExitCode, Error> {
    let answer = call(app, caller, Request::Quota).await?;
    if json {
        app.printer.json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r: QuotaReport = serde_json::from_value(answer)
        .map_err(|e| Error::runtime(format!("the runner's answer is not a quota: {e}")))?;
    let num = |v: Option<f64>| {
        v.map(|x| format!("{x}"))
            .unwrap_or_else(|| "no limit".into())
    };
    let money = |v: Option<f64>| {
        v.and_then(crate::config::prices::dollars_to_micros)
            .map(dollars_text)
            .unwrap_or_else(|| "no limit".into())
    };
    let mut t = Table::new(&["LIMIT", "ALLOWED", "USED", "LEFT"]);
    t.row(vec![
        "units (concurrent)".into(),
        num(r.limits.max_units),
        num(r.used.units),
        num(r.left.units),
    ]);
    t.row(vec![
        "clusters (live)".into(),
        num(r.limits.max_clusters.map(f64::from)),
        num(r.used.clusters.map(f64::from)),
        num(r.left.clusters.map(f64::from)),
    ]);
    t.row(vec![
        "budget".into(),
        money(r.limits.budget_dollars),
        money(r.used.dollars),
        money(r.left.dollars),
    ]);
    t.row(vec![
        "nodes per cluster".into(),
        num(r.limits.max_nodes.map(f64::from)),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "lifetime (hours)".into(),
        num(r.limits.max_lifetime_hours),
        String::new(),
        String::new(),
    ]);
    app.printer.out(format!("quota of {}", r.user))?;
    app.printer.out(t.render())?;
    if let Some(p) = &r.limits.profiles {
        app.printer.out(format!("profiles: {}", p.join(", ")))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn profiles(app: &App, action: Option<ProfilesAction>) -> Result<ExitCode, Error> {
    match action {
        None => {
            let mut t = Table::new(&["PROFILE", "DESCRIPTION", "SOURCE"]);
            let default = app.default_profile();
            for s in app.profiles.summaries() {
                let name = if s.name == default {
                    format!("{} (default)", s.name)
                } else {
                    s.name
                };
                t.row(vec![name, s.description, s.source]);
            }
            app.printer.out(t.render())?;
        }
        Some(ProfilesAction::Show { name }) => {
            let profile = app.profiles.resolve(&name)?;
            let mut value =
                serde_json::to_value(&profile).map_err(|e| Error::runtime(e.to_string()))?;
            if let Some(obj) = value.as_object_mut() {
                obj.remove("templates");
            }
            strip_nulls(&mut value);
            let text = toml::to_string_pretty(&value).map_err(|e| Error::runtime(e.to_string()))?;
            let templates: Vec<&String> = profile.templates.keys().collect();
            app.printer.out(format!(
                "# profile {} (resolved)\n# templates: {}\n{}{text}",
                profile.name,
                templates
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                local_overrides(app, &profile)
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the local provider does instead of what the profile says, as comment lines (empty for
/// a profile that does not run there): its nodes listen on the site's `[local] ssh_port`, each
/// on its own loopback address, and a session runs as the user who launched the cluster, the
/// profile's `ssh_user` being only the login name a node accepts.
fn local_overrides(app: &App, profile: &crate::config::profile::Profile) -> String {
    if !profile.supports(crate::core::model::ProviderKind::Local) {
        return String::new();
    }
    format!(
        "# on the local provider: ssh_port is [local] ssh_port ({}), on each node's own loopback address;\n\
         #   ssh_user ({:?}) is only the login name a node accepts: logins and commands run as you\n",
        app.config.local.ssh_port, profile.ssh_user
    )
}

/// Removes null members (unset options), which TOML cannot express.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}
