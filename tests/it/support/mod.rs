//! The test context: each test gets its own HOME, state directory and site config, and runs
//! the real `stratus` binary against them. Dropping the context terminates whatever clusters the
//! test left, so a failing test does not leak node processes into the next.

#![allow(dead_code)]

pub mod faults;
pub mod pty;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_stratus");

/// Counts contexts, to give each its own loopback block.
static CONTEXTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub struct TestContext {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub profiles: PathBuf,
}

impl TestContext {
    /// A context with an empty site config (the local provider) and an empty profiles dir.
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A context whose site config is `extra` plus `profiles_dir` pointing at `self.profiles`.
    pub fn with_config(extra: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("stratus-it-")
            .tempdir()
            .unwrap();
        let home = root.path().join("home");
        let state = root.path().join("state");
        let profiles = root.path().join("profiles");
        for d in [&home, &profiles] {
            std::fs::create_dir_all(d).unwrap();
        }
        let config = root.path().join("config.toml");
        // Each context's local nodes get their own block of loopback addresses, so a test that
        // checks a terminated node's address is silent never sees another test's new node there.
        let local = if extra.contains("[local]") {
            String::new()
        } else {
            let n = CONTEXTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let block = (std::process::id() as usize * 64 + n) % (200 * 256);
            format!(
                "[local]\nfirst_address = \"127.{}.{}.2\"\n",
                20 + block / 256,
                block % 256
            )
        };
        std::fs::write(
            &config,
            format!(
                "profiles_dir = {:?}\n{extra}\n{local}",
                profiles.display().to_string()
            ),
        )
        .unwrap();
        Self {
            root,
            home,
            state,
            config,
            profiles,
        }
    }

    /// Writes a file under the site profiles directory.
    pub fn profile_file(&self, rel: &str, text: &str) {
        let p = self.profiles.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// The binary with this context's environment, and nothing inherited that could redirect it.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("STRATUS_HOME", &self.state)
            .env("STRATUS_CONFIG", &self.config)
            .env("LANG", "C.UTF-8")
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_at(None, args)
    }

    /// Runs with the clock at `at` (epoch ms; the debug build's `STRATUS_TEST_NOW`), or now.
    pub fn run_at(&self, at: Option<i64>, args: &[&str]) -> Run {
        let mut cmd = self.cmd();
        if let Some(at) = at {
            cmd.env("STRATUS_TEST_NOW", stratus::core::model::rfc3339(at));
        }
        let out = cmd.args(args).output().expect("run stratus");
        Run::new(args, out)
    }

    /// Runs and insists on success.
    pub fn ok(&self, args: &[&str]) -> Run {
        self.ok_at(None, args)
    }

    /// Runs with the clock at `at` (see `run_at`) and insists on success.
    pub fn ok_at(&self, at: Option<i64>, args: &[&str]) -> Run {
        let r = self.run_at(at, args);
        assert_eq!(r.code, 0, "stratus {args:?} failed:\n{r}");
        r
    }

    /// `stratus accounting ARGS` with the clock at `at` (see `run_at`), insisting on success:
    /// its stdout, which must be UTF-8.
    pub fn accounting_at(&self, at: Option<i64>, args: &[&str]) -> String {
        let args: Vec<&str> = std::iter::once("accounting")
            .chain(args.iter().copied())
            .collect();
        String::from_utf8(self.ok_at(at, &args).stdout_bytes).unwrap()
    }

    /// `accounting snapshot --json` at `at` (now when `None`): its summary.
    pub fn snapshot_json(&self, at: Option<i64>) -> Value {
        serde_json::from_str(&self.accounting_at(at, &["snapshot", "--json"])).unwrap()
    }

    /// `accounting reap --json ARGS` at `at`: one object per line.
    pub fn reap_json(&self, at: i64, args: &[&str]) -> Vec<Value> {
        let args: Vec<&str> = ["reap", "--json"].iter().chain(args).copied().collect();
        self.accounting_at(Some(at), &args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every usage interval of the clusters named `name`, read from the state database.
    pub fn intervals_of(&self, name: &str) -> Vec<stratus::store::Interval> {
        let store = stratus::store::Store::open_in(&self.state).expect("open the state database");
        let ids: Vec<i64> = store
            .list_clusters(None)
            .unwrap()
            .into_iter()
            .filter(|c| c.name.as_str() == name)
            .map(|c| c.id)
            .collect();
        store.intervals(&ids).unwrap()
    }

    pub fn list_json(&self) -> Vec<Value> {
        let r = self.ok(&["list", "--json"]);
        serde_json::from_str::<Value>(&r.stdout)
            .unwrap_or_else(|e| panic!("list --json is not JSON ({e}):\n{r}"))
            .as_array()
            .expect("an array")
            .clone()
    }

    pub fn cluster_json(&self, name: &str) -> Value {
        self.list_json()
            .into_iter()
            .rfind(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in list --json"))
    }

    /// Directories of the local nodes under this context's state.
    pub fn node_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.state.join("local")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        // Terminate what the test left running, through the binary...
        if let Ok(out) = self.cmd().args(["list", "--json"]).output()
            && let Ok(Value::Array(clusters)) = serde_json::from_slice::<Value>(&out.stdout)
        {
            for c in clusters {
                let live = c["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().any(|n| n["state"] != "terminated"));
                if live {
                    let name = c["name"].as_str().unwrap_or_default();
                    let _ = self
                        .cmd()
                        .args(["terminate-cluster", name, "--yes"])
                        .output();
                }
            }
        }
        // ...and, should that have failed, kill any node process still holding its lock.
        for dir in self.node_dirs() {
            if let Some(pid) = node_pid(&dir) {
                let _ = stratus::sys::kill(pid, libc::SIGKILL);
            }
            if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
                for pid in processes_of_node(id) {
                    let _ = stratus::sys::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// The pid of the live node process of a node directory (the holder of its lock).
pub fn node_pid(dir: &Path) -> Option<u32> {
    let f = std::fs::File::open(dir.join("node.lock")).ok()?;
    stratus::sys::lock_holder(&f).ok().and_then(|h| h.pid())
}

/// Every process whose environment marks it as started by this node.
pub fn processes_of_node(id: &str) -> Vec<u32> {
    stratus::cluster::provider::local::processes_with_env(&format!("STRATUS_NODE_ID={id}"))
}

/// Processes whose command line mentions `needle` (a node directory, say).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if s.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// One line from a TCP service, or the error.
pub fn read_line_from(addr: &str, port: u16) -> std::io::Result<String> {
    use std::io::BufRead;
    let stream = std::net::TcpStream::connect_timeout(
        &format!("{addr}:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Sends what a child writes on its stderr (which must be `Stdio::piped()`) to the test's own
/// captured output, line by line, instead of the console: shown only when the test fails.
pub fn forward_stderr(child: &mut std::process::Child, label: &str) {
    use std::io::BufRead;
    let Some(err) = child.stderr.take() else {
        return;
    };
    let label = label.to_owned();
    // A thread spawned by the test inherits the test's output capture.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            match line {
                Ok(l) => eprintln!("[{label}] {l}"),
                Err(_) => break,
            }
        }
    });
}

/// Says that a test skips (part of) what it checks because `what` is missing: one line
/// `skipping: <what>` on the test's output, and the same line appended to the file named by
/// `STRATUS_SKIP_LOG` when it is set, so `scripts/test` can fail a run that skipped anything.
pub fn skip(what: &str) {
    let line = format!("skipping: {what}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("STRATUS_SKIP_LOG").filter(|p| !p.is_empty()) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot append to STRATUS_SKIP_LOG ({}): {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes: for conditions with no event to wait
/// on (a process exiting elsewhere).
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The result of one run of the binary.
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Run {
    fn new(args: &[&str], out: Output) -> Self {
        Self {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stdout_bytes: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "args: {:?}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}
