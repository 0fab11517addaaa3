//! The class roster: the logins `admin identities sync --roster FILE` last took, who may have
//! an IAM identity (`identity init`, `identity rotate`); and the students' own EC2 key pairs
//! (`keys create`), recorded by exact owner. No secret is ever stored: IAM holds the access keys
//! and the students' own files their secrets and private keys.

use std::collections::BTreeSet;

use rusqlite::params;

use super::{Store, StoreError};
use crate::core::model::Millis;

/// The meta key that records when the roster was last synced (none: never).
const SYNCED_AT: &str = "roster_synced_at";

impl Store {
    /// Replaces the roster with `logins`, in one transaction.
    pub fn set_roster(&self, logins: &BTreeSet<String>, at: Millis) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut keep = BTreeSet::new();
            {
                let mut stmt = tx.prepare("SELECT login FROM roster")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                for login in rows {
                    let login = login?;
                    if !logins.contains(&login) {
                        tx.execute("DELETE FROM roster WHERE login = ?1", params![login])?;
                    } else {
                        keep.insert(login);
                    }
                }
            }
            for login in logins.difference(&keep) {
                tx.execute(
                    "INSERT INTO roster (login, added_at) VALUES (?1, ?2)",
                    params![login, at],
                )?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![SYNCED_AT, at.to_string()],
            )?;
            Ok(())
        })
    }

    /// The roster, or `None` when no roster was ever synced.
    pub fn roster(&self) -> Result<Option<BTreeSet<String>>, StoreError> {
        if self.meta(SYNCED_AT)?.is_none() {
            return Ok(None);
        }
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT login FROM roster ORDER BY login")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(Some(rows.collect::<Result<_, _>>()?))
    }
}

/// A student's key pair as the state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairRow {
    pub id: i64,
    pub owner: String,
    pub name: String,
    /// Its name in EC2: `<owner>.<name>`.
    pub ec2_name: String,
    /// Once EC2 made it.
    pub key_pair_id: Option<String>,
    pub fingerprint: Option<String>,
    pub public_key: Option<String>,
    pub created_at: Millis,
}

impl Store {
    /// Records a key pair about to be made; `None` when the owner has a live one of the name.
    pub fn record_key_pair(
        &self,
        owner: &str,
        name: &str,
        ec2_name: &str,
        at: Millis,
    ) -> Result<Option<i64>, StoreError> {
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM key_pairs WHERE owner = ?1 AND name = ?2 AND deleted_at IS NULL)",
                params![owner, name],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO key_pairs (owner, name, ec2_name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![owner, name, ec2_name, at],
            )?;
            Ok(Some(tx.last_insert_rowid()))
        })
    }

    /// What EC2 answered for the key pair `id` made.
    pub fn key_pair_made(
        &self,
        id: i64,
        key_pair_id: &str,
        fingerprint: &str,
        public_key: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE key_pairs SET key_pair_id = ?2, fingerprint = ?3, public_key = ?4 WHERE id = ?1",
                params![id, key_pair_id, fingerprint, public_key],
            )?;
            Ok(())
        })
    }

    pub fn key_pair_gone(&self, id: i64, at: Millis) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE key_pairs SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, at],
            )?;
            Ok(())
        })
    }

    /// The owner's live key pairs (every owner's: `None`), by name.
    pub fn key_pairs(&self, owner: Option<&str>) -> Result<Vec<KeyPairRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, owner, name, ec2_name, key_pair_id, fingerprint, public_key, created_at
             FROM key_pairs WHERE deleted_at IS NULL AND (?1 IS NULL OR owner = ?1)
             ORDER BY owner, name",
        )?;
        let rows = stmt.query_map(params![owner], |r| {
            Ok(KeyPairRow {
                id: r.get(0)?,
                owner: r.get(1)?,
                name: r.get(2)?,
                ec2_name: r.get(3)?,
                key_pair_id: r.get(4)?,
                fingerprint: r.get(5)?,
                public_key: r.get(6)?,
                created_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roster_is_replaced_whole_and_absent_until_first_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        assert_eq!(store.roster().unwrap(), None);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        store.set_roster(&set(&["alice", "bob"]), 1).unwrap();
        assert_eq!(store.roster().unwrap(), Some(set(&["alice", "bob"])));
        store.set_roster(&set(&["bob", "carol"]), 2).unwrap();
        assert_eq!(store.roster().unwrap(), Some(set(&["bob", "carol"])));
    }

    #[test]
    fn key_pairs_are_recorded_by_exact_owner_and_one_live_name_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let a = store.record_key_pair("a", "k", "a.k", 1).unwrap().unwrap();
        assert_eq!(store.record_key_pair("a", "k", "a.k", 2).unwrap(), None);
        // Another owner whose name starts the same is another owner.
        store
            .record_key_pair("a.k", "x", "a.k.x", 3)
            .unwrap()
            .unwrap();
        store
            .key_pair_made(a, "key-1", "fp", "ssh-ed25519 AAAA")
            .unwrap();
        let of_a = store.key_pairs(Some("a")).unwrap();
        assert_eq!(of_a.len(), 1);
        assert_eq!(of_a[0].key_pair_id.as_deref(), Some("key-1"));
        assert_eq!(store.key_pairs(None).unwrap().len(), 2);
        store.key_pair_gone(a, 4).unwrap();
        assert!(store.key_pairs(Some("a")).unwrap().is_empty());
        assert!(store.record_key_pair("a", "k", "a.k", 5).unwrap().is_some());
    }
}
