//! Thin wrappers over the Unix calls stratus needs and `std` does not offer: user lookup by uid,
//! POSIX record locks that report their holder, pseudo-terminals, and signals to process groups.
//!
//! Every `unsafe` block of the library lives here, each with a `// SAFETY:` comment; the other
//! modules are written against these safe functions.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The real uid of this process (never the effective one: the privileged path relies on this).
pub fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A user's entry in the password database.
#[derive(Debug, Clone)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

/// Looks `uid` up in the password database; `None` if it has no entry.
pub fn passwd(uid: u32) -> io::Result<Option<Passwd>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `pwd` is plain old data that getpwuid_r fills; `buf` outlives the call and its
        // length is passed; `result` is written by the call.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(passwd_entry(&pwd)));
    }
}

/// Looks a user up by name in the password database; `None` if there is no such user.
pub fn passwd_by_name(name: &str) -> io::Result<Option<Passwd>> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: as in `passwd`, with a NUL-terminated name that outlives the call.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(passwd_entry(&pwd)));
    }
}

fn passwd_entry(pwd: &libc::passwd) -> Passwd {
    // SAFETY: the caller got `pwd` from a successful getpw*_r call whose buffer is still alive,
    // so pw_name and pw_dir point to NUL-terminated strings in it.
    let (name, home) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    Passwd {
        name: name.to_string_lossy().into_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: home.to_string_lossy().into_owned().into(),
    }
}

/// The names of a user's groups, primary first, from the group database (none if the user is
/// not known here).
pub fn groups_of_user(name: &str) -> Vec<String> {
    passwd_by_name(name)
        .ok()
        .flatten()
        .and_then(|p| group_names(&p.name, p.gid).ok())
        .unwrap_or_default()
}

/// The names of every group `user` belongs to in the group database, its primary group `gid`
/// first.
pub fn group_names(user: &str, gid: u32) -> io::Result<Vec<String>> {
    let c = std::ffi::CString::new(user)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut n: libc::c_int = 32;
    let gids = loop {
        let mut gids: Vec<libc::gid_t> = vec![0; n as usize];
        let mut count = n;
        // SAFETY: `gids` has room for `count` entries, and getgrouplist writes at most that many
        // (it sets `count` to the number needed when there is not enough room).
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, gids.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            gids.truncate(count.max(0) as usize);
            break gids;
        }
        if count <= n || n > 65_536 {
            return Err(io::Error::other("getgrouplist failed"));
        }
        n = count;
    };
    let mut names = Vec::new();
    for g in std::iter::once(gid).chain(gids) {
        if let Some(name) = group_name(g)?
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// A group's name by gid; `None` if the group database has no such group.
pub fn group_name(gid: u32) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `grp` is plain old data that getgrgid_r fills; `buf` outlives the call and its
        // length is passed; `result` is written by the call.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrgid_r(
                gid,
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success gr_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(grp.gr_name) };
        return Ok(Some(name.to_string_lossy().into_owned()));
    }
}

fn flock_struct(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value that we then fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

/// Takes a POSIX write lock on the whole of `file` without waiting. Returns `false` if another
/// process holds it. The lock lasts until this process closes *any* descriptor of the file, so
/// the holder must keep exactly one open.
pub fn try_lock_file(file: &File) -> io::Result<bool> {
    let fl = flock_struct(libc::F_WRLCK as libc::c_short);
    // SAFETY: the descriptor is valid for the life of `file`; `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(err),
    }
}

/// Takes a POSIX write lock on the whole of `file`, waiting while another process holds it.
pub fn lock_file_wait(file: &File) -> io::Result<()> {
    let fl = flock_struct(libc::F_WRLCK as libc::c_short);
    loop {
        // SAFETY: the descriptor is valid for the life of `file`; `fl` is a valid flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &fl) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Who holds a POSIX lock on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHolder {
    /// Nobody: whoever took it is gone.
    Free,
    /// A process of this pid holds it.
    Pid(u32),
    /// Someone holds it, but F_GETLK did not say who: it reports 0 or -1 for holders in
    /// another pid namespace, or for open-file-description locks. Never a pid to signal.
    Unknown,
}

impl LockHolder {
    pub fn is_held(self) -> bool {
        self != LockHolder::Free
    }

    /// The holder's pid, when it is one that can be signalled.
    pub fn pid(self) -> Option<u32> {
        match self {
            LockHolder::Pid(p) => Some(p),
            _ => None,
        }
    }
}

/// Who holds a POSIX lock on `file`. Unlike a pid file, this cannot name a recycled pid: the
/// lock dies with its holder.
pub fn lock_holder(file: &File) -> io::Result<LockHolder> {
    let mut fl = flock_struct(libc::F_WRLCK as libc::c_short);
    // SAFETY: the descriptor is valid for the life of `file`; `fl` is a valid flock that
    // F_GETLK overwrites.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(LockHolder::Free);
    }
    Ok(match signallable_pid(i64::from(fl.l_pid)) {
        Some(pid) => LockHolder::Pid(pid),
        None => LockHolder::Unknown,
    })
}

/// A pid that names one process other than init: `kill` with 0 would signal our own group,
/// -1 every process we may signal, other negatives a group, and 1 is init.
fn signallable_pid(pid: i64) -> Option<u32> {
    (pid > 1 && pid <= i64::from(libc::pid_t::MAX)).then_some(pid as u32)
}

/// Sends `signal` to one process. A process that no longer exists is not an error; a pid that
/// does not name one process (0, 1, anything that would be negative as a `pid_t`) is refused.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let Some(pid) = signallable_pid(i64::from(pid)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}: it does not name one process"),
        ));
    };
    // SAFETY: kill has no memory-safety preconditions; pid is > 1 and fits in pid_t.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    absent_is_ok(rc)
}

/// Sends `signal` to a whole process group. A group with no members left is not an error.
pub fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    if signallable_pid(i64::from(pgid)).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: killpg has no memory-safety preconditions.
    let rc = unsafe { libc::killpg(pgid as libc::pid_t, signal) };
    absent_is_ok(rc)
}

/// The result of kill(2)/killpg(2): no such process (or group) left is success.
fn absent_is_ok(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// To be called between fork and exec: start a new session, so the child is no longer in the
/// caller's process group, does not get its terminal's signals, and leads a group of its own.
pub fn setsid_in_child() -> io::Result<()> {
    // SAFETY: setsid is async-signal-safe and has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// To be called between fork and exec: duplicate `from` onto descriptor `to`, which dup2 leaves
/// without close-on-exec, so the program about to run inherits it.
pub fn dup2_in_child(from: RawFd, to: RawFd) -> io::Result<()> {
    if from == to {
        // dup2 would do nothing, and the close-on-exec flag would stay: clear it instead.
        // SAFETY: fcntl on a descriptor the caller owns; async-signal-safe.
        let flags = unsafe { libc::fcntl(from, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 is async-signal-safe; both descriptors are plain integers here.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new pseudo-terminal pair (controller, terminal) of the given size.
pub fn openpty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut controller: libc::c_int = -1;
    let mut terminal: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the provided ints; name and termios may be
    // null; the winsize pointer is valid for the call.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are fresh descriptors that we now own.
    let (c, t) = unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    };
    set_cloexec(c.as_raw_fd())?;
    set_cloexec(t.as_raw_fd())?;
    Ok((c, t))
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts a descriptor in non-blocking mode (for use with tokio's `AsyncFd`).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Changes the window size of a terminal, which sends SIGWINCH to its foreground group.
pub fn set_window_size(fd: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// To be called between fork and exec, after `setsid_in_child`: make the terminal on stdin the
/// controlling terminal of the new session, so job control and ^C work in a login shell.
pub fn set_controlling_terminal_in_child() -> io::Result<()> {
    // SAFETY: TIOCSCTTY on descriptor 0 with argument 0; async-signal-safe.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `read(2)` on a raw descriptor (used on a non-blocking pty controller).
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` on a raw descriptor (used on a non-blocking pty controller).
pub fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether `path` lives on a network file system (NFS, SMB/CIFS), where SQLite's locking cannot
/// be trusted. Always `false` where this cannot be told.
#[cfg(target_os = "linux")]
pub fn on_network_fs(path: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517B;
    const CIFS: i64 = 0xFF53_4D42;
    const SMB2: i64 = 0xFE53_4D42;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs fills a plain-old-data struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    Ok(matches!(kind, NFS | SMB | CIFS | SMB2))
}

#[cfg(not(target_os = "linux"))]
pub fn on_network_fs(_path: &std::path::Path) -> io::Result<bool> {
    Ok(false)
}

/// Duplicates `fd` to the lowest free descriptor >= `min`, close-on-exec. Used to move
/// descriptors out of the way before a child's `dup2` onto fixed numbers.
pub fn dup_cloexec_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller owns returns a new descriptor.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Takes ownership of a descriptor this process inherited at a fixed number (the local node's
/// listening socket and readiness pipe), marking it close-on-exec so no grandchild inherits it.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only checks that the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_cloexec(fd)?;
    // SAFETY: the descriptor is open, was handed to this process by its parent for this
    // purpose, and is taken exactly once (callers pass distinct fixed numbers).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `cmd` start a detached process: a new session (so it outlives the caller's terminal and
/// leads its own process group), with each `(from, to)` descriptor pair duplicated onto `to`.
/// The `from` descriptors must be >= 10 (see `dup_cloexec_above`) so no `dup2` clobbers another.
pub fn detach_with_fds(cmd: &mut std::process::Command, fds: Vec<(RawFd, RawFd)>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls async-signal-safe functions (setsid, fcntl, dup2) and
    // does not allocate: `fds` was built before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            setsid_in_child()?;
            for (from, to) in &fds {
                dup2_in_child(*from, *to)?;
            }
            Ok(())
        });
    }
}

/// Makes `cmd` start with `no_new_privs` set, so that nothing it execs gains privileges from a
/// setuid bit or file capabilities (the installer's trial run of a wrapper it was handed).
pub fn no_new_privs_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure makes one async-signal-safe system call (prctl) and does not
    // allocate.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd` start in a new session with its stdin terminal as the controlling terminal: what
/// a login shell on a pseudo-terminal needs for job control and ^C.
pub fn session_on_terminal(cmd: &mut tokio::process::Command) {
    // SAFETY: see `new_session_on_stdin_terminal`.
    unsafe {
        cmd.pre_exec(new_session_on_stdin_terminal);
    }
}

/// `session_on_terminal` for a `std` command (tests drive `stratus login` this way).
pub fn session_on_terminal_std(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: see `new_session_on_stdin_terminal`.
    unsafe {
        cmd.pre_exec(new_session_on_stdin_terminal);
    }
}

/// Runs between fork and exec. Only async-signal-safe calls (setsid, ioctl, signal), no
/// allocation, so it is sound as a `pre_exec` hook. A session on a terminal gets the terminal's
/// signals at their default, as a login does: a parent started as a background job (`cmd &` in
/// a shell without job control ignores SIGINT and SIGQUIT) must not leave ^C and ^\ without
/// effect in the session.
fn new_session_on_stdin_terminal() -> io::Result<()> {
    setsid_in_child()?;
    set_controlling_terminal_in_child()?;
    for sig in [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGHUP,
    ] {
        // SAFETY: SIG_DFL is a valid disposition for each of these signals; signal(2) is
        // async-signal-safe.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Registers an owned descriptor (a pty controller) with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd from here on, so it
    // stays open and refers to the same file description until the AsyncFd is dropped, and
    // `as_raw_fd` always returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd).map_err(|e| e.into_parts().1) }
}

/// Removes every environment variable but those named in `keep` and those starting with
/// `keep_prefix`. Must be called before any other thread exists (the runner's first step):
/// changing the environment is not thread-safe.
pub fn keep_only_environment(keep: &[&str], keep_prefix: &str) {
    let drop: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            !keep.contains(&k.as_ref()) && !k.starts_with(keep_prefix)
        })
        .collect();
    for k in drop {
        // SAFETY: called while the process is single-threaded (see above), so no other thread
        // reads the environment meanwhile.
        unsafe { std::env::remove_var(k) };
    }
}

/// No core dumps (RLIMIT_CORE 0, soft and hard), and not dumpable: the memory of a runner
/// holds the service account's credentials and cluster keys.
pub fn no_core_dumps() -> io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit; prctl with PR_SET_DUMPABLE takes plain integers.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores the signals a terminal sends to every process of its foreground process group,
/// whatever their uids: ^C (SIGINT), ^\\ (SIGQUIT), ^Z (SIGTSTP), a hangup (SIGHUP), and a
/// background job's reads and writes (SIGTTIN, SIGTTOU). A runner is in its caller's job, so
/// `setresuid` alone leaves the caller's terminal able to stop or end it at any point. A handler
/// installed later (a launch's, which rolls back on SIGINT and SIGHUP) takes over from this.
/// Must be called before any other thread exists.
pub fn ignore_terminal_signals() -> io::Result<()> {
    for sig in [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTSTP,
        libc::SIGHUP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        // SAFETY: SIG_IGN is a valid disposition for each of these signals, and no handler of
        // this process is replaced (the process is single-threaded and has installed none).
        if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the effective uid and gid the real and saved ones too (`setresuid`), when they differ:
/// a runner exec'd by the setuid wrapper becomes the service account through and through, so
/// the caller (its real uid until now) can no longer signal, stop or trace it. Nothing changes
/// in a process that is not setuid.
pub fn become_effective_user() -> io::Result<()> {
    // SAFETY: getters without preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // SAFETY: setresgid/setresuid to ids the process already holds (its effective ones) is
    // permitted without privilege; their results are checked.
    if unsafe { libc::setresgid(egid, egid, egid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::setresuid(euid, euid, euid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Changing ids makes the process dumpable again on some kernels' settings: not this one.
    // SAFETY: plain integers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getters without preconditions.
    let (r, e) = unsafe { (libc::getuid(), libc::geteuid()) };
    if r != euid || e != euid {
        return Err(io::Error::other("the uid did not change"));
    }
    Ok(())
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// One line to syslog (facility authpriv, as sudo logs), tagged `stratus`. The caller escapes
/// what it passes; a NUL would end the line early, so the line is cut there.
pub fn syslog(line: &str) {
    static IDENT: &std::ffi::CStr = c"stratus";
    let text = line.split('\0').next().unwrap_or("");
    let Ok(c) = std::ffi::CString::new(text) else {
        return;
    };
    // SAFETY: openlog keeps the pointer to IDENT, which is static; syslog gets a constant "%s"
    // format and a NUL-terminated string, so nothing in the text is read as a format.
    unsafe {
        libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
        libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), c.as_ptr());
    }
}

/// The listening socket a supervisor passed (systemd's socket activation: descriptor 3, with
/// `LISTEN_PID` naming this process), checked to be a listening Unix stream socket. Taken at
/// most once.
pub fn activated_listener(
    listen_pid: u32,
    listen_fds: u32,
) -> io::Result<Option<std::os::unix::net::UnixListener>> {
    const FIRST: RawFd = 3;
    if listen_fds == 0 || listen_pid != std::process::id() {
        return Ok(None);
    }
    // SAFETY: fstat fills a plain-old-data struct for a descriptor number; a descriptor that is
    // not open makes it fail with EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(FIRST, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other("descriptor 3 is not a socket"));
    }
    let (mut accepting, mut len): (libc::c_int, libc::socklen_t) =
        (0, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, an int.
    let r = unsafe {
        libc::getsockopt(
            FIRST,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || accepting == 0 {
        return Err(io::Error::other("descriptor 3 is not a listening socket"));
    }
    // SAFETY: descriptor 3 is open, a listening socket, and handed to this process alone by its
    // supervisor: nothing else in this process owns it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(FIRST) };
    // A Unix socket, not a TCP one.
    listener.local_addr()?;
    set_cloexec(FIRST)?;
    Ok(Some(listener))
}

/// The uid of the process at the other end of a Unix socket, as the kernel recorded it when the
/// connection was made (`SO_PEERCRED`).
pub fn peer_uid(stream: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain old data; all-zero is a valid value that getsockopt overwrites.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred, for a descriptor the
    // stream owns.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_that_do_not_name_one_process_are_never_signalled() {
        for pid in [0u32, 1, u32::MAX, (i32::MAX as u32) + 1] {
            let err = kill(pid, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{pid}");
            assert!(kill_group(pid, 0).is_err(), "{pid}");
        }
        // Our own pid is fine, and signal 0 only checks.
        kill(std::process::id(), 0).unwrap();
    }

    #[test]
    fn a_lock_held_here_is_seen_from_a_second_descriptor_as_free() {
        // POSIX locks belong to the process: another descriptor of ours sees no conflict.
        let dir = std::env::temp_dir().join(format!("stratus-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        assert!(try_lock_file(&f).unwrap());
        let g = File::open(&path).unwrap();
        assert_eq!(lock_holder(&g).unwrap(), LockHolder::Free);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
