//! The setuid wrapper for stratus's privileged launch path.
//!
//! Not built out yet: until the privileged-path issue lands this binary refuses to run, so a
//! premature setuid install can never do anything.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("setuid-wrap: the privileged launch path is not implemented in this version");
    ExitCode::from(2)
}
