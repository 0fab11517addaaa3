//! Usage and cost, computed from the recorded usage intervals (never from counting snapshots):
//! hours per cluster, and an estimate in dollars from a price table.

use std::collections::BTreeMap;

use crate::config::SiteConfig;
use serde::Serialize;

use crate::model::Millis;
use crate::store::{ClusterRow, Interval};

/// One row of `stratus usage`.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub cluster: String,
    pub owner: String,
    pub profile: String,
    pub instance_hours: f64,
    pub estimated_cost: f64,
    pub open: bool,
}

/// Spot capacity is estimated at this fraction of the on-demand price.
pub const SPOT_FACTOR: f64 = 0.7;

/// On-demand Linux prices in us-east-1, dollars per hour, for the types courses use most. The
/// site config's `[prices]` overrides and extends this table.
const BUILTIN_PRICES: &[(&str, f64)] = &[
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m5.2xlarge", 0.384),
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c5.2xlarge", 0.34),
    ("r5.large", 0.126),
    ("r5.xlarge", 0.252),
];

/// Dollars per hour for an instance type; local nodes cost nothing; `None` if unknown.
pub fn price_per_hour(config: &SiteConfig, instance_type: &str, spot: bool) -> Option<f64> {
    let base = if let Some(p) = config.prices.get(instance_type) {
        *p
    } else if instance_type == "local" || instance_type.starts_with("local.") {
        0.0
    } else {
        BUILTIN_PRICES
            .iter()
            .find(|(t, _)| *t == instance_type)
            .map(|(_, p)| *p)?
    };
    Some(if spot { base * SPOT_FACTOR } else { base })
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
            let mut hours = 0.0;
            let mut cost = 0.0;
            let mut open = false;
            for i in by_cluster.get(&c.id).map(Vec::as_slice).unwrap_or(&[]) {
                let end = i.ended_at.unwrap_or(now);
                open |= i.ended_at.is_none();
                let h = (end - i.started_at).max(0) as f64 / 3_600_000.0;
                hours += h;
                match price_per_hour(config, &i.instance_type, i.spot) {
                    Some(p) => cost += h * p,
                    None => {
                        if !unknown_types.contains(&i.instance_type) {
                            unknown_types.push(i.instance_type.clone());
                        }
                    }
                }
            }
            UsageRow {
                cluster: c.name.to_string(),
                owner: c.owner.to_string(),
                profile: c.profile.clone(),
                instance_hours: hours,
                estimated_cost: (cost * 10_000.0).round() / 10_000.0,
                open,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices() {
        let mut cfg = SiteConfig::default();
        assert_eq!(price_per_hour(&cfg, "local", false), Some(0.0));
        assert_eq!(price_per_hour(&cfg, "m5.large", false), Some(0.096));
        assert!((price_per_hour(&cfg, "m5.large", true).unwrap() - 0.0672).abs() < 1e-9);
        assert_eq!(price_per_hour(&cfg, "x9.huge", false), None);
        cfg.prices.insert("x9.huge".into(), 2.0);
        assert_eq!(price_per_hour(&cfg, "x9.huge", false), Some(2.0));
    }
}
