//! The SSH client (russh): wait until nodes answer, run commands with their exit status, upload
//! files, and fan out over a cluster's nodes with a bounded number of sessions in flight.
//!
//! Host keys are never accepted blindly. A node's key is pinned before first contact when the
//! provider knows it (the local provider generates it; EC2 nodes print theirs on the console),
//! or, where the site allows it (`[ec2] host_keys = "first-contact"`), recorded on first contact
//! and then enforced; a mismatch is a hard error naming the node. Uploads go through `cat` on the remote
//! side, so any sshd works (no SFTP subsystem needed).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use crate::cluster::shell_quote;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {node} ({addr})")]
    Connect {
        node: String,
        addr: String,
        #[source]
        source: russh::Error,
    },
    #[error("{node} ({addr}) did not answer SSH within {}s", after.as_secs())]
    Timeout {
        node: String,
        addr: String,
        after: Duration,
        #[source]
        last: Option<Box<SshError>>,
    },
    #[error("{node} ({addr}) did not complete an SSH handshake within {}s", after.as_secs())]
    Handshake {
        node: String,
        addr: String,
        after: Duration,
    },
    #[error(
        "host key mismatch for {node} ({addr}): expected {expected}, got {got}; someone may be intercepting the connection, or the node was replaced"
    )]
    HostKeyMismatch {
        node: String,
        addr: String,
        expected: String,
        got: String,
    },
    #[error("{node} refused the cluster key for user {user}")]
    Auth { node: String, user: String },
    #[error("SSH session with {node} failed")]
    Session {
        node: String,
        #[source]
        source: russh::Error,
    },
    #[error("{node}: {message}")]
    Remote { node: String, message: String },
    #[error("invalid SSH key: {0}")]
    Key(String),
}

impl SshError {
    /// Errors that another attempt cannot fix.
    fn is_permanent(&self) -> bool {
        matches!(self, SshError::HostKeyMismatch { .. })
    }
}

/// A new ed25519 key pair (cluster keys and local nodes' host keys).
pub fn generate_key() -> Result<PrivateKey, SshError> {
    PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(|e| SshError::Key(e.to_string()))
}

/// A private key in OpenSSH format, for a file of mode 0600.
pub fn private_key_openssh(key: &PrivateKey) -> Result<String, SshError> {
    key.to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(|e| SshError::Key(e.to_string()))
}

pub fn parse_private_key(text: &str) -> Result<PrivateKey, SshError> {
    PrivateKey::from_openssh(text).map_err(|e| SshError::Key(e.to_string()))
}

/// A public key as one OpenSSH line, without comment.
pub fn public_key_openssh(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().unwrap_or_default()
}

pub fn parse_public_key(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| SshError::Key(e.to_string()))
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Of the host keys a node lists (on its console), the one to pin: ed25519, else ECDSA, else
/// RSA, the order of this client's own preference. A `Target` pins one key, and the client asks
/// for the pinned key's algorithm first, so a node holding that key presents it whatever else it
/// has. Keys of other types (DSA, security-key types) are never chosen.
pub fn preferred_host_key(keys: &[PublicKey]) -> Option<PublicKey> {
    use russh::keys::Algorithm;
    let rank = |k: &PublicKey| match k.algorithm() {
        Algorithm::Ed25519 => Some(0),
        Algorithm::Ecdsa { .. } => Some(1),
        Algorithm::Rsa { .. } => Some(2),
        _ => None,
    };
    keys.iter()
        .filter_map(|k| rank(k).map(|r| (r, k)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, k)| k.clone())
}

/// Where and as whom to connect, and the host key to insist on.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's name, for messages.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The pinned host key; `None` records whatever the node presents on this first contact.
    pub host_key: Option<PublicKey>,
}

impl Target {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Checks the host key against the pin and remembers what was presented.
struct Checker {
    expected: Option<PublicKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // Host certificates are not part of stratus's trust model.
            return Ok(false);
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        Ok(match &self.expected {
            Some(expected) => expected.key_data() == key.key_data(),
            None => true,
        })
    }
}

/// An SSH client holding the cluster's key.
#[derive(Clone)]
pub struct Client {
    key: Arc<PrivateKey>,
    connect_timeout: Duration,
}

impl Client {
    pub fn new(key: PrivateKey, connect_timeout: Duration) -> Self {
        Self {
            key: Arc::new(key),
            connect_timeout,
        }
    }

    /// One connection attempt, authenticated.
    pub async fn connect(&self, target: &Target) -> Result<Session, SshError> {
        self.connect_within(target, self.connect_timeout).await
    }

    async fn connect_within(&self, target: &Target, limit: Duration) -> Result<Session, SshError> {
        let addr = target.addr();
        let mut config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        if let Some(k) = &target.host_key {
            // Ask for the pinned key's algorithm first, so a server with several host keys
            // presents the one we know.
            let mut algs = vec![k.algorithm()];
            algs.extend(
                config
                    .preferred
                    .key
                    .iter()
                    .filter(|a| **a != k.algorithm())
                    .cloned(),
            );
            config.preferred.key = algs.into();
        }
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker {
            expected: target.host_key.clone(),
            seen: seen.clone(),
        };
        let attempt = async {
            let connected = client::connect(
                Arc::new(config),
                (target.host.as_str(), target.port),
                checker,
            )
            .await;
            let mut handle = match connected {
                Ok(h) => h,
                Err(e) => {
                    let presented = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let (Some(expected), Some(got)) = (&target.host_key, presented)
                        && expected.key_data() != got.key_data()
                    {
                        return Err(SshError::HostKeyMismatch {
                            node: target.name.clone(),
                            addr: addr.clone(),
                            expected: fingerprint(expected),
                            got: fingerprint(&got),
                        });
                    }
                    return Err(SshError::Connect {
                        node: target.name.clone(),
                        addr: addr.clone(),
                        source: e,
                    });
                }
            };
            let auth = handle
                .authenticate_publickey(
                    target.user.clone(),
                    PrivateKeyWithHashAlg::new(self.key.clone(), None),
                )
                .await
                .map_err(|e| SshError::Session {
                    node: target.name.clone(),
                    source: e,
                })?;
            if !auth.success() {
                return Err(SshError::Auth {
                    node: target.name.clone(),
                    user: target.user.clone(),
                });
            }
            let host_key = seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| SshError::Key("the server presented no host key".into()))?;
            Ok(Session {
                handle,
                node: target.name.clone(),
                host_key,
            })
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Handshake {
                node: target.name.clone(),
                addr,
                after: limit,
            }),
        }
    }

    /// Connects, retrying with backoff until `timeout` has passed. A host key mismatch is not
    /// retried.
    pub async fn wait_ready(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<Session, SshError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self
                .connect_within(target, left.min(self.connect_timeout))
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => e,
            };
            tracing::debug!(node = %target.name, "not answering yet: {err}");
            if Instant::now() + delay >= deadline {
                // A handshake cut short by the deadline says no more than the timeout itself.
                let last = match err {
                    SshError::Handshake { .. } => None,
                    other => Some(Box::new(other)),
                };
                return Err(SshError::Timeout {
                    node: target.name.clone(),
                    addr: target.addr(),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// What a remote command did.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// The exit status; `None` if the server reported none (the command was killed, or the
    /// connection dropped).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// An authenticated connection to one node.
pub struct Session {
    handle: client::Handle<Checker>,
    pub node: String,
    /// The host key the node presented (for pinning on first contact).
    pub host_key: PublicKey,
}

impl Session {
    /// Runs `command` through the remote user's shell, feeding it `stdin` (then EOF).
    pub async fn exec(&self, command: &str, stdin: Option<&[u8]>) -> Result<ExecOutput, SshError> {
        let err = |source| SshError::Session {
            node: self.node.clone(),
            source,
        };
        let mut ch = self.handle.channel_open_session().await.map_err(err)?;
        ch.exec(true, command).await.map_err(err)?;
        if let Some(data) = stdin {
            ch.data(data).await.map_err(err)?;
        }
        ch.eof().await.map_err(err)?;
        let mut out = ExecOutput::default();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                ChannelMsg::Failure => {
                    return Err(SshError::Remote {
                        node: self.node.clone(),
                        message: "the server refused to run the command".into(),
                    });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Runs a command and fails unless it exits 0, with its stderr in the error.
    pub async fn run(&self, command: &str) -> Result<ExecOutput, SshError> {
        let out = self.exec(command, None).await?;
        self.check(command, out)
    }

    fn check(&self, what: &str, out: ExecOutput) -> Result<ExecOutput, SshError> {
        if out.success() {
            return Ok(out);
        }
        let status = out
            .status
            .map(|s| format!("exit status {s}"))
            .unwrap_or_else(|| "no exit status".into());
        // What the command said last explains most failures: its stderr, else its stdout.
        let said = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &out.stderr
        } else {
            &out.stdout
        };
        let said = String::from_utf8_lossy(said);
        let tail: Vec<&str> = said.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(SshError::Remote {
            node: self.node.clone(),
            message: format!(
                "`{what}` failed ({status}){}{}",
                if tail.is_empty() { "" } else { ": " },
                tail.join(" / ")
            ),
        })
    }

    /// Writes `data` to `dest` (relative paths are relative to the remote home) with `mode`,
    /// atomically: a temporary file renamed into place, parent directories created.
    pub async fn upload(&self, data: &[u8], dest: &str, mode: u32) -> Result<(), SshError> {
        let q = shell_quote(dest);
        let command = format!(
            "set -e; umask 077; d=$(dirname -- {q}); mkdir -p -- \"$d\"; t=\"$d/.stratus-upload.$$\"; \
             trap 'rm -f -- \"$t\"' EXIT; cat > \"$t\"; chmod {mode:o} -- \"$t\"; mv -f -- \"$t\" {q}; trap - EXIT"
        );
        let out = self.exec(&command, Some(data)).await?;
        self.check(&format!("upload to {dest}"), out).map(drop)
    }

    /// Opens a TCP connection from the node to `host:port` (SSH's direct-tcpip), as a stream.
    pub async fn tunnel(
        &self,
        host: &str,
        port: u16,
    ) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|source| SshError::Session {
                node: self.node.clone(),
                source,
            })?;
        Ok(channel.into_stream())
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Runs `f` over `items` with at most `limit` in flight; results come back in input order.
pub async fn fan_out<I, T, F, Fut>(items: Vec<I>, limit: usize, f: F) -> Vec<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let f = Arc::new(f);
    let mut set = tokio::task::JoinSet::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let sem = sem.clone();
        let f = f.clone();
        set.spawn(async move {
            // The semaphore is never closed, so acquire cannot fail.
            let _permit = sem.acquire_owned().await.ok();
            (i, f(item).await)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, v)) => out[i] = Some(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    out.into_iter().flatten().collect()
}

impl From<SshError> for crate::core::error::Error {
    fn from(e: SshError) -> Self {
        crate::core::error::Error::wrap(crate::core::error::Kind::Failed, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, EcdsaCurve};

    fn key(alg: Algorithm) -> PublicKey {
        PrivateKey::random(&mut rand::rng(), alg)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn ed25519_is_pinned_before_ecdsa_and_ecdsa_before_rsa() {
        let ed = key(Algorithm::Ed25519);
        let ec = key(Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        });
        let rsa = parse_public_key(RSA).unwrap();
        let pick = |keys: &[&PublicKey]| {
            preferred_host_key(&keys.iter().map(|k| (*k).clone()).collect::<Vec<_>>())
                .map(|k| k.algorithm())
        };
        assert_eq!(pick(&[&rsa, &ec, &ed]), Some(ed.algorithm()));
        assert_eq!(pick(&[&rsa, &ec]), Some(ec.algorithm()));
        assert_eq!(pick(&[&rsa]), Some(rsa.algorithm()));
        assert_eq!(pick(&[]), None);
    }

    /// A 1024-bit RSA public key (generating one in a test is slow).
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDGf0OK/IM45CmoyfjF/mGJGPO4uJeIIm4SGYbjx2VH+2sRIp8QdBdGNBMyNgGAGHeafc28lAu1am1ztjGzGXAQV8UUYxXtsa2kHSZAu0ZZF7LyPY5ReLq2CifXFk/JGUFwwVQeUNyvEwuWQdKC6MzLiD0YuwXIE5PyPbhveHBHMQ==";
}
