//! The local node's SSH server (russh): public-key authentication for the cluster's key and the
//! profile's user only; exec with stdin, stdout, stderr and exit status; an interactive shell
//! on a pseudo-terminal (so `stratus login` and `ssh -t` work); and direct-tcpip channels (so
//! `ssh -D` proxies reach the node's services, as they would through OpenSSH).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, MethodKind, MethodSet, Sig,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::node::exit_code;
use crate::sys;

pub struct ServerConfig {
    pub host_key: PrivateKey,
    pub user: String,
    pub authorized: PublicKey,
    pub env: Vec<(String, String)>,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// The terminals of this node's sessions: where its broadcasts go (never the machine's).
    pub terminals: Arc<Terminals>,
    /// What a login shell is greeted with, if the file exists (the guard keeps it current).
    pub motd: PathBuf,
}

/// The terminals of the node's interactive sessions, as `wall` sees a machine's ttys.
pub struct Terminals {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<Vec<(u64, OwnedFd)>>,
    /// Where their number is kept for the guard's idle probe (a login on a terminal is an
    /// interactive session, as `who` counts them on an instance).
    count_file: PathBuf,
}

impl Terminals {
    pub fn new(count_file: PathBuf) -> Self {
        Self {
            next: Default::default(),
            open: Default::default(),
            count_file,
        }
    }

    fn register(&self, terminal: OwnedFd) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut open = self.lock();
        open.push((id, terminal));
        self.write_count(open.len());
        id
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.retain(|(i, _)| *i != id);
        self.write_count(open.len());
    }

    fn write_count(&self, n: usize) {
        if let Some(dir) = self.count_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = super::write_atomic(&self.count_file, format!("{n}\n").as_bytes(), 0o644);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, OwnedFd)>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions have a terminal now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Writes `text` to every session's terminal, framed as `wall` frames it (its own lines,
    /// carriage returns included, whatever mode the terminal is in). A write blocks only while
    /// a session's output is not drained, so it runs off the runtime's threads.
    pub async fn broadcast(self: &Arc<Self>, text: &str) {
        let framed = format!("\r\n{}\r\n", text.trim_end().replace('\n', "\r\n"));
        // Copies of the descriptors, so that a session whose output is not drained (its client
        // stopped reading) blocks only this write, never a login or a logout.
        let fds: Vec<OwnedFd> = self
            .lock()
            .iter()
            .filter_map(|(_, fd)| fd.try_clone().ok())
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for fd in &fds {
                write_all(fd.as_raw_fd(), framed.as_bytes());
            }
        })
        .await;
    }
}

fn write_all(fd: std::os::fd::RawFd, mut rest: &[u8]) {
    while !rest.is_empty() {
        match sys::write_fd(fd, rest) {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = &rest[n..],
        }
    }
}

/// Serves SSH on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: Arc<ServerConfig>,
) -> std::io::Result<()> {
    let config = Arc::new(russh::server::Config {
        keys: vec![cfg.host_key.clone()],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH opens with a "none" attempt to learn the methods; answer it at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        // An idle interactive login must not be cut; keepalives find dead clients instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let mut server = NodeServer { cfg };
    server.run_on_socket(config, &listener).await
}

struct NodeServer {
    cfg: Arc<ServerConfig>,
}

impl russh::server::Server for NodeServer {
    type Handler = Connection;
    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> Connection {
        tracing::debug!(?peer, "ssh connection");
        Connection {
            cfg: self.cfg.clone(),
        }
    }
}

struct Connection {
    cfg: Arc<ServerConfig>,
}

impl Connection {
    fn allowed(&self, user: &str, key: &PublicKey) -> bool {
        user == self.cfg.user && key.key_data() == self.cfg.authorized.key_data()
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.allowed(user, offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let ok = self.allowed(user, key.public_key);
        if !ok {
            tracing::warn!(user, "rejected a key that is not the cluster key");
        }
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(run_channel(channel, self.cfg.clone()));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = (host.to_owned(), port as u16);
        match tokio::net::TcpStream::connect(&target).await {
            Ok(mut stream) => {
                reply.accept().await;
                tokio::spawn(async move {
                    let mut ch = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut ch, &mut stream).await;
                });
            }
            Err(e) => {
                tracing::debug!(host = %target.0, port, "direct-tcpip refused: {e}");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    // Requests on a session channel: the channel's task does the work; these only answer the
    // client, which waits for the reply before it sends data.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

struct PtyRequest {
    term: String,
    cols: u16,
    rows: u16,
}

/// Variables a client may set, as OpenSSH's default `AcceptEnv LANG LC_*`.
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

async fn run_channel(mut channel: Channel<Msg>, cfg: Arc<ServerConfig>) {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut pty = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                pty = Some(PtyRequest {
                    term,
                    cols: col_width.clamp(1, u16::MAX as u32) as u16,
                    rows: row_height.clamp(1, u16::MAX as u32) as u16,
                })
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if accepted_env(&variable_name) => env.push((variable_name, variable_value)),
            ChannelMsg::Exec { command, .. } => {
                let command = String::from_utf8_lossy(&command).into_owned();
                return run(channel, Some(command), pty, env, cfg).await;
            }
            ChannelMsg::RequestShell { .. } => return run(channel, None, pty, env, cfg).await,
            _ => {}
        }
    }
}

async fn run(
    channel: Channel<Msg>,
    command: Option<String>,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    cfg: Arc<ServerConfig>,
) {
    let (rx, tx) = channel.split();
    let mut cmd = tokio::process::Command::new(&cfg.shell);
    match &command {
        Some(c) => {
            cmd.arg("-c").arg(c);
        }
        None => {
            cmd.arg("-l");
        }
    }
    cmd.current_dir(&cfg.home)
        .env_clear()
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().map(|(k, v)| (k, v)));
    let code = match pty {
        None => run_piped(cmd, rx, &tx).await,
        Some(p) => run_on_pty(cmd, p, rx, &tx, &cfg, command.is_none()).await,
    };
    let _ = tx.exit_status(code as u32).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::USR1 => libc::SIGUSR1,
        Sig::TERM | Sig::Custom(_) => libc::SIGTERM,
    }
}

/// How long output may still arrive after the command exited (a background job that kept
/// stdout open would otherwise hold the session forever).
const DRAIN: Duration = Duration::from_secs(2);

async fn run_piped(
    mut cmd: tokio::process::Command,
    mut rx: ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
) -> i32 {
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .extended_data_bytes(1, format!("cannot start the shell: {e}\n").into_bytes())
                .await;
            return 127;
        }
    };
    let pid = child.id();
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return 127;
    };
    // Client data goes through an unbounded queue, so a child slow to read its stdin never
    // stalls the connection that also carries its output.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<bytes::Bytes>();
    let stdin_task = tokio::spawn(async move {
        while let Some(data) = in_rx.recv().await {
            if stdin.write_all(&data).await.is_err() {
                break;
            }
        }
        // Dropping stdin is the child's EOF.
    });
    let mut out_w = tx.make_writer();
    let mut err_w = tx.make_writer_ext(Some(1));
    let out_task = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stdout, &mut out_w).await;
        let _ = out_w.flush().await;
    });
    let err_task = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stderr, &mut err_w).await;
        let _ = err_w.flush().await;
    });
    let mut in_tx = Some(in_tx);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(t) = &in_tx {
                        let _ = t.send(data);
                    }
                }
                Some(ChannelMsg::Eof) => in_tx = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(pid) = pid {
                        let _ = sys::kill(pid, signal_number(&signal));
                    }
                }
                Some(_) => {}
                None => {
                    // The client is gone: hang up on the command, as sshd does.
                    if let Some(pid) = pid {
                        let _ = sys::kill(pid, libc::SIGHUP);
                    }
                    break child.wait().await;
                }
            }
        }
    };
    drop(in_tx);
    stdin_task.abort();
    let _ = tokio::time::timeout(DRAIN, async {
        let _ = out_task.await;
        let _ = err_task.await;
    })
    .await;
    match status {
        Ok(s) => exit_code(s),
        Err(_) => 255,
    }
}

/// Starts `cmd` on a new terminal, greeted with the message of the day if `login`, the
/// terminal registered for the node's broadcasts: the controller, the child and its
/// registration.
fn start_on_pty(
    mut cmd: tokio::process::Command,
    req: &PtyRequest,
    cfg: &ServerConfig,
    login: bool,
) -> std::io::Result<(OwnedFd, tokio::process::Child, u64)> {
    let (controller, terminal) = sys::openpty(req.cols, req.rows)?;
    if login && let Ok(motd) = std::fs::read_to_string(&cfg.motd) {
        // As sshd shows the message of the day: before the shell starts.
        write_all(
            terminal.as_raw_fd(),
            format!("{}\r\n", motd.trim_end().replace('\n', "\r\n")).as_bytes(),
        );
    }
    let registered = cfg.terminals.register(terminal.try_clone()?);
    let started = (|| -> std::io::Result<tokio::process::Child> {
        cmd.env("TERM", &req.term)
            .stdin(terminal.try_clone()?)
            .stdout(terminal.try_clone()?)
            .stderr(terminal);
        sys::session_on_terminal(&mut cmd);
        let child = cmd.spawn()?;
        // `cmd` still holds the terminal's descriptors; drop them so the controller sees EOF
        // (EIO) once the shell and its jobs are gone.
        drop(cmd);
        sys::set_nonblocking(controller.as_raw_fd())?;
        Ok(child)
    })();
    match started {
        Ok(child) => Ok((controller, child, registered)),
        Err(e) => {
            cfg.terminals.remove(registered);
            Err(e)
        }
    }
}

async fn run_on_pty(
    cmd: tokio::process::Command,
    req: PtyRequest,
    mut rx: ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    cfg: &ServerConfig,
    login: bool,
) -> i32 {
    let (controller, mut child, registered) = match start_on_pty(cmd, &req, cfg, login) {
        Ok(x) => x,
        Err(e) => {
            let _ = tx
                .extended_data_bytes(1, format!("cannot start a terminal: {e}\n").into_bytes())
                .await;
            return 127;
        }
    };
    let pid = child.id();
    let controller = match sys::async_fd(controller) {
        Ok(c) => Arc::new(c),
        Err(_) => return 127,
    };
    let reader = controller.clone();
    let mut out_w = tx.make_writer();
    let out_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(mut guard) = reader.readable().await else {
                break;
            };
            match guard.try_io(|fd| sys::read_fd(fd.as_raw_fd(), &mut buf)) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    if out_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = out_w.flush().await;
                }
                // EIO: the last process holding the terminal is gone.
                Ok(Err(_)) => break,
                Err(_would_block) => continue,
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<bytes::Bytes>();
    let writer = controller.clone();
    let in_task = tokio::spawn(async move {
        while let Some(data) = in_rx.recv().await {
            let mut rest: &[u8] = &data;
            while !rest.is_empty() {
                let Ok(mut guard) = writer.writable().await else {
                    return;
                };
                match guard.try_io(|fd| sys::write_fd(fd.as_raw_fd(), rest)) {
                    Ok(Ok(n)) => rest = &rest[n..],
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                }
            }
        }
    });
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => { let _ = in_tx.send(data); }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let _ = sys::set_window_size(
                        controller.as_raw_fd(),
                        col_width.clamp(1, u16::MAX as u32) as u16,
                        row_height.clamp(1, u16::MAX as u32) as u16,
                    );
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(pid) = pid {
                        let _ = sys::kill_group(pid, signal_number(&signal));
                    }
                }
                Some(_) => {}
                None => {
                    if let Some(pid) = pid {
                        let _ = sys::kill_group(pid, libc::SIGHUP);
                    }
                    break child.wait().await;
                }
            }
        }
    };
    in_task.abort();
    cfg.terminals.remove(registered);
    let _ = tokio::time::timeout(DRAIN, out_task).await;
    match status {
        Ok(s) => exit_code(s),
        Err(_) => 255,
    }
}
