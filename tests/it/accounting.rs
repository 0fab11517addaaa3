//! Accounting, through the real binary: snapshots against moto (run, stop, start, terminate; an
//! instance that vanishes without a sighting of its end), overlapping snapshots, a scripted term
//! whose report equals hand-computed numbers in all three formats, and the reaper (warn, wait,
//! terminate; dry run; a spent budget enforced at launch and by the reaper). Time is scripted
//! with `STRATUS_TEST_NOW` (a debug-build hook) where the test needs to be hours later.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use stratus::core::model::{ClusterName, InstanceState, Owner, ProviderKind, RequestId, Role};
use stratus::store::{ClusterRecord, Created, NewCluster, NodeRow, Observation, Store};

use crate::ec2::ec2_context;
use crate::ec2::ec2_moto::{Moto, UBUNTU_AMI};
use crate::support::{TestContext, eventually};

const H: i64 = 3_600_000;

fn now() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The store of a context, as the binary leaves it.
fn store(ctx: &TestContext) -> Store {
    Store::open_in(&ctx.state).unwrap()
}

/// Every usage interval of a context, by instance.
fn intervals(ctx: &TestContext) -> BTreeMap<String, Vec<stratus::store::Interval>> {
    let s = store(ctx);
    let ids: Vec<i64> = s
        .list_clusters(None)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for i in s.intervals(&ids).unwrap() {
        out.entry(i.instance_id.clone()).or_default().push(i);
    }
    out
}

const PROFILE: &str = r#"
description = "accounting test"
providers = ["ec2"]
max_workers = 4
ssh_user = "ubuntu"
[master]
image = "IMAGE"
instance_type = "m5.large"
user_data = "acct/ud.sh.hbs"
[worker]
image = "IMAGE"
instance_type = "m5.large"
user_data = "acct/ud.sh.hbs"
"#;

fn ec2_profile(ctx: &TestContext) {
    ctx.profile_file("acct.toml", &PROFILE.replace("IMAGE", UBUNTU_AMI));
    ctx.profile_file("acct/ud.sh.hbs", "#!/bin/sh\necho {{role}}\n");
}

#[test]
fn snapshots_record_run_stop_start_and_terminate() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, "client_cidrs = [\"203.0.113.0/24\"]\n");
    ec2_profile(&ctx);
    ctx.ok(&["launch-master", "acct", "-p", "acct", "--no-configure"]);
    let ids: Vec<String> = intervals(&ctx).keys().cloned().collect();
    assert_eq!(ids.len(), 1);
    let id = ids[0].clone();
    let start = now();
    let r = ctx.snapshot_json(Some(start + 60_000));
    assert_eq!(r["seen"], 1, "{r}");

    moto.block_on(moto.ec2.stop_instances().instance_ids(&id).send())
        .unwrap();
    ctx.snapshot_json(Some(start + 120_000));
    let iv = &intervals(&ctx)[&id];
    assert_eq!(iv.len(), 1, "{iv:?}");
    assert_eq!(
        iv[0].ended_at,
        Some(start + 120_000),
        "a stop ends the interval"
    );
    assert_eq!(iv[0].last_seen_at, start + 120_000);
    assert!(!iv[0].estimated);

    // Stopped hours are not billed; running again opens a new interval at the sighting.
    ctx.snapshot_json(Some(start + 180_000));
    assert_eq!(intervals(&ctx)[&id].len(), 1);
    moto.block_on(moto.ec2.start_instances().instance_ids(&id).send())
        .unwrap();
    ctx.snapshot_json(Some(start + 240_000));
    let iv = &intervals(&ctx)[&id];
    assert_eq!(iv.len(), 2, "{iv:?}");
    assert_eq!((iv[1].started_at, iv[1].ended_at), (start + 240_000, None));

    moto.block_on(moto.ec2.terminate_instances().instance_ids(&id).send())
        .unwrap();
    let r = ctx.snapshot_json(Some(start + 300_000));
    assert_eq!(r["ended"], 1, "{r}");
    let iv = &intervals(&ctx)[&id];
    assert_eq!(iv[1].ended_at, Some(start + 300_000));
    assert!(!iv[1].estimated);
    // Hours: 2 minutes, then 1 minute, nothing for the stop.
    let usage: Vec<Value> = serde_json::from_str(
        &ctx.ok_at(Some(start + 400_000), &["usage", "--json"])
            .stdout,
    )
    .unwrap();
    let hours = usage[0]["instance_hours"].as_f64().unwrap();
    let launched = intervals(&ctx)[&id][0].started_at;
    let want = ((start + 120_000 - launched) + 60_000) as f64 / H as f64;
    assert!((hours - want).abs() < 1e-9, "{hours} != {want}");
}

#[test]
fn an_instance_gone_without_a_sighting_of_its_end_is_closed_and_flagged() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, "client_cidrs = [\"203.0.113.0/24\"]\n");
    ec2_profile(&ctx);
    ctx.ok(&["launch-master", "gone", "-p", "acct", "--no-configure"]);
    let t = now();
    ctx.snapshot_json(Some(t + 60_000));
    // moto forgets everything: the instance vanishes without ever being seen terminated.
    moto.reset();
    // Within EC2's consistency grace (10 minutes from launch) it is not written off...
    let r = ctx.snapshot_json(Some(t + 120_000));
    assert!(r["missing"].as_array().unwrap().is_empty(), "{r}");
    // ...after it, it is closed at its last sighting plus one snapshot interval (5 minutes),
    // flagged estimated: never billed forever.
    let r = ctx.snapshot_json(Some(t + 3 * H));
    assert_eq!(r["missing"].as_array().unwrap().len(), 1, "{r}");
    let all = intervals(&ctx);
    let iv = all.values().next().unwrap();
    assert_eq!(iv.len(), 1);
    assert!(iv[0].estimated);
    assert_eq!(iv[0].ended_at, Some(t + 60_000 + 5 * 60_000));
    let usage = ctx.ok(&["usage", "--json"]);
    assert!(usage.stdout.contains("\"estimated\": true"), "{usage}");
}

#[test]
fn overlapping_snapshots_do_not_double_count() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-cluster", "ov", "2", "--no-configure"]);
    let before = intervals(&ctx);
    assert_eq!(before.len(), 3);
    // Eight snapshots at once, twice.
    for round in 0..2 {
        let children: Vec<_> = (0..8)
            .map(|_| {
                ctx.cmd()
                    .args(["accounting", "snapshot", "--json"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}");
        }
    }
    let after = intervals(&ctx);
    assert_eq!(after.len(), 3);
    for (id, ivs) in &after {
        assert_eq!(
            ivs.len(),
            1,
            "{id}: one interval, however many snapshots: {ivs:?}"
        );
        assert_eq!(ivs[0].ended_at, None);
        assert_eq!(ivs[0].started_at, before[id][0].started_at);
    }
    // The state does not grow with snapshots: one meta row, no row per snapshot.
    let s = store(&ctx);
    assert!(s.meta("last_snapshot_at").unwrap().is_some());
}

/// A term of usage written straight into a store: four clusters of three users, with runs
/// shorter than the minute, across midnight, stopped and open.
fn scripted_term(ctx: &TestContext) -> i64 {
    std::fs::create_dir_all(&ctx.state).unwrap();
    let s = store(ctx);
    let day = |d: &str| {
        jiff::civil::Date::strptime("%Y-%m-%d", d)
            .unwrap()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond()
    };
    let cluster = |owner: &str, name: &str, profile: &str| {
        let mut p = stratus::config::profile::Profile::for_tests(profile);
        p.name = profile.into();
        let rec = ClusterRecord {
            guard: None,
            profile: p,
            env: Default::default(),
            extra_keys: Vec::new(),
        };
        let created = s
            .create_cluster::<()>(
                &NewCluster {
                    name: &ClusterName::parse(name).unwrap(),
                    owner: &Owner::parse(owner).unwrap(),
                    provider: ProviderKind::Local,
                    request_id: &RequestId::new(),
                    record: &rec,
                    lifetime: None,
                },
                |_, _| Ok(Ok(())),
            )
            .unwrap();
        match created {
            Created::Row(c) => c,
            _ => panic!("cluster {name}"),
        }
    };
    let node = |c: &stratus::store::ClusterRow, id: &str, ty: &str, spot: bool, at: i64| NodeRow {
        instance_id: id.into(),
        cluster_id: c.id,
        role: Role::Worker,
        index: 1,
        request_id: c.request_id.to_string(),
        state: InstanceState::Running,
        address: None,
        private_address: None,
        ssh_port: 22,
        instance_type: ty.into(),
        image: "img".into(),
        spot,
        host_key: None,
        launched_at: at,
        ended_at: None,
        volume_gb: 0,
        public_ipv4: false,
    };
    let seen = |id: &str, state: InstanceState, at: i64| Observation::Seen {
        instance_id: id.into(),
        state,
        address: None,
        private_address: None,
        at,
    };
    // alice a1: one m5.large, 10 hours on 2026-09-01.
    let a1 = cluster("alice", "a1", "hadoop");
    s.record_nodes(
        &a1,
        None,
        &[node(&a1, "i-a1", "m5.large", false, day("2026-09-01"))],
        &[],
    )
    .unwrap();
    s.observe(&[seen(
        "i-a1",
        InstanceState::Terminated,
        day("2026-09-01") + 10 * H,
    )])
    .unwrap();
    // alice a2: two m5.xlarge of 30 seconds each (billed a minute each) on 2026-09-08 at noon.
    let a2 = cluster("alice", "a2", "hadoop");
    let noon = day("2026-09-08") + 12 * H;
    for id in ["i-a2a", "i-a2b"] {
        s.record_nodes(&a2, None, &[node(&a2, id, "m5.xlarge", false, noon)], &[])
            .unwrap();
        s.observe(&[seen(id, InstanceState::Terminated, noon + 30_000)])
            .unwrap();
    }
    // bob b1: one spot m5.large from 23:00 on 2026-09-15 to 01:00 the next day, stopped for
    // an hour in between (23:30 to 00:30): billed 23:00-23:30 and 00:30-01:00.
    let b1 = cluster("bob", "b1", "hadoop-spot");
    let t = day("2026-09-16") - H;
    s.record_nodes(&b1, None, &[node(&b1, "i-b1", "m5.large", true, t)], &[])
        .unwrap();
    s.observe(&[seen("i-b1", InstanceState::Stopped, t + H / 2)])
        .unwrap();
    s.observe(&[seen("i-b1", InstanceState::Running, t + 3 * H / 2)])
        .unwrap();
    s.observe(&[seen("i-b1", InstanceState::Terminated, t + 2 * H)])
        .unwrap();
    // carol c1: one m5.large running since midnight on 2026-10-01, still open.
    let c1 = cluster("carol", "c1", "hadoop");
    s.record_nodes(
        &c1,
        None,
        &[node(&c1, "i-c1", "m5.large", false, day("2026-10-01"))],
        &[],
    )
    .unwrap();
    // Now: 06:00 on 2026-10-01.
    day("2026-10-01") + 6 * H
}

#[test]
fn a_scripted_term_reports_hand_computed_numbers_in_every_format() {
    let ctx = TestContext::new();
    let now = scripted_term(&ctx);
    // Hand-computed, in micro-dollars (m5.large $0.096/h, m5.xlarge $0.192/h, spot at 70%):
    // a1: 10 h x 96000 = 960000; a2: 2 x 60 s x 192000/3600 = 6400 (the minimum);
    // b1: 1 h x 67200 = 67200; c1 (open): 6 h x 96000 = 576000.
    let json: Value =
        serde_json::from_str(&ctx.accounting_at(Some(now), &["report", "--by", "user", "--json"]))
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    let by_user: BTreeMap<&str, (f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap(),
                (
                    r["instance_hours"].as_f64().unwrap(),
                    r["cost_dollars"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(by_user["alice"].1, 0.9664);
    assert!((by_user["alice"].0 - (10.0 + 60.0 / 3600.0)).abs() < 1e-9);
    assert_eq!(by_user["bob"], (1.0, 0.0672));
    assert_eq!(by_user["carol"], (6.0, 0.576));
    assert_eq!(json["total"]["cost_dollars"], 1.6096);
    // The same in CSV, to the micro-dollar, and in the table, to the cent.
    let csv = ctx.accounting_at(Some(now), &["report", "--by", "user", "--csv"]);
    assert!(
        csv.starts_with("user,instance_hours,cost_dollars,estimated\n"),
        "{csv}"
    );
    assert!(csv.contains("alice,10.016666667,0.966400,false"), "{csv}");
    assert!(csv.contains("bob,1.000000000,0.067200,false"), "{csv}");
    assert!(csv.contains("carol,6.000000000,0.576000,false"), "{csv}");
    assert!(csv.contains("total,17.016666667,1.609600,"), "{csv}");
    let table = ctx.accounting_at(Some(now), &["report", "--by", "user"]);
    assert!(
        table.contains("alice") && table.contains("$0.97"),
        "{table}"
    );
    assert!(
        table.contains("total") && table.contains("$1.61"),
        "{table}"
    );

    // Clipping: from 2026-09-16 to 03:00 on 2026-10-01: bob's half hour after midnight, and
    // three of carol's hours; alice's runs are before the window.
    let json: Value = serde_json::from_str(&ctx.accounting_at(
        Some(now),
        &[
            "report",
            "--by",
            "cluster",
            "--since",
            "2026-09-16",
            "--until",
            "2026-10-01T03:00:00Z",
            "--json",
        ],
    ))
    .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json:#}");
    let b1 = rows.iter().find(|r| r["cluster"] == "b1").unwrap();
    assert_eq!(
        (
            b1["instance_hours"].as_f64().unwrap(),
            b1["cost_dollars"].as_f64().unwrap()
        ),
        (0.5, 0.0336)
    );
    assert_eq!(b1["owner"], "bob");
    assert_eq!(b1["profile"], "hadoop-spot");
    let c1 = rows.iter().find(|r| r["cluster"] == "c1").unwrap();
    assert_eq!(
        (
            c1["instance_hours"].as_f64().unwrap(),
            c1["cost_dollars"].as_f64().unwrap()
        ),
        (3.0, 0.288)
    );

    // By day: bob's run splits at midnight; alice's two 30-second runs are one day.
    let json: Value =
        serde_json::from_str(&ctx.accounting_at(Some(now), &["report", "--by", "day", "--json"]))
            .unwrap();
    let days: BTreeMap<&str, f64> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap(),
                r["cost_dollars"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(days["2026-09-01"], 0.96);
    assert_eq!(days["2026-09-08"], 0.0064);
    assert_eq!(days["2026-09-15"], 0.0336);
    assert_eq!(days["2026-09-16"], 0.0336);
    assert_eq!(days["2026-10-01"], 0.576);
    // By profile.
    let csv = ctx.accounting_at(Some(now), &["report", "--by", "profile", "--csv"]);
    assert!(csv.contains("hadoop,16.016666667,1.542400,false"), "{csv}");
    assert!(
        csv.contains("hadoop-spot,1.000000000,0.067200,false"),
        "{csv}"
    );
}

/// A local context with a policy that limits lifetime and budget, and a price for local nodes
/// (they are free otherwise).
fn reaper_context(policy: &str) -> TestContext {
    let ctx = TestContext::with_config("[prices]\n\"local\" = 1.0\n");
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        format!(
            "[units]\n\"local\" = 1\n[default]\nprofiles = [\"local-demo\"]\n{policy}\n[reaper]\ngrace_minutes = 30\n"
        ),
    )
    .unwrap();
    ctx
}

#[test]
fn the_reaper_warns_waits_for_the_grace_then_terminates() {
    // A quarter of an hour, as the policy writes it: the warning says `0.25 h`, not `0.2`.
    let ctx = reaper_context("max_lifetime_hours = 0.25");
    ctx.ok(&["launch-cluster", "old", "1"]);
    let t = now();
    // Within its lifetime: nothing.
    assert!(ctx.reap_json(t + 10 * 60_000, &[]).is_empty());
    // Past it: a dry run says what it would do and changes nothing.
    let would = ctx.reap_json(t + 2 * H, &["--dry-run"]);
    assert_eq!(would.len(), 1, "{would:?}");
    assert_eq!(would[0]["action"], "warn");
    assert!(
        ctx.ok(&["list", "old"])
            .stdout
            .lines()
            .all(|l| !l.contains("reaper"))
    );
    // The warning: a note in the owner's list, an audit row.
    let warned = ctx.reap_json(t + 2 * H, &[]);
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0]["cluster"], "old");
    assert_eq!(warned[0]["action"], "warn");
    let reason = warned[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "its lifetime of 0.25 h is over (0.25 h allowed); it will be terminated after "
        ),
        "{reason}"
    );
    // The time once, in local time with the zone (the test's zone is the machine's).
    let after = stratus::core::model::local_time(t + 2 * H + 30 * 60_000);
    assert!(reason.ends_with(&after), "{reason} / {after}");
    assert_eq!(
        reason.matches(&after[..10]).count(),
        1,
        "one time in {reason}"
    );
    let listed = ctx.ok(&["list", "old"]);
    assert!(
        listed
            .stdout
            .contains(&format!("note: the reaper warned this cluster: {reason}")),
        "{listed}"
    );
    // Within the grace: nothing more; the cluster runs.
    assert!(ctx.reap_json(t + 2 * H + 10 * 60_000, &[]).is_empty());
    assert_eq!(ctx.cluster_json("old")["state"], "configured");
    // After it: terminated.
    let done = ctx.reap_json(t + 2 * H + 31 * 60_000, &[]);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["action"], "terminate");
    let c = ctx.cluster_json("old");
    assert_eq!(c["state"], "terminated", "{c:#}");
    // Its owner's list says by whom and why.
    assert_eq!(c["ended_by"], "the reaper", "{c:#}");
    assert_eq!(
        c["ended_reason"], "its lifetime of 0.25 h is over (0.25 h allowed)",
        "{c:#}"
    );
    let listed = ctx.ok(&["list", "--all"]);
    assert!(
        listed.stdout.contains("old: terminated ")
            && listed
                .stdout
                .contains(" by the reaper: its lifetime of 0.25 h is over"),
        "{listed}"
    );
    let audit = store(&ctx).audit_since(0).unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(
        actions.contains(&"reap-warn") && actions.contains(&"reap-terminate"),
        "{actions:?}"
    );
}

#[test]
fn a_spent_budget_is_enforced_at_launch_and_by_the_reaper() {
    // Local nodes at $1 an hour; a budget of a cent.
    let ctx = reaper_context("budget_dollars = 0.01\nmax_lifetime_hours = 8");
    // A cent is less than the first minute of 2 nodes at $1 an hour costs ($0.03): the launch
    // is refused, naming what is left and what that minute costs.
    let r = ctx.run(&["launch-cluster", "b", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("$0.01 of the $0.01 budget left"), "{r}");
    assert!(
        r.stderr
            .contains("less than the first minute of this launch costs ($0.03 at $2.00/h)"),
        "{r}"
    );
    assert!(ctx.list_json().is_empty(), "nothing is created");

    // A cluster launched before the budget was set spends it; the reaper warns, then ends it.
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        "[units]\n\"local\" = 1\n",
    )
    .unwrap();
    ctx.ok(&["launch-cluster", "b", "1"]);
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        "[units]\n\"local\" = 1\n[default]\nbudget_dollars = 0.01\n",
    )
    .unwrap();
    let t = now();
    let warned = ctx.reap_json(t + H, &[]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0]["reason"]
            .as_str()
            .unwrap()
            .contains("budget of $0.01 is spent")
    );
    let done = ctx.reap_json(t + H + 31 * 60_000, &[]);
    assert_eq!(done[0]["action"], "terminate", "{done:?}");
    let gone = eventually(Duration::from_secs(30), || {
        (ctx.cluster_json("b")["state"] == "terminated").then_some(())
    });
    assert!(gone.is_some());
    // Seen at the same (scripted) time: the budget is spent, nothing is left.
    let q: Value =
        serde_json::from_str(&ctx.ok_at(Some(t + 2 * H), &["quota", "--json"]).stdout).unwrap();
    assert_eq!(q["left"]["dollars"], 0.0, "{q:#}");
    assert!(q["used"]["dollars"].as_f64().unwrap() >= 0.01, "{q:#}");
}
