//! The policy at work: the admission a launch runs through (the policy's pure rules, fed with
//! what the store says is in use, inside the transaction that records the launch, which also
//! writes the reservation), and a user's quota as `stratus quota` shows it.
//!
//! Because the check and the reservation share one `BEGIN IMMEDIATE` transaction, fifty launches
//! at once never take more than the policy allows.

use serde::{Deserialize, Serialize};

use crate::accounting;
use crate::cluster::Admit;
use crate::config::SiteConfig;
use crate::core::error::Error;
use crate::core::model::{Millis, RequestId, now_millis, rfc3339};
use crate::core::money::{Micros, MilliUnits};
use crate::policy::Policy;
use crate::policy::admission::{Ask, InUse, Rules};
use crate::store::quota::{self as ledger, NewReservation};
use crate::store::{ClusterRow, NewCluster, Store, StoreError};

/// The quota check of one user's requests: a policy's rules, or nothing (no policy).
pub struct Admission<'a> {
    rules: Option<Rules<'a>>,
    policy: Option<&'a Policy>,
    config: &'a SiteConfig,
}

impl<'a> Admission<'a> {
    /// `policy` (if any) applied to `user` with the groups `groups`.
    pub fn new(
        policy: Option<&'a Policy>,
        config: &'a SiteConfig,
        user: &str,
        groups: &[String],
    ) -> Self {
        Self {
            rules: policy.map(|p| Rules::new(p, config, user, groups)),
            policy,
            config,
        }
    }
}

/// What is in use, read in the admission's transaction.
struct Ledger<'t, 'a> {
    tx: &'t rusqlite::Connection,
    user: &'a str,
    /// The cluster being admitted, not counted as in use (`-1`: none).
    except: i64,
    policy: &'a Policy,
    config: &'a SiteConfig,
}

impl InUse for Ledger<'_, '_> {
    type Error = StoreError;

    fn live_clusters(&mut self) -> Result<u32, StoreError> {
        ledger::live_clusters(self.tx, self.user, self.except)
    }

    fn user_units(&mut self) -> Result<MilliUnits, StoreError> {
        ledger::open_units(self.tx, self.user, self.except)
    }

    fn class_units(&mut self) -> Result<MilliUnits, StoreError> {
        ledger::class_units(self.tx, self.except)
    }

    fn spending(&mut self) -> Result<(Micros, Micros), StoreError> {
        let (spent, by_cluster) =
            accounting::spending::spending(self.tx, self.policy, self.config, self.user)?;
        // A running cluster may still spend what its reservation allows beyond what it has
        // spent (counted once, in `spent`).
        let committed: Micros = ledger::open_max_costs(self.tx, self.user, self.except)?
            .into_iter()
            .map(|(cluster, max)| (max - by_cluster.get(&cluster).copied().unwrap_or(0)).max(0))
            .sum();
        Ok((spent, committed))
    }
}

/// What an admitted request writes in its transaction: the reservation (when a policy asked
/// for one) and the "accepted" row of the audit trail, so that a launch is on record before it
/// creates anything, even if its process dies right after.
struct Admitted<'a> {
    cluster_id: i64,
    owner: &'a str,
    cluster: &'a str,
    action: &'a str,
    request: &'a str,
}

impl Admitted<'_> {
    fn record(&self, tx: &rusqlite::Connection, ask: Option<&Ask>) -> Result<(), StoreError> {
        if let Some(ask) = ask {
            ledger::insert_reservation(
                tx,
                &NewReservation {
                    cluster_id: self.cluster_id,
                    owner: self.owner,
                    request: self.request,
                    units: ask.units,
                    nodes: ask.nodes,
                    max_cost: ask.max_cost,
                },
            )?;
        }
        let request = self.request;
        let reason = match ask {
            Some(a) => format!(
                "request {request}: {} nodes and {} units reserved{}",
                a.nodes,
                crate::core::money::units_text(a.units),
                if a.max_cost > 0 {
                    format!(
                        ", up to {} of the budget",
                        crate::core::money::dollars_text(a.max_cost)
                    )
                } else {
                    String::new()
                }
            ),
            None => format!("request {request}: no policy applies"),
        };
        ledger::insert_audit(
            tx,
            &crate::store::AuditRecord {
                at: String::new(),
                user: self.owner.to_owned(),
                action: self.action.to_owned(),
                cluster: Some(crate::store::AuditRecord::cluster_of(
                    self.owner,
                    self.cluster,
                )),
                decision: "accepted".into(),
                reason: Some(reason),
                instances: Vec::new(),
            },
            now_millis(),
        )
    }
}

/// The policy's decision on a launch (what it would reserve, or the refusal), and the budget
/// left (`None` without one).
pub type Quote = (Result<Option<Ask>, Error>, Option<Micros>);

impl Admission<'_> {
    /// What a launch of `workers` workers of `profile` would be told now, and the budget left
    /// (`None` without one); nothing is written.
    pub fn quote(
        &self,
        store: &Store,
        profile: &crate::config::profile::Profile,
        workers: u32,
    ) -> Result<Quote, StoreError> {
        store.immediate(|tx| {
            let decision = self.decide(tx, -1, |rules, in_use| {
                rules.admit_launch(profile, workers, in_use)
            })?;
            let left = match (&self.rules, self.policy) {
                (Some(rules), Some(policy)) => match rules.budget() {
                    Some(budget) => {
                        let (spent, committed) = Ledger {
                            tx,
                            user: rules.user(),
                            except: -1,
                            policy,
                            config: self.config,
                        }
                        .spending()?;
                        Some(budget - spent - committed)
                    }
                    None => None,
                },
                _ => None,
            };
            Ok((decision, left))
        })
    }

    /// The rules' answer in `tx` (`except`: the cluster being admitted, not counted as in use):
    /// what to reserve, or a refusal; nothing to reserve without a policy.
    fn decide(
        &self,
        tx: &rusqlite::Connection,
        except: i64,
        ask: impl FnOnce(&Rules<'_>, &mut Ledger<'_, '_>) -> Result<Result<Ask, Error>, StoreError>,
    ) -> Result<Result<Option<Ask>, Error>, StoreError> {
        let (Some(rules), Some(policy)) = (&self.rules, self.policy) else {
            return Ok(Ok(None));
        };
        let mut in_use = Ledger {
            tx,
            user: rules.user(),
            except,
            policy,
            config: self.config,
        };
        Ok(ask(rules, &mut in_use)?.map(Some))
    }
}

impl Admit for Admission<'_> {
    fn admit_launch(
        &self,
        tx: &rusqlite::Transaction<'_>,
        cluster_id: i64,
        new: &NewCluster<'_>,
        workers: u32,
    ) -> Result<Result<(), Error>, StoreError> {
        let ask = match self.decide(tx, cluster_id, |rules, in_use| {
            rules.admit_launch(&new.record.profile, workers, in_use)
        })? {
            Ok(ask) => ask,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let admitted = Admitted {
            cluster_id,
            owner: new.owner.as_str(),
            cluster: new.name.as_str(),
            action: "launch",
            request: new.request_id.as_str(),
        };
        admitted.record(tx, ask.as_ref())?;
        Ok(Ok(()))
    }

    fn admit_growth(
        &self,
        store: &Store,
        cluster: &ClusterRow,
        request: &RequestId,
        count: u32,
    ) -> Result<(), Error> {
        store.immediate(|tx| -> Result<(), Error> {
            let ask = self.decide(tx, -1, |rules, in_use| {
                let held = ledger::cluster_nodes(tx, cluster.id)?;
                rules.admit_growth(&cluster.record.profile, held, count, in_use)
            })??;
            let admitted = Admitted {
                cluster_id: cluster.id,
                owner: cluster.owner.as_str(),
                cluster: cluster.name.as_str(),
                action: "launch-slaves",
                request: request.as_str(),
            };
            admitted.record(tx, ask.as_ref())?;
            Ok(())
        })
    }
}

/// Checks an extension and moves the deadline, in one transaction: two extends at once (of
/// one cluster, or of two clusters of one budget) are decided one after the other.
pub fn extend(
    store: &Store,
    policy: Option<&Policy>,
    config: &SiteConfig,
    limits: &crate::policy::Limits,
    ask: &crate::policy::admission::ExtensionAsk<'_>,
) -> Result<crate::policy::admission::Extension, Error> {
    let user = ask.cluster.owner.as_str();
    store.immediate(|tx| -> Result<_, Error> {
        let term_end = policy.and_then(|p| p.term_end).map(|t| t.as_millisecond());
        let spending = || match policy {
            Some(policy) => Ledger {
                tx,
                user,
                except: -1,
                policy,
                config,
            }
            .spending(),
            None => Ok((0, 0)),
        };
        let ext = crate::policy::admission::admit_extension(limits, term_end, ask, spending)?
            .map_err(|why| match policy {
                Some(p) => Error::refused(format!(
                    "refused by the policy ({}): {why}",
                    p.path.display()
                )),
                None => Error::invalid(why),
            })?;
        if !ledger::extend_deadline(tx, ask.cluster.id, ext.from, ext.to, ext.cost)? {
            return Err(Error::runtime(format!(
                "cluster {} changed meanwhile (another extend, or a terminate); run extend again",
                ask.cluster.name
            )));
        }
        Ok(ext)
    })
}

/// `stratus quota --json`: a user's limits, use and what is left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaReport {
    pub user: String,
    pub limits: QuotaNumbers,
    pub used: QuotaUse,
    pub left: QuotaUse,
    /// The class as a whole (with a policy): its cap on concurrent units, what every student
    /// together uses of it, and the term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassQuota>,
    /// The user's live clusters and their deadlines.
    #[serde(default)]
    pub clusters: Vec<QuotaCluster>,
}

/// A live cluster as `quota` shows it: when its lifetime ends, and the time left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaCluster {
    pub name: String,
    /// RFC 3339, or none when no lifetime applies.
    pub deadline: Option<String>,
    pub left_secs: Option<i64>,
}

/// `[class]` of the policy, and the class's use of its cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassQuota {
    pub max_units: Option<f64>,
    pub units: f64,
    pub left: Option<f64>,
    /// RFC 3339.
    pub term_start: Option<String>,
    pub term_end: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaNumbers {
    pub max_units: Option<f64>,
    pub max_clusters: Option<u32>,
    pub max_nodes: Option<u32>,
    pub max_lifetime_hours: Option<f64>,
    pub budget_dollars: Option<f64>,
    pub profiles: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaUse {
    pub units: Option<f64>,
    pub clusters: Option<u32>,
    pub dollars: Option<f64>,
}

/// What `user` may use, uses and has left under `policy` (everything unlimited without one).
pub fn quota(
    store: &Store,
    policy: Option<&Policy>,
    config: &SiteConfig,
    user: &str,
    groups: &[String],
) -> Result<QuotaReport, StoreError> {
    let limits = policy.map(|p| p.limits(user, groups)).unwrap_or_default();
    let (units, clusters, spent, class_units) = store.immediate(|tx| -> Result<_, StoreError> {
        let units = ledger::open_units(tx, user, -1)?;
        let clusters = ledger::live_clusters(tx, user, -1)?;
        let class_units = ledger::class_units(tx, -1)?;
        let spent = match policy {
            Some(p) => Some(accounting::spending::spending(tx, p, config, user)?.0),
            None => None,
        };
        Ok((units, clusters, spent, class_units))
    })?;
    let spent = match spent {
        Some(s) => s,
        None => {
            let ivs = store.intervals_of(Some(user), 0, Millis::MAX)?;
            accounting::cost_of(config, &ivs, now_millis(), &mut Vec::new()).1
        }
    };
    let u = |m: u64| m as f64 / 1000.0;
    let d = accounting::micros_to_dollars;
    let now = now_millis();
    let deadlines = store
        .list_clusters(Some(
            &crate::core::model::Owner::parse(user)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ))?
        .into_iter()
        .filter(|c| c.state.is_live())
        .map(|c| {
            let deadline = limits.deadline_of(&c);
            QuotaCluster {
                name: c.name.to_string(),
                deadline: deadline.map(rfc3339),
                left_secs: deadline.map(|d| (d - now).div_euclid(1000)),
            }
        })
        .collect();
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
        class: policy.map(|p| ClassQuota {
            max_units: p.class_max_units.map(u),
            units: u(class_units),
            left: p.class_max_units.map(|m| u(m.saturating_sub(class_units))),
            term_start: p.term_start.map(|t| t.as_millisecond()).map(rfc3339),
            term_end: p.term_end.map(|t| t.as_millisecond()).map(rfc3339),
        }),
        clusters: deadlines,
    })
}
