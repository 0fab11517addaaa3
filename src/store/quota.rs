//! The quota ledger and the audit trail.
//!
//! A reservation is written, in the transaction that records a cluster (or a launch-slaves
//! request), for the units and nodes the launch may hold; it is released once everything it
//! launched is gone. Quota use is the sum of the open reservations, so launches in flight count
//! from the moment they are admitted.
//!
//! The audit table is append-only (triggers refuse UPDATE and DELETE): one row per decision of
//! the privileged path.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::core::model::{Millis, now_millis};

/// One decision of the privileged path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339.
    pub at: String,
    pub user: String,
    pub action: String,
    pub cluster: Option<String>,
    /// `accepted`, `refused`, `done` or `failed`.
    pub decision: String,
    pub reason: Option<String>,
    pub instances: Vec<String>,
}

/// The most characters of a name (user, cluster, action, decision) the audit trail keeps.
pub const AUDIT_NAME_CHARS: usize = 100;
/// The most characters of a reason, and of an instance id, the audit trail keeps.
pub const AUDIT_REASON_CHARS: usize = 300;

impl AuditRecord {
    /// How a row names a cluster, everywhere: `owner/name` (a name alone is ambiguous across
    /// owners).
    pub fn cluster_of(owner: &str, name: &str) -> String {
        format!("{owner}/{name}")
    }

    /// The record as the audit trail keeps it: every field cut to its bound (a name padded to a
    /// megabyte takes 100 characters, not a megabyte per row of an append-only table) and
    /// escaped (no control character, line separator or bidi control: no value can pose as a
    /// second entry or field).
    pub fn bounded(&self) -> Self {
        use crate::core::text::{escape, shortened};
        let name = |s: &str| escape(&shortened(s, AUDIT_NAME_CHARS));
        let long = |s: &str| escape(&shortened(s, AUDIT_REASON_CHARS));
        Self {
            at: self.at.clone(),
            user: name(&self.user),
            action: name(&self.action),
            cluster: self.cluster.as_deref().map(name),
            decision: name(&self.decision),
            reason: self.reason.as_deref().map(long),
            instances: self.instances.iter().map(|i| long(i)).collect(),
        }
    }
}

/// Appends one decision to the audit trail on `conn` (inside a transaction of the caller's, or
/// on its own), bounded and escaped.
pub fn insert_audit(conn: &Connection, record: &AuditRecord, at: Millis) -> Result<(), StoreError> {
    let record = record.bounded();
    let instances =
        serde_json::to_string(&record.instances).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.execute(
        "INSERT INTO audit (at, user, action, cluster, decision, reason, instances)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            at,
            record.user,
            record.action,
            record.cluster,
            record.decision,
            record.reason,
            instances
        ],
    )?;
    Ok(())
}

/// Units (thousandths) held by the open reservations of `owner`, leaving out `except`'s.
pub fn open_units(conn: &Connection, owner: &str, except: i64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(units), 0) FROM reservations
         WHERE owner = ?1 AND released_at IS NULL AND cluster_id != ?2",
        params![owner, except],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Units held by every open reservation, leaving out `except`'s.
pub fn class_units(conn: &Connection, except: i64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(units), 0) FROM reservations
         WHERE released_at IS NULL AND cluster_id != ?1",
        params![except],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Live clusters of `owner` other than `except`.
pub fn live_clusters(conn: &Connection, owner: &str, except: i64) -> Result<u32, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM clusters
         WHERE owner = ?1 AND id != ?2 AND state NOT IN ('failed', 'terminated')",
        params![owner, except],
        |r| r.get(0),
    )?;
    Ok(n as u32)
}

/// Nodes a cluster holds or has reserved: the larger of its open reservations and its live
/// nodes.
pub fn cluster_nodes(conn: &Connection, cluster_id: i64) -> Result<u32, StoreError> {
    let reserved: i64 = conn.query_row(
        "SELECT COALESCE(SUM(nodes), 0) FROM reservations
         WHERE cluster_id = ?1 AND released_at IS NULL",
        params![cluster_id],
        |r| r.get(0),
    )?;
    let live: i64 = conn.query_row(
        "SELECT COUNT(*) FROM nodes WHERE cluster_id = ?1
         AND state NOT IN ('shutting-down', 'terminated')",
        params![cluster_id],
        |r| r.get(0),
    )?;
    Ok(reserved.max(live) as u32)
}

/// The most each cluster of `owner` with open reservations may cost over its lifetime, in
/// micro-dollars, by cluster.
pub fn open_max_costs(
    conn: &Connection,
    owner: &str,
    except: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT cluster_id, SUM(max_cost_micros) FROM reservations
         WHERE owner = ?1 AND released_at IS NULL AND cluster_id != ?2
         GROUP BY cluster_id",
    )?;
    let rows = stmt.query_map(params![owner, except], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The usage intervals of `owner` (every owner's with `None`) that overlap `[since, until)`.
pub fn intervals_in(
    conn: &Connection,
    owner: Option<&str>,
    since: Millis,
    until: Millis,
) -> Result<Vec<super::Interval>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT instance_id, cluster_id, owner, profile, instance_type, spot, started_at,
                last_seen_at, ended_at, end_source, orphan, volume_gb, public_ipv4
         FROM usage_intervals
         WHERE (?1 IS NULL OR owner = ?1) AND started_at < ?3
           AND (ended_at IS NULL OR ended_at >= ?2)
         ORDER BY id",
    )?;
    let rows = stmt.query_map(
        params![owner, since, until],
        super::nodes::interval_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub struct NewReservation<'a> {
    pub cluster_id: i64,
    pub owner: &'a str,
    pub request: &'a str,
    pub units: u64,
    pub nodes: u32,
    pub max_cost: i64,
}

pub fn insert_reservation(conn: &Connection, r: &NewReservation<'_>) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO reservations (cluster_id, owner, request_id, units, nodes, max_cost_micros,
                                   created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            r.cluster_id,
            r.owner,
            r.request,
            r.units as i64,
            r.nodes,
            r.max_cost,
            now_millis()
        ],
    )?;
    Ok(())
}

impl Store {
    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f` succeeds (quota checks
    /// and their reservations, and every write of the store).
    pub fn immediate<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Releases the open reservations of a cluster (of one request of it, with `request`).
    pub fn release_reservations(
        &self,
        cluster_id: i64,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE reservations SET released_at = ?3
             WHERE cluster_id = ?1 AND released_at IS NULL AND (?2 IS NULL OR request_id = ?2)",
            params![cluster_id, request, now_millis()],
        )?;
        Ok(())
    }

    /// Appends one decision to the audit trail.
    pub fn audit(&self, record: &AuditRecord, at: Millis) -> Result<(), StoreError> {
        insert_audit(&self.conn(), record, at)
    }

    /// The audit trail from `since` on, oldest first.
    pub fn audit_since(&self, since: Millis) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at, user, action, cluster, decision, reason, instances FROM audit
             WHERE at >= ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![since], |r| {
            let at: i64 = r.get(0)?;
            let instances: String = r.get(6)?;
            Ok(AuditRecord {
                at: crate::core::model::rfc3339(at),
                user: r.get(1)?,
                action: r.get(2)?,
                cluster: r.get(3)?,
                decision: r.get(4)?,
                reason: r.get(5)?,
                instances: serde_json::from_str(&instances).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The usage intervals of `owner` (every owner's with `None`) that overlap
    /// `[since, until)`.
    pub fn intervals_of(
        &self,
        owner: Option<&str>,
        since: Millis,
        until: Millis,
    ) -> Result<Vec<super::Interval>, StoreError> {
        intervals_in(&self.conn(), owner, since, until)
    }
}

/// Moves a live cluster's deadline to `to` and counts one more extension, if its deadline is
/// still `from` (compare and set: two extends at once move it once each, never both from the
/// same start); the most its open reservation may cost grows by `cost`, so that the budget
/// holds the extension as it holds the launch. Returns whether it moved.
pub fn extend_deadline(
    conn: &Connection,
    id: i64,
    from: Option<Millis>,
    to: Millis,
    cost: i64,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE clusters SET deadline = ?3, extensions = extensions + 1, updated_at = ?4
         WHERE id = ?1 AND deadline IS ?2 AND state NOT IN ('failed', 'terminated')",
        params![id, from, to, now_millis()],
    )?;
    if n == 1 {
        conn.execute(
            "UPDATE reservations SET max_cost_micros = max_cost_micros + ?2
             WHERE id = (SELECT MIN(id) FROM reservations
                         WHERE cluster_id = ?1 AND released_at IS NULL)",
            params![id, cost],
        )?;
    }
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_fields_are_bounded_and_escaped() {
        let huge = "a".repeat(1 << 20);
        let r = AuditRecord {
            at: String::new(),
            user: "alice".into(),
            action: "launch".into(),
            cluster: Some(format!("{huge}\n")),
            decision: "refused".into(),
            reason: Some(format!("x\ny{}", "z".repeat(10_000))),
            instances: vec!["i-1".into()],
        }
        .bounded();
        let cluster = r.cluster.unwrap();
        assert_eq!(
            cluster.chars().count(),
            AUDIT_NAME_CHARS + 1,
            "cut, and marked"
        );
        assert!(cluster.ends_with('…'));
        let reason = r.reason.unwrap();
        assert!(reason.starts_with("x\\u{a}y"), "{reason}");
        assert!(
            reason.chars().count() <= AUDIT_REASON_CHARS + 8,
            "{}",
            reason.len()
        );
        assert_eq!(r.instances, ["i-1"]);
    }
}
