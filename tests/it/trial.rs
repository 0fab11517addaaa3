//! What an instructor's trial of a term found (issue 17, item 9), each through the real binary:
//! clusters whose instances ended outside stratus, one orphan policy for the snapshot and the
//! reaper, one rule for closing a vanished instance, `usage` for instructors, the JSON
//! contracts' forms of clusters and times, an ended cluster's terminate, profile suggestions,
//! and the class limits in `quota`.

use serde_json::Value;

use crate::support::TestContext;

/// Every line of `admin audit --json`.
fn audit(ctx: &TestContext) -> Vec<Value> {
    ctx.ok(&["admin", "audit", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn audit_rows_name_clusters_as_owner_slash_name_and_snapshot_times_are_rfc3339() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-master", "aud", "--no-configure"]);
    ctx.ok(&["terminate-cluster", "aud", "--yes"]);
    let owner = ctx.cluster_json("aud")["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let rows = audit(&ctx);
    let named: Vec<&Value> = rows.iter().filter(|r| !r["cluster"].is_null()).collect();
    assert!(named.len() >= 2, "the launch and the terminate: {rows:#?}");
    for r in named {
        assert_eq!(r["cluster"], format!("{owner}/aud"), "{r}");
    }

    let snap: Value =
        serde_json::from_str(&ctx.ok(&["accounting", "snapshot", "--json"]).stdout).unwrap();
    let at = snap["at"]
        .as_str()
        .unwrap_or_else(|| panic!("at is not a string: {snap}"));
    assert!(at.parse::<jiff::Timestamp>().is_ok(), "{snap}");
}

#[test]
fn terminating_an_ended_cluster_says_it_already_was_and_when() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-master", "lab2", "--no-configure"]);
    ctx.ok(&["terminate-cluster", "lab2", "--yes"]);
    let again = ctx.ok(&["terminate-cluster", "lab2", "--yes"]);
    assert!(!again.stderr.contains("(0 nodes)"), "{again}");
    let line = again
        .stderr
        .lines()
        .find(|l| l.contains("cluster lab2 was already terminated at "))
        .unwrap_or_else(|| panic!("{again}"));
    // Local time with its zone: "2026-12-03 05:53 UTC".
    let when = line
        .split(" at ")
        .nth(1)
        .unwrap()
        .trim_end_matches([')', '.']);
    let parts: Vec<&str> = when.split(' ').collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert!(
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", format!("{} {}", parts[0], parts[1]))
            .is_ok(),
        "{line}"
    );
    assert!(!parts[2].is_empty(), "{line}");
}

#[test]
fn usage_for_instructors_shows_owners_and_creation_times_and_refuses_an_unknown_user() {
    let ctx = TestContext::new();
    for _ in 0..2 {
        ctx.ok(&["launch-master", "twice", "--no-configure"]);
        ctx.ok(&["terminate-cluster", "twice", "--yes"]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let owner = ctx.cluster_json("twice")["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let all = ctx.ok(&["usage", "--everyone"]);
    let mut lines = all.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("OWNER") && header.contains("CREATED"),
        "{all}"
    );
    let rows: Vec<&str> = lines.filter(|l| l.starts_with("twice ")).collect();
    assert_eq!(rows.len(), 2, "{all}");
    assert_ne!(rows[0], rows[1], "the same name twice, told apart: {all}");
    assert!(rows.iter().all(|r| r.contains(&owner)), "{all}");
    let json: Value =
        serde_json::from_str(&ctx.ok(&["usage", "--everyone", "--json"]).stdout).unwrap();
    assert!(
        json[0]["created_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{json}"
    );

    let unknown = ctx.run(&["usage", "--owner", "nosuchuser17"]);
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(unknown.stderr.contains("nosuchuser17"), "{unknown}");
}

#[test]
fn quota_shows_the_class_cap_and_term_and_an_instructor_may_ask_for_any_user() {
    use crate::privileged::{Site, start};
    let Some(_serial) = start() else { return };
    let site = Site::offline(2);
    let (s1, s2, ins) = (site.student(0), site.student(1), &site.instructor);
    site.set_policy(&format!(
        r#"
instructors = ["INSTRUCTOR"]
[class]
max_units = 200
term_start = 2026-09-01
term_end = 2026-12-20
[units]
"m5.large" = 1
[default]
max_units = 12
max_clusters = 2
profiles = ["tiny"]
[users.{}]
max_clusters = 3
"#,
        s1.name
    ));
    let table = site.stratus(s2, &["quota"]).ok();
    let text = format!("{table}");
    assert!(text.contains("class units"), "{text}");
    assert!(text.contains("200"), "{text}");
    assert!(
        text.contains("2026-09-01") && text.contains("2026-12-20"),
        "{text}"
    );
    let own = site.stratus(s2, &["quota", "--json"]).ok().json();
    assert_eq!(own["class"]["max_units"], 200.0, "{own}");
    assert_eq!(own["class"]["units"], 0.0, "{own}");
    assert!(
        own["class"]["term_start"]
            .as_str()
            .unwrap()
            .starts_with("2026-09-01"),
        "{own}"
    );
    // A date alone as term_end takes in that whole day: the term ends as the next begins.
    assert!(
        own["class"]["term_end"]
            .as_str()
            .unwrap()
            .starts_with("2026-12-21T00:00:00"),
        "{own}"
    );

    // The instructor sees what a student resolves to; a student may not ask for another.
    let theirs = site
        .stratus(ins, &["quota", "--user", &s1.name, "--json"])
        .ok()
        .json();
    assert_eq!(theirs["user"], s1.name.as_str(), "{theirs}");
    assert_eq!(theirs["limits"]["max_clusters"], 3, "{theirs}");
    assert_eq!(theirs["limits"]["max_units"], 12.0, "{theirs}");
    site.stratus(s2, &["quota", "--user", &s1.name])
        .refused_with(2, "only instructors");
    site.stratus(ins, &["quota", "--user", "nosuchuser17"])
        .refused_with(2, "nosuchuser17");
}

#[test]
fn a_mistyped_profile_suggests_the_nearest_one_this_site_runs_and_the_policy_allows() {
    let ctx = TestContext::new();
    for name in ["hadoop-local", "hadoop-loca", "hadoop-lab"] {
        ctx.profile_file(&format!("{name}.toml"), "extends = \"local-demo\"\n");
    }
    std::fs::write(
        ctx.root.path().join("policy.toml"),
        "[default]\nprofiles = [\"hadoop-local\", \"local-demo\", \"hadoop\"]\n",
    )
    .unwrap();
    let r = ctx.run(&[
        "launch-master",
        "typo",
        "--profile",
        "hadoop-locl",
        "--no-configure",
    ]);
    assert_eq!(r.code, 2, "{r}");
    let error = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(error.contains("did you mean \"hadoop-local\"?"), "{r}");
    // Listed: what this site's provider runs and the policy allows, nothing else (not the
    // nearer hadoop-loca the policy does not allow, nor the EC2 profiles).
    let listed: Vec<&str> = error
        .split("profiles you may launch here: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{r}"))
        .split(", ")
        .collect();
    assert_eq!(listed, ["hadoop-local", "local-demo"], "{r}");
    assert!(ctx.list_json().is_empty(), "nothing launched");
}

/// The node directories of a local cluster.
fn nodes_of(ctx: &TestContext, cluster: &str) -> Vec<std::path::PathBuf> {
    ctx.node_dirs()
        .into_iter()
        .filter(|d| {
            std::fs::read_to_string(d.join("node.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["tags"]["cluster"] == cluster)
        })
        .collect()
}

/// Makes a local cluster's nodes vanish as an instance does that is terminated and forgotten
/// outside stratus: the process killed, the directory gone.
fn vanish(ctx: &TestContext, cluster: &str) {
    let dirs = nodes_of(ctx, cluster);
    assert!(!dirs.is_empty(), "{cluster} has no node directories");
    for d in dirs {
        if let Some(pid) = crate::support::node_pid(&d) {
            let _ = stratus::sys::kill(pid, libc::SIGKILL);
        }
        crate::support::eventually(std::time::Duration::from_secs(10), || {
            crate::support::node_pid(&d).is_none().then_some(())
        })
        .expect("the node process ends");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

const MINUTE: i64 = 60_000;

#[test]
fn a_vanished_instance_closes_at_its_last_sighting_plus_at_most_one_snapshot_interval_whoever_writes_it_off()
 {
    let ctx = TestContext::new();
    ctx.ok(&["launch-master", "va", "--no-configure"]);
    ctx.ok(&["launch-master", "vb", "--no-configure"]);
    let later = jiff::Timestamp::now().as_millisecond() + 20 * MINUTE;

    // Written off by a read (`list` looks at the nodes) twenty minutes on...
    vanish(&ctx, "va");
    let last = ctx.intervals_of("va")[0].last_seen_at;
    ctx.ok_at(Some(later), &["list"]);
    let iv = ctx.intervals_of("va");
    assert!(iv[0].estimated, "{iv:?}");
    assert_eq!(iv[0].ended_at, Some(last + 5 * MINUTE), "{iv:?}");

    // ...or by the accounting snapshot: the same rule.
    vanish(&ctx, "vb");
    let last = ctx.intervals_of("vb")[0].last_seen_at;
    ctx.snapshot_json(Some(later + 20 * MINUTE));
    let iv = ctx.intervals_of("vb");
    assert!(iv[0].estimated, "{iv:?}");
    assert_eq!(iv[0].ended_at, Some(last + 5 * MINUTE), "{iv:?}");

    // Written off sooner than that after its last sighting: at the write-off, at most.
    ctx.ok(&["launch-master", "vc", "--no-configure"]);
    vanish(&ctx, "vc");
    let last = ctx.intervals_of("vc")[0].last_seen_at;
    ctx.snapshot_json(Some(last + MINUTE));
    assert_eq!(ctx.intervals_of("vc")[0].ended_at, Some(last + MINUTE));
}

/// A policy under which local nodes cost a unit each, so reservations are made and released.
const LOCAL_UNITS: &str = "[units]\n\"local\" = 1\n[default]\nmax_units = 4\nmax_clusters = 1\n";

#[test]
fn a_cluster_whose_instances_all_ended_outside_stratus_is_settled_as_ended_by_the_snapshot() {
    let ctx = TestContext::new();
    std::fs::write(ctx.root.path().join("policy.toml"), LOCAL_UNITS).unwrap();
    ctx.ok(&["launch-cluster", "lab", "1", "--no-configure"]);
    let quota: Value = serde_json::from_str(&ctx.ok(&["quota", "--json"]).stdout).unwrap();
    assert_eq!(quota["used"]["units"], 2.0, "{quota}");
    assert_eq!(quota["used"]["clusters"], 1, "{quota}");

    vanish(&ctx, "lab");
    let snap: Value =
        serde_json::from_str(&ctx.ok(&["accounting", "snapshot", "--json"]).stdout).unwrap();
    assert_eq!(
        snap["settled"],
        serde_json::json!([format!(
            "{}/lab",
            ctx.cluster_json("lab")["owner"].as_str().unwrap()
        )]),
        "{snap}"
    );
    let c = ctx.cluster_json("lab");
    assert_eq!(c["state"], "terminated", "{c:#}");
    let s = stratus::store::Store::open_in(&ctx.state).unwrap();
    let row = s
        .list_clusters(None)
        .unwrap()
        .into_iter()
        .find(|c| c.name.as_str() == "lab")
        .unwrap();
    assert!(
        row.failure
            .as_deref()
            .unwrap_or("")
            .contains("all its instances ended outside stratus"),
        "{row:?}"
    );
    assert!(
        audit(&ctx).iter().any(
            |r| r["cluster"].as_str().is_some_and(|c| c.ends_with("/lab"))
                && r["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("all its instances ended outside stratus"))
        ),
        "audited"
    );
    // Its units and its slot are free: the quota says so, and a launch is admitted.
    let quota: Value = serde_json::from_str(&ctx.ok(&["quota", "--json"]).stdout).unwrap();
    assert_eq!(quota["used"]["units"], 0.0, "{quota}");
    assert_eq!(quota["used"]["clusters"], 0, "{quota}");
    ctx.ok(&["launch-master", "lab", "--no-configure"]);
    ctx.ok(&["terminate-cluster", "lab", "--yes"]);
}

/// An EC2 profile of one m5.large per role, booting nothing.
fn ec2_profile(ctx: &TestContext) {
    use crate::ec2::ec2_moto::UBUNTU_AMI;
    let role = format!(
        "image = \"{UBUNTU_AMI}\"\ninstance_type = \"m5.large\"\nuser_data = \"trial/ud.sh.hbs\"\n"
    );
    ctx.profile_file(
        "trial.toml",
        &format!(
            "description = \"trial\"\nproviders = [\"ec2\"]\nmax_workers = 2\nssh_user = \"ubuntu\"\n[master]\n{role}[worker]\n{role}"
        ),
    );
    ctx.profile_file("trial/ud.sh.hbs", "#!/bin/sh\necho {{role}}\n");
}

#[test]
fn an_ec2_cluster_gone_from_ec2_is_settled_only_after_the_consistency_grace() {
    use crate::ec2::ec2_moto::Moto;
    let Some(moto) = Moto::acquire() else { return };
    let ctx = crate::ec2::ec2_context(&moto, "client_cidrs = [\"203.0.113.0/24\"]\n");
    ec2_profile(&ctx);
    ctx.ok(&["launch-master", "gone", "-p", "trial", "--no-configure"]);
    let t = jiff::Timestamp::now().as_millisecond();
    // moto forgets everything: EC2 answers NotFound, as it may for an instance just launched.
    moto.reset();
    let state = |ctx: &TestContext| {
        let s = stratus::store::Store::open_in(&ctx.state).unwrap();
        let c = s
            .list_clusters(None)
            .unwrap()
            .into_iter()
            .find(|c| c.name.as_str() == "gone")
            .unwrap();
        c.state.as_str().to_owned()
    };
    // Within EC2's consistency grace (10 minutes from launch) it is not gone...
    let r = ctx.snapshot_json(Some(t + 2 * MINUTE));
    assert_eq!(r["settled"], serde_json::json!([]), "{r}");
    assert_eq!(state(&ctx), "running");
    // ...after it, it is, and so is its cluster.
    let r = ctx.snapshot_json(Some(t + 20 * MINUTE));
    assert_eq!(r["settled"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(state(&ctx), "terminated");
}

/// An orphan of `cluster` (an instance of this store no row knows, launched three hours ago):
/// its id.
fn plant_orphan(
    moto: &crate::ec2::ec2_moto::Moto,
    ctx: &TestContext,
    provider: &stratus::cluster::provider::ec2::Ec2Provider,
    cluster: &str,
) -> String {
    crate::ec2::leftovers(moto, provider, &crate::ec2::store_id(ctx), cluster, 1);
    let ids: Vec<String> = moto
        .instances(&[("tag:stratus:cluster", cluster)])
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(moto.faults().age(&[ids[0].as_str()], 3 * 3600), 1);
    ids[0].clone()
}

#[test]
fn one_orphan_policy_decides_for_the_snapshot_and_the_reaper_and_their_summaries_say_what_was_done()
{
    use crate::ec2::{CIDRS, ec2_provider, live_instances, tagged_profile};
    let Some(moto) = crate::ec2::ec2_moto::Moto::acquire() else {
        return;
    };
    let extra = format!("client_cidrs = {CIDRS:?}\n");
    let ctx = crate::ec2::ec2_context(&moto, &extra);
    tagged_profile(&ctx);
    let provider = ec2_provider(&moto, ctx.root.path(), &extra);
    let first = plant_orphan(&moto, &ctx, &provider, "orph");

    // The policy's default, as the reaper's: reported (and accounted), never terminated.
    let r = ctx.ok(&["accounting", "snapshot"]);
    assert!(
        r.stderr.contains("1 orphan(s) reported, 0 terminated"),
        "{r}"
    );
    assert_eq!(live_instances(&moto, "orph"), 1, "{r}");
    let reaped = ctx.ok(&["accounting", "reap"]);
    assert!(
        reaped.stdout.contains(&first),
        "the recorded orphan is still one: {reaped}"
    );
    assert!(
        reaped.stderr.contains("orphans: 1 reported, 0 terminated"),
        "{reaped}"
    );
    assert_eq!(live_instances(&moto, "orph"), 1, "{reaped}");

    // The policy says terminate: the reaper (without its flag) and the snapshot follow it...
    std::fs::write(
        ctx.root.path().join("policy.toml"),
        "[reaper]\norphans = \"terminate\"\n",
    )
    .unwrap();
    let reaped = ctx.ok(&["accounting", "reap"]);
    assert!(
        reaped.stderr.contains("orphans: 0 reported, 1 terminated"),
        "{reaped}"
    );
    assert_eq!(live_instances(&moto, "orph"), 0, "{reaped}");
    plant_orphan(&moto, &ctx, &provider, "orph2");
    // ...unless the flag says otherwise...
    ctx.ok(&["accounting", "reap", "--orphans", "report"]);
    assert_eq!(live_instances(&moto, "orph2"), 1);
    // ...and the snapshot says what it did.
    let r = ctx.ok(&["accounting", "snapshot"]);
    assert!(
        r.stderr.contains("0 orphan(s) reported, 1 terminated"),
        "{r}"
    );
    assert_eq!(live_instances(&moto, "orph2"), 0, "{r}");

    // A typo in the key's value is an error naming it.
    std::fs::write(
        ctx.root.path().join("policy.toml"),
        "[reaper]\norphans = \"terminat\"\n",
    )
    .unwrap();
    let r = ctx.run(&["accounting", "reap"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("[reaper] orphans must be"), "{r}");
}
