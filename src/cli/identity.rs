//! `stratus identity init|rotate|show|delete` (a student's own) and `stratus admin identities
//! sync|list|rotate` (the instructor's). The service makes the IAM user and keys with the
//! service account's credentials; a new key's secret comes back to this process alone, which
//! runs as the student and writes it into the student's own `~/.aws` (`aws_files`), then checks
//! that EC2 accepts it before the old key is deleted (`service::identity` has the steps).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::aws_files::{self, AccessKey};
use super::client::Client;
use super::launch::expect;
use super::table::Table;
use crate::cli::{IdentitiesAction, IdentityAction, KeysAction};
use crate::core::env::Environment;
use crate::core::error::Error;
use crate::service::protocol::{IdentityView, KeyIssued, Request, Response};

/// The profile of the student's AWS files: `aws --profile stratus`.
pub(crate) const PROFILE: &str = "stratus";

/// The home whose `~/.aws` is written: `$HOME` (where the AWS CLI looks), else the password
/// database's for this user.
fn home(env: &Environment) -> Result<PathBuf, Error> {
    if let Some(h) = env.home.as_deref().filter(|h| !h.as_os_str().is_empty()) {
        return Ok(h.to_path_buf());
    }
    crate::sys::passwd(crate::sys::effective_uid())
        .ok()
        .flatten()
        .map(|p| p.home)
        .ok_or_else(|| Error::invalid("HOME is not set and this user has no home directory"))
}

/// One `identity init` or `rotate` of this user at a time (the student's own, and root's bulk
/// rotation, which runs as the student): two interleaved rotations could each delete the
/// other's new key. Held until dropped.
fn rotation_lock(client: &Client) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = client.state_dir().join("identity.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::runtime(format!("cannot open {}", path.display())).with_source(e))?;
    if !crate::sys::try_lock_file(&file).unwrap_or(false) {
        client
            .printer()
            .status("waiting for another `stratus identity` of yours to finish");
        crate::sys::lock_file_wait(&file).map_err(|e| {
            Error::runtime(format!("cannot lock {}", path.display())).with_source(e)
        })?;
    }
    Ok(file)
}

pub(super) async fn run(
    client: &Client,
    action: IdentityAction,
    env: &Environment,
) -> Result<ExitCode, Error> {
    let crash_at = env.test_crash_at.as_deref();
    match action {
        IdentityAction::Init => {
            let _lock = rotation_lock(client)?;
            let home = home(env)?;
            // A file that would be refused is reported before a key exists.
            aws_files::check_profile(&home, PROFILE)?;
            let keep = aws_files::key_id(&home, PROFILE)?;
            let issued = expect!(
                client.call(Request::IdentityInit { keep }).await?,
                Response::KeyIssued
            );
            let p = client.printer();
            let who = &issued.identity;
            if issued.user_created {
                p.status(format!("made your IAM user {}", who.user));
            }
            p.status(format!(
                "{} is in the group{} {}",
                who.user,
                if who.groups.len() == 1 { "" } else { "s" },
                who.groups.join(", ")
            ));
            if issued.key.is_none() {
                p.status(format!(
                    "your files already hold your key {}: nothing to do (`stratus identity rotate` gives you a new one)",
                    aws_files::key_id(&home, PROFILE)?.unwrap_or_default()
                ));
                return Ok(ExitCode::SUCCESS);
            }
            install(client, &home, issued, crash_at).await
        }
        IdentityAction::Rotate => {
            let _lock = rotation_lock(client)?;
            let home = home(env)?;
            aws_files::check_profile(&home, PROFILE)?;
            let keep = aws_files::key_id(&home, PROFILE)?;
            let issued = expect!(
                client.call(Request::IdentityRotate { keep }).await?,
                Response::KeyIssued
            );
            install(client, &home, issued, crash_at).await
        }
        IdentityAction::Show { json } => {
            let view = expect!(
                client.call(Request::IdentityShow {}).await?,
                Response::Identity
            );
            let p = client.printer();
            if json {
                p.json(&view)?;
                return Ok(ExitCode::SUCCESS);
            }
            let held = home(env)
                .ok()
                .and_then(|h| aws_files::key_id(&h, PROFILE).ok().flatten());
            show(client, &view, held.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        IdentityAction::Delete { yes } => {
            if !yes
                && !super::launch::confirmed(
                    client,
                    "Delete your IAM user and its keys? [y/N] ",
                    "delete your identity",
                )?
            {
                client.printer().status("not deleted");
                return Ok(ExitCode::from(crate::core::error::exit::BAD_INPUT));
            }
            let removed = expect!(
                client.call(Request::IdentityDelete {}).await?,
                Response::KeysRemoved
            );
            let p = client.printer();
            p.status(format!(
                "deleted your IAM user {} with its keys {}",
                removed.identity.user,
                list_or_none(&removed.deleted)
            ));
            if let Ok(h) = home(env)
                && aws_files::key_id(&h, PROFILE).ok().flatten().is_some()
            {
                p.status(format!(
                    "the [{PROFILE}] profile in {} names a deleted key now; remove it when you like",
                    h.join(".aws/credentials").display()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the new key into the files, checks it, then has the other keys deleted.
async fn install(
    client: &Client,
    home: &Path,
    issued: KeyIssued,
    crash_at: Option<&str>,
) -> Result<ExitCode, Error> {
    let p = client.printer();
    let Some(key) = issued.key else {
        return Err(Error::runtime("the service made no key"));
    };
    if !issued.deleted.is_empty() {
        p.status(format!(
            "deleted {} (no file of yours held {})",
            list_or_none(&issued.deleted),
            if issued.deleted.len() == 1 {
                "it"
            } else {
                "them"
            }
        ));
    }
    p.status(format!("made the access key {}", key.id));
    crash_point(crash_at, "created");
    let access = AccessKey {
        id: key.id.clone(),
        secret: key.secret,
    };
    let written = aws_files::write_profile(home, PROFILE, &access, &issued.region)?;
    for line in written.to_string().lines() {
        p.status(line);
    }
    crash_point(crash_at, "written");
    if aws_files::key_id(home, PROFILE)?.as_deref() != Some(key.id.as_str()) {
        return Err(Error::runtime(format!(
            "{} does not read back with the new key {}; your old key is kept",
            home.join(".aws/credentials").display(),
            key.id
        )));
    }
    if let Some((ec2, trust)) = client.ec2() {
        crate::cluster::provider::ec2::iam::key_works(ec2, trust, &access.id, &access.secret)
            .await
            .map_err(|e| {
                Error::runtime(format!(
                    "EC2 does not accept the new key {} yet ({e}); your files hold it and your old key is kept: run `stratus identity rotate` again",
                    access.id
                ))
            })?;
        p.status(format!("checked: EC2 accepts the key {}", access.id));
    }
    let removed = expect!(
        client
            .call(Request::IdentityRetire {
                keep: access.id.clone(),
            })
            .await?,
        Response::KeysRemoved
    );
    if !removed.deleted.is_empty() {
        p.status(format!(
            "deleted the old key{} {}",
            if removed.deleted.len() == 1 { "" } else { "s" },
            removed.deleted.join(", ")
        ));
    }
    p.status(format!(
        "your IAM user {} has the key {}: `aws --profile {PROFILE} ec2 describe-instances` uses it",
        removed.identity.user, access.id
    ));
    Ok(ExitCode::SUCCESS)
}

/// Tests only (debug builds): dies here, as a crash would, when `STRATUS_TEST_CRASH_AT` names
/// this step.
fn crash_point(crash_at: Option<&str>, step: &str) {
    if crash_at == Some(step) {
        std::process::exit(137);
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn show(client: &Client, view: &IdentityView, held: Option<&str>) -> Result<(), Error> {
    let p = client.printer();
    if !view.exists {
        p.out(format!(
            "{} has no class identity yet: `stratus identity init` makes it",
            view.login
        ))?;
        return Ok(());
    }
    p.out(format!("user    {}", view.user))?;
    p.out(format!("groups  {}", list_or_none(&view.groups)))?;
    let mut t = Table::new(&["KEY", "CREATED", "AGE", "STATUS", "FILES"]);
    for k in &view.keys {
        t.row(vec![
            k.id.clone(),
            k.created_at.clone().unwrap_or_else(|| "-".into()),
            k.age_days.map_or("-".into(), |d| format!("{d}d")),
            if k.active { "active" } else { "inactive" }.into(),
            if held == Some(k.id.as_str()) {
                format!("~/.aws [{PROFILE}]")
            } else {
                "-".into()
            },
        ]);
    }
    p.out(t.render())?;
    Ok(())
}

pub(super) async fn admin(
    client: &Client,
    action: IdentitiesAction,
    env: &Environment,
) -> Result<ExitCode, Error> {
    match action {
        IdentitiesAction::Policy => Err(Error::runtime("handled before the client starts")),
        IdentitiesAction::Sync { roster, dry_run } => sync(client, &roster, dry_run).await,
        IdentitiesAction::List { json } => list(client, json).await,
        IdentitiesAction::Rotate { older_than } => rotate_all(client, older_than, env).await,
    }
}

async fn sync(client: &Client, roster: &Path, dry_run: bool) -> Result<ExitCode, Error> {
    let text = std::fs::read_to_string(roster)
        .map_err(|e| Error::invalid(format!("cannot read the roster {}: {e}", roster.display())))?;
    let parsed = crate::config::identities::parse_roster(&text)
        .map_err(|e| Error::invalid(format!("{}: {e}", roster.display())))?;
    let p = client.printer();
    for (line, login) in &parsed.repeated {
        p.warn(format!(
            "{}:{line}: {login} is on the roster already; taken once",
            roster.display()
        ));
    }
    let done = expect!(
        client
            .call(Request::IdentitiesSync {
                logins: parsed.logins.iter().map(|o| o.to_string()).collect(),
                dry_run,
            })
            .await?,
        Response::Synced
    );
    let verb = |now: &str, later: &str| {
        if dry_run {
            later.to_owned()
        } else {
            now.to_owned()
        }
    };
    p.out(format!(
        "{} {}",
        verb("created", "would create"),
        list_or_none(&done.create)
    ))?;
    p.out(format!(
        "{} {}{}",
        verb("removed", "would remove"),
        list_or_none(&done.remove),
        if done.deleted_keys.is_empty() {
            String::new()
        } else {
            format!(" (keys {})", done.deleted_keys.join(", "))
        }
    ))?;
    p.out(format!("kept {}", done.kept.len()))?;
    if let Some(g) = &done.group {
        p.out(g)?;
    }
    for f in &done.failed {
        p.warn(format!("failed: {f}"));
    }
    if !done.failed.is_empty() {
        return Err(Error::runtime(format!(
            "{} of the roster's changes failed (above); the rest were made, and a re-run retries them",
            done.failed.len()
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a student's files hold one of their keys, as far as this user can tell.
fn files_state(view: &IdentityView) -> String {
    let Ok(Some(pw)) = crate::sys::passwd_by_name(&view.login) else {
        return "no such login".into();
    };
    match aws_files::key_id_as(&pw.home, PROFILE, pw.uid) {
        Ok(Some(id)) if view.keys.iter().any(|k| k.id == id) => "in place".into(),
        Ok(Some(id)) => format!("stale ({id})"),
        Ok(None) => "missing".into(),
        Err(_) if crate::sys::effective_uid() != 0 => "unknown (run as root)".into(),
        Err(e) => format!("refused: {}", crate::core::error::one_line(&Error::from(e))),
    }
}

async fn list(client: &Client, json: bool) -> Result<ExitCode, Error> {
    let views = expect!(
        client.call(Request::IdentitiesList {}).await?,
        Response::Identities
    );
    let p = client.printer();
    if json {
        let rows: Vec<serde_json::Value> = views
            .iter()
            .map(|v| {
                let mut row = serde_json::to_value(v).unwrap_or_default();
                row["files"] = serde_json::Value::String(files_state(v));
                row
            })
            .collect();
        p.json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["LOGIN", "USER", "KEYS", "FILES"]);
    for v in &views {
        let keys: Vec<String> = v
            .keys
            .iter()
            .map(|k| match k.age_days {
                Some(d) => format!("{} ({d}d)", k.id),
                None => k.id.clone(),
            })
            .collect();
        t.row(vec![
            v.login.clone(),
            v.user.clone(),
            list_or_none(&keys),
            files_state(v),
        ]);
    }
    p.out(t.render())?;
    Ok(ExitCode::SUCCESS)
}

/// Rotates, as each student, every identity with a key older than `days`: root runs this
/// program's `identity rotate` as the student (their uid, gid and groups, their home), so the
/// files are written as the student, through the same path as the student's own command.
async fn rotate_all(client: &Client, days: u64, env: &Environment) -> Result<ExitCode, Error> {
    if crate::sys::effective_uid() != 0 {
        return Err(Error::invalid(
            "admin identities rotate writes each student's files as the student: run it as root (sudo)",
        ));
    }
    let views = expect!(
        client.call(Request::IdentitiesList {}).await?,
        Response::Identities
    );
    let due: Vec<&IdentityView> = views
        .iter()
        .filter(|v| v.keys.iter().any(|k| k.age_days.is_some_and(|d| d >= days)))
        .collect();
    let p = client.printer();
    p.status(format!(
        "{} of {} identities have a key {days} days old or older",
        due.len(),
        views.len()
    ));
    let exe = std::env::current_exe().map_err(|e| {
        Error::runtime("cannot find this program to run it as each student").with_source(e)
    })?;
    let bar = p.bar(due.len() as u64, "rotating");
    let mut failed = Vec::new();
    for v in due {
        bar.set_message(v.login.clone());
        if let Err(e) = rotate_as(&exe, &v.login, env) {
            failed.push(format!("{}: {e}", v.login));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for f in &failed {
        p.warn(format!("failed: {f}"));
    }
    if failed.is_empty() {
        p.status("every key due was rotated");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::runtime(format!(
            "{} rotation{} failed (above); the others were made",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" }
        )))
    }
}

/// `identity rotate` as `login`, in a child with only their identity and a plain environment.
fn rotate_as(exe: &Path, login: &str, env: &Environment) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let pw = crate::sys::passwd_by_name(login)
        .map_err(|e| format!("cannot look the login up: {e}"))?
        .ok_or("no such login on this machine")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["identity", "rotate"])
        .env_clear()
        .env("HOME", &pw.home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("USER", login)
        .env("LOGNAME", login)
        .current_dir("/")
        .uid(pw.uid)
        // As root, std also drops the supplementary groups (the runner reads the student's
        // from the group database, never from the process).
        .gid(pw.gid)
        .stdin(std::process::Stdio::null());
    if let Some(config) = &env.config {
        cmd.env("STRATUS_CONFIG", config);
    }
    let out = cmd.output().map_err(|e| format!("cannot run it: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed");
    Err(crate::core::text::shortened(last.trim(), 300))
}

/// Where `keys create NAME` puts the private key.
fn key_file(home: &Path, name: &str) -> PathBuf {
    home.join(".ssh").join(format!("stratus-{name}"))
}

/// `~/.ssh`, made 0700 if missing; refused when it is a link, not a directory, or another's.
fn ssh_dir(home: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = home.join(".ssh");
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    Error::runtime(format!("cannot create {}", dir.display())).with_source(e)
                })?;
        }
        Err(e) => {
            return Err(Error::runtime(format!("cannot read {}", dir.display())).with_source(e));
        }
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(Error::refused(format!(
                "{} is not a directory (a link or a file): stratus puts private keys only into a real one",
                dir.display()
            )));
        }
        Ok(m) if m.uid() != crate::sys::effective_uid() => {
            return Err(Error::refused(format!(
                "{} belongs to uid {}, not to you",
                dir.display(),
                m.uid()
            )));
        }
        Ok(_) => {}
    }
    Ok(dir)
}

/// Writes a new private key file, mode 0600 from its creation, never over anything (a file or
/// a link) already there.
fn write_new_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::refused(format!("cannot create {}: {e}", path.display())))?;
    let mut text = text.trim_end().to_owned();
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::runtime(format!("cannot write {}", path.display())).with_source(e))
}

pub(super) async fn keys(
    client: &Client,
    action: KeysAction,
    env: &Environment,
) -> Result<ExitCode, Error> {
    let p = client.printer();
    match action {
        KeysAction::Create { name } => {
            let home = home(env)?;
            ssh_dir(&home)?;
            let file = key_file(&home, &name);
            if std::fs::symlink_metadata(&file).is_ok() {
                return Err(Error::refused(format!(
                    "{} exists: stratus never writes over a private key file",
                    file.display()
                )));
            }
            let made = expect!(
                client
                    .call(Request::KeysCreate { name: name.clone() })
                    .await?,
                Response::KeyPairMade
            );
            if let Err(e) = write_new_private(&file, made.private_key.expose()) {
                // Nobody would hold the private half: the key pair goes again.
                let _ = client
                    .call(Request::KeysDelete { name: name.clone() })
                    .await;
                return Err(e);
            }
            p.status(format!(
                "made the key pair {} ({}), its private key in {} (mode 0600)",
                made.key.ec2_name,
                made.key.key_pair_id.as_deref().unwrap_or("-"),
                file.display()
            ));
            p.status(format!(
                "`stratus launch-cluster NAME N --key {name}` authorises it on a cluster's nodes"
            ));
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::List { json } => {
            let keys = expect!(client.call(Request::KeysList {}).await?, Response::KeyPairs);
            if json {
                p.json(&keys)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["NAME", "EC2 NAME", "FINGERPRINT", "CREATED"]);
            for k in &keys {
                t.row(vec![
                    k.name.clone(),
                    k.ec2_name.clone(),
                    k.fingerprint.clone().unwrap_or_else(|| "-".into()),
                    k.created_at.clone(),
                ]);
            }
            p.out(t.render())?;
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::Delete { name } => {
            let gone = expect!(
                client
                    .call(Request::KeysDelete { name: name.clone() })
                    .await?,
                Response::KeyPairDeleted
            );
            p.status(format!("deleted the key pair {}", gone.ec2_name));
            if let Ok(home) = home(env)
                && key_file(&home, &name).exists()
            {
                p.status(format!(
                    "its private key {} is yours to remove",
                    key_file(&home, &name).display()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
