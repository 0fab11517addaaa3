//! The state database: one SQLite file holding clusters, their nodes, and the usage intervals
//! that hours and cost are computed from.
//!
//! It is a money ledger, so: WAL with `synchronous=FULL`, a busy timeout rather than "database is
//! locked" errors, foreign keys on, schema migrations by `PRAGMA user_version`, and decisions that
//! read then write inside `BEGIN IMMEDIATE`. No lock is ever held across a network call: every
//! method here is one short transaction. The file refuses to open on a network file system, where
//! SQLite's locks do not hold.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::cluster::provider::InstanceState;
use crate::cluster::{ClusterName, Owner, RequestId, Role};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database {0} is on a network file system, where SQLite's locking is unsafe; set STRATUS_HOME to a local directory"
    )]
    NetworkFs(PathBuf),
    #[error("cannot create the state directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state database {path} has schema version {found}, newer than this stratus understands ({known}); upgrade stratus"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database error")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt record in the state database: {0}")]
    Corrupt(String),
}

/// Milliseconds since the Unix epoch. Hours are computed from these, so short-lived clusters
/// still show their (small) usage.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// Where a cluster is in its life. A launch moves reserved -> requested -> running ->
/// configured, or to failed (then everything it launched is terminated); terminate moves any
/// state to terminating, then terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Reserved => "reserved",
            ClusterState::Requested => "requested",
            ClusterState::Running => "running",
            ClusterState::Configured => "configured",
            ClusterState::Failed => "failed",
            ClusterState::Terminating => "terminating",
            ClusterState::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => ClusterState::Reserved,
            "requested" => ClusterState::Requested,
            "running" => ClusterState::Running,
            "configured" => ClusterState::Configured,
            "failed" => ClusterState::Failed,
            "terminating" => ClusterState::Terminating,
            "terminated" => ClusterState::Terminated,
            _ => return None,
        })
    }

    /// A cluster that holds its name: anything but failed and terminated.
    pub fn is_live(self) -> bool {
        !matches!(self, ClusterState::Failed | ClusterState::Terminated)
    }
}

/// What was asked for when the cluster was launched, kept so later commands (launch-slaves,
/// update-slaves-file, login) act on the same settings even if the profile file changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub profile: crate::cluster::profile::Profile,
    pub env: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub id: i64,
    pub name: ClusterName,
    pub owner: Owner,
    pub profile: String,
    pub provider: String,
    pub state: ClusterState,
    pub request_id: RequestId,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub terminated_at: Option<Millis>,
    pub failure: Option<String>,
    pub record: ClusterRecord,
}

pub struct NewCluster<'a> {
    pub name: &'a ClusterName,
    pub owner: &'a Owner,
    pub provider: &'a str,
    pub request_id: &'a RequestId,
    pub record: &'a ClusterRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub instance_id: String,
    pub cluster_id: i64,
    pub role: Role,
    pub index: u32,
    pub request_id: String,
    pub state: InstanceState,
    pub address: Option<String>,
    /// The address other nodes reach it at (see `Instance::private_address`).
    pub private_address: Option<String>,
    pub ssh_port: u16,
    pub instance_type: String,
    pub image: String,
    pub spot: bool,
    /// The pinned host key, as an OpenSSH public key line.
    pub host_key: Option<String>,
    pub launched_at: Millis,
    pub ended_at: Option<Millis>,
}

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

/// One usage interval, as the cost computation needs it.
#[derive(Debug, Clone)]
pub struct Interval {
    pub cluster_id: i64,
    pub instance_type: String,
    pub spot: bool,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
}

const MIGRATIONS: &[&str] = &[
    // 1: clusters, nodes, usage intervals.
    r#"
    CREATE TABLE clusters (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL,
        owner         TEXT NOT NULL,
        profile       TEXT NOT NULL,
        provider      TEXT NOT NULL,
        state         TEXT NOT NULL,
        request_id    TEXT NOT NULL UNIQUE,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        terminated_at INTEGER,
        failure       TEXT,
        record        TEXT NOT NULL
    );
    -- A name is held by at most one live cluster per owner.
    CREATE UNIQUE INDEX clusters_live_name ON clusters(owner, name)
        WHERE state NOT IN ('failed', 'terminated');
    CREATE TABLE nodes (
        instance_id   TEXT PRIMARY KEY,
        cluster_id    INTEGER NOT NULL REFERENCES clusters(id),
        role          TEXT NOT NULL CHECK (role IN ('master', 'worker')),
        idx           INTEGER NOT NULL,
        request_id    TEXT NOT NULL,
        state         TEXT NOT NULL,
        address       TEXT,
        ssh_port      INTEGER NOT NULL,
        instance_type TEXT NOT NULL,
        image         TEXT NOT NULL,
        spot          INTEGER NOT NULL DEFAULT 0,
        host_key      TEXT,
        launched_at   INTEGER NOT NULL,
        ended_at      INTEGER
    );
    CREATE INDEX nodes_cluster ON nodes(cluster_id);
    CREATE TABLE usage_intervals (
        id            INTEGER PRIMARY KEY,
        instance_id   TEXT NOT NULL REFERENCES nodes(instance_id),
        cluster_id    INTEGER NOT NULL REFERENCES clusters(id),
        owner         TEXT NOT NULL,
        profile       TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        spot          INTEGER NOT NULL DEFAULT 0,
        started_at    INTEGER NOT NULL,
        last_seen_at  INTEGER NOT NULL,
        ended_at      INTEGER,
        -- 'observed': seen ended; 'estimated': vanished, closed at its last sighting.
        end_source    TEXT CHECK (end_source IN ('observed', 'estimated'))
    );
    CREATE INDEX usage_open ON usage_intervals(instance_id) WHERE ended_at IS NULL;
    CREATE INDEX usage_cluster ON usage_intervals(cluster_id);
    "#,
    // 2: the address nodes reach each other at, beside the one stratus connects to.
    r#"
    ALTER TABLE nodes ADD COLUMN private_address TEXT;
    "#,
];

/// The state database. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open_in(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir)?;
        Self::open(&dir.join("stratus.db"))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent()
            && crate::sys::on_network_fs(parent).unwrap_or(false)
        {
            return Err(StoreError::NetworkFs(path.to_path_buf()));
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        set_wal(&conn).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let store = Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back),
        // so a poisoned mutex is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a new cluster in state `reserved`, unless the owner already has a live cluster of
    /// that name (then `None`). The check and the insert are one transaction.
    pub fn create_cluster(&self, new: &NewCluster<'_>) -> Result<Option<ClusterRow>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM clusters WHERE owner = ?1 AND name = ?2
                            AND state NOT IN ('failed', 'terminated'))",
            params![new.owner.as_str(), new.name.as_str()],
            |r| r.get(0),
        )?;
        if taken {
            return Ok(None);
        }
        let now = now_millis();
        let record =
            serde_json::to_string(new.record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO clusters (name, owner, profile, provider, state, request_id, created_at,
                                   updated_at, record)
             VALUES (?1, ?2, ?3, ?4, 'reserved', ?5, ?6, ?6, ?7)",
            params![
                new.name.as_str(),
                new.owner.as_str(),
                new.record.profile.name,
                new.provider,
                new.request_id.as_str(),
                now,
                record
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        drop(conn);
        self.cluster_by_id(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("cluster {id} vanished")))
            .map(Some)
    }

    pub fn set_cluster_state(
        &self,
        id: i64,
        state: ClusterState,
        failure: Option<&str>,
    ) -> Result<(), StoreError> {
        update_state(&self.conn(), id, state, failure)
    }

    /// Moves a cluster to `to` only if it is in one of `from` (compare and set): a launch must
    /// not overwrite a terminate that another process started meanwhile. Returns whether it
    /// moved.
    pub fn transition(
        &self,
        id: i64,
        from: &[ClusterState],
        to: ClusterState,
        failure: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM clusters WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let allowed = current
            .as_deref()
            .and_then(ClusterState::parse)
            .is_some_and(|c| from.contains(&c));
        if !allowed {
            return Ok(false);
        }
        update_state(&tx, id, to, failure)?;
        tx.commit()?;
        Ok(true)
    }

    pub fn cluster_by_id(&self, id: i64) -> Result<Option<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{CLUSTER_SELECT} WHERE id = ?1"))?;
        stmt.query_row(params![id], cluster_from_row)
            .optional()?
            .transpose()
    }

    /// The owner's live cluster of this name, else the most recent one.
    pub fn find_cluster(
        &self,
        owner: &Owner,
        name: &ClusterName,
    ) -> Result<Option<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{CLUSTER_SELECT} WHERE owner = ?1 AND name = ?2
             ORDER BY state IN ('failed', 'terminated'), id DESC LIMIT 1"
        ))?;
        stmt.query_row(params![owner.as_str(), name.as_str()], cluster_from_row)
            .optional()?
            .transpose()
    }

    /// Clusters of `owner` (all owners if `None`), oldest first.
    pub fn list_clusters(&self, owner: Option<&Owner>) -> Result<Vec<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{CLUSTER_SELECT} WHERE (?1 IS NULL OR owner = ?1) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![owner.map(Owner::as_str)], cluster_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Records a node the provider launched and opens its usage interval, in one transaction.
    pub fn insert_node(&self, cluster: &ClusterRow, node: &NodeRow) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO nodes (instance_id, cluster_id, role, idx, request_id, state, address,
                                ssh_port, instance_type, image, spot, host_key, launched_at,
                                private_address)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                node.instance_id,
                node.cluster_id,
                node.role.as_str(),
                node.index,
                node.request_id,
                node.state.as_str(),
                node.address,
                node.ssh_port,
                node.instance_type,
                node.image,
                node.spot,
                node.host_key,
                node.launched_at,
                node.private_address
            ],
        )?;
        tx.execute(
            "INSERT INTO usage_intervals (instance_id, cluster_id, owner, profile, instance_type,
                                          spot, started_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                node.instance_id,
                cluster.id,
                cluster.owner.as_str(),
                cluster.profile,
                node.instance_type,
                node.spot,
                node.launched_at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn nodes_of(&self, cluster_id: i64) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT instance_id, cluster_id, role, idx, request_id, state, address, ssh_port,
                    instance_type, image, spot, host_key, launched_at, ended_at, private_address
             FROM nodes WHERE cluster_id = ?1 ORDER BY role = 'worker', idx, launched_at",
        )?;
        let rows = stmt.query_map(params![cluster_id], node_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Whether any cluster's record holds this instance.
    pub fn knows_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE instance_id = ?1)",
            params![instance_id],
            |r| r.get(0),
        )?)
    }

    /// Pins a host key learned on first contact.
    pub fn set_host_key(&self, instance_id: &str, key: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE nodes SET host_key = ?2 WHERE instance_id = ?1 AND host_key IS NULL",
            params![instance_id, key],
        )?;
        Ok(())
    }

    /// Records what the provider reports of a node at `now`: its state and address, and for
    /// usage, either one more sighting (running) or the end of its interval (gone).
    pub fn observe_node(
        &self,
        instance_id: &str,
        state: InstanceState,
        address: Option<&str>,
        private_address: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ended = state.is_gone();
        tx.execute(
            "UPDATE nodes SET state = ?2, address = COALESCE(?3, address),
                    private_address = COALESCE(?6, private_address),
                    ended_at = CASE WHEN ?4 THEN COALESCE(ended_at, ?5) ELSE ended_at END
             WHERE instance_id = ?1",
            params![
                instance_id,
                state.as_str(),
                address,
                ended,
                now,
                private_address
            ],
        )?;
        if ended || state == InstanceState::Stopped {
            // Gone, or stopped (a stopped instance's hours are not billed): the interval ends.
            tx.execute(
                "UPDATE usage_intervals SET ended_at = ?2, last_seen_at = MAX(last_seen_at, ?2),
                        end_source = 'observed'
                 WHERE instance_id = ?1 AND ended_at IS NULL",
                params![instance_id, now],
            )?;
        } else if state.is_billed() {
            let seen = tx.execute(
                "UPDATE usage_intervals SET last_seen_at = MAX(last_seen_at, ?2)
                 WHERE instance_id = ?1 AND ended_at IS NULL",
                params![instance_id, now],
            )?;
            if seen == 0 {
                // Running again after a stop: a new interval from this sighting.
                tx.execute(
                    "INSERT INTO usage_intervals (instance_id, cluster_id, owner, profile,
                                                  instance_type, spot, started_at, last_seen_at)
                     SELECT n.instance_id, n.cluster_id, c.owner, c.profile, n.instance_type,
                            n.spot, ?2, ?2
                     FROM nodes n JOIN clusters c ON c.id = n.cluster_id
                     WHERE n.instance_id = ?1",
                    params![instance_id, now],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Closes the interval of a node the provider no longer reports at all, at its last sighting,
    /// marked as an estimate: it is never billed forever.
    pub fn node_vanished(&self, instance_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE usage_intervals SET ended_at = last_seen_at, end_source = 'estimated'
             WHERE instance_id = ?1 AND ended_at IS NULL",
            params![instance_id],
        )?;
        tx.execute(
            "UPDATE nodes SET state = 'terminated',
                    ended_at = COALESCE(ended_at,
                        (SELECT MAX(ended_at) FROM usage_intervals WHERE instance_id = ?1))
             WHERE instance_id = ?1",
            params![instance_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The usage intervals of the given clusters.
    pub fn intervals(&self, cluster_ids: &[i64]) -> Result<Vec<Interval>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cluster_id, instance_type, spot, started_at, ended_at
             FROM usage_intervals WHERE cluster_id = ?1 ORDER BY id",
        )?;
        let mut out = Vec::new();
        for id in cluster_ids {
            let rows = stmt.query_map(params![id], |r| {
                Ok(Interval {
                    cluster_id: r.get(0)?,
                    instance_type: r.get(1)?,
                    spot: r.get(2)?,
                    started_at: r.get(3)?,
                    ended_at: r.get(4)?,
                })
            })?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }
}

fn update_state(
    conn: &Connection,
    id: i64,
    state: ClusterState,
    failure: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_millis();
    let terminated_at = (state == ClusterState::Terminated).then_some(now);
    conn.execute(
        "UPDATE clusters SET state = ?2, updated_at = ?3,
                failure = COALESCE(?4, failure),
                terminated_at = COALESCE(?5, terminated_at)
         WHERE id = ?1",
        params![id, state.as_str(), now, failure, terminated_at],
    )?;
    Ok(())
}

/// Puts the database in WAL mode. Switching needs the file to itself, and SQLite answers BUSY at
/// once (without the busy handler) when another process has it open, as when two commands
/// create a fresh state directory together: so check first, and retry the switch for a while.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let attempt = (|| {
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            if mode.eq_ignore_ascii_case("wal") {
                return Ok(());
            }
            conn.pragma_update(None, "journal_mode", "WAL")
        })();
        match attempt {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

const CLUSTER_SELECT: &str = "SELECT id, name, owner, profile, provider, state, request_id,
    created_at, updated_at, terminated_at, failure, record FROM clusters";

fn cluster_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ClusterRow, StoreError>> {
    let name: String = r.get(1)?;
    let owner: String = r.get(2)?;
    let state: String = r.get(5)?;
    let record: String = r.get(11)?;
    let build = || -> Result<ClusterRow, StoreError> {
        Ok(ClusterRow {
            id: r.get(0)?,
            name: ClusterName::parse(&name)
                .map_err(|e| StoreError::Corrupt(format!("cluster name: {e}")))?,
            owner: Owner::parse(&owner)
                .map_err(|e| StoreError::Corrupt(format!("cluster owner: {e}")))?,
            profile: r.get(3)?,
            provider: r.get(4)?,
            state: ClusterState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("cluster state {state:?}")))?,
            request_id: RequestId::from_stored(r.get(6)?),
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
            terminated_at: r.get(9)?,
            failure: r.get(10)?,
            record: serde_json::from_str(&record)
                .map_err(|e| StoreError::Corrupt(format!("cluster record: {e}")))?,
        })
    };
    Ok(build())
}

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<NodeRow, StoreError>> {
    let role: String = r.get(2)?;
    let state: String = r.get(5)?;
    let build = || -> Result<NodeRow, StoreError> {
        Ok(NodeRow {
            instance_id: r.get(0)?,
            cluster_id: r.get(1)?,
            role: Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("node role {role:?}")))?,
            index: r.get(3)?,
            request_id: r.get(4)?,
            state: InstanceState::parse(&state),
            address: r.get(6)?,
            ssh_port: r.get(7)?,
            instance_type: r.get(8)?,
            image: r.get(9)?,
            spot: r.get(10)?,
            host_key: r.get(11)?,
            launched_at: r.get(12)?,
            ended_at: r.get(13)?,
            private_address: r.get(14)?,
        })
    };
    Ok(build())
}

/// Creates a directory (and its parents) readable only by its owner.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::profile::Profile;

    fn record() -> ClusterRecord {
        ClusterRecord {
            profile: Profile::for_tests("p"),
            env: Default::default(),
        }
    }

    fn new<'a>(
        name: &'a ClusterName,
        owner: &'a Owner,
        req: &'a RequestId,
        rec: &'a ClusterRecord,
    ) -> NewCluster<'a> {
        NewCluster {
            name,
            owner,
            provider: "local",
            request_id: req,
            record: rec,
        }
    }

    #[test]
    fn a_live_name_is_taken_until_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let owner = Owner::parse("alice").unwrap();
        let name = ClusterName::parse("demo").unwrap();
        let rec = record();
        let r1 = RequestId::new();
        let c = store
            .create_cluster(&new(&name, &owner, &r1, &rec))
            .unwrap()
            .unwrap();
        assert_eq!(c.state, ClusterState::Reserved);
        let r2 = RequestId::new();
        assert!(
            store
                .create_cluster(&new(&name, &owner, &r2, &rec))
                .unwrap()
                .is_none()
        );
        store
            .set_cluster_state(c.id, ClusterState::Terminated, None)
            .unwrap();
        let c2 = store
            .create_cluster(&new(&name, &owner, &r2, &rec))
            .unwrap()
            .unwrap();
        assert_ne!(c.id, c2.id);
        // The live one wins a lookup by name.
        assert_eq!(
            store.find_cluster(&owner, &name).unwrap().unwrap().id,
            c2.id
        );
    }

    #[test]
    fn many_processes_may_create_the_database_at_once() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let d = dir.path().to_path_buf();
                    std::thread::spawn(move || Store::open_in(&d).map(drop))
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn intervals_end_on_stop_and_gone_and_reopen_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let owner = Owner::parse("alice").unwrap();
        let name = ClusterName::parse("demo").unwrap();
        let rec = record();
        let req = RequestId::new();
        let c = store
            .create_cluster(&new(&name, &owner, &req, &rec))
            .unwrap()
            .unwrap();
        let node = NodeRow {
            instance_id: "i-1".into(),
            cluster_id: c.id,
            role: Role::Master,
            index: 0,
            request_id: req.to_string(),
            state: InstanceState::Running,
            address: None,
            private_address: None,
            ssh_port: 22,
            instance_type: "m5.large".into(),
            image: "ami".into(),
            spot: false,
            host_key: None,
            launched_at: 1_000,
            ended_at: None,
        };
        store.insert_node(&c, &node).unwrap();
        let intervals = |s: &Store| s.intervals(&[c.id]).unwrap();
        store
            .observe_node("i-1", InstanceState::Running, None, None, 2_000)
            .unwrap();
        store
            .observe_node("i-1", InstanceState::Stopped, None, None, 3_000)
            .unwrap();
        let iv = intervals(&store);
        assert_eq!(iv.len(), 1);
        assert_eq!((iv[0].started_at, iv[0].ended_at), (1_000, Some(3_000)));
        // Stopped hours are not billed; running again opens a new interval.
        store
            .observe_node("i-1", InstanceState::Stopped, None, None, 4_000)
            .unwrap();
        store
            .observe_node("i-1", InstanceState::Running, None, None, 5_000)
            .unwrap();
        store
            .observe_node("i-1", InstanceState::Terminated, None, None, 6_000)
            .unwrap();
        let iv = intervals(&store);
        assert_eq!(iv.len(), 2);
        assert_eq!((iv[1].started_at, iv[1].ended_at), (5_000, Some(6_000)));
        // Gone stays gone: a late sighting does not reopen anything.
        store
            .observe_node("i-1", InstanceState::Terminated, None, None, 7_000)
            .unwrap();
        assert_eq!(intervals(&store).len(), 2);
    }

    #[test]
    fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_in(dir.path()).unwrap());
        let store = Store::open_in(dir.path()).unwrap();
        let v: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }
}
