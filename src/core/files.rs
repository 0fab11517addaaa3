//! Files that matter (state, keys, credential files), written so that nothing planted where they
//! go is followed, and nothing half-written is ever read: a fresh temporary file made exclusively,
//! its mode set before the first byte, fsync, rename.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot create the state directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; the state directory and database must be real files")]
    Symlink { path: PathBuf },
}

impl From<DirError> for crate::core::error::Error {
    fn from(e: DirError) -> Self {
        crate::core::error::Error::wrap(crate::core::error::Kind::Failed, e)
    }
}

/// Writes a file that only its owner can read, mode set before any byte is written, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic(path, data, 0o600)
}

/// Writes `data` to `path` with `mode`, atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A fresh name, created exclusively (O_EXCL) with mode 0600: nothing planted where the
    // temporary file goes is ever followed or reused.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates a directory (and its parents) readable only by its owner. A symbolic link where the
/// directory should be is refused: something planted it to redirect stratus's writes.
pub fn create_private_dir(dir: &Path) -> Result<(), DirError> {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(DirError::Symlink {
            path: dir.to_path_buf(),
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DirError::Create {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_private_file_is_0600_and_replaces_what_was_there_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_private(&path, b"secret").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"keep",
            "the link was followed"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_private_dir_is_0700_and_a_planted_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(matches!(
            create_private_dir(&link),
            Err(DirError::Symlink { .. })
        ));
    }
}
