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

use crate::cluster::Ctx;
use crate::cluster::interrupt::Interrupt;
use crate::cluster::launch::{self, LaunchRequest};
use crate::cluster::meta::{Meta, Want, target};
use crate::cluster::provider::ec2::Ec2Provider;
use crate::cluster::provider::ec2::image::ImageState;
use crate::cluster::provider::{AnyProvider, Provider};
use crate::cluster::ssh::{Client, Session};
use crate::cluster::terminate;
use crate::config::images::{Baked, Images, digest, versions};
use crate::config::profile::Profile;
use crate::core::error::Error;
use crate::core::model::{ClusterName, Owner, RequestId, Role, StoreId, Tags, rfc3339};
use crate::store::ClusterRow;
use crate::templates::Renderer;

use crate::cluster::waits::PHASE_COMMAND;
/// Where a node being baked reports its phase (`done` when it can be imaged).
pub use crate::cluster::waits::PHASE_FILE;
/// How often the phase is read.
const PHASE_POLL: Duration = Duration::from_secs(5);
/// How long CreateImage may take to make an image available (EC2 snapshots every volume).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const IMAGE_POLL: Duration = Duration::from_secs(10);

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
        profile
            .boot_timeout_secs
            .unwrap_or(profile.configure_timeout_secs),
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
    if !profile.supports(crate::core::model::ProviderKind::Ec2) {
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
        clock: None,
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
    let interrupt = Interrupt::listen(ctx.hangup)?;
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
        extra_keys: Vec::new(),
        lifetime: None,
        guard: None,
    };
    // A failed launch rolls itself back.
    let cluster = launch::launch(
        ctx,
        provider,
        owner,
        &request,
        req,
        &crate::cluster::Unlimited,
    )
    .await?;
    let mut made: Option<String> = None;
    let r = bake(ctx, ec2, &interrupt, &cluster, &profile, region, &mut made).await;
    // The instance ends whatever happened; its hours are recorded like any cluster's.
    let ended = terminate::terminate(ctx, provider, &cluster).await;
    match (r, ended) {
        (Ok(built), Ok(_)) => Ok(built),
        (Ok(built), Err(e)) => Err(Error::runtime(format!(
            "the image {} is made and recorded, but the instance of {name} could not be terminated ({}); `stratus reconcile` or `terminate-cluster {name}` finishes it",
            built.image,
            crate::core::error::one_line(&e)
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
                    crate::core::error::one_line(&t)
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
    // A profile that sets boot_timeout_secs had its install waited for by the launch itself
    // (`waits::boot`), which showed each phase; only others are waited for here.
    if profile.boot_timeout_secs.is_none() {
        let key = crate::cluster::keys::ClusterKeys::of(ctx.state_dir, cluster).load()?;
        let client = Client::new(key, ctx.connect_timeout());
        let target = target(&node, cluster)?;
        let timeout = Duration::from_secs(profile.configure_timeout_secs);
        interrupt
            .race(wait_for_done(ctx, &client, &target, timeout, interrupt))
            .await?;
    }

    let built_at = crate::core::model::now_millis();
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_plan_names_the_install_wait_the_build_runs_under() {
        let dir = std::path::Path::new("/state");
        let mut p = Profile::for_tests("p");
        p.configure_timeout_secs = 1800;
        assert!(plan(&p, dir).unwrap().contains("up to 1800 s for"));
        // The launch waits for the install itself, within the profile's boot_timeout_secs.
        p.boot_timeout_secs = Some(1200);
        assert!(plan(&p, dir).unwrap().contains("up to 1200 s for"));
    }
}
