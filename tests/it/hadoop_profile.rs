//! The shipped Hadoop profiles: what they render (snapshots under `tests/snapshots/hadoop/`,
//! compared exactly; `STRATUS_UPDATE_SNAPSHOTS=1` rewrites them), `bash -n` and shellcheck on
//! every script, the scripts embedded in the user-data included; the XML the configuration
//! writer produces, by running it; the configure step's logic against stand-in `hdfs`, `yarn`,
//! `ssh` and `sudo`; and a launch of `hadoop-spot` on moto.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use stratus::cluster::Role;
use stratus::config::profile::{Profile, ProfileSet};
use stratus::templates::{BootContext, ConfigureContext, NodeFacts, Renderer};

use crate::ec2::ec2_moto::{Moto, tag};

const REQUEST: &str = "req-0123456789abcdef";

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
    let env = BTreeMap::new();
    Renderer::for_profile(p)
        .unwrap()
        .user_data(&p.role(role).user_data, &boot(p, &env, role))
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
    }
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
}

#[test]
fn user_data_installs_a_pinned_hadoop_with_retries_unless_preinstalled() {
    let h = profile("hadoop");
    let ud = user_data(&h, Role::Master);
    let version = h.vars["hadoop_version"].as_str().unwrap();
    assert!(
        ud.contains(&format!("hadoop_version={version}\n")),
        "pinned version"
    );
    assert!(
        ud.contains("retry 3 30 download"),
        "the download is retried"
    );
    assert!(ud.contains("sha512sum -c -"), "the download is checked");
    assert!(ud.contains("retry 5 15 apt_get install"), "apt is retried");
    assert!(
        !ud.to_lowercase().contains("private key"),
        "no secret in user-data"
    );
    let mut pre = h.clone();
    pre.vars.insert("hadoop_preinstalled".into(), true.into());
    let ud = user_data(&pre, Role::Master);
    assert!(
        !ud.contains("apt_get install"),
        "a preinstalled image installs nothing"
    );
    assert!(
        !ud.contains("download"),
        "a preinstalled image downloads nothing"
    );
    assert!(
        ud.contains("vars.hadoop_preinstalled is true, but"),
        "it checks instead"
    );
    // Pinning the checksum replaces the fetch of Apache's published one.
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
        Sandbox { dir }
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
        .env("STRATUS_HADOOP_CONFIG", self.path("config.sh"));
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
    let mut h = profile("hadoop");
    h.vars.insert("register_timeout_secs".into(), 2.into());
    h.vars.insert("boot_timeout_secs".into(), 2.into());
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
    std::fs::write(state.join("boot-finished"), "finished\n").unwrap();
    let log = sb.path("calls.log");
    let _ = std::fs::remove_file(&log);
    stub(&sb.path("bin/sudo"), "exec \"$@\"");
    stub(
        &sb.path("bin/ssh"),
        &format!("echo \"ssh $*\" >> {}", log.display()),
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
    assert!(calls.contains("10.0.0.11 true"), "{calls}");
    assert!(calls.contains("10.0.0.12 true"), "{calls}");
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

    // A failed boot on the master is reported with the boot's own words.
    std::fs::remove_file(sb.path("state/boot-finished")).unwrap();
    std::fs::write(sb.path("state/boot-failed"), "line 99 failed\n").unwrap();
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
        stderr.contains("the master's boot failed (line 99 failed)"),
        "{stderr}"
    );
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
        assert_eq!(moto.user_data(i.instance_id().unwrap()), want, "{name}");
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
