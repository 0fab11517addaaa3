//! How the installer knows a file is the wrapper: a build marker only the wrapper's binary
//! holds, and a trial run.
//!
//! The placeholder marker ([`crate::placeholder::MARKER`]) is not enough: it is a constant of
//! this library, so every binary that links the library and patches or reads a wrapper holds it
//! too (the stratus CLI, cargo's test harnesses). Installing one of those setuid would give
//! every student a program with the service account's rights that was never meant to be one.
//! So the wrapper's binary also holds a build marker, made by `main.rs` of the wrapper crate at
//! compile time from [`BUILD_MARKER_REVERSED`]; this library keeps only the reversed bytes and
//! builds the marker at run time ([`build_marker`]), so a binary that merely links the library
//! never holds it. `admin install` refuses a file without the build marker before running
//! anything, then runs the file once, unprivileged (not as root, not setuid), with
//! [`TRIAL_ARG`], and installs it only if it answers exactly [`ANSWER`].
#![forbid(unsafe_code)]

/// The only argument the wrapper does not ignore: it prints [`ANSWER`] and exits 0, before it
/// reads its configuration or checks who it runs as.
pub const TRIAL_ARG: &str = "--is-stratus-wrap";

/// What the wrapper answers to [`TRIAL_ARG`]: its version and the layout of its configuration
/// area, so an installer of another build refuses it.
pub const ANSWER: &str = concat!(
    "stratus-wrap ",
    env!("CARGO_PKG_VERSION"),
    " (config area V1)"
);

/// The build marker, byte for byte reversed: `@@STRATUS-WRAP-BUILD-V1@@`.
pub const BUILD_MARKER_REVERSED: &[u8] = b"@@1V-DLIUB-PARW-SUTARTS@@";

/// The length of the build marker.
pub const BUILD_MARKER_LEN: usize = BUILD_MARKER_REVERSED.len();

/// The build marker, made at run time (so that the bytes are not a constant of whoever calls
/// this).
pub fn build_marker() -> Vec<u8> {
    let mut m = std::hint::black_box(BUILD_MARKER_REVERSED).to_vec();
    m.reverse();
    m
}

/// Whether `binary` is a build of the wrapper: the build marker exactly once, and the
/// placeholder marker exactly once. The error says what is wrong, for `admin install` and
/// `admin doctor`.
pub fn check_build(binary: &[u8]) -> Result<(), String> {
    match crate::placeholder::count(binary, &build_marker()) {
        1 => {}
        0 => {
            return Err(
                "it is not a stratus-wrap build: it lacks the wrapper's build marker \
                 (a program that only links the setuid-wrap library, such as the stratus CLI or \
                 a test harness, holds the placeholder marker but not this one)"
                    .to_string(),
            );
        }
        n => {
            return Err(format!(
                "it holds the wrapper's build marker {n} times; a wrapper holds it once"
            ));
        }
    }
    match crate::placeholder::count(binary, crate::placeholder::MARKER) {
        1 => Ok(()),
        n => Err(format!(
            "it holds the placeholder marker {n} times; a wrapper holds it once"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placeholder::{AREA_LEN, MARKER};

    #[test]
    fn the_marker_reads_forwards() {
        // In lower case: the marker itself must not be a constant of this test binary.
        let marker = String::from_utf8(build_marker()).unwrap();
        assert_eq!(marker.to_lowercase(), "@@stratus-wrap-build-v1@@");
        assert_eq!(build_marker().len(), BUILD_MARKER_LEN);
    }

    #[test]
    fn a_build_needs_both_markers_once() {
        let mut wrapper = b"\x7fELF".to_vec();
        wrapper.extend_from_slice(&build_marker());
        wrapper.extend_from_slice(MARKER);
        wrapper.extend(std::iter::repeat_n(0, AREA_LEN));
        check_build(&wrapper).unwrap();

        let mut harness = b"\x7fELF".to_vec();
        harness.extend_from_slice(MARKER);
        let err = check_build(&harness).unwrap_err();
        assert!(err.starts_with("it is not a stratus-wrap build"), "{err}");

        let mut twice = wrapper.clone();
        twice.extend_from_slice(&build_marker());
        assert!(check_build(&twice).unwrap_err().contains("2 times"));

        let mut no_area = b"\x7fELF".to_vec();
        no_area.extend_from_slice(&build_marker());
        assert!(check_build(&no_area).unwrap_err().contains("placeholder"));
    }

    #[test]
    fn this_test_binary_does_not_hold_the_build_marker() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(crate::placeholder::count(&me, &build_marker()), 0);
        assert!(check_build(&me).is_err());
    }
}
