//! The shipped Hadoop profiles: what they render (snapshots under `tests/snapshots/hadoop/`,
//! compared exactly; `STRATUS_UPDATE_SNAPSHOTS=1` rewrites them), `bash -n` and shellcheck on
//! every script, the scripts embedded in the user-data included; the XML the configuration
//! writer produces, by running it; the configure step's logic against stand-in `hdfs`, `yarn`,
//! `ssh` and `sudo`; a launch of `hadoop-spot` on moto; and a whole launch of the shipped profile
//! against moto through the faithful hypervisor, its user-data, install and configure step run for
//! real against stand-ins, with an install that outlasts the ready wait.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use stratus::cluster::Role;
use stratus::config::profile::{Profile, ProfileSet};
use stratus::templates::{BootContext, ConfigureContext, NodeFacts, Renderer};

use crate::ec2::ec2_moto::{Moto, tag};

const REQUEST: &str = "req-0123456789abcdef";

/// MemTotal of an m5.large (8 GiB, less what the kernel keeps) and of an m5.xlarge (16 GiB).
const M5_LARGE_KB: u64 = 7_970_000;
const M5_XLARGE_KB: u64 = 16_100_000;

fn profile(name: &str) -> Profile {
    ProfileSet::load(None).unwrap().resolve(name).unwrap()
}

fn boot<'a>(p: &'a Profile, env: &'a BTreeMap<String, String>, role: Role) -> BootContext<'a> {
    BootContext {
        cluster: "demo",
        owner: "alice",
        role,
        request_id: REQUEST,
        profile: p.into(),
        env,
        image_build: false,
    }
}

/// The user-data of a role: the same for every node of it (they launch in one call).
fn user_data(p: &Profile, role: Role) -> String {
    render_user_data(p, role, false)
}

/// The user-data of a role, for a launch or (`image_build`) for `admin image build`.
fn render_user_data(p: &Profile, role: Role, image_build: bool) -> String {
    let env = BTreeMap::new();
    let mut ctx = boot(p, &env, role);
    ctx.image_build = image_build;
    Renderer::for_profile(p)
        .unwrap()
        .user_data(&p.role(role).user_data, &ctx)
        .unwrap()
}

fn facts(role: Role, index: u32, address: &str) -> NodeFacts {
    NodeFacts {
        name: match role {
            Role::Master => "demo-master".into(),
            Role::Worker => format!("demo-worker-{index}"),
        },
        role,
        index,
        address: address.into(),
        private_address: address.into(),
    }
}

/// Every pushed file of the profile, rendered for the node it goes to, by destination.
fn pushed(p: &Profile) -> BTreeMap<String, String> {
    let env = BTreeMap::new();
    let r = Renderer::for_profile(p).unwrap();
    let master = facts(Role::Master, 0, "10.0.0.10");
    let workers = vec![
        facts(Role::Worker, 1, "10.0.0.11"),
        facts(Role::Worker, 2, "10.0.0.12"),
    ];
    let mut out = BTreeMap::new();
    for f in &p.files {
        let node = match f.to {
            stratus::config::profile::FileTarget::Workers => workers[0].clone(),
            _ => master.clone(),
        };
        let ctx = ConfigureContext {
            boot: boot(p, &env, node.role),
            index: node.index,
            node_name: node.name.clone(),
            node,
            master: master.clone(),
            workers: workers.clone(),
        };
        out.insert(f.dest.clone(), r.render(&f.template, &ctx).unwrap());
    }
    out
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/hadoop")
}

/// Compares `text` with the snapshot `name`, or rewrites it with `STRATUS_UPDATE_SNAPSHOTS=1`.
fn assert_snapshot(name: &str, text: &str) {
    let path = snapshot_dir().join(name);
    if std::env::var("STRATUS_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(snapshot_dir()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read snapshot {} ({e}); run with STRATUS_UPDATE_SNAPSHOTS=1 to write it",
            path.display()
        )
    });
    if want != text {
        let line = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| want.lines().count().min(text.lines().count()) + 1);
        panic!(
            "{name} differs from its snapshot {} at line {line}:\n  snapshot: {:?}\n  rendered: {:?}\n(run with STRATUS_UPDATE_SNAPSHOTS=1 to accept the new rendering)",
            path.display(),
            want.lines().nth(line - 1).unwrap_or("<end>"),
            text.lines().nth(line - 1).unwrap_or("<end>"),
        );
    }
}

/// The files a script writes with `cat > PATH <<'DELIM' … DELIM`, by path.
fn embedded_files(script: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut lines = script.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("cat > ") else {
            continue;
        };
        let Some((path, delim)) = rest.split_once(" <<'") else {
            continue;
        };
        let delim = delim.trim_end_matches('\'');
        // The user-data writes under "$R" (the sandbox root of the tests; empty on a node).
        let path = path.trim_start_matches("\"$R").trim_end_matches('"');
        let mut body = String::new();
        for l in lines.by_ref() {
            if l == delim {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.insert(path.to_owned(), body);
    }
    out
}

#[test]
fn the_shipped_profiles_resolve_for_ec2() {
    let h = profile("hadoop");
    let s = profile("hadoop-spot");
    for p in [&h, &s] {
        assert_eq!(p.providers, vec![stratus::config::ProviderKind::Ec2]);
        assert!(p.intra_cluster_key);
        assert!(!p.master.spot, "the master is never on spot");
        assert!(
            p.master.image.contains("ubuntu/server/24.04"),
            "{}",
            p.master.image
        );
        assert_eq!(p.workers_file.as_deref(), Some(".stratus/workers"));
        assert_eq!(
            p.vars["hadoop_version"].as_str().unwrap().split('.').next(),
            Some("3")
        );
        // stratus waits for the install (the phase file), not the configure step.
        assert_eq!(p.boot_timeout_secs, Some(1200));
        assert!(!p.vars.contains_key("boot_timeout_secs"));
        assert!(p.boot_timeout_secs.unwrap() > p.ready_timeout_secs);
    }
    // The current release, and the Java it needs.
    assert_eq!(h.vars["hadoop_version"], "3.5.0");
    assert_eq!(h.vars["java_package"], "openjdk-17-jre-headless");
    assert!(!h.worker.spot);
    assert!(s.worker.spot);
    // Spot changes what EC2 is asked for, not what the nodes run.
    assert_eq!(user_data(&h, Role::Worker), user_data(&s, Role::Worker));
}

#[test]
fn rendered_scripts_match_their_snapshots() {
    let h = profile("hadoop");
    assert_snapshot("master-user-data.sh", &user_data(&h, Role::Master));
    assert_snapshot("worker-user-data.sh", &user_data(&h, Role::Worker));
    let files = pushed(&h);
    assert_snapshot("configure.sh", &files[".stratus/hadoop-configure.sh"]);
    assert_eq!(files[".stratus/hadoop-master"], "10.0.0.10\n");
    let mut pre = h.clone();
    pre.vars.insert("hadoop_preinstalled".into(), true.into());
    assert_snapshot(
        "master-user-data-preinstalled.sh",
        &user_data(&pre, Role::Master),
    );
    assert_snapshot(
        "master-user-data-image-build.sh",
        &render_user_data(&h, Role::Master, true),
    );
}

#[test]
fn user_data_carries_the_profiles_install_settings() {
    let h = profile("hadoop");
    let ud = user_data(&h, Role::Master);
    let version = h.vars["hadoop_version"].as_str().unwrap();
    assert!(
        ud.contains(&format!("hadoop_version={version}\n")),
        "pinned version"
    );
    assert!(
        ud.contains("sources=(https://dlcdn.apache.org/hadoop/common https://archive.apache.org/dist/hadoop/common )"),
        "{ud}"
    );
    assert!(
        ud.contains("checksums=(https://downloads.apache.org/hadoop/common "),
        "checksums from Apache's download site first: {ud}"
    );
    assert!(ud.contains("image_build=false\n"));
    assert!(render_user_data(&h, Role::Master, true).contains("image_build=true\n"));
    assert!(
        !ud.to_lowercase().contains("private key"),
        "no secret in user-data"
    );
    // Pinning the checksum: the install fetches none (shown by running it, below).
    let mut pinned = h.clone();
    pinned
        .vars
        .insert("hadoop_sha512".into(), "ab".repeat(64).into());
    let ud = user_data(&pinned, Role::Worker);
    assert!(
        ud.contains(&format!("sha512={}\n", "ab".repeat(64))),
        "{ud}"
    );
}

/// Every script a Hadoop cluster runs, by a name for messages: the user-data of each role and
/// variant, the configure step, and the scripts the user-data writes.
fn all_scripts() -> Vec<(String, String)> {
    let h = profile("hadoop");
    let mut pre = h.clone();
    pre.vars.insert("hadoop_preinstalled".into(), true.into());
    let mut scripts = vec![
        ("master user-data".to_owned(), user_data(&h, Role::Master)),
        ("worker user-data".to_owned(), user_data(&h, Role::Worker)),
        (
            "preinstalled master user-data".to_owned(),
            user_data(&pre, Role::Master),
        ),
        (
            "preinstalled worker user-data".to_owned(),
            user_data(&pre, Role::Worker),
        ),
        (
            "image-build user-data".to_owned(),
            render_user_data(&h, Role::Master, true),
        ),
        (
            "configure.sh".to_owned(),
            pushed(&h)[".stratus/hadoop-configure.sh"].clone(),
        ),
    ];
    for (path, body) in embedded_files(&user_data(&h, Role::Master)) {
        scripts.push((path, body));
    }
    scripts
}

#[test]
fn every_script_passes_bash_n_and_shellcheck() {
    let scripts = all_scripts();
    let names: BTreeSet<&str> = scripts.iter().map(|(n, _)| n.as_str()).collect();
    for must in [
        "/usr/local/lib/stratus/hadoop.sh",
        "/usr/local/sbin/stratus-hadoop-config",
        "/usr/local/sbin/stratus-hadoop-worker-start",
        "/usr/local/sbin/stratus-hadoop-install",
    ] {
        assert!(names.contains(must), "{must} not found among {names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let shellcheck = Command::new("shellcheck").arg("--version").output().is_ok();
    if !shellcheck {
        if std::env::var("STRATUS_REQUIRE_SHELLCHECK").as_deref() == Ok("1") {
            panic!("STRATUS_REQUIRE_SHELLCHECK=1 but shellcheck is not installed");
        }
        crate::support::skip(
            "shellcheck is not installed (apt-get install shellcheck); bash -n still runs",
        );
    }
    for (i, (name, text)) in scripts.iter().enumerate() {
        let path = dir.path().join(format!("script-{i}.sh"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n {name}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if shellcheck {
            let out = Command::new("shellcheck")
                .args(["--shell=bash", "--severity=style", "--format=gcc"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "shellcheck {name}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A sandbox holding the scripts the master's user-data writes, with the environment file
/// pointing Hadoop's configuration directory into the sandbox.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let h = profile("hadoop");
        let files = embedded_files(&user_data(&h, Role::Master));
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel);
        std::fs::create_dir_all(p("conf")).unwrap();
        std::fs::create_dir_all(p("bin")).unwrap();
        std::fs::write(p("lib.sh"), &files["/usr/local/lib/stratus/hadoop.sh"]).unwrap();
        // Executable, as the user-data leaves it.
        stub(
            &p("config.sh"),
            files["/usr/local/sbin/stratus-hadoop-config"]
                .strip_prefix("#!/bin/bash\n")
                .unwrap(),
        );
        std::fs::write(
            p("env"),
            format!(
                "HADOOP_HOME=/opt/hadoop\nHADOOP_CONF_DIR={}\nHADOOP_USER=ubuntu\nHADOOP_USER_HOME={}\nHDFS_REPLICATION=3\nDATA_DIR=/var/lib/hadoop\nJAVA_HOME=/usr/lib/jvm/java\n",
                p("conf").display(),
                p("home").display()
            ),
        )
        .unwrap();
        // No instance metadata service here, and none is ever asked: `curl` always fails and
        // `hostname -I` names the master.
        stub(&p("bin/curl"), "exit 7");
        stub(&p("bin/hostname"), "echo 10.0.0.10");
        stub(
            &p("bin/systemctl"),
            &format!("echo \"systemctl $*\" >> {}", p("calls.log").display()),
        );
        let sb = Sandbox { dir };
        sb.set_memory_kb(M5_LARGE_KB);
        sb
    }

    /// This node's MemTotal, as `/proc/meminfo` would show it.
    fn set_memory_kb(&self, kb: u64) {
        std::fs::write(
            self.path("meminfo"),
            format!("MemTotal:       {kb} kB\nMemFree:        1000 kB\n"),
        )
        .unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env(
            "PATH",
            format!("{}:/usr/bin:/bin", self.path("bin").display()),
        )
        .env("STRATUS_HADOOP_LIB", self.path("lib.sh"))
        .env("STRATUS_HADOOP_ENV", self.path("env"))
        .env("STRATUS_HADOOP_CONFIG", self.path("config.sh"))
        .env("STRATUS_MEMINFO", self.path("meminfo"));
        c
    }

    fn write_config(&self, args: &[&str]) -> std::process::Output {
        self.cmd("bash")
            .arg(self.path("config.sh"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn stub(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/bash\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The properties of a Hadoop site file, parsed by Python's XML parser (which refuses
/// anything not well-formed).
fn properties(path: &Path) -> BTreeMap<String, String> {
    let script = r#"
import json, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "configuration", root.tag
props = {}
for p in root.findall("property"):
    name, value = p.find("name"), p.find("value")
    assert name is not None and value is not None, ET.tostring(p)
    props[name.text] = value.text or ""
print(json.dumps(props))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 (it checks the XML)");
    assert!(
        out.status.success(),
        "{} is not well-formed Hadoop configuration XML:\n{}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_site_files_it_writes_are_well_formed_xml() {
    let sb = Sandbox::new();
    let out = sb.write_config(&["10.0.0.10", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = sb.path("conf");
    let core = properties(&conf.join("core-site.xml"));
    assert_eq!(core["fs.defaultFS"], "hdfs://10.0.0.10:8020");
    let hdfs = properties(&conf.join("hdfs-site.xml"));
    assert_eq!(hdfs["dfs.replication"], "2");
    assert_eq!(hdfs["dfs.namenode.name.dir"], "file:///var/lib/hadoop/name");
    let yarn = properties(&conf.join("yarn-site.xml"));
    assert_eq!(yarn["yarn.resourcemanager.hostname"], "10.0.0.10");
    assert_eq!(yarn["yarn.nodemanager.aux-services"], "mapreduce_shuffle");
    let memory: u64 = yarn["yarn.nodemanager.resource.memory-mb"].parse().unwrap();
    assert!(memory > 0);
    let mapred = properties(&conf.join("mapred-site.xml"));
    assert_eq!(mapred["mapreduce.framework.name"], "yarn");
    assert_eq!(
        mapred["mapreduce.map.env"],
        "HADOOP_MAPRED_HOME=/opt/hadoop"
    );
    assert_eq!(
        mapred["mapreduce.application.classpath"],
        "/opt/hadoop/share/hadoop/mapreduce/*:/opt/hadoop/share/hadoop/mapreduce/lib/*"
    );

    // The default replication is the profile's; a name works as the master's address.
    let out = sb.write_config(&["ip-10-0-0-10.ec2.internal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        properties(&conf.join("hdfs-site.xml"))["dfs.replication"],
        "3"
    );
    assert_eq!(
        properties(&conf.join("core-site.xml"))["fs.defaultFS"],
        "hdfs://ip-10-0-0-10.ec2.internal:8020"
    );

    // Anything that could break the XML (or a shell) is refused, and nothing is rewritten.
    let before = std::fs::read_to_string(conf.join("core-site.xml")).unwrap();
    for bad in ["10.0.0.1</value>", "a b", "$(reboot)", "-x", ""] {
        let out = sb.write_config(&[bad]);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    let out = sb.write_config(&["10.0.0.10", "0"]);
    assert!(!out.status.success(), "0 replicas was accepted");
    assert_eq!(
        std::fs::read_to_string(conf.join("core-site.xml")).unwrap(),
        before
    );
}

/// The configure step on the master, against stand-ins: `hdfs` and `yarn` report `registered`
/// live workers, `ssh` logs every login, `sudo` runs the command as is.
fn run_configure(sb: &Sandbox, workers: &[&str], registered: usize) -> std::process::Output {
    run_configure_of("hadoop", sb, workers, registered)
}

fn run_configure_of(
    name: &str,
    sb: &Sandbox,
    workers: &[&str],
    registered: usize,
) -> std::process::Output {
    let mut h = profile(name);
    h.vars.insert("register_timeout_secs".into(), 2.into());
    let script = pushed(&h)[".stratus/hadoop-configure.sh"].clone();
    let home = sb.path("home");
    std::fs::create_dir_all(home.join(".stratus")).unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(
        home.join(".ssh/stratus_cluster_ed25519"),
        "not really a key\n",
    )
    .unwrap();
    std::fs::write(home.join(".stratus/workers"), workers.join("\n") + "\n").unwrap();
    std::fs::write(home.join(".stratus/hadoop-configure.sh"), script).unwrap();
    let state = sb.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("phase"), "done\n").unwrap();
    let log = sb.path("calls.log");
    let _ = std::fs::remove_file(&log);
    stub(&sb.path("bin/sudo"), "exec \"$@\"");
    stub(
        &sb.path("bin/ssh"),
        // Each worker tells its MemTotal: the smallest sizes the containers.
        &format!(
            "echo \"ssh $*\" >> {}\ncase $6 in 10.0.0.12) echo {M5_LARGE_KB};; *) echo {M5_XLARGE_KB};; esac",
            log.display()
        ),
    );
    stub(
        &sb.path("bin/hdfs"),
        &format!(
            "echo \"hdfs $*\" >> {log}\nif [ \"$1\" = dfsadmin ]; then for i in $(seq 1 {registered}); do echo \"Name: 10.0.0.$((10 + i)):9866\"; done; fi",
            log = log.display()
        ),
    );
    stub(
        &sb.path("bin/yarn"),
        &format!(
            "echo 'Total Nodes:{registered}'\necho 'Node-Id  Node-State  Node-Http-Address  Number-of-Running-Containers'\nfor i in $(seq 1 {registered}); do echo \"ip-$i:4545  RUNNING  ip-$i:8042  0\"; done"
        ),
    );
    sb.cmd("bash")
        .arg(home.join(".stratus/hadoop-configure.sh"))
        .current_dir(&home)
        .env("HOME", &home)
        .env("STRATUS_STATE_DIR", &state)
        .output()
        .unwrap()
}

#[test]
fn the_configure_step_writes_the_workers_file_and_checks_every_worker() {
    let sb = Sandbox::new();
    // The master's install wrote its configuration at boot, for its own memory.
    let out = sb.write_config(&["10.0.0.10"]);
    assert!(out.status.success());
    let out = run_configure(&sb, &["10.0.0.11", "10.0.0.12"], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HDFS: 2 of 2 DataNodes live; YARN: 2 of 2 NodeManagers running"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("conf/workers")).unwrap(),
        "10.0.0.11\n10.0.0.12\n"
    );
    // Two workers: two replicas per block, and the master's address from `hostname -I`.
    let hdfs = properties(&sb.path("conf/hdfs-site.xml"));
    assert_eq!(hdfs["dfs.replication"], "2");
    assert_eq!(
        properties(&sb.path("conf/core-site.xml"))["fs.defaultFS"],
        "hdfs://10.0.0.10:8020"
    );
    // The intra-cluster key is the identity for the cluster's nodes, and reached each worker.
    let config = std::fs::read_to_string(sb.path("home/.ssh/config")).unwrap();
    assert!(
        config.contains("Host 10.0.0.10 10.0.0.11 10.0.0.12\n"),
        "{config}"
    );
    assert!(config.contains("IdentityFile "), "{config}");
    let calls = std::fs::read_to_string(sb.path("calls.log")).unwrap();
    assert!(calls.contains("10.0.0.11 awk"), "{calls}");
    assert!(calls.contains("10.0.0.12 awk"), "{calls}");
    // The containers fit the smallest worker (10.0.0.12, an m5.large), not the master (an
    // m5.large here too) nor the larger worker: nothing changed, the ResourceManager keeps
    // running.
    let yarn = properties(&sb.path("conf/yarn-site.xml"));
    assert_eq!(yarn["yarn.scheduler.maximum-allocation-mb"], "5120");
    assert!(!calls.contains("restart hadoop-resourcemanager"), "{calls}");
    assert!(calls.contains("hdfs dfs -mkdir -p /user/"), "{calls}");

    // Run again (workers added): the managed block is replaced, not repeated.
    let out = run_configure(&sb, &["10.0.0.11", "10.0.0.12", "10.0.0.13"], 3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(sb.path("home/.ssh/config")).unwrap();
    assert_eq!(
        config.matches("# BEGIN stratus intra-cluster").count(),
        1,
        "{config}"
    );
    assert_eq!(
        properties(&sb.path("conf/hdfs-site.xml"))["dfs.replication"],
        "3"
    );

    // A worker that never registers fails the step, saying how many did.
    let out = run_configure(&sb, &["10.0.0.11", "10.0.0.12"], 1);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 2 DataNodes are live and 1 of 2 NodeManagers are running"),
        "{stderr}"
    );

    // A master whose memory differs from its workers': the limits change, and the
    // ResourceManager is restarted to read them.
    sb.set_memory_kb(M5_XLARGE_KB);
    let out = run_configure(&sb, &["10.0.0.11", "10.0.0.12"], 2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(sb.path("calls.log")).unwrap();
    assert!(
        calls.contains("systemctl restart hadoop-resourcemanager.service"),
        "{calls}"
    );
    let yarn = properties(&sb.path("conf/yarn-site.xml"));
    assert_eq!(yarn["yarn.scheduler.maximum-allocation-mb"], "5120");
    assert_eq!(yarn["yarn.nodemanager.resource.memory-mb"], "10752");

    // A master whose install failed is reported with the install's own words.
    std::fs::write(
        sb.path("state/phase"),
        "failed: no source had hadoop-3.5.0.tar.gz\n",
    )
    .unwrap();
    let out = sb
        .cmd("bash")
        .arg(sb.path("home/.stratus/hadoop-configure.sh"))
        .current_dir(sb.path("home"))
        .env("HOME", sb.path("home"))
        .env("STRATUS_STATE_DIR", sb.path("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the master's install has not finished (phase: failed: no source had hadoop-3.5.0.tar.gz)"
        ),
        "{stderr}"
    );
}

/// A daemon's heap from its `-Xmx…m` option.
fn xmx(opts: &str) -> u64 {
    opts.strip_prefix("-Xmx")
        .and_then(|m| m.strip_suffix('m'))
        .unwrap_or_else(|| panic!("not an -Xmx…m option: {opts}"))
        .parse()
        .unwrap()
}

/// `NAME=VALUE` lines, by name.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn memory_is_sized_from_memtotal_so_that_an_m5_large_cannot_run_out() {
    // (MemTotal, NodeManager MiB, map, reduce, NameNode heap, DataNode heap)
    for (kb, nodemanager, map, reduce, namenode, datanode) in [
        (M5_LARGE_KB, 5120, 1024, 2048, 1792, 512),
        (M5_XLARGE_KB, 10752, 2048, 4096, 3840, 1024),
    ] {
        let sb = Sandbox::new();
        sb.set_memory_kb(kb);
        let out = sb.write_config(&["10.0.0.10", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let total_mb = kb / 1024;
        let yarn = properties(&sb.path("conf/yarn-site.xml"));
        let mapred = properties(&sb.path("conf/mapred-site.xml"));
        let heaps = env_file(&sb.path("conf/stratus-daemons.env"));
        let mb = |m: &BTreeMap<String, String>, k: &str| -> u64 { m[k].parse().unwrap() };
        let nm = mb(&yarn, "yarn.nodemanager.resource.memory-mb");
        let max = mb(&yarn, "yarn.scheduler.maximum-allocation-mb");
        assert_eq!(nm, nodemanager, "{kb} kB");
        assert_eq!(max, nodemanager, "one type of node: the containers fit it");
        assert_eq!(mb(&mapred, "mapreduce.map.memory.mb"), map);
        assert_eq!(mb(&mapred, "mapreduce.reduce.memory.mb"), reduce);
        assert_eq!(xmx(&heaps["HDFS_NAMENODE_OPTS"]), namenode);
        assert_eq!(xmx(&heaps["HDFS_DATANODE_OPTS"]), datanode);
        // A worker: the system's eighth (at least 1 GiB), its two daemons with 256 MiB of JVM
        // beyond each heap, and every container YARN may run at once fit in MemTotal.
        let worker_daemons =
            xmx(&heaps["HDFS_DATANODE_OPTS"]) + xmx(&heaps["YARN_NODEMANAGER_OPTS"]) + 2 * 256;
        assert!(
            (total_mb / 8).max(1024) + worker_daemons + nm <= total_mb,
            "{kb} kB: {nm} MiB of containers and {worker_daemons} MiB of daemons"
        );
        // The master: its three daemons and the system's share.
        let master_daemons = xmx(&heaps["HDFS_NAMENODE_OPTS"])
            + xmx(&heaps["YARN_RESOURCEMANAGER_OPTS"])
            + xmx(&heaps["MAPRED_HISTORYSERVER_OPTS"])
            + 3 * 256;
        assert!((total_mb / 8).max(1024) + master_daemons <= total_mb);
        // Every container fits the scheduler's limit, every task's heap its container, and a
        // container that outgrows its size is killed by YARN (the physical-memory check).
        for (size, opts) in [
            ("mapreduce.map.memory.mb", "mapreduce.map.java.opts"),
            ("mapreduce.reduce.memory.mb", "mapreduce.reduce.java.opts"),
            (
                "yarn.app.mapreduce.am.resource.mb",
                "yarn.app.mapreduce.am.command-opts",
            ),
        ] {
            let size = mb(&mapred, size);
            assert!(size <= max && size >= 512 && size % 512 == 0, "{size}");
            assert_eq!(xmx(&mapred[opts]), size * 8 / 10, "{opts}");
        }
        assert_eq!(yarn["yarn.nodemanager.pmem-check-enabled"], "true");
        assert_eq!(yarn["yarn.scheduler.minimum-allocation-mb"], "512");
    }

    // Containers are sized for the smallest worker when the configure step names it.
    let sb = Sandbox::new();
    sb.set_memory_kb(M5_XLARGE_KB);
    let small = M5_LARGE_KB.to_string();
    let out = sb.write_config(&["10.0.0.10", "2", &small]);
    assert!(out.status.success());
    let yarn = properties(&sb.path("conf/yarn-site.xml"));
    assert_eq!(yarn["yarn.nodemanager.resource.memory-mb"], "10752");
    assert_eq!(yarn["yarn.scheduler.maximum-allocation-mb"], "5120");
    assert_eq!(
        properties(&sb.path("conf/mapred-site.xml"))["mapreduce.reduce.memory.mb"],
        "2048"
    );
    // Nonsense is refused.
    assert!(
        !sb.write_config(&["10.0.0.10", "2", "lots"])
            .status
            .success()
    );
    sb.set_memory_kb(0);
    let out = sb.write_config(&["10.0.0.10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no MemTotal"));
}

#[test]
fn hadoop_spot_with_one_worker_keeps_one_replica_and_says_so() {
    // The same configure step as hadoop's.
    assert_eq!(
        pushed(&profile("hadoop-spot"))[".stratus/hadoop-configure.sh"],
        pushed(&profile("hadoop"))[".stratus/hadoop-configure.sh"]
    );
    let sb = Sandbox::new();
    let out = run_configure_of("hadoop-spot", &sb, &["10.0.0.11"], 1);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        properties(&sb.path("conf/hdfs-site.xml"))["dfs.replication"],
        "1"
    );
    let toml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-profiles/hadoop-spot.toml"),
    )
    .unwrap();
    assert!(toml.contains("(replication 1)"), "{toml}");
    assert!(toml.contains("HDFS's files are gone"), "{toml}");
}

const VERSION: &str = "3.5.0";
const MIRROR: &str = "https://mirror.example.edu/apache/hadoop/common";
const DLCDN: &str = "https://dlcdn.apache.org/hadoop/common";
const ARCHIVE: &str = "https://archive.apache.org/dist/hadoop/common";
const DOWNLOADS: &str = "https://downloads.apache.org/hadoop/common";

/// A node in a directory: the user-data runs with `STRATUS_ROOT` there, against stand-ins for
/// what a node has (systemctl, apt-get, getent, runuser, and curl serving a tree of files as the
/// web and the metadata service), with real host keys. A release tarball of stand-in Hadoop
/// commands is built for it.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let n = Node { dir };
        for d in ["root", "bin", "www", "home", "ssh", "pkg"] {
            std::fs::create_dir_all(n.path(d)).unwrap();
        }
        n.host_keys();
        let log = n.path("calls.log");
        let log = log.display();
        let d = n.dir.path().display();
        stub(
            &n.path("bin/getent"),
            &format!("echo \"$2:x:$(id -u):$(id -g)::{d}/home:/bin/bash\""),
        );
        stub(
            &n.path("bin/systemctl"),
            &format!("echo \"systemctl $*\" >> {log}"),
        );
        stub(
            &n.path("bin/apt-get"),
            &format!(
                "echo \"apt-get $*\" >> {log}\n[ ! -e {d}/apt-fails ] || exit 100\n\
                 case \" $* \" in *\" install \"*)\n\
                 mkdir -p {d}/jvm/bin; printf '#!/bin/sh\\n' > {d}/jvm/bin/java\n\
                 chmod +x {d}/jvm/bin/java; ln -sf {d}/jvm/bin/java {d}/bin/java;;\nesac"
            ),
        );
        stub(
            &n.path("bin/runuser"),
            "while [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"",
        );
        stub(
            &n.path("bin/curl"),
            &format!(
                r#"echo "curl-args: $*" >> {log}
out= url= sigv4=
while (($#)); do
    case $1 in
        -o) out=$2; shift;;
        -K) [ "$2" != - ] || echo "curl-stdin: $(tr '\n' ' ')" >> {log}; shift;;
        --aws-sigv4) sigv4=$2; shift;;
        -H|-X|--max-time|--connect-timeout|--retry|--retry-delay) shift;;
        http://*|https://*) url=$1;;
    esac
    shift
done
echo "curl $url${{sigv4:+ signed $sigv4}}" >> {log}
file={d}/www/${{url#*://}}
[[ $file != */ ]] || file+=index
[ -f "$file" ] || exit 22
if [ -n "$out" ]; then cp "$file" "$out"; else cat "$file"; fi"#
            ),
        );
        stub(&n.path("bin/hostname"), "echo 10.9.9.9");
        std::fs::write(n.path("meminfo"), format!("MemTotal: {M5_LARGE_KB} kB\n")).unwrap();
        // The metadata service.
        n.serve("http://169.254.169.254/latest/api/token", b"token");
        n.serve(
            "http://169.254.169.254/latest/meta-data/local-ipv4",
            b"10.0.0.10",
        );
        n.serve(
            "http://169.254.169.254/latest/meta-data/placement/region",
            b"eu-west-1",
        );
        // The release: Hadoop's commands log how they are called.
        let top = n.path(&format!("pkg/hadoop-{VERSION}"));
        std::fs::create_dir_all(top.join("bin")).unwrap();
        std::fs::create_dir_all(top.join("etc/hadoop")).unwrap();
        for c in ["hdfs", "yarn", "mapred"] {
            stub(
                &top.join("bin").join(c),
                &format!("echo \"{c} $*\" >> {log}"),
            );
        }
        std::fs::write(top.join("etc/hadoop/hadoop-env.sh"), "# Hadoop's own\n").unwrap();
        let out = Command::new("tar")
            .arg("-czf")
            .arg(n.tarball())
            .arg("-C")
            .arg(n.path("pkg"))
            .arg(format!("hadoop-{VERSION}"))
            .output()
            .unwrap();
        assert!(out.status.success());
        n
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn tarball(&self) -> PathBuf {
        self.path("pkg/release.tar.gz")
    }

    /// Fresh host keys, as cloud-init makes them before the user-data runs.
    fn host_keys(&self) {
        for t in ["ed25519", "ecdsa"] {
            let key = self.path(&format!("ssh/ssh_host_{t}_key"));
            let _ = std::fs::remove_file(&key);
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", t, "-N", "", "-C", "root@node", "-f"])
                .arg(&key)
                .output()
                .expect("ssh-keygen");
            assert!(out.status.success());
        }
    }

    /// Serves `body` at `url`.
    fn serve(&self, url: &str, body: &[u8]) {
        let rel = url.split_once("://").unwrap().1;
        let path = self.path("www").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    /// Puts the release under `source` as Apache lays it out.
    fn publish(&self, source: &str) {
        let body = std::fs::read(self.tarball()).unwrap();
        self.serve(
            &format!("{source}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz"),
            &body,
        );
    }

    /// Puts the release's `.sha512` under `source`, in Apache's format.
    fn publish_checksum(&self, source: &str) {
        self.serve(
            &format!("{source}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz.sha512"),
            format!("SHA512 (hadoop-{VERSION}.tar.gz) = {}\n", self.sha512()).as_bytes(),
        );
    }

    fn sha512(&self) -> String {
        let out = Command::new("sha512sum")
            .arg(self.tarball())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// The hadoop profile with these sources, run as the tests' own user.
    fn profile(&self, sources: &[&str]) -> Profile {
        let mut p = profile("hadoop");
        let me = Command::new("id").arg("-un").output().unwrap();
        p.ssh_user = String::from_utf8_lossy(&me.stdout).trim().to_owned();
        p.vars.insert("hadoop_sources".into(), sources.into());
        p
    }

    fn cmd(&self, script: &Path) -> Command {
        let mut c = Command::new("bash");
        c.arg(script)
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/bin:/bin:/usr/sbin:/sbin",
                    self.path("bin").display()
                ),
            )
            .env("STRATUS_ROOT", self.path("root"))
            .env("STRATUS_SSH_DIR", self.path("ssh"))
            .env("STRATUS_MEMINFO", self.path("meminfo"))
            .env("STRATUS_RETRY_DELAY", "0");
        c
    }

    /// Runs the user-data of `role` as cloud-init would; its output and how long it took.
    fn boot(&self, p: &Profile, role: Role, image_build: bool) -> (std::process::Output, u64) {
        let script = self.path("user-data");
        std::fs::write(&script, render_user_data(p, role, image_build)).unwrap();
        let _ = std::fs::remove_file(self.path("calls.log"));
        let start = std::time::Instant::now();
        let out = self.cmd(&script).output().unwrap();
        (out, start.elapsed().as_secs())
    }

    /// Runs what stratus-install.service runs (its ExecStart), as systemd would.
    fn install(&self) -> std::process::Output {
        let unit =
            std::fs::read_to_string(self.path("root/etc/systemd/system/stratus-install.service"))
                .unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        self.cmd(Path::new(exec)).output().unwrap()
    }

    /// Every phase the node reported, in order.
    fn phases(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("root/var/lib/stratus/phases"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    /// The phase file as stratus reads it.
    fn phase(&self) -> String {
        std::fs::read_to_string(self.path("root/var/lib/stratus/phase")).unwrap()
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls.log")).unwrap_or_default()
    }

    /// The URLs curl was asked for, in order.
    fn fetched(&self) -> Vec<String> {
        self.calls()
            .lines()
            .filter_map(|l| l.strip_prefix("curl "))
            .filter(|u| !u.contains("169.254.169.254"))
            .map(str::to_owned)
            .collect()
    }
}

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_user_data_prints_the_host_keys_first_and_starts_the_install_detached() {
    let node = Node::new();
    node.publish(DLCDN);
    node.publish_checksum(DOWNLOADS);
    let p = node.profile(&[DLCDN]);
    let (out, secs) = node.boot(&p, Role::Master, false);
    let stdout = ok(&out);
    assert!(secs < 5, "the user-data took {secs}s");
    // The keys come first, in cloud-init's frame, and parse as stratus reads the console.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "-----BEGIN SSH HOST KEY KEYS-----", "{stdout}");
    assert_eq!(lines[3], "-----END SSH HOST KEY KEYS-----", "{stdout}");
    let keys = stratus::cluster::provider::ec2::console::host_keys(&stdout).unwrap();
    assert_eq!(keys.len(), 2, "{stdout}");
    for t in ["ecdsa", "ed25519"] {
        let public =
            std::fs::read_to_string(node.path(&format!("ssh/ssh_host_{t}_key.pub"))).unwrap();
        assert!(lines[1..3].contains(&public.trim()), "{t}: {stdout}");
    }
    // It installed nothing itself: it started the unit, without waiting for it.
    let calls = node.calls();
    assert!(
        calls.contains("systemctl start --no-block stratus-install.service"),
        "{calls}"
    );
    assert!(!calls.contains("apt-get"), "{calls}");
    assert!(node.fetched().is_empty(), "{calls}");
    assert_eq!(node.phase(), "waiting for the install to start\n");
    let unit =
        std::fs::read_to_string(node.path("root/etc/systemd/system/stratus-install.service"))
            .unwrap();
    assert!(unit.contains("Type=oneshot\n"), "{unit}");
    assert!(unit.contains("TimeoutStartSec=infinity\n"), "{unit}");
    let env = env_file(&node.path("root/etc/stratus/install.env"));
    assert_eq!(env["ROLE"], "master");
    assert_eq!(env["HADOOP_VERSION"], VERSION);
    assert_eq!(env["HADOOP_SOURCES"], format!("\"{DLCDN}\""));
}

#[test]
fn the_install_reports_each_phase_and_ends_in_done() {
    let node = Node::new();
    node.publish(MIRROR);
    node.publish_checksum(DOWNLOADS);
    let p = node.profile(&[MIRROR, DLCDN]);
    ok(&node.boot(&p, Role::Master, false).0);
    ok(&node.install());
    let tarball = format!("hadoop-{VERSION}.tar.gz");
    assert_eq!(
        node.phases(),
        [
            "waiting for the install to start".to_owned(),
            "checking the image".into(),
            "installing java".into(),
            format!("fetching the checksum of {tarball}"),
            format!("downloading hadoop from {MIRROR}"),
            "unpacking hadoop".into(),
            "setting up hadoop".into(),
            "configuring hadoop".into(),
            "formatting hdfs".into(),
            "starting the namenode, the resourcemanager and the historyserver".into(),
            "done".into(),
        ]
    );
    assert_eq!(node.phase(), "done\n", "one line: what stratus reads");
    // The checksum from Apache's download site over HTTPS, the tarball from the first source.
    assert_eq!(
        node.fetched(),
        [
            format!("{DOWNLOADS}/hadoop-{VERSION}/{tarball}.sha512"),
            format!("{MIRROR}/hadoop-{VERSION}/{tarball}"),
        ]
    );
    let calls = node.calls();
    assert!(
        calls.contains("install --no-install-recommends openjdk-17-jre-headless curl"),
        "{calls}"
    );
    assert!(
        calls.contains("hdfs namenode -format -nonInteractive -clusterId demo"),
        "{calls}"
    );
    assert!(
        calls.contains("systemctl enable --now hadoop-namenode.service hadoop-resourcemanager.service hadoop-historyserver.service"),
        "{calls}"
    );
    let root = node.path("root");
    let home = root.join("opt/hadoop");
    assert!(home.join("bin/hdfs").is_file());
    assert_eq!(
        std::fs::read_to_string(home.join(".stratus-installed")).unwrap(),
        format!("hadoop {VERSION}\n")
    );
    // The master's own address from the metadata service, and heaps for its memory.
    assert_eq!(
        properties(&home.join("etc/hadoop/core-site.xml"))["fs.defaultFS"],
        "hdfs://10.0.0.10:8020"
    );
    let heaps = env_file(&home.join("etc/hadoop/stratus-daemons.env"));
    assert_eq!(heaps["HDFS_NAMENODE_OPTS"], "-Xmx1792m");
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/hadoop-namenode.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "EnvironmentFile=-{}/etc/hadoop/stratus-daemons.env",
            home.display()
        )),
        "{unit}"
    );
    let env = env_file(&root.join("etc/stratus/hadoop.env"));
    assert_eq!(env["JAVA_HOME"], node.path("jvm").display().to_string());
    // Hadoop's own scripts (a daemon started by hand) get the same heaps.
    let hadoop_env = std::fs::read_to_string(home.join("etc/hadoop/hadoop-env.sh")).unwrap();
    assert!(
        hadoop_env.starts_with("# Hadoop's own\n# stratus\n"),
        "{hadoop_env}"
    );
    assert!(
        hadoop_env.contains(&format!(
            ". \"{}/etc/hadoop/stratus-daemons.env\"",
            home.display()
        )),
        "{hadoop_env}"
    );

    // A worker: the same install, then it waits for stratus to name the master.
    let node = Node::new();
    node.publish(MIRROR);
    node.publish_checksum(DOWNLOADS);
    ok(&node.boot(&p, Role::Worker, false).0);
    ok(&node.install());
    let phases = node.phases();
    assert_eq!(
        phases[phases.len() - 2..],
        ["waiting for stratus to name the master", "done"]
    );
    let calls = node.calls();
    assert!(
        calls.contains("systemctl enable --now stratus-hadoop-worker.path"),
        "{calls}"
    );
    assert!(!calls.contains("namenode -format"), "{calls}");
}

#[test]
fn a_failed_download_fails_the_install_with_its_reason() {
    let node = Node::new();
    node.publish_checksum(DOWNLOADS);
    let p = node.profile(&[MIRROR, DLCDN]);
    ok(&node.boot(&p, Role::Worker, false).0);
    let out = node.install();
    assert!(!out.status.success());
    let phase = node.phase();
    assert_eq!(
        phase,
        format!(
            "failed: no source had hadoop-{VERSION}.tar.gz with its SHA-512 (tried {MIRROR} {DLCDN})\n"
        )
    );
    // Each source was retried, in order.
    let tarball = |s: &str| format!("{s}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz");
    let fetched = node.fetched();
    assert_eq!(
        fetched[1..4],
        [tarball(MIRROR), tarball(MIRROR), tarball(MIRROR)]
    );
    assert_eq!(
        fetched[4..],
        [tarball(DLCDN), tarball(DLCDN), tarball(DLCDN)]
    );

    // No checksum anywhere: it fails before downloading anything.
    let node = Node::new();
    node.publish(MIRROR);
    ok(&node.boot(&p, Role::Worker, false).0);
    assert!(!node.install().status.success());
    assert!(
        node.phase().starts_with(&format!(
            "failed: no checksum of hadoop-{VERSION}.tar.gz from {DOWNLOADS} {ARCHIVE}"
        )),
        "{}",
        node.phase()
    );
    assert!(!node.fetched().iter().any(|u| u.ends_with(".tar.gz")));

    // Anything else that fails names the phase it failed in: here a "release" that matches
    // its checksum but is no tarball.
    let node = Node::new();
    std::fs::write(node.tarball(), b"not a tarball").unwrap();
    node.publish(MIRROR);
    node.publish_checksum(DOWNLOADS);
    ok(&node.boot(&p, Role::Worker, false).0);
    assert!(!node.install().status.success());
    assert!(
        node.phase().starts_with("failed: unpacking hadoop (line "),
        "{}",
        node.phase()
    );

    // apt-get failing (no network, say).
    let node = Node::new();
    std::fs::write(node.path("apt-fails"), "").unwrap();
    ok(&node.boot(&p, Role::Master, false).0);
    assert!(!node.install().status.success());
    assert_eq!(node.phase(), "failed: apt-get update failed\n");
    assert_eq!(node.calls().matches("apt-get -q -y").count(), 5, "retried");
}

#[test]
fn sources_are_tried_in_order_and_a_tarball_that_does_not_match_is_skipped() {
    let node = Node::new();
    // The mirror has a corrupt copy, the CDN none (the release left it), the archive the real one.
    node.serve(
        &format!("{MIRROR}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz"),
        b"not the release",
    );
    node.publish(ARCHIVE);
    node.publish_checksum(DOWNLOADS);
    let p = node.profile(&[MIRROR, DLCDN, ARCHIVE]);
    ok(&node.boot(&p, Role::Worker, false).0);
    let out = node.install();
    ok(&out);
    assert_eq!(node.phase(), "done\n");
    let downloads: Vec<String> = node
        .phases()
        .into_iter()
        .filter(|p| p.starts_with("downloading"))
        .collect();
    assert_eq!(
        downloads,
        [
            format!("downloading hadoop from {MIRROR}"),
            format!("downloading hadoop from {DLCDN}"),
            format!("downloading hadoop from {ARCHIVE}"),
        ]
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "from {MIRROR} does not have SHA-512 {}",
            node.sha512()
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.path("root/opt/hadoop/bin/hdfs").is_file());
}

#[test]
fn a_pinned_sha512_fetches_no_checksum_and_refuses_another_tarball() {
    let node = Node::new();
    node.publish(MIRROR);
    let mut p = node.profile(&[MIRROR]);
    p.vars.insert("hadoop_sha512".into(), node.sha512().into());
    ok(&node.boot(&p, Role::Worker, false).0);
    ok(&node.install());
    assert_eq!(node.phase(), "done\n");
    assert!(!node.phases().iter().any(|p| p.contains("checksum")));
    assert_eq!(
        node.fetched(),
        [format!("{MIRROR}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz")]
    );

    // Pinned to another tarball: the one served is refused.
    let node = Node::new();
    node.publish(MIRROR);
    node.publish_checksum(DOWNLOADS);
    let mut p = node.profile(&[MIRROR]);
    p.vars
        .insert("hadoop_sha512".into(), "ab".repeat(64).into());
    ok(&node.boot(&p, Role::Worker, false).0);
    assert!(!node.install().status.success());
    assert!(
        node.phase().starts_with("failed: no source had"),
        "{}",
        node.phase()
    );
    assert!(!node.path("root/opt/hadoop/bin/hdfs").exists());

    // Not a SHA-512: the user-data refuses it at once.
    let mut p = node.profile(&[MIRROR]);
    p.vars.insert("hadoop_sha512".into(), "abc".into());
    let (out, _) = node.boot(&p, Role::Worker, false);
    assert!(!out.status.success());
    assert_eq!(
        node.phase(),
        "failed: vars.hadoop_sha512 is not a SHA-512 (128 hex digits)\n"
    );
    // Nor is a source that is not https:// or s3://.
    let p = node.profile(&["http://mirror.example.edu/hadoop"]);
    assert!(!node.boot(&p, Role::Worker, false).0.status.success());
    assert!(
        node.phase()
            .starts_with("failed: not an https:// or s3:// source")
    );
}

#[test]
fn an_s3_source_is_read_from_the_buckets_endpoint_in_the_nodes_region() {
    let bucket = "https://class-mirror.s3.eu-west-1.amazonaws.com/hadoop";
    let node = Node::new();
    node.publish(bucket);
    node.publish_checksum(DOWNLOADS);
    let p = node.profile(&["s3://class-mirror/hadoop", DLCDN]);
    ok(&node.boot(&p, Role::Worker, false).0);
    ok(&node.install());
    let tarball = format!("{bucket}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz");
    // No instance profile: unsigned (the bucket's policy lets the node read).
    assert_eq!(node.fetched()[1], tarball);

    // With an instance profile: signed, its credentials passed on curl's standard input.
    let node = Node::new();
    node.publish(bucket);
    node.publish_checksum(DOWNLOADS);
    let creds = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
    node.serve(&format!("{creds}index"), b"node-role\n");
    node.serve(
        &format!("{creds}node-role"),
        b"{\n  \"Code\" : \"Success\",\n  \"AccessKeyId\" : \"ASIAEXAMPLE\",\n  \"SecretAccessKey\" : \"s3cr3t\",\n  \"Token\" : \"tok3n\"\n}\n",
    );
    ok(&node.boot(&p, Role::Worker, false).0);
    ok(&node.install());
    assert_eq!(
        node.fetched()[1],
        format!("{tarball} signed aws:amz:eu-west-1:s3")
    );
    let calls = node.calls();
    assert!(
        calls.contains(
            "curl-stdin: user = \"ASIAEXAMPLE:s3cr3t\" header = \"x-amz-security-token: tok3n\""
        ),
        "{calls}"
    );
    assert!(
        !calls
            .lines()
            .any(|l| l.starts_with("curl-args:") && l.contains("s3cr3t")),
        "{calls}"
    );
}

#[test]
fn an_image_build_installs_only_and_its_image_installs_nothing() {
    let node = Node::new();
    node.publish(DLCDN);
    node.publish_checksum(DOWNLOADS);
    let p = node.profile(&[DLCDN]);
    ok(&node.boot(&p, Role::Master, true).0);
    ok(&node.install());
    let phases = node.phases();
    assert!(phases.contains(&"installing java".to_owned()), "{phases:?}");
    assert_eq!(
        phases[phases.len() - 2..],
        ["removing the host keys", "done"]
    );
    assert_eq!(node.phase(), "done\n", "what `admin image build` waits for");
    let calls = node.calls();
    assert!(
        !calls.contains("systemctl enable --now") && !calls.contains("systemctl restart"),
        "started something: {calls}"
    );
    assert!(!calls.contains("namenode -format"), "{calls}");
    let left: Vec<_> = std::fs::read_dir(node.path("ssh")).unwrap().collect();
    assert!(left.is_empty(), "host keys left in the image: {left:?}");

    // An instance of the image forgets the build's `done` before sshd starts (stratus must not
    // read it), once.
    assert!(
        calls.contains("systemctl enable stratus-forget-phase.service"),
        "{calls}"
    );
    let unit =
        std::fs::read_to_string(node.path("root/etc/systemd/system/stratus-forget-phase.service"))
            .unwrap();
    assert!(
        unit.contains("Before=sysinit.target ssh.socket ssh.service\n"),
        "{unit}"
    );
    let condition = unit
        .lines()
        .find_map(|l| l.strip_prefix("ConditionPathExists="))
        .unwrap();
    assert!(Path::new(condition).exists());
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let out = Command::new("sh").args(["-c", exec]).output().unwrap();
    assert!(out.status.success());
    assert!(!node.path("root/var/lib/stratus/phase").exists());
    assert!(
        !Path::new(condition).exists(),
        "a reboot later keeps its phase"
    );

    // An instance of the image: new host keys (cloud-init's), and nothing to download.
    node.host_keys();
    ok(&node.boot(&p, Role::Master, false).0);
    ok(&node.install());
    let phases = node.phases();
    assert!(
        !phases
            .iter()
            .any(|p| p.contains("java") || p.contains("download")),
        "{phases:?}"
    );
    assert_eq!(phases.last().unwrap(), "done");
    assert!(!node.calls().contains("apt-get"));
    assert!(node.fetched().is_empty());
    assert!(node.calls().contains("namenode -format"));

    // A site image that claims Hadoop (vars.hadoop_preinstalled) but has none fails, saying so.
    let node = Node::new();
    let mut pre = node.profile(&[DLCDN]);
    pre.vars.insert("hadoop_preinstalled".into(), true.into());
    ok(&node.boot(&pre, Role::Master, false).0);
    assert!(!node.install().status.success());
    assert!(
        node.phase()
            .starts_with("failed: vars.hadoop_preinstalled is true, but"),
        "{}",
        node.phase()
    );
    assert!(!node.calls().contains("apt-get"));
}

#[test]
fn hadoop_spot_launches_on_moto_with_the_rendered_user_data() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = crate::ec2::ec2_context(&moto, "client_cidrs = [\"203.0.113.0/24\"]\n");
    ctx.ok(&[
        "launch-cluster",
        "hs",
        "2",
        "-p",
        "hadoop-spot",
        "--no-configure",
    ]);
    let owner = stratus::service::caller::Caller::from_real_uid()
        .unwrap()
        .owner
        .to_string();
    let p = profile("hadoop-spot");
    let instances = moto.instances(&[("tag:stratus:cluster", "hs")]);
    assert_eq!(instances.len(), 3);
    let mut seen = BTreeSet::new();
    for i in &instances {
        let t = i.tags();
        let request = tag(t, "stratus:request").unwrap();
        let role = Role::parse(tag(t, "stratus:role").unwrap()).unwrap();
        let index = match role {
            Role::Master => 0,
            Role::Worker => {
                let first: u32 = tag(t, "stratus:first-index").unwrap().parse().unwrap();
                first + u32::try_from(i.ami_launch_index().unwrap()).unwrap()
            }
        };
        let name = stratus::core::model::node_name(
            &stratus::core::model::ClusterName::parse("hs").unwrap(),
            role,
            index,
        );
        // The image the profile names by SSM parameter, resolved by stratus to the AMI it
        // launches (so that its root device is known).
        assert_eq!(
            p.master.image.strip_prefix("resolve:ssm:"),
            Some(crate::ec2::ec2_moto::UBUNTU_PARAMETER)
        );
        assert_eq!(i.image_id(), Some(crate::ec2::ec2_moto::UBUNTU_AMI));
        assert_eq!(
            i.instance_lifecycle().is_some(),
            role == Role::Worker,
            "spot workers, on-demand master: {i:?}"
        );
        let env = BTreeMap::new();
        let ctx_boot = BootContext {
            cluster: "hs",
            owner: &owner,
            role,
            request_id: request,
            profile: (&p).into(),
            env: &env,
            image_build: false,
        };
        let want = Renderer::for_profile(&p)
            .unwrap()
            .user_data(&p.role(role).user_data, &ctx_boot)
            .unwrap();
        // stratus's guard part first, then the profile's user-data as rendered.
        let parts =
            stratus::templates::split_multipart(&moto.user_data(i.instance_id().unwrap())).unwrap();
        assert_eq!(parts.len(), 2, "{name}");
        assert_eq!(parts[0].0, "00-stratus-guard.sh", "{name}");
        assert_eq!(parts[1].1, want, "{name}");
        seen.insert(name.to_owned());
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "hs-master".to_owned(),
            "hs-worker-1".to_owned(),
            "hs-worker-2".to_owned()
        ])
    );
    ctx.ok(&["terminate-cluster", "hs", "--yes"]);
}

/// How long the stand-in download of the release takes in the launch below: longer than the
/// profile's ready wait, so that only a user-data that prints the keys first and installs
/// detached can launch.
const E2E_READY_SECS: u64 = 20;
const E2E_DOWNLOAD_SECS: u64 = E2E_READY_SECS + 10;

/// What the nodes of a hypervisor share to run the hadoop profile's real user-data, install and
/// configure step: stand-ins on the PATH for what an Ubuntu instance has and does (systemctl runs
/// stratus-install.service detached and the worker's path unit, as systemd would; curl serves a
/// tree of files as the web, slowly for a tarball; apt-get "installs" a Java under the node's
/// root), a release whose `hdfs` and `yarn` report the workers whose daemons started for this
/// master, and one log of every call, each line naming its node.
struct Stage {
    dir: tempfile::TempDir,
}

impl Stage {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s = Stage { dir };
        for d in ["bin", "www", "pkg", "live"] {
            std::fs::create_dir_all(s.path(d)).unwrap();
        }
        let log = s.path("calls.log");
        let log = log.display();
        let live = s.path("live");
        let live = live.display();
        let www = s.path("www");
        let www = www.display();
        std::fs::write(s.path("meminfo"), format!("MemTotal: {M5_LARGE_KB} kB\n")).unwrap();
        // The login user's home is the node's (HOME, where stratus pushes its files).
        stub(
            &s.path("bin/getent"),
            "echo \"$2:x:$(id -u):$(id -g)::$HOME:/bin/bash\"",
        );
        stub(
            &s.path("bin/runuser"),
            "while [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"",
        );
        stub(&s.path("bin/sudo"), "exec \"$@\"");
        // `hostname -I`: the node's private address (no metadata service answers).
        stub(&s.path("bin/hostname"), "echo \"$STRATUS_NODE_ADDRESS\"");
        // The configure step's logins to the workers with the intra-cluster key: each tells its
        // MemTotal.
        stub(
            &s.path("bin/ssh"),
            &format!(
                "echo \"$STRATUS_NODE_NAME ssh $*\" >> {log}\nawk '/^MemTotal:/ {{ print $2 }}' \"$STRATUS_MEMINFO\""
            ),
        );
        stub(
            &s.path("bin/apt-get"),
            &format!(
                "echo \"$STRATUS_NODE_NAME apt-get $*\" >> {log}\n\
                 case \" $* \" in *\" install \"*)\n\
                 jvm=$STRATUS_ROOT/usr/lib/jvm/java-17\n\
                 mkdir -p \"$jvm/bin\" \"$STRATUS_ROOT/usr/bin\"\n\
                 printf '#!/bin/sh\\n' > \"$jvm/bin/java\"\n\
                 chmod +x \"$jvm/bin/java\"\n\
                 ln -sf \"$jvm/bin/java\" \"$STRATUS_ROOT/usr/bin/java\";;\nesac"
            ),
        );
        stub(
            &s.path("bin/curl"),
            &format!(
                r#"out= url=
while (($#)); do
    case $1 in
        -o) out=$2; shift;;
        -K|--aws-sigv4|-H|-X|--max-time|--connect-timeout|--retry|--retry-delay) shift;;
        http://*|https://*) url=$1;;
    esac
    shift
done
echo "$STRATUS_NODE_NAME curl $url" >> {log}
file={www}/${{url#*://}}
[ -f "$file" ] || exit 22
case $url in
    *.tar.gz)
        # A download as slow as a throttled mirror's.
        echo "$STRATUS_NODE_NAME download-start $(date +%s)" >> {log}
        sleep {E2E_DOWNLOAD_SECS}
        echo "$STRATUS_NODE_NAME download-end $(date +%s)" >> {log};;
esac
if [ -n "$out" ]; then cp "$file" "$out"; else cat "$file"; fi"#
            ),
        );
        stub(
            &s.path("bin/systemctl"),
            &format!(
                r#"echo "$STRATUS_NODE_NAME systemctl $*" >> {log}
units=$STRATUS_ROOT/etc/systemd/system
value() {{ sed -n "s/^$1=//p" "$units/$2"; }}
case "$*" in
    "start --no-block stratus-install.service")
        # systemd runs the unit's ExecStart with its EnvironmentFile, apart from the caller.
        (
            set -a
            . "$(value EnvironmentFile stratus-install.service)"
            set +a
            exec "$(value ExecStart stratus-install.service)"
        ) > "$STRATUS_ROOT/var/log/stratus-install.log" 2>&1 < /dev/null &
        ;;
    "enable --now stratus-hadoop-worker.path")
        # The path unit: its service starts once the path exists.
        path=$(value PathExists stratus-hadoop-worker.path)
        start=$(value ExecStart stratus-hadoop-worker.service)
        (
            while [ ! -e "$path" ]; do sleep 0.2; done
            exec "$start"
        ) > "$STRATUS_ROOT/var/log/stratus-hadoop-worker.log" 2>&1 < /dev/null &
        ;;
    "restart hadoop-datanode.service hadoop-nodemanager.service")
        # The worker's daemons register with the master its configuration names.
        sed -n 's|.*<name>fs.defaultFS</name><value>\(.*\)</value>.*|\1|p' \
            "$HADOOP_CONF_DIR/core-site.xml" > {live}/"$STRATUS_NODE_ADDRESS"
        ;;
esac"#
            ),
        );
        // The release: `hdfs` and `yarn` on the master report the workers registered with it.
        let top = s.path(&format!("pkg/hadoop-{VERSION}"));
        std::fs::create_dir_all(top.join("bin")).unwrap();
        std::fs::create_dir_all(top.join("etc/hadoop")).unwrap();
        let registered = format!(
            "registered() {{ for f in {live}/*; do if [ -f \"$f\" ] && [ \"$(cat \"$f\")\" = \"hdfs://$STRATUS_NODE_ADDRESS:8020\" ]; then echo \"${{f##*/}}\"; fi; done; }}"
        );
        stub(
            &top.join("bin/hdfs"),
            &format!(
                "echo \"$STRATUS_NODE_NAME hdfs $*\" >> {log}\n{registered}\n\
                 if [ \"$1\" = dfsadmin ]; then for a in $(registered); do echo \"Name: $a:9866\"; done; fi"
            ),
        );
        stub(
            &top.join("bin/yarn"),
            &format!(
                "echo \"$STRATUS_NODE_NAME yarn $*\" >> {log}\n{registered}\n\
                 if [ \"$1\" = node ]; then for a in $(registered); do echo \"$a:4545  RUNNING  $a:8042  0\"; done; fi"
            ),
        );
        stub(
            &top.join("bin/mapred"),
            &format!("echo \"$STRATUS_NODE_NAME mapred $*\" >> {log}"),
        );
        std::fs::write(top.join("etc/hadoop/hadoop-env.sh"), "# Hadoop's own\n").unwrap();
        let tarball = s.path("pkg/release.tar.gz");
        let out = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(s.path("pkg"))
            .arg(format!("hadoop-{VERSION}"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let body = std::fs::read(&tarball).unwrap();
        let sum = Command::new("sha512sum").arg(&tarball).output().unwrap();
        let sum = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        s.serve(
            &format!("{MIRROR}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz"),
            &body,
        );
        s.serve(
            &format!("{DOWNLOADS}/hadoop-{VERSION}/hadoop-{VERSION}.tar.gz.sha512"),
            format!("SHA512 (hadoop-{VERSION}.tar.gz) = {sum}\n").as_bytes(),
        );
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn serve(&self, url: &str, body: &[u8]) {
        let path = self.path("www").join(url.split_once("://").unwrap().1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    /// What each node runs with, beside its own environment: a root of its own (`{node_dir}`
    /// is its directory), the stand-ins first on the PATH, then what the install puts in the
    /// root's /usr/bin (java).
    fn node_env(&self) -> Vec<(String, String)> {
        let bin = self.path("bin");
        [
            (
                "PATH",
                format!(
                    "{}:{{node_dir}}/root/usr/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    bin.display()
                ),
            ),
            ("STRATUS_ROOT", "{node_dir}/root".to_owned()),
            (
                "STRATUS_MEMINFO",
                self.path("meminfo").display().to_string(),
            ),
            // What the configure step finds at /usr/local on a node.
            (
                "STRATUS_HADOOP_LIB",
                "{node_dir}/root/usr/local/lib/stratus/hadoop.sh".to_owned(),
            ),
            (
                "STRATUS_HADOOP_CONFIG",
                "{node_dir}/root/usr/local/sbin/stratus-hadoop-config".to_owned(),
            ),
            ("STRATUS_RETRY_DELAY", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Every call so far, each line `NODE what`.
    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls.log")).unwrap_or_default()
    }

    /// When `node`'s download of the release ended (`download-end`), in seconds since the epoch.
    fn download_end(&self, node: &str) -> Option<u64> {
        self.calls()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{node} download-end ")))
            .and_then(|t| t.parse().ok())
    }
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_hadoop_launch_through_the_faithful_hypervisor_configures_though_its_install_outlasts_the_ready_timeout()
 {
    use crate::ec2::ec2_hypervisor::{Console, Hypervisor, HypervisorConfig};
    let Some(moto) = Moto::acquire() else { return };
    let ctx = crate::ec2::loopback_context(&moto);
    let stage = Stage::new();
    // The nodes run as this user (the hypervisor's SSH serves it): it owns the daemons' dirs.
    let me = Command::new("id").arg("-un").output().unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_owned();
    // The shipped profile as it is, but for the login, a ready wait shorter than the install,
    // and a mirror of the site's own (the stand-in web).
    ctx.profile_file(
        "hadoop-e2e.toml",
        &format!(
            "extends = \"hadoop\"\ndescription = \"hadoop, through the faithful hypervisor\"\n\
             ssh_user = \"{me}\"\nssh_port = 2200\nready_timeout_secs = {E2E_READY_SECS}\n\
             boot_timeout_secs = 300\n\n[vars]\nhadoop_sources = [\"{MIRROR}\"]\n\
             register_timeout_secs = 60\n"
        ),
    );
    let hv = Hypervisor::start_with_node_env(
        HypervisorConfig {
            endpoint: moto.endpoint.clone(),
            cluster: Some("hx".into()),
            user: me.clone(),
            port: 2200,
            never_boot: Default::default(),
            // cloud-init's own block of keys, once each user-data has returned.
            console: Console::HostKeys,
        },
        stage.node_env(),
    );
    let started = epoch_secs();
    let r = ctx.run(&["launch-cluster", "hx", "1", "-p", "hadoop-e2e"]);
    let calls = stage.calls();
    if r.code != 0 {
        let logs = ctx.run(&[
            "exec",
            "hx",
            "--all",
            "--",
            "cat \"$STRATUS_STATE_DIR/phases\"; tail -n 20 \"$STRATUS_ROOT\"/var/log/stratus-*.log",
        ]);
        panic!(
            "the launch failed:\n{r}\ncalls:\n{calls}\nnodes:\n{logs}\nhypervisor: {:?}",
            hv.report()
        );
    }
    assert!(
        r.stdout.contains("cluster hx is up: 1 master + 1 worker"),
        "{r}"
    );
    // Past the ready wait (running and SSH), it waited for each node's install.
    assert!(
        r.stderr
            .contains("hx: waiting for SSH (2 nodes)\nhx: waiting for the install (2 nodes)\n"),
        "{r}"
    );
    let c = ctx.cluster_json("hx");
    assert_eq!(c["state"], "configured", "{c:#}");
    let ns = crate::ec2::nodes(&c);
    let address = |role: &str| -> String {
        ns.iter().find(|n| n["role"] == role).unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (master, worker) = (address("master"), address("worker"));

    // Each node's user-data started the install detached, and each install downloaded for
    // longer than the ready wait: the launch got past it on the keys the user-data printed
    // first, and waited for the install after.
    for node in ["hx-master", "hx-worker-1"] {
        assert!(
            calls.contains(&format!(
                "{node} systemctl start --no-block stratus-install.service\n"
            )),
            "{calls}"
        );
        let end = stage
            .download_end(node)
            .unwrap_or_else(|| panic!("{node} never downloaded the release:\n{calls}"));
        assert!(
            end >= started + E2E_READY_SECS + 5,
            "{node}'s install ended {}s after the launch began:\n{calls}",
            end - started
        );
    }
    // The keys stratus pinned are the nodes' own.
    let known = std::fs::read_dir(ctx.state.join("clusters"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("known_hosts"))
        .find(|p| p.exists())
        .expect("a known_hosts of the cluster");
    let known = std::fs::read_to_string(known).unwrap();
    let report = hv.report();
    assert_eq!(report.host_keys.len(), 2, "{report:?}");
    for key in report.host_keys.values() {
        assert!(known.contains(key.as_str()), "{known}");
    }
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // The master formatted HDFS and started its daemons; the worker, once stratus named the
    // master, configured itself for it and started its own, which registered there.
    assert!(
        calls.contains("hx-master hdfs namenode -format -nonInteractive -clusterId hx\n"),
        "{calls}"
    );
    assert!(
        calls.contains("hx-master systemctl enable --now hadoop-namenode.service hadoop-resourcemanager.service hadoop-historyserver.service\n"),
        "{calls}"
    );
    assert_eq!(
        std::fs::read_to_string(stage.path("live").join(&worker)).unwrap(),
        format!("hdfs://{master}:8020\n")
    );
    // The configure step ran on the master: it reached the worker with the intra-cluster key,
    // found its DataNode and NodeManager registered, and made the user's HDFS home.
    assert!(
        calls
            .lines()
            .any(|l| l.starts_with("hx-master ssh ") && l.contains(&format!(" {worker} awk"))),
        "{calls}"
    );
    assert!(
        calls.contains("hx-master hdfs dfsadmin -report -live\n"),
        "{calls}"
    );
    assert!(
        calls.contains(&format!("hx-master hdfs dfs -mkdir -p /user/{me}\n")),
        "{calls}"
    );
    ctx.ok(&["terminate-cluster", "hx", "--yes"]);
}
