//! The privileged path for real, as root: real Unix users (a service account, students, an
//! instructor), `stratus admin install` into a fresh root-owned directory under /opt (the
//! setuid wrapper with its capability), a multi-user site config against moto on a loopback
//! subnet, and every command run as those users, through the installed CLI and wrapper.
//!
//! Each test looks where a failure would show: the exit code and the one-line message, what moto
//! created (by tag and by name), the runner's own store (read as the service account), files,
//! owners and modes, processes. `docs/threats.md` maps each attack to the test that covers it.
//!
//! A `Site` is one install with its users; dropping it removes the install, the users and their
//! homes, also when the test panics. The tests run one at a time (`SERIAL`; those that launch
//! also hold moto's machine-wide lock). Without root each test prints one line and passes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use serde_json::{Value, json};

use crate::ec2::ec2_hypervisor::{Hypervisor, HypervisorConfig};
use crate::ec2::ec2_moto::{Moto, UBUNTU_AMI, tag};
use crate::support::{BIN, eventually};

pub(crate) const SKIP: &str = "skipping: the privileged-path tests need root";

/// One test of this module at a time: each makes users (useradd locks /etc/passwd) and an
/// install, and most hold moto besides.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());
pub(crate) static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn is_root() -> bool {
    stratus::sys::effective_uid() == 0
}

/// This module's turn, or `None` (after the one line) without root.
pub(crate) fn start() -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("{SKIP}");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Root, this module's turn, and moto with a loopback subnet; `None` when the test must skip.
pub(crate) fn start_with_moto() -> Option<(MutexGuard<'static, ()>, Moto, String)> {
    let serial = start()?;
    let moto = Moto::acquire()?;
    let (_vpc, subnet) = moto.loopback_subnet();
    Some((serial, moto, subnet))
}

// ---------------------------------------------------------------------------------------------
// Users, the install, and running things as someone.

/// A real Unix user with a home directory (`useradd -m`), deleted with it on drop.
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: PathBuf,
}

impl User {
    pub(crate) fn create(name: String, shell: &str) -> User {
        assert!(name.len() <= 32, "{name} is too long for a user name");
        let mut tries = 0;
        loop {
            let out = Command::new("/usr/sbin/useradd")
                .args(["-m", "-U", "-s", shell, &name])
                .output()
                .expect("run useradd");
            if out.status.success() {
                break;
            }
            // 10: /etc/group could not be locked (another useradd is at work); 1: /etc/passwd.
            tries += 1;
            assert!(
                tries < 50 && matches!(out.status.code(), Some(1 | 10)),
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let p = stratus::sys::passwd_by_name(&name)
            .unwrap()
            .unwrap_or_else(|| panic!("useradd made no {name}"));
        User {
            name,
            uid: p.uid,
            gid: p.gid,
            home: p.home,
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        for _ in 0..50 {
            let Ok(out) = Command::new("/usr/sbin/userdel")
                .args(["-r", "-f", &self.name])
                .output()
            else {
                break;
            };
            // 0: gone; 6: there was no such user; 12: the home could not be removed (gone).
            if matches!(out.status.code(), Some(0 | 6 | 12)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("/usr/sbin/groupdel").arg(&self.name).output();
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// What a command did.
pub(crate) struct Out {
    pub(crate) what: String,
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn of(what: String, out: Output) -> Out {
        Out {
            what,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn ok(self) -> Out {
        assert_eq!(self.code, 0, "{self}");
        self
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }

    /// Exit 2 and exactly one line on stderr, `error: …` with `needle` in it.
    pub(crate) fn refused(&self, needle: &str) {
        self.refused_with(2, needle)
    }

    /// Exit `code` and exactly one line on stderr, `error: …` with `needle` in it.
    pub(crate) fn refused_with(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "{self}");
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one line: {self}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{:?} lacks {needle:?}",
            lines[0]
        );
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

pub(crate) fn output(cmd: &mut Command) -> Out {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    Out::of(what, out)
}

/// What the runner answered through the wrapper: its JSON lines, the last one the answer.
pub(crate) struct Answer {
    pub(crate) code: i32,
    pub(crate) lines: Vec<Value>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Answer {
    pub(crate) fn last(&self) -> &Value {
        self.lines
            .last()
            .unwrap_or_else(|| panic!("no answer: {self}"))
    }

    pub(crate) fn result(&self) -> &Value {
        assert_eq!(self.code, 0, "{self}");
        self.last()
            .get("result")
            .unwrap_or_else(|| panic!("no result: {self}"))
    }

    /// Refused by the runner: exit 2, and an error line with exit 2 whose message holds `needle`.
    pub(crate) fn refused(&self, needle: &str) -> String {
        assert_eq!(self.code, 2, "{self}");
        let e = &self.last()["error"];
        assert_eq!(e["exit"], 2, "{self}");
        let message = e["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert!(!message.contains('\n'), "not one line: {message:?}");
        message
    }

    /// Refused by the wrapper itself: exit 1, one line `stratus-wrap: …` with `needle`, and no
    /// answer from any runner.
    pub(crate) fn wrapper_refused(&self, needle: &str) {
        assert_eq!(self.code, 1, "{self}");
        assert!(self.stdout.is_empty(), "the runner ran: {self}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {self}");
        assert!(
            lines[0].starts_with("stratus-wrap: ") && lines[0].contains(needle),
            "{:?} lacks {needle:?}",
            lines[0]
        );
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How to call the wrapper directly: as whom, with what around it.
#[derive(Default)]
pub(crate) struct Call<'a> {
    /// Extra `setpriv` options (`--no-new-privs`).
    pub(crate) setpriv: &'a [&'a str],
    /// Shell words run before the wrapper (`ulimit -f 1;`).
    pub(crate) shell: &'a str,
    /// Redirections of the wrapper (`>&- 2>&-`).
    pub(crate) redirect: &'a str,
    /// The wrapper's whole environment; `None` is a plain one (PATH and HOME).
    pub(crate) env: Option<Vec<(String, String)>>,
    /// A datagram socket to stand in for `/dev/log` (in a mount namespace of the call's own),
    /// so the test reads what the runner sends to syslog.
    pub(crate) devlog: Option<&'a Path>,
}

/// One install of the privileged path with its users: a service account, an instructor and
/// `students`. Dropping it removes the install, the canary directory and the users.
pub(crate) struct Site {
    pub(crate) root: PathBuf,
    /// A world-writable directory for markers that whatever must never run would create.
    pub(crate) canary: PathBuf,
    pub(crate) endpoint: String,
    pub(crate) subnet: String,
    pub(crate) svc: User,
    pub(crate) instructor: User,
    pub(crate) students: Vec<User>,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
        // What the install wrote for systemd and cron, named after the install.
        for f in self.service_files() {
            let _ = fs::remove_file(f);
        }
        // `with_devlog` binds /dev onto canary/dev-real in a mount namespace of its own; should
        // that mount ever be seen here, removing the directory would empty /dev.
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        let real = self.canary.join("dev-real");
        if real.exists() && dev(&real) != dev(&self.canary) {
            eprintln!(
                "{} is a mount point here; leaving {}",
                real.display(),
                self.canary.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.canary);
    }
}

/// The profiles every site has: `tiny` (m5.large everywhere), `wide` (m5.xlarge workers),
/// `odd` (workers of a type the policy does not price) and `forbidden` (a profile no student
/// may use). Their nodes answer SSH on 2200 as `ubuntu` (the test hypervisor's nodes).
pub(crate) const TINY: &str = r#"
description = "privileged-path tests"
providers = ["ec2"]
max_workers = 8
ssh_user = "ubuntu"
ssh_port = 2200
ready_timeout_secs = 60

[master]
image = "IMAGE"
instance_type = "m5.large"
user_data = "tiny/node.sh.hbs"

[worker]
image = "IMAGE"
instance_type = "m5.large"
user_data = "tiny/node.sh.hbs"
"#;

pub(crate) const TINY_NODE: &str =
    "#!/bin/bash\ncd \"$HOME\"\necho {{quote role}} > role\necho {{quote owner}} > owner\n";

/// A policy that limits nothing the tests do by accident.
pub(crate) const ROOMY: &str = r#"
instructors = ["INSTRUCTOR"]
[class]
max_units = 200
[units]
"m5.large" = 1
"m5.xlarge" = 2
[default]
max_units = 40
max_clusters = 10
max_nodes = 9
profiles = ["tiny", "wide", "odd"]
"#;

impl Site {
    pub(crate) fn new(endpoint: &str, subnet: &str, students: usize) -> Site {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let svc = User::create(format!("spt-svc-{tag}"), "/usr/sbin/nologin");
        let instructor = User::create(format!("spt-ins-{tag}"), "/bin/sh");
        let students = (0..students)
            .map(|i| User::create(format!("spt-s{i}-{tag}"), "/bin/sh"))
            .collect();
        let site = Site {
            root: PathBuf::from(format!("/opt/stratus-priv-{tag}")),
            canary: PathBuf::from(format!("/tmp/stratus-priv-canary-{tag}")),
            endpoint: endpoint.to_owned(),
            subnet: subnet.to_owned(),
            svc,
            instructor,
            students,
        };
        for (dir, mode) in [(&site.root, 0o755), (&site.canary, 0o777)] {
            let _ = fs::remove_dir_all(dir);
            fs::create_dir(dir).unwrap();
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        }
        // The instructor's site config first (the install keeps it, and installs the cron
        // file its setuid transport needs), then the install, then the rest of what the
        // instructor fills in.
        fs::create_dir_all(site.etc()).unwrap();
        fs::write(site.config(), site.config_text()).unwrap();
        site.install().ok();
        site.fill_in();
        site
    }

    /// A site whose config names an endpoint nothing listens on: for tests that launch nothing.
    pub(crate) fn offline(students: usize) -> Site {
        Site::new("http://127.0.0.1:9", "subnet-00000000", students)
    }

    pub(crate) fn student(&self, i: usize) -> &User {
        &self.students[i]
    }
    pub(crate) fn cli(&self) -> PathBuf {
        self.root.join("bin/stratus")
    }
    pub(crate) fn wrapper(&self) -> PathBuf {
        self.root.join("libexec/stratus/stratus-wrap")
    }
    pub(crate) fn etc(&self) -> PathBuf {
        self.root.join("etc/stratus")
    }
    pub(crate) fn config(&self) -> PathBuf {
        self.etc().join("config.toml")
    }
    pub(crate) fn policy(&self) -> PathBuf {
        self.etc().join("policy.toml")
    }
    pub(crate) fn credentials(&self) -> PathBuf {
        self.etc().join("aws-credentials")
    }
    pub(crate) fn profiles(&self) -> PathBuf {
        self.etc().join("profiles")
    }
    pub(crate) fn state(&self) -> PathBuf {
        self.root.join("var/lib/stratus")
    }
    pub(crate) fn db(&self) -> PathBuf {
        self.state().join("stratus.db")
    }
    /// The name of this install's units and cron file: `stratus-` and the prefix's components.
    pub(crate) fn unit_name(&self) -> String {
        format!(
            "stratus-{}",
            self.root
                .strip_prefix("/")
                .unwrap()
                .display()
                .to_string()
                .replace('/', "-")
        )
    }
    /// Where the install put its systemd units and cron file.
    pub(crate) fn service_files(&self) -> [PathBuf; 3] {
        let name = self.unit_name();
        [
            PathBuf::from(format!("/etc/systemd/system/{name}.socket")),
            PathBuf::from(format!("/etc/systemd/system/{name}.service")),
            PathBuf::from(format!("/etc/cron.d/{name}")),
        ]
    }

    /// `stratus admin install`, as root, from the build's binary (the wrapper beside it).
    pub(crate) fn install(&self) -> Out {
        let wrap = Path::new(BIN).with_file_name("stratus-wrap");
        assert!(
            wrap.exists(),
            "{} is missing: build the workspace (scripts/test runs `cargo test --workspace`)",
            wrap.display()
        );
        output(
            Command::new(BIN)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", "/root")
                .args(["admin", "install", "--prefix"])
                .arg(&self.root)
                .args(["--service-user", &self.svc.name]),
        )
    }

    /// `admin doctor` on this install, which finds the service account in the wrapper; `extra`
    /// arguments after.
    pub(crate) fn doctor_with(&self, extra: &[&str]) -> Out {
        output(
            Command::new(self.cli())
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", "/root")
                .args(["admin", "doctor", "--prefix"])
                .arg(&self.root)
                .args(extra),
        )
    }

    pub(crate) fn doctor(&self) -> Out {
        self.doctor_with(&[])
    }

    /// What the instructor does after the install: the service account's keys, the site config
    /// (moto, the loopback subnet), the profiles and a policy. Files keep the owners and modes the
    /// install gave them.
    pub(crate) fn fill_in(&self) {
        fs::write(
            self.credentials(),
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        )
        .unwrap();
        let m = fs::metadata(self.credentials()).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (self.svc.uid, 0o600));
        fs::create_dir_all(self.profiles().join("tiny")).unwrap();
        let tiny = TINY.replace("IMAGE", UBUNTU_AMI);
        let extend = |worker_type: &str| {
            format!("extends = \"tiny\"\n[worker]\ninstance_type = \"{worker_type}\"\n")
        };
        for (file, text) in [
            ("tiny.toml", tiny.as_str()),
            ("tiny/node.sh.hbs", TINY_NODE),
            ("wide.toml", &extend("m5.xlarge")),
            ("odd.toml", &extend("t2.nano")),
            ("forbidden.toml", &extend("m5.large")),
        ] {
            fs::write(self.profiles().join(file), text).unwrap();
        }
        fs::write(self.config(), self.config_text()).unwrap();
        self.set_policy(ROOMY);
    }

    pub(crate) fn config_text(&self) -> String {
        format!(
            r#"# site config of a privileged-path test
mode = "multi-user"
wrapper = {wrapper:?}
state_dir = {state:?}
provider = "ec2"
profiles_dir = {profiles:?}
default_profile = "tiny"

[ec2]
region = "us-east-1"
endpoint_url = {endpoint:?}
credentials_file = {creds:?}
subnet_id = {subnet:?}
address = "private_ip"
client_cidrs = ["127.0.0.0/8"]
"#,
            wrapper = self.wrapper().display().to_string(),
            state = self.state().display().to_string(),
            profiles = self.profiles().display().to_string(),
            endpoint = self.endpoint,
            creds = self.credentials().display().to_string(),
            subnet = self.subnet,
        )
    }

    /// Writes the policy, `INSTRUCTOR` standing for the instructor's name.
    pub(crate) fn set_policy(&self, text: &str) {
        fs::write(
            self.policy(),
            text.replace("INSTRUCTOR", &self.instructor.name),
        )
        .unwrap();
    }

    /// `setpriv` to `u` (real and effective ids, the user's groups); the program follows.
    pub(crate) fn as_user(&self, u: &User, extra: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/setpriv");
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .args(extra)
            .arg("--")
            .stdin(Stdio::null());
        c
    }

    /// The environment of `u`'s login session, and the install's config.
    pub(crate) fn login_env(&self, u: &User) -> Vec<String> {
        vec![
            "PATH=/usr/bin:/bin".into(),
            format!("HOME={}", u.home.display()),
            format!("USER={}", u.name),
            "LANG=C.UTF-8".into(),
            format!("STRATUS_CONFIG={}", self.config().display()),
        ]
    }

    /// `stratus ARGS` as `u`.
    pub(crate) fn stratus_cmd(&self, u: &User, args: &[&str]) -> Command {
        let mut c = self.as_user(u, &[]);
        c.arg("/usr/bin/env")
            .arg("-i")
            .args(self.login_env(u))
            .arg(self.cli())
            .args(args);
        c
    }

    pub(crate) fn stratus(&self, u: &User, args: &[&str]) -> Out {
        output(&mut self.stratus_cmd(u, args))
    }

    /// A shell command as `u`, in `u`'s login environment.
    pub(crate) fn sh(&self, u: &User, script: &str) -> Out {
        let mut c = self.as_user(u, &[]);
        c.arg("/usr/bin/env")
            .arg("-i")
            .args(self.login_env(u))
            .args(["/bin/sh", "-c", script]);
        output(&mut c)
    }

    /// The wrapper as `u`, `stdin` written to it, as `call` says.
    pub(crate) fn wrap_with(&self, u: &User, stdin: &[u8], call: &Call) -> Answer {
        let env = call.env.clone().unwrap_or_else(|| {
            vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("HOME".into(), u.home.display().to_string()),
            ]
        });
        let script = format!("{} exec \"$@\" {}", call.shell, call.redirect);
        let mut c = self.as_user(u, call.setpriv);
        c.args(["/bin/sh", "-c", &script, "sh", "/usr/bin/env", "-i"])
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(self.wrapper());
        if let Some(sock) = call.devlog {
            c = with_devlog(&c, sock, &self.canary);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            // A runner that refuses early closes its end.
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        answer(out)
    }

    pub(crate) fn wrap(&self, u: &User, request: &Value) -> Answer {
        self.wrap_with(u, request.to_string().as_bytes(), &Call::default())
    }

    /// Rows of the runner's store, read as the service account (so nothing in the state
    /// directory ever belongs to root).
    pub(crate) fn sql(&self, query: &str) -> Vec<Value> {
        assert!(self.db().exists(), "no store at {}", self.db().display());
        let mut c = Command::new("/usr/bin/setpriv");
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg(format!("--reuid={}", self.svc.uid))
            .arg(format!("--regid={}", self.svc.gid))
            .arg("--clear-groups")
            .args(["--", "/bin/sh", "-c"])
            .arg("umask 077; exec /usr/bin/sqlite3 -json -cmd '.timeout 10000' \"$0\" \"$1\"")
            .arg(self.db())
            .arg(query);
        let out = output(&mut c).ok();
        if out.stdout.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str::<Vec<Value>>(&out.stdout)
            .unwrap_or_else(|e| panic!("sqlite3 -json ({e}): {out}"))
    }

    /// Nothing half done in the store, and the store and moto agree: no cluster stuck in
    /// `reserved` or `requested`, no quota held by an ended cluster, and the live instances of
    /// moto exactly those the store records as live.
    pub(crate) fn assert_settled(&self, moto: &Moto) {
        let stuck = self.sql(
            "SELECT owner, name, state FROM clusters WHERE state IN ('reserved', 'requested', 'terminating')",
        );
        assert!(stuck.is_empty(), "half-recorded launches: {stuck:?}");
        let held = self.sql(
            "SELECT r.owner, c.name, c.state FROM reservations r JOIN clusters c ON c.id = r.cluster_id
             WHERE r.released_at IS NULL AND c.state NOT IN ('running', 'configured')",
        );
        assert!(held.is_empty(), "quota held by ended clusters: {held:?}");
        let recorded: BTreeSet<String> = self
            .sql(
                "SELECT n.instance_id AS id FROM nodes n JOIN clusters c ON c.id = n.cluster_id
                 WHERE c.state IN ('running', 'configured') AND n.ended_at IS NULL",
            )
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let live: BTreeSet<String> = moto
            .instances(&[])
            .iter()
            .filter(|i| is_live(i))
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect();
        assert_eq!(
            recorded, live,
            "the store's live nodes and moto's live instances"
        );
    }

    /// The cluster ids a launch of `name` by `owner` got in the runner's store.
    pub(crate) fn cluster_id(&self, owner: &User, name: &str) -> i64 {
        let rows = self.sql(&format!(
            "SELECT id FROM clusters WHERE owner = '{}' AND name = '{name}' ORDER BY id DESC LIMIT 1",
            owner.name
        ));
        rows.first()
            .and_then(|r| r["id"].as_i64())
            .unwrap_or_else(|| panic!("no cluster {name} of {} in the store", owner.name))
    }

    /// The audit trail, as the instructor reads it (`admin audit --json`).
    pub(crate) fn audit(&self) -> Vec<Value> {
        let out = self
            .stratus(&self.instructor, &["admin", "audit", "--json"])
            .ok();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

/// `cmd` run in a mount namespace of its own whose `/dev` is a tmpfs holding the usual devices
/// and, as `/dev/log`, the socket `sock`: what the process sends to syslog reaches the test,
/// and nothing changes outside (there is no syslog daemon on a test machine to read back).
pub(crate) fn with_devlog(cmd: &Command, sock: &Path, scratch: &Path) -> Command {
    let real = scratch.join("dev-real");
    let _ = fs::create_dir(&real);
    let script = format!(
        "set -e; mount --rbind /dev {real}; mount -t tmpfs -o mode=755 tmpfs /dev; \
         for d in null zero full random urandom tty; do touch /dev/$d; mount --bind {real}/$d /dev/$d; done; \
         touch /dev/log; mount --bind {sock} /dev/log; exec \"$@\"",
        real = real.display(),
        sock = sock.display()
    );
    let mut c = Command::new("/usr/bin/unshare");
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    c
}

/// A datagram socket that collects what is sent to it, as syslog's `/dev/log` would.
pub(crate) struct Syslog {
    pub(crate) path: PathBuf,
    pub(crate) lines: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Syslog {
    pub(crate) fn start(path: PathBuf) -> Syslog {
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lines, stop) = (lines.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        lines.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
        };
        Syslog {
            path,
            lines,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn lines(&self) -> Vec<Vec<u8>> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

pub(crate) fn answer(out: Output) -> Answer {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a protocol line ({e}): {l}"))
        })
        .collect();
    Answer {
        code: out.status.code().unwrap_or(-1),
        lines,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn launch(name: &str, workers: u32, profile: &str) -> Value {
    json!({"action": "launch", "name": name, "workers": workers, "profile": profile, "configure": false})
}

pub(crate) fn is_live(i: &Instance) -> bool {
    !matches!(
        i.state().and_then(|s| s.name()),
        Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
    )
}

/// Every instance moto has of this owner's cluster, in any state.
pub(crate) fn instances(moto: &Moto, owner: &User, cluster: &str) -> Vec<Instance> {
    moto.instances(&[
        ("tag:stratus:owner", &owner.name),
        ("tag:stratus:cluster", cluster),
    ])
}

pub(crate) fn live_instances(moto: &Moto, owner: &User, cluster: &str) -> usize {
    instances(moto, owner, cluster)
        .iter()
        .filter(|i| is_live(i))
        .count()
}

/// moto holds nothing at all for this cluster: no instance in any state, no group, no key pair.
pub(crate) fn assert_nothing_created(moto: &Moto, owner: &User, cluster: &str) {
    let i = instances(moto, owner, cluster);
    assert!(i.is_empty(), "{cluster} of {}: {i:#?}", owner.name);
    assert!(
        moto.groups_named(&format!("stratus-{}@{cluster}", owner.name))
            .is_empty(),
        "a security group for {cluster}"
    );
    assert!(
        moto.key_pairs_named(&format!("{}@{cluster}", owner.name))
            .is_empty(),
        "a key pair for {cluster}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. The policy.

pub(crate) const STRICT: &str = r#"
instructors = ["INSTRUCTOR"]
[class]
max_units = 5
[units]
"m5.large" = 1
"m5.xlarge" = 2
[default]
max_units = 4
max_clusters = 2
max_nodes = 3
profiles = ["tiny", "wide", "odd"]
"#;

#[test]
fn a_launch_within_quota_succeeds_and_each_limit_refuses_with_nothing_created() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 2);
    site.set_policy(STRICT);
    let (s1, s2) = (site.student(0), site.student(1));

    // Within quota: 1 master + 1 worker of m5.large, 2 units of s1's 4.
    let out = site
        .stratus(
            s1,
            &["launch-cluster", "a", "1", "-p", "tiny", "--no-configure"],
        )
        .ok();
    assert!(
        out.stdout.contains("cluster a is up: 1 master + 1 workers"),
        "{out}"
    );
    let a = instances(&moto, s1, "a");
    assert_eq!(a.len(), 2, "{a:#?}");
    for i in &a {
        assert!(is_live(i));
        assert_eq!(tag(i.tags(), "stratus:owner"), Some(s1.name.as_str()));
        assert_eq!(tag(i.tags(), "stratus:profile"), Some("tiny"));
    }

    // (who, what, the limit it hits, or how many instances it launches).
    let steps: Vec<(&User, Vec<&str>, Result<usize, String>)> = vec![
        (
            s1,
            vec!["launch-cluster", "nodes", "3", "-p", "tiny"],
            Err(format!(
                "max_nodes for {} is 3 per cluster, master included; this launch asks for 4",
                s1.name
            )),
        ),
        (
            s1,
            vec!["launch-cluster", "units", "1", "-p", "wide"],
            Err(format!(
                "max_units for {} is 4; 2 are in use, and this launch needs 3",
                s1.name
            )),
        ),
        (
            s1,
            vec!["launch-cluster", "prof", "1", "-p", "forbidden"],
            Err(format!(
                "profile forbidden is not one {} may use (odd, tiny, wide)",
                s1.name
            )),
        ),
        (
            s1,
            vec!["launch-cluster", "type", "1", "-p", "odd"],
            Err(
                "instance type t2.nano (the workers of profile odd) is not listed under [units]"
                    .into(),
            ),
        ),
        // A second cluster (1 unit) is fine; a third is not.
        (s1, vec!["launch-master", "b", "-p", "tiny"], Ok(1)),
        (
            s1,
            vec!["launch-master", "clusters", "-p", "tiny"],
            Err(format!(
                "max_clusters for {} is 2; 2 are live, and this launch would make 3",
                s1.name
            )),
        ),
        // s1 holds 3 units of the class's 5; s2's 2 fill it.
        (s2, vec!["launch-cluster", "d", "1", "-p", "tiny"], Ok(2)),
    ];
    for (user, mut args, want) in steps {
        args.push("--no-configure");
        let out = site.stratus(user, &args);
        let name = args[1];
        match want {
            Ok(n) => {
                out.ok();
                assert_eq!(live_instances(&moto, user, name), n, "{name}");
            }
            Err(needle) => {
                out.refused(&format!(
                    "refused by the policy ({}): {needle}",
                    site.policy().display()
                ));
                assert_nothing_created(&moto, user, name);
            }
        }
    }
    let out = site.stratus(
        s2,
        &["launch-master", "class", "-p", "tiny", "--no-configure"],
    );
    out.refused("the class's max_units is 5; 5 are in use by everyone, and this launch needs 1");
    assert_nothing_created(&moto, s2, "class");

    // What each holds, as the runner counts it and as moto shows it.
    let q = site.stratus(s1, &["quota", "--json"]).ok().json();
    assert_eq!(q["used"]["units"], 3.0, "{q:#}");
    assert_eq!(q["used"]["clusters"], 2, "{q:#}");
    assert_eq!(q["left"]["units"], 1.0, "{q:#}");
    assert_eq!(
        live_instances(&moto, s1, "a") + live_instances(&moto, s1, "b"),
        3
    );
    assert_eq!(live_instances(&moto, s2, "d"), 2);
    // Every refusal is in the audit trail, with the limit it hit.
    let refused: Vec<String> = site
        .audit()
        .iter()
        .filter(|r| r["decision"] == "refused")
        .map(|r| {
            // Each named owner/name, the owner the one who asked.
            let cluster = r["cluster"].as_str().unwrap_or_default();
            let owner = format!("{}/", r["user"].as_str().unwrap_or_default());
            cluster
                .strip_prefix(&owner)
                .unwrap_or_else(|| panic!("{cluster} is not {owner}…"))
                .to_owned()
        })
        .collect();
    assert_eq!(
        refused,
        ["nodes", "units", "prof", "type", "clusters", "class"],
        "refusals in the audit trail"
    );
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrency.

pub(crate) const CROWDED: &str = r#"
instructors = ["INSTRUCTOR"]
[class]
max_units = 24
[units]
"m5.large" = 1
[default]
max_units = 5
max_clusters = 2
max_nodes = 4
profiles = ["tiny"]
"#;

/// The limits of a crowded class's policy that the concurrency tests check what ran against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crowd {
    pub max_units: usize,
    pub max_clusters: usize,
    pub max_nodes: usize,
    pub class_max: usize,
}

/// One launch of a crowd: the student's index, the cluster, its nodes, and how it ended.
pub(crate) type CrowdLaunch = (usize, String, usize, Out);

/// `per_student` launches by every student of `site`, 1 to 4 workers of profile `tiny` (2 to 5
/// nodes, so some break max_nodes), all started before any ends; each once it ended.
pub(crate) fn launch_at_once(site: &Site, per_student: usize) -> Vec<CrowdLaunch> {
    let mut running = Vec::new();
    for (u, user) in site.students.iter().enumerate() {
        for j in 0..per_student {
            let workers = (u + j) % 4 + 1;
            let name = format!("c{j}");
            let child = site
                .stratus_cmd(
                    user,
                    &[
                        "launch-cluster",
                        &name,
                        &workers.to_string(),
                        "-p",
                        "tiny",
                        "--no-configure",
                    ],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            running.push((u, name, workers + 1, child));
        }
    }
    let started = Instant::now();
    let results = running
        .into_iter()
        .map(|(u, name, nodes, child)| {
            let out = Out::of(format!("{u} {name}"), child.wait_with_output().unwrap());
            (u, name, nodes, out)
        })
        .collect();
    eprintln!(
        "{} concurrent launches took {:?}",
        site.students.len() * per_student,
        started.elapsed()
    );
    results
}

/// Each launch ended launched or refused by a limit, nothing failed; what moto runs, per owner
/// and in all, is within `crowd`; every launch that said yes has exactly its nodes, every
/// refusal nothing; no refusal came while there was room; and the reservations say the same.
/// `context` is added to the messages (the class service's log, say).
pub(crate) fn assert_within_the_policy(
    site: &Site,
    moto: &Moto,
    results: &[CrowdLaunch],
    crowd: Crowd,
    context: &dyn Fn() -> String,
) {
    let Crowd {
        max_units,
        max_clusters,
        max_nodes,
        class_max,
    } = crowd;
    let limits = [
        "max_units for",
        "max_clusters for",
        "max_nodes for",
        "the class's max_units",
    ];
    for (_, _, _, out) in results {
        match out.code {
            0 => {}
            2 => assert!(
                limits.iter().any(|l| out.stderr.contains(l)),
                "refused, but not by a limit: {out}\n{}",
                context()
            ),
            _ => panic!("neither launched nor refused: {out}\n{}", context()),
        }
    }

    let mut units = vec![0usize; site.students.len()];
    let mut clusters = vec![0usize; site.students.len()];
    for (u, name, nodes, out) in results {
        let user = &site.students[*u];
        let live = live_instances(moto, user, name);
        if out.code == 0 {
            assert_eq!(live, *nodes, "{}'s {name}: {out}", user.name);
            assert!(*nodes <= max_nodes);
            units[*u] += live;
            clusters[*u] += 1;
        } else {
            assert_nothing_created(moto, user, name);
        }
    }
    let total: usize = units.iter().sum();
    let everything = moto.instances(&[]).iter().filter(|i| is_live(i)).count();
    assert_eq!(everything, total, "instances no launch accounts for");
    for (u, user) in site.students.iter().enumerate() {
        let owned = moto
            .instances(&[("tag:stratus:owner", &user.name)])
            .iter()
            .filter(|i| is_live(i))
            .count();
        assert_eq!(owned, units[u], "{}", user.name);
        assert!(owned <= max_units, "{} runs {owned} units", user.name);
        assert!(
            clusters[u] <= max_clusters,
            "{} runs {} clusters",
            user.name,
            clusters[u]
        );
    }
    assert!(total <= class_max, "the class runs {total} units");

    // No refusal while there was room: usage only grew, so what each refusal asked for does
    // not fit what is in use now either.
    for (u, name, nodes, out) in results {
        if out.code != 2 {
            continue;
        }
        let fits = *nodes <= max_nodes
            && units[*u] + nodes <= max_units
            && clusters[*u] < max_clusters
            && total + nodes <= class_max;
        assert!(
            !fits,
            "{name} of {} ({nodes} nodes) was refused with room left: {out}",
            site.students[*u].name
        );
    }
    let launched = results.iter().filter(|r| r.3.code == 0).count();
    eprintln!("{launched} launched, {total} units in all");
    assert!(launched > 0);

    // The ledger says the same.
    let open = site.sql(
        "SELECT owner, SUM(units) AS units FROM reservations WHERE released_at IS NULL GROUP BY owner",
    );
    let ledger: BTreeMap<String, usize> = open
        .iter()
        .map(|r| {
            (
                r["owner"].as_str().unwrap().to_owned(),
                r["units"].as_u64().unwrap() as usize / 1000,
            )
        })
        .collect();
    for (u, user) in site.students.iter().enumerate() {
        assert_eq!(
            ledger.get(&user.name).copied().unwrap_or(0),
            units[u],
            "{}'s reservations",
            user.name
        );
    }
}

#[test]
fn fifty_concurrent_launches_from_ten_users_never_exceed_any_limit() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 10);
    site.set_policy(CROWDED);
    let crowd = Crowd {
        max_units: 5,
        max_clusters: 2,
        max_nodes: 4,
        class_max: 24,
    };
    // Five launches per user, all started before any ends.
    let results = launch_at_once(&site, 5);
    assert_within_the_policy(&site, &moto, &results, crowd, &String::new);
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 3. Ownership.

#[test]
fn a_student_cannot_see_or_touch_another_students_cluster_and_the_instructor_can() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 2);
    let (s1, s2, ins) = (site.student(0), site.student(1), &site.instructor);
    site.stratus(s1, &["launch-cluster", "own", "1", "--no-configure"])
        .ok();
    assert_eq!(live_instances(&moto, s1, "own"), 2);

    // Through the CLI, s2's names are s2's own: s1's cluster does not exist for s2.
    let listed = site.stratus(s2, &["list", "--json"]).ok().json();
    assert_eq!(listed, json!([]), "s2 sees s1's clusters");
    for args in [
        &["list", "own"][..],
        &["terminate-cluster", "own", "--yes"],
        &["exec", "own", "--", "true"],
        &["launch-slaves", "own", "1"],
    ] {
        site.stratus(s2, args).refused("no cluster named own");
    }

    // Forged requests on the wrapper's stdin, naming s1.
    let other = s1.name.as_str();
    for (request, needle) in [
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
            json!({"action": "usage", "everyone": true}),
            "only instructors may see everyone's usage".into(),
        ),
        (
            json!({"action": "audit"}),
            "only instructors may read the audit trail".into(),
        ),
        (
            json!({"action": "key", "name": "own"}),
            "no cluster named own".into(),
        ),
        // A launch carries no owner at all: the runner takes it from the real uid.
        (
            json!({"action": "launch", "name": "own", "workers": 1, "owner": other}),
            "malformed request: unknown field `owner`".into(),
        ),
    ] {
        site.wrap(s2, &request).refused(&needle);
    }
    site.stratus(s2, &["admin", "audit"])
        .refused("only instructors may read the audit trail");
    // Root may, named in the policy or not (it can read the database anyway), and sees the
    // refusals above.
    let home = site.root.join("root-home");
    fs::create_dir_all(&home).unwrap();
    let out = output(
        Command::new(site.cli())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("STRATUS_CONFIG", site.config())
            .args(["admin", "audit", "--json"]),
    )
    .ok();
    assert!(
        out.stdout.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["user"] == s2.name.as_str() && v["decision"] == "refused" && v["action"] == "audit"
        }),
        "{out}"
    );
    // Nothing of s1's changed.
    let own = instances(&moto, s1, "own");
    assert_eq!(own.len(), 2);
    assert!(own.iter().all(is_live));

    // s2 may have a cluster of the same name: another one.
    site.stratus(s2, &["launch-master", "own", "--no-configure"])
        .ok();
    let names = |out: Out| -> Vec<(String, String)> {
        let v = out.json();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["owner"].as_str().unwrap().to_owned(),
                    c["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        names(site.stratus(s1, &["list", "--json"]).ok()),
        [(s1.name.clone(), "own".to_owned())]
    );
    assert_eq!(
        names(site.stratus(s2, &["list", "--json"]).ok()),
        [(s2.name.clone(), "own".to_owned())]
    );

    // The instructor sees and acts on anyone's clusters, by naming the owner or everyone.
    let r = site.wrap(ins, &json!({"action": "list", "owner": other}));
    let seen = r.result().as_array().unwrap().clone();
    assert_eq!(seen.len(), 1, "{r}");
    assert_eq!(
        (seen[0]["owner"].as_str(), seen[0]["name"].as_str()),
        (Some(other), Some("own"))
    );
    let r = site.wrap(ins, &json!({"action": "list", "everyone": true}));
    let mut owners: Vec<&str> = r
        .result()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["owner"].as_str().unwrap())
        .collect();
    owners.sort();
    let mut want = vec![s1.name.as_str(), s2.name.as_str()];
    want.sort();
    assert_eq!(owners, want, "{r}");
    let r = site.wrap(ins, &json!({"action": "usage", "everyone": true}));
    assert!(r.result().is_array(), "{r}");
    // The key goes to the owner alone, instructors included.
    site.wrap(ins, &json!({"action": "key", "name": "own"}))
        .refused("no cluster named own");
    let r = site.wrap(
        ins,
        &json!({"action": "terminate", "name": "own", "owner": other}),
    );
    assert_eq!(r.result()["terminated"], 2, "{r}");
    assert!(instances(&moto, s1, "own").iter().all(|i| !is_live(i)));
    assert_eq!(live_instances(&moto, s2, "own"), 1, "s2's own is untouched");

    // The audit trail names who did what to whose cluster.
    let audit = site.audit();
    let done_by = |user: &str, action: &str| {
        audit
            .iter()
            .filter(|r| r["user"] == user && r["action"] == action && r["decision"] == "done")
            .count()
    };
    assert_eq!(done_by(&ins.name, "terminate"), 1, "{audit:#?}");
    assert_eq!(done_by(&s2.name, "terminate"), 0, "{audit:#?}");
    let refused_s2 = audit
        .iter()
        .filter(|r| r["user"] == s2.name.as_str() && r["decision"] == "refused")
        .count();
    assert!(refused_s2 >= 10, "s2's refusals are audited: {audit:#?}");
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 4. Who may read what.

/// `cat PATH` as `u` fails with "Permission denied".
pub(crate) fn assert_unreadable(site: &Site, u: &User, path: &Path) {
    assert!(
        path.exists(),
        "{} is not there to be refused",
        path.display()
    );
    let out = site.sh(u, &format!("cat '{}'", path.display()));
    assert_ne!(out.code, 0, "{} read {}: {out}", u.name, path.display());
    assert!(out.stderr.contains("Permission denied"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

pub(crate) fn mode_of(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.mode() & 0o7777)
}

#[test]
fn the_secrets_stay_with_the_service_account_and_each_key_with_its_owner() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 2);
    let (s1, s2) = (site.student(0), site.student(1));
    let hv = Hypervisor::start(HypervisorConfig {
        endpoint: moto.endpoint.clone(),
        cluster: Some("web".into()),
        user: "ubuntu".into(),
        port: 2200,
        never_boot: BTreeSet::new(),
        console: Default::default(),
    });

    // A configured launch: the runner reaches every node over SSH with the cluster key.
    let out = site.stratus(s1, &["launch-cluster", "web", "1"]).ok();
    assert!(
        out.stdout
            .contains("cluster web is up: 1 master + 1 workers"),
        "{out}"
    );
    let id = site.cluster_id(s1, "web");

    // The service account's files: the credentials, the store, the runner's copy of the key.
    let runner_key = site.state().join(format!("clusters/{id}-web/id_ed25519"));
    assert_eq!(mode_of(&site.credentials()), (site.svc.uid, 0o600));
    assert_eq!(mode_of(&site.state()), (site.svc.uid, 0o700));
    assert_eq!(mode_of(&runner_key).0, site.svc.uid);
    for u in [s1, s2, &site.instructor] {
        for path in [site.credentials(), site.db(), runner_key.clone()] {
            assert_unreadable(&site, u, &path);
        }
        let out = site.sh(u, &format!("ls '{}'", site.state().display()));
        assert!(
            out.code != 0 && out.stderr.contains("Permission denied"),
            "{out}"
        );
    }

    // The owner holds the cluster key, mode 0600, in a directory of their own state.
    let keys = s1
        .home
        .join(format!(".local/share/stratus/remote/clusters/{id}-web"));
    let key = keys.join("id_ed25519");
    assert_eq!(mode_of(&key), (s1.uid, 0o600));
    assert_eq!(mode_of(&keys), (s1.uid, 0o700));
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        fs::read_to_string(&runner_key).unwrap(),
        "the key handed over is the cluster's"
    );
    assert_unreadable(&site, s2, &key);

    // exec runs as the owner, with that key and the pinned host keys.
    let out = site
        .stratus(s1, &["exec", "web", "--all", "--", "cat", "role", "owner"])
        .ok();
    assert!(out.stdout.contains("[web-master] master\n"), "{out}");
    assert!(out.stdout.contains("[web-worker-1] worker\n"), "{out}");
    assert!(
        out.stdout.contains(&format!("[web-master] {}\n", s1.name)),
        "{out}"
    );
    site.stratus(s2, &["exec", "web", "--", "cat", "role"])
        .refused("no cluster named web");

    // The key again, for a second machine of the same user: to the owner only.
    fs::remove_dir_all(&keys).unwrap();
    let out = site.stratus(s1, &["exec", "web", "--", "cat", "role"]).ok();
    assert_eq!(out.stdout, "master\n", "{out}");
    assert_eq!(mode_of(&key), (s1.uid, 0o600));

    site.stratus(s1, &["terminate-cluster", "web", "--yes"])
        .ok();
    let report = eventually(Duration::from_secs(20), || {
        let r = hv.report();
        (r.stopped.len() == 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("the hypervisor did not stop both nodes: {:?}", hv.report()));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 5. A hostile caller.

/// A TCP listener that counts who connects (and reads what they send), until dropped.
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) hits: Arc<AtomicUsize>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    pub(crate) fn start() -> Listener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                            let _ = s.read(&mut [0u8; 4096]);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Listener {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A shared object whose constructor creates `marker`: proof, if the marker appears, that a
/// process loaded it. `None` without a C compiler.
pub(crate) fn preload_library(dir: &Path, marker: &Path) -> Option<PathBuf> {
    let src = dir.join("preload.c");
    let so = dir.join("preload.so");
    fs::write(
        &src,
        format!(
            "#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void ran(void) {{ int fd = open(\"{}\", O_CREAT | O_WRONLY, 0666); if (fd >= 0) close(fd); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .ok()?;
    if !built.status.success() {
        return None;
    }
    fs::set_permissions(&so, fs::Permissions::from_mode(0o755)).unwrap();
    // The canary works: a plain process that is given it runs it.
    let out = Command::new("/usr/bin/env")
        .arg(format!("LD_PRELOAD={}", so.display()))
        .arg("/bin/true")
        .output()
        .unwrap();
    assert!(
        out.status.success() && marker.exists(),
        "the preload canary does not work"
    );
    fs::remove_file(marker).unwrap();
    Some(so)
}

#[test]
fn a_hostile_environment_changes_nothing_about_a_launch() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    let canary = &site.canary;
    let listener = Listener::start();
    let evil = listener.url();

    // What a caller could plant: a library to preload, an AWS config whose credential_process
    // leaves a marker, credentials of its own, a site config of its own, a CA bundle.
    let preloaded = canary.join("preload-ran");
    let so = preload_library(canary, &preloaded)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| canary.join("missing.so").display().to_string());
    let process_ran = canary.join("credential-process-ran");
    let aws_config = canary.join("aws-config");
    fs::write(
        &aws_config,
        format!(
            "[default]\ncredential_process = /usr/bin/touch {m}\nendpoint_url = {evil}\nregion = eu-west-3\n\
             [profile evil]\ncredential_process = /usr/bin/touch {m}\nendpoint_url = {evil}\n",
            m = process_ran.display()
        ),
    )
    .unwrap();
    let aws_creds = canary.join("aws-credentials");
    fs::write(
        &aws_creds,
        "[default]\naws_access_key_id = AKIAEVIL\naws_secret_access_key = evil\n",
    )
    .unwrap();
    let stratus_config = canary.join("config.toml");
    fs::write(
        &stratus_config,
        format!(
            "provider = \"ec2\"\nstate_dir = \"{c}\"\n[prices]\n\"m5.large\" = 0.112\nebs_gp3_gb_month = 0.0928\n[ec2]\nregion = \"eu-west-3\"\nendpoint_url = \"{evil}\"\ncredentials_file = \"{}\"\n",
            aws_creds.display(),
            c = canary.display()
        ),
    )
    .unwrap();
    fs::write(canary.join("ca.pem"), "not a certificate\n").unwrap();
    for f in ["aws-config", "aws-credentials", "config.toml", "ca.pem"] {
        fs::set_permissions(canary.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let c = canary.display().to_string();
    let hostile: Vec<(String, String)> = [
        ("LD_PRELOAD", so.as_str()),
        ("LD_AUDIT", so.as_str()),
        ("LD_LIBRARY_PATH", c.as_str()),
        ("GCONV_PATH", c.as_str()),
        (
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=1:glibc.malloc.check=3",
        ),
        ("PATH", &format!("{c}:/usr/bin:/bin")),
        ("IFS", "/"),
        ("HOME", c.as_str()),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("TMPDIR", c.as_str()),
        ("TZ", &format!("{c}/tz")),
        ("LC_ALL", "../../../tmp/evil"),
        ("TERM", "/tmp/evil"),
        ("RUST_LOG", "trace"),
        ("RUST_BACKTRACE", "full"),
        ("AWS_ENDPOINT_URL", evil.as_str()),
        ("AWS_ENDPOINT_URL_EC2", evil.as_str()),
        ("AWS_CONFIG_FILE", &aws_config.display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            &aws_creds.display().to_string(),
        ),
        ("AWS_PROFILE", "evil"),
        ("AWS_ACCESS_KEY_ID", "AKIAEVIL"),
        ("AWS_SECRET_ACCESS_KEY", "evil"),
        ("AWS_SESSION_TOKEN", "evil"),
        ("AWS_REGION", "eu-west-3"),
        ("AWS_DEFAULT_REGION", "eu-west-3"),
        ("AWS_CA_BUNDLE", &format!("{c}/ca.pem")),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", evil.as_str()),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", evil.as_str()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", &format!("{c}/token")),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/evil"),
        ("STRATUS_CONFIG", &stratus_config.display().to_string()),
        ("STRATUS_HOME", c.as_str()),
        ("STRATUS_TEST_PAUSE_AT", "requested"),
        ("XDG_DATA_HOME", c.as_str()),
        ("HTTP_PROXY", evil.as_str()),
        ("HTTPS_PROXY", evil.as_str()),
        ("ALL_PROXY", evil.as_str()),
        ("http_proxy", evil.as_str()),
        ("https_proxy", evil.as_str()),
        ("all_proxy", evil.as_str()),
        ("NO_PROXY", ""),
        ("SSL_CERT_FILE", &format!("{c}/ca.pem")),
        ("SSL_CERT_DIR", c.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    let runs_before = moto.faults().count("RunInstances");
    let calm = site.wrap(s1, &launch("calm", 1, "tiny"));
    let calm_runs = moto.faults().count("RunInstances") - runs_before;
    let storm = site.wrap_with(
        s1,
        launch("storm", 1, "tiny").to_string().as_bytes(),
        &Call {
            env: Some(hostile),
            ..Call::default()
        },
    );
    let storm_runs = moto.faults().count("RunInstances") - runs_before - calm_runs;

    // The same launch, the same answer, the same calls to the same EC2.
    let (a, b) = (calm.result(), storm.result());
    assert_eq!(calm.stderr, "", "{calm}");
    assert_eq!(storm.stderr, calm.stderr, "{storm}");
    // The same lines but for progress (bars and waiting lines, which depend on timing and name
    // the cluster).
    let said = |a: &Answer| -> Vec<String> {
        a.lines
            .iter()
            .filter(|l| {
                l.get("progress").is_none()
                    && l.get("waiting").is_none()
                    && l.get("result").is_none()
            })
            .map(|l| l.to_string())
            .collect()
    };
    assert_eq!(said(&storm), said(&calm), "{storm}\n{calm}");
    for (x, name) in [(a, "calm"), (b, "storm")] {
        let c = &x["cluster"];
        assert_eq!(c["name"], name);
        assert_eq!(c["owner"], s1.name.as_str());
        assert_eq!(c["profile"], "tiny");
        assert_eq!(c["provider"], "ec2");
        assert_eq!(c["state"], "running");
        assert_eq!(c["nodes"].as_array().unwrap().len(), 2);
        assert!(
            x["private_key"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
    }
    assert_eq!((calm_runs, storm_runs), (2, 2), "one RunInstances per role");
    let shape = |name: &str| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = instances(&moto, s1, name)
            .iter()
            .filter(|i| is_live(i))
            .map(|i| {
                (
                    tag(i.tags(), "stratus:role").unwrap_or_default().to_owned(),
                    i.instance_type()
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                    i.placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(shape("storm"), shape("calm"));
    assert_eq!(shape("storm").len(), 2);

    // Nothing the caller planted ran or was reached.
    assert_eq!(
        listener.hits(),
        0,
        "the caller's endpoint or proxy was contacted"
    );
    assert!(!process_ran.exists(), "the caller's credential_process ran");
    assert!(
        !preloaded.exists(),
        "the caller's LD_PRELOAD library was loaded"
    );
    let mut planted: Vec<String> = fs::read_dir(canary)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    planted.retain(|f| !f.starts_with("preload."));
    planted.sort();
    assert_eq!(
        planted,
        ["aws-config", "aws-credentials", "ca.pem", "config.toml"],
        "something wrote into the caller's directories"
    );
    // The listener is a working canary: the student's own CLI, which trusts its caller's
    // environment, does go there when told to.
    let mut own = site.as_user(s1, &[]);
    own.arg("/usr/bin/env")
        .arg("-i")
        .arg(format!("HOME={}", s1.home.display()))
        .arg(format!("STRATUS_CONFIG={}", stratus_config.display()))
        .arg(format!("STRATUS_HOME={}", s1.home.join("own").display()))
        .arg(site.cli())
        .args(["launch-cluster", "own", "1", "--no-configure"]);
    let mut child = own
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reached = eventually(Duration::from_secs(20), || {
        (listener.hits() > 0).then_some(())
    });
    let _ = stratus::sys::kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    assert!(reached.is_some(), "the canary listener saw nothing");

    let audit = site.audit();
    for name in ["calm", "storm"] {
        assert!(
            audit
                .iter()
                .any(|r| r["cluster"] == format!("{}/{name}", s1.name)
                    && r["decision"] == "done"
                    && r["user"] == s1.name.as_str()),
            "{audit:#?}"
        );
    }
    site.assert_settled(&moto);
}

#[test]
fn hostile_input_is_refused_in_bounded_time_and_launches_nothing() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 2);
    let (s1, s2) = (site.student(0), site.student(1));

    // fds 0-2 closed: the runner gets /dev/null for each, so nothing it opens lands on them.
    let r = site.wrap_with(
        s1,
        b"",
        &Call {
            redirect: "<&- >&- 2>&-",
            ..Call::default()
        },
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (2, "", ""),
        "{r}"
    );
    // Only stdout and stderr closed: the launch runs, and its output went nowhere, not into the
    // store it opened.
    let r = site.wrap_with(
        s1,
        launch("nofd", 1, "tiny").to_string().as_bytes(),
        &Call {
            redirect: ">&- 2>&-",
            ..Call::default()
        },
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r}");
    assert_eq!(live_instances(&moto, s1, "nofd"), 2);
    assert_eq!(
        site.sql("PRAGMA integrity_check"),
        [json!({"integrity_check": "ok"})]
    );

    // 1 GiB on stdin: refused after reading a little over 1 MiB, not after reading it all.
    let started = Instant::now();
    let mut c = site.as_user(s1, &[]);
    c.args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin"])
        .arg(site.wrapper())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 16];
        let mut sent = 0usize;
        while sent < 1 << 30 {
            match input.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let out = child.wait_with_output().unwrap();
    let sent = writer.join().unwrap();
    let r = answer(out);
    r.refused("the request is larger than 1048576 bytes; refused unread");
    assert!(
        sent < 64 << 20,
        "the runner read {sent} bytes of a 1 GiB request"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // Malformed, oversized, unknown fields, a profile by path: each refused with exit 2.
    let big = "x".repeat(2 << 20);
    let near = "y".repeat(900 << 10);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"action\":\"launch\",".to_vec(), "malformed request"),
        (b"not json".to_vec(), "malformed request"),
        (b"\xff\xfe\x00".to_vec(), "malformed request"),
        (b"  \n\t ".to_vec(), "no request on stdin"),
        (
            format!(
                "{}{}",
                launch("twice", 1, "tiny"),
                launch("twice", 1, "tiny")
            )
            .into_bytes(),
            "malformed request: trailing characters",
        ),
        (
            json!({"action": "launch", "name": "big", "workers": 1, "env": {"X": big}})
                .to_string()
                .into_bytes(),
            "larger than 1048576 bytes",
        ),
        (
            json!({"action": "launch", "name": "near", "workers": 1, "env": {"X": near}})
                .to_string()
                .into_bytes(),
            "--env: at most 64 values and 64 KiB in all",
        ),
        (
            json!({"action": "launch", "name": "unk", "workers": 1, "user": "root"})
                .to_string()
                .into_bytes(),
            "malformed request: unknown field `user`",
        ),
        (
            json!({"action": "launch", "name": "unk", "workers": 1, "profile_path": "/etc/passwd"})
                .to_string()
                .into_bytes(),
            "malformed request: unknown field `profile_path`",
        ),
        (
            json!({"action": "rm", "name": "x"})
                .to_string()
                .into_bytes(),
            "malformed request: unknown variant `rm`",
        ),
        (
            // The parser's message quotes it: the audited reason is cut short.
            json!({"action": "z".repeat(5000)}).to_string().into_bytes(),
            "malformed request: unknown variant `zzz",
        ),
        (
            json!({"action": "launch", "name": "neg", "workers": -1})
                .to_string()
                .into_bytes(),
            "malformed request",
        ),
        (
            json!({"action": "launch", "name": "huge", "workers": u32::MAX, "profile": "tiny"})
                .to_string()
                .into_bytes(),
            "4294967295 workers is more than profile tiny allows (max_workers = 8)",
        ),
        (
            json!({"action": "launch", "name": "Bad Name", "workers": 1})
                .to_string()
                .into_bytes(),
            "invalid cluster name",
        ),
        (
            json!({"action": "terminate", "name": "nofd", "owner": s1.name})
                .to_string()
                .into_bytes(),
            "only instructors may act on another user's clusters",
        ),
    ];
    for (input, needle) in &bad {
        let r = site.wrap_with(s2, input, &Call::default());
        r.refused(needle);
    }
    // A request that cannot be read is a decision too: one refused row each, with the reason.
    let unreadable: Vec<&str> = bad
        .iter()
        .map(|(_, needle)| *needle)
        .filter(|n| {
            n.starts_with("malformed request")
                || n.starts_with("no request")
                || n.starts_with("larger than")
        })
        .collect();
    let rows = site.sql(&format!(
        "SELECT user, reason FROM audit WHERE action = 'request' AND decision = 'refused' \
         AND user = '{}' ORDER BY id",
        s2.name
    ));
    assert_eq!(rows.len(), unreadable.len(), "{rows:?}");
    for (row, needle) in rows.iter().zip(&unreadable) {
        let reason = row["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        assert!(reason.chars().count() <= 301, "{reason:?}");
    }
    // s1's: stdin closed (the runner read /dev/null), then 1 GiB.
    let rows = site.sql(&format!(
        "SELECT reason FROM audit WHERE action = 'request' AND user = '{}' ORDER BY id",
        s1.name
    ));
    assert_eq!(
        rows,
        [
            json!({"reason": "no request on stdin"}),
            json!({"reason": "the request is larger than 1048576 bytes; refused unread"})
        ]
    );
    // A profile is a name in the install's profile directories, never a path.
    for profile in [
        "../../etc/x",
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "tiny/../tiny",
        "tiny/node.sh.hbs",
        "./tiny",
        "",
    ] {
        let r = site.wrap(s2, &launch("path", 1, profile));
        let m = r.refused(&format!("unknown profile {profile:?}"));
        assert!(!m.contains("root:"), "{m}");
    }
    for name in ["nofd", "twice", "big", "near", "unk", "neg", "huge", "path"] {
        if name != "nofd" {
            assert_nothing_created(&moto, s1, name);
            assert_nothing_created(&moto, s2, name);
        }
    }
    assert_eq!(
        live_instances(&moto, s1, "nofd"),
        2,
        "the other owner's cluster is intact"
    );
    let rows = site.sql("SELECT owner, name FROM clusters");
    assert_eq!(rows, [json!({"owner": s1.name, "name": "nofd"})]);
    site.assert_settled(&moto);
}

#[test]
fn planted_symlinks_are_refused_and_the_runners_state_is_out_of_the_callers_reach() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    site.stratus(s1, &["launch-master", "first", "--no-configure"])
        .ok();

    // The runner's state directory (store, audit trail, keys, locks) is the service account's
    // alone: a caller cannot plant anything there, not even a link.
    let state = site.state().display().to_string();
    for u in [s1, &site.instructor] {
        for script in [
            format!("touch {state}/planted"),
            format!("ln -s /etc/passwd {state}/stratus.db-journal"),
            format!("ln -s /etc/passwd {state}/launches/planted.lock"),
            format!("mkdir {state}/clusters/99-x"),
        ] {
            let out = site.sh(u, &script);
            assert!(
                out.code != 0 && out.stderr.contains("Permission denied"),
                "{out}"
            );
        }
        assert_ne!(site.sh(u, &format!("test -w {state}")).code, 0);
    }

    // In the caller's own state: a link planted where the CLI will keep the next cluster's key
    // (the runner numbers clusters in order) is refused, not written through.
    let next = site.sql("SELECT coalesce(max(id), 0) + 1 AS id FROM clusters")[0]["id"]
        .as_i64()
        .unwrap();
    let remote = s1.home.join(".local/share/stratus/remote/clusters");
    let decoy = s1.home.join("decoy");
    site.sh(
        s1,
        &format!(
            "mkdir -p {r} {d} && ln -s {d} {r}/{next}-sym",
            r = remote.display(),
            d = decoy.display()
        ),
    )
    .ok();
    let out = site.stratus(s1, &["launch-cluster", "sym", "1", "--no-configure"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains(&format!(
            "{}/{next}-sym is a symbolic link",
            remote.display()
        )),
        "{out}"
    );
    assert_eq!(
        fs::read_dir(&decoy).unwrap().count(),
        0,
        "written through the link"
    );
    assert_eq!(
        fs::read_link(remote.join(format!("{next}-sym"))).unwrap(),
        decoy
    );
    // The launch itself is the runner's and stands; its owner can end it.
    assert_eq!(site.cluster_id(s1, "sym"), next);
    site.stratus(s1, &["terminate-cluster", "sym", "--yes"])
        .ok();

    // Links planted at the key and known_hosts files themselves are replaced, not followed.
    let next = next + 1;
    let dir = remote.join(format!("{next}-sym2"));
    let bait = s1.home.join("bait");
    site.sh(
        s1,
        &format!(
            "mkdir -m 700 {d} && echo bait > {b} && ln -s {b} {d}/id_ed25519 && ln -s {b} {d}/known_hosts",
            d = dir.display(),
            b = bait.display()
        ),
    )
    .ok();
    site.stratus(s1, &["launch-cluster", "sym2", "1", "--no-configure"])
        .ok();
    assert_eq!(fs::read_to_string(&bait).unwrap(), "bait\n");
    for f in ["id_ed25519", "known_hosts"] {
        let m = fs::symlink_metadata(dir.join(f)).unwrap();
        assert!(m.file_type().is_file(), "{f} is not a plain file now");
        assert_eq!((m.uid(), m.mode() & 0o777), (s1.uid, 0o600), "{f}");
    }

    // A link planted where the caller's own store goes: refused.
    let alt = s1.home.join("alt");
    let db_bait = s1.home.join("db-bait");
    site.sh(
        s1,
        &format!(
            "mkdir -p {a}/.local/share/stratus && echo bait > {b} && ln -s {b} {a}/.local/share/stratus/stratus.db",
            a = alt.display(),
            b = db_bait.display()
        ),
    )
    .ok();
    let out = site.sh(
        s1,
        &format!("HOME={} exec {} list", alt.display(), site.cli().display()),
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("stratus.db is a symbolic link"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&db_bait).unwrap(), "bait\n");
    site.assert_settled(&moto);
}

#[test]
fn no_new_privs_and_low_limits_get_a_clear_refusal_never_a_half_launch() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);

    // no_new_privs: the kernel would ignore the setuid bit; the wrapper says so, and the CLI
    // passes that on.
    let mut c = site.as_user(s1, &["--no-new-privs"]);
    c.arg("/usr/bin/env")
        .arg("-i")
        .args(site.login_env(s1))
        .arg(site.cli())
        .args(["launch-cluster", "nnp", "1", "--no-configure"]);
    let out = output(&mut c);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("stratus-wrap: no_new_privs is set")),
        "{out}"
    );
    assert_nothing_created(&moto, s1, "nnp");
    let r = site.wrap_with(
        s1,
        launch("nnp", 1, "tiny").to_string().as_bytes(),
        &Call {
            setpriv: &["--no-new-privs"],
            ..Call::default()
        },
    );
    r.wrapper_refused("no_new_privs is set (setpriv --no-new-privs");
    assert_nothing_created(&moto, s1, "nnp");

    // Hard limits the runner cannot raise: refused before it starts.
    for (ulimit, needle) in [
        (
            "ulimit -f 1;",
            "the caller's hard limit RLIMIT_FSIZE is 512 bytes; the runner needs at least 1 GiB",
        ),
        (
            "ulimit -n 8;",
            "the caller's hard limit RLIMIT_NOFILE is 8 open files; the runner needs at least 256",
        ),
        (
            "ulimit -t 1;",
            "the caller's hard limit RLIMIT_CPU is 1 s; the runner needs at least 600 s",
        ),
    ] {
        let r = site.wrap_with(
            s1,
            launch("lim", 1, "tiny").to_string().as_bytes(),
            &Call {
                shell: ulimit,
                ..Call::default()
            },
        );
        r.wrapper_refused(needle);
        assert_nothing_created(&moto, s1, "lim");
    }
    // Soft limits alone are raised again: the launch is complete.
    for (i, ulimit) in ["ulimit -S -f 1;", "ulimit -S -n 8;", "ulimit -S -t 1;"]
        .into_iter()
        .enumerate()
    {
        let name = format!("soft{i}");
        let r = site.wrap_with(
            s1,
            launch(&name, 1, "tiny").to_string().as_bytes(),
            &Call {
                shell: ulimit,
                ..Call::default()
            },
        );
        assert_eq!(r.result()["cluster"]["state"], "running", "{ulimit}: {r}");
        assert_eq!(live_instances(&moto, s1, &name), 2, "{ulimit}");
    }
    let rows = site.sql("SELECT name, state FROM clusters ORDER BY id");
    assert_eq!(
        rows,
        [
            json!({"name": "soft0", "state": "running"}),
            json!({"name": "soft1", "state": "running"}),
            json!({"name": "soft2", "state": "running"}),
        ]
    );
    site.assert_settled(&moto);
}

/// The pid of the runner serving a request of this install (its argv is fixed by the wrapper).
pub(crate) fn runner_pids(site: &Site) -> Vec<u32> {
    let want = [
        site.cli().display().to_string(),
        "runner".into(),
        "--config".into(),
        site.config().display().to_string(),
    ];
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args == want {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A process's state letter (`S`, `R`, `T` stopped, `Z` zombie), or `None` once it is gone.
/// Whether a CLI of this install running `subcommand` is running (not stopped) with its
/// process group in the foreground of its terminal.
pub(crate) fn cli_in_foreground(site: &Site, subcommand: &str) -> bool {
    let cli = site.cli().display().to_string();
    fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let args: Vec<String> = fs::read(e.path().join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.len() < 2 || args[0] != cli || args[1] != subcommand {
            return false;
        }
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // After the command's name: state ppid pgrp session tty_nr tpgid.
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        f.len() > 5 && matches!(f[0], "R" | "S" | "D") && f[2] == f[5]
    })
}

pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A `/proc/PID/status` field, split on whitespace.
pub(crate) fn proc_status(pid: u32, field: &str) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_caller_can_neither_kill_nor_stop_nor_read_the_runner_mid_launch() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    let faults = moto.faults();

    // The runner is inside RunInstances, held at the fault server.
    faults.hold("RunInstances");
    let child = site
        .stratus_cmd(s1, &["launch-cluster", "held", "1", "--no-configure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    faults.wait_held("RunInstances", 1, Duration::from_secs(60));
    let pids = runner_pids(&site);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    let svc = site.svc.uid.to_string();
    assert_eq!(
        proc_status(pid, "Uid"),
        [svc.as_str(); 4],
        "every uid is the service account's"
    );
    let gid = site.svc.gid.to_string();
    assert_eq!(proc_status(pid, "Gid"), [gid.as_str(); 4]);

    for signal in ["-KILL", "-STOP", "-TERM", "-INT", "-HUP", "-0"] {
        let out = site.sh(s1, &format!("exec /bin/kill {signal} {pid}"));
        assert_ne!(out.code, 0, "kill {signal} worked: {out}");
        assert!(out.stderr.contains("Operation not permitted"), "{out}");
    }
    // Nor can it read the runner's memory or environment, which hold the service account's keys.
    for f in ["environ", "mem", "maps"] {
        let out = site.sh(s1, &format!("exec cat /proc/{pid}/{f}"));
        assert_ne!(out.code, 0, "{f}: {out}");
        assert!(out.stderr.contains("Permission denied"), "{f}: {out}");
    }
    assert!(
        matches!(process_state(pid), Some('S' | 'R' | 'D')),
        "{:?}",
        process_state(pid)
    );

    faults.release("RunInstances");
    let out = Out::of(
        "held".into(),
        child.0.take().unwrap().wait_with_output().unwrap(),
    )
    .ok();
    assert!(
        out.stdout
            .contains("cluster held is up: 1 master + 1 workers"),
        "{out}"
    );
    assert_eq!(live_instances(&moto, s1, "held"), 2);

    // The caller may end its own CLI mid-launch; the runner then finishes on its own, and the
    // launch is whole: recorded and running, its key to be had again.
    faults.hold("RunInstances");
    let mut child = ChildGuard(Some(
        site.stratus_cmd(s1, &["launch-cluster", "orphan", "1", "--no-configure"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    faults.wait_held("RunInstances", 1, Duration::from_secs(60));
    let pid = runner_pids(&site)[0];
    let cli = child.0.as_ref().unwrap().id();
    site.sh(s1, &format!("exec /bin/kill -KILL {cli}")).ok();
    let _ = child.0.take().unwrap().wait();
    faults.release("RunInstances");
    eventually(Duration::from_secs(60), || {
        matches!(process_state(pid), None | Some('Z')).then_some(())
    })
    .unwrap_or_else(|| panic!("the runner {pid} did not finish"));
    assert_eq!(live_instances(&moto, s1, "orphan"), 2);
    let listed = site.stratus(s1, &["list", "orphan", "--json"]).ok().json();
    assert_eq!(listed[0]["state"], "running", "{listed:#}");
    site.assert_settled(&moto);
}

/// Kills a process by pid when dropped (a test that panics leaves no runner behind).
pub(crate) struct KillOnDrop(pub(crate) u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = stratus::sys::kill(self.0, libc::SIGKILL);
    }
}

/// A child killed and reaped when dropped, unless taken.
pub(crate) struct ChildGuard(pub(crate) Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = stratus::sys::kill(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// What must never reach a log line raw: control characters (C0, DEL, C1: a newline forges a
/// second entry, an escape sequence rewrites the reader's terminal), the Unicode line and
/// paragraph separators (newlines to many readers), and the bidirectional controls (which make
/// a line display as something else than it says).
pub(crate) fn is_forbidden_in_logs(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Every string in a JSON value, keys included.
pub(crate) fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                strings(x, out);
            }
        }
        _ => {}
    }
}

#[test]
fn control_characters_never_reach_syslog_or_the_audit_trail_raw() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let (s1, ins) = (site.student(0), &site.instructor);
    let syslog = Syslog::start(site.canary.join("log.sock"));
    let evil =
        "x\ny=1 decision=done\r\t\u{1b}[31m\u{7}\u{7f}\u{85}\u{9b}\u{2028}\u{2029}\u{202e}end";

    // Through the wrapper: every string field of a request, and the names of env keys.
    let requests: Vec<(&User, Value, Option<&str>)> = vec![
        (s1, launch(evil, 1, "tiny"), Some("invalid cluster name")),
        (s1, launch("cc1", 1, evil), Some("unknown profile")),
        (
            s1,
            json!({"action": "launch", "name": "cc2", "workers": 1, "env": {evil: "v"}}),
            Some("the key must be 1 to 64 letters"),
        ),
        (
            s1,
            json!({"action": "launch", "name": "cc3", "workers": 1, "profile": "tiny", "configure": false, "env": {"K": evil}}),
            None,
        ),
        (
            s1,
            json!({"action": "list", "owner": evil}),
            Some("cannot own clusters"),
        ),
        (
            s1,
            json!({"action": "terminate", "name": evil}),
            Some("invalid cluster name"),
        ),
        (
            s1,
            json!({"action": "key", "name": evil}),
            Some("invalid cluster name"),
        ),
        (
            s1,
            json!({"action": "launch-slaves", "name": evil, "count": 1}),
            Some("invalid cluster name"),
        ),
        (
            s1,
            json!({"action": "usage", "owner": evil}),
            Some("cannot own clusters"),
        ),
        (
            s1,
            json!({"action": "audit", "since": evil}),
            Some("only instructors"),
        ),
        (
            s1,
            launch("a\u{0}b", 1, "tiny"),
            Some("invalid cluster name"),
        ),
        (
            ins,
            json!({"action": "audit", "since": evil}),
            Some("is not a time"),
        ),
        (
            ins,
            json!({"action": "terminate", "name": "cc3", "owner": evil}),
            Some("cannot own clusters"),
        ),
    ];
    let calls = requests.len();
    for (u, request, refused) in requests {
        let r = site.wrap_with(
            u,
            request.to_string().as_bytes(),
            &Call {
                devlog: Some(&syslog.path),
                ..Call::default()
            },
        );
        match refused {
            Some(needle) => {
                r.refused(needle);
            }
            None => {
                r.result();
            }
        }
    }
    // Through the CLI: a profile name and an env value.
    site.stratus(
        s1,
        &["launch-cluster", "cc4", "1", "-p", evil, "--no-configure"],
    )
    .refused("unknown profile");
    site.stratus(
        s1,
        &[
            "launch-cluster",
            "cc5",
            "1",
            "--env",
            &format!("K={evil}"),
            "--no-configure",
        ],
    )
    .ok();

    // The audit trail as JSON: no such character in any string, and the strings are there,
    // escaped.
    let out = site.stratus(ins, &["admin", "audit", "--json"]).ok();
    let mut rows = 0;
    let mut all = Vec::new();
    for line in out.stdout.lines() {
        assert!(!line.chars().any(is_forbidden_in_logs), "{line:?}");
        let v: Value = serde_json::from_str(line).unwrap();
        let mut s = Vec::new();
        strings(&v, &mut s);
        for text in &s {
            assert!(
                !text.chars().any(is_forbidden_in_logs),
                "raw in the audit trail: {text:?}"
            );
        }
        all.extend(s);
        rows += 1;
    }
    assert!(rows >= calls + 2, "{rows} rows: {out}");
    assert!(
        all.iter()
            .any(|s| s.starts_with("x\\u{a}y=1 decision=done\\u{d}\\u{9}\\u{1b}[31m")),
        "the injected name is not in the trail, escaped: {all:#?}"
    );
    // As text: one line per row, none of them raw either.
    let text = site.stratus(ins, &["admin", "audit"]).ok();
    assert_eq!(text.stdout.lines().count(), rows, "{text}");
    for line in text.stdout.lines() {
        assert!(!line.chars().any(is_forbidden_in_logs), "{line:?}");
    }

    // syslog: one datagram per decision the runner made, none of them raw.
    let lines = eventually(Duration::from_secs(5), || {
        let l = syslog.lines();
        (l.len() >= calls).then_some(l)
    })
    .unwrap_or_else(|| panic!("syslog got {:?}", syslog.lines()));
    assert_eq!(lines.len(), calls, "{lines:?}");
    for l in &lines {
        let text = String::from_utf8(l.clone()).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        assert!(text.starts_with("<85>"), "authpriv.notice: {text:?}");
        assert!(text.contains(" stratus["), "{text:?}");
        let body = text.strip_suffix('\n').unwrap_or(&text);
        assert!(
            !body.chars().any(is_forbidden_in_logs),
            "raw in syslog: {text:?}"
        );
        assert_eq!(body.matches(" user=").count(), 1, "{text:?}");
    }
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 6. The doctor; 7. the install again.

#[test]
fn doctor_passes_a_fresh_install_and_names_a_writable_config_dir_and_readable_credentials() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let out = site.doctor().ok();
    assert_eq!(
        out.stdout,
        format!("the install under {} is sound\n", site.root.display()),
        "{out}"
    );
    // Naming the account it was installed for changes nothing; naming another is a problem.
    let out = site.doctor_with(&["--service-user", &site.svc.name]).ok();
    assert!(out.stdout.ends_with("is sound\n"), "{out}");
    let out = site.doctor_with(&["--service-user", "nobody"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "problem: the wrapper was installed for service account {} (uid {}), not nobody",
            site.svc.name, site.svc.uid
        )),
        "{out}"
    );

    let etc = site.etc().display().to_string();
    let creds = site.credentials().display().to_string();
    let set =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    set(&site.etc(), 0o777);
    let out = site.doctor();
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "problem: the config directory {etc} has mode 0777, not 0755"
        )),
        "{out}"
    );
    assert!(
        out.stdout.contains(&format!("{etc} is world-writable")),
        "{out}"
    );
    assert!(!out.stdout.contains("credentials"), "{out}");
    // The wrapper refuses to run from such an install, before any runner starts.
    let r = site.wrap(site.student(0), &json!({"action": "quota"}));
    r.wrapper_refused(&format!(
        "unsafe install: the configuration directory {etc} is world-writable"
    ));

    set(&site.credentials(), 0o644);
    let out = site.doctor();
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stdout.contains(&format!("{etc} has mode 0777")),
        "{out}"
    );
    assert!(
        out.stdout.contains(&format!(
            "problem: the credentials file {creds} has mode 0644, not 0600"
        )),
        "{out}"
    );
    set(&site.etc(), 0o755);
    let out = site.doctor();
    assert_eq!(out.code, 1, "{out}");
    let problems: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        problems,
        [format!(
            "problem: the credentials file {creds} has mode 0644, not 0600"
        )],
        "{out}"
    );
    // Readable, the keys are a student's for the asking.
    let out = site.sh(site.student(0), &format!("cat {creds}"));
    assert!(out.stdout.contains("aws_secret_access_key"), "{out}");

    set(&site.credentials(), 0o600);
    site.doctor().ok();
}

#[test]
fn installing_again_keeps_the_instructors_policy_credentials_and_config() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let s1 = site.student(0);
    // What the instructor made of the install: a policy, keys, and a config key of their own.
    let policy = format!("{ROOMY}\n[users.{}]\nmax_clusters = 1\n", s1.name)
        .replace("INSTRUCTOR", &site.instructor.name);
    fs::write(site.policy(), &policy).unwrap();
    let config = format!("{}\n[ssh]\nconnect_timeout_secs = 7\n", site.config_text());
    fs::write(site.config(), &config).unwrap();
    let creds = fs::read(site.credentials()).unwrap();
    let wrapper_before = fs::metadata(site.wrapper()).unwrap();

    let out = site.install().ok();
    assert!(
        out.stderr
            .contains(&format!("installed for service account {}", site.svc.name)),
        "{out}"
    );
    assert_eq!(fs::read_to_string(site.policy()).unwrap(), policy);
    assert_eq!(fs::read_to_string(site.config()).unwrap(), config);
    assert_eq!(fs::read(site.credentials()).unwrap(), creds);
    assert_eq!(mode_of(&site.credentials()), (site.svc.uid, 0o600));
    assert_eq!(mode_of(&site.policy()), (0, 0o644));
    assert_eq!(mode_of(&site.config()), (0, 0o644));
    assert_eq!(mode_of(&site.state()), (site.svc.uid, 0o700));
    let wrapper = fs::metadata(site.wrapper()).unwrap();
    assert_eq!(
        (wrapper.uid(), wrapper.mode() & 0o7777),
        (site.svc.uid, 0o4755)
    );
    assert_eq!(wrapper.len(), wrapper_before.len());
    assert_eq!(
        stratus::sys::passwd_by_name(&site.svc.name)
            .unwrap()
            .unwrap()
            .uid,
        site.svc.uid,
        "the service account is the same one"
    );
    site.doctor().ok();

    // The reinstalled wrapper works, and the runner reads the kept policy.
    let q = site.stratus(s1, &["quota", "--json"]).ok().json();
    assert_eq!(q["limits"]["max_clusters"], 1, "{q:#}");
    assert_eq!(q["user"], s1.name.as_str());

    // A config without the multi-user keys gets them, and keeps everything else.
    let bare = config
        .lines()
        .filter(|l| !l.starts_with("mode =") && !l.starts_with("state_dir ="))
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(site.config(), &bare).unwrap();
    site.install().ok();
    let text = fs::read_to_string(site.config()).unwrap();
    assert!(text.ends_with(&bare), "{text}");
    assert!(text.contains("mode = \"multi-user\"\n"), "{text}");
    assert!(
        text.contains(&format!(
            "state_dir = {:?}\n",
            site.state().display().to_string()
        )),
        "{text}"
    );
    assert_eq!(text.matches("wrapper =").count(), 1, "{text}");
    site.doctor().ok();
    site.stratus(s1, &["quota", "--json"]).ok();
}

#[test]
fn a_policy_or_profiles_directory_others_can_write_is_refused_by_the_runner_and_named_by_doctor() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let s1 = site.student(0);
    let set =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    site.stratus(s1, &["quota", "--json"]).ok();

    // The policy decides what each student may launch, the profiles what runs and what the
    // runner reads into user-data: a student who can write either can raise their own quota or
    // have the runner read the service account's keys for them.
    for (path, mode, what) in [
        (site.policy(), 0o666, "the policy"),
        (site.profiles(), 0o777, "the profiles directory"),
        (site.profiles().join("tiny.toml"), 0o666, "the profile file"),
        (
            site.profiles().join("tiny/node.sh.hbs"),
            0o666,
            "the profile file",
        ),
        (
            site.profiles().join("tiny"),
            0o757,
            "the profiles directory",
        ),
    ] {
        set(&path, mode);
        let p = path.display();
        let out = site.doctor();
        assert_eq!(out.code, 1, "{out}");
        assert!(
            out.stdout
                .contains(&format!("{what} {p} is world-writable")),
            "{what}: {out}"
        );
        let r = site.wrap(s1, &launch("w", 1, "tiny"));
        assert_eq!(r.code, 1, "{r}");
        let e = &r.last()["error"];
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("unsafe install: {what} {p} is world-writable")),
            "{r}"
        );
        site.stratus(s1, &["quota"])
            .refused_with(1, "unsafe install");
        set(&path, if path.is_dir() { 0o755 } else { 0o644 });
        site.doctor().ok();
        site.stratus(s1, &["quota", "--json"]).ok();
    }
}

#[test]
fn the_wrapper_runs_its_install_whatever_argv0_cwd_arguments_fds_and_signals_it_is_given() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    let listener = Listener::start();
    let home = s1.home.display().to_string();

    // In the caller's home, its working directory: a link to the wrapper, a runner and a site
    // config of its own beside it (the config names the caller's endpoint), and a file open on
    // fd 3 for anything to leak into.
    let marker = format!("{home}/own-runner-ran");
    site.sh(
        s1,
        &format!(
            "cd {home} && ln -s {w} stratus-wrap && \
             printf '#!/bin/sh\\ntouch {marker}\\n' > stratus && chmod 755 stratus && \
             printf 'provider = \"ec2\"\\n[ec2]\\nregion = \"us-east-1\"\\nendpoint_url = \"{evil}\"\\n' > config.toml && \
             mkdir -p libexec/stratus etc/stratus && ln -s ../../stratus libexec/stratus/stratus-wrap && \
             cp config.toml etc/stratus/config.toml",
            w = site.wrapper().display(),
            evil = listener.url(),
        ),
    )
    .ok();
    // A hard link would keep an old wrapper alive past an upgrade: the kernel refuses it.
    if fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1") {
        let out = site.sh(
            s1,
            &format!("ln {} {home}/hard-wrap", site.wrapper().display()),
        );
        assert!(
            out.code != 0 && out.stderr.contains("Operation not permitted"),
            "{out}"
        );
    }

    for (i, how) in [
        // Through the link, from the caller's directory, with arguments naming its own config.
        "exec ./stratus-wrap --config ./config.toml runner",
        // argv[0] naming the caller's files.
        "exec -a {home}/stratus {wrapper} runner --config {home}/config.toml",
        // Every signal ignored and blocked, and fds 3 and 9 open on the caller's files.
        "exec 3>>{home}/leak 9<{home}/config.toml; exec /usr/bin/env --ignore-signal --block-signal {wrapper} --help",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("arg{i}");
        let script = format!(
            "cd {home} && {}",
            how.replace("{home}", &home)
                .replace("{wrapper}", &site.wrapper().display().to_string())
        );
        let mut c = site.as_user(s1, &[]);
        c.args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", &format!("HOME={home}")])
            .args(["/bin/bash", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(launch(&name, 1, "tiny").to_string().as_bytes())
            .unwrap();
        let r = answer(child.wait_with_output().unwrap());
        assert_eq!(r.result()["cluster"]["owner"], s1.name.as_str(), "{how}: {r}");
        assert_eq!(live_instances(&moto, s1, &name), 2, "{how}");
    }
    assert!(!Path::new(&marker).exists(), "the caller's runner ran");
    assert_eq!(listener.hits(), 0, "the caller's config was used");
    assert_eq!(
        fs::read(format!("{home}/leak")).unwrap(),
        b"",
        "written to an inherited fd"
    );
    site.assert_settled(&moto);
}

#[test]
fn the_callers_terminal_can_interrupt_a_launch_but_neither_stop_nor_quit_nor_kill_the_runner() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    let faults = moto.faults();
    let cli = site.cli().display().to_string();

    // A login shell with job control on a terminal of the caller's; each command a foreground
    // job, the runner in the job's process group. The terminal's signals (^Z, ^\\, ^C) reach
    // every process of that group, whatever its uid: setresuid does not stop them.
    let mut sh = site.as_user(s1, &[]);
    sh.arg("/usr/bin/env")
        .arg("-i")
        .args(site.login_env(s1))
        .args(["/bin/bash", "--norc", "--noprofile", "-i"]);
    let mut pty = crate::support::pty::Pty::spawn(sh);
    pty.send("PS1='ready> '\n");
    pty.expect("ready> ");
    let job = |pty: &mut crate::support::pty::Pty,
               faults: &crate::support::faults::Faults,
               action: &str,
               args: &str|
     -> u32 {
        faults.hold(action);
        pty.send(&format!("{cli} {args}\n"));
        faults.wait_held(action, 1, Duration::from_secs(60));
        let pids = runner_pids(&site);
        assert_eq!(pids.len(), 1, "{pids:?}");
        pids[0]
    };
    let alive = |pid: u32| matches!(process_state(pid), Some('S' | 'R' | 'D'));
    let wait_gone = |pid: u32| {
        eventually(Duration::from_secs(60), || {
            matches!(process_state(pid), None | Some('Z')).then_some(())
        })
        .unwrap_or_else(|| panic!("the runner {pid} did not finish"))
    };

    // ^Z stops the caller's CLI, never the runner (which may be inside a transaction).
    let pid = job(
        &mut pty,
        &faults,
        "RunInstances",
        "launch-cluster held 1 --no-configure",
    );
    let _guard = KillOnDrop(pid);
    pty.send("\u{1a}");
    pty.expect("Stopped");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(pid),
        "^Z stopped the runner: {:?}",
        process_state(pid)
    );
    pty.expect("ready> ");
    pty.send("fg\n");
    pty.expect("launch-cluster held 1 --no-configure");
    // Readiness, not a pause: the CLI runs again and its process group holds the terminal
    // (bash gives it the terminal, then continues it). A ^\\ before that would reach bash,
    // which ignores it.
    eventually(Duration::from_secs(30), || {
        cli_in_foreground(&site, "launch-cluster").then_some(())
    })
    .expect("the CLI is continued in the foreground after fg");
    // ^\\ quits the CLI (the caller's own process), not the runner.
    pty.send("\u{1c}");
    pty.expect("ready> ");
    pty.send("echo \"exit=$?\"\n");
    pty.expect("exit=131");
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "^\\ ended the runner: {:?}", process_state(pid));
    faults.release("RunInstances");
    wait_gone(pid);
    assert_eq!(live_instances(&moto, s1, "held"), 2, "the launch completed");

    // ^C during a launch: what the runner listens for; it rolls back at its next step (here,
    // before it waits for SSH).
    let pid = job(&mut pty, &faults, "RunInstances", "launch-cluster intr 1");
    pty.send("\u{3}");
    pty.expect("ready> ");
    pty.send("echo \"exit=$?\"\n");
    pty.expect("exit=130");
    assert!(
        alive(pid),
        "^C ended the runner at once: {:?}",
        process_state(pid)
    );
    faults.release("RunInstances");
    wait_gone(pid);
    assert_eq!(
        live_instances(&moto, s1, "intr"),
        0,
        "an interrupted launch rolls back"
    );

    // ^C anywhere else (here inside TerminateInstances) is ignored: the terminate completes.
    let pid = job(
        &mut pty,
        &faults,
        "TerminateInstances",
        "terminate-cluster held --yes",
    );
    pty.send("\u{3}");
    pty.expect("ready> ");
    pty.send("echo \"exit=$?\"\n");
    pty.expect("exit=130");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(pid),
        "^C ended the runner mid-terminate: {:?}",
        process_state(pid)
    );
    faults.release("TerminateInstances");
    wait_gone(pid);
    assert_eq!(
        live_instances(&moto, s1, "held"),
        0,
        "the terminate completed"
    );
    pty.send("exit\n");
    let _ = pty.wait();
    let states: Vec<Value> = site.sql("SELECT name, state FROM clusters ORDER BY id");
    assert_eq!(
        states,
        [
            json!({"name": "held", "state": "terminated"}),
            json!({"name": "intr", "state": "failed"}),
        ]
    );
    site.assert_settled(&moto);
}

#[test]
fn colliding_resource_names_of_two_owners_never_hand_one_the_others_group_or_key() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let mut site = Site::new(&moto.endpoint, &subnet, 1);
    // Owner names may hold '-', and so may cluster names: a's "x-c" and (a + "-x")'s "c" had
    // the same security group and key pair names under the old `<owner>-<cluster>`, and the
    // second launch was refused. Joined by '@', which neither may hold, they cannot collide.
    let b_name = format!("{}-x", site.student(0).name);
    site.students.push(User::create(b_name, "/bin/sh"));
    let (a, b) = (site.student(0), site.student(1));
    site.stratus(a, &["launch-cluster", "x-c", "1", "--no-configure"])
        .ok();
    site.stratus(b, &["launch-cluster", "c", "1", "--no-configure"])
        .ok();
    for (owner, cluster) in [(a, "x-c"), (b, "c")] {
        let g = moto.groups_named(&format!("stratus-{}@{cluster}", owner.name));
        assert_eq!(g.len(), 1, "{}'s {cluster}", owner.name);
        assert_eq!(tag(g[0].tags(), "stratus:owner"), Some(owner.name.as_str()));
        let k = moto.key_pairs_named(&format!("{}@{cluster}", owner.name));
        assert_eq!(k.len(), 1, "{}'s {cluster}", owner.name);
        assert_eq!(tag(k[0].tags(), "stratus:owner"), Some(owner.name.as_str()));
        assert_eq!(live_instances(&moto, owner, cluster), 2);
    }
    // No name of the old scheme was made.
    assert!(
        moto.groups_named(&format!("stratus-{}-x-c", a.name))
            .is_empty()
    );
    // Each ends its own, and leaves the other's whole.
    site.stratus(b, &["terminate-cluster", "c", "--yes"]).ok();
    assert_eq!(live_instances(&moto, a, "x-c"), 2);
    assert_eq!(
        moto.groups_named(&format!("stratus-{}@x-c", a.name)).len(),
        1
    );
    site.stratus(a, &["terminate-cluster", "x-c", "--yes"]).ok();
    site.assert_settled(&moto);
}

/// A state made before the store's migration 7: the service account's cluster `x-c` with its
/// group and key pair named `<owner>-<cluster>` (the launch path of that version, which
/// `STRATUS_TEST_LEGACY_NAMES` keeps in a debug build), and the database put back to that
/// version's schema. The next command migrates it: the old cluster keeps its names and stays
/// reachable (a worker added joins its group and key), a student whose names collided with it
/// under `-` launches beside it, both are billed, and both end with nothing left.
#[test]
fn a_state_of_dash_names_is_migrated_and_both_colliding_clusters_stay_reachable_and_billed() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let mut site = Site::new(&moto.endpoint, &subnet, 0);
    let b_name = format!("{}-x", site.svc.name);
    site.students.push(User::create(b_name, "/bin/sh"));
    let (svc, b) = (&site.svc, site.student(0));
    let as_svc = |args: &[&str], legacy: bool| {
        let mut c = site.as_user(svc, &[]);
        c.arg("/usr/bin/env").arg("-i").args(site.login_env(svc));
        if legacy {
            c.arg("STRATUS_TEST_LEGACY_NAMES=1");
        }
        c.arg(site.cli()).args(args);
        output(&mut c)
    };
    as_svc(&["launch-cluster", "x-c", "1", "--no-configure"], true).ok();
    let old_group = format!("stratus-{}-x-c", svc.name);
    let old_key = format!("{}-x-c", svc.name);
    assert_eq!(moto.groups_named(&old_group).len(), 1);
    assert_eq!(moto.key_pairs_named(&old_key).len(), 1);
    site.sql(
        "DROP TABLE key_pairs; ALTER TABLE clusters DROP COLUMN naming; \
         ALTER TABLE clusters DROP COLUMN deadline; ALTER TABLE clusters DROP COLUMN extensions; \
         ALTER TABLE clusters DROP COLUMN ended_by; ALTER TABLE clusters DROP COLUMN ended_reason; \
         ALTER TABLE clusters DROP COLUMN idle_since; ALTER TABLE clusters DROP COLUMN activity; \
         PRAGMA user_version = 6;",
    );
    assert_eq!(
        site.sql("PRAGMA user_version"),
        [json!({"user_version": 6})]
    );

    // b's "c" joined by '-' is the same name: refused before, launched now.
    site.stratus(b, &["launch-cluster", "c", "1", "--no-configure"])
        .ok();
    assert_eq!(
        site.sql("SELECT name, owner, naming FROM clusters ORDER BY id"),
        [
            json!({"name": "x-c", "owner": svc.name, "naming": 1}),
            json!({"name": "c", "owner": b.name, "naming": 2}),
        ]
    );
    assert_eq!(moto.groups_named(&format!("stratus-{}@c", b.name)).len(), 1);
    // The old cluster is reachable: a worker joins its group, with its key pair, and answers.
    let _hv = Hypervisor::start(HypervisorConfig {
        endpoint: moto.endpoint.clone(),
        cluster: Some("x-c".into()),
        user: "ubuntu".into(),
        port: 2200,
        never_boot: BTreeSet::new(),
        console: Default::default(),
    });
    as_svc(&["launch-slaves", "x-c", "1"], false).ok();
    let old_gid = moto.groups_named(&old_group)[0]
        .group_id()
        .unwrap()
        .to_owned();
    let live: Vec<Instance> = instances(&moto, svc, "x-c")
        .into_iter()
        .filter(is_live)
        .collect();
    assert_eq!(live.len(), 3);
    for i in &live {
        assert_eq!(i.key_name(), Some(old_key.as_str()));
        let groups: Vec<&str> = i
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, [old_gid.as_str()]);
    }
    // Both are billed.
    as_svc(&["accounting", "snapshot"], false).ok();
    assert_eq!(
        site.sql(
            "SELECT c.name, COUNT(*) AS n FROM usage_intervals u JOIN clusters c ON c.id = u.cluster_id GROUP BY c.name ORDER BY c.name"
        ),
        [json!({"name": "c", "n": 2}), json!({"name": "x-c", "n": 3})]
    );
    // And both end whole, the old names released too.
    as_svc(&["terminate-cluster", "x-c", "--yes"], false).ok();
    site.stratus(b, &["terminate-cluster", "c", "--yes"]).ok();
    assert!(moto.groups_named(&old_group).is_empty());
    assert!(moto.key_pairs_named(&old_key).is_empty());
    assert!(
        moto.groups_named(&format!("stratus-{}@c", b.name))
            .is_empty()
    );
    site.assert_settled(&moto);
}

// ---------------------------------------------------------------------------------------------
// 8. What the setuid path cannot protect, refused; what it needs, measured (issue 15).

#[test]
fn under_the_lowest_stack_limit_the_wrapper_accepts_a_launch_is_whole() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    let kib = setuid_wrap::limits::STACK_MINIMUM / 1024;
    let under = |kib: u64, request: &Value| {
        // `ulimit -s` sets the soft and the hard limit: the wrapper can raise neither.
        site.wrap_with(
            s1,
            request.to_string().as_bytes(),
            &Call {
                shell: &format!("ulimit -s {kib};"),
                ..Call::default()
            },
        )
    };

    // One KiB below the minimum: refused before any runner starts, naming the limit.
    under(kib - 1, &launch("stk0", 1, "tiny")).wrapper_refused(&format!(
        "the caller's hard limit RLIMIT_STACK is {} KiB; the runner needs at least {kib} KiB",
        kib - 1
    ));
    assert_nothing_created(&moto, s1, "stk0");

    // At the minimum (every higher limit only gives the main thread more room): whole
    // launches, each recorded, several times since the stack's random offset varies; and the
    // other long request, a terminate.
    for i in 1..=3 {
        let name = format!("stk{i}");
        let r = under(kib, &launch(&name, 1, "tiny"));
        assert_eq!(r.result()["cluster"]["state"], "running", "{name}: {r}");
        assert_eq!(live_instances(&moto, s1, &name), 2, "{name}");
    }
    let r = under(kib, &json!({"action": "terminate", "name": "stk1"}));
    r.result();
    assert_eq!(live_instances(&moto, s1, "stk1"), 0);
    let rows = site.sql("SELECT name, state FROM clusters ORDER BY id");
    assert_eq!(
        rows,
        [
            json!({"name": "stk1", "state": "terminated"}),
            json!({"name": "stk2", "state": "running"}),
            json!({"name": "stk3", "state": "running"}),
        ]
    );
    site.assert_settled(&moto);
}

#[test]
fn parked_requests_give_up_within_the_time_limit_and_are_audited() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let s1 = site.student(0);
    let home = s1.home.display().to_string();
    // The issue fixes it at 10 s.
    let limit = Duration::from_secs(10);

    // Eight runners on one FIFO that the student holds open (fd 3, read-write, so opening it to
    // read never waits for a writer): half a request is written, the rest never comes. With
    // no time limit each would park a process of the service account for as long as the
    // student likes.
    let started = Instant::now();
    let out = site
        .sh(
            s1,
            &format!(
                "cd {home} && mkfifo park && exec 3<>park && printf '{{\"action\":' >&3 && \
                 for i in 1 2 3 4 5 6 7 8; do {w} < park > out.$i 2> err.$i & done; wait; \
                 for i in 1 2 3 4 5 6 7 8; do echo \"exit.$i\"; cat out.$i; done",
                w = site.wrapper().display()
            ),
        )
        .ok();
    let took = started.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_secs(10),
        "the parked runners took {took:?}"
    );
    let errors: Vec<Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 8, "{out}");
    for e in &errors {
        assert_eq!(e["error"]["exit"], 2, "{e}");
        assert_eq!(
            e["error"]["message"],
            format!(
                "no whole request on stdin within {} s; refused",
                limit.as_secs()
            ),
            "{e}"
        );
    }
    assert!(runner_pids(&site).is_empty(), "{:?}", runner_pids(&site));
    let refused: Vec<Value> = site
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "request")
        .collect();
    assert_eq!(refused.len(), 8, "{refused:#?}");
    for r in &refused {
        assert_eq!(r["user"], s1.name.as_str(), "{r}");
        assert_eq!(r["decision"], "refused", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .starts_with("no whole request"),
            "{r}"
        );
    }
}

/// A cgroup v2 directory made for a test at the root of the hierarchy, removed (with what is
/// below it) on drop.
pub(crate) struct TestCgroup {
    pub(crate) dir: PathBuf,
}

impl TestCgroup {
    pub(crate) fn new(name: &str) -> TestCgroup {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = setuid_wrap::cgroup::parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.v2 && m.root == "/")
            .expect("no cgroup v2 hierarchy mounted here");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = mount
            .mount_point
            .join(format!("spt-{name}-{}-{n}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        TestCgroup { dir }
    }

    /// As systemd's `Delegate=yes` hands `user@UID.service` to its user: the directory and the
    /// files the kernel lists as delegatable (/sys/kernel/cgroup/delegate).
    pub(crate) fn delegate_to(&self, u: &User) {
        std::os::unix::fs::chown(&self.dir, Some(u.uid), Some(u.gid)).unwrap();
        for f in fs::read_to_string("/sys/kernel/cgroup/delegate")
            .unwrap()
            .lines()
        {
            let _ = std::os::unix::fs::chown(self.dir.join(f), Some(u.uid), Some(u.gid));
        }
    }

    pub(crate) fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// `cmd`, started by a shell of root's that first moves itself into this cgroup (as logind
    /// or systemd would place a session or a scope).
    pub(crate) fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("/bin/sh");
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(["-c", "echo $$ > \"$0\" || exit 97; exec \"$@\""])
            .arg(self.procs())
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null());
        c
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut dirs = vec![self.dir.clone()];
        let mut i = 0;
        while i < dirs.len() {
            for e in fs::read_dir(&dirs[i]).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

#[test]
fn a_student_in_a_cgroup_of_their_own_is_refused_by_the_wrapper_and_one_in_a_login_session_is_not()
{
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let s1 = site.student(0);

    // The student's own subtree, as systemd delegates user@UID.service.
    let user = TestCgroup::new("user");
    user.delegate_to(s1);
    // The attack is real: a process of the service account's in that subtree (as a runner
    // would be) is moved by the student into a cgroup of the student's own and frozen there.
    // cgroup v2 checks the cgroup files, not whose process it is.
    let mut svc_sleep = ChildGuard(Some(
        user.wrap(
            Command::new("/usr/bin/setpriv")
                .arg(format!("--reuid={}", site.svc.uid))
                .arg(format!("--regid={}", site.svc.gid))
                .args(["--clear-groups", "--", "/bin/sleep", "120"]),
        )
        .spawn()
        .unwrap(),
    ));
    let pid = svc_sleep.0.as_ref().unwrap().id();
    eventually(Duration::from_secs(10), || {
        fs::read_to_string(user.procs())
            .unwrap()
            .lines()
            .any(|l| l == pid.to_string())
            .then_some(())
    })
    .expect("the service account's process in the student's cgroup");
    let app = user.dir.join("app");
    site.sh(
        s1,
        &format!(
            "mkdir {app} && echo {pid} > {app}/cgroup.procs && echo 1 > {app}/cgroup.freeze",
            app = app.display()
        ),
    )
    .ok();
    eventually(Duration::from_secs(10), || {
        fs::read_to_string(app.join("cgroup.events"))
            .unwrap()
            .contains("frozen 1")
            .then_some(())
    })
    .expect("the student froze the service account's process");
    let _ = stratus::sys::kill(pid, libc::SIGKILL);
    fs::write(app.join("cgroup.freeze"), "0").unwrap();
    let _ = svc_sleep.0.take().unwrap().wait();

    // So the wrapper refuses to start there, directly with one line, and through the CLI,
    // which passes its line on; no runner ever starts.
    let mut direct = site.as_user(s1, &[]);
    direct
        .args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin"])
        .arg(site.wrapper());
    let out = output(&mut user.wrap(&direct));
    let refusal = format!(
        "stratus-wrap: the caller can write {} (its cgroup v2 cgroup /{}), so it could freeze \
         or kill the runner mid-launch: run the command from a login session (not a systemd \
         --user scope or service), or have the site use the class service (transport = \
         \"service\")",
        user.dir.display(),
        user.dir.file_name().unwrap().to_string_lossy()
    );
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.trim_end()),
        (1, "", refusal.as_str()),
        "{out}"
    );
    let out = output(&mut user.wrap(&site.stratus_cmd(s1, &["quota", "--json"])));
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.lines().any(|l| l == refusal), "{out}");
    assert!(runner_pids(&site).is_empty());
    // A cgroup of root's below the student's subtree (the scope `systemd-run --user --scope`
    // makes is the user's own; this is the stricter case): the ancestor is enough to refuse.
    let scope = user.dir.join("run-u1.scope");
    fs::create_dir(&scope).unwrap();
    let inner = site.stratus_cmd(s1, &["quota", "--json"]);
    let mut in_scope = Command::new("/bin/sh");
    in_scope
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["-c", "echo $$ > \"$0\" || exit 97; exec \"$@\""])
        .arg(scope.join("cgroup.procs"))
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null());
    let out = output(&mut in_scope);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains(&format!(
            "the caller can write {} (an ancestor of its cgroup v2 cgroup",
            user.dir.display()
        )),
        "{out}"
    );

    // From a login session's cgroup (root's, as logind makes session-N.scope), it runs.
    let session = TestCgroup::new("session");
    let q = output(&mut session.wrap(&site.stratus_cmd(s1, &["quota", "--json"])))
        .ok()
        .json();
    assert_eq!(q["user"], s1.name.as_str(), "{q:#}");
    assert_eq!(q["limits"]["max_clusters"], 10, "{q:#}");
}

// ---------------------------------------------------------------------------------------------
// 9. An install that works on day one.

/// Files an install wrote outside its prefix, removed on drop.
pub(crate) struct Removed(pub(crate) Vec<PathBuf>);

impl Drop for Removed {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

/// `BIN admin install` as root for another prefix of this site (`ARGS` after the prefix).
pub(crate) fn install_at(prefix: &Path, args: &[&str]) -> Out {
    output(
        Command::new(BIN)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .args(["admin", "install", "--prefix"])
            .arg(prefix)
            .args(args),
    )
}

/// The name `admin install` gives the units and cron file of the install under `prefix`.
pub(crate) fn unit_name_of(prefix: &Path) -> String {
    format!(
        "stratus-{}",
        prefix
            .strip_prefix("/")
            .unwrap()
            .display()
            .to_string()
            .replace('/', "-")
    )
}

#[test]
fn install_writes_the_units_and_the_cron_file_where_they_run_and_says_what_is_left_to_do() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(0);
    // A fresh install (no config of the instructor's yet) beside the site's own.
    let prefix = site.root.join("fresh");
    let name = unit_name_of(&prefix);
    let socket_unit = PathBuf::from(format!("/etc/systemd/system/{name}.socket"));
    let service_unit = PathBuf::from(format!("/etc/systemd/system/{name}.service"));
    let cron = PathBuf::from(format!("/etc/cron.d/{name}"));
    let _cleanup = Removed(vec![
        socket_unit.clone(),
        service_unit.clone(),
        cron.clone(),
    ]);
    let out = install_at(&prefix, &["--service-user", &site.svc.name]).ok();
    let p = prefix.display().to_string();
    let svc = &site.svc.name;
    assert_eq!(
        out.stdout,
        format!(
            "left to do:\n\
             \x20 1. put the service account's AWS keys in {p}/etc/stratus/aws-credentials \
             ([default] aws_access_key_id and aws_secret_access_key; the file stays {svc}'s, mode 0600)\n\
             \x20 2. fill in [ec2] in {p}/etc/stratus/config.toml: subnet_id, client_cidrs (and check region)\n\
             \x20 3. write the class policy in {p}/etc/stratus/policy.toml: the instructors, the \
             [units] of each instance type, the [default] limits (it holds the example)\n\
             \x20 4. start the class service: systemctl daemon-reload && systemctl enable --now \
             {name}.socket {name}.service\n\
             \x20 5. check the install: {p}/bin/stratus admin doctor --prefix {p}\n\
             \x20 6. have students run {p}/bin/stratus (it knows this install), e.g. on their \
             PATH: ln -s {p}/bin/stratus /usr/local/bin/stratus\n"
        ),
        "{out}"
    );

    // The units, where systemd reads them, root's and 0644, for this install.
    for unit in [&socket_unit, &service_unit] {
        assert_eq!(mode_of(unit), (0, 0o644), "{}", unit.display());
    }
    let service = fs::read_to_string(&service_unit).unwrap();
    let socket = fs::read_to_string(&socket_unit).unwrap();
    let config = prefix.join("etc/stratus/config.toml");
    for line in [
        format!("# written by `stratus admin install` for the install under {p}"),
        format!("User={svc}"),
        format!(
            "ExecStart={p}/bin/stratus serve --config {}",
            config.display()
        ),
        "NoNewPrivileges=yes".into(),
        "ProtectSystem=strict".into(),
        format!("ReadWritePaths={p}/var/lib/stratus"),
        "ProtectHome=yes".into(),
        "PrivateTmp=yes".into(),
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6".into(),
        "LockPersonality=yes".into(),
        format!("Requires={name}.socket"),
    ] {
        assert!(service.lines().any(|l| l == line), "{line:?} in {service}");
    }
    for line in [
        format!("ListenStream=/run/stratus/{name}.sock"),
        "SocketMode=0666".into(),
        "SocketUser=root".into(),
        "DirectoryMode=0755".into(),
    ] {
        assert!(socket.lines().any(|l| l == line), "{line:?} in {socket}");
    }
    // systemd's own reading of them.
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if analyze.exists() {
        let out = output(
            Command::new(analyze)
                .arg("verify")
                .arg(&socket_unit)
                .arg(&service_unit),
        );
        assert_eq!(out.code, 0, "{out}");
        assert!(
            !out.stderr.contains(&*socket_unit.display().to_string())
                && !out.stderr.contains(&*service_unit.display().to_string()),
            "systemd-analyze has something to say about the units: {out}"
        );
    } else {
        // Each line is a section, a comment, or a KEY=VALUE of a known section.
        for text in [&service, &socket] {
            let mut section = "";
            for l in text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                if l.starts_with('[') {
                    section = l;
                    assert!(
                        ["[Unit]", "[Service]", "[Socket]", "[Install]"].contains(&l),
                        "{l}"
                    );
                } else {
                    assert!(!section.is_empty() && l.contains('='), "{l:?} in {text}");
                }
            }
        }
    }
    // A new site config goes to the service, whose timers run the accounting side: no cron.
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("\ntransport = \"service\""), "{text}");
    assert!(
        text.contains(&format!(
            "[service]\nsocket = \"/run/stratus/{name}.sock\"\nsnapshot_minutes = 5"
        )),
        "{text}"
    );
    assert!(!cron.exists(), "a cron file beside the service's timers");

    // The setuid transport: the cron file, where cron reads it, with this install's paths.
    // (Where an older install put it, under the prefix, it goes.)
    let stale = prefix.join("etc/cron.d/stratus");
    fs::create_dir_all(stale.parent().unwrap()).unwrap();
    fs::write(
        &stale,
        "# stratus accounting: a snapshot of every instance every 5 minutes, the reaper every 15.\n",
    )
    .unwrap();
    fs::write(
        &config,
        text.replace("transport = \"service\"", "transport = \"setuid\""),
    )
    .unwrap();
    let out = install_at(&prefix, &["--service-user", svc]).ok();
    assert!(!stale.exists(), "{out}");
    assert!(!out.stdout.contains("systemctl"), "{out}");
    assert_eq!(mode_of(&cron), (0, 0o644));
    let cron_text = fs::read_to_string(&cron).unwrap();
    let cli = format!("{p}/bin/stratus --config {}", config.display());
    assert_eq!(
        cron_text,
        format!(
            "# written by `stratus admin install` for the install under {p}\n\
             # stratus accounting: a snapshot of every instance every 5 minutes, the reaper every 15.\n\
             */5 * * * * {svc} {cli} accounting snapshot --quiet\n\
             */15 * * * * {svc} {cli} accounting reap --quiet\n"
        )
    );
    // The site's own install (another prefix, the same machine) keeps its files.
    let [site_socket, _, site_cron] = site.service_files();
    assert!(site_socket.exists() && site_cron.exists());
    assert!(
        fs::read_to_string(&site_cron)
            .unwrap()
            .contains(&format!("{} --config", site.cli().display()))
    );
    // Back to the service: the cron file goes, so the accounting side never runs twice.
    fs::write(&config, &text).unwrap();
    install_at(&prefix, &["--service-user", svc]).ok();
    assert!(!cron.exists());

    // A file of that name the install did not write is refused, before anything is made.
    let other = site.root.join("other");
    let other_cron = PathBuf::from(format!("/etc/cron.d/{}", unit_name_of(&other)));
    let _other = Removed(vec![other_cron.clone()]);
    fs::write(&other_cron, "# the administrator's own lines\n").unwrap();
    install_at(&other, &["--service-user", svc]).refused(&format!(
        "{} exists and was not written by stratus admin install",
        other_cron.display()
    ));
    assert!(!other.exists());
    assert_eq!(
        fs::read_to_string(&other_cron).unwrap(),
        "# the administrator's own lines\n"
    );
}

#[test]
fn after_a_prefix_install_a_students_plain_stratus_shows_the_class_policy() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let s1 = site.student(0);
    // The student's login environment, without STRATUS_CONFIG.
    let plain = |u: &User, args: &[&str]| {
        let mut c = site.as_user(u, &[]);
        c.args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"])
            .arg(format!("HOME={}", u.home.display()))
            .arg(format!("USER={}", u.name))
            .arg(site.cli())
            .args(args);
        output(&mut c)
    };
    let q = plain(s1, &["quota", "--json"]).ok().json();
    assert_eq!(q["user"], s1.name.as_str(), "{q:#}");
    // ROOMY's limits, not single-user mode's "no limit".
    assert_eq!(q["limits"]["max_clusters"], 10, "{q:#}");
    assert_eq!(q["limits"]["max_units"], 40.0, "{q:#}");
    assert_eq!(
        q["limits"]["profiles"],
        json!(["odd", "tiny", "wide"]),
        "{q:#}"
    );
    // A launch goes there too: to the install's EC2 endpoint (nothing listens on this offline
    // site's), never to local nodes run as the student.
    let out = plain(
        s1,
        &["launch-cluster", "day1", "1", "--profile", "local-demo"],
    );
    out.refused_with(1, "cannot reach the EC2 endpoint http://127.0.0.1:9");
    assert!(
        !s1.home.join(".local/share/stratus/local").exists(),
        "{out}"
    );
    // And root's `admin doctor`, without --prefix, checks this install.
    let out = output(
        Command::new(site.cli())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .args(["admin", "doctor"]),
    )
    .ok();
    assert_eq!(
        out.stdout,
        format!("the install under {} is sound\n", site.root.display())
    );
}

#[test]
fn admin_install_refuses_a_binary_that_is_not_the_wrapper_and_doctor_finds_one_unsound() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(0);
    let fresh = site.root.join("never");
    let never_user = format!("spt-never-{}", std::process::id());
    let refused_with = |wrapper: &Path, needle: &str| {
        let out = install_at(
            &fresh,
            &[
                "--service-user",
                &never_user,
                "--wrapper",
                &wrapper.display().to_string(),
            ],
        );
        out.refused(needle);
        // Nothing half made: no directory, no user, no unit.
        assert!(!fresh.exists(), "{out}");
        assert!(
            stratus::sys::passwd_by_name(&never_user).unwrap().is_none(),
            "{out}"
        );
        assert!(
            !Path::new(&format!(
                "/etc/systemd/system/{}.service",
                unit_name_of(&fresh)
            ))
            .exists()
        );
    };
    // cargo's test harness (this binary) and the stratus CLI both hold the placeholder marker.
    let harness = std::env::current_exe().unwrap();
    let marker = setuid_wrap::placeholder::MARKER;
    for bin in [harness.as_path(), Path::new(BIN)] {
        let bytes = fs::read(bin).unwrap();
        assert!(setuid_wrap::placeholder::count(&bytes, marker) >= 1);
        refused_with(
            bin,
            &format!(
                "{} is not the stratus wrapper: it is not a stratus-wrap build: it lacks the \
                 wrapper's build marker",
                bin.display()
            ),
        );
    }
    // A file with both markers that is not the wrapper: its trial run shows it, and ran as
    // nobody, not as root.
    let canary = site.canary.join("trial-uid");
    let fake = site.canary.join("fake-wrap");
    let mut script = format!(
        "#!/bin/sh\nid -u > {}\necho not-the-wrapper\n# ",
        canary.display()
    )
    .into_bytes();
    script.extend_from_slice(&setuid_wrap::identity::build_marker());
    script.extend_from_slice(b"\n# ");
    script.extend_from_slice(marker);
    script.push(b'\n');
    fs::write(&fake, &script).unwrap();
    refused_with(
        &fake,
        "is not the stratus wrapper: its trial run answered \"not-the-wrapper\\n\" (exit status: 0)",
    );
    let nobody = stratus::sys::passwd_by_name("nobody")
        .unwrap()
        .map(|p| p.uid)
        .unwrap_or(65534);
    assert_eq!(
        fs::read_to_string(&canary).unwrap().trim(),
        nobody.to_string()
    );
    // No wrapper beside the binary: the missing file named, and how to build it.
    let lone = site.canary.join("lone");
    fs::create_dir(&lone).unwrap();
    fs::copy(BIN, lone.join("stratus")).unwrap();
    let out = output(
        Command::new(lone.join("stratus"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["admin", "install", "--prefix"])
            .arg(&fresh)
            .args(["--service-user", &never_user]),
    );
    out.refused(&format!(
        "the wrapper {}/stratus-wrap does not exist: build it with `cargo build --release` in \
         the stratus source tree (one build makes both stratus and stratus-wrap)",
        lone.display()
    ));
    assert!(!fresh.exists());

    // The old bug: a binary holding the placeholder marker once but no build marker (here the
    // wrapper itself with its build marker blanked, as good a stand-in as any) installed as the
    // wrapper with every owner, mode and capability right. Doctor finds it unsound.
    site.doctor().ok();
    let mut bytes = fs::read(site.wrapper()).unwrap();
    let build = setuid_wrap::identity::build_marker();
    let at = bytes
        .windows(build.len())
        .position(|w| w == build.as_slice())
        .unwrap();
    bytes[at..at + build.len()].fill(b'-');
    let patched = bytes;
    fs::write(site.wrapper(), patched).unwrap();
    std::os::unix::fs::chown(site.wrapper(), Some(site.svc.uid), Some(site.svc.gid)).unwrap();
    fs::set_permissions(site.wrapper(), fs::Permissions::from_mode(0o4755)).unwrap();
    setuid_wrap::sys::set_xattr(
        &site.wrapper(),
        setuid_wrap::CAPABILITY_XATTR,
        &setuid_wrap::setgid_capability_xattr(),
    )
    .unwrap();
    let out = site.doctor();
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [format!(
            "problem: the wrapper {} is not the stratus wrapper: it is not a stratus-wrap build: \
             it lacks the wrapper's build marker (a program that only links the setuid-wrap \
             library, such as the stratus CLI or a test harness, holds the placeholder marker but \
             not this one) (reinstall with `stratus admin install`)",
            site.wrapper().display()
        )],
        "{out}"
    );
    site.install().ok();
    site.doctor().ok();
}

#[test]
fn roots_commands_act_on_the_installs_state_through_the_wrapper() {
    let Some((_serial, moto, subnet)) = start_with_moto() else {
        return;
    };
    let site = Site::new(&moto.endpoint, &subnet, 1);
    let s1 = site.student(0);
    site.stratus(s1, &["launch-cluster", "rc", "1", "--no-configure"])
        .ok();
    // Root types the installed CLI, with no STRATUS_CONFIG, from a home of its own.
    let home = site.canary.join("root-home");
    fs::create_dir(&home).unwrap();
    let root = |args: &[&str]| {
        output(
            Command::new(site.cli())
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", &home)
                .args(args),
        )
    };
    let snap = root(&["accounting", "snapshot", "--json"]).ok().json();
    // The class's instances are this store's own (root's own store would see none of them).
    assert_eq!(snap["seen"], 2, "{snap:#}");
    assert_eq!(snap["orphans"], json!([]), "{snap:#}");
    let listed = root(&["list", "--everyone", "--json"]).ok().json();
    assert_eq!(listed[0]["name"], "rc", "{listed:#}");
    assert_eq!(listed[0]["owner"], s1.name.as_str(), "{listed:#}");
    root(&["accounting", "reap", "--dry-run"]).ok();
    root(&["reconcile", "--dry-run"]).ok();
    // So does an instructor's, without becoming the service account.
    let ins = &site.instructor;
    let snap = site
        .stratus(ins, &["accounting", "snapshot", "--json"])
        .ok()
        .json();
    assert_eq!(snap["seen"], 2, "{snap:#}");
    site.stratus(ins, &["accounting", "reap", "--dry-run"]).ok();
    site.stratus(ins, &["reconcile", "--dry-run"]).ok();
    site.stratus(ins, &["accounting", "report", "--json"]).ok();
    // Root's own state holds no cluster.
    let own = home.join(".local/share/stratus/stratus.db");
    if own.exists() {
        let out = output(
            Command::new("/usr/bin/sqlite3")
                .arg(&own)
                .arg("SELECT count(*) FROM clusters"),
        )
        .ok();
        assert_eq!(out.stdout.trim(), "0", "{out}");
    }
    site.stratus(s1, &["terminate-cluster", "rc", "--yes"]).ok();
    site.assert_settled(&moto);
}

/// Temporary keys in the service account's credentials file: `admin doctor` warns within a day
/// of their expiry (the install is still sound) and names them as a problem once expired.
#[test]
fn doctor_warns_of_credentials_expiring_within_a_day_and_fails_expired_ones() {
    let Some(_serial) = start() else {
        return;
    };
    let site = Site::offline(1);
    let creds = site.credentials();
    let write = |expiry: jiff::Timestamp| {
        fs::write(
            &creds,
            format!("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\naws_session_token = FwoGZXIvYXdzEBYaDN\naws_credential_expiration = {expiry}\n"),
        )
        .unwrap()
    };
    let described = format!("the credentials file {} (profile default)", creds.display());
    let now = jiff::Timestamp::now().as_second();
    let soon = jiff::Timestamp::from_second(now + 3 * 3600).unwrap();
    write(soon);
    let out = site.doctor().ok();
    assert!(out.stdout.ends_with("is sound\n"), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "warning: the AWS credentials in {described} expire at {soon}, in 2h 5"
        )),
        "{out}"
    );
    let later = jiff::Timestamp::from_second(now + 7 * 86_400).unwrap();
    write(later);
    let out = site.doctor().ok();
    assert!(!out.stderr.contains("expire"), "{out}");
    let past = jiff::Timestamp::from_second(now - 60).unwrap();
    write(past);
    let out = site.doctor();
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "problem: the AWS credentials in {described} expired at {past}"
        )),
        "{out}"
    );
}
