//! The typed service: `Service::serve(caller, request)` is the one place a request is served,
//! whether in the client's own process (a single-user install, or the service account's cron
//! jobs) or in the runner the setuid wrapper execs for a student. Every decision is audited.
//!
//! A `Service` is built from `Settings` (the site config, the state directory, the trust level)
//! and holds what requests share: the store, the profiles, the printer, and the providers (each
//! built once, on first use). Who asks is not a setting: each request comes with its `Caller`.
//!
//! - `launch`: launch, launch-slaves, terminate, delete, reconcile, the workers file;
//! - `clusters`: list, key, reach (what a user needs to connect), and the view of a cluster;
//! - `usage`: usage, quota, the report, the audit trail, the snapshot and the reaper;
//! - `admission`: the policy's rules at work in the store's transaction, and the quota view;
//! - `preflight`: `admin preflight`, the class's launches checked against the account;
//! - `identity`: the students' IAM identities (users, group, access keys) and the roster;
//! - `audit`: the audit trail and syslog;
//! - `protocol`: the request, the typed answer, and their wire form.

pub(crate) mod admission;
pub(crate) mod audit;
pub mod caller;
pub(crate) mod class;
pub(crate) mod clusters;
pub(crate) mod extend;
pub(crate) mod identity;
pub(crate) mod inputs;
pub(crate) mod keys;
pub(crate) mod launch;
pub(crate) mod preflight;
pub(crate) mod protocol;
pub(crate) mod serve;
pub(crate) mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::Ctx;
use crate::cluster::provider::AnyProvider;
use crate::cluster::provider::ec2::Ec2Provider;
use crate::cluster::provider::local::LocalProvider;
use crate::config::profile::ProfileSet;
use crate::config::{ConfigError, Mode, ProviderKind, SiteConfig, Trust};
use crate::core::env::Environment;
use crate::core::error::Error;
use crate::core::model::{ClusterName, ClusterState, InputError, Owner};
use crate::core::printer::Printer;
use crate::policy::{Policy, PolicyError};
use crate::store::{ClusterRow, Store};
use caller::Caller;
use protocol::{Request, Response};

/// The stack of each thread of an async runtime that serves requests (its workers and its
/// blocking pool): a request's future, boxed, lives on the heap, but its polls run on these
/// stacks, and a launch's poll needs more than tokio's default 2 MiB in a debug build.
pub const RUNTIME_STACK: usize = 8 << 20;

/// Where a service's settings come from.
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
    pub fn for_caller(explicit_config: Option<&Path>, env: &Environment) -> Result<Self, Error> {
        let (config, config_path) = SiteConfig::load(explicit_config, env.config.as_deref())?;
        // The service account of a multi-user install (its cron jobs, an instructor acting as
        // it) works on the install's state; everyone else on their own.
        let service_state = config.state_dir.clone().filter(|d| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(d).is_ok_and(|m| m.uid() == crate::sys::real_uid())
        });
        let state_dir = match service_state {
            Some(d) => d,
            None => crate::config::state_dir(
                env.stratus_home.as_deref(),
                env.xdg_data_home.as_deref(),
                env.home.as_deref(),
            )?,
        };
        let pause_at = env.test_pause_at.as_deref().and_then(ClusterState::parse);
        if let Some(secs) = env.test_lease_secs {
            crate::cluster::locks::set_lease_for_tests(std::time::Duration::from_secs(secs));
        }
        if env.test_legacy_names {
            crate::core::model::Naming::use_legacy_for_tests();
        }
        // Tests that script a term of usage fix the clock (debug builds only).
        if let Some(t) = &env.test_now {
            crate::core::model::fix_clock(crate::core::input::parse_time(t)?);
        }
        Ok(Self {
            trust: Trust::Caller(Box::new(env.aws.clone())),
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

    /// Whether a user's requests go to the installed setuid wrapper rather than to a service
    /// in their own process: in a multi-user install, for everyone but the service account
    /// itself (its cron jobs work on the install's state directly).
    pub fn through_wrapper(&self) -> bool {
        self.config.mode == Mode::MultiUser
            && self.config.state_dir.as_deref() != Some(&self.state_dir)
    }

    /// The id of the state database the install's resources carry: the install's in a
    /// multi-user install (read without writing anything beside it when the caller does not own
    /// it, as root does not), else the caller's own (made if it does not exist yet).
    pub fn install_store_id(&self) -> Result<crate::core::model::StoreId, Error> {
        let install = self
            .config
            .state_dir
            .as_ref()
            .filter(|_| self.config.mode == Mode::MultiUser)
            .filter(|d| **d != self.state_dir);
        let Some(dir) = install else {
            return Ok(Store::open_in(&self.state_dir)?.id().clone());
        };
        let db = dir.join(crate::store::DB_FILE);
        if !db.exists() {
            return Err(Error::invalid(format!(
                "the install's state database {} does not exist yet: run this command as the service account (the owner of {}), which creates it",
                db.display(),
                dir.display()
            )));
        }
        Ok(Store::read_id(dir)?)
    }

    /// The site's profiles, booting from the images this state directory records.
    pub fn profiles(&self) -> Result<ProfileSet, Error> {
        Ok(
            ProfileSet::load(self.config.profiles_dir.as_deref())?.with_images(
                crate::config::images::Images::load_or_warn(&self.state_dir, &self.config),
            ),
        )
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
}

/// What serves requests: the store, the profiles and the providers of one install (shared by
/// every request the class service serves at once), with the printer and the client of the
/// request at hand.
pub struct Service {
    shared: Arc<Shared>,
    printer: Arc<Printer>,
    /// The class service: turns `true` when this request's client has gone.
    hangup: Option<crate::cluster::interrupt::Hangup>,
}

struct Shared {
    settings: Settings,
    store: Store,
    /// The uid this process serves as: requests of this user are the install's own.
    uid: u32,
    /// Each provider built once, on first use, for every request: one EC2 client (and one
    /// adaptive rate limiter) for the whole class.
    providers: tokio::sync::Mutex<HashMap<ProviderKind, Arc<AnyProvider>>>,
}

impl Service {
    pub fn new(settings: Settings, printer: Arc<Printer>) -> Result<Self, Error> {
        let store = Store::open_in(&settings.state_dir)?;
        // A profile that does not load is the install's problem: said at start, not at the
        // first launch.
        settings.profiles()?;
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                store,
                uid: crate::sys::effective_uid(),
                providers: tokio::sync::Mutex::new(HashMap::new()),
            }),
            printer,
            hangup: None,
        })
    }

    /// The same install, for one request of the class service: its own printer (its lines go
    /// to its client), and the watch on its client.
    pub(crate) fn for_request(
        &self,
        printer: Arc<Printer>,
        hangup: crate::cluster::interrupt::Hangup,
    ) -> Self {
        Self {
            shared: self.shared.clone(),
            printer,
            hangup: Some(hangup),
        }
    }

    fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub fn config(&self) -> &SiteConfig {
        &self.shared.settings.config
    }

    pub fn state_dir(&self) -> &Path {
        &self.shared.settings.state_dir
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The profiles and baked images as they are now: read for each request, so that the class
    /// service sees a profile an instructor added, or an image just baked, without a restart.
    fn profiles(&self) -> Result<ProfileSet, Error> {
        self.shared.settings.profiles()
    }

    pub fn printer(&self) -> &Printer {
        &self.printer
    }

    /// What the cluster lifecycle runs with.
    pub fn ctx(&self) -> Ctx<'_> {
        let s = &self.shared.settings;
        Ctx {
            store: &self.shared.store,
            state_dir: &s.state_dir,
            ssh: &s.config.ssh,
            printer: &self.printer,
            pause_at: s.pause_at,
            hangup: self.hangup.as_ref(),
        }
    }

    /// The provider of this kind, built on first use (for EC2 that checks the credentials).
    pub(crate) async fn provider(&self, kind: ProviderKind) -> Result<Arc<AnyProvider>, Error> {
        let mut built = self.shared.providers.lock().await;
        if let Some(p) = built.get(&kind) {
            return Ok(p.clone());
        }
        let settings = self.settings();
        let config = &settings.config;
        let p = Arc::new(match kind {
            ProviderKind::Local => AnyProvider::Local(LocalProvider::new(
                &settings.state_dir,
                config.local.clone(),
            )?),
            ProviderKind::Ec2 => {
                let Some(ec2) = config.ec2.as_ref() else {
                    return Err(Error::invalid(
                        "this cluster is on ec2, but the site config has no [ec2] table",
                    ));
                };
                AnyProvider::Ec2(Box::new(Ec2Provider::new(ec2, &settings.trust).await?))
            }
        });
        built.insert(kind, p.clone());
        Ok(p)
    }

    /// One request of the privileged path, from what was read to its last line: the runner and
    /// the class service both answer through this. A request that could not be read is refused
    /// and audited; a request is served with the progress bars reported as they move; the answer
    /// or the error goes out as the last line. Returns the exit code the client ends with.
    pub(crate) async fn answer(&self, caller: &Caller, request: Result<Request, String>) -> u8 {
        use protocol::{Line, WireError};
        let request = match request {
            Ok(r) => r,
            Err(message) => {
                audit::record(
                    self,
                    crate::store::AuditRecord {
                        at: String::new(),
                        user: caller.owner.to_string(),
                        action: "request".into(),
                        cluster: None,
                        decision: "refused".into(),
                        reason: Some(crate::core::text::shortened(&message, 300)),
                        instances: Vec::new(),
                    },
                );
                let e = Error::invalid(message);
                let _ = self.printer.line(&Line::<Response>::Error {
                    error: WireError::of(&e),
                });
                return e.exit_code();
            }
        };
        let ticker = {
            let printer = self.printer.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    printer.tick();
                }
            })
        };
        let r = self.serve(caller, request).await;
        ticker.abort();
        self.printer.tick();
        match r {
            Ok(result) => {
                let _ = self.printer.line(&Line::Result { result });
                0
            }
            Err(e) => {
                let _ = self.printer.line(&Line::<Response>::Error {
                    error: WireError::of(&e),
                });
                e.exit_code()
            }
        }
    }

    /// Serves one request for `caller`. Every decision (and every refusal) is audited.
    pub async fn serve(&self, caller: &Caller, request: Request) -> Result<Response, Error> {
        let policy = LoadedPolicy::load(self.settings());
        let asked = Asked {
            caller,
            policy: &policy,
        };
        let mut trail = audit::Trail::begin(&request, caller);
        let r = self.dispatch(&asked, request, &mut trail).await;
        trail.end(self, caller, &r);
        r
    }

    async fn dispatch(
        &self,
        asked: &Asked<'_>,
        request: Request,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        match request {
            Request::Launch {
                name,
                workers,
                profile,
                env,
                configure,
                key,
            } => {
                let launch = launch::LaunchAsk {
                    name,
                    workers,
                    profile,
                    env,
                    configure,
                    key,
                };
                self.launch(asked, launch, trail).await
            }
            Request::Class {} => self.class(asked),
            Request::Quote {
                name,
                workers,
                profile,
            } => self.quote(asked, &name, workers, profile).await,
            Request::LaunchSlaves { name, count, owner } => {
                self.launch_slaves(asked, &name, count, owner.as_deref(), trail)
                    .await
            }
            Request::Terminate { name, owner } => {
                self.terminate(asked, &name, owner.as_deref(), trail).await
            }
            Request::Extend {
                name,
                by_secs,
                owner,
            } => {
                self.extend(asked, &name, by_secs, owner.as_deref(), trail)
                    .await
            }
            Request::Delete { name } => self.delete(asked, &name, trail).await,
            Request::Reconcile { dry_run } => self.reconcile(asked, dry_run).await,
            Request::UpdateWorkers { name } => self.update_workers(asked, &name).await,
            Request::List {
                name,
                all,
                owner,
                everyone,
            } => {
                self.list(asked, name.as_deref(), all, owner.as_deref(), everyone)
                    .await
            }
            Request::Key { name } => self.key(asked, &name),
            Request::Reach { name, all } => self.reach(asked, &name, all).await,
            Request::Usage { owner, everyone } => {
                self.usage(asked, owner.as_deref(), everyone).await
            }
            Request::Quota { owner } => self.quota(asked, owner.as_deref()),
            Request::Report {
                by,
                since,
                until,
                term,
            } => match term {
                true => self.term_report(asked),
                false => self.report(asked, by, since.as_deref(), until.as_deref()),
            },
            Request::Audit { since } => self.audit_trail(asked, since.as_deref()),
            Request::Snapshot {} => self.snapshot(asked).await,
            Request::Reap { dry_run, orphans } => self.reap(asked, dry_run, orphans).await,
            Request::ImageBuild { profile, dry_run } => {
                self.image_build(asked, &profile, dry_run).await
            }
            Request::Preflight {
                profile,
                students,
                workers,
            } => self.preflight(asked, &profile, students, workers).await,
            Request::IdentityInit { keep } => self.identity_init(asked, keep, trail).await,
            Request::IdentityRotate { keep } => self.identity_rotate(asked, keep, trail).await,
            Request::IdentityRetire { keep } => self.identity_retire(asked, &keep, trail).await,
            Request::IdentityShow {} => self.identity_show(asked).await,
            Request::IdentityDelete {} => self.identity_delete(asked, trail).await,
            Request::IdentitiesSync { logins, dry_run } => {
                self.identities_sync(asked, logins, dry_run, trail).await
            }
            Request::IdentitiesList {} => self.identities_list(asked).await,
            Request::KeysCreate { name } => self.keys_create(asked, &name, trail).await,
            Request::KeysList {} => self.keys_list(asked),
            Request::KeysDelete { name } => self.keys_delete(asked, &name, trail).await,
        }
    }

    /// The owner's cluster of this name: the live one, else the most recent; never a deleted
    /// one.
    pub(crate) fn find_cluster(&self, owner: &Owner, name: &str) -> Result<ClusterRow, Error> {
        let name = ClusterName::parse(name)?;
        self.store()
            .find_cluster(owner, &name)?
            .filter(|c| !c.hidden)
            .ok_or_else(|| InputError::UnknownCluster(name.to_string()).into())
    }

    /// The owner's live cluster of this name.
    fn live_cluster(&self, owner: &Owner, name: &str) -> Result<ClusterRow, Error> {
        let c = self.find_cluster(owner, name)?;
        if c.state.is_live() {
            Ok(c)
        } else {
            Err(Error::invalid(format!(
                "cluster {} is {}",
                c.name,
                c.state.as_str()
            )))
        }
    }
}

/// Who asks, and under which policy.
pub(crate) struct Asked<'a> {
    pub caller: &'a Caller,
    pub policy: &'a LoadedPolicy,
}

impl Asked<'_> {
    /// Root, or an instructor by the policy. Root can read the state database and the
    /// credentials anyway; refusing `sudo stratus admin audit` would protect nothing.
    fn is_instructor(&self) -> bool {
        self.caller.uid == 0
            || self
                .policy
                .present()
                .is_some_and(|p| p.is_instructor(self.caller.owner.as_str(), &self.caller.groups))
    }

    /// Whose clusters a request may touch: the caller's own, or (instructors) anyone's.
    fn owner_for(&self, asked: Option<&str>) -> Result<Owner, Error> {
        match asked {
            None => Ok(self.caller.owner.clone()),
            Some(o) if o == self.caller.owner.as_str() => Ok(self.caller.owner.clone()),
            Some(o) => {
                let owner = Owner::parse(o)?;
                if self.is_instructor() {
                    Ok(owner)
                } else {
                    Err(Error::refused(format!(
                        "only instructors may act on another user's clusters ({} asked for {o}'s)",
                        self.caller.owner
                    )))
                }
            }
        }
    }

    /// `None` (everyone's) for instructors who ask for everyone, else whose clusters.
    fn owners(
        &self,
        owner: Option<&str>,
        everyone: bool,
        what: &str,
    ) -> Result<Option<Owner>, Error> {
        if everyone {
            if !self.is_instructor() {
                return Err(Error::refused(format!("only instructors may {what}")));
            }
            return Ok(None);
        }
        Ok(Some(self.owner_for(owner)?))
    }

    /// The groups to apply the policy with: the caller's when acting on their own cluster,
    /// else the owner's from the group database.
    fn groups_of(&self, owner: &Owner) -> Vec<String> {
        if *owner == self.caller.owner {
            return self.caller.groups.clone();
        }
        crate::sys::groups_of_user(owner.as_str())
    }
}

impl Service {
    /// Whether `caller` is the user this service runs as (a single-user install's user, or the
    /// service account itself): their requests are the install's own.
    fn is_own(&self, caller: &Caller) -> bool {
        caller.uid == self.shared.uid
    }

    /// Requests only the install's own user or an instructor may make (the snapshot, the
    /// reaper, the report, deleting clusters): refused for anyone else, with `why`.
    fn own_or_instructor(&self, asked: &Asked<'_>, why: &str) -> Result<(), Error> {
        if self.is_own(asked.caller) || asked.is_instructor() {
            Ok(())
        } else {
            Err(Error::refused(why.to_owned()))
        }
    }
}

/// The policy as loaded for a request: present, absent (no file), or broken. Loaded once per
/// request, so the size of the policy it carries costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LoadedPolicy {
    Present(Policy),
    Absent(PathBuf),
    Broken(PolicyError),
    /// No site config names a place for one (single-user, no config file).
    None,
}

impl LoadedPolicy {
    pub fn load(settings: &Settings) -> Self {
        let Some(path) = settings.config.policy_path(settings.config_path.as_deref()) else {
            return LoadedPolicy::None;
        };
        if !path.exists() {
            return LoadedPolicy::Absent(path);
        }
        match Policy::load(&path) {
            Ok(p) => LoadedPolicy::Present(p),
            Err(e) => LoadedPolicy::Broken(e),
        }
    }

    /// The policy a launch must pass: required in a multi-user install, optional otherwise
    /// (without one nothing is limited). A broken file refuses in both.
    fn for_launch(&self, mode: Mode) -> Result<Option<&Policy>, Error> {
        match self {
            LoadedPolicy::Present(p) => Ok(Some(p)),
            LoadedPolicy::Broken(e) => Err(Error::invalid(format!(
                "{}; every launch is refused until it is fixed",
                crate::core::error::one_line(e)
            ))),
            LoadedPolicy::Absent(path) if mode == Mode::MultiUser => Err(Error::invalid(format!(
                "the policy file {} does not exist; every launch is refused until the instructor writes it",
                path.display()
            ))),
            LoadedPolicy::Absent(_) | LoadedPolicy::None => Ok(None),
        }
    }

    fn present(&self) -> Option<&Policy> {
        match self {
            LoadedPolicy::Present(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_s_store_id_is_read_without_writing_to_it() {
        let install = tempfile::tempdir().unwrap();
        let own = tempfile::tempdir().unwrap();
        let settings = |dir: &std::path::Path| Settings {
            trust: crate::config::Trust::Caller(Box::default()),
            config: crate::config::SiteConfig {
                mode: crate::config::Mode::MultiUser,
                state_dir: Some(dir.to_path_buf()),
                ..Default::default()
            },
            config_path: None,
            state_dir: own.path().join("state"),
            pause_at: None,
        };
        // No database yet: refused, naming who must run it.
        let e = settings(install.path()).install_store_id().unwrap_err();
        assert_eq!(e.exit_code(), crate::core::error::exit::BAD_INPUT);
        assert!(e.to_string().contains("as the service account"), "{e}");
        let id = crate::store::Store::open_in(install.path())
            .unwrap()
            .id()
            .clone();
        let files = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let before = files(install.path());
        assert_eq!(settings(install.path()).install_store_id().unwrap(), id);
        assert_eq!(
            files(install.path()),
            before,
            "nothing written beside the database"
        );
        assert!(
            !own.path().join("state").exists(),
            "the caller's own state is not made"
        );
    }
}
