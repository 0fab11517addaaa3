//! The commands: each resolves its arguments into validated domain types (names, counts,
//! profiles, env), then calls the cluster lifecycle and prints through the printer.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use crate::accounting;
use crate::app::App;
use crate::cli::{Cli, Command, LaunchOptions, ProfilesAction};
use crate::cluster::launch::{self, ClusterKeys, LaunchRequest};
use crate::cluster::provider::Provider;
use crate::cluster::ssh::{self, Client, ExecOutput};
use crate::cluster::{ClusterName, Role, node_name};
use crate::config::{ProviderKind, SiteConfig};
use crate::error::{Error, InputError};
use crate::printer::Printer;
use crate::store::{ClusterRow, NodeRow, now_millis};

/// Runs `$body` with `$p` bound to the provider of kind `$kind`.
macro_rules! with_provider {
    ($app:expr, $kind:expr, |$p:ident| $body:expr) => {
        match $kind {
            ProviderKind::Local => {
                let $p = $app.local_provider()?;
                $body
            }
            ProviderKind::Ec2 => {
                let Some(ec2) = $app.config.ec2.as_ref() else {
                    return Err(Error::invalid(
                        "this cluster is on ec2, but the site config has no [ec2] table",
                    ));
                };
                let $p = crate::cluster::provider::ec2::Ec2Provider::new(ec2).await?;
                $body
            }
        }
    };
}

fn provider_kind(s: &str) -> Result<ProviderKind, Error> {
    match s {
        "local" => Ok(ProviderKind::Local),
        "ec2" => Ok(ProviderKind::Ec2),
        other => Err(Error::runtime(format!(
            "unknown provider {other:?} in the state database"
        ))),
    }
}

pub async fn run(cli: Cli, printer: Arc<Printer>) -> Result<ExitCode, Error> {
    let (config, config_path) = SiteConfig::load(
        cli.config.as_deref(),
        std::env::var_os("STRATUS_CONFIG")
            .filter(|v| !v.is_empty())
            .as_deref()
            .map(std::path::Path::new),
    )?;
    let var = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
    let state_dir = crate::config::state_dir(
        var("STRATUS_HOME").as_deref(),
        var("XDG_DATA_HOME").as_deref(),
        var("HOME").as_deref(),
    )?;
    let app = App::new(config, config_path, state_dir, printer)?;
    match cli.command {
        Command::LaunchCluster(a) => {
            if a.count == 0 {
                return Err(Error::invalid(
                    "a cluster needs at least 1 worker; use launch-master for a master alone",
                ));
            }
            launch_cmd(&app, &a.name, a.count, &a.options).await
        }
        Command::LaunchMaster(a) => launch_cmd(&app, &a.name, 0, &a.options).await,
        Command::LaunchSlaves { name, count } => launch_slaves(&app, &name, count).await,
        Command::List { name, json } => list(&app, name.as_deref(), json).await,
        Command::Login { name, ssh_args } => login(&app, &name, &ssh_args).await,
        Command::Exec {
            name,
            all,
            json,
            command,
        } => exec(&app, &name, all, json, &command.join(" ")).await,
        Command::Push {
            name,
            file,
            dest,
            all,
        } => push(&app, &name, &file, dest.as_deref(), all).await,
        Command::UpdateSlavesFile { name } => {
            let cluster = fresh_cluster(&app, &name).await?;
            let n = launch::update_workers_file(&app, &cluster).await?;
            app.printer.status(format!(
                "workers file of {} lists {n} workers",
                cluster.name
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::TerminateCluster { name, yes } => terminate(&app, &name, yes).await,
        Command::DeleteCluster { name } => reconcile_cmds::delete_cluster(&app, &name).await,
        Command::Reconcile { dry_run, json } => {
            reconcile_cmds::reconcile(&app, dry_run, json).await
        }
        Command::Usage { json } => usage(&app, json).await,
        Command::Profiles { action } => profiles(&app, action),
        Command::Node { .. } => Err(Error::runtime("__node is handled before the app starts")),
    }
}

/// Finishes or undoes what crashed or interrupted commands left behind, before a command that
/// launches or terminates (DESIGN.md: reconcile runs at the start of launch and terminate). A
/// failure here is reported, not fatal: the command itself may still work.
async fn reconcile_first<P: Provider>(app: &App, provider: &P) {
    let options = crate::cluster::reconcile::Options::new(false);
    if let Err(e) = crate::cluster::reconcile::reconcile(app, provider, &options).await {
        app.printer.warn(format!(
            "could not reconcile leftovers first: {}",
            crate::error::render(&e).trim_start_matches("error: ")
        ));
    }
}

/// `--env K=V` pairs, with keys fit for `{{env.KEY}}`.
pub fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut env = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--env {p:?}: expected KEY=VALUE")))?;
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::invalid(format!(
                "--env {p:?}: the key must be letters, digits and '_', not starting with a digit"
            )));
        }
        env.insert(k.to_owned(), v.to_owned());
    }
    Ok(env)
}

async fn launch_cmd(
    app: &App,
    name: &str,
    workers: u32,
    opts: &LaunchOptions,
) -> Result<ExitCode, Error> {
    let name = ClusterName::parse(name)?;
    let profile_name = opts
        .profile
        .clone()
        .unwrap_or_else(|| app.default_profile());
    let profile = app.profiles.resolve(&profile_name)?;
    let env = parse_env(&opts.env)?;
    let req = LaunchRequest {
        name,
        workers,
        profile,
        env,
        configure: !opts.no_configure,
    };
    let kind = app.config.provider;
    let cluster = with_provider!(app, kind, |p| {
        reconcile_first(app, &p).await;
        launch::launch(app, &p, req).await?
    });
    let nodes = launch::live_nodes(app, &cluster)?;
    let workers = nodes.iter().filter(|n| n.role == Role::Worker).count();
    app.printer.out(format!(
        "cluster {} is up: 1 master + {workers} workers (profile {}, {} provider)\nlog in with: stratus login {}",
        cluster.name, cluster.profile, cluster.provider, cluster.name
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The caller's live cluster of this name.
fn live_cluster(app: &App, name: &str) -> Result<ClusterRow, Error> {
    let name = ClusterName::parse(name)?;
    match app.store.find_cluster(&app.owner, &name)? {
        Some(c) if c.state.is_live() => Ok(c),
        Some(c) => Err(Error::invalid(format!(
            "cluster {} is {}",
            c.name,
            c.state.as_str()
        ))),
        None => Err(InputError::UnknownCluster(name.to_string()).into()),
    }
}

/// The caller's live cluster of this name, with its nodes' states refreshed from the provider
/// first: a node that died since the last look is no longer a target, nor in a workers file.
async fn fresh_cluster(app: &App, name: &str) -> Result<ClusterRow, Error> {
    let cluster = live_cluster(app, name)?;
    refresh_all(app, std::slice::from_ref(&cluster)).await?;
    Ok(cluster)
}

/// What exec and push connect to: the master (or every node), host keys pinned, with a client
/// holding the cluster key.
async fn connect_plan(
    app: &App,
    cluster: &ClusterRow,
    all: bool,
) -> Result<(Client, Vec<ssh::Target>), Error> {
    let mut nodes = targets(app, cluster, all)?;
    let client = client_for(app, cluster)?;
    pin_first_contact(app, cluster, &client, &mut nodes).await?;
    let targets = nodes
        .iter()
        .map(|n| launch::target(n, cluster))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((client, targets))
}

/// Pins the host keys of nodes never reached over SSH yet (a cluster launched with
/// `--no-configure`), on this first contact, so every later connection insists on them.
async fn pin_first_contact(
    app: &App,
    cluster: &ClusterRow,
    client: &Client,
    nodes: &mut [NodeRow],
) -> Result<(), Error> {
    for n in nodes.iter_mut().filter(|n| n.host_key.is_none()) {
        let t = launch::target(n, cluster)?;
        let session = client.connect(&t).await?;
        let key = ssh::public_key_openssh(&session.host_key);
        session.close().await;
        app.store.set_host_key(&n.instance_id, &key)?;
        tracing::info!(node = %t.name, "pinned its host key on first contact");
        n.host_key = Some(key);
    }
    Ok(())
}

async fn launch_slaves(app: &App, name: &str, count: u32) -> Result<ExitCode, Error> {
    let cluster = fresh_cluster(app, name).await?;
    if !matches!(
        cluster.state,
        crate::store::ClusterState::Running | crate::store::ClusterState::Configured
    ) {
        return Err(Error::invalid(format!(
            "cluster {} is {}; workers can be added once it is running",
            cluster.name,
            cluster.state.as_str()
        )));
    }
    if count == 0 {
        return Err(Error::invalid("launch-slaves needs a count of at least 1"));
    }
    let kind = provider_kind(&cluster.provider)?;
    let added = with_provider!(app, kind, |p| {
        reconcile_first(app, &p).await;
        launch::add_workers(app, &p, &cluster, count).await?
    });
    let names: Vec<String> = added
        .iter()
        .map(|n| node_name(&cluster.name, n.role, n.index))
        .collect();
    app.printer
        .out(format!("added {} to {}", names.join(", "), cluster.name))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct NodeJson<'a> {
    id: &'a str,
    name: String,
    role: Role,
    state: &'static str,
    address: Option<&'a str>,
    private_address: Option<&'a str>,
    ssh_port: u16,
    instance_type: &'a str,
}

#[derive(Serialize)]
struct ClusterJson<'a> {
    name: &'a str,
    owner: &'a str,
    profile: &'a str,
    provider: &'a str,
    state: &'static str,
    created_at: String,
    nodes: Vec<NodeJson<'a>>,
}

fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn local_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// Refreshes the store from every provider the caller's clusters use.
async fn refresh_all(app: &App, clusters: &[ClusterRow]) -> Result<(), Error> {
    let mut kinds: Vec<ProviderKind> = Vec::new();
    for c in clusters {
        let k = provider_kind(&c.provider)?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    for kind in kinds {
        let r: Result<(), Error> =
            async { with_provider!(app, kind, |p| launch::refresh(app, &p, clusters).await) }.await;
        if let Err(e) = r {
            app.printer.warn(format!(
                "cannot refresh from the {kind} provider; showing what was last recorded: {}",
                crate::error::render(&e).trim_start_matches("error: ")
            ));
        }
    }
    Ok(())
}

async fn list(app: &App, name: Option<&str>, json: bool) -> Result<ExitCode, Error> {
    let mut clusters = app.store.list_clusters(Some(&app.owner))?;
    if let Some(n) = name {
        let n = ClusterName::parse(n)?;
        clusters.retain(|c| c.name == n);
        if clusters.is_empty() {
            return Err(InputError::UnknownCluster(n.to_string()).into());
        }
    }
    refresh_all(app, &clusters).await?;
    let mut rows = Vec::new();
    for c in &clusters {
        rows.push((c, app.store.nodes_of(c.id)?));
    }
    if json {
        let out: Vec<ClusterJson> = rows
            .iter()
            .map(|(c, nodes)| ClusterJson {
                name: c.name.as_str(),
                owner: c.owner.as_str(),
                profile: &c.profile,
                provider: &c.provider,
                state: c.state.as_str(),
                created_at: timestamp(c.created_at),
                nodes: nodes.iter().map(|n| node_json(c, n)).collect(),
            })
            .collect();
        app.printer.json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        app.printer
            .status("no clusters; launch one with `stratus launch-cluster NAME N`");
        return Ok(ExitCode::SUCCESS);
    }
    if name.is_some() {
        for (c, nodes) in &rows {
            let mut t = Table::new(&["NODE", "ROLE", "STATE", "ADDRESS", "TYPE", "INSTANCE"]);
            for n in nodes {
                t.row(vec![
                    node_name(&c.name, n.role, n.index),
                    n.role.to_string(),
                    n.state.to_string(),
                    n.address.clone().unwrap_or_else(|| "-".into()),
                    n.instance_type.clone(),
                    n.instance_id.clone(),
                ]);
            }
            app.printer.out(format!(
                "cluster {} ({}, profile {}, {} provider, created {})",
                c.name,
                c.state.as_str(),
                c.profile,
                c.provider,
                local_time(c.created_at)
            ))?;
            if let Some(f) = &c.failure {
                app.printer
                    .out(format!("failure: {}", f.lines().next().unwrap_or("")))?;
            }
            app.printer.out(t.render())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["NAME", "STATE", "PROFILE", "PROVIDER", "RUNNING", "CREATED"]);
    for (c, nodes) in &rows {
        let running = nodes.iter().filter(|n| n.state.is_billed()).count();
        t.row(vec![
            c.name.to_string(),
            c.state.as_str().into(),
            c.profile.clone(),
            c.provider.clone(),
            format!("{running}/{}", nodes.len()),
            local_time(c.created_at),
        ]);
    }
    app.printer.out(t.render())?;
    Ok(ExitCode::SUCCESS)
}

fn node_json<'a>(c: &ClusterRow, n: &'a NodeRow) -> NodeJson<'a> {
    NodeJson {
        id: &n.instance_id,
        name: node_name(&c.name, n.role, n.index),
        role: n.role,
        state: n.state.as_str(),
        address: n.address.as_deref(),
        private_address: n.private_address.as_deref(),
        ssh_port: n.ssh_port,
        instance_type: &n.instance_type,
    }
}

/// A plain left-aligned text table.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }
    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i + 1 == cols {
                            c.clone()
                        } else {
                            format!("{c:<w$}", w = widths[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The running nodes a command acts on: the master, or all of them.
fn targets(app: &App, cluster: &ClusterRow, all: bool) -> Result<Vec<NodeRow>, Error> {
    let nodes: Vec<NodeRow> = launch::live_nodes(app, cluster)?
        .into_iter()
        .filter(|n| all || n.role == Role::Master)
        .collect();
    if nodes.is_empty() {
        return Err(Error::runtime(format!(
            "cluster {} has no running {}",
            cluster.name,
            if all { "nodes" } else { "master" }
        )));
    }
    Ok(nodes)
}

fn client_for(app: &App, cluster: &ClusterRow) -> Result<Client, Error> {
    let key = ClusterKeys::of(app, cluster).load()?;
    Ok(Client::new(key, launch::connect_timeout(app)))
}

#[derive(Serialize)]
struct ExecJson {
    node: String,
    exit_status: Option<u32>,
    stdout: String,
    stderr: String,
    error: Option<String>,
}

async fn exec(
    app: &App,
    name: &str,
    all: bool,
    json: bool,
    command: &str,
) -> Result<ExitCode, Error> {
    let cluster = fresh_cluster(app, name).await?;
    let (client, jobs) = connect_plan(app, &cluster, all).await?;
    let command = command.to_owned();
    let results = ssh::fan_out(jobs, app.config.ssh.max_parallel, move |t| {
        let client = client.clone();
        let command = command.clone();
        async move {
            let r = async {
                let s = client.connect(&t).await?;
                let out = s.exec(&command, None).await;
                s.close().await;
                out
            }
            .await;
            (t.name, r)
        }
    })
    .await;

    let mut failed: Vec<String> = Vec::new();
    let mut report = Vec::new();
    for (node, r) in &results {
        match r {
            Ok(out) if out.success() => {}
            Ok(out) => failed.push(format!(
                "{node} ({})",
                out.status
                    .map(|s| format!("exit status {s}"))
                    .unwrap_or_else(|| "no exit status".into())
            )),
            Err(e) => failed.push(format!("{node} ({e})")),
        }
        if json {
            let (exit_status, stdout, stderr, error) = match r {
                Ok(o) => (
                    o.status,
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                    None,
                ),
                Err(e) => (None, String::new(), String::new(), Some(e.to_string())),
            };
            report.push(ExecJson {
                node: node.clone(),
                exit_status,
                stdout,
                stderr,
                error,
            });
        } else if !all {
            if let Ok(out) = r {
                app.printer.out_bytes(&out.stdout)?;
                app.printer.err_bytes(&out.stderr)?;
            }
        } else if let Ok(out) = r {
            print_prefixed(&app.printer, node, out)?;
        }
    }
    if json {
        app.printer.json(&report)?;
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // A connection error is reported as such; a command that ran and failed names the nodes.
    let total = results.len();
    if !all && let Some(Err(e)) = results.into_iter().map(|(_, r)| r).find(Result::is_err) {
        return Err(e.into());
    }
    Err(Error::runtime(format!(
        "the command failed on {} of {} nodes: {}",
        failed.len(),
        total,
        failed.join(", ")
    )))
}

/// Prints a node's output with every line prefixed by its name.
fn print_prefixed(printer: &Printer, node: &str, out: &ExecOutput) -> std::io::Result<()> {
    for (bytes, to_err) in [(&out.stdout, false), (&out.stderr, true)] {
        if bytes.is_empty() {
            continue;
        }
        let mut buf = Vec::new();
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            buf.extend_from_slice(format!("[{node}] ").as_bytes());
            buf.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                buf.push(b'\n');
            }
        }
        if to_err {
            printer.err_bytes(&buf)?;
        } else {
            printer.out_bytes(&buf)?;
        }
    }
    Ok(())
}

async fn push(
    app: &App,
    name: &str,
    file: &std::path::Path,
    dest: Option<&str>,
    all: bool,
) -> Result<ExitCode, Error> {
    use std::os::unix::fs::PermissionsExt;
    let cluster = fresh_cluster(app, name).await?;
    let meta = std::fs::metadata(file)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file",
            file.display()
        )));
    }
    let data = std::fs::read(file)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))?;
    let dest = match dest {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(format!("{} has no usable file name", file.display())))?
            .to_owned(),
    };
    let mode = meta.permissions().mode() & 0o777;
    let (client, jobs) = connect_plan(app, &cluster, all).await?;
    let data = Arc::new(data);
    let dest2 = dest.clone();
    let results = ssh::fan_out(jobs, app.config.ssh.max_parallel, move |t| {
        let client = client.clone();
        let data = data.clone();
        let dest = dest2.clone();
        async move {
            let s = client.connect(&t).await?;
            let r = s.upload(&data, &dest, mode).await;
            s.close().await;
            r
        }
    })
    .await;
    let copies = results.len();
    for r in results {
        r?;
    }
    app.printer.status(format!(
        "copied {} to {dest} on {copies} node(s) of {}",
        file.display(),
        cluster.name
    ));
    Ok(ExitCode::SUCCESS)
}

async fn login(app: &App, name: &str, ssh_args: &[String]) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let cluster = fresh_cluster(app, name).await?;
    let mut masters = targets(app, &cluster, false)?;
    pin_first_contact(app, &cluster, &client_for(app, &cluster)?, &mut masters).await?;
    let master = masters.remove(0);
    let keys = ClusterKeys::of(app, &cluster);
    keys.write_known_hosts(&launch::live_nodes(app, &cluster)?)?;
    let address = master
        .address
        .clone()
        .ok_or_else(|| Error::runtime("the master has no address"))?;
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-i")
        .arg(keys.private_key())
        .args(["-o", "IdentitiesOnly=yes"])
        .arg("-o")
        // Quoted: ssh splits option values on whitespace.
        .arg(format!(
            "UserKnownHostsFile=\"{}\"",
            keys.known_hosts().display()
        ))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "UpdateHostKeys=no"])
        .arg("-p")
        .arg(master.ssh_port.to_string())
        .arg("-l")
        .arg(&cluster.record.profile.ssh_user)
        .args(ssh_args)
        .arg(&address);
    tracing::debug!(?cmd, "exec");
    let err = cmd.exec();
    Err(Error::runtime("cannot run ssh (is OpenSSH's client installed?)").with_source(err))
}

async fn terminate(app: &App, name: &str, yes: bool) -> Result<ExitCode, Error> {
    let cname = ClusterName::parse(name)?;
    let cluster = app
        .store
        .find_cluster(&app.owner, &cname)?
        .ok_or_else(|| InputError::UnknownCluster(cname.to_string()))?;
    let nodes = launch::live_nodes(app, &cluster)?;
    if cluster.state == crate::store::ClusterState::Terminated && nodes.is_empty() {
        app.printer
            .status(format!("cluster {} is already terminated", cluster.name));
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::invalid(format!(
                "refusing to terminate {} without confirmation: pass --yes",
                cluster.name
            )));
        }
        let question = format!(
            "Terminate cluster {} ({} nodes, profile {})? [y/N] ",
            cluster.name,
            nodes.len(),
            cluster.profile
        );
        app.printer.suspend(|| {
            use std::io::Write;
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "{question}");
            let _ = e.flush();
        });
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            app.printer.status("not terminated");
            return Ok(ExitCode::from(crate::error::exit::BAD_INPUT));
        }
    }
    let kind = provider_kind(&cluster.provider)?;
    let n = with_provider!(app, kind, |p| {
        reconcile_first(app, &p).await;
        launch::terminate(app, &p, &cluster).await?
    });
    app.printer
        .status(format!("terminated cluster {} ({n} nodes)", cluster.name));
    Ok(ExitCode::SUCCESS)
}

async fn usage(app: &App, json: bool) -> Result<ExitCode, Error> {
    let clusters = app.store.list_clusters(Some(&app.owner))?;
    refresh_all(app, &clusters).await?;
    let ids: Vec<i64> = clusters.iter().map(|c| c.id).collect();
    let intervals = app.store.intervals(&ids)?;
    let mut unknown = Vec::new();
    let rows = accounting::usage_rows(
        &app.config,
        &clusters,
        &intervals,
        now_millis(),
        &mut unknown,
    );
    if !unknown.is_empty() {
        app.printer.warn(format!(
            "no price known for {}; add them under [prices] in the site config",
            unknown.join(", ")
        ));
    }
    if json {
        app.printer.json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["CLUSTER", "PROFILE", "HOURS", "COST", "OPEN"]);
    let (mut hours, mut cost) = (0.0, 0.0);
    for r in &rows {
        hours += r.instance_hours;
        cost += r.estimated_cost;
        t.row(vec![
            r.cluster.clone(),
            r.profile.clone(),
            format!("{:.3}", r.instance_hours),
            format!("${:.2}", r.estimated_cost),
            if r.open { "yes".into() } else { "no".into() },
        ]);
    }
    t.row(vec![
        "total".into(),
        String::new(),
        format!("{hours:.3}"),
        format!("${cost:.2}"),
        String::new(),
    ]);
    app.printer.out(t.render())?;
    Ok(ExitCode::SUCCESS)
}

fn profiles(app: &App, action: Option<ProfilesAction>) -> Result<ExitCode, Error> {
    match action {
        None => {
            let mut t = Table::new(&["PROFILE", "DESCRIPTION", "SOURCE"]);
            let default = app.default_profile();
            for s in app.profiles.summaries() {
                let name = if s.name == default {
                    format!("{} (default)", s.name)
                } else {
                    s.name
                };
                t.row(vec![name, s.description, s.source]);
            }
            app.printer.out(t.render())?;
        }
        Some(ProfilesAction::Show { name }) => {
            let profile = app.profiles.resolve(&name)?;
            let mut value =
                serde_json::to_value(&profile).map_err(|e| Error::runtime(e.to_string()))?;
            if let Some(obj) = value.as_object_mut() {
                obj.remove("templates");
            }
            strip_nulls(&mut value);
            let text = toml::to_string_pretty(&value).map_err(|e| Error::runtime(e.to_string()))?;
            let templates: Vec<&String> = profile.templates.keys().collect();
            app.printer.out(format!(
                "# profile {} (resolved)\n# templates: {}\n{text}",
                profile.name,
                templates
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes null members (unset options), which TOML cannot express.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `reconcile` and `delete-cluster` (issue 3): the commands over `cluster::reconcile`.
mod reconcile_cmds {
    use super::*;
    use crate::cluster::reconcile;

    /// Reconciles the caller's clusters on every provider they use, and on the site's.
    pub async fn reconcile(app: &App, dry_run: bool, json: bool) -> Result<ExitCode, Error> {
        let mut kinds = vec![app.config.provider];
        for c in app.store.list_clusters(Some(&app.owner))? {
            let k = provider_kind(&c.provider)?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let mut actions = Vec::new();
        for kind in kinds {
            let done = with_provider!(app, kind, |p| reconcile::reconcile(
                app,
                &p,
                &reconcile::Options::new(dry_run)
            )
            .await?);
            actions.extend(done);
        }
        if json {
            app.printer.json(&actions)?;
        } else if actions.is_empty() {
            app.printer.status("nothing to reconcile");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn delete_cluster(app: &App, name: &str) -> Result<ExitCode, Error> {
        let name = ClusterName::parse(name)?;
        let kind = match app.store.find_cluster(&app.owner, &name)? {
            Some(c) => provider_kind(&c.provider)?,
            None => app.config.provider,
        };
        let deleted = with_provider!(app, kind, |p| reconcile::delete_cluster(app, &p, &name)
            .await?);
        app.printer.status(format!(
            "deleted what was left of cluster {name} ({} instances terminated)",
            deleted.instances.len()
        ));
        Ok(ExitCode::SUCCESS)
    }
}
