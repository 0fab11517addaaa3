//! The intra-cluster SSH key: a key pair of the cluster's own that lets the master log in to every
//! node (Hadoop's `start-dfs.sh` and `stop-yarn.sh` work over SSH from the master), distinct from
//! the cluster key stratus itself logs in with, which never leaves the state directory.
//!
//! stratus generates it at the first configure and pushes the private half to the master only,
//! over SSH: never in user-data, which anything on an instance can read from the metadata
//! service. The public half is authorised on every node, the master included; nodes added later
//! get it from the master. Profiles ask for it with `intra_cluster_key = true`.

use std::sync::Arc;

use crate::cluster::shell_quote;
use crate::cluster::ssh::{self, Client, SshError, Target};

/// Where the master keeps the private half, relative to the SSH user's home.
pub const PRIVATE_KEY: &str = ".ssh/stratus_cluster_ed25519";
/// Where every node keeps the public half.
pub const PUBLIC_KEY: &str = ".ssh/stratus_cluster_ed25519.pub";

/// Installs the key: a new one when `fresh` (the private half to `master`, the public half
/// authorised on `master` and `others`), else the master's existing public half authorised on
/// `others`.
pub async fn install(
    client: &Client,
    master: &Target,
    others: Vec<Target>,
    fresh: bool,
    max_parallel: usize,
) -> Result<(), SshError> {
    let session = client.connect(master).await?;
    // A cluster launched with --no-configure never got its key: make one now.
    let fresh = fresh
        || !session
            .exec(&format!("test -s {}", shell_quote(PUBLIC_KEY)), None)
            .await?
            .success();
    let public = if fresh {
        let key = ssh::generate_key()?;
        let private = ssh::private_key_openssh(&key)?;
        let public = ssh::public_key_openssh(key.public_key());
        session
            .upload(private.as_bytes(), PRIVATE_KEY, 0o600)
            .await?;
        session
            .upload(format!("{public}\n").as_bytes(), PUBLIC_KEY, 0o644)
            .await?;
        session.run(&authorize_command(&public)).await?;
        public
    } else {
        let out = session
            .run(&format!("cat {}", shell_quote(PUBLIC_KEY)))
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // Only ever authorise something that is a public key.
        ssh::parse_public_key(&text)?;
        text
    };
    session.close().await;

    let public = Arc::new(public);
    let client = client.clone();
    let results = ssh::fan_out(others, max_parallel, move |t| {
        let client = client.clone();
        let public = public.clone();
        async move {
            let s = client.connect(&t).await?;
            let r = async {
                s.upload(format!("{public}\n").as_bytes(), PUBLIC_KEY, 0o644)
                    .await?;
                s.run(&authorize_command(&public)).await
            }
            .await;
            s.close().await;
            r.map(drop)
        }
    })
    .await;
    results.into_iter().collect()
}

/// Authorises the owner's own keys (`launch-cluster --key`) on `nodes`, each key once.
pub async fn authorize_own_keys(
    client: &Client,
    nodes: Vec<Target>,
    keys: &[(String, String)],
    max_parallel: usize,
) -> Result<(), SshError> {
    for (_, public) in keys {
        // Only ever authorise something that is a public key.
        ssh::parse_public_key(public)?;
    }
    let script: Vec<String> = keys.iter().map(|(_, k)| authorize_command(k)).collect();
    let script = Arc::new(script.join("; "));
    let client = client.clone();
    let results = ssh::fan_out(nodes, max_parallel, move |t| {
        let client = client.clone();
        let script = script.clone();
        async move {
            let s = client.connect(&t).await?;
            let r = s.run(&script).await;
            s.close().await;
            r.map(drop)
        }
    })
    .await;
    results.into_iter().collect()
}

/// Appends `public` to the user's authorized_keys unless it is there.
pub(crate) fn authorize_command(public: &str) -> String {
    let k = shell_quote(public.trim());
    format!(
        "set -e; umask 077; mkdir -p \"$HOME/.ssh\"; f=\"$HOME/.ssh/authorized_keys\"; touch \"$f\"; \
         grep -qxF {k} \"$f\" || printf '%s\\n' {k} >> \"$f\""
    )
}
