//! Launch locks: held by the process running a launch (or launch-slaves) for as long as it runs,
//! a POSIX lock on `<state>/launches/<request>.lock`. Its absence tells `reconcile` at once that a
//! launch left in `reserved`, `requested` or `running`, or an instance of that request no row
//! knows, was abandoned by a process that died, instead of waiting out a timeout. The state
//! database is never on a network file system, so the launcher and the reconciler share a host
//! and the lock is good.

use std::path::{Path, PathBuf};

use crate::core::error::Error;
use crate::core::model::RequestId;

pub struct LaunchLock {
    path: PathBuf,
    _file: std::fs::File,
}

/// Opens the lock file at `path`, made if missing (mode 0600), never through a symbolic link.
pub fn open_lock_file(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?)
}

/// Takes the lock file at `path`, without waiting: `None` if another process holds it.
fn take(path: &Path) -> Result<Option<std::fs::File>, Error> {
    if let Some(dir) = path.parent() {
        crate::core::files::create_private_dir(dir)?;
    }
    let file = open_lock_file(path)?;
    Ok(crate::sys::try_lock_file(&file)?.then_some(file))
}

/// Whether a live process holds the lock file at `path`.
fn held(path: &Path) -> bool {
    std::fs::File::open(path)
        .ok()
        .and_then(|f| crate::sys::lock_holder(&f).ok())
        .is_some_and(|h| h.is_held())
}

/// Held by a process terminating a cluster, for as long as it works on it (the file is named
/// after the cluster's row). A cluster left `terminating` while nobody holds it is one whose
/// terminate was interrupted: `reconcile` finishes it.
pub struct TerminateLock {
    _file: std::fs::File,
}

impl TerminateLock {
    fn path(state_dir: &Path, cluster_id: i64) -> PathBuf {
        state_dir
            .join("launches")
            .join(format!("terminate-{cluster_id}.lock"))
    }

    pub fn acquire(state_dir: &Path, cluster_id: i64) -> Result<Self, Error> {
        match take(&Self::path(state_dir, cluster_id))? {
            Some(file) => Ok(Self { _file: file }),
            None => Err(Error::runtime(
                "this cluster is being terminated by another stratus process; wait for it to finish",
            )),
        }
    }

    pub fn is_held(state_dir: &Path, cluster_id: i64) -> bool {
        held(&Self::path(state_dir, cluster_id))
    }
}

/// Removes the lock files of an ended cluster that `delete-cluster` took off the list: nothing
/// terminates or grows it any more.
pub fn remove_cluster_locks(state_dir: &Path, cluster_id: i64) {
    for path in [
        TerminateLock::path(state_dir, cluster_id),
        GrowLock::path(state_dir, cluster_id),
    ] {
        let _ = std::fs::remove_file(path);
    }
}

/// What the lock of a request says about its launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// A live process holds the request's lock.
    Running,
    /// The lock file is there and nobody holds it: the launcher died.
    Died,
    /// No lock file: the launch finished, or predates the locks.
    Unknown,
}

impl LaunchLock {
    fn path(state_dir: &Path, request: &RequestId) -> PathBuf {
        state_dir
            .join("launches")
            .join(format!("{}.lock", request.as_str()))
    }

    pub fn acquire(state_dir: &Path, request: &RequestId) -> Result<Self, Error> {
        let path = Self::path(state_dir, request);
        match take(&path)? {
            Some(file) => Ok(Self { path, _file: file }),
            None => Err(Error::runtime(format!(
                "request {request} is already being launched by another process"
            ))),
        }
    }

    pub fn launcher(state_dir: &Path, request: &RequestId) -> Launcher {
        let path = Self::path(state_dir, request);
        match std::fs::File::open(&path) {
            Err(_) => Launcher::Unknown,
            Ok(f) => match crate::sys::lock_holder(&f) {
                Ok(h) if h.is_held() => Launcher::Running,
                Ok(_) => Launcher::Died,
                Err(_) => Launcher::Unknown,
            },
        }
    }

    /// Removes the lock file a dead launcher left.
    pub fn clear(state_dir: &Path, request: &RequestId) {
        if Self::launcher(state_dir, request) == Launcher::Died {
            let _ = std::fs::remove_file(Self::path(state_dir, request));
        }
    }
}

impl Drop for LaunchLock {
    fn drop(&mut self) {
        // Unlink before the descriptor (and with it the lock) goes: whoever still finds the file
        // finds it locked.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Held by a launch-slaves for as long as it works on a cluster: two at once would both read
/// the same next worker indices and the same worker count against `max_workers`.
pub struct GrowLock {
    _file: std::fs::File,
}

impl GrowLock {
    fn path(state_dir: &Path, cluster_id: i64) -> PathBuf {
        state_dir
            .join("launches")
            .join(format!("grow-{cluster_id}.lock"))
    }

    pub fn acquire(state_dir: &Path, cluster: &crate::store::ClusterRow) -> Result<Self, Error> {
        match take(&Self::path(state_dir, cluster.id))? {
            Some(file) => Ok(Self { _file: file }),
            None => Err(Error::invalid(format!(
                "workers are being added to cluster {} by another stratus process; wait for it to finish",
                cluster.name
            ))),
        }
    }
}
