//! The class roster: the logins `admin identities sync --roster FILE` last took, who may have
//! an IAM identity (`identity init`, `identity rotate`). No secret is ever stored: IAM holds the
//! keys, the students' own files their secrets.

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
}
