//! A test that plays EC2's hypervisor: for each instance of a cluster that moto reports running,
//! it boots a local node (the local provider's embedded SSH server) bound to the instance's
//! private IP and the image's SSH port, authorising the instance's key pair and running its
//! user-data at boot, as cloud-init would, and printing the node's SSH host keys on the
//! instance's console (through the fault proxy's `/stratus-faults/console`) as cloud-init does;
//! when moto reports the instance terminated, the node is stopped. moto itself runs nothing, so this is what makes the EC2 provider's whole path, SSH
//! included, run for real.
//!
//! It only ever binds addresses in 127.0.0.0/8: an instance moto places anywhere else is recorded
//! as an error and left alone.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use stratus::cluster::provider::local::LocalProvider;
use stratus::cluster::provider::{BatchSpec, Provider, SshAccess};
use stratus::core::model::{ClusterName, Owner, RequestId, Role, StoreId, Tags, node_name};

use super::ec2_moto::{client, tag};

/// How often moto is asked what runs: moto has no events to wait on.
const POLL: Duration = Duration::from_millis(50);

pub struct HypervisorConfig {
    pub endpoint: String,
    /// Only instances tagged with this cluster are booted.
    pub cluster: String,
    /// The image's login user and sshd port.
    pub user: String,
    pub port: u16,
    /// Node names (`c-worker-2`) whose instance is never booted: a node whose SSH never answers.
    pub never_boot: BTreeSet<String>,
    /// What a booted node's console shows.
    pub console: Console,
}

/// What the hypervisor prints on a booted node's console.
#[derive(Debug, Clone, Default)]
pub enum Console {
    /// cloud-init's block of host keys: the node's own ed25519 key, after an ECDSA key (which the
    /// node does not hold: stratus must pin the ed25519 one), amid boot messages.
    #[default]
    HostKeys,
    /// The same, but for these nodes (`c-worker-1`) another ed25519 key than the node's own: what
    /// a man in the middle's key looks like from the console's side.
    ForgedFor(BTreeSet<String>),
    /// Nothing: moto's canned boot log, without host keys (an image that does not print them).
    Silent,
}

/// Console output as cloud-init writes it, listing these host keys.
pub fn console_text(keys: &[String]) -> String {
    let mut text = String::from(
        "[    0.000000] Linux version 6.8.0-1012-aws (buildd@lcy02-amd64-053)\r\n\
         [    2.114567] EXT4-fs (nvme0n1p1): mounted filesystem\r\n\
         [   11.234567] cloud-init[612]: Cloud-init v. 24.1 running 'modules:config'\r\n\
         -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n\
         256 SHA256:abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ root@ip-10-0-0-5 (ED25519)\r\n\
         -----END SSH HOST KEY FINGERPRINTS-----\r\n\
         -----BEGIN SSH HOST KEY KEYS-----\r\n",
    );
    for k in keys {
        text.push_str(&format!("{k} root@ip-10-0-0-5\r\n"));
    }
    text.push_str(
        "-----END SSH HOST KEY KEYS-----\r\n\
         [   12.345678] cloud-init[612]: Cloud-init v. 24.1 finished\r\n",
    );
    text
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
    pub errors: Vec<String>,
}

pub struct Hypervisor {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Hypervisor {
    pub fn start(config: HypervisorConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stratus-hypervisor-")
            .tempdir()
            .unwrap();
        let local = LocalProvider::new(dir.path(), Default::default())
            .unwrap()
            .with_exe(PathBuf::from(super::BIN));
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(config, local, stop, report));
            })
        };
        Self {
            stop,
            report,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn report(&self) -> Report {
        self.report.lock().unwrap().clone()
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

async fn run(
    config: HypervisorConfig,
    local: LocalProvider,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
) {
    let ec2 = client(&config.endpoint, "testing", "testing");
    // EC2 instance id -> local node id.
    let mut nodes: HashMap<String, String> = HashMap::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        let listed = describe(&ec2, &config.cluster).await;
        let instances = match listed {
            Ok(i) => i,
            Err(e) => {
                report.lock().unwrap().errors.push(e);
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
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
                    match boot(&ec2, &local, &config, &i).await {
                        Ok((node, host_key)) => {
                            if let Err(e) = print_console(&config, &id, &name, &host_key) {
                                report.lock().unwrap().errors.push(format!("{id}: {e}"));
                            }
                            nodes.insert(id.clone(), node);
                            report.lock().unwrap().booted.push(id);
                        }
                        Err(e) => {
                            refused.insert(id.clone());
                            report.lock().unwrap().errors.push(format!("{id}: {e}"));
                        }
                    }
                }
                Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => {
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
        tokio::time::sleep(POLL).await;
    }
    let all: Vec<String> = nodes.into_values().collect();
    if let Err(e) = local.terminate(&all).await {
        report.lock().unwrap().errors.push(format!("stop all: {e}"));
    }
}

async fn describe(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:stratus:cluster")
                .values(cluster)
                .build(),
        )
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

/// Prints a booted node's host keys on its instance's console, as `config.console` says.
fn print_console(
    config: &HypervisorConfig,
    id: &str,
    name: &str,
    host_key: &str,
) -> Result<(), String> {
    let ed25519 = match &config.console {
        Console::Silent => return Ok(()),
        Console::ForgedFor(names) if names.contains(name) => {
            fresh_public_key(russh::keys::Algorithm::Ed25519)
        }
        _ => host_key.to_owned(),
    };
    let ecdsa = fresh_public_key(russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP256,
    });
    let body = serde_json::json!({"instance_id": id, "output": console_text(&[ecdsa, ed25519])});
    let (status, answer) = super::ec2_moto::http(
        &config.endpoint,
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
