//! Every system call the wrapper makes through libc, and so all of its `unsafe` code.
//!
//! Each function is a thin, safe wrapper that turns a C return value into `io::Result`; the
//! decisions live in the pure modules and in `start`. Keeping the `unsafe` blocks here, each
//! with its `// SAFETY:` argument, lets every other module `#![forbid(unsafe_code)]`.
//! Linux only: `close_range`, `prctl`, `capget`/`capset` and `/proc/self/fd` are Linux APIs.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libc::{c_char, c_int};

use crate::limits::{INFINITY, Resource};

fn check(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains NUL"))
}

/// Reads `src` one byte at a time with volatile loads, so the compiler cannot assume the
/// contents of a `static` it initialised (the installer patches them in the file).
pub fn read_volatile_bytes(src: &[u8]) -> Vec<u8> {
    src.iter()
        // SAFETY: `b` is a reference to an initialised `u8`, so the pointer is valid, aligned
        // and readable for one byte.
        .map(|b| unsafe { std::ptr::read_volatile(b as *const u8) })
        .collect()
}

/// Whether `fd` is an open file descriptor (`fcntl(F_GETFD)` does not fail with `EBADF`).
pub fn fd_is_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument and only reads the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Opens `/dev/null` onto `fd` (read-only for 0, write-only otherwise), without close-on-exec.
pub fn open_dev_null_onto(fd: c_int) -> io::Result<()> {
    let flags = if fd == 0 {
        libc::O_RDONLY
    } else {
        libc::O_WRONLY
    } | libc::O_NOCTTY;
    // SAFETY: the path is a NUL-terminated literal; open does not keep the pointer.
    let got = check(unsafe { libc::open(c"/dev/null".as_ptr(), flags) })?;
    if got != fd {
        // SAFETY: dup2 and close take plain descriptor numbers; `got` is ours to close.
        let dup = unsafe { libc::dup2(got, fd) };
        // SAFETY: as above.
        unsafe { libc::close(got) };
        check(dup)?;
    }
    Ok(())
}

/// `getresuid`: (real, effective, saved).
pub fn getresuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are valid for writes of a uid_t each. getresuid cannot fail
    // with valid pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// `getresgid`: (real, effective, saved).
pub fn getresgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: as in getresuid.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// The supplementary groups of this process.
pub fn getgroups() -> io::Result<Vec<u32>> {
    // SAFETY: with a size of 0 getgroups only returns the count and does not touch the buffer.
    let n = check(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut groups = vec![0; n as usize];
    // SAFETY: `groups` has room for `n` gid_t values.
    let n = check(unsafe { libc::getgroups(n, groups.as_mut_ptr()) })?;
    groups.truncate(n as usize);
    Ok(groups)
}

/// Whether `no_new_privs` is set (`prctl(PR_GET_NO_NEW_PRIVS)`).
pub fn no_new_privs() -> io::Result<bool> {
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers; the unused arguments must be 0.
    let ret = check(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) })?;
    Ok(ret == 1)
}

/// `setgroups(0, NULL)`: no supplementary groups. Needs `CAP_SETGID`.
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a count of 0 with a null list is the documented way to clear the groups.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// `setresgid(gid, gid, gid)`.
pub fn set_all_gids(gid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the ambient set, then the effective, permitted and inheritable sets (`capset` with
/// all-zero v3 data). The bounding set is left alone: with empty permitted and inheritable
/// sets and no file capabilities on the runner, nothing can be regained.
pub fn drop_all_capabilities() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers; the unused arguments must be 0.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and an array of two data structs, both valid and
    // #[repr(C)] with the kernel's layout; the kernel only reads `data`.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(ret as c_int).map(drop)
}

/// The capability sets of this process as (effective, permitted, inheritable), 64 bits each.
pub fn capabilities() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 writes two data structs into `data`, which has room for exactly two.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(ret as c_int)?;
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

/// Whether any capability is in the ambient set (checked one by one up to `last_cap`).
pub fn any_ambient(last_cap: u32) -> io::Result<bool> {
    for cap in 0..=last_cap {
        // SAFETY: PR_CAP_AMBIENT_IS_SET takes a capability number; the rest must be 0.
        let ret = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        match check(ret) {
            Ok(1) => return Ok(true),
            Ok(_) => {}
            // A capability this kernel does not know.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Marks every descriptor from `low` up close-on-exec: `close_range(low, ~0,
/// CLOSE_RANGE_CLOEXEC)`, or, on kernels without it (before 5.11), each entry of
/// `/proc/self/fd`.
pub fn cloexec_from(low: c_int) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; with CLOSE_RANGE_CLOEXEC it closes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            low as libc::c_uint,
            u32::MAX as libc::c_uint,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) => cloexec_from_proc(low),
        _ => Err(err),
    }
}

/// The fallback of [`cloexec_from`]: lists `/proc/self/fd` first (the listing's own
/// descriptor is closed when the listing ends), then sets `FD_CLOEXEC` on each.
pub fn cloexec_from_proc(low: c_int) -> io::Result<()> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        let fd: c_int = name
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("odd /proc/self/fd entry {name:?}")))?;
        if fd >= low {
            fds.push(fd);
        }
    }
    for fd in fds {
        set_cloexec(fd)?;
    }
    Ok(())
}

fn set_cloexec(fd: c_int) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD take and return plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        let err = io::Error::last_os_error();
        // The listing's own descriptor, closed since.
        return if err.raw_os_error() == Some(libc::EBADF) {
            Ok(())
        } else {
            Err(err)
        };
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) }).map(drop)
}

/// Whether `fd` is marked close-on-exec.
pub fn is_cloexec(fd: c_int) -> io::Result<bool> {
    // SAFETY: F_GETFD takes no argument.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

fn resource(r: Resource) -> libc::__rlimit_resource_t {
    match r {
        Resource::Fsize => libc::RLIMIT_FSIZE,
        Resource::Nofile => libc::RLIMIT_NOFILE,
        Resource::As => libc::RLIMIT_AS,
        Resource::Data => libc::RLIMIT_DATA,
        Resource::Stack => libc::RLIMIT_STACK,
        Resource::Cpu => libc::RLIMIT_CPU,
        Resource::Nproc => libc::RLIMIT_NPROC,
        Resource::Core => libc::RLIMIT_CORE,
    }
}

fn to_u64(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        INFINITY
    } else {
        v
    }
}

fn from_u64(v: u64) -> libc::rlim_t {
    if v == INFINITY {
        libc::RLIM_INFINITY
    } else {
        v
    }
}

/// `getrlimit`: (soft, hard), with [`INFINITY`] for unlimited.
pub fn get_limit(r: Resource) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write.
    check(unsafe { libc::getrlimit(resource(r), &mut lim) })?;
    Ok((to_u64(lim.rlim_cur), to_u64(lim.rlim_max)))
}

/// `setrlimit`.
pub fn set_limit(r: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: from_u64(soft),
        rlim_max: from_u64(hard),
    };
    // SAFETY: `lim` is a valid rlimit to read.
    check(unsafe { libc::setrlimit(resource(r), &lim) }).map(drop)
}

/// Sets every signal's disposition to `SIG_DFL`, 1 to `SIGRTMAX` but `SIGKILL` and `SIGSTOP`
/// (which cannot be changed). glibc refuses its own reserved real-time signals (32 and 33) with
/// `EINVAL`, yet a caller can leave them ignored, and an ignored signal survives exec: those go
/// through the raw `rt_sigaction` system call.
pub fn reset_signal_dispositions() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (handler SIG_DFL = 0, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `action.sa_mask` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `action` is a valid sigaction; the old action is not asked for.
        let ret = unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) };
        match check(ret) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => raw_default(sig)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `rt_sigaction(sig, SIG_DFL)` without libc's wrapper. The kernel's `struct sigaction` for
/// `SIG_DFL` with no flags and an empty mask is all zeros on every architecture; 64 zero bytes
/// cover its size everywhere. The kernel's sigset is `_NSIG / 8` bytes, `_NSIG` being
/// `SIGRTMAX + 1`. `EINVAL` (a signal the kernel refuses) is not an error.
fn raw_default(sig: c_int) -> io::Result<()> {
    let zeros = [0u64; 8];
    let sigset_size = (libc::SIGRTMAX() as usize + 1) / 8;
    // SAFETY: `zeros` is readable for 64 bytes, more than the kernel's struct sigaction; the
    // old action is not asked for (null).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            zeros.as_ptr(),
            std::ptr::null_mut::<u8>(),
            sigset_size,
        )
    };
    match check(ret as c_int) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(e),
        _ => Ok(()),
    }
}

/// Whether signal `sig` is ignored.
pub fn signal_ignored(sig: c_int) -> io::Result<bool> {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is valid to write.
    check(unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) })?;
    Ok(old.sa_sigaction == libc::SIG_IGN)
}

/// Empties the signal mask (`sigprocmask(SIG_SETMASK, {})`).
pub fn clear_signal_mask() -> io::Result<()> {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset then initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; the old mask is not asked for.
    check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) }).map(drop)
}

/// Sets the file mode creation mask.
pub fn set_umask(mask: u32) {
    // SAFETY: umask takes an integer and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// `execve(path, argv, envp)`; returns only on failure, with the reason.
pub fn execve(path: &Path, argv: &[&OsStr], envp: &[(&OsStr, &OsStr)]) -> io::Error {
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = cstring(path.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = envp
            .iter()
            .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok((path, argv, envp))
    };
    let (path, argv, envp) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    let pointers = |v: &[CString]| -> Vec<*const c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, envp_p) = (pointers(&argv), pointers(&envp));
    // SAFETY: `path` is NUL-terminated; `argv_p` and `envp_p` are null-terminated arrays of
    // pointers to NUL-terminated strings, all alive until execve returns (it returns only on
    // failure).
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    io::Error::last_os_error()
}

/// Whether the real uid, real gid and supplementary groups may write `path`: `access(2)`,
/// which checks with the real ids rather than the effective ones (a setuid process asking on
/// its caller's behalf). A read-only file system or a refused check is `false`; a path that
/// does not exist is an error.
pub fn real_ids_can_write(path: &Path) -> io::Result<bool> {
    let path = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is NUL-terminated; access does not keep the pointer.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) => Ok(false),
        _ => Err(err),
    }
}

/// `setxattr(path, name, value, 0)`: for the installer (the `security.capability` attribute,
/// see [`crate::caps`]) and the tests.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let path = cstring(path.as_os_str().as_bytes())?;
    let name = cstring(name.as_bytes())?;
    // SAFETY: `path` and `name` are NUL-terminated; `value` is valid for `value.len()` bytes,
    // which setxattr only reads.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret).map(drop)
}

/// `getxattr(path, name)`, `Ok(None)` when the attribute is not set.
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let path = cstring(path.as_os_str().as_bytes())?;
    let name = cstring(name.as_bytes())?;
    let mut buf = vec![0u8; 256];
    // SAFETY: `path` and `name` are NUL-terminated; `buf` is writable for its length.
    let ret = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if ret == -1 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    buf.truncate(ret as usize);
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A descriptor without close-on-exec (std opens everything with it).
    fn leaky_fd() -> std::fs::File {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: `fd` is open and owned by `f`; F_SETFD with 0 clears FD_CLOEXEC.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        assert!(!is_cloexec(fd).unwrap());
        f
    }

    #[test]
    fn close_range_marks_leaked_descriptors() {
        let f = leaky_fd();
        cloexec_from(3).unwrap();
        assert!(is_cloexec(f.as_raw_fd()).unwrap());
    }

    #[test]
    fn the_proc_fallback_marks_leaked_descriptors() {
        let f = leaky_fd();
        cloexec_from_proc(f.as_raw_fd()).unwrap();
        assert!(is_cloexec(f.as_raw_fd()).unwrap());
    }

    #[test]
    fn volatile_reads_copy_the_bytes() {
        static BYTES: [u8; 4] = [1, 2, 3, 4];
        assert_eq!(read_volatile_bytes(&BYTES), vec![1, 2, 3, 4]);
    }

    #[test]
    fn glibc_reserved_signals_are_reset_too() {
        // Signal 32 (glibc's SIGCANCEL) cannot be set through libc::sigaction.
        let mut ignore = [0u64; 8];
        ignore[0] = libc::SIG_IGN as u64;
        let size = (libc::SIGRTMAX() as usize + 1) / 8;
        // SAFETY: as in raw_default, with SIG_IGN as the handler (the first field on x86_64 and
        // aarch64, where these tests run).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                32,
                ignore.as_ptr(),
                std::ptr::null_mut::<u8>(),
                size,
            )
        };
        assert_eq!(ret, 0);
        raw_default(32).unwrap();
        let mut old = [0u64; 8];
        // SAFETY: a null new action only reads the old one into `old`, 64 writable bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                32,
                std::ptr::null::<u8>(),
                old.as_mut_ptr(),
                size,
            )
        };
        assert_eq!(ret, 0);
        assert_eq!(old[0], libc::SIG_DFL as u64);
    }

    #[test]
    fn limits_read_back() {
        let (soft, hard) = get_limit(Resource::Nofile).unwrap();
        assert!(soft <= hard);
        set_limit(Resource::Nofile, soft, hard).unwrap();
    }
}
