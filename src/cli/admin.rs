//! `stratus admin`: the audit trail (instructors, through the runner), and the install of the
//! privileged path and its check (root).
//!
//! The install lays out this contract (`--prefix DIR`; without it the CLI and wrapper go under
//! /usr/local, the config in /etc/stratus and the state in /var/lib/stratus):
//!
//! | path | owner, mode | what |
//! | --- | --- | --- |
//! | `DIR/bin/stratus` | root, 0755 | the CLI (and the runner) |
//! | `DIR/libexec/stratus/stratus-wrap` | service user, 04755, `cap_setgid=ep` | the wrapper |
//! | `DIR/etc/stratus/config.toml` | root, 0644 | the site config |
//! | `DIR/etc/stratus/policy.toml` | root, 0644 | the policy |
//! | `DIR/etc/stratus/aws-credentials` | service user, 0600 | the service account's keys |
//! | `DIR/var/lib/stratus/` | service user, 0700 | the state: database, cluster keys |
//!
//! Every step is idempotent: an instructor's config keys, policy and credentials are kept.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use setuid_wrap::placeholder::{self, WrapConfig};
use setuid_wrap::safepath::{self, RealFs, Trusted, Want};

use super::client::Client;
use super::launch::expect;
use crate::cli::AdminAction;
use crate::core::error::Error;
use crate::core::printer::Printer;
use crate::policy::Policy;
use crate::service::protocol::{Request, Response};

/// The paths of an install.
#[derive(Debug, Clone)]
pub struct Layout {
    pub cli: PathBuf,
    pub wrapper: PathBuf,
    pub config_dir: PathBuf,
    pub state: PathBuf,
    pub cron: PathBuf,
}

impl Layout {
    pub fn new(prefix: Option<&Path>) -> Self {
        match prefix {
            Some(p) => Self {
                cli: p.join("bin/stratus"),
                wrapper: p.join("libexec/stratus/stratus-wrap"),
                config_dir: p.join("etc/stratus"),
                state: p.join("var/lib/stratus"),
                cron: p.join("etc/cron.d/stratus"),
            },
            None => Self {
                cli: PathBuf::from("/usr/local/bin/stratus"),
                wrapper: PathBuf::from("/usr/local/libexec/stratus/stratus-wrap"),
                config_dir: PathBuf::from("/etc/stratus"),
                state: PathBuf::from("/var/lib/stratus"),
                cron: PathBuf::from("/etc/cron.d/stratus"),
            },
        }
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
        AdminAction::Audit { .. } | AdminAction::IamPolicy | AdminAction::Image { .. } => {
            Err(Error::runtime("not an install command"))
        }
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
wrapper = {wrapper:?}
state_dir = {state:?}
provider = "ec2"

[ec2]
region = "us-east-1"
credentials_file = {creds:?}
# endpoint_url = "https://ec2.us-east-1.amazonaws.com"
# subnet_id = "subnet-0123"
client_cidrs = []                  # campus networks allowed to reach the nodes' SSH
"#,
        wrapper = layout.wrapper.display().to_string(),
        state = layout.state.display().to_string(),
        creds = layout.credentials().display().to_string(),
    )
}

/// The cron lines of the accounting side, run as the service account.
fn cron_lines(layout: &Layout, service: &str) -> String {
    let cli = layout.cli.display();
    let config = layout.config().display().to_string();
    format!(
        "# stratus accounting: a snapshot of every instance every 5 minutes, the reaper every 15.\n\
         */5 * * * * {service} {cli} --config {config} accounting snapshot --quiet\n\
         */15 * * * * {service} {cli} --config {config} accounting reap --quiet\n"
    )
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
    if let Some(p) = prefix
        && !p.is_absolute()
    {
        return Err(Error::invalid(format!(
            "--prefix {} must be an absolute path",
            p.display()
        )));
    }
    let layout = Layout::new(prefix);
    let svc = service_account(service, &layout.state)?;
    if svc.uid == 0 {
        return Err(Error::invalid(format!(
            "the service account {service} is root; it must be an unprivileged user"
        )));
    }
    let me = std::env::current_exe().map_err(io_err("cannot find this binary".into()))?;
    let wrapper_src = wrapper_src
        .map(Path::to_path_buf)
        .unwrap_or_else(|| me.with_file_name("stratus-wrap"));
    let wrapper_bytes = std::fs::read(&wrapper_src).map_err(io_err(format!(
        "cannot read the wrapper {} (build it with `cargo build --workspace`, or pass --wrapper)",
        wrapper_src.display()
    )))?;

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

    // The CLI, which is also the runner the wrapper execs.
    if me.canonicalize().ok() != layout.cli.canonicalize().ok() {
        let bytes = std::fs::read(&me).map_err(io_err(format!("cannot read {}", me.display())))?;
        place(&layout.cli, &bytes, 0, 0, 0o755, None)?;
    }

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

    // The site config: created, or given the keys a multi-user install needs.
    let config = layout.config();
    let text = match std::fs::read_to_string(&config) {
        Ok(t) => amend_config(&t, &layout),
        Err(_) => new_config(&layout),
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
    // Cron: the accounting side, as the service account.
    if let Some(d) = layout.cron.parent() {
        make_dir(d, 0, 0, 0o755)?;
    }
    place(
        &layout.cron,
        cron_lines(&layout, &svc.name).as_bytes(),
        0,
        0,
        0o644,
        None,
    )?;
    printer.status(format!(
        "installed for service account {} (uid {}):\n  {}\n  {}\n  {}\n  {}\n  {}\n  {}\n  {}",
        svc.name,
        svc.uid,
        layout.cli.display(),
        layout.wrapper.display(),
        config.display(),
        layout.policy().display(),
        layout.credentials().display(),
        layout.state.display(),
        layout.cron.display()
    ));
    printer.status(
        "next: put the service account's AWS keys in the credentials file, fill in [ec2] and the policy, then run `stratus admin doctor`",
    );
    Ok(ExitCode::SUCCESS)
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
    let layout = Layout::new(prefix);
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
    match setuid_wrap::sys::get_xattr(&layout.wrapper, setuid_wrap::caps::CAPABILITY_XATTR) {
        Ok(Some(v)) if v == setuid_wrap::caps::setgid_capability_xattr() => {}
        _ => problems.push(format!(
            "the wrapper {} lacks the capability cap_setgid=ep (reinstall with `stratus admin install`)",
            layout.wrapper.display()
        )),
    }
    match &patched {
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
    if let Ok(text) = std::fs::read_to_string(layout.config()) {
        match crate::config::SiteConfig::parse(&text, &layout.config()) {
            Ok(c) => {
                if c.mode != crate::config::Mode::MultiUser {
                    problems.push("the site config does not say mode = \"multi-user\"".into())
                }
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
        printer.out(format!(
            "the install under {} is sound",
            prefix
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into())
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        printer.out(format!("problem: {p}"))?;
    }
    Ok(ExitCode::FAILURE)
}

/// What `admin install` wrote into the installed wrapper, if it reads as an install's.
fn installed_wrap_config(wrapper: &Path) -> Option<WrapConfig> {
    placeholder::read(&std::fs::read(wrapper).ok()?)
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
        let layout = Layout::new(Some(Path::new("/opt/s")));
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
}
