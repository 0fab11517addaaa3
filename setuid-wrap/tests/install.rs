//! The installed wrapper, for real: setuid to a real service user, with `cap_setgid`, run as
//! a real caller user from a hostile process state.
//!
//! Each test creates its own users (`useradd --system`) and its own root-owned install under
//! `/opt` (never `/tmp`: the wrapper refuses a world-writable ancestor), installs the wrapper
//! as `stratus admin install` will (copy, patch, chown, chmod 04755, the capability xattr) with
//! a shell script as the runner, and removes all of it in `Drop` guards. The runner script
//! writes what it received (argv, environment, credentials, descriptors, signal state, limits)
//! to `<install>/out/report`, since its argv is fixed and its stdout may be closed.
//! These tests need root; without it they print one line and pass.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use setuid_wrap::cgroup::{self, CgroupMount};
use setuid_wrap::identity;
use setuid_wrap::limits::Resource;
use setuid_wrap::placeholder::{self, AREA_LEN, MARKER, WrapConfig};
use setuid_wrap::{CAPABILITY_XATTR, setgid_capability_xattr, sys};

const WRAP: &str = env!("CARGO_BIN_EXE_stratus-wrap");

/// One test at a time: useradd locks /etc/passwd, and a fork while another test holds a freshly
/// written executable open for writing would make its exec fail with ETXTBSY.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root() -> bool {
    sys::getresuid().1 == 0
}

macro_rules! need_root {
    () => {
        if !is_root() {
            println!("skipping: the setuid wrapper tests need root");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A Unix user (with its own group) that is deleted on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn create(name: String) -> User {
        let mut name = name;
        name.truncate(32);
        ok(Command::new("/usr/sbin/useradd").args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]));
        let id = |flag: &str| -> u32 {
            ok(Command::new("id").args([flag, &name]))
                .trim()
                .parse()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        User { name, uid, gid }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/userdel").arg(&self.name).output();
        let _ = Command::new("/usr/sbin/groupdel").arg(&self.name).output();
    }
}

/// An install under `/opt`, removed on drop (before its users, declared after it).
struct Install {
    root: PathBuf,
    cfg: WrapConfig,
    report: PathBuf,
    svc: User,
    caller: User,
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn mkdir(path: &Path, mode: u32, owner: Option<&User>) {
    fs::create_dir(path).unwrap();
    if let Some(u) = owner {
        chown(path, Some(u.uid), Some(u.gid)).unwrap();
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The test runner: writes what it was given to `<out>/report`. `bash -p` keeps the effective
/// uid (bash without -p resets it to the real one). The process is not dumpable (it came from a
/// setuid exec), so other processes may not read its /proc entries: every /proc read is done by
/// the shell itself (globs, `read` loops), never by a subshell or a command. Its own
/// `/proc/$$/environ` is root-owned and 0400 for the same reason, so the environment is listed
/// from bash's exported variables: what it received plus `PWD` (the working directory) and
/// `SHLVL` (1, or one more than a `SHLVL` it received).
fn runner_script(report: &Path) -> String {
    format!(
        r#"#!/bin/bash -p
fds=(/proc/$$/fd/*)
{{
printf 'arg0=%s\n' "$0"
for a in "$@"; do printf 'arg=%s\n' "$a"; done
for f in "${{fds[@]}}"; do printf 'fd=%s\n' "${{f##*/}}"; done
for i in 0 1 2; do if [ -e /proc/$$/fd/$i ]; then printf 'fdok=%s\n' "$i"; fi; done
printf 'umask=%s\n' "$(umask)"
printf 'pwd=%s\n' "$(pwd -P)"
for n in $(compgen -e); do printf 'env=%s=%s\n' "$n" "${{!n}}"; done
while IFS= read -r l; do printf 'status=%s\n' "$l"; done < /proc/$$/status
while IFS= read -r l; do printf 'limit=%s\n' "$l"; done < /proc/$$/limits
}} > {report}
exit 0
"#,
        report = report.display()
    )
}

impl Install {
    fn new() -> Install {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let svc = User::create(format!("swt-svc-{pid}-{n}"));
        let caller = User::create(format!("swt-call-{pid}-{n}"));
        let root = PathBuf::from(format!("/opt/stratus-wrap-test-{pid}-{n}"));
        let _ = fs::remove_dir_all(&root);
        mkdir(&root, 0o755, None);
        let cfg = WrapConfig {
            runner: root.join("bin/stratus"),
            config: root.join("etc/stratus/config.toml"),
            wrapper: root.join("bin/stratus-wrap"),
            service_user: svc.name.clone(),
            service_uid: svc.uid,
            service_gid: svc.gid,
            service_home: root.join("home"),
        };
        let report = root.join("out/report");
        let install = Install {
            root,
            cfg,
            report,
            svc,
            caller,
        };
        let root = &install.root;
        mkdir(&root.join("bin"), 0o755, None);
        mkdir(&root.join("etc"), 0o755, None);
        mkdir(&root.join("etc/stratus"), 0o755, None);
        fs::write(&install.cfg.config, "# site config\n").unwrap();
        set_mode(&install.cfg.config, 0o644);
        mkdir(&root.join("home"), 0o700, Some(&install.svc));
        mkdir(&root.join("out"), 0o700, Some(&install.svc));
        fs::write(&install.cfg.runner, runner_script(&install.report)).unwrap();
        set_mode(&install.cfg.runner, 0o755);
        install.install_wrapper(&install.cfg.wrapper.clone(), &install.cfg.clone());
        install
    }

    /// As `stratus admin install` does it: copy, patch, chown, chmod, xattr (chown clears the
    /// setuid bit and file capabilities, so it comes first).
    fn install_wrapper(&self, dest: &Path, cfg: &WrapConfig) {
        let built = fs::read(WRAP).unwrap();
        fs::write(dest, placeholder::patch(&built, cfg).unwrap()).unwrap();
        self.setuid(dest, true);
    }

    fn setuid(&self, dest: &Path, capability: bool) {
        chown(dest, Some(self.svc.uid), Some(self.svc.gid)).unwrap();
        set_mode(dest, 0o4755);
        if capability {
            sys::set_xattr(dest, CAPABILITY_XATTR, &setgid_capability_xattr()).unwrap();
        }
    }

    /// Runs `wrapper --evil arg` as the caller (with two supplementary groups), after
    /// `shell_prefix` in a `sh` run as the caller, from a hostile state: fds 3 and 7 open
    /// without close-on-exec, every signal ignored and blocked (`env --ignore-signal
    /// --block-signal`), hostile environment variables.
    fn run_as_caller(
        &self,
        wrapper: &Path,
        setpriv_extra: &[&str],
        shell_prefix: &str,
        redirections: &str,
    ) -> Output {
        run(&mut self.caller_command(wrapper, setpriv_extra, shell_prefix, redirections))
    }

    /// `run_default`, but from inside the cgroups whose `cgroup.procs` files are given: root
    /// moves the shell there before it becomes the caller (as logind or systemd would).
    fn run_in_cgroups(&self, procs: &[PathBuf]) -> Output {
        let inner = self.caller_command(&self.cfg.wrapper, &[], "", "");
        let moves: String = procs
            .iter()
            .map(|p| format!("echo $$ > '{}' || exit 97; ", p.display()))
            .collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(["-c", &format!("{moves}exec \"$@\""), "sh"])
            .arg(inner.get_program())
            .args(inner.get_args());
        let out = run(&mut cmd);
        assert_ne!(out.status.code(), Some(97), "could not join {procs:?}");
        out
    }

    /// The command `run_as_caller` runs.
    fn caller_command(
        &self,
        wrapper: &Path,
        setpriv_extra: &[&str],
        shell_prefix: &str,
        redirections: &str,
    ) -> Command {
        let _ = fs::remove_file(&self.report);
        let c = &self.caller;
        let script =
            format!("exec 3</etc/passwd 7</etc/passwd; {shell_prefix} exec \"$@\" {redirections}");
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg(format!("--reuid={}", c.uid))
            .arg(format!("--regid={}", c.gid))
            .arg(format!("--groups={},100,4", c.gid))
            .args(setpriv_extra)
            .args(["--", "/bin/sh", "-c", &script, "sh"])
            .args(["/usr/bin/env", "-i", "--ignore-signal", "--block-signal"])
            .args(HOSTILE.iter().chain(KEPT).map(|(k, v)| format!("{k}={v}")))
            .arg(wrapper)
            .args(["--evil", "arg"]);
        cmd
    }

    fn run_default(&self) -> Output {
        self.run_as_caller(&self.cfg.wrapper, &[], "", "")
    }

    fn report(&self) -> Report {
        let text = fs::read_to_string(&self.report)
            .unwrap_or_else(|e| panic!("no report from the runner: {e}"));
        Report(text.lines().map(str::to_string).collect())
    }
}

const HOSTILE: &[(&str, &str)] = &[
    ("LD_LIBRARY_PATH", "/nonexistent"),
    ("GCONV_PATH", "/nonexistent"),
    ("GLIBC_TUNABLES", "glibc.malloc.check=0"),
    ("IFS", "/"),
    ("PATH", "/tmp/evil:/usr/bin"),
    ("HOME", "/tmp"),
    ("USER", "root"),
    ("BASH_ENV", "/nonexistent/evil.sh"),
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ("AWS_ACCESS_KEY_ID", "AKIAEVIL"),
    ("AWS_CONFIG_FILE", "/nonexistent/config"),
    ("STRATUS_CONFIG", "/nonexistent/stratus.toml"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
    ("LC_ALL", "../../../tmp/evil"),
    ("RUST_BACKTRACE", "full"),
    // Bash imports these; if they arrived, the report would show SHLVL=42 and OLDPWD.
    ("SHLVL", "41"),
    ("OLDPWD", "/usr"),
    ("PWD", "/usr"),
];

const KEPT: &[(&str, &str)] = &[
    ("TERM", "xterm-256color"),
    ("LANG", "C.UTF-8"),
    ("LC_TIME", "en_GB.UTF-8"),
];

struct Report(Vec<String>);

impl Report {
    fn all(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.0
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    }
    fn one(&self, key: &str) -> &str {
        match self.all(key).as_slice() {
            [v] => v,
            other => panic!("{key}: {other:?} in {:#?}", self.0),
        }
    }
    /// A /proc/self/status field, split on whitespace.
    fn status(&self, field: &str) -> Vec<&str> {
        let prefix = format!("{field}:");
        let line = self
            .all("status")
            .into_iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {field} in status"));
        line[prefix.len()..].split_whitespace().collect()
    }
    /// A /proc/self/limits row: (soft, hard).
    fn limit(&self, name: &str) -> (String, String) {
        let line = self
            .all("limit")
            .into_iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in limits"));
        let rest: Vec<&str> = line[name.len()..].split_whitespace().collect();
        (rest[0].to_string(), rest[1].to_string())
    }
}

/// Exit code 1 and one line `stratus-wrap: ...` containing `want`, and the runner never ran.
fn assert_refused(install: &Install, out: &Output, want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(
        lines[0].starts_with("stratus-wrap: ") && lines[0].contains(want),
        "{:?} lacks {want:?}",
        lines[0]
    );
    assert!(!install.report.exists(), "the runner ran");
}

#[test]
fn the_built_binary_holds_the_marker_once_and_patching_reaches_it() {
    let _serial = serial();
    let built = fs::read(WRAP).unwrap();
    assert_eq!(placeholder::count(&built, MARKER), 1);
    let at = built
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .unwrap();
    let area = &built[at + MARKER.len()..at + MARKER.len() + AREA_LEN];
    assert_eq!(placeholder::decode(area).unwrap(), None);

    // Unpatched, it says so.
    let out = run(Command::new(WRAP).env_clear());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "stratus-wrap: not installed: run `stratus admin install`\n"
    );

    // Patched (not setuid: this part needs no root), it reads the values: it names the service
    // user it expects to run as.
    let dir = TempDir::new();
    let cfg = WrapConfig {
        runner: "/nonexistent/bin/stratus".into(),
        config: "/nonexistent/etc/stratus/config.toml".into(),
        wrapper: "/nonexistent/bin/stratus-wrap".into(),
        service_user: "swt-patched-user".into(),
        service_uid: 4_000_000_000,
        service_gid: 4_000_000_000,
        service_home: "/nonexistent".into(),
    };
    let patched_path = dir.0.join("stratus-wrap");
    let patched = placeholder::patch(&built, &cfg).unwrap();
    assert_eq!(placeholder::count(&patched, MARKER), 1);
    fs::write(&patched_path, &patched).unwrap();
    set_mode(&patched_path, 0o755);
    let out = run(Command::new(&patched_path).env_clear());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("swt-patched-user"), "{stderr}");
    if !is_root() {
        assert!(stderr.contains("(uid 4000000000)"), "{stderr}");
    }
    // Installing twice: patch the patched binary.
    let again = placeholder::patch(
        &patched,
        &WrapConfig {
            service_user: "swt-second".into(),
            ..cfg
        },
    )
    .unwrap();
    fs::write(&patched_path, &again).unwrap();
    let out = run(Command::new(&patched_path).env_clear());
    assert!(String::from_utf8_lossy(&out.stderr).contains("swt-second"));
}

/// A temporary directory for the tests that need no root.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("swt-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_runner_gets_a_clean_process() {
    let _serial = serial();
    need_root!();
    let install = Install::new();
    // The caller lowers the soft NOFILE limit: the wrapper raises it again.
    let out = install.run_as_caller(&install.cfg.wrapper, &[], "ulimit -S -n 64;", "");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r = install.report();
    let (svc, caller) = (&install.svc, &install.caller);
    let cfg = &install.cfg;

    // A fixed argv; the wrapper's own arguments are not passed on. (The kernel hands a script's
    // interpreter the script path as $0.)
    assert_eq!(r.one("arg0"), cfg.runner.to_str().unwrap());
    let config = cfg.config.to_str().unwrap();
    assert_eq!(r.all("arg"), ["runner", "--config", config]);

    // Identity: the caller stays the real uid; everything else is the service account.
    let (u, s) = (caller.uid.to_string(), svc.uid.to_string());
    assert_eq!(r.status("Uid"), [&u, &s, &s, &s]);
    let g = svc.gid.to_string();
    assert_eq!(r.status("Gid"), [&g, &g, &g, &g]);
    assert!(r.status("Groups").is_empty(), "{:?}", r.status("Groups"));
    for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(r.status(caps), ["0000000000000000"], "{caps}");
    }
    assert_eq!(r.status("NoNewPrivs"), ["0"]);

    // umask and working directory.
    assert_eq!(r.one("umask"), "0077");
    assert_eq!(r.one("pwd"), cfg.service_home.to_str().unwrap());

    // Exactly the allow-list, plus what bash adds itself: PWD (the working directory) and
    // SHLVL=1 (no SHLVL came in).
    let mut env = r.all("env");
    env.sort();
    let home = format!("HOME={}", cfg.service_home.display());
    let pwd = format!("PWD={}", cfg.service_home.display());
    let user = format!("USER={}", svc.name);
    let logname = format!("LOGNAME={}", svc.name);
    let mut want = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin",
        &home,
        &user,
        &logname,
        "TERM=xterm-256color",
        "LANG=C.UTF-8",
        "LC_TIME=en_GB.UTF-8",
        &pwd,
        "SHLVL=1",
    ];
    want.sort();
    assert_eq!(env, want);

    // No descriptor beyond 0-2 but the shell's own: the glob's directory (3, the lowest free
    // one) and bash's script descriptor (255). fds 3 and 7 of the caller did not arrive.
    let mut fds: Vec<u32> = r.all("fd").iter().map(|f| f.parse().unwrap()).collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3, 255]);
    assert_eq!(r.all("fdok"), ["0", "1", "2"]);

    // Signals: the caller ignored and blocked them all. Nothing is blocked now, and the only
    // ignored signal is SIGQUIT (bit 2), which a non-interactive bash ignores itself.
    assert_eq!(r.status("SigIgn"), ["0000000000000004"]);
    assert_eq!(r.status("SigBlk"), ["0000000000000000"]);

    // Limits: no core dumps; NOFILE raised from the caller's 64.
    assert_eq!(
        r.limit("Max core file size"),
        ("0".to_string(), "0".to_string())
    );
    let (_, hard) = sys::get_limit(Resource::Nofile).unwrap();
    let want_soft = hard.min(65536).to_string();
    let (soft, _) = r.limit("Max open files");
    assert_eq!(soft, want_soft);
}

#[test]
fn closed_standard_descriptors_reach_the_runner_open() {
    let _serial = serial();
    need_root!();
    let install = Install::new();
    let out = install.run_as_caller(&install.cfg.wrapper, &[], "", "<&- >&- 2>&-");
    assert!(out.status.success(), "{:?}", out.status);
    let r = install.report();
    assert_eq!(r.all("fdok"), ["0", "1", "2"]);
    let mut fds: Vec<u32> = r.all("fd").iter().map(|f| f.parse().unwrap()).collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3, 255]);
}

#[test]
fn unsafe_installs_are_refused() {
    let _serial = serial();
    need_root!();
    let install = Install::new();
    let root = install.root.display().to_string();

    // A world-writable ancestor.
    set_mode(&install.root, 0o757);
    let out = install.run_default();
    assert_refused(
        &install,
        &out,
        &format!(
            "unsafe install: {root} (on the path to the runner {root}/bin/stratus) is world-writable (mode 0757)"
        ),
    );
    set_mode(&install.root, 0o755);

    // A group-writable configuration directory.
    let etc = install.root.join("etc/stratus");
    set_mode(&etc, 0o775);
    let out = install.run_default();
    assert_refused(
        &install,
        &out,
        &format!(
            "unsafe install: the configuration directory {root}/etc/stratus is group-writable (mode 0775)"
        ),
    );
    set_mode(&etc, 0o755);

    // A configuration file owned by the caller.
    chown(&install.cfg.config, Some(install.caller.uid), None).unwrap();
    let out = install.run_default();
    assert_refused(
        &install,
        &out,
        &format!(
            "the configuration file {root}/etc/stratus/config.toml is owned by uid {}",
            install.caller.uid
        ),
    );
    chown(&install.cfg.config, Some(0), None).unwrap();

    // A runner that is a symlink (to a good file).
    let link_wrapper = install.root.join("bin/link-wrap");
    let real = install.root.join("bin/stratus-real");
    fs::copy(&install.cfg.runner, &real).unwrap();
    std::os::unix::fs::symlink(&real, install.root.join("bin/stratus-link")).unwrap();
    let cfg = WrapConfig {
        runner: install.root.join("bin/stratus-link"),
        wrapper: link_wrapper.clone(),
        ..install.cfg.clone()
    };
    install.install_wrapper(&link_wrapper, &cfg);
    let out = install.run_as_caller(&link_wrapper, &[], "", "");
    assert_refused(
        &install,
        &out,
        &format!("unsafe install: the runner {root}/bin/stratus-link is a symlink"),
    );

    // The service home is missing.
    let home = &install.cfg.service_home;
    let moved = install.root.join("home-moved");
    fs::rename(home, &moved).unwrap();
    let out = install.run_default();
    assert_refused(&install, &out, "cannot enter the service home");
    fs::rename(&moved, home).unwrap();

    // All restored: it runs.
    let out = install.run_default();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(install.report.exists());
}

#[test]
fn a_broken_setuid_install_is_refused() {
    let _serial = serial();
    need_root!();
    let install = Install::new();
    let wrapper = &install.cfg.wrapper;

    // Unpatched.
    let unpatched = install.root.join("bin/unpatched-wrap");
    fs::copy(WRAP, &unpatched).unwrap();
    install.setuid(&unpatched, true);
    let out = install.run_as_caller(&unpatched, &[], "", "");
    assert_refused(&install, &out, "not installed: run `stratus admin install`");

    // no_new_privs: the kernel ignores the setuid bit.
    let out = install.run_as_caller(wrapper, &["--no-new-privs"], "", "");
    assert_refused(&install, &out, "no_new_privs is set");

    // Without the capability (a chown clears it), groups cannot be dropped.
    install.setuid(wrapper, false);
    assert_eq!(sys::get_xattr(wrapper, CAPABILITY_XATTR).unwrap(), None);
    let out = install.run_default();
    assert_refused(
        &install,
        &out,
        "cannot drop the caller's supplementary groups: the wrapper lacks cap_setgid",
    );

    // Without the setuid bit.
    install.setuid(wrapper, true);
    set_mode(wrapper, 0o755);
    let out = install.run_default();
    assert_refused(
        &install,
        &out,
        &format!(
            "not running as the service user {} (uid {}) but as uid {}: the setuid bit is missing",
            install.svc.name, install.svc.uid, install.caller.uid
        ),
    );

    // Setuid root.
    chown(wrapper, Some(0), Some(0)).unwrap();
    set_mode(wrapper, 0o4755);
    let out = install.run_default();
    assert_refused(&install, &out, "installed setuid root");

    // Reinstalled over the top: it runs.
    install.install_wrapper(wrapper, &install.cfg);
    let out = install.run_default();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn low_hard_limits_are_refused() {
    let _serial = serial();
    need_root!();
    let install = Install::new();
    for (ulimit, want) in [
        (
            "ulimit -f 1",
            "the caller's hard limit RLIMIT_FSIZE is 512 bytes; the runner needs at least 1 GiB \
             (raise it, or do not lower it with ulimit)",
        ),
        (
            "ulimit -n 8",
            "the caller's hard limit RLIMIT_NOFILE is 8 open files; the runner needs at least 256",
        ),
        (
            "ulimit -t 1",
            "the caller's hard limit RLIMIT_CPU is 1 s; the runner needs at least 600 s",
        ),
    ] {
        let out = install.run_as_caller(&install.cfg.wrapper, &[], &format!("{ulimit};"), "");
        assert_refused(&install, &out, want);
    }
}

// ---------------------------------------------------------------------------------------------
// The caller's cgroups.

/// A cgroup made for one test, in the hierarchy mounted at `mount` (v2, or a v1 one), removed
/// (with the cgroups below it) on drop, once the processes in it have ended.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(mount: &Path, name: &str) -> TestCgroup {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = mount.join(format!("swt-{name}-{}-{n}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup { dir }
    }

    fn child(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir(&d).unwrap();
        d
    }

    /// What systemd's `Delegate=yes` does for a user: the directory and the files listed in
    /// /sys/kernel/cgroup/delegate (v2), or the whole directory's files (v1), become the user's.
    fn delegate(dir: &Path, u: &User) {
        chown(dir, Some(u.uid), Some(u.gid)).unwrap();
        let delegated = fs::read_to_string("/sys/kernel/cgroup/delegate").unwrap_or_default();
        for e in fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let v2_listed = delegated.lines().any(|l| l == name);
            let v1 = !dir.join("cgroup.controllers").exists();
            if e.file_type().unwrap().is_file() && (v2_listed || v1) {
                chown(e.path(), Some(u.uid), Some(u.gid)).unwrap();
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = vec![self.dir.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = fs::read_dir(&dirs[i]) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(e.path());
                    }
                }
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Where this machine mounts a hierarchy: cgroup v2 (`None`), or the v1 one of `controller`.
fn cgroup_mount(controller: Option<&str>) -> Option<CgroupMount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    cgroup::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.root == "/")
        .find(|m| match controller {
            None => m.v2,
            Some(c) => !m.v2 && m.options.iter().any(|o| o == c),
        })
}

#[test]
fn a_caller_who_can_write_its_cgroup_or_an_ancestor_is_refused() {
    let _serial = serial();
    need_root!();
    let install = Install::new();
    let v2 = cgroup_mount(None)
        .expect("no cgroup v2 hierarchy is mounted here (the wrapper would refuse every caller)");
    let procs = |d: &Path| d.join("cgroup.procs");
    let rel = |d: &Path| format!("/{}", d.strip_prefix(&v2.mount_point).unwrap().display());

    // A cgroup of root's, as logind makes for a login session: the wrapper runs.
    let session = TestCgroup::new(&v2.mount_point, "session");
    let out = install.run_in_cgroups(&[procs(&session.dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(install.report.exists());

    // A delegated cgroup (systemd-run --user --scope lands in one): refused, before the runner.
    let delegated = TestCgroup::new(&v2.mount_point, "delegated");
    TestCgroup::delegate(&delegated.dir, &install.caller);
    let out = install.run_in_cgroups(&[procs(&delegated.dir)]);
    assert_refused(
        &install,
        &out,
        &format!(
            "the caller can write {} (its cgroup v2 cgroup {}), so it could freeze or kill the \
             runner mid-launch: run the command from a login session (not a systemd --user scope \
             or service), or have the site use the class service (transport = \"service\")",
            delegated.dir.display(),
            rel(&delegated.dir)
        ),
    );

    // A root-owned cgroup below a delegated one: the caller could move the runner out of it
    // into a cgroup of its own, or freeze the whole subtree.
    let under = TestCgroup::new(&v2.mount_point, "ancestor");
    TestCgroup::delegate(&under.dir, &install.caller);
    let scope = under.child("run-1.scope");
    let out = install.run_in_cgroups(&[procs(&scope)]);
    assert_refused(
        &install,
        &out,
        &format!(
            "the caller can write {} (an ancestor of its cgroup v2 cgroup {})",
            under.dir.display(),
            rel(&scope)
        ),
    );

    // One control file writable through one of the caller's supplementary groups (100): the
    // check uses the caller's own groups, before the wrapper drops them.
    let grouped = TestCgroup::new(&v2.mount_point, "group");
    let freeze = grouped.dir.join("cgroup.freeze");
    chown(&freeze, None, Some(100)).unwrap();
    set_mode(&freeze, 0o664);
    let out = install.run_in_cgroups(&[procs(&grouped.dir)]);
    assert_refused(
        &install,
        &out,
        &format!("the caller can write {}", freeze.display()),
    );

    // The v1 freezer, where this machine has one.
    if let Some(freezer) = cgroup_mount(Some("freezer")) {
        let frozen = TestCgroup::new(&freezer.mount_point, "freezer");
        TestCgroup::delegate(&frozen.dir, &install.caller);
        let out = install.run_in_cgroups(&[procs(&session.dir), procs(&frozen.dir)]);
        let dir = frozen.dir.display().to_string();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_refused(
            &install,
            &out,
            "(its cgroup v1 freezer cgroup /swt-freezer-",
        );
        assert!(
            err.contains(&format!("the caller can write {dir}")),
            "{err}"
        );
        // Root-owned again: it runs.
        chown(&frozen.dir, Some(0), Some(0)).unwrap();
        for e in fs::read_dir(&frozen.dir).unwrap().flatten() {
            chown(e.path(), Some(0), Some(0)).unwrap();
        }
        let out = install.run_in_cgroups(&[procs(&session.dir), procs(&frozen.dir)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        println!("no cgroup v1 freezer is mounted here: nothing of it to check");
    }

    // Root as the caller is not checked: root can freeze anything.
    let out = run(Command::new("/bin/sh")
        .env_clear()
        .args(["-c", "echo $$ > \"$1\" && exec \"$2\"", "sh"])
        .arg(procs(&delegated.dir))
        .arg(&install.cfg.wrapper));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_wrapper_answers_its_trial_run_and_holds_its_build_marker_once() {
    let _serial = serial();
    let built = fs::read(WRAP).unwrap();
    identity::check_build(&built).unwrap();
    assert_eq!(placeholder::count(&built, &identity::build_marker()), 1);
    // This test harness links the library, so it holds the placeholder marker, and must not
    // pass for a wrapper.
    let me = fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(placeholder::count(&me, MARKER) >= 1);
    let err = identity::check_build(&me).unwrap_err();
    assert!(err.starts_with("it is not a stratus-wrap build"), "{err}");

    // Unpatched and not setuid, it answers the fixed line and nothing else.
    let out = run(Command::new(WRAP).env_clear().arg(identity::TRIAL_ARG));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", identity::ANSWER)
    );
    assert!(out.stderr.is_empty());
    // With another argument beside it, it is not a trial run: arguments are ignored.
    let out = run(Command::new(WRAP)
        .env_clear()
        .args([identity::TRIAL_ARG, "x"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}
