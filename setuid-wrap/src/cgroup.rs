//! Whether the caller can freeze, kill or starve the runner through its cgroups.
//!
//! A setuid exec changes the uids, not the cgroup: the runner stays in its caller's cgroups.
//! Where the caller owns one of them (systemd's `Delegate=yes` hands every user's
//! `user@UID.service` subtree to that user, and `systemd-run --user --scope` puts any command
//! there), the caller can write `1` to `cgroup.freeze` or `cgroup.kill`, lower `memory.max`,
//! `pids.max` or `cpu.max`, or move the runner into a child cgroup of its own and do the same
//! there, with no uid check at all: the runner then stops while it holds the terminate lock or
//! SQLite's write lock, or dies between the reservation and RunInstances. cgroup v2 checks a
//! migration only against the `cgroup.procs` files of the two cgroups and of their common
//! ancestor, so an ancestor the caller can write is as bad as the cgroup itself.
//!
//! So, before any of the caller's state is given up (groups included), the wrapper walks every
//! hierarchy listed in `/proc/self/cgroup` (the unified v2 one, and each v1 hierarchy, the
//! freezer's among them) from the caller's cgroup up to the root of the hierarchy as mounted
//! here, and refuses if the caller (its real uid, real gid and supplementary groups, as
//! `access(2)` checks them) can write any of those directories or any control file in them.
//! The `*.pressure` files are left out: writing one registers a PSI trigger for the writer's
//! own poll and changes nothing in the group. A hierarchy the wrapper cannot map onto a mount
//! (not mounted in this mount namespace, a path outside the cgroup namespace, a directory that
//! does not exist) cannot be checked, and is refused too. A caller whose real uid is root is not
//! checked: root can freeze anything anyway.
//!
//! The parsing and the walk are pure over [`CgroupFs`], so they are unit-tested against a fake
//! tree; [`RealCgroupFs`] is the real one.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Component, Path, PathBuf};

/// The advice every refusal ends with.
pub const ADVICE: &str = "run the command from a login session (not a systemd --user scope or \
     service), or have the site use the class service (transport = \"service\")";

/// One line of `/proc/self/cgroup`: `hierarchy-ID:controller-list:cgroup-path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy: u32,
    /// Empty for cgroup v2; `name=systemd` and the like for named v1 hierarchies.
    pub controllers: Vec<String>,
    /// Absolute, relative to the root of the hierarchy (of the cgroup namespace).
    pub path: String,
}

impl Membership {
    pub fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    /// For messages: `cgroup v2`, `cgroup v1 freezer`.
    pub fn label(&self) -> String {
        if self.is_v2() {
            "cgroup v2".to_string()
        } else {
            format!("cgroup v1 {}", self.controllers.join(","))
        }
    }
}

/// A cgroup file system as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The directory of the hierarchy that is mounted (`/` for the whole hierarchy).
    pub root: String,
    pub mount_point: PathBuf,
    /// `cgroup2` (else `cgroup`, v1).
    pub v2: bool,
    /// The super options (`rw,freezer`, `rw,cpu,cpuacct`, `rw,name=systemd`).
    pub options: Vec<String>,
}

/// What the check reads.
pub trait CgroupFs {
    /// `/proc/self/cgroup`.
    fn memberships(&self) -> io::Result<String>;
    /// `/proc/self/mountinfo`.
    fn mountinfo(&self) -> io::Result<String>;
    /// Whether the caller's real ids may write `path` (`access(path, W_OK)`).
    fn writable(&self, path: &Path) -> io::Result<bool>;
    /// The regular files in directory `dir` (its control files).
    fn files(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// Parses `/proc/self/cgroup`. Anything unexpected (a line without three fields, a relative
/// path, a hierarchy listed twice) is an error: a cgroup name may hold a newline, and a line
/// it forged must not hide the real one.
pub fn parse_memberships(text: &str) -> Result<Vec<Membership>, String> {
    let mut out: Vec<Membership> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("unexpected line in /proc/self/cgroup: {line:?}"));
        };
        let hierarchy: u32 = id
            .parse()
            .map_err(|_| format!("unexpected line in /proc/self/cgroup: {line:?}"))?;
        if !path.starts_with('/') {
            return Err(format!("unexpected line in /proc/self/cgroup: {line:?}"));
        }
        if out.iter().any(|m| m.hierarchy == hierarchy) {
            return Err(format!(
                "hierarchy {hierarchy} is listed twice in /proc/self/cgroup"
            ));
        }
        let controllers = controllers
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        out.push(Membership {
            hierarchy,
            controllers,
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// The cgroup and cgroup2 mounts of `/proc/self/mountinfo` (`proc_pid_mountinfo(5)`:
/// `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`,
/// with space, tab, newline and backslash in paths escaped as octal).
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if dash < 6 || fields.len() < dash + 4 {
            continue;
        }
        let v2 = match fields[dash + 1] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        out.push(CgroupMount {
            root: unescape(fields[3]),
            mount_point: PathBuf::from(unescape(fields[4])),
            v2,
            options: fields[dash + 3].split(',').map(str::to_string).collect(),
        });
    }
    out
}

/// Undoes mountinfo's `\ooo` escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |j: usize| b.get(j).is_some_and(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' && octal(i + 1) && octal(i + 2) && octal(i + 3) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `prefix` is `path` or one of its ancestors, component by component.
fn is_within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The directory of `m`'s cgroup, and the mount point of its hierarchy (where the walk up
/// ends): the mount of that hierarchy whose root is closest to the hierarchy's own root.
pub fn locate(m: &Membership, mounts: &[CgroupMount]) -> Result<(PathBuf, PathBuf), String> {
    let label = m.label();
    if Path::new(&m.path)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "the caller's {label} cgroup {} is outside this cgroup namespace",
            m.path
        ));
    }
    let mount = mounts
        .iter()
        .filter(|mount| {
            if m.is_v2() {
                mount.v2
            } else {
                !mount.v2 && m.controllers.iter().all(|c| mount.options.contains(c))
            }
        })
        .filter(|mount| is_within(&m.path, &mount.root))
        .min_by_key(|mount| mount.root.len())
        .ok_or_else(|| {
            format!(
                "the caller's {label} cgroup {} is not mounted here, so who can freeze or kill \
                 it cannot be checked",
                m.path
            )
        })?;
    // `is_within` made sure the path starts with the mount's root, component by component.
    let below_root = if mount.root == "/" {
        m.path.as_str()
    } else {
        &m.path[mount.root.len()..]
    };
    let rest = below_root.trim_start_matches('/');
    let dir = if rest.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rest)
    };
    Ok((dir, mount.mount_point.clone()))
}

/// Refuses, with one line, when the caller can write any cgroup directory or control file from
/// its own cgroups up to the roots of their hierarchies. `real_uid` 0 is not checked.
pub fn check(fs: &impl CgroupFs, real_uid: u32) -> Result<(), String> {
    if real_uid == 0 {
        return Ok(());
    }
    let cannot = |what: &str, e: io::Error| format!("cannot read {what}: {e}; {ADVICE}");
    let memberships = parse_memberships(
        &fs.memberships()
            .map_err(|e| cannot("/proc/self/cgroup", e))?,
    )
    .map_err(|e| format!("{e}; {ADVICE}"))?;
    let mounts = parse_mountinfo(
        &fs.mountinfo()
            .map_err(|e| cannot("/proc/self/mountinfo", e))?,
    );
    for m in &memberships {
        let (dir, top) = locate(m, &mounts).map_err(|e| format!("{e}; {ADVICE}"))?;
        check_up(fs, m, &dir, &top)?;
    }
    Ok(())
}

/// `dir` and each ancestor up to `top`, with their control files.
fn check_up(fs: &impl CgroupFs, m: &Membership, dir: &Path, top: &Path) -> Result<(), String> {
    let label = m.label();
    let refuse = |path: &Path, at: &Path| {
        let whose = if at == dir {
            format!("its {label} cgroup {}", m.path)
        } else {
            format!("an ancestor of its {label} cgroup {}", m.path)
        };
        format!(
            "the caller can write {} ({whose}), so it could freeze or kill the runner mid-launch: \
             {ADVICE}",
            path.display()
        )
    };
    let unreadable = |path: &Path, e: io::Error| {
        format!(
            "cannot check the caller's {label} cgroup {} at {}: {e}; {ADVICE}",
            m.path,
            path.display()
        )
    };
    for at in dir.ancestors() {
        if fs.writable(at).map_err(|e| unreadable(at, e))? {
            return Err(refuse(at, at));
        }
        let mut files = fs.files(at).map_err(|e| unreadable(at, e))?;
        files.sort();
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".pressure") {
                continue;
            }
            match fs.writable(&f) {
                Ok(true) => return Err(refuse(&f, at)),
                Ok(false) => {}
                // A file that went away meanwhile (a controller disabled) can be written by
                // no one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(unreadable(&f, e)),
            }
        }
        if at == top {
            return Ok(());
        }
    }
    Err(format!(
        "the caller's {label} cgroup {} is not below its mount point {}; {ADVICE}",
        dir.display(),
        top.display()
    ))
}

/// The real files and `access(2)`.
pub struct RealCgroupFs;

impl CgroupFs for RealCgroupFs {
    fn memberships(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/cgroup")
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn writable(&self, path: &Path) -> io::Result<bool> {
        crate::sys::real_ids_can_write(path)
    }

    fn files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push(e.path());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A cgroup tree: directories with their files, and the paths the caller may write.
    #[derive(Default)]
    struct Fake {
        cgroup: String,
        mountinfo: String,
        dirs: BTreeMap<PathBuf, Vec<&'static str>>,
        writable: BTreeSet<PathBuf>,
    }

    const FILES: &[&str] = &[
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.freeze",
        "cgroup.kill",
        "cgroup.subtree_control",
        "memory.max",
        "cpu.pressure",
    ];

    /// Pure v2 at /sys/fs/cgroup, the caller in a session scope (root's, as logind makes it).
    fn v2(path: &str) -> Fake {
        let mut f = Fake {
            cgroup: format!("0::{path}\n"),
            mountinfo: "24 30 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                        30 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                .into(),
            ..Fake::default()
        };
        let mut p = PathBuf::from("/sys/fs/cgroup");
        f.dirs.insert(p.clone(), FILES.to_vec());
        for c in path.split('/').filter(|c| !c.is_empty()) {
            p.push(c);
            f.dirs.insert(p.clone(), FILES.to_vec());
        }
        f
    }

    impl Fake {
        fn writable(mut self, path: &str) -> Fake {
            self.writable.insert(PathBuf::from(path));
            self
        }
    }

    impl CgroupFs for Fake {
        fn memberships(&self) -> io::Result<String> {
            Ok(self.cgroup.clone())
        }
        fn mountinfo(&self) -> io::Result<String> {
            Ok(self.mountinfo.clone())
        }
        fn writable(&self, path: &Path) -> io::Result<bool> {
            let exists = self.dirs.contains_key(path)
                || path
                    .parent()
                    .and_then(|d| self.dirs.get(d))
                    .is_some_and(|fs| fs.iter().any(|f| path.ends_with(f)));
            if !exists {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            Ok(self.writable.contains(path))
        }
        fn files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            self.dirs
                .get(dir)
                .map(|fs| fs.iter().map(|f| dir.join(f)).collect())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    const SESSION: &str = "/user.slice/user-1000.slice/session-4.scope";
    const SCOPE: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope";

    #[test]
    fn a_root_owned_login_session_passes() {
        check(&v2(SESSION), 1000).unwrap();
    }

    #[test]
    fn a_delegated_cgroup_is_refused_by_its_directory_and_by_each_control_file() {
        let dir = format!("/sys/fs/cgroup{SCOPE}");
        for what in [
            "",
            "/cgroup.procs",
            "/cgroup.freeze",
            "/cgroup.kill",
            "/memory.max",
        ] {
            let path = format!("{dir}{what}");
            let err = check(&v2(SCOPE).writable(&path), 1000).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "the caller can write {path} (its cgroup v2 cgroup {SCOPE}), so it could \
                     freeze or kill the runner mid-launch: run the command from a login session"
                )),
                "{err}"
            );
            assert!(err.ends_with("(transport = \"service\")"), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn an_ancestor_the_caller_can_write_is_refused() {
        // user@1000.service is the user's (Delegate=yes); the scope below it is root's.
        let anc = "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/cgroup.procs";
        let err = check(&v2(SCOPE).writable(anc), 1000).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "the caller can write {anc} (an ancestor of its cgroup v2 cgroup {SCOPE})"
            )),
            "{err}"
        );
        // Up to the root of the hierarchy.
        let root = "/sys/fs/cgroup/cgroup.procs";
        assert!(check(&v2(SESSION).writable(root), 1000).is_err());
    }

    #[test]
    fn pressure_files_are_not_control_files() {
        let f = v2(SESSION).writable(&format!("/sys/fs/cgroup{SESSION}/cpu.pressure"));
        check(&f, 1000).unwrap();
    }

    #[test]
    fn root_is_not_checked() {
        let f = v2(SCOPE).writable(&format!("/sys/fs/cgroup{SCOPE}"));
        check(&f, 0).unwrap();
        assert!(check(&f, 1000).is_err());
    }

    #[test]
    fn what_cannot_be_checked_is_refused() {
        // A hierarchy that is not mounted here.
        let mut f = v2(SESSION);
        f.mountinfo = "30 1 8:1 / / rw - ext4 /dev/sda1 rw\n".into();
        let err = check(&f, 1000).unwrap_err();
        assert!(err.contains("is not mounted here"), "{err}");
        // A cgroup outside the namespace.
        let mut f = v2(SESSION);
        f.cgroup = "0::/../../user.slice\n".into();
        assert!(
            check(&f, 1000)
                .unwrap_err()
                .contains("outside this cgroup namespace")
        );
        // A directory that is not there (a name with a newline in it reads as two lines).
        let mut f = v2(SESSION);
        f.cgroup = format!("0::{SESSION}/x\n");
        let err = check(&f, 1000).unwrap_err();
        assert!(
            err.starts_with("cannot check the caller's cgroup v2 cgroup"),
            "{err}"
        );
        // Malformed or doubled lines.
        for text in ["0::/a\n0::/\n", "garbage\n", "0::relative\n", "x::/\n"] {
            let mut f = v2(SESSION);
            f.cgroup = text.into();
            assert!(check(&f, 1000).is_err(), "{text:?}");
        }
    }

    /// Hybrid: v2 at /sys/fs/cgroup/unified, v1 freezer and cpu,cpuacct beside it.
    fn hybrid() -> Fake {
        let mut f = Fake {
            cgroup: "6:freezer:/user/1000.slice\n2:cpu,cpuacct:/\n0::/\n".into(),
            mountinfo: "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
                        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                        37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n\
                        41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                .into(),
            ..Fake::default()
        };
        for d in [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/freezer",
            "/sys/fs/cgroup/freezer/user",
            "/sys/fs/cgroup/freezer/user/1000.slice",
        ] {
            f.dirs
                .insert(d.into(), vec!["cgroup.procs", "tasks", "freezer.state"]);
        }
        f
    }

    #[test]
    fn v1_hierarchies_are_walked_too() {
        check(&hybrid(), 1000).unwrap();
        let state = "/sys/fs/cgroup/freezer/user/1000.slice/freezer.state";
        let err = check(&hybrid().writable(state), 1000).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "the caller can write {state} (its cgroup v1 freezer cgroup /user/1000.slice)"
            )),
            "{err}"
        );
        let tasks = "/sys/fs/cgroup/freezer/user/tasks";
        assert!(check(&hybrid().writable(tasks), 1000).is_err());
        let cpu = "/sys/fs/cgroup/cpu,cpuacct/cgroup.procs";
        let err = check(&hybrid().writable(cpu), 1000).unwrap_err();
        assert!(
            err.contains("(its cgroup v1 cpu,cpuacct cgroup /)"),
            "{err}"
        );
    }

    #[test]
    fn mountinfo_escapes_and_mount_roots_map_onto_directories() {
        let mounts = parse_mountinfo(
            "41 31 0:38 /docker/abc /sys/fs/cgroup/my\\040mount rw master:3 - cgroup2 cgroup2 rw\n\
             42 31 0:38 / /sys/fs/cgroup/whole rw - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/my mount"));
        assert_eq!(mounts[0].root, "/docker/abc");
        let m = Membership {
            hierarchy: 0,
            controllers: vec![],
            path: "/docker/abc/x".into(),
        };
        // The whole hierarchy is preferred: more ancestors are seen from it.
        assert_eq!(
            locate(&m, &mounts).unwrap(),
            (
                PathBuf::from("/sys/fs/cgroup/whole/docker/abc/x"),
                PathBuf::from("/sys/fs/cgroup/whole")
            )
        );
        assert_eq!(
            locate(&m, &mounts[..1]).unwrap(),
            (
                PathBuf::from("/sys/fs/cgroup/my mount/x"),
                PathBuf::from("/sys/fs/cgroup/my mount")
            )
        );
        // A mount of another subtree does not hold the cgroup.
        let other = Membership {
            path: "/docker/abcd".into(),
            ..m
        };
        assert!(locate(&other, &mounts[..1]).is_err());
    }
}
