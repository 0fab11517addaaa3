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

#[test]
fn extend_moves_the_deadline_on_the_nodes_within_the_policy_and_the_budget() {
    // Two local nodes at $1.00 an hour: $2.00 an hour.
    let ctx = clock_context(
        "lifetime_hours = 1\nmax_lifetime_hours = 3\nmax_extensions = 2\nbudget_dollars = 10",
        "30",
    );
    ctx.ok(&["launch-cluster", "lab", "1"]);
    let created = ts(&ctx.cluster_json("lab")["created_at"]);
    assert_eq!(
        ts(&ctx.cluster_json("lab")["deadline"]) - created,
        3_600_000
    );

    let r = ctx.ok(&["extend", "lab", "30m"]);
    assert!(r.stdout.contains("extended cluster lab by 30 min"), "{r}");
    // The launch holds $2.00 (its first hour); half an hour more costs $1.00.
    assert!(
        r.stdout
            .contains("costs $1.00 at $2.00/h; $7.00 of the budget left"),
        "{r}"
    );
    let deadline = ts(&ctx.cluster_json("lab")["deadline"]);
    assert_eq!(deadline - created, 90 * 60_000);
    for d in nodes(&ctx) {
        assert_eq!(
            deadline_on(&d),
            Some((deadline + 999).div_euclid(1000)),
            "{}",
            d.display()
        );
        let notice = clock_file(&d, "notice").unwrap_or_default();
        assert!(notice.contains("was given 30 min more"), "{notice}");
    }

    // Past max_lifetime_hours in all: refused, naming the limit; nothing moves.
    let r = ctx.run(&["extend", "lab", "2h"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("max_lifetime_hours for"), "{r}");
    assert!(r.stderr.contains("3 h in all"), "{r}");
    assert!(r.stderr.contains("at most 1 h 30 min more"), "{r}");
    assert_eq!(ts(&ctx.cluster_json("lab")["deadline"]), deadline);

    ctx.ok(&["extend", "lab", "1h"]);
    // The third: past max_extensions.
    let r = ctx.run(&["extend", "lab", "10m"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("max_extensions for"), "{r}");
    assert!(r.stderr.contains("extended 2 times"), "{r}");

    // Each extension is one row of the audit trail, with what it did.
    let audit = ctx.ok(&["admin", "audit", "--json"]);
    let rows: Vec<serde_json::Value> = audit
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .flat_map(|v: serde_json::Value| match v {
            serde_json::Value::Array(a) => a,
            one => vec![one],
        })
        .filter(|r| r["action"] == "extend")
        .collect();
    let done: Vec<_> = rows.iter().filter(|r| r["decision"] == "done").collect();
    assert_eq!(done.len(), 2, "{rows:?}");
    assert!(
        done[0]["reason"]
            .as_str()
            .unwrap()
            .contains("30 min more, $1.00"),
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r["decision"] == "refused").count(),
        2,
        "{rows:?}"
    );

    // Bad input: a clear error, exit 2.
    for bad in ["0m", "soon", "1.5h"] {
        let r = ctx.run(&["extend", "lab", bad]);
        assert_eq!(r.code, 2, "{r}");
        assert!(r.stderr.contains("invalid duration"), "{r}");
    }
}

#[test]
fn extend_is_refused_when_the_budget_cannot_cover_it() {
    let ctx = clock_context(
        "lifetime_hours = 1\nmax_lifetime_hours = 8\nbudget_dollars = 3",
        "30",
    );
    ctx.ok(&["launch-cluster", "lab", "1"]);
    let before = ctx.cluster_json("lab")["deadline"].clone();
    // The launch holds $2.00 of the $3.00; an hour more at $2.00/h does not fit.
    let r = ctx.run(&["extend", "lab", "1h"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("budget left"), "{r}");
    assert!(r.stderr.contains("costs $2.00"), "{r}");
    assert_eq!(ctx.cluster_json("lab")["deadline"], before);
    for d in nodes(&ctx) {
        assert_eq!(clock_file(&d, "notice"), None, "{}", d.display());
    }
    // Half an hour fits.
    let r = ctx.ok(&["extend", "lab", "30m"]);
    assert!(r.stdout.contains("$0.00 of the budget left"), "{r}");
}

fn ts(v: &serde_json::Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}
