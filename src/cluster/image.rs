//! `stratus admin image build --profile P`: bakes an image of a profile, so that its launches
//! boot with the software installed instead of fetching it from the internet at every boot.
//!
//! The instance is an ordinary one-node cluster (`image-<profile>`) launched through the
//! launch path, so it is recorded in the store with its usage interval, tagged, rolled back if
//! the launch fails, seen by the snapshot and the reaper, and ended through the terminate path.
//! Its user-data is the profile's master's, rendered with `image_build = true`: the profile
//! installs what it needs, starts nothing, writes `done` to `/var/lib/stratus/phase`
//! (`$STRATUS_STATE_DIR/phase` on a local node) and removes the host keys, so that every
//! instance of the image makes its own. stratus waits for SSH (the host key pinned from the
//! console as for any launch), then for that phase, then creates the image (CreateImage, tagged
//! like every resource, plus `stratus:<var>` for each `*_version` var of the profile), waits
//! until it is available, tags its snapshots, terminates the instance and records the image.
//!
//! The record is `images.toml` in the state directory, the one the runner and cron use in a
//! multi-user install (so the build runs as the service account). Profile resolution reads it:
//! a profile whose role boots from the image the bake started from (`base`) boots from the
//! baked image instead, in the site's region, as long as what the bake installed from is
//! unchanged (the profile's vars, its master's user-data template and its base image: their
//! digest). A profile that is changed afterwards boots from its own image again, with a warning,
//! until it is baked again. A profile of the same digest (one that only extends the baked one,
//! as `hadoop-spot` extends `hadoop`, changing no var or template) uses the same bake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::Ctx;
use crate::cluster::interrupt::Interrupt;
use crate::cluster::launch::{self, LaunchRequest};
use crate::cluster::meta::{Meta, Want, target};
use crate::cluster::profile::Profile;
use crate::cluster::provider::ec2::Ec2Provider;
use crate::cluster::provider::ec2::image::ImageState;
use crate::cluster::provider::{AnyProvider, Provider};
use crate::cluster::ssh::{Client, Session};
use crate::cluster::terminate;
use crate::error::Error;
use crate::model::{ClusterName, Owner, RequestId, Role, StoreId, Tags, rfc3339};
use crate::quota::Admission;
use crate::store::ClusterRow;
use crate::templates::Renderer;

/// The record of baked images, in the state directory.
pub const IMAGES_FILE: &str = "images.toml";
/// Where a node being baked reports its phase (`done` when it can be imaged). A local node's
/// state directory is `$STRATUS_STATE_DIR`.
pub const PHASE_FILE: &str = "/var/lib/stratus/phase";
const PHASE_COMMAND: &str =
    r#"cat "${STRATUS_STATE_DIR:-/var/lib/stratus}/phase" 2>/dev/null || true"#;
/// How often the phase is read.
const PHASE_POLL: Duration = Duration::from_secs(5);
/// How long CreateImage may take to make an image available (EC2 snapshots every volume).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const IMAGE_POLL: Duration = Duration::from_secs(10);

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
                crate::error::one_line(&e)
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
    fn record(state_dir: &Path, profile: &str, baked: Baked) -> Result<PathBuf, Error> {
        let mut all = Self::load(state_dir, None)?.by_profile;
        all.insert(profile.to_owned(), baked);
        let text = format!(
            "# Written by `stratus admin image build`: the image each profile's launches boot from,\n\
             # while the profile's base image, vars and user-data are what the bake used.\n{}",
            toml::to_string(&all).map_err(|e| Error::runtime(e.to_string()))?
        );
        let path = Self::path(state_dir);
        crate::cluster::provider::local::write_atomic(&path, text.as_bytes(), 0o644).map_err(
            |e| Error::runtime(format!("cannot write {}", path.display())).with_source(e),
        )?;
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

/// The reserved name of a profile's image-build cluster.
pub fn cluster_name(profile: &str) -> Result<ClusterName, Error> {
    // Profile names are file names: anything a cluster name may not hold becomes '-'.
    let profile: String = profile
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let mut name = format!("image-{profile}");
    name.truncate(ClusterName::MAX_LEN);
    let name = name.trim_end_matches('-').to_owned();
    Ok(ClusterName::parse(&name)?)
}

/// What `admin image build` needs besides the profile.
pub struct BuildInputs<'a> {
    pub ctx: Ctx<'a>,
    pub provider: &'a AnyProvider,
    pub owner: &'a Owner,
    pub region: &'a str,
}

/// The plan, as `--dry-run` prints it (and a real build, first).
pub fn plan(profile: &Profile, state_dir: &Path) -> Result<String, Error> {
    let name = cluster_name(&profile.name)?;
    let versions = versions(profile);
    let roles: Vec<&str> = [(Role::Master, "master"), (Role::Worker, "worker")]
        .into_iter()
        .filter(|(r, _)| profile.role(*r).image == profile.master.image)
        .map(|(_, n)| n)
        .collect();
    Ok(format!(
        "launch one {} instance from {} as cluster {name} (profile {}, user-data rendered with image_build = true)\n\
         wait for SSH, then up to {} s for {PHASE_FILE} to read `done`\n\
         create an image of it (CreateImage), tagged with the stratus tags{}, and wait until it is available\n\
         terminate the instance\n\
         record the image in {} for profile {}'s launches ({})",
        profile.master.instance_type,
        profile.master.image,
        profile.name,
        profile.configure_timeout_secs,
        if versions.is_empty() {
            String::new()
        } else {
            format!(
                " and {}",
                versions
                    .iter()
                    .map(|(k, v)| format!("stratus:{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        Images::path(state_dir).display(),
        profile.name,
        roles.join(" and "),
    ))
}

/// Checks what can be checked without creating anything: the profile's provider, its name,
/// and its user-data as the bake renders it.
pub fn check(profile: &Profile, owner: &Owner, store: &StoreId) -> Result<(), Error> {
    if !profile.supports(crate::model::ProviderKind::Ec2) {
        return Err(Error::invalid(format!(
            "profile {} is not for the ec2 provider; only EC2 images can be baked",
            profile.name
        )));
    }
    let name = cluster_name(&profile.name)?;
    let request = RequestId::new();
    let env = BTreeMap::new();
    let meta = Meta {
        cluster: &name,
        owner,
        profile,
        env: &env,
        request: &request,
        store,
        image_build: true,
    };
    let renderer = Renderer::for_profile(profile)?;
    meta.batch(
        &renderer,
        Want {
            role: Role::Master,
            first_index: 0,
            count: 1,
            min_count: 1,
        },
        0,
    )?;
    Ok(())
}

/// What a finished build made.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: String,
    pub name: String,
    pub record: PathBuf,
    pub versions: BTreeMap<String, String>,
}

/// Bakes `profile` (resolved as written, without any baked image of its own).
pub async fn build(inputs: BuildInputs<'_>, profile: Profile) -> Result<Built, Error> {
    let BuildInputs {
        ctx,
        provider,
        owner,
        region,
    } = inputs;
    let AnyProvider::Ec2(ec2) = provider else {
        return Err(Error::invalid(
            "admin image build needs the ec2 provider (provider = \"ec2\" in the site config)",
        ));
    };
    check(&profile, owner, ctx.store.id())?;
    let name = cluster_name(&profile.name)?;
    let request = RequestId::new();
    let interrupt = Interrupt::listen()?;
    ctx.printer.status(format!(
        "launching {name}: one {} instance of profile {} to bake",
        profile.master.instance_type, profile.name
    ));
    let req = LaunchRequest {
        name: name.clone(),
        workers: 0,
        profile: profile.clone(),
        env: BTreeMap::new(),
        configure: false,
        wait_for_ssh: true,
        image_build: true,
    };
    // A failed launch rolls itself back.
    let cluster =
        launch::launch(ctx, provider, owner, &request, req, &Admission::unlimited()).await?;
    let mut made: Option<String> = None;
    let r = bake(ctx, ec2, &interrupt, &cluster, &profile, region, &mut made).await;
    // The instance ends whatever happened; its hours are recorded like any cluster's.
    let ended = terminate::terminate(ctx, provider, &cluster).await;
    match (r, ended) {
        (Ok(built), Ok(_)) => Ok(built),
        (Ok(built), Err(e)) => Err(Error::runtime(format!(
            "the image {} is made and recorded, but the instance of {name} could not be terminated ({}); `stratus reconcile` or `terminate-cluster {name}` finishes it",
            built.image,
            crate::error::one_line(&e)
        ))),
        (Err(e), ended) => {
            let mut message = format!("the image build of profile {} failed", profile.name);
            if let Some(image) = &made {
                message.push_str(&format!(
                    "; the image {image} was created but not recorded: deregister it (aws ec2 deregister-image --image-id {image}) or build again"
                ));
            }
            message.push_str(&match ended {
                Ok(_) => format!("; the instance of {name} was terminated"),
                Err(t) => format!(
                    "; the instance of {name} could not be terminated ({}): `stratus reconcile` finishes it",
                    crate::error::one_line(&t)
                ),
            });
            ctx.printer.warn(&message);
            Err(e)
        }
    }
}

/// Waits for the node's install, images it, and records the image.
async fn bake(
    ctx: Ctx<'_>,
    ec2: &Ec2Provider,
    interrupt: &Interrupt,
    cluster: &ClusterRow,
    profile: &Profile,
    region: &str,
    made: &mut Option<String>,
) -> Result<Built, Error> {
    let node = ctx
        .store
        .nodes_of(cluster.id)?
        .into_iter()
        .find(|n| n.role == Role::Master && !n.state.is_gone())
        .ok_or_else(|| Error::runtime(format!("{} has no running node", cluster.name)))?;
    let key = crate::cluster::keys::ClusterKeys::of(ctx.state_dir, cluster).load()?;
    let client = Client::new(key, ctx.connect_timeout());
    let target = target(&node, cluster)?;
    let timeout = Duration::from_secs(profile.configure_timeout_secs);
    interrupt
        .race(wait_for_done(ctx, &client, &target, timeout, interrupt))
        .await?;

    let built_at = crate::model::now_millis();
    let image_name = format!(
        "stratus-{}-{}",
        profile.name,
        jiff::Timestamp::from_millisecond(built_at)
            .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_else(|_| built_at.to_string())
    );
    let versions = versions(profile);
    let tags = image_tags(cluster, ctx.store.id(), &image_name, &versions);
    let image = interrupt
        .race(async {
            ec2.create_image(
                &node.instance_id,
                &image_name,
                &format!(
                    "stratus: profile {} baked from {}",
                    profile.name, profile.master.image
                ),
                &tags,
            )
            .await
            .map_err(Error::from)
        })
        .await?;
    *made = Some(image.clone());
    ctx.printer.status(format!(
        "created image {image} ({image_name}); waiting until it is available"
    ));
    let snapshots = interrupt.race(available(ec2, &image)).await?;
    if !snapshots.is_empty() {
        ec2.tag(&snapshots, &tags).await?;
    }
    let versions_recorded = versions.clone();
    let record = Images::record(
        ctx.state_dir,
        &profile.name,
        Baked {
            image: image.clone(),
            region: region.to_owned(),
            base: profile.master.image.clone(),
            digest: digest(profile),
            built_at: rfc3339(built_at),
            versions,
        },
    )?;
    *made = None;
    Ok(Built {
        image,
        name: image_name,
        record,
        versions: versions_recorded,
    })
}

/// The image's tags: the cluster's (owner, cluster, profile, request, store), its name, and the
/// versions installed.
fn image_tags(
    cluster: &ClusterRow,
    store: &StoreId,
    name: &str,
    versions: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let tags = Tags {
        owner: cluster.owner.clone(),
        cluster: cluster.name.clone(),
        role: None,
        profile: cluster.profile.clone(),
        request: cluster.request_id.clone(),
        store: Some(store.clone()),
    };
    let mut pairs: Vec<(String, String)> = tags
        .pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    pairs.push((
        crate::cluster::provider::ec2::TAG_NAME.to_owned(),
        name.to_owned(),
    ));
    for (k, v) in versions {
        pairs.push((format!("stratus:{k}"), v.clone()));
    }
    pairs
}

/// Reads the node's phase over one SSH session (opened again if it drops) until it is `done`;
/// a phase starting with `failed` fails the build. Each new phase is shown.
async fn wait_for_done(
    ctx: Ctx<'_>,
    client: &Client,
    target: &crate::cluster::ssh::Target,
    timeout: Duration,
    interrupt: &Interrupt,
) -> Result<(), Error> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut session: Option<Session> = None;
    let mut last = String::new();
    loop {
        if session.as_ref().is_none_or(Session::is_closed) {
            session = match client.connect(target).await {
                Ok(s) => Some(s),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("{}: {e}; connecting again", target.name);
                    None
                }
                Err(e) => return Err(e.into()),
            };
        }
        if let Some(s) = &session {
            match s.exec(PHASE_COMMAND, None).await {
                Ok(out) => {
                    let phase = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    if phase != last {
                        ctx.printer.status(format!(
                            "{}: phase {} after {}s",
                            target.name,
                            if phase.is_empty() {
                                "(none yet)"
                            } else {
                                &phase
                            },
                            start.elapsed().as_secs()
                        ));
                        last = phase.clone();
                    }
                    if phase == "done" {
                        return Ok(());
                    }
                    if phase.starts_with("failed") {
                        return Err(Error::runtime(format!(
                            "{} reports {PHASE_FILE} = {phase:?}: its install failed",
                            target.name
                        )));
                    }
                }
                Err(e) => {
                    tracing::debug!("{}: {e}; reading the phase again", target.name);
                    session = None;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::runtime(format!(
                "{} did not report phase `done` in {PHASE_FILE} within {}s (the profile's configure_timeout_secs); last phase: {}",
                target.name,
                timeout.as_secs(),
                if last.is_empty() { "none" } else { &last }
            )));
        }
        interrupt.sleep(PHASE_POLL).await?;
    }
}

/// Waits until the image is available: its snapshots' ids.
async fn available(ec2: &Ec2Provider, image: &str) -> Result<Vec<String>, Error> {
    let start = Instant::now();
    // The first look soon: moto, and small images, are ready at once.
    let mut delay = Duration::from_secs(1);
    loop {
        match ec2.image_state(image).await? {
            ImageState::Available { snapshots } => return Ok(snapshots),
            ImageState::Failed(reason) => {
                return Err(Error::runtime(format!(
                    "the image {image} failed: {reason}"
                )));
            }
            // Unknown right after CreateImage is EC2's eventual consistency, not an answer.
            ImageState::Pending | ImageState::Unknown => {}
        }
        if start.elapsed() >= IMAGE_TIMEOUT {
            return Err(Error::runtime(format!(
                "the image {image} was not available after {} minutes",
                IMAGE_TIMEOUT.as_secs() / 60
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(IMAGE_POLL);
    }
}

/// `stratus admin image build --profile P [--dry-run]`.
pub async fn command(
    app: &crate::app::App,
    caller: &crate::caller::Caller,
    profile: &str,
    dry_run: bool,
) -> Result<std::process::ExitCode, Error> {
    use crate::config::Mode;
    use crate::model::ProviderKind;
    let config = &app.config;
    if config.mode == Mode::MultiUser
        && config.state_dir.as_deref() != Some(app.state_dir.as_path())
    {
        return Err(Error::invalid(format!(
            "in a multi-user install, build images as the service account (the owner of {}), so that the instance is accounted in the install's state and the runner's launches use the image",
            config
                .state_dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "the install's state_dir".into())
        )));
    }
    let (Some(ec2), ProviderKind::Ec2) = (config.ec2.as_ref(), config.provider) else {
        return Err(Error::invalid(
            "admin image build needs the ec2 provider (provider = \"ec2\" and an [ec2] table in the site config)",
        ));
    };
    let profile = app.profiles.resolve_as_written(profile)?;
    check(&profile, &caller.owner, app.store.id())?;
    let plan = plan(&profile, &app.state_dir)?;
    if dry_run {
        app.printer.out(format!(
            "admin image build --dry-run: nothing is created; a build would\n{}",
            plan.lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let provider = app.provider(ProviderKind::Ec2).await?;
    crate::quota::runner::reconcile_first(app, provider.as_ref(), &caller.owner).await;
    let built = build(
        BuildInputs {
            ctx: app.ctx(),
            provider: provider.as_ref(),
            owner: &caller.owner,
            region: &ec2.region,
        },
        profile.clone(),
    )
    .await?;
    app.printer.out(format!(
        "image {} ({}) of profile {}{} recorded in {}: its launches now boot from it",
        built.image,
        built.name,
        profile.name,
        if built.versions.is_empty() {
            String::new()
        } else {
            format!(
                ", {}",
                built
                    .versions
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        built.record.display()
    ))?;
    Ok(std::process::ExitCode::SUCCESS)
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

    #[test]
    fn reserved_names_fit() {
        assert_eq!(cluster_name("hadoop").unwrap().as_str(), "image-hadoop");
        let long = cluster_name(&"a".repeat(60)).unwrap();
        assert_eq!(long.as_str().len(), ClusterName::MAX_LEN);
        assert!(cluster_name("a-------------------------------------------------").is_ok());
        assert_eq!(
            cluster_name("My_Hadoop.2").unwrap().as_str(),
            "image-my-hadoop-2"
        );
    }
}
