//! The cluster lifecycle: launch (and grow), configure over SSH, observe, terminate and
//! reconcile, plus the pieces they share (profiles, the SSH client, the provider seam). It runs
//! on explicit inputs, gathered in `Ctx` (the store, the state directory for keys and locks,
//! the SSH settings and the progress sink) plus, per call, the owner, the request id, the
//! validated request and the provider. The CLI, the runner and the tests all call the same
//! functions; nothing here reads the environment or asks who is running it.
//!
//! The value types (names, owners, tags, states) live in `crate::core::model` and are re-exported
//! here.

pub mod clock;
pub mod configure;
pub(crate) mod console;
pub mod image;
pub mod interrupt;
pub mod intra_key;
pub mod journal;
pub mod keys;
pub mod launch;
pub mod locks;
pub mod meta;
pub mod observe;
pub mod orphans;
pub(crate) mod progress;
pub mod provider;
pub mod proxy;
pub mod reconcile;
pub(crate) mod rounds;
pub mod ssh;
pub mod terminate;
pub(crate) mod waits;

use std::path::Path;
use std::time::Duration;

use crate::config::SshConfig;
use crate::core::error::Error;
pub use crate::core::model::{
    ClusterName, Owner, RequestId, Role, StoreId, TAG_CLUSTER, TAG_OWNER, TAG_PROFILE, TAG_REQUEST,
    TAG_ROLE, TAG_STORE, Tags, node_name, shell_quote,
};
use crate::core::printer::Printer;
use crate::store::{ClusterRow, NewCluster, Store, StoreError};

/// What the lifecycle runs with, besides each call's own inputs.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub store: &'a Store,
    /// Where cluster keys (`clusters/`) and launch locks (`launches/`) live: the directory of
    /// the store.
    pub state_dir: &'a Path,
    pub ssh: &'a SshConfig,
    /// Progress bars and status lines (JSON lines of progress, in the runner).
    pub printer: &'a Printer,
    /// Tests only: a launch stops for good on reaching this state, so a test can kill its
    /// launcher there. Set from `STRATUS_TEST_PAUSE_AT` by a user's own command in a debug
    /// build; never in the runner, never in a release build.
    pub pause_at: Option<crate::core::model::ClusterState>,
    /// The class service: says when the client of this request has gone (its CLI killed, its
    /// connection closed), which stops a launch as ^C would.
    pub hangup: Option<&'a interrupt::Hangup>,
}

impl Ctx<'_> {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.ssh.connect_timeout_secs.max(1))
    }
}

/// The quota check a launch runs through, before it creates anything. The policy lives above
/// the lifecycle (the service passes its admission in), so the lifecycle only knows this.
pub trait Admit: Sync {
    /// Checks a new cluster and reserves what it takes, inside the transaction that records it
    /// (`cluster_id` is its uncommitted row). The inner error is a refusal: the row is dropped.
    fn admit_launch(
        &self,
        tx: &rusqlite::Transaction<'_>,
        cluster_id: i64,
        new: &NewCluster<'_>,
        workers: u32,
    ) -> Result<Result<(), Error>, StoreError>;

    /// Checks `count` more workers for a live cluster and reserves them, in one transaction.
    fn admit_growth(
        &self,
        store: &Store,
        cluster: &ClusterRow,
        request: &RequestId,
        count: u32,
    ) -> Result<(), Error>;
}

/// No policy: nothing is limited, nothing reserved (a single-user install without a policy).
pub struct Unlimited;

impl Admit for Unlimited {
    fn admit_launch(
        &self,
        _: &rusqlite::Transaction<'_>,
        _: i64,
        _: &NewCluster<'_>,
        _: u32,
    ) -> Result<Result<(), Error>, StoreError> {
        Ok(Ok(()))
    }

    fn admit_growth(&self, _: &Store, _: &ClusterRow, _: &RequestId, _: u32) -> Result<(), Error> {
        Ok(())
    }
}
