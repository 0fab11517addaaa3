//! The CLI's side of the service: one client with two backends, decided once, here. In a
//! single-user install (and for the service account's own cron jobs) the service runs in this
//! process; in a multi-user install every other user's request goes through the installed
//! setuid wrapper to the runner, whose progress is drawn as this CLI's own bars, its status
//! lines and warnings printed, and its typed answer returned.
//!
//! Key custody: an answer that carries a cluster's private key (a launch, a reach) carries it
//! for its owner alone. Through the wrapper it is kept in the owner's own state directory
//! (`remote/`, mode 0600), and `login`, `exec`, `push` and `proxy` use it from there, as the
//! owner; in-process the key is already in the state directory the service writes.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use crate::cluster::keys::ClusterKeys;
use crate::config::{SshConfig, Transport};
use crate::core::error::{Error, Kind};
use crate::core::printer::{Event, Printer};
use crate::service::caller::Caller;
use crate::service::protocol::{ClusterView, Launched, Line, Request, Response};
use crate::service::{Service, Settings};
use crate::store::Store;

/// Where requests are served.
pub enum Backend {
    /// In this process, with this user's (or the service account's) own rights.
    InProcess(Box<Service>),
    /// By the runner, through the installed setuid wrapper at this path. The caller's own
    /// state directory still holds the keys the runner hands over, and its database is opened
    /// as in a single-user install, so a link planted there is refused before anything is
    /// written beside it.
    Wrapper { path: PathBuf, _own_store: Store },
    /// By the class service, on its Unix socket, run by the service account of this uid (the
    /// owner of the install's state directory: a socket answered by anyone else is refused).
    Socket {
        path: PathBuf,
        service_uid: u32,
        _own_store: Store,
    },
}

pub struct Client {
    backend: Backend,
    caller: Caller,
    printer: Arc<Printer>,
    /// This user's own state directory (where keys handed over through the wrapper are kept).
    state_dir: PathBuf,
    /// How this user's own SSH connections are made (`login`, `exec`, `push`, `proxy`).
    ssh: SshConfig,
    /// The site's `[ec2]` table and this user's trust, for the calls a user makes with their
    /// own new key (`identity rotate` checks it works).
    ec2: Option<crate::config::Ec2Config>,
    trust: crate::config::Trust,
}

impl Client {
    /// The client for `settings`: through the wrapper in a multi-user install (but for the
    /// service account itself), else the service in this process.
    pub fn new(settings: Settings, printer: Arc<Printer>) -> Result<Self, Error> {
        let caller = Caller::from_real_uid()?;
        let state_dir = settings.state_dir.clone();
        let ssh = settings.config.ssh.clone();
        let ec2 = settings.config.ec2.clone();
        let trust = settings.trust.clone();
        let backend = if settings.through_wrapper() {
            let own_store = Store::open_in(&state_dir)?;
            match settings.config.transport() {
                Transport::Service => Backend::Socket {
                    path: settings.config.socket(),
                    service_uid: service_uid(&settings)?,
                    _own_store: own_store,
                },
                Transport::Setuid => Backend::Wrapper {
                    path: settings.config.wrapper.clone().ok_or_else(|| {
                        Error::invalid("the site config has mode = \"multi-user\" but no wrapper")
                    })?,
                    _own_store: own_store,
                },
            }
        } else {
            Backend::InProcess(Box::new(Service::new(settings, printer.clone())?))
        };
        Ok(Self {
            backend,
            caller,
            printer,
            state_dir,
            ssh,
            ec2,
            trust,
        })
    }

    /// This user's own state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The site's `[ec2]` table, and the trust this user's own calls run with.
    pub fn ec2(&self) -> Option<(&crate::config::Ec2Config, &crate::config::Trust)> {
        self.ec2.as_ref().map(|e| (e, &self.trust))
    }

    /// One TCP connect plus SSH handshake, at most.
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ssh.connect_timeout_secs.max(1))
    }

    /// SSH sessions in flight when fanning out over nodes.
    pub fn max_parallel(&self) -> usize {
        self.ssh.max_parallel
    }

    pub fn printer(&self) -> &Printer {
        &self.printer
    }

    /// Sends `request` to the service and returns its answer.
    pub async fn call(&self, request: Request) -> Result<Response, Error> {
        match &self.backend {
            Backend::InProcess(service) => service.serve(&self.caller, request).await,
            Backend::Wrapper { path, .. } => {
                let (path, printer) = (path.clone(), self.printer.clone());
                // The wrapper and runner are a child process: blocking I/O on a thread of its
                // own.
                tokio::task::spawn_blocking(move || through_wrapper(&path, &printer, request))
                    .await
                    .map_err(|e| Error::runtime(format!("the wrapper's reader failed: {e}")))?
            }
            Backend::Socket {
                path, service_uid, ..
            } => through_socket(path, *service_uid, self.printer.clone(), request).await,
        }
    }

    /// The files of a cluster's key, as this user holds them.
    pub fn keys_of(&self, view: &ClusterView) -> ClusterKeys {
        match &self.backend {
            Backend::InProcess(service) => {
                ClusterKeys::named(service.state_dir(), view.id, &view.name)
            }
            Backend::Wrapper { .. } | Backend::Socket { .. } => {
                ClusterKeys::named(&self.state_dir.join("remote"), view.id, &view.name)
            }
        }
    }

    /// Keeps what an answer hands over: the cluster's private key (mode 0600, where this user
    /// holds keys) and the pinned host keys of its nodes (a known_hosts file for `ssh`).
    pub fn keep(&self, keyed: &Launched) -> Result<ClusterKeys, Error> {
        let keys = self.keys_of(&keyed.cluster);
        if !matches!(self.backend, Backend::InProcess(_)) {
            let key = crate::cluster::ssh::parse_private_key(&keyed.private_key)?;
            keys.create(&key)?;
        }
        keys.write_known_hosts(&keyed.cluster.nodes)?;
        Ok(keys)
    }

    /// Keeps the pinned host keys of a cluster whose key this user already holds.
    pub fn keep_host_keys(&self, view: &ClusterView) -> Result<(), Error> {
        self.keys_of(view).write_known_hosts(&view.nodes)
    }
}

/// One request through the wrapper: the request on its stdin, then its lines until the answer.
fn through_wrapper(wrapper: &Path, printer: &Printer, request: Request) -> Result<Response, Error> {
    let mut child = std::process::Command::new(wrapper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Error::runtime(format!(
                "cannot run the stratus wrapper {} (is the multi-user install complete? `stratus admin doctor` checks it)",
                wrapper.display()
            ))
            .with_source(e)
        })?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let text = serde_json::to_vec(&request).map_err(|e| Error::runtime(e.to_string()))?;
        // A runner that refuses early closes its end; its answer says why.
        let _ = stdin.write_all(&text);
    }
    let stdout = child.stdout.take().expect("piped stdout");
    let answer = read_answer(
        std::io::BufReader::new(stdout),
        printer,
        &request,
        "the runner",
    );
    let status = child.wait()?;
    answer?.unwrap_or_else(|| {
        // The wrapper refused before any runner started: its one line is on the user's
        // terminal already, and its exit code says the rest.
        if status.code().is_some_and(|c| c != 0) {
            return Err(Error::already_said(Kind::Failed));
        }
        Err(Error::runtime(format!(
            "the runner ended without an answer ({status})"
        )))
    })
}

/// One request to the class service: the request as one line on its socket, then its lines
/// until the answer. ^C while waiting tells the service this client is going (a launch rolls
/// back, and its answer says so); a second ^C leaves at once.
async fn through_socket(
    path: &Path,
    service_uid: u32,
    printer: Arc<Printer>,
    request: Request,
) -> Result<Response, Error> {
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        Error::runtime(format!(
            "cannot reach the class service on {} (is stratus.socket running? `stratus admin doctor` checks the install)",
            path.display()
        ))
        .with_source(e)
    })?;
    let peer = crate::sys::peer_uid(&stream)?;
    if peer != service_uid {
        return Err(Error::runtime(format!(
            "{} is answered by uid {peer}, not by the service account (uid {service_uid}); not sending it anything",
            path.display()
        )));
    }
    let mut line = serde_json::to_vec(&request).map_err(|e| Error::runtime(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let closer = stream.try_clone()?;
    let reader = std::thread::spawn(move || {
        read_answer(
            std::io::BufReader::new(stream),
            &printer,
            &request,
            "the class service",
        )
    });
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let reader = tokio::task::spawn_blocking(move || reader.join());
    tokio::pin!(reader);
    let mut asked_to_stop = false;
    let answer = loop {
        tokio::select! {
            joined = &mut reader => break joined,
            _ = interrupts.recv() => {
                if asked_to_stop {
                    return Err(Error::interrupted(crate::core::error::Signal::Interrupt));
                }
                asked_to_stop = true;
                // The service sees this side closed: a launch stops and rolls back.
                let _ = closer.shutdown(std::net::Shutdown::Write);
            }
        }
    };
    let answer = answer
        .map_err(|e| Error::runtime(format!("the reader of the class service failed: {e}")))?
        .map_err(|_| Error::runtime("the reader of the class service panicked"))?;
    answer?.unwrap_or_else(|| {
        Err(Error::runtime(
            "the class service closed the connection without an answer",
        ))
    })
}

/// The service's lines, as they come, until its answer (`None` if the lines end without one).
fn read_answer<R: BufRead>(
    reader: R,
    printer: &Printer,
    request: &Request,
    who: &str,
) -> Result<Option<Result<Response, Error>>, Error> {
    let mut bars = Bars::default();
    let mut answer: Option<Result<Response, Error>> = None;
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line<serde_json::Value> = serde_json::from_str(&line).map_err(|e| {
            Error::runtime(format!(
                "{who} answered something that is not its protocol: {e}"
            ))
        })?;
        match parsed {
            Line::Event(Event::Progress(now)) => bars.show(printer, &now),
            Line::Event(Event::Status(s)) => printer.status(s),
            Line::Event(Event::Warning(w)) => printer.warn(w),
            Line::Event(Event::Waiting(w)) => printer.waiting(w),
            Line::Result { result } => {
                answer = Some(Response::decode(request, result).map_err(|e| {
                    Error::runtime(format!(
                        "{who}'s answer to {} is not one: {e}",
                        request.action()
                    ))
                }));
                break;
            }
            Line::Error { error } => {
                answer = Some(Err(error.into_error()));
                break;
            }
        }
    }
    bars.clear();
    Ok(answer)
}

/// The uid of the service account: the owner of the install's state directory.
fn service_uid(settings: &Settings) -> Result<u32, Error> {
    use std::os::unix::fs::MetadataExt;
    let dir = settings.config.state_dir.clone().ok_or_else(|| {
        Error::invalid("the site config has mode = \"multi-user\" but no state_dir")
    })?;
    Ok(std::fs::metadata(&dir)
        .map_err(|e| {
            Error::runtime(format!(
                "cannot look at the install's state directory {}",
                dir.display()
            ))
            .with_source(e)
        })?
        .uid())
}

/// The runner's progress bars, drawn here.
#[derive(Default)]
struct Bars(Vec<indicatif::ProgressBar>);

impl Bars {
    fn show(&mut self, printer: &Printer, now: &[crate::core::printer::Bar]) {
        for (i, b) in now.iter().enumerate() {
            if i >= self.0.len() {
                self.0.push(printer.bar(b.length, b.message.clone()));
            }
            let bar = &self.0[i];
            bar.set_length(b.length);
            bar.set_position(b.position);
            bar.set_message(b.message.clone());
            if b.done {
                bar.finish_and_clear();
            }
        }
        self.0.retain(|b| !b.is_finished());
    }

    fn clear(self) {
        for b in self.0 {
            b.finish_and_clear();
        }
    }
}
