//! `stratus admin class`: the instructor's view of the class now, every live cluster with what
//! needs attention first: warned by the reaper, then the nearest deadline, then the owner with
//! the least budget left.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::protocol::Response;
use super::{Asked, Service};
use crate::accounting::report::By;
use crate::core::error::Error;
use crate::core::model::{now_millis, rfc3339};
use crate::core::money::Micros;

/// One live cluster of the class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassRow {
    pub owner: String,
    pub cluster: String,
    pub state: String,
    /// Nodes running, and recorded.
    pub running: u32,
    pub nodes: u32,
    pub created_at: String,
    pub age_secs: i64,
    /// RFC 3339, or none when no lifetime applies.
    pub deadline: Option<String>,
    /// Seconds to the deadline (negative once passed).
    pub left_secs: Option<i64>,
    /// `idle` or `busy`, once the reaper's idle rule has read the cluster; none before.
    pub activity: Option<String>,
    pub cost_micros: Micros,
    /// What the owner has left of the budget; none without one.
    pub budget_left_micros: Option<Micros>,
    /// The reaper's warning, if it gave one.
    pub warning: Option<String>,
}

impl Service {
    pub(super) fn class(&self, asked: &Asked<'_>) -> Result<Response, Error> {
        if !asked.is_instructor() {
            return Err(Error::refused("only instructors may see the whole class"));
        }
        let now = now_millis();
        let policy = asked.policy.present();
        let live: Vec<_> = self
            .store()
            .list_clusters(None)?
            .into_iter()
            .filter(|c| c.state.is_live())
            .collect();
        let costs: BTreeMap<i64, Micros> = crate::accounting::report_from_store(
            self.store(),
            self.config(),
            None,
            None,
            now,
            By::Cluster,
        )?
        .rows
        .iter()
        .filter_map(|r| r.cluster_id.map(|id| (id, r.micros)))
        .fold(BTreeMap::new(), |mut m, (id, micros)| {
            *m.entry(id).or_default() += micros;
            m
        });
        let mut left_of: BTreeMap<String, Option<Micros>> = BTreeMap::new();
        let mut rows = Vec::new();
        for c in &live {
            let owner = c.owner.to_string();
            let limits = policy.map(|p| p.limits(&owner, &crate::sys::groups_of_user(&owner)));
            if !left_of.contains_key(&owner) {
                let left = match (policy, limits.as_ref().and_then(|l| l.budget)) {
                    (Some(p), Some(budget)) => Some(
                        budget
                            - crate::accounting::spending::spent_by(
                                self.store(),
                                p,
                                self.config(),
                                &owner,
                            )?,
                    ),
                    _ => None,
                };
                left_of.insert(owner.clone(), left);
            }
            let deadline = limits.as_ref().map_or(c.deadline, |l| l.deadline_of(c));
            let nodes = self.store().nodes_of(c.id)?;
            rows.push(ClassRow {
                owner: owner.clone(),
                cluster: c.name.to_string(),
                state: c.state.as_str().to_owned(),
                running: nodes.iter().filter(|n| n.state.is_billed()).count() as u32,
                nodes: nodes.len() as u32,
                created_at: rfc3339(c.created_at),
                age_secs: (now - c.created_at) / 1000,
                deadline: deadline.map(rfc3339),
                left_secs: deadline.map(|d| (d - now).div_euclid(1000)),
                activity: c.activity.clone(),
                cost_micros: costs.get(&c.id).copied().unwrap_or(0),
                budget_left_micros: left_of[&owner],
                warning: c.reap_reason.clone().filter(|_| c.reap_after.is_some()),
            });
        }
        rows.sort_by_key(|r| {
            (
                r.warning.is_none(),
                r.left_secs.unwrap_or(i64::MAX),
                r.budget_left_micros.unwrap_or(Micros::MAX),
                r.owner.clone(),
                r.cluster.clone(),
            )
        });
        Ok(Response::Class(rows))
    }
}
