//! The instructor's policy file (`policy.toml`): who is an instructor, what each instance type
//! costs in units, and each user's limits, resolved per key from the user's own table, else the
//! most generous of the user's groups, else `[default]`.
//!
//! ```toml
//! instructors = ["alice"]          # users who may see and act on every cluster
//! instructor_groups = ["staff"]    # likewise, by Unix group
//! [class]
//! max_units = 400                  # all students together, concurrent
//! [units]                          # cost units per running instance, by type; others are refused
//! "m5.large" = 1
//! [default]                        # every user
//! max_units = 12
//! max_clusters = 2
//! max_nodes = 9                    # per cluster, master included
//! profiles = ["hadoop", "hadoop-spot"]
//! max_lifetime_hours = 8.0        # extensions included
//! lifetime_hours = 4.0             # what a launch gets; `extend` adds up to the max
//! max_extensions = 2
//! budget_dollars = 50.0
//! [groups.cs-grads]                # a Unix group: overrides keys of [default]
//! max_units = 24
//! [users.bob]                      # one user: overrides group and default keys
//! max_clusters = 3
//! ```
//!
//! Units are kept in thousandths (so `0.2` for a tiny type is exact) and money in micro-dollars:
//! nothing here is a float once parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::model::Millis;

/// Thousandths of a cost unit.
pub use crate::core::money::{Micros, MilliUnits};

pub mod admission;

/// The reaper's grace between its warning and the termination when `[reaper] grace_minutes`
/// is not set (and the guard's, without a policy).
pub const DEFAULT_GRACE: Millis = 30 * 60_000;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid policy file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A number of the file (TOML integer or float), for units, hours and dollars.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// The value in `scale`ths, exactly for up to that many decimals; `None` if negative or not
    /// finite.
    fn scaled(self, scale: i64) -> Option<i64> {
        match self {
            Number::Int(i) if i >= 0 => i.checked_mul(scale),
            Number::Float(f) if f.is_finite() && f >= 0.0 && f * (scale as f64) < 9e18 => {
                Some((f * scale as f64).round() as i64)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_units: Option<Number>,
    max_clusters: Option<u32>,
    max_nodes: Option<u32>,
    profiles: Option<Vec<String>>,
    max_lifetime_hours: Option<Number>,
    lifetime_hours: Option<Number>,
    max_extensions: Option<u32>,
    budget_dollars: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    max_units: Option<Number>,
    /// The term: what counts against budgets (the accounting issue refines budgets).
    term_start: Option<toml::value::Datetime>,
    term_end: Option<toml::value::Datetime>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReaperFile {
    grace_minutes: Option<Number>,
    idle_minutes: Option<Number>,
    idle_cpu_percent: Option<u32>,
    /// Read as text, so a typo is named with the key (`Orphans` parses it).
    orphans: Option<String>,
}

/// What to do about orphans (instances of this store no row knows): the policy's
/// `[reaper] orphans`, which the accounting snapshot and the reaper both follow (the reaper's
/// `--orphans` overrides it for one run). The same values as that flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Orphans {
    /// Recorded (their hours accounted) and reported; left running.
    #[default]
    Report,
    /// Recorded, then terminated.
    Terminate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    instructors: Vec<String>,
    #[serde(default)]
    instructor_groups: Vec<String>,
    #[serde(default)]
    class: ClassFile,
    #[serde(default)]
    units: BTreeMap<String, Number>,
    #[serde(default)]
    default: LimitsFile,
    #[serde(default)]
    groups: BTreeMap<String, LimitsFile>,
    #[serde(default)]
    users: BTreeMap<String, LimitsFile>,
    #[serde(default)]
    reaper: ReaperFile,
}

/// One table of limits as parsed (`None`: the table does not set the key), or a user's limits
/// with every key resolved (`None`: no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_units: Option<MilliUnits>,
    pub max_clusters: Option<u32>,
    pub max_nodes: Option<u32>,
    pub profiles: Option<BTreeSet<String>>,
    pub max_lifetime: Option<Millis>,
    /// The lifetime a launch gets (`lifetime_hours`); `extend` adds to it, up to
    /// `max_lifetime` in all. `None`: `max_lifetime`.
    pub lifetime: Option<Millis>,
    /// How many times `extend` may move one cluster's deadline; `None`: no limit but
    /// `max_lifetime`.
    pub max_extensions: Option<u32>,
    pub budget: Option<Micros>,
}

impl Limits {
    /// The lifetime a new cluster of `profile` gets, from which its deadline is set:
    /// `lifetime_hours`, within the longest it may live (`max_lifetime`).
    pub fn first_lifetime(&self, profile: &crate::config::profile::Profile) -> Option<Millis> {
        let max = self.max_lifetime_of(profile);
        match (self.lifetime, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When `cluster`'s lifetime ends: its recorded deadline, or for a cluster recorded before
    /// deadlines were, its creation plus the longest it may live.
    pub fn deadline_of(&self, cluster: &crate::store::ClusterRow) -> Option<Millis> {
        cluster.deadline.or_else(|| {
            self.max_lifetime_of(&cluster.record.profile)
                .map(|l| cluster.created_at.saturating_add(l))
        })
    }

    /// The longest a cluster of `profile` may live, extensions included: these limits', or the
    /// profile's if lower.
    pub fn max_lifetime_of(&self, profile: &crate::config::profile::Profile) -> Option<Millis> {
        let p = profile
            .max_lifetime_hours
            .map(|h| Millis::try_from(h).unwrap_or(Millis::MAX / 3_600_000) * 3_600_000);
        match (self.max_lifetime, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub path: PathBuf,
    pub instructors: BTreeSet<String>,
    pub instructor_groups: BTreeSet<String>,
    pub class_max_units: Option<MilliUnits>,
    pub term_start: Option<jiff::Timestamp>,
    pub term_end: Option<jiff::Timestamp>,
    /// Units per running instance, by type. A type not listed is refused.
    pub units: BTreeMap<String, MilliUnits>,
    /// The reaper's grace between its warning and the termination.
    pub reaper_grace: Millis,
    /// The idle rule (`[reaper] idle_minutes`), off without it: a cluster idle that long (and
    /// older than that) is warned, then ended.
    pub idle: Option<Millis>,
    /// Below this CPU use (percent, each node), a node counts as idle.
    pub idle_cpu_percent: u32,
    /// What the snapshot and the reaper do about orphans (`[reaper] orphans`).
    pub orphans: Orphans,
    default: Limits,
    groups: BTreeMap<String, Limits>,
    users: BTreeMap<String, Limits>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| invalid(crate::config::toml_message(&e)))?;
        let scaled = |n: Number, scale: i64, what: &str| {
            n.scaled(scale)
                .ok_or_else(|| invalid(format!("{what} must be a number >= 0")))
        };
        let units_of = |n: Number, what: &str| scaled(n, 1000, what).map(|v| v as MilliUnits);
        let table = |t: &LimitsFile, name: &str| -> Result<Limits, PolicyError> {
            Ok(Limits {
                max_units: t
                    .max_units
                    .map(|n| units_of(n, &format!("[{name}] max_units")))
                    .transpose()?,
                max_clusters: t.max_clusters,
                max_nodes: t.max_nodes,
                profiles: t.profiles.as_ref().map(|p| p.iter().cloned().collect()),
                max_lifetime: t
                    .max_lifetime_hours
                    .map(|n| scaled(n, 3_600_000, &format!("[{name}] max_lifetime_hours")))
                    .transpose()?,
                lifetime: t
                    .lifetime_hours
                    .map(|n| scaled(n, 3_600_000, &format!("[{name}] lifetime_hours")))
                    .transpose()?,
                max_extensions: t.max_extensions,
                budget: t
                    .budget_dollars
                    .map(|n| scaled(n, 1_000_000, &format!("[{name}] budget_dollars")))
                    .transpose()?,
            })
        };
        let mut units = BTreeMap::new();
        for (ty, n) in &file.units {
            units.insert(ty.clone(), units_of(*n, &format!("[units] {ty:?}"))?);
        }
        // A date alone is a whole day: the term starts at its first moment (UTC) and ends
        // after its last (`term_end = 2026-12-20` takes in the 20th).
        let date = |d: &Option<toml::value::Datetime>, key: &str| {
            d.as_ref()
                .map(|d| {
                    let text = d.to_string();
                    let day = text.parse::<jiff::civil::Date>().map(|day| {
                        let day = if key == "term_end" {
                            day.tomorrow().unwrap_or(day)
                        } else {
                            day
                        };
                        day.to_zoned_datetime(jiff::tz::TimeZone::UTC)
                            .map(|z| z.timestamp())
                    });
                    match day {
                        Ok(Ok(t)) => Ok(t),
                        _ => text.parse::<jiff::Timestamp>().map_err(|_| {
                            invalid(format!("[class] {key} must be a date like 2026-09-01"))
                        }),
                    }
                })
                .transpose()
        };
        let grace = match file.reaper.grace_minutes {
            None => DEFAULT_GRACE,
            Some(n) => scaled(n, 60_000, "[reaper] grace_minutes")?,
        };
        let mut groups = BTreeMap::new();
        for (g, t) in &file.groups {
            groups.insert(g.clone(), table(t, &format!("groups.{g}"))?);
        }
        let mut users = BTreeMap::new();
        for (u, t) in &file.users {
            users.insert(u.clone(), table(t, &format!("users.{u}"))?);
        }
        Ok(Self {
            path: path.to_path_buf(),
            instructors: file.instructors.into_iter().collect(),
            instructor_groups: file.instructor_groups.into_iter().collect(),
            class_max_units: file
                .class
                .max_units
                .map(|n| units_of(n, "[class] max_units"))
                .transpose()?,
            term_start: date(&file.class.term_start, "term_start")?,
            term_end: date(&file.class.term_end, "term_end")?,
            units,
            reaper_grace: grace,
            idle: file
                .reaper
                .idle_minutes
                .map(|n| scaled(n, 60_000, "[reaper] idle_minutes"))
                .transpose()?
                .filter(|ms| *ms > 0),
            idle_cpu_percent: file.reaper.idle_cpu_percent.unwrap_or(10).min(100),
            orphans: match file.reaper.orphans.as_deref() {
                None | Some("report") => Orphans::Report,
                Some("terminate") => Orphans::Terminate,
                Some(other) => {
                    return Err(invalid(format!(
                        "[reaper] orphans must be \"report\" or \"terminate\", not {other:?}"
                    )));
                }
            },
            default: table(&file.default, "default")?,
            groups,
            users,
        })
    }

    /// When the term ended, in local time, if it has by `now` (`[class] term_end`): no
    /// launches, and the reaper ends what still runs.
    pub fn term_over(&self, now: Millis) -> Option<String> {
        self.term_end
            .map(|t| t.as_millisecond())
            .filter(|end| now >= *end)
            .map(crate::core::model::local_time)
    }

    /// Whether this user (with these groups) may see and act on every cluster.
    pub fn is_instructor(&self, user: &str, groups: &[String]) -> bool {
        self.instructors.contains(user) || groups.iter().any(|g| self.instructor_groups.contains(g))
    }

    /// The user's limits: per key, the user's own table, else the most generous of the user's
    /// groups, else `[default]`, else no limit.
    pub fn limits(&self, user: &str, groups: &[String]) -> Limits {
        let own = self.users.get(user);
        let theirs: Vec<&Limits> = groups.iter().filter_map(|g| self.groups.get(g)).collect();
        // The most generous of the groups that set the key: the largest number, the union of
        // profile lists.
        macro_rules! resolve {
            ($field:ident) => {
                own.and_then(|t| t.$field)
                    .or_else(|| theirs.iter().filter_map(|t| t.$field).max())
                    .or(self.default.$field)
            };
        }
        let profiles = own
            .and_then(|t| t.profiles.clone())
            .or_else(|| {
                let sets: Vec<&BTreeSet<String>> =
                    theirs.iter().filter_map(|t| t.profiles.as_ref()).collect();
                (!sets.is_empty()).then(|| sets.into_iter().flatten().cloned().collect())
            })
            .or_else(|| self.default.profiles.clone());
        Limits {
            max_units: resolve!(max_units),
            max_clusters: resolve!(max_clusters),
            max_nodes: resolve!(max_nodes),
            profiles,
            max_lifetime: resolve!(max_lifetime),
            lifetime: resolve!(lifetime),
            max_extensions: resolve!(max_extensions),
            budget: resolve!(budget),
        }
    }

    /// Units of one running instance of this type; `None` if the policy does not list it. A
    /// local node (a process on this machine, free) counts 0 unless listed, so a class's policy
    /// can be rehearsed on the local provider as it stands.
    pub fn units_of(&self, instance_type: &str) -> Option<MilliUnits> {
        self.units
            .get(instance_type)
            .copied()
            .or_else(|| crate::core::model::is_local_instance_type(instance_type).then_some(0))
    }

    /// An example policy, written by `admin install` when the site has none.
    pub const EXAMPLE: &'static str = r#"# stratus policy: who may launch what. Read by the runner at every request; a missing or
# invalid file refuses every launch in a multi-user install. See the README ("Policy").
instructors = []                 # users who may see and act on every cluster
instructor_groups = []           # likewise, by Unix group

[class]
max_units = 400                  # all students together, concurrent
# term_start = 2026-09-01        # what counts against budgets
# term_end = 2026-12-20

[units]                          # cost units per running instance, by type; others are refused
"m5.large" = 1
"m5.xlarge" = 2

[default]                        # every user
max_units = 12                   # concurrent units of running instances
max_clusters = 2                 # live clusters at once
max_nodes = 9                    # per cluster, master included
profiles = ["hadoop", "hadoop-spot"]
max_lifetime_hours = 8.0         # the longest a cluster may live, extensions included
lifetime_hours = 4.0             # what a launch gets; `stratus extend` adds time up to the max
max_extensions = 2               # extends per cluster
budget_dollars = 50.0            # per term, from recorded usage

[reaper]
grace_minutes = 30               # between the reaper's warning and the termination
# idle_minutes = 60              # end clusters idle this long (off by default; see the README)
# idle_cpu_percent = 10          # a node below this CPU use counts as idle
orphans = "report"               # instances no record knows: "report" (snapshot and reaper), or "terminate"
"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::money::{dollars_text, units_text};

    const CONTRACT: &str = r#"
instructors = ["alice"]
instructor_groups = ["staff"]
[class]
max_units = 400
[units]
"m5.large" = 1
"m5.xlarge" = 2
"t3.micro" = 0.2
[default]
max_units = 12
max_clusters = 2
max_nodes = 9
profiles = ["hadoop", "hadoop-spot"]
max_lifetime_hours = 8.0
budget_dollars = 50.0
[groups.cs-grads]
max_units = 24
[groups.big]
max_units = 30
max_nodes = 4
[users.bob]
max_clusters = 3
max_units = 5
"#;

    fn policy() -> Policy {
        Policy::parse(CONTRACT, Path::new("/etc/stratus/policy.toml")).unwrap()
    }

    #[test]
    fn the_contract_parses_with_exact_units_and_money() {
        let p = policy();
        assert_eq!(p.units_of("m5.xlarge"), Some(2000));
        assert_eq!(p.units_of("t3.micro"), Some(200));
        assert_eq!(p.units_of("c5.large"), None);
        assert_eq!(p.class_max_units, Some(400_000));
        let l = p.limits("carol", &[]);
        assert_eq!(l.max_units, Some(12_000));
        assert_eq!(l.budget, Some(50_000_000));
        assert_eq!(l.max_lifetime, Some(8 * 3_600_000));
        assert_eq!(p.reaper_grace, 30 * 60_000);
    }

    #[test]
    fn resolution_is_per_key_user_then_most_generous_group_then_default() {
        let p = policy();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A group overrides only what it sets.
        let l = p.limits("dave", &g(&["cs-grads"]));
        assert_eq!((l.max_units, l.max_clusters), (Some(24_000), Some(2)));
        // The most generous of two groups, key by key.
        let l = p.limits("erin", &g(&["cs-grads", "big"]));
        assert_eq!((l.max_units, l.max_nodes), (Some(30_000), Some(4)));
        // The user's own table wins over groups, even when it is less generous.
        let l = p.limits("bob", &g(&["big"]));
        assert_eq!(
            (l.max_units, l.max_clusters, l.max_nodes),
            (Some(5_000), Some(3), Some(4))
        );
    }

    #[test]
    fn instructors_by_name_or_group() {
        let p = policy();
        assert!(p.is_instructor("alice", &[]));
        assert!(p.is_instructor("zed", &["staff".into()]));
        assert!(!p.is_instructor("bob", &["cs-grads".into()]));
    }

    #[test]
    fn typos_and_bad_values_name_the_file_and_key() {
        let path = Path::new("/p.toml");
        let err = Policy::parse("[default]\nmax_unit = 3\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/p.toml") && err.contains("max_unit"), "{err}");
        let err = Policy::parse("[units]\n\"m5.large\" = -1\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m5.large"), "{err}");
    }

    #[test]
    fn the_example_parses() {
        Policy::parse(Policy::EXAMPLE, Path::new("/x")).unwrap();
    }

    #[test]
    fn unlisted_types_are_refused_but_local_nodes_count_nothing_unless_listed() {
        let p = Policy::parse(Policy::EXAMPLE, Path::new("/x")).unwrap();
        assert_eq!(p.units_of("m5.large"), Some(1000));
        assert_eq!(p.units_of("t2.nano"), None);
        assert_eq!(p.units_of("local"), Some(0));
        assert_eq!(p.units_of("local.big"), Some(0));
        assert_eq!(p.units_of("localx"), None);
        let listed = Policy::parse("[units]\n\"local\" = 2\n", Path::new("/x")).unwrap();
        assert_eq!(listed.units_of("local"), Some(2000));
    }

    #[test]
    fn texts() {
        assert_eq!(units_text(4000), "4");
        assert_eq!(units_text(200), "0.2");
        assert_eq!(dollars_text(49_995_000), "$50.00");
        assert_eq!(dollars_text(1_234_567), "$1.23");
    }
}
