//! The commands that look at clusters and use them: list, login, exec, push, proxy,
//! update-slaves-file.

use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use super::Hint;
use super::client::Client;
use super::launch::expect;
use super::table::Table;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::meta::target_of;
use crate::cluster::ssh::{self, Client as SshClient, ExecOutput};
use crate::core::error::Error;
use crate::core::model::{ClusterName, ClusterState, Role, node_name, span_text};
use crate::core::printer::Printer;
use crate::service::protocol::{ClusterView, Request, Response};
use crate::store::NodeRow;

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
    /// RFC 3339, or null when no lifetime applies: the name is the contract.
    deadline: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_reason: Option<&'a str>,
    nodes: Vec<NodeJson<'a>>,
}

/// An RFC 3339 time as local minutes, for tables.
fn local_time(rfc3339: &str) -> String {
    super::table::local_rfc3339(rfc3339, "%Y-%m-%d %H:%M")
}

pub(super) async fn list(
    client: &Client,
    hint: &Hint,
    name: Option<&str>,
    all: bool,
    (owner, everyone): (Option<String>, bool),
    json: bool,
) -> Result<ExitCode, Error> {
    let name = name.map(ClusterName::parse).transpose()?;
    let answer = client
        .call(Request::List {
            name: name.as_ref().map(|n| n.to_string()),
            all,
            owner,
            everyone,
        })
        .await?;
    let views = expect!(answer, Response::Clusters);
    let printer = client.printer();
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
                deadline: c.deadline.as_deref(),
                ended_by: c.ended_by.as_deref(),
                ended_reason: c.ended_reason.as_deref(),
                nodes: c.nodes.iter().map(|n| node_json(&c.name, n)).collect(),
            })
            .collect();
        printer.json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        printer.status(format!(
            "no clusters{}; launch one with `{} launch-cluster NAME N`",
            if all {
                ""
            } else {
                " (`list --all` shows ended ones)"
            },
            hint
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
            printer.out(format!(
                "cluster {} ({}, profile {}, {} provider, created {})",
                c.name,
                c.state,
                c.profile,
                c.provider,
                local_time(&c.created_at)
            ))?;
            if let Some(f) = &c.failure {
                printer.out(format!("failure: {}", f.lines().next().unwrap_or("")))?;
            }
            for note in &c.notes {
                printer.out(format!("note: {note}"))?;
            }
            printer.out(t.render())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "NAME", "OWNER", "STATE", "PROFILE", "PROVIDER", "RUNNING", "CREATED", "DEADLINE",
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
            deadline_text(c),
        ]);
    }
    printer.out(t.render())?;
    for c in views.iter().filter(|c| !c.notes.is_empty()) {
        for note in &c.notes {
            printer.out(format!("{}: {note}", c.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A live cluster's deadline and the time left (`2026-12-03 16:00 (1 h 59 min left)`); `-`
/// for none, or an ended cluster.
pub(super) fn deadline_text(c: &ClusterView) -> String {
    let live = ClusterState::parse(&c.state).is_some_and(|s| s.is_live());
    match c.deadline.as_deref().filter(|_| live) {
        None => "-".into(),
        Some(d) => {
            let left = d
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond() - crate::core::model::now_millis())
                .unwrap_or(0);
            if left > 0 {
                format!("{} ({} left)", local_time(d), span_text(left))
            } else {
                format!("{} (passed)", local_time(d))
            }
        }
    }
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
/// them, every host key it reaches pinned by the service first.
struct Reach {
    view: ClusterView,
    name: ClusterName,
    keys: ClusterKeys,
}

impl Reach {
    /// The caller's live cluster of this name, ready to be reached on its master (every node,
    /// with `all`).
    async fn of(client: &Client, name: &str, all: bool) -> Result<Self, Error> {
        let cname = ClusterName::parse(name)?;
        let answer = client
            .call(Request::Reach {
                name: name.to_owned(),
                all,
            })
            .await?;
        let keyed = expect!(answer, Response::Key);
        let keys = client.keep(&keyed)?;
        Ok(Self {
            view: keyed.cluster,
            name: cname,
            keys,
        })
    }

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
        if let Some(n) = nodes.iter().find(|n| n.host_key.is_none()) {
            return Err(Error::runtime(format!(
                "{} has no pinned host key; stratus does not connect to it",
                node_name(&self.name, n.role, n.index)
            )));
        }
        Ok(nodes)
    }

    fn target(&self, n: &NodeRow) -> Result<ssh::Target, Error> {
        target_of(n, &self.name, &self.view.ssh_user)
    }

    /// What exec and push connect to: the master (or every node), with a client holding the
    /// cluster key.
    fn plan(&self, client: &Client, all: bool) -> Result<(SshClient, Vec<ssh::Target>), Error> {
        let targets = self
            .targets(all)?
            .iter()
            .map(|n| self.target(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.ssh_client(client)?, targets))
    }

    fn ssh_client(&self, client: &Client) -> Result<SshClient, Error> {
        Ok(SshClient::new(self.keys.load()?, client.connect_timeout()))
    }
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
    client: &Client,
    name: &str,
    all: bool,
    json: bool,
    command: &str,
) -> Result<ExitCode, Error> {
    let reach = Reach::of(client, name, all).await?;
    let (ssh_client, jobs) = reach.plan(client, all)?;
    let command = command.to_owned();
    let results = ssh::fan_out(jobs, client.max_parallel(), move |t| {
        let ssh_client = ssh_client.clone();
        let command = command.clone();
        async move {
            let r = async {
                let s = ssh_client.connect(&t).await?;
                let out = s.exec(&command, None).await;
                s.close().await;
                out
            }
            .await;
            (t.name, r)
        }
    })
    .await;
    let printer = client.printer();
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
            report.push(exec_json(node, r));
        } else if let Ok(out) = r {
            if all {
                print_prefixed(printer, node, out)?;
            } else {
                printer.out_bytes(&out.stdout)?;
                printer.err_bytes(&out.stderr)?;
            }
        }
    }
    if json {
        printer.json(&report)?;
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

fn exec_json(node: &str, r: &Result<ExecOutput, ssh::SshError>) -> ExecJson {
    let (exit_status, stdout, stderr, error) = match r {
        Ok(o) => (
            o.status,
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            None,
        ),
        Err(e) => (None, String::new(), String::new(), Some(e.to_string())),
    };
    ExecJson {
        node: node.to_owned(),
        exit_status,
        stdout,
        stderr,
        error,
    }
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
    client: &Client,
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
    let reach = Reach::of(client, name, all).await?;
    let (ssh_client, jobs) = reach.plan(client, all)?;
    let data = Arc::new(data);
    let dest2 = dest.clone();
    let results = ssh::fan_out(jobs, client.max_parallel(), move |t| {
        let ssh_client = ssh_client.clone();
        let data = data.clone();
        let dest = dest2.clone();
        async move {
            let s = ssh_client.connect(&t).await?;
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
    client.printer().status(format!(
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
    client: &Client,
    name: &str,
    ssh_args: &[String],
) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let reach = Reach::of(client, name, false).await?;
    let master = reach.targets(false)?.remove(0);
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
pub(super) async fn proxy(client: &Client, name: &str, port: u16) -> Result<ExitCode, Error> {
    let reach = Reach::of(client, name, false).await?;
    let masters = reach.targets(false)?;
    let session = Arc::new(
        reach
            .ssh_client(client)?
            .connect(&reach.target(&masters[0])?)
            .await?,
    );
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| Error::runtime(format!("cannot listen on 127.0.0.1:{port}")).with_source(e))?;
    let bound = listener.local_addr()?.port();
    // The port on stdout, alone, so a script can read it (`--port 0`).
    client.printer().out(bound)?;
    let master_private = masters[0]
        .private_address
        .clone()
        .or_else(|| masters[0].address.clone())
        .unwrap_or_default();
    client.printer().status(format!(
        "SOCKS5 proxy into cluster {} on 127.0.0.1:{bound}, through its master; ^C to stop\n  e.g. curl --socks5-hostname 127.0.0.1:{bound} http://{master_private}:PORT/ (Hadoop's UIs: 9870 the NameNode, 8088 the ResourceManager)",
        reach.name
    ));
    crate::cluster::proxy::serve(listener, session, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn update_slaves_file(client: &Client, name: &str) -> Result<ExitCode, Error> {
    let answer = client
        .call(Request::UpdateWorkers {
            name: name.to_owned(),
        })
        .await?;
    let w = expect!(answer, Response::WorkersFile);
    client.printer().status(format!(
        "workers file of {} lists {} workers",
        w.cluster, w.workers
    ));
    Ok(ExitCode::SUCCESS)
}
