//! The waits of a launch round, in order: until the provider reports the nodes running; until
//! each answers SSH with its host key pinned; and, where the profile sets `boot_timeout_secs`,
//! until each reports its install `done` in its phase file.
//!
//! A class launches at once, and EC2 throttles per account, region and action: every wait polls
//! at `Pace::polling` (a few quick looks, then every 10 to 15 s, at random), describes through
//! `Provider::poll` (one DescribeInstances serves every wait of the process within a round), and
//! takes a throttled describe as "look again later", never as a failed launch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::console::{ConsoleKeys, read_consoles};
use crate::cluster::meta::target;
use crate::cluster::progress::{Progress, clock, count_up};
use crate::cluster::provider::{Instance, InstanceState, Provider, Selector};
use crate::cluster::rounds::{Batch, Failure, Outcome};
use crate::cluster::ssh::{self, Client, Target};
use crate::cluster::terminate::adopt;
use crate::core::backoff::Pace;
use crate::core::error::{Error, one_line};
use crate::core::model::{Millis, millis_of, now_millis};
use crate::store::{NodeRow, Observation};

/// Where a node reports its install (`done`, `failed: …`, or what it is doing). A local node's
/// state directory is `$STRATUS_STATE_DIR`.
pub const PHASE_FILE: &str = "/var/lib/stratus/phase";
pub(crate) const PHASE_COMMAND: &str =
    r#"cat "${STRATUS_STATE_DIR:-/var/lib/stratus}/phase" 2>/dev/null || true"#;
/// How often a wait checks whether it has something to say (off a terminal, every 30 s).
const SAY_EVERY: Duration = Duration::from_secs(5);

/// What the provider answers for the request's instances, or `None` if it is throttled (or did
/// not answer in time, or is briefly unavailable) now: look again at the next round.
async fn look<P: Provider>(
    b: &Batch<'_, P>,
    selector: &Selector,
) -> Result<Option<HashMap<String, Instance>>, Error> {
    match b.provider.poll(selector).await {
        Ok(found) => Ok(Some(found.into_iter().map(|i| (i.id.clone(), i)).collect())),
        Err(e) if e.try_later() => {
            tracing::info!("{e}; looking again at the next round");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until the provider reports `nodes` running with an address, until `deadline`.
/// Instances of this request that no call reported are recorded (so they are accounted) and
/// terminated.
pub(crate) async fn running<P: Provider>(
    b: &Batch<'_, P>,
    selector: &Selector,
    mut nodes: Vec<NodeRow>,
    deadline: Instant,
    progress: &Progress<'_>,
) -> Result<Outcome, Error> {
    let ctx = b.ctx;
    progress.phase("waiting for running", nodes.len());
    let mut pace = Pace::polling();
    let mut waiting: BTreeSet<String> = nodes.iter().map(|r| r.instance_id.clone()).collect();
    let mut strays: BTreeSet<String> = BTreeSet::new();
    // A node missing from the provider's answers for longer than its consistency allows is
    // gone (terminated by another command, whose cleanup may have removed every trace of it).
    let grace = millis_of(b.provider.consistency_grace());
    loop {
        if let Some(seen) = look(b, selector).await? {
            let unknown: Vec<Instance> = seen
                .values()
                .filter(|i| !nodes.iter().any(|n| n.instance_id == i.id))
                .filter(|i| !ctx.store.knows_instance(&i.id).unwrap_or(true))
                .cloned()
                .collect();
            strays.extend(adopt(ctx, b.cluster, &unknown, false)?);
            let observations = observe(&mut nodes, &seen, &mut waiting, grace);
            ctx.store.observe(&observations)?;
        }
        progress.through((nodes.len() - waiting.len()) as u64);
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        progress.waiting_for(&named(b, &nodes, |r| waiting.contains(&r.instance_id)));
        b.interrupt.sleep(pace.next_until(deadline)).await?;
    }
    let ready_timeout = b.meta.profile.ready_timeout_secs;
    let mut outcome = Outcome {
        dead: strays,
        ..Outcome::default()
    };
    for row in nodes {
        if row.state == InstanceState::Running && !waiting.contains(&row.instance_id) {
            outcome.up.push(row);
            continue;
        }
        let name = b.name(&row);
        let message = if waiting.contains(&row.instance_id) {
            format!("{name} did not reach running within {ready_timeout}s")
        } else {
            format!("{name} went {} before it was ready", row.state)
        };
        outcome.dead.insert(row.instance_id.clone());
        outcome.failed.push(Failure::of(&row, message));
    }
    Ok(outcome)
}

/// Updates `nodes` from what the provider shows, and takes those that are done waiting
/// (running with an address, or never going to run) off `waiting`: the observations to store.
fn observe(
    nodes: &mut [NodeRow],
    seen: &HashMap<String, Instance>,
    waiting: &mut BTreeSet<String>,
    grace: Millis,
) -> Vec<Observation> {
    let now = now_millis();
    let mut observations = Vec::new();
    for row in nodes.iter_mut() {
        let Some(inst) = seen.get(&row.instance_id) else {
            if waiting.contains(&row.instance_id) && now - row.launched_at > grace {
                observations.push(Observation::Vanished {
                    instance_id: row.instance_id.clone(),
                    at: now,
                });
                row.state = InstanceState::Terminated;
                waiting.remove(&row.instance_id);
            }
            continue;
        };
        observations.push(Observation::Seen {
            instance_id: row.instance_id.clone(),
            state: inst.state,
            address: inst.address.clone(),
            private_address: inst.private_address.clone(),
            at: now,
        });
        row.state = inst.state;
        if inst.address.is_some() {
            row.address = inst.address.clone();
        }
        if inst.private_address.is_some() {
            row.private_address = inst.private_address.clone();
        }
        if row.host_key.is_none() {
            row.host_key = inst.host_key.clone();
        }
        let up = inst.state == InstanceState::Running && row.address.is_some();
        if up || inst.state.is_gone() || inst.state == InstanceState::Stopped {
            waiting.remove(&row.instance_id);
        }
    }
    observations
}

/// The names of the nodes `which` picks, for a waiting line.
fn named<P>(
    b: &Batch<'_, P>,
    nodes: &[NodeRow],
    which: impl Fn(&NodeRow) -> bool,
) -> Vec<(String, Option<String>)> {
    nodes
        .iter()
        .filter(|r| which(r))
        .map(|r| (b.name(r), None))
        .collect()
}

/// What the SSH wait found; `intercepted` if a node presented another key than the one pinned
/// (the whole launch fails).
pub(crate) struct SshOutcome {
    pub outcome: Outcome,
    pub intercepted: Option<String>,
}

/// What one node's SSH wait needs; cloned into each node's task.
#[derive(Clone)]
struct SshJob {
    client: Client,
    bar: indicatif::ProgressBar,
    gone: tokio::sync::watch::Receiver<BTreeSet<String>>,
    keys: tokio::sync::watch::Receiver<ConsoleKeys>,
    /// The key comes from the console for nodes that have none yet.
    console_keys: bool,
    deadline: Instant,
    ready_timeout: Duration,
    /// The nodes still waited for, by name.
    waiting: Arc<Mutex<BTreeSet<String>>>,
}

/// Waits until each of `running` answers SSH, with its host key pinned: read from its console
/// before first contact where the provider says so (EC2's `host_keys = "console"`), else
/// learned on first contact. A node the provider reports gone meanwhile fails its wait at once.
pub(crate) async fn ssh<P: Provider>(
    b: &Batch<'_, P>,
    selector: &Selector,
    running: Vec<NodeRow>,
    deadline: Instant,
    progress: &Progress<'_>,
) -> Result<SshOutcome, Error> {
    progress.phase("waiting for SSH", running.len());
    let (gone_tx, gone_rx) = tokio::sync::watch::channel(BTreeSet::<String>::new());
    let watch_ids: BTreeMap<String, Millis> = running
        .iter()
        .map(|r| (r.instance_id.clone(), r.launched_at))
        .collect();
    let console_keys = b.provider.host_keys_from_console();
    // The nodes whose key comes from their console (those without one yet, where the provider
    // says so), by instance id, with their names.
    let from_console: BTreeMap<String, String> = running
        .iter()
        .filter(|r| console_keys && r.host_key.is_none())
        .map(|r| (r.instance_id.clone(), b.name(r)))
        .collect();
    let (keys_tx, keys_rx) = tokio::sync::watch::channel(ConsoleKeys::new());
    let ready_timeout = Duration::from_secs(b.meta.profile.ready_timeout_secs);
    let console = read_consoles(
        b,
        from_console,
        deadline,
        ready_timeout,
        gone_rx.clone(),
        keys_tx,
    );
    let waiting = Arc::new(Mutex::new(
        running.iter().map(|r| b.name(r)).collect::<BTreeSet<_>>(),
    ));
    let job = SshJob {
        client: b.client.clone(),
        bar: progress.bar(),
        gone: gone_rx,
        keys: keys_rx,
        console_keys,
        deadline,
        ready_timeout,
        waiting: waiting.clone(),
    };
    let mut jobs = Vec::new();
    for row in running {
        let t = target(&row, b.cluster)?;
        jobs.push((row, t, job.clone()));
    }
    let waits = ssh::fan_out(jobs, b.ctx.ssh.max_parallel, |(row, t, job)| {
        answer_ssh(job, row, t)
    });
    let say = async {
        loop {
            tokio::time::sleep(SAY_EVERY).await;
            let names: Vec<(String, Option<String>)> = waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|n| (n.clone(), None))
                .collect();
            progress.waiting_for(&names);
        }
    };
    let results = b
        .interrupt
        .race(async {
            tokio::select! {
                biased;
                r = waits => Ok(r),
                e = console => Err(e),
                () = watch_gone(b, selector, watch_ids, gone_tx) => {
                    Err(Error::runtime("the watch on the nodes ended"))
                }
                () = say => Err(Error::runtime("the progress reporter ended")),
            }
        })
        .await?;
    let mut found = SshOutcome {
        outcome: Outcome::default(),
        intercepted: None,
    };
    for (mut row, r) in results {
        match r {
            Ok(key) => {
                if row.host_key.is_none() {
                    b.ctx.store.set_host_key(&row.instance_id, &key)?;
                    row.host_key = Some(key);
                }
                found.outcome.up.push(row);
            }
            Err((message, fatal)) => {
                found.outcome.dead.insert(row.instance_id.clone());
                if fatal && found.intercepted.is_none() {
                    found.intercepted = Some(message.clone());
                }
                found.outcome.failed.push(Failure::of(&row, message));
            }
        }
    }
    Ok(found)
}

/// Tells `gone` which of `watch_ids` the provider reports gone (or no longer reports at all
/// past its consistency grace), looking at the waits' pace. Never returns while anyone listens.
async fn watch_gone<P: Provider>(
    b: &Batch<'_, P>,
    selector: &Selector,
    watch_ids: BTreeMap<String, Millis>,
    gone: tokio::sync::watch::Sender<BTreeSet<String>>,
) {
    let grace = millis_of(b.provider.consistency_grace());
    let mut pace = Pace::polling();
    loop {
        tokio::time::sleep(pace.next()).await;
        // Throttled or failing: the SSH waits go on, and this looks again next round.
        let Ok(Some(found)) = look(b, selector).await else {
            continue;
        };
        let now = now_millis();
        let left: BTreeSet<String> = watch_ids
            .iter()
            .filter(|(id, launched)| match found.get(*id) {
                Some(i) => i.state.is_gone(),
                None => now - **launched > grace,
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !left.is_empty() && gone.send(left).is_err() {
            // Nobody waits any more; neither does this.
            std::future::pending::<()>().await;
        }
    }
}

/// One node's SSH wait: its key from the console first where that is how keys are pinned, then
/// SSH must present that key. The host key it presented, or why not (and whether that is an
/// interception, which fails the whole launch).
async fn answer_ssh(
    mut job: SshJob,
    mut row: NodeRow,
    mut t: Target,
) -> (NodeRow, Result<String, (String, bool)>) {
    let id = row.instance_id.clone();
    let name = t.name.clone();
    let gone_message = || format!("{} was terminated before it answered SSH", t.name);
    if job.console_keys && row.host_key.is_none() {
        let read = tokio::select! {
            r = job.keys.wait_for(|k| k.contains_key(&id)) => match r {
                Ok(k) => k[&id].clone(),
                Err(_) => Err(format!("{}: the console reader ended", t.name)),
            },
            _ = job.gone.wait_for(|g| g.contains(&id)) => Err(gone_message()),
        };
        match read {
            Ok((line, key)) => {
                t.host_key = Some(key);
                row.host_key = Some(line);
            }
            Err(e) => return (row, Err((e, false))),
        }
    }
    let remaining = job
        .deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let wait = job.client.wait_ready(&t, remaining);
    let r = tokio::select! {
        r = wait => r.map_err(|e| {
            let fatal = matches!(e, ssh::SshError::HostKeyMismatch { .. });
            let e = match e {
                // Report the profile's timeout, which the user set, not what was left.
                ssh::SshError::Timeout { node, addr, last, .. } => ssh::SshError::Timeout {
                    node,
                    addr,
                    after: job.ready_timeout,
                    last,
                },
                other => other,
            };
            (one_line(&e), fatal)
        }),
        _ = job.gone.wait_for(|g| g.contains(&id)) => Err((gone_message(), false)),
    };
    job.waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    match r {
        Ok(session) => {
            let key = ssh::public_key_openssh(&session.host_key);
            session.close().await;
            count_up(&job.bar, 1);
            (row, Ok(key))
        }
        Err(e) => (row, Err(e)),
    }
}

/// What a node's phase file says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Done,
    Failed(String),
    /// What it is doing (empty: nothing reported yet).
    At(String),
}

impl Phase {
    /// The last line of the file decides.
    fn of(text: &str) -> Phase {
        let last = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("");
        let shown = crate::core::text::escape(last);
        if last == "done" {
            Phase::Done
        } else if last.starts_with("failed") {
            Phase::Failed(shown)
        } else {
            Phase::At(shown)
        }
    }
}

/// Waits until each of `up` reports `done` in its phase file, each within `secs` of now (when it
/// answered SSH). A node that reports `failed…`, times out or is reported gone fails (and, a
/// worker, is replaced). Each node's phase is shown as it goes, with how long it has been at it.
pub(crate) async fn boot<P: Provider>(
    b: &Batch<'_, P>,
    selector: &Selector,
    up: Vec<NodeRow>,
    secs: u64,
    progress: &Progress<'_>,
) -> Result<Outcome, Error> {
    progress.phase("waiting for the install", up.len());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut pace = Pace::polling();
    let grace = millis_of(b.provider.consistency_grace());
    // Per node: its target, and its phase with when it began.
    let mut left: Vec<(NodeRow, Target, Phase, Instant)> = Vec::new();
    for row in up {
        let t = target(&row, b.cluster)?;
        left.push((row, t, Phase::At(String::new()), started));
    }
    let mut outcome = Outcome::default();
    loop {
        b.interrupt.sleep(pace.next_until(deadline)).await?;
        let mut reads: Vec<Option<Phase>> = Vec::with_capacity(left.len());
        for chunk in left.chunks(b.ctx.ssh.max_parallel.max(1)) {
            let read = chunk.iter().map(|(_, t, _, _)| read_phase(b.client, t));
            reads.extend(futures_util::future::join_all(read).await);
        }
        let gone = look(b, selector).await?;
        let now = Instant::now();
        let mut still = Vec::new();
        for ((row, t, was, since), read) in left.into_iter().zip(reads) {
            let gone_now = gone
                .as_ref()
                .is_some_and(|f| match f.get(&row.instance_id) {
                    Some(i) => i.state.is_gone(),
                    None => now_millis() - row.launched_at > grace,
                });
            let phase = read.unwrap_or_else(|| was.clone());
            let since = if phase != was { now } else { since };
            let message = match &phase {
                _ if gone_now => Some(format!("{} was terminated during its install", t.name)),
                Phase::Done => {
                    progress.count(1);
                    outcome.up.push(row);
                    continue;
                }
                Phase::Failed(why) => Some(format!("{} reports its install {why}", t.name)),
                Phase::At(at) if now >= deadline => Some(format!(
                    "{} did not finish its install within {secs}s (the profile's boot_timeout_secs); last phase: {}",
                    t.name,
                    if at.is_empty() { "none reported" } else { at }
                )),
                Phase::At(_) => None,
            };
            match message {
                Some(m) => {
                    outcome.dead.insert(row.instance_id.clone());
                    outcome.failed.push(Failure::of(&row, m));
                }
                None => still.push((row, t, phase, since)),
            }
        }
        left = still;
        if left.is_empty() {
            return Ok(outcome);
        }
        let shown: Vec<(String, Option<String>)> = left
            .iter()
            .map(|(_, t, phase, since)| {
                let at = match phase {
                    Phase::At(a) if !a.is_empty() => a.as_str(),
                    _ => "booting",
                };
                (
                    t.name.clone(),
                    Some(format!("{at}, {}", clock(since.elapsed()))),
                )
            })
            .collect();
        progress.detail(&summary(&shown));
        progress.waiting_for(&shown);
    }
}

/// The phases the nodes report, most common first: `downloading hadoop ×12, booting ×2`.
fn summary(shown: &[(String, Option<String>)]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, doing) in shown {
        let phase = doing
            .as_deref()
            .and_then(|d| d.rsplit_once(", ").map(|(p, _)| p))
            .unwrap_or("booting");
        *counts.entry(phase).or_default() += 1;
    }
    let mut by: Vec<(&str, usize)> = counts.into_iter().collect();
    by.sort_by_key(|p| std::cmp::Reverse(p.1));
    by.iter()
        .map(|(p, n)| format!("{p} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node's phase over SSH; `None` if it cannot be read now (SSH drops while a node installs).
async fn read_phase(client: &Client, t: &Target) -> Option<Phase> {
    let session = match client.connect(t).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("{}: {e}; reading its phase at the next round", t.name);
            return None;
        }
    };
    let out = session.exec(PHASE_COMMAND, None).await;
    session.close().await;
    match out {
        Ok(out) => Some(Phase::of(&String::from_utf8_lossy(&out.stdout))),
        Err(e) => {
            tracing::debug!("{}: {e}; reading its phase at the next round", t.name);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_of_a_phase_file_decides() {
        assert_eq!(Phase::of("installing java\ndone\n"), Phase::Done);
        assert_eq!(
            Phase::of("downloading hadoop\nfailed: no source answered\n"),
            Phase::Failed("failed: no source answered".into())
        );
        assert_eq!(
            Phase::of("installing java\n\n"),
            Phase::At("installing java".into())
        );
        assert_eq!(Phase::of(""), Phase::At(String::new()));
        // A hostile phase cannot draw on the user's terminal.
        assert_eq!(
            Phase::of("\u{1b}[2Jwiped"),
            Phase::At("\\u{1b}[2Jwiped".into())
        );
    }

    #[test]
    fn the_summary_counts_nodes_per_phase_most_common_first() {
        let shown = vec![
            ("a".to_owned(), Some("downloading hadoop, 1m05s".to_owned())),
            ("b".to_owned(), Some("downloading hadoop, 1m04s".to_owned())),
            ("c".to_owned(), Some("booting, 5s".to_owned())),
        ];
        assert_eq!(summary(&shown), "downloading hadoop ×2, booting ×1");
    }
}
