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
//! - it reads exactly one request, at most 1 MiB, within 10 s (a request parked on a FIFO the
//!   caller holds open would otherwise keep a process of the service account alive for as long
//!   as the caller likes), and checks every field again; a profile is resolved by name only, in
//!   the install's profile directories;
//! - its work runs on a thread of its own with a stack of a fixed size ([`WORK_STACK`]), and the
//!   async runtime's threads have one too ([`RUNTIME_STACK`]): the caller's `RLIMIT_STACK`
//!   sizes the main thread alone, which only starts that thread and waits for it (so the
//!   wrapper's minimum is what that needs, measured: see `setuid_wrap::limits`);
//! - what it reads that decides what it does (the policy, the profiles) must be as safe as the
//!   config the wrapper checked.
//!
//! The request is then served by `Service::serve`, the same code a single-user install runs in
//! its own process; the answer goes out as JSON lines (`service::protocol::Line`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::core::error::Error;
use crate::core::printer::Printer;
use crate::service::caller::Caller;
use crate::service::protocol::{Line, MAX_REQUEST, Request, Response, WireError};
use crate::service::{Service, Settings};

/// The stack of the thread that serves the request. A launch through the runner needed
/// between 1280 and 1408 KiB on the main thread of a debug build (where the wrapper's
/// `RLIMIT_STACK` minimum of 1 MiB let it overflow after RunInstances), and a configured launch
/// of the local provider between 1.5 and 2 MiB: 16 MiB leaves eight times that. It is address
/// space, not memory: only the pages a launch touches are ever backed.
pub const WORK_STACK: usize = 16 << 20;

pub use crate::service::RUNTIME_STACK;

/// How long the runner waits for a whole request on stdin.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The config path when this process was started exactly as the wrapper starts the runner
/// (`stratus runner --config FILE`, nothing else), so that `lib::main` can skip argument
/// parsing: clap's parser of a debug build overflowed a 512 KiB main thread by itself.
pub fn invoked() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    let (runner, flag, config, rest) = (args.next()?, args.next()?, args.next()?, args.next());
    (runner == "runner" && flag == "--config" && rest.is_none()).then(|| PathBuf::from(config))
}

/// The entry point of `stratus runner --config FILE`.
pub fn main(config: &Path, verbose: u8) -> ExitCode {
    // Before any thread exists: cut the environment down, no core dumps, and the caller's
    // terminal can no longer stop or end this process (a launch's own handler turns ^C and a
    // hangup into a rollback).
    crate::sys::keep_only_environment(&["PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG"], "LC_");
    let _ = crate::sys::no_core_dumps();
    let ignored = crate::sys::ignore_terminal_signals();
    if let Err(e) = ignored {
        return fail(
            &Printer::lines(),
            &Error::runtime(format!("cannot ignore the terminal's signals: {e}")),
        );
    }
    // The caller's RLIMIT_STACK sizes this thread; everything else runs on one whose size is
    // fixed here.
    let config: PathBuf = config.to_path_buf();
    let work = std::thread::Builder::new()
        .name("runner".into())
        .stack_size(WORK_STACK)
        .spawn(move || work(&config, verbose));
    match work.map(|t| t.join()) {
        Ok(Ok(code)) => code,
        // The panic was reported on stderr by the default hook.
        Ok(Err(_)) => ExitCode::from(101),
        Err(e) => fail(
            &Printer::lines(),
            &Error::runtime(format!("cannot start the runner's thread: {e}")),
        ),
    }
}

/// Everything the runner does once its process state is safe: on a thread of [`WORK_STACK`].
fn work(config: &Path, verbose: u8) -> ExitCode {
    let printer = Printer::lines();
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
    let request = read_request(REQUEST_TIMEOUT);
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
        .thread_stack_size(RUNTIME_STACK)
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
    // On the heap: a launch's future is large, and block_on would keep it on this stack.
    let code = runtime.block_on(Box::pin(serve(settings, printer, &caller, request)));
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

/// One request from stdin: at most `MAX_REQUEST` bytes of JSON, whole within `limit`. The read
/// runs on a thread of its own: a read(2) blocked on a pipe or FIFO cannot be given a deadline
/// (and a poll(2) first would not do, since another process of the caller may drain what it
/// saw), so after `limit` the runner refuses and ends, the reader still blocked.
fn read_request(limit: Duration) -> Result<Request, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("request".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let _ = tx.send(read_stdin());
        })
        .map_err(|e| format!("cannot start reading the request: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no whole request on stdin within {} s; refused",
            limit.as_secs()
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err("cannot read the request: its reader ended".into())
        }
    }
}

/// What `read_request` reads: all of stdin, at most `MAX_REQUEST` bytes, parsed.
fn read_stdin() -> Result<Request, String> {
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
