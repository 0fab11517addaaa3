//! Usage and cost, computed from the recorded usage intervals (never from counting snapshots):
//! hours per cluster, and cost in micro-dollars from a price table (`config::prices`).

pub mod idle;
pub mod reaper;
pub mod report;
pub mod snapshot;
pub mod spending;

use std::collections::BTreeMap;

use crate::config::SiteConfig;
use crate::config::prices;
use serde::{Deserialize, Serialize};

use crate::core::model::Millis;
use crate::store::{ClusterRow, Interval};

/// One row of `stratus usage`: a cluster's instance time and cost, exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub cluster: String,
    pub owner: String,
    pub profile: String,
    /// When the cluster was made: two clusters of one name (one after the other) are told
    /// apart by it.
    #[serde(default)]
    pub created_at: Millis,
    pub millis: Millis,
    pub micros: prices::Micros,
    pub open: bool,
    /// Some interval was closed at a last sighting rather than at an observed end.
    pub estimated: bool,
}

pub use crate::core::money::micros_to_dollars;

/// The rate of a recorded interval's node (see `prices::node_rate`): its instance, its public
/// address and its volume, as recorded.
pub(crate) fn interval_rate(config: &SiteConfig, iv: &Interval) -> Option<prices::Micros> {
    prices::node_rate(
        config,
        &prices::NodeCost {
            instance_type: &iv.instance_type,
            spot: iv.spot,
            volume_gb: iv.volume_gb,
            public_ipv4: iv.public_ipv4,
        },
    )
}

/// The run time and cost of recorded intervals (each node's instance, public address and
/// volume); an open interval counts until `now`. Types without a price are collected in
/// `unknown_types` and cost nothing.
pub fn cost_of<'a>(
    config: &SiteConfig,
    intervals: impl IntoIterator<Item = &'a Interval>,
    now: Millis,
    unknown_types: &mut Vec<String>,
) -> (Millis, prices::Micros) {
    let (mut millis, mut cost) = (0, 0);
    for i in intervals {
        let run = (i.ended_at.unwrap_or(now) - i.started_at).max(0);
        millis += run;
        match interval_rate(config, i) {
            Some(rate) => cost += prices::cost_at_rate(rate, run),
            None => {
                if !unknown_types.contains(&i.instance_type) {
                    unknown_types.push(i.instance_type.clone());
                }
            }
        }
    }
    (millis, cost)
}

/// One usage row per cluster, from its intervals; an open interval counts until `now`.
pub fn usage_rows(
    config: &SiteConfig,
    clusters: &[ClusterRow],
    intervals: &[Interval],
    now: Millis,
    unknown_types: &mut Vec<String>,
) -> Vec<UsageRow> {
    let mut by_cluster: BTreeMap<i64, Vec<&Interval>> = BTreeMap::new();
    for i in intervals {
        by_cluster.entry(i.cluster_id).or_default().push(i);
    }
    clusters
        .iter()
        .map(|c| {
            let ivs = by_cluster.get(&c.id).map(Vec::as_slice).unwrap_or(&[]);
            let (millis, cost) = cost_of(config, ivs.iter().copied(), now, unknown_types);
            UsageRow {
                cluster: c.name.to_string(),
                owner: c.owner.to_string(),
                profile: c.profile.clone(),
                created_at: c.created_at,
                millis,
                micros: cost,
                open: ivs.iter().any(|i| i.ended_at.is_none()),
                estimated: ivs.iter().any(|i| i.estimated),
            }
        })
        .collect()
}

/// The report of every recorded interval in `[since, until)` (the whole record by default),
/// open ones counted until `now`.
pub fn report_from_store(
    store: &crate::store::Store,
    config: &SiteConfig,
    since: Option<Millis>,
    until: Option<Millis>,
    now: Millis,
    by: report::By,
) -> Result<report::Report, crate::store::StoreError> {
    let since = since.unwrap_or(0);
    let until = until.unwrap_or(now).min(now);
    let intervals = store.intervals_of(None, since, until)?;
    // Only rows by cluster carry its name.
    let names = if by == report::By::Cluster {
        store.cluster_names()?
    } else {
        BTreeMap::new()
    };
    Ok(report::report(
        config, &names, &intervals, since, until, now, by,
    ))
}
