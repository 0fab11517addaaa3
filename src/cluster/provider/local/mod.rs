//! The local provider: each "instance" is a `stratus __node` process on this machine, with its
//! own directory (its disk), its own loopback address (on Linux a distinct 127.x.y.z per node;
//! elsewhere a distinct port on 127.0.0.1) and an embedded SSH server that accepts only the
//! cluster's key. It runs the rendered user-data at boot, as cloud-init would.
//!
//! Truthful describe: a node holds a POSIX lock on `node.lock` for as long as it lives, and the
//! lock names its holder's pid, so a dead node (even one killed with SIGKILL) is never reported
//! running, and a recycled pid is never mistaken for a node.
//!
//! Everything a node starts carries `STRATUS_NODE_ID=<id>` in its environment and starts in the
//! node's session; terminate signals the node, then sweeps both the process group and every
//! process carrying the marker, so a daemon that detached itself still goes.

mod node;
mod server;

pub use node::run_node;

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{
    BatchSpec, ClusterRef, Instance, InstanceState, Journal, Launched, Provider, ProviderError,
    Selector, SshAccess, TerminateReport,
};
use crate::config::LocalConfig;
use crate::core::files::{write_atomic, write_private};
use crate::core::model::{Millis, ProviderKind, Role, Tags, node_name, now_millis};
use crate::sys;

/// The environment variable that marks every process a node starts.
pub const NODE_ID_ENV: &str = "STRATUS_NODE_ID";

/// How long a node gets to stop what it started before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a node process gets to take its lock and listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT_MS: Millis = 2 * 30 * 1000;

/// One node of a batch to start.
struct NodeStart<'a> {
    name: String,
    role: Role,
    index: u32,
    batch: &'a BatchSpec,
}

/// What a node process is told about itself (`node.json` in its directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    pub name: String,
    pub tags: Tags,
    pub role: Role,
    pub index: u32,
    pub address: String,
    pub port: u16,
    pub ssh_user: String,
    /// The cluster's public key, the only one the node's SSH server accepts.
    pub authorized_key: String,
    pub host_public_key: String,
    pub image: String,
    pub instance_type: String,
    pub spot: bool,
    pub launched_at: Millis,
    /// Variables added to (or replacing) the node's own environment, for everything it runs:
    /// a test's sandbox (`LocalProvider::with_node_env`). Never set from a site's configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_env: Vec<(String, String)>,
}

/// Files in a node's directory. `home/` is the node's disk: the SSH user's home, where
/// user-data and sessions run.
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("node.lock")
    }
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }
    pub fn user_data(&self) -> PathBuf {
        self.dir.join("user-data")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    pub fn boot_log(&self) -> PathBuf {
        self.dir.join("boot.log")
    }
    pub fn boot_finished(&self) -> PathBuf {
        self.dir.join("boot-finished")
    }
    pub fn terminated(&self) -> PathBuf {
        self.dir.join("terminated")
    }
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }
    /// What `/etc/ssh` is on an instance, for the user-data: the node's public host key, as
    /// `ssh_host_ed25519_key.pub`.
    pub fn etc_ssh(&self) -> PathBuf {
        self.dir.join("etc-ssh")
    }
}

#[derive(Debug, Clone)]
pub struct LocalProvider {
    root: PathBuf,
    exe: PathBuf,
    config: LocalConfig,
    extra_env: Vec<(String, String)>,
}

impl LocalProvider {
    /// Nodes live under `<state dir>/local/`.
    pub fn new(state_dir: &Path, config: LocalConfig) -> Result<Self, ProviderError> {
        let exe = std::env::current_exe()
            .map_err(ProviderError::io("cannot find the stratus executable"))?;
        Ok(Self {
            root: state_dir.join("local"),
            exe,
            config,
            extra_env: Vec::new(),
        })
    }

    fn paths(&self, id: &str) -> NodePaths {
        NodePaths {
            dir: self.root.join(id),
        }
    }

    /// Binds the node's listening socket, which is handed to the node process: the address is
    /// taken the moment it is chosen, so two launches never pick the same one.
    fn allocate(&self) -> Result<(TcpListener, String, u16), ProviderError> {
        if cfg!(target_os = "linux") {
            // Not the address of a node that is not released yet: a dead node's services may
            // still hold other ports there until terminate sweeps them.
            let taken: std::collections::HashSet<String> = self
                .all_nodes()
                .into_iter()
                .map(|(_, c)| c.address)
                .collect();
            let first = u32::from(self.config.first_address);
            for n in first..first.saturating_add(65_536) {
                let addr = Ipv4Addr::from(n);
                if addr.octets()[0] != 127 {
                    break;
                }
                if matches!(addr.octets()[3], 0 | 255) || taken.contains(&addr.to_string()) {
                    continue;
                }
                match TcpListener::bind((addr, self.config.ssh_port)) {
                    Ok(l) => return Ok((l, addr.to_string(), self.config.ssh_port)),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                    Err(e) => {
                        return Err(ProviderError::Io {
                            what: format!(
                                "cannot listen on {addr}:{} for a local node",
                                self.config.ssh_port
                            ),
                            source: e,
                        });
                    }
                }
            }
            Err(ProviderError::Other(
                "no free loopback address is left for a local node".into(),
            ))
        } else {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ProviderError::io(
                "cannot listen on 127.0.0.1 for a local node",
            ))?;
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            Ok((l, Ipv4Addr::LOCALHOST.to_string(), port))
        }
    }

    async fn spawn_node(
        &self,
        paths: &NodePaths,
        listener: TcpListener,
    ) -> Result<(), ProviderError> {
        let (ready_r, ready_w) =
            std::io::pipe().map_err(ProviderError::io("cannot create a pipe"))?;
        let listener_fd = sys::dup_cloexec_above(listener.as_raw_fd(), 10)
            .map_err(ProviderError::io("cannot pass the socket to the node"))?;
        let ready_fd = sys::dup_cloexec_above(ready_w.as_raw_fd(), 10)
            .map_err(ProviderError::io("cannot pass the pipe to the node"))?;
        drop(ready_w);
        drop(listener);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(paths.log())
            .map_err(ProviderError::io("cannot create the node log"))?;
        let log2 = log
            .try_clone()
            .map_err(ProviderError::io("cannot create the node log"))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("__node")
            .arg(&paths.dir)
            .current_dir(&paths.dir)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        // The node's environment is built from an allow-list: nothing of the caller's (cloud
        // credentials least of all) reaches a node.
        for key in ["PATH", "LANG", "LC_ALL", "TZ", "RUST_LOG"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        sys::detach_with_fds(
            &mut cmd,
            vec![
                (listener_fd.as_raw_fd(), node::LISTEN_FD),
                (ready_fd.as_raw_fd(), node::READY_FD),
            ],
        );
        let child = cmd
            .spawn()
            .map_err(ProviderError::io("cannot start a local node process"))?;
        drop(listener_fd);
        drop(ready_fd);

        // The node writes "ready" once it holds its lock and listens; it closes the pipe (or
        // dies) otherwise.
        let fd: std::os::fd::OwnedFd = ready_r.into();
        sys::set_nonblocking(fd.as_raw_fd()).map_err(ProviderError::io("pipe"))?;
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
            .map_err(ProviderError::io("pipe"))?;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(START_TIMEOUT, rx.read_to_end(&mut buf)).await;
        let ready = matches!(read, Ok(Ok(_))) && buf.starts_with(b"ready");
        if !ready {
            let log = std::fs::read_to_string(paths.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let _ = sys::kill(child.id(), libc::SIGKILL);
            return Err(ProviderError::Other(format!(
                "local node {} did not start: {}",
                paths.dir.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        Ok(())
    }

    /// Nodes run `exe` (the `stratus` binary) instead of the current executable, which in a
    /// test is the test harness.
    pub fn with_exe(mut self, exe: PathBuf) -> Self {
        self.exe = exe;
        self
    }

    /// Nodes started from now on get these variables in the environment of everything they run
    /// (user-data and SSH sessions alike), after their own, replacing a variable of the same
    /// name; `{node_dir}` in a value is the node's directory. For a test that runs a profile's
    /// real user-data in a sandbox (a root of its own per node, stand-in commands first on the
    /// PATH). Only code can set it, never a site's configuration: the local provider runs
    /// everything as the user who launches, who could run it directly. The node's marker
    /// (`STRATUS_NODE_ID`) cannot be replaced, so that terminate still finds all it started.
    pub fn with_node_env(mut self, env: Vec<(String, String)>) -> Self {
        self.extra_env = env;
        self
    }

    /// Starts a node listening on exactly `address:port`. A test acting as a cloud's hypervisor
    /// boots each instance the cloud API reports, at the address the cloud assigned, as a local
    /// node: its SSH server accepts the instance's key pair and it runs the instance's user-data.
    /// `index` is the node's index in the cluster (the batch's first index plus the instance's
    /// launch index).
    pub async fn launch_at(
        &self,
        address: Ipv4Addr,
        port: u16,
        access: &SshAccess,
        batch: &BatchSpec,
        index: u32,
    ) -> Result<Instance, ProviderError> {
        let node = NodeStart {
            name: node_name(&batch.tags.cluster, batch.role, index),
            role: batch.role,
            index,
            batch,
        };
        self.start(Some((address, port)), access, &node).await
    }

    /// Starts a node: at `at` (an address and port) when given, else at the next free
    /// loopback address.
    async fn start(
        &self,
        at: Option<(Ipv4Addr, u16)>,
        access: &SshAccess,
        node: &NodeStart<'_>,
    ) -> Result<Instance, ProviderError> {
        let batch = node.batch;
        let id = random_id();
        let paths = self.paths(&id);
        crate::core::files::create_private_dir(&paths.home())
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        let host_key = crate::cluster::ssh::generate_key()
            .map_err(|e| ProviderError::Other(format!("cannot generate a host key: {e}")))?;
        let private = crate::cluster::ssh::private_key_openssh(&host_key)
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        write_private(&paths.host_key(), private.as_bytes())
            .map_err(ProviderError::io("cannot write the node's host key"))?;
        write_atomic(&paths.user_data(), batch.user_data.as_bytes(), 0o700)
            .map_err(ProviderError::io("cannot write the node's user-data"))?;
        let host_public = crate::cluster::ssh::public_key_openssh(host_key.public_key());
        std::fs::create_dir_all(paths.etc_ssh()).map_err(ProviderError::io(
            "cannot make the node's etc-ssh directory",
        ))?;
        write_atomic(
            &paths.etc_ssh().join("ssh_host_ed25519_key.pub"),
            format!("{host_public} root@{}\n", node.name).as_bytes(),
            0o644,
        )
        .map_err(ProviderError::io("cannot write the node's public host key"))?;
        let (listener, address, port) = match at {
            None => self.allocate()?,
            Some((addr, port)) => {
                let l = TcpListener::bind((addr, port)).map_err(ProviderError::io(format!(
                    "cannot listen on {addr}:{port} for a local node"
                )))?;
                (l, addr.to_string(), port)
            }
        };
        let cfg = NodeConfig {
            id: id.clone(),
            name: node.name.clone(),
            tags: Tags {
                role: Some(node.role),
                ..batch.tags.clone()
            },
            role: node.role,
            index: node.index,
            address,
            port,
            ssh_user: access.user.clone(),
            authorized_key: access.public_key.clone(),
            host_public_key: host_public,
            image: batch.image.clone(),
            instance_type: batch.instance_type.clone(),
            spot: batch.spot,
            launched_at: now_millis(),
            extra_env: self.extra_env.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&cfg).map_err(|e| ProviderError::Other(e.to_string()))?;
        write_private(&paths.config(), &json)
            .map_err(ProviderError::io("cannot write the node's configuration"))?;
        tracing::debug!(node = %node.name, instance = %id, address = %cfg.address, "starting local node");
        self.spawn_node(&paths, listener).await?;
        Ok(Self::instance(&cfg, InstanceState::Running, None))
    }

    fn read_config(paths: &NodePaths) -> Option<NodeConfig> {
        let text = std::fs::read_to_string(paths.config()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Who holds the node's lock: the live node process, if it is alive.
    fn holder(paths: &NodePaths) -> sys::LockHolder {
        std::fs::File::open(paths.lock())
            .ok()
            .and_then(|f| sys::lock_holder(&f).ok())
            .unwrap_or(sys::LockHolder::Free)
    }

    fn state_of(paths: &NodePaths) -> (InstanceState, Option<String>) {
        if Self::holder(paths).is_held() {
            if paths.terminated().exists() {
                (InstanceState::ShuttingDown, None)
            } else {
                (InstanceState::Running, None)
            }
        } else if paths.terminated().exists() {
            (
                InstanceState::Terminated,
                Some("terminated by request".into()),
            )
        } else {
            (
                InstanceState::Terminated,
                Some("the node process exited without being asked to".into()),
            )
        }
    }

    fn instance(cfg: &NodeConfig, state: InstanceState, reason: Option<String>) -> Instance {
        Instance {
            id: cfg.id.clone(),
            role: Some(cfg.role),
            index: Some(cfg.index),
            state,
            reason,
            address: Some(cfg.address.clone()),
            private_address: Some(cfg.address.clone()),
            ssh_port: cfg.port,
            instance_type: cfg.instance_type.clone(),
            image: cfg.image.clone(),
            spot: cfg.spot,
            tags: Some(cfg.tags.clone()),
            host_key: Some(cfg.host_public_key.clone()),
            launched_at: Some(cfg.launched_at),
            // A directory on this machine: no volume, no address, nothing to pay.
            volume_gb: Some(0),
            public_ipv4: Some(false),
        }
    }

    fn all_nodes(&self) -> Vec<(NodePaths, NodeConfig)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let paths = NodePaths { dir: entry.path() };
            if let Some(cfg) = Self::read_config(&paths) {
                out.push((paths, cfg));
            }
        }
        out.sort_by_key(|a| a.1.launched_at);
        out
    }

    /// Stops one node and everything it started; returns once nothing of it is left.
    async fn stop_node(&self, id: &str) -> Result<(), ProviderError> {
        let paths = self.paths(id);
        if !paths.dir.exists() {
            return Ok(());
        }
        write_private(&paths.terminated(), now_millis().to_string().as_bytes()).map_err(
            ProviderError::io(format!("cannot mark node {id} terminated")),
        )?;
        let alive = || Self::holder(&paths).is_held();
        match Self::holder(&paths) {
            sys::LockHolder::Pid(pid) => {
                let _ = sys::kill(pid, libc::SIGTERM);
                // A node stopped with SIGSTOP would never see the SIGTERM.
                let _ = sys::kill(pid, libc::SIGCONT);
                let deadline = Instant::now() + STOP_GRACE * 2;
                while alive() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                if alive() {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    let deadline = Instant::now() + STOP_GRACE;
                    while alive() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                let _ = sys::kill_group(pid, libc::SIGKILL);
            }
            // Held, but by no pid we may signal: the marker sweep below is all there is.
            sys::LockHolder::Unknown => {
                sweep(id, libc::SIGTERM, None);
            }
            sys::LockHolder::Free => {}
        }
        sweep(id, libc::SIGKILL, None);
        if alive() {
            return Err(ProviderError::Other(format!(
                "local node {id} is still running after SIGKILL"
            )));
        }
        Ok(())
    }
}

/// Signals every process (but `except`) whose environment carries this node's marker; returns
/// how many were signalled. Linux only; elsewhere the process group has to do.
pub(crate) fn sweep(id: &str, signal: i32, except: Option<u32>) -> usize {
    let marker = format!("{NODE_ID_ENV}={id}");
    let mut n = 0;
    for pid in processes_with_env(&marker) {
        if Some(pid) != except {
            let _ = sys::kill(pid, signal);
            n += 1;
        }
    }
    n
}

/// Pids of the processes whose environment contains `entry` (`KEY=value`) exactly.
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = entry.as_bytes();
    let mut pids = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle) {
            pids.push(pid);
        }
    }
    pids
}

fn random_id() -> String {
    use rand::RngExt;
    let n: u64 = rand::rng().random();
    format!("local-{:012x}", n & 0xffff_ffff_ffff)
}

impl Provider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    /// A local node is listed from the moment it exists, and a missing one is gone for sure.
    fn consistency_grace(&self) -> Duration {
        Duration::ZERO
    }

    async fn prepare(
        &self,
        _cluster: &ClusterRef,
        _access: &SshAccess,
    ) -> Result<(), ProviderError> {
        crate::core::files::create_private_dir(&self.root)
            .map_err(|e| ProviderError::Other(e.to_string()))
    }

    /// Starts the batch's nodes together; the ones that started are returned even when another
    /// did not, so every one of them is recorded.
    async fn launch(
        &self,
        _cluster: &ClusterRef,
        access: &SshAccess,
        batch: &BatchSpec,
        _journal: &dyn Journal,
    ) -> Launched {
        let starts = (0..batch.count).map(|k| {
            let index = batch.first_index + k;
            let node = NodeStart {
                name: node_name(&batch.tags.cluster, batch.role, index),
                role: batch.role,
                index,
                batch,
            };
            async move { self.start(None, access, &node).await }
        });
        let mut launched = Launched {
            instances: Vec::new(),
            error: None,
            settled: Vec::new(),
        };
        for r in futures_util::future::join_all(starts).await {
            match r {
                Ok(i) => launched.instances.push(i),
                Err(e) => launched.error = launched.error.or(Some(e)),
            }
        }
        // One call: settled once it is known to have done all it did.
        if launched.error.is_none() {
            launched.settled.push(batch.client_token.clone());
        }
        launched
    }

    async fn describe(&self, selector: &Selector) -> Result<Vec<Instance>, ProviderError> {
        Ok(self
            .all_nodes()
            .into_iter()
            .filter(|(_, cfg)| selector.matches(&cfg.tags))
            .map(|(paths, cfg)| {
                let (state, reason) = Self::state_of(&paths);
                Self::instance(&cfg, state, reason)
            })
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<TerminateReport, ProviderError> {
        let results = futures_util::future::join_all(ids.iter().map(|id| self.stop_node(id))).await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(TerminateReport::default())
    }

    async fn half_made(&self, grace: Duration) -> Result<Vec<String>, ProviderError> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(Vec::new());
        };
        let grace = grace.max(START_TIMEOUT * 2);
        let mut out = Vec::new();
        for e in entries.flatten() {
            let paths = NodePaths { dir: e.path() };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > grace);
            // A node's configuration is written before its process starts: a directory without
            // one is a start that failed half-way.
            if paths.dir.is_dir() && !paths.config().exists() && old {
                out.push(paths.dir.display().to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    async fn remove_half_made(&self, leftovers: &[String]) -> Result<(), ProviderError> {
        for dir in leftovers {
            let path = Path::new(dir);
            // Only ever a directory of ours.
            let paths = NodePaths { dir: path.into() };
            if path.parent() == Some(self.root.as_path()) && !paths.config().exists() {
                std::fs::remove_dir_all(path)
                    .map_err(ProviderError::io(format!("cannot remove {dir}")))?;
            }
        }
        Ok(())
    }

    async fn release(&self, cluster: &ClusterRef) -> Result<(), ProviderError> {
        let now = now_millis();
        for (paths, cfg) in self.all_nodes() {
            let ours = cfg.tags.owner == cluster.owner
                && cfg.tags.cluster == cluster.name
                && cfg.tags.store.as_ref() == Some(&cluster.store);
            // A node that is starting has no lock yet: only a node told to stop, or one that
            // never took its lock within the start timeout, is gone.
            let dead = !Self::holder(&paths).is_held()
                && (paths.terminated().exists() || now - cfg.launched_at > START_TIMEOUT_MS);
            if ours && !Self::holder(&paths).is_held() {
                // A node that died on its own could not stop what it started; do it now. (A node
                // that is starting carries no marker yet: nothing of it is signalled.)
                sweep(&cfg.id, libc::SIGKILL, None);
            }
            if ours && dead {
                std::fs::remove_dir_all(&paths.dir).map_err(ProviderError::io(format!(
                    "cannot remove {}",
                    paths.dir.display()
                )))?;
            }
        }
        Ok(())
    }
}
