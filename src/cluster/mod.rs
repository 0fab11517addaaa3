//! The cluster model: validated names, roles, the tags every resource carries, and the request ids
//! that tie a launch's resources together. Everything above the provider trait speaks in these
//! types; nothing here knows about EC2 or the local provider.

pub mod intra_key;
pub mod launch;
pub mod profile;
pub mod provider;
pub mod reconcile;
pub mod ssh;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// Tag keys. They are a contract: accounting, reconcile and the reaper find resources by them.
pub const TAG_OWNER: &str = "stratus:owner";
pub const TAG_CLUSTER: &str = "stratus:cluster";
pub const TAG_ROLE: &str = "stratus:role";
pub const TAG_PROFILE: &str = "stratus:profile";
pub const TAG_REQUEST: &str = "stratus:request";

/// A cluster name: `[a-z0-9][a-z0-9-]{0,39}`. It ends up in security group names, key pair names,
/// tags, file names and shell commands, so nothing else is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub const MAX_LEN: usize = 40;

    pub fn parse(name: &str) -> Result<Self, InputError> {
        let invalid = |reason: &str| InputError::InvalidClusterName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(invalid(&format!(
                "it is {} characters long; the limit is {}",
                name.chars().count(),
                Self::MAX_LEN
            )));
        }
        let mut chars = name.chars();
        let first = chars.next().unwrap_or('-');
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// The Unix user running this process, by real uid.
    pub fn current() -> Result<Self, crate::error::Error> {
        let uid = crate::sys::real_uid();
        let entry = crate::sys::passwd(uid)
            .map_err(|e| {
                crate::error::Error::runtime(format!("cannot look up uid {uid}")).with_source(e)
            })?
            .ok_or_else(|| {
                crate::error::Error::runtime(format!(
                    "uid {uid} has no entry in the password database"
                ))
            })?;
        Ok(Self::parse(&entry.name)?)
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

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "master" => Some(Role::Master),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of one launch request. It is the ClientToken stem on EC2 and the `stratus:request` tag,
/// so a crash at any step leaves resources that can be traced back to the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    pub fn new() -> Self {
        use rand::RngExt;
        let n: u64 = rand::rng().random();
        Self(format!("req-{n:016x}"))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
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

/// Who and what a resource belongs to. Every resource stratus creates carries all of these as
/// tags from the moment it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    pub owner: Owner,
    pub cluster: ClusterName,
    pub role: Option<Role>,
    pub profile: String,
    pub request: RequestId,
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
        if let Some(role) = self.role {
            v.push((TAG_ROLE, role.to_string()));
        }
        v
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
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
