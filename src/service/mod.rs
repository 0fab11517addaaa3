//! The service: what serves a request of the privileged path for a caller, whether in this
//! process (a single-user install) or as the runner the setuid wrapper execs.

pub mod app;
pub mod caller;
pub mod protocol;
pub mod quota;
pub mod serve;
