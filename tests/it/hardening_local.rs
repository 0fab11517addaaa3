//! Hardening of the local provider's lifecycle, through the real binary: a launcher SIGKILLed in
//! each state and the reconcile after it; launch-slaves racing terminate-cluster; read paths that
//! write nothing; the SOCKS proxy; the configure timeout; ^C during a launch; delete-cluster and
//! what `list` shows; reconcile's dry run; the progress bar; nodes that die at boot.
//!
//! Every wait is on something observable (`list --json`, a marker file, a line on a pipe or a
//! terminal), never a fixed sleep, except the deliberate random offsets of the race.

use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    TestContext, eventually, forward_stderr, node_pid, processes_mentioning, processes_of_node,
    read_line_from,
};

fn nodes(cluster: &Value) -> Vec<Value> {
    cluster["nodes"].as_array().cloned().unwrap_or_default()
}

fn ids(cluster: &Value) -> Vec<String> {
    nodes(cluster)
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

fn json(r: &crate::support::Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r}"))
}

/// Every cluster of this context, ended ones included.
fn list_all(ctx: &TestContext) -> Vec<Value> {
    json(&ctx.ok(&["list", "--all", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

/// The most recent cluster of this name in `list --all --json`.
fn cluster_all(ctx: &TestContext, name: &str) -> Value {
    list_all(ctx)
        .into_iter()
        .rfind(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in list --all --json"))
}

/// Waits until `list --json` shows cluster `name` in `state`.
fn wait_for_state(ctx: &TestContext, name: &str, state: &str, within: Duration) -> Value {
    eventually(within, || {
        ctx.list_json()
            .into_iter()
            .rfind(|c| c["name"] == name)
            .filter(|c| c["state"] == state)
    })
    .unwrap_or_else(|| {
        panic!(
            "cluster {name} never showed state {state}; list --all --json:\n{:#}",
            Value::Array(list_all(ctx))
        )
    })
}

/// The `cluster` tag of a node directory's configuration, if it has one.
fn node_cluster(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["tags"]["cluster"].as_str().map(str::to_owned)
}

/// No node process of these nodes is alive, nor anything they started: no process holds their
/// lock or carries their marker. Node directories of `cluster` that no record names (a node
/// started and never recorded) are checked too.
fn assert_no_process_left(ctx: &TestContext, cluster: &str, ids: &[String]) {
    let mut all: BTreeSet<String> = ids.iter().cloned().collect();
    for dir in ctx.node_dirs() {
        if node_cluster(&dir).as_deref() == Some(cluster)
            && let Some(id) = dir.file_name().and_then(|n| n.to_str())
        {
            all.insert(id.to_owned());
        }
    }
    for id in &all {
        let dir = ctx.state.join("local").join(id);
        let gone = eventually(Duration::from_secs(5), || {
            (node_pid(&dir).is_none() && processes_of_node(id).is_empty()).then_some(())
        });
        assert!(
            gone.is_some(),
            "node {id} of cluster {cluster} left processes: lock held by {:?}, marked {:?}",
            node_pid(&dir),
            processes_of_node(id)
        );
        assert!(
            processes_mentioning(&dir.display().to_string()).is_empty(),
            "a process still mentions {}",
            dir.display()
        );
    }
}

fn spawn(ctx: &TestContext, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = ctx.cmd();
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn stratus")
}

/// SIGKILLs a launcher (nothing of it runs any more: no rollback, no unlock but the kernel's).
fn sigkill(mut child: Child, what: &str) {
    forward_stderr(&mut child, what);
    stratus::sys::kill(child.id(), libc::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{what} was not killed by SIGKILL: {status:?}"
    );
}

/// After a launcher of `name` was SIGKILLed in `state`: `reconcile` rolls the launch back, and
/// nothing of it is left, in the processes or in the books.
fn assert_reconcile_rolls_back(ctx: &TestContext, name: &str, state: &str, min_nodes: usize) {
    let before = cluster_all(ctx, name);
    assert_eq!(before["state"], state, "{before:#}");
    let r = ctx.ok(&["reconcile", "--json"]);
    let actions = json(&r);
    let mine: Vec<&Value> = actions
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["cluster"] == name)
        .collect();
    assert!(
        mine.iter()
            .any(|a| a["action"] == "roll-back"
                && a["what"].as_str().unwrap().contains("launcher died")),
        "{r}"
    );
    let c = cluster_all(ctx, name);
    assert_eq!(c["state"], "failed", "{c:#}");
    let ns = nodes(&c);
    assert!(ns.len() >= min_nodes, "{c:#}");
    assert!(
        ns.iter().all(|n| n["state"] == "terminated"),
        "not every node is terminated: {c:#}"
    );
    let r = ctx.ok(&["list", name]);
    assert!(
        r.stdout.contains(&format!(
            "failure: the launch was abandoned in state {state} (its launcher died)"
        )),
        "{r}"
    );
    assert_no_process_left(ctx, name, &ids(&c));
    let intervals = ctx.intervals_of(name);
    assert_eq!(intervals.len(), ns.len(), "{intervals:?}");
    for i in &intervals {
        assert!(
            i.ended_at.is_some(),
            "usage interval of {} left open: {i:?}",
            i.instance_id
        );
    }
    // A second reconcile finds nothing more to do for it.
    let again = json(&ctx.ok(&["reconcile", "--json"]));
    assert!(
        again
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["cluster"] != name),
        "{again:#}"
    );
}

fn sigkill_paused_launch_then_reconcile(state: &str) {
    let ctx = TestContext::new();
    let launcher = spawn(
        &ctx,
        &["launch-cluster", "pk", "1"],
        &[("STRATUS_TEST_PAUSE_AT", state)],
    );
    wait_for_state(&ctx, "pk", state, Duration::from_secs(30));
    sigkill(launcher, "launch-cluster pk");
    assert_reconcile_rolls_back(&ctx, "pk", state, 0);
    // The name is free again.
    ctx.ok(&["launch-master", "pk"]);
}

#[test]
fn sigkill_of_the_launcher_in_reserved_then_reconcile() {
    sigkill_paused_launch_then_reconcile("reserved");
}

#[test]
fn sigkill_of_the_launcher_in_requested_then_reconcile() {
    sigkill_paused_launch_then_reconcile("requested");
}

#[test]
fn sigkill_of_the_launcher_while_configuring_then_reconcile() {
    let ctx = TestContext::new();
    let marker = ctx.root.path().join("configure-started");
    ctx.profile_file(
        "slowconf.toml",
        &format!(
            "extends = \"local-demo\"\nconfigure = [\"touch '{}' && sleep 600; echo done\"]\n",
            marker.display()
        ),
    );
    let launcher = spawn(
        &ctx,
        &["launch-cluster", "ck", "1", "--profile", "slowconf"],
        &[],
    );
    let started = eventually(Duration::from_secs(60), || marker.exists().then_some(()));
    assert!(started.is_some(), "the configure command never ran");
    let c = ctx.cluster_json("ck");
    assert_eq!(c["state"], "running", "{c:#}");
    assert!(nodes(&c).iter().all(|n| n["state"] == "running"), "{c:#}");
    sigkill(launcher, "launch-cluster ck");
    // The nodes outlive their launcher: the case under test.
    for id in ids(&c) {
        let dir = ctx.state.join("local").join(&id);
        assert!(node_pid(&dir).is_some(), "node {id} died with its launcher");
    }
    // `list` says so before anything acts on it, and acts on nothing.
    let r = ctx.ok(&["list"]);
    assert!(
        r.stdout
            .contains("ck: its launch was cut off (the launching process is gone)"),
        "{r}"
    );
    assert_eq!(ctx.cluster_json("ck")["state"], "running");
    assert_reconcile_rolls_back(&ctx, "ck", "running", 2);
    let r = ctx.ok(&["list", "--all"]);
    assert!(!r.stdout.contains("cut off"), "{r}");
    assert!(
        processes_mentioning(&marker.display().to_string()).is_empty(),
        "the configure command still runs"
    );
}

/// xorshift64, seeded from the round: offsets that differ from round to round and are the same
/// in every run, so a failing round replays.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn launch_slaves_racing_terminate_cluster_leaves_nothing_running() {
    let ctx = TestContext::new();
    let mut outcomes: Vec<String> = Vec::new();
    for round in 0..20u64 {
        let name = format!("race{round}");
        ctx.ok(&["launch-master", &name]);
        let mut rng = XorShift::new(round + 1);
        // From a few ms to about a second, log-uniformly (as many below 50 ms as above): before
        // launch-slaves reads the cluster, while it starts its node, while it waits for SSH,
        // while it configures, after it is done.
        let u = (rng.next() % 10_000) as f64 / 10_000.0;
        let offset = Duration::from_micros((2_000.0 * 550f64.powf(u)) as u64);
        let slaves = ctx
            .cmd()
            .args(["launch-slaves", &name, "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(offset);
        let term = ctx
            .cmd()
            .args(["terminate-cluster", &name, "--yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let t = term.wait_with_output().unwrap();
        let t_took = t0.elapsed();
        let s = slaves.wait_with_output().unwrap();
        let s_took = t0.elapsed();
        let report = format!(
            "round {round}, offset {offset:?}\n--- launch-slaves exit {:?}\n{}\n--- terminate-cluster exit {:?}\n{}",
            s.status.code(),
            String::from_utf8_lossy(&s.stderr),
            t.status.code(),
            String::from_utf8_lossy(&t.stderr)
        );
        // Neither dies of a signal or a panic, whatever the outcome.
        for (what, o) in [("launch-slaves", &s), ("terminate-cluster", &t)] {
            assert!(
                matches!(o.status.code(), Some(0..=2)),
                "{what} ended badly\n{report}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stderr).contains("panicked"),
                "{what} panicked\n{report}"
            );
        }
        // Once the cluster is gone, launch-slaves does not wait out the profile's
        // ready_timeout_secs (60 s) for nodes that no longer exist.
        assert!(
            s_took < Duration::from_secs(20),
            "launch-slaves took {s_took:?} after terminate-cluster started\n{report}"
        );
        let c = cluster_all(&ctx, &name);
        assert!(
            nodes(&c).iter().all(|n| n["state"] == "terminated"),
            "a node of {name} is not terminated: {c:#}\n{report}"
        );
        if t.status.success() {
            assert_eq!(c["state"], "terminated", "{c:#}\n{report}");
        }
        assert_no_process_left(&ctx, &name, &ids(&c));
        let first_error = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or("")
                .to_owned()
        };
        outcomes.push(format!(
            "{round}: +{}ms slaves={:?} {} (+{s_took:.1?}) / terminate={:?} {} ({t_took:.1?}) / nodes={}",
            offset.as_millis(),
            s.status.code(),
            first_error(&s),
            t.status.code(),
            first_error(&t),
            nodes(&c).len()
        ));
    }
    eprintln!("{}", outcomes.join("\n"));
    // Nothing of any round runs, and the books hold no open interval.
    for c in list_all(&ctx) {
        let name = c["name"].as_str().unwrap();
        for i in ctx.intervals_of(name) {
            assert!(i.ended_at.is_some(), "{name}: open interval {i:?}");
        }
    }
}

/// Watches the state database for commits by other connections: `PRAGMA data_version` of an
/// idle connection of our own (it changes when any other connection commits), and the size of
/// the WAL file (which an open connection keeps from being checkpointed away when a `stratus`
/// process closes the database).
struct DbWatch {
    idle: rusqlite::Connection,
    wal: std::path::PathBuf,
}

impl DbWatch {
    fn new(state: &Path) -> Self {
        Self {
            idle: rusqlite::Connection::open(state.join("stratus.db")).unwrap(),
            wal: state.join("stratus.db-wal"),
        }
    }

    fn now(&self) -> (i64, u64) {
        let version: i64 = self
            .idle
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap();
        let wal = std::fs::metadata(&self.wal).map(|m| m.len()).unwrap_or(0);
        (version, wal)
    }
}

#[test]
fn read_paths_on_unchanged_clusters_write_nothing() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-cluster", "ro", "1"]);
    ctx.ok(&["launch-master", "ro2"]);
    ctx.ok(&["terminate-cluster", "ro2", "--yes"]);
    // The first look may record what changed since the launch.
    ctx.ok(&["list"]);
    let watch = DbWatch::new(&ctx.state);
    // The watch sees a commit by another connection. (It must change something: SQLite does not
    // even write a page an UPDATE leaves as it was.)
    let probe = watch.now();
    {
        let other = rusqlite::Connection::open(ctx.state.join("stratus.db")).unwrap();
        other.busy_timeout(Duration::from_secs(10)).unwrap();
        other
            .execute_batch("CREATE TABLE watch_probe (x); DROP TABLE watch_probe;")
            .unwrap();
    }
    let before = watch.now();
    assert!(
        before.0 != probe.0 && before.1 > probe.1,
        "the watch misses a commit: {probe:?} then {before:?}"
    );
    let pushed = ctx.root.path().join("pushed.txt");
    std::fs::write(&pushed, "x\n").unwrap();
    let pushed = pushed.to_str().unwrap();
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["list", "--all"],
        &["list", "ro"],
        &["usage"],
        &["usage", "--json"],
        &["exec", "ro", "--all", "--", "true"],
        &["push", "ro", pushed, "pushed.txt"],
    ] {
        ctx.ok(args);
        assert_eq!(
            watch.now(),
            before,
            "`stratus {}` wrote to the state database",
            args.join(" ")
        );
    }
    // A real change (a node that died) is recorded by the next look, and only once.
    let c = ctx.cluster_json("ro");
    let worker = nodes(&c)
        .into_iter()
        .find(|n| n["role"] == "worker")
        .unwrap();
    let dir = ctx.state.join("local").join(worker["id"].as_str().unwrap());
    stratus::sys::kill(node_pid(&dir).unwrap(), libc::SIGKILL).unwrap();
    eventually(Duration::from_secs(5), || {
        node_pid(&dir).is_none().then_some(())
    })
    .expect("the killed worker's lock is released");
    ctx.ok(&["list"]);
    let after_change = watch.now();
    assert_ne!(after_change.0, before.0, "the dead worker was not recorded");
    ctx.ok(&["list", "--json"]);
    ctx.ok(&["usage"]);
    assert_eq!(watch.now(), after_change);
}

enum Dest<'a> {
    V4(std::net::Ipv4Addr),
    Name(&'a str),
}

/// One CONNECT through a SOCKS5 proxy without authentication; the first line the destination
/// sends, or the SOCKS reply code as an error.
fn socks_line(proxy: u16, dest: Dest<'_>, port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).map_err(|e| e.to_string())?;
    assert_eq!(choice, [5, 0], "the proxy must choose 'no authentication'");
    let mut req = vec![5, 1, 0];
    match dest {
        Dest::V4(a) => {
            req.push(1);
            req.extend(a.octets());
        }
        Dest::Name(n) => {
            req.push(3);
            req.push(u8::try_from(n.len()).unwrap());
            req.extend(n.as_bytes());
        }
    }
    req.extend(port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).map_err(|e| e.to_string())?;
    assert_eq!((reply[0], reply[3]), (5, 1), "{reply:?}");
    if reply[1] != 0 {
        return Err(format!("SOCKS reply {}", reply[1]));
    }
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_owned())
}

#[test]
fn proxy_reaches_the_nodes_services_through_the_master() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-cluster", "px", "1"]);
    let c = ctx.cluster_json("px");
    let worker = nodes(&c)
        .into_iter()
        .find(|n| n["role"] == "worker")
        .unwrap();
    let addr = worker["private_address"].as_str().unwrap().to_owned();

    let mut proxy = ctx
        .cmd()
        .args(["proxy", "px", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(proxy.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let Ok(port) = first.trim_end().parse::<u16>() else {
        let _ = proxy.kill();
        let o = proxy.wait_with_output().unwrap();
        panic!(
            "proxy did not print its port alone on a line: {first:?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert_ne!(port, 0);
    let want = "px-worker-1 worker";
    assert_eq!(
        socks_line(port, Dest::V4(addr.parse().unwrap()), 8480).as_deref(),
        Ok(want)
    );
    assert_eq!(
        socks_line(port, Dest::Name(&addr), 8480).as_deref(),
        Ok(want)
    );
    // A destination nothing listens on: a SOCKS failure, not a connection that says nothing.
    assert_eq!(
        socks_line(port, Dest::V4(addr.parse().unwrap()), 1),
        Err("SOCKS reply 1".to_owned())
    );
    // Still serving after a refused destination.
    assert_eq!(
        socks_line(port, Dest::Name(&addr), 8480).as_deref(),
        Ok(want)
    );

    stratus::sys::kill(proxy.id(), libc::SIGINT).unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let o = proxy.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(rest, "", "only the port goes to stdout");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the proxy's port still accepts connections"
    );

    // A cluster whose master is not running: refused, with the reason.
    let master = nodes(&c)
        .into_iter()
        .find(|n| n["role"] == "master")
        .unwrap();
    let dir = ctx.state.join("local").join(master["id"].as_str().unwrap());
    stratus::sys::kill(node_pid(&dir).unwrap(), libc::SIGKILL).unwrap();
    eventually(Duration::from_secs(5), || {
        node_pid(&dir).is_none().then_some(())
    })
    .expect("the killed master's lock is released");
    let r = ctx.run(&["proxy", "px", "--port", "0"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    assert!(
        r.stderr.contains("error: cluster px has no running master"),
        "{r}"
    );
    let r = ctx.run(&["proxy", "nosuch", "--port", "0"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("no cluster named nosuch"), "{r}");

    // The shipped EC2 profiles open no web port: their UIs are for the proxy.
    for profile in ["hadoop", "hadoop-spot"] {
        let r = ctx.ok(&["profiles", "show", profile]);
        let ports: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("ports"))
            .collect();
        assert!(
            ports.iter().all(|l| l.replace(' ', "") == "ports=[]"),
            "{profile} lists ports: {ports:?}"
        );
    }
}

#[test]
fn a_configure_step_past_its_timeout_fails_the_launch_and_rolls_back() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "stuck.toml",
        "extends = \"local-demo\"\nconfigure_timeout_secs = 2\nconfigure = [\"exec sleep 60\"]\n",
    );
    let started = Instant::now();
    let r = ctx.run(&["launch-cluster", "to", "1", "--profile", "stuck"]);
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{r}");
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{r}");
    assert!(
        r.stderr.contains("took longer than 2s") && r.stderr.contains("configure_timeout_secs"),
        "{r}"
    );
    let c = cluster_all(&ctx, "to");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert_eq!(nodes(&c).len(), 2, "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_no_process_left(&ctx, "to", &ids(&c));
    for i in ctx.intervals_of("to") {
        assert!(i.ended_at.is_some(), "{i:?}");
    }
}

#[test]
fn ctrl_c_during_a_launch_rolls_it_back_and_exits_130() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "hang.toml",
        "extends = \"local-demo\"\nready_timeout_secs = 120\nboot_timeout_secs = 120\n[worker]\nuser_data = \"hang/worker.sh.hbs\"\n",
    );
    // The worker stops its own node process dead: it never answers SSH, or never again if the
    // launch met it in the moment before it froze; no node writes its phase `done`, so the boot
    // wait holds the launch in `requested` either way.
    ctx.profile_file("hang/worker.sh.hbs", "#!/bin/bash\nkill -STOP \"$PPID\"\n");
    let launcher = spawn(
        &ctx,
        &["launch-cluster", "cc", "1", "--profile", "hang"],
        &[],
    );
    let recorded = eventually(Duration::from_secs(30), || {
        let c = ctx.list_json().into_iter().find(|c| c["name"] == "cc")?;
        (nodes(&c).len() == 2 && c["state"] == "requested").then_some(c)
    })
    .expect("the launch recorded both nodes");
    stratus::sys::kill(launcher.id(), libc::SIGINT).unwrap();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        ["error: launch interrupted; everything it launched was terminated"],
        "{stderr}"
    );
    let c = cluster_all(&ctx, "cc");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    let r = ctx.ok(&["list", "cc"]);
    let failure: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("failure:"))
        .collect();
    assert_eq!(failure, ["failure: launch interrupted"], "{r}");
    assert!(!r.stdout.contains("error:"), "{r}");
    assert_no_process_left(&ctx, "cc", &ids(&recorded));
}

#[test]
fn delete_cluster_and_what_list_shows() {
    let ctx = TestContext::new();
    let r = ctx.run(&["delete-cluster", "nosuch"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("no cluster named nosuch"), "{r}");

    // A live cluster is terminate-cluster's business.
    ctx.ok(&["launch-master", "gone"]);
    let r = ctx.run(&["delete-cluster", "gone"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("terminate-cluster gone"), "{r}");
    assert_eq!(ctx.cluster_json("gone")["state"], "configured");

    // Terminated, then deleted: off every list, its usage kept.
    ctx.ok(&["terminate-cluster", "gone", "--yes"]);
    assert!(list_all(&ctx).iter().any(|c| c["name"] == "gone"));
    let key_dirs = |name: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(ctx.state.join("clusters"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(&format!("-{name}")))
            .collect()
    };
    let locks = || -> Vec<String> {
        std::fs::read_dir(ctx.state.join("launches"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(key_dirs("gone").len(), 1);
    assert!(
        !locks().is_empty(),
        "terminate-cluster leaves its lock file"
    );
    let r = ctx.ok(&["delete-cluster", "gone"]);
    assert!(r.stderr.contains("deleted cluster gone"), "{r}");
    // Its key and lock files go with it.
    assert!(key_dirs("gone").is_empty(), "{:?}", key_dirs("gone"));
    assert!(locks().is_empty(), "{:?}", locks());
    assert!(
        list_all(&ctx).iter().all(|c| c["name"] != "gone"),
        "a deleted cluster is still listed"
    );
    let r = ctx.run(&["list", "gone"]);
    assert_eq!(r.code, 2, "{r}");
    let usage = json(&ctx.ok(&["usage", "--json"]));
    assert!(
        usage
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["cluster"] == "gone"),
        "a deleted cluster's usage must stay: {usage:#}"
    );

    // `list`: live clusters and those that ended within a day; `--all`: every one.
    ctx.ok(&["launch-master", "old"]);
    ctx.ok(&["terminate-cluster", "old", "--yes"]);
    ctx.ok(&["launch-master", "recent"]);
    ctx.ok(&["terminate-cluster", "recent", "--yes"]);
    ctx.ok(&["launch-master", "live"]);
    {
        let db = rusqlite::Connection::open(ctx.state.join("stratus.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let two_days_ago = stratus::store::now_millis() - 2 * 24 * 3600 * 1000;
        let n = db
            .execute(
                "UPDATE clusters SET terminated_at = ?1, updated_at = ?1 WHERE name = 'old'",
                [two_days_ago],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let names = |v: Vec<Value>| -> BTreeSet<String> {
        v.iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(ctx.list_json()),
        BTreeSet::from(["recent".to_owned(), "live".to_owned()])
    );
    assert_eq!(
        names(list_all(&ctx)),
        BTreeSet::from(["old".to_owned(), "recent".to_owned(), "live".to_owned()])
    );
    let r = ctx.ok(&["list"]);
    assert!(!r.stdout.contains("old"), "{r}");

    // `list NAME`: the live one of that name, else the most recent.
    ctx.ok(&["launch-master", "twin"]);
    let first = ids(&ctx.cluster_json("twin"));
    ctx.ok(&["terminate-cluster", "twin", "--yes"]);
    ctx.ok(&["launch-master", "twin"]);
    let second = ids(&ctx.cluster_json("twin"));
    assert_ne!(first, second);
    let one = |args: &[&str]| -> Value {
        let v = json(&ctx.ok(args));
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 1, "{v:#}");
        a[0].clone()
    };
    let shown = one(&["list", "twin", "--json"]);
    assert_eq!(shown["state"], "configured");
    assert_eq!(ids(&shown), second);
    let r = ctx.ok(&["list", "twin"]);
    assert!(r.stdout.contains("cluster twin (configured"), "{r}");
    ctx.ok(&["terminate-cluster", "twin", "--yes"]);
    let shown = one(&["list", "twin", "--json"]);
    assert_eq!(shown["state"], "terminated");
    assert_eq!(ids(&shown), second, "the most recent twin");
    // Deleting by name takes the most recent; the older one is still there, and is the one a
    // second delete takes. Then no twin is left to list or delete.
    ctx.ok(&["delete-cluster", "twin"]);
    let shown = one(&["list", "twin", "--json"]);
    assert_eq!(ids(&shown), first);
    let r = ctx.ok(&["delete-cluster", "twin"]);
    assert!(r.stderr.contains("deleted cluster twin"), "{r}");
    assert!(list_all(&ctx).iter().all(|c| c["name"] != "twin"));
    for args in [&["list", "twin"][..], &["delete-cluster", "twin"]] {
        let r = ctx.run(args);
        assert_eq!(r.code, 2, "{r}");
        assert!(r.stderr.contains("no cluster named twin"), "{r}");
    }
}

#[test]
fn reconcile_dry_run_says_exactly_what_the_real_run_does() {
    let ctx = TestContext::new();
    // Two launches killed in `requested`: one later, its nodes up and waiting for SSH (the worker
    // never answers, and the boot wait holds the launch whatever it met first), whose roll-back
    // terminates them; one before it launched anything (the pause hook). Both run together: a
    // launch reconciles first, and would roll back the other were its launcher dead already.
    ctx.profile_file(
        "hang.toml",
        "extends = \"local-demo\"\nready_timeout_secs = 120\nboot_timeout_secs = 120\n[worker]\nuser_data = \"hang/worker.sh.hbs\"\n",
    );
    ctx.profile_file("hang/worker.sh.hbs", "#!/bin/bash\nkill -STOP \"$PPID\"\n");
    let with_nodes = spawn(
        &ctx,
        &["launch-cluster", "dn", "1", "--profile", "hang"],
        &[],
    );
    let dn = eventually(Duration::from_secs(30), || {
        let c = ctx.list_json().into_iter().find(|c| c["name"] == "dn")?;
        (nodes(&c).len() == 2 && c["state"] == "requested").then_some(c)
    })
    .expect("the launch recorded both nodes");
    let paused = spawn(
        &ctx,
        &["launch-cluster", "dr", "1"],
        &[("STRATUS_TEST_PAUSE_AT", "requested")],
    );
    wait_for_state(&ctx, "dr", "requested", Duration::from_secs(30));
    sigkill(with_nodes, "launch-cluster dn");
    sigkill(paused, "launch-cluster dr");
    let mut dn_ids = ids(&dn);
    dn_ids.sort();
    // A node directory a start left half-made (no node.json), long ago; and a young one, which
    // may be a start in progress and is left alone.
    let half = ctx.state.join("local").join("local-00000000dead");
    let young = ctx.state.join("local").join("local-00000000beef");
    for d in [&half, &young] {
        std::fs::create_dir_all(d.join("home")).unwrap();
        std::fs::write(d.join("node.log"), "").unwrap();
    }
    let out = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&half)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let dry = ctx.ok(&["reconcile", "--dry-run", "--json"]);
    let dry_actions = json(&dry).as_array().unwrap().clone();
    // Nothing changed.
    assert_eq!(cluster_all(&ctx, "dr")["state"], "requested");
    assert!(
        nodes(&cluster_all(&ctx, "dn"))
            .iter()
            .all(|n| n["state"] == "running"),
        "a dry run terminated something"
    );
    assert!(half.exists() && young.exists());
    let dry_again = json(&ctx.ok(&["reconcile", "--dry-run", "--json"]));
    assert_eq!(
        Value::Array(dry_actions.clone()),
        dry_again,
        "dry runs differ"
    );

    let real = ctx.ok(&["reconcile", "--json"]);
    let real_actions = json(&real).as_array().unwrap().clone();
    let key = |a: &Value| {
        (
            a["cluster"].clone(),
            a["action"].clone(),
            a["instances"].clone(),
        )
    };
    assert_eq!(
        dry_actions.iter().map(key).collect::<Vec<_>>(),
        real_actions.iter().map(key).collect::<Vec<_>>(),
        "dry run:\n{dry}\nreal run:\n{real}"
    );
    for a in &dry_actions {
        assert!(a["what"].as_str().unwrap().starts_with("would "), "{a}");
    }
    for a in &real_actions {
        assert!(!a["what"].as_str().unwrap().starts_with("would "), "{a}");
    }
    let kinds: Vec<(&str, &str)> = real_actions
        .iter()
        .map(|a| {
            (
                a["cluster"].as_str().unwrap(),
                a["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("dn", "roll-back"), ("dr", "roll-back"), ("", "tidy")],
        "{real}"
    );
    let dn_action = real_actions.iter().find(|a| a["cluster"] == "dn").unwrap();
    let mut named: Vec<String> = dn_action["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    named.sort();
    assert_eq!(
        named, dn_ids,
        "the roll-back names the nodes it terminates: {real}"
    );
    let c = cluster_all(&ctx, "dn");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_no_process_left(&ctx, "dn", &dn_ids);
    let tidy = real_actions.iter().find(|a| a["action"] == "tidy").unwrap();
    assert_eq!(
        tidy["instances"],
        serde_json::json!([half.display().to_string()]),
        "{real}"
    );
    // The real run did it.
    assert!(!half.exists(), "the half-made directory is still there");
    assert!(young.exists(), "a young directory was removed");
    assert_eq!(cluster_all(&ctx, "dr")["state"], "failed");
    // And then there is nothing left to do.
    let after = json(&ctx.ok(&["reconcile", "--dry-run", "--json"]));
    assert_eq!(after, serde_json::json!([]));
}

/// The frames a progress bar of length `len` drew, in order: its message and its count. The
/// template is `{spinner} {msg} [{bar}] {pos}/{len} {elapsed} (eta {eta})`; each frame starts
/// after a carriage return or an erase-line sequence.
fn bar_frames(screen: &str, len: u32) -> Vec<(String, u32)> {
    let mut frames = Vec::new();
    for frame in screen.split(['\r', '\n']) {
        let frame = frame.rsplit("\x1b[2K").next().unwrap_or(frame);
        let Some(open) = frame.find(" [") else {
            continue;
        };
        let Some(close) = frame[open..].find("] ").map(|i| open + i) else {
            continue;
        };
        let rest = &frame[close + 2..];
        let Some((count, after)) = rest.split_once('/') else {
            continue;
        };
        if !after.starts_with(&format!("{len} ")) {
            continue;
        }
        let Ok(count) = count.parse::<u32>() else {
            continue;
        };
        // Drop the spinner, a single character before the message.
        let head = frame[..open].trim();
        let message = head.split_once(' ').map_or(head, |(_, m)| m);
        frames.push((message.to_owned(), count));
    }
    frames
}

#[test]
fn the_progress_bar_moves_on_a_terminal_and_is_absent_otherwise() {
    let ctx = TestContext::new();
    let mut cmd = ctx.cmd();
    // A terminal has a type: with TERM unset, the terminal library takes it for a dumb one.
    cmd.env("TERM", "xterm").args(["launch-cluster", "pb", "4"]);
    let mut term = crate::support::pty::Pty::spawn(cmd);
    term.expect("cluster pb is up");
    assert_eq!(term.wait(), Some(0), "{}", term.output());
    let screen = term.output();
    let frames = bar_frames(&screen, 5);
    assert!(!frames.is_empty(), "no bar was drawn:\n{screen:?}");
    // The count moves: some frame shows nodes counted before all of them are.
    assert!(
        frames.iter().any(|(_, n)| (1..5).contains(n)),
        "the bar never showed a count between 0/5 and 5/5: {frames:?}"
    );
    // Each phase counts from 0 up, never down: no frame names a phase with the count of the
    // one before it.
    let mut phases: Vec<(&str, Vec<u32>)> = Vec::new();
    for (m, n) in &frames {
        match phases.last_mut() {
            Some((last, counts)) if *last == m.as_str() => counts.push(*n),
            _ => phases.push((m.as_str(), vec![*n])),
        }
    }
    for (phase, counts) in &phases {
        assert_eq!(
            counts[0], 0,
            "phase {phase:?} started at {counts:?}: {frames:?}"
        );
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "phase {phase:?} went back: {counts:?}"
        );
    }
    let names: Vec<&str> = phases.iter().map(|(p, _)| *p).collect();
    assert!(
        names.contains(&"waiting for SSH"),
        "phases drawn: {names:?}"
    );
    let ssh: Vec<u32> = phases
        .iter()
        .filter(|(p, _)| *p == "waiting for SSH")
        .flat_map(|(_, c)| c.clone())
        .collect();
    assert!(
        ssh.iter().any(|n| (1..5).contains(n)),
        "SSH answers were not counted one by one: {ssh:?}"
    );

    // Not a terminal: no bar, no cursor movement, only lines.
    let mut cmd = ctx.cmd();
    let out = cmd
        .env("TERM", "xterm")
        .args(["launch-cluster", "nb", "4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(bar_frames(&stderr, 5).is_empty(), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "terminal control in stderr:\n{stderr:?}"
    );
}

#[test]
fn a_launch_whose_nodes_all_die_fails_fast_naming_them() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "die.toml",
        "extends = \"local-demo\"\nready_timeout_secs = 120\n[master]\nuser_data = \"die/node.sh.hbs\"\n[worker]\nuser_data = \"die/node.sh.hbs\"\n",
    );
    // User-data runs as a child of the node process: it kills its own node, as an instance
    // that crashes at boot.
    ctx.profile_file("die/node.sh.hbs", "#!/bin/bash\nkill -9 \"$PPID\"\n");
    let started = Instant::now();
    let r = ctx.run(&["launch-cluster", "dd", "1", "--profile", "die"]);
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{r}");
    assert!(
        took < Duration::from_secs(30),
        "a launch whose nodes are dead waited {took:?}:\n{r}"
    );
    let error: Vec<&str> = r
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("error:"))
        .collect();
    let error = error.join("\n");
    assert!(
        error.contains("dd-master") || error.contains("dd-worker-1"),
        "the error names no dead node:\n{r}"
    );
    assert!(!error.contains("did not answer SSH within"), "{r}");
    let c = cluster_all(&ctx, "dd");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_no_process_left(&ctx, "dd", &ids(&c));
    // Nothing of it answers any more.
    for n in nodes(&c) {
        assert!(read_line_from(n["address"].as_str().unwrap(), 8480).is_err());
    }
}
