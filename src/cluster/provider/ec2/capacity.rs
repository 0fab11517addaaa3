//! Launching a batch where EC2 has room: each instance type the role lists, in order of
//! preference, in each subnet the site lists, until the batch's nodes are launched.
//!
//! EC2 answers a RunInstances it has no room for with a capacity error
//! (`InsufficientInstanceCapacity`, `Unsupported` for a type an availability zone does not
//! offer, `UnfulfillableCapacity`, ...), which says that nothing was launched: the next subnet
//! (another zone) may have room, and then the next type. After a whole round without room the
//! launch pauses and goes round again, twice. A quota error (`VcpuLimitExceeded`, ...) stops it
//! at once: no other subnet or type is outside the account's limits.
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html>
//!
//! A call that launches only some of the nodes (EC2 launches between MinCount and MaxCount)
//! leaves the rest to the next placement. Every call has its own ClientToken, derived from the
//! batch's, and is written down (`Journal::begin`) before it is made, so a process that dies
//! with a call in flight leaves a batch that `reconcile` goes through: no fallback can create
//! instances that nobody tracks. A placement that had no room is tried after the others for a
//! while, so replacement workers do not knock on the same full zone first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Ec2Provider;
use crate::cluster::provider::{
    BatchSpec, ClusterRef, Journal, Launched, ProviderError, SshAccess,
};

/// The pauses before the second and third rounds through every placement.
pub(super) const ROUND_PAUSES: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(30)];
/// How long a placement that had no room is tried after the others.
const SHORTAGE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// One instance type in one subnet (`None`: the default VPC, where EC2 picks the zone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Placement {
    pub instance_type: String,
    pub subnet: Option<String>,
}

/// Every placement, type by type: each subnet for the preferred type, then each for the next.
pub(super) fn placements(types: &[String], subnets: &[String]) -> Vec<Placement> {
    let subnets: Vec<Option<String>> = if subnets.is_empty() {
        vec![None]
    } else {
        subnets.iter().cloned().map(Some).collect()
    };
    types
        .iter()
        .flat_map(|t| {
            subnets.iter().map(move |s| Placement {
                instance_type: t.clone(),
                subnet: s.clone(),
            })
        })
        .collect()
}

/// The ClientToken of a batch's `n`th call: the batch's own for the first, derived for the rest
/// (each distinct, as EC2 refuses a token reused with other parameters).
pub(super) fn attempt_token(batch: &str, n: usize) -> String {
    match n {
        0 => batch.to_owned(),
        n => format!("{batch}-a{n}"),
    }
}

/// Placements that lately had no room, and when.
#[derive(Debug, Default)]
pub(super) struct Shortages(HashMap<Placement, Instant>);

impl Shortages {
    fn noted(&mut self, p: &Placement) {
        self.0.insert(p.clone(), Instant::now());
    }

    fn cleared(&mut self, p: &Placement) {
        self.0.remove(p);
    }

    /// `list` with the placements short of room lately moved to the end, in their order.
    fn order(&mut self, list: Vec<Placement>) -> Vec<Placement> {
        self.0.retain(|_, at| at.elapsed() < SHORTAGE_MEMORY);
        let (short, fine): (Vec<_>, Vec<_>) =
            list.into_iter().partition(|p| self.0.contains_key(p));
        fine.into_iter().chain(short).collect()
    }
}

/// One RunInstances of a batch.
pub(super) struct Call<'a> {
    pub placement: &'a Placement,
    pub count: u32,
    pub min_count: u32,
    /// The cluster index of the call's first node.
    pub first_index: u32,
    pub token: &'a str,
}

/// Whether a failed call is known to have created nothing: EC2 refused it outright (or it was
/// never sent). Any other failure (a lost answer, a timeout) may hide instances.
fn definitive(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Capacity(_)
            | ProviderError::Quota(_)
            | ProviderError::InvalidRequest(_)
            | ProviderError::Auth(_)
    )
}

impl Ec2Provider {
    /// Launches the batch on the first placements with room (see the module's comment).
    pub(super) async fn launch_batch(
        &self,
        cluster: &ClusterRef,
        access: &SshAccess,
        batch: &BatchSpec,
        journal: &dyn Journal,
    ) -> Launched {
        let mut out = Launched {
            instances: Vec::new(),
            error: None,
            settled: Vec::new(),
        };
        let network = match self.network().await {
            Ok(n) => n,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        let subnets: Vec<String> = network.subnets.iter().map(|s| s.id.clone()).collect();
        let order = self
            .shortages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order(placements(&batch.instance_types, &subnets));
        let mut calls = 0usize;
        let mut last_shortage = String::new();
        for round in 0..=ROUND_PAUSES.len() {
            if round > 0 {
                let pause = ROUND_PAUSES[round - 1];
                tracing::info!(nodes = %batch.name, ?pause, "no room in any placement; trying again after a pause");
                tokio::time::sleep(pause).await;
            }
            for p in &order {
                let have = out.instances.len() as u32;
                if have >= batch.count {
                    break;
                }
                let token = attempt_token(&batch.client_token, calls);
                calls += 1;
                // The first call's batch was written by the launch, before calling here.
                if calls > 1
                    && let Err(why) = journal.begin(&token)
                {
                    out.error = Some(ProviderError::Other(why));
                    return out;
                }
                let call = Call {
                    placement: p,
                    count: batch.count - have,
                    min_count: batch.min_count.saturating_sub(have).max(1),
                    first_index: batch.first_index + have,
                    token: &token,
                };
                match self.run_instances(cluster, access, batch, &call).await {
                    Ok(instances) => {
                        let mut shortages =
                            self.shortages.lock().unwrap_or_else(|p| p.into_inner());
                        if instances.len() as u32 >= call.count {
                            shortages.cleared(p);
                        } else {
                            shortages.noted(p);
                        }
                        out.instances.extend(instances);
                        out.settled.push(token);
                    }
                    Err(ProviderError::Capacity(why)) => {
                        tracing::info!(nodes = %batch.name, instance_type = %p.instance_type, subnet = ?p.subnet, "no capacity: {why}");
                        self.shortages
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .noted(p);
                        last_shortage = why;
                        out.settled.push(token);
                    }
                    Err(e) => {
                        if definitive(&e) {
                            out.settled.push(token);
                        }
                        out.error = Some(e);
                        return out;
                    }
                }
            }
            let have = out.instances.len() as u32;
            // Enough to go on with: the launch replaces or does without the rest.
            if have >= batch.count || (have > 0 && have >= batch.min_count) {
                return out;
            }
        }
        let tried: Vec<String> = order
            .iter()
            .map(|p| {
                format!(
                    "{} in {}",
                    p.instance_type,
                    network.describe(p.subnet.as_deref())
                )
            })
            .collect();
        let waited: u64 = ROUND_PAUSES.iter().map(|d| d.as_secs()).sum();
        out.error = Some(ProviderError::Capacity(format!(
            "EC2 had no room for {} ({} of {} launched) in {} rounds over {waited} s, trying {} (last answer: {last_shortage}); list more types under instance_types in the profile, or more subnets (other availability zones) under [ec2] subnet_ids",
            batch.name,
            out.instances.len(),
            batch.count,
            ROUND_PAUSES.len() + 1,
            tried.join(", "),
        )));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, s: Option<&str>) -> Placement {
        Placement {
            instance_type: t.into(),
            subnet: s.map(str::to_owned),
        }
    }

    #[test]
    fn every_subnet_for_a_type_before_the_next_type() {
        let types = ["m5.large".to_owned(), "m6i.large".to_owned()];
        let subnets = ["subnet-a".to_owned(), "subnet-b".to_owned()];
        assert_eq!(
            placements(&types, &subnets),
            [
                p("m5.large", Some("subnet-a")),
                p("m5.large", Some("subnet-b")),
                p("m6i.large", Some("subnet-a")),
                p("m6i.large", Some("subnet-b")),
            ]
        );
        assert_eq!(
            placements(&types, &[]),
            [p("m5.large", None), p("m6i.large", None)]
        );
    }

    #[test]
    fn tokens_are_the_batch_s_then_distinct() {
        assert_eq!(attempt_token("req-1-w", 0), "req-1-w");
        let t: std::collections::BTreeSet<String> =
            (0..20).map(|n| attempt_token("req-1-w", n)).collect();
        assert_eq!(t.len(), 20);
        assert!(t.iter().all(|t| t.starts_with("req-1-w")));
    }

    #[test]
    fn placements_short_of_room_go_last() {
        let mut s = Shortages::default();
        let list = vec![p("a", Some("1")), p("a", Some("2")), p("b", Some("1"))];
        s.noted(&p("a", Some("1")));
        assert_eq!(
            s.order(list.clone()),
            [p("a", Some("2")), p("b", Some("1")), p("a", Some("1"))]
        );
        s.cleared(&p("a", Some("1")));
        assert_eq!(s.order(list.clone()), list);
    }
}
