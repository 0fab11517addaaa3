//! Whether the files the wrapper trusts can be changed by anyone but root or the service user.
//!
//! The wrapper execs the runner with the service account's rights and the runner reads the site
//! configuration; if any directory on the way to either were writable by another user, that user
//! could swap in their own runner or configuration. As OpenSSH's `safe_path` (misc.c) does, each
//! trusted path and every ancestor directory up to `/` must be owned by root or the service user
//! and carry no group- or world-write bit; the sticky bit does not excuse a world-writable
//! directory (so an install under `/tmp` is refused). The runner and the wrapper must be regular
//! files and not symlinks; ancestors are followed with `stat`, and when a path runs through a
//! symlink its canonical form is checked the same way. The check is pure over [`FileSystem`],
//! so it is unit-tested against a fake tree; [`RealFs`] is the real one.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The type of a file system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What the check needs to know about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    /// The permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub kind: Kind,
}

/// The file system calls the check makes.
pub trait FileSystem {
    /// `stat`: follows symlinks.
    fn meta(&self, path: &Path) -> io::Result<Meta>;
    /// `lstat`: describes a symlink itself.
    fn symlink_meta(&self, path: &Path) -> io::Result<Meta>;
    /// `realpath`.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
}

/// What a trusted path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A regular file, not a symlink (the runner, the wrapper).
    File,
    /// A directory (the configuration's directory).
    Dir,
}

/// The owner that a trusted path may have besides root.
#[derive(Debug, Clone, Copy)]
pub struct Trusted<'a> {
    pub uid: u32,
    pub user: &'a str,
}

/// Checks `path` (what `what` names in messages, e.g. "the runner") and all its ancestors.
pub fn check(
    fs: &impl FileSystem,
    what: &str,
    path: &Path,
    want: Want,
    owner: Trusted<'_>,
) -> Result<(), String> {
    check_chain(fs, what, path, want, owner)?;
    let canonical = fs
        .canonicalize(path)
        .map_err(|e| format!("cannot resolve {what} {}: {e}", path.display()))?;
    if canonical != path {
        check_chain(fs, what, &canonical, want, owner)?;
    }
    Ok(())
}

fn check_chain(
    fs: &impl FileSystem,
    what: &str,
    path: &Path,
    want: Want,
    owner: Trusted<'_>,
) -> Result<(), String> {
    let unsafe_ = |p: &Path, why: String| -> String {
        if p == path {
            format!("unsafe install: {what} {} {why}", p.display())
        } else {
            format!(
                "unsafe install: {} (on the path to {what} {}) {why}",
                p.display(),
                path.display()
            )
        }
    };
    let stat_error = |p: &Path, e: io::Error| format!("cannot check {what}: {}: {e}", p.display());
    if !path.is_absolute() {
        return Err(format!("{what} {} is not an absolute path", path.display()));
    }
    let meta = match want {
        Want::File => {
            let meta = fs.symlink_meta(path).map_err(|e| stat_error(path, e))?;
            if meta.kind == Kind::Symlink {
                return Err(unsafe_(path, "is a symlink".into()));
            }
            if meta.kind != Kind::File {
                return Err(unsafe_(path, "is not a regular file".into()));
            }
            meta
        }
        Want::Dir => {
            let meta = fs.meta(path).map_err(|e| stat_error(path, e))?;
            if meta.kind != Kind::Dir {
                return Err(unsafe_(path, "is not a directory".into()));
            }
            meta
        }
    };
    trusted(&meta, owner).map_err(|why| unsafe_(path, why))?;
    for dir in path.ancestors().skip(1) {
        let meta = fs.meta(dir).map_err(|e| stat_error(dir, e))?;
        if meta.kind != Kind::Dir {
            return Err(unsafe_(dir, "is not a directory".into()));
        }
        trusted(&meta, owner).map_err(|why| unsafe_(dir, why))?;
    }
    Ok(())
}

/// Owned by root or the service user, and writable by its owner alone.
fn trusted(meta: &Meta, owner: Trusted<'_>) -> Result<(), String> {
    if meta.uid != 0 && meta.uid != owner.uid {
        return Err(format!(
            "is owned by uid {}, not by root or {}",
            meta.uid, owner.user
        ));
    }
    let mode = meta.mode & 0o7777;
    if mode & 0o002 != 0 {
        let sticky = if mode & 0o1000 != 0 {
            "; the sticky bit does not make it safe"
        } else {
            ""
        };
        return Err(format!("is world-writable (mode {mode:04o}{sticky})"));
    }
    if mode & 0o020 != 0 {
        return Err(format!("is group-writable (mode {mode:04o})"));
    }
    Ok(())
}

/// The real file system.
pub struct RealFs;

fn to_meta(m: &std::fs::Metadata) -> Meta {
    let t = m.file_type();
    let kind = if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    Meta {
        uid: m.uid(),
        mode: m.mode() & 0o7777,
        kind,
    }
}

impl FileSystem for RealFs {
    fn meta(&self, path: &Path) -> io::Result<Meta> {
        std::fs::metadata(path).map(|m| to_meta(&m))
    }

    fn symlink_meta(&self, path: &Path) -> io::Result<Meta> {
        std::fs::symlink_metadata(path).map(|m| to_meta(&m))
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SVC: u32 = 998;
    const OWNER: Trusted<'static> = Trusted {
        uid: SVC,
        user: "stratus",
    };

    /// A tree of paths with their lstat data, and symlinks with their (absolute) targets.
    #[derive(Default, Clone)]
    struct Fake {
        nodes: HashMap<PathBuf, Meta>,
        links: HashMap<PathBuf, PathBuf>,
    }

    impl Fake {
        fn dir(mut self, p: &str, uid: u32, mode: u32) -> Self {
            let meta = Meta {
                uid,
                mode,
                kind: Kind::Dir,
            };
            self.nodes.insert(p.into(), meta);
            self
        }
        fn file(mut self, p: &str, uid: u32, mode: u32) -> Self {
            let meta = Meta {
                uid,
                mode,
                kind: Kind::File,
            };
            self.nodes.insert(p.into(), meta);
            self
        }
        fn link(mut self, p: &str, target: &str) -> Self {
            let meta = Meta {
                uid: 0,
                mode: 0o777,
                kind: Kind::Symlink,
            };
            self.nodes.insert(p.into(), meta);
            self.links.insert(p.into(), target.into());
            self
        }
        /// Resolves every symlink in `path` (targets are absolute).
        fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
            let mut out = PathBuf::from("/");
            for part in path.components().skip(1) {
                out.push(part);
                let mut hops = 0;
                while let Some(target) = self.links.get(&out) {
                    out = self.resolve(target)?;
                    hops += 1;
                    if hops > 8 {
                        return Err(io::Error::other("loop"));
                    }
                }
                if !self.nodes.contains_key(&out) {
                    return Err(io::ErrorKind::NotFound.into());
                }
            }
            Ok(out)
        }
        /// A good install: /opt/stratus/{bin/stratus,bin/stratus-wrap,etc/stratus/config.toml}.
        fn good() -> Self {
            Fake::default()
                .dir("/", 0, 0o755)
                .dir("/opt", 0, 0o755)
                .dir("/opt/stratus", 0, 0o755)
                .dir("/opt/stratus/bin", 0, 0o755)
                .file("/opt/stratus/bin/stratus", 0, 0o755)
                .file("/opt/stratus/bin/stratus-wrap", SVC, 0o4755)
                .dir("/opt/stratus/etc", 0, 0o755)
                .dir("/opt/stratus/etc/stratus", SVC, 0o750)
                .dir("/tmp", 0, 0o1777)
        }
    }

    impl FileSystem for Fake {
        fn meta(&self, path: &Path) -> io::Result<Meta> {
            let real = self.resolve(path)?;
            Ok(self.nodes[&real])
        }
        fn symlink_meta(&self, path: &Path) -> io::Result<Meta> {
            // lstat follows symlinks in the directories, not in the last component.
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Ok(self.nodes[path]);
            };
            let real = self.resolve(parent)?.join(name);
            self.nodes
                .get(&real)
                .copied()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
            self.resolve(path)
        }
    }

    fn runner(fs: &Fake) -> Result<(), String> {
        check(
            fs,
            "the runner",
            Path::new("/opt/stratus/bin/stratus"),
            Want::File,
            OWNER,
        )
    }

    fn wrapper(fs: &Fake) -> Result<(), String> {
        check(
            fs,
            "the wrapper",
            Path::new("/opt/stratus/bin/stratus-wrap"),
            Want::File,
            OWNER,
        )
    }

    fn config_dir(fs: &Fake) -> Result<(), String> {
        check(
            fs,
            "the configuration directory",
            Path::new("/opt/stratus/etc/stratus"),
            Want::Dir,
            OWNER,
        )
    }

    #[test]
    fn a_good_tree_passes() {
        let fs = Fake::good();
        runner(&fs).unwrap();
        wrapper(&fs).unwrap();
        config_dir(&fs).unwrap();
    }

    #[test]
    fn a_world_writable_ancestor_is_named() {
        let fs = Fake::good().dir("/opt", 0, 0o777);
        for result in [runner(&fs), wrapper(&fs), config_dir(&fs)] {
            let err = result.unwrap_err();
            assert!(
                err.starts_with("unsafe install: /opt (on the path to ")
                    && err.ends_with("is world-writable (mode 0777)"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_root_directory_is_checked_too() {
        let fs = Fake::good().dir("/", 0, 0o777);
        let err = runner(&fs).unwrap_err();
        assert!(err.starts_with("unsafe install: / (on the path"), "{err}");
    }

    #[test]
    fn a_group_writable_config_directory_is_refused() {
        let fs = Fake::good().dir("/opt/stratus/etc/stratus", SVC, 0o770);
        let err = config_dir(&fs).unwrap_err();
        assert_eq!(
            err,
            "unsafe install: the configuration directory /opt/stratus/etc/stratus \
             is group-writable (mode 0770)"
        );
        runner(&fs).unwrap();
    }

    #[test]
    fn group_or_world_writable_files_are_refused() {
        let fs = Fake::good().file("/opt/stratus/bin/stratus", 0, 0o775);
        assert!(
            runner(&fs)
                .unwrap_err()
                .contains("group-writable (mode 0775)")
        );
        let fs = Fake::good().file("/opt/stratus/bin/stratus-wrap", SVC, 0o4757);
        assert!(
            wrapper(&fs)
                .unwrap_err()
                .contains("world-writable (mode 4757)")
        );
    }

    #[test]
    fn another_owner_is_refused() {
        let fs = Fake::good().dir("/opt/stratus/bin", 1000, 0o755);
        let err = runner(&fs).unwrap_err();
        assert_eq!(
            err,
            "unsafe install: /opt/stratus/bin (on the path to the runner \
             /opt/stratus/bin/stratus) is owned by uid 1000, not by root or stratus"
        );
        let fs = Fake::good().file("/opt/stratus/bin/stratus", 1000, 0o755);
        assert!(runner(&fs).unwrap_err().contains("owned by uid 1000"));
        // Service-owned is fine.
        let fs = Fake::good().file("/opt/stratus/bin/stratus", SVC, 0o755);
        runner(&fs).unwrap();
    }

    #[test]
    fn a_sticky_tmp_does_not_excuse() {
        let fs = Fake::good()
            .dir("/tmp/stratus", 0, 0o755)
            .file("/tmp/stratus/stratus", 0, 0o755);
        let err = check(
            &fs,
            "the runner",
            Path::new("/tmp/stratus/stratus"),
            Want::File,
            OWNER,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "unsafe install: /tmp (on the path to the runner /tmp/stratus/stratus) is \
             world-writable (mode 1777; the sticky bit does not make it safe)"
        );
    }

    #[test]
    fn a_symlinked_runner_is_refused_even_to_a_good_file() {
        let fs = Fake::good()
            .file("/opt/stratus/bin/stratus-real", 0, 0o755)
            .link("/opt/stratus/bin/stratus", "/opt/stratus/bin/stratus-real");
        assert_eq!(
            runner(&fs).unwrap_err(),
            "unsafe install: the runner /opt/stratus/bin/stratus is a symlink"
        );
        let fs = Fake::good().link("/opt/stratus/bin/stratus-wrap", "/opt/stratus/bin/stratus");
        assert!(wrapper(&fs).unwrap_err().ends_with("is a symlink"));
    }

    #[test]
    fn the_target_of_a_symlinked_ancestor_is_checked() {
        // /opt/stratus -> /srv/stratus, and /srv is world-writable: someone could rename
        // /srv/stratus away and put their own tree there.
        let mut fs = Fake::good();
        fs.nodes.retain(|p, _| !p.starts_with("/opt/stratus"));
        let fs = fs
            .dir("/srv", 0, 0o777)
            .dir("/srv/stratus", 0, 0o755)
            .dir("/srv/stratus/bin", 0, 0o755)
            .file("/srv/stratus/bin/stratus", 0, 0o755)
            .link("/opt/stratus", "/srv/stratus");
        let err = runner(&fs).unwrap_err();
        assert!(
            err.starts_with(
                "unsafe install: /srv (on the path to the runner /srv/stratus/bin/stratus)"
            ),
            "{err}"
        );
        let fs = fs.dir("/srv", 0, 0o755);
        runner(&fs).unwrap();
    }

    #[test]
    fn wrong_kinds_are_refused() {
        let fs = Fake::good().dir("/opt/stratus/bin/stratus", 0, 0o755);
        assert!(runner(&fs).unwrap_err().ends_with("is not a regular file"));
        let fs = Fake::good().file("/opt/stratus/etc/stratus", 0, 0o644);
        assert!(config_dir(&fs).unwrap_err().ends_with("is not a directory"));
        let fs = Fake::good();
        let err = check(
            &fs,
            "the runner",
            Path::new("/opt/stratus/bin/missing"),
            Want::File,
            OWNER,
        )
        .unwrap_err();
        assert!(
            err.starts_with("cannot check the runner: /opt/stratus/bin/missing:"),
            "{err}"
        );
    }
}
