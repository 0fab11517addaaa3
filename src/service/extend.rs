//! `stratus extend NAME DURATION`: more time before a live cluster's deadline, within the
//! policy (`max_extensions`, `max_lifetime_hours` in all, the owner's budget at the cluster's
//! rate), on record and on the nodes.

use super::audit::Trail;
use super::protocol::{Extended, Response};
use super::{Asked, Service};
use crate::cluster::clock;
use crate::cluster::terminate::live_nodes;
use crate::config::prices;
use crate::core::error::Error;
use crate::core::model::{ClusterState, Millis, local_time, now_millis, rfc3339, span_text};
use crate::core::money::{Micros, dollars_text};
use crate::policy::admission::ExtensionAsk;
use crate::store::ClusterRow;

/// The shortest and the longest one extension may add.
const MIN_EXTENSION_SECS: u64 = 60;
const MAX_EXTENSION_SECS: u64 = 30 * 24 * 3600;

impl Service {
    pub(super) async fn extend(
        &self,
        asked: &Asked<'_>,
        name: &str,
        by_secs: u64,
        owner: Option<&str>,
        trail: &mut Trail,
    ) -> Result<Response, Error> {
        if !(MIN_EXTENSION_SECS..=MAX_EXTENSION_SECS).contains(&by_secs) {
            return Err(Error::invalid(format!(
                "an extension must be between 1 minute and 30 days, not {by_secs} seconds"
            )));
        }
        let owner = asked.owner_for(owner)?;
        let c = self.find_cluster(&owner, name)?;
        if !c.state.is_live() || c.state == ClusterState::Terminating {
            return Err(Error::invalid(format!(
                "cluster {} is {}: only a live cluster can be extended",
                c.name,
                c.state.as_str()
            )));
        }
        let policy = asked.policy.present();
        let limits = policy
            .map(|p| p.limits(owner.as_str(), &asked.groups_of(&owner)))
            .unwrap_or_default();
        let by = (by_secs as Millis) * 1000;
        let rate = self.rate_of(&c)?;
        let ask = ExtensionAsk {
            cluster: &c,
            by,
            now: now_millis(),
            rate,
        };
        let ext = super::admission::extend(self.store(), policy, self.config(), &limits, &ask)?;
        let notice = format!(
            "stratus: cluster {} was given {} more by {}: its deadline is now {}.",
            c.name,
            span_text(by),
            asked.caller.owner,
            local_time(ext.to)
        );
        let unreachable = clock::push(
            self.ctx(),
            &c,
            &clock::set_script(Some(ext.to), Some(&notice)),
        )
        .await?
        .into_iter()
        .map(|(node, why)| format!("{node}: {why}"))
        .collect();
        trail.detail(format!(
            "deadline {} -> {} ({} more, {}{})",
            ext.from.map_or_else(|| "none".into(), rfc3339),
            rfc3339(ext.to),
            span_text(by),
            dollars_text(ext.cost),
            ext.left
                .map(|l| format!(", {} of the budget left", dollars_text(l)))
                .unwrap_or_default()
        ));
        Ok(Response::Extended(Extended {
            cluster: c.name.to_string(),
            owner: c.owner.to_string(),
            deadline: rfc3339(ext.to),
            added_secs: by_secs,
            cost_micros: ext.cost,
            rate,
            budget_left_micros: ext.left,
            extensions: c.extensions + 1,
            unreachable,
        }))
    }

    /// What the cluster costs now (micro-dollars per 730 hours): its live nodes at their
    /// prices, else its rate at launch; `None` if a price is unknown.
    fn rate_of(&self, c: &ClusterRow) -> Result<Option<Micros>, Error> {
        let nodes = live_nodes(self.ctx(), c)?;
        if nodes.is_empty() {
            return Ok(c.record.guard.as_ref().and_then(|g| g.rate));
        }
        let mut rate = 0;
        for n in &nodes {
            let node = prices::NodeCost {
                instance_type: &n.instance_type,
                spot: n.spot,
                volume_gb: n.volume_gb,
                public_ipv4: n.public_ipv4,
            };
            match prices::node_rate(self.config(), &node) {
                Some(r) => rate += r,
                None => return Ok(None),
            }
        }
        Ok(Some(rate))
    }
}
