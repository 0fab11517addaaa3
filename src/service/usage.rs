//! The requests about hours and money: usage, quota, the accounting report, the audit trail,
//! and cron's two jobs, the snapshot and the reaper.

use super::protocol::{ReportAnswer, Response};
use super::{Asked, LoadedPolicy, Service};
use crate::accounting::reaper::{self, Orphans};
use crate::accounting::report::By;
use crate::accounting::snapshot;
use crate::core::error::Error;
use crate::core::input::parse_time;
use crate::core::model::now_millis;
use crate::policy::Policy;

impl Service {
    pub(super) async fn usage(
        &self,
        asked: &Asked<'_>,
        owner: Option<&str>,
        everyone: bool,
    ) -> Result<Response, Error> {
        let owners = asked.owners(owner, everyone, "see everyone's usage")?;
        let clusters = self.store().list_clusters(owners.as_ref())?;
        if let Some(o) = owners.as_ref()
            && *o != asked.caller.owner
            && clusters.is_empty()
        {
            known_user(o)?;
        }
        self.refresh_all(&clusters).await;
        let intervals = self
            .store()
            .intervals(&clusters.iter().map(|c| c.id).collect::<Vec<_>>())?;
        let rows = crate::accounting::usage_rows(
            self.config(),
            &clusters,
            &intervals,
            now_millis(),
            &mut Vec::new(),
        );
        Ok(Response::Usage(rows))
    }

    /// The caller's quota, or (instructors) another user's, resolved with that user's groups.
    pub(super) fn quota(&self, asked: &Asked<'_>, owner: Option<&str>) -> Result<Response, Error> {
        if let LoadedPolicy::Broken(e) = asked.policy {
            return Err(Error::invalid(crate::core::error::one_line(e)));
        }
        let owner = asked.owner_for(owner)?;
        if owner != asked.caller.owner && self.store().list_clusters(Some(&owner))?.is_empty() {
            known_user(&owner)?;
        }
        let r = super::admission::quota(
            self.store(),
            asked.policy.present(),
            self.config(),
            owner.as_str(),
            &asked.groups_of(&owner),
        )?;
        Ok(Response::Quota(r))
    }

    /// The accounting report of everyone's recorded usage in `[since, until)`.
    pub(super) fn report(
        &self,
        asked: &Asked<'_>,
        by: By,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Response, Error> {
        self.own_or_instructor(asked, "only instructors may read the accounting report")?;
        let since = since.map(parse_time).transpose()?;
        let until = until.map(parse_time).transpose()?;
        let report = crate::accounting::report_from_store(
            self.store(),
            self.config(),
            since,
            until,
            now_millis(),
            by,
        )?;
        Ok(Response::Report(ReportAnswer { report }))
    }

    /// The term's close (`report --term`): the policy's term, by user.
    pub(super) fn term_report(&self, asked: &Asked<'_>) -> Result<Response, Error> {
        let policy = asked.policy.present().ok_or_else(|| {
            Error::invalid("report --term needs the policy's term, and there is no policy")
        })?;
        let (Some(start), Some(end)) = (policy.term_start, policy.term_end) else {
            return Err(Error::invalid(format!(
                "report --term needs [class] term_start and term_end in {}",
                policy.path.display()
            )));
        };
        let (start, end) = (start.to_string(), end.to_string());
        self.report(asked, By::User, Some(&start), Some(&end))
    }

    pub(super) fn audit_trail(
        &self,
        asked: &Asked<'_>,
        since: Option<&str>,
    ) -> Result<Response, Error> {
        if !asked.is_instructor() {
            return Err(Error::refused("only instructors may read the audit trail"));
        }
        let since = since.map(parse_time).transpose()?.unwrap_or(0);
        Ok(Response::Audit(self.store().audit_since(since)?))
    }

    /// Records every instance's state and hours. First, cron's chance to finish what
    /// interrupted commands of anyone left behind (a terminate cut short, a rollback that did
    /// not get through, an unfinished launch call): nobody else may come back to it.
    pub(super) async fn snapshot(&self, asked: &Asked<'_>) -> Result<Response, Error> {
        self.own_or_instructor(asked, "only instructors may take the accounting snapshot")?;
        let provider = self.provider(self.config().provider).await?;
        self.warn_of_expiring_credentials(&provider);
        // Orphans as the policy says: terminated here (recorded first), or left to the snapshot,
        // which records and reports them.
        let options = automatic_reconcile(asked.policy);
        let terminated = match crate::cluster::reconcile::reconcile(
            self.ctx(),
            provider.as_ref(),
            None,
            &options,
        )
        .await
        {
            Ok(actions) => actions
                .into_iter()
                .filter(|a| a.action == "orphans")
                .flat_map(|a| a.instances)
                .collect(),
            Err(e) => {
                self.printer().warn(format!(
                    "could not reconcile first: {}",
                    crate::core::error::one_line(&e)
                ));
                Vec::new()
            }
        };
        let mut r = snapshot::snapshot(self.ctx(), provider.as_ref()).await?;
        r.orphans_terminated = terminated;
        Ok(Response::Snapshot(r))
    }

    /// One pass of the reaper. Without a policy there is no lifetime or budget to enforce, but
    /// orphans are still found.
    pub(super) async fn reap(
        &self,
        asked: &Asked<'_>,
        dry_run: bool,
        orphans: Option<Orphans>,
    ) -> Result<Response, Error> {
        self.own_or_instructor(asked, "only instructors may run the reaper")?;
        let none;
        let policy = match asked.policy {
            LoadedPolicy::Present(p) => p,
            LoadedPolicy::Broken(e) => {
                return Err(Error::invalid(crate::core::error::one_line(e)));
            }
            _ => {
                none = Policy::parse("", std::path::Path::new("(no policy)"))
                    .map_err(|e| Error::runtime(e.to_string()))?;
                &none
            }
        };
        let provider = self.provider(self.config().provider).await?;
        self.warn_of_expiring_credentials(&provider);
        let actions = reaper::reap(
            self.ctx(),
            provider.as_ref(),
            policy,
            self.config(),
            now_millis(),
            dry_run,
            orphans.unwrap_or(policy.orphans),
        )
        .await?;
        Ok(Response::Reaped(actions))
    }
}

/// The options of a reconcile that runs by itself (before the snapshot, a launch or a terminate,
/// at the class service's start): orphans as the policy's `[reaper] orphans` says, terminated
/// only under `terminate`, else left to the snapshot to record and report.
pub(super) fn automatic_reconcile(policy: &LoadedPolicy) -> crate::cluster::reconcile::Options {
    let orphans = policy.present().map(|p| p.orphans).unwrap_or_default();
    crate::cluster::reconcile::Options {
        terminate_orphans: orphans == Orphans::Terminate,
        ..crate::cluster::reconcile::Options::new(false)
    }
}

/// A user with no clusters must at least be a user: an instructor's typo (`--owner alcie`) is
/// an error naming it, not an empty table. One who left (no account any more) but launched
/// clusters is still known by them.
fn known_user(owner: &crate::core::model::Owner) -> Result<(), Error> {
    match crate::sys::passwd_by_name(owner.as_str()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::invalid(format!(
            "no such user: {owner} (no account of that name, and no cluster of theirs on record)"
        ))),
        Err(e) => Err(Error::runtime(format!(
            "cannot look up the user {owner}: {e}"
        ))),
    }
}

impl Service {
    /// Cron's runs (and the service's timers) say so, loudly, when the service account's
    /// temporary credentials expire within a day: nobody else would notice before they stop.
    fn warn_of_expiring_credentials(&self, provider: &crate::cluster::provider::AnyProvider) {
        if let Some(w) = crate::cluster::provider::ec2::credentials::notice(provider) {
            self.printer().warn(&w);
        }
    }
}
