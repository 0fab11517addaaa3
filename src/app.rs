//! The resolved settings every command runs with: the site config, the state directory and
//! database, the caller's identity, the profiles, and the printer. Built once per invocation,
//! after the arguments are parsed and before any provider is touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::Owner;
use crate::cluster::profile::ProfileSet;
use crate::cluster::provider::local::LocalProvider;
use crate::config::{ProviderKind, SiteConfig};
use crate::error::Error;
use crate::printer::Printer;
use crate::store::{ClusterRow, Store};

pub struct App {
    pub config: SiteConfig,
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub store: Store,
    pub owner: Owner,
    pub profiles: ProfileSet,
    pub printer: Arc<Printer>,
}

impl App {
    pub fn new(
        config: SiteConfig,
        config_path: Option<PathBuf>,
        state_dir: PathBuf,
        printer: Arc<Printer>,
    ) -> Result<Self, Error> {
        let owner = Owner::current()?;
        let store = Store::open_in(&state_dir)?;
        let profiles = ProfileSet::load(config.profiles_dir.as_deref())?;
        Ok(Self {
            config,
            config_path,
            state_dir,
            store,
            owner,
            profiles,
            printer,
        })
    }

    /// The directory of one cluster's keys and known_hosts file.
    pub fn cluster_dir(&self, cluster: &ClusterRow) -> PathBuf {
        self.state_dir
            .join("clusters")
            .join(format!("{}-{}", cluster.id, cluster.name))
    }

    /// The profile `launch-cluster` uses when none is named.
    pub fn default_profile(&self) -> String {
        self.config.default_profile.clone().unwrap_or_else(|| {
            match self.config.provider {
                ProviderKind::Local => "local-demo",
                ProviderKind::Ec2 => "hadoop",
            }
            .to_owned()
        })
    }

    pub fn local_provider(&self) -> Result<LocalProvider, Error> {
        Ok(LocalProvider::new(
            &self.state_dir,
            self.config.local.clone(),
        )?)
    }

    pub fn state_path(&self) -> &Path {
        self.store.path()
    }
}
