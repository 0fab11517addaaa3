//! The requests that create and end clusters: launch, launch-slaves, terminate, delete, and
//! those that finish what crashed commands left (reconcile) or keep a cluster's workers file.

use std::collections::BTreeMap;

use super::admission::Admission;
use super::audit::Trail;
use super::protocol::{
    AlreadyEnded, Deleted, Launched, Response, Terminated, WorkersAdded, WorkersFile,
};
use super::{Asked, Service};
use crate::cluster::keys::ClusterKeys;
use crate::cluster::launch::{self, LaunchRequest};
use crate::cluster::provider::Provider;
use crate::cluster::terminate::live_nodes;
use crate::cluster::{observe, reconcile, terminate};
use crate::config::profile::ProfileError;
use crate::config::{Mode, ProviderKind};
use crate::core::error::Error;
use crate::core::model::{ClusterName, Owner, RequestId, rfc3339};
use crate::policy::Policy;
use crate::store::GuardRecord;

/// A launch as asked for, unchecked.
pub(crate) struct LaunchAsk {
    pub name: String,
    pub workers: u32,
    pub profile: Option<String>,
    pub env: BTreeMap<String, String>,
    pub configure: bool,
    /// One of the owner's own key pairs, authorised besides the cluster key.
    pub key: Option<String>,
}

/// A new cluster's lifetime (the policy's for its owner, else the profile's) and its guard's
/// settings: the reaper's grace, and the cluster's rate at its prices.
fn clock_of(
    policy: Option<&crate::policy::Policy>,
    config: &crate::config::SiteConfig,
    caller: &super::caller::Caller,
    profile: &crate::config::profile::Profile,
    workers: u32,
) -> (Option<crate::core::model::Millis>, GuardRecord) {
    let lifetime = match policy {
        Some(p) => p
            .limits(caller.owner.as_str(), &caller.groups)
            .first_lifetime(profile),
        None => crate::policy::Limits::default().first_lifetime(profile),
    };
    let guard = GuardRecord {
        grace_ms: policy.map_or(crate::policy::DEFAULT_GRACE, |p| p.reaper_grace),
        rate: crate::config::prices::cluster_rate(config, profile, 1, workers),
    };
    (lifetime, guard)
}

impl Service {
    /// What a launch would cost and whether the policy would admit it; nothing is created.
    pub(super) async fn quote(
        &self,
        asked: &Asked<'_>,
        name: &str,
        workers: u32,
        profile: Option<String>,
    ) -> Result<Response, Error> {
        Ok(Response::Quoted(
            self.quoted(asked, name, workers, profile)?,
        ))
    }

    /// The profile a launch names, or an error that suggests the nearest one it may use.
    fn profile_for_launch(
        &self,
        asked: &Asked<'_>,
        policy: Option<&crate::policy::Policy>,
        profile_name: &str,
    ) -> Result<crate::config::profile::Profile, Error> {
        match self.profiles()?.resolve(profile_name) {
            Err(ProfileError::Unknown { name, .. }) if name == profile_name => {
                Err(self.unknown_profile(asked, policy, profile_name))
            }
            r => Ok(r?),
        }
    }

    /// What a launch would cost, and the policy's decision on it now.
    fn quoted(
        &self,
        asked: &Asked<'_>,
        name: &str,
        workers: u32,
        profile: Option<String>,
    ) -> Result<super::protocol::Quoted, Error> {
        let config = self.config();
        let policy = asked.policy.for_launch(config.mode)?;
        let name = ClusterName::parse(name)?;
        let profile_name = profile.unwrap_or_else(|| self.settings().default_profile());
        let profile = self.profile_for_launch(asked, policy, &profile_name)?;
        launch::validate_request(&profile, config.provider, workers, 0)?;
        let caller = asked.caller;
        let (lifetime, guard) = clock_of(policy, config, caller, &profile, workers);
        let admission = Admission::new(policy, config, caller.owner.as_str(), &caller.groups);
        self.quote_of(
            asked,
            &admission,
            &name,
            &profile,
            workers,
            (lifetime, &guard),
        )
    }

    /// What a launch of `profile` would cost, with the lifetime and guard it gets, and the
    /// decision of the caller's admission on it now.
    fn quote_of(
        &self,
        asked: &Asked<'_>,
        admission: &Admission<'_>,
        name: &ClusterName,
        profile: &crate::config::profile::Profile,
        workers: u32,
        (lifetime, guard): (Option<crate::core::model::Millis>, &GuardRecord),
    ) -> Result<super::protocol::Quoted, Error> {
        let caller = asked.caller;
        let (decision, left) = admission.quote(self.store(), profile, workers)?;
        let in_use = self.find_cluster(&caller.owner, name.as_str()).is_ok();
        let refusal = match (&decision, in_use) {
            (_, true) => Some(format!("you already have a live cluster named {name}")),
            (Err(e), false) => Some(crate::core::error::one_line(e)),
            (Ok(_), false) => None,
        };
        let rate = guard.rate;
        let allows = |micros: i64| {
            rate.filter(|r| *r > 0).map(|r| {
                (i128::from(micros.max(0))
                    * i128::from(crate::config::prices::HOURS_PER_MONTH)
                    * 3_600_000
                    / i128::from(r)) as i64
            })
        };
        let runs_out = decision
            .as_ref()
            .ok()
            .and_then(|a| a.as_ref())
            .and_then(|a| a.runs_out)
            .and_then(allows);
        Ok(super::protocol::Quoted {
            cluster: name.to_string(),
            profile: profile.name.clone(),
            nodes: workers + 1,
            rate,
            lifetime_ms: lifetime,
            budget_left_micros: left,
            budget_allows_ms: left.and_then(allows),
            admitted: refusal.is_none(),
            refusal,
            runs_out_ms: runs_out,
        })
    }

    pub(super) async fn launch(
        &self,
        asked: &Asked<'_>,
        ask: LaunchAsk,
        trail: &mut Trail,
    ) -> Result<Response, Error> {
        let config = self.config();
        let policy = asked.policy.for_launch(config.mode)?;
        let name = ClusterName::parse(&ask.name)?;
        if config.mode == Mode::MultiUser && config.provider == ProviderKind::Local {
            return Err(Error::invalid(
                "a multi-user install does not run the local provider: its nodes would run as the service account",
            ));
        }
        let profile_name = ask
            .profile
            .unwrap_or_else(|| self.settings().default_profile());
        let profile = self.profile_for_launch(asked, policy, &profile_name)?;
        let env = crate::core::input::check_env(ask.env)?;
        let extra_keys = match &ask.key {
            Some(key) if !ask.configure => {
                return Err(Error::invalid(format!(
                    "--key {key} is authorised on the nodes by the configure step: drop --no-configure"
                )));
            }
            Some(key) => vec![self.key_for_launch(&asked.caller.owner, key).await?],
            None => Vec::new(),
        };
        let caller = asked.caller;
        let (lifetime, guard) = clock_of(policy, config, caller, &profile, ask.workers);
        let req = LaunchRequest {
            name,
            workers: ask.workers,
            profile,
            env,
            configure: ask.configure,
            // Without configuring, nobody connects: host keys are pinned when the owner first
            // reaches the nodes (`Request::Reach`).
            wait_for_ssh: ask.configure,
            image_build: false,
            extra_keys,
            lifetime,
            guard: Some(guard.clone()),
        };
        let admission = Admission::new(policy, config, caller.owner.as_str(), &caller.groups);
        let provider = self.provider(config.provider).await?;
        self.reconcile_first(provider.as_ref(), &caller.owner).await;
        // What it costs, said before it launches (a launch that is refused, by the policy or
        // for what it asks, says why alone).
        let clock = (req.lifetime, &guard);
        if launch::validate_request(&req.profile, config.provider, req.workers, 0).is_ok()
            && let Ok(q) = self.quote_of(
                asked,
                &admission,
                &req.name,
                &req.profile,
                req.workers,
                clock,
            )
            && q.refusal.is_none()
        {
            for line in q.lines() {
                self.ctx().printer.status(line);
            }
        }
        let request = RequestId::new();
        trail.launching(&request);
        let c = launch::launch(
            self.ctx(),
            provider.as_ref(),
            &caller.owner,
            &request,
            req,
            &admission,
        )
        .await?;
        Ok(Response::Launched(Launched {
            cluster: self.view(&c)?,
            private_key: ClusterKeys::of(self.state_dir(), &c).load_text()?,
        }))
    }

    pub(super) async fn launch_slaves(
        &self,
        asked: &Asked<'_>,
        name: &str,
        count: u32,
        owner: Option<&str>,
        trail: &mut Trail,
    ) -> Result<Response, Error> {
        let policy = asked.policy.for_launch(self.config().mode)?;
        let owner = asked.owner_for(owner)?;
        if count == 0 {
            return Err(Error::invalid("launch-slaves needs a count of at least 1"));
        }
        let c = self.find_cluster(&owner, name)?;
        if !c.state.is_up() {
            return Err(Error::invalid(format!(
                "cluster {} is {}; workers can be added once it is running",
                c.name,
                c.state.as_str()
            )));
        }
        let provider = self.provider(c.provider).await?;
        observe::refresh(self.ctx(), provider.as_ref(), std::slice::from_ref(&c)).await?;
        let admission = Admission::new(
            policy,
            self.config(),
            owner.as_str(),
            &asked.groups_of(&owner),
        );
        self.reconcile_first(provider.as_ref(), &owner).await;
        // The owner's own keys go on the new workers only while the owner still has them.
        let mut c = c;
        let live = self.store().key_pairs(Some(owner.as_str()))?;
        c.record.extra_keys.retain(|(name, public)| {
            live.iter()
                .any(|k| k.name == *name && k.public_key.as_deref() == Some(public.as_str()))
        });
        let request = RequestId::new();
        trail.launching(&request);
        let added = launch::add_workers(
            self.ctx(),
            provider.as_ref(),
            &c,
            count,
            &request,
            &admission,
        )
        .await?;
        Ok(Response::WorkersAdded(WorkersAdded {
            cluster: self.view(&c)?,
            added: added
                .iter()
                .map(|n| crate::core::model::node_name(&c.name, n.role, n.index))
                .collect(),
        }))
    }

    /// A launch's profile that does not exist: the error lists only the profiles this site's
    /// provider runs and the policy lets the caller launch, and suggests the nearest of them.
    fn unknown_profile(&self, asked: &Asked<'_>, policy: Option<&Policy>, name: &str) -> Error {
        let caller = asked.caller;
        let allowed = policy.and_then(|p| p.limits(caller.owner.as_str(), &caller.groups).profiles);
        let usable: Vec<String> = match self.profiles() {
            Ok(profiles) => profiles
                .names()
                .into_iter()
                .filter(|n| allowed.as_ref().is_none_or(|a| a.contains(n)))
                .filter(|n| {
                    profiles
                        .resolve(n)
                        .is_ok_and(|p| p.supports(self.config().provider))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let hint = crate::core::text::nearest(name, &usable)
            .map(|n| format!(" (did you mean {n:?}?)"))
            .unwrap_or_default();
        Error::invalid(format!(
            "unknown profile {name:?}{hint}; profiles you may launch here: {}",
            if usable.is_empty() {
                "none".to_owned()
            } else {
                usable.join(", ")
            }
        ))
    }

    pub(super) async fn terminate(
        &self,
        asked: &Asked<'_>,
        name: &str,
        owner: Option<&str>,
        trail: &mut Trail,
    ) -> Result<Response, Error> {
        let owner = asked.owner_for(owner)?;
        let c = self.find_cluster(&owner, name)?;
        trail.terminating(
            live_nodes(self.ctx(), &c)?
                .into_iter()
                .map(|n| n.instance_id)
                .collect(),
        );
        let provider = self.provider(c.provider).await?;
        self.reconcile_first(provider.as_ref(), &owner).await;
        if c.state.is_live() {
            let by = asked.caller.owner.as_str();
            let why = if by == owner.as_str() {
                "its owner asked for it".to_owned()
            } else {
                format!("instructor {by} asked for it")
            };
            self.store().set_ended_by(c.id, by, &why)?;
        }
        // An ended cluster is still looked at (a straggler, a rollback left unfinished), and
        // the answer says it had ended, and when.
        let already = (!c.state.is_live()).then(|| AlreadyEnded {
            state: c.state.as_str().to_owned(),
            at: rfc3339(c.terminated_at.unwrap_or(c.updated_at)),
        });
        let n = terminate::terminate(self.ctx(), provider.as_ref(), &c).await?;
        Ok(Response::Terminated(Terminated {
            cluster: c.name.to_string(),
            terminated: n as u64,
            already,
        }))
    }

    pub(super) async fn delete(
        &self,
        asked: &Asked<'_>,
        name: &str,
        trail: &mut Trail,
    ) -> Result<Response, Error> {
        self.own_or_instructor(
            asked,
            "in a multi-user install, delete-cluster is the instructor's (as the service account) or reconcile's job",
        )?;
        let cluster = self.find_cluster(&asked.caller.owner, name)?;
        let provider = self.provider(cluster.provider).await?;
        let deleted = reconcile::delete_cluster(self.ctx(), provider.as_ref(), &cluster).await?;
        trail.terminating(deleted.instances.clone());
        Ok(Response::Deleted(Deleted {
            cluster: cluster.name.to_string(),
            instances: deleted.instances,
        }))
    }

    /// Reconciles the caller's clusters (every user's, for an instructor) on every provider
    /// they use, and on the site's.
    pub(super) async fn reconcile(
        &self,
        asked: &Asked<'_>,
        dry_run: bool,
    ) -> Result<Response, Error> {
        let owner = (!asked.is_instructor() || self.is_own(asked.caller))
            .then(|| asked.caller.owner.clone());
        let mut kinds = vec![self.config().provider];
        for c in self.store().list_clusters(owner.as_ref())? {
            if !kinds.contains(&c.provider) {
                kinds.push(c.provider);
            }
        }
        let mut actions = Vec::new();
        for kind in kinds {
            let provider = self.provider(kind).await?;
            let done = reconcile::reconcile(
                self.ctx(),
                provider.as_ref(),
                owner.as_ref(),
                &reconcile::Options::new(dry_run),
            )
            .await?;
            actions.extend(done);
        }
        Ok(Response::Reconciled(actions))
    }

    pub(super) async fn update_workers(
        &self,
        asked: &Asked<'_>,
        name: &str,
    ) -> Result<Response, Error> {
        self.own_or_instructor(
            asked,
            "in a multi-user install the runner keeps the workers file up to date (launch-slaves)",
        )?;
        let cluster = self.fresh_cluster(&asked.caller.owner, name).await?;
        let n = crate::cluster::configure::update_workers_file(self.ctx(), &cluster).await?;
        Ok(Response::WorkersFile(WorkersFile {
            cluster: cluster.name.to_string(),
            workers: n,
        }))
    }

    /// Finishes or undoes what crashed commands left behind, before one that launches or
    /// terminates; a failure is reported, not fatal.
    pub(super) async fn reconcile_first<P: Provider>(&self, provider: &P, owner: &Owner) {
        let options =
            super::usage::automatic_reconcile(&super::LoadedPolicy::load(self.settings()));
        if let Err(e) = reconcile::reconcile(self.ctx(), provider, Some(owner), &options).await {
            self.printer().warn(format!(
                "could not reconcile leftovers first: {}",
                crate::core::error::one_line(&e)
            ));
        }
    }
}

impl Service {
    /// Bakes an image of `profile` (instructors, or the install's own user), or says how.
    pub(super) async fn image_build(
        &self,
        asked: &Asked<'_>,
        profile: &str,
        dry_run: bool,
    ) -> Result<Response, Error> {
        use crate::cluster::image;
        self.own_or_instructor(asked, "only instructors may build images")?;
        let config = self.config();
        let (Some(ec2), ProviderKind::Ec2) = (config.ec2.as_ref(), config.provider) else {
            return Err(Error::invalid(
                "admin image build needs the ec2 provider (provider = \"ec2\" and an [ec2] table in the site config)",
            ));
        };
        let profile = self.profiles()?.resolve_as_written(profile)?;
        let owner = &asked.caller.owner;
        image::check(&profile, owner, self.store().id())?;
        let plan: Vec<String> = image::plan(&profile, self.state_dir())?
            .lines()
            .map(str::to_owned)
            .collect();
        let record = crate::config::images::Images::path(self.state_dir())
            .display()
            .to_string();
        if dry_run {
            return Ok(Response::Image(super::protocol::ImageBuilt {
                profile: profile.name.clone(),
                plan,
                image: None,
                name: None,
                versions: crate::config::images::versions(&profile),
                record,
            }));
        }
        let provider = self.provider(ProviderKind::Ec2).await?;
        self.reconcile_first(provider.as_ref(), owner).await;
        let name = profile.name.clone();
        let built = image::build(
            image::BuildInputs {
                ctx: self.ctx(),
                provider: provider.as_ref(),
                owner,
                region: &ec2.region,
            },
            profile,
        )
        .await?;
        Ok(Response::Image(super::protocol::ImageBuilt {
            profile: name,
            plan,
            image: Some(built.image),
            name: Some(built.name),
            versions: built.versions,
            record: built.record.display().to_string(),
        }))
    }
}
