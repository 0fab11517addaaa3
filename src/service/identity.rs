//! The students' IAM identities (issue 16), served with the service account's credentials:
//! `identity init|rotate|show|delete` for the caller's own, `admin identities sync|list` for
//! the instructor. The service makes IAM users, group memberships and keys; a new key's secret
//! goes to its owner's own client only, in the answer, and the client writes it into the
//! owner's files as the owner (`cli::identity`). Nothing secret is stored, logged or audited.
//!
//! A rotation is two requests, so that no step leaves the user without a working key:
//! 1. `IdentityRotate { keep }`, `keep` being the key the caller's files hold. Room is made for
//!    the new key (IAM allows two): every key but `keep` is deleted (nobody's files hold one,
//!    so it is a leftover of a rotation that stopped before its files were written), or, when
//!    the files hold none of the user's keys, the oldest of two. Then the new key is made.
//! 2. The client writes its files and checks that the new key works, then sends
//!    `IdentityRetire { keep: new }`: every other key is deleted.
//!
//! A re-run after a crash at any point converges: before the files are written they still hold
//! the old key, and step 1 deletes the lost new one; after, they hold the new one, and step 1
//! deletes the old one.

use std::collections::BTreeSet;

use crate::cluster::provider::ec2::iam::{Iam, IamUser, KeyInfo};
use crate::config::Ec2Config;
use crate::config::identities::{GROUP_POLICY_NAME, IdentitiesConfig};
use crate::core::error::Error;
use crate::core::model::{Owner, now_millis};
use crate::service::protocol::{
    IdentityView, IssuedKey, KeyIssued, KeyView, KeysRemoved, Response, Synced,
};
use crate::service::{Asked, Service, audit};

/// What an identity request needs of the site config.
struct Site<'a> {
    identities: &'a IdentitiesConfig,
    ec2: &'a Ec2Config,
}

/// What a request about the caller's own identity works with.
struct Mine<'a> {
    owner: Owner,
    site: Site<'a>,
    iam: Iam,
    /// The user's name as the site names it.
    name: String,
}

impl Service {
    /// The caller (who must be allowed an identity), the site's tables and the IAM client.
    fn mine(&self, asked: &Asked<'_>) -> Result<Mine<'_>, Error> {
        let owner = self.identity_owner(asked)?;
        let site = self.identity_site()?;
        let iam = self.iam(&site)?;
        let name = site.identities.user_name(&owner);
        Ok(Mine {
            owner,
            site,
            iam,
            name,
        })
    }

    fn identity_site(&self) -> Result<Site<'_>, Error> {
        let config = self.config();
        match (&config.identities, &config.ec2) {
            (Some(identities), Some(ec2)) => Ok(Site { identities, ec2 }),
            _ => Err(Error::invalid(
                "student identities need the site config's [identities] table (class, bucket) and its [ec2] table (region, credentials)",
            )),
        }
    }

    fn iam(&self, site: &Site<'_>) -> Result<Iam, Error> {
        Ok(Iam::new(site.ec2, &self.settings().trust)?)
    }

    /// Whose identity a request is about, and whether they may have one: the caller's own, on
    /// the class roster. The install's own user and the instructors need not be on it.
    fn identity_owner(&self, asked: &Asked<'_>) -> Result<Owner, Error> {
        let owner = asked.caller.owner.clone();
        if self.is_own(asked.caller) || asked.is_instructor() {
            return Ok(owner);
        }
        match self.store().roster()? {
            None => Err(Error::refused(format!(
                "{owner} may not have a class identity yet: the instructor has not synced the class roster (stratus admin identities sync --roster FILE)"
            ))),
            Some(roster) if !roster.contains(owner.as_str()) => Err(Error::refused(format!(
                "{owner} is not on the class roster, so has no class identity; ask the instructor"
            ))),
            Some(_) => Ok(owner),
        }
    }

    /// Whether `owner` may have an identity without being on the roster: the install's own user
    /// (the service account) and the instructors, whom a sync therefore never removes.
    fn exempt_from_roster(&self, asked: &Asked<'_>, owner: &Owner) -> bool {
        let own = crate::sys::passwd(self.shared.uid)
            .ok()
            .flatten()
            .is_some_and(|p| p.name == owner.as_str());
        own || asked.policy.present().is_some_and(|p| {
            p.is_instructor(owner.as_str(), &crate::sys::groups_of_user(owner.as_str()))
        })
    }

    /// The owner's IAM user, if IAM has it and it is this class's (path, owner and store tags);
    /// a user of the name that is not is refused, never touched.
    async fn own_user(
        &self,
        iam: &Iam,
        site: &Site<'_>,
        owner: &Owner,
    ) -> Result<Option<IamUser>, Error> {
        let name = site.identities.user_name(owner);
        let Some(user) = iam.user(&name).await? else {
            return Ok(None);
        };
        let ours = user.owner.as_deref() == Some(owner.as_str())
            && user.store.as_deref() == Some(self.store().id().as_str())
            && user.path == site.identities.path();
        if ours {
            Ok(Some(user))
        } else {
            Err(Error::refused(format!(
                "the IAM user {name} exists but is not this class's identity of {owner} (path {}, stratus:owner {}, stratus:store {}); stratus leaves it alone",
                user.path,
                user.owner.as_deref().unwrap_or("none"),
                user.store.as_deref().unwrap_or("none"),
            )))
        }
    }

    /// The group (made with the site's policy if it is missing, or given it if it has none)
    /// with the user in it.
    async fn in_group(&self, iam: &Iam, site: &Site<'_>, user: &str) -> Result<(), Error> {
        let group = site.identities.group();
        let policy =
            crate::config::identities::site_group_policy(site.identities, &site.ec2.region)
                .map_err(Error::invalid)?;
        let made = iam
            .ensure_group(
                &group,
                &site.identities.path(),
                GROUP_POLICY_NAME,
                &policy.to_string(),
            )
            .await?;
        // A group left without its policy (a crash between making it and putting the policy)
        // would leave every new key unable to describe.
        if !made && iam.group_policy(&group, GROUP_POLICY_NAME).await?.is_none() {
            iam.put_group_policy(&group, GROUP_POLICY_NAME, &policy.to_string())
                .await?;
        }
        if !iam.groups_of(user).await?.contains(&group) {
            iam.add_to_group(user, &group).await?;
        }
        Ok(())
    }

    async fn view_of(
        &self,
        iam: &Iam,
        site: &Site<'_>,
        owner: &Owner,
        user: Option<&IamUser>,
    ) -> Result<IdentityView, Error> {
        // The user as IAM has it (checked by path and tags), else the name it would have.
        let name = user.map_or_else(|| site.identities.user_name(owner), |u| u.name.clone());
        let (groups, keys) = match user {
            Some(_) => (iam.groups_of(&name).await?, iam.keys(&name).await?),
            None => (Vec::new(), Vec::new()),
        };
        Ok(IdentityView {
            login: owner.to_string(),
            user: name,
            exists: user.is_some(),
            groups,
            keys: keys.iter().map(key_view).collect(),
        })
    }

    pub(crate) async fn identity_init(
        &self,
        asked: &Asked<'_>,
        keep: Option<String>,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        let Mine {
            owner,
            site,
            iam,
            name,
        } = self.mine(asked)?;
        let mut user_created = false;
        let user = match self.own_user(&iam, &site, &owner).await? {
            Some(u) => u,
            None => {
                user_created = iam
                    .create_user(
                        &name,
                        &site.identities.path(),
                        owner.as_str(),
                        self.store().id().as_str(),
                    )
                    .await?;
                iam.user_made(&name).await?;
                self.own_user(&iam, &site, &owner).await?.ok_or_else(|| {
                    Error::runtime(format!("IAM does not show the user {name} just made"))
                })?
            }
        };
        self.in_group(&iam, &site, &name).await?;
        let keys = iam.keys(&name).await?;
        let held = keep.as_deref().filter(|k| keys.iter().any(|x| x.id == *k));
        let (key, deleted) = match held {
            Some(k) => {
                trail.detail(format!("user {name}: already set up with key {k}"));
                (None, Vec::new())
            }
            None => {
                let (key, deleted) = issue(&iam, &name, &keys, None).await?;
                trail.detail(issued_detail(&name, user_created, &key.id, &deleted));
                (Some(key), deleted)
            }
        };
        Ok(Response::KeyIssued(KeyIssued {
            identity: self.view_of(&iam, &site, &owner, Some(&user)).await?,
            user_created,
            key,
            deleted,
            region: site.ec2.region.clone(),
        }))
    }

    pub(crate) async fn identity_rotate(
        &self,
        asked: &Asked<'_>,
        keep: Option<String>,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        let Mine {
            owner,
            site,
            iam,
            name,
        } = self.mine(asked)?;
        let Some(user) = self.own_user(&iam, &site, &owner).await? else {
            return Err(Error::invalid(format!(
                "{owner} has no class identity yet: `stratus identity init` makes it"
            )));
        };
        let keys = iam.keys(&name).await?;
        let (key, deleted) = issue(&iam, &name, &keys, keep.as_deref()).await?;
        trail.detail(issued_detail(&name, false, &key.id, &deleted));
        Ok(Response::KeyIssued(KeyIssued {
            identity: self.view_of(&iam, &site, &owner, Some(&user)).await?,
            user_created: false,
            key: Some(key),
            deleted,
            region: site.ec2.region.clone(),
        }))
    }

    pub(crate) async fn identity_retire(
        &self,
        asked: &Asked<'_>,
        keep: &str,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        let Mine {
            owner,
            site,
            iam,
            name,
        } = self.mine(asked)?;
        let Some(user) = self.own_user(&iam, &site, &owner).await? else {
            return Err(Error::invalid(format!("{owner} has no class identity")));
        };
        let keys = iam.keys(&name).await?;
        let Some(kept) = keys.iter().find(|k| k.id == keep) else {
            return Err(Error::refused(format!(
                "the key {keep} is not one of {name}'s keys ({}); nothing deleted",
                ids(&keys)
            )));
        };
        // Only the keys made before it: a newer one is another rotation's, in flight.
        let mut deleted = Vec::new();
        for k in keys
            .iter()
            .filter(|k| k.id != keep && k.created <= kept.created)
        {
            iam.delete_key(&name, &k.id).await?;
            deleted.push(k.id.clone());
        }
        trail.detail(format!(
            "user {name}: kept key {keep}; deleted {}",
            none_or(&deleted)
        ));
        Ok(Response::KeysRemoved(KeysRemoved {
            identity: self.view_of(&iam, &site, &owner, Some(&user)).await?,
            deleted,
        }))
    }

    pub(crate) async fn identity_show(&self, asked: &Asked<'_>) -> Result<Response, Error> {
        let Mine {
            owner, site, iam, ..
        } = self.mine(asked)?;
        let user = self.own_user(&iam, &site, &owner).await?;
        Ok(Response::Identity(
            self.view_of(&iam, &site, &owner, user.as_ref()).await?,
        ))
    }

    pub(crate) async fn identity_delete(
        &self,
        asked: &Asked<'_>,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        let Mine {
            owner, site, iam, ..
        } = self.mine(asked)?;
        let user = self.own_user(&iam, &site, &owner).await?;
        let view = self.view_of(&iam, &site, &owner, user.as_ref()).await?;
        let deleted = match &user {
            Some(u) => remove_user(&iam, &u.name).await?,
            None => Vec::new(),
        };
        trail.detail(match &user {
            Some(u) => format!("user {} deleted, with keys {}", u.name, none_or(&deleted)),
            None => format!("no user {} to delete", view.user),
        });
        Ok(Response::KeysRemoved(KeysRemoved {
            identity: IdentityView {
                exists: false,
                groups: Vec::new(),
                keys: Vec::new(),
                ..view
            },
            deleted,
        }))
    }

    pub(crate) async fn identities_list(&self, asked: &Asked<'_>) -> Result<Response, Error> {
        self.own_or_instructor(asked, "only instructors may list the class's identities")?;
        let site = self.identity_site()?;
        let iam = self.iam(&site)?;
        let mut out = Vec::new();
        for (owner, user) in self.class_users(&iam, &site).await? {
            out.push(self.view_of(&iam, &site, &owner, Some(&user)).await?);
        }
        Ok(Response::Identities(out))
    }

    /// The class's users in IAM: under its path, tagged with this store and an owner.
    async fn class_users(
        &self,
        iam: &Iam,
        site: &Site<'_>,
    ) -> Result<Vec<(Owner, IamUser)>, Error> {
        let store = self.store().id().as_str().to_owned();
        let mut out = Vec::new();
        for user in iam.users(&site.identities.path()).await? {
            let owner = user.owner.as_deref().and_then(|o| Owner::parse(o).ok());
            match owner {
                Some(o) if user.store.as_deref() == Some(&store) => out.push((o, user)),
                _ => tracing::warn!(
                    user = user.name,
                    "an IAM user under the class's path is not this install's; left alone"
                ),
            }
        }
        Ok(out)
    }

    pub(crate) async fn identities_sync(
        &self,
        asked: &Asked<'_>,
        logins: Vec<String>,
        dry_run: bool,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        self.own_or_instructor(asked, "only instructors may sync the class's identities")?;
        let site = self.identity_site()?;
        let mut roster = crate::config::identities::Roster {
            logins: BTreeSet::new(),
            repeated: Vec::new(),
        };
        for login in &logins {
            roster.logins.insert(Owner::parse(login)?);
        }
        if roster.logins.is_empty() {
            return Err(Error::invalid(
                "the roster names no login; a sync with it would remove every student's identity",
            ));
        }
        let iam = self.iam(&site)?;
        let users = self.class_users(&iam, &site).await?;
        let existing: BTreeSet<Owner> = users.iter().map(|(o, _)| o.clone()).collect();
        let mut plan = crate::config::identities::sync_plan(&roster, &existing);
        // Those who may have an identity without being on the roster keep it.
        plan.remove.retain(|o| !self.exempt_from_roster(asked, o));
        let name_of = |owner: &Owner| {
            users
                .iter()
                .find(|(o, _)| o == owner)
                .map_or_else(|| site.identities.user_name(owner), |(_, u)| u.name.clone())
        };
        let mut done = Synced {
            dry_run,
            create: plan.create.iter().map(Owner::to_string).collect(),
            remove: plan.remove.iter().map(Owner::to_string).collect(),
            kept: roster
                .logins
                .intersection(&existing)
                .map(Owner::to_string)
                .collect(),
            deleted_keys: Vec::new(),
            group: None,
            failed: Vec::new(),
        };
        if dry_run {
            return Ok(Response::Synced(done));
        }
        self.store().set_roster(
            &roster.logins.iter().map(Owner::to_string).collect(),
            now_millis(),
        )?;
        done.group = self.sync_group(&iam, &site).await?;
        for owner in &plan.create {
            let name = site.identities.user_name(owner);
            let made = async {
                iam.create_user(
                    &name,
                    &site.identities.path(),
                    owner.as_str(),
                    self.store().id().as_str(),
                )
                .await?;
                self.own_user(&iam, &site, owner).await?;
                iam.add_to_group(&name, &site.identities.group()).await?;
                Ok::<_, Error>(())
            };
            if let Err(e) = made.await {
                done.failed
                    .push(format!("{owner}: {}", crate::core::error::one_line(&e)));
            }
        }
        for owner in &plan.remove {
            let name = name_of(owner);
            match remove_user(&iam, &name).await {
                Ok(keys) => done.deleted_keys.extend(keys),
                Err(e) => done
                    .failed
                    .push(format!("{owner}: {}", crate::core::error::one_line(&e))),
            }
        }
        for owner in roster.logins.intersection(&existing) {
            let name = name_of(owner);
            if let Err(e) = self.in_group(&iam, &site, &name).await {
                done.failed
                    .push(format!("{owner}: {}", crate::core::error::one_line(&e)));
            }
        }
        trail.detail(format!(
            "roster of {}: created {}; removed {} (keys {}); {} failed",
            roster.logins.len(),
            none_or(&done.create),
            none_or(&done.remove),
            none_or(&done.deleted_keys),
            done.failed.len()
        ));
        Ok(Response::Synced(done))
    }

    /// Makes the students' group, or puts the site's policy on it when it holds another: what
    /// was done, if anything.
    async fn sync_group(&self, iam: &Iam, site: &Site<'_>) -> Result<Option<String>, Error> {
        let group = site.identities.group();
        let policy =
            crate::config::identities::site_group_policy(site.identities, &site.ec2.region)
                .map_err(Error::invalid)?;
        let text = policy.to_string();
        if iam
            .ensure_group(&group, &site.identities.path(), GROUP_POLICY_NAME, &text)
            .await?
        {
            return Ok(Some(format!("made the group {group} with its policy")));
        }
        if iam.group_policy(&group, GROUP_POLICY_NAME).await?.as_ref() == Some(&policy) {
            return Ok(None);
        }
        iam.put_group_policy(&group, GROUP_POLICY_NAME, &text)
            .await?;
        Ok(Some(format!("put the site's policy on the group {group}")))
    }
}

/// Makes room for a new key (see the module's doc) and makes it: the key, and what was deleted.
async fn issue(
    iam: &Iam,
    user: &str,
    keys: &[KeyInfo],
    keep: Option<&str>,
) -> Result<(IssuedKey, Vec<String>), Error> {
    let held = keep.filter(|k| keys.iter().any(|x| x.id == *k));
    let doomed: Vec<&KeyInfo> = match held {
        Some(k) => keys.iter().filter(|x| x.id != k).collect(),
        // No file holds one of them: the oldest goes when there is no room.
        None if keys.len() >= 2 => keys.iter().take(keys.len() - 1).collect(),
        None => Vec::new(),
    };
    let mut deleted = Vec::new();
    for k in doomed {
        iam.delete_key(user, &k.id).await?;
        deleted.push(k.id.clone());
    }
    let new = iam.create_key(user).await?;
    Ok((
        IssuedKey {
            id: new.id,
            secret: new.secret,
        },
        deleted,
    ))
}

/// Deletes the user's keys, takes it out of its groups, and deletes it: the keys deleted.
async fn remove_user(iam: &Iam, user: &str) -> Result<Vec<String>, Error> {
    let mut deleted = Vec::new();
    for k in iam.keys(user).await? {
        iam.delete_key(user, &k.id).await?;
        deleted.push(k.id);
    }
    for g in iam.groups_of(user).await? {
        iam.remove_from_group(user, &g).await?;
    }
    iam.delete_user(user).await?;
    Ok(deleted)
}

fn key_view(k: &KeyInfo) -> KeyView {
    let now = now_millis();
    KeyView {
        id: k.id.clone(),
        created_at: k
            .created
            .map(|t| crate::core::model::rfc3339(t.as_millisecond())),
        age_days: k
            .created
            .map(|t| ((now - t.as_millisecond()).max(0) / 86_400_000) as u64),
        active: k.active,
    }
}

fn ids(keys: &[KeyInfo]) -> String {
    none_or(&keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>())
}

fn none_or(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn issued_detail(user: &str, created: bool, key: &str, deleted: &[String]) -> String {
    format!(
        "user {user}{}: key {key} created; deleted {}",
        if created { " created" } else { "" },
        none_or(deleted)
    )
}
