//! The install-time configuration of the wrapper: a placeholder area inside the binary.
//!
//! Nothing the caller controls may decide what the wrapper runs (not `argv[0]`, `/proc/self/exe`,
//! the environment or the working directory), so the paths and the service account live in the
//! wrapper's own bytes. The binary carries [`MARKER`] followed by [`AREA_LEN`] zero bytes; the
//! installer finds the marker exactly once and writes the payload into the area with [`patch`],
//! as relocatable packages patch an install prefix. The payload is `key=value\n` lines followed
//! by a NUL, the rest of the area zero. An all-zero area means "not installed".
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The bytes that precede the configuration area in the wrapper binary. They must occur exactly
/// once in the binary; the payload never contains them.
pub const MARKER: &[u8] = b"@@STRATUS-WRAP-CONFIG-V1@@";

/// The number of bytes reserved for the payload right after [`MARKER`], NUL terminator included.
pub const AREA_LEN: usize = 4096;

/// What the installer fixes in the wrapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapConfig {
    /// Absolute path of the `stratus` binary that the wrapper execs as `<runner> runner --config
    /// <config>`.
    pub runner: PathBuf,
    /// Absolute path of the site configuration file, e.g. `DIR/etc/stratus/config.toml`.
    pub config: PathBuf,
    /// Absolute installed path of the wrapper itself, for its own safe-path check.
    pub wrapper: PathBuf,
    /// Name of the service account (the owner of the setuid wrapper).
    pub service_user: String,
    /// Uid of the service account; the wrapper refuses to run with any other effective uid.
    pub service_uid: u32,
    /// Primary gid of the service account; the runner's only group.
    pub service_gid: u32,
    /// Home directory of the service account; the runner's working directory and `HOME`.
    pub service_home: PathBuf,
}

const KEYS: [&str; 7] = [
    "runner",
    "config",
    "wrapper",
    "service_user",
    "service_uid",
    "service_gid",
    "service_home",
];

/// Encodes `cfg` as the payload that [`patch`] writes after the marker: `key=value\n` lines and
/// a final NUL, at most [`AREA_LEN`] bytes.
pub fn encode(cfg: &WrapConfig) -> Result<Vec<u8>, String> {
    validate(cfg)?;
    let uid = cfg.service_uid.to_string();
    let gid = cfg.service_gid.to_string();
    let values: [&[u8]; 7] = [
        cfg.runner.as_os_str().as_bytes(),
        cfg.config.as_os_str().as_bytes(),
        cfg.wrapper.as_os_str().as_bytes(),
        cfg.service_user.as_bytes(),
        uid.as_bytes(),
        gid.as_bytes(),
        cfg.service_home.as_os_str().as_bytes(),
    ];
    let mut out = Vec::new();
    for (key, value) in KEYS.iter().zip(values) {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.push(0);
    if out.len() > AREA_LEN {
        return Err(format!(
            "the wrapper configuration is {} bytes; the area holds at most {AREA_LEN}",
            out.len()
        ));
    }
    if count(&out, MARKER) != 0 {
        return Err("a configuration value contains the placeholder marker".to_string());
    }
    Ok(out)
}

/// Decodes the configuration area (the bytes after the marker). `Ok(None)` when the area is all
/// zeros: the binary was never patched.
pub fn decode(area: &[u8]) -> Result<Option<WrapConfig>, String> {
    if area.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let end = area
        .iter()
        .position(|&b| b == 0)
        .ok_or("the configuration area has no NUL terminator")?;
    if area[end..].iter().any(|&b| b != 0) {
        return Err("the configuration area has bytes after its terminator".to_string());
    }
    let text = &area[..end];
    let body = text
        .strip_suffix(b"\n")
        .ok_or("the configuration does not end with a newline")?;
    let mut values: [Option<&[u8]>; 7] = [None; 7];
    for line in body.split(|&b| b == b'\n') {
        let eq = line
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| format!("configuration line without '=': {}", show(line)))?;
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let slot = KEYS
            .iter()
            .position(|k| k.as_bytes() == key)
            .ok_or_else(|| format!("unknown configuration key {}", show(key)))?;
        if values[slot].replace(value).is_some() {
            return Err(format!("configuration key {} given twice", KEYS[slot]));
        }
    }
    let get = |i: usize| values[i].ok_or_else(|| format!("configuration key {} missing", KEYS[i]));
    let path = |i: usize| get(i).map(|v| PathBuf::from(OsStr::from_bytes(v)));
    let number = |i: usize| {
        let v = get(i)?;
        std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| format!("configuration key {} is not a number: {}", KEYS[i], show(v)))
    };
    let (runner, config, wrapper) = (path(0)?, path(1)?, path(2)?);
    let user = get(3)?;
    let service_user = String::from_utf8(user.to_vec())
        .map_err(|_| format!("service_user is not UTF-8: {}", show(user)))?;
    let cfg = WrapConfig {
        runner,
        config,
        wrapper,
        service_user,
        service_uid: number(4)?,
        service_gid: number(5)?,
        service_home: path(6)?,
    };
    validate(&cfg)?;
    Ok(Some(cfg))
}

/// Returns a copy of `binary` with `cfg` written into its configuration area. The marker must
/// occur exactly once; the area after it is overwritten whole (payload, then zeros), so patching
/// an already patched binary works.
pub fn patch(binary: &[u8], cfg: &WrapConfig) -> Result<Vec<u8>, String> {
    let payload = encode(cfg)?;
    let (start, end) = area_bounds(binary)?;
    let mut out = binary.to_vec();
    let area = &mut out[start..end];
    area.fill(0);
    area[..payload.len()].copy_from_slice(&payload);
    Ok(out)
}

/// What `patch` wrote into `binary` (an installed wrapper), if the marker is there once and its
/// area decodes as an install's configuration.
pub fn read(binary: &[u8]) -> Option<WrapConfig> {
    let (start, end) = area_bounds(binary).ok()?;
    decode(&binary[start..end]).ok().flatten()
}

/// Where the configuration area of `binary` is: after the marker, which must occur exactly once.
fn area_bounds(binary: &[u8]) -> Result<(usize, usize), String> {
    let start = match positions(binary, MARKER).as_slice() {
        [] => return Err("the stratus-wrap placeholder marker is not in this binary".to_string()),
        [one] => one + MARKER.len(),
        many => {
            return Err(format!(
                "the stratus-wrap placeholder marker occurs {} times in this binary; expected once",
                many.len()
            ));
        }
    };
    let end = start + AREA_LEN;
    if end > binary.len() {
        return Err("the binary ends inside the configuration area".to_string());
    }
    Ok((start, end))
}

/// Where `needle` starts in `haystack` (overlapping occurrences included).
fn positions(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// How many times `needle` occurs in `haystack`; used by tests and the installer's checks.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    positions(haystack, needle).len()
}

fn validate(cfg: &WrapConfig) -> Result<(), String> {
    for (key, path) in [
        ("runner", &cfg.runner),
        ("config", &cfg.config),
        ("wrapper", &cfg.wrapper),
        ("service_home", &cfg.service_home),
    ] {
        check_path(key, path)?;
    }
    let user = cfg.service_user.as_bytes();
    if user.is_empty() {
        return Err("service_user is empty".to_string());
    }
    if user.iter().any(|&b| b == 0 || b == b'\n') {
        return Err("service_user contains a NUL or a newline".to_string());
    }
    if user.iter().any(|b| b.is_ascii_control()) || cfg.service_user.contains('/') {
        return Err(format!(
            "service_user {:?} contains a control character or '/'",
            cfg.service_user
        ));
    }
    if cfg.service_uid == 0 {
        return Err("service_uid is 0: the service account must not be root".to_string());
    }
    if cfg.service_gid == 0 {
        return Err("service_gid is 0: the service account's group must not be root's".to_string());
    }
    Ok(())
}

/// A path in the configuration is absolute and plain: no NUL, no newline, no empty, `.` or `..`
/// component, no trailing slash, so its ancestors are exactly its lexical prefixes.
fn check_path(key: &str, path: &Path) -> Result<(), String> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.iter().any(|&b| b == 0 || b == b'\n') {
        return Err(format!("{key} path contains a NUL or a newline"));
    }
    let Some(rest) = bytes.strip_prefix(b"/") else {
        return Err(format!("{key} path {} is not absolute", path.display()));
    };
    if rest.is_empty() {
        return Err(format!("{key} path is /"));
    }
    for part in rest.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." || part == b".." {
            return Err(format!(
                "{key} path {} is not plain (empty, . or .. component, or trailing /)",
                path.display()
            ));
        }
    }
    Ok(())
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WrapConfig {
        WrapConfig {
            runner: "/opt/stratus/bin/stratus".into(),
            config: "/opt/stratus/etc/stratus/config.toml".into(),
            wrapper: "/opt/stratus/bin/stratus-wrap".into(),
            service_user: "stratus".into(),
            service_uid: 998,
            service_gid: 997,
            service_home: "/var/lib/stratus".into(),
        }
    }

    /// A fake binary: some code, the marker, the zero area, some more code.
    fn binary() -> Vec<u8> {
        let mut b = b"\x7fELF....code....".to_vec();
        b.extend_from_slice(MARKER);
        b.extend(std::iter::repeat_n(0u8, AREA_LEN));
        b.extend_from_slice(b"...more code...");
        b
    }

    fn area_of(patched: &[u8]) -> &[u8] {
        let (start, end) = area_bounds(patched).unwrap();
        &patched[start..end]
    }

    #[test]
    fn encode_is_key_value_lines_with_a_nul() {
        let payload = encode(&cfg()).unwrap();
        assert_eq!(
            payload,
            b"runner=/opt/stratus/bin/stratus\n\
              config=/opt/stratus/etc/stratus/config.toml\n\
              wrapper=/opt/stratus/bin/stratus-wrap\n\
              service_user=stratus\n\
              service_uid=998\n\
              service_gid=997\n\
              service_home=/var/lib/stratus\n\0"
        );
    }

    #[test]
    fn decode_round_trips_through_the_area() {
        let patched = patch(&binary(), &cfg()).unwrap();
        assert_eq!(patched.len(), binary().len());
        assert_eq!(decode(area_of(&patched)).unwrap(), Some(cfg()));
    }

    #[test]
    fn an_all_zero_area_is_not_installed() {
        assert_eq!(decode(&[0; AREA_LEN]).unwrap(), None);
        assert_eq!(decode(area_of(&binary())).unwrap(), None);
    }

    #[test]
    fn repatching_replaces_the_whole_area() {
        let long = WrapConfig {
            service_home: format!("/{}", "h".repeat(1000)).into(),
            ..cfg()
        };
        let once = patch(&binary(), &long).unwrap();
        let twice = patch(&once, &cfg()).unwrap();
        assert_eq!(decode(area_of(&twice)).unwrap(), Some(cfg()));
        assert_eq!(twice, patch(&binary(), &cfg()).unwrap());
        assert_eq!(read(&twice), Some(cfg()));
        assert_eq!(
            read(&binary()),
            None,
            "an unpatched binary reads as no install"
        );
        // The code around the area is untouched.
        assert!(twice.ends_with(b"...more code..."));
        assert!(twice.starts_with(b"\x7fELF....code...."));
    }

    #[test]
    fn patch_needs_the_marker_exactly_once() {
        let err = patch(b"no marker here", &cfg()).unwrap_err();
        assert!(err.contains("not in this binary"), "{err}");

        let mut two = binary();
        two.extend_from_slice(&binary());
        let err = patch(&two, &cfg()).unwrap_err();
        assert!(err.contains("occurs 2 times"), "{err}");

        let mut short = b"code".to_vec();
        short.extend_from_slice(MARKER);
        short.extend_from_slice(&[0; 10]);
        let err = patch(&short, &cfg()).unwrap_err();
        assert!(err.contains("ends inside"), "{err}");
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let big = WrapConfig {
            config: format!("/{}", "c".repeat(AREA_LEN)).into(),
            ..cfg()
        };
        let err = encode(&big).unwrap_err();
        assert!(err.contains("at most 4096"), "{err}");
        assert!(patch(&binary(), &big).is_err());
        // Exactly AREA_LEN bytes, terminator included, still fits.
        let fixed = encode(&cfg()).unwrap().len();
        let fill = AREA_LEN - fixed;
        let exact = WrapConfig {
            service_home: format!("/var/lib/stratus{}", "x".repeat(fill)).into(),
            ..cfg()
        };
        assert_eq!(encode(&exact).unwrap().len(), AREA_LEN);
        let patched = patch(&binary(), &exact).unwrap();
        assert_eq!(decode(area_of(&patched)).unwrap(), Some(exact));
    }

    #[test]
    fn relative_and_unplain_paths_are_refused() {
        for bad in [
            "opt/stratus/bin/stratus",
            "./stratus",
            "/",
            "/opt/../tmp/stratus",
            "/opt/./stratus",
            "/opt//stratus",
            "/opt/stratus/",
            "",
        ] {
            let c = WrapConfig {
                runner: bad.into(),
                ..cfg()
            };
            assert!(encode(&c).is_err(), "{bad:?} accepted");
        }
        let c = WrapConfig {
            service_home: "home/stratus".into(),
            ..cfg()
        };
        assert!(encode(&c).unwrap_err().contains("not absolute"));
    }

    #[test]
    fn nul_and_newline_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let nul = WrapConfig {
            wrapper: std::ffi::OsString::from_vec(b"/opt/a\0b".to_vec()).into(),
            ..cfg()
        };
        assert!(encode(&nul).unwrap_err().contains("NUL"));
        let newline = WrapConfig {
            config: "/opt/a\nrunner=/tmp/evil".into(),
            ..cfg()
        };
        assert!(encode(&newline).unwrap_err().contains("newline"));
        for user in ["stra\ntus", "stra\0tus", ""] {
            let c = WrapConfig {
                service_user: user.into(),
                ..cfg()
            };
            assert!(encode(&c).is_err(), "{user:?} accepted");
        }
    }

    #[test]
    fn root_as_the_service_account_is_refused() {
        let c = WrapConfig {
            service_uid: 0,
            ..cfg()
        };
        assert!(encode(&c).unwrap_err().contains("must not be root"));
        let c = WrapConfig {
            service_gid: 0,
            ..cfg()
        };
        assert!(encode(&c).is_err());
    }

    #[test]
    fn values_holding_the_marker_are_refused() {
        let c = WrapConfig {
            config: format!("/opt/{}", String::from_utf8_lossy(MARKER)).into(),
            ..cfg()
        };
        assert!(encode(&c).unwrap_err().contains("marker"));
    }

    #[test]
    fn decode_refuses_damaged_areas() {
        let mut area = encode(&cfg()).unwrap();
        area.resize(AREA_LEN, 0);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut a = area.clone();
                    a[AREA_LEN - 1] = b'x';
                    a
                },
                "after its terminator",
            ),
            (vec![b'a'; 16], "no NUL"),
            (b"runner=/a\0".to_vec(), "does not end with a newline"),
            (b"runner=/a\n\0".to_vec(), "config missing"),
            (b"runner=/a\nrunner=/b\n\0".to_vec(), "twice"),
            (b"shell=/bin/sh\n\0".to_vec(), "unknown configuration key"),
            (b"runner\n\0".to_vec(), "without '='"),
            (b"runner=/a".to_vec(), "no NUL"),
            (
                String::from_utf8(encode(&cfg()).unwrap())
                    .unwrap()
                    .replace("service_uid=998", "service_uid=-1")
                    .into_bytes(),
                "not a number",
            ),
            (
                String::from_utf8(encode(&cfg()).unwrap())
                    .unwrap()
                    .replace("runner=/opt", "runner=opt")
                    .into_bytes(),
                "not absolute",
            ),
        ];
        for (bytes, want) in cases {
            let err = decode(&bytes).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }
}
