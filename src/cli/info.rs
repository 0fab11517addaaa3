//! The commands that report: usage, profiles.

use std::process::ExitCode;

use serde::Serialize;

use super::client::Client;
use super::launch::expect;
use super::table::Table;
use crate::accounting::UsageRow;
use crate::cli::ProfilesAction;
use crate::core::error::Error;
use crate::core::money::{dollars_text, micros_to_dollars};
use crate::core::printer::Printer;
use crate::service::Settings;
use crate::service::protocol::{Request, Response};

/// A row of `usage --json` (the contract scripts read).
#[derive(Serialize)]
struct UsageJson<'a> {
    cluster: &'a str,
    owner: &'a str,
    profile: &'a str,
    created_at: String,
    instance_hours: f64,
    /// The same as `cost_dollars` (kept for scripts of earlier versions).
    estimated_cost: f64,
    cost_dollars: f64,
    open: bool,
    estimated: bool,
}

impl<'a> From<&'a UsageRow> for UsageJson<'a> {
    fn from(r: &'a UsageRow) -> Self {
        Self {
            cluster: &r.cluster,
            owner: &r.owner,
            profile: &r.profile,
            created_at: crate::core::model::rfc3339(r.created_at),
            instance_hours: hours(r.millis),
            estimated_cost: micros_to_dollars(r.micros),
            cost_dollars: micros_to_dollars(r.micros),
            open: r.open,
            estimated: r.estimated,
        }
    }
}

fn hours(ms: i64) -> f64 {
    ms as f64 / 3_600_000.0
}

pub(super) async fn usage(
    client: &Client,
    json: bool,
    owner: Option<String>,
    everyone: bool,
) -> Result<ExitCode, Error> {
    // Someone else's clusters, or everyone's: whose each one is.
    let owners = everyone || owner.is_some();
    let answer = client.call(Request::Usage { owner, everyone }).await?;
    let rows = expect!(answer, Response::Usage);
    let printer = client.printer();
    if json {
        printer.json(&rows.iter().map(UsageJson::from).collect::<Vec<_>>())?;
        return Ok(ExitCode::SUCCESS);
    }
    printer.out(usage_table(&rows, owners).render())?;
    Ok(ExitCode::SUCCESS)
}

/// `usage` for people: a row per cluster (with its owner when `owners`), and a total. The
/// creation time tells apart two clusters of one name.
fn usage_table(rows: &[UsageRow], owners: bool) -> Table {
    let mut header = vec!["CLUSTER"];
    if owners {
        header.push("OWNER");
    }
    header.extend(["PROFILE", "CREATED", "HOURS", "COST", "OPEN"]);
    let mut t = Table::new(&header);
    let (mut millis, mut micros) = (0, 0);
    for r in rows {
        millis += r.millis;
        micros += r.micros;
        let mut cells = vec![r.cluster.clone()];
        if owners {
            cells.push(r.owner.clone());
        }
        cells.extend([
            r.profile.clone(),
            created(r.created_at),
            format!("{:.2}", hours(r.millis)),
            format!(
                "{}{}",
                dollars_text(r.micros),
                if r.estimated { " (estimated)" } else { "" }
            ),
            if r.open { "yes".into() } else { "no".into() },
        ]);
        t.row(cells);
    }
    let mut total = vec!["total".to_owned()];
    total.extend(vec![String::new(); if owners { 3 } else { 2 }]);
    total.extend([
        format!("{:.2}", hours(millis)),
        dollars_text(micros),
        String::new(),
    ]);
    t.row(total);
    t
}

/// A creation time in local time, to the second (two launches of one name a minute apart are
/// still two rows that differ).
fn created(at: crate::core::model::Millis) -> String {
    super::table::local_time(at, "%Y-%m-%d %H:%M:%S")
}

pub(super) async fn quota(
    client: &Client,
    json: bool,
    user: Option<String>,
) -> Result<ExitCode, Error> {
    let answer = client.call(Request::Quota { owner: user }).await?;
    let r = expect!(answer, Response::Quota);
    let printer = client.printer();
    if json {
        printer.json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let num = |v: Option<f64>| {
        v.map(|x| format!("{x}"))
            .unwrap_or_else(|| "no limit".into())
    };
    let money = |v: Option<f64>| {
        v.and_then(crate::core::money::dollars_to_micros)
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
    if let Some(c) = &r.class {
        t.row(vec![
            "class units (all students)".into(),
            num(c.max_units),
            num(Some(c.units)),
            num(c.left),
        ]);
    }
    printer.out(format!("quota of {}", r.user))?;
    printer.out(t.render())?;
    if let Some(p) = &r.limits.profiles {
        printer.out(format!("profiles: {}", p.join(", ")))?;
    }
    if let Some(c) = &r.class
        && (c.term_start.is_some() || c.term_end.is_some())
    {
        printer.out(format!(
            "term: {} to {}",
            term_day(c.term_start.as_deref(), false),
            term_day(c.term_end.as_deref(), true)
        ))?;
    }
    for c in &r.clusters {
        let when = match (&c.deadline, c.left_secs) {
            (Some(d), Some(left)) => {
                let at = super::table::local_rfc3339(d, "%Y-%m-%d %H:%M %Z");
                if left > 0 {
                    format!(
                        "deadline {at} ({} left)",
                        crate::core::model::span_text(left * 1000)
                    )
                } else {
                    format!("deadline {at} (passed)")
                }
            }
            _ => "no deadline".into(),
        };
        printer.out(format!("cluster {}: {when}", c.name))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A term date as the policy wrote it: the day, when the time is midnight UTC (a date in the
/// policy; a term's end is then the day before, the last it takes in), else the whole RFC 3339
/// time; "open" when unset.
fn term_day(t: Option<&str>, end: bool) -> String {
    let Some(t) = t else {
        return "open".into();
    };
    let Some(day) = t
        .strip_suffix("T00:00:00.000Z")
        .and_then(|d| d.parse::<jiff::civil::Date>().ok())
    else {
        return t.to_owned();
    };
    if end {
        day.yesterday().unwrap_or(day).to_string()
    } else {
        day.to_string()
    }
}

pub(super) fn profiles(
    settings: &Settings,
    printer: &Printer,
    action: Option<ProfilesAction>,
) -> Result<ExitCode, Error> {
    let profiles = settings.profiles()?;
    match action {
        None => {
            let mut t = Table::new(&["PROFILE", "DESCRIPTION", "SOURCE"]);
            let default = settings.default_profile();
            for s in profiles.summaries() {
                let name = if s.name == default {
                    format!("{} (default)", s.name)
                } else {
                    s.name
                };
                t.row(vec![name, s.description, s.source]);
            }
            printer.out(t.render())?;
        }
        Some(ProfilesAction::Show { name }) => {
            let profile = profiles.resolve(&name)?;
            let mut value =
                serde_json::to_value(&profile).map_err(|e| Error::runtime(e.to_string()))?;
            if let Some(obj) = value.as_object_mut() {
                obj.remove("templates");
            }
            strip_nulls(&mut value);
            let text = toml::to_string_pretty(&value).map_err(|e| Error::runtime(e.to_string()))?;
            let templates: Vec<&String> = profile.templates.keys().collect();
            printer.out(format!(
                "# profile {} (resolved)\n# templates: {}\n{}{text}",
                profile.name,
                templates
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                local_overrides(settings, &profile)
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the local provider does instead of what the profile says, as comment lines (empty for
/// a profile that does not run there): its nodes listen on the site's `[local] ssh_port`, each
/// on its own loopback address, and a session runs as the user who launched the cluster, the
/// profile's `ssh_user` being only the login name a node accepts.
fn local_overrides(settings: &Settings, profile: &crate::config::profile::Profile) -> String {
    if !profile.supports(crate::core::model::ProviderKind::Local) {
        return String::new();
    }
    format!(
        "# on the local provider: ssh_port is [local] ssh_port ({}), on each node's own loopback address;\n\
         #   ssh_user ({:?}) is only the login name a node accepts: logins and commands run as you\n",
        settings.config.local.ssh_port, profile.ssh_user
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
