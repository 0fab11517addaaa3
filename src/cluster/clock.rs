//! The cluster's clock on its nodes: the guard that ends a cluster at its deadline even when
//! stratus's own machine is down, what a login shows (the deadline, the cost so far, the rate),
//! and the warnings broadcast to the cluster's terminals.
//!
//! stratus puts a part of its own first in every node's user-data (`user_data`): it records the
//! deadline in a file on the node (`$STATE/clock/deadline`, `/var/lib/stratus` on an instance)
//! and installs `stratus-guard` (src/cluster/guard/stratus-guard.sh), which a systemd timer runs
//! every 30 seconds on an instance, and the node process every 10 seconds on a local node. The
//! guard warns at 60, 15 and 5 minutes before the deadline and at it, and powers the node off
//! once the deadline and the reaper's grace have passed; an instance's shutdown behaviour is
//! `terminate`, so it is then gone. `extend` and the reaper move the deadline and leave notices
//! over SSH (`set_script`, `push`).
//!
//! The reaper stays the normal path: a student owns the node and can stop the guard
//! (docs/threats.md).

use crate::cluster::Ctx;
use crate::cluster::meta::target;
use crate::cluster::ssh::{self, Client};
use crate::cluster::terminate::live_nodes;
use crate::core::error::Error;
use crate::core::model::{Millis, Role, shell_quote};
use crate::core::money::Micros;
use crate::store::{ClusterRow, NodeRow};

/// The guard, as installed on a node.
const GUARD: &str = include_str!("guard/stratus-guard.sh");
/// The user-data part that installs it.
const PART: &str = include_str!("guard/user-data-part.sh");
/// The part's name: cloud-init runs the parts in the order of their names, the guard first.
pub const PART_NAME: &str = "00-stratus-guard.sh";
/// The profile's own user-data, after it.
pub const PROFILE_PART_NAME: &str = "50-profile-user-data";

/// Where the clock's files are on a node: `$STRATUS_STATE_DIR` on a local node, else
/// `/var/lib/stratus` (a shell expression, run in the login user's shell).
pub const CLOCK_DIR: &str = "\"${STRATUS_STATE_DIR:-/var/lib/stratus}/clock\"";

/// What a cluster's nodes are told at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// The lifetime's end; `None` when no lifetime applies.
    pub deadline: Option<Millis>,
    /// How long after the deadline a node powers itself off.
    pub grace: Millis,
    /// The cluster's creation.
    pub started: Millis,
    /// Micro-dollars per 730 hours of the whole cluster, when known.
    pub rate: Option<Micros>,
}

impl Clock {
    /// The clock of a recorded cluster: `None` for one launched before the guard existed.
    pub fn of(cluster: &ClusterRow) -> Option<Self> {
        let guard = cluster.record.guard.as_ref()?;
        Some(Self {
            deadline: cluster.deadline,
            grace: guard.grace_ms,
            started: cluster.created_at,
            rate: guard.rate,
        })
    }

    /// The guard's part of a node's user-data.
    pub fn user_data_part(&self, cluster: &str, owner: &str, login_user: &str) -> String {
        // Names stratus has checked: plain characters only, so the part's single quotes hold.
        let plain = |s: &str| {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-_.@".contains(*c))
                .collect::<String>()
        };
        PART.replace("@GUARD@", GUARD.trim_end())
            .replace(
                "@DEADLINE@",
                &self
                    .deadline
                    .map_or("none".into(), |d| seconds(d).to_string()),
            )
            .replace("@CLUSTER@", &plain(cluster))
            .replace("@OWNER@", &plain(owner))
            .replace("@GRACE@", &seconds(self.grace).to_string())
            .replace("@STARTED@", &(self.started / 1000).to_string())
            .replace(
                "@RATE@",
                &self.rate.map(|r| r.to_string()).unwrap_or_default(),
            )
            .replace("@USER@", &shell_quote(login_user))
    }
}

/// Milliseconds since the epoch as whole seconds, rounded up: a node never ends a cluster early.
fn seconds(ms: Millis) -> i64 {
    (ms + 999).div_euclid(1000)
}

/// A node's whole user-data: the guard's part, then the profile's.
pub fn user_data(part: &str, profile_user_data: &str) -> String {
    crate::templates::multipart(&[(PART_NAME, part), (PROFILE_PART_NAME, profile_user_data)])
}

/// A command for a node's login user: moves the deadline (if given), leaves a notice for its
/// terminals (if given), and runs the guard at once where it can (as root through `sudo -n` on
/// an instance; a local node runs its own within seconds).
pub fn set_script(deadline: Option<Millis>, notice: Option<&str>) -> String {
    let mut script = format!("set -e; d={CLOCK_DIR}; mkdir -p \"$d\"");
    if let Some(at) = deadline {
        script.push_str(&format!(
            "; printf '%s\\n' {} > \"$d/deadline.new\"; mv -f \"$d/deadline.new\" \"$d/deadline\"",
            seconds(at)
        ));
    }
    if let Some(text) = notice {
        script.push_str(&format!(
            "; printf '%s\\n' {} > \"$d/notice.new\"; mv -f \"$d/notice.new\" \"$d/notice\"",
            shell_quote(text)
        ));
    }
    script.push_str(
        "; if [ -z \"${STRATUS_STATE_DIR:-}\" ] && [ -x /usr/local/sbin/stratus-guard ]; then sudo -n /usr/local/sbin/stratus-guard tick >/dev/null 2>&1 || true; fi",
    );
    script
}

/// Runs `script` on every live node of `cluster` over SSH, in parallel: the nodes that could
/// not be reached or failed, by name, with why.
pub async fn push(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    script: &str,
) -> Result<Vec<(String, String)>, Error> {
    Ok(
        run_on_nodes(ctx, cluster, |_| script.to_owned(), PUSH_TIMEOUT)
            .await?
            .into_iter()
            .filter_map(|(name, _, r)| r.err().map(|why| (name, why)))
            .collect(),
    )
}

/// How long one node may take to answer a push or a probe.
const PUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The idle rule's probe of one node (`stratus-guard idle`): its interactive sessions, its CPU
/// use and the age of the student's keep-alive file.
pub const IDLE_PROBE: &str = "g=/usr/local/sbin/stratus-guard; if [ -n \"${STRATUS_STATE_DIR:-}\" ]; then g=\"$STRATUS_STATE_DIR/clock/stratus-guard\"; fi; \"$g\" idle";

/// Runs on every live node of `cluster` that stratus has reached before (its host key pinned)
/// the script `script_for` gives it, in parallel, each within `timeout`: per node, its name,
/// role, and its standard output or why it failed (unreachable, timed out, a non-zero status).
pub async fn run_on_nodes(
    ctx: Ctx<'_>,
    cluster: &ClusterRow,
    script_for: impl Fn(&NodeRow) -> String,
    timeout: std::time::Duration,
) -> Result<Vec<(String, Role, Result<String, String>)>, Error> {
    let key = crate::cluster::keys::ClusterKeys::of(ctx.state_dir, cluster).load()?;
    let client = Client::new(key, ctx.connect_timeout());
    let mut done = Vec::new();
    let mut jobs = Vec::new();
    // A node never reached is not reachable now either, and its address may be no real node's.
    for n in live_nodes(ctx, cluster)?
        .into_iter()
        .filter(|n| n.host_key.is_some())
    {
        match target(&n, cluster) {
            Ok(t) => jobs.push((t, n.role, script_for(&n))),
            Err(e) => done.push((n.instance_id.clone(), n.role, Err(e.to_string()))),
        }
    }
    let results = ssh::fan_out(jobs, ctx.ssh.max_parallel, move |(t, role, script)| {
        let client = client.clone();
        async move {
            let name = t.name.clone();
            let run = async {
                let s = client.connect(&t).await?;
                let out = s.run(&script).await;
                s.close().await;
                out
            };
            let r = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
            };
            (name, role, r)
        }
    })
    .await;
    done.extend(results);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_part_carries_the_deadline_in_seconds_rounded_up_and_the_guard_whole() {
        let clock = Clock {
            deadline: Some(1_767_225_600_001),
            grace: 30 * 60_000,
            started: 1_767_211_200_000,
            rate: Some(350_400_000),
        };
        let part = clock.user_data_part("lab1", "alice", "ubuntu");
        assert!(part.contains("\ndeadline=1767225601\n"), "{part}");
        assert!(part.contains("grace=1800\n"), "{part}");
        assert!(part.contains("started=1767211200\n"), "{part}");
        assert!(part.contains("rate=350400000'"), "{part}");
        assert!(part.contains("login_user=ubuntu\n"), "{part}");
        assert!(
            part.contains(GUARD.trim_end()),
            "the guard is installed whole"
        );
        assert!(
            !part.contains('@') || !part.contains("@DEADLINE@"),
            "{part}"
        );
        let none = Clock {
            deadline: None,
            ..clock
        };
        assert!(
            none.user_data_part("c", "o", "u")
                .contains("\ndeadline=none\n")
        );
    }

    #[test]
    fn a_hostile_name_cannot_leave_the_parts_quotes() {
        let clock = Clock {
            deadline: None,
            grace: 0,
            started: 0,
            rate: None,
        };
        let part = clock.user_data_part("c'; rm -rf /; '", "o", "u s");
        assert!(part.contains("cluster=crm-rf\n"), "{part}");
        assert!(part.contains("login_user='u s'\n"), "{part}");
    }

    #[test]
    fn the_set_script_writes_atomically_and_quotes_the_notice() {
        let s = set_script(Some(2_000), Some("it's due"));
        assert!(s.contains("printf '%s\\n' 2 > \"$d/deadline.new\""), "{s}");
        assert!(
            s.contains("mv -f \"$d/deadline.new\" \"$d/deadline\""),
            "{s}"
        );
        assert!(s.contains(&shell_quote("it's due")), "{s}");
        assert!(!set_script(None, None).contains("deadline.new"));
    }
}
