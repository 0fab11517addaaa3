//! The runner: the process the setuid wrapper execs (`stratus runner --config FILE`, with the
//! service account's effective uid) to serve one request of a student. It trusts nothing the
//! caller controls:
//! - its environment is cut down to an allow-list before anything else runs (the wrapper already
//!   built a fresh one; this is the second fence), nothing is read from what is left of it, and
//!   the site config path comes from the argv the wrapper was installed with;
//! - the caller is the user of the real uid, and the caller's groups come from the group
//!   database; once known, every uid and gid becomes the service account's (`setresuid`), so the
//!   caller can no longer signal, stop or trace the runner; core dumps are off (memory holds
//!   secrets); the signals of the caller's terminal, which reach the runner whatever its uid
//!   (it is in the caller's job), are ignored, but for ^C and a hangup during a launch, which
//!   roll it back;
//! - it reads exactly one request, at most 1 MiB, and checks every field again; a profile is
//!   resolved by name only, in the install's profile directories;
//! - what it reads that decides what it does (the policy, the profiles) must be as safe as the
//!   config the wrapper checked.
//!
//! The request is then served by `Service::serve`, the same code a single-user install runs in
//! its own process; the answer goes out as JSON lines (`service::protocol::Line`).

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::core::error::Error;
use crate::core::printer::Printer;
use crate::service::caller::Caller;
use crate::service::protocol::{Line, MAX_REQUEST, Request, Response, WireError};
use crate::service::{Service, Settings};

/// The entry point of `stratus runner --config FILE`.
pub fn main(config: &Path, verbose: u8) -> ExitCode {
    // Before any thread exists: cut the environment down, no core dumps, and the caller's
    // terminal can no longer stop or end this process (a launch's own handler turns ^C and a
    // hangup into a rollback).
    crate::sys::keep_only_environment(&["PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG"], "LC_");
    let _ = crate::sys::no_core_dumps();
    let ignored = crate::sys::ignore_terminal_signals();
    let printer = Printer::lines();
    if let Err(e) = ignored {
        return fail(
            &printer,
            &Error::runtime(format!("cannot ignore the terminal's signals: {e}")),
        );
    }
    // Logs go to stderr (the caller's terminal, through the wrapper); the answer is the JSON
    // lines on stdout.
    crate::init_logging(None, verbose);
    let caller = match Caller::from_real_uid() {
        Ok(c) => c,
        Err(e) => return fail(&printer, &e),
    };
    // The caller is known: from now on every id is the service account's, so the caller can
    // neither signal nor trace this process.
    if let Err(e) = crate::sys::become_effective_user() {
        return fail(
            &printer,
            &Error::runtime(format!("cannot switch to the service account: {e}")),
        );
    }
    // A request that cannot be read is refused, and audited once the install is known to be
    // safe and the store is open (below).
    let request = read_request();
    let settings = match Settings::for_service(config) {
        Ok(s) => s,
        Err(e) => return fail(&printer, &e),
    };
    if let Some(problem) = crate::service::inputs::unsafe_inputs(&settings)
        .into_iter()
        .next()
    {
        return fail(&printer, &Error::runtime(problem));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &printer,
                &Error::runtime(format!("cannot start the async runtime: {e}")),
            );
        }
    };
    let printer = Arc::new(printer);
    let code = runtime.block_on(serve(settings, printer, &caller, request));
    runtime.shutdown_background();
    code
}

/// Serves the request (or refuses the one that could not be read) through the service's one
/// entry point, as the class service does.
async fn serve(
    settings: Settings,
    printer: Arc<Printer>,
    caller: &Caller,
    request: Result<Request, String>,
) -> ExitCode {
    match Service::new(settings, printer.clone()) {
        Ok(service) => ExitCode::from(service.answer(caller, request).await),
        Err(e) => fail(&printer, &e),
    }
}

/// Answers with the error, and ends with its exit code.
fn fail(printer: &Printer, e: &Error) -> ExitCode {
    let _ = printer.line(&Line::<Response>::Error {
        error: WireError::of(e),
    });
    ExitCode::from(e.exit_code())
}

/// One request from stdin: at most `MAX_REQUEST` bytes of JSON.
fn read_request() -> Result<Request, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_REQUEST as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    crate::service::protocol::parse_request(&buf).map_err(|e| {
        if e == "no request" {
            "no request on stdin".to_owned()
        } else {
            e
        }
    })
}
