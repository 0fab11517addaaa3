//! The class service for real, as root: the install of `privileged.rs` (real Unix users, a
//! root-owned install under /opt, moto behind its fault proxy), with `[service]` in its site
//! config and `stratus serve` running as the service account, so that every student's CLI goes
//! through the Unix socket. The installed wrapper is moved away in these sites: a request that
//! reached the setuid path would fail, so every answer below is the service's.
//!
//! Raw requests (a forged owner, a 1 MB name, a request that never ends) go to the socket from
//! a small Python client run as the student, so the kernel's `SO_PEERCRED` names the student.
//! The one test of the setuid path here (a runner killed between its reservation and
//! RunInstances) uses the wrapper as `privileged.rs` does. `docs/threats.md` maps each attack to
//! its test. Without root each test prints one line and passes.

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::privileged::{
    Answer, COUNTER, ChildGuard, Crowd, Out, Site, TestCgroup, User, answer,
    assert_within_the_policy, instances, is_live, launch_at_once, live_instances, runner_pids,
    start, start_with_moto,
};
use crate::support::eventually;

/// A client of the socket, run as a user: sends its stdin as it is, then prints every line the
/// service sends until it closes, and exits with the error's exit code (0 for a result, 1 for
/// no answer at all).
const CLIENT: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read())
got = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
sys.stdout.buffer.write(got)
lines = [l for l in got.decode("utf-8", "replace").splitlines() if l.strip()]
last = json.loads(lines[-1]) if lines else {}
sys.exit(last["error"]["exit"] if "error" in last else (0 if "result" in last else 1))
"#;

/// A site served by `stratus serve`: its config has a `[service]` table naming a socket in a
/// directory of the service account's, and the service runs while this lives (killed on drop).
struct Class {
    serve: RefCell<Option<Child>>,
    socket: PathBuf,
    /// The service's stderr (its log), one file per start.
    log: RefCell<PathBuf>,
    site: Site,
}

impl Drop for Class {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.get_mut().take() {
            let _ = stratus::sys::kill(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Class {
    /// A site of `students` with the service started (and answering); `service` is more of the
    /// `[service]` table.
    fn new(endpoint: &str, subnet: &str, students: usize, service: &str) -> Class {
        let class = Class::unstarted(endpoint, subnet, students, service);
        class.start();
        class
    }

    /// The site, its service not started yet (it reads the profiles when it starts).
    fn unstarted(endpoint: &str, subnet: &str, students: usize, service: &str) -> Class {
        // The raw client runs as the students: the system's Python, not one in root's home.
        assert!(
            Path::new("/usr/bin/python3").exists(),
            "/usr/bin/python3 is missing: the socket client of these tests needs it (apt-get install python3)"
        );
        let site = Site::new(endpoint, subnet, students);
        let run = site.root.join("run");
        fs::create_dir(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(site.svc.uid), Some(site.svc.gid)).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
        let socket = run.join("stratus.sock");
        fs::write(
            site.config(),
            format!(
                "{}\n[service]\nsocket = {:?}\n{service}",
                site.config_text(),
                socket.display().to_string()
            ),
        )
        .unwrap();
        // Nothing may reach the setuid path: it would fail.
        fs::rename(site.wrapper(), site.wrapper().with_extension("away")).unwrap();
        Class {
            serve: RefCell::new(None),
            socket,
            log: RefCell::new(PathBuf::new()),
            site,
        }
    }

    /// Starts `stratus serve` as the service account, and waits until it answers a request
    /// (so its reconcile at start is done: it reconciles before it accepts).
    fn start(&self) {
        assert!(self.serve.borrow().is_none(), "the service runs already");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = self.site.canary.join(format!("serve-{n}.log"));
        let log = fs::File::create(&path).unwrap();
        *self.log.borrow_mut() = path;
        let child = Command::new("/usr/bin/setpriv")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/")
            .arg(format!("--reuid={}", self.site.svc.uid))
            .arg(format!("--regid={}", self.site.svc.gid))
            .args(["--clear-groups", "--"])
            .arg(self.site.cli())
            .args(["serve", "--config"])
            .arg(self.site.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.serve.borrow_mut() = Some(child);
        let started = Instant::now();
        let answered = eventually(Duration::from_secs(60), || {
            let ended = self
                .serve
                .borrow_mut()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap();
            if let Some(status) = ended {
                panic!("stratus serve ended ({status}):\n{}", self.serve_log());
            }
            let a = self.ask(
                &self.site.instructor,
                br#"{"action":"quota"}
"#,
            );
            (a.code == 0).then_some(())
        });
        assert!(
            answered.is_some(),
            "the service did not answer within 60 s:\n{}",
            self.serve_log()
        );
        eprintln!("stratus serve answers after {:?}", started.elapsed());
    }

    /// Sends `signal` to the service and waits for it to end.
    fn stop(&self, signal: i32) -> ExitStatus {
        let mut c = self.serve.borrow_mut().take().expect("the service runs");
        stratus::sys::kill(c.id(), signal).unwrap();
        c.wait().unwrap()
    }

    fn serve_log(&self) -> String {
        fs::read_to_string(&*self.log.borrow()).unwrap_or_default()
    }

    /// The socket client as `u`, its stdin to be written.
    fn client(&self, u: &User) -> Command {
        let mut c = self.site.as_user(u, &[]);
        c.args(["/usr/bin/python3", "-I", "-c", CLIENT])
            .arg(&self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `payload` sent to the socket as `u` (the kernel says who), and what came back.
    fn ask(&self, u: &User, payload: &[u8]) -> Answer {
        let mut child = self.client(u).spawn().unwrap();
        child.stdin.take().unwrap().write_all(payload).unwrap();
        answer(child.wait_with_output().unwrap())
    }

    /// `request`, one line, as `u`.
    fn request(&self, u: &User, request: &Value) -> Answer {
        self.ask(u, format!("{request}\n").as_bytes())
    }
}

/// The state of `owner`'s latest cluster `name` in the store, if there is one.
fn state_of(site: &Site, owner: &User, name: &str) -> Option<String> {
    site.sql(&format!(
        "SELECT state FROM clusters WHERE owner = '{}' AND name = '{name}' ORDER BY id DESC LIMIT 1",
        owner.name
    ))
    .first()
    .map(|r| r["state"].as_str().unwrap().to_owned())
}

/// A command run by a shell of root's that first moves itself into the cgroup whose
/// `cgroup.procs` is `procs` (as logind or systemd places a session or a scope).
fn in_cgroup(procs: &Path, cmd: &Command) -> Command {
    let mut c = Command::new("/bin/sh");
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["-c", "echo $$ > \"$0\" || exit 97; exec \"$@\""])
        .arg(procs)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    c
}

/// The fields of a line of `admin audit`: the time, then each quoted field unquoted (`\"` and
/// `\\` undone); `-` for a field that is absent.
fn audit_fields(line: &str) -> Vec<String> {
    let (at, rest) = line.split_once(' ').unwrap_or((line, ""));
    let mut fields = vec![at.to_owned()];
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '"' => {
                let mut f = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => f.extend(chars.next()),
                        Some('"') | None => break,
                        Some(c) => f.push(c),
                    }
                }
                fields.push(f);
            }
            _ => {
                let mut f = String::from(c);
                while let Some(c) = chars.next_if(|c| *c != ' ') {
                    f.push(c);
                }
                fields.push(f);
            }
        }
    }
    fields
}

// ---------------------------------------------------------------------------------------------
// 1. Who asks.

#[test]
fn the_service_knows_each_caller_by_so_peercred_and_refuses_a_forged_owner() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let class = Class::new(&moto.endpoint, &subnet, 2, "");
    let site = &class.site;
    let (s1, s2, ins) = (site.student(0), site.student(1), &site.instructor);

    // Each CLI is its user, as the kernel says: the launch is s1's, the quota s2's.
    site.stratus(s1, &["launch-cluster", "own", "1", "--no-configure"])
        .ok();
    assert_eq!(live_instances(&moto, s1, "own"), 2);
    assert_eq!(state_of(site, s1, "own").as_deref(), Some("running"));
    let q = site.stratus(s2, &["quota", "--json"]).ok().json();
    assert_eq!(q["user"], s2.name.as_str(), "{q:#}");
    assert_eq!(
        site.stratus(s2, &["list", "--json"]).ok().json(),
        json!([]),
        "s2 sees s1's clusters"
    );

    // Forged requests on the socket, as s2, naming s1 (or claiming to be someone).
    let other = s1.name.as_str();
    let forged = [
        (
            json!({"action": "list", "owner": other}),
            format!(
                "only instructors may act on another user's clusters ({} asked for {other}'s)",
                s2.name
            ),
        ),
        (
            json!({"action": "terminate", "name": "own", "owner": other}),
            "only instructors may act on another user's clusters".into(),
        ),
        (
            json!({"action": "launch-slaves", "name": "own", "count": 1, "owner": other}),
            "only instructors may act on another user's clusters".into(),
        ),
        (
            json!({"action": "usage", "owner": other}),
            "only instructors may act on another user's clusters".into(),
        ),
        (
            json!({"action": "list", "everyone": true}),
            "only instructors may list every user's clusters".into(),
        ),
        (
            json!({"action": "audit"}),
            "only instructors may read the audit trail".into(),
        ),
        (
            json!({"action": "key", "name": "own"}),
            "no cluster named own".into(),
        ),
        (
            json!({"action": "launch", "name": "own", "workers": 1, "owner": other}),
            "malformed request: unknown field `owner`".into(),
        ),
        // A request that claims to be another user, even one that has no fields at all.
        (
            json!({"action": "quota", "user": other}),
            "malformed request: unknown field `user`".into(),
        ),
    ];
    let n_forged = forged.len();
    for (request, needle) in forged {
        class.request(s2, &request).refused(&needle);
    }
    // Nothing of s1's changed.
    let own = instances(&moto, s1, "own");
    assert_eq!(own.len(), 2);
    assert!(own.iter().all(is_live));

    // The instructor, on the same socket, may.
    let r = class.request(ins, &json!({"action": "list", "owner": other}));
    let seen = r.result().as_array().unwrap().clone();
    assert_eq!(seen.len(), 1, "{r}");
    assert_eq!(seen[0]["owner"], other, "{r}");

    // The audit trail names the peer, never what a request says.
    let audit = site.audit();
    let refused_s2 = audit
        .iter()
        .filter(|r| r["user"] == s2.name.as_str() && r["decision"] == "refused")
        .count();
    assert_eq!(refused_s2, n_forged, "{audit:#?}");
    assert!(
        audit
            .iter()
            .filter(|r| r["user"] == other)
            .all(|r| r["decision"] != "refused"),
        "{audit:#?}"
    );
    assert!(runner_pids(site).is_empty());
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrency through the service.

/// Three students of 5 units each would hold 15: the class's 12 binds too.
const CROWDED: &str = r#"
instructors = ["INSTRUCTOR"]
[class]
max_units = 12
[units]
"m5.large" = 1
[default]
max_units = 5
max_clusters = 3
max_nodes = 4
profiles = ["tiny"]
"#;

#[test]
fn twenty_four_concurrent_launches_by_three_students_through_the_service_stay_within_the_quotas() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let class = Class::new(&moto.endpoint, &subnet, 3, "");
    let site = &class.site;
    site.set_policy(CROWDED);
    let crowd = Crowd {
        max_units: 5,
        max_clusters: 3,
        max_nodes: 4,
        class_max: 12,
    };
    // Eight launches per student, all started before any ends.
    let results = launch_at_once(site, 8);
    assert_within_the_policy(site, &moto, &results, crowd, &|| class.serve_log());
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 3. A restart loses nothing.

#[test]
fn a_restart_of_the_service_during_a_launch_loses_nothing() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let class = Class::new(&moto.endpoint, &subnet, 1, "");
    let s1 = class.site.student(0);
    let faults = moto.faults();

    // The launch is inside RunInstances (held at the fault server) when the service dies.
    faults.hold("RunInstances");
    let cli = class
        .site
        .stratus_cmd(s1, &["launch-cluster", "r", "1", "--no-configure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli = ChildGuard(Some(cli));
    faults.wait_held("RunInstances", 1, Duration::from_secs(60));
    assert_eq!(state_of(&class.site, s1, "r").as_deref(), Some("requested"));
    let status = class.stop(libc::SIGKILL);
    assert!(!status.success(), "{status}");
    let out = Out::of(
        "the CLI".into(),
        cli.0.take().unwrap().wait_with_output().unwrap(),
    );
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr
            .contains("the class service closed the connection without an answer"),
        "{out}"
    );
    // The call goes on to moto with nobody left to record what it made: instances that only
    // their tags tie to the launch.
    faults.release("RunInstances");
    let made: Vec<String> = eventually(Duration::from_secs(30), || {
        let live: Vec<String> = instances(&moto, s1, "r")
            .iter()
            .filter(|i| is_live(i))
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect();
        (live.len() == 2).then_some(live)
    })
    .expect("RunInstances made the launch's two instances");
    let recorded = class.site.sql(&format!(
        "SELECT instance_id FROM nodes WHERE cluster_id = {} AND ended_at IS NULL",
        class.site.cluster_id(s1, "r")
    ));
    assert!(
        recorded.is_empty(),
        "recorded by a dead service: {recorded:?}"
    );

    // The restart reconciles before it answers anyone: the launch is rolled back, its
    // instances terminated, its quota released.
    class.start();
    let site = &class.site;
    let state = state_of(site, s1, "r").unwrap();
    assert!(
        !["reserved", "requested", "running"].contains(&state.as_str()),
        "{state}\n{}",
        class.serve_log()
    );
    assert_eq!(live_instances(&moto, s1, "r"), 0, "{}", class.serve_log());
    site.assert_settled(&moto);

    // And the audit shows it: the accepted launch, then its rollback with the instances.
    let audit = site.audit();
    assert!(
        audit.iter().any(|r| r["user"] == s1.name.as_str()
            && r["action"] == "launch"
            && r["cluster"] == format!("{}/r", s1.name).as_str()
            && r["decision"] == "accepted"),
        "{audit:#?}"
    );
    let rollback: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("reconcile-"))
                && r["cluster"] == format!("{}/r", s1.name).as_str()
        })
        .collect();
    assert!(!rollback.is_empty(), "no rollback audited: {audit:#?}");
    for id in &made {
        assert!(
            rollback
                .iter()
                .any(|r| r["instances"].as_array().unwrap().iter().any(|i| i == id)),
            "{id} is in no audited rollback: {rollback:#?}"
        );
    }
    // Nothing is held: the same launch goes through now.
    site.stratus(s1, &["launch-cluster", "r", "1", "--no-configure"])
        .ok();
    assert_eq!(live_instances(&moto, s1, "r"), 2);
    site.assert_settled(&moto);

    // A terminate in flight is finished: the service dies inside TerminateInstances, the call
    // goes through, and the restart records the cluster terminated.
    faults.hold("TerminateInstances");
    let cli = site
        .stratus_cmd(s1, &["terminate-cluster", "r", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli = ChildGuard(Some(cli));
    faults.wait_held("TerminateInstances", 1, Duration::from_secs(60));
    assert_eq!(state_of(site, s1, "r").as_deref(), Some("terminating"));
    class.stop(libc::SIGKILL);
    let out = Out::of(
        "the CLI".into(),
        cli.0.take().unwrap().wait_with_output().unwrap(),
    );
    assert_ne!(out.code, 0, "{out}");
    faults.release("TerminateInstances");
    class.start();
    assert_eq!(
        state_of(site, s1, "r").as_deref(),
        Some("terminated"),
        "{}",
        class.serve_log()
    );
    assert_eq!(live_instances(&moto, s1, "r"), 0);
    let audit = site.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "reconcile-finish-terminate"
                && r["cluster"] == format!("{}/r", s1.name).as_str()),
        "{audit:#?}"
    );
    site.assert_settled(&moto);

    // A supervisor's stop (SIGTERM) mid-launch: the launch hears it too, and rolls back once its
    // launch call returns, before the service ends.
    faults.hold("RunInstances");
    let cli = site
        .stratus_cmd(s1, &["launch-cluster", "t", "1", "--no-configure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli = ChildGuard(Some(cli));
    faults.wait_held("RunInstances", 1, Duration::from_secs(60));
    let serve = class.serve.borrow().as_ref().unwrap().id();
    stratus::sys::kill(serve, libc::SIGTERM).unwrap();
    faults.release("RunInstances");
    let status = class.serve.borrow_mut().take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}\n{}", class.serve_log());
    let out = Out::of(
        "the CLI".into(),
        cli.0.take().unwrap().wait_with_output().unwrap(),
    );
    assert_ne!(out.code, 0, "{out}");
    let state = state_of(site, s1, "t").unwrap();
    assert!(
        !["reserved", "requested", "running"].contains(&state.as_str()),
        "{state}: {out}\n{}",
        class.serve_log()
    );
    assert_eq!(live_instances(&moto, s1, "t"), 0, "{out}");
    class.start();
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 4. A student's delegated cgroup, with the service.

#[test]
fn with_the_service_freezing_or_killing_a_students_own_cli_mid_launch_leaves_nothing_stuck() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    // The service's own timers run the snapshot and the reaper, every minute.
    let class = Class::new(
        &moto.endpoint,
        &subnet,
        2,
        "snapshot_minutes = 1\nreap_minutes = 1\n",
    );
    let site = &class.site;
    let (s1, s2, ins) = (site.student(0), site.student(1), &site.instructor);
    let faults = moto.faults();

    // s1's own subtree, as systemd delegates user@UID.service, and a cgroup s1 makes in it
    // (whose cgroup.freeze and cgroup.kill are s1's).
    let user = TestCgroup::new("svc-user");
    user.delegate_to(s1);
    let app = user.dir.join("app");
    site.sh(s1, &format!("exec mkdir {}", app.display())).ok();
    let procs = app.join("cgroup.procs");
    let events = || fs::read_to_string(app.join("cgroup.events")).unwrap();

    // Frozen by its student while the service is inside RunInstances for it.
    faults.hold("RunInstances");
    let frozen = in_cgroup(
        &procs,
        &site.stratus_cmd(s1, &["launch-cluster", "fz", "1", "--no-configure"]),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut frozen = ChildGuard(Some(frozen));
    faults.wait_held("RunInstances", 1, Duration::from_secs(60));
    site.sh(
        s1,
        &format!("echo 1 > {}", app.join("cgroup.freeze").display()),
    )
    .ok();
    eventually(Duration::from_secs(10), || {
        events().contains("frozen 1").then_some(())
    })
    .expect("s1 froze its own CLI");
    faults.release("RunInstances");
    // The service finishes the launch on its own; nothing waits for the frozen client.
    eventually(Duration::from_secs(60), || {
        (state_of(site, s1, "fz").as_deref() == Some("running")).then_some(())
    })
    .unwrap_or_else(|| panic!("fz never ran:\n{}", class.serve_log()));
    assert_eq!(live_instances(&moto, s1, "fz"), 2);
    // The service's snapshot timer sees fz's nodes again while its client stays frozen.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let seen = format!(
        "SELECT max(u.last_seen_at) AS t FROM usage_intervals u JOIN clusters c ON c.id = u.cluster_id WHERE c.owner = '{}' AND c.name = 'fz'",
        s1.name
    );
    eventually(Duration::from_secs(90), || {
        let t = site.sql(&seen)[0]["t"].as_u64()?;
        (t > since).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no snapshot by the timer: {:?}\n{}",
            site.sql(&seen),
            class.serve_log()
        )
    });
    assert!(events().contains("frozen 1"));

    // Meanwhile the class goes on: another student launches, the instructor's snapshot and
    // reaper run, and the instructor terminates the frozen student's cluster.
    let started = Instant::now();
    site.stratus(s2, &["launch-cluster", "other", "1", "--no-configure"])
        .ok();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(live_instances(&moto, s2, "other"), 2);
    site.stratus(ins, &["accounting", "snapshot", "--json"])
        .ok();
    site.stratus(ins, &["accounting", "reap", "--json"]).ok();
    site.stratus(
        ins,
        &["terminate-cluster", "fz", "--owner", &s1.name, "--yes"],
    )
    .ok();
    assert_eq!(live_instances(&moto, s1, "fz"), 0);
    assert_eq!(state_of(site, s1, "fz").as_deref(), Some("terminated"));

    // Killed by its student (cgroup.kill) while the service is inside RunInstances: the
    // service sees its client go, and rolls the launch back once the call returns.
    site.sh(
        s1,
        &format!("echo 1 > {}", app.join("cgroup.kill").display()),
    )
    .ok();
    let _ = frozen.0.take().unwrap().wait();
    site.sh(
        s1,
        &format!("echo 0 > {}", app.join("cgroup.freeze").display()),
    )
    .ok();
    faults.hold("RunInstances");
    let mut killed = in_cgroup(
        &procs,
        &site.stratus_cmd(s1, &["launch-cluster", "kl", "1", "--no-configure"]),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    faults.wait_held("RunInstances", 1, Duration::from_secs(60));
    site.sh(
        s1,
        &format!("echo 1 > {}", app.join("cgroup.kill").display()),
    )
    .ok();
    let status = killed.wait().unwrap();
    assert!(!status.success(), "{status}");
    faults.release("RunInstances");
    eventually(Duration::from_secs(60), || {
        let state = state_of(site, s1, "kl")?;
        (!["reserved", "requested", "running"].contains(&state.as_str())
            && live_instances(&moto, s1, "kl") == 0)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "kl is {:?} with {} live instances:\n{}",
            state_of(site, s1, "kl"),
            live_instances(&moto, s1, "kl"),
            class.serve_log()
        )
    });

    // Nothing stuck: s2 launches again, s1 too, and the snapshot runs.
    site.stratus(s2, &["launch-master", "again", "--no-configure"])
        .ok();
    site.stratus(s1, &["launch-master", "back", "--no-configure"])
        .ok();
    site.stratus(ins, &["accounting", "snapshot", "--json"])
        .ok();
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 5. The setuid path: a runner killed between its reservation and RunInstances.

#[test]
fn a_runner_killed_between_reservation_and_run_instances_leaves_an_accepted_row_and_its_rollback_is_audited()
 {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let (s1, ins) = (site.student(0), &site.instructor);
    let faults = moto.faults();

    // The runner is preparing the cluster (its key pair, held at the fault server): reserved,
    // nothing launched.
    faults.hold("ImportKeyPair");
    let cli = site
        .stratus_cmd(s1, &["launch-cluster", "k", "1", "--no-configure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli = ChildGuard(Some(cli));
    faults.wait_held("ImportKeyPair", 1, Duration::from_secs(60));
    assert_eq!(state_of(&site, s1, "k").as_deref(), Some("reserved"));
    let pids = runner_pids(&site);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // What a student's cgroup.kill did before the wrapper refused such callers.
    stratus::sys::kill(pids[0], libc::SIGKILL).unwrap();
    let out = Out::of(
        "the CLI".into(),
        cli.0.take().unwrap().wait_with_output().unwrap(),
    );
    assert_ne!(out.code, 0, "{out}");
    faults.release("ImportKeyPair");

    // The decision was on record before anything was made.
    let audit = site.audit();
    let accepted: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["user"] == s1.name.as_str()
                && r["action"] == "launch"
                && r["cluster"] == format!("{}/k", s1.name).as_str()
        })
        .collect();
    assert_eq!(accepted.len(), 1, "{audit:#?}");
    assert_eq!(accepted[0]["decision"], "accepted", "{audit:#?}");
    assert_eq!(faults.count("RunInstances"), 0);
    assert_eq!(instances(&moto, s1, "k").len(), 0);

    // The instructor's reconcile (through the wrapper) rolls it back, and says so in the trail.
    site.stratus(ins, &["reconcile", "--json"]).ok();
    let state = state_of(&site, s1, "k").unwrap();
    assert!(
        !["reserved", "requested", "running"].contains(&state.as_str()),
        "{state}"
    );
    let audit = site.audit();
    let rollback: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("reconcile-"))
                && r["cluster"] == format!("{}/k", s1.name).as_str()
        })
        .collect();
    assert_eq!(rollback.len(), 1, "{audit:#?}");
    assert_eq!(rollback[0]["decision"], "done", "{rollback:#?}");
    assert!(
        rollback[0]["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back the launch left in state reserved"),
        "{rollback:#?}"
    );
    // Its quota is free again: the same launch goes through.
    site.stratus(s1, &["launch-cluster", "k", "1", "--no-configure"])
        .ok();
    assert_eq!(live_instances(&moto, s1, "k"), 2);
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 6. Audit fields are bounded and quoted.

#[test]
fn a_huge_or_padded_cluster_name_is_stored_bounded_and_shown_quoted() {
    let Some(_serial) = start() else {
        return;
    };
    // Offline: every request here is refused before any call to EC2.
    let class = Class::new("http://127.0.0.1:9", "subnet-00000000", 1, "");
    let site = &class.site;
    let s1 = site.student(0);

    // A 1 MB name (within the 1 MiB a request may take), on the socket.
    let huge = "h".repeat(1_000_000);
    let a = class.request(
        s1,
        &json!({"action": "launch", "name": huge, "workers": 1, "profile": "tiny", "configure": false}),
    );
    // (The refusal sent back to its caller holds the whole name: src/core/model.rs quotes it.)
    a.refused("invalid cluster name");
    // A name padded with spaces, and a fake verdict after it.
    let padded = format!("p{}\" \"done", " ".repeat(190));
    class
        .request(
            s1,
            &json!({"action": "launch", "name": padded, "workers": 1, "profile": "tiny", "configure": false}),
        )
        .refused("invalid cluster name");

    // Stored bounded: the name cut to 100 characters (and a mark), the row a few hundred bytes.
    let rows = site.sql(&format!(
        "SELECT length(cluster) AS name, length(user) + length(action) + length(cluster) + length(decision) + coalesce(length(reason), 0) + length(instances) AS row, decision FROM audit WHERE user = '{}'",
        s1.name
    ));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert!(r["name"].as_u64().unwrap() <= 101, "{r}");
        assert!(r["row"].as_u64().unwrap() < 1000, "{r}");
        assert_eq!(r["decision"], "refused", "{r}");
    }
    let bytes = fs::metadata(site.db()).unwrap().len();
    assert!(bytes < 1_000_000, "the store grew to {bytes} bytes");

    // Shown quoted: each field of `admin audit` in its quotes, the verdict the fifth field
    // whatever the name holds.
    let out = site.stratus(&site.instructor, &["admin", "audit"]).ok();
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(&format!("\"{}\"", s1.name)))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in lines {
        let f = audit_fields(line);
        assert_eq!(f[1], s1.name, "{line}");
        assert_eq!(f[2], "launch", "{line}");
        assert!(
            // The cluster as owner/name, the whole cut to its bound.
            f[3].chars().count() <= 101
                && (f[3].starts_with(&format!("{}/h", s1.name))
                    || f[3].starts_with(&format!("{}/p", s1.name))),
            "{line}"
        );
        assert_eq!(f[4], "refused", "{line}");
        assert!(line.len() < 1000, "{} bytes: {line}", line.len());
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Parked requests.

#[test]
fn parked_requests_on_the_socket_give_up_within_the_time_limit_and_are_audited() {
    let Some(_serial) = start() else {
        return;
    };
    let class = Class::new("http://127.0.0.1:9", "subnet-00000000", 2, "");
    let site = &class.site;
    let (s1, s2) = (site.student(0), site.student(1));
    let limit = Duration::from_secs(10);

    // Eight connections as s1, each with half a request, kept open.
    let started = Instant::now();
    let parked: Vec<Child> = (0..8)
        .map(|_| {
            let mut c = class.client(s1).spawn().unwrap();
            c.stdin.take().unwrap().write_all(b"{\"action\":").unwrap();
            c
        })
        .collect();
    // They hold nothing: another student is answered meanwhile, at once.
    let asked = Instant::now();
    let q = site.stratus(s2, &["quota", "--json"]).ok().json();
    assert_eq!(q["user"], s2.name.as_str());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    for c in parked {
        let a = answer(c.wait_with_output().unwrap());
        let took = started.elapsed();
        assert!(
            took >= limit && took < limit + Duration::from_secs(10),
            "a parked request ended after {took:?}: {a}"
        );
        let message = a.refused("no request within 10 seconds");
        assert_eq!(message, "no request within 10 seconds", "{a}");
    }
    let refused: Vec<Value> = site
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "request")
        .collect();
    assert_eq!(refused.len(), 8, "{refused:#?}");
    for r in &refused {
        assert_eq!(r["user"], s1.name.as_str(), "{r}");
        assert_eq!(r["decision"], "refused", "{r}");
        assert_eq!(r["reason"], "no request within 10 seconds", "{r}");
    }
    assert!(
        class.serve.borrow().is_some() && class.request(s1, &json!({"action": "quota"})).code == 0,
        "{}",
        class.serve_log()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. One poll for every wait.

/// `tiny` whose launch waits for SSH long enough to be measured.
const PATIENT: &str = "extends = \"tiny\"\nready_timeout_secs = 600\n";

const POLLING: &str = r#"
instructors = ["INSTRUCTOR"]
[class]
max_units = 40
[units]
"m5.large" = 1
[default]
max_units = 10
max_clusters = 4
max_nodes = 4
profiles = ["tiny", "patient"]
"#;

/// The DescribeInstances calls the service makes in `window` while `names` wait for SSH, with
/// throttling injected at the start.
fn describes_while_waiting(
    class: &Class,
    moto: &crate::ec2::ec2_moto::Moto,
    names: &[(&User, &str)],
    window: Duration,
) -> u64 {
    let site = &class.site;
    // Each launch is past RunInstances and its wait for running: its node is recorded running,
    // so it waits for SSH (which nodes that never boot never answer).
    let list = names
        .iter()
        .map(|(u, n)| format!("(c.owner = '{}' AND c.name = '{n}')", u.name))
        .collect::<Vec<_>>()
        .join(" OR ");
    eventually(Duration::from_secs(120), || {
        let rows = site.sql(&format!(
            "SELECT count(*) AS n FROM nodes n JOIN clusters c ON c.id = n.cluster_id WHERE ({list}) AND n.state = 'running' AND c.state = 'requested'"
        ));
        (rows[0]["n"].as_u64() == Some(names.len() as u64)).then_some(())
    })
    .unwrap_or_else(|| {
        let said: Vec<String> = names
            .iter()
            .map(|(_, n)| {
                fs::read_to_string(site.canary.join(format!("{n}.out"))).unwrap_or_default()
            })
            .collect();
        panic!(
            "not all of {list} wait for SSH: {:?}\n{said:#?}\n{}",
            site.sql("SELECT c.name, c.state, n.state AS node FROM clusters c LEFT JOIN nodes n ON n.cluster_id = c.id"),
            class.serve_log()
        )
    });
    let faults = moto.faults();
    let before = faults.count("DescribeInstances");
    faults.configure(json!({"throttle": {"DescribeInstances": 3}}));
    // A measurement over a fixed window, not a synchronisation.
    std::thread::sleep(window);
    let n = faults.count("DescribeInstances") - before;
    let states = site.sql(&format!(
        "SELECT c.name, c.state FROM clusters c WHERE {}",
        list.replace("c.owner", "owner").replace("c.name", "name")
    ));
    assert!(
        states.iter().all(|r| r["state"] == "requested"),
        "a wait ended within the window: {states:?}\n{}",
        class.serve_log()
    );
    n
}

#[test]
fn with_throttling_the_services_describes_per_poll_round_stay_constant_in_the_clusters_waiting() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let class = Class::unstarted(&moto.endpoint, &subnet, 2, "");
    let site = &class.site;
    fs::write(site.profiles().join("patient.toml"), PATIENT).unwrap();
    site.set_policy(POLLING);
    class.start();
    let (s1, s2) = (site.student(0), site.student(1));
    let window = Duration::from_secs(30);
    // Launches that wait for SSH (no --no-configure) on nodes that never boot (moto's).
    let wait = |u: &User, name: &str| {
        let out = fs::File::create(site.canary.join(format!("{name}.out"))).unwrap();
        ChildGuard(Some(
            site.stratus_cmd(u, &["launch-master", name, "-p", "patient"])
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap(),
        ))
    };

    let one = wait(s1, "w0");
    let alone = describes_while_waiting(&class, &moto, &[(s1, "w0")], window);
    drop(one);
    let gone = |names: &[(&User, &str)]| {
        eventually(Duration::from_secs(120), || {
            names
                .iter()
                .all(|(u, n)| {
                    state_of(site, u, n).is_some_and(|s| s != "requested" && s != "reserved")
                        && live_instances(&moto, u, n) == 0
                })
                .then_some(())
        })
        .unwrap_or_else(|| panic!("the waits did not roll back:\n{}", class.serve_log()))
    };
    // Its client gone, the launch stops and rolls back.
    gone(&[(s1, "w0")]);
    let four = vec![
        wait(s1, "w1"),
        wait(s1, "w2"),
        wait(s2, "w3"),
        wait(s2, "w4"),
    ];
    let together = describes_while_waiting(
        &class,
        &moto,
        &[(s1, "w1"), (s1, "w2"), (s2, "w3"), (s2, "w4")],
        window,
    );
    eprintln!(
        "DescribeInstances in {window:?}: {alone} with one cluster waiting, {together} with four"
    );
    assert!(alone > 0, "no describe while a cluster waited");
    // One poll round serves every wait: a round or two more at the window's edges (and the
    // waits' phases), not four times as many.
    assert!(
        together <= alone + alone / 2 + 3,
        "{together} DescribeInstances with four clusters waiting, {alone} with one"
    );
    drop(four);
    gone(&[(s1, "w1"), (s1, "w2"), (s2, "w3"), (s2, "w4")]);
    site.assert_settled(&moto);
}
