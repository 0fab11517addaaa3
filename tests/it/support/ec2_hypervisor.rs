//! A test that plays EC2's hypervisor: for each instance of a cluster that moto reports running,
//! it boots a local node (the local provider's embedded SSH server) bound to the instance's
//! private IP and the image's SSH port, authorising the instance's key pair and running its
//! user-data at boot, as cloud-init would; when moto reports the instance terminated, the node
//! is stopped. moto itself runs nothing, so this is what makes the EC2 provider's whole path,
//! SSH included, run for real.
//!
//! A node that powers itself off (its process ends without being asked: stratus's guard past
//! the deadline) is an instance-initiated shutdown, and EC2 does what the instance's
//! `InstanceInitiatedShutdownBehavior` says: terminate it, or, by default, only stop it (it
//! then still costs its volumes).
//!
//! The instance's console (what GetConsoleOutput answers, set through the fault proxy's
//! `/stratus-faults/console`) follows cloud-init's order on Ubuntu, as faithfully as the tests
//! need:
//! - boot messages first (kernel, cloud-init's `init` and `modules:config` stages);
//! - then cloud-init's `modules:final` stage runs the user-data (`scripts-user`), whose stdout
//!   and stderr reach the console as they are written (cloud-final.service's output goes to the
//!   journal and the console), each line behind a `[ time] cloud-init[pid]: ` prefix as
//!   journald's forwarding writes it; so a user-data that prints a `-----BEGIN SSH HOST KEY
//!   KEYS-----` block of `$STRATUS_SSH_DIR/ssh_host_*_key.pub` (what /etc/ssh is on an instance)
//!   has its keys on the console early;
//! - only once the user-data has returned (the node's `boot-finished` exists), cloud-init's
//!   own block of host keys (`keys-to-console`, in `cloud_final_modules` after
//!   `scripts-user`), as `Console` says, and its `finished` line.
//!
//! A user-data can take as long as a test needs: nothing here waits for it. Like EC2, the
//! console keeps only its last 64 KiB.
//!
//! It only ever binds addresses in 127.0.0.0/8: an instance moto places anywhere else is recorded
//! as an error and left alone.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use futures_util::StreamExt;
use stratus::cluster::provider::InstanceState;
use stratus::cluster::provider::local::LocalProvider;
use stratus::cluster::provider::{BatchSpec, Provider, SshAccess};
use stratus::core::model::{ClusterName, Owner, RequestId, Role, StoreId, Tags, node_name};

use super::ec2_moto::{client, tag};

/// The access key of the hypervisor's own EC2 calls: the fault proxy lets calls signed with it
/// through untouched (no fault, bucket or count), as EC2's machinery is no client of its API.
pub const HYPERVISOR_KEY: &str = "stratus-double-hypervisor";

/// How often moto is asked what runs (moto has no events to wait on), and how often the consoles
/// are brought up to date. A describe that takes longer (a class's hundreds of instances, moto
/// busy with the class's own calls) spaces the next one by three times as long, so that the
/// hypervisor never takes more than a quarter of moto's time; the consoles are still brought up
/// to date every `POLL` in between.
const POLL: Duration = Duration::from_millis(50);
const DESCRIBE_SHARE: u32 = 3;

/// How many instances boot at once (each boot asks moto for its user-data and key pair).
const BOOTS_AT_ONCE: usize = 8;

pub struct HypervisorConfig {
    pub endpoint: String,
    /// Only instances tagged with this cluster are booted; with none, every instance stratus
    /// tagged with a cluster (a whole class's, for `scripts/bench-class`).
    pub cluster: Option<String>,
    /// The image's login user and sshd port.
    pub user: String,
    pub port: u16,
    /// Node names (`c-worker-2`) whose instance is never booted: a node whose SSH never answers.
    pub never_boot: BTreeSet<String>,
    /// What a booted node's console shows.
    pub console: Console,
}

/// What cloud-init's `keys-to-console` prints on a booted node's console once its user-data
/// has returned. The user-data's own output reaches the console whatever this says.
#[derive(Debug, Clone, Default)]
pub enum Console {
    /// cloud-init's block of host keys: the node's own ed25519 key, after an ECDSA key (which the
    /// node does not hold: stratus must pin the ed25519 one).
    #[default]
    HostKeys,
    /// The same, but for these nodes (`c-worker-1`) another ed25519 key than the node's own: what
    /// a man in the middle's key looks like from the console's side.
    ForgedFor(BTreeSet<String>),
    /// No block of host keys (an image whose cloud-init does not print them).
    Silent,
}

/// EC2 keeps the last 64 KiB of an instance's console output.
pub const CONSOLE_KEEPS: usize = 64 * 1024;

/// The kernel's and cloud-init's first stages, before the user-data runs.
pub const BOOT_MESSAGES: &str = "[    0.000000] Linux version 6.8.0-1012-aws (buildd@lcy02-amd64-053)\r\n\
     [    2.114567] EXT4-fs (nvme0n1p1): mounted filesystem\r\n\
     [    8.402113] cloud-init[588]: Cloud-init v. 24.1 running 'init' at Mon, 01 Dec 2025 09:00:08 +0000.\r\n\
     [   11.234567] cloud-init[612]: Cloud-init v. 24.1 running 'modules:config' at Mon, 01 Dec 2025 09:00:11 +0000.\r\n\
     [   12.001234] cloud-init[701]: Cloud-init v. 24.1 running 'modules:final' at Mon, 01 Dec 2025 09:00:12 +0000.\r\n";

/// When the user-data starts, in the console's clock (seconds since the kernel started).
const FINAL_STAGE_AT: f64 = 12.1;

/// cloud-init's `keys-to-console` output, listing these host keys, then its `finished` line.
pub fn keys_to_console(keys: &[String]) -> String {
    let mut text = String::from(
        "-----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n\
         256 SHA256:abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ root@ip-10-0-0-5 (ED25519)\r\n\
         -----END SSH HOST KEY FINGERPRINTS-----\r\n\
         -----BEGIN SSH HOST KEY KEYS-----\r\n",
    );
    for k in keys {
        text.push_str(&format!("{k} root@ip-10-0-0-5\r\n"));
    }
    text.push_str("-----END SSH HOST KEY KEYS-----\r\n");
    text
}

/// Console output of a whole first boot whose user-data printed nothing: boot messages, then
/// cloud-init's block of these host keys.
pub fn console_text(keys: &[String]) -> String {
    format!(
        "{BOOT_MESSAGES}{}{}",
        keys_to_console(keys),
        finished_line(FINAL_STAGE_AT + 0.4)
    )
}

fn finished_line(at: f64) -> String {
    format!(
        "[{at:>12.6}] cloud-init[701]: Cloud-init v. 24.1 finished at Mon, 01 Dec 2025 09:00:12 +0000. Datasource DataSourceEc2Local.  Up {at:.2} seconds\r\n"
    )
}

/// The last `CONSOLE_KEEPS` bytes of `text` (from a character boundary), as EC2 keeps them.
pub fn console_tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(CONSOLE_KEEPS);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A fresh public key of this algorithm, as one OpenSSH line without comment.
pub fn fresh_public_key(alg: russh::keys::Algorithm) -> String {
    let key = russh::keys::PrivateKey::random(&mut rand::rng(), alg).unwrap();
    stratus::cluster::ssh::public_key_openssh(key.public_key())
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Instance ids booted, in order.
    pub booted: Vec<String>,
    /// Instance ids whose node was stopped because moto reported them terminated.
    pub stopped: Vec<String>,
    /// Instance ids whose node powered itself off, and what EC2 then did with the instance
    /// (`terminate` or `stop`, as its shutdown behaviour says).
    pub powered_off: Vec<(String, String)>,
    /// Each booted instance's host public key (`ssh-ed25519 AAAA…`), by instance id.
    pub host_keys: HashMap<String, String>,
    pub errors: Vec<String>,
}

pub struct Hypervisor {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Hypervisor {
    pub fn start(config: HypervisorConfig) -> Self {
        Self::start_with_node_env(config, Vec::new())
    }

    /// `start`, with these variables added to the environment of everything its nodes run (the
    /// user-data and SSH sessions): a sandbox for a profile's real user-data, say, with
    /// `{node_dir}` in a value standing for the node's own directory
    /// (`LocalProvider::with_node_env`).
    pub fn start_with_node_env(config: HypervisorConfig, env: Vec<(String, String)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stratus-hypervisor-")
            .tempdir()
            .unwrap();
        let local = LocalProvider::new(dir.path(), Default::default())
            .unwrap()
            .with_exe(PathBuf::from(super::BIN))
            .with_node_env(env);
        let nodes_root = nodes_root(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(config, local, nodes_root, stop, report));
            })
        };
        Self {
            stop,
            report,
            thread: Some(thread),
            dir,
        }
    }

    pub fn report(&self) -> Report {
        self.report.lock().unwrap().clone()
    }

    /// Where the booted nodes' directories are (`<root>/<node id>`); each node process runs
    /// `stratus __node <its directory>`.
    pub fn nodes_root(&self) -> PathBuf {
        nodes_root(self.dir.path())
    }

    /// Each booted node's home directory (what a configure step's files land in), while the
    /// hypervisor runs.
    pub fn node_homes(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.nodes_root()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("home"))
            .filter(|h| h.is_dir())
            .collect()
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the LocalProvider of state directory `state` keeps its nodes: node `<id>` in
/// `<state>/local/<id>` (its NodePaths).
fn nodes_root(state: &Path) -> PathBuf {
    state.join("local")
}

/// A booted node's console, as it grows.
struct Screen {
    instance_id: String,
    name: String,
    /// The local node's directory: its `boot.log` and `boot-finished`.
    dir: PathBuf,
    host_key: String,
    booted: Instant,
    /// Bytes of `boot.log` read so far, and a line not finished yet.
    read: u64,
    partial: Vec<u8>,
    /// The user-data's output, as the console shows it.
    lines: String,
    /// cloud-init's last words, once the user-data has returned.
    ending: Option<String>,
    /// The text last set as the console's.
    shown: Option<String>,
}

impl Screen {
    fn new(instance_id: String, name: String, dir: PathBuf, host_key: String) -> Self {
        Self {
            instance_id,
            name,
            dir,
            host_key,
            booted: Instant::now(),
            read: 0,
            partial: Vec::new(),
            lines: String::new(),
            ending: None,
            shown: None,
        }
    }

    fn clock(&self) -> f64 {
        FINAL_STAGE_AT + self.booted.elapsed().as_secs_f64()
    }

    fn push_line(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        self.lines.push_str(&format!(
            "[{:>12.6}] cloud-init[701]: {line}\r\n",
            self.clock()
        ));
    }

    /// Reads what the user-data wrote since last time; once it has returned, adds cloud-init's
    /// ending. The console's text when it changed.
    fn refresh(&mut self, console: &Console) -> Option<String> {
        if self.ending.is_some() {
            return None;
        }
        // Whether it had returned before the last read: then that read has all it wrote.
        let finished = self.dir.join("boot-finished").exists();
        let fresh = read_from(&self.dir.join("boot.log"), self.read);
        self.read += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        while let Some(at) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            self.push_line(&line[..line.len() - 1]);
        }
        if finished {
            if !self.partial.is_empty() {
                let rest = std::mem::take(&mut self.partial);
                self.push_line(&rest);
            }
            let keys = match console {
                Console::Silent => String::new(),
                Console::ForgedFor(names) if names.contains(&self.name) => keys_to_console(&[
                    fresh_ecdsa(),
                    fresh_public_key(russh::keys::Algorithm::Ed25519),
                ]),
                _ => keys_to_console(&[fresh_ecdsa(), self.host_key.clone()]),
            };
            self.ending = Some(format!("{keys}{}", finished_line(self.clock())));
        }
        let text = format!(
            "{BOOT_MESSAGES}{}{}",
            self.lines,
            self.ending.as_deref().unwrap_or("")
        );
        let text = console_tail(&text).to_owned();
        if self.shown.as_ref() == Some(&text) {
            return None;
        }
        self.shown = Some(text.clone());
        Some(text)
    }
}

/// The bytes of a file from `offset` on (none if it is not there yet).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_end(&mut out);
    }
    out
}

fn fresh_ecdsa() -> String {
    fresh_public_key(russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP256,
    })
}

async fn run(
    config: HypervisorConfig,
    local: LocalProvider,
    nodes_root: PathBuf,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
) {
    let ec2 = client(&config.endpoint, HYPERVISOR_KEY, "testing");
    // EC2 instance id -> local node id.
    let mut nodes: HashMap<String, String> = HashMap::new();
    // EC2 instance id -> its console.
    let mut screens: HashMap<String, Screen> = HashMap::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        let listed = describe(&ec2, config.cluster.as_deref()).await;
        let next_describe = asked + POLL.max(asked.elapsed() * (1 + DESCRIBE_SHARE));
        let instances = match listed {
            Ok(i) => i,
            Err(e) => {
                report.lock().unwrap().errors.push(e);
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        // Before the listing is looked at: it may still say running for a node that is off,
        // which must not boot again.
        power_off(
            &ec2,
            &local,
            &mut nodes,
            &mut screens,
            &mut refused,
            &report,
        )
        .await;
        let mut to_boot = Vec::new();
        for i in instances {
            let Some(id) = i.instance_id().map(str::to_owned) else {
                continue;
            };
            let state = i.state().and_then(|s| s.name()).cloned();
            match state {
                Some(InstanceStateName::Running)
                    if !nodes.contains_key(&id) && !refused.contains(&id) =>
                {
                    let name = instance_node_name(&i).unwrap_or_default();
                    if config.never_boot.contains(&name) {
                        refused.insert(id);
                        continue;
                    }
                    to_boot.push((id, name, i));
                }
                Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => {
                    screens.remove(&id);
                    if let Some(node) = nodes.remove(&id) {
                        if let Err(e) = local.terminate(&[node]).await {
                            report
                                .lock()
                                .unwrap()
                                .errors
                                .push(format!("stop {id}: {e}"));
                        }
                        report.lock().unwrap().stopped.push(id);
                    }
                }
                _ => {}
            }
        }
        let booted: Vec<_> = futures_util::stream::iter(to_boot)
            .map(|(id, name, i)| {
                let (ec2, local, config) = (&ec2, &local, &config);
                async move { (id, name, boot(ec2, local, config, &i).await) }
            })
            .buffer_unordered(BOOTS_AT_ONCE)
            .collect()
            .await;
        for (id, name, result) in booted {
            match result {
                Ok((node, host_key)) => {
                    let dir = nodes_root.join(&node);
                    report
                        .lock()
                        .unwrap()
                        .host_keys
                        .insert(id.clone(), host_key.clone());
                    screens.insert(id.clone(), Screen::new(id.clone(), name, dir, host_key));
                    nodes.insert(id.clone(), node);
                    report.lock().unwrap().booted.push(id);
                }
                Err(e) => {
                    refused.insert(id.clone());
                    report.lock().unwrap().errors.push(format!("{id}: {e}"));
                }
            }
        }
        loop {
            for screen in screens.values_mut() {
                if let Some(text) = screen.refresh(&config.console)
                    && let Err(e) = show(&config.endpoint, &screen.instance_id, &text)
                {
                    report
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("{}: {e}", screen.instance_id));
                }
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if Instant::now() + POLL >= next_describe {
                tokio::time::sleep_until(next_describe.into()).await;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let all: Vec<String> = nodes.into_values().collect();
    if let Err(e) = local.terminate(&all).await {
        report.lock().unwrap().errors.push(format!("stop all: {e}"));
    }
}

/// The nodes that powered themselves off: each one's instance is terminated or stopped in moto,
/// as EC2 does on an instance-initiated shutdown, and is no longer this hypervisor's to run.
async fn power_off(
    ec2: &aws_sdk_ec2::Client,
    local: &LocalProvider,
    nodes: &mut HashMap<String, String>,
    screens: &mut HashMap<String, Screen>,
    ended: &mut BTreeSet<String>,
    report: &Mutex<Report>,
) {
    if nodes.is_empty() {
        return;
    }
    let ids: Vec<String> = nodes.values().cloned().collect();
    let described = match local.describe_ids(&ids).await {
        Ok(d) => d,
        Err(e) => {
            report
                .lock()
                .unwrap()
                .errors
                .push(format!("describe the nodes: {e}"));
            return;
        }
    };
    let gone: BTreeSet<String> = described
        .into_iter()
        .filter(|n| {
            n.state == InstanceState::Terminated
                && n.reason.as_deref() != Some("terminated by request")
        })
        .map(|n| n.id)
        .collect();
    let off: Vec<String> = nodes
        .iter()
        .filter(|(_, node)| gone.contains(*node))
        .map(|(id, _)| id.clone())
        .collect();
    for id in off {
        nodes.remove(&id);
        screens.remove(&id);
        ended.insert(id.clone());
        let done = match shutdown_behaviour(ec2, &id).await {
            Ok(b) if b == "terminate" => ec2
                .terminate_instances()
                .instance_ids(&id)
                .send()
                .await
                .map(|_| b)
                .map_err(|e| format!("terminate {id}: {e}")),
            Ok(b) => ec2
                .stop_instances()
                .instance_ids(&id)
                .send()
                .await
                .map(|_| b)
                .map_err(|e| format!("stop {id}: {e}")),
            Err(e) => Err(e),
        };
        let mut report = report.lock().unwrap();
        match done {
            Ok(b) => report.powered_off.push((id, b)),
            Err(e) => report.errors.push(e),
        }
    }
}

/// An instance's `InstanceInitiatedShutdownBehavior` (`stop` unless its launch said otherwise).
async fn shutdown_behaviour(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<String, String> {
    let out = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .map_err(|e| format!("{id}'s shutdown behaviour: {e}"))?;
    out.instance_initiated_shutdown_behavior()
        .and_then(|v| v.value())
        .map(str::to_owned)
        .ok_or_else(|| format!("{id}'s shutdown behaviour: moto answered none"))
}

async fn describe(
    ec2: &aws_sdk_ec2::Client,
    cluster: Option<&str>,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, String> {
    let mut out = Vec::new();
    let filter = match cluster {
        Some(cluster) => Filter::builder()
            .name("tag:stratus:cluster")
            .values(cluster),
        None => Filter::builder().name("tag-key").values("stratus:cluster"),
    };
    let mut pages = ec2
        .describe_instances()
        .filters(filter.build())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("describe: {e}"))?;
        for r in page.reservations() {
            out.extend(r.instances().iter().cloned());
        }
    }
    Ok(out)
}

/// The node an instance is: its role tag, and for a worker the batch's first index (a tag) plus
/// its launch index within the batch.
fn instance_index(i: &aws_sdk_ec2::types::Instance) -> Option<(Role, u32)> {
    let role = tag(i.tags(), "stratus:role").and_then(Role::parse)?;
    let index = match role {
        Role::Master => 0,
        Role::Worker => {
            let first: u32 = tag(i.tags(), "stratus:first-index")?.parse().ok()?;
            first + u32::try_from(i.ami_launch_index()?).ok()?
        }
    };
    Some((role, index))
}

fn instance_node_name(i: &aws_sdk_ec2::types::Instance) -> Option<String> {
    let cluster = ClusterName::parse(tag(i.tags(), "stratus:cluster")?).ok()?;
    let (role, index) = instance_index(i)?;
    Some(node_name(&cluster, role, index))
}

/// Sets an instance's console output (what GetConsoleOutput answers) through the fault proxy.
fn show(endpoint: &str, id: &str, text: &str) -> Result<(), String> {
    let body = serde_json::json!({"instance_id": id, "output": text});
    let (status, answer) = super::ec2_moto::http(
        endpoint,
        "POST",
        "/stratus-faults/console",
        &body.to_string(),
    );
    if status != 200 {
        return Err(format!(
            "console: {status} {answer} (is the server scripts/moto_faults.py?)"
        ));
    }
    Ok(())
}

/// Boots one instance as a local node at its private IP: the node's id and its host public key.
async fn boot(
    ec2: &aws_sdk_ec2::Client,
    local: &LocalProvider,
    config: &HypervisorConfig,
    i: &aws_sdk_ec2::types::Instance,
) -> Result<(String, String), String> {
    let id = i.instance_id().unwrap_or_default();
    let ip: Ipv4Addr = i
        .private_ip_address()
        .ok_or("no private IP")?
        .parse()
        .map_err(|e| format!("private IP: {e}"))?;
    if ip.octets()[0] != 127 {
        return Err(format!("{ip} is outside 127.0.0.0/8; not booting it"));
    }
    let b64 = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| format!("user-data: {e}"))?
        .user_data()
        .and_then(|v| v.value())
        .unwrap_or_default()
        .to_owned();
    let user_data = super::ec2_moto::decode_user_data(&b64);
    let key_name = i.key_name().ok_or("no key pair")?;
    let public_key = ec2
        .describe_key_pairs()
        .key_names(key_name)
        .include_public_key(true)
        .send()
        .await
        .map_err(|e| format!("key pair: {e}"))?
        .key_pairs()
        .first()
        .and_then(|k| k.public_key())
        .ok_or("the key pair has no public key")?
        .to_owned();
    let tags = i.tags();
    let get = |k: &str| tag(tags, k).ok_or(format!("no tag {k}"));
    let node_tags = Tags {
        owner: Owner::parse(get("stratus:owner")?).map_err(|e| e.to_string())?,
        cluster: ClusterName::parse(get("stratus:cluster")?).map_err(|e| e.to_string())?,
        role: tag(tags, "stratus:role").and_then(Role::parse),
        profile: get("stratus:profile")?.to_owned(),
        request: RequestId::from_stored(get("stratus:request")?.to_owned()),
        store: tag(tags, "stratus:store").map(|s| StoreId::from_stored(s.to_owned())),
    };
    let (role, index) = instance_index(i).ok_or("no role or index tags")?;
    let access = SshAccess {
        user: config.user.clone(),
        public_key,
        port: config.port,
        web_ports: vec![],
    };
    let spec = BatchSpec {
        role,
        first_index: index,
        count: 1,
        min_count: 1,
        name: get("Name")?.to_owned(),
        image: i.image_id().unwrap_or_default().to_owned(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        instance_types: Vec::new(),
        spot: false,
        volume_gb: None,
        user_data,
        tags: node_tags,
        client_token: String::new(),
    };
    let node = local
        .launch_at(ip, config.port, &access, &spec, index)
        .await
        .map_err(|e| format!("boot at {ip}:{}: {e}", config.port))?;
    let host_key = node.host_key.clone().ok_or("the node has no host key")?;
    Ok((node.id, host_key))
}
