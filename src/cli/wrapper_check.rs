//! Is the file `admin install` was given the wrapper? It is about to become a setuid program of
//! the service account, so the answer must not be "it contains the placeholder marker": cargo's
//! test harnesses and the stratus CLI do too (`setuid_wrap::identity`).
//!
//! Two checks, cheapest and safest first:
//! 1. the bytes hold the wrapper's build marker, and the placeholder marker, once each. A file
//!    without them is refused unread further and never run;
//! 2. a trial run: a private copy of exactly those bytes (root's, 0755, not setuid, no file
//!    capability) runs with `--is-stratus-wrap` and must answer exactly
//!    `setuid_wrap::identity::ANSWER` within 10 s. It runs as `nobody` with no supplementary
//!    group, `no_new_privs` (nothing it execs gains privileges), an empty environment, `/` as
//!    its working directory and `/dev/null` as its input. So a file that carries the marker
//!    by accident (or by malice) can do no more than `nobody` can, for at most 10 s, and only
//!    the bytes that were checked are installed.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use setuid_wrap::identity;

use crate::core::error::Error;

/// How long the trial run may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid and gid of the trial run: `nobody`'s, else 65534.
fn nobody() -> (u32, u32) {
    match crate::sys::passwd_by_name("nobody") {
        Ok(Some(p)) => (p.uid, p.gid),
        _ => (65534, 65534),
    }
}

/// The wrapper's bytes, once `path` is known to be the wrapper. `built_by` names how to get one
/// (for the message when it is missing).
pub fn checked_wrapper(path: &Path, built_by: &str) -> Result<Vec<u8>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::invalid(format!(
                "the wrapper {} does not exist: {built_by}",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::invalid(format!(
                "cannot read the wrapper {}: {e}",
                path.display()
            )));
        }
    };
    identity::check_build(&bytes).map_err(|e| {
        Error::invalid(format!(
            "{} is not the stratus wrapper: {e}; refusing to make it setuid",
            path.display()
        ))
    })?;
    trial_run(&bytes).map_err(|e| {
        Error::invalid(format!(
            "{} is not the stratus wrapper: {e}; refusing to make it setuid",
            path.display()
        ))
    })?;
    Ok(bytes)
}

/// Runs a private copy of `bytes` with `--is-stratus-wrap`, unprivileged, and compares its
/// answer.
fn trial_run(bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let dir = tempfile::Builder::new()
        .prefix("stratus-wrap-trial.")
        .tempdir()
        .map_err(|e| format!("cannot make a directory for its trial run: {e}"))?;
    // nobody must reach the copy, and nothing else may change it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("cannot prepare its trial run: {e}"))?;
    let copy = dir.path().join("stratus-wrap");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&copy)
            .map_err(|e| format!("cannot copy it for its trial run: {e}"))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot copy it for its trial run: {e}"))?;
    }
    let (uid, gid) = nobody();
    let mut cmd = Command::new(&copy);
    cmd.arg(identity::TRIAL_ARG)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .uid(uid)
        .gid(gid);
    crate::sys::no_new_privs_in_child(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "its trial run (as uid {uid}, from {}) cannot start: {e}",
            copy.display()
        )
    })?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = (&mut stdout).take(4096).read_to_end(&mut out);
        let _ = tx.send(read.map(|_| out));
    });
    let answer = rx.recv_timeout(TRIAL_TIMEOUT);
    if answer.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("its trial run could not be waited for: {e}"))?;
    let out = match answer {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("its trial run's answer could not be read: {e}")),
        Err(_) => {
            return Err(format!(
                "its trial run did not answer {} within {} s",
                identity::TRIAL_ARG,
                TRIAL_TIMEOUT.as_secs()
            ));
        }
    };
    let want = format!("{}\n", identity::ANSWER);
    if status.success() && out == want.as_bytes() {
        return Ok(());
    }
    Err(format!(
        "its trial run answered {:?} ({status}), not {:?}",
        crate::core::text::shortened(&String::from_utf8_lossy(&out), 120),
        identity::ANSWER
    ))
}
