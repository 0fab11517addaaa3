//! The wrapper's start: the fixed sequence of steps between the setuid exec and the runner.
//!
//! Each step closes one way in which the caller's process state could reach the runner, which
//! runs with the service account's rights: descriptors, identity, the caller's cgroups (through
//! which it could freeze or kill the runner), groups, inherited descriptors, resource limits,
//! signal state, umask and working directory, the trust of the files it runs and reads, the
//! environment, and the arguments. The order matters: fds 0-2 are made valid before any file is
//! opened (so nothing lands on them by accident), nothing is trusted before the identity check,
//! and the cgroups are checked with the caller's own groups, before they are dropped. The one
//! argument the wrapper reads, `--is-stratus-wrap` (the installer's trial run), only prints a
//! fixed line. Any failure stops the wrapper with one line,
//! `stratus-wrap: <reason>`, and exit code 1 (2 is the runner's, for refusals by policy).
//! See the crate's README for why each step is there.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::cgroup;
use crate::env::child_env;
use crate::identity;
use crate::limits::{self, Resource};
use crate::placeholder::{self, WrapConfig};
use crate::safepath::{self, RealFs, Trusted, Want};
use crate::sys;

/// The exit code of every refusal by the wrapper.
pub const EXIT_REFUSED: u8 = 1;

/// The message when `setgroups` is not permitted.
pub const LACKS_CAP_SETGID: &str = "cannot drop the caller's supplementary groups: the wrapper \
     lacks cap_setgid (reinstall with stratus admin install)";

/// Runs the wrapper with the bytes of its configuration area (those after the marker). Returns
/// only on failure, after printing the reason.
pub fn run(area: &[u8]) -> ExitCode {
    let Err(reason) = start(area);
    fail(&reason)
}

fn fail(reason: &str) -> ExitCode {
    // A write error has nowhere to go; fd 2 is valid (step 1), if perhaps /dev/null.
    let _ = writeln!(io::stderr(), "stratus-wrap: {reason}");
    ExitCode::from(EXIT_REFUSED)
}

fn start(area: &[u8]) -> Result<Infallible, String> {
    // 1. fds 0-2 open, before anything else can open a file onto them.
    standard_fds()?;
    // The installer's trial run (`stratus-wrap --is-stratus-wrap`, not setuid, as nobody):
    // a fixed line, before anything is read or checked.
    if trial_run() {
        let mut out = io::stdout().lock();
        return match writeln!(out, "{}", identity::ANSWER).and_then(|_| out.flush()) {
            Ok(()) => std::process::exit(0),
            Err(e) => Err(format!("cannot answer {}: {e}", identity::TRIAL_ARG)),
        };
    }
    // A panic must fail closed like any refusal, and must not read RUST_BACKTRACE from the
    // caller's environment to decide what to print.
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(io::stderr(), "stratus-wrap: internal error: {info}");
        std::process::exit(EXIT_REFUSED.into());
    }));

    // 2. The install-time configuration.
    let area = sys::read_volatile_bytes(area);
    let cfg = placeholder::decode(&area)
        .map_err(|e| format!("the install configuration is damaged ({e}): reinstall"))?
        .ok_or("not installed: run `stratus admin install`")?;

    // 3. Who we are, and whether the caller can freeze or kill us through a cgroup (checked
    // with the caller's real ids and groups, so before the groups change).
    identity(&cfg)?;
    let (real_uid, _, _) = sys::getresuid();
    cgroup::check(&cgroup::RealCgroupFs, real_uid)?;
    // 4. Groups, then no capability left.
    groups_and_capabilities(&cfg)?;
    // 5. No inherited descriptor beyond 0-2 reaches the runner.
    sys::cloexec_from(3)
        .map_err(|e| format!("cannot mark inherited descriptors close-on-exec: {e}"))?;
    // 6. Resource limits.
    resource_limits()?;
    // 7. Signals.
    sys::reset_signal_dispositions().map_err(|e| format!("cannot reset signal handlers: {e}"))?;
    sys::clear_signal_mask().map_err(|e| format!("cannot clear the signal mask: {e}"))?;
    // 8. umask and working directory.
    sys::set_umask(0o077);
    std::env::set_current_dir(&cfg.service_home).map_err(|e| {
        format!(
            "cannot enter the service home {}: {e} (an install problem: run `stratus admin install`)",
            cfg.service_home.display()
        )
    })?;
    // 9. The files we run and trust.
    safe_paths(&cfg)?;
    // 10. A fresh environment.
    let caller_env: Vec<_> = std::env::vars_os().collect();
    let env = child_env(&caller_env, &cfg);
    // 11. A fixed argv; the wrapper's own arguments are not passed on.
    let argv: [&OsStr; 4] = [
        cfg.runner.as_os_str(),
        OsStr::new("runner"),
        OsStr::new("--config"),
        cfg.config.as_os_str(),
    ];
    let envp: Vec<(&OsStr, &OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
        .collect();
    let err = sys::execve(&cfg.runner, &argv, &envp);
    Err(format!(
        "cannot execute the runner {}: {err}",
        cfg.runner.display()
    ))
}

/// Whether this is the installer's trial run: exactly one argument, [`identity::TRIAL_ARG`].
/// Every other argument is ignored.
fn trial_run() -> bool {
    let mut args = std::env::args_os().skip(1);
    matches!(
        (args.next(), args.next()),
        (Some(a), None) if a == identity::TRIAL_ARG
    )
}

fn standard_fds() -> Result<(), String> {
    for fd in 0..=2 {
        if !sys::fd_is_open(fd) {
            sys::open_dev_null_onto(fd)
                .map_err(|e| format!("cannot open /dev/null as fd {fd}: {e}"))?;
        }
    }
    Ok(())
}

fn identity(cfg: &WrapConfig) -> Result<(), String> {
    let (_, euid, _) = sys::getresuid();
    let user = &cfg.service_user;
    if euid == 0 {
        return Err(format!(
            "installed setuid root; it must be setuid to the service account {user}"
        ));
    }
    let no_new_privs = sys::no_new_privs().map_err(|e| format!("cannot read no_new_privs: {e}"))?;
    if no_new_privs {
        return Err(format!(
            "no_new_privs is set (setpriv --no-new-privs, a container or a service with \
             NoNewPrivileges), so the kernel ignores the wrapper's setuid bit and capability: \
             it cannot run as the service user {user}"
        ));
    }
    if euid != cfg.service_uid {
        return Err(format!(
            "not running as the service user {user} (uid {}) but as uid {euid}: the setuid \
             bit is missing or no_new_privs is set (reinstall with stratus admin install)",
            cfg.service_uid
        ));
    }
    Ok(())
}

fn groups_and_capabilities(cfg: &WrapConfig) -> Result<(), String> {
    let lacks_cap = |what: &str, e: io::Error| {
        if e.raw_os_error() == Some(libc::EPERM) {
            LACKS_CAP_SETGID.to_string()
        } else {
            format!("cannot {what}: {e}")
        }
    };
    sys::clear_groups().map_err(|e| lacks_cap("drop the caller's supplementary groups", e))?;
    sys::set_all_gids(cfg.service_gid)
        .map_err(|e| lacks_cap("switch to the service account's group", e))?;
    sys::drop_all_capabilities().map_err(|e| format!("cannot drop capabilities: {e}"))?;

    // Verify rather than trust the calls.
    let gid = cfg.service_gid;
    let gids = sys::getresgid();
    let groups = sys::getgroups().map_err(|e| format!("cannot read the groups: {e}"))?;
    if gids != (gid, gid, gid) || !groups.is_empty() {
        return Err(format!(
            "the groups did not change: gids {gids:?}, supplementary {groups:?}"
        ));
    }
    let caps = sys::capabilities().map_err(|e| format!("cannot read capabilities: {e}"))?;
    let ambient = sys::any_ambient(63).map_err(|e| format!("cannot read capabilities: {e}"))?;
    if caps != (0, 0, 0) || ambient {
        return Err(format!(
            "capabilities remain after dropping them (effective, permitted, inheritable: \
             {caps:x?}, ambient: {ambient})"
        ));
    }
    Ok(())
}

fn resource_limits() -> Result<(), String> {
    for rule in limits::RULES {
        let name = rule.resource.name();
        let (soft, hard) =
            sys::get_limit(rule.resource).map_err(|e| format!("cannot read {name}: {e}"))?;
        if let Some(new_soft) = limits::decide(rule, soft, hard)? {
            sys::set_limit(rule.resource, new_soft, hard)
                .map_err(|e| format!("cannot raise {name} to {new_soft}: {e}"))?;
        }
    }
    // Memory will hold secrets: no core dumps, and no raising it back.
    sys::set_limit(Resource::Core, 0, 0).map_err(|e| format!("cannot set RLIMIT_CORE to 0: {e}"))
}

fn safe_paths(cfg: &WrapConfig) -> Result<(), String> {
    let owner = Trusted {
        uid: cfg.service_uid,
        user: &cfg.service_user,
    };
    safepath::check(&RealFs, "the runner", &cfg.runner, Want::File, owner)?;
    safepath::check(&RealFs, "the wrapper", &cfg.wrapper, Want::File, owner)?;
    let config_dir = cfg.config.parent().unwrap_or(Path::new("/"));
    safepath::check(
        &RealFs,
        "the configuration directory",
        config_dir,
        Want::Dir,
        owner,
    )?;
    // The file itself, when it is there (a missing file is the runner's to report).
    if std::fs::symlink_metadata(&cfg.config).is_ok() {
        safepath::check(
            &RealFs,
            "the configuration file",
            &cfg.config,
            Want::File,
            owner,
        )?;
    }
    Ok(())
}
