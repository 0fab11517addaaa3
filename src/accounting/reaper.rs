//! `stratus accounting reap` (cron, every 15 minutes): ends what breaks the policy, the most
//! common cause of a runaway bill being a cluster left running.
//!
//! A cluster is due when it has lived longer than its owner may keep one (the policy's
//! `max_lifetime_hours`, or the profile's if lower), or when its owner's budget is spent. It is
//! first warned: a `stratus:reap-after` tag on its instances, a note in its owner's `stratus
//! list` saying when and why, and an audit row. A later run terminates it once the policy's
//! `[reaper] grace_minutes` have passed since the warning. Orphans (instances of this store no
//! row knows) are reported, and terminated with `--orphans terminate`. Every action is audited.

use serde::{Deserialize, Serialize};

use crate::cluster::Ctx;
use crate::cluster::provider::{Provider, Selector};
use crate::cluster::{reconcile, terminate};
use crate::config::SiteConfig;
use crate::core::error::Error;
use crate::core::model::{ClusterState, Millis, Owner, hours_text, local_time, rfc3339};
use crate::core::money::dollars_text;
use crate::policy::Policy;
use crate::store::{AuditRecord, ClusterRow};

/// The tag a warned cluster's instances carry: when the reaper may terminate them (RFC 3339).
pub const TAG_REAP_AFTER: &str = "stratus:reap-after";

/// One thing the reaper did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapAction {
    pub cluster: String,
    pub owner: String,
    /// `warn`, `terminate` or `orphan`.
    pub action: String,
    pub reason: String,
}

/// What to do about orphans: the policy's `[reaper] orphans`, or the reaper's flag.
pub use crate::policy::Orphans;

/// Why a cluster is due, if it is: the term is over, its deadline passed, or its owner's
/// budget is spent. The limit is named in the policy's own units (`0.25 h`).
fn due(
    c: &ClusterRow,
    policy: &Policy,
    config: &SiteConfig,
    store: &crate::store::Store,
    now: Millis,
) -> Result<Option<String>, Error> {
    if let Some(end) = policy.term_over(now) {
        return Ok(Some(format!("the term ended {end} ([class] term_end)")));
    }
    let limits = policy.limits(
        c.owner.as_str(),
        &crate::sys::groups_of_user(c.owner.as_str()),
    );
    if let Some(deadline) = limits.deadline_of(c)
        && now > deadline
    {
        let lived = hours_text(deadline - c.created_at);
        let extended = match c.extensions {
            0 => String::new(),
            1 => ", extended once,".into(),
            n => format!(", extended {n} times,"),
        };
        return Ok(Some(format!(
            "its lifetime of {lived} h{extended} is over ({} h allowed)",
            limits
                .max_lifetime_of(&c.record.profile)
                .map_or_else(|| lived.clone(), hours_text)
        )));
    }
    if let Some(budget) = limits.budget {
        let spent = super::spending::spent_by(store, policy, config, c.owner.as_str())?;
        if spent >= budget {
            return Ok(Some(format!(
                "{}'s budget of {} is spent ({} used)",
                c.owner,
                dollars_text(budget),
                dollars_text(spent)
            )));
        }
    }
    Ok(None)
}

/// What the reaper's warning says, where it says when: once, in local time with the zone.
const TERMINATED_AFTER: &str = "; it will be terminated after";

/// One pass of the reaper over every cluster of this store on `provider`.
pub async fn reap<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    policy: &Policy,
    config: &SiteConfig,
    now: Millis,
    dry_run: bool,
    orphans: Orphans,
) -> Result<Vec<ReapAction>, Error> {
    let reaper = Reaper {
        ctx,
        provider,
        policy,
        config,
        now,
        dry_run,
    };
    let mut actions = Vec::new();
    let clusters: Vec<ClusterRow> = ctx
        .store
        .list_clusters(None)?
        .into_iter()
        .filter(|c| c.provider == provider.kind())
        .filter(|c| {
            // Every state that may hold instances: a launch stuck before running, and a
            // terminate that stopped, run past their deadlines like any other.
            matches!(
                c.state,
                ClusterState::Reserved
                    | ClusterState::Requested
                    | ClusterState::Running
                    | ClusterState::Configured
                    | ClusterState::Terminating
            )
        })
        .collect();
    for c in &clusters {
        if let Some(a) = reaper.cluster(c).await? {
            actions.push(a);
        }
    }
    actions.extend(reaper.orphans(orphans).await?);
    Ok(actions)
}

/// One pass, and what it runs with.
struct Reaper<'a, P> {
    ctx: Ctx<'a>,
    provider: &'a P,
    policy: &'a Policy,
    config: &'a SiteConfig,
    now: Millis,
    dry_run: bool,
}

impl<P: Provider> Reaper<'_, P> {
    /// Warns a cluster that breaks the policy, or terminates it once its grace is over.
    async fn cluster(&self, c: &ClusterRow) -> Result<Option<ReapAction>, Error> {
        let (ctx, now) = (self.ctx, self.now);
        if c.state == ClusterState::Terminating {
            return self.stuck_terminate(c).await;
        }
        let reason = match due(c, self.policy, self.config, ctx.store, now)? {
            Some(r) => Some(r),
            None => super::idle::idle_reason(ctx, self.policy, c, now, self.dry_run).await?,
        };
        let Some(reason) = reason else {
            // No longer due (the instructor raised a limit, say): a new breach gets a new
            // warning and a new grace, and the nodes get their deadline back.
            if c.reap_after.is_some() && !self.dry_run {
                ctx.store.set_reap(c.id, None, None)?;
                let back = "stratus: the reaper's warning is withdrawn (what it warned of no longer holds); the cluster keeps running.";
                self.tell_nodes(c, c.deadline, back).await;
            }
            return Ok(None);
        };
        let ids: Vec<String> = terminate::live_nodes(ctx, c)?
            .into_iter()
            .map(|n| n.instance_id)
            .collect();
        let action = |action: &str, reason: String| ReapAction {
            cluster: c.name.to_string(),
            owner: c.owner.to_string(),
            action: action.into(),
            reason,
        };
        match c.reap_after {
            None => {
                let after = now + self.policy.reaper_grace;
                let a = action(
                    "warn",
                    format!("{reason}{TERMINATED_AFTER} {}", local_time(after)),
                );
                if !self.dry_run {
                    ctx.store.set_reap(c.id, Some(after), Some(&a.reason))?;
                    if let Err(e) = self
                        .provider
                        .tag(&ids, &[(TAG_REAP_AFTER.to_owned(), rfc3339(after))])
                        .await
                    {
                        tracing::warn!("cannot tag {} with its reaper warning: {e}", c.name);
                    }
                    // The nodes' guard ends it by then too, if this machine cannot: its
                    // deadline on the nodes becomes now (the guard's grace is the reaper's).
                    let notice = format!(
                        "stratus: the reaper warns cluster {}: {}. Copy your results off now; `stratus list` says more.",
                        c.name, a.reason
                    );
                    let on_nodes = match c.deadline {
                        Some(d) if d <= now => Some(d),
                        _ => Some(now),
                    };
                    self.tell_nodes(c, on_nodes, &notice).await;
                }
                self.audit(&a, ids);
                Ok(Some(a))
            }
            Some(after) if now >= after => {
                let why = c
                    .reap_reason
                    .clone()
                    .unwrap_or(reason)
                    .split(TERMINATED_AFTER)
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let a = action("terminate", why);
                if !self.dry_run {
                    ctx.store.set_ended_by(c.id, "the reaper", &a.reason)?;
                }
                if !self.dry_run
                    && let Err(e) = terminate::terminate(ctx, self.provider, c).await
                {
                    // One cluster that will not end does not stop the others: the next pass
                    // tries it again.
                    tracing::error!(cluster = %c.name, owner = %c.owner, "the reaper could not terminate it: {}", crate::core::error::one_line(&e));
                    return Ok(None);
                }
                self.audit(&a, ids);
                Ok(Some(a))
            }
            // Warned; the grace is not over.
            Some(_) => Ok(None),
        }
    }

    /// A cluster left `terminating` by a terminate that is no longer making progress (its
    /// process died, or stopped renewing its lock's lease): the terminate is finished now, with
    /// no warning or grace, since its owner or an instructor already asked for it.
    async fn stuck_terminate(&self, c: &ClusterRow) -> Result<Option<ReapAction>, Error> {
        let ctx = self.ctx;
        if crate::cluster::locks::TerminateLock::is_held(ctx.state_dir, c.id) {
            return Ok(None);
        }
        let ids: Vec<String> = terminate::live_nodes(ctx, c)?
            .into_iter()
            .map(|n| n.instance_id)
            .collect();
        let a = ReapAction {
            cluster: c.name.to_string(),
            owner: c.owner.to_string(),
            action: "terminate".into(),
            reason: "its terminate stopped before the end (the process working on it died or made no progress)".into(),
        };
        if !self.dry_run
            && let Err(e) = terminate::terminate(ctx, self.provider, c).await
        {
            tracing::error!(cluster = %c.name, owner = %c.owner, "the reaper could not finish its terminate: {}", crate::core::error::one_line(&e));
            return Ok(None);
        }
        self.audit(&a, ids);
        Ok(Some(a))
    }

    /// Orphans: this store's instances that no row knows, whose launcher is not running;
    /// reported, and with `Orphans::Terminate` recorded (with their hours) and terminated.
    async fn orphans(&self, orphans: Orphans) -> Result<Vec<ReapAction>, Error> {
        let (ctx, provider) = (self.ctx, self.provider);
        let listed = provider
            .describe(&Selector {
                store: Some(ctx.store.id().clone()),
                ..Default::default()
            })
            .await?;
        let grace = crate::core::model::millis_of(provider.consistency_grace());
        let mut actions = Vec::new();
        let mut owners: Vec<Owner> = Vec::new();
        for i in &listed {
            let Some(t) = &i.tags else { continue };
            if !crate::cluster::orphans::to_terminate(ctx, i, self.now, grace)? {
                continue;
            }
            let a = ReapAction {
                cluster: t.cluster.to_string(),
                owner: t.owner.to_string(),
                action: "orphan".into(),
                reason: format!(
                    "instance {} runs under this store's tags with no record{}",
                    i.id,
                    if orphans == Orphans::Terminate {
                        "; terminated"
                    } else {
                        ""
                    }
                ),
            };
            self.audit(&a, vec![i.id.clone()]);
            actions.push(a);
            if !owners.contains(&t.owner) {
                owners.push(t.owner.clone());
            }
        }
        if orphans == Orphans::Terminate && !self.dry_run {
            // Reconcile records them (with their hours) and terminates them.
            for o in &owners {
                reconcile::reconcile(
                    ctx,
                    provider,
                    Some(o),
                    &reconcile::Options {
                        orphan_grace: provider.consistency_grace(),
                        ..reconcile::Options::new(false)
                    },
                )
                .await?;
            }
        }
        Ok(actions)
    }

    /// Moves the deadline on `c`'s nodes and leaves them a notice for their terminals; a node
    /// that cannot be reached is logged (the reaper's own terminate does not depend on it).
    async fn tell_nodes(&self, c: &ClusterRow, deadline: Option<Millis>, notice: &str) {
        if c.record.guard.is_none() {
            return;
        }
        let script = crate::cluster::clock::set_script(deadline, Some(notice));
        match crate::cluster::clock::push(self.ctx, c, &script).await {
            Ok(failed) => {
                for (node, why) in failed {
                    tracing::warn!(cluster = %c.name, owner = %c.owner, "cannot reach {node} to leave the reaper's notice: {why}");
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %c.name, "cannot leave the reaper's notice on the nodes: {e}")
            }
        }
    }

    /// One row of the audit trail and one syslog line per action (none in a dry run).
    fn audit(&self, a: &ReapAction, instances: Vec<String>) {
        if self.dry_run {
            return;
        }
        let reason = crate::core::text::escape(&a.reason);
        let record = AuditRecord {
            at: String::new(),
            user: "reaper".into(),
            action: format!("reap-{}", a.action),
            cluster: Some(AuditRecord::cluster_of(&a.owner, &a.cluster)),
            decision: "done".into(),
            reason: Some(a.reason.clone()),
            instances,
        };
        if let Err(e) = self.ctx.store.audit(&record, self.now) {
            tracing::error!("cannot write the audit trail: {e}");
        }
        crate::sys::syslog(&format!(
            "reaper action={} owner={} cluster={} reason=\"{reason}\"",
            a.action, a.owner, a.cluster
        ));
    }
}
