//! Quotas: the instructor's policy (`policy`), the requests and answers of the privileged path
//! (`protocol`), and the runner that serves them (`runner`) (DESIGN.md, "Privilege model").
//!
//! `Admission` is what the lifecycle asks before it creates anything. It runs inside the
//! transaction that records a new cluster (or, for more workers, in one of its own), so the
//! check and the reservation it writes cannot race another launch: fifty launches at once never
//! take more than the policy allows.

pub mod policy;
pub mod protocol;
pub mod runner;

use serde::Serialize;

use crate::accounting::{self, prices};
use crate::config::SiteConfig;
use crate::error::{Error, InputError};
use crate::model::{Millis, RequestId, now_millis};
use crate::store::quota::{self as ledger, NewReservation};
use crate::store::{ClusterRow, NewCluster, Store, StoreError};
use policy::{Limits, Micros, MilliUnits, Policy, dollars_text, units_text};

/// The quota check a launch runs through: a policy and whom it applies to, or nothing.
pub struct Admission<'a> {
    rules: Option<Rules<'a>>,
}

struct Rules<'a> {
    policy: &'a Policy,
    limits: Limits,
    config: &'a SiteConfig,
    user: String,
}

/// What a launch asks for, in the policy's terms.
struct Ask {
    units: MilliUnits,
    /// Nodes the cluster will hold, master included.
    nodes: u32,
    /// The most it may cost: every node for the longest lifetime the policy allows.
    max_cost: Micros,
    /// How the units were counted, for a refusal.
    breakdown: String,
}

impl Admission<'static> {
    /// No policy: nothing is limited (a single-user install without a policy file).
    pub fn unlimited() -> Self {
        Self { rules: None }
    }
}

impl<'a> Admission<'a> {
    /// The policy, applied to `user` with the groups `groups`.
    pub fn new(policy: &'a Policy, config: &'a SiteConfig, user: &str, groups: &[String]) -> Self {
        Self {
            rules: Some(Rules {
                limits: policy.limits(user, groups),
                policy,
                config,
                user: user.to_owned(),
            }),
        }
    }

    /// Checks a new cluster against the policy and reserves what it takes, inside the
    /// transaction that records it (`cluster_id` is its uncommitted row).
    pub fn admit_launch(
        &self,
        tx: &rusqlite::Transaction<'_>,
        cluster_id: i64,
        new: &NewCluster<'_>,
        workers: u32,
    ) -> Result<Result<(), InputError>, StoreError> {
        let Some(r) = &self.rules else {
            return Ok(Ok(()));
        };
        let profile = &new.record.profile;
        if let Some(allowed) = &r.limits.profiles
            && !allowed.contains(&profile.name)
        {
            return Ok(Err(r.refuse(format!(
                "profile {} is not one {} may use ({})",
                profile.name,
                r.user,
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            ))));
        }
        let ask = match r.ask(profile, 1, workers) {
            Ok(a) => a,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if let Some(max) = r.limits.max_clusters {
            let live = ledger::live_clusters(tx, &r.user, cluster_id)?;
            if live + 1 > max {
                return Ok(Err(r.refuse(format!(
                    "max_clusters for {} is {max}; {live} are live, and this launch would make {}",
                    r.user,
                    live + 1
                ))));
            }
        }
        if let Err(refusal) = r.check(tx, cluster_id, &ask, "this launch")? {
            return Ok(Err(refusal));
        }
        ledger::insert_reservation(
            tx,
            &NewReservation {
                cluster_id,
                owner: new.owner.as_str(),
                request: new.request_id.as_str(),
                units: ask.units,
                nodes: ask.nodes,
                max_cost: ask.max_cost,
            },
        )?;
        Ok(Ok(()))
    }

    /// Checks `count` more workers for a live cluster against the policy and reserves them, in
    /// one transaction of their own.
    pub fn admit_growth(
        &self,
        store: &Store,
        cluster: &ClusterRow,
        request: &RequestId,
        count: u32,
    ) -> Result<(), Error> {
        let Some(r) = &self.rules else {
            return Ok(());
        };
        store.immediate(|tx| -> Result<(), Error> {
            let held = ledger::cluster_nodes(tx, cluster.id)?;
            let mut ask = r.ask(&cluster.record.profile, 0, count)?;
            ask.nodes = held + count;
            r.check(tx, -1, &ask, &format!("adding {count} workers"))??;
            ledger::insert_reservation(
                tx,
                &NewReservation {
                    cluster_id: cluster.id,
                    owner: cluster.owner.as_str(),
                    request: request.as_str(),
                    units: ask.units,
                    nodes: count,
                    max_cost: ask.max_cost,
                },
            )?;
            Ok(())
        })
    }
}

impl Rules<'_> {
    fn refuse(&self, why: String) -> InputError {
        InputError::Invalid(format!(
            "refused by the policy ({}): {why}",
            self.policy.path.display()
        ))
    }

    /// Units, nodes and the most it may cost: `masters` masters and `workers` workers of
    /// `profile`.
    fn ask(
        &self,
        profile: &crate::cluster::profile::Profile,
        masters: u32,
        workers: u32,
    ) -> Result<Ask, InputError> {
        let mut units: MilliUnits = 0;
        let mut parts = Vec::new();
        // Micro-dollars per 730 hours of every node (`prices::node_rate`).
        let mut rate: Micros = 0;
        for (settings, n, what) in [
            (&profile.master, masters, "master"),
            (&profile.worker, workers, "workers"),
        ] {
            if n == 0 {
                continue;
            }
            // Every type the role may fall back to must be allowed, and the most a node may
            // take (in units and in money) is what is reserved.
            let (mut u, mut price, mut ty) = (0, 0, "");
            for (k, t) in settings.types().into_iter().enumerate() {
                let fallback = if k == 0 { "" } else { "a fallback type of " };
                let tu = self.policy.units_of(t).ok_or_else(|| {
                    self.refuse(format!(
                        "instance type {t} ({fallback}the {what} of profile {}) is not listed under [units]",
                        profile.name
                    ))
                })?;
                if tu > u || ty.is_empty() {
                    (u, ty) = (tu, t);
                }
                if self.limits.budget.is_some() {
                    // Its instance, its root volume and a public IPv4 address.
                    let node = prices::NodeCost {
                        instance_type: t,
                        spot: settings.spot,
                        volume_gb: settings.volume_gb.unwrap_or(prices::DEFAULT_ROOT_GB),
                        public_ipv4: true,
                    };
                    let p = prices::node_rate(self.config, &node).ok_or_else(|| {
                        self.refuse(format!(
                            "no price is known for {t}, so no budget can be checked; add it under [prices] in the site config"
                        ))
                    })?;
                    price = price.max(p);
                }
            }
            units += u * u64::from(n);
            parts.push(format!("{n} {what} of {ty} at {} each", units_text(u)));
            rate += price * i64::from(n);
        }
        let lifetime = self.limits.lifetime(profile);
        let max_cost = match lifetime {
            Some(ms) if rate > 0 => prices::cost_at_rate(rate, ms),
            _ => 0,
        };
        Ok(Ask {
            units,
            nodes: masters + workers,
            max_cost,
            breakdown: parts.join(" and "),
        })
    }

    /// The checks against what is in use: nodes, the user's units, the class's units, the
    /// budget. `except` is the cluster row being admitted (not counted as in use).
    fn check(
        &self,
        tx: &rusqlite::Transaction<'_>,
        except: i64,
        ask: &Ask,
        what: &str,
    ) -> Result<Result<(), InputError>, StoreError> {
        if let Some(max) = self.limits.max_nodes
            && ask.nodes > max
        {
            return Ok(Err(self.refuse(format!(
                "max_nodes for {} is {max} per cluster, master included; {what} asks for {}",
                self.user, ask.nodes
            ))));
        }
        if let Some(max) = self.limits.max_units {
            let used = ledger::open_units(tx, &self.user, except)?;
            if used + ask.units > max {
                return Ok(Err(self.refuse(format!(
                    "max_units for {} is {}; {} are in use, and {what} needs {} ({})",
                    self.user,
                    units_text(max),
                    units_text(used),
                    units_text(ask.units),
                    ask.breakdown
                ))));
            }
        }
        if let Some(max) = self.policy.class_max_units {
            let used = ledger::class_units(tx, except)?;
            if used + ask.units > max {
                return Ok(Err(self.refuse(format!(
                    "the class's max_units is {}; {} are in use by everyone, and {what} needs {}",
                    units_text(max),
                    units_text(used),
                    units_text(ask.units)
                ))));
            }
        }
        if let Some(budget) = self.limits.budget {
            let (spent, by_cluster) = spending(tx, self.policy, self.config, &self.user)?;
            // A running cluster may still spend what its reservation allows beyond what it
            // has spent (counted once, in `spent`).
            let committed: Micros = ledger::open_max_costs(tx, &self.user, except)?
                .into_iter()
                .map(|(cluster, max)| (max - by_cluster.get(&cluster).copied().unwrap_or(0)).max(0))
                .sum();
            let left = budget - spent - committed;
            if ask.max_cost > left {
                return Ok(Err(self.refuse(format!(
                    "{} has {} of the {} budget left ({} spent, {} held by running clusters), and {what} could cost up to {} over its lifetime",
                    self.user,
                    dollars_text(left.max(0)),
                    dollars_text(budget),
                    dollars_text(spent),
                    dollars_text(committed),
                    dollars_text(ask.max_cost)
                ))));
            }
        }
        Ok(Ok(()))
    }
}

/// What `owner` has spent in the policy's term, from recorded usage, in micro-dollars.
pub fn spent_by(
    store: &Store,
    policy: &Policy,
    config: &SiteConfig,
    owner: &str,
) -> Result<Micros, StoreError> {
    store.immediate(|tx| spent(tx, policy, config, owner))
}

/// What `owner` has spent in the policy's term, from recorded usage, in micro-dollars.
fn spent(
    tx: &rusqlite::Connection,
    policy: &Policy,
    config: &SiteConfig,
    owner: &str,
) -> Result<Micros, StoreError> {
    Ok(spending(tx, policy, config, owner)?.0)
}

/// What `owner` has spent in the policy's term, in all and by cluster, counted as the
/// accounting report counts it (clipped to the term, per second, the 60-second minimum where a
/// run starts).
fn spending(
    tx: &rusqlite::Connection,
    policy: &Policy,
    config: &SiteConfig,
    owner: &str,
) -> Result<(Micros, std::collections::BTreeMap<i64, Micros>), StoreError> {
    let now = now_millis();
    let since = policy.term_start.map(|t| t.as_millisecond()).unwrap_or(0);
    let until = policy
        .term_end
        .map(|t| t.as_millisecond())
        .unwrap_or(Millis::MAX)
        .min(now);
    let intervals = crate::store::quota::intervals_in(tx, Some(owner), since, until)?;
    let r = accounting::report::report(
        config,
        &Default::default(),
        &intervals,
        since,
        until,
        now,
        accounting::report::By::Cluster,
    );
    let by_cluster = r
        .rows
        .iter()
        .filter_map(|row| row.cluster_id.map(|id| (id, row.micros)))
        .collect();
    Ok((r.total.micros, by_cluster))
}

/// `stratus quota --json`: a user's limits, use and what is left.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct QuotaReport {
    pub user: String,
    pub limits: QuotaNumbers,
    pub used: QuotaUse,
    pub left: QuotaUse,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct QuotaNumbers {
    pub max_units: Option<f64>,
    pub max_clusters: Option<u32>,
    pub max_nodes: Option<u32>,
    pub max_lifetime_hours: Option<f64>,
    pub budget_dollars: Option<f64>,
    pub profiles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct QuotaUse {
    pub units: Option<f64>,
    pub clusters: Option<u32>,
    pub dollars: Option<f64>,
}

/// What `user` may use, uses and has left under `policy` (everything unlimited without one).
pub fn report(
    store: &Store,
    policy: Option<&Policy>,
    config: &SiteConfig,
    user: &str,
    groups: &[String],
) -> Result<QuotaReport, StoreError> {
    let limits = policy.map(|p| p.limits(user, groups)).unwrap_or_default();
    let (units, clusters, spent) = store.immediate(|tx| -> Result<_, StoreError> {
        let units = ledger::open_units(tx, user, -1)?;
        let clusters = ledger::live_clusters(tx, user, -1)?;
        let spent = match policy {
            Some(p) => Some(spent(tx, p, config, user)?),
            None => None,
        };
        Ok((units, clusters, spent))
    })?;
    let spent = match spent {
        Some(s) => s,
        None => {
            let ivs = store.intervals_of(Some(user), 0, Millis::MAX)?;
            accounting::cost_of(config, &ivs, now_millis(), &mut Vec::new()).1
        }
    };
    let u = |m: u64| m as f64 / 1000.0;
    let d = |m: Micros| accounting::micros_to_dollars(m);
    Ok(QuotaReport {
        user: user.to_owned(),
        limits: QuotaNumbers {
            max_units: limits.max_units.map(u),
            max_clusters: limits.max_clusters,
            max_nodes: limits.max_nodes,
            max_lifetime_hours: limits.max_lifetime.map(|ms| ms as f64 / 3_600_000.0),
            budget_dollars: limits.budget.map(d),
            profiles: limits.profiles.map(|p| p.into_iter().collect()),
        },
        used: QuotaUse {
            units: Some(u(units)),
            clusters: Some(clusters),
            dollars: Some(d(spent)),
        },
        left: QuotaUse {
            units: limits.max_units.map(|m| u(m.saturating_sub(units))),
            clusters: limits.max_clusters.map(|m| m.saturating_sub(clusters)),
            dollars: limits.budget.map(|b| d((b - spent).max(0))),
        },
    })
}
