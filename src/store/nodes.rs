//! Nodes, the launch batches that create them, and their usage intervals.
//!
//! Every instance enters accounting: a batch row is written before each launch call (so a
//! call whose answer is lost is still known to have been made), each instance the call returns is
//! recorded with an open usage interval in the same transaction that settles the batch, and
//! instances found later without a row (strays, orphans) are recorded too, flagged.
//!
//! Observations from read paths (`list`, `exec`, ...) write only what changed, in one
//! transaction, and nothing at all when nothing changed; a sighting of a running node is
//! recorded at most once per `SIGHTING_RESOLUTION`.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{ClusterRow, Store, StoreError, cluster_state};
use crate::core::model::{ClusterState, InstanceState, Millis, Role, SNAPSHOT_INTERVAL};

/// A read path records that a running node was seen at most this often: enough for a vanished
/// node to be closed near its end, without a write on every `stratus list`.
pub const SIGHTING_RESOLUTION: Millis = 5 * 60 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Its EBS root volume in GiB (0: none, or unknown), for the cost estimate.
    #[serde(default)]
    pub volume_gb: u32,
    /// Whether it holds a public IPv4 address (AWS charges those by the hour).
    #[serde(default)]
    pub public_ipv4: bool,
}

/// One launch call (a RunInstances of one role's nodes), written before the call is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// The call's idempotency token (EC2's ClientToken).
    pub token: String,
    pub cluster_id: i64,
    pub request_id: String,
    pub role: Role,
    pub first_index: u32,
    pub count: u32,
    pub created_at: Millis,
    pub settled_at: Option<Millis>,
}

/// What recording a launch call's instances found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The cluster still takes nodes.
    Accepted,
    /// The cluster moved on (terminated meanwhile, say): the nodes are recorded, so they are
    /// accounted, but must be terminated at once.
    ClusterNotAccepting(Option<ClusterState>),
}

/// What the provider reported about a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Seen, in `state`, at `at`.
    Seen {
        instance_id: String,
        state: InstanceState,
        address: Option<String>,
        private_address: Option<String>,
        at: Millis,
    },
    /// Not listed for longer than the provider's consistency allows, as found at `at` (by the
    /// snapshot, a read, a wait or a terminate alike): gone without a sighting of its end. Its
    /// interval is closed by one rule, `written_off_end`, and marked estimated.
    Vanished { instance_id: String, at: Millis },
}

/// The end of an instance gone without a sighting of its end, written off at `at`: its last
/// sighting plus one snapshot interval (it ran until some time before the next snapshot would
/// have seen it), never later than `at`, never earlier than the sighting. Never billed
/// forever, and the same whoever notices it first.
pub fn written_off_end(last_seen: Millis, at: Millis) -> Millis {
    (last_seen + SNAPSHOT_INTERVAL).min(at).max(last_seen)
}

/// One usage interval, as the cost computation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub instance_id: String,
    pub cluster_id: i64,
    pub owner: String,
    pub profile: String,
    pub instance_type: String,
    pub spot: bool,
    pub started_at: Millis,
    pub last_seen_at: Millis,
    pub ended_at: Option<Millis>,
    /// Closed at a last sighting rather than at an observed end.
    pub estimated: bool,
    /// Found running without a record and terminated by reconcile.
    pub orphan: bool,
    /// The node's EBS root volume in GiB, and whether it held a public IPv4 address: what it
    /// costs besides the instance.
    pub volume_gb: u32,
    pub public_ipv4: bool,
}

const NODE_SELECT: &str = "SELECT instance_id, cluster_id, role, idx, request_id, state, address,
    ssh_port, instance_type, image, spot, host_key, launched_at, ended_at, private_address,
    volume_gb, public_ipv4
    FROM nodes";

impl Store {
    /// Writes a pending batch before its launch call, if the cluster is still in one of
    /// `accepting` (checked in the same transaction). Returns the state that refused it.
    pub fn begin_batch(
        &self,
        batch: &BatchRow,
        accepting: &[ClusterState],
    ) -> Result<Result<(), Option<ClusterState>>, StoreError> {
        self.write(|tx| {
            let state = cluster_state(tx, batch.cluster_id)?;
            if !state.is_some_and(|s| accepting.contains(&s)) {
                return Ok(Err(state));
            }
            tx.execute(
                "INSERT OR IGNORE INTO launch_batches (token, cluster_id, request_id, role,
                        first_index, count, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    batch.token,
                    batch.cluster_id,
                    batch.request_id,
                    batch.role.as_str(),
                    batch.first_index,
                    batch.count,
                    batch.created_at
                ],
            )?;
            Ok(Ok(()))
        })
    }

    /// Records the nodes a launch call returned, each with an open usage interval, and settles
    /// its batch (when `token` is given), in one transaction. The rows are written whatever the
    /// cluster's state; the answer says whether the cluster still takes them.
    pub fn record_nodes(
        &self,
        cluster: &ClusterRow,
        token: Option<&str>,
        nodes: &[NodeRow],
        accepting: &[ClusterState],
    ) -> Result<Recorded, StoreError> {
        self.record_launch(cluster, token.as_slice(), nodes, accepting)
    }

    /// `record_nodes` for a batch launched in several calls (a provider's fallback to another
    /// subnet or type): every token in `settled` is settled with the nodes, in one transaction.
    pub fn record_launch<T: AsRef<str>>(
        &self,
        cluster: &ClusterRow,
        settled: &[T],
        nodes: &[NodeRow],
        accepting: &[ClusterState],
    ) -> Result<Recorded, StoreError> {
        self.write(|tx| {
            for node in nodes {
                insert_node(tx, cluster, node, false)?;
            }
            for token in settled {
                let token = token.as_ref();
                tx.execute(
                    "UPDATE launch_batches SET settled_at = ?2 WHERE token = ?1 AND settled_at IS NULL",
                    params![token, crate::core::model::now_millis()],
                )?;
            }
            let state = cluster_state(tx, cluster.id)?;
            Ok(if state.is_some_and(|s| accepting.contains(&s)) {
                Recorded::Accepted
            } else {
                Recorded::ClusterNotAccepting(state)
            })
        })
    }

    /// Marks a batch as fully accounted for: its call is known to have created nothing more
    /// than what is recorded.
    pub fn settle_batch(&self, token: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE launch_batches SET settled_at = ?2 WHERE token = ?1 AND settled_at IS NULL",
            params![token, crate::core::model::now_millis()],
        )?;
        Ok(())
    }

    /// Batches whose call may have created instances nobody recorded yet.
    pub fn pending_batches(&self) -> Result<Vec<BatchRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT token, cluster_id, request_id, role, first_index, count, created_at,
                    settled_at
             FROM launch_batches WHERE settled_at IS NULL ORDER BY created_at",
        )?;
        let rows = stmt.query_map([], |r| {
            let role: String = r.get(3)?;
            Ok((
                role,
                BatchRow {
                    token: r.get(0)?,
                    cluster_id: r.get(1)?,
                    request_id: r.get(2)?,
                    role: Role::Master,
                    first_index: r.get(4)?,
                    count: r.get(5)?,
                    created_at: r.get(6)?,
                    settled_at: r.get(7)?,
                },
            ))
        })?;
        rows.map(|r| {
            let (role, mut b) = r?;
            b.role = Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("batch role {role:?}")))?;
            Ok(b)
        })
        .collect()
    }

    /// Records an instance found running under this store's tags that no row knew (its
    /// launcher died before recording it), with a usage interval from its launch flagged as an
    /// orphan's, attached to `cluster`. Nothing happens if it is known after all.
    pub fn record_orphan(&self, cluster: &ClusterRow, node: &NodeRow) -> Result<bool, StoreError> {
        self.write(|tx| insert_node(tx, cluster, node, true))
    }

    pub fn nodes_of(&self, cluster_id: i64) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{NODE_SELECT} WHERE cluster_id = ?1 ORDER BY role = 'worker', idx, launched_at"
        ))?;
        let rows = stmt.query_map(params![cluster_id], node_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// When a node was last seen running (its open interval's last sighting).
    pub fn last_sighting(&self, instance_id: &str) -> Result<Option<Millis>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT MAX(last_seen_at) FROM usage_intervals WHERE instance_id = ?1",
                params![instance_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Whether an instance was recorded as an orphan (by a snapshot that only reports them)
    /// and its interval is still open: an orphan still, for whoever terminates orphans.
    pub fn is_open_orphan(&self, instance_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM usage_intervals
                            WHERE instance_id = ?1 AND orphan AND ended_at IS NULL)",
            params![instance_id],
            |r| r.get(0),
        )?)
    }

    /// The nodes one request launched.
    pub fn nodes_of_request(&self, request: &str) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{NODE_SELECT} WHERE request_id = ?1 ORDER BY launched_at"
        ))?;
        let rows = stmt.query_map(params![request], node_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// The node of this instance, if any cluster's record holds it.
    pub fn node(&self, instance_id: &str) -> Result<Option<NodeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("{NODE_SELECT} WHERE instance_id = ?1"))?;
        stmt.query_row(params![instance_id], node_from_row)
            .optional()?
            .transpose()
    }

    /// Whether any cluster's record holds this instance.
    pub fn knows_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE instance_id = ?1)",
            params![instance_id],
            |r| r.get(0),
        )?)
    }

    /// The cluster a request launched or grew, if this database knows the request.
    pub fn cluster_of_request(&self, request: &str) -> Result<Option<ClusterRow>, StoreError> {
        let id: Option<i64> = self
            .conn()
            .query_row(
                "SELECT id FROM clusters WHERE request_id = ?1
                 UNION ALL SELECT cluster_id FROM launch_batches WHERE request_id = ?1
                 UNION ALL SELECT cluster_id FROM nodes WHERE request_id = ?1
                 LIMIT 1",
                params![request],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.cluster_by_id(id),
            None => Ok(None),
        }
    }

    /// Whether any cluster of this database was launched, or grown, by this request.
    pub fn knows_request(&self, request: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM clusters WHERE request_id = ?1)
                 OR EXISTS (SELECT 1 FROM launch_batches WHERE request_id = ?1)
                 OR EXISTS (SELECT 1 FROM nodes WHERE request_id = ?1)",
            params![request],
            |r| r.get(0),
        )?)
    }

    /// Pins a host key (read from the node's console, or learned on first contact).
    pub fn set_host_key(&self, instance_id: &str, key: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE nodes SET host_key = ?2 WHERE instance_id = ?1 AND host_key IS NULL",
            params![instance_id, key],
        )?;
        Ok(())
    }

    /// Records what the provider reported, writing only what changes: nothing at all (not even
    /// a transaction) when every observation matches the record. Returns how many nodes
    /// changed.
    pub fn observe(&self, observations: &[Observation]) -> Result<usize, StoreError> {
        self.observe_with(observations, SIGHTING_RESOLUTION, |_| Ok(()))
    }

    /// `observe`, recording a sighting of a running node once it is `resolution` old (0: every
    /// sighting), with `more` run in the same transaction when anything is written (or always,
    /// with a resolution of 0: an accounting snapshot).
    pub fn observe_with(
        &self,
        observations: &[Observation],
        resolution: Millis,
        more: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        if resolution > 0 {
            let conn = self.conn();
            let mut any = false;
            for o in observations {
                if observation_changes(&conn, o, resolution)? {
                    any = true;
                    break;
                }
            }
            if !any {
                return Ok(0);
            }
        }
        self.write(|tx| {
            let mut n = 0;
            for o in observations {
                // Checked under the write lock: another process may have recorded it.
                if observation_changes(tx, o, resolution)? {
                    apply_observation(tx, o)?;
                    n += 1;
                }
            }
            more(tx)?;
            Ok(n)
        })
    }

    /// A node the store holds as ended that the provider reports live (an end recorded too
    /// early): its row is live again and its last interval reopened, so its hours keep
    /// counting until its end is seen.
    pub fn reopen_node(
        &self,
        instance_id: &str,
        state: InstanceState,
        at: Millis,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE nodes SET state = ?2, ended_at = NULL WHERE instance_id = ?1",
                params![instance_id, state.as_str()],
            )?;
            let open: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM usage_intervals
                                WHERE instance_id = ?1 AND ended_at IS NULL)",
                params![instance_id],
                |r| r.get(0),
            )?;
            if !open {
                tx.execute(
                    "UPDATE usage_intervals SET ended_at = NULL, end_source = NULL,
                            last_seen_at = MAX(last_seen_at, ?2)
                     WHERE id = (SELECT MAX(id) FROM usage_intervals WHERE instance_id = ?1)",
                    params![instance_id, at],
                )?;
            }
            Ok(())
        })
    }

    /// The usage intervals of the given clusters.
    pub fn intervals(&self, cluster_ids: &[i64]) -> Result<Vec<Interval>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT instance_id, cluster_id, owner, profile, instance_type, spot, started_at,
                    last_seen_at, ended_at, end_source, orphan, volume_gb, public_ipv4
             FROM usage_intervals WHERE cluster_id = ?1 ORDER BY id",
        )?;
        let mut out = Vec::new();
        for id in cluster_ids {
            let rows = stmt.query_map(params![id], interval_from_row)?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }
}

pub(super) fn interval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Interval> {
    let end_source: Option<String> = r.get(9)?;
    Ok(Interval {
        instance_id: r.get(0)?,
        cluster_id: r.get(1)?,
        owner: r.get(2)?,
        profile: r.get(3)?,
        instance_type: r.get(4)?,
        spot: r.get(5)?,
        started_at: r.get(6)?,
        last_seen_at: r.get(7)?,
        ended_at: r.get(8)?,
        estimated: end_source.as_deref() == Some("estimated"),
        orphan: r.get(10)?,
        volume_gb: r.get(11)?,
        public_ipv4: r.get(12)?,
    })
}

/// `insert_node` for an orphan, inside a transaction of the caller's.
pub fn insert_orphan(
    tx: &rusqlite::Connection,
    cluster: &ClusterRow,
    node: &NodeRow,
) -> Result<bool, StoreError> {
    insert_node(tx, cluster, node, true)
}

/// Inserts a node and opens its usage interval; nothing if the instance is already recorded
/// (a retried launch call answers with the same instances). Returns whether it was new.
fn insert_node(
    tx: &rusqlite::Connection,
    cluster: &ClusterRow,
    node: &NodeRow,
    orphan: bool,
) -> Result<bool, StoreError> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO nodes (instance_id, cluster_id, role, idx, request_id, state,
                address, ssh_port, instance_type, image, spot, host_key, launched_at,
                private_address, ended_at, volume_gb, public_ipv4)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            node.instance_id,
            cluster.id,
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
            node.private_address,
            node.ended_at,
            node.volume_gb,
            node.public_ipv4,
        ],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    let end_source = node.ended_at.map(|_| "observed");
    tx.execute(
        "INSERT INTO usage_intervals (instance_id, cluster_id, owner, profile, instance_type,
                                      spot, started_at, last_seen_at, ended_at, end_source,
                                      orphan, volume_gb, public_ipv4)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            node.instance_id,
            cluster.id,
            cluster.owner.as_str(),
            cluster.profile,
            node.instance_type,
            node.spot,
            node.launched_at,
            node.ended_at,
            end_source,
            orphan,
            node.volume_gb,
            node.public_ipv4
        ],
    )?;
    Ok(true)
}

/// The node's recorded state and its open interval's last sighting, if any.
fn current(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<Option<(NodeRow, Option<Millis>)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{NODE_SELECT} WHERE instance_id = ?1"))?;
    let Some(node) = stmt
        .query_row(params![id], node_from_row)
        .optional()?
        .transpose()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT last_seen_at FROM usage_intervals WHERE instance_id = ?1 AND ended_at IS NULL",
    )?;
    let open: Option<Millis> = stmt.query_row(params![id], |r| r.get(0)).optional()?;
    Ok(Some((node, open)))
}

fn observation_changes(
    conn: &rusqlite::Connection,
    o: &Observation,
    resolution: Millis,
) -> Result<bool, StoreError> {
    match o {
        Observation::Vanished { instance_id, .. } => Ok(current(conn, instance_id)?
            .is_some_and(|(n, open)| open.is_some() || !n.state.is_gone())),
        Observation::Seen {
            instance_id,
            state,
            address,
            private_address,
            at,
        } => {
            let Some((node, open)) = current(conn, instance_id)? else {
                return Ok(false);
            };
            // Gone stays gone: a late sighting of a live state never revives a node (reconcile
            // does that deliberately, with `reopen_node`).
            if node.state.is_gone() && !state.is_gone() {
                return Ok(false);
            }
            let state_changed = node.state != *state;
            let address_changed = address.is_some() && *address != node.address
                || private_address.is_some() && *private_address != node.private_address;
            let interval_changed = if state.is_gone() || *state == InstanceState::Stopped {
                open.is_some()
            } else if state.is_billed() {
                match open {
                    None => true,
                    Some(seen) => at - seen >= resolution.max(1),
                }
            } else {
                false
            };
            Ok(state_changed || address_changed || interval_changed)
        }
    }
}

/// Ends an instance that was not seen to end, written off at `at`: its open interval closes at
/// `written_off_end` of its last sighting, flagged estimated; its node is terminated.
fn close_unseen(
    tx: &rusqlite::Connection,
    instance_id: &str,
    at: Millis,
) -> Result<(), StoreError> {
    let open: Option<(i64, Millis)> = tx
        .query_row(
            "SELECT id, last_seen_at FROM usage_intervals WHERE instance_id = ?1 AND ended_at IS NULL",
            params![instance_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((id, last_seen)) = open {
        tx.execute(
            "UPDATE usage_intervals SET ended_at = ?2, end_source = 'estimated' WHERE id = ?1",
            params![id, written_off_end(last_seen, at)],
        )?;
    }
    tx.execute(
        "UPDATE nodes SET state = 'terminated',
                ended_at = COALESCE(ended_at,
                    (SELECT MAX(ended_at) FROM usage_intervals WHERE instance_id = ?1))
         WHERE instance_id = ?1",
        params![instance_id],
    )?;
    Ok(())
}

fn apply_observation(tx: &rusqlite::Connection, o: &Observation) -> Result<(), StoreError> {
    match o {
        Observation::Vanished { instance_id, at } => close_unseen(tx, instance_id, *at)?,
        Observation::Seen {
            instance_id,
            state,
            address,
            private_address,
            at,
        } => {
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
                    at,
                    private_address
                ],
            )?;
            if ended || *state == InstanceState::Stopped {
                // Gone, or stopped (a stopped instance's hours are not billed): the interval
                // ends.
                tx.execute(
                    "UPDATE usage_intervals SET ended_at = MAX(?2, last_seen_at),
                            last_seen_at = MAX(last_seen_at, ?2), end_source = 'observed'
                     WHERE instance_id = ?1 AND ended_at IS NULL",
                    params![instance_id, at],
                )?;
            } else if state.is_billed() {
                let seen = tx.execute(
                    "UPDATE usage_intervals SET last_seen_at = MAX(last_seen_at, ?2)
                     WHERE instance_id = ?1 AND ended_at IS NULL",
                    params![instance_id, at],
                )?;
                if seen == 0 {
                    // Running again after a stop: a new interval from this sighting.
                    tx.execute(
                        "INSERT INTO usage_intervals (instance_id, cluster_id, owner, profile,
                                                      instance_type, spot, started_at,
                                                      last_seen_at, volume_gb, public_ipv4)
                         SELECT n.instance_id, n.cluster_id, c.owner, c.profile,
                                n.instance_type, n.spot, ?2, ?2, n.volume_gb, n.public_ipv4
                         FROM nodes n JOIN clusters c ON c.id = n.cluster_id
                         WHERE n.instance_id = ?1",
                        params![instance_id, at],
                    )?;
                }
            }
        }
    }
    Ok(())
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
            state: InstanceState::parse(&state).unwrap_or(InstanceState::Unknown),
            address: r.get(6)?,
            ssh_port: r.get(7)?,
            instance_type: r.get(8)?,
            image: r.get(9)?,
            spot: r.get(10)?,
            host_key: r.get(11)?,
            launched_at: r.get(12)?,
            ended_at: r.get(13)?,
            private_address: r.get(14)?,
            volume_gb: r.get(15)?,
            public_ipv4: r.get(16)?,
        })
    };
    Ok(build())
}

/// Every node without an end.
pub(super) fn open_nodes(conn: &rusqlite::Connection) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{NODE_SELECT} WHERE ended_at IS NULL"))?;
    let rows = stmt.query_map([], node_from_row)?;
    rows.map(|r| r?).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{create, record};
    use super::*;
    use crate::core::model::{ClusterName, Owner, RequestId};

    fn node(id: &str, cluster: &ClusterRow, launched_at: Millis) -> NodeRow {
        NodeRow {
            instance_id: id.into(),
            cluster_id: cluster.id,
            role: Role::Master,
            index: 0,
            request_id: cluster.request_id.to_string(),
            state: InstanceState::Running,
            address: None,
            private_address: None,
            ssh_port: 22,
            instance_type: "m5.large".into(),
            image: "ami".into(),
            spot: false,
            host_key: None,
            launched_at,
            ended_at: None,
            volume_gb: 0,
            public_ipv4: false,
        }
    }

    fn seen(id: &str, state: InstanceState, at: Millis) -> Observation {
        Observation::Seen {
            instance_id: id.into(),
            state,
            address: None,
            private_address: None,
            at,
        }
    }

    fn setup() -> (tempfile::TempDir, Store, ClusterRow) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let c = create(
            &store,
            &ClusterName::parse("demo").unwrap(),
            &Owner::parse("alice").unwrap(),
            &RequestId::new(),
            &record(),
        )
        .unwrap();
        (dir, store, c)
    }

    const ALL: &[ClusterState] = ClusterState::ALL;

    #[test]
    fn intervals_end_on_stop_and_gone_and_reopen_on_restart() {
        let (_d, store, c) = setup();
        store
            .record_nodes(&c, None, &[node("i-1", &c, 1_000)], ALL)
            .unwrap();
        let intervals = |s: &Store| s.intervals(&[c.id]).unwrap();
        store
            .observe(&[seen("i-1", InstanceState::Stopped, 3_000)])
            .unwrap();
        let iv = intervals(&store);
        assert_eq!(iv.len(), 1);
        assert_eq!((iv[0].started_at, iv[0].ended_at), (1_000, Some(3_000)));
        // Stopped hours are not billed; running again opens a new interval.
        store
            .observe(&[seen("i-1", InstanceState::Running, 5_000)])
            .unwrap();
        store
            .observe(&[seen("i-1", InstanceState::Terminated, 6_000)])
            .unwrap();
        let iv = intervals(&store);
        assert_eq!(iv.len(), 2);
        assert_eq!((iv[1].started_at, iv[1].ended_at), (5_000, Some(6_000)));
        // Gone stays gone: a late sighting does not reopen anything.
        assert_eq!(
            store
                .observe(&[seen("i-1", InstanceState::Running, 7_000)])
                .unwrap(),
            0
        );
        assert_eq!(intervals(&store).len(), 2);
    }

    #[test]
    fn unchanged_observations_write_nothing() {
        let (_d, store, c) = setup();
        store
            .record_nodes(&c, None, &[node("i-1", &c, 1_000)], ALL)
            .unwrap();
        let version = |s: &Store| -> i64 {
            s.conn()
                .query_row(
                    "SELECT COUNT(*) FROM usage_intervals WHERE last_seen_at > 1000",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        // Within the sighting resolution: nothing to write.
        assert_eq!(
            store
                .observe(&[seen("i-1", InstanceState::Running, 1_000 + 1_000)])
                .unwrap(),
            0
        );
        assert_eq!(version(&store), 0);
        // A sighting later than that is recorded once.
        let later = 1_000 + SIGHTING_RESOLUTION;
        assert_eq!(
            store
                .observe(&[seen("i-1", InstanceState::Running, later)])
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .observe(&[seen("i-1", InstanceState::Running, later + 1)])
                .unwrap(),
            0
        );
    }

    #[test]
    fn a_write_off_ends_at_the_last_sighting_plus_at_most_one_snapshot_interval() {
        assert_eq!(
            written_off_end(1_000, 1_000 + 60 * 60_000),
            1_000 + SNAPSHOT_INTERVAL
        );
        assert_eq!(written_off_end(1_000, 1_000 + 60_000), 1_000 + 60_000);
        assert_eq!(written_off_end(1_000, 500), 1_000);
    }

    #[test]
    fn a_vanished_node_closes_at_its_last_sighting_and_can_be_reopened() {
        let (_d, store, c) = setup();
        store
            .record_nodes(&c, None, &[node("i-1", &c, 1_000)], ALL)
            .unwrap();
        let later = 1_000 + SIGHTING_RESOLUTION;
        store
            .observe(&[seen("i-1", InstanceState::Running, later)])
            .unwrap();
        store
            .observe(&[Observation::Vanished {
                instance_id: "i-1".into(),
                at: later + 60 * 60_000,
            }])
            .unwrap();
        let iv = store.intervals(&[c.id]).unwrap();
        assert_eq!(iv[0].ended_at, Some(later + SNAPSHOT_INTERVAL));
        assert!(iv[0].estimated);
        assert!(store.node("i-1").unwrap().unwrap().state.is_gone());
        // The provider says it runs after all: it counts again until its end is seen.
        store
            .reopen_node("i-1", InstanceState::Running, later + 10)
            .unwrap();
        let iv = store.intervals(&[c.id]).unwrap();
        assert_eq!(iv.len(), 1);
        assert_eq!(iv[0].ended_at, None);
        store
            .observe(&[seen("i-1", InstanceState::Terminated, later + 20)])
            .unwrap();
        let iv = store.intervals(&[c.id]).unwrap();
        assert_eq!(iv[0].ended_at, Some(later + 20));
        assert!(!iv[0].estimated);
    }

    #[test]
    fn batches_are_refused_once_the_cluster_moved_on_and_settle_when_recorded() {
        let (_d, store, c) = setup();
        let batch = BatchRow {
            token: "req-1-w".into(),
            cluster_id: c.id,
            request_id: "req-1".into(),
            role: Role::Worker,
            first_index: 1,
            count: 2,
            created_at: 1,
            settled_at: None,
        };
        assert_eq!(
            store.begin_batch(&batch, &[ClusterState::Running]).unwrap(),
            Err(Some(ClusterState::Reserved))
        );
        assert!(store.pending_batches().unwrap().is_empty());
        assert_eq!(
            store
                .begin_batch(&batch, &[ClusterState::Reserved])
                .unwrap(),
            Ok(())
        );
        assert_eq!(store.pending_batches().unwrap(), vec![batch.clone()]);
        // The cluster is terminated meanwhile: the nodes are recorded all the same.
        store
            .transition(c.id, ALL, ClusterState::Terminating, None)
            .unwrap();
        let r = store
            .record_nodes(
                &c,
                Some("req-1-w"),
                &[node("i-1", &c, 5)],
                &[ClusterState::Reserved],
            )
            .unwrap();
        assert_eq!(
            r,
            Recorded::ClusterNotAccepting(Some(ClusterState::Terminating))
        );
        assert!(store.knows_instance("i-1").unwrap());
        assert!(store.pending_batches().unwrap().is_empty());
        assert_eq!(store.intervals(&[c.id]).unwrap().len(), 1);
    }

    #[test]
    fn orphans_get_a_flagged_interval_once() {
        let (_d, store, c) = setup();
        let mut n = node("i-9", &c, 1_000);
        n.ended_at = Some(4_000);
        n.state = InstanceState::Terminated;
        assert!(store.record_orphan(&c, &n).unwrap());
        assert!(!store.record_orphan(&c, &n).unwrap());
        let iv = store.intervals(&[c.id]).unwrap();
        assert_eq!(iv.len(), 1);
        assert!(iv[0].orphan);
        assert_eq!((iv[0].started_at, iv[0].ended_at), (1_000, Some(4_000)));
    }
}
