//! The runner: what serves a request of the privileged path, in a multi-user install as the
//! process the setuid wrapper execs (`stratus runner --config FILE`, running with the service
//! account's effective uid), and in a single-user install in-process, with the same checks.
//!
//! As a process it trusts nothing the caller controls:
//! - its environment is cut down to an allow-list before anything else runs (the wrapper already
//!   built a fresh one; this is the second fence), and the site config path comes from the argv
//!   the wrapper was installed with;
//! - the caller is the user of the real uid, and the caller's groups come from the group
//!   database; once known, every uid and gid becomes the service account's (`setresuid`), so the
//!   caller can no longer signal, stop or trace the runner; core dumps are off (memory holds
//!   secrets); the signals of the caller's terminal, which reach the runner whatever its uid
//!   (it is in the caller's job), are ignored, but for ^C and a hangup during a launch, which
//!   roll it back;
//! - it reads exactly one request, at most 1 MiB, and checks every field again; a profile is
//!   resolved by name only, in the install's profile directories;
//! - every decision is one row in the append-only audit table and one line to syslog, with
//!   control characters escaped.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use super::policy::{Policy, PolicyError};
use super::protocol::{ClusterView, Launched, Line, MAX_REQUEST, Request};
use super::{Admission, report};
use crate::app::{App, Settings};
use crate::caller::Caller;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::launch::{self, LaunchRequest};
use crate::cluster::provider::Provider;
use crate::cluster::terminate::live_nodes;
use crate::cluster::{observe, reconcile, terminate};
use crate::config::{Mode, ProviderKind};
use crate::error::{Error, InputError};
use crate::model::{ClusterName, Owner, RequestId, now_millis};
use crate::printer::Printer;
use crate::store::{AuditRecord, ClusterRow};

/// The policy as loaded for a request: present, absent (no file), or broken. Loaded once per
/// request, so the size of the policy it carries costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LoadedPolicy {
    Present(Policy),
    Absent(std::path::PathBuf),
    Broken(PolicyError),
    /// No site config names a place for one (single-user, no config file).
    None,
}

impl LoadedPolicy {
    pub fn load(app: &App) -> Self {
        let Some(path) = app.config.policy_path(app.config_path.as_deref()) else {
            return LoadedPolicy::None;
        };
        if !path.exists() {
            return LoadedPolicy::Absent(path);
        }
        match Policy::load(&path) {
            Ok(p) => LoadedPolicy::Present(p),
            Err(e) => LoadedPolicy::Broken(e),
        }
    }

    /// The policy a launch must pass: required in a multi-user install, optional otherwise
    /// (without one nothing is limited). A broken file refuses in both.
    fn for_launch(&self, mode: Mode) -> Result<Option<&Policy>, Error> {
        match self {
            LoadedPolicy::Present(p) => Ok(Some(p)),
            LoadedPolicy::Broken(e) => Err(Error::invalid(format!(
                "{}; every launch is refused until it is fixed",
                crate::error::one_line(e)
            ))),
            LoadedPolicy::Absent(path) if mode == Mode::MultiUser => Err(Error::invalid(format!(
                "the policy file {} does not exist; every launch is refused until the instructor writes it",
                path.display()
            ))),
            LoadedPolicy::Absent(_) | LoadedPolicy::None => Ok(None),
        }
    }

    fn present(&self) -> Option<&Policy> {
        match self {
            LoadedPolicy::Present(p) => Some(p),
            _ => None,
        }
    }
}

/// Escapes what must not reach a log line or the audit table raw: control characters (newlines
/// included, which would forge a second entry), the Unicode line and paragraph separators (a
/// newline to many readers), the bidirectional controls (which make a line display as something
/// else than it says), and backslashes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_separator_or_bidi(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// U+2028 and U+2029, and the characters that change the direction of text (Unicode's
/// `Bidi_Control`).
fn is_separator_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{2028}'
            | '\u{2029}'
            | '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// Records one decision: a row in the audit table and a line to syslog.
fn audit(app: &App, record: AuditRecord) {
    let record = AuditRecord {
        user: escape(&record.user),
        action: escape(&record.action),
        cluster: record.cluster.as_deref().map(escape),
        decision: escape(&record.decision),
        reason: record.reason.as_deref().map(escape),
        instances: record.instances.iter().map(|i| escape(i)).collect(),
        at: record.at,
    };
    // Every field quoted (Debug escapes quotes and backslashes), so no value can pose as a
    // second field.
    let line = format!(
        "user={:?} action={:?} cluster={:?} decision={:?}{}{}",
        record.user,
        record.action,
        record.cluster.as_deref().unwrap_or("-"),
        record.decision,
        record
            .reason
            .as_deref()
            .map(|r| format!(" reason={r:?}"))
            .unwrap_or_default(),
        if record.instances.is_empty() {
            String::new()
        } else {
            format!(" instances={}", record.instances.join(","))
        }
    );
    if let Err(e) = app.store.audit(&record, now_millis()) {
        tracing::error!("cannot write the audit trail: {e}");
    }
    crate::sys::syslog(&line);
}

/// What else the runner reads that decides what it does for a caller, checked as the wrapper
/// checks the config (owned by root or the service account, writable by no one else, every
/// ancestor too): the policy (what each user may launch) and the profiles (what runs, and what
/// the runner reads into user-data). A student who could write one could raise their own quota
/// or have the runner read the service account's files for them. Returns every problem.
pub fn unsafe_inputs(
    config: &crate::config::SiteConfig,
    config_path: Option<&Path>,
    trusted: setuid_wrap::safepath::Trusted<'_>,
) -> Vec<String> {
    use setuid_wrap::safepath::{RealFs, Want, check};
    let mut problems = Vec::new();
    if let Some(policy) = config.policy_path(config_path)
        && std::fs::symlink_metadata(&policy).is_ok()
        && let Err(e) = check(&RealFs, "the policy", &policy, Want::File, trusted)
    {
        problems.push(e);
    }
    if let Some(dir) = &config.profiles_dir {
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            if let Err(e) = check(&RealFs, "the profiles directory", &d, Want::Dir, trusted) {
                problems.push(e);
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if let Err(e) =
                    check(&RealFs, "the profile file", &path, Want::File, trusted)
                {
                    problems.push(e);
                }
            }
        }
    }
    problems
}

/// The entry point of `stratus runner --config FILE` (exec'd by the setuid wrapper).
pub fn main(config: &Path, verbose: u8) -> ExitCode {
    // Before any thread exists: cut the environment down, no core dumps, and the caller's
    // terminal can no longer stop or end this process (a launch's own handler turns ^C and a
    // hangup into a rollback).
    crate::sys::keep_only_environment(&["PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG"], "LC_");
    let _ = crate::sys::no_core_dumps();
    let ignored = crate::sys::ignore_terminal_signals();
    let printer = Printer::lines();
    let fail = |printer: &Printer, message: String, exit: u8| {
        let _ = printer.line(&Line::Error { message, exit });
        ExitCode::from(exit)
    };
    if let Err(e) = ignored {
        return fail(
            &printer,
            format!("cannot ignore the terminal's signals: {e}"),
            1,
        );
    }
    // Logs go to stderr (the caller's terminal, through the wrapper); the answer is the JSON
    // lines on stdout.
    crate::init_logging(None, verbose);
    let caller = match Caller::from_real_uid() {
        Ok(c) => c,
        Err(e) => return fail(&printer, crate::error::one_line(&e), 1),
    };
    // The caller is known: from now on every id is the service account's, so the caller can
    // neither signal nor trace this process.
    if let Err(e) = crate::sys::become_effective_user() {
        return fail(
            &printer,
            format!("cannot switch to the service account: {e}"),
            1,
        );
    }
    // A request that cannot be read is refused, and audited once the install is known to be
    // safe and the store is open (below).
    let request = read_request();
    let settings = match Settings::for_service(config) {
        Ok(s) => s,
        Err(e) => return fail(&printer, crate::error::one_line(&e), e.exit_code()),
    };
    let me = crate::sys::effective_uid();
    let name = crate::sys::passwd(me)
        .ok()
        .flatten()
        .map_or_else(|| me.to_string(), |p| p.name);
    let trusted = setuid_wrap::safepath::Trusted {
        uid: me,
        user: &name,
    };
    if let Some(problem) = unsafe_inputs(&settings.config, settings.config_path.as_deref(), trusted)
        .into_iter()
        .next()
    {
        return fail(&printer, problem, 1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&printer, format!("cannot start the async runtime: {e}"), 1),
    };
    let printer = Arc::new(printer);
    let code = runtime.block_on(async {
        let app = match App::new(settings, printer.clone()) {
            Ok(a) => a,
            Err(e) => return fail(&printer, crate::error::one_line(&e), e.exit_code()),
        };
        let ticker = {
            let printer = printer.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    printer.tick();
                }
            })
        };
        let request = match request {
            Ok(r) => r,
            Err(message) => {
                ticker.abort();
                audit(
                    &app,
                    AuditRecord {
                        at: String::new(),
                        user: caller.owner.to_string(),
                        action: "request".into(),
                        cluster: None,
                        decision: "refused".into(),
                        reason: Some(shortened(&message, 300)),
                        instances: Vec::new(),
                    },
                );
                return fail(&printer, message, 2);
            }
        };
        let policy = LoadedPolicy::load(&app);
        let r = serve(&app, &caller, &policy, request).await;
        ticker.abort();
        printer.tick();
        match r {
            Ok(value) => {
                let _ = printer.line(&Line::Result(value));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&printer, crate::error::one_line(&e), e.exit_code()),
        }
    });
    runtime.shutdown_background();
    code
}

/// At most `max` characters of `s`, marked when cut (a parser's message may quote the input).
fn shortened(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// One request from stdin: at most `MAX_REQUEST` bytes of JSON.
fn read_request() -> Result<Request, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_REQUEST as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if buf.len() > MAX_REQUEST {
        return Err(format!(
            "the request is larger than {} bytes; refused unread",
            MAX_REQUEST
        ));
    }
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("no request on stdin".into());
    }
    serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}"))
}

/// Whose clusters a request may touch: the caller's own, or (instructors) anyone's.
fn owner_for(caller: &Caller, policy: &LoadedPolicy, asked: Option<&str>) -> Result<Owner, Error> {
    match asked {
        None => Ok(caller.owner.clone()),
        Some(o) if o == caller.owner.as_str() => Ok(caller.owner.clone()),
        Some(o) => {
            let owner = Owner::parse(o)?;
            if is_instructor(caller, policy) {
                Ok(owner)
            } else {
                Err(Error::invalid(format!(
                    "only instructors may act on another user's clusters ({} asked for {o}'s)",
                    caller.owner
                )))
            }
        }
    }
}

/// Root, or an instructor by the policy. Root can read the state database and the credentials
/// anyway; refusing `sudo stratus admin audit` would protect nothing.
fn is_instructor(caller: &Caller, policy: &LoadedPolicy) -> bool {
    caller.uid == 0
        || policy
            .present()
            .is_some_and(|p| p.is_instructor(caller.owner.as_str(), &caller.groups))
}

/// A cluster with its nodes, as its owner or an instructor sees it.
pub fn view(app: &App, c: &ClusterRow) -> Result<ClusterView, Error> {
    Ok(ClusterView {
        id: c.id,
        name: c.name.to_string(),
        owner: c.owner.to_string(),
        profile: c.profile.clone(),
        provider: c.provider.to_string(),
        state: c.state.as_str().to_owned(),
        created_at: crate::model::rfc3339(c.created_at),
        failure: c.failure.clone(),
        ssh_user: c.record.profile.ssh_user.clone(),
        notes: c
            .reap_after
            .filter(|_| c.state.is_live())
            .map(|after| {
                format!(
                    "the reaper terminates this cluster after {}: {}",
                    crate::model::rfc3339(after),
                    c.reap_reason.as_deref().unwrap_or("it breaks the policy")
                )
            })
            .into_iter()
            .chain(abandoned(app, c).then(|| {
                // In a multi-user install the runner reconciles before every launch and
                // terminate; a student's own `reconcile` does not reach its state.
                let by = if app.config.mode == Mode::MultiUser {
                    "the next launch or terminate rolls it back"
                } else {
                    "the next launch or terminate, or `stratus reconcile`, rolls it back"
                };
                format!("its launch was cut off (the launching process is gone): {by}")
            }))
            .collect(),
        nodes: app.store.nodes_of(c.id)?,
    })
}

/// A launch in progress whose launcher died (killed, or its machine rebooted): what reconcile
/// rolls back. Only read here, never acted on.
fn abandoned(app: &App, c: &ClusterRow) -> bool {
    use crate::cluster::locks::{LaunchLock, Launcher};
    use crate::model::ClusterState;
    matches!(
        c.state,
        ClusterState::Reserved | ClusterState::Requested | ClusterState::Running
    ) && LaunchLock::launcher(&app.state_dir, &c.request_id) == Launcher::Died
}

/// The owner's cluster of this name: the live one, else the most recent; never a deleted one.
pub fn find_cluster(app: &App, owner: &Owner, name: &str) -> Result<ClusterRow, Error> {
    let name = ClusterName::parse(name)?;
    app.store
        .find_cluster(owner, &name)?
        .filter(|c| !c.hidden)
        .ok_or_else(|| InputError::UnknownCluster(name.to_string()).into())
}

/// The accounting report of everyone's recorded usage in `[since, until)`, as the runner answers
/// it and the CLI prints it: the report, its CSV and table, and the types without a price.
pub fn report_answer(
    app: &App,
    by: crate::accounting::report::By,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Value, Error> {
    let since = since.map(crate::commands::parse_time).transpose()?;
    let until = until.map(crate::commands::parse_time).transpose()?;
    let r = crate::accounting::report_from_store(
        &app.store,
        &app.config,
        since,
        until,
        now_millis(),
        by,
    )?;
    Ok(serde_json::json!({
        "report": to_value(&r)?,
        "csv": r.csv(),
        "table": r.table(),
        "unknown_types": r.unknown_types,
    }))
}

/// Serves one request for `caller`. Every decision is audited.
pub async fn serve(
    app: &App,
    caller: &Caller,
    policy: &LoadedPolicy,
    request: Request,
) -> Result<Value, Error> {
    let action = request.action();
    let cluster = request.cluster().map(str::to_owned);
    let mut launched_by = None;
    let r = serve_inner(app, caller, policy, request, &mut launched_by).await;
    // A failed launch still names what it launched (and terminated again).
    let tried = || -> Vec<String> {
        launched_by
            .as_ref()
            .and_then(|req: &RequestId| app.store.nodes_of_request(req.as_str()).ok())
            .map(|nodes| ids(&nodes))
            .unwrap_or_default()
    };
    let (decision, reason, instances) = match &r {
        Ok((_, ids)) => ("done", None, ids.clone()),
        Err(e) if e.exit_code() == crate::error::exit::BAD_INPUT => {
            ("refused", Some(crate::error::one_line(e)), tried())
        }
        Err(e) => ("failed", Some(crate::error::one_line(e)), tried()),
    };
    // Reads are not decisions; only what changes something, and every refusal, is audited.
    if !matches!(action, "list" | "usage" | "quota" | "audit" | "report") || decision == "refused" {
        audit(
            app,
            AuditRecord {
                at: String::new(),
                user: caller.owner.to_string(),
                action: action.to_owned(),
                cluster,
                decision: decision.to_owned(),
                reason,
                instances,
            },
        );
    }
    r.map(|(v, _)| v)
}

/// Serves a request; returns the answer and the instance ids it launched or terminated.
async fn serve_inner(
    app: &App,
    caller: &Caller,
    loaded: &LoadedPolicy,
    request: Request,
    launched_by: &mut Option<RequestId>,
) -> Result<(Value, Vec<String>), Error> {
    let policy = loaded;
    match request {
        Request::Launch {
            name,
            workers,
            profile,
            env,
            configure,
        } => {
            let policy = policy.for_launch(app.config.mode)?;
            let name = ClusterName::parse(&name)?;
            if app.config.mode == Mode::MultiUser && app.config.provider == ProviderKind::Local {
                return Err(Error::invalid(
                    "a multi-user install does not run the local provider: its nodes would run as the service account",
                ));
            }
            let profile_name = profile.unwrap_or_else(|| app.default_profile());
            let profile = app.profiles.resolve(&profile_name)?;
            let env = crate::commands::check_env(env)?;
            let req = LaunchRequest {
                name,
                workers,
                profile,
                env,
                configure,
                // Without configuring, nobody connects: host keys stay unpinned, and the
                // owner's CLI refuses to connect to such nodes in a multi-user install.
                wait_for_ssh: configure,
                image_build: false,
            };
            let admission = match policy {
                Some(p) => Admission::new(p, &app.config, caller.owner.as_str(), &caller.groups),
                None => Admission::unlimited(),
            };
            let provider = app.provider(app.config.provider).await?;
            reconcile_first(app, provider.as_ref(), &caller.owner).await;
            let request = RequestId::new();
            *launched_by = Some(request.clone());
            let c = launch::launch(
                app.ctx(),
                provider.as_ref(),
                &caller.owner,
                &request,
                req,
                &admission,
            )
            .await?;
            let cluster = view(app, &c)?;
            let ids = ids(&cluster.nodes);
            let out = Launched {
                cluster,
                private_key: ClusterKeys::of(&app.state_dir, &c).load_text()?,
            };
            Ok((to_value(&out)?, ids))
        }
        Request::LaunchSlaves { name, count, owner } => {
            let policy = loaded.for_launch(app.config.mode)?;
            let owner = owner_for(caller, loaded, owner.as_deref())?;
            if count == 0 {
                return Err(Error::invalid("launch-slaves needs a count of at least 1"));
            }
            let c = find_cluster(app, &owner, &name)?;
            if !c.state.is_up() {
                return Err(Error::invalid(format!(
                    "cluster {} is {}; workers can be added once it is running",
                    c.name,
                    c.state.as_str()
                )));
            }
            let provider = app.provider(c.provider).await?;
            observe::refresh(app.ctx(), provider.as_ref(), std::slice::from_ref(&c)).await?;
            let admission = match policy {
                Some(p) => {
                    Admission::new(p, &app.config, owner.as_str(), &groups_of(&owner, caller))
                }
                None => Admission::unlimited(),
            };
            reconcile_first(app, provider.as_ref(), &owner).await;
            let request = RequestId::new();
            *launched_by = Some(request.clone());
            let added = launch::add_workers(
                app.ctx(),
                provider.as_ref(),
                &c,
                count,
                &request,
                &admission,
            )
            .await?;
            Ok((
                serde_json::json!({
                    "cluster": view(app, &c)?,
                    "added": added.iter().map(|n| crate::model::node_name(&c.name, n.role, n.index)).collect::<Vec<_>>(),
                }),
                ids(&added),
            ))
        }
        Request::Terminate { name, owner } => {
            let owner = owner_for(caller, policy, owner.as_deref())?;
            let c = find_cluster(app, &owner, &name)?;
            let before = ids(&live_nodes(app.ctx(), &c)?);
            let provider = app.provider(c.provider).await?;
            reconcile_first(app, provider.as_ref(), &owner).await;
            let n = terminate::terminate(app.ctx(), provider.as_ref(), &c).await?;
            Ok((
                serde_json::json!({ "cluster": c.name.to_string(), "terminated": n }),
                before,
            ))
        }
        Request::List {
            name,
            all,
            owner,
            everyone,
        } => {
            let owners: Option<Owner> = if everyone {
                if !is_instructor(caller, policy) {
                    return Err(Error::invalid(
                        "only instructors may list every user's clusters",
                    ));
                }
                None
            } else {
                Some(owner_for(caller, policy, owner.as_deref())?)
            };
            let name = name.as_deref().map(ClusterName::parse).transpose()?;
            let clusters = crate::commands::shown(
                app.store.list_clusters(owners.as_ref())?,
                name.as_ref(),
                all,
                now_millis(),
            );
            if let Some(n) = &name
                && clusters.is_empty()
            {
                return Err(InputError::UnknownCluster(n.to_string()).into());
            }
            crate::commands::refresh_all(app, &clusters).await;
            let views: Vec<ClusterView> = clusters
                .iter()
                .map(|c| view(app, c))
                .collect::<Result<_, _>>()?;
            Ok((to_value(&views)?, Vec::new()))
        }
        Request::Key { name } => {
            // The key goes to the cluster's owner and nobody else, instructors included.
            let c = find_cluster(app, &caller.owner, &name)?;
            let key = ClusterKeys::of(&app.state_dir, &c).load_text()?;
            Ok((
                serde_json::json!({ "cluster": view(app, &c)?, "private_key": key }),
                Vec::new(),
            ))
        }
        Request::Usage { owner, everyone } => {
            let owners: Option<Owner> = if everyone {
                if !is_instructor(caller, policy) {
                    return Err(Error::invalid("only instructors may see everyone's usage"));
                }
                None
            } else {
                Some(owner_for(caller, policy, owner.as_deref())?)
            };
            let clusters = app.store.list_clusters(owners.as_ref())?;
            crate::commands::refresh_all(app, &clusters).await;
            let intervals = app
                .store
                .intervals(&clusters.iter().map(|c| c.id).collect::<Vec<_>>())?;
            let rows = crate::accounting::usage_rows(
                &app.config,
                &clusters,
                &intervals,
                now_millis(),
                &mut Vec::new(),
            );
            Ok((to_value(&rows)?, Vec::new()))
        }
        Request::Quota => {
            if let LoadedPolicy::Broken(e) = policy {
                return Err(Error::invalid(crate::error::one_line(e)));
            }
            let r = report(
                &app.store,
                policy.present(),
                &app.config,
                caller.owner.as_str(),
                &caller.groups,
            )?;
            Ok((to_value(&r)?, Vec::new()))
        }
        Request::Report { by, since, until } => {
            if app.config.mode == Mode::MultiUser && !is_instructor(caller, policy) {
                return Err(Error::invalid(
                    "only instructors may read the accounting report",
                ));
            }
            Ok((
                report_answer(app, by, since.as_deref(), until.as_deref())?,
                Vec::new(),
            ))
        }
        Request::Audit { since } => {
            if !is_instructor(caller, policy) {
                return Err(Error::invalid("only instructors may read the audit trail"));
            }
            let since = match since.as_deref() {
                None => 0,
                Some(s) => crate::commands::parse_time(s)?,
            };
            Ok((to_value(&app.store.audit_since(since)?)?, Vec::new()))
        }
    }
}

/// The groups to apply the policy with: the caller's when acting on their own cluster, else the
/// owner's from the group database.
fn groups_of(owner: &Owner, caller: &Caller) -> Vec<String> {
    if *owner == caller.owner {
        return caller.groups.clone();
    }
    crate::caller::groups_of(owner)
}

fn ids(nodes: &[crate::store::NodeRow]) -> Vec<String> {
    nodes.iter().map(|n| n.instance_id.clone()).collect()
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::runtime(format!("cannot encode the answer: {e}")))
}

/// Finishes or undoes what crashed commands left behind, before one that launches or
/// terminates; a failure is reported, not fatal.
pub async fn reconcile_first<P: Provider>(app: &App, provider: &P, owner: &Owner) {
    let options = reconcile::Options::new(false);
    if let Err(e) = reconcile::reconcile(app.ctx(), provider, Some(owner), &options).await {
        app.printer.warn(format!(
            "could not reconcile leftovers first: {}",
            crate::error::one_line(&e)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcd", 3), "abc…");
        assert_eq!(shortened("ééé", 2), "éé…");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\u{a}b");
        assert_eq!(escape("x\u{1b}[31m"), "x\\u{1b}[31m");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("plain name"), "plain name");
        assert_eq!(escape("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        assert_eq!(escape("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(escape("\u{85}\u{9b}\u{7f}"), "\\u{85}\\u{9b}\\u{7f}");
        assert_eq!(escape("naïve café"), "naïve café");
    }
}
