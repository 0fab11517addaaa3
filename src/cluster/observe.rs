//! Bringing the store up to date with what a provider reports, for the read paths (`list`,
//! `usage`, `exec`, `push`, `login`): node states and addresses, and the usage intervals that end
//! or restart. One describe per provider and owner, and one transaction for whatever changed;
//! nothing is written when nothing changed.

use std::collections::HashMap;

use crate::cluster::Ctx;
use crate::cluster::provider::{Instance, Provider, Selector};
use crate::core::error::Error;
use crate::core::model::{Owner, now_millis};
use crate::store::{ClusterRow, Observation};

/// Observes the live nodes of `clusters` (those on this provider) at the provider.
pub async fn refresh<P: Provider>(
    ctx: Ctx<'_>,
    provider: &P,
    clusters: &[ClusterRow],
) -> Result<(), Error> {
    let mut nodes = Vec::new();
    let mut owners: Vec<&Owner> = Vec::new();
    for c in clusters.iter().filter(|c| c.provider == provider.kind()) {
        let live: Vec<_> = ctx
            .store
            .nodes_of(c.id)?
            .into_iter()
            .filter(|n| n.ended_at.is_none())
            .collect();
        if !live.is_empty() && !owners.contains(&&c.owner) {
            owners.push(&c.owner);
        }
        nodes.extend(live);
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let mut seen: HashMap<String, Instance> = HashMap::new();
    for owner in owners {
        let found = provider
            // By owner only: a node is matched by its id, and one launched before stores had
            // ids carries no store tag.
            .describe(&Selector {
                owner: Some(owner.clone()),
                ..Default::default()
            })
            .await?;
        seen.extend(found.into_iter().map(|i| (i.id.clone(), i)));
    }
    let now = now_millis();
    let grace = crate::core::model::millis_of(provider.consistency_grace());
    let observations: Vec<Observation> = nodes
        .into_iter()
        .filter_map(|n| match seen.get(&n.instance_id) {
            Some(i) => Some(Observation::Seen {
                instance_id: n.instance_id,
                state: i.state,
                address: i.address.clone(),
                private_address: i.private_address.clone(),
                at: now,
            }),
            None if now - n.launched_at > grace => Some(Observation::Vanished {
                instance_id: n.instance_id,
                at: now,
            }),
            // Too new to be missing for good (eventual consistency): say nothing yet.
            None => None,
        })
        .collect();
    ctx.store.observe(&observations)?;
    Ok(())
}
