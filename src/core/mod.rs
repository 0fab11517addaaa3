//! The bottom layer: the value types every other layer speaks in (names, owners, tags, states,
//! times), the error type and its kinds, money, input parsing, escaping, file writing, the
//! backoff every wait uses, and the output sink. It imports nothing of the project but `sys`.

pub(crate) mod backoff;
pub mod env;
pub mod error;
pub mod files;
pub(crate) mod input;
pub mod model;
pub mod money;
pub mod printer;
pub(crate) mod text;
