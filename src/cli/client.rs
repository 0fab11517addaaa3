//! The CLI's side of the privileged path: a request to the runner, through the installed setuid
//! wrapper (multi-user mode), or to the same runner code in this process (single-user mode);
//! the runner's progress drawn as this CLI's own bars, its status lines and warnings printed,
//! and its answer returned.
//!
//! Key custody: a launch's answer carries the cluster's private key, for its owner alone. It is
//! kept in the owner's own state directory (`remote/`, mode 0600), and `login`, `exec`, `push`
//! and `proxy` use it from there, as the owner, without the wrapper.

use std::io::{BufRead, Write};
use std::process::Stdio;

use serde_json::Value;

use crate::cluster::keys::ClusterKeys;
use crate::config::Mode;
use crate::core::error::Error;
use crate::service::app::App;
use crate::service::caller::Caller;
use crate::service::protocol::{ClusterView, Line, Request};
use crate::service::serve::LoadedPolicy;

/// Whether requests go through the setuid wrapper: in a multi-user install, for everyone but
/// the service account itself (its cron jobs work on the install's state directly).
pub fn multi_user(app: &App) -> bool {
    app.config.mode == Mode::MultiUser && app.config.state_dir.as_deref() != Some(&app.state_dir)
}

/// Sends `request` to the runner and returns its answer.
pub async fn call(app: &App, caller: &Caller, request: Request) -> Result<Value, Error> {
    if !multi_user(app) {
        let policy = LoadedPolicy::load(app);
        return crate::service::serve::serve(app, caller, &policy, request).await;
    }
    let wrapper = app.config.wrapper.clone().ok_or_else(|| {
        Error::invalid("the site config has mode = \"multi-user\" but no wrapper")
    })?;
    let printer = app.printer.clone();
    // The wrapper and runner are a child process: blocking I/O on a thread of its own.
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(&wrapper)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::runtime(format!(
                    "cannot run the stratus wrapper {} (is the multi-user install complete? `stratus admin doctor` checks it)",
                    wrapper.display()
                ))
                .with_source(e)
            })?;
        {
            let mut stdin = child.stdin.take().expect("piped stdin");
            let text = serde_json::to_vec(&request).map_err(|e| Error::runtime(e.to_string()))?;
            // A runner that refuses early closes its end; its answer says why.
            let _ = stdin.write_all(&text);
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let mut bars: Vec<indicatif::ProgressBar> = Vec::new();
        let mut answer: Option<Result<Value, Error>> = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&line).map_err(|e| {
                Error::runtime(format!("the runner answered something that is not its protocol: {e}"))
            })?;
            match parsed {
                Line::Progress(now) => {
                    for (i, b) in now.iter().enumerate() {
                        if i >= bars.len() {
                            bars.push(printer.bar(b.length, b.message.clone()));
                        }
                        let bar = &bars[i];
                        bar.set_length(b.length);
                        bar.set_position(b.position);
                        bar.set_message(b.message.clone());
                        if b.done {
                            bar.finish_and_clear();
                        }
                    }
                    bars.retain(|b| !b.is_finished());
                }
                Line::Status(s) => printer.status(s),
                Line::Warning(w) => printer.warn(w),
                Line::Result(v) => answer = Some(Ok(v)),
                Line::Error { message, exit } => answer = Some(Err(Error::Remote { message, exit })),
            }
        }
        for b in bars {
            b.finish_and_clear();
        }
        let status = child.wait()?;
        match answer {
            Some(a) => a,
            None => Err(Error::runtime(format!(
                "the runner ended without an answer ({status})"
            ))),
        }
    })
    .await
    .map_err(|e| Error::runtime(format!("the wrapper's reader failed: {e}")))?
}

/// Where this user keeps the keys of clusters the runner launched for them.
pub fn keys_of(app: &App, view: &ClusterView) -> ClusterKeys {
    ClusterKeys::named(&app.state_dir.join("remote"), view.id, &view.name)
}

/// Keeps a cluster's private key (mode 0600) and its pinned host keys in the user's own state
/// directory.
pub fn keep_key(app: &App, view: &ClusterView, private_key: &str) -> Result<ClusterKeys, Error> {
    let keys = keys_of(app, view);
    let key = crate::cluster::ssh::parse_private_key(private_key)?;
    keys.create(&key)?;
    keys.write_known_hosts(&view.nodes)?;
    Ok(keys)
}
