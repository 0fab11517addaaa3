//! The class day on the nodes (issue 17): the guard that ends a cluster at its deadline with no
//! stratus process running, the clock a login shows, the warnings broadcast to the cluster's
//! terminals, and `extend`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{TestContext, eventually, node_pid};

/// A local context whose policy gives clusters `lifetime` (hours, as the policy writes them)
/// and the reaper `grace` minutes; local nodes are priced at $1.00 an hour.
pub fn clock_context(limits: &str, grace: &str) -> TestContext {
    let ctx = TestContext::with_config("[prices]\n\"local\" = 1.0\n");
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        format!(
            "[units]\n\"local\" = 1\n[default]\nprofiles = [\"local-demo\"]\n{limits}\n[reaper]\ngrace_minutes = {grace}\n"
        ),
    )
    .unwrap();
    ctx
}

/// The guard's files of a local node: `state/clock/NAME`.
fn clock_file(node: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(node.join("state/clock").join(name)).ok()
}

fn deadline_on(node: &Path) -> Option<i64> {
    clock_file(node, "deadline")?.trim().parse().ok()
}

fn nodes(ctx: &TestContext) -> Vec<PathBuf> {
    let dirs = ctx.node_dirs();
    assert!(!dirs.is_empty(), "no node directories");
    dirs
}

#[test]
fn a_local_node_past_its_deadline_stops_itself_while_no_stratus_process_runs() {
    // 0.002 h: a deadline 7.2 seconds after the launch, and no grace.
    let ctx = clock_context("max_lifetime_hours = 0.002", "0");
    ctx.ok(&["launch-cluster", "brief", "1"]);
    let listed = ctx.cluster_json("brief");
    let deadline = listed["deadline"]
        .as_str()
        .expect("a deadline in list --json");
    let at: jiff::Timestamp = deadline.parse().unwrap();
    let created: jiff::Timestamp = listed["created_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        at.as_millisecond() - created.as_millisecond(),
        7200,
        "{listed}"
    );
    let dirs = nodes(&ctx);
    assert_eq!(dirs.len(), 2);
    for d in &dirs {
        // The deadline on the node, in seconds, rounded up.
        assert_eq!(
            deadline_on(d),
            Some((at.as_millisecond() + 999).div_euclid(1000)),
            "{}",
            d.display()
        );
        assert!(node_pid(d).is_some(), "{} runs", d.display());
    }
    // No stratus command runs from here on: the nodes end themselves.
    for d in &dirs {
        assert!(
            eventually(Duration::from_secs(60), || node_pid(d)
                .is_none()
                .then_some(()))
            .is_some(),
            "{} still runs a minute after its deadline",
            d.display()
        );
        let log = std::fs::read_to_string(d.join("node.log")).unwrap_or_default();
        assert!(log.contains("the node stops itself"), "{log}");
    }
}

#[test]
fn a_login_shows_the_deadline_the_cost_so_far_and_the_rate() {
    let ctx = clock_context("max_lifetime_hours = 2", "30");
    ctx.ok(&["launch-cluster", "shown", "1"]);
    for d in nodes(&ctx) {
        let motd = eventually(Duration::from_secs(30), || {
            std::fs::read_to_string(d.join("state/guard/motd")).ok()
        })
        .expect("the guard writes the login message");
        assert!(motd.contains("stratus: cluster shown"), "{motd}");
        // Two local nodes at $1.00 an hour each.
        assert!(motd.contains("at $2.00/h"), "{motd}");
        assert!(
            motd.contains("in 1 h 59 min") || motd.contains("in 2 h 00 min"),
            "{motd}"
        );
        assert!(motd.contains("stratus extend shown 1h"), "{motd}");
    }
}
