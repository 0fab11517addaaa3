//! Cluster profiles: what a cluster is made of (images, instance types, user-data templates for
//! master and workers), how many workers it may have, what is pushed and run on the master once
//! every node answers, and which provider it is for.
//!
//! A profile is a TOML file in `cluster-profiles/` (shipped, embedded in the binary) or in the
//! site's `profiles_dir`. `extends = "other"` inherits: tables merge key by key, anything else in
//! the child replaces the parent's value. Each file is checked against the schema on its own, so a
//! typo is reported with the file and key that hold it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ProviderKind, toml_message};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_profiles.rs"));
}

/// Workers per cluster no profile may exceed: a guard against a typo costing a term's budget.
pub const HARD_MAX_WORKERS: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {name:?}; known profiles: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("profile {name} ({source_name}): {message}")]
    Invalid {
        name: String,
        source_name: String,
        message: String,
    },
    #[error("profile {name}: `extends` makes a cycle: {}", chain.join(" -> "))]
    Cycle { name: String, chain: Vec<String> },
    #[error("profile {name}: template {template} not found (looked in {looked})")]
    MissingTemplate {
        name: String,
        template: String,
        looked: String,
    },
    #[error("cannot read profiles directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Instance types a role may list as fallbacks, at most.
pub const MAX_INSTANCE_TYPES: usize = 8;

/// One role's machine: image, instance type, user-data template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    pub image: String,
    /// The preferred instance type: the first of `instance_types`.
    #[serde(default)]
    pub instance_type: String,
    /// Every instance type this role may run on, in order of preference (`instance_type` first):
    /// when EC2 has no capacity for one, the launch tries the next. Filled from `instance_type`
    /// when a profile gives only that (and in records written before the list existed).
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// Path of the user-data template, relative to the profiles directory.
    pub user_data: String,
    /// Run this role on spot capacity (workers only; the master is always on-demand).
    #[serde(default)]
    pub spot: bool,
    /// Size of the root volume in GiB; the image's default if unset.
    #[serde(default)]
    pub volume_gb: Option<u32>,
}

/// Which nodes a file is pushed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileTarget {
    #[default]
    Master,
    Workers,
    All,
}

/// A file rendered from a template once every node's address is known, and pushed over SSH
/// before the configure commands run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushFile {
    pub template: String,
    /// Destination path on the node; relative paths are relative to the SSH user's home.
    pub dest: String,
    /// Octal file mode, as a string: "0644".
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub to: FileTarget,
}

fn default_mode() -> String {
    "0644".into()
}

fn default_ssh_port() -> u16 {
    22
}

fn default_ready_timeout() -> u64 {
    300
}

fn default_configure_timeout() -> u64 {
    30 * 60
}

/// A resolved profile: inheritance applied, every field checked, template texts loaded. This is
/// what a cluster record keeps, so later commands render exactly what the launch rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Providers this profile is meant for; empty means any.
    #[serde(default)]
    pub providers: Vec<ProviderKind>,
    pub max_workers: u32,
    /// Fewest workers that must answer for a launch to count as a success. Defaults to all
    /// that were asked for.
    #[serde(default)]
    pub min_workers: Option<u32>,
    /// How many failed workers a launch may replace before giving up.
    #[serde(default)]
    pub max_replacements: u32,
    pub ssh_user: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Seconds to wait for every node to answer SSH before the launch fails.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_secs: u64,
    /// Set when the nodes install in the background after their keys are on the console and
    /// SSH answers: once a node answers, stratus waits up to this many seconds for it to report
    /// `done` in its phase file (`/var/lib/stratus/phase`; a last line starting `failed` fails
    /// the node), showing each node's phase. Unset: nothing is waited for after SSH.
    #[serde(default)]
    pub boot_timeout_secs: Option<u64>,
    /// The longest a cluster of this profile may live, in hours (the policy's, if lower, wins;
    /// the reaper ends clusters past it).
    #[serde(default)]
    pub max_lifetime_hours: Option<u64>,
    /// For the policy's idle rule: a command run on the master (as the login user, over SSH)
    /// that prints how many jobs are running or waiting to run (the hadoop profile asks YARN's
    /// ResourceManager). A failure counts as busy. Unset: jobs are not a signal.
    #[serde(default)]
    pub busy_command: Option<String>,
    /// Seconds the configure step (files, workers file, commands on the master) may take before
    /// the launch fails and rolls back.
    #[serde(default = "default_configure_timeout")]
    pub configure_timeout_secs: u64,
    /// Where the master keeps the list of workers (one address per line).
    #[serde(default)]
    pub workers_file: Option<String>,
    /// Extra TCP ports (web UIs), opened only to the site's `[ec2] ui_cidrs` (none by default).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Give the cluster its own SSH key for logins from the master to every node (see
    /// `cluster::intra_key`).
    #[serde(default)]
    pub intra_cluster_key: bool,
    pub master: RoleSettings,
    pub worker: RoleSettings,
    #[serde(default)]
    pub files: Vec<PushFile>,
    /// Commands run on the master, in order, once every node answers and the files are pushed.
    #[serde(default)]
    pub configure: Vec<String>,
    /// Commands run on the master after workers are added or the workers file is rewritten.
    #[serde(default)]
    pub on_workers_change: Vec<String>,
    /// Free-form values for the templates (`{{profile.vars.x}}`).
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// The texts of every template the profile uses, by path.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
}

/// The schema of one profile file: every key optional (a parent may supply it), unknown keys
/// refused. `name` and `templates` are filled in by stratus, so a file may not set them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only deserialized, to check the keys of one file.
struct ProfileFile {
    description: Option<String>,
    extends: Option<String>,
    providers: Option<Vec<ProviderKind>>,
    max_workers: Option<u32>,
    min_workers: Option<u32>,
    max_replacements: Option<u32>,
    ssh_user: Option<String>,
    ssh_port: Option<u16>,
    ready_timeout_secs: Option<u64>,
    boot_timeout_secs: Option<u64>,
    configure_timeout_secs: Option<u64>,
    max_lifetime_hours: Option<u64>,
    busy_command: Option<String>,
    workers_file: Option<String>,
    ports: Option<Vec<u16>>,
    intra_cluster_key: Option<bool>,
    master: Option<RoleFile>,
    worker: Option<RoleFile>,
    files: Option<Vec<PushFile>>,
    configure: Option<Vec<String>>,
    on_workers_change: Option<Vec<String>>,
    vars: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RoleFile {
    image: Option<String>,
    instance_type: Option<String>,
    instance_types: Option<Vec<String>>,
    user_data: Option<String>,
    spot: Option<bool>,
    volume_gb: Option<u32>,
}

/// Where a profile file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Shipped,
    Site(PathBuf),
}

impl Source {
    fn describe(&self, name: &str) -> String {
        match self {
            Source::Shipped => format!("shipped cluster-profiles/{name}.toml"),
            Source::Site(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct RawProfile {
    text: String,
    source: Source,
}

/// A summary line for `stratus profiles`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSummary {
    pub name: String,
    pub description: String,
    pub source: String,
}

/// All profiles known to this installation: the shipped ones, overridden or extended by the
/// site's directory.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    profiles: BTreeMap<String, RawProfile>,
    site_dir: Option<PathBuf>,
    /// The images `admin image build` baked, which profiles boot from (`cluster::image`).
    images: crate::config::images::Images,
}

impl ProfileSet {
    pub fn load(site_dir: Option<&Path>) -> Result<Self, ProfileError> {
        let mut profiles = BTreeMap::new();
        for (path, text) in embedded::EMBEDDED {
            if let Some(name) = path.strip_suffix(".toml").filter(|n| !n.contains('/')) {
                profiles.insert(
                    name.to_owned(),
                    RawProfile {
                        text: (*text).to_owned(),
                        source: Source::Shipped,
                    },
                );
            }
        }
        if let Some(dir) = site_dir {
            let read_err = |source| ProfileError::ReadDir {
                path: dir.to_path_buf(),
                source,
            };
            for entry in std::fs::read_dir(dir).map_err(read_err)? {
                let path = entry.map_err(read_err)?.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".toml"))
                else {
                    continue;
                };
                if !path.is_file() {
                    continue;
                }
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ProfileError::ReadDir {
                        path: path.clone(),
                        source,
                    })?;
                profiles.insert(
                    name.to_owned(),
                    RawProfile {
                        text,
                        source: Source::Site(path),
                    },
                );
            }
        }
        Ok(Self {
            profiles,
            site_dir: site_dir.map(Path::to_path_buf),
            images: Default::default(),
        })
    }

    /// The same profiles, booting from these baked images where they apply.
    pub fn with_images(self, images: crate::config::images::Images) -> Self {
        Self { images, ..self }
    }

    pub fn names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    /// One line per profile; a profile that does not parse still gets a line saying so.
    pub fn summaries(&self) -> Vec<ProfileSummary> {
        self.profiles
            .iter()
            .map(|(name, raw)| {
                let description = match self.resolve(name) {
                    Ok(p) => p.description,
                    Err(e) => format!("(invalid: {e})"),
                };
                ProfileSummary {
                    name: name.clone(),
                    description,
                    source: raw.source.describe(name),
                }
            })
            .collect()
    }

    /// Resolves a profile by name: inheritance, schema, templates, and the image baked for it
    /// (`admin image build`), if one applies.
    pub fn resolve(&self, name: &str) -> Result<Profile, ProfileError> {
        let mut profile = self.resolve_as_written(name)?;
        self.images.apply(&mut profile);
        Ok(profile)
    }

    /// A profile as its files say, without a baked image (what a bake starts from).
    pub fn resolve_as_written(&self, name: &str) -> Result<Profile, ProfileError> {
        let mut chain: Vec<String> = Vec::new();
        let merged = self.merged_table(name, &mut chain)?;
        let raw = &self.profiles[name];
        let invalid = |message: String| ProfileError::Invalid {
            name: name.to_owned(),
            source_name: raw.source.describe(name),
            message,
        };
        let mut table = merged;
        table.remove("extends");
        table.insert("name".into(), toml::Value::String(name.to_owned()));
        let mut profile: Profile = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(toml_message(&e)))?;
        profile.validate().map_err(invalid)?;
        self.load_templates(&mut profile)?;
        Ok(profile)
    }

    fn merged_table(
        &self,
        name: &str,
        chain: &mut Vec<String>,
    ) -> Result<toml::Table, ProfileError> {
        if chain.iter().any(|n| n == name) {
            chain.push(name.to_owned());
            return Err(ProfileError::Cycle {
                name: chain[0].clone(),
                chain: chain.clone(),
            });
        }
        chain.push(name.to_owned());
        let raw = self
            .profiles
            .get(name)
            .ok_or_else(|| ProfileError::Unknown {
                name: name.to_owned(),
                known: self.names(),
            })?;
        let invalid = |message: String| ProfileError::Invalid {
            name: name.to_owned(),
            source_name: raw.source.describe(name),
            message,
        };
        // Check this file's keys on their own, so an error names the file that has the typo.
        toml::from_str::<ProfileFile>(&raw.text).map_err(|e| invalid(toml_message(&e)))?;
        let table: toml::Table =
            toml::from_str(&raw.text).map_err(|e| invalid(toml_message(&e)))?;
        match table.get("extends") {
            None => Ok(table),
            Some(toml::Value::String(parent)) => {
                let mut base = self.merged_table(parent, chain)?;
                merge(&mut base, table);
                Ok(base)
            }
            Some(_) => Err(invalid("`extends` must be a profile name".into())),
        }
    }

    fn load_templates(&self, profile: &mut Profile) -> Result<(), ProfileError> {
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        wanted.insert(profile.master.user_data.clone());
        wanted.insert(profile.worker.user_data.clone());
        for f in &profile.files {
            wanted.insert(f.template.clone());
        }
        for path in wanted {
            let text = self.template_text(&profile.name, &path)?;
            profile.templates.insert(path, text);
        }
        Ok(())
    }

    /// A template's text: from the site directory first, then the shipped ones.
    fn template_text(&self, profile: &str, rel: &str) -> Result<String, ProfileError> {
        let mut looked = Vec::new();
        if !is_safe_relative(rel) {
            return Err(ProfileError::Invalid {
                name: profile.to_owned(),
                source_name: "template path".into(),
                message: format!(
                    "template path {rel:?} must be relative to the profiles directory, without '..'"
                ),
            });
        }
        if let Some(dir) = &self.site_dir {
            let p = dir.join(rel);
            looked.push(p.display().to_string());
            if let Ok(text) = std::fs::read_to_string(&p) {
                return Ok(text);
            }
        }
        looked.push("the shipped profiles".into());
        if let Some((_, text)) = embedded::EMBEDDED.iter().find(|(p, _)| *p == rel) {
            return Ok((*text).to_owned());
        }
        Err(ProfileError::MissingTemplate {
            name: profile.to_owned(),
            template: rel.to_owned(),
            looked: looked.join(", "),
        })
    }
}

fn is_safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Merges `child` over `base`: tables merge key by key, other values are replaced. A role's
/// `instance_type` and `instance_types` are one setting: a child that sets either replaces both.
fn merge(base: &mut toml::Table, child: toml::Table) {
    for role in ["master", "worker"] {
        let sets_types = child
            .get(role)
            .and_then(|v| v.as_table())
            .is_some_and(|t| t.contains_key("instance_type") || t.contains_key("instance_types"));
        if sets_types && let Some(toml::Value::Table(b)) = base.get_mut(role) {
            b.remove("instance_type");
            b.remove("instance_types");
        }
    }
    merge_tables(base, child);
}

fn merge_tables(base: &mut toml::Table, child: toml::Table) {
    for (k, v) in child {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(c)) => merge_tables(b, c),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl RoleSettings {
    /// The instance types this role may run on, in order of preference; never empty for a
    /// resolved profile.
    pub fn types(&self) -> Vec<&str> {
        if self.instance_types.is_empty() {
            vec![self.instance_type.as_str()]
        } else {
            self.instance_types.iter().map(String::as_str).collect()
        }
    }

    /// Checks `instance_type` against `instance_types` and fills in the one not given.
    fn normalize_types(&mut self, role: &str) -> Result<(), String> {
        if self.instance_types.is_empty() {
            if self.instance_type.is_empty() {
                return Err(format!(
                    "[{role}] needs an instance_type (or instance_types, in order of preference)"
                ));
            }
            self.instance_types = vec![self.instance_type.clone()];
        }
        if self.instance_types.len() > MAX_INSTANCE_TYPES {
            return Err(format!(
                "[{role}] instance_types lists {} types; at most {MAX_INSTANCE_TYPES} are allowed",
                self.instance_types.len()
            ));
        }
        for (i, t) in self.instance_types.iter().enumerate() {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(format!(
                    "[{role}] instance_types: {t:?} is not an instance type"
                ));
            }
            if self.instance_types[..i].contains(t) {
                return Err(format!("[{role}] instance_types lists {t} twice"));
            }
        }
        let first = &self.instance_types[0];
        if self.instance_type.is_empty() {
            self.instance_type = first.clone();
        } else if self.instance_type != *first {
            return Err(format!(
                "[{role}] instance_type = {:?} must be the first of instance_types ({}), or left out",
                self.instance_type,
                self.instance_types.join(", ")
            ));
        }
        Ok(())
    }
}

impl Profile {
    fn validate(&mut self) -> Result<(), String> {
        self.master.normalize_types("master")?;
        self.worker.normalize_types("worker")?;
        if self.max_workers > HARD_MAX_WORKERS {
            return Err(format!(
                "max_workers = {} is above the limit of {HARD_MAX_WORKERS}",
                self.max_workers
            ));
        }
        if let Some(min) = self.min_workers
            && min > self.max_workers
        {
            return Err(format!(
                "min_workers = {min} is above max_workers = {}",
                self.max_workers
            ));
        }
        if self.ssh_user.is_empty()
            || !self
                .ssh_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(format!(
                "ssh_user {:?} is not a valid user name",
                self.ssh_user
            ));
        }
        if self.configure_timeout_secs == 0 {
            return Err("configure_timeout_secs must be at least 1".into());
        }
        if self.ready_timeout_secs == 0 {
            return Err("ready_timeout_secs must be at least 1".into());
        }
        if self.boot_timeout_secs == Some(0) {
            return Err("boot_timeout_secs must be at least 1 (or left out: no boot wait)".into());
        }
        if self.master.spot {
            return Err(
                "the master cannot run on spot capacity: set spot only under [worker]".into(),
            );
        }
        for (role, s) in [("master", &self.master), ("worker", &self.worker)] {
            if s.image.is_empty() || s.instance_type.is_empty() {
                return Err(format!(
                    "[{role}] needs a non-empty image and instance_type"
                ));
            }
        }
        for f in &self.files {
            parse_mode(&f.mode).map_err(|m| format!("files: {}: {m}", f.dest))?;
            if f.dest.is_empty() {
                return Err(format!("files: {}: empty dest", f.template));
            }
        }
        if let Some(w) = &self.workers_file
            && w.is_empty()
        {
            return Err("workers_file must not be empty".into());
        }
        Ok(())
    }

    /// Whether this profile may run on `provider`.
    pub fn supports(&self, provider: ProviderKind) -> bool {
        self.providers.is_empty() || self.providers.contains(&provider)
    }

    pub fn role(&self, role: crate::core::model::Role) -> &RoleSettings {
        match role {
            crate::core::model::Role::Master => &self.master,
            crate::core::model::Role::Worker => &self.worker,
        }
    }

    /// A stand-in for a profile stratus no longer has (the record of instances found behind
    /// its back): valid, but not for launching.
    pub fn placeholder(name: &str) -> Self {
        let mut p = Self::for_tests(if name.is_empty() { "unknown" } else { name });
        p.templates.clear();
        p
    }

    /// A minimal valid profile, for unit tests of other modules.
    #[doc(hidden)]
    pub fn for_tests(name: &str) -> Self {
        let role = RoleSettings {
            image: "img".into(),
            instance_type: "local".into(),
            instance_types: vec!["local".into()],
            user_data: "t.hbs".into(),
            spot: false,
            volume_gb: None,
        };
        Profile {
            name: name.into(),
            description: String::new(),
            providers: vec![],
            max_workers: 4,
            min_workers: None,
            max_replacements: 0,
            ssh_user: "stratus".into(),
            ssh_port: 22,
            ready_timeout_secs: 30,
            boot_timeout_secs: None,
            configure_timeout_secs: 60,
            max_lifetime_hours: None,
            busy_command: None,
            workers_file: None,
            ports: vec![],
            intra_cluster_key: false,
            master: role.clone(),
            worker: role,
            files: vec![],
            configure: vec![],
            on_workers_change: vec![],
            vars: BTreeMap::new(),
            templates: BTreeMap::from([("t.hbs".into(), "#!/bin/sh\n".into())]),
        }
    }
}

/// Parses an octal mode string such as "0644".
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let m =
        u32::from_str_radix(s, 8).map_err(|_| format!("mode {s:?} is not octal, like \"0644\""))?;
    if m > 0o7777 {
        return Err(format!("mode {s:?} is out of range"));
    }
    Ok(m)
}

impl From<ProfileError> for crate::core::error::Error {
    fn from(e: ProfileError) -> Self {
        crate::core::error::Error::wrap(crate::core::error::Kind::BadInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(files: &[(&str, &str)]) -> (tempfile::TempDir, ProfileSet) {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let set = ProfileSet::load(Some(dir.path())).unwrap();
        (dir, set)
    }

    const BASE: &str = r#"
description = "base"
max_workers = 4
ssh_user = "u"
[master]
image = "a"
instance_type = "t1"
user_data = "x.hbs"
[worker]
image = "a"
instance_type = "t1"
user_data = "x.hbs"
[vars]
a = 1
b = 2
"#;

    #[test]
    fn shipped_profiles_resolve() {
        let set = ProfileSet::load(None).unwrap();
        assert!(set.names().contains(&"local-demo".to_string()));
        for name in set.names() {
            let p = set.resolve(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Hadoop's web UIs take submissions from anyone who reaches them: the shipped
            // profiles open SSH alone, and the UIs are browsed through `stratus proxy`.
            assert!(p.ports.is_empty(), "{name} opens web ports {:?}", p.ports);
        }
    }

    #[test]
    fn extends_merges_tables_and_replaces_values() {
        let (_d, set) = site(&[
            ("base.toml", BASE),
            ("x.hbs", "#!/bin/sh\n"),
            (
                "child.toml",
                "extends = \"base\"\nmax_workers = 8\n[worker]\ninstance_type = \"t2\"\n[vars]\nb = 3\n",
            ),
        ]);
        let p = set.resolve("child").unwrap();
        assert_eq!(p.max_workers, 8);
        assert_eq!(p.worker.instance_type, "t2");
        assert_eq!(p.worker.image, "a");
        assert_eq!(p.vars["a"], 1);
        assert_eq!(p.vars["b"], 3);
        assert_eq!(p.description, "base");
    }

    #[test]
    fn a_typo_names_the_file_and_key() {
        let (_d, set) = site(&[
            ("base.toml", BASE),
            ("x.hbs", ""),
            (
                "child.toml",
                "extends = \"base\"\n[worker]\nimage_id = \"b\"\n",
            ),
        ]);
        let err = set.resolve("child").unwrap_err().to_string();
        assert!(err.contains("child.toml"), "{err}");
        assert!(err.contains("image_id"), "{err}");
    }

    #[test]
    fn unknown_profiles_and_cycles() {
        let (_d, set) = site(&[("a.toml", "extends = \"b\""), ("b.toml", "extends = \"a\"")]);
        let err = set.resolve("nope").unwrap_err().to_string();
        assert!(err.contains("local-demo"), "{err}");
        assert!(matches!(set.resolve("a"), Err(ProfileError::Cycle { .. })));
    }

    #[test]
    fn template_paths_stay_inside() {
        let (_d, set) = site(&[(
            "evil.toml",
            &BASE.replace("user_data = \"x.hbs\"", "user_data = \"../../etc/passwd\""),
        )]);
        let err = set.resolve("evil").unwrap_err().to_string();
        assert!(err.contains("must be relative"), "{err}");
    }

    #[test]
    fn instance_types_are_one_setting_with_instance_type() {
        let list = "[master]\ninstance_types = [\"m5.large\", \"m6i.large\", \"m5a.large\"]\n";
        let (_d, set) = site(&[
            ("base.toml", BASE),
            ("x.hbs", ""),
            ("list.toml", &format!("extends = \"base\"\n{list}")),
            (
                "both.toml",
                "extends = \"base\"\n[master]\ninstance_type = \"m5.large\"\ninstance_types = [\"m5.large\", \"m6i.large\"]\n",
            ),
            (
                "mismatch.toml",
                "extends = \"base\"\n[master]\ninstance_type = \"m6i.large\"\ninstance_types = [\"m5.large\", \"m6i.large\"]\n",
            ),
            (
                "twice.toml",
                "extends = \"base\"\n[worker]\ninstance_types = [\"a.b\", \"a.b\"]\n",
            ),
            (
                "empty.toml",
                "extends = \"base\"\n[worker]\ninstance_types = []\n",
            ),
            (
                "back.toml",
                "extends = \"list\"\n[master]\ninstance_type = \"c5.large\"\n",
            ),
        ]);
        // Only instance_type (the parent): a list of one.
        let p = set.resolve("base").unwrap();
        assert_eq!(p.master.types(), ["t1"]);
        assert_eq!(p.master.instance_types, ["t1"]);
        // A child's list replaces the parent's instance_type, whose first is the preferred one.
        let p = set.resolve("list").unwrap();
        assert_eq!(p.master.types(), ["m5.large", "m6i.large", "m5a.large"]);
        assert_eq!(p.master.instance_type, "m5.large");
        assert_eq!(p.worker.types(), ["t1"]);
        assert_eq!(
            set.resolve("both").unwrap().master.types(),
            ["m5.large", "m6i.large"]
        );
        // And a grandchild's instance_type replaces the list again.
        assert_eq!(set.resolve("back").unwrap().master.types(), ["c5.large"]);
        for (name, needle) in [
            ("mismatch", "must be the first of instance_types"),
            ("twice", "lists a.b twice"),
            ("empty", "[worker] needs an instance_type"),
        ] {
            let err = set.resolve(name).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
            assert!(err.contains(&format!("{name}.toml")), "{name}: {err}");
        }
    }

    #[test]
    fn records_without_instance_types_still_read() {
        let mut p = Profile::for_tests("old");
        p.worker.instance_types.clear();
        p.worker.instance_type = "m5.large".into();
        let json = serde_json::to_string(&p)
            .unwrap()
            .replace(",\"instance_types\":[]", "");
        assert!(!json.contains("\"instance_types\":[]"), "{json}");
        let back: Profile = serde_json::from_str(&json).unwrap();
        assert_eq!(back.worker.types(), ["m5.large"]);
    }
}
