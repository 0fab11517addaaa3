//! `stratus admin`: the audit trail (instructors, through the runner), and the install of the
//! privileged path and its check (root).
//!
//! The install lays out this contract (`--prefix DIR`; without it the CLI and wrapper go under
//! /usr/local, the config in /etc/stratus and the state in /var/lib/stratus):
//!
//! | path | owner, mode | what |
//! | --- | --- | --- |
//! | `DIR/bin/stratus` | root, 0755 | the CLI (and the runner), which knows this install's config |
//! | `DIR/libexec/stratus/stratus-wrap` | service user, 04755, `cap_setgid=ep` | the wrapper |
//! | `DIR/etc/stratus/config.toml` | root, 0644 | the site config |
//! | `DIR/etc/stratus/policy.toml` | root, 0644 | the policy |
//! | `DIR/etc/stratus/aws-credentials` | service user, 0600 | the service account's keys |
//! | `DIR/var/lib/stratus/` | service user, 0700 | the state: database, cluster keys |
//! | `/etc/systemd/system/NAME.socket`, `NAME.service` | root, 0644 | the class service (`units`) |
//! | `/etc/cron.d/NAME` | root, 0644 | the accounting side, unless the service's timers run it |
//!
//! NAME is `stratus`, or `stratus-` and the prefix's components with `--prefix`. Every step is
//! idempotent: an instructor's config keys, policy and credentials are kept. Nothing is created
//! before the wrapper is known to be one (`wrapper_check`) and every path has been checked.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use setuid_wrap::placeholder::{self, WrapConfig};
use setuid_wrap::safepath::{self, RealFs, Trusted, Want};

use super::client::Client;
use super::launch::expect;
use super::units::{self, Unit};
use crate::cli::AdminAction;
use crate::config::{SiteConfig, Transport};
use crate::core::error::Error;
use crate::core::install_area;
use crate::core::printer::Printer;
use crate::policy::Policy;
use crate::service::protocol::{Request, Response};

/// Where systemd reads the units of the machine's administrator.
const SYSTEMD_UNITS: &str = "/etc/systemd/system";
/// Where cron reads system crontabs.
const CRON_DIR: &str = "/etc/cron.d";
/// The class service's sockets, in a directory of root's that systemd makes.
const SOCKET_DIR: &str = "/run/stratus";

/// The paths of an install.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `None` for the default install.
    pub prefix: Option<PathBuf>,
    pub cli: PathBuf,
    pub wrapper: PathBuf,
    pub config_dir: PathBuf,
    pub state: PathBuf,
    /// `stratus`, or `stratus-opt-class` for `--prefix /opt/class`: the name of the units and
    /// of the cron file, so that installs never share one.
    pub name: String,
    pub cron: PathBuf,
    pub units: PathBuf,
    /// The class service's socket: `/run/stratus/NAME.sock`.
    pub socket: PathBuf,
}

impl Layout {
    /// The layout of the install under `prefix` (the default one without): the prefix must be
    /// absolute and plain, of letters, digits, `.`, `_` and `-`, since it names files.
    pub fn new(prefix: Option<&Path>) -> Result<Self, Error> {
        let Some(p) = prefix else {
            return Ok(Self::with(
                None,
                PathBuf::from("/usr/local/bin/stratus"),
                PathBuf::from("/usr/local/libexec/stratus/stratus-wrap"),
                PathBuf::from("/etc/stratus"),
                PathBuf::from("/var/lib/stratus"),
                "stratus".into(),
            ));
        };
        let bad = |why: &str| {
            Error::invalid(format!(
                "--prefix {} {why}: it names the install's units and cron file, so use an \
                 absolute path of letters, digits, '.', '_' and '-'",
                p.display()
            ))
        };
        if !p.is_absolute() {
            return Err(bad("is not an absolute path"));
        }
        let mut parts = Vec::new();
        for c in p.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => {
                    let n = n.to_str().ok_or_else(|| bad("is not UTF-8"))?;
                    if !n
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    {
                        return Err(bad("holds other characters"));
                    }
                    parts.push(n.replace('.', "_"));
                }
                _ => return Err(bad("is not plain")),
            }
        }
        if parts.is_empty() {
            return Err(bad("is /"));
        }
        Ok(Self::with(
            Some(p.to_path_buf()),
            p.join("bin/stratus"),
            p.join("libexec/stratus/stratus-wrap"),
            p.join("etc/stratus"),
            p.join("var/lib/stratus"),
            format!("stratus-{}", parts.join("-")),
        ))
    }

    fn with(
        prefix: Option<PathBuf>,
        cli: PathBuf,
        wrapper: PathBuf,
        config_dir: PathBuf,
        state: PathBuf,
        name: String,
    ) -> Self {
        Self {
            prefix,
            cli,
            wrapper,
            config_dir,
            state,
            cron: Path::new(CRON_DIR).join(&name),
            units: PathBuf::from(SYSTEMD_UNITS),
            socket: Path::new(SOCKET_DIR).join(format!("{name}.sock")),
            name,
        }
    }

    /// The layout whose site config is `config` (what an installed CLI knows of its install).
    pub fn of_config(config: &Path) -> Option<Self> {
        if config == Path::new(crate::config::DEFAULT_CONFIG_PATH) {
            return Self::new(None).ok();
        }
        let prefix = config.strip_suffix_path("etc/stratus/config.toml")?;
        Self::new(Some(&prefix)).ok()
    }

    /// The prefix, or `/`, for messages and the files' headers.
    pub fn install(&self) -> String {
        self.prefix
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into())
    }
    pub fn config(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }
    pub fn policy(&self) -> PathBuf {
        self.config_dir.join("policy.toml")
    }
    pub fn credentials(&self) -> PathBuf {
        self.config_dir.join("aws-credentials")
    }
    pub fn socket_unit(&self) -> PathBuf {
        self.units.join(format!("{}.socket", self.name))
    }
    pub fn service_unit(&self) -> PathBuf {
        self.units.join(format!("{}.service", self.name))
    }
}

/// `Path::strip_suffix` for whole components: `/opt/x/etc/stratus/config.toml` less
/// `etc/stratus/config.toml` is `/opt/x`.
trait StripSuffix {
    fn strip_suffix_path(&self, suffix: &str) -> Option<PathBuf>;
}

impl StripSuffix for Path {
    fn strip_suffix_path(&self, suffix: &str) -> Option<PathBuf> {
        let mut p = self.to_path_buf();
        for part in Path::new(suffix).components().rev() {
            if p.file_name()? != part.as_os_str() {
                return None;
            }
            p.pop();
        }
        Some(p)
    }
}

pub(super) fn install_or_doctor(printer: &Printer, action: AdminAction) -> Result<ExitCode, Error> {
    match action {
        AdminAction::Install {
            prefix,
            service_user,
            wrapper,
        } => install(
            printer,
            prefix.as_deref(),
            &service_user,
            wrapper.as_deref(),
        ),
        AdminAction::Doctor {
            prefix,
            service_user,
        } => doctor(printer, prefix.as_deref(), service_user.as_deref()),
        AdminAction::Audit { .. }
        | AdminAction::Class { .. }
        | AdminAction::IamPolicy
        | AdminAction::Identities { .. }
        | AdminAction::Image { .. }
        | AdminAction::Preflight { .. } => Err(Error::runtime("not an install command")),
    }
}

/// One row of the audit trail for people: the time, then every field quoted (the trail holds
/// them escaped; a quote is escaped here), so no value can pose as another column.
fn audit_line(r: &crate::store::AuditRecord) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
    let mut line = format!(
        "{} {} {} {} {}",
        r.at,
        q(&r.user),
        q(&r.action),
        r.cluster.as_deref().map(q).unwrap_or_else(|| "-".into()),
        q(&r.decision)
    );
    if let Some(reason) = &r.reason {
        line.push_str(&format!(" {}", q(reason)));
    }
    if !r.instances.is_empty() {
        line.push_str(&format!(" [{}]", r.instances.join(", ")));
    }
    line
}

/// `admin class`: every live cluster of the class, what needs attention first.
pub(super) async fn class(client: &Client, json: bool) -> Result<ExitCode, Error> {
    use crate::core::model::span_text;
    let rows = expect!(client.call(Request::Class {}).await?, Response::Class);
    let printer = client.printer();
    if json {
        printer.json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        printer.status("no live clusters in the class");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = super::table::Table::new(&[
        "OWNER",
        "CLUSTER",
        "STATE",
        "NODES",
        "AGE",
        "DEADLINE",
        "ACTIVITY",
        "COST",
        "BUDGET LEFT",
    ]);
    let dollars = crate::core::money::dollars_text;
    for r in &rows {
        t.row(vec![
            r.owner.clone(),
            r.cluster.clone(),
            r.state.clone(),
            format!("{}/{}", r.running, r.nodes),
            span_text(r.age_secs * 1000),
            match r.left_secs {
                Some(s) if s > 0 => format!("in {}", span_text(s * 1000)),
                Some(_) => "passed".into(),
                None => "-".into(),
            },
            r.activity.clone().unwrap_or_else(|| "-".into()),
            dollars(r.cost_micros),
            r.budget_left_micros.map_or_else(|| "-".into(), dollars),
        ]);
    }
    printer.out(t.render())?;
    for r in rows.iter().filter(|r| r.warning.is_some()) {
        printer.out(format!(
            "{}/{}: the reaper warned it: {}",
            r.owner,
            r.cluster,
            r.warning.as_deref().unwrap_or_default()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `admin audit`: the decisions of the privileged path, for instructors.
pub(super) async fn audit(client: &Client, action: AdminAction) -> Result<ExitCode, Error> {
    let AdminAction::Audit { json, since } = action else {
        return Err(Error::runtime("not an audit command"));
    };
    if let Some(s) = &since {
        crate::core::input::parse_time(s)?;
    }
    let rows = expect!(
        client.call(Request::Audit { since }).await?,
        Response::Audit
    );
    let printer = client.printer();
    for r in &rows {
        if json {
            let line = serde_json::to_string(r).map_err(|e| Error::runtime(e.to_string()))?;
            printer.out(line)?;
        } else {
            printer.out(audit_line(r))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::runtime(what).with_source(e)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("cannot set the mode of {}", path.display())))
}

fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err(format!(
        "cannot set the owner of {}",
        path.display()
    )))
}

/// A directory owned by `uid`:`gid` with `mode`, its missing parents root's with 0755.
fn make_dir(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), Error> {
    for a in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
        if !a.exists() {
            std::fs::create_dir(a).map_err(io_err(format!("cannot create {}", a.display())))?;
            set_owner(a, 0, 0)?;
            set_mode(a, 0o755)?;
        }
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::runtime(format!(
            "{} is a symbolic link; refusing to install through it",
            path.display()
        )));
    }
    set_owner(path, uid, gid)?;
    set_mode(path, mode)
}

/// Writes `data` to `path` atomically, owned by `uid`:`gid` with `mode` (set before the data
/// is written); extended attributes set on the temporary file survive the rename.
fn place(
    path: &Path,
    data: &[u8],
    uid: u32,
    gid: u32,
    mode: u32,
    xattr: Option<(&str, &[u8])>,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.install-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("cannot write {}", tmp.display())))?;
    drop(f);
    // chown clears setuid bits and capabilities: owner first, then mode, then the xattr.
    set_owner(&tmp, uid, gid)?;
    set_mode(&tmp, mode)?;
    if let Some((name, value)) = xattr {
        setuid_wrap::sys::set_xattr(&tmp, name, value)
            .map_err(io_err(format!("cannot set {name} on {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(format!("cannot install {}", path.display())))
}

/// The service account: looked up, else created (a system user without a login shell).
fn service_account(name: &str, home: &Path) -> Result<crate::sys::Passwd, Error> {
    if let Some(p) = crate::sys::passwd_by_name(name)? {
        return Ok(p);
    }
    let status = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg("--home-dir")
        .arg(home)
        .arg(name)
        .status()
        .map_err(io_err("cannot run useradd".into()))?;
    if !status.success() {
        return Err(Error::runtime(format!("useradd {name} failed ({status})")));
    }
    crate::sys::passwd_by_name(name)?
        .ok_or_else(|| Error::runtime(format!("useradd {name} made no user")))
}

/// Top-level keys a multi-user site config needs, added to an existing file when missing.
fn amend_config(text: &str, layout: &Layout) -> String {
    let has = |key: &str| {
        text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
        })
    };
    let mut head = String::new();
    if !has("mode") {
        head.push_str("mode = \"multi-user\"\n");
    }
    if !has("wrapper") {
        head.push_str(&format!(
            "wrapper = {:?}\n",
            layout.wrapper.display().to_string()
        ));
    }
    if !has("state_dir") {
        head.push_str(&format!(
            "state_dir = {:?}\n",
            layout.state.display().to_string()
        ));
    }
    if head.is_empty() {
        text.to_owned()
    } else {
        // Top-level keys must come before the first table: at the top.
        format!("# added by stratus admin install\n{head}\n{text}")
    }
}

fn new_config(layout: &Layout) -> String {
    format!(
        r#"# stratus site config (multi-user install). See the README ("Configuration").
mode = "multi-user"
transport = "service"              # the CLI asks the class service (stratus serve) on [service] socket;
                                   # "setuid": through the setuid wrapper, where no service can run
wrapper = {wrapper:?}
state_dir = {state:?}
provider = "ec2"

[ec2]
region = "us-east-1"
credentials_file = {creds:?}
# endpoint_url = "https://ec2.us-east-1.amazonaws.com"
# subnet_id = "subnet-0123"
client_cidrs = []                  # campus networks allowed to reach the nodes' SSH

[service]
socket = {socket:?}
snapshot_minutes = 5               # the service takes the accounting snapshot (no cron needed)
reap_minutes = 15                  # and runs the reaper
"#,
        wrapper = layout.wrapper.display().to_string(),
        state = layout.state.display().to_string(),
        creds = layout.credentials().display().to_string(),
        socket = layout.socket.display().to_string(),
    )
}

/// How `admin install` gets the wrapper it installs: `--wrapper FILE`, else `stratus-wrap`
/// beside this binary, which the workspace's one build makes.
fn wrapper_source(given: Option<&Path>, me: &Path) -> (PathBuf, String) {
    match given {
        Some(p) => (
            p.to_path_buf(),
            "pass the stratus-wrap that `cargo build --release` made beside stratus".into(),
        ),
        None => (
            me.with_file_name("stratus-wrap"),
            format!(
                "build it with `cargo build --release` in the stratus source tree (one build \
                 makes both stratus and stratus-wrap) and run the install from \
                 target/release/stratus, or pass --wrapper FILE (this is {})",
                me.display()
            ),
        ),
    }
}

/// Refuses to replace `path` unless it is missing or was written for this install.
fn check_ours(path: &Path, layout: &Layout) -> Result<(), Error> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    match units::owner_of(&text) {
        Some(owner) if owner == layout.install() => Ok(()),
        Some(owner) => Err(Error::invalid(format!(
            "{} belongs to the install under {owner}, not to this one under {}: choose another \
             --prefix, or remove that install's files first",
            path.display(),
            layout.install()
        ))),
        None => Err(Error::invalid(format!(
            "{} exists and was not written by stratus admin install: move it away first",
            path.display()
        ))),
    }
}

/// What the site config says about the service, for the units and the cron file.
struct Plan {
    /// Whether the CLI goes to the service (`transport = "service"`).
    service: bool,
    /// Cron lines needed: the snapshot, the reaper (none when the service's timers run them).
    cron_snapshot: bool,
    cron_reap: bool,
    /// The state directory the service must be able to write.
    state: PathBuf,
    /// What is missing from the config (for the list of what is left to do).
    ec2_missing: Vec<&'static str>,
    /// The config's own problem, if it does not parse.
    broken: Option<String>,
}

impl Plan {
    fn of(text: &str, layout: &Layout) -> Plan {
        match SiteConfig::parse(text, &layout.config()) {
            Ok(c) => {
                let service =
                    c.mode == crate::config::Mode::MultiUser && c.transport() == Transport::Service;
                let timers = c.service.as_ref().filter(|_| service);
                let mut ec2_missing = Vec::new();
                match &c.ec2 {
                    None => ec2_missing.extend(["region", "subnet_id", "client_cidrs"]),
                    Some(e) => {
                        if e.subnet_id.is_none() {
                            ec2_missing.push("subnet_id");
                        }
                        if e.client_cidrs.is_empty() {
                            ec2_missing.push("client_cidrs");
                        }
                    }
                }
                Plan {
                    service,
                    cron_snapshot: timers.and_then(|t| t.snapshot_minutes).is_none(),
                    cron_reap: timers.and_then(|t| t.reap_minutes).is_none(),
                    state: c.state_dir.unwrap_or_else(|| layout.state.clone()),
                    ec2_missing,
                    broken: None,
                }
            }
            Err(e) => Plan {
                service: false,
                cron_snapshot: true,
                cron_reap: true,
                state: layout.state.clone(),
                ec2_missing: Vec::new(),
                broken: Some(crate::core::error::one_line(&e)),
            },
        }
    }
}

fn install(
    printer: &Printer,
    prefix: Option<&Path>,
    service: &str,
    wrapper_src: Option<&Path>,
) -> Result<ExitCode, Error> {
    if crate::sys::effective_uid() != 0 {
        return Err(Error::invalid(
            "admin install must run as root: it creates the service account and a setuid file",
        ));
    }
    // Everything that can be refused is checked before anything is created.
    let layout = Layout::new(prefix)?;
    let me = std::env::current_exe().map_err(io_err("cannot find this binary".into()))?;
    let (wrapper_src, built_by) = wrapper_source(wrapper_src, &me);
    let wrapper_bytes = super::wrapper_check::checked_wrapper(&wrapper_src, &built_by)?;
    // The CLI, which is also the runner the wrapper execs, knows its install's config.
    let cli_bytes = std::fs::read(&me).map_err(io_err(format!("cannot read {}", me.display())))?;
    let cli_bytes = install_area::patch(&cli_bytes, &layout.config())
        .map_err(|e| Error::invalid(format!("cannot install {}: {e}", me.display())))?;
    for f in [&layout.cron, &layout.socket_unit(), &layout.service_unit()] {
        check_ours(f, &layout)?;
    }
    if let Some(p) = crate::sys::passwd_by_name(service)?
        && p.uid == 0
    {
        return Err(Error::invalid(format!(
            "the service account {service} is root; it must be an unprivileged user"
        )));
    }

    let svc = service_account(service, &layout.state)?;
    if svc.uid == 0 {
        return Err(Error::invalid(format!(
            "the service account {service} is root; it must be an unprivileged user"
        )));
    }
    // Directories.
    for d in [
        layout.cli.parent(),
        layout.wrapper.parent(),
        Some(layout.config_dir.as_path()),
    ]
    .into_iter()
    .flatten()
    {
        make_dir(d, 0, 0, 0o755)?;
    }
    make_dir(&layout.state, svc.uid, svc.gid, 0o700)?;
    place(&layout.cli, &cli_bytes, 0, 0, 0o755, None)?;

    // The wrapper: the install's paths patched in, setuid to the service account, with the one
    // capability it needs to drop the caller's groups.
    let cfg = WrapConfig {
        runner: layout.cli.clone(),
        config: layout.config(),
        wrapper: layout.wrapper.clone(),
        service_user: svc.name.clone(),
        service_uid: svc.uid,
        service_gid: svc.gid,
        service_home: layout.state.clone(),
    };
    let patched = placeholder::patch(&wrapper_bytes, &cfg)
        .map_err(|e| Error::runtime(format!("cannot patch {}: {e}", wrapper_src.display())))?;
    let cap = setuid_wrap::caps::setgid_capability_xattr();
    place(
        &layout.wrapper,
        &patched,
        svc.uid,
        svc.gid,
        0o4755,
        Some((setuid_wrap::caps::CAPABILITY_XATTR, &cap)),
    )?;

    let config = layout.config();
    let (text, fresh) = site_files(&layout, &svc)?;
    // The service manager's files, where it reads them.
    let plan = Plan::of(&text, &layout);
    let systemd = Path::new("/etc/systemd").is_dir();
    let mut written = vec![
        layout.cli.clone(),
        layout.wrapper.clone(),
        config.clone(),
        layout.policy(),
        layout.credentials(),
        layout.state.clone(),
    ];
    written.extend(service_files(&layout, &plan, &svc, systemd)?);
    printer.status(format!(
        "installed for service account {} (uid {}):\n{}",
        svc.name,
        svc.uid,
        written
            .iter()
            .map(|p| format!("  {}", p.display()))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    let todo = left_to_do(&layout, &plan, fresh, systemd, &svc.name);
    let mut out = String::from("left to do:\n");
    for (i, step) in todo.iter().enumerate() {
        out.push_str(&format!("  {}. {step}\n", i + 1));
    }
    printer.out(out.trim_end())?;
    Ok(ExitCode::SUCCESS)
}

/// The site config (created, or given the keys a multi-user install needs), the policy and the
/// credentials (never overwritten). Returns the config's text and whether it is new.
fn site_files(layout: &Layout, svc: &crate::sys::Passwd) -> Result<(String, bool), Error> {
    let config = layout.config();
    let (text, fresh) = match std::fs::read_to_string(&config) {
        Ok(t) => (amend_config(&t, layout), false),
        Err(_) => (new_config(layout), true),
    };
    place(&config, text.as_bytes(), 0, 0, 0o644, None)?;
    // The policy and the credentials: never overwritten.
    if !layout.policy().exists() {
        place(
            &layout.policy(),
            Policy::EXAMPLE.as_bytes(),
            0,
            0,
            0o644,
            None,
        )?;
    }
    if !layout.credentials().exists() {
        place(&layout.credentials(), b"", svc.uid, svc.gid, 0o600, None)?;
    }
    Ok((text, fresh))
}

/// Writes the systemd units (where there is systemd) and the cron file (where the service's
/// timers do not run the accounting side, else removes it); returns what it wrote.
fn service_files(
    layout: &Layout,
    plan: &Plan,
    svc: &crate::sys::Passwd,
    systemd: bool,
) -> Result<Vec<PathBuf>, Error> {
    let group = crate::sys::group_name(svc.gid)?.unwrap_or_else(|| svc.gid.to_string());
    let (install, config) = (layout.install(), layout.config());
    let unit = Unit {
        name: &layout.name,
        install: &install,
        cli: &layout.cli,
        config: &config,
        state: &plan.state,
        socket: &layout.socket,
        user: &svc.name,
        group: &group,
    };
    let mut written = Vec::new();
    if systemd {
        make_dir(&layout.units, 0, 0, 0o755)?;
        for (path, text) in [
            (layout.socket_unit(), unit.socket_unit()),
            (layout.service_unit(), unit.service_unit()),
        ] {
            place(&path, text.as_bytes(), 0, 0, 0o644, None)?;
            written.push(path);
        }
    }
    if plan.cron_snapshot || plan.cron_reap {
        make_dir(Path::new(CRON_DIR), 0, 0, 0o755)?;
        let text = unit.cron_file(plan.cron_snapshot, plan.cron_reap);
        place(&layout.cron, text.as_bytes(), 0, 0, 0o644, None)?;
        written.push(layout.cron.clone());
    } else if layout.cron.exists() {
        // The service's timers run the accounting side now; cron running it too would be a
        // second process on the state.
        std::fs::remove_file(&layout.cron)
            .map_err(io_err(format!("cannot remove {}", layout.cron.display())))?;
    }
    // Where installs before this one put the cron file under a prefix, which cron never read.
    if let Some(p) = &layout.prefix {
        let stale = p.join("etc/cron.d/stratus");
        if std::fs::read_to_string(&stale).is_ok_and(|t| units::owner_of(&t).is_some()) {
            std::fs::remove_file(&stale)
                .map_err(io_err(format!("cannot remove {}", stale.display())))?;
            let _ = std::fs::remove_dir(p.join("etc/cron.d"));
        }
    }
    Ok(written)
}

/// Exactly what an install leaves to its administrator, in order.
fn left_to_do(layout: &Layout, plan: &Plan, fresh: bool, systemd: bool, svc: &str) -> Vec<String> {
    let mut todo = Vec::new();
    let config = layout.config();
    if let Some(problem) = &plan.broken {
        todo.push(format!("fix the site config: {problem}"));
    }
    if std::fs::metadata(layout.credentials()).is_ok_and(|m| m.len() == 0) {
        todo.push(format!(
            "put the service account's AWS keys in {} ([default] aws_access_key_id and \
             aws_secret_access_key; the file stays {svc}'s, mode 0600)",
            layout.credentials().display()
        ));
    }
    if !plan.ec2_missing.is_empty() {
        todo.push(format!(
            "fill in [ec2] in {}: {}{}",
            config.display(),
            plan.ec2_missing.join(", "),
            if fresh { " (and check region)" } else { "" }
        ));
    }
    if std::fs::read_to_string(layout.policy()).is_ok_and(|t| t == Policy::EXAMPLE) {
        todo.push(format!(
            "write the class policy in {}: the instructors, the [units] of each instance type, \
             the [default] limits (it holds the example)",
            layout.policy().display()
        ));
    }
    if plan.service && systemd {
        todo.push(format!(
            "start the class service: systemctl daemon-reload && systemctl enable --now {0}.socket {0}.service",
            layout.name
        ));
    } else if plan.service {
        todo.push(format!(
            "run the class service under this machine's supervisor, as {svc}: {} serve --config {} (no systemd here)",
            layout.cli.display(),
            config.display()
        ));
    }
    let doctor = match &layout.prefix {
        Some(p) => format!(
            "{} admin doctor --prefix {}",
            layout.cli.display(),
            p.display()
        ),
        None => format!("{} admin doctor", layout.cli.display()),
    };
    todo.push(format!("check the install: {doctor}"));
    if layout.prefix.is_some() {
        todo.push(format!(
            "have students run {0} (it knows this install), e.g. on their PATH: ln -s {0} /usr/local/bin/stratus",
            layout.cli.display()
        ));
    }
    todo
}

/// One thing `doctor` checks.
struct Expect<'a> {
    path: PathBuf,
    what: &'a str,
    uid: u32,
    mode: u32,
    dir: bool,
}

fn doctor(
    printer: &Printer,
    prefix: Option<&Path>,
    service: Option<&str>,
) -> Result<ExitCode, Error> {
    // Without --prefix: the install this binary belongs to, else the default one.
    let layout = match prefix {
        Some(p) => Layout::new(Some(p))?,
        None => match install_area::config().and_then(|c| Layout::of_config(&c)) {
            Some(l) => l,
            None => Layout::new(None)?,
        },
    };
    let mut problems: Vec<String> = Vec::new();
    let patched = installed_wrap_config(&layout.wrapper);
    // The account the install was made for is written into the wrapper; an instructor who names
    // one is told if the wrapper says otherwise.
    let service = match (service, &patched) {
        (Some(s), _) => s.to_owned(),
        (None, Some(cfg)) => cfg.service_user.clone(),
        (None, None) => "stratus".to_owned(),
    };
    let service = service.as_str();
    let svc = match crate::sys::passwd_by_name(service)? {
        Some(p) => p,
        None => {
            printer.out(format!(
                "problem: the service account {service} does not exist"
            ))?;
            return Ok(ExitCode::FAILURE);
        }
    };
    problems.extend(owners_and_modes(&layout, &svc));
    // What the wrapper itself checks at every start: no one but root or the service account can
    // write the runner, the wrapper, the config directory, or any of their ancestors.
    let trusted = Trusted {
        uid: svc.uid,
        user: &svc.name,
    };
    for (what, path, want) in [
        ("the runner", &layout.cli, Want::File),
        ("the wrapper", &layout.wrapper, Want::File),
        ("the config directory", &layout.config_dir, Want::Dir),
    ] {
        if let Err(e) = safepath::check(&RealFs, what, path, want, trusted) {
            problems.push(e);
        }
    }
    problems.extend(binary_problems(&layout, &svc, patched.as_ref()));
    if let Ok(text) = std::fs::read_to_string(layout.config()) {
        match crate::config::SiteConfig::parse(&text, &layout.config()) {
            Ok(c) => {
                if c.mode != crate::config::Mode::MultiUser {
                    problems.push("the site config does not say mode = \"multi-user\"".into())
                }
                problems.extend(service_files_missing(&layout, &text));
                // What the runner checks at every request besides.
                problems.extend(crate::service::inputs::unsafe_inputs_for(
                    &c,
                    Some(&layout.config()),
                    trusted,
                ));
                if let Some(ec2) = &c.ec2 {
                    use crate::cluster::provider::ec2::credentials;
                    match credentials::doctor(ec2, &crate::config::Trust::Service) {
                        Ok(Some(warning)) => printer.warn(warning),
                        Ok(None) => {}
                        Err(problem) => problems.push(problem),
                    }
                }
            }
            Err(e) => problems.push(crate::core::error::one_line(&e)),
        }
    }
    if let Err(e) = Policy::load(&layout.policy()) {
        problems.push(crate::core::error::one_line(&e));
    }
    if problems.is_empty() {
        printer.out(format!("the install under {} is sound", layout.install()))?;
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        printer.out(format!("problem: {p}"))?;
    }
    Ok(ExitCode::FAILURE)
}

/// What is wrong with the installed binaries themselves: a wrapper that is no wrapper, lacks its
/// capability or is patched for another install; a CLI that does not know its install.
fn binary_problems(
    layout: &Layout,
    svc: &crate::sys::Passwd,
    patched: Option<&WrapConfig>,
) -> Vec<String> {
    let mut problems = Vec::new();
    // A binary that only holds the placeholder marker (a test harness, the CLI) is no wrapper.
    if let Ok(bytes) = std::fs::read(&layout.wrapper)
        && let Err(e) = setuid_wrap::identity::check_build(&bytes)
    {
        problems.push(format!(
            "the wrapper {} is not the stratus wrapper: {e} (reinstall with `stratus admin install`)",
            layout.wrapper.display()
        ));
    }
    // Its users would fall back to single-user mode without STRATUS_CONFIG.
    match std::fs::read(&layout.cli)
        .ok()
        .map(|b| install_area::read(&b))
    {
        Some(Some(c)) if c == layout.config() => {}
        Some(Some(c)) => problems.push(format!(
            "the CLI {} belongs to the install whose config is {}, not {}",
            layout.cli.display(),
            c.display(),
            layout.config().display()
        )),
        Some(None) => problems.push(format!(
            "the CLI {} does not know its install: its users get single-user mode unless they \
             set STRATUS_CONFIG (reinstall with `stratus admin install`)",
            layout.cli.display()
        )),
        // Reported above as missing.
        None => {}
    }
    match setuid_wrap::sys::get_xattr(&layout.wrapper, setuid_wrap::caps::CAPABILITY_XATTR) {
        Ok(Some(v)) if v == setuid_wrap::caps::setgid_capability_xattr() => {}
        _ => problems.push(format!(
            "the wrapper {} lacks the capability cap_setgid=ep (reinstall with `stratus admin install`)",
            layout.wrapper.display()
        )),
    }
    match patched {
        Some(cfg) => {
            if cfg.config != layout.config() || cfg.runner != layout.cli {
                problems.push(format!(
                    "the wrapper runs {} with {}, not this install's {} and {}",
                    cfg.runner.display(),
                    cfg.config.display(),
                    layout.cli.display(),
                    layout.config().display()
                ));
            }
            if cfg.service_user != svc.name || cfg.service_uid != svc.uid {
                problems.push(format!(
                    "the wrapper was installed for service account {} (uid {}), not {} (uid {})",
                    cfg.service_user, cfg.service_uid, svc.name, svc.uid
                ));
            }
        }
        None => problems.push(format!(
            "the wrapper {} is not patched for this install",
            layout.wrapper.display()
        )),
    }
    problems
}

/// Every path of the install with the owner, mode and kind it must have.
fn owners_and_modes(layout: &Layout, svc: &crate::sys::Passwd) -> Vec<String> {
    let mut problems = Vec::new();
    let expect = [
        Expect {
            path: layout.cli.clone(),
            what: "the CLI",
            uid: 0,
            mode: 0o755,
            dir: false,
        },
        Expect {
            path: layout.wrapper.clone(),
            what: "the wrapper",
            uid: svc.uid,
            mode: 0o4755,
            dir: false,
        },
        Expect {
            path: layout.config_dir.clone(),
            what: "the config directory",
            uid: 0,
            mode: 0o755,
            dir: true,
        },
        Expect {
            path: layout.config(),
            what: "the site config",
            uid: 0,
            mode: 0o644,
            dir: false,
        },
        Expect {
            path: layout.policy(),
            what: "the policy",
            uid: 0,
            mode: 0o644,
            dir: false,
        },
        Expect {
            path: layout.credentials(),
            what: "the credentials file",
            uid: svc.uid,
            mode: 0o600,
            dir: false,
        },
        Expect {
            path: layout.state.clone(),
            what: "the state directory",
            uid: svc.uid,
            mode: 0o700,
            dir: true,
        },
    ];
    for e in &expect {
        match std::fs::symlink_metadata(&e.path) {
            Err(err) => problems.push(format!("{} {} is missing: {err}", e.what, e.path.display())),
            Ok(m) => {
                if m.file_type().is_symlink() {
                    problems.push(format!(
                        "{} {} is a symbolic link",
                        e.what,
                        e.path.display()
                    ));
                    continue;
                }
                if m.is_dir() != e.dir {
                    problems.push(format!(
                        "{} {} is not a {}",
                        e.what,
                        e.path.display(),
                        if e.dir { "directory" } else { "file" }
                    ));
                }
                if m.uid() != e.uid {
                    problems.push(format!(
                        "{} {} is owned by uid {}, not {}",
                        e.what,
                        e.path.display(),
                        m.uid(),
                        if e.uid == 0 {
                            "root".to_owned()
                        } else {
                            svc.name.clone()
                        }
                    ));
                }
                let mode = m.mode() & 0o7777;
                if mode != e.mode {
                    problems.push(format!(
                        "{} {} has mode {mode:04o}, not {:04o}",
                        e.what,
                        e.path.display(),
                        e.mode
                    ));
                }
            }
        }
    }
    problems
}

/// The units and the cron file this install's config needs, where they are missing or are
/// another install's.
fn service_files_missing(layout: &Layout, config_text: &str) -> Vec<String> {
    let plan = Plan::of(config_text, layout);
    let mut need = Vec::new();
    if plan.service && Path::new("/etc/systemd").is_dir() {
        need.push(layout.socket_unit());
        need.push(layout.service_unit());
    }
    if plan.cron_snapshot || plan.cron_reap {
        need.push(layout.cron.clone());
    }
    need.into_iter()
        .filter_map(|f| match std::fs::read_to_string(&f) {
            Ok(t) if units::owner_of(&t) == Some(layout.install()) => None,
            Ok(_) => Some(format!(
                "{} is not this install's (reinstall with `stratus admin install`)",
                f.display()
            )),
            Err(e) => Some(format!(
                "{} is missing: {e} (reinstall with `stratus admin install`)",
                f.display()
            )),
        })
        .collect()
}

/// What `admin install` wrote into the installed wrapper, if it reads as an install's.
fn installed_wrap_config(wrapper: &Path) -> Option<WrapConfig> {
    placeholder::read(&std::fs::read(wrapper).ok()?)
}

/// `stratus admin identities policy`: the shipped IAM policy of the students' group, as JSON on
/// stdout, for the site's `[identities]` table and EC2 region.
pub(super) fn identities_policy(
    settings: &crate::service::Settings,
    printer: &Printer,
) -> Result<ExitCode, Error> {
    let config = &settings.config;
    let (Some(identities), Some(ec2)) = (&config.identities, &config.ec2) else {
        return Err(Error::invalid(
            "admin identities policy needs the site config's [identities] table (class, and the class's S3 bucket) and its [ec2] region",
        ));
    };
    let policy = crate::config::identities::group_policy(identities, &ec2.region);
    let text = serde_json::to_string_pretty(&policy).map_err(|e| Error::runtime(e.to_string()))?;
    printer.out(text)?;
    printer.status(format!(
        "the IAM policy of the group {} (users under {}, named {}<login>){}",
        identities.group(),
        identities.path(),
        identities.user_prefix(),
        match &identities.bucket {
            Some(b) => format!("; S3 under s3://{b}/<login>/"),
            None => "; no S3 bucket named, so no S3".into(),
        }
    ));
    Ok(ExitCode::SUCCESS)
}

/// `stratus admin iam-policy`: the least-privilege IAM policy of the service account, as JSON
/// on stdout, for this install's store, region, class types and profiles.
pub(super) fn iam_policy(
    settings: &crate::service::Settings,
    printer: &Printer,
) -> Result<ExitCode, Error> {
    use crate::cluster::provider::ec2::iam_policy::{ClassTypes, generate, input_from_site};
    let config = &settings.config;
    if config.ec2.is_none() {
        return Err(Error::invalid(
            "admin iam-policy is for the ec2 provider: the site config has no [ec2] table",
        ));
    }
    let policy = match config.policy_path(settings.config_path.as_deref()) {
        Some(path) if path.exists() => Some(
            Policy::load(&path).map_err(|e| Error::invalid(crate::core::error::one_line(&e)))?,
        ),
        _ => None,
    };
    let class = policy.as_ref().map(|p| ClassTypes {
        policy: &p.path,
        types: p.units.keys().cloned().collect(),
    });
    let profiles = crate::config::profile::ProfileSet::load(config.profiles_dir.as_deref())?;
    let input = input_from_site(config, class, &profiles, settings.install_store_id()?)?;
    let text = serde_json::to_string_pretty(&generate(&input))
        .map_err(|e| Error::runtime(e.to_string()))?;
    printer.out(text)?;
    printer.status(format!(
        "the IAM policy for the state database {} in {}; instance types: {}",
        input.store,
        input.region,
        input
            .instance_types
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(ExitCode::SUCCESS)
}

/// `stratus admin image build --profile P [--dry-run]`.
pub(super) async fn image_build(
    client: &Client,
    profile: String,
    dry_run: bool,
) -> Result<ExitCode, Error> {
    let b = expect!(
        client
            .call(Request::ImageBuild { profile, dry_run })
            .await?,
        Response::Image
    );
    let printer = client.printer();
    let Some(image) = &b.image else {
        printer.out(format!(
            "admin image build --dry-run: nothing is created; a build would\n{}",
            b.plan
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))?;
        return Ok(ExitCode::SUCCESS);
    };
    printer.out(format!(
        "image {image} ({}) of profile {}{} recorded in {}: its launches now boot from it",
        b.name.as_deref().unwrap_or_default(),
        b.profile,
        if b.versions.is_empty() {
            String::new()
        } else {
            format!(
                ", {}",
                b.versions
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        b.record
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_line_quotes_every_field() {
        let r = crate::store::AuditRecord {
            at: "2026-12-01T00:00:00.000Z".into(),
            user: "mallory".into(),
            action: "launch".into(),
            cluster: Some(format!("x{}\" \"done", " ".repeat(40))),
            decision: "refused".into(),
            reason: Some("no".into()),
            instances: Vec::new(),
        };
        let line = audit_line(&r);
        assert!(
            line.starts_with(&format!(
                "2026-12-01T00:00:00.000Z \"mallory\" \"launch\" \"x{}\\\" \\\"done\" \"refused\"",
                " ".repeat(40)
            )),
            "{line}"
        );
        // The padding stays inside its quotes: the verdict is the fifth quoted field.
        let fields: Vec<&str> = line.split(" \"").collect();
        assert_eq!(fields.len(), 6, "{line}");
    }

    #[test]
    fn an_instructors_config_keeps_its_keys_and_gains_what_is_missing() {
        let layout = Layout::new(Some(Path::new("/opt/s"))).unwrap();
        let text = "provider = \"ec2\"\nwrapper = \"/elsewhere\"\n[ec2]\nregion = \"us-west-2\"\n";
        let out = amend_config(text, &layout);
        assert!(out.contains("mode = \"multi-user\""), "{out}");
        assert!(
            out.contains("state_dir = \"/opt/s/var/lib/stratus\""),
            "{out}"
        );
        assert!(out.contains("wrapper = \"/elsewhere\""), "{out}");
        assert_eq!(out.matches("wrapper =").count(), 1, "{out}");
        assert!(out.ends_with(text), "{out}");
        // Amending twice changes nothing more.
        assert_eq!(amend_config(&out, &layout), out);
        let parsed =
            crate::config::SiteConfig::parse(&out, Path::new("/opt/s/etc/stratus/config.toml"));
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn each_install_names_its_own_units_cron_file_and_socket() {
        let d = Layout::new(None).unwrap();
        assert_eq!(d.name, "stratus");
        assert_eq!(d.cron, Path::new("/etc/cron.d/stratus"));
        assert_eq!(
            d.socket_unit(),
            Path::new("/etc/systemd/system/stratus.socket")
        );
        assert_eq!(
            d.socket,
            Path::new(crate::config::DEFAULT_SOCKET),
            "the default install's socket is the config's default"
        );
        let p = Layout::new(Some(Path::new("/opt/class-2.0/x_y"))).unwrap();
        assert_eq!(p.name, "stratus-opt-class-2_0-x_y");
        assert_eq!(p.cron, Path::new("/etc/cron.d/stratus-opt-class-2_0-x_y"));
        assert_eq!(
            p.service_unit(),
            Path::new("/etc/systemd/system/stratus-opt-class-2_0-x_y.service")
        );
        assert_eq!(
            p.socket,
            Path::new("/run/stratus/stratus-opt-class-2_0-x_y.sock")
        );
        for bad in ["relative", "/opt/a b", "/opt/../x", "/", "/opt/x;rm"] {
            let e = Layout::new(Some(Path::new(bad))).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn an_installed_cli_finds_its_layout_from_its_config() {
        let p = Layout::of_config(Path::new("/opt/class/etc/stratus/config.toml")).unwrap();
        assert_eq!(p.prefix.as_deref(), Some(Path::new("/opt/class")));
        assert_eq!(p.config(), Path::new("/opt/class/etc/stratus/config.toml"));
        let d = Layout::of_config(Path::new("/etc/stratus/config.toml")).unwrap();
        assert_eq!(d.prefix, None);
        assert!(Layout::of_config(Path::new("/srv/site.toml")).is_none());
    }

    #[test]
    fn a_new_config_is_a_service_install_with_timers_and_needs_no_cron() {
        let layout = Layout::new(Some(Path::new("/opt/s"))).unwrap();
        let text = new_config(&layout);
        let c = SiteConfig::parse(&text, &layout.config()).unwrap();
        assert_eq!(c.transport(), Transport::Service);
        assert_eq!(c.socket(), layout.socket);
        let plan = Plan::of(&text, &layout);
        assert!(plan.service && !plan.cron_snapshot && !plan.cron_reap);
        assert_eq!(plan.ec2_missing, ["subnet_id", "client_cidrs"]);
        // The setuid transport needs cron.
        let setuid = text.replace("transport = \"service\"", "transport = \"setuid\"");
        let plan = Plan::of(&setuid, &layout);
        assert!(!plan.service && plan.cron_snapshot && plan.cron_reap);
    }
}
