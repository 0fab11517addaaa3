//! The setuid wrapper of stratus: the logic of `stratus-wrap`, and what its installer needs.
//!
//! Students launch clusters through a privileged path: `stratus-wrap`, setuid to the service
//! account that holds the AWS credentials, cleans up everything the caller's process could pass
//! on and execs the runner (`stratus runner --config <site config>`). This library holds the
//! pure policy (the patched [`placeholder`] configuration, the [`env`](mod@env) allow-list, the
//! [`limits`] table, the [`safepath`] check, the [`cgroup`] check, the [`caps`] xattr, the
//! wrapper's [`identity`]), the start sequence in [`start`], and every system call in [`sys`],
//! the only module with `unsafe` code. The installer (`stratus admin install`) uses
//! [`identity::check_build`], [`placeholder::patch`] and [`setgid_capability_xattr`].
#![deny(unsafe_code)]

pub mod caps;
pub mod cgroup;
pub mod env;
pub mod identity;
pub mod limits;
pub mod placeholder;
pub mod safepath;
pub mod start;
#[allow(unsafe_code)]
pub mod sys;

pub use caps::{CAPABILITY_XATTR, setgid_capability_xattr};
pub use env::child_env;
pub use placeholder::WrapConfig;
