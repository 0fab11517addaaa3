//! `stratus serve`: the class service. One long-lived process, as the service account, outside
//! every student's cgroup (started by systemd's `stratus.socket` and `stratus.service`, or any
//! supervisor), serving the whole class on a Unix socket:
//! - the caller is the uid the kernel reports for the connection (`SO_PEERCRED`), never
//!   anything the request says; their groups come from the group database;
//! - each connection is one request, in a task of its own: one line of JSON, read within
//!   `REQUEST_TIMEOUT`, then the same lines the runner writes (progress, status, warnings, then
//!   the result or the error), through the same entry point (`Service::answer`);
//! - a client that goes (its CLI killed, or ^C: the connection closed) stops its launch as ^C
//!   stops the runner's: the launch rolls back. A client that stops reading (frozen) holds
//!   nothing: its lines queue in memory, and no lock or transaction waits for it;
//! - every request shares one store, one set of providers (one EC2 client, so one adaptive
//!   rate limiter for the class), and the service's own timers run the snapshot and the reaper;
//! - a restart is a crash: at start it reconciles everything, finishing or rolling back what was
//!   in flight.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::caller::Caller;
use super::protocol::{MAX_REQUEST, Request, parse_request};
use super::{Service, Settings};
use crate::config::Mode;
use crate::core::env::Environment;
use crate::core::error::Error;
use crate::core::printer::Printer;

/// How long a client has to send its request once connected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write to a client may take before the client counts as gone (its lines are
/// dropped; its request goes on to its end).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The entry point of `stratus serve --config FILE`.
pub fn main(config: &Path, env: &Environment, verbose: u8) -> ExitCode {
    // Nothing of whoever started it reaches the service (a supervisor's environment is its
    // own, but a hand-started service should not depend on that).
    crate::sys::keep_only_environment(&["PATH", "LANG"], "LC_");
    let _ = crate::sys::no_core_dumps();
    crate::init_logging(None, verbose);
    let printer = Arc::new(Printer::quiet());
    let fail = |e: &Error| {
        printer.error(&crate::core::error::render(e));
        ExitCode::from(e.exit_code())
    };
    let settings = match Settings::for_service(config) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Some(problem) = super::inputs::unsafe_inputs(&settings).into_iter().next() {
        return fail(&Error::runtime(problem));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(super::RUNTIME_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&Error::runtime(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let r = runtime.block_on(run(settings, env.listen, printer.clone()));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Serves until SIGTERM or SIGINT.
async fn run(
    settings: Settings,
    listen: Option<(u32, u32)>,
    printer: Arc<Printer>,
) -> Result<(), Error> {
    if settings.config.mode != Mode::MultiUser {
        return Err(Error::invalid(
            "stratus serve is the class service of a multi-user install: the site config must say mode = \"multi-user\"",
        ));
    }
    let owner = settings.state_dir.clone();
    let me = crate::sys::effective_uid();
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(&owner)
            .map_err(|e| {
                Error::runtime(format!(
                    "cannot read the state directory {}",
                    owner.display()
                ))
                .with_source(e)
            })?
            .uid();
        if uid != me {
            return Err(Error::invalid(format!(
                "stratus serve runs as the service account that owns {} (uid {uid}), not as uid {me}",
                owner.display()
            )));
        }
    }
    let listener = listener(&settings, listen)?;
    let service = Service::new(settings, printer)?;
    let own = Caller::of_uid(me)?;
    service.reconcile_at_start().await;
    let timers = service.start_timers(&own);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tracing::info!(socket = ?listener.local_addr().ok(), "serving");
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone_shared();
                    // On the heap: a launch's future is large.
                    tasks.spawn(Box::pin(async move { connection(&service, stream).await }));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Launches in flight heard the signal too, and roll back; give them the time to.
    tracing::info!("stopping: {} requests in flight", tasks.len());
    for t in timers {
        t.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// The listening socket: the one the supervisor passed, else `[service] socket`, bound here.
fn listener(
    settings: &Settings,
    listen: Option<(u32, u32)>,
) -> Result<tokio::net::UnixListener, Error> {
    let activated = match listen {
        Some((pid, fds)) => crate::sys::activated_listener(pid, fds).map_err(|e| {
            Error::runtime("the socket passed by the supervisor (LISTEN_FDS) is not usable")
                .with_source(e)
        })?,
        None => None,
    };
    let std_listener = match activated {
        Some(l) => l,
        None => bind(&settings.config.socket())?,
    };
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(std_listener)?)
}

/// Binds `path` (a stale socket of an earlier run is replaced), readable and writable by
/// everyone: callers are told apart by their uid, not by the socket's mode.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let cannot = |e: std::io::Error| {
        Error::runtime(format!(
            "cannot listen on {} (its directory must exist and be writable by the service account, or start stratus serve from stratus.socket)",
            path.display()
        ))
        .with_source(e)
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(Error::runtime(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::runtime(format!(
                "another stratus serve already listens on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(cannot)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(cannot)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(cannot)?;
    Ok(l)
}

/// One connection: one request, answered.
async fn connection(service: &Service, stream: UnixStream) {
    let caller = match stream.peer_cred() {
        Ok(cred) => Caller::of_uid(cred.uid()),
        Err(e) => Err(Error::runtime("cannot tell who connected").with_source(e)),
    };
    let (rd, mut wr) = stream.into_split();
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            // Nobody to audit as: say why, and go.
            let line =
                serde_json::to_string(&super::protocol::Line::<super::protocol::Response>::Error {
                    error: super::protocol::WireError::of(&e),
                })
                .unwrap_or_default();
            let _ =
                tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(format!("{line}\n").as_bytes()))
                    .await;
            return;
        }
    };
    let mut rd = BufReader::new(rd);
    let request = read_request(&mut rd, REQUEST_TIMEOUT).await;
    let (lines, writer) = line_writer(wr);
    let printer = Arc::new(Printer::lines_to(Box::new(move |line| {
        // A client gone, or slow: its lines are dropped, never waited for.
        let _ = lines.send(line.to_owned());
        Ok(())
    })));
    let (gone_tx, gone) = tokio::sync::watch::channel(false);
    // The client goes when it closes its side (^C, or its process ended): a launch of it stops.
    let watcher = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = gone_tx.send(true);
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    let request_service = service.for_request(printer, gone);
    request_service.answer(&caller, request).await;
    // The last line is queued: let the writer finish, on its own time.
    drop(request_service);
    watcher.abort();
    let _ = writer.await;
}

/// The request: one line of JSON, within `REQUEST_TIMEOUT`, of at most `MAX_REQUEST` bytes.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
    within: Duration,
) -> Result<Request, String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        within,
        (&mut *rd)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut buf),
    )
    .await;
    match read {
        Err(_) => Err(format!(
            "no request within {} seconds",
            within.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => parse_request(&buf),
    }
}

/// The lines of one request, queued and written to the client in order; a write that takes
/// longer than `WRITE_TIMEOUT` ends the writing (the client is gone or frozen).
fn line_writer(
    mut wr: tokio::net::unix::OwnedWriteHalf,
) -> (
    tokio::sync::mpsc::UnboundedSender<String>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(line.as_bytes())).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let _ = wr.shutdown().await;
    });
    (tx, task)
}

impl Service {
    /// Another handle on the same install (the store, the profiles, the providers).
    fn clone_shared(&self) -> Service {
        Service {
            shared: self.shared.clone(),
            printer: self.printer.clone(),
            hangup: None,
        }
    }

    /// A restart is a crash: what was in flight is finished or rolled back, everyone's.
    async fn reconcile_at_start(&self) {
        let r: Result<(), Error> = async {
            let provider = self.provider(self.config().provider).await?;
            crate::cluster::reconcile::reconcile(
                self.ctx(),
                provider.as_ref(),
                None,
                &super::usage::automatic_reconcile(&super::LoadedPolicy::load(self.settings())),
            )
            .await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(
                "could not reconcile at start: {}",
                crate::core::error::one_line(&e)
            );
        }
    }

    /// The snapshot and the reaper on the service's own timers (`[service] snapshot_minutes`,
    /// `reap_minutes`), as the service account.
    fn start_timers(&self, own: &Caller) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(s) = &self.config().service else {
            return Vec::new();
        };
        let jobs = [
            (s.snapshot_minutes, Request::Snapshot {}),
            (
                s.reap_minutes,
                Request::Reap {
                    dry_run: false,
                    // The policy's `[reaper] orphans` decides.
                    orphans: None,
                },
            ),
        ];
        jobs.into_iter()
            .filter_map(|(minutes, request)| minutes.map(|m| (m, request)))
            .map(|(minutes, request)| {
                let service = self.clone_shared();
                let own = own.clone();
                tokio::spawn(async move {
                    let mut every =
                        tokio::time::interval(Duration::from_secs(u64::from(minutes) * 60));
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        if let Err(e) = Box::pin(service.serve(&own, request.clone())).await {
                            tracing::error!(
                                "the timer's {} failed: {}",
                                request.action(),
                                crate::core::error::one_line(&e)
                            );
                        }
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_one_line_read_in_time_and_bounded() {
        let within = REQUEST_TIMEOUT;
        let ok = br#"{"action":"quota"}
"#;
        let mut rd = BufReader::new(&ok[..]);
        assert_eq!(
            read_request(&mut rd, within).await,
            Ok(Request::Quota { owner: None })
        );

        // Nothing comes: refused once the time is up.
        let (client, server) = tokio::io::duplex(64);
        let mut rd = BufReader::new(server);
        let started = std::time::Instant::now();
        let e = read_request(&mut rd, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e, "no request within 0.05 seconds");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(client);

        let big = vec![b'x'; MAX_REQUEST + 10];
        let mut rd = BufReader::new(&big[..]);
        let e = read_request(&mut rd, within).await.unwrap_err();
        assert!(e.contains("larger than"), "{e}");

        let mut rd = BufReader::new(&b"{\"action\":\"rm\"}\n"[..]);
        let e = read_request(&mut rd, within).await.unwrap_err();
        assert!(e.starts_with("malformed request"), "{e}");
    }
}
