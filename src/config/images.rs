//! The record of baked images (`images.toml` in the state directory, written by `stratus admin
//! image build`), which profile resolution reads: a profile whose role boots from the image a
//! bake started from (`base`) boots from the baked image instead, in the site's region, as long
//! as what the bake installed from is unchanged (the profile's vars, its master's user-data
//! template and its base image: their digest). A profile changed afterwards boots from its own
//! image again, with a warning, until it is baked again; a profile of the same digest (one that
//! only extends the baked one, as `hadoop-spot` extends `hadoop`) uses the same bake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::profile::Profile;
use crate::core::error::Error;

/// The record of baked images, in the state directory.
pub const IMAGES_FILE: &str = "images.toml";
/// One baked image, as `images.toml` keeps it (a table per profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baked {
    pub image: String,
    pub region: String,
    /// The image the bake booted from: roles of a profile that boot from it use `image`.
    pub base: String,
    /// The digest of what the bake installed from (`digest`).
    pub digest: String,
    pub built_at: String,
    /// The profile's `*_version` vars at the bake.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
}

/// The baked images of a state directory, for one region.
#[derive(Debug, Clone, Default)]
pub struct Images {
    region: Option<String>,
    by_profile: BTreeMap<String, Baked>,
}

impl Images {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(IMAGES_FILE)
    }

    /// The record in `state_dir` (none if the file does not exist), for launches in `region`
    /// (`None`: no EC2, so no image applies).
    pub fn load(state_dir: &Path, region: Option<&str>) -> Result<Self, Error> {
        let path = Self::path(state_dir);
        let by_profile = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                Error::invalid(format!(
                    "{}: {} (written by `stratus admin image build`; fix or remove it)",
                    path.display(),
                    crate::config::toml_message(&e)
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(
                    Error::runtime(format!("cannot read {}", path.display())).with_source(e)
                );
            }
        };
        Ok(Self {
            region: region.map(str::to_owned),
            by_profile,
        })
    }

    /// The record a command's profiles use: for the site's EC2 region; a record that cannot be
    /// read is reported and ignored (the profiles then boot from their own images), so that it
    /// never stops a terminate or a list.
    pub fn load_or_warn(state_dir: &Path, config: &crate::config::SiteConfig) -> Self {
        let region = config.ec2.as_ref().map(|e| e.region.as_str());
        Self::load(state_dir, region).unwrap_or_else(|e| {
            tracing::warn!(
                "{}; launching from the profiles' own images",
                crate::core::error::one_line(&e)
            );
            Self::default()
        })
    }

    pub fn get(&self, profile: &str) -> Option<&Baked> {
        self.by_profile.get(profile)
    }

    /// Makes `profile`'s roles boot from its baked image, when one applies (see the module's
    /// doc). Returns the image used.
    pub fn apply(&self, profile: &mut Profile) -> Option<String> {
        let region = self.region.as_deref()?;
        let own = digest(profile);
        let baked = match self.by_profile.get(&profile.name) {
            Some(b) if b.region == region && b.digest == own => b,
            Some(b) if b.region == region => {
                tracing::warn!(
                    "the image {} baked for profile {} was made from another version of it; its launches install at boot until `stratus admin image build --profile {}` bakes it again",
                    b.image,
                    profile.name,
                    profile.name
                );
                return None;
            }
            _ => self
                .by_profile
                .values()
                .find(|b| b.region == region && b.digest == own)?,
        };
        let mut used = false;
        for role in [&mut profile.master, &mut profile.worker] {
            if role.image == baked.base {
                role.image = baked.image.clone();
                used = true;
            }
        }
        used.then(|| baked.image.clone())
    }

    /// Records `baked` for `profile` in `state_dir`, atomically, keeping the other profiles'.
    pub fn record(state_dir: &Path, profile: &str, baked: Baked) -> Result<PathBuf, Error> {
        let mut all = Self::load(state_dir, None)?.by_profile;
        all.insert(profile.to_owned(), baked);
        let text = format!(
            "# Written by `stratus admin image build`: the image each profile's launches boot from,\n\
             # while the profile's base image, vars and user-data are what the bake used.\n{}",
            toml::to_string(&all).map_err(|e| Error::runtime(e.to_string()))?
        );
        let path = Self::path(state_dir);
        crate::core::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| {
            Error::runtime(format!("cannot write {}", path.display())).with_source(e)
        })?;
        Ok(path)
    }
}

/// What a bake depends on: the master's base image, its user-data template, and the vars.
pub fn digest(profile: &Profile) -> String {
    let template = profile
        .templates
        .get(&profile.master.user_data)
        .map(String::as_str)
        .unwrap_or_default();
    let vars = serde_json::to_string(&profile.vars).unwrap_or_default();
    let text = format!(
        "{}\0{}\0{template}\0{vars}",
        profile.master.image, profile.master.user_data
    );
    // FNV-1a, 64 bits: a change detector, not a security boundary.
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The profile's `*_version` vars, as text.
pub fn versions(profile: &Profile) -> BTreeMap<String, String> {
    profile
        .vars
        .iter()
        .filter(|(k, _)| k.ends_with("_version"))
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let mut p = Profile::for_tests("hadoop");
        p.master.image = "resolve:ssm:/base".into();
        p.worker.image = "resolve:ssm:/base".into();
        p.vars
            .insert("hadoop_version".into(), serde_json::json!("3.4.2"));
        p.vars.insert("x".into(), serde_json::json!(1));
        p
    }

    fn images(by: &[(&str, Baked)], region: &str) -> Images {
        Images {
            region: Some(region.into()),
            by_profile: by
                .iter()
                .map(|(k, b)| ((*k).to_owned(), b.clone()))
                .collect(),
        }
    }

    fn baked(p: &Profile) -> Baked {
        Baked {
            image: "ami-baked".into(),
            region: "eu-west-1".into(),
            base: p.master.image.clone(),
            digest: digest(p),
            built_at: "2026-01-01T00:00:00Z".into(),
            versions: versions(p),
        }
    }

    #[test]
    fn a_bake_applies_while_the_profile_is_unchanged_and_in_its_region() {
        let p = profile();
        let b = baked(&p);
        let mut q = p.clone();
        assert_eq!(
            images(&[("hadoop", b.clone())], "eu-west-1").apply(&mut q),
            Some("ami-baked".into())
        );
        assert_eq!(
            (q.master.image.as_str(), q.worker.image.as_str()),
            ("ami-baked", "ami-baked")
        );
        // Another region: no.
        let mut q = p.clone();
        assert_eq!(
            images(&[("hadoop", b.clone())], "us-east-1").apply(&mut q),
            None
        );
        assert_eq!(q, p);
        // A version moved: no.
        let mut q = p.clone();
        q.vars
            .insert("hadoop_version".into(), serde_json::json!("3.4.3"));
        let before = q.clone();
        assert_eq!(
            images(&[("hadoop", b.clone())], "eu-west-1").apply(&mut q),
            None
        );
        assert_eq!(q, before);
        // A profile that only extends it (another name, same digest) uses it too; a role with
        // another image keeps its own.
        let mut spot = p.clone();
        spot.name = "hadoop-spot".into();
        spot.worker.image = "ami-other".into();
        assert_eq!(
            images(&[("hadoop", b)], "eu-west-1").apply(&mut spot),
            Some("ami-baked".into())
        );
        assert_eq!(spot.worker.image, "ami-other");
        assert_eq!(
            versions(&p),
            BTreeMap::from([("hadoop_version".into(), "3.4.2".into())])
        );
    }

    #[test]
    fn the_record_round_trips_and_keeps_other_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile();
        Images::record(dir.path(), "hadoop", baked(&p)).unwrap();
        let mut other = baked(&p);
        other.image = "ami-2".into();
        Images::record(dir.path(), "other", other.clone()).unwrap();
        let loaded = Images::load(dir.path(), Some("eu-west-1")).unwrap();
        assert_eq!(loaded.get("hadoop"), Some(&baked(&p)));
        assert_eq!(loaded.get("other"), Some(&other));
        std::fs::write(Images::path(dir.path()), "[hadoop]\nimage = 1\n").unwrap();
        let e = Images::load(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("images.toml"), "{e}");
    }
}
