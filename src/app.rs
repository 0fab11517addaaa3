//! The resolved settings a command runs with: the site config, the state directory and
//! database, the profiles, the printer, and the providers (each built once, on first use).
//!
//! Settings are resolved with an explicit trust level (`config::Trust`): a user's own command
//! reads `--config`, `STRATUS_CONFIG`, `STRATUS_HOME` and the home directory; the runner of a
//! multi-user install reads only the config path its wrapper was installed with, and the state
//! directory that config names. Who the caller is, is not a setting: it is passed in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::Ctx;
use crate::cluster::profile::ProfileSet;
use crate::cluster::provider::AnyProvider;
use crate::cluster::provider::ec2::Ec2Provider;
use crate::cluster::provider::local::LocalProvider;
use crate::config::{ConfigError, ProviderKind, SiteConfig, Trust};
use crate::error::Error;
use crate::model::ClusterState;
use crate::printer::Printer;
use crate::store::Store;

/// Where a command's settings come from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub trust: Trust,
    pub config: SiteConfig,
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Tests only (debug builds, a user's own command): see `Ctx::pause_at`.
    pub pause_at: Option<ClusterState>,
}

impl Settings {
    /// A user's own command: `--config`, else `STRATUS_CONFIG`, else the site's file; the state
    /// in `STRATUS_HOME`, else `$XDG_DATA_HOME/stratus`, else `~/.local/share/stratus`.
    pub fn for_caller(explicit_config: Option<&Path>) -> Result<Self, Error> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let (config, config_path) =
            SiteConfig::load(explicit_config, var("STRATUS_CONFIG").as_deref())?;
        // The service account of a multi-user install (its cron jobs, an instructor acting as
        // it) works on the install's state; everyone else on their own.
        let service_state = config.state_dir.clone().filter(|d| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(d).is_ok_and(|m| m.uid() == crate::sys::real_uid())
        });
        let state_dir = match service_state {
            Some(d) => d,
            None => crate::config::state_dir(
                var("STRATUS_HOME").as_deref(),
                var("XDG_DATA_HOME").as_deref(),
                var("HOME").as_deref(),
            )?,
        };
        let pause_at = if cfg!(debug_assertions) {
            std::env::var("STRATUS_TEST_PAUSE_AT")
                .ok()
                .and_then(|s| ClusterState::parse(&s))
        } else {
            None
        };
        // Tests that script a term of usage fix the clock (debug builds only).
        if cfg!(debug_assertions)
            && let Ok(t) = std::env::var("STRATUS_TEST_NOW")
        {
            let at = crate::commands::parse_time(&t)?;
            crate::model::fix_clock(at);
        }
        Ok(Self {
            trust: Trust::Caller,
            config,
            config_path,
            state_dir,
            pause_at,
        })
    }

    /// The runner: the config file its wrapper names, and the state directory that file names.
    /// Nothing from the environment.
    pub fn for_service(config_path: &Path) -> Result<Self, Error> {
        let (config, config_path) = SiteConfig::load(Some(config_path), None)?;
        let path = config_path.clone().unwrap_or_default();
        let state_dir = config
            .state_dir
            .clone()
            .ok_or_else(|| ConfigError::Invalid {
                path: path.clone(),
                message: "a multi-user install needs `state_dir`, the runner's state directory"
                    .into(),
            })?;
        Ok(Self {
            trust: Trust::Service,
            config,
            config_path,
            state_dir,
            pause_at: None,
        })
    }
}

pub struct App {
    pub config: SiteConfig,
    pub config_path: Option<PathBuf>,
    pub trust: Trust,
    pub state_dir: PathBuf,
    pub store: Store,
    pub profiles: ProfileSet,
    pub printer: Arc<Printer>,
    pause_at: Option<ClusterState>,
    providers: tokio::sync::Mutex<HashMap<ProviderKind, Arc<AnyProvider>>>,
}

impl App {
    pub fn new(settings: Settings, printer: Arc<Printer>) -> Result<Self, Error> {
        let store = Store::open_in(&settings.state_dir)?;
        let profiles = ProfileSet::load(settings.config.profiles_dir.as_deref())?.with_images(
            crate::cluster::image::Images::load_or_warn(&settings.state_dir, &settings.config),
        );
        Ok(Self {
            config: settings.config,
            config_path: settings.config_path,
            trust: settings.trust,
            state_dir: settings.state_dir,
            store,
            profiles,
            printer,
            pause_at: settings.pause_at,
            providers: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// What the cluster lifecycle runs with.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            store: &self.store,
            state_dir: &self.state_dir,
            ssh: &self.config.ssh,
            printer: &self.printer,
            pause_at: self.pause_at,
        }
    }

    /// The provider of this kind, built on first use (for EC2 that checks the credentials).
    pub async fn provider(&self, kind: ProviderKind) -> Result<Arc<AnyProvider>, Error> {
        let mut built = self.providers.lock().await;
        if let Some(p) = built.get(&kind) {
            return Ok(p.clone());
        }
        let p = Arc::new(match kind {
            ProviderKind::Local => AnyProvider::Local(LocalProvider::new(
                &self.state_dir,
                self.config.local.clone(),
            )?),
            ProviderKind::Ec2 => {
                let Some(ec2) = self.config.ec2.as_ref() else {
                    return Err(Error::invalid(
                        "this cluster is on ec2, but the site config has no [ec2] table",
                    ));
                };
                AnyProvider::Ec2(Box::new(Ec2Provider::new(ec2, self.trust).await?))
            }
        });
        built.insert(kind, p.clone());
        Ok(p)
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

    pub fn state_path(&self) -> &Path {
        self.store.path()
    }
}
