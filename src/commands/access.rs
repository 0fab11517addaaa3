//! The commands that look at clusters and use them: list, login, exec, push, proxy,
//! update-slaves-file.

use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use super::table::Table;
use super::{fresh_cluster, refresh_all};
use crate::app::App;
use crate::cluster::configure::update_workers_file;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::meta::target;
use crate::cluster::ssh::{self, Client, ExecOutput};
use crate::cluster::terminate::live_nodes;
use crate::error::Error;
use crate::model::{ClusterName, Millis, Owner, Role, node_name, now_millis};
use crate::printer::Printer;
use crate::store::{ClusterRow, NodeRow};

/// How long an ended cluster stays on the default `list`.
const RECENT: Millis = 24 * 3600 * 1000;

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
    provider: &'static str,
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

/// Which clusters `list` shows: live ones and those that ended in the last day (all with
/// `all`); with a name, the live one of that name, else the most recent. Never one that
/// `delete-cluster` removed.
fn shown(
    clusters: Vec<ClusterRow>,
    name: Option<&ClusterName>,
    all: bool,
    now: Millis,
) -> Vec<ClusterRow> {
    let mut visible: Vec<ClusterRow> = clusters.into_iter().filter(|c| !c.hidden).collect();
    if let Some(n) = name {
        visible.retain(|c| c.name == *n);
        let pick = visible
            .iter()
            .rposition(|c| c.state.is_live())
            .or_else(|| visible.len().checked_sub(1));
        return pick.map(|i| visible.swap_remove(i)).into_iter().collect();
    }
    if !all {
        visible.retain(|c| {
            c.state.is_live() || now - c.terminated_at.unwrap_or(c.updated_at) < RECENT
        });
    }
    visible
}

pub(super) async fn list(
    app: &App,
    owner: &Owner,
    name: Option<&str>,
    all: bool,
    json: bool,
) -> Result<ExitCode, Error> {
    let name = name.map(ClusterName::parse).transpose()?;
    let clusters = shown(
        app.store.list_clusters(Some(owner))?,
        name.as_ref(),
        all,
        now_millis(),
    );
    if let Some(n) = &name
        && clusters.is_empty()
    {
        return Err(crate::error::InputError::UnknownCluster(n.to_string()).into());
    }
    refresh_all(app, &clusters).await;
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
                provider: c.provider.as_str(),
                state: c.state.as_str(),
                created_at: timestamp(c.created_at),
                nodes: nodes.iter().map(|n| node_json(c, n)).collect(),
            })
            .collect();
        app.printer.json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
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
            c.provider.to_string(),
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

/// The running nodes a command acts on: the master, or all of them.
fn targets(app: &App, cluster: &ClusterRow, all: bool) -> Result<Vec<NodeRow>, Error> {
    let nodes: Vec<NodeRow> = live_nodes(app.ctx(), cluster)?
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
    let key = ClusterKeys::of(&app.state_dir, cluster).load()?;
    Ok(Client::new(key, app.ctx().connect_timeout()))
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
        let t = target(n, cluster)?;
        let session = client.connect(&t).await?;
        let key = ssh::public_key_openssh(&session.host_key);
        session.close().await;
        app.store.set_host_key(&n.instance_id, &key)?;
        tracing::info!(node = %t.name, "pinned its host key on first contact");
        n.host_key = Some(key);
    }
    Ok(())
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
        .map(|n| target(n, cluster))
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
    owner: &Owner,
    name: &str,
    all: bool,
    json: bool,
    command: &str,
) -> Result<ExitCode, Error> {
    let cluster = fresh_cluster(app, owner, name).await?;
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

pub(super) async fn push(
    app: &App,
    owner: &Owner,
    name: &str,
    file: &std::path::Path,
    dest: Option<&str>,
    all: bool,
) -> Result<ExitCode, Error> {
    use std::os::unix::fs::PermissionsExt;
    let cluster = fresh_cluster(app, owner, name).await?;
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
    owner: &Owner,
    name: &str,
    ssh_args: &[String],
) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let cluster = fresh_cluster(app, owner, name).await?;
    let mut masters = targets(app, &cluster, false)?;
    pin_first_contact(app, &cluster, &client_for(app, &cluster)?, &mut masters).await?;
    let master = masters.remove(0);
    let keys = ClusterKeys::of(&app.state_dir, &cluster);
    keys.write_known_hosts(&live_nodes(app.ctx(), &cluster)?)?;
    let address = master
        .address
        .clone()
        .ok_or_else(|| Error::runtime("the master has no address"))?;
    let mut cmd = std::process::Command::new(ssh_program()?);
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
    Err(Error::runtime("cannot run ssh").with_source(err))
}

/// A SOCKS5 proxy on 127.0.0.1:`port` through the master, until interrupted.
pub(super) async fn proxy(
    app: &App,
    owner: &Owner,
    name: &str,
    port: u16,
) -> Result<ExitCode, Error> {
    let cluster = fresh_cluster(app, owner, name).await?;
    let mut masters = targets(app, &cluster, false)?;
    let client = client_for(app, &cluster)?;
    pin_first_contact(app, &cluster, &client, &mut masters).await?;
    let session = Arc::new(client.connect(&target(&masters[0], &cluster)?).await?);
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| Error::runtime(format!("cannot listen on 127.0.0.1:{port}")).with_source(e))?;
    let bound = listener.local_addr()?.port();
    // The port on stdout, alone, so a script can read it (`--port 0`).
    app.printer.out(bound)?;
    app.printer.status(format!(
        "SOCKS5 proxy into cluster {} on 127.0.0.1:{bound}, through {}; ^C to stop\n  e.g. curl --socks5-hostname 127.0.0.1:{bound} http://MASTER-PRIVATE-ADDRESS:9870/",
        cluster.name, masters[0].instance_id
    ));
    crate::cluster::proxy::serve(listener, session, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn update_slaves_file(
    app: &App,
    owner: &Owner,
    name: &str,
) -> Result<ExitCode, Error> {
    let cluster = fresh_cluster(app, owner, name).await?;
    let n = update_workers_file(app.ctx(), &cluster).await?;
    app.printer.status(format!(
        "workers file of {} lists {n} workers",
        cluster.name
    ));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterState, ProviderKind, RequestId};
    use crate::store::ClusterRecord;

    fn row(id: i64, name: &str, state: ClusterState, ended: Option<Millis>) -> ClusterRow {
        ClusterRow {
            id,
            name: ClusterName::parse(name).unwrap(),
            owner: Owner::parse("alice").unwrap(),
            profile: "p".into(),
            provider: ProviderKind::Local,
            state,
            request_id: RequestId::new(),
            created_at: 0,
            updated_at: ended.unwrap_or(0),
            terminated_at: ended,
            failure: None,
            record: ClusterRecord {
                profile: crate::cluster::profile::Profile::for_tests("p"),
                env: Default::default(),
            },
            hidden: false,
        }
    }

    #[test]
    fn list_shows_live_and_recent_clusters_and_one_per_name() {
        let now = 10 * RECENT;
        let clusters = vec![
            row(1, "demo", ClusterState::Terminated, Some(now - 2 * RECENT)),
            row(2, "demo", ClusterState::Configured, None),
            row(3, "old", ClusterState::Failed, Some(now - 2 * RECENT)),
            row(4, "fresh", ClusterState::Terminated, Some(now - 1000)),
        ];
        let ids = |v: Vec<ClusterRow>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(shown(clusters.clone(), None, false, now)), vec![2, 4]);
        assert_eq!(
            ids(shown(clusters.clone(), None, true, now)),
            vec![1, 2, 3, 4]
        );
        let demo = ClusterName::parse("demo").unwrap();
        assert_eq!(
            ids(shown(clusters.clone(), Some(&demo), false, now)),
            vec![2]
        );
        let old = ClusterName::parse("old").unwrap();
        assert_eq!(
            ids(shown(clusters.clone(), Some(&old), false, now)),
            vec![3]
        );
        let mut hidden = clusters;
        hidden[3].hidden = true;
        assert_eq!(ids(shown(hidden, None, true, now)), vec![1, 2, 3]);
    }
}
