//! The commands that look at clusters and use them: list, login, exec, push, proxy,
//! update-slaves-file.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::client::{self, call};
use super::fresh_cluster;
use super::table::Table;
use crate::cluster::configure::update_workers_file;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::launch::console_host_key;
use crate::cluster::meta::target_of;
use crate::cluster::provider::Provider;
use crate::cluster::ssh::{self, Client, ExecOutput};
use crate::core::error::Error;
use crate::core::model::{ClusterName, Role, node_name};
use crate::core::printer::Printer;
use crate::service::app::App;
use crate::service::caller::Caller;
use crate::service::protocol::{ClusterView, Request};
use crate::store::{ClusterRow, NodeRow};

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
    state: &'a str,
    created_at: String,
    nodes: Vec<NodeJson<'a>>,
}

/// An RFC 3339 time as local minutes, for tables.
fn local_time(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// The clusters a `Request::List` names, as the runner (or the same code in-process) answers.
async fn list_views(
    app: &App,
    caller: &Caller,
    request: Request,
) -> Result<Vec<ClusterView>, Error> {
    let answer = call(app, caller, request).await?;
    serde_json::from_value(answer)
        .map_err(|e| Error::runtime(format!("the runner's answer is not a list: {e}")))
}

pub(super) async fn list(
    app: &App,
    caller: &Caller,
    name: Option<&str>,
    all: bool,
    (owner, everyone): (Option<String>, bool),
    json: bool,
) -> Result<ExitCode, Error> {
    let name = name.map(ClusterName::parse).transpose()?;
    let views = list_views(
        app,
        caller,
        Request::List {
            name: name.as_ref().map(|n| n.to_string()),
            all,
            owner,
            everyone,
        },
    )
    .await?;
    if json {
        let out: Vec<ClusterJson> = views
            .iter()
            .map(|c| ClusterJson {
                name: &c.name,
                owner: &c.owner,
                profile: &c.profile,
                provider: &c.provider,
                state: &c.state,
                created_at: c.created_at.clone(),
                nodes: c.nodes.iter().map(|n| node_json(&c.name, n)).collect(),
            })
            .collect();
        app.printer.json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        app.printer.status(format!(
            "no clusters{}; launch one with `{} launch-cluster NAME N`",
            if all {
                ""
            } else {
                " (`list --all` shows ended ones)"
            },
            super::invocation()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if name.is_some() {
        for c in &views {
            let cname = ClusterName::parse(&c.name)?;
            let mut t = Table::new(&["NODE", "ROLE", "STATE", "ADDRESS", "TYPE", "INSTANCE"]);
            for n in &c.nodes {
                t.row(vec![
                    node_name(&cname, n.role, n.index),
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
                c.state,
                c.profile,
                c.provider,
                local_time(&c.created_at)
            ))?;
            if let Some(f) = &c.failure {
                app.printer
                    .out(format!("failure: {}", f.lines().next().unwrap_or("")))?;
            }
            for note in &c.notes {
                app.printer.out(format!("note: {note}"))?;
            }
            app.printer.out(t.render())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "NAME", "OWNER", "STATE", "PROFILE", "PROVIDER", "RUNNING", "CREATED",
    ]);
    for c in &views {
        let running = c.nodes.iter().filter(|n| n.state.is_billed()).count();
        t.row(vec![
            c.name.clone(),
            c.owner.clone(),
            c.state.clone(),
            c.profile.clone(),
            c.provider.clone(),
            format!("{running}/{}", c.nodes.len()),
            local_time(&c.created_at),
        ]);
    }
    app.printer.out(t.render())?;
    for c in views.iter().filter(|c| !c.notes.is_empty()) {
        for note in &c.notes {
            app.printer.out(format!("{}: {note}", c.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn node_json<'a>(cluster: &str, n: &'a NodeRow) -> NodeJson<'a> {
    NodeJson {
        id: &n.instance_id,
        name: ClusterName::parse(cluster)
            .map(|c| node_name(&c, n.role, n.index))
            .unwrap_or_default(),
        role: n.role,
        state: n.state.as_str(),
        address: n.address.as_deref(),
        private_address: n.private_address.as_deref(),
        ssh_port: n.ssh_port,
        instance_type: &n.instance_type,
    }
}

/// A cluster to reach over SSH: its nodes, the user, and the key files, as the caller holds
/// them (the state directory's own in a single-user install; the runner's answer and the key
/// it handed over in a multi-user one).
struct Reach {
    view: ClusterView,
    name: ClusterName,
    keys: ClusterKeys,
    /// Single-user: the row, so a first contact's host key can be pinned in the store.
    row: Option<ClusterRow>,
}

impl Reach {
    /// The nodes a command acts on: the running master, or every running node.
    fn targets(&self, all: bool) -> Result<Vec<NodeRow>, Error> {
        let nodes: Vec<NodeRow> = self
            .view
            .nodes
            .iter()
            .filter(|n| !n.state.is_gone() && (all || n.role == Role::Master))
            .cloned()
            .collect();
        if nodes.is_empty() {
            return Err(Error::runtime(format!(
                "cluster {} has no running {}",
                self.name,
                if all { "nodes" } else { "master" }
            )));
        }
        Ok(nodes)
    }

    fn target(&self, n: &NodeRow) -> Result<ssh::Target, Error> {
        target_of(n, &self.name, &self.view.ssh_user)
    }
}

/// The caller's live cluster of this name, ready to be reached.
async fn reach(app: &App, caller: &Caller, name: &str) -> Result<Reach, Error> {
    let cname = ClusterName::parse(name)?;
    if !client::multi_user(app) {
        let row = fresh_cluster(app, &caller.owner, name).await?;
        let view = crate::service::serve::view(app, &row)?;
        return Ok(Reach {
            keys: ClusterKeys::of(&app.state_dir, &row),
            view,
            name: cname,
            row: Some(row),
        });
    }
    let mut views = list_views(
        app,
        caller,
        Request::List {
            name: Some(name.to_owned()),
            all: false,
            owner: None,
            everyone: false,
        },
    )
    .await?;
    let view = views
        .pop()
        .ok_or_else(|| crate::core::error::InputError::UnknownCluster(name.to_owned()))?;
    if !crate::core::model::ClusterState::parse(&view.state).is_some_and(|s| s.is_live()) {
        return Err(Error::invalid(format!(
            "cluster {} is {}",
            view.name, view.state
        )));
    }
    let mut keys = client::keys_of(app, &view);
    if !keys.private_key().exists() {
        // Launched from another machine of this user: the runner hands the key over again.
        let answer = call(
            app,
            caller,
            Request::Key {
                name: name.to_owned(),
            },
        )
        .await?;
        let key = answer["private_key"]
            .as_str()
            .ok_or_else(|| Error::runtime("the runner's answer holds no key"))?;
        keys = client::keep_key(app, &view, key)?;
    }
    keys.write_known_hosts(&view.nodes)?;
    Ok(Reach {
        view,
        name: cname,
        keys,
        row: None,
    })
}

fn client_for(app: &App, reach: &Reach) -> Result<Client, Error> {
    let key = reach.keys.load()?;
    Ok(Client::new(key, app.ctx().connect_timeout()))
}

/// Pins the host keys of nodes never reached over SSH yet (a cluster launched with
/// `--no-configure` in a single-user install): from the node's console where the provider reads
/// keys there (EC2's `host_keys = "console"`), else on this first contact; every later
/// connection insists on them. The runner of a multi-user install pins every key itself.
async fn pin_first_contact(
    app: &App,
    reach: &Reach,
    client: &Client,
    nodes: &mut [NodeRow],
) -> Result<(), Error> {
    for n in nodes.iter_mut().filter(|n| n.host_key.is_none()) {
        let Some(row) = &reach.row else {
            return Err(Error::runtime(format!(
                "{} has no pinned host key; ask your instructor to run `stratus reconcile`",
                node_name(&reach.name, n.role, n.index)
            )));
        };
        let t = reach.target(n)?;
        // Built once per command (`App::provider` keeps it).
        let provider = app.provider(row.provider).await?;
        let provider = provider.as_ref();
        let key = if provider.host_keys_from_console() {
            let timeout = Duration::from_secs(row.record.profile.ready_timeout_secs);
            let key = console_host_key(provider, &n.instance_id, &t.name, timeout).await?;
            tracing::info!(node = %t.name, key = %ssh::fingerprint(&key), "pinned the host key its console shows");
            ssh::public_key_openssh(&key)
        } else {
            let session = client.connect(&t).await?;
            let key = ssh::public_key_openssh(&session.host_key);
            session.close().await;
            tracing::info!(node = %t.name, "pinned its host key on first contact");
            key
        };
        app.store.set_host_key(&n.instance_id, &key)?;
        n.host_key = Some(key);
    }
    Ok(())
}

/// What exec and push connect to: the master (or every node), host keys pinned, with a client
/// holding the cluster key.
async fn connect_plan(
    app: &App,
    reach: &Reach,
    all: bool,
) -> Result<(Client, Vec<ssh::Target>), Error> {
    let mut nodes = reach.targets(all)?;
    let client = client_for(app, reach)?;
    pin_first_contact(app, reach, &client, &mut nodes).await?;
    let targets = nodes
        .iter()
        .map(|n| reach.target(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((client, targets))
}

#[derive(Serialize)]
struct ExecJson {
    node: String,
    exit_status: Option<u32>,
    stdout: String,
    stderr: String,
    error: Option<String>,
}

pub(super) async fn exec(
    app: &App,
    caller: &Caller,
    name: &str,
    all: bool,
    json: bool,
    command: &str,
) -> Result<ExitCode, Error> {
    let reach = reach(app, caller, name).await?;
    let (client, jobs) = connect_plan(app, &reach, all).await?;
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

pub(super) async fn push(
    app: &App,
    caller: &Caller,
    name: &str,
    file: &std::path::Path,
    dest: Option<&str>,
    all: bool,
) -> Result<ExitCode, Error> {
    use std::os::unix::fs::PermissionsExt;
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
    let reach = reach(app, caller, name).await?;
    let (client, jobs) = connect_plan(app, &reach, all).await?;
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
        reach.name
    ));
    Ok(ExitCode::SUCCESS)
}

/// The system `ssh`, by absolute path: never whatever a PATH entry names.
fn ssh_program() -> Result<&'static str, Error> {
    ["/usr/bin/ssh", "/bin/ssh", "/usr/local/bin/ssh"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .ok_or_else(|| {
            Error::runtime("cannot find OpenSSH's ssh in /usr/bin, /bin or /usr/local/bin")
        })
}

pub(super) async fn login(
    app: &App,
    caller: &Caller,
    name: &str,
    ssh_args: &[String],
) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let reach = reach(app, caller, name).await?;
    let mut masters = reach.targets(false)?;
    pin_first_contact(app, &reach, &client_for(app, &reach)?, &mut masters).await?;
    let master = masters.remove(0);
    let mut nodes = reach.view.nodes.clone();
    for n in nodes.iter_mut() {
        if n.instance_id == master.instance_id {
            n.host_key = master.host_key.clone();
        }
    }
    reach.keys.write_known_hosts(&nodes)?;
    let address = master
        .address
        .clone()
        .ok_or_else(|| Error::runtime("the master has no address"))?;
    let mut cmd = std::process::Command::new(ssh_program()?);
    cmd.arg("-i")
        .arg(reach.keys.private_key())
        .args(["-o", "IdentitiesOnly=yes"])
        .arg("-o")
        // Quoted: ssh splits option values on whitespace.
        .arg(format!(
            "UserKnownHostsFile=\"{}\"",
            reach.keys.known_hosts().display()
        ))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "UpdateHostKeys=no"])
        .arg("-p")
        .arg(master.ssh_port.to_string())
        .arg("-l")
        .arg(&reach.view.ssh_user)
        // The host first: OpenSSH reads options after it too, and the first word that is not
        // one starts a remote command (`login demo -- -o BatchMode=yes hostname`). The options
        // above come first, and for ssh the first value of an option wins, so the ones set here
        // (the key, the known_hosts file, strict checking) cannot be changed after `--`.
        .arg(&address)
        .args(ssh_args);
    tracing::debug!(?cmd, "exec");
    let err = cmd.exec();
    Err(Error::runtime("cannot run ssh").with_source(err))
}

/// A SOCKS5 proxy on 127.0.0.1:`port` through the master, until interrupted.
pub(super) async fn proxy(
    app: &App,
    caller: &Caller,
    name: &str,
    port: u16,
) -> Result<ExitCode, Error> {
    let reach = reach(app, caller, name).await?;
    let mut masters = reach.targets(false)?;
    let client = client_for(app, &reach)?;
    pin_first_contact(app, &reach, &client, &mut masters).await?;
    let session = Arc::new(client.connect(&reach.target(&masters[0])?).await?);
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| Error::runtime(format!("cannot listen on 127.0.0.1:{port}")).with_source(e))?;
    let bound = listener.local_addr()?.port();
    // The port on stdout, alone, so a script can read it (`--port 0`).
    app.printer.out(bound)?;
    let master_private = masters[0]
        .private_address
        .clone()
        .or_else(|| masters[0].address.clone())
        .unwrap_or_default();
    app.printer.status(format!(
        "SOCKS5 proxy into cluster {} on 127.0.0.1:{bound}, through its master; ^C to stop\n  e.g. curl --socks5-hostname 127.0.0.1:{bound} http://{master_private}:PORT/ (Hadoop's UIs: 9870 the NameNode, 8088 the ResourceManager)",
        reach.name
    ));
    crate::cluster::proxy::serve(listener, session, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn update_slaves_file(
    app: &App,
    caller: &Caller,
    name: &str,
) -> Result<ExitCode, Error> {
    if client::multi_user(app) {
        return Err(Error::invalid(
            "in a multi-user install the runner keeps the workers file up to date (launch-slaves)",
        ));
    }
    let cluster = fresh_cluster(app, &caller.owner, name).await?;
    let n = update_workers_file(app.ctx(), &cluster).await?;
    app.printer.status(format!(
        "workers file of {} lists {n} workers",
        cluster.name
    ));
    Ok(ExitCode::SUCCESS)
}
