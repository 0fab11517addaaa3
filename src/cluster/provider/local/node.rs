//! The local node process (`stratus __node DIR`): what an EC2 instance is to the ec2 provider.
//!
//! It takes its lock (its liveness, for describe), its listening socket (bound by the launcher,
//! fd 3), serves SSH, tells the launcher it is up (fd 4), runs its user-data as cloud-init would,
//! and on SIGTERM stops everything it started before it exits.

use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use super::server::{self, ServerConfig, Terminals};
use super::{NODE_ID_ENV, NodeConfig, NodePaths, STOP_GRACE, processes_with_env, sweep};
use crate::core::error::BoxError;
use crate::sys;

/// The descriptor the node's listening socket arrives on.
pub const LISTEN_FD: RawFd = 3;
/// The descriptor the node writes "ready" to once it serves.
pub const READY_FD: RawFd = 4;

/// Entry point of `stratus __node DIR`.
pub fn run_node(dir: &Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the node's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(node_main(dir));
    match result {
        Ok(()) => {
            tracing::info!("node stopped");
            // Blocking reads on terminals may still hold runtime threads; they die with us.
            std::process::exit(0)
        }
        Err(e) => {
            tracing::error!("node failed: {}", crate::core::error::render(e.as_ref()));
            std::process::exit(1)
        }
    }
}

async fn node_main(dir: &Path) -> Result<(), BoxError> {
    let paths = NodePaths {
        dir: dir.to_path_buf(),
    };
    let cfg: NodeConfig = serde_json::from_slice(&std::fs::read(paths.config())?)?;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(paths.lock())?;
    if !sys::try_lock_file(&lock)? {
        return Err(format!("node {} is already running", cfg.id).into());
    }
    let listener = std::net::TcpListener::from(sys::take_inherited_fd(LISTEN_FD)?);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;

    let host_key =
        russh::keys::PrivateKey::from_openssh(std::fs::read_to_string(paths.host_key())?)?;
    let authorized = russh::keys::PublicKey::from_openssh(&cfg.authorized_key)?;
    let env = node_env(&cfg, &paths);
    let terminals = Arc::new(Terminals::new(paths.dir.join("state/guard/sessions")));
    let server_cfg = Arc::new(ServerConfig {
        host_key,
        user: cfg.ssh_user.clone(),
        authorized,
        env: env.clone(),
        home: paths.home(),
        shell: shell(),
        terminals: terminals.clone(),
        motd: paths.dir.join("state/guard/motd"),
    });
    let mut server = tokio::spawn(server::serve(listener, server_cfg));

    // Ready: the launcher may now describe this node as running and connect to it.
    let mut ready = std::fs::File::from(sys::take_inherited_fd(READY_FD)?);
    ready.write_all(b"ready\n")?;
    drop(ready);
    tracing::info!(node = %cfg.name, address = %cfg.address, port = cfg.port, "node up");

    tokio::spawn(boot(paths.dir.clone(), env.clone()));
    let mut guard = tokio::spawn(guard(paths.dir.clone(), env, terminals));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let outcome = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        _ = hup.recv() => Ok(()),
        _ = &mut guard => {
            tracing::info!("the cluster's deadline and grace have passed: the node stops itself");
            Ok(())
        }
        r = &mut server => match r {
            Ok(Ok(())) => Err("the SSH server stopped".into()),
            Ok(Err(e)) => Err(BoxError::from(e)),
            Err(e) => Err(BoxError::from(e)),
        },
    };
    tracing::info!("stopping everything this node started");
    stop_descendants(&cfg.id).await;
    drop(lock);
    outcome
}

/// SIGTERM to the node's process group and to every process carrying its marker; SIGKILL to
/// the marked ones still alive after the grace period.
async fn stop_descendants(id: &str) {
    let me = std::process::id();
    // The node leads its own session and group; signalling the group reaches this process too,
    // where the signal handler above absorbs it.
    let _ = sys::kill_group(me, libc::SIGTERM);
    sweep(id, libc::SIGTERM, Some(me));
    let marker = format!("{NODE_ID_ENV}={id}");
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && processes_with_env(&marker).iter().any(|p| *p != me) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sweep(id, libc::SIGKILL, Some(me));
}

fn shell() -> PathBuf {
    ["/bin/bash", "/usr/bin/bash", "/bin/sh"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

/// The environment of everything the node runs, from an allow-list plus the node's facts (what
/// an instance would learn from its metadata service).
fn node_env(cfg: &NodeConfig, paths: &NodePaths) -> Vec<(String, String)> {
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), var("PATH", "/usr/local/bin:/usr/bin:/bin")),
        ("LANG".into(), var("LANG", "C.UTF-8")),
        ("HOME".into(), paths.home().display().to_string()),
        ("USER".into(), cfg.ssh_user.clone()),
        ("LOGNAME".into(), cfg.ssh_user.clone()),
        ("SHELL".into(), shell().display().to_string()),
        (NODE_ID_ENV.into(), cfg.id.clone()),
        ("STRATUS_NODE_NAME".into(), cfg.name.clone()),
        ("STRATUS_NODE_ROLE".into(), cfg.role.to_string()),
        ("STRATUS_NODE_INDEX".into(), cfg.index.to_string()),
        ("STRATUS_NODE_ADDRESS".into(), cfg.address.clone()),
        ("STRATUS_CLUSTER".into(), cfg.tags.cluster.to_string()),
        // What /var/lib/stratus is on an instance (the phase a node reports, say), in the
        // node's own directory: an absolute path would be this machine's.
        (
            "STRATUS_STATE_DIR".into(),
            paths.dir.join("state").display().to_string(),
        ),
        // What /etc/ssh is on an instance: the node's public host key, for a user-data that
        // prints it on the console as cloud-init does.
        (
            "STRATUS_SSH_DIR".into(),
            paths.etc_ssh().display().to_string(),
        ),
        (
            "STRATUS_BOOT_LOG".into(),
            paths.boot_log().display().to_string(),
        ),
        (
            "STRATUS_BOOT_FINISHED".into(),
            paths.boot_finished().display().to_string(),
        ),
    ];
    // A test's additions (`LocalProvider::with_node_env`), which replace a variable of the same
    // name; never the marker terminate sweeps by.
    let dir = paths.dir.display().to_string();
    for (key, value) in &cfg.extra_env {
        if key == NODE_ID_ENV {
            tracing::warn!("ignoring a replacement of {NODE_ID_ENV}");
            continue;
        }
        let value = value.replace("{node_dir}", &dir);
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => env.push((key.clone(), value)),
        }
    }
    env
}

/// How often a local node runs its guard (`cluster::clock`): more often than an instance's
/// timer, since a notice stratus leaves over SSH waits for it.
const GUARD_EVERY: Duration = Duration::from_secs(10);
/// The guard's exit status that asks the node to stop.
const GUARD_STOP: i32 = 99;

/// Runs the guard the user-data installed (if it did) as soon as it is there and then every
/// `GUARD_EVERY`, writes what it broadcasts to this node's own terminals, and returns once it
/// asks the node to stop.
async fn guard(dir: PathBuf, env: Vec<(String, String)>, terminals: Arc<Terminals>) {
    let script = dir.join("state/clock/stratus-guard");
    let home = NodePaths { dir: dir.clone() }.home();
    loop {
        // Until the user-data has installed it, look for it every second: its first run writes
        // the login message.
        if !script.exists() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        {
            let out = tokio::process::Command::new(&script)
                .arg("tick")
                .current_dir(&home)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .await;
            match out {
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let mut said = None;
                    if !text.trim().is_empty() {
                        tracing::info!(sessions = terminals.count(), "guard: {}", text.trim());
                        // Not waited for: a stuck session must not hold the guard up.
                        let (terminals, text) = (terminals.clone(), text.into_owned());
                        said = Some(tokio::spawn(
                            async move { terminals.broadcast(&text).await },
                        ));
                    }
                    if o.status.code() == Some(GUARD_STOP) {
                        // The sessions get a moment to show why, then the node stops.
                        if let Some(said) = said {
                            let _ = tokio::time::timeout(Duration::from_secs(2), said).await;
                        }
                        return;
                    }
                }
                Err(e) => tracing::warn!("cannot run the guard: {e}"),
            }
        }
        tokio::time::sleep(GUARD_EVERY).await;
    }
}

/// Runs the user-data once, as cloud-init runs a `#!` script: output to the boot log, and
/// `boot-finished` written with the exit status when it is done.
async fn boot(dir: PathBuf, env: Vec<(String, String)>) {
    let paths = NodePaths { dir };
    let status = run_user_data(&paths, &env).await;
    let line = match &status {
        Ok(code) => format!("exit={code}\n"),
        Err(e) => format!("error={e}\n"),
    };
    match &status {
        Ok(0) => tracing::info!("user-data finished"),
        Ok(code) => tracing::warn!("user-data exited with status {code}"),
        Err(e) => tracing::warn!("user-data did not run: {e}"),
    }
    if let Err(e) = super::write_atomic(&paths.boot_finished(), line.as_bytes(), 0o644) {
        tracing::warn!("cannot write boot-finished: {e}");
    }
}

async fn run_user_data(paths: &NodePaths, env: &[(String, String)]) -> Result<i32, BoxError> {
    let script = paths.user_data();
    let text = std::fs::read(&script)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(paths.boot_log())?;
    // A multi-part user-data (stratus's guard, then the profile's): each script part in the
    // order of its name, as cloud-init's scripts-user runs them; one failing does not stop the
    // others, and the first failure is the boot's status.
    let Some(parts) = std::str::from_utf8(&text)
        .ok()
        .and_then(crate::templates::split_multipart)
    else {
        return run_script(&script, &text, paths, env, &log).await;
    };
    let dir = paths.dir.join("user-data.d");
    std::fs::create_dir_all(&dir)?;
    let mut parts = parts;
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut status = 0;
    for (name, body) in parts {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(safe);
        super::write_atomic(&path, body.as_bytes(), 0o700)?;
        let code = run_script(&path, body.as_bytes(), paths, env, &log).await?;
        if status == 0 {
            status = code;
        }
    }
    Ok(status)
}

async fn run_script(
    script: &Path,
    text: &[u8],
    paths: &NodePaths,
    env: &[(String, String)],
    log: &std::fs::File,
) -> Result<i32, BoxError> {
    if !text.starts_with(b"#!") {
        return Err(
            "user-data is not a script starting with #! (the local provider runs only scripts)"
                .into(),
        );
    }
    let mut child = tokio::process::Command::new(script)
        .current_dir(paths.home())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .spawn()?;
    let status = child.wait().await?;
    Ok(exit_code(status))
}

/// The shell's view of an exit status: the code, or 128 + the signal.
pub(super) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{ClusterName, Owner, RequestId, Role, Tags};

    fn config(extra_env: Vec<(String, String)>) -> NodeConfig {
        NodeConfig {
            id: "local-0123456789ab".into(),
            name: "c-master".into(),
            tags: Tags {
                owner: Owner::parse("alice").unwrap(),
                cluster: ClusterName::parse("c").unwrap(),
                role: Some(Role::Master),
                profile: "p".into(),
                request: RequestId::new(),
                store: None,
            },
            role: Role::Master,
            index: 0,
            address: "127.0.0.2".into(),
            port: 2200,
            ssh_user: "u".into(),
            authorized_key: String::new(),
            host_public_key: String::new(),
            image: "i".into(),
            instance_type: "t".into(),
            spot: false,
            launched_at: 0,
            extra_env,
        }
    }

    #[test]
    fn a_tests_environment_is_added_replaces_by_name_and_never_the_marker() {
        let paths = NodePaths {
            dir: PathBuf::from("/nodes/local-0123456789ab"),
        };
        let plain = node_env(&config(Vec::new()), &paths);
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let env = node_env(
            &config(pairs(&[
                ("PATH", "/stand-ins:{node_dir}/root/usr/bin:/usr/bin"),
                ("STRATUS_ROOT", "{node_dir}/root"),
                (NODE_ID_ENV, "local-someone-else"),
            ])),
            &paths,
        );
        let get = |k: &str| {
            let found: Vec<&String> = env.iter().filter(|(n, _)| n == k).map(|(_, v)| v).collect();
            assert!(found.len() <= 1, "{k} twice: {env:?}");
            found.first().map(|v| v.as_str())
        };
        assert_eq!(
            get("PATH"),
            Some("/stand-ins:/nodes/local-0123456789ab/root/usr/bin:/usr/bin")
        );
        assert_eq!(get("STRATUS_ROOT"), Some("/nodes/local-0123456789ab/root"));
        assert_eq!(get(NODE_ID_ENV), Some("local-0123456789ab"));
        assert_eq!(env.len(), plain.len() + 1, "{env:?}");
        // None: nothing added, and node.json without the field reads as before.
        assert!(!plain.iter().any(|(k, _)| k == "STRATUS_ROOT"));
        let json = serde_json::to_value(config(Vec::new())).unwrap();
        assert!(json.get("extra_env").is_none(), "{json}");
        let back: NodeConfig = serde_json::from_value(json).unwrap();
        assert!(back.extra_env.is_empty());
    }
}
