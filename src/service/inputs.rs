//! The files besides the site config that decide what the service does for a caller: the
//! policy (what each user may launch) and the profiles (what runs, and what is read into
//! user-data). In a multi-user install they must be as safe as the config the wrapper checks.

use std::path::Path;

use super::Settings;

/// What else the runner reads that decides what it does for a caller, checked as the wrapper
/// checks the config (owned by root or the service account, writable by no one else, every
/// ancestor too): the policy (what each user may launch) and the profiles (what runs, and what
/// the runner reads into user-data). A student who could write one could raise their own quota
/// or have the runner read the service account's files for them. Returns every problem.
pub fn unsafe_inputs(settings: &Settings) -> Vec<String> {
    let me = crate::sys::effective_uid();
    let name = crate::sys::passwd(me)
        .ok()
        .flatten()
        .map_or_else(|| me.to_string(), |p| p.name);
    let trusted = setuid_wrap::safepath::Trusted {
        uid: me,
        user: &name,
    };
    unsafe_inputs_for(&settings.config, settings.config_path.as_deref(), trusted)
}

/// `unsafe_inputs`, for the account `trusted` (what `admin doctor` checks for an install).
pub fn unsafe_inputs_for(
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
