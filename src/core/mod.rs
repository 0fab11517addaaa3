//! The bottom layer: the value types every other layer speaks in (names, owners, tags, states,
//! times), the error type and its kinds, and the output sink. It imports nothing of the project
//! but `sys`.

pub mod error;
pub mod model;
pub mod printer;
