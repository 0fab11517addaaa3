//! The bottom layer: the value types every other layer speaks in (names, owners, tags, states,
//! times), the error type and its kinds, money, input parsing, escaping, file writing, the
//! backoff every wait uses, the output sink, and which install this binary belongs to. It
//! imports nothing of the project but `sys`.

pub(crate) mod backoff;
pub mod env;
pub mod error;
pub mod files;
pub(crate) mod input;
pub(crate) mod install_area;
pub mod model;
pub mod money;
pub mod printer;
pub mod secret;
pub(crate) mod text;
