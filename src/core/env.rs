//! The process environment, read once, at the top (`lib.rs`), into plain data that is passed
//! down: below the CLI nothing reads `std::env`. The runner of a multi-user install never reads
//! it at all (it builds `Environment::empty()` after cutting its own environment down), so
//! nothing the caller sets reaches a privileged process by accident.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `STRATUS_CONFIG`: the site config file; without it, the config of the install this
    /// binary belongs to (`core::install_area`), if it is an installed copy.
    pub config: Option<PathBuf>,
    /// `STRATUS_HOME`: the state directory.
    pub stratus_home: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// How the program was started, for hints a user can copy (`stratus`, `cargo run --`).
    pub argv0: Option<String>,
    /// Run by `cargo run` (cargo sets `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME`).
    pub under_cargo: bool,
    pub path: Option<OsString>,
    /// Debug builds only: `STRATUS_TEST_PAUSE_AT` and `STRATUS_TEST_NOW` (tests).
    pub test_pause_at: Option<String>,
    pub test_now: Option<String>,
}

impl Environment {
    /// This process's environment (a user's own command).
    pub fn read() -> Self {
        let path_var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let test = |k: &str| {
            if cfg!(debug_assertions) {
                std::env::var(k).ok()
            } else {
                None
            }
        };
        Self {
            config: path_var("STRATUS_CONFIG").or_else(crate::core::install_area::config),
            stratus_home: path_var("STRATUS_HOME"),
            xdg_data_home: path_var("XDG_DATA_HOME"),
            home: path_var("HOME"),
            argv0: std::env::args_os()
                .next()
                .map(|a| a.to_string_lossy().into_owned()),
            under_cargo: std::env::var_os("CARGO_MANIFEST_DIR").is_some()
                && std::env::var("CARGO_PKG_NAME").as_deref() == Ok("stratus"),
            path: std::env::var_os("PATH"),
            test_pause_at: test("STRATUS_TEST_PAUSE_AT"),
            test_now: test("STRATUS_TEST_NOW"),
        }
    }

    /// Nothing: what a privileged process reads of its caller's environment.
    pub fn empty() -> Self {
        Self::default()
    }
}
