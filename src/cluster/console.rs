//! Host keys from a node's console: EC2's `host_keys = "console"` pins each node's key from
//! what its console shows (cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block, or the
//! profile's user-data printing it first) before stratus first connects. A node's console is
//! read until its key is pinned, and not again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::cluster::provider::Provider;
use crate::cluster::rounds::Batch;
use crate::cluster::ssh;
use crate::core::backoff::Pace;
use crate::core::error::Error;

/// Why a node's host key could not be pinned from its console.
fn no_console_keys(name: &str, id: &str, waited: Duration, last: &str) -> String {
    format!(
        "{name} ({id}) showed no SSH host keys on its console within {}s{last}; stratus pins them from there before first contact. If the image does not print them (cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block), set `[ec2] host_keys = \"first-contact\"` in the site config",
        waited.as_secs()
    )
}

/// The host key to pin for one node, read from its console: polled at the waits' pace (1, 2, 4 s,
/// then every 10 to 15 s) until it shows one or `timeout` has passed.
pub(crate) async fn console_host_key<P: Provider>(
    provider: &P,
    id: &str,
    name: &str,
    timeout: Duration,
) -> Result<russh::keys::PublicKey, Error> {
    let deadline = Instant::now() + timeout;
    let mut pace = Pace::polling();
    let mut last = String::new();
    loop {
        match provider.console_host_keys(id).await {
            Ok(Some(found)) => return pinnable(&found, name, id).map_err(Error::runtime),
            Ok(None) => {}
            Err(e) => last = format!(" (last error: {})", crate::core::error::one_line(&e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::runtime(no_console_keys(name, id, timeout, &last)));
        }
        tokio::time::sleep(pace.next_until(deadline)).await;
    }
}

/// Of the host keys a node's console lists, the one to pin; else why there is none.
fn pinnable(
    found: &[russh::keys::PublicKey],
    name: &str,
    id: &str,
) -> Result<russh::keys::PublicKey, String> {
    ssh::preferred_host_key(found).ok_or_else(|| {
        format!(
            "{name} ({id}): its console lists no SSH host key of a type stratus can pin (ed25519, ECDSA or RSA)"
        )
    })
}

/// What the console reader has found, by instance id: the host key to pin (as stored, and
/// parsed), or why there is none.
pub(crate) type ConsoleKeys = BTreeMap<String, Result<(String, russh::keys::PublicKey), String>>;

/// Reads the host keys of `nodes` (instance id -> name) from their consoles, pinning each in the
/// store as it is found, and publishes them on `keys`. One call per node still waiting per
/// round (a node whose key is pinned is not read again), at the waits' pace, until `deadline`;
/// a node whose console shows no keys by then gets an error that names the setting to change.
/// Never returns unless the store fails.
pub(crate) async fn read_consoles<P: Provider>(
    b: &Batch<'_, P>,
    nodes: BTreeMap<String, String>,
    deadline: Instant,
    ready_timeout: Duration,
    gone: tokio::sync::watch::Receiver<BTreeSet<String>>,
    keys: tokio::sync::watch::Sender<ConsoleKeys>,
) -> Error {
    use futures_util::StreamExt;
    let mut left = nodes;
    let mut last_error: BTreeMap<String, String> = BTreeMap::new();
    let mut pace = Pace::polling();
    while !left.is_empty() {
        left.retain(|id, _| !gone.borrow().contains(id));
        let ids: Vec<String> = left.keys().cloned().collect();
        let answers: Vec<(String, Result<_, _>)> = futures_util::stream::iter(ids)
            .map(|id| async move {
                let r = b.provider.console_host_keys(&id).await;
                (id, r)
            })
            .buffer_unordered(b.ctx.ssh.max_parallel.max(1))
            .collect()
            .await;
        for (id, answer) in answers {
            let found = match answer {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(instance = %id, "cannot read the console: {e}");
                    last_error.insert(id, crate::core::error::one_line(&e));
                    continue;
                }
            };
            let Some(name) = left.remove(&id) else {
                continue;
            };
            let result = match pinnable(&found, &name, &id) {
                Ok(key) => {
                    let line = ssh::public_key_openssh(&key);
                    if let Err(e) = b.ctx.store.set_host_key(&id, &line) {
                        return e.into();
                    }
                    tracing::info!(node = %name, key = %ssh::fingerprint(&key), "pinned the host key its console shows");
                    Ok((line, key))
                }
                Err(e) => Err(e),
            };
            keys.send_modify(|k| {
                k.insert(id, result);
            });
        }
        if left.is_empty() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            keys.send_modify(|k| {
                for (id, name) in std::mem::take(&mut left) {
                    let last = last_error
                        .get(&id)
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default();
                    let message = no_console_keys(&name, &id, ready_timeout, &last);
                    k.insert(id, Err(message));
                }
            });
            break;
        }
        tokio::time::sleep(pace.next_until(deadline)).await;
    }
    std::future::pending().await
}
