//! `stratus admin image build` against moto, the test hypervisor booting the instance as a local
//! node at its loopback address (SSH for real, host key pinned from its console): the instance
//! is a one-node cluster of the launch path (recorded, accounted, terminated), its user-data is
//! rendered with `image_build = true`, the image is tagged like every resource plus the versions,
//! and the profile's launches boot from it afterwards; `--dry-run` creates nothing; a failed
//! install rolls back and records nothing; bad input is refused with exit code 2.

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use serde_json::Value;

use crate::ec2::ec2_moto::{Moto, UBUNTU_AMI, assert_cluster_tags, tag};
use crate::ec2::{hypervisor, loopback_context, owner};
use crate::support::TestContext;

/// A profile with the phase protocol of a baked image: with `image_build`, install (here: a
/// file), report `done`; else boot as a cluster node.
const PROFILE: &str = r#"
description = "image build test"
providers = ["ec2"]
max_workers = 4
ssh_user = "ubuntu"
ssh_port = 2200
ready_timeout_secs = 60
configure_timeout_secs = 60

[vars]
tool_version = "2.7.1"
other = "x"

[master]
image = "IMAGE"
instance_type = "m5.large"
user_data = "bake/node.sh.hbs"
volume_gb = 20

[worker]
image = "IMAGE"
instance_type = "m5.large"
user_data = "bake/node.sh.hbs"
"#;

const USER_DATA: &str = r#"#!/bin/sh
# {{cluster}} {{role}}
{{#if image_build}}
# image build: install only
mkdir -p "$STRATUS_STATE_DIR"
echo installing > "$STRATUS_STATE_DIR/phase"
echo "tool {{profile.vars.tool_version}}" > installed
echo PHASE > "$STRATUS_STATE_DIR/phase"
{{else}}
echo "cluster node" > role
{{/if}}
"#;

fn site(moto: &Moto, phase: &str) -> TestContext {
    let ctx = loopback_context(moto);
    ctx.profile_file("bake.toml", &PROFILE.replace("IMAGE", UBUNTU_AMI));
    ctx.profile_file("bake/node.sh.hbs", &USER_DATA.replace("PHASE", phase));
    ctx
}

/// The images moto holds that stratus made (its tag), with their tags.
fn stratus_images(moto: &Moto) -> Vec<aws_sdk_ec2::types::Image> {
    moto.block_on(async {
        moto.ec2
            .describe_images()
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values("stratus:store")
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .images()
            .to_vec()
    })
}

fn resolved(ctx: &TestContext, profile: &str) -> String {
    ctx.ok(&["profiles", "show", profile]).stdout
}

#[test]
fn a_baked_image_is_tagged_accounted_and_used_by_the_profile_s_launches() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = site(&moto, "done");
    let hv = hypervisor(&moto, "image-bake", &[]);

    let r = ctx.ok(&["admin", "image", "build", "--profile", "bake"]);
    let images = stratus_images(&moto);
    assert_eq!(images.len(), 1, "{images:#?}\n{r}");
    let image = &images[0];
    let ami = image.image_id().unwrap();
    assert!(r.stdout.contains(&format!("image {ami}")), "{r}");
    assert!(r.stdout.contains("tool_version 2.7.1"), "{r}");
    // Tagged like every resource of the cluster that made it, plus its name and the versions.
    assert_cluster_tags("image", image.tags(), &owner(), "image-bake", "bake");
    assert_eq!(tag(image.tags(), "stratus:tool_version"), Some("2.7.1"));
    assert!(
        tag(image.tags(), "stratus:other").is_none(),
        "only *_version vars"
    );
    let name = image.name().unwrap();
    assert!(name.starts_with("stratus-bake-"), "{name}");
    assert_eq!(tag(image.tags(), "Name"), Some(name));
    // Its snapshots carry the same tags.
    let snapshots: Vec<String> = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
        .map(str::to_owned)
        .collect();
    assert!(!snapshots.is_empty());
    let tagged = moto.block_on(async {
        moto.ec2
            .describe_snapshots()
            .set_snapshot_ids(Some(snapshots.clone()))
            .send()
            .await
            .unwrap()
            .snapshots()
            .to_vec()
    });
    for s in &tagged {
        assert_cluster_tags("snapshot", s.tags(), &owner(), "image-bake", "bake");
    }

    // The instance: the profile's master, its user-data the install-only branch; booted once,
    // and terminated.
    let instances = moto.instances(&[("tag:stratus:cluster", "image-bake")]);
    assert_eq!(instances.len(), 1, "{instances:#?}");
    let i = &instances[0];
    assert_eq!(image.source_instance_id(), i.instance_id());
    assert_eq!(
        i.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );
    let user_data = moto.user_data(i.instance_id().unwrap());
    assert!(
        user_data.contains("# image build: install only"),
        "{user_data}"
    );
    assert!(!user_data.contains("cluster node"), "{user_data}");
    assert_eq!(
        hv.report().booted,
        vec![i.instance_id().unwrap().to_owned()]
    );
    drop(hv);

    // Accounted like any cluster: in the store, ended, with its hours.
    let all: Value = serde_json::from_str(&ctx.ok(&["list", "--all", "--json"]).stdout).unwrap();
    let row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "image-bake")
        .expect("the build's cluster is listed");
    assert_eq!(row["state"], "terminated", "{row:#}");
    let usage: Value = serde_json::from_str(&ctx.ok(&["usage", "--json"]).stdout).unwrap();
    let used = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["cluster"] == "image-bake")
        .expect("its usage");
    assert_eq!(used["open"], false, "{used:#}");

    // Recorded: the profile's roles now boot from the image, and a launch does.
    let record = std::fs::read_to_string(ctx.state.join("images.toml")).unwrap();
    assert!(record.contains(&format!("image = \"{ami}\"")), "{record}");
    let shown = resolved(&ctx, "bake");
    assert_eq!(
        shown.matches(&format!("image = \"{ami}\"")).count(),
        2,
        "{shown}"
    );
    ctx.ok(&["launch-cluster", "c1", "1", "-p", "bake", "--no-configure"]);
    let launched = moto.instances(&[("tag:stratus:cluster", "c1")]);
    assert_eq!(launched.len(), 2);
    for i in &launched {
        assert_eq!(i.image_id(), Some(ami), "{i:#?}");
    }
    ctx.ok(&["terminate-cluster", "c1", "--yes"]);

    // A changed profile (another version) is not what was baked: its own image again, said so.
    ctx.profile_file(
        "bake.toml",
        &PROFILE
            .replace("IMAGE", UBUNTU_AMI)
            .replace("2.7.1", "2.8.0"),
    );
    let r = ctx.ok(&["profiles", "show", "bake"]);
    assert!(!r.stdout.contains(ami), "{r}");
    assert!(r.stdout.contains(UBUNTU_AMI), "{r}");
    assert!(
        r.stderr.contains("was made from another version of it"),
        "{r}"
    );
}

#[test]
fn a_dry_run_says_what_it_would_do_and_creates_nothing() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = site(&moto, "done");
    let r = ctx.ok(&["admin", "image", "build", "--profile", "bake", "--dry-run"]);
    for said in [
        "nothing is created",
        "launch one m5.large instance",
        "image-bake",
        "image_build = true",
        "stratus:tool_version = 2.7.1",
        "/var/lib/stratus/phase",
        "terminate the instance",
        "images.toml",
    ] {
        assert!(r.stdout.contains(said), "{said:?} in:\n{r}");
    }
    assert!(moto.instances(&[]).is_empty());
    assert!(stratus_images(&moto).is_empty());
    assert!(!ctx.state.join("images.toml").exists());
}

#[test]
fn a_failed_install_terminates_the_instance_and_records_nothing() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = site(&moto, "failed: the mirror did not answer");
    let hv = hypervisor(&moto, "image-bake", &[]);
    let r = ctx.run(&["admin", "image", "build", "--profile", "bake"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("the mirror did not answer"), "{r}");
    assert!(r.stderr.contains("was terminated"), "{r}");
    let instances = moto.instances(&[("tag:stratus:cluster", "image-bake")]);
    assert_eq!(instances.len(), 1);
    assert_eq!(
        instances[0].state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );
    assert_eq!(hv.report().booted.len(), 1);
    assert!(stratus_images(&moto).is_empty());
    assert!(!ctx.state.join("images.toml").exists());
    assert!(resolved(&ctx, "bake").contains(UBUNTU_AMI));
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = site(&moto, "done");
    let r = ctx.run(&["admin", "image", "build", "--profile", "nope"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("unknown profile \"nope\""), "{r}");
    let r = ctx.run(&["admin", "image", "build", "--profile", "local-demo"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("not for the ec2 provider"), "{r}");
    let r = ctx.run(&["admin", "image", "build"]);
    assert_eq!(r.code, 2, "{r}");
    // A site without EC2.
    let local = TestContext::new();
    let r = local.run(&["admin", "image", "build", "--profile", "local-demo"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("needs the ec2 provider"), "{r}");
    let r = local.run(&["admin", "iam-policy"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("no [ec2] table"), "{r}");
    assert!(moto.instances(&[]).is_empty());
}
