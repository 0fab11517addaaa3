//! The bottom of the crate: the validated names and small value types every layer shares
//! (cluster names, owners, request and store ids, roles, the tags every resource carries, cluster
//! and instance states, the provider kinds), and the input error they raise.
//!
//! It imports nothing of the project, so `error`, `store`, `config`, `templates` and `cluster` can
//! all build on it without importing each other in a circle.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The names of an enum's variants, written once: `as_str`, `parse` (`None` for a name that is
/// not one), `ALL` and `Display`.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Milliseconds since the Unix epoch. Hours are computed from these, so short-lived clusters
/// still show their (small) usage.
pub type Millis = i64;

/// A fixed "now" for the whole process, for tests that script time (set once, at start, from
/// `STRATUS_TEST_NOW` by a user's own command in a debug build; never in the runner).
static FIXED_NOW: std::sync::OnceLock<Millis> = std::sync::OnceLock::new();

pub fn now_millis() -> Millis {
    match FIXED_NOW.get() {
        Some(t) => *t,
        None => jiff::Timestamp::now().as_millisecond(),
    }
}

/// Whether an instance type is the local provider's (`local`, `local.*`): a local process that
/// costs nothing.
pub fn is_local_instance_type(instance_type: &str) -> bool {
    instance_type == "local" || instance_type.starts_with("local.")
}

/// The interval cron (or the class service) takes accounting snapshots at: an instance gone
/// without a sighting of its end is closed at its last sighting plus at most this much.
pub const SNAPSHOT_INTERVAL: Millis = 5 * 60 * 1000;

/// A time as RFC 3339 in UTC with milliseconds, always three digits of them
/// (`2026-11-30T01:26:54.430Z`), so the lines of the audit trail and `list` line up and sort as
/// text.
pub fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

/// A time as people read it where they are: local minutes and the zone (`2026-12-03 16:00 CET`).
pub fn local_time(ms: Millis) -> String {
    local_time_as(ms, "%Y-%m-%d %H:%M %Z")
}

/// A time in this machine's local time zone, in `format` (strftime); empty if out of range.
pub fn local_time_as(ms: Millis, format: &str) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime(format)
                .to_string()
        })
        .unwrap_or_default()
}

/// Hours as a policy writes them: `8`, `0.25`, `1.5` (to seven decimals, no trailing zeros).
pub fn hours_text(ms: Millis) -> String {
    let whole = ms / 3_600_000;
    let rest = ms % 3_600_000;
    if rest == 0 {
        return whole.to_string();
    }
    // 3,600,000 ms an hour: seven decimals hold every millisecond.
    let frac = format!("{:07}", rest * 10_000_000 / 3_600_000);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A span as people read it: `2 h 05 min`, `14 min`, `under a minute`.
pub fn span_text(ms: Millis) -> String {
    let minutes = ms.max(0) / 60_000;
    match minutes {
        0 => "under a minute".into(),
        1..=59 => format!("{minutes} min"),
        _ => format!("{} h {:02} min", minutes / 60, minutes % 60),
    }
}

/// A duration in milliseconds, the longest ones capped at `Millis::MAX`.
pub fn millis_of(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// Fixes the process's clock (tests only; see `FIXED_NOW`).
pub fn fix_clock(at: Millis) {
    let _ = FIXED_NOW.set(at);
}

/// Something the user asked for that cannot be done as asked. Always exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "invalid cluster name {name:?}: {reason} (names are 1 to 40 characters of a-z, 0-9 and '-', starting with a letter or digit)"
    )]
    InvalidClusterName { name: String, reason: String },
    #[error(
        "user name {0:?} cannot own clusters: it must be 1 to 32 characters of a-z, 0-9, '_', '-' and '.'"
    )]
    InvalidOwner(String),
    #[error("no cluster named {0}")]
    UnknownCluster(String),
    #[error("a cluster named {0} already exists; terminate it first or choose another name")]
    NameInUse(String),
    #[error("{0}")]
    Invalid(String),
}

/// Tag keys. They are a contract: accounting, reconcile and the reaper find resources by them.
pub const TAG_OWNER: &str = "stratus:owner";
pub const TAG_CLUSTER: &str = "stratus:cluster";
pub const TAG_ROLE: &str = "stratus:role";
pub const TAG_PROFILE: &str = "stratus:profile";
pub const TAG_REQUEST: &str = "stratus:request";
/// The id of the state database that launched the resource: reconcile, delete-cluster and the
/// reaper act only on resources carrying their own store's id.
pub const TAG_STORE: &str = "stratus:store";

/// How a cluster's own EC2 resources (its security group and key pair) are named from its owner
/// and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// Clusters recorded before the store's migration 7: `<owner>-<cluster>`. Both may hold
    /// '-', so `a-b`'s `c` and `a`'s `b-c` had the same names (the second launch was refused).
    Dash,
    /// `<owner>@<cluster>`: no owner and no cluster name can hold '@'.
    At,
}

impl Naming {
    /// The owner and the cluster joined as this scheme joins them.
    pub fn join(self, owner: &Owner, cluster: &ClusterName) -> String {
        match self {
            Naming::Dash => format!("{owner}-{cluster}"),
            Naming::At => format!("{owner}@{cluster}"),
        }
    }

    /// As the store keeps it.
    pub fn as_i64(self) -> i64 {
        match self {
            Naming::Dash => 1,
            Naming::At => 2,
        }
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(Naming::Dash),
            2 => Some(Naming::At),
            _ => None,
        }
    }

    /// The scheme of a cluster recorded now: `At`, but in a test that makes the state an
    /// earlier version made (`STRATUS_TEST_LEGACY_NAMES`, a user's own command in a debug
    /// build).
    pub fn for_new_clusters() -> Self {
        if LEGACY_NAMES.get().copied().unwrap_or(false) {
            Naming::Dash
        } else {
            Naming::At
        }
    }

    /// Tests only: new clusters named as before migration 7.
    pub fn use_legacy_for_tests() {
        let _ = LEGACY_NAMES.set(true);
    }
}

static LEGACY_NAMES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// A cluster name: `[a-z0-9][a-z0-9-]{0,39}`. It ends up in security group names, key pair names,
/// tags, file names and shell commands, so nothing else is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub const MAX_LEN: usize = 40;

    pub fn parse(name: &str) -> Result<Self, InputError> {
        // The name as given, cut short: a megabyte of name is not echoed back.
        let invalid = |reason: &str| InputError::InvalidClusterName {
            name: crate::core::text::shortened(name, 100),
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        // Characters, as the message says: a short name with a non-ASCII character is refused
        // for that character below, not as too long.
        if name.chars().count() > Self::MAX_LEN {
            return Err(invalid(&format!(
                "it is {} characters long; the limit is {}",
                name.chars().count(),
                Self::MAX_LEN
            )));
        }
        let first = name.chars().next().unwrap_or('-');
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(invalid("it must start with a lowercase letter or a digit"));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(invalid(&format!(
                "{bad:?} is not allowed: use lowercase letters, digits and '-'"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterName {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ClusterName> for String {
    fn from(n: ClusterName) -> String {
        n.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner of a cluster: a Unix login name, learned from the real uid (never from the
/// environment). It is part of resource names, so it is validated like a cluster name, with `_`
/// and `.` also allowed as Unix allows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Owner(String);

impl Owner {
    pub fn parse(name: &str) -> Result<Self, InputError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(InputError::InvalidOwner(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Owner {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Owner> for String {
    fn from(n: Owner) -> String {
        n.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

named_enum!(Role {
    Master => "master",
    Worker => "worker",
});

fn random_hex() -> String {
    use rand::RngExt;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// The id of one launch request. It is the ClientToken stem on EC2 and the `stratus:request` tag,
/// so a crash at any step leaves resources that can be traced back to the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    pub fn new() -> Self {
        Self(format!("req-{}", random_hex()))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// A request id as given by someone else (the runner's caller): the same shape as ours.
    pub fn parse(s: &str) -> Result<Self, InputError> {
        let ok =
            s.len() == 20 && s.starts_with("req-") && s[4..].chars().all(|c| c.is_ascii_hexdigit());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InputError::Invalid(format!(
                "invalid request id {s:?}: expected req- and 16 hex digits"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of one state database, created with it and carried by every resource it launches
/// (`stratus:store`). Two state directories of the same user (two lab machines) have different
/// ids, so neither ever touches what the other launched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoreId(String);

impl StoreId {
    pub fn generate() -> Self {
        Self(format!("st-{}", random_hex()))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who and what a resource belongs to. Every resource stratus creates carries all of these as
/// tags from the moment it exists. `store` is `None` only for resources launched before stores
/// had ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    pub owner: Owner,
    pub cluster: ClusterName,
    pub role: Option<Role>,
    pub profile: String,
    pub request: RequestId,
    pub store: Option<StoreId>,
}

impl Tags {
    /// The tags as key/value pairs, in a fixed order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            (TAG_OWNER, self.owner.to_string()),
            (TAG_CLUSTER, self.cluster.to_string()),
            (TAG_PROFILE, self.profile.clone()),
            (TAG_REQUEST, self.request.to_string()),
        ];
        if let Some(store) = &self.store {
            v.push((TAG_STORE, store.to_string()));
        }
        if let Some(role) = self.role {
            v.push((TAG_ROLE, role.to_string()));
        }
        v
    }
}

/// Which provider runs a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Local,
    Ec2,
}

named_enum!(ProviderKind {
    Local => "local",
    Ec2 => "ec2",
});

/// Where a cluster is in its life. A launch moves reserved -> requested -> running ->
/// configured, or to failed (then everything it launched is terminated); terminate moves any
/// state to terminating, then terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Reserved,
    Requested,
    Running,
    Configured,
    Failed,
    Terminating,
    Terminated,
}

named_enum!(ClusterState {
    Reserved => "reserved",
    Requested => "requested",
    Running => "running",
    Configured => "configured",
    Failed => "failed",
    Terminating => "terminating",
    Terminated => "terminated",
});

impl ClusterState {
    /// A cluster that holds its name: anything but failed and terminated.
    pub fn is_live(self) -> bool {
        !matches!(self, ClusterState::Failed | ClusterState::Terminated)
    }

    /// A cluster that is up for use (workers may be added to it).
    pub fn is_up(self) -> bool {
        matches!(self, ClusterState::Running | ClusterState::Configured)
    }
}

/// An instance's state, in EC2's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
    Unknown,
}

named_enum!(InstanceState {
    Pending => "pending",
    Running => "running",
    Stopping => "stopping",
    Stopped => "stopped",
    ShuttingDown => "shutting-down",
    Terminated => "terminated",
    Unknown => "unknown",
});

impl InstanceState {
    /// Gone for good: it will never run again and no longer bills. Only a positive sighting
    /// says so; an instance the provider does not list is not gone (EC2 is eventually
    /// consistent).
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }

    /// Billed by the hour in this state.
    pub fn is_billed(self) -> bool {
        matches!(
            self,
            InstanceState::Pending | InstanceState::Running | InstanceState::Stopping
        )
    }
}

/// The display name of a node: `demo-master`, `demo-worker-3`.
pub fn node_name(cluster: &ClusterName, role: Role, index: u32) -> String {
    match role {
        Role::Master => format!("{cluster}-master"),
        Role::Worker => format!("{cluster}-worker-{index}"),
    }
}

/// Quotes a string for a POSIX shell: safe for any bytes but NUL.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_read_as_the_policy_writes_them() {
        assert_eq!(hours_text(8 * 3_600_000), "8");
        assert_eq!(hours_text(900_000), "0.25");
        assert_eq!(hours_text(5_400_000), "1.5");
        assert_eq!(hours_text(1), "0.0000002");
        assert_eq!(span_text(30_000), "under a minute");
        assert_eq!(span_text(14 * 60_000 + 59_999), "14 min");
        assert_eq!(span_text(125 * 60_000), "2 h 05 min");
    }

    #[test]
    fn times_carry_three_digits_of_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_001_614_430), "2026-11-30T01:20:14.430Z");
        assert_eq!(rfc3339(1_796_001_614_007), "2026-11-30T01:20:14.007Z");
    }

    #[test]
    fn cluster_names() {
        for ok in ["a", "demo", "0", "a-b-c", &"x".repeat(40)] {
            assert!(ClusterName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "../x",
            "a;b",
            "a b",
            &"x".repeat(41),
            "é",
        ] {
            assert!(ClusterName::parse(bad).is_err(), "{bad}");
        }
        let err = ClusterName::parse(&format!("a{}", "é".repeat(30)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'é' is not allowed"), "{err}");
        let err = ClusterName::parse(&"x".repeat(41)).unwrap_err().to_string();
        assert!(
            err.contains("it is 41 characters long; the limit is 40"),
            "{err}"
        );
        // A megabyte of name is not echoed back whole.
        let err = ClusterName::parse(&"x".repeat(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.contains("it is 1048576 characters long"), "{err}");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn request_ids_parse_only_their_own_shape() {
        let r = RequestId::new();
        assert_eq!(RequestId::parse(r.as_str()).unwrap(), r);
        for bad in [
            "",
            "req-",
            "req-0123456789abcdeg",
            "../../etc/passwd",
            "req-0123456789abcdef0",
        ] {
            assert!(RequestId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_round_trip() {
        for &s in ClusterState::ALL {
            assert_eq!(ClusterState::parse(s.as_str()), Some(s));
        }
    }
}
