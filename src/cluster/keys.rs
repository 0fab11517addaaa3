//! The files of one cluster's SSH identity in a state directory: the cluster key (private half
//! mode 0600, never anywhere else on this machine) and a known_hosts file of the pinned host keys
//! for the system `ssh` (`login`).

use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;

use crate::cluster::ssh;
use crate::core::error::Error;
use crate::core::files::{write_atomic, write_private};
use crate::store::{ClusterRow, NodeRow};

#[derive(Debug, Clone)]
pub struct ClusterKeys {
    pub dir: PathBuf,
}

impl ClusterKeys {
    /// The keys of `cluster` under the state directory `state_dir`.
    pub fn of(state_dir: &Path, cluster: &ClusterRow) -> Self {
        Self::named(state_dir, cluster.id, cluster.name.as_str())
    }

    pub fn named(state_dir: &Path, id: i64, name: &str) -> Self {
        Self {
            dir: state_dir.join("clusters").join(format!("{id}-{name}")),
        }
    }

    pub fn private_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    pub fn public_key(&self) -> PathBuf {
        self.dir.join("id_ed25519.pub")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// Writes the key pair; the private half is written with mode 0600 before any byte of it.
    pub fn create(&self, key: &PrivateKey) -> Result<(), Error> {
        crate::core::files::create_private_dir(&self.dir)?;
        let private = ssh::private_key_openssh(key)?;
        write_private(&self.private_key(), private.as_bytes())?;
        let public = ssh::public_key_openssh(key.public_key());
        write_atomic(&self.public_key(), format!("{public}\n").as_bytes(), 0o644)?;
        Ok(())
    }

    pub fn load(&self) -> Result<PrivateKey, Error> {
        let text = std::fs::read_to_string(self.private_key()).map_err(|e| {
            Error::runtime(format!(
                "cannot read the cluster key {}",
                self.private_key().display()
            ))
            .with_source(e)
        })?;
        Ok(ssh::parse_private_key(&text)?)
    }

    /// The private key as OpenSSH text (what the runner hands to the cluster's owner).
    pub fn load_text(&self) -> Result<String, Error> {
        Ok(ssh::private_key_openssh(&self.load()?)?)
    }

    /// Rewrites known_hosts from the pinned keys, for the system `ssh` (`login`).
    pub fn write_known_hosts(&self, nodes: &[NodeRow]) -> Result<(), Error> {
        let mut text = String::new();
        for n in nodes {
            if let (Some(addr), Some(key)) = (&n.address, &n.host_key) {
                if n.state.is_gone() {
                    continue;
                }
                let host = if n.ssh_port == 22 {
                    addr.clone()
                } else {
                    format!("[{addr}]:{}", n.ssh_port)
                };
                text.push_str(&format!("{host} {}\n", key.trim()));
            }
        }
        crate::core::files::create_private_dir(&self.dir)?;
        write_private(&self.known_hosts(), text.as_bytes())?;
        Ok(())
    }
}
