//! Launch locks: held by the process running a launch (or launch-slaves) for as long as it runs,
//! a POSIX lock on `<state>/launches/<request>.lock`. Its absence tells `reconcile` at once that a
//! launch left in `reserved`, `requested` or `running`, or an instance of that request no row
//! knows, was abandoned by a process that died, instead of waiting out a timeout. The state
//! database is never on a network file system, so the launcher and the reconciler share a host
//! and the lock is good.
//!
//! The terminate and grow locks also carry a lease: the holder writes into the lock file the
//! time until which it counts as working (`lease-until MILLIS`), and renews it while it runs. A
//! holder that stops making progress while it still holds the lock (a process frozen through
//! its owner's cgroup, or stopped) stops renewing, and once its lease has expired the lock no
//! longer keeps anyone out: reconcile, the reaper and an instructor's terminate go ahead
//! (TerminateInstances is idempotent, and the cluster's states are compare-and-set, so a second
//! terminate beside a thawed first one is safe).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::core::error::Error;
use crate::core::model::{Millis, RequestId, now_millis};

/// How long a terminate or grow lock keeps others out after its holder last renewed it.
const LEASE: Duration = Duration::from_secs(120);

static LEASE_OVERRIDE: OnceLock<Duration> = OnceLock::new();

/// Tests only (debug builds): a shorter lease, so that a frozen holder's expires in seconds.
pub fn set_lease_for_tests(lease: Duration) {
    if cfg!(debug_assertions) {
        let _ = LEASE_OVERRIDE.set(lease);
    }
}

fn lease() -> Duration {
    LEASE_OVERRIDE.get().copied().unwrap_or(LEASE)
}

/// The lease of a lock held at `path`: until when its holder last said it works.
fn lease_until(path: &Path) -> Option<Millis> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().strip_prefix("lease-until ")?.parse().ok()
}

/// Writes a lease into the lock file, and keeps renewing it while the holder's process runs.
/// The lease is rewritten in place (the lock belongs to the file, not to its name), always as
/// the same number of bytes, so a reader never sees a shorter one.
struct Lease {
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    fn start(file: Arc<std::fs::File>) -> Self {
        let write = move || {
            use std::os::unix::fs::FileExt;
            let until = now_millis() + crate::core::model::millis_of(lease());
            let _ = file.write_at(format!("lease-until {until:016}\n").as_bytes(), 0);
        };
        write();
        // Outside a runtime (a test's plain call), the first lease is all there is.
        let renewer = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(lease() / 4).await;
                    write();
                }
            })
        });
        Self { renewer }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

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
/// after the cluster's row). A cluster left `terminating` while nobody holds it, or while its
/// holder's lease has expired, is one whose terminate was interrupted or is stuck: `reconcile`
/// finishes it.
pub struct TerminateLock {
    _held: LeasedLock,
}

/// A lock with its lease: taken, or taken over from a holder whose lease expired.
struct LeasedLock {
    _lease: Lease,
    /// The lock itself, when this process holds it (not when it took over an expired lease).
    _file: Option<Arc<std::fs::File>>,
}

impl LeasedLock {
    /// Takes the lock at `path`; a holder whose lease has expired does not keep this process
    /// out (`what` names the holder's work, for the warning). `None`: held, and its lease runs.
    fn take_or_take_over(path: &Path, what: &str) -> Result<Option<Self>, Error> {
        if let Some(file) = take(path)? {
            let file = Arc::new(file);
            return Ok(Some(Self {
                _lease: Lease::start(file.clone()),
                _file: Some(file),
            }));
        }
        match lease_until(path) {
            Some(until) if until < now_millis() => {
                tracing::warn!(
                    "the process holding {} stopped renewing its lease {} s ago; going ahead with {what}",
                    path.display(),
                    (now_millis() - until) / 1000
                );
                let file = Arc::new(open_lock_file(path)?);
                Ok(Some(Self {
                    _lease: Lease::start(file),
                    _file: None,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Whether a live process holds the lock at `path` and its lease runs.
    fn is_held(path: &Path) -> bool {
        held(path) && lease_until(path).is_none_or(|until| until >= now_millis())
    }
}

impl TerminateLock {
    fn path(state_dir: &Path, cluster_id: i64) -> PathBuf {
        state_dir
            .join("launches")
            .join(format!("terminate-{cluster_id}.lock"))
    }

    pub fn acquire(state_dir: &Path, cluster_id: i64) -> Result<Self, Error> {
        match LeasedLock::take_or_take_over(&Self::path(state_dir, cluster_id), "the terminate")? {
            Some(held) => Ok(Self { _held: held }),
            None => Err(Error::runtime(
                "this cluster is being terminated by another stratus process; wait for it to finish",
            )),
        }
    }

    /// Whether a live process works on terminating the cluster (holds the lock, its lease
    /// running).
    pub fn is_held(state_dir: &Path, cluster_id: i64) -> bool {
        LeasedLock::is_held(&Self::path(state_dir, cluster_id))
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
/// the same next worker indices and the same worker count against `max_workers`. Its lease
/// lets a later launch-slaves go ahead once a stuck holder stops renewing it.
pub struct GrowLock {
    _held: LeasedLock,
}

impl GrowLock {
    fn path(state_dir: &Path, cluster_id: i64) -> PathBuf {
        state_dir
            .join("launches")
            .join(format!("grow-{cluster_id}.lock"))
    }

    /// Whether a live process is adding workers to the cluster (holds the lock, its lease
    /// running).
    pub fn is_held(state_dir: &Path, cluster_id: i64) -> bool {
        LeasedLock::is_held(&Self::path(state_dir, cluster_id))
    }

    pub fn acquire(state_dir: &Path, cluster: &crate::store::ClusterRow) -> Result<Self, Error> {
        match LeasedLock::take_or_take_over(&Self::path(state_dir, cluster.id), "adding workers")? {
            Some(held) => Ok(Self { _held: held }),
            None => Err(Error::invalid(format!(
                "workers are being added to cluster {} by another stratus process; wait for it to finish",
                cluster.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder in another process: the lock file locked by a child that sleeps.
    fn hold_elsewhere(path: &Path) -> std::process::Child {
        std::process::Command::new("perl")
            .arg("-e")
            .arg("use Fcntl qw(:DEFAULT :flock); open(my $f, '+<', $ARGV[0]) or die; my $l = pack('s s l l l', F_WRLCK, 0, 0, 0, 0); fcntl($f, F_SETLK, $l) or die; print STDOUT \"locked\\n\"; STDOUT->flush; sleep 60")
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_lease_keeps_others_out_until_it_expires_then_lets_them_take_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = TerminateLock::path(dir.path(), 7);
        // Taken here: held, with a lease that runs.
        let mine = TerminateLock::acquire(dir.path(), 7).unwrap();
        let until = lease_until(&path).unwrap();
        assert!(until > now_millis() + 60_000, "{until}");
        drop(mine);

        // Held by another process whose lease runs: refused.
        let future = now_millis() + 60_000;
        std::fs::write(&path, format!("lease-until {future:016}\n")).unwrap();
        let mut other = hold_elsewhere(&path);
        {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(other.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "locked\n");
        }
        assert!(TerminateLock::is_held(dir.path(), 7));
        assert!(TerminateLock::acquire(dir.path(), 7).is_err());

        // The same holder, its lease expired (it stopped renewing): no longer held, and taken
        // over, with a fresh lease written for the one who took it.
        let past = now_millis() - 1_000;
        std::fs::write(&path, format!("lease-until {past:016}\n")).unwrap();
        assert!(!TerminateLock::is_held(dir.path(), 7));
        let taken = TerminateLock::acquire(dir.path(), 7).unwrap();
        assert!(lease_until(&path).unwrap() > now_millis());
        assert!(
            TerminateLock::is_held(dir.path(), 7),
            "the taker's lease runs"
        );
        drop(taken);
        let _ = other.kill();
        let _ = other.wait();
    }
}
