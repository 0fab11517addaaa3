//! Quotas: the instructor's policy, the launch requests and answers of the privileged path, and
//! the runner that checks and reserves atomically (DESIGN.md, "Privilege model").
//!
//! `Admission` is what the lifecycle asks before it creates anything: it runs inside the
//! transaction that records a new cluster (or, for more workers, in one of its own), so the check
//! and the reservation it writes cannot race another launch.

use crate::error::{Error, InputError};
use crate::model::RequestId;
use crate::store::{ClusterRow, NewCluster, Store, StoreError};

/// The quota check a launch runs through.
#[derive(Debug, Default)]
pub struct Admission<'a> {
    _policy: Option<&'a ()>,
}

impl Admission<'static> {
    /// No policy: nothing is limited.
    pub fn unlimited() -> Self {
        Self { _policy: None }
    }
}

impl Admission<'_> {
    /// Checks a new cluster against the policy and reserves what it takes, inside the
    /// transaction that records it.
    pub fn admit_launch(
        &self,
        _tx: &rusqlite::Transaction<'_>,
        _cluster_id: i64,
        _new: &NewCluster<'_>,
        _workers: u32,
    ) -> Result<Result<(), InputError>, StoreError> {
        Ok(Ok(()))
    }

    /// Checks more workers for a live cluster against the policy and reserves them.
    pub fn admit_growth(
        &self,
        _store: &Store,
        _cluster: &ClusterRow,
        _request: &RequestId,
        _count: u32,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Releases what a cluster reserved, once nothing of it runs any more.
    pub fn release(&self, _store: &Store, _cluster_id: i64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Releases what a failed launch-slaves reserved.
    pub fn release_growth(&self, _store: &Store, _request: &RequestId) -> Result<(), StoreError> {
        Ok(())
    }
}
