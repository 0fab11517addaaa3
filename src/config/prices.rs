//! Prices and cost, in exact units: micro-dollars per instance-hour, and the cost of a run as
//! EC2 bills Linux on-demand instances today, per second with a 60-second minimum per run
//! (<https://aws.amazon.com/ec2/pricing/on-demand/>). Spot is estimated at a fraction of the
//! on-demand price. No float is ever summed: a price from the site config is turned into
//! micro-dollars once, when the config is read.

use crate::config::SiteConfig;
use crate::core::model::Millis;

pub use crate::core::money::{Micros, dollars_to_micros};

/// Spot capacity is estimated at this fraction of the on-demand price (per mille).
pub const SPOT_PER_MILLE: i64 = 700;

/// The shortest run EC2 bills: a run of 10 s costs as much as one of 60 s.
pub const MINIMUM_BILLED: Millis = 60_000;

/// On-demand Linux prices in us-east-1, micro-dollars per hour, for the types courses use most.
/// The site config's `[prices]` overrides and extends this table.
const BUILTIN: &[(&str, Micros)] = &[
    ("t3.micro", 10_400),
    ("t3.small", 20_800),
    ("t3.medium", 41_600),
    ("t3.large", 83_200),
    ("t3.xlarge", 166_400),
    ("m5.large", 96_000),
    ("m5.xlarge", 192_000),
    ("m5.2xlarge", 384_000),
    ("c5.large", 85_000),
    ("c5.xlarge", 170_000),
    ("c5.2xlarge", 340_000),
    ("r5.large", 126_000),
    ("r5.xlarge", 252_000),
];

/// Micro-dollars per hour for an instance type; local nodes cost nothing; `None` if unknown.
pub fn per_hour(config: &SiteConfig, instance_type: &str, spot: bool) -> Option<Micros> {
    let base = if let Some(p) = config.prices.get(instance_type) {
        dollars_to_micros(*p)?
    } else if crate::core::model::is_local_instance_type(instance_type) {
        0
    } else {
        BUILTIN
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

/// The cost of one run of `millis` at `per_hour`: per second, rounded up to whole seconds, with
/// EC2's 60-second minimum (a run whose end was never seen after its start still ran, and is
/// billed the minute); the micro-dollar rounded to nearest, once. The accounting report counts
/// the same way.
pub fn cost(per_hour: Micros, millis: Millis) -> Micros {
    if millis < 0 {
        return 0;
    }
    let seconds = (millis.max(MINIMUM_BILLED) + 999) / 1000;
    // per_hour * seconds / 3600, rounded half up, in i128 so nothing overflows.
    ((i128::from(per_hour) * i128::from(seconds) + 1800) / 3600) as Micros
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
}
