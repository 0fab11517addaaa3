//! The admission rules, pure: what a launch (or more workers) asks for in the policy's terms,
//! and whether it fits beside what the user and the class already use. What is in use is read
//! through `InUse`, only when a limit needs it; the service implements it inside the transaction
//! that records the launch and writes the reservation. Nothing here reads or writes anything.

use crate::config::SiteConfig;
use crate::config::prices;
use crate::config::profile::Profile;
use crate::core::error::Error;
use crate::core::model::{Millis, hours_text, span_text};
use crate::core::money::{Micros, MilliUnits, dollars_text, units_text};
use crate::policy::{Limits, Policy};
use crate::store::ClusterRow;

/// What a launch asks for, in the policy's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub units: MilliUnits,
    /// Nodes the cluster will hold, master included.
    pub nodes: u32,
    /// The most it may cost: every node for the lifetime it gets, or what is left of the
    /// budget if less (the reaper ends it when that is spent).
    pub max_cost: Micros,
    /// What it costs, in micro-dollars per 730 hours (the most any of its fallback types
    /// costs); 0 when no budget applies.
    pub rate: Micros,
    /// Set when the budget left is less than `max_cost`: what is left, which the cluster runs
    /// until the reaper ends it.
    pub runs_out: Option<Micros>,
    /// How the units were counted, for a refusal.
    pub breakdown: String,
}

/// What is in use when a request is checked. Each is asked for only when a limit needs it.
pub trait InUse {
    type Error;
    /// The user's live clusters, the one being admitted left out.
    fn live_clusters(&mut self) -> Result<u32, Self::Error>;
    /// The units of the user's open reservations, the one being admitted left out.
    fn user_units(&mut self) -> Result<MilliUnits, Self::Error>;
    /// The units of everyone's open reservations, the one being admitted left out.
    fn class_units(&mut self) -> Result<MilliUnits, Self::Error>;
    /// What the user has spent in the term, and what their running clusters may still spend
    /// beyond it (their reservations' most, less what each has spent).
    fn spending(&mut self) -> Result<(Micros, Micros), Self::Error>;
}

/// The policy, applied to one user.
pub struct Rules<'a> {
    policy: &'a Policy,
    limits: Limits,
    config: &'a SiteConfig,
    user: String,
}

impl<'a> Rules<'a> {
    pub fn new(policy: &'a Policy, config: &'a SiteConfig, user: &str, groups: &[String]) -> Self {
        Self {
            limits: policy.limits(user, groups),
            policy,
            config,
            user: user.to_owned(),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user's budget, if one applies.
    pub fn budget(&self) -> Option<Micros> {
        self.limits.budget
    }

    fn refuse(&self, why: String) -> Error {
        Error::refused(format!(
            "refused by the policy ({}): {why}",
            self.policy.path.display()
        ))
    }

    /// A new cluster of `profile` with `workers` workers: the profile, the count of clusters,
    /// then what `check` checks. The outer error is `in_use`'s; the inner one a refusal.
    pub fn admit_launch<U: InUse>(
        &self,
        profile: &Profile,
        workers: u32,
        in_use: &mut U,
    ) -> Result<Result<Ask, Error>, U::Error> {
        if let Some(end) = self.policy.term_over(crate::core::model::now_millis()) {
            return Ok(Err(self.refuse(format!(
                "the term ended {end} ([class] term_end): no cluster may be launched until the instructor sets the next term"
            ))));
        }
        if let Some(allowed) = &self.limits.profiles
            && !allowed.contains(&profile.name)
        {
            return Ok(Err(self.refuse(format!(
                "profile {} is not one {} may use ({})",
                profile.name,
                self.user,
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            ))));
        }
        let ask = match self.ask(profile, 1, workers) {
            Ok(a) => a,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if let Some(max) = self.limits.max_clusters {
            let live = in_use.live_clusters()?;
            if live + 1 > max {
                return Ok(Err(self.refuse(format!(
                    "max_clusters for {} is {max}; {live} are live, and this launch would make {}",
                    self.user,
                    live + 1
                ))));
            }
        }
        let mut ask = ask;
        Ok(self.check(&mut ask, in_use, "this launch")?.map(|()| ask))
    }

    /// `count` more workers for a cluster of `profile` that holds `held` nodes.
    pub fn admit_growth<U: InUse>(
        &self,
        profile: &Profile,
        held: u32,
        count: u32,
        in_use: &mut U,
    ) -> Result<Result<Ask, Error>, U::Error> {
        let mut ask = match self.ask(profile, 0, count) {
            Ok(a) => a,
            Err(refusal) => return Ok(Err(refusal)),
        };
        ask.nodes = held + count;
        let checked = self.check(&mut ask, in_use, &format!("adding {count} workers"))?;
        // The reservation holds the new nodes only.
        ask.nodes = count;
        Ok(checked.map(|()| ask))
    }

    /// Units, nodes and the most it may cost: `masters` masters and `workers` workers of
    /// `profile`.
    fn ask(&self, profile: &Profile, masters: u32, workers: u32) -> Result<Ask, Error> {
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
        let max_cost = match self.limits.first_lifetime(profile) {
            Some(ms) if rate > 0 => prices::cost_at_rate(rate, ms),
            _ => 0,
        };
        Ok(Ask {
            units,
            nodes: masters + workers,
            max_cost,
            rate,
            runs_out: None,
            breakdown: parts.join(" and "),
        })
    }

    /// The checks against what is in use: nodes, the user's units, the class's units, the
    /// budget. A launch the budget cannot carry to the end of its lifetime is admitted, holding
    /// what is left (`Ask::runs_out`), if that pays for its first minute.
    fn check<U: InUse>(
        &self,
        ask: &mut Ask,
        in_use: &mut U,
        what: &str,
    ) -> Result<Result<(), Error>, U::Error> {
        if let Some(max) = self.limits.max_nodes
            && ask.nodes > max
        {
            return Ok(Err(self.refuse(format!(
                "max_nodes for {} is {max} per cluster, master included; {what} asks for {}",
                self.user, ask.nodes
            ))));
        }
        if let Some(max) = self.limits.max_units {
            let used = in_use.user_units()?;
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
            let used = in_use.class_units()?;
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
            let (spent, committed) = in_use.spending()?;
            let left = budget - spent - committed;
            let first_minute = prices::cost_at_rate(ask.rate, 60_000);
            if ask.max_cost > left && left < first_minute.max(1) {
                return Ok(Err(self.refuse(format!(
                    "{} has {} of the {} budget left ({} spent, {} held by running clusters), less than the first minute of {what} costs ({} at {})",
                    self.user,
                    dollars_text(left.max(0)),
                    dollars_text(budget),
                    dollars_text(spent),
                    dollars_text(committed),
                    dollars_text(first_minute),
                    prices::rate_text(ask.rate)
                ))));
            }
            if ask.max_cost > left {
                ask.max_cost = left;
                ask.runs_out = Some(left);
            }
        }
        Ok(Ok(()))
    }
}

/// An extension the policy admits: the deadline from and to, and what the time added costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub from: Option<Millis>,
    pub to: Millis,
    pub cost: Micros,
    /// The budget left once the extension is held (none without a budget).
    pub left: Option<Micros>,
}

/// What an extension is checked against: the cluster, the time asked for, now, its rate
/// (micro-dollars per 730 hours) and, read only when a budget applies, what its owner has
/// spent and still holds.
pub struct ExtensionAsk<'a> {
    pub cluster: &'a ClusterRow,
    pub by: Millis,
    pub now: Millis,
    pub rate: Option<Micros>,
}

/// `stratus extend`: moves the deadline by `by` (from now, if it has passed), within
/// `max_extensions`, `max_lifetime_hours` in all, and the owner's budget at the cluster's rate.
/// The outer error is `spending`'s; the inner one a refusal naming the limit.
pub fn admit_extension<E>(
    limits: &Limits,
    term_end: Option<Millis>,
    ask: &ExtensionAsk<'_>,
    spending: impl FnOnce() -> Result<(Micros, Micros), E>,
) -> Result<Result<Extension, String>, E> {
    let c = ask.cluster;
    let Some(deadline) = limits.deadline_of(c) else {
        return Ok(Err(format!(
            "no lifetime applies to cluster {}: it has no deadline to move",
            c.name
        )));
    };
    if let Some(max) = limits.max_extensions
        && c.extensions >= max
    {
        return Ok(Err(format!(
            "max_extensions for {} is {max}, and cluster {} has been extended {} times",
            c.owner, c.name, c.extensions
        )));
    }
    let base = deadline.max(ask.now);
    let to = base.saturating_add(ask.by);
    if let Some(end) = term_end
        && to > end
    {
        return Ok(Err(format!(
            "the term ends {} ([class] term_end): cluster {} cannot be extended past it",
            crate::core::model::local_time(end),
            c.name
        )));
    }
    if let Some(max) = limits.max_lifetime_of(&c.record.profile)
        && to - c.created_at > max
    {
        let room = (c.created_at + max - base).max(0);
        return Ok(Err(format!(
            "max_lifetime_hours for {} is {} h in all, extensions included; cluster {} would live {} h{}",
            c.owner,
            hours_text(max),
            c.name,
            hours_text(to - c.created_at),
            if room >= 60_000 {
                format!(" (at most {} more can be added)", span_text(room))
            } else {
                String::new()
            }
        )));
    }
    let cost = match ask.rate {
        Some(rate) => prices::piece_at_rate(rate, to - base),
        None if limits.budget.is_some() => {
            return Ok(Err(format!(
                "no price is known for cluster {}'s nodes, so its extension cannot be checked against the budget",
                c.name
            )));
        }
        None => 0,
    };
    let mut left = None;
    if let Some(budget) = limits.budget {
        let (spent, committed) = spending()?;
        let free = budget - spent - committed;
        if cost > free {
            return Ok(Err(format!(
                "{} has {} of the {} budget left ({} spent, {} held by running clusters), and {} more of cluster {} at {} costs {}",
                c.owner,
                dollars_text(free.max(0)),
                dollars_text(budget),
                dollars_text(spent),
                dollars_text(committed),
                span_text(to - base),
                c.name,
                ask.rate.map(prices::rate_text).unwrap_or_default(),
                dollars_text(cost)
            )));
        }
        left = Some(free - cost);
    }
    Ok(Ok(Extension {
        from: c.deadline,
        to,
        cost,
        left,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::convert::Infallible;

    /// What is in use, as numbers, and which of them the rules asked for.
    #[derive(Default)]
    struct Numbers {
        live: u32,
        user: MilliUnits,
        class: MilliUnits,
        spent: Micros,
        committed: Micros,
        asked: Vec<&'static str>,
    }

    impl InUse for Numbers {
        type Error = Infallible;
        fn live_clusters(&mut self) -> Result<u32, Infallible> {
            self.asked.push("live");
            Ok(self.live)
        }
        fn user_units(&mut self) -> Result<MilliUnits, Infallible> {
            self.asked.push("user");
            Ok(self.user)
        }
        fn class_units(&mut self) -> Result<MilliUnits, Infallible> {
            self.asked.push("class");
            Ok(self.class)
        }
        fn spending(&mut self) -> Result<(Micros, Micros), Infallible> {
            self.asked.push("spending");
            Ok((self.spent, self.committed))
        }
    }

    pub(crate) fn policy(text: &str) -> Policy {
        Policy::parse(text, std::path::Path::new("/etc/stratus/policy.toml")).unwrap()
    }

    /// A profile of m5.large masters and workers.
    pub(crate) fn profile() -> Profile {
        let mut p = Profile::for_tests("hadoop");
        for role in [&mut p.master, &mut p.worker] {
            role.instance_type = "m5.large".into();
            role.instance_types = vec!["m5.large".into()];
        }
        p
    }

    #[test]
    fn a_launch_that_fits_asks_for_its_units_and_its_most_cost() {
        let p = policy(
            "[units]\n\"m5.large\" = 1\n[default]\nmax_units = 4\nbudget_dollars = 10\nmax_lifetime_hours = 2\n",
        );
        let config = SiteConfig::default();
        let rules = Rules::new(&p, &config, "alice", &[]);
        let mut n = Numbers::default();
        let ask = rules.admit_launch(&profile(), 2, &mut n).unwrap().unwrap();
        assert_eq!(ask.units, 3_000);
        assert_eq!(ask.nodes, 3);
        // 3 m5.large for 2 hours: each $0.096 an hour, its public IPv4 address $0.005 an hour,
        // and its 8 GB gp3 root volume at $0.08 a GB-month (of 730 hours), rounded once.
        let per_730_hours = 3 * ((96_000 + 5_000) * 730 + 8 * 80_000);
        assert_eq!(ask.max_cost, (per_730_hours * 2 + 365) / 730);
        // No max_clusters and no class limit: those were never read.
        assert_eq!(n.asked, ["user", "spending"]);
    }

    #[test]
    fn each_limit_refuses_with_its_numbers() {
        let p = policy(
            "[class]\nmax_units = 5\n[units]\n\"m5.large\" = 1\n[default]\nmax_units = 4\nmax_clusters = 1\nmax_nodes = 3\nbudget_dollars = 1\nmax_lifetime_hours = 8\n",
        );
        let config = SiteConfig::default();
        let rules = Rules::new(&p, &config, "alice", &[]);
        let refused = |n: &mut Numbers, workers: u32| {
            let e = rules
                .admit_launch(&profile(), workers, n)
                .unwrap()
                .unwrap_err();
            assert_eq!(e.kind(), crate::core::error::Kind::Refused);
            e.to_string()
        };
        let m = refused(&mut Numbers::default(), 3);
        assert!(m.contains("max_nodes for alice is 3"), "{m}");
        let m = refused(
            &mut Numbers {
                live: 1,
                ..Default::default()
            },
            1,
        );
        assert!(m.contains("max_clusters for alice is 1; 1 are live"), "{m}");
        let m = refused(
            &mut Numbers {
                user: 3_000,
                ..Default::default()
            },
            1,
        );
        assert!(m.contains("max_units for alice is 4; 3 are in use"), "{m}");
        let m = refused(
            &mut Numbers {
                class: 4_000,
                ..Default::default()
            },
            1,
        );
        assert!(
            m.contains("the class's max_units is 5; 4 are in use"),
            "{m}"
        );
        // 2 nodes for 8 hours at the rate above cost $1.63, more than the $1.00 budget: the
        // launch is admitted holding the $1.00, and says the budget runs out first.
        let ask = rules
            .admit_launch(&profile(), 1, &mut Numbers::default())
            .unwrap()
            .unwrap();
        assert_eq!((ask.max_cost, ask.runs_out), (1_000_000, Some(1_000_000)));
        // With less left than its first minute costs: refused, naming both.
        let m = refused(
            &mut Numbers {
                spent: 999_000,
                ..Default::default()
            },
            1,
        );
        assert!(
            m.contains("alice has $0.00 of the $1.00 budget left"),
            "{m}"
        );
        assert!(
            m.contains("less than the first minute of this launch costs ($0.00 at $0.20/h)"),
            "{m}"
        );
        assert!(m.starts_with("refused by the policy (/etc/stratus/policy.toml): "));
    }

    #[test]
    fn growth_counts_the_nodes_held_and_reserves_the_new_ones() {
        let p = policy("[units]\n\"m5.large\" = 1\n[default]\nmax_nodes = 4\n");
        let config = SiteConfig::default();
        let rules = Rules::new(&p, &config, "alice", &[]);
        let ask = rules
            .admit_growth(&profile(), 3, 1, &mut Numbers::default())
            .unwrap()
            .unwrap();
        assert_eq!((ask.units, ask.nodes), (1_000, 1));
        let e = rules
            .admit_growth(&profile(), 3, 2, &mut Numbers::default())
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("adding 2 workers asks for 5"), "{e}");
    }
}
