//! stratus: launch Hadoop clusters on EC2, or as local processes, for a class.
//!
//! The binary is a thin shell over [`main`]; everything lives here so tests can drive it.
//! See `docs/architecture.md` for the layers (cli -> service -> accounting, policy -> cluster ->
//! store, templates -> config -> core, sys), the rule that imports only go down, and where each
//! concern lives.
#![deny(clippy::print_stdout, clippy::print_stderr)]
// Unsafe code lives in `sys` only, each block with a SAFETY comment.
#![deny(unsafe_code)]
// Errors carry node names and addresses for their messages; they are built on cold paths only,
// so their size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

pub mod accounting;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod core;
pub(crate) mod policy;
pub(crate) mod runner;
pub mod service;
pub mod store;
pub mod sys;
pub mod templates;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::core::printer::{MakeLogWriter, Printer};

/// Parses the command line, runs the command, prints any error, and picks the exit code.
pub fn main() -> ExitCode {
    // The runner, as the setuid wrapper execs it, before clap: its main thread runs on the
    // caller's RLIMIT_STACK, which argument parsing alone can exceed (see `runner::invoked`).
    if let Some(config) = runner::invoked() {
        return runner::main(&config, 0);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Usage errors are bad input (2); --help and --version are not errors.
            return ExitCode::from(if e.use_stderr() {
                crate::core::error::exit::BAD_INPUT
            } else {
                crate::core::error::exit::OK
            });
        }
    };
    if let Command::Node { dir } = &cli.command {
        init_logging(None, 1);
        return cluster::provider::local::run_node(dir);
    }
    if let Command::Runner | Command::Serve = &cli.command {
        let Some(site) = &cli.config else {
            let _ = e_print(
                "error: the runner and the class service need --config, the install's site config",
            );
            return ExitCode::from(crate::core::error::exit::BAD_INPUT);
        };
        if let Command::Serve = &cli.command {
            return service::serve::main(site, &crate::core::env::Environment::read(), cli.verbose);
        }
        return runner::main(site, cli.verbose);
    }
    let printer = Arc::new(Printer::new(cli.command.json(), cli.quiet));
    init_logging(Some(printer.clone()), cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(service::RUNTIME_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            printer.error(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(crate::core::error::exit::FAILURE);
        }
    };
    let env = crate::core::env::Environment::read();
    let result = runtime.block_on(Box::pin(cli::run(cli, env, printer.clone())));
    // Do not wait for lingering blocking tasks (a stdin read, say).
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) if e.is_said() => ExitCode::from(e.exit_code()),
        Err(e) => {
            printer.error(&crate::core::error::render(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// One line on stderr, outside the printer (before there is one).
fn e_print(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{line}")
}

/// Logs go to stderr, through the printer when there is one (so they never tear a progress
/// bar). `-v` raises the level; `RUST_LOG` overrides it.
pub(crate) fn init_logging(printer: Option<Arc<Printer>>, verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("stratus={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match printer {
        Some(p) => builder.with_writer(MakeLogWriter(p)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
