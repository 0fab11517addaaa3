//! The launch calls a provider makes beyond a batch's first (EC2's fallback to another subnet or
//! instance type), written down as batches before each call, exactly as the launch writes down
//! the first: each with its own idempotency token, so `reconcile` knows a call was made even if
//! the process dies before its answer arrives, and no call can create instances nobody tracks.

use crate::cluster::provider::Journal;
use crate::core::model::{ClusterState, now_millis};
use crate::store::{BatchRow, Store};

/// Writes each call of one batch (one role's nodes in one round) to the store.
pub struct BatchJournal<'a> {
    store: &'a Store,
    /// The batch's own row: every further call is written like it, under its own token.
    batch: BatchRow,
    /// The cluster states in which the batch's nodes are still wanted.
    accepting: &'static [ClusterState],
}

impl<'a> BatchJournal<'a> {
    pub fn new(store: &'a Store, batch: BatchRow, accepting: &'static [ClusterState]) -> Self {
        Self {
            store,
            batch,
            accepting,
        }
    }
}

impl Journal for BatchJournal<'_> {
    fn begin(&self, token: &str) -> Result<(), String> {
        let row = BatchRow {
            token: token.to_owned(),
            created_at: now_millis(),
            ..self.batch.clone()
        };
        match self.store.begin_batch(&row, self.accepting) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(state)) => Err(format!(
                "the cluster is {}; no nodes are launched for it any more",
                state.map(|s| s.as_str()).unwrap_or("gone")
            )),
            Err(e) => Err(format!(
                "cannot write down the launch call: {}",
                crate::core::error::one_line(&e)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{ClusterName, Owner, RequestId, Role};

    #[test]
    fn each_call_is_a_pending_batch_until_the_cluster_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let cluster = crate::store::tests::create(
            &store,
            &ClusterName::parse("c").unwrap(),
            &Owner::parse("alice").unwrap(),
            &RequestId::new(),
            &crate::store::tests::record(),
        )
        .unwrap();
        assert!(
            store
                .transition(
                    cluster.id,
                    &[ClusterState::Reserved],
                    ClusterState::Requested,
                    None
                )
                .unwrap()
        );
        let batch = BatchRow {
            token: "req-1-w".into(),
            cluster_id: cluster.id,
            request_id: cluster.request_id.to_string(),
            role: Role::Worker,
            first_index: 1,
            count: 3,
            created_at: 1,
            settled_at: None,
        };
        let journal = BatchJournal::new(&store, batch, &[ClusterState::Requested]);
        journal.begin("req-1-w-f0.1.0").unwrap();
        let pending = store.pending_batches().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].token, "req-1-w-f0.1.0");
        assert_eq!(pending[0].role, Role::Worker);
        assert_eq!(pending[0].count, 3);
        store
            .transition(
                cluster.id,
                &[ClusterState::Requested],
                ClusterState::Failed,
                None,
            )
            .unwrap();
        let err = journal.begin("req-1-w-f0.2.0").unwrap_err();
        assert!(err.contains("failed"), "{err}");
        assert_eq!(store.pending_batches().unwrap().len(), 1);
    }
}
