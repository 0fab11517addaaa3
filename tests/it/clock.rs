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
    // `list` and `quota` show the deadline and the time left.
    let listed = ctx.ok(&["list"]);
    assert!(listed.stdout.contains("DEADLINE"), "{listed}");
    assert!(listed.stdout.contains(" left)"), "{listed}");
    let quota = ctx.ok(&["quota"]);
    assert!(quota.stdout.contains("cluster shown: deadline "), "{quota}");
    assert!(quota.stdout.contains(" left)"), "{quota}");
    let json: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["quota", "--json"]).stdout).unwrap();
    assert_eq!(
        json["clusters"][0]["deadline"],
        ctx.cluster_json("shown")["deadline"],
        "{json:#}"
    );
    assert!(
        json["clusters"][0]["left_secs"].as_i64().unwrap() > 7000,
        "{json:#}"
    );
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

/// The guard as the node runs it, in a sandbox state directory (a local node's: it prints what
/// it would broadcast, exit 99 asks to stop), with a `wall` on PATH that records any call.
struct Guard {
    dir: tempfile::TempDir,
}

impl Guard {
    fn new(facts: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state/clock")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("state/clock/facts"), facts).unwrap();
        let wall = dir.path().join("bin/wall");
        std::fs::write(
            &wall,
            "#!/bin/sh\necho called >> \"$(dirname \"$0\")/wall-called\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wall, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn set(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join("state/clock").join(file), text).unwrap();
    }

    fn run(&self, mode: &str) -> (i32, String) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/cluster/guard/stratus-guard.sh"
        );
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(mode)
            .env("STRATUS_STATE_DIR", self.dir.path().join("state"))
            .env("PATH", path)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn the_guard_warns_once_per_threshold_and_deadline_then_stops_the_node() {
    let now = epoch_now();
    let g = Guard::new(&format!(
        "cluster=lab\nowner=alice\ngrace=600\nstarted={}\nrate=1460000000\n",
        now - 3600
    ));
    // No deadline: nothing said, nothing stopped; the login message says so.
    assert_eq!(g.run("tick"), (0, String::new()));
    assert!(g.run("show").1.contains("deadline: none"));

    // Four minutes left at the first tick: the 5-minute warning only, once.
    g.set("deadline", &format!("{}\n", now + 4 * 60 + 30));
    let (code, said) = g.run("tick");
    assert_eq!(code, 0);
    assert!(said.contains("cluster lab ends in 4 min"), "{said}");
    assert!(said.contains("stratus extend lab 1h"), "{said}");
    assert_eq!(said.matches("ends in").count(), 1, "{said}");
    assert_eq!(g.run("tick"), (0, String::new()), "each warning once");
    // The login message: $2.00 an hour (1460000000 per 730 h), an hour so far.
    let show = g.run("show").1;
    assert!(show.contains("about $2.00 so far, at $2.00/h"), "{show}");
    assert!(show.contains("in 4 min; then it is terminated"), "{show}");
    let motd = std::fs::read_to_string(g.dir.path().join("state/guard/motd")).unwrap();
    assert!(motd.contains("stratus: cluster lab of alice"), "{motd}");

    // Extended to 40 minutes out: that deadline gets its own 60-minute warning.
    g.set("deadline", &format!("{}\n", now + 40 * 60));
    let said = g.run("tick").1;
    assert!(
        said.contains("ends in 39 min") || said.contains("ends in 40 min"),
        "{said}"
    );

    // A notice stratus left: broadcast once.
    g.set("notice", "stratus: the reaper warns cluster lab\n");
    assert!(g.run("tick").1.contains("the reaper warns cluster lab"));
    assert_eq!(g.run("tick"), (0, String::new()));

    // A tampered deadline counts as none set... unless one was set at boot: then that one.
    g.set("deadline", "soon\n");
    assert_eq!(g.run("tick"), (0, String::new()));
    std::fs::create_dir_all(g.dir.path().join("state/guard")).unwrap();
    std::fs::write(
        g.dir.path().join("state/guard/boot-deadline"),
        format!("{}\n", now - 60),
    )
    .unwrap();
    let said = g.run("tick").1;
    assert!(said.contains("lifetime ended at"), "{said}");

    // Past the deadline and the grace: the node is asked to stop (exit 99).
    g.set("deadline", &format!("{}\n", now - 601));
    let (code, said) = g.run("tick");
    assert_eq!(code, 99, "{said}");
    assert!(said.contains("powering off now"), "{said}");
    // A local node never writes to the machine's terminals.
    assert!(!g.dir.path().join("bin/wall-called").exists());
    // The idle rule's reading: no sessions recorded, no keep-alive file.
    let (code, reading) = g.run("idle");
    assert_eq!(code, 0);
    assert!(reading.starts_with("sessions=0 cpu="), "{reading}");
    assert!(reading.trim_end().ends_with(" busy_age=none"), "{reading}");
}

#[test]
fn the_guard_and_its_user_data_part_pass_bash_n_and_shellcheck() {
    let clock = stratus::cluster::clock::Clock {
        deadline: Some(1_767_225_600_000),
        grace: 1_800_000,
        started: 1_767_211_200_000,
        rate: Some(350_400_000),
    };
    let part = clock.user_data_part("lab1", "alice", "ubuntu");
    let guard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/cluster/guard/stratus-guard.sh"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shellcheck = std::process::Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok();
    if !shellcheck {
        crate::support::skip("shellcheck is not installed (apt-get install shellcheck)");
    }
    for (name, text) in [("part", &part), ("guard", &guard)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash -n {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if shellcheck {
            let out = std::process::Command::new("shellcheck")
                .args(["--shell=bash", "--severity=style", "--format=gcc"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "shellcheck {name}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn the_warnings_reach_a_terminal_on_the_cluster() {
    let ctx = clock_context("lifetime_hours = 1\nmax_lifetime_hours = 3", "30");
    ctx.ok(&["launch-cluster", "lab", "1"]);
    let mut cmd = ctx.cmd();
    cmd.args(["login", "lab"]);
    let mut term = crate::support::pty::Pty::spawn(cmd);
    // The login message, before the shell.
    term.expect("stratus: cluster lab");
    term.expect("deadline: ");
    term.send("echo shell-$((6*7))\n");
    term.expect("shell-42");
    // An extension, from elsewhere: its notice reaches this terminal.
    ctx.ok(&["extend", "lab", "30m"]);
    term.expect("cluster lab was given 30 min more");
    // The reaper's warning too (its clock past the deadline).
    let later = stratus::core::model::now_millis() + 2 * 3_600_000;
    ctx.accounting_at(Some(later), &["reap"]);
    term.expect("the reaper warns cluster lab: its lifetime of 1.5 h, extended once, is over");
    term.send("exit\n");
    assert_eq!(term.wait(), Some(0));
}

#[test]
fn a_dry_run_launches_nothing_and_prints_the_rate_and_the_decision() {
    // Two local nodes at $1.00 an hour, for a lifetime of 4 hours ($8.00), on a $5.00 budget.
    let ctx = clock_context(
        "lifetime_hours = 4\nmax_nodes = 3\nbudget_dollars = 5",
        "30",
    );
    let r = ctx.ok(&["launch-cluster", "dry", "1", "--dry-run"]);
    assert!(
        r.stdout.contains(
            "cluster dry: 2 nodes of profile local-demo, at $2.00/h, for up to 4 h 00 min"
        ),
        "{r}"
    );
    assert!(
        r.stdout
            .contains("your budget has $5.00 left: 2 h 30 min at that rate"),
        "{r}"
    );
    assert!(
        r.stdout
            .contains("your budget runs out after about 2 h 30 min, before its lifetime ends"),
        "{r}"
    );
    assert!(
        r.stdout
            .contains("the policy would admit it; nothing was launched"),
        "{r}"
    );
    assert!(ctx.list_json().is_empty(), "a dry run creates nothing");
    assert!(ctx.node_dirs().is_empty());
    // Refused: exit 2, the reason, nothing created.
    let r = ctx.run(&["launch-cluster", "dry", "5", "--dry-run"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stdout
            .contains("the policy would refuse it: refused by the policy"),
        "{r}"
    );
    assert!(r.stdout.contains("max_nodes for"), "{r}");
    assert!(ctx.list_json().is_empty());
    // The launch itself says the same before it launches, and is admitted though its budget
    // runs out before its lifetime.
    let r = ctx.ok(&["launch-cluster", "dry", "1"]);
    assert!(r.stderr.contains("at $2.00/h"), "{r}");
    assert!(r.stderr.contains("the reaper then ends the cluster"), "{r}");
    assert_eq!(ctx.cluster_json("dry")["state"], "configured");
}

#[test]
fn after_the_term_launches_are_refused_the_reaper_ends_what_runs_and_budgets_stay_spent() {
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let start = today.checked_sub(jiff::Span::new().days(30)).unwrap();
    let ctx = TestContext::with_config("[prices]\n\"local\" = 1.0\n");
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        format!(
            "[class]\nterm_start = {start}\nterm_end = {today}\n[units]\n\"local\" = 1\n[default]\nprofiles = [\"local-demo\"]\nbudget_dollars = 50\n[reaper]\ngrace_minutes = 30\n"
        ),
    )
    .unwrap();
    // The term takes in the whole of its last day.
    ctx.ok(&["launch-cluster", "last", "1"]);
    let after = today
        .tomorrow()
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_millisecond()
        + 3_600_000;
    let run = |when: i64, args: &[&str]| {
        let r = ctx.run_at(Some(when), args);
        (r.code, r.stdout, r.stderr)
    };
    // After term_end: a launch is refused, naming the term; nothing is created.
    let (code, _, err) = run(after, &["launch-cluster", "late", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the term ended"), "{err}");
    assert!(err.contains("[class] term_end"), "{err}");
    assert!(!ctx.list_json().iter().any(|c| c["name"] == "late"));
    // The budget is not reset: what ran in the term, and after it, is still spent.
    let (_, quota, err) = run(after, &["quota", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).unwrap_or_else(|_| panic!("{err}"));
    assert!(
        quota["used"]["dollars"].as_f64().unwrap() > 1.0,
        "{quota:#}"
    );
    // The reaper warns, then ends what still runs.
    let (code, out, err) = run(after, &["accounting", "reap", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"warn\"") && out.contains("the term ended"),
        "{out}"
    );
    let (code, out, err) = run(after + 31 * 60_000, &["accounting", "reap", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"terminate\""), "{out}");
    assert_eq!(ctx.cluster_json("last")["state"], "terminated");
    // The term's close: by user, in total.
    let (code, out, err) = run(
        after + 32 * 60_000,
        &["accounting", "report", "--term", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let owner = ctx.cluster_json("last")["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["user"] == owner.as_str()),
        "{report:#}"
    );
    let (code, out, _) = run(after + 32 * 60_000, &["accounting", "report", "--term"]);
    assert_eq!(code, 0);
    assert!(out.contains("of which estimated"), "{out}");
}

#[test]
fn admin_class_shows_the_class_s_clusters_what_needs_attention_first() {
    let ctx = clock_context(
        "lifetime_hours = 1\nmax_lifetime_hours = 3\nbudget_dollars = 20",
        "30",
    );
    ctx.ok(&["launch-cluster", "calm", "1"]);
    ctx.ok(&["launch-cluster", "soon", "1"]);
    // `soon` is nearer its deadline once `calm` is extended.
    ctx.ok(&["extend", "calm", "1h"]);
    let r = ctx.ok(&["admin", "class", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["cluster"], "soon", "{rows:?}");
    assert_eq!(rows[1]["cluster"], "calm", "{rows:?}");
    for row in rows {
        assert_eq!(
            (row["running"].as_u64(), row["nodes"].as_u64()),
            (Some(2), Some(2)),
            "{row}"
        );
        assert!(row["deadline"].is_string(), "{row}");
        assert!(row["cost_micros"].as_i64().unwrap() > 0, "{row}");
        // $20 less what each holds and has spent.
        assert!(
            row["budget_left_micros"].as_i64().unwrap() < 20_000_000,
            "{row}"
        );
    }
    // The reaper's warning puts a cluster first.
    let later = stratus::core::model::now_millis() + 90 * 60_000;
    ctx.accounting_at(Some(later), &["reap"]);
    let r = ctx.ok(&["admin", "class"]);
    let first = r.stdout.lines().nth(1).unwrap_or_default();
    assert!(first.contains("soon"), "{r}");
    assert!(
        r.stdout
            .contains("/soon: the reaper warned it: its lifetime of 1 h is over"),
        "{r}"
    );
}

#[test]
fn an_idle_local_cluster_is_warned_then_reaped_and_a_busy_one_is_not() {
    let ctx = clock_context("max_lifetime_hours = 8", "0\nidle_minutes = 1");
    for name in ["quiet", "keep", "session", "job"] {
        ctx.ok(&["launch-cluster", name, "1"]);
    }
    let t0 = stratus::core::model::now_millis();
    // In its first idle_minutes nothing is idle.
    assert!(ctx.reap_json(t0 + 30_000, &[]).is_empty());
    let class = ctx.ok(&["admin", "class", "--json"]);
    assert!(
        class.stdout.contains("launched less than idle_minutes ago"),
        "{class}"
    );

    // Busy: the keep-alive file on a worker; a login on the master; a job on the master.
    ctx.ok(&["exec", "keep", "--all", "--", "touch ~/.stratus-busy"]);
    ctx.ok(&["exec", "job", "--", "mkdir -p jobs && touch jobs/wordcount"]);
    let mut cmd = ctx.cmd();
    cmd.args(["login", "session"]);
    let mut term = crate::support::pty::Pty::spawn(cmd);
    term.send("echo in-$((2*21))\n");
    term.expect("in-42");

    // First seen idle: not yet due.
    assert!(ctx.reap_json(t0 + 2 * 60_000, &[]).is_empty());
    let class: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["admin", "class", "--json"]).stdout).unwrap();
    let activity = |name: &str| {
        class
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cluster"] == name)
            .map(|r| r["activity"].as_str().unwrap_or_default().to_owned())
            .unwrap()
    };
    assert_eq!(activity("quiet"), "idle");
    assert!(
        activity("keep").contains("~/.stratus-busy touched"),
        "{class:#}"
    );
    assert!(
        activity("session").contains("1 SSH sessions on session-master"),
        "{class:#}"
    );
    assert!(
        activity("job").contains("1 jobs running or waiting"),
        "{class:#}"
    );

    // Idle for idle_minutes: warned like a lifetime breach; the busy ones are not.
    let warned = ctx.reap_json(t0 + 3 * 60_000 + 1_000, &[]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["cluster"], "quiet");
    assert_eq!(warned[0]["action"], "warn");
    assert!(
        warned[0]["reason"]
            .as_str()
            .unwrap()
            .contains("it has been idle for 1 min (idle_minutes = 1)"),
        "{warned:?}"
    );
    // After the grace: ended; the others run on.
    let done = ctx.reap_json(t0 + 3 * 60_000 + 2_000, &[]);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        (done[0]["cluster"].as_str(), done[0]["action"].as_str()),
        (Some("quiet"), Some("terminate"))
    );
    assert_eq!(ctx.cluster_json("quiet")["state"], "terminated");
    for name in ["keep", "session", "job"] {
        assert_eq!(ctx.cluster_json(name)["state"], "configured", "{name}");
    }
    term.send("exit\n");
    assert_eq!(term.wait(), Some(0));
}
