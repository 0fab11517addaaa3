//! The launch core against moto with EC2's faults (issue 6, "The launch core, safe and at class
//! scale"): eventual consistency (a new instance unknown to the API for a while), two state
//! directories of one owner, a launcher SIGKILLed in each launch state, an orphan launched behind
//! stratus's back, one RunInstances per role whatever the size, throttling and lost answers.
//!
//! Every test holds `Moto` for its whole run (see `ec2.rs`); the faults come from
//! `scripts/moto_faults.py` (see `support/faults.rs`). Without `STRATUS_MOTO_ENDPOINT` they skip,
//! unless `STRATUS_REQUIRE_MOTO=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceStateName;
use serde_json::{Value, json};
use stratus::core::model::{Millis, now_millis};
use stratus::store::{Interval, Store};

use crate::ec2::ec2_moto::{Moto, UBUNTU_AMI, client, tag};
use crate::ec2::{
    CIDRS, E2E, TAGGED, TAGGED_USER_DATA, e2e_profile, ec2_context, ec2_provider, hypervisor,
    leftovers, live_instances, loopback_context, nodes, owner, resources_exist, store_id,
    tagged_profile,
};
use crate::support::{Run, TestContext, eventually};

/// The tagged profile (see `ec2.rs`) with another `ready_timeout_secs`.
fn tagged_profile_ready(ctx: &TestContext, ready_secs: u32) {
    let text = TAGGED.replace("IMAGE", UBUNTU_AMI).replace(
        "ready_timeout_secs = 60",
        &format!("ready_timeout_secs = {ready_secs}"),
    );
    assert_ne!(text, TAGGED.replace("IMAGE", UBUNTU_AMI));
    ctx.profile_file("tagged.toml", &text);
    ctx.profile_file("tagged/node.sh.hbs", TAGGED_USER_DATA);
}

/// Every instance moto holds, with its state, from DescribeInstanceStatus: the fault server
/// hides nothing there, so this sees instances that are still "new" to DescribeInstances.
async fn all_states(
    ec2: &aws_sdk_ec2::Client,
) -> Result<BTreeMap<String, InstanceStateName>, String> {
    let mut out = BTreeMap::new();
    let mut pages = ec2
        .describe_instance_status()
        .include_all_instances(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("DescribeInstanceStatus: {e:?}"))?;
        for s in page.instance_statuses() {
            if let (Some(id), Some(state)) =
                (s.instance_id(), s.instance_state().and_then(|s| s.name()))
            {
                out.insert(id.to_owned(), state.clone());
            }
        }
    }
    Ok(out)
}

fn states(moto: &Moto) -> BTreeMap<String, InstanceStateName> {
    moto.block_on(all_states(&moto.ec2)).unwrap()
}

/// The instances moto holds that are not terminated or shutting down, hidden or not.
fn running_in_moto(moto: &Moto) -> Vec<String> {
    states(moto)
        .into_iter()
        .filter(|(_, s)| {
            !matches!(
                s,
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown
            )
        })
        .map(|(id, _)| id)
        .collect()
}

/// A thread that polls moto (bypassing the hiding of new instances) and keeps, for each
/// instance, the latest moment it is known to have been running: the time taken just before a
/// DescribeInstanceStatus that reported it running. An interval that ends before that moment
/// was closed while the instance still ran.
struct RunningWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, Millis>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningWatch {
    fn start(moto: &Moto) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let ec2 = client(&moto.endpoint, "testing", "testing");
        let thread = {
            let (stop, seen, errors) = (stop.clone(), seen.clone(), errors.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    loop {
                        // Checked before the poll, so the last poll happens after `finish`
                        // was called.
                        let last = stop.load(Ordering::SeqCst);
                        let before = now_millis();
                        match all_states(&ec2).await {
                            Ok(states) => {
                                let mut seen = seen.lock().unwrap();
                                for (id, s) in states {
                                    if s == InstanceStateName::Running {
                                        seen.insert(id, before);
                                    }
                                }
                            }
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                        if last {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
            })
        };
        Self {
            stop,
            seen,
            errors,
            thread: Some(thread),
        }
    }

    /// The instances seen running so far.
    fn running(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().keys().cloned().collect()
    }

    /// Stops after one more poll; returns each instance's last moment seen running.
    fn finish(mut self) -> BTreeMap<String, Millis> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "the watch could not poll moto: {errors:?}"
        );
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RunningWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The usage intervals of the named clusters, read from the state database.
fn intervals_of(ctx: &TestContext, names: &[&str]) -> Vec<Interval> {
    let store = Store::open_in(&ctx.state).unwrap();
    let ids: Vec<i64> = store
        .list_clusters(None)
        .unwrap()
        .into_iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .map(|c| c.id)
        .collect();
    assert!(!ids.is_empty(), "no cluster {names:?} in the store");
    store.intervals(&ids).unwrap()
}

/// How many nodes the store records for the cluster `name`.
fn recorded_nodes(ctx: &TestContext, name: &str) -> usize {
    let store = Store::open_in(&ctx.state).unwrap();
    store
        .list_clusters(None)
        .unwrap()
        .into_iter()
        .filter(|c| c.name.as_str() == name)
        .map(|c| store.nodes_of(c.id).unwrap().len())
        .sum()
}

/// Every instance moto holds is recorded with exactly one usage interval, closed at an observed
/// end (not estimated), and not before the last moment the watch saw it running.
fn assert_accounted(
    ctx: &TestContext,
    names: &[&str],
    in_moto: &BTreeSet<String>,
    last_running: &BTreeMap<String, Millis>,
) {
    let ivs = intervals_of(ctx, names);
    let recorded: Vec<&str> = ivs.iter().map(|i| i.instance_id.as_str()).collect();
    let unique: BTreeSet<String> = recorded.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        recorded.len(),
        unique.len(),
        "one interval per instance: {ivs:#?}"
    );
    assert_eq!(&unique, in_moto, "every instance moto holds is accounted");
    for iv in &ivs {
        let ended = iv
            .ended_at
            .unwrap_or_else(|| panic!("{} is still open: {iv:?}", iv.instance_id));
        assert!(
            !iv.estimated,
            "{}: its end was seen, not estimated: {iv:?}",
            iv.instance_id
        );
        let running = last_running
            .get(&iv.instance_id)
            .unwrap_or_else(|| panic!("{} was never seen running", iv.instance_id));
        assert!(
            ended >= *running,
            "{}: interval closed at {ended}, but the instance still ran at {running} ({} ms later)",
            iv.instance_id,
            running - ended
        );
    }
}

/// The `launch-cluster` process, its stderr in a file (shown when a test fails).
struct Launcher {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Launcher {
    fn spawn(ctx: &TestContext, args: &[&str], env: &[(&str, &str)]) -> Self {
        let stderr = ctx
            .root
            .path()
            .join(format!("launcher-{}.err", now_millis()));
        let mut cmd = ctx.cmd();
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, and reap. Panics if the launcher had exited already: the test meant to kill it
    /// in the middle of its work.
    fn sigkill(mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the launcher exited ({status}) before it was killed:\n{}",
                self.stderr()
            );
        }
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `reconcile --json`, parsed.
fn reconcile_json(ctx: &TestContext) -> (Run, Vec<Value>) {
    let r = ctx.ok(&["reconcile", "--json"]);
    let actions: Vec<Value> = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("reconcile --json is not JSON ({e}):\n{r}"));
    (r, actions)
}

/// The ids an action names.
fn action_ids(a: &Value) -> BTreeSet<String> {
    a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The state `list --json` shows for a cluster, if it shows it.
fn listed_state(ctx: &TestContext, name: &str) -> Option<String> {
    ctx.list_json()
        .into_iter()
        .rfind(|c| c["name"] == name)
        .and_then(|c| c["state"].as_str().map(str::to_owned))
}

fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?}: {what}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Eventual consistency: NotFound is not gone.

/// New instance ids are unknown to DescribeInstances (by id: NotFound; filtered: left out),
/// TerminateInstances and CreateTags for this long.
const NOT_FOUND_SECS: u64 = 6;

/// After a command that ended a cluster's `n` instances while EC2 did not know them yet: none
/// runs in moto (looked at past the hiding), the cluster's group and key pair are gone, and every
/// instance is accounted, its end seen no earlier than it last ran.
fn assert_ended_for_real(
    moto: &Moto,
    ctx: &TestContext,
    name: &str,
    n: usize,
    last_running: &BTreeMap<String, Millis>,
) {
    let in_moto: BTreeSet<String> = states(moto).into_keys().collect();
    assert_eq!(in_moto.len(), n, "{in_moto:?}");
    assert!(
        running_in_moto(moto).is_empty(),
        "instances left running: {:?}",
        states(moto)
    );
    assert_accounted(ctx, &[name], &in_moto, last_running);
    assert!(!resources_exist(moto, name));
}

/// A launch that fails while its instances are still unknown to the API rolls back for real:
/// the old code took TerminateInstances' NotFound for "already terminated", left the instances
/// running and closed their usage.
#[test]
fn a_rollback_in_the_not_found_window_terminates_for_real() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    // Ready within 2 s: the instances stay hidden for longer, so the launch gives up on them
    // (and rolls back) while EC2 does not know them yet.
    tagged_profile_ready(&ctx, 2);
    moto.faults()
        .configure(json!({"not_found_secs": NOT_FOUND_SECS}));
    let watch = RunningWatch::start(&moto);
    let started = Instant::now();
    let r = ctx.run(&[
        "launch-cluster",
        "ec",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let took = started.elapsed();
    let last_running = watch.finish();
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("did not reach running within 2s"), "{r}");
    assert_ended_for_real(&moto, &ctx, "ec", 2, &last_running);
    assert_eq!(listed_state(&ctx, "ec").as_deref(), Some("failed"));
    assert!(
        took >= Duration::from_secs(NOT_FOUND_SECS),
        "the rollback cannot be confirmed before EC2 knows the instances ({took:?}):\n{r}"
    );
}

/// `terminate-cluster` while EC2 does not know the instances yet (a TerminateInstances that
/// lands before the instances propagate): it asks again until they are terminated.
#[test]
fn terminate_right_after_launch_waits_out_not_found() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    faults.configure(json!({"not_found_secs": NOT_FOUND_SECS}));
    let watch = RunningWatch::start(&moto);
    let launched = Instant::now();
    ctx.ok(&[
        "launch-cluster",
        "ec",
        "2",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    // The launch waited until DescribeInstances showed the instances running. Stretch the
    // window over the terminate: the ids are "new" again, until at least `window` after
    // `launched`.
    let window = launched.elapsed().as_secs() + 1 + NOT_FOUND_SECS;
    faults.configure(json!({ "not_found_secs": window }));
    let terminates = faults.count("TerminateInstances");
    let r = ctx.run(&["terminate-cluster", "ec", "--yes"]);
    let took = launched.elapsed();
    let last_running = watch.finish();
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("terminated cluster ec (3 nodes)"), "{r}");
    assert_ended_for_real(&moto, &ctx, "ec", 3, &last_running);
    assert_eq!(listed_state(&ctx, "ec").as_deref(), Some("terminated"));
    assert!(
        faults.count("TerminateInstances") >= terminates + 2,
        "the first TerminateInstances answered NotFound and was asked again: {:?}",
        faults.counts()
    );
    assert!(
        took >= Duration::from_secs(window),
        "terminated before EC2 knew the instances ({took:?} after the launch began):\n{r}"
    );
}

/// `reconcile` right after a launcher was SIGKILLed, while EC2 does not know its instances yet:
/// the rollback waits for EC2 to know and terminate them.
#[test]
fn reconcile_after_a_sigkill_in_the_not_found_window_terminates_for_real() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    // Longer: the kill and the start of reconcile happen inside it.
    let window = NOT_FOUND_SECS + 4;
    faults.configure(json!({ "not_found_secs": window }));
    let watch = RunningWatch::start(&moto);
    let spawned = Instant::now();
    let launcher = Launcher::spawn(
        &ctx,
        &[
            "launch-cluster",
            "ec",
            "2",
            "-p",
            "tagged",
            "--no-configure",
        ],
        &[],
    );
    // Killed once it recorded its instances, while it waits for DescribeInstances to show
    // them (which it cannot yet).
    wait_for(
        "the launcher records its 3 instances",
        Duration::from_secs(60),
        || (recorded_nodes(&ctx, "ec") == 3).then_some(()),
    );
    launcher.sigkill();
    assert_eq!(listed_state(&ctx, "ec").as_deref(), Some("requested"));
    let terminates = faults.count("TerminateInstances");
    let (r, actions) = reconcile_json(&ctx);
    let took = spawned.elapsed();
    let last_running = watch.finish();
    assert_eq!(actions.len(), 1, "{r}");
    assert_eq!(actions[0]["cluster"], "ec", "{r}");
    assert_eq!(actions[0]["action"], "roll-back", "{r}");
    assert!(
        actions[0]["what"]
            .as_str()
            .unwrap()
            .contains("launcher died"),
        "{r}"
    );
    assert_ended_for_real(&moto, &ctx, "ec", 3, &last_running);
    assert_eq!(listed_state(&ctx, "ec").as_deref(), Some("failed"));
    assert!(
        faults.count("TerminateInstances") >= terminates + 2,
        "the first TerminateInstances answered NotFound and was asked again: {:?}",
        faults.counts()
    );
    assert!(
        took >= Duration::from_secs(window),
        "reconcile finished before EC2 knew the instances ({took:?} after the launch began):\n{r}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Two state directories of one owner.

/// A second state directory of the same owner (another lab machine) sees the first one's
/// cluster as foreign: its reconcile reports and never touches it, its delete-cluster does not
/// know the name, and its launch of the same name is refused. The old code selected by the owner
/// tag alone and would have terminated the "orphans" and released their group.
#[test]
fn a_second_state_directory_never_touches_the_first_ones_cluster() {
    let Some(moto) = Moto::acquire() else { return };
    let first = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    let second = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&first);
    tagged_profile(&second);
    assert_ne!(store_id(&first), store_id(&second));
    first.ok(&[
        "launch-cluster",
        "twin",
        "2",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let owner = owner();
    let gname = format!("stratus-{owner}@twin");
    let kname = format!("{owner}@twin");
    let instances = moto.instances(&[("tag:stratus:cluster", "twin")]);
    let ids: BTreeSet<String> = instances
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    let group = moto.groups_named(&gname);
    assert_eq!(group.len(), 1);
    let group_id = group[0].group_id().unwrap().to_owned();
    let key_fingerprint = moto.key_pairs_named(&kname)[0]
        .key_fingerprint()
        .map(str::to_owned);
    // Older than every grace period: nothing waits for a launcher that might still record them.
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(moto.faults().age(&id_refs, 3 * 3600), 3);

    // The second directory's reconcile: the cluster is foreign, reported with its instances
    // and its two resources, and nothing else is done.
    let check_foreign = |r: &Run, actions: &[Value]| {
        assert_eq!(actions.len(), 1, "{r}");
        let a = &actions[0];
        assert_eq!(a["action"], "foreign", "{r}");
        assert_eq!(a["cluster"], "twin", "{r}");
        assert_eq!(action_ids(a), ids, "{r}");
        let what = a["what"].as_str().unwrap();
        assert!(
            what.contains("3 instance(s) and 2 other resource(s)"),
            "{r}"
        );
        assert!(
            what.contains(store_id(&first).as_str()),
            "names the other store: {r}"
        );
    };
    let (r, actions) = reconcile_json(&second);
    check_foreign(&r, &actions);

    // Its delete-cluster does not know the name.
    let r = second.run(&["delete-cluster", "twin"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("no cluster named twin"), "{r}");

    // Its launch of the same name is refused: the group is the other directory's.
    let r = second.run(&[
        "launch-cluster",
        "twin",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "{gname} belongs to cluster twin of another stratus state directory"
        )),
        "{r}"
    );
    assert_eq!(listed_state(&second, "twin").as_deref(), Some("failed"));
    // With a (failed) row of that name of its own now, its reconcile still leaves it alone.
    let (r, actions) = reconcile_json(&second);
    check_foreign(&r, &actions);

    // Nothing of the first directory's cluster was touched.
    let now = moto.instances(&[("tag:stratus:cluster", "twin")]);
    assert_eq!(now.len(), 3, "no instance was added: {now:#?}");
    for i in &now {
        assert_eq!(
            i.state().and_then(|s| s.name()),
            Some(&InstanceStateName::Running),
            "{i:?}"
        );
        assert_eq!(
            tag(i.tags(), "stratus:store"),
            Some(store_id(&first).as_str())
        );
    }
    let group = moto.groups_named(&gname);
    assert_eq!(group.len(), 1);
    assert_eq!(group[0].group_id(), Some(group_id.as_str()));
    assert_eq!(
        tag(group[0].tags(), "stratus:store"),
        Some(store_id(&first).as_str()),
        "the group was not taken over"
    );
    let kp = moto.key_pairs_named(&kname);
    assert_eq!(kp.len(), 1);
    assert_eq!(
        kp[0].key_fingerprint().map(str::to_owned),
        key_fingerprint,
        "the key pair was not replaced"
    );
    let c = first.cluster_json("twin");
    assert_eq!(c["state"], "running", "{c:#}");
    assert!(nodes(&c).iter().all(|n| n["state"] == "running"), "{c:#}");
    // And the first directory's own reconcile has nothing to do.
    let (r, actions) = reconcile_json(&first);
    assert!(actions.is_empty(), "{r}");
}

// ---------------------------------------------------------------------------------------------
// 3. A launcher SIGKILLed in each launch state, then `stratus reconcile`.

/// Killed in `reserved` (before anything is created): reconcile rolls the launch back at once,
/// without waiting for the stuck-launch timeout.
#[test]
fn sigkill_in_reserved_then_reconcile() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let launcher = Launcher::spawn(
        &ctx,
        &[
            "launch-cluster",
            "kr",
            "1",
            "-p",
            "tagged",
            "--no-configure",
        ],
        &[("STRATUS_TEST_PAUSE_AT", "reserved")],
    );
    wait_for("the launch is reserved", Duration::from_secs(60), || {
        (listed_state(&ctx, "kr").as_deref() == Some("reserved")).then_some(())
    });
    launcher.sigkill();
    let (r, actions) = reconcile_json(&ctx);
    assert_eq!(actions.len(), 1, "{r}");
    assert_eq!(actions[0]["cluster"], "kr");
    assert_eq!(actions[0]["action"], "roll-back");
    let what = actions[0]["what"].as_str().unwrap();
    assert!(
        what.contains("left in state reserved") && what.contains("launcher died"),
        "{r}"
    );
    assert_eq!(listed_state(&ctx, "kr").as_deref(), Some("failed"));
    assert!(states(&moto).is_empty(), "{:?}", states(&moto));
    assert!(!resources_exist(&moto, "kr"));
    assert_eq!(recorded_nodes(&ctx, "kr"), 0);
    let r = ctx.ok(&["reconcile"]);
    assert!(r.stderr.contains("nothing to reconcile"), "{r}");
}

/// Killed in `requested` while its RunInstances calls are in flight: moto then creates
/// instances nobody recorded. Reconcile finds them through the pending launch batches, records
/// them (so their hours count) and terminates them.
#[test]
fn sigkill_with_run_instances_in_flight_then_reconcile() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    faults.hold("RunInstances");
    let launcher = Launcher::spawn(
        &ctx,
        &[
            "launch-cluster",
            "kq",
            "2",
            "-p",
            "tagged",
            "--no-configure",
        ],
        &[],
    );
    // Both calls (master and workers) are made together.
    faults.wait_held("RunInstances", 2, Duration::from_secs(60));
    assert_eq!(listed_state(&ctx, "kq").as_deref(), Some("requested"));
    launcher.sigkill();
    faults.release("RunInstances");
    wait_for(
        "moto creates the held launch calls' instances",
        Duration::from_secs(30),
        || (live_instances(&moto, "kq") == 3).then_some(()),
    );
    assert_eq!(recorded_nodes(&ctx, "kq"), 0, "nobody recorded them");
    let in_moto: BTreeSet<String> = states(&moto).into_keys().collect();
    assert_eq!(in_moto.len(), 3);
    // Seen running by the test now; their intervals must end no earlier.
    let mut last_running: BTreeMap<String, Millis> = BTreeMap::new();
    let before = now_millis();
    for id in running_in_moto(&moto) {
        last_running.insert(id, before);
    }

    let (r, actions) = reconcile_json(&ctx);
    let by_action: BTreeMap<&str, &Value> = actions
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a))
        .collect();
    assert_eq!(
        by_action.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["roll-back", "record-strays"]),
        "{r}"
    );
    assert!(actions.iter().all(|a| a["cluster"] == "kq"), "{r}");
    assert!(
        by_action["roll-back"]["what"]
            .as_str()
            .unwrap()
            .contains("left in state requested"),
        "{r}"
    );
    assert_eq!(action_ids(by_action["record-strays"]), in_moto, "{r}");
    assert!(running_in_moto(&moto).is_empty(), "{:?}", states(&moto));
    assert!(!resources_exist(&moto, "kq"));
    let c = ctx.cluster_json("kq");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert_eq!(nodes(&c).len(), 3, "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_accounted(&ctx, &["kq"], &in_moto, &last_running);
}

/// ^C while the launch calls of a `--no-configure` launch are in flight: the calls finish (a
/// call dropped mid-flight could create instances nobody records), what they created is
/// recorded, then everything is terminated, and the launcher exits 130.
#[test]
fn ctrl_c_with_run_instances_in_flight_rolls_a_no_configure_launch_back() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    faults.hold("RunInstances");
    let mut launcher = Launcher::spawn(
        &ctx,
        &[
            "launch-cluster",
            "kc",
            "2",
            "-p",
            "tagged",
            "--no-configure",
        ],
        &[],
    );
    faults.wait_held("RunInstances", 2, Duration::from_secs(60));
    stratus::sys::kill(launcher.child.id(), libc::SIGINT).unwrap();
    faults.release("RunInstances");
    let status = launcher.child.wait().unwrap();
    let stderr = launcher.stderr();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("launch interrupted; everything it launched was terminated"),
        "{stderr}"
    );
    let c = ctx.cluster_json("kc");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert_eq!(nodes(&c).len(), 3, "all three were recorded: {c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert!(running_in_moto(&moto).is_empty(), "{:?}", states(&moto));
    assert!(!resources_exist(&moto, "kc"));
    let r = ctx.ok(&["reconcile", "--json", "--dry-run"]);
    assert_eq!(r.stdout.trim(), "[]", "nothing is left for reconcile:\n{r}");
}

/// Killed in `running` while the master runs the profile's configure step (booted by the test
/// hypervisor, over SSH): reconcile rolls back the whole cluster.
#[test]
fn sigkill_while_configuring_then_reconcile() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    e2e_profile(&ctx, 60, None);
    // A configure step that says it started (a file the test polls for) and then takes long.
    let marker = ctx.root.path().join("configuring");
    let command = format!("touch {} && sleep 600", marker.display());
    let e2e = E2E.replace("IMAGE", UBUNTU_AMI);
    assert!(e2e.contains("configure = [\"./check-workers.sh\"]"));
    let text = std::fs::read_to_string(ctx.profiles.join("e2e.toml"))
        .unwrap()
        .replace(
            "configure = [\"./check-workers.sh\"]",
            &format!("configure = [{command:?}]"),
        );
    ctx.profile_file("e2e.toml", &text);
    let hv = hypervisor(&moto, "kc", &[]);
    let watch = RunningWatch::start(&moto);
    let launcher = Launcher::spawn(&ctx, &["launch-cluster", "kc", "2", "-p", "e2e"], &[]);
    wait_for(
        "the master runs the configure step",
        Duration::from_secs(120),
        || marker.exists().then_some(()),
    );
    assert_eq!(listed_state(&ctx, "kc").as_deref(), Some("running"));
    launcher.sigkill();
    assert_eq!(watch.running().len(), 3);

    let (r, actions) = reconcile_json(&ctx);
    let last_running = watch.finish();
    assert_eq!(actions.len(), 1, "{r}");
    assert_eq!(actions[0]["cluster"], "kc");
    assert_eq!(actions[0]["action"], "roll-back");
    let what = actions[0]["what"].as_str().unwrap();
    assert!(
        what.contains("left in state running") && what.contains("launcher died"),
        "{r}"
    );
    let in_moto: BTreeSet<String> = states(&moto).into_keys().collect();
    assert_eq!(in_moto.len(), 3);
    assert!(running_in_moto(&moto).is_empty(), "{:?}", states(&moto));
    assert!(!resources_exist(&moto, "kc"));
    assert_eq!(listed_state(&ctx, "kc").as_deref(), Some("failed"));
    assert_accounted(&ctx, &["kc"], &in_moto, &last_running);
    let report = wait_for(
        "the hypervisor stops the nodes",
        Duration::from_secs(20),
        || {
            let r = hv.report();
            (r.stopped.len() == 3).then_some(r)
        },
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

// ---------------------------------------------------------------------------------------------
// 4. An orphan launched behind stratus's back.

/// An instance of this store that no row knows (launched by hand, or by a launcher that died
/// long ago without a lock file), older than the orphan grace: `stratus reconcile` records it
/// under the cluster its tag names, with its hours, and terminates it.
#[test]
fn reconcile_records_and_terminates_an_old_orphan_with_its_hours() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let provider = ec2_provider(
        &moto,
        ctx.root.path(),
        &format!("client_cidrs = {CIDRS:?}\n"),
    );
    leftovers(&moto, &provider, &store_id(&ctx), "orph", 1);
    let ids: Vec<String> = moto
        .instances(&[("tag:stratus:cluster", "orph")])
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(moto.faults().age(&id_refs, 3 * 3600), 1);

    let (r, actions) = reconcile_json(&ctx);
    assert_eq!(actions.len(), 1, "{r}");
    assert_eq!(actions[0]["cluster"], "orph");
    assert_eq!(actions[0]["action"], "orphans");
    assert_eq!(
        action_ids(&actions[0]),
        ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(live_instances(&moto, "orph"), 0);

    let ivs = intervals_of(&ctx, &["orph"]);
    assert_eq!(ivs.len(), 1, "{ivs:#?}");
    assert_eq!(ivs[0].instance_id, ids[0]);
    assert!(ivs[0].orphan, "{ivs:?}");
    assert!(!ivs[0].estimated, "{ivs:?}");
    assert!(ivs[0].ended_at.is_some(), "{ivs:?}");
    let usage: Vec<Value> = serde_json::from_str(&ctx.ok(&["usage", "--json"]).stdout).unwrap();
    let row = usage
        .iter()
        .find(|u| u["cluster"] == "orph")
        .unwrap_or_else(|| panic!("no usage of orph: {usage:#?}"));
    let hours = row["instance_hours"].as_f64().unwrap();
    assert!(
        (2.9..3.2).contains(&hours),
        "about 3 hours since its launch: {row}"
    );
    assert_eq!(row["open"], false, "{row}");

    // Once it is gone, the next run releases its cluster's group and key pair.
    assert!(resources_exist(&moto, "orph"));
    let (r, actions) = reconcile_json(&ctx);
    assert_eq!(actions.len(), 1, "{r}");
    assert_eq!(actions[0]["action"], "release", "{r}");
    assert!(!resources_exist(&moto, "orph"));
}

// ---------------------------------------------------------------------------------------------
// 5. Batching: EC2 calls O(1) in the number of nodes.

#[test]
fn launch_calls_do_not_grow_with_the_number_of_workers() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    let mut all = Vec::new();
    for (name, workers) in [("small", 1), ("large", 50)] {
        faults.reset();
        let started = Instant::now();
        ctx.ok(&[
            "launch-cluster",
            name,
            &workers.to_string(),
            "-p",
            "tagged",
            "--no-configure",
        ]);
        let took = started.elapsed();
        let counts: BTreeMap<String, u64> = faults.counts().into_iter().collect();
        let total: u64 = counts.values().sum();
        eprintln!("1+{workers}: {total} EC2 requests in {took:?}: {counts:?}");
        assert_eq!(
            counts.get("RunInstances").copied(),
            Some(2),
            "one RunInstances per role at 1+{workers}: {counts:?}"
        );
        assert_eq!(live_instances(&moto, name), 1 + workers);
        all.push(counts);
    }
    // Nothing else is called per node either: the same actions, in the same numbers, give or
    // take the polls while waiting for the instances to run.
    assert_eq!(
        all[0].keys().collect::<Vec<_>>(),
        all[1].keys().collect::<Vec<_>>()
    );
    for (action, small) in &all[0] {
        let large = all[1][action];
        assert!(
            large <= small + 2,
            "{action}: {small} calls at 1+1, {large} at 1+50"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Throttling and lost answers.

/// RequestLimitExceeded slows the launch down instead of failing it. The three throttles all
/// fall on the one call of a master alone: more than the SDK's default retry (three attempts in
/// all) survives.
#[test]
fn a_throttled_launch_slows_down_and_succeeds() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    faults.configure(json!({"throttle": {"RunInstances": 3}}));
    let started = Instant::now();
    let r = ctx.run(&["launch-master", "th", "-p", "tagged", "--no-configure"]);
    eprintln!(
        "a master launched through 3 throttles in {:?}",
        started.elapsed()
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        faults.configure(json!({}))["throttle"],
        json!({}),
        "all used"
    );
    assert_eq!(faults.count("RunInstances"), 1 + 3, "{:?}", faults.counts());
    let in_moto = states(&moto);
    assert_eq!(in_moto.len(), 1, "no duplicate: {in_moto:?}");
    assert_eq!(live_instances(&moto, "th"), 1);
    assert_eq!(recorded_nodes(&ctx, "th"), 1);
    assert_eq!(listed_state(&ctx, "th").as_deref(), Some("running"));
}

/// A RunInstances whose answer is lost (EC2 launched, the client saw a 500) is retried by the
/// SDK with the same ClientToken, which EC2 (here the fault server) answers with the same
/// instances: nothing is launched twice, and what was launched is recorded.
#[test]
fn a_lost_run_instances_answer_launches_nothing_twice() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    faults.configure(json!({
        "lose_answer": {"RunInstances": 1},
        "idempotent_client_token": true,
    }));
    let r = ctx.run(&[
        "launch-cluster",
        "la",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        faults.configure(json!({}))["lose_answer"],
        json!({}),
        "used"
    );
    assert_eq!(faults.count("RunInstances"), 2 + 1, "one retry");
    let in_moto: BTreeSet<String> = states(&moto).into_keys().collect();
    assert_eq!(in_moto.len(), 2, "no duplicate: {in_moto:?}");
    assert_eq!(recorded_nodes(&ctx, "la"), 2);
    let store = Store::open_in(&ctx.state).unwrap();
    let c = store
        .list_clusters(None)
        .unwrap()
        .into_iter()
        .find(|c| c.name.as_str() == "la")
        .unwrap();
    let recorded: BTreeSet<String> = store
        .nodes_of(c.id)
        .unwrap()
        .into_iter()
        .map(|n| n.instance_id)
        .collect();
    assert_eq!(
        recorded, in_moto,
        "the instances moto launched are the ones recorded"
    );
}

/// The same lost answer against moto's own behaviour (it ignores ClientToken, as an API without
/// idempotency would): the SDK's retry launches a second time, and the instances of the lost
/// answer are nobody's. The launch finds them under its request's tag, records them (their
/// hours count) and terminates them.
#[test]
fn a_duplicate_from_a_lost_answer_is_recorded_and_terminated() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    faults.configure(json!({"lose_answer": {"RunInstances": 1}}));
    let watch = RunningWatch::start(&moto);
    let r = ctx.run(&[
        "launch-cluster",
        "du",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let last_running = watch.finish();
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(faults.count("RunInstances"), 2 + 1, "one retry");
    let all = states(&moto);
    assert_eq!(all.len(), 3, "the retry launched again: {all:?}");
    assert_eq!(live_instances(&moto, "du"), 2, "{all:?}");
    let c = ctx.cluster_json("du");
    assert_eq!(c["state"], "running", "{c:#}");
    let live: Vec<Value> = nodes(&c)
        .into_iter()
        .filter(|n| n["state"] == "running")
        .collect();
    assert_eq!(live.len(), 2, "{c:#}");
    // Every instance is accounted: the duplicate's interval is closed, the others' open.
    let ivs = intervals_of(&ctx, &["du"]);
    let ids: BTreeSet<String> = ivs.iter().map(|i| i.instance_id.clone()).collect();
    assert_eq!(
        ids,
        all.keys().cloned().collect::<BTreeSet<_>>(),
        "{ivs:#?}"
    );
    for iv in &ivs {
        let running = all[&iv.instance_id] == InstanceStateName::Running;
        assert_eq!(iv.ended_at.is_none(), running, "{iv:?}");
        if let Some(ended) = iv.ended_at {
            assert!(!iv.estimated, "{iv:?}");
            assert!(ended >= last_running[&iv.instance_id], "{iv:?}");
        }
    }
}

/// SIGKILLed while a fallback call (the second subnet, after the first had no room) is in flight:
/// the call was written down as a batch of its own before it was made, so reconcile finds what
/// it created once the launcher is gone, records it and terminates it. No fallback can create
/// instances that nobody tracks.
#[test]
fn sigkill_with_a_fallback_call_in_flight_then_reconcile() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnets) = moto.loopback_subnets(2);
    let ctx = ec2_context(
        &moto,
        &format!("subnet_ids = {subnets:?}\naddress = \"private_ip\"\nclient_cidrs = {CIDRS:?}\n"),
    );
    crate::ec2::fallback_profile(&ctx);
    let faults = moto.faults();
    // The first zone has no room (answered at once); the calls into the second are held.
    faults.configure(json!({"refuse_when": [
        {"action": "RunInstances", "code": "InsufficientInstanceCapacity",
         "when": {"SubnetId": subnets[0]}},
    ]}));
    faults.hold("RunInstances");
    let launcher = Launcher::spawn(
        &ctx,
        &[
            "launch-cluster",
            "kf",
            "2",
            "-p",
            "fallback",
            "--no-configure",
        ],
        &[],
    );
    faults.wait_held("RunInstances", 2, Duration::from_secs(60));
    assert_eq!(
        faults.count("RunInstances"),
        4,
        "one refused and one held call per role"
    );
    // Each role's fallback call was written down, under a token of its own, before it was
    // made; nothing is settled before the calls' answers are recorded.
    let written = crate::ec2::batches(&ctx);
    assert_eq!(written.len(), 4, "{written:?}");
    assert!(written.iter().all(|(_, settled)| !settled), "{written:?}");
    let fallbacks = written.iter().filter(|(t, _)| t.ends_with("-a1")).count();
    assert_eq!(fallbacks, 2, "{written:?}");
    launcher.sigkill();
    faults.release("RunInstances");
    wait_for(
        "moto creates the held fallback calls' instances",
        Duration::from_secs(30),
        || (live_instances(&moto, "kf") == 3).then_some(()),
    );
    assert_eq!(recorded_nodes(&ctx, "kf"), 0, "nobody recorded them");
    let in_moto: BTreeSet<String> = states(&moto).into_keys().collect();
    let (r, actions) = reconcile_json(&ctx);
    let strays: BTreeSet<String> = actions
        .iter()
        .filter(|a| a["action"] == "record-strays")
        .flat_map(action_ids)
        .collect();
    assert_eq!(strays, in_moto, "{r}");
    assert!(running_in_moto(&moto).is_empty(), "{:?}", states(&moto));
    assert_eq!(ctx.cluster_json("kf")["state"], "failed");
    assert_eq!(recorded_nodes(&ctx, "kf"), 3, "their hours are accounted");
    let r = ctx.ok(&["reconcile", "--json", "--dry-run"]);
    assert_eq!(r.stdout.trim(), "[]", "nothing is left for reconcile:\n{r}");
}
