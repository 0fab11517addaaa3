//! What a client and the service say to each other: one `Request`, then lines of progress,
//! status and warnings as they come, and one final `Response` or error. In a single-user install
//! the request is served in the client's own process and nothing is encoded; through the setuid
//! wrapper the request is JSON on the runner's stdin (at most `MAX_REQUEST` bytes) and the lines
//! are JSON lines on its stdout.
//!
//! The request carries no identity: the runner learns who called from its real uid. Every field
//! is checked again by the service as untrusted input (`deny_unknown_fields`, names parsed, a
//! profile only by name).
//!
//! A response is typed end to end. On the wire it is the bare answer (`{"result": ANSWER}`, as
//! `list --json` and scripts of earlier versions read it), and the client decodes it as the
//! answer to the request it sent (`Response::decode`): the request says what the answer is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accounting::UsageRow;
use crate::accounting::reaper::{Orphans, ReapAction};
use crate::accounting::report::{By, Report};
use crate::accounting::snapshot::SnapshotReport;
use crate::cluster::provider::ec2::preflight::Check;
use crate::cluster::reconcile::Action as ReconcileAction;
use crate::core::error::{Error, Kind};
use crate::core::printer::Event;
use crate::service::admission::QuotaReport;
use crate::store::{AuditRecord, NodeRow};

/// The most a request may be: anything longer is refused unread.
pub const MAX_REQUEST: usize = 1 << 20;

/// What the caller asks the service to do.
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
        /// One of the caller's own key pairs (`keys create`), authorised on every node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// What a launch would cost and whether the policy would admit it (`launch-cluster` asks
    /// before it launches; `--dry-run` asks only this). Nothing is created.
    Quote {
        name: String,
        workers: u32,
        profile: Option<String>,
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
    /// More time before a live cluster's deadline (`stratus extend NAME DURATION`).
    Extend {
        name: String,
        /// Seconds to add: at least a minute, at most 30 days.
        by_secs: u64,
        /// Instructors only: a cluster of another user.
        owner: Option<String>,
    },
    /// Every live cluster of the class, what needs attention first (instructors only).
    Class {},
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
    /// The owner's live cluster, its nodes refreshed and every host key pinned (from the node's
    /// console, or on first contact), with its key: what `login`, `exec`, `push` and `proxy`
    /// connect with.
    Reach {
        name: String,
        /// Every node, not only the master.
        #[serde(default)]
        all: bool,
    },
    Usage {
        owner: Option<String>,
        #[serde(default)]
        everyone: bool,
    },
    /// The caller's quota, or (instructors) what `owner` resolves to.
    Quota {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Instructors only: the audit trail from `since` (RFC 3339 or a date) on.
    Audit {
        since: Option<String>,
    },
    /// Instructors only: hours and cost by cluster, user, profile or day, in a window.
    Report {
        by: By,
        since: Option<String>,
        until: Option<String>,
        /// The policy's term, by user (`report --term`): instead of `since`, `until` and `by`.
        #[serde(default)]
        term: bool,
    },
    /// Removes an ended cluster from the list, with anything left of it at the provider.
    Delete {
        name: String,
    },
    /// Finishes or undoes what crashed commands left of the caller's clusters.
    Reconcile {
        #[serde(default)]
        dry_run: bool,
    },
    /// Rewrites the master's workers file from the running workers.
    UpdateWorkers {
        name: String,
    },
    /// Records every instance's state and hours (cron).
    Snapshot {},
    /// Bakes an image of a profile (instructors, the service account): one instance with the
    /// install only, imaged, terminated; the profile's launches then boot from the image.
    ImageBuild {
        profile: String,
        #[serde(default)]
        dry_run: bool,
    },
    /// Instructors, the service account: `students` clusters of `profile` (a master and
    /// `workers` workers each; the policy's largest without it) checked against the account
    /// before a lab. Creates nothing.
    Preflight {
        profile: String,
        students: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<u32>,
    },
    /// The caller's own IAM identity (`identity init`): the user (made if missing, in the
    /// students' group) and a key, unless `keep` (the key the caller's files hold) is already
    /// one of the user's.
    IdentityInit {
        keep: Option<String>,
    },
    /// `identity rotate`, first step: a new key for the caller's own user, after making room
    /// (see `service::identity`). Only ever the caller's: a new key's secret goes to its owner
    /// alone (`admin identities rotate` runs this as each student).
    IdentityRotate {
        keep: Option<String>,
    },
    /// `identity rotate` (and `init`), last step, once the caller's files hold `keep` and it
    /// works: every older key of the user is deleted.
    IdentityRetire {
        keep: String,
    },
    /// The caller's identity: user, groups, key ids and ages; never a secret.
    IdentityShow {},
    /// Deletes the caller's keys, group membership and user.
    IdentityDelete {},
    /// Instructors: the IAM users made to match the roster (`dry_run`: the plan only).
    IdentitiesSync {
        logins: Vec<String>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Instructors: every identity of the class, with its keys.
    IdentitiesList {},
    /// A new EC2 key pair of the caller's, `<login>.<name>`: its private half to the caller.
    KeysCreate {
        name: String,
    },
    /// The caller's key pairs.
    KeysList {},
    KeysDelete {
        name: String,
    },
    /// Warns, then terminates, clusters that break the policy (cron).
    Reap {
        #[serde(default)]
        dry_run: bool,
        /// What to do about orphans this run; the policy's `[reaper] orphans` without it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        orphans: Option<Orphans>,
    },
}

fn yes() -> bool {
    true
}

/// A request as read from its client (the runner's stdin, a line of the class service's
/// socket): at most `MAX_REQUEST` bytes of JSON; why not, for the audit trail and the client.
pub fn parse_request(buf: &[u8]) -> Result<Request, String> {
    if buf.len() > MAX_REQUEST {
        return Err(format!(
            "the request is larger than {MAX_REQUEST} bytes; refused unread"
        ));
    }
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("no request".into());
    }
    serde_json::from_slice(buf).map_err(|e| format!("malformed request: {e}"))
}

impl Request {
    /// The action's name, for the audit trail.
    pub fn action(&self) -> &'static str {
        match self {
            Request::Launch { .. } => "launch",
            Request::Quote { .. } => "quote",
            Request::LaunchSlaves { .. } => "launch-slaves",
            Request::Terminate { .. } => "terminate",
            Request::Extend { .. } => "extend",
            Request::List { .. } => "list",
            Request::Class {} => "class",
            Request::Key { .. } => "key",
            Request::Reach { .. } => "reach",
            Request::Usage { .. } => "usage",
            Request::Quota { .. } => "quota",
            Request::Audit { .. } => "audit",
            Request::Report { .. } => "report",
            Request::Delete { .. } => "delete",
            Request::Reconcile { .. } => "reconcile",
            Request::UpdateWorkers { .. } => "update-workers",
            Request::Snapshot {} => "snapshot",
            Request::Reap { .. } => "reap",
            Request::ImageBuild { .. } => "image-build",
            Request::Preflight { .. } => "preflight",
            Request::IdentityInit { .. } => "identity-init",
            Request::IdentityRotate { .. } => "identity-rotate",
            Request::IdentityRetire { .. } => "identity-retire",
            Request::IdentityShow {} => "identity-show",
            Request::IdentityDelete {} => "identity-delete",
            Request::IdentitiesSync { .. } => "identities-sync",
            Request::IdentitiesList {} => "identities-list",
            Request::KeysCreate { .. } => "keys-create",
            Request::KeysList {} => "keys-list",
            Request::KeysDelete { .. } => "keys-delete",
        }
    }

    /// Whether serving it only reads (a read is not a decision: only refusals of reads are
    /// audited).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Request::List { .. }
                | Request::Class {}
                | Request::Quote { .. }
                | Request::Usage { .. }
                | Request::Quota { .. }
                | Request::Audit { .. }
                | Request::Report { .. }
                | Request::Reach { .. }
                | Request::Reconcile { dry_run: true }
                | Request::Reap { dry_run: true, .. }
                | Request::ImageBuild { dry_run: true, .. }
                | Request::Preflight { .. }
                | Request::IdentitiesSync { dry_run: true, .. }
                | Request::KeysList {}
        )
    }

    /// The cluster the request is about, as given.
    /// The owner a request names (an instructor acting on another user's cluster), if any.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Request::LaunchSlaves { owner, .. }
            | Request::Terminate { owner, .. }
            | Request::List { owner, .. }
            | Request::Quota { owner } => owner.as_deref(),
            _ => None,
        }
    }

    pub fn cluster(&self) -> Option<&str> {
        match self {
            Request::Launch { name, .. }
            | Request::Quote { name, .. }
            | Request::LaunchSlaves { name, .. }
            | Request::Terminate { name, .. }
            | Request::Extend { name, .. }
            | Request::Key { name }
            | Request::Reach { name, .. }
            | Request::Delete { name }
            | Request::UpdateWorkers { name } => Some(name),
            Request::List { name, .. } => name.as_deref(),
            _ => None,
        }
    }
}

/// A cluster as the service shows it to its owner or an instructor: what `list --json` shows,
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
    /// When its lifetime ends (RFC 3339); none when no lifetime applies.
    #[serde(default)]
    pub deadline: Option<String>,
    /// How many times `extend` moved it.
    #[serde(default)]
    pub extensions: u32,
    /// Who ended it and why, when someone did (`alice`, `reaper`).
    #[serde(default)]
    pub ended_by: Option<String>,
    #[serde(default)]
    pub ended_reason: Option<String>,
}

/// What a launch would cost, and the policy's decision on it (`Request::Quote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quoted {
    pub cluster: String,
    pub profile: String,
    pub nodes: u32,
    /// Micro-dollars per 730 hours of the whole cluster; none if a price is unknown.
    pub rate: Option<i64>,
    /// How long it would live before its deadline (milliseconds); none without a lifetime.
    pub lifetime_ms: Option<i64>,
    /// What is left of the owner's budget; none without a budget.
    pub budget_left_micros: Option<i64>,
    /// How long the budget left pays for it at its rate (milliseconds).
    pub budget_allows_ms: Option<i64>,
    /// Whether the policy would admit it, and if not, why.
    pub admitted: bool,
    pub refusal: Option<String>,
    /// Set when the budget runs out before the lifetime ends: how long after the launch
    /// (milliseconds); the reaper then ends the cluster.
    pub runs_out_ms: Option<i64>,
}

impl Quoted {
    /// What a launch costs, in a student's words: the rate, what the budget allows, and when
    /// the reaper ends a cluster the budget cannot carry to its deadline.
    pub fn lines(&self) -> Vec<String> {
        use crate::core::model::{local_time, now_millis, span_text};
        use crate::core::money::dollars_text;
        // The cluster is not named: a launch says this about the one it was asked for (and
        // says the same whatever the name).
        let mut lines = vec![format!(
            "{} nodes of profile {}, at {}{}",
            self.nodes,
            self.profile,
            self.rate
                .map(crate::config::prices::rate_text)
                .unwrap_or_else(|| "an unknown rate (no price for its instance types)".into()),
            self.lifetime_ms
                .map(|l| format!(", for up to {} (its lifetime)", span_text(l)))
                .unwrap_or_default()
        )];
        if let (Some(left), Some(allows)) = (self.budget_left_micros, self.budget_allows_ms) {
            lines.push(format!(
                "your budget has {} left: {} at that rate",
                dollars_text(left.max(0)),
                span_text(allows)
            ));
        }
        if let Some(out) = self.runs_out_ms {
            lines.push(format!(
                "your budget runs out after about {}, before its lifetime ends: the reaper then ends the cluster (around {})",
                span_text(out),
                local_time(now_millis() + out)
            ));
        }
        lines
    }
}

/// What `extend` did: the new deadline, what the time added costs, the budget left, and the
/// nodes that could not be told (the reaper tells them again when it next acts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extended {
    pub cluster: String,
    pub owner: String,
    /// RFC 3339.
    pub deadline: String,
    pub added_secs: u64,
    pub cost_micros: i64,
    /// Micro-dollars per 730 hours of the cluster, when known.
    pub rate: Option<i64>,
    pub budget_left_micros: Option<i64>,
    pub extensions: u32,
    pub unreachable: Vec<String>,
}

/// A cluster and its key, for its owner to keep (mode 0600, in the owner's own state
/// directory): `login`, `exec`, `push` and `proxy` then run as the owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launched {
    pub cluster: ClusterView,
    pub private_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersAdded {
    pub cluster: ClusterView,
    /// The new nodes' names.
    pub added: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Terminated {
    pub cluster: String,
    /// How many nodes were terminated.
    pub terminated: u64,
    /// The cluster had already ended before this request: its state (`terminated`, `failed`)
    /// and when it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already: Option<AlreadyEnded>,
}

/// An ended cluster's state and end, as a terminate of it finds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlreadyEnded {
    pub state: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub cluster: String,
    /// The instances still found, now terminated.
    pub instances: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersFile {
    pub cluster: String,
    /// How many workers the rewritten file lists.
    pub workers: usize,
}

/// The accounting report, whole: the CLI renders it as a table, CSV or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportAnswer {
    pub report: Report,
}

/// What an image build did, or (a dry run) would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageBuilt {
    pub profile: String,
    /// The steps, one per line.
    pub plan: Vec<String>,
    /// The image made (none in a dry run).
    pub image: Option<String>,
    pub name: Option<String>,
    /// The versions the image was tagged with (`hadoop_version = 3.4.2`).
    pub versions: std::collections::BTreeMap<String, String>,
    /// Where the image is recorded for the profile's launches.
    pub record: String,
}

/// What `admin preflight` found: a verdict per check, and whether none failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    pub profile: String,
    pub students: u32,
    /// Workers per cluster, and where that number came from (`--workers`, the policy's
    /// `max_nodes`, or the default).
    pub workers: u32,
    pub workers_from: String,
    /// Nodes per cluster, the master included.
    pub nodes_per_cluster: u32,
    pub checks: Vec<Check>,
    /// No check failed.
    pub ok: bool,
}

/// An access key as `identity show` and `admin identities list` show it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    /// RFC 3339, when IAM says.
    pub created_at: Option<String>,
    /// Whole days since it was made.
    pub age_days: Option<u64>,
    pub active: bool,
}

/// A student's IAM identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub login: String,
    /// The IAM user's name (prefix and login).
    pub user: String,
    /// Whether IAM has the user.
    pub exists: bool,
    pub groups: Vec<String>,
    pub keys: Vec<KeyView>,
}

/// A key just made, for its owner's files alone. `Debug` hides the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    pub id: String,
    pub secret: crate::core::secret::Secret,
}

/// What `identity init` or the first step of `identity rotate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyIssued {
    pub identity: IdentityView,
    /// Whether this request made the IAM user.
    pub user_created: bool,
    /// The new key (none: `init` found the caller's files' key among the user's).
    pub key: Option<IssuedKey>,
    /// Keys deleted to make room (keys no file of the caller holds).
    pub deleted: Vec<String>,
    /// The region the files' profile is for.
    pub region: String,
}

/// What the last step of a rotation, or `identity delete`, removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysRemoved {
    pub identity: IdentityView,
    pub deleted: Vec<String>,
}

/// What `admin identities sync` did (or, a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub dry_run: bool,
    /// Logins whose users are made.
    pub create: Vec<String>,
    /// Logins whose users (and keys) are removed.
    pub remove: Vec<String>,
    /// Logins whose users are already there.
    pub kept: Vec<String>,
    /// The keys deleted with the removed users.
    pub deleted_keys: Vec<String>,
    /// Whether the students' group was made, or its policy put.
    pub group: Option<String>,
    /// One line per login that failed; the others went on.
    pub failed: Vec<String>,
}

/// A student's own key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPairView {
    pub name: String,
    /// Its name in EC2: `<login>.<name>`.
    pub ec2_name: String,
    pub key_pair_id: Option<String>,
    pub fingerprint: Option<String>,
    pub public_key: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// A key pair just made, with its private half for the caller's file alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPairMade {
    pub key: KeyPairView,
    pub private_key: crate::core::secret::Secret,
}

/// The service's answer, typed: one variant per kind of request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Launched(Launched),
    Quoted(Quoted),
    WorkersAdded(WorkersAdded),
    Terminated(Terminated),
    Extended(Extended),
    Clusters(Vec<ClusterView>),
    Class(Vec<crate::service::class::ClassRow>),
    /// The cluster and its key (`Key` and `Reach`).
    Key(Launched),
    Usage(Vec<UsageRow>),
    Quota(QuotaReport),
    Audit(Vec<AuditRecord>),
    Report(ReportAnswer),
    Deleted(Deleted),
    Reconciled(Vec<ReconcileAction>),
    WorkersFile(WorkersFile),
    Snapshot(SnapshotReport),
    Reaped(Vec<ReapAction>),
    Image(ImageBuilt),
    Preflight(PreflightReport),
    KeyIssued(KeyIssued),
    KeysRemoved(KeysRemoved),
    Identity(IdentityView),
    Identities(Vec<IdentityView>),
    Synced(Synced),
    KeyPairMade(KeyPairMade),
    KeyPairs(Vec<KeyPairView>),
    KeyPairDeleted(KeyPairView),
}

impl Response {
    /// Decodes the answer to `request` from its wire form.
    pub fn decode(request: &Request, value: serde_json::Value) -> Result<Self, serde_json::Error> {
        use serde_json::from_value as of;
        Ok(match request {
            Request::Launch { .. } => Response::Launched(of(value)?),
            Request::Quote { .. } => Response::Quoted(of(value)?),
            Request::LaunchSlaves { .. } => Response::WorkersAdded(of(value)?),
            Request::Terminate { .. } => Response::Terminated(of(value)?),
            Request::Extend { .. } => Response::Extended(of(value)?),
            Request::List { .. } => Response::Clusters(of(value)?),
            Request::Class {} => Response::Class(of(value)?),
            Request::Key { .. } | Request::Reach { .. } => Response::Key(of(value)?),
            Request::Usage { .. } => Response::Usage(of(value)?),
            Request::Quota { .. } => Response::Quota(of(value)?),
            Request::Audit { .. } => Response::Audit(of(value)?),
            Request::Report { .. } => Response::Report(of(value)?),
            Request::Delete { .. } => Response::Deleted(of(value)?),
            Request::Reconcile { .. } => Response::Reconciled(of(value)?),
            Request::UpdateWorkers { .. } => Response::WorkersFile(of(value)?),
            Request::Snapshot {} => Response::Snapshot(of(value)?),
            Request::Reap { .. } => Response::Reaped(of(value)?),
            Request::ImageBuild { .. } => Response::Image(of(value)?),
            Request::Preflight { .. } => Response::Preflight(of(value)?),
            Request::IdentityInit { .. } | Request::IdentityRotate { .. } => {
                Response::KeyIssued(of(value)?)
            }
            Request::IdentityRetire { .. } | Request::IdentityDelete {} => {
                Response::KeysRemoved(of(value)?)
            }
            Request::IdentityShow {} => Response::Identity(of(value)?),
            Request::IdentitiesList {} => Response::Identities(of(value)?),
            Request::IdentitiesSync { .. } => Response::Synced(of(value)?),
            Request::KeysCreate { .. } => Response::KeyPairMade(of(value)?),
            Request::KeysList {} => Response::KeyPairs(of(value)?),
            Request::KeysDelete { .. } => Response::KeyPairDeleted(of(value)?),
        })
    }

    /// The instance ids the answer launched or terminated, for the audit trail.
    pub fn instances(&self) -> Vec<String> {
        let ids = |nodes: &[NodeRow]| nodes.iter().map(|n| n.instance_id.clone()).collect();
        match self {
            Response::Launched(l) => ids(&l.cluster.nodes),
            Response::WorkersAdded(w) => {
                let Ok(name) = crate::core::model::ClusterName::parse(&w.cluster.name) else {
                    return Vec::new();
                };
                let added: Vec<&NodeRow> = w
                    .cluster
                    .nodes
                    .iter()
                    .filter(|n| {
                        w.added
                            .contains(&crate::core::model::node_name(&name, n.role, n.index))
                    })
                    .collect();
                added.iter().map(|n| n.instance_id.clone()).collect()
            }
            Response::Deleted(d) => d.instances.clone(),
            _ => Vec::new(),
        }
    }
}

/// An error as it crosses the wire: its kind, its one-line message, and the exit code the
/// client ends with (derived from the kind; kept for scripts that read the runner directly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub message: String,
    pub kind: Kind,
    pub exit: u8,
}

impl WireError {
    pub fn of(e: &Error) -> Self {
        Self {
            message: crate::core::error::one_line(e),
            kind: e.kind(),
            exit: e.exit_code(),
        }
    }

    pub fn into_error(self) -> Error {
        Error::new(self.kind, self.message)
    }
}

/// One line the runner writes: an event (progress, a status line, a warning) as it comes, then
/// the result or the error, last. `R` is `Response` where it is written and the undecoded JSON
/// where it is read (`Response::decode` finishes the job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line<R> {
    Event(Event),
    Result { result: R },
    Error { error: WireError },
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
                configure: true,
                key: None,
            }
        );
        let back: Request = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            serde_json::to_string(&Request::Quota { owner: None }).unwrap(),
            r#"{"action":"quota"}"#
        );
        for bad in [
            r#"{"action":"launch","name":"demo","workers":2,"user":"bob"}"#,
            r#"{"action":"launch","name":"demo","workers":2,"profile_path":"/tmp/p.toml"}"#,
            r#"{"action":"rm","name":"x"}"#,
            r#"{"name":"demo"}"#,
            r#"{"action":"launch","name":"demo","workers":-1}"#,
            // Requests without fields refuse unknown ones too (a unit variant would not).
            r#"{"action":"quota","user":"bob"}"#,
            r#"{"action":"snapshot","owner":"bob"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_are_one_json_object_each() {
        let l: Line<Response> = Line::Error {
            error: WireError::of(&Error::refused("no")),
        };
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"message":"no","kind":"refused","exit":2}}"#
        );
        let read: Line<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let Line::Error { error } = read else {
            panic!("{read:?}")
        };
        assert_eq!(error.kind, Kind::Refused);
        let p =
            serde_json::to_string(&Line::<Response>::Event(Event::Status("hi".into()))).unwrap();
        assert_eq!(p, r#"{"status":"hi"}"#);
        let t = Terminated {
            cluster: "c".into(),
            terminated: 3,
            already: None,
        };
        let text = serde_json::to_string(&Line::Result {
            result: Response::Terminated(t.clone()),
        })
        .unwrap();
        assert_eq!(text, r#"{"result":{"cluster":"c","terminated":3}}"#);
        let Line::Result { result } =
            serde_json::from_str::<Line<serde_json::Value>>(&text).unwrap()
        else {
            panic!()
        };
        let req = Request::Terminate {
            name: "c".into(),
            owner: None,
        };
        assert_eq!(
            Response::decode(&req, result).unwrap(),
            Response::Terminated(t)
        );
    }
}
