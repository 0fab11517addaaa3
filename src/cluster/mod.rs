//! The cluster lifecycle: launch (and grow), configure over SSH, observe, terminate and
//! reconcile, plus the pieces they share (profiles, the SSH client, the provider seam). It runs
//! on explicit inputs, gathered in `Ctx` (the store, the state directory for keys and locks,
//! the SSH settings and the progress sink) plus, per call, the owner, the request id, the
//! validated request and the provider. The CLI, the runner and the tests all call the same
//! functions; nothing here reads the environment or asks who is running it.
//!
//! The value types (names, owners, tags, states) live in `crate::model` and are re-exported
//! here.

pub mod configure;
pub mod interrupt;
pub mod intra_key;
pub mod journal;
pub mod keys;
pub mod launch;
pub mod locks;
pub mod meta;
pub mod observe;
pub mod orphans;
pub mod profile;
pub mod provider;
pub mod proxy;
pub mod reconcile;
pub mod ssh;
pub mod terminate;

use std::path::Path;
use std::time::Duration;

use crate::config::SshConfig;
pub use crate::model::{
    ClusterName, Owner, RequestId, Role, StoreId, TAG_CLUSTER, TAG_OWNER, TAG_PROFILE, TAG_REQUEST,
    TAG_ROLE, TAG_STORE, Tags, node_name, shell_quote,
};
use crate::printer::Printer;
use crate::store::Store;

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
    pub pause_at: Option<crate::model::ClusterState>,
}

impl Ctx<'_> {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.ssh.connect_timeout_secs.max(1))
    }
}
