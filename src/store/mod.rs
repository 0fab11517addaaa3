//! The state database: one SQLite file holding clusters, their nodes, the launch batches in
//! flight, the usage intervals that hours and cost are computed from, the quota ledger and the
//! audit trail.
//!
//! It is a money ledger, so: WAL with `synchronous=FULL`, a busy timeout rather than "database is
//! locked" errors, foreign keys on, schema migrations by `PRAGMA user_version`, and decisions that
//! read then write inside `BEGIN IMMEDIATE`. No lock is ever held across a network call: every
//! method here is one short transaction. The file refuses to open on a network file system, where
//! SQLite's locks do not hold.
//!
//! Each database has an id (`StoreId`, made with it) that tags everything it launches, so two
//! state directories never mistake each other's instances for their own.

pub mod identities;
mod nodes;
pub mod quota;

pub use nodes::{BatchRow, Interval, NodeRow, Observation, Recorded, insert_orphan};
pub use quota::AuditRecord;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::core::model::{ClusterName, Naming, Owner, ProviderKind, RequestId, StoreId};
pub use crate::core::model::{ClusterState, Millis, now_millis};

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
    #[error(transparent)]
    Dir(#[from] crate::core::files::DirError),
    #[error("{path} is a symbolic link; the state directory and database must be real files")]
    Symlink { path: PathBuf },
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

/// What was asked for when the cluster was launched, kept so later commands (launch-slaves,
/// update-slaves-file, login) act on the same settings even if the profile file changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub profile: crate::config::profile::Profile,
    pub env: std::collections::BTreeMap<String, String>,
    /// The owner's own key pairs (`launch-cluster --key`) authorised on every node besides the
    /// cluster key: their names and OpenSSH public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_keys: Vec<(String, String)>,
    /// What the guard on its nodes is set up with (`cluster::clock`); none for a cluster
    /// recorded before the guard was, and for an image build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardRecord>,
}

/// The guard's settings that are fixed at launch; its deadline is the cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// A node powers off this long after the deadline: the reaper's grace, so the reaper (the
    /// normal path, with its warning) acts first.
    pub grace_ms: Millis,
    /// What the cluster costs as launched, in micro-dollars per 730 hours
    /// (`prices::cluster_rate`), if its prices are known.
    pub rate: Option<crate::core::money::Micros>,
}

#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub id: i64,
    pub name: ClusterName,
    pub owner: Owner,
    pub profile: String,
    pub provider: ProviderKind,
    pub state: ClusterState,
    pub request_id: RequestId,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub terminated_at: Option<Millis>,
    pub failure: Option<String>,
    pub record: ClusterRecord,
    /// Taken off the list by `delete-cluster` (its usage still counts).
    pub hidden: bool,
    /// The reaper's warning: it terminates the cluster once this time has passed.
    pub reap_after: Option<Millis>,
    pub reap_reason: Option<String>,
    /// How its EC2 resources are named.
    pub naming: Naming,
    /// When its lifetime ends (moved by `extend`); `None` for no lifetime, or for a cluster
    /// recorded before deadlines were (`Store::deadline_of` falls back to its lifetime).
    pub deadline: Option<Millis>,
    /// How many times `extend` moved the deadline.
    pub extensions: u32,
    /// Who ended it (`alice`, `reaper`) and why, when someone did.
    pub ended_by: Option<String>,
    pub ended_reason: Option<String>,
    /// Since when the reaper has seen it idle, and what it last saw (`idle`, `busy: …`).
    pub idle_since: Option<Millis>,
    pub activity: Option<String>,
}

/// What `create_cluster` did. Returned once per launch, so the size of the row it carries costs
/// nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Created<E> {
    Row(ClusterRow),
    /// The owner already has a live cluster of that name.
    NameInUse,
    /// `admit` refused; nothing was written.
    Refused(E),
}

pub struct NewCluster<'a> {
    pub name: &'a ClusterName,
    pub owner: &'a Owner,
    pub provider: ProviderKind,
    pub request_id: &'a RequestId,
    pub record: &'a ClusterRecord,
    /// How long it may live from now: its deadline is recorded as now plus this.
    pub lifetime: Option<Millis>,
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
    // 3: the store's id; launch batches written before each launch call, so no instance a call
    // created escapes the record; usage of orphans; the quota ledger and the audit trail.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE launch_batches (
        token       TEXT PRIMARY KEY,
        cluster_id  INTEGER NOT NULL REFERENCES clusters(id),
        request_id  TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('master', 'worker')),
        first_index INTEGER NOT NULL,
        count       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        -- Set once every instance the call created is recorded (or the call created none).
        settled_at  INTEGER
    );
    CREATE INDEX batches_pending ON launch_batches(cluster_id) WHERE settled_at IS NULL;
    CREATE INDEX nodes_request ON nodes(request_id);
    -- delete-cluster of an ended cluster takes it off the list; its usage stays.
    ALTER TABLE clusters ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_intervals ADD COLUMN orphan INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE reservations (
        id          INTEGER PRIMARY KEY,
        cluster_id  INTEGER NOT NULL REFERENCES clusters(id),
        owner       TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        units       INTEGER NOT NULL,
        nodes       INTEGER NOT NULL,
        max_cost_micros INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL,
        released_at INTEGER
    );
    CREATE INDEX reservations_open ON reservations(owner) WHERE released_at IS NULL;
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY,
        at        INTEGER NOT NULL,
        user      TEXT NOT NULL,
        action    TEXT NOT NULL,
        cluster   TEXT,
        decision  TEXT NOT NULL,
        reason    TEXT,
        instances TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX audit_at ON audit(at);
    -- Append-only: a decision once recorded is never changed or removed.
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    "#,
    // 4: the reaper's warning on a cluster; usage by owner and time, for reports and budgets.
    r#"
    ALTER TABLE clusters ADD COLUMN reap_after INTEGER;
    ALTER TABLE clusters ADD COLUMN reap_reason TEXT;
    CREATE INDEX usage_owner ON usage_intervals(owner, started_at);
    CREATE INDEX nodes_open ON nodes(cluster_id) WHERE ended_at IS NULL;
    "#,
    // 5: what a node costs besides its instance hours: its EBS root volume (GiB) and whether it
    // holds a public IPv4 address; recorded with each interval, as the instance type is.
    r#"
    ALTER TABLE nodes ADD COLUMN volume_gb INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN public_ipv4 INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_intervals ADD COLUMN volume_gb INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_intervals ADD COLUMN public_ipv4 INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: the class roster (`admin identities sync`): who may have an IAM identity.
    r#"
    CREATE TABLE roster (
        login     TEXT PRIMARY KEY,
        added_at  INTEGER NOT NULL
    );
    "#,
    // 7: how each cluster's security group and key pair are named. Every cluster recorded
    // before was named `<owner>-<cluster>` (1), where two owners' names could collide; those
    // names are kept for them, and new clusters get `<owner>@<cluster>` (2).
    r#"
    ALTER TABLE clusters ADD COLUMN naming INTEGER NOT NULL DEFAULT 1;
    "#,
    // 8: the students' own EC2 key pairs (`keys create`), by exact owner: the private half is
    // only ever in its owner's file, the public half here.
    r#"
    CREATE TABLE key_pairs (
        id          INTEGER PRIMARY KEY,
        owner       TEXT NOT NULL,
        name        TEXT NOT NULL,
        ec2_name    TEXT NOT NULL,
        key_pair_id TEXT,
        fingerprint TEXT,
        public_key  TEXT,
        created_at  INTEGER NOT NULL,
        deleted_at  INTEGER
    );
    CREATE UNIQUE INDEX key_pairs_live ON key_pairs(owner, name) WHERE deleted_at IS NULL;
    "#,
    // 9: the class day. Each cluster's deadline (when its lifetime ends, moved by `extend`;
    // none when no lifetime applies) and how many times it was extended; and who ended a cluster
    // and why (its owner, an instructor, the reaper), for its owner's `list`. Clusters recorded
    // before have no deadline stored: theirs is their creation plus their lifetime.
    r#"
    ALTER TABLE clusters ADD COLUMN deadline INTEGER;
    ALTER TABLE clusters ADD COLUMN extensions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE clusters ADD COLUMN ended_by TEXT;
    ALTER TABLE clusters ADD COLUMN ended_reason TEXT;
    "#,
    // 10: the reaper's idle rule: since when the cluster has been seen idle (every signal
    // agreeing), and what it last saw (`idle`, `busy: …`), for `admin class`.
    r#"
    ALTER TABLE clusters ADD COLUMN idle_since INTEGER;
    ALTER TABLE clusters ADD COLUMN activity TEXT;
    "#,
];

/// The state database. Cheap to clone; all clones share one connection.
/// The database's file name in its state directory.
pub const DB_FILE: &str = "stratus.db";

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    id: StoreId,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open_in(dir: &Path) -> Result<Self, StoreError> {
        crate::core::files::create_private_dir(dir)?;
        Self::open(&dir.join(DB_FILE))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent()
            && crate::sys::on_network_fs(parent).unwrap_or(false)
        {
            return Err(StoreError::NetworkFs(path.to_path_buf()));
        }
        // A link planted where the database goes would make stratus write wherever it points.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StoreError::Symlink {
                path: path.to_path_buf(),
            });
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        set_wal(&conn).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            id: StoreId::from_stored(String::new()),
        };
        store.id = store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id every resource this database launches is tagged with.
    pub fn id(&self) -> &StoreId {
        &self.id
    }

    /// The id of the database in `dir`, read without writing anything beside it: read-only and
    /// immutable, so no lock, journal or WAL file is made (root's would lock the service account
    /// out of its own database). The id never changes.
    pub fn read_id(dir: &Path) -> Result<StoreId, StoreError> {
        let db = dir.join(DB_FILE);
        let mut uri = String::from("file:");
        for c in db.display().to_string().chars() {
            match c {
                '%' => uri.push_str("%25"),
                '?' => uri.push_str("%3f"),
                '#' => uri.push_str("%23"),
                c => uri.push(c),
            }
        }
        uri.push_str("?immutable=1");
        let open_err = |source| StoreError::Open {
            path: db.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(open_err)?;
        let id: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .map_err(open_err)?;
        Ok(StoreId::from_stored(id))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back),
        // so a poisoned mutex is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f` succeeds (`immediate`,
    /// with the store's own error).
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.immediate(f)
    }

    /// Applies the migrations this database lacks and returns its id (made by migration 3).
    fn migrate(&self) -> Result<StoreId, StoreError> {
        let mut conn = self.conn();
        // Most opens find the schema current: read it without taking the write lock.
        let known = MIGRATIONS.len() as i64;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != known {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version > known {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found: version,
                    known,
                });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(sql)?;
                if i == 2 {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('store_id', ?1)",
                        params![StoreId::generate().as_str()],
                    )?;
                }
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            }
            tx.commit()?;
        }
        let id: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::Corrupt("the database has no store id".into()))?;
        Ok(StoreId::from_stored(id))
    }

    /// Records a new cluster in state `reserved`. `admit` runs inside the same `BEGIN IMMEDIATE`
    /// transaction, with the new row in place but uncommitted: the quota check and the
    /// reservation it writes cannot race another launch, and a refusal rolls everything back.
    pub fn create_cluster<E>(
        &self,
        new: &NewCluster<'_>,
        admit: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<Result<(), E>, StoreError>,
    ) -> Result<Created<E>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM clusters WHERE owner = ?1 AND name = ?2
                            AND state NOT IN ('failed', 'terminated'))",
            params![new.owner.as_str(), new.name.as_str()],
            |r| r.get(0),
        )?;
        if taken {
            return Ok(Created::NameInUse);
        }
        let now = now_millis();
        let record =
            serde_json::to_string(new.record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO clusters (name, owner, profile, provider, state, request_id,
                                   created_at, updated_at, record, naming, deadline)
             VALUES (?1, ?2, ?3, ?4, 'reserved', ?5, ?6, ?6, ?7, ?8, ?9)",
            params![
                new.name.as_str(),
                new.owner.as_str(),
                new.record.profile.name,
                new.provider.as_str(),
                new.request_id.as_str(),
                now,
                record,
                Naming::for_new_clusters().as_i64(),
                new.lifetime.map(|l| now.saturating_add(l))
            ],
        )?;
        let id = tx.last_insert_rowid();
        if let Err(refusal) = admit(&tx, id)? {
            // Dropping the transaction rolls the row back.
            return Ok(Created::Refused(refusal));
        }
        tx.commit()?;
        drop(conn);
        self.cluster_by_id(id)?
            .map(Created::Row)
            .ok_or_else(|| StoreError::Corrupt(format!("cluster {id} vanished")))
    }

    /// A row, already terminated, for instances found under the tags of a cluster this database
    /// has no row for (launched behind stratus's back with this store's tags): their usage is
    /// attached to it. The profile is the one their tags name, if it still resolves; otherwise a
    /// placeholder record.
    pub fn adopt_cluster(
        &self,
        owner: &Owner,
        name: &ClusterName,
        provider: ProviderKind,
        (profile, request): (String, RequestId),
    ) -> Result<ClusterRow, StoreError> {
        let mut p = crate::config::profile::Profile::placeholder(&profile);
        p.description = "found by reconcile: instances no record knew".into();
        let record = ClusterRecord {
            guard: None,
            profile: p,
            env: Default::default(),
            extra_keys: Vec::new(),
        };
        let text =
            serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_millis();
        let id = self.write(|tx| {
            tx.execute(
                "INSERT INTO clusters (name, owner, profile, provider, state, request_id,
                                       created_at, updated_at, terminated_at, failure, record,
                                       naming)
                 VALUES (?1, ?2, ?3, ?4, 'terminated', ?5, ?6, ?6, ?6,
                         'found by reconcile: instances no record knew', ?7, ?8)",
                params![
                    name.as_str(),
                    owner.as_str(),
                    profile,
                    provider.as_str(),
                    // Unique: a second adoption of the same request gets its own row id.
                    format!("{}-adopted-{now}", request.as_str()),
                    now,
                    text,
                    Naming::for_new_clusters().as_i64()
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        self.cluster_by_id(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("cluster {id} vanished")))
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
        self.write(|tx| {
            let current = cluster_state(tx, id)?;
            if !current.is_some_and(|c| from.contains(&c)) {
                return Ok(false);
            }
            update_state(tx, id, to, failure)?;
            Ok(true)
        })
    }

    pub fn cluster_by_id(&self, id: i64) -> Result<Option<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("{CLUSTER_SELECT} WHERE id = ?1"))?;
        stmt.query_row(params![id], cluster_from_row)
            .optional()?
            .transpose()
    }

    pub fn cluster_state(&self, id: i64) -> Result<Option<ClusterState>, StoreError> {
        cluster_state(&self.conn(), id)
    }

    /// The owner's live cluster of this name, else the most recent one.
    pub fn find_cluster(
        &self,
        owner: &Owner,
        name: &ClusterName,
    ) -> Result<Option<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{CLUSTER_SELECT} WHERE owner = ?1 AND name = ?2
             ORDER BY hidden, state IN ('failed', 'terminated'), id DESC LIMIT 1"
        ))?;
        stmt.query_row(params![owner.as_str(), name.as_str()], cluster_from_row)
            .optional()?
            .transpose()
    }

    /// Every cluster's name, by id (a report's rows name theirs; nothing else is read).
    pub fn cluster_names(&self) -> Result<std::collections::BTreeMap<i64, String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, name FROM clusters")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Clusters of `owner` (all owners if `None`), oldest first.
    pub fn list_clusters(&self, owner: Option<&Owner>) -> Result<Vec<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{CLUSTER_SELECT} WHERE (?1 IS NULL OR owner = ?1) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![owner.map(Owner::as_str)], cluster_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Sets (or clears, with `None`) the reaper's warning on a cluster.
    pub fn set_reap(
        &self,
        id: i64,
        after: Option<Millis>,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE clusters SET reap_after = ?2, reap_reason = ?3 WHERE id = ?1",
            params![id, after, reason],
        )?;
        Ok(())
    }

    /// Records what the idle rule saw: since when the cluster is idle (`None`: it is not).
    pub fn set_activity(
        &self,
        id: i64,
        idle_since: Option<Millis>,
        activity: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE clusters SET idle_since = ?2, activity = ?3 WHERE id = ?1",
            params![id, idle_since, activity],
        )?;
        Ok(())
    }

    /// Records who ended a cluster and why (kept the first time: a reaper's terminate that
    /// its owner's own terminate finishes stays the reaper's).
    pub fn set_ended_by(&self, id: i64, by: &str, reason: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE clusters SET ended_by = ?2, ended_reason = ?3
             WHERE id = ?1 AND ended_by IS NULL",
            params![id, by, reason],
        )?;
        Ok(())
    }

    /// A value kept in the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Every node without an end, of every cluster.
    pub fn open_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        nodes::open_nodes(&self.conn())
    }

    /// Removes an ended cluster from the list (`delete-cluster`); its nodes and usage stay for
    /// accounting, attached to the row, which is only no longer shown.
    pub fn hide_cluster(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE clusters SET hidden = 1 WHERE id = ?1", params![id])?;
        Ok(())
    }
}

fn cluster_state(conn: &Connection, id: i64) -> Result<Option<ClusterState>, StoreError> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM clusters WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()?;
    state
        .map(|s| {
            ClusterState::parse(&s)
                .ok_or_else(|| StoreError::Corrupt(format!("cluster state {s:?}")))
        })
        .transpose()
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
    let ms = std::time::Duration::from_millis;
    let mut backoff = crate::core::backoff::Backoff::new(ms(10), ms(10))
        .until(std::time::Instant::now() + std::time::Duration::from_secs(10));
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
                if e.code == rusqlite::ErrorCode::DatabaseBusy && backoff.wait_blocking() => {}
            other => return other,
        }
    }
}

const CLUSTER_SELECT: &str = "SELECT id, name, owner, profile, provider, state, request_id,
    created_at, updated_at, terminated_at, failure, record, hidden, reap_after, reap_reason,
    naming, deadline, extensions, ended_by, ended_reason, idle_since, activity FROM clusters";

fn cluster_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ClusterRow, StoreError>> {
    let name: String = r.get(1)?;
    let owner: String = r.get(2)?;
    let provider: String = r.get(4)?;
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
            provider: ProviderKind::parse(&provider)
                .ok_or_else(|| StoreError::Corrupt(format!("provider {provider:?}")))?,
            state: ClusterState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("cluster state {state:?}")))?,
            request_id: RequestId::from_stored(r.get(6)?),
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
            terminated_at: r.get(9)?,
            failure: r.get(10)?,
            record: serde_json::from_str(&record)
                .map_err(|e| StoreError::Corrupt(format!("cluster record: {e}")))?,
            hidden: r.get(12)?,
            reap_after: r.get(13)?,
            reap_reason: r.get(14)?,
            naming: Naming::from_i64(r.get(15)?)
                .ok_or_else(|| StoreError::Corrupt("cluster naming".into()))?,
            deadline: r.get(16)?,
            extensions: r.get(17)?,
            ended_by: r.get(18)?,
            ended_reason: r.get(19)?,
            idle_since: r.get(20)?,
            activity: r.get(21)?,
        })
    };
    Ok(build())
}

impl From<StoreError> for crate::core::error::Error {
    fn from(e: StoreError) -> Self {
        crate::core::error::Error::wrap(crate::core::error::Kind::Failed, e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::profile::Profile;

    pub(crate) fn record() -> ClusterRecord {
        ClusterRecord {
            guard: None,
            profile: Profile::for_tests("p"),
            env: Default::default(),
            extra_keys: Vec::new(),
        }
    }

    pub(crate) fn create(
        store: &Store,
        name: &ClusterName,
        owner: &Owner,
        req: &RequestId,
        rec: &ClusterRecord,
    ) -> Option<ClusterRow> {
        let created = store
            .create_cluster::<()>(
                &NewCluster {
                    name,
                    owner,
                    provider: ProviderKind::Local,
                    request_id: req,
                    record: rec,
                    lifetime: None,
                },
                |_, _| Ok(Ok(())),
            )
            .unwrap();
        match created {
            Created::Row(c) => Some(c),
            _ => None,
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
        let c = create(&store, &name, &owner, &r1, &rec).unwrap();
        assert_eq!(c.state, ClusterState::Reserved);
        let r2 = RequestId::new();
        assert!(create(&store, &name, &owner, &r2, &rec).is_none());
        assert!(
            store
                .transition(
                    c.id,
                    &[ClusterState::Reserved],
                    ClusterState::Terminated,
                    None
                )
                .unwrap()
        );
        let c2 = create(&store, &name, &owner, &r2, &rec).unwrap();
        assert_ne!(c.id, c2.id);
        // The live one wins a lookup by name.
        assert_eq!(
            store.find_cluster(&owner, &name).unwrap().unwrap().id,
            c2.id
        );
    }

    #[test]
    fn clusters_recorded_before_migration_7_keep_their_dash_names_and_new_ones_get_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        // A database as the version before migration 7 left it, with two owners' clusters
        // whose resource names collided under `-` (a-x's c, a's x-c), as it wrote them.
        {
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..6].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                if i == 2 {
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('store_id', 'st-0123456789abcdef')",
                        [],
                    )
                    .unwrap();
                }
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            let rec = serde_json::to_string(&record()).unwrap();
            for (owner, name) in [("a-x", "c"), ("a", "x-c")] {
                conn.execute(
                    "INSERT INTO clusters (name, owner, profile, provider, state, request_id,
                                           created_at, updated_at, record)
                     VALUES (?1, ?2, 'p', 'ec2', 'running', ?3, 1, 1, ?4)",
                    params![name, owner, RequestId::new().as_str(), rec],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let old = store.list_clusters(None).unwrap();
        assert_eq!(old.len(), 2);
        let joined: Vec<String> = old
            .iter()
            .map(|c| c.naming.join(&c.owner, &c.name))
            .collect();
        assert!(old.iter().all(|c| c.naming == Naming::Dash), "{old:?}");
        assert_eq!(
            joined[0], joined[1],
            "the names that collided stay as they were"
        );
        let new = create(
            &store,
            &ClusterName::parse("c").unwrap(),
            &Owner::parse("a-x").unwrap(),
            &RequestId::new(),
            &record(),
        );
        // (a-x's c is still live, so a new one of that name is refused; take another owner.)
        assert!(new.is_none());
        let new = create(
            &store,
            &ClusterName::parse("c").unwrap(),
            &Owner::parse("a").unwrap(),
            &RequestId::new(),
            &record(),
        )
        .unwrap();
        assert_eq!(new.naming, Naming::At);
        assert_eq!(new.naming.join(&new.owner, &new.name), "a@c");
        assert_eq!(store.id().as_str(), "st-0123456789abcdef");
    }

    #[test]
    fn a_refused_admission_leaves_no_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let owner = Owner::parse("alice").unwrap();
        let name = ClusterName::parse("demo").unwrap();
        let rec = record();
        let r = store
            .create_cluster(
                &NewCluster {
                    name: &name,
                    owner: &owner,
                    provider: ProviderKind::Local,
                    request_id: &RequestId::new(),
                    record: &rec,
                    lifetime: None,
                },
                |_, _| Ok(Err("over quota")),
            )
            .unwrap();
        assert!(matches!(r, Created::Refused("over quota")));
        assert!(store.list_clusters(None).unwrap().is_empty());
    }

    #[test]
    fn each_database_has_its_own_stable_id() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let id_a = Store::open_in(a.path()).unwrap().id().clone();
        let id_b = Store::open_in(b.path()).unwrap().id().clone();
        assert_ne!(id_a, id_b);
        assert!(id_a.as_str().starts_with("st-"));
        assert_eq!(Store::open_in(a.path()).unwrap().id(), &id_a);
    }

    #[test]
    fn a_symlinked_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.db");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("stratus.db")).unwrap();
        let err = Store::open_in(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
    }

    #[test]
    fn many_processes_may_create_the_database_at_once() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let d = dir.path().to_path_buf();
                    std::thread::spawn(move || Store::open_in(&d).map(|s| s.id().clone()))
                })
                .collect();
            let ids: std::collections::BTreeSet<StoreId> = handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect();
            assert_eq!(ids.len(), 1, "one database, one id");
        }
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
