//! The commands that report: usage, profiles.

use std::process::ExitCode;

use super::refresh_all;
use super::table::Table;
use crate::accounting;
use crate::app::App;
use crate::cli::ProfilesAction;
use crate::error::Error;
use crate::model::{Owner, now_millis};

pub(super) async fn usage(app: &App, owner: &Owner, json: bool) -> Result<ExitCode, Error> {
    let clusters = app.store.list_clusters(Some(owner))?;
    refresh_all(app, &clusters).await;
    let ids: Vec<i64> = clusters.iter().map(|c| c.id).collect();
    let intervals = app.store.intervals(&ids)?;
    let mut unknown = Vec::new();
    let rows = accounting::usage_rows(
        &app.config,
        &clusters,
        &intervals,
        now_millis(),
        &mut unknown,
    );
    if !unknown.is_empty() {
        app.printer.warn(format!(
            "no price known for {}; add them under [prices] in the site config",
            unknown.join(", ")
        ));
    }
    if json {
        app.printer.json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["CLUSTER", "PROFILE", "HOURS", "COST", "OPEN"]);
    let (mut hours, mut cost) = (0.0, 0.0);
    for r in &rows {
        hours += r.instance_hours;
        cost += r.estimated_cost;
        t.row(vec![
            r.cluster.clone(),
            r.profile.clone(),
            format!("{:.3}", r.instance_hours),
            format!("${:.2}", r.estimated_cost),
            if r.open { "yes".into() } else { "no".into() },
        ]);
    }
    t.row(vec![
        "total".into(),
        String::new(),
        format!("{hours:.3}"),
        format!("${cost:.2}"),
        String::new(),
    ]);
    app.printer.out(t.render())?;
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
fn local_overrides(app: &App, profile: &crate::cluster::profile::Profile) -> String {
    if !profile.supports(crate::model::ProviderKind::Local) {
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
