//! Which install this binary belongs to: the site config path that `admin install` patches into
//! the copy of `stratus` it installs, as it patches the wrapper (`setuid_wrap::placeholder`).
//!
//! Without it, an installed CLI found its install only through `--config`, `STRATUS_CONFIG` or
//! `/etc/stratus/config.toml`: after an install under `--prefix`, a student who typed `stratus`
//! silently got single-user mode (no clusters, no limits, local nodes run as the student). The
//! binary carries [`MARKER`] then [`AREA_LEN`] bytes, zero in a build; the install writes
//! `config=PATH\n` and a NUL there. `Environment::read` takes the path as the config when
//! neither `--config` nor `STRATUS_CONFIG` names one. The marker occurs once in a binary: the
//! needle the patcher searches for is read from this binary's own area, never a second copy.
//! This is no trust boundary: the CLI runs as its user, who may name any config they like.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const MARKER: &[u8] = b"@@STRATUS-CLI-INSTALL-V1@@";

/// The bytes after the marker, NUL terminator included.
pub const AREA_LEN: usize = 1024;

const LEN: usize = MARKER.len() + AREA_LEN;

/// The marker and a zero area, built at compile time (so `MARKER` is not also a run-time
/// constant of the binary).
const fn area() -> [u8; LEN] {
    let mut a = [0u8; LEN];
    let mut i = 0;
    while i < MARKER.len() {
        a[i] = MARKER[i];
        i += 1;
    }
    a
}

#[used]
static AREA: [u8; LEN] = area();

/// The config path patched into this binary, if it is an installed copy.
pub fn config() -> Option<PathBuf> {
    decode(&setuid_wrap::sys::read_volatile_bytes(
        &AREA[MARKER.len()..],
    ))
}

/// The marker, as this binary holds it.
fn marker() -> Vec<u8> {
    setuid_wrap::sys::read_volatile_bytes(&AREA[..MARKER.len()])
}

/// A copy of `binary` (a build of stratus) that knows its install's config, `config`.
pub fn patch(binary: &[u8], config: &Path) -> Result<Vec<u8>, String> {
    let bytes = config.as_os_str().as_bytes();
    let plain = config.is_absolute()
        && config
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || bytes.iter().any(|&b| b == 0 || b == b'\n') {
        return Err(format!(
            "the config path {} must be absolute and plain",
            config.display()
        ));
    }
    let mut payload = b"config=".to_vec();
    payload.extend_from_slice(bytes);
    payload.extend_from_slice(b"\n\0");
    if payload.len() > AREA_LEN {
        return Err(format!(
            "the config path {} is longer than the {AREA_LEN} bytes the binary has room for",
            config.display()
        ));
    }
    let start = area_start(binary)?;
    let mut out = binary.to_vec();
    let area = &mut out[start..start + AREA_LEN];
    area.fill(0);
    area[..payload.len()].copy_from_slice(&payload);
    Ok(out)
}

/// The config path patched into `binary` (an installed CLI), if any.
pub fn read(binary: &[u8]) -> Option<PathBuf> {
    let start = area_start(binary).ok()?;
    decode(&binary[start..start + AREA_LEN])
}

fn area_start(binary: &[u8]) -> Result<usize, String> {
    let marker = marker();
    let mut at = binary
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_slice())
        .map(|(i, _)| i);
    match (at.next(), at.next()) {
        (Some(i), None) if i + marker.len() + AREA_LEN <= binary.len() => Ok(i + marker.len()),
        (Some(_), None) => Err("the binary ends inside its install area".into()),
        (None, _) => Err("this is not a build of stratus: it has no install area".into()),
        (Some(_), Some(_)) => Err("the install area's marker occurs more than once".into()),
    }
}

/// `config=PATH\n`, a NUL, zeros; anything else is no install.
fn decode(area: &[u8]) -> Option<PathBuf> {
    let end = area.iter().position(|&b| b == 0)?;
    if end == 0 || area[end..].iter().any(|&b| b != 0) {
        return None;
    }
    let path = area[..end].strip_prefix(b"config=")?.strip_suffix(b"\n")?;
    let path = PathBuf::from(OsStr::from_bytes(path));
    path.is_absolute().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_binary() -> Vec<u8> {
        let mut b = b"\x7fELF...code...".to_vec();
        b.extend_from_slice(&marker());
        b.extend(std::iter::repeat_n(0, AREA_LEN));
        b.extend_from_slice(b"...more...");
        b
    }

    #[test]
    fn a_build_belongs_to_no_install_and_a_patched_copy_to_its_own() {
        assert_eq!(config(), None, "the test binary is a build");
        assert_eq!(read(&fake_binary()), None);
        let cfg = Path::new("/opt/s/etc/stratus/config.toml");
        let once = patch(&fake_binary(), cfg).unwrap();
        assert_eq!(once.len(), fake_binary().len());
        assert_eq!(read(&once).as_deref(), Some(cfg));
        // Patching again replaces the whole area.
        let other = Path::new("/etc/stratus/config.toml");
        let twice = patch(&once, other).unwrap();
        assert_eq!(read(&twice).as_deref(), Some(other));
        assert!(twice.ends_with(b"...more..."));
    }

    #[test]
    fn bad_paths_and_binaries_are_refused() {
        for bad in ["relative/config.toml", "/opt/../etc/c.toml", "/opt/a\nb"] {
            assert!(patch(&fake_binary(), Path::new(bad)).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "x".repeat(AREA_LEN));
        assert!(patch(&fake_binary(), Path::new(&long)).is_err());
        assert!(patch(b"no area here", Path::new("/etc/c.toml")).is_err());
        let mut two = fake_binary();
        two.extend_from_slice(&fake_binary());
        assert!(patch(&two, Path::new("/etc/c.toml")).is_err());
    }

    #[test]
    fn this_binary_holds_the_area_once() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let patched = patch(&me, Path::new("/etc/stratus/config.toml")).unwrap();
        assert_eq!(
            read(&patched).as_deref(),
            Some(Path::new("/etc/stratus/config.toml"))
        );
    }
}
