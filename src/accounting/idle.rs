//! The reaper's idle rule (`[reaper] idle_minutes`): a cluster counts as idle only when every
//! signal agrees, read from its nodes over SSH in parallel:
//! - no job running or waiting (the profile's `busy_command`, on the master);
//! - no interactive SSH session on any node;
//! - the CPU below `idle_cpu_percent` on every node;
//! - no `~/.stratus-busy` touched by the student in the last `idle_minutes` on any node.
//!
//! A node that does not answer counts as busy, and is reported. Nothing is idle in its first
//! `idle_minutes`; a cluster seen idle for `idle_minutes` since it was first seen idle is due,
//! and is warned and ended like one past its deadline.

use crate::cluster::Ctx;
use crate::cluster::clock::{IDLE_PROBE, run_on_nodes};
use crate::core::error::Error;
use crate::core::model::{ClusterState, Millis, Role, hours_text, span_text};
use crate::policy::Policy;
use crate::store::ClusterRow;

/// What one node said (`sessions=N cpu=P busy_age=S|none`, and `jobs=N` on the master).
#[derive(Debug, Default, PartialEq, Eq)]
struct Reading {
    sessions: u32,
    cpu: u32,
    busy_age: Option<i64>,
    jobs: Option<u32>,
}

fn parse(out: &str) -> Option<Reading> {
    let mut r = Reading::default();
    let mut seen = 0;
    for word in out.split_whitespace() {
        let (k, v) = word.split_once('=')?;
        match k {
            "sessions" => r.sessions = v.parse().ok()?,
            "cpu" => r.cpu = v.parse().ok()?,
            "busy_age" => {
                r.busy_age = if v == "none" {
                    None
                } else {
                    Some(v.parse().ok()?)
                }
            }
            "jobs" => r.jobs = Some(v.parse().ok()?),
            _ => continue,
        }
        seen += 1;
    }
    (seen >= 3).then_some(r)
}

/// Why the cluster is busy (each signal that says so, by node), or `None` when every node
/// agrees it is idle. `expect_jobs`: the master must say `jobs=`.
fn verdict(
    readings: &[(String, Role, Result<String, String>)],
    policy: &Policy,
    idle: Millis,
    expect_jobs: bool,
) -> Option<Vec<String>> {
    let mut busy = Vec::new();
    for (node, role, r) in readings {
        let reading = match r {
            Ok(out) => parse(out),
            Err(why) => {
                busy.push(format!("{node} did not answer ({why})"));
                continue;
            }
        };
        let Some(reading) = reading else {
            busy.push(format!("{node} gave no reading"));
            continue;
        };
        if reading.sessions > 0 {
            busy.push(format!("{} SSH sessions on {node}", reading.sessions));
        }
        if reading.cpu >= policy.idle_cpu_percent {
            busy.push(format!("CPU at {}% on {node}", reading.cpu));
        }
        if let Some(age) = reading.busy_age
            && age * 1000 < idle
        {
            busy.push(format!(
                "~/.stratus-busy touched {} ago on {node}",
                span_text(age * 1000)
            ));
        }
        if *role == Role::Master && expect_jobs {
            match reading.jobs {
                Some(0) => {}
                Some(n) => busy.push(format!("{n} jobs running or waiting")),
                None => busy.push("the profile's busy_command failed on the master".into()),
            }
        }
    }
    (!busy.is_empty() || readings.is_empty()).then(|| {
        if readings.is_empty() {
            busy.push("no node to read".into());
        }
        busy
    })
}

/// The idle rule on one cluster: why it is due, if it has been idle long enough. Records what
/// it saw (not in a dry run).
pub async fn idle_reason(
    ctx: Ctx<'_>,
    policy: &Policy,
    c: &ClusterRow,
    now: Millis,
    dry_run: bool,
) -> Result<Option<String>, Error> {
    let Some(idle) = policy.idle else {
        return Ok(None);
    };
    if c.record.guard.is_none() || !matches!(c.state, ClusterState::Configured) {
        return Ok(None);
    }
    let record = |since: Option<Millis>, what: &str| -> Result<(), Error> {
        if !dry_run {
            ctx.store.set_activity(c.id, since, what)?;
        }
        Ok(())
    };
    if now - c.created_at < idle {
        record(None, "busy: launched less than idle_minutes ago")?;
        return Ok(None);
    }
    let jobs = c.record.profile.busy_command.clone();
    let readings = run_on_nodes(
        ctx,
        c,
        |n| match (&jobs, n.role) {
            (Some(cmd), Role::Master) => format!(
                "{IDLE_PROBE}; if jobs=$( {cmd} ); then echo \"jobs=$(echo \"$jobs\" | tr -cd 0-9)\"; fi"
            ),
            _ => IDLE_PROBE.to_owned(),
        },
        std::time::Duration::from_secs(30),
    )
    .await?;
    if let Some(busy) = verdict(&readings, policy, idle, jobs.is_some()) {
        for why in busy
            .iter()
            .filter(|w| w.contains("did not answer") || w.contains("no reading"))
        {
            tracing::warn!(cluster = %c.name, owner = %c.owner, "idle rule: {why}; counted as busy");
        }
        record(None, &format!("busy: {}", busy.join("; ")))?;
        return Ok(None);
    }
    let since = c.idle_since.unwrap_or(now);
    record(Some(since), "idle")?;
    if now - since < idle {
        return Ok(None);
    }
    Ok(Some(format!(
        "it has been idle for {} (idle_minutes = {}): no job, no SSH session, CPU below {}% and no ~/.stratus-busy touched on every node",
        span_text(now - since),
        hours_text(idle * 60),
        policy.idle_cpu_percent
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_three_numbers_and_jobs_on_the_master() {
        assert_eq!(
            parse("sessions=0 cpu=3 busy_age=none\njobs=2\n"),
            Some(Reading {
                sessions: 0,
                cpu: 3,
                busy_age: None,
                jobs: Some(2)
            })
        );
        assert_eq!(parse("sessions=1 cpu=x busy_age=none"), None);
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("sessions=1"), None);
    }
}
