//! `stratus-wrap`, the only setuid file of stratus: the configuration area and the build
//! marker, then the library.
//!
//! The installer patches [`CONFIG_AREA`] in the installed copy of this binary (see
//! `setuid_wrap::placeholder`); nothing else decides what the wrapper runs. The area is read
//! with volatile loads, so the compiler cannot fold the zeros it was built with.
//! [`BUILD_MARKER`] tells the installer this file is the wrapper (`setuid_wrap::identity`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use setuid_wrap::identity::{BUILD_MARKER_LEN, BUILD_MARKER_REVERSED};
use setuid_wrap::placeholder::{AREA_LEN, MARKER};

const LEN: usize = MARKER.len() + AREA_LEN;

/// `MARKER` followed by `AREA_LEN` zero bytes, built at compile time. The marker's bytes must
/// appear in the binary only here, so this file uses `MARKER` in nothing but constants.
const fn placeholder() -> [u8; LEN] {
    let mut area = [0u8; LEN];
    let mut i = 0;
    while i < MARKER.len() {
        area[i] = MARKER[i];
        i += 1;
    }
    area
}

/// The build marker, turned the right way round at compile time: only this binary holds it.
const fn build_marker() -> [u8; BUILD_MARKER_LEN] {
    let mut m = [0u8; BUILD_MARKER_LEN];
    let mut i = 0;
    while i < BUILD_MARKER_LEN {
        m[i] = BUILD_MARKER_REVERSED[BUILD_MARKER_LEN - 1 - i];
        i += 1;
    }
    m
}

/// The configuration area that `stratus admin install` patches.
#[used]
static CONFIG_AREA: [u8; LEN] = placeholder();

/// What `stratus admin install` and `admin doctor` look for before they trust this file.
#[used]
static BUILD_MARKER: [u8; BUILD_MARKER_LEN] = build_marker();

fn main() -> ExitCode {
    setuid_wrap::start::run(&CONFIG_AREA[MARKER.len()..])
}
