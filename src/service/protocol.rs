//! What the CLI and the runner say to each other through the setuid wrapper: one request on the
//! runner's stdin (JSON, at most `MAX_REQUEST` bytes), then JSON lines on its stdout: progress,
//! status lines and warnings as they come, and one final result or error.
//!
//! The request carries no identity: the runner learns who called from its real uid. Every field
//! is checked again by the runner as untrusted input (`deny_unknown_fields`, names parsed, a
//! profile only by name).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::NodeRow;

/// The most a request may be: anything longer is refused unread.
pub const MAX_REQUEST: usize = 1 << 20;

/// What the caller asks the runner to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// A new cluster: a master and `workers` workers.
    Launch {
        name: String,
        workers: u32,
        /// A profile name (never a path); the site's default without one.
        profile: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default = "yes")]
        configure: bool,
    },
    LaunchSlaves {
        name: String,
        count: u32,
        /// Instructors only: a cluster of another user.
        owner: Option<String>,
    },
    Terminate {
        name: String,
        owner: Option<String>,
    },
    /// Clusters, as `list --json` shows them, with their nodes' pinned host keys.
    List {
        name: Option<String>,
        #[serde(default)]
        all: bool,
        owner: Option<String>,
        /// Instructors only: every user's clusters.
        #[serde(default)]
        everyone: bool,
    },
    /// The cluster's key, again (to the owner only): for a second machine of the same user.
    Key {
        name: String,
    },
    Usage {
        owner: Option<String>,
        #[serde(default)]
        everyone: bool,
    },
    Quota,
    /// Instructors only: the audit trail from `since` (RFC 3339 or a date) on.
    Audit {
        since: Option<String>,
    },
    /// Instructors only: hours and cost by cluster, user, profile or day, in a window.
    Report {
        by: crate::accounting::report::By,
        since: Option<String>,
        until: Option<String>,
    },
}

fn yes() -> bool {
    true
}

impl Request {
    /// The action's name, for the audit trail.
    pub fn action(&self) -> &'static str {
        match self {
            Request::Launch { .. } => "launch",
            Request::LaunchSlaves { .. } => "launch-slaves",
            Request::Terminate { .. } => "terminate",
            Request::List { .. } => "list",
            Request::Key { .. } => "key",
            Request::Usage { .. } => "usage",
            Request::Quota => "quota",
            Request::Audit { .. } => "audit",
            Request::Report { .. } => "report",
        }
    }

    /// The cluster the request is about, as given.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Request::Launch { name, .. }
            | Request::LaunchSlaves { name, .. }
            | Request::Terminate { name, .. }
            | Request::Key { name } => Some(name),
            Request::List { name, .. } => name.as_deref(),
            _ => None,
        }
    }
}

/// One line the runner writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Line {
    /// The progress bars in flight, each as the runner sees it now.
    Progress(Vec<Bar>),
    Status(String),
    Warning(String),
    /// The answer; the last line.
    Result(serde_json::Value),
    /// The failure; the last line. `exit` is the exit code the CLI ends with.
    Error {
        message: String,
        exit: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bar {
    pub message: String,
    pub position: u64,
    pub length: u64,
    /// The bar is done (the CLI clears it).
    pub done: bool,
}

/// A cluster as the runner shows it to its owner or an instructor: what `list --json` shows,
/// plus what the CLI needs to reach the nodes itself (the SSH user, the pinned host keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub profile: String,
    pub provider: String,
    pub state: String,
    pub created_at: String,
    pub failure: Option<String>,
    pub ssh_user: String,
    /// Hours, warnings and the like, for the list (a line each).
    #[serde(default)]
    pub notes: Vec<String>,
    pub nodes: Vec<NodeRow>,
}

/// What a launch answers: the cluster, and its key for its owner to keep (mode 0600, in the
/// owner's own state directory): `login`, `exec`, `push` and `proxy` then run as the owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launched {
    pub cluster: ClusterView,
    pub private_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(
            r#"{"action":"launch","name":"demo","workers":2,"profile":"hadoop"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Launch {
                name: "demo".into(),
                workers: 2,
                profile: Some("hadoop".into()),
                env: BTreeMap::new(),
                configure: true
            }
        );
        let back: Request = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        for bad in [
            r#"{"action":"launch","name":"demo","workers":2,"user":"bob"}"#,
            r#"{"action":"launch","name":"demo","workers":2,"profile_path":"/tmp/p.toml"}"#,
            r#"{"action":"rm","name":"x"}"#,
            r#"{"name":"demo"}"#,
            r#"{"action":"launch","name":"demo","workers":-1}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_are_one_json_object_each() {
        let l = Line::Error {
            message: "no".into(),
            exit: 2,
        };
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(text, r#"{"error":{"message":"no","exit":2}}"#);
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), l);
        let p = serde_json::to_string(&Line::Status("hi".into())).unwrap();
        assert_eq!(p, r#"{"status":"hi"}"#);
    }
}
