//! `stratus accounting report`: instance hours and cost from the recorded usage intervals, by
//! cluster, user, profile or day, within a window, in exact units (the CLI renders it as a
//! table, CSV or JSON).
//!
//! The rules, so a report can be checked by hand:
//! - an interval counts from its start to its end (an open one until now), clipped to the
//!   window `[since, until)`; `instance_hours` is exactly that time;
//! - cost is per second, as EC2 bills: a run's length is rounded up to whole seconds, and a run
//!   shorter than 60 seconds is billed as 60 (EC2's minimum); the minimum counts in the window
//!   (and on the day) where the run starts, so clipping never bills it twice; the rounding
//!   counts in the window holding the run's end, and a run still open ends now, so a report up
//!   to now bills an open run as if it ended now (up to a second past `until`);
//! - each piece costs its node's rate (instance, public IPv4 address, EBS volume; see
//!   `prices::node_rate`) times its time, rounded to the micro-dollar; rows and the total are
//!   sums of micro-dollars: nothing is a float until it is printed;
//! - `estimated` says that some interval of the row ended at a last sighting rather than at an
//!   observed end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::SiteConfig;
use crate::config::prices::{self, MINIMUM_BILLED, Micros};
use crate::core::model::Millis;
use crate::store::Interval;

const DAY: Millis = 24 * 3600 * 1000;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Cluster,
    User,
    Profile,
    Day,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    cluster: Option<String>,
    cluster_id: Option<i64>,
    owner: Option<String>,
    profile: Option<String>,
    day: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Sum {
    millis: Millis,
    micros: Micros,
    estimated: bool,
}

/// One row, with its key fields (those of its grouping) and its sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub cluster: Option<String>,
    /// The cluster's row (by cluster), for callers that add up per cluster.
    pub cluster_id: Option<i64>,
    pub owner: Option<String>,
    pub user: Option<String>,
    pub profile: Option<String>,
    pub day: Option<String>,
    pub estimated: bool,
    pub millis: Millis,
    pub micros: Micros,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Total {
    pub millis: Millis,
    pub micros: Micros,
}

/// A report: its rows, their total, how they are grouped, and the types that have no price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub total: Total,
    pub by: By,
    /// Instance types with no known price (they cost nothing here).
    pub unknown_types: Vec<String>,
}

/// The UTC day of a time, as `YYYY-MM-DD`.
fn day_of(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Builds the report of `intervals` in `[since, until)`, grouped `by`.
pub fn report(
    config: &SiteConfig,
    names: &BTreeMap<i64, String>,
    intervals: &[Interval],
    since: Millis,
    until: Millis,
    now: Millis,
    by: By,
) -> Report {
    let mut sums: BTreeMap<Key, Sum> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    for iv in intervals {
        let start = iv.started_at;
        let end = iv.ended_at.unwrap_or(now).max(start);
        // Whole seconds, as EC2 bills; the minimum is billed on top where the run starts.
        let run = ((end - start) + 999) / 1000 * 1000;
        let billed_end = start + run;
        let minimum = (MINIMUM_BILLED - run).max(0);
        let (a, b) = (start.max(since), end.min(until));
        let starts_in_window = (since..until).contains(&start);
        if b <= a && !(starts_in_window && minimum > 0) {
            // Nothing of it in the window, not even its minimum.
            continue;
        }
        let rate = super::interval_rate(config, iv);
        if rate.is_none() && !unknown.contains(&iv.instance_type) {
            unknown.push(iv.instance_type.clone());
        }
        let rate = rate.unwrap_or(0);
        // The pieces of the run in the window: one, or one per day.
        let mut cuts = vec![a];
        if by == By::Day {
            let mut d = a.div_euclid(DAY) * DAY + DAY;
            while d < b {
                cuts.push(d);
                d += DAY;
            }
        }
        cuts.push(b);
        for w in cuts.windows(2) {
            let (p, q) = (w[0], w[1].max(w[0]));
            let mut billed = q.min(billed_end).max(p) - p;
            // Rounding up to a whole second belongs to the run's last piece. A run still open
            // ends now, with the window: its rounding is not cut off, or a run shorter than the
            // minimum would cost less than the minimum until it closes.
            if q == b && b == end {
                let cap = if iv.ended_at.is_none() {
                    billed_end
                } else {
                    until
                };
                billed = billed_end.min(cap).max(p) - p;
            }
            if p == start {
                billed += minimum;
            }
            let key = Key {
                cluster: (by == By::Cluster)
                    .then(|| names.get(&iv.cluster_id).cloned().unwrap_or_default()),
                cluster_id: (by == By::Cluster).then_some(iv.cluster_id),
                owner: matches!(by, By::Cluster | By::User).then(|| iv.owner.clone()),
                profile: matches!(by, By::Cluster | By::Profile).then(|| iv.profile.clone()),
                day: (by == By::Day).then(|| day_of(p)),
            };
            let s = sums.entry(key).or_default();
            s.millis += q - p;
            s.micros += prices::piece_at_rate(rate, billed);
            s.estimated |= iv.estimated;
        }
    }
    let mut total = Total::default();
    let rows: Vec<Row> = sums
        .into_iter()
        .map(|(k, s)| {
            total.millis += s.millis;
            total.micros += s.micros;
            Row {
                cluster: k.cluster,
                cluster_id: k.cluster_id,
                owner: if by == By::Cluster {
                    k.owner.clone()
                } else {
                    None
                },
                user: if by == By::User { k.owner } else { None },
                profile: k.profile,
                day: k.day,
                estimated: s.estimated,
                millis: s.millis,
                micros: s.micros,
            }
        })
        .collect();
    Report {
        rows,
        total,
        by,
        unknown_types: unknown,
    }
}

impl Report {
    /// The key fields of a row of this grouping, in order.
    pub fn key_fields(&self) -> &'static [&'static str] {
        match self.by {
            By::Cluster => &["cluster", "owner", "profile"],
            By::User => &["user"],
            By::Profile => &["profile"],
            By::Day => &["day"],
        }
    }

    /// The values of `row`'s key fields, in the order of `key_fields`.
    pub fn keys_of(&self, row: &Row) -> Vec<String> {
        self.key_fields()
            .iter()
            .map(|f| {
                match *f {
                    "cluster" => row.cluster.clone(),
                    "owner" => row.owner.clone(),
                    "user" => row.user.clone(),
                    "profile" => row.profile.clone(),
                    _ => row.day.clone(),
                }
                .unwrap_or_default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;

    fn iv(cluster: i64, owner: &str, ty: &str, start: Millis, end: Option<Millis>) -> Interval {
        Interval {
            instance_id: format!("i-{start}"),
            cluster_id: cluster,
            owner: owner.into(),
            profile: "p".into(),
            instance_type: ty.into(),
            spot: false,
            started_at: start,
            last_seen_at: start,
            ended_at: end,
            estimated: false,
            orphan: false,
            volume_gb: 0,
            public_ipv4: false,
        }
    }

    fn facts() -> BTreeMap<i64, String> {
        BTreeMap::from([(1, "demo".to_owned())])
    }

    #[test]
    fn a_node_s_address_and_volume_are_billed_with_it() {
        let cfg = SiteConfig::default();
        let mut full = iv(1, "alice", "m5.large", 0, Some(2 * H));
        full.volume_gb = 50;
        full.public_ipv4 = true;
        let r = report(&cfg, &facts(), &[full], 0, 10 * H, 10 * H, By::Cluster);
        // Two hours of m5.large ($0.192), of its address ($0.01), of 50 GB of gp3 at $0.08 per
        // GB-month over 730 hours ($0.010959).
        assert_eq!(r.total.micros, 192_000 + 10_000 + 10_959);
        assert_eq!(r.rows[0].micros, r.total.micros);
        // By day, the pieces add up to the same to within a micro-dollar each.
        let r = report(
            &cfg,
            &facts(),
            &[{
                let mut i = iv(1, "alice", "m5.large", 23 * H, Some(25 * H));
                i.volume_gb = 50;
                i.public_ipv4 = true;
                i
            }],
            0,
            48 * H,
            48 * H,
            By::Day,
        );
        assert_eq!(r.rows.len(), 2);
        assert!((r.total.micros - 212_959).abs() <= 1, "{}", r.total.micros);
    }

    #[test]
    fn an_hour_of_m5_large_costs_its_price_and_ten_seconds_cost_a_minute() {
        let cfg = SiteConfig::default();
        let r = report(
            &cfg,
            &facts(),
            &[
                iv(1, "alice", "m5.large", 0, Some(H)),
                iv(1, "alice", "m5.large", 5 * H, Some(5 * H + 10_000)),
            ],
            0,
            10 * H,
            10 * H,
            By::Cluster,
        );
        assert_eq!(r.rows.len(), 1);
        // 96000 for the hour, 1600 for the minute the 10 s are billed as.
        assert_eq!(r.rows[0].micros, 96_000 + 1_600);
        assert_eq!(r.rows[0].millis, H + 10_000);
        assert_eq!(r.total.micros, 97_600);
    }

    #[test]
    fn clipping_counts_the_window_only_and_the_minimum_once() {
        let cfg = SiteConfig::default();
        // Two hours from 1h to 3h; the window is [2h, 10h): one hour counts.
        let r = report(
            &cfg,
            &facts(),
            &[iv(1, "alice", "m5.large", H, Some(3 * H))],
            2 * H,
            10 * H,
            10 * H,
            By::User,
        );
        assert_eq!(r.rows[0].millis, H);
        assert_eq!(r.rows[0].micros, 96_000);
        // A 10-second run just before the window: nothing of it counts, not even its minimum.
        let r = report(
            &cfg,
            &facts(),
            &[iv(1, "alice", "m5.large", H, Some(H + 10_000))],
            2 * H,
            10 * H,
            10 * H,
            By::User,
        );
        assert!(r.rows.is_empty());
    }

    #[test]
    fn an_open_run_costs_what_it_would_if_it_ended_now() {
        let cfg = SiteConfig::default();
        // Counted until now, as a run ending now is billed: 10.5 s is the minute, 90.4 s is 91 s.
        for (run, micros) in [(10_500, 1_600), (90_400, (96_000 * 91 + 1_800) / 3_600)] {
            let now = H + run;
            let open = report(
                &cfg,
                &facts(),
                &[iv(1, "alice", "m5.large", H, None)],
                0,
                now,
                now,
                By::Cluster,
            );
            let ended = report(
                &cfg,
                &facts(),
                &[iv(1, "alice", "m5.large", H, Some(now))],
                0,
                now + H,
                now + H,
                By::Cluster,
            );
            assert_eq!(open.total.micros, micros, "open for {run} ms");
            assert_eq!(ended.total.micros, micros, "ended after {run} ms");
        }
    }

    #[test]
    fn days_split_at_utc_midnight() {
        let cfg = SiteConfig::default();
        let day = 24 * H;
        // From 23:00 on day 0 to 01:00 on day 1.
        let r = report(
            &cfg,
            &facts(),
            &[iv(1, "alice", "m5.large", day - H, Some(day + H))],
            0,
            3 * day,
            3 * day,
            By::Day,
        );
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].day.as_deref(), Some("1970-01-01"));
        assert_eq!(r.rows[1].day.as_deref(), Some("1970-01-02"));
        assert_eq!((r.rows[0].micros, r.rows[1].micros), (96_000, 96_000));
    }
}
