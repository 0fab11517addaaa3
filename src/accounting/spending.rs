//! What a user has spent in the policy's term, from recorded usage, counted exactly as the
//! accounting report counts it (from the term's start to now, per second, the 60-second
//! minimum where a run starts): what budgets are checked against, by the admission and by the reaper.

use std::collections::BTreeMap;

use crate::config::SiteConfig;
use crate::core::model::now_millis;
use crate::core::money::Micros;
use crate::policy::Policy;
use crate::store::{Store, StoreError};

/// What `owner` has spent in the policy's term, in micro-dollars.
pub fn spent_by(
    store: &Store,
    policy: &Policy,
    config: &SiteConfig,
    owner: &str,
) -> Result<Micros, StoreError> {
    store.immediate(|tx| Ok(spending(tx, policy, config, owner)?.0))
}

/// What `owner` has spent in the policy's term, in all and by cluster (read on `conn`, inside
/// a transaction of the caller's).
pub fn spending(
    conn: &rusqlite::Connection,
    policy: &Policy,
    config: &SiteConfig,
    owner: &str,
) -> Result<(Micros, BTreeMap<i64, Micros>), StoreError> {
    let now = now_millis();
    let since = policy.term_start.map(|t| t.as_millisecond()).unwrap_or(0);
    // Up to now, past the term's end too: what runs after it still spends the budget (were it
    // clipped at the end, a budget would read as unspent once the term is over).
    let until = now;
    let intervals = crate::store::quota::intervals_in(conn, Some(owner), since, until)?;
    let r = super::report::report(
        config,
        &Default::default(),
        &intervals,
        since,
        until,
        now,
        super::report::By::Cluster,
    );
    let by_cluster = r
        .rows
        .iter()
        .filter_map(|row| row.cluster_id.map(|id| (id, row.micros)))
        .collect();
    Ok((r.total.micros, by_cluster))
}
