//! A local cluster end to end through the real binary: launch, list, exec, push, launch-slaves,
//! login through a real pseudo-terminal, terminate, usage; a node killed from outside; a node
//! that never answers SSH.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    TestContext, eventually, processes_mentioning, processes_of_node, read_line_from,
};

fn nodes(cluster: &Value) -> Vec<Value> {
    cluster["nodes"].as_array().unwrap().clone()
}

fn ids(cluster: &Value) -> Vec<String> {
    nodes(cluster)
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Nothing of these nodes is left: no process carries their marker or runs from their
/// directories, and their service and SSH ports refuse connections.
fn assert_nothing_left(ctx: &TestContext, cluster: &Value) {
    for id in ids(cluster) {
        let left = eventually(Duration::from_secs(5), || {
            let p = processes_of_node(&id);
            p.is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "processes of node {id} still alive: {:?}",
            processes_of_node(&id)
        );
        let dir = ctx.state.join("local").join(&id);
        assert!(
            processes_mentioning(&dir.display().to_string()).is_empty(),
            "a process still mentions {}",
            dir.display()
        );
    }
    // Addresses this context's live nodes hold now: a new node may reuse a freed address.
    let reused: BTreeSet<String> = ctx
        .list_json()
        .iter()
        .flat_map(nodes)
        .filter(|n| n["state"] == "running")
        .filter_map(|n| n["address"].as_str().map(str::to_owned))
        .collect();
    for n in nodes(cluster) {
        let addr = n["address"].as_str().unwrap();
        let name = n["name"].as_str().unwrap();
        match read_line_from(addr, 8480) {
            Err(_) => {}
            Ok(line) => assert!(
                reused.contains(addr) && !line.starts_with(&format!("{name} ")),
                "{name}'s service on {addr}:8480 still answers: {line}"
            ),
        }
        if !reused.contains(addr) {
            let port = n["ssh_port"].as_u64().unwrap() as u16;
            assert!(
                std::net::TcpStream::connect((addr, port)).is_err(),
                "{addr}:{port} still accepts connections"
            );
        }
    }
}

#[test]
fn a_local_cluster_end_to_end() {
    let ctx = TestContext::new();
    let r = ctx.ok(&["launch-cluster", "demo", "2"]);
    assert!(r.stdout.contains("stratus login demo"), "{r}");

    // Three running nodes with distinct addresses, one master.
    let c = ctx.cluster_json("demo");
    assert_eq!(c["state"], "configured");
    assert_eq!(c["provider"], "local");
    assert_eq!(c["profile"], "local-demo");
    let ns = nodes(&c);
    assert_eq!(ns.len(), 3);
    assert!(ns.iter().all(|n| n["state"] == "running"), "{c:#}");
    let addrs: BTreeSet<&str> = ns.iter().map(|n| n["address"].as_str().unwrap()).collect();
    assert_eq!(addrs.len(), 3, "addresses not distinct: {c:#}");
    assert_eq!(ns.iter().filter(|n| n["role"] == "master").count(), 1);

    // What the user-data did is visible from outside: each node's service names it.
    for n in &ns {
        let line = read_line_from(n["address"].as_str().unwrap(), 8480).expect("node service");
        assert_eq!(
            line,
            format!(
                "{} {}",
                n["name"].as_str().unwrap(),
                n["role"].as_str().unwrap()
            )
        );
    }
    // The configure step checked every worker from the master, over the network.
    let r = ctx.ok(&["exec", "demo", "--", "cat", "workers-check.log"]);
    assert!(
        r.stdout.contains("2 workers reachable, 0 unreachable"),
        "{r}"
    );

    // exec --all: each node's output, prefixed with its name.
    let r = ctx.ok(&["exec", "demo", "--all", "--", "cat role"]);
    for n in &ns {
        let want = format!(
            "[{}] {}",
            n["name"].as_str().unwrap(),
            n["role"].as_str().unwrap()
        );
        assert!(
            r.stdout.lines().any(|l| l == want),
            "missing {want:?}:\n{r}"
        );
    }
    // A command failing on some nodes: non-zero exit, naming them, and per-node statuses.
    let r = ctx.run(&[
        "exec",
        "demo",
        "--all",
        "--json",
        "--",
        "test \"$(cat role)\" = master",
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("demo-worker-1") && r.stderr.contains("demo-worker-2"),
        "{r}"
    );
    assert!(!r.stderr.contains("demo-master"), "{r}");
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    for row in report.as_array().unwrap() {
        let want = if row["node"] == "demo-master" { 0 } else { 1 };
        assert_eq!(row["exit_status"], want, "{row}");
    }
    let r = ctx.run(&["exec", "demo", "--", "echo out; echo err >&2; exit 3"]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.stdout, "out\n");
    assert!(
        r.stderr.contains("err")
            && r.stderr.contains("demo-master")
            && r.stderr.contains("exit status 3"),
        "{r}"
    );

    // push then exec cat round-trips a file byte for byte.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let local = ctx.root.path().join("blob.bin");
    std::fs::write(&local, &data).unwrap();
    ctx.ok(&["push", "demo", local.to_str().unwrap(), "sub dir/blob.bin"]);
    let r = ctx.ok(&["exec", "demo", "--", "cat 'sub dir/blob.bin'"]);
    assert!(
        r.stdout_bytes == data,
        "pushed file differs: {} bytes back",
        r.stdout_bytes.len()
    );

    // launch-slaves adds a worker, and the master's workers file lists it.
    let r = ctx.ok(&["launch-slaves", "demo", "1"]);
    assert!(r.stdout.contains("demo-worker-3"), "{r}");
    let c = ctx.cluster_json("demo");
    let new = nodes(&c)
        .into_iter()
        .find(|n| n["name"] == "demo-worker-3")
        .expect("demo-worker-3 in list");
    assert_eq!(new["state"], "running");
    let r = ctx.ok(&["exec", "demo", "--", "cat", "workers"]);
    let listed: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(listed.len(), 3, "{r}");
    assert!(listed.contains(&new["address"].as_str().unwrap()), "{r}");
    let r = ctx.ok(&["exec", "demo", "--", "cat", "workers-check.log"]);
    assert!(r.stdout.contains("3 workers reachable"), "{r}");

    // Without a terminal and without --yes, terminate refuses and changes nothing.
    let r = ctx.run(&["terminate-cluster", "demo"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("--yes"), "{r}");
    assert!(
        nodes(&ctx.cluster_json("demo"))
            .iter()
            .all(|n| n["state"] == "running")
    );

    // terminate --yes leaves nothing alive; list and usage tell.
    let before = ctx.cluster_json("demo");
    ctx.ok(&["terminate-cluster", "demo", "--yes"]);
    assert_nothing_left(&ctx, &before);
    let c = ctx.cluster_json("demo");
    assert_eq!(c["state"], "terminated");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    let usage: Value = serde_json::from_str(&ctx.ok(&["usage", "--json"]).stdout).unwrap();
    let row = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == "demo")
        .expect("usage row for demo")
        .clone();
    assert!(row["instance_hours"].as_f64().unwrap() > 0.0, "{row}");
    assert_eq!(row["open"], false);
    assert_eq!(row["profile"], "local-demo");
    assert!(row["estimated_cost"].is_number());

    // The name is free again.
    ctx.ok(&["launch-master", "demo"]);
}

#[test]
fn a_node_killed_from_outside_is_not_running() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-cluster", "k", "1"]);
    let c = ctx.cluster_json("k");
    let worker = nodes(&c)
        .into_iter()
        .find(|n| n["role"] == "worker")
        .unwrap();
    let id = worker["id"].as_str().unwrap();
    let dir = ctx.state.join("local").join(id);
    let pid = crate::support::node_pid(&dir).expect("the worker's node process holds its lock");
    stratus::sys::kill(pid, libc::SIGKILL).unwrap();
    let state = eventually(Duration::from_secs(5), || {
        let c = ctx.cluster_json("k");
        let n = nodes(&c).into_iter().find(|n| n["id"] == id).unwrap();
        (n["state"] != "running").then(|| n["state"].clone())
    });
    assert!(state.is_some(), "a killed node still shows as running");
    // The master is unaffected.
    let c = ctx.cluster_json("k");
    assert!(
        nodes(&c)
            .iter()
            .any(|n| n["role"] == "master" && n["state"] == "running")
    );
    // update-slaves-file drops the dead worker from the master's list.
    let r = ctx.ok(&["exec", "k", "--", "cat", "workers"]);
    assert_eq!(r.stdout.lines().count(), 1, "{r}");
    ctx.ok(&["update-slaves-file", "k"]);
    let r = ctx.ok(&["exec", "k", "--", "cat", "workers"]);
    assert_eq!(r.stdout, "", "{r}");
    let r = ctx.ok(&["exec", "k", "--", "cat", "workers-check.log"]);
    assert!(r.stdout.contains("0 workers reachable"), "{r}");
    // Terminate still cleans up what the dead node had started (its service).
    ctx.ok(&["terminate-cluster", "k", "--yes"]);
    assert_nothing_left(&ctx, &c);
}

#[test]
fn a_node_that_hangs_while_it_boots_fails_the_launch_and_rolls_back() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "hang.toml",
        "extends = \"local-demo\"\nready_timeout_secs = 3\n[worker]\nuser_data = \"hang/worker.sh.hbs\"\n",
    );
    // The worker's boot stops its own node process dead, as a hung instance would be. The node
    // serves SSH before its user-data runs (as an instance's sshd starts beside cloud-init), so
    // the launch may have met it once before it froze: then it is the next handshake that never
    // completes. Either way the launch names the node, gives up in bounded time and rolls back.
    ctx.profile_file("hang/worker.sh.hbs", "#!/bin/bash\nkill -STOP \"$PPID\"\n");
    let started = std::time::Instant::now();
    let r = ctx.run(&["launch-cluster", "h", "1", "--profile", "hang"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("h-worker-1"), "{r}");
    assert!(
        r.stderr.contains("did not answer SSH within 3s")
            || r.stderr
                .contains("did not complete an SSH handshake within"),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let c = ctx.cluster_json("h");
    assert_eq!(c["state"], "failed");
    assert_eq!(nodes(&c).len(), 2);
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_nothing_left(&ctx, &c);
    // The failed launch does not hold the name.
    ctx.ok(&["launch-master", "h"]);
}

#[test]
fn login_gives_a_shell_on_the_master_through_a_pty() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-master", "l"]);
    let mut cmd = ctx.cmd();
    cmd.args(["login", "l"]);
    let mut term = crate::support::pty::Pty::spawn(cmd);
    term.send("test -t 0 && echo \"tty-$((6*7))\"; cat role\n");
    term.expect("tty-42");
    term.expect("master");
    term.send("exit 7\n");
    let status = term.wait();
    assert_eq!(status, Some(7), "login should end with the shell's status");

    // After `--`: ssh's options, then a remote command, whose status login ends with.
    let r = ctx.run(&[
        "login",
        "l",
        "--",
        "-o",
        "BatchMode=yes",
        "cat role; exit 3",
    ]);
    assert_eq!(r.code, 3, "{r}");
    assert_eq!(r.stdout, "master\n", "{r}");

    // On a terminal, terminate asks; anything but yes keeps the cluster.
    let mut cmd = ctx.cmd();
    cmd.args(["terminate-cluster", "l"]);
    let mut term = crate::support::pty::Pty::spawn(cmd);
    term.expect("Terminate cluster l");
    term.send("n\n");
    assert_eq!(term.wait(), Some(2));
    assert_eq!(ctx.cluster_json("l")["state"], "configured");
    let mut cmd = ctx.cmd();
    cmd.args(["terminate-cluster", "l"]);
    let mut term = crate::support::pty::Pty::spawn(cmd);
    term.expect("[y/N]");
    term.send("y\n");
    assert_eq!(term.wait(), Some(0));
    assert_eq!(ctx.cluster_json("l")["state"], "terminated");
}

#[test]
fn a_launch_whose_process_dies_is_rolled_back_by_the_next_launch() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "slow.toml",
        "extends = \"local-demo\"\nready_timeout_secs = 120\nboot_timeout_secs = 120\n[worker]\nuser_data = \"slow/worker.sh.hbs\"\n",
    );
    // The worker stops its node dead, so the launch waits: long enough to kill it mid-way. Its
    // boot wait (no node writes its phase `done`) holds the launch in `requested` even when it
    // met the worker's SSH server in the moment before it froze.
    ctx.profile_file("slow/worker.sh.hbs", "#!/bin/bash\nkill -STOP \"$PPID\"\n");
    let mut launcher = ctx
        .cmd()
        .args(["launch-cluster", "crash", "1", "--profile", "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::forward_stderr(&mut launcher, "launch-cluster crash");
    // Both nodes recorded, the launch waiting for SSH: the moment a crash leaves the most behind.
    let recorded = eventually(Duration::from_secs(30), || {
        let c = ctx.list_json().into_iter().find(|c| c["name"] == "crash")?;
        (nodes(&c).len() == 2 && c["state"] == "requested").then_some(c)
    })
    .expect("the launch recorded both nodes");
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    assert!(
        nodes(&ctx.cluster_json("crash"))
            .iter()
            .any(|n| n["state"] == "running"),
        "the killed launch left running nodes behind (the case under test)"
    );

    // The next launch reconciles first: the abandoned one is rolled back, at once.
    let r = ctx.ok(&["launch-master", "next"]);
    assert!(
        r.stderr.contains("crash") && r.stderr.contains("launcher died"),
        "{r}"
    );
    let c = ctx.cluster_json("crash");
    assert_eq!(c["state"], "failed");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_nothing_left(&ctx, &recorded);
    assert_eq!(ctx.cluster_json("next")["state"], "configured");
}

/// A profile (`extra` holds its own settings) whose workers hang (their node process stops, SSH
/// server and all) the first `hangs` times one boots, and run normally after: the marker
/// directory, outside every node, counts the boots. Every node's boot ends by writing its phase
/// `done`, so with `boot_timeout_secs` a hung worker fails whether it stopped before it answered
/// SSH (a node serves SSH while its user-data runs, as an instance's sshd does while cloud-init
/// runs) or just after: either way it never finishes its boot.
fn flaky_profile(ctx: &TestContext, name: &str, extra: &str, hangs: u32) -> String {
    let marks = ctx.root.path().join(format!("{name}-boots"));
    std::fs::create_dir_all(&marks).unwrap();
    ctx.profile_file(
        &format!("{name}.toml"),
        &format!(
            "extends = \"local-demo\"\n{extra}\n\
             [master]\nuser_data = \"{name}/master.sh.hbs\"\n\
             [worker]\nuser_data = \"{name}/worker.sh.hbs\"\n"
        ),
    );
    let shipped = include_str!("../../cluster-profiles/local-demo/node.sh.hbs");
    let done = "mkdir -p \"$STRATUS_STATE_DIR\"\necho done > \"$STRATUS_STATE_DIR/phase\"\n";
    ctx.profile_file(
        &format!("{name}/master.sh.hbs"),
        &format!("{shipped}\n{done}"),
    );
    // The shipped worker boot, preceded by the hang.
    // mkdir is atomic: each of the `hangs` slots is claimed by exactly one boot.
    let hang = format!(
        "for slot in $(seq 1 {hangs}); do\n\
         \x20   if mkdir {marks:?}/\"$slot\" 2>/dev/null; then kill -STOP \"$PPID\"; fi\n\
         done\n",
        marks = marks.display().to_string()
    );
    let body = shipped.replacen(
        "set -euo pipefail\n",
        &format!("set -euo pipefail\n{hang}"),
        1,
    );
    ctx.profile_file(&format!("{name}/worker.sh.hbs"), &format!("{body}\n{done}"));
    name.to_owned()
}

#[test]
fn a_worker_that_never_answers_is_replaced() {
    let ctx = TestContext::new();
    let p = flaky_profile(
        &ctx,
        "replace",
        "ready_timeout_secs = 6\nboot_timeout_secs = 15\nmax_replacements = 1",
        1,
    );
    let r = ctx.ok(&["launch-cluster", "rep", "2", "--profile", &p]);
    assert!(r.stderr.contains("replacing 1 failed worker"), "{r}");
    let c = ctx.cluster_json("rep");
    assert_eq!(c["state"], "configured");
    let ns = nodes(&c);
    let running: Vec<&Value> = ns.iter().filter(|n| n["state"] == "running").collect();
    let dead: Vec<&Value> = ns.iter().filter(|n| n["state"] == "terminated").collect();
    assert_eq!(running.len(), 3, "{c:#}");
    assert_eq!(dead.len(), 1, "the hung worker was terminated: {c:#}");
    // The replacement is a new node (a launch call of its own, as on EC2): the hung worker's
    // index is not reused, so two workers are up, one of them worker 3.
    let names: BTreeSet<&str> = running
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names.contains("rep-master") && names.contains("rep-worker-3"),
        "{names:?}"
    );
    let r = ctx.ok(&["exec", "rep", "--", "cat", "workers-check.log"]);
    assert!(
        r.stdout.contains("2 workers reachable, 0 unreachable"),
        "{r}"
    );
    assert!(processes_of_node(dead[0]["id"].as_str().unwrap()).is_empty());
}

#[test]
fn a_launch_continues_with_min_workers_when_replacements_run_out() {
    let ctx = TestContext::new();
    let p = flaky_profile(
        &ctx,
        "degrade",
        "ready_timeout_secs = 6\nboot_timeout_secs = 15\nmin_workers = 1",
        1,
    );
    let r = ctx.ok(&["launch-cluster", "deg", "2", "--profile", &p]);
    assert!(r.stderr.contains("continuing with 1 of 2 workers"), "{r}");
    let c = ctx.cluster_json("deg");
    assert_eq!(c["state"], "configured");
    let running = nodes(&c).iter().filter(|n| n["state"] == "running").count();
    assert_eq!(running, 2, "master and one worker: {c:#}");
    // The master's workers file lists only the worker that is up.
    let r = ctx.ok(&["exec", "deg", "--", "cat", "workers"]);
    assert_eq!(r.stdout.lines().count(), 1, "{r}");
}

#[test]
fn sigterm_during_a_launch_rolls_it_back() {
    let ctx = TestContext::new();
    let p = flaky_profile(
        &ctx,
        "term",
        "ready_timeout_secs = 120\nboot_timeout_secs = 120",
        100,
    );
    let launcher = ctx
        .cmd()
        .args(["launch-cluster", "sig", "2", "--profile", &p])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let recorded = eventually(Duration::from_secs(30), || {
        let c = ctx.list_json().into_iter().find(|c| c["name"] == "sig")?;
        (nodes(&c).len() == 3 && c["state"] == "requested").then_some(c)
    })
    .expect("the launch recorded its nodes");
    stratus::sys::kill(launcher.id(), libc::SIGTERM).unwrap();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 128 + SIGTERM, as a shell reports a command a signal ended; the launch rolled back first.
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("launch terminated by a signal; everything it launched was terminated"),
        "{stderr}"
    );
    let c = ctx.cluster_json("sig");
    assert_eq!(c["state"], "failed");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_nothing_left(&ctx, &recorded);
}

/// The hint after a launch can be typed as printed: `cargo run --` under cargo, `stratus` when
/// that is the binary on PATH, else the path it was run by.
#[test]
fn the_launch_hint_is_the_command_as_it_was_invoked() {
    let ctx = TestContext::new();
    let bin = std::path::Path::new(crate::support::BIN);
    let path_with_bin =
        std::env::join_paths(std::iter::once(bin.parent().unwrap().to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .unwrap();
    type Env = Vec<(&'static str, std::ffi::OsString)>;
    let cases: [(&str, Env, String); 3] = [
        (
            "hint-cargo",
            vec![
                ("CARGO_MANIFEST_DIR", "/src/stratus".into()),
                ("CARGO_PKG_NAME", "stratus".into()),
            ],
            "cargo run -- login hint-cargo".into(),
        ),
        (
            "hint-path",
            vec![("PATH", path_with_bin)],
            "stratus login hint-path".into(),
        ),
        (
            "hint-abs",
            vec![("PATH", "/usr/bin:/bin".into())],
            format!("{} login hint-abs", bin.display()),
        ),
    ];
    for (name, env, hint) in cases {
        let mut cmd = ctx.cmd();
        cmd.args(["launch-master", name]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!("log in with: {hint}\n")),
            "expected `log in with: {hint}` in:\n{text}"
        );
        ctx.ok(&["terminate-cluster", name, "--yes"]);
    }
}

/// A profile whose nodes install in the background after SSH answers (`boot_timeout_secs`):
/// the launch waits for each node's phase file, shows each node's phase off a terminal (a line
/// when the wait starts, and one every 30 s naming the nodes still installing), and replaces a
/// worker whose install reports `failed` like one that never answered.
#[test]
fn a_background_install_is_waited_for_shown_and_a_failed_one_replaced() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "installs.toml",
        "extends = \"local-demo\"\nboot_timeout_secs = 120\nmax_replacements = 1\n\
         [master]\nuser_data = \"installs/master.sh.hbs\"\n\
         [worker]\nuser_data = \"installs/worker.sh.hbs\"\n",
    );
    let shipped = include_str!("../../cluster-profiles/local-demo/node.sh.hbs");
    // The master's install outlasts the first 30 s of the wait; worker 1's fails at once; its
    // replacement's is quick.
    let install = |body: &str| {
        format!(
            "{shipped}\nmkdir -p \"$STRATUS_STATE_DIR\"\nphase=\"$STRATUS_STATE_DIR/phase\"\n{body}\n"
        )
    };
    ctx.profile_file(
        "installs/master.sh.hbs",
        &install(
            "( echo 'installing hadoop' > \"$phase\"; sleep 42; echo done >> \"$phase\" ) \
             >/dev/null 2>&1 </dev/null &",
        ),
    );
    ctx.profile_file(
        "installs/worker.sh.hbs",
        &install(
            "if [ \"$STRATUS_NODE_INDEX\" = 1 ]; then\n\
             \x20   echo 'failed: no source answered' > \"$phase\"\n\
             else\n\
             \x20   ( echo 'installing java' > \"$phase\"; sleep 1; echo done >> \"$phase\" ) \
             >/dev/null 2>&1 </dev/null &\n\
             fi",
        ),
    );
    let r = ctx.ok(&["launch-cluster", "ins", "1", "--profile", "installs"]);
    // stderr is a pipe here: plain lines, no bar.
    for want in [
        "ins: waiting for SSH (2 nodes)",
        "ins: waiting for the install (2 nodes)",
        "ins-worker-1 reports its install failed: no source answered",
        "replacing 1 failed worker(s)",
        "ins: waiting for the install (1 node)",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?}:\n{r}");
    }
    let every_30s = r
        .stderr
        .lines()
        .find(|l| l.starts_with("ins: waiting for the install for "))
        .unwrap_or_else(|| panic!("no waiting line naming the nodes:\n{r}"));
    assert!(
        every_30s.contains("waiting for ins-master (installing hadoop, "),
        "{every_30s}"
    );
    let c = ctx.cluster_json("ins");
    assert_eq!(c["state"], "configured", "{c:#}");
    let live: Vec<String> = nodes(&c)
        .iter()
        .filter(|n| n["state"] == "running")
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(live, ["ins-master", "ins-worker-2"], "{c:#}");
    ctx.ok(&["terminate-cluster", "ins", "--yes"]);
}
