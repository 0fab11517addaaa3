//! `stratus serve`: the class service. (Being built: see docs/architecture.md.)

use std::process::ExitCode;
use std::sync::Arc;

use super::Settings;
use crate::core::error::Error;
use crate::core::printer::Printer;

pub async fn run(_settings: Settings, _printer: Arc<Printer>) -> Result<ExitCode, Error> {
    Err(Error::invalid(
        "stratus serve is not available in this build yet",
    ))
}
