//! Prices and cost, in exact units: micro-dollars, and the cost of a run as EC2 bills Linux
//! on-demand instances today, per second with a 60-second minimum per run
//! (<https://aws.amazon.com/ec2/pricing/on-demand/>). Spot is estimated at a fraction of the
//! on-demand price. No float is ever summed: a price from the site config is turned into
//! micro-dollars once, when the config is read.
//!
//! A node costs more than its instance hours: AWS charges every public IPv4 address by the hour
//! ($0.005, since February 2024: <https://aws.amazon.com/vpc/pricing/>), and the node's EBS root
//! volume (gp3) by the GB-month, pro rata (<https://aws.amazon.com/ebs/pricing/>). The three
//! add up in one rate per node, in micro-dollars per 730 hours (AWS's month for GB-month prices),
//! so that an hourly price (times 730) and a GB-month price add exactly, and a run's cost is
//! rounded once.
//!
//! Prices differ by region: the built-in table holds the regions whose prices it knows; a site
//! in another region must give its prices under `[prices]` (checked when the config is read).

use crate::config::SiteConfig;
use crate::core::model::Millis;

pub use crate::core::money::{Micros, dollars_to_micros};

/// Spot capacity is estimated at this fraction of the on-demand price (per mille).
pub const SPOT_PER_MILLE: i64 = 700;

/// The shortest run EC2 bills: a run of 10 s costs as much as one of 60 s.
pub const MINIMUM_BILLED: Millis = 60_000;

/// The hours over which a GB-month price is spread (AWS's pricing calculator's month).
pub const HOURS_PER_MONTH: i64 = 730;

/// A public IPv4 address, per hour, in every region.
pub const PUBLIC_IPV4_PER_HOUR: Micros = 5_000;

/// The root volume a node is estimated with before its image is known (Ubuntu's and Amazon
/// Linux's default, 8 GiB).
pub const DEFAULT_ROOT_GB: u32 = 8;

/// `[prices]` keys that are not instance types (instance types always hold a '.').
pub const GP3_KEY: &str = "ebs_gp3_gb_month";
pub const IPV4_KEY: &str = "public_ipv4_hour";

/// What one region charges: gp3 storage per GB-month, and on-demand Linux instances per hour,
/// for the types courses use most.
struct Region {
    name: &'static str,
    gp3_gb_month: Micros,
    instances: &'static [(&'static str, Micros)],
}

/// The same prices hold in N. Virginia, Ohio and Oregon for every type listed.
const US: &[(&str, Micros)] = &[
    ("t3.micro", 10_400),
    ("t3.small", 20_800),
    ("t3.medium", 41_600),
    ("t3.large", 83_200),
    ("t3.xlarge", 166_400),
    ("m5.large", 96_000),
    ("m5.xlarge", 192_000),
    ("m5.2xlarge", 384_000),
    ("m5a.large", 86_000),
    ("m5a.xlarge", 172_000),
    ("m6i.large", 96_000),
    ("m6i.xlarge", 192_000),
    ("c5.large", 85_000),
    ("c5.xlarge", 170_000),
    ("c5.2xlarge", 340_000),
    ("r5.large", 126_000),
    ("r5.xlarge", 252_000),
];

const REGIONS: &[Region] = &[
    Region {
        name: "us-east-1",
        gp3_gb_month: 80_000,
        instances: US,
    },
    Region {
        name: "us-east-2",
        gp3_gb_month: 80_000,
        instances: US,
    },
    Region {
        name: "us-west-2",
        gp3_gb_month: 80_000,
        instances: US,
    },
];

/// The region whose built-in prices apply (us-east-1's without an `[ec2]` table).
fn region(config: &SiteConfig) -> Option<&'static Region> {
    let name = config
        .ec2
        .as_ref()
        .map(|e| e.region.as_str())
        .unwrap_or("us-east-1");
    REGIONS.iter().find(|r| r.name == name)
}

/// Whether stratus knows prices for this region.
pub fn region_known(name: &str) -> bool {
    REGIONS.iter().any(|r| r.name == name)
}

/// The regions with built-in prices, for messages.
pub fn known_regions() -> Vec<&'static str> {
    REGIONS.iter().map(|r| r.name).collect()
}

/// Micro-dollars per hour for an instance type; local nodes cost nothing; `None` if unknown.
pub fn per_hour(config: &SiteConfig, instance_type: &str, spot: bool) -> Option<Micros> {
    let base = if let Some(p) = config.prices.get(instance_type) {
        dollars_to_micros(*p)?
    } else if crate::core::model::is_local_instance_type(instance_type) {
        0
    } else {
        region(config)?
            .instances
            .iter()
            .find(|(t, _)| *t == instance_type)
            .map(|(_, p)| *p)?
    };
    Some(if spot {
        base * SPOT_PER_MILLE / 1000
    } else {
        base
    })
}

/// gp3 storage per GB-month: the site's `ebs_gp3_gb_month`, else the region's.
fn gp3_gb_month(config: &SiteConfig) -> Micros {
    config
        .prices
        .get(GP3_KEY)
        .and_then(|p| dollars_to_micros(*p))
        .or_else(|| region(config).map(|r| r.gp3_gb_month))
        .unwrap_or(0)
}

/// A public IPv4 address per hour: the site's `public_ipv4_hour`, else AWS's.
fn ipv4_per_hour(config: &SiteConfig) -> Micros {
    config
        .prices
        .get(IPV4_KEY)
        .and_then(|p| dollars_to_micros(*p))
        .unwrap_or(PUBLIC_IPV4_PER_HOUR)
}

/// What a node is made of, as far as its price goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCost<'a> {
    pub instance_type: &'a str,
    pub spot: bool,
    /// Its EBS (gp3) root volume, in GiB; 0 for none (a local node).
    pub volume_gb: u32,
    pub public_ipv4: bool,
}

/// A node's rate: micro-dollars per 730 hours of it running (instance, address and volume);
/// `None` if its instance type has no known price. Local nodes cost what the site prices them
/// at (nothing by default), with no address or volume to pay for.
pub fn node_rate(config: &SiteConfig, node: &NodeCost<'_>) -> Option<Micros> {
    let instance = per_hour(config, node.instance_type, node.spot)?;
    if crate::core::model::is_local_instance_type(node.instance_type) {
        return Some(instance * HOURS_PER_MONTH);
    }
    let ipv4 = if node.public_ipv4 {
        ipv4_per_hour(config)
    } else {
        0
    };
    Some((instance + ipv4) * HOURS_PER_MONTH + i64::from(node.volume_gb) * gp3_gb_month(config))
}

/// What a cluster of `profile` with `masters` masters and `workers` workers costs, in
/// micro-dollars per 730 hours: each role's first instance type (what a launch asks for
/// first), its root volume and a public address; `None` if a price is unknown.
pub fn cluster_rate(
    config: &SiteConfig,
    profile: &crate::config::profile::Profile,
    masters: u32,
    workers: u32,
) -> Option<Micros> {
    let mut rate = 0;
    for (settings, n) in [(&profile.master, masters), (&profile.worker, workers)] {
        if n == 0 {
            continue;
        }
        let node = NodeCost {
            instance_type: settings.types()[0],
            spot: settings.spot,
            volume_gb: settings.volume_gb.unwrap_or(DEFAULT_ROOT_GB),
            public_ipv4: true,
        };
        rate += node_rate(config, &node)? * i64::from(n);
    }
    Some(rate)
}

/// A rate (micro-dollars per 730 hours) as people read it: `$0.48/h`.
pub fn rate_text(rate: Micros) -> String {
    let per_hour = (rate + HOURS_PER_MONTH / 2) / HOURS_PER_MONTH;
    format!("{}/h", crate::core::money::dollars_text(per_hour))
}

/// The cost of one run of `millis` at `per_hour`: per second, rounded up to whole seconds, with
/// EC2's 60-second minimum (a run whose end was never seen after its start still ran, and is
/// billed the minute); the micro-dollar rounded to nearest, once. The accounting report counts
/// the same way.
pub fn cost(per_hour: Micros, millis: Millis) -> Micros {
    cost_at_rate(per_hour * HOURS_PER_MONTH, millis)
}

/// `cost` at a node's rate (micro-dollars per 730 hours).
pub fn cost_at_rate(rate: Micros, millis: Millis) -> Micros {
    if millis < 0 {
        return 0;
    }
    let seconds = (millis.max(MINIMUM_BILLED) + 999) / 1000;
    piece_at_rate(rate, seconds * 1000)
}

/// `rate` for `millis` exactly, rounded half up to the micro-dollar (i128: nothing overflows).
pub fn piece_at_rate(rate: Micros, millis: Millis) -> Micros {
    let per = i128::from(HOURS_PER_MONTH) * 3_600_000;
    ((i128::from(rate) * i128::from(millis) + per / 2) / per) as Micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_exact() {
        let mut cfg = SiteConfig::default();
        assert_eq!(per_hour(&cfg, "local", false), Some(0));
        assert_eq!(per_hour(&cfg, "m5.large", false), Some(96_000));
        assert_eq!(per_hour(&cfg, "m5.large", true), Some(67_200));
        assert_eq!(per_hour(&cfg, "x9.huge", false), None);
        cfg.prices.insert("x9.huge".into(), 0.1);
        assert_eq!(per_hour(&cfg, "x9.huge", false), Some(100_000));
    }

    #[test]
    fn per_second_with_a_minute_minimum() {
        // An hour of m5.large is its hourly price exactly.
        assert_eq!(cost(96_000, 3_600_000), 96_000);
        // 10 seconds bill as 60.
        assert_eq!(cost(96_000, 10_000), cost(96_000, 60_000));
        assert_eq!(cost(96_000, 60_000), 1_600);
        // Partial seconds round up to the next second.
        assert_eq!(cost(3_600_000, 61_001), 62_000);
        assert_eq!(cost(96_000, 0), 1_600);
    }

    #[test]
    fn a_node_pays_for_its_address_and_its_volume() {
        let cfg = SiteConfig::default();
        let node = |volume_gb, public_ipv4| NodeCost {
            instance_type: "m5.large",
            spot: false,
            volume_gb,
            public_ipv4,
        };
        // An hour of m5.large alone.
        let bare = node_rate(&cfg, &node(0, false)).unwrap();
        assert_eq!(cost_at_rate(bare, 3_600_000), 96_000);
        // With its public IPv4 address: $0.005 more per hour.
        let with_ip = node_rate(&cfg, &node(0, true)).unwrap();
        assert_eq!(cost_at_rate(with_ip, 3_600_000), 101_000);
        // And 50 GB of gp3 at $0.08 per GB-month: $4 a month, $4/730 an hour.
        let full = node_rate(&cfg, &node(50, true)).unwrap();
        assert_eq!(cost_at_rate(full, 3_600_000), 101_000 + 5_479);
        // A 730-hour month is exactly the sum of the three.
        assert_eq!(
            cost_at_rate(full, 730 * 3_600_000),
            96_000 * 730 + 5_000 * 730 + 50 * 80_000
        );
        // Local nodes cost nothing, whatever they hold.
        let local = NodeCost {
            instance_type: "local",
            ..node(50, true)
        };
        assert_eq!(node_rate(&cfg, &local), Some(0));
        let unknown = NodeCost {
            instance_type: "x9.huge",
            ..node(50, true)
        };
        assert_eq!(node_rate(&cfg, &unknown), None);
    }

    #[test]
    fn the_table_is_per_region_and_the_site_may_price_its_own() {
        let mut cfg = SiteConfig::parse(
            "provider = \"ec2\"\n[ec2]\nregion = \"us-west-2\"\n",
            std::path::Path::new("c"),
        )
        .unwrap();
        assert_eq!(per_hour(&cfg, "m5.large", false), Some(96_000));
        assert!(region_known("us-east-2"));
        assert!(!region_known("eu-west-3"));
        cfg.ec2.as_mut().unwrap().region = "eu-west-3".into();
        // No built-in price there: only what the site gives.
        assert_eq!(per_hour(&cfg, "m5.large", false), None);
        cfg.prices.insert("m5.large".into(), 0.112);
        cfg.prices.insert(GP3_KEY.into(), 0.0928);
        let rate = node_rate(
            &cfg,
            &NodeCost {
                instance_type: "m5.large",
                spot: false,
                volume_gb: 10,
                public_ipv4: true,
            },
        )
        .unwrap();
        assert_eq!(rate, (112_000 + 5_000) * 730 + 10 * 92_800);
    }
}
