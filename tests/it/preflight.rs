//! `stratus admin preflight` against moto's EC2 (and Service Quotas) server: a good setup passes,
//! and a bad image, a type not offered in the subnet's zone and a full subnet each fail, naming
//! what is wrong; through the real binary (table, `--json`, exit codes) and through the
//! provider's own `preflight`.
//!
//! What moto 5.2.5 answers here: DescribeInstanceTypeOfferings from AWS's own lists (m5.large
//! and m5.xlarge are offered in us-east-1a to 1d and 1f, not in 1e, as on AWS), subnets'
//! `AvailableIpAddressCount` (a /28 holds 11), and GetServiceQuota only for VPC quotas: the vCPU
//! check is `unknown` against it, which must not fail the preflight.

use serde_json::Value;
use stratus::cluster::provider::ec2::preflight::{Plan, Verdict};
use stratus::config::SiteConfig;
use stratus::config::profile::Profile;
use stratus::core::model::StoreId;

use crate::ec2::ec2_moto::{Moto, REGION, UBUNTU_AMI, UBUNTU_PARAMETER};
use crate::ec2::{ec2_context, ec2_provider};
use crate::support::{Run, TestContext};

/// A profile of m5.large masters and m5.xlarge workers, the master booting by AMI id and the
/// workers by SSM parameter.
const PROFILE: &str = r#"
description = "preflight test"
providers = ["ec2"]
max_workers = 8
ssh_user = "ubuntu"
ports = [9870]
max_lifetime_hours = 3

[master]
image = "MASTER_IMAGE"
instance_type = "m5.large"
user_data = "pf/node.sh.hbs"

[worker]
image = "WORKER_IMAGE"
instance_type = "m5.xlarge"
user_data = "pf/node.sh.hbs"
"#;

/// A VPC with DNS host names on and one subnet per (CIDR, zone). Returns the subnet ids.
fn subnets(moto: &Moto, wanted: &[(&str, &str)]) -> Vec<String> {
    moto.block_on(async {
        let vpc = moto
            .ec2
            .create_vpc()
            .cidr_block("127.0.0.0/16")
            .send()
            .await
            .unwrap();
        let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_owned();
        moto.ec2
            .modify_vpc_attribute()
            .vpc_id(&vpc)
            .enable_dns_hostnames(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(true)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut ids = Vec::new();
        for (cidr, zone) in wanted {
            let s = moto
                .ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(*cidr)
                .availability_zone(format!("{REGION}{zone}"))
                .send()
                .await
                .unwrap();
            ids.push(s.subnet().and_then(|s| s.subnet_id()).unwrap().to_owned());
        }
        ids
    })
}

/// The site's `[ec2]` lines for these subnets.
fn site_lines(subnets: &[String]) -> String {
    let list: Vec<String> = subnets.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "subnet_ids = [{}]\naddress = \"private_ip\"\nclient_cidrs = [\"127.0.0.0/8\"]\n",
        list.join(", ")
    )
}

/// A context on these subnets with the test profile `pf`.
fn context(moto: &Moto, subnets: &[String], master_image: &str) -> TestContext {
    let ctx = ec2_context(moto, &site_lines(subnets));
    ctx.profile_file(
        "pf.toml",
        &PROFILE
            .replace("MASTER_IMAGE", master_image)
            .replace("WORKER_IMAGE", &format!("resolve:ssm:{UBUNTU_PARAMETER}")),
    );
    ctx.profile_file("pf/node.sh.hbs", "#!/bin/sh\n");
    ctx
}

/// `admin preflight --json` for `students`: the run and its report.
fn preflight_json(ctx: &TestContext, students: u32) -> (Run, Value) {
    let n = students.to_string();
    let run = ctx.run(&["admin", "preflight", "--students", &n, "-p", "pf", "--json"]);
    let report: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("admin preflight --json prints JSON ({e}):\n{run}"));
    (run, report)
}

/// The check of this name in a report: (verdict, detail).
fn check(report: &Value, name: &str) -> (String, String) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"));
    (
        c["verdict"].as_str().unwrap().to_owned(),
        c["detail"].as_str().unwrap().to_owned(),
    )
}

/// Every check but `failing` passes (the vCPU quota, which moto cannot tell, is `unknown`).
fn only_failing(report: &Value, failing: &[&str]) {
    for c in report["checks"].as_array().unwrap() {
        let name = c["check"].as_str().unwrap();
        let verdict = c["verdict"].as_str().unwrap();
        let want = if failing.contains(&name) {
            "fail"
        } else if name == "vcpu-quota" {
            "unknown"
        } else {
            "pass"
        };
        assert_eq!(verdict, want, "{name}: {c:#}");
    }
    assert_eq!(report["ok"], Value::Bool(failing.is_empty()), "{report:#}");
}

#[test]
fn preflight_passes_a_good_setup_and_creates_nothing() {
    let Some(moto) = Moto::acquire() else { return };
    let subnet = subnets(&moto, &[("127.0.0.0/24", "a")]);
    let ctx = context(&moto, &subnet, UBUNTU_AMI);
    let groups_before = moto.block_on(async {
        moto.ec2
            .describe_security_groups()
            .send()
            .await
            .unwrap()
            .security_groups()
            .len()
    });

    let (run, report) = preflight_json(&ctx, 5);
    assert_eq!(run.code, 0, "{run}");
    only_failing(&report, &[]);
    assert_eq!(
        (
            &report["students"],
            &report["workers"],
            &report["nodes_per_cluster"]
        ),
        (&Value::from(5), &Value::from(2), &Value::from(3)),
        "{report:#}"
    );
    let (_, image) = check(&report, "image");
    assert!(image.contains(UBUNTU_AMI), "{image}");
    assert!(image.contains(UBUNTU_PARAMETER), "{image}");
    let (_, offered) = check(&report, "instance-types");
    assert!(
        offered.contains("m5.xlarge offered in us-east-1a"),
        "{offered}"
    );
    let (_, addresses) = check(&report, "addresses");
    assert!(
        addresses.contains(&format!(
            "5 clusters of 1 master and 2 workers need 15 addresses; {} (us-east-1a) has 251 free",
            subnet[0]
        )),
        "{addresses}"
    );
    let (_, group) = check(&report, "security-group");
    assert!(
        group.contains("a dry run of CreateSecurityGroup"),
        "{group}"
    );
    // Service Quotas of moto 5.2.5 holds no EC2 quota: said, not failed.
    let (_, quota) = check(&report, "vcpu-quota");
    assert!(quota.contains("L-1216C47A"), "{quota}");
    assert!(
        quota.ends_with("nothing of it runs in the account now"),
        "{quota}"
    );
    // 5 × (m5.large + 2 m5.xlarge, three 8 GiB volumes, no public address) for 3 hours.
    let (_, spend) = check(&report, "spend");
    assert!(spend.starts_with("$2.41 an hour for 5 clusters"), "{spend}");
    assert!(spend.contains("$7.24 per lab session of 3 h"), "{spend}");
    let groups_after = moto.block_on(async {
        moto.ec2
            .describe_security_groups()
            .send()
            .await
            .unwrap()
            .security_groups()
            .len()
    });
    assert_eq!(groups_after, groups_before, "the dry run created a group");

    // The table says the same, one line per check.
    let table = ctx.ok(&["admin", "preflight", "--students", "5", "--profile", "pf"]);
    assert!(
        table.stdout.starts_with(
            "5 students, profile pf: a master and 2 workers each (the default; --workers sets it), 15 nodes in all\nCHECK"
        ),
        "{table}"
    );
    for name in [
        "image",
        "instance-types",
        "addresses",
        "security-group",
        "spend",
        "policy",
    ] {
        assert!(
            table
                .stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" pass ")),
            "{name} passes in the table:\n{table}"
        );
    }
    // --workers sizes the clusters; bad input is exit 2.
    let (_, wide) = {
        let run = ctx.run(&[
            "admin",
            "preflight",
            "--students",
            "5",
            "-p",
            "pf",
            "--workers",
            "4",
            "--json",
        ]);
        (
            run.code,
            serde_json::from_str::<Value>(&run.stdout).unwrap(),
        )
    };
    assert_eq!(wide["nodes_per_cluster"], 5, "{wide:#}");
    for bad in [
        vec!["admin", "preflight", "--students", "5", "-p", "nope"],
        vec!["admin", "preflight", "--students", "0", "-p", "pf"],
        vec![
            "admin",
            "preflight",
            "--students",
            "5",
            "-p",
            "pf",
            "--workers",
            "9",
        ],
    ] {
        let r = ctx.run(&bad);
        assert_eq!(r.code, 2, "{r}");
    }
}

#[test]
fn preflight_counts_what_already_runs_against_the_vcpu_quota() {
    let Some(moto) = Moto::acquire() else { return };
    let subnet = subnets(&moto, &[("127.0.0.0/24", "a")]);
    let ctx = context(&moto, &subnet, UBUNTU_AMI);
    // Three m5.large (2 vCPUs each) that someone else runs in the account, and one stopped,
    // which takes none.
    let ids = moto.block_on(async {
        let out = moto
            .ec2
            .run_instances()
            .image_id(UBUNTU_AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
            .subnet_id(&subnet[0])
            .min_count(4)
            .max_count(4)
            .send()
            .await
            .unwrap();
        out.instances()
            .iter()
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect::<Vec<_>>()
    });
    moto.block_on(async {
        moto.ec2
            .stop_instances()
            .instance_ids(&ids[0])
            .send()
            .await
            .unwrap()
    });
    let (run, report) = preflight_json(&ctx, 5);
    assert_eq!(run.code, 0, "{run}");
    let (verdict, quota) = check(&report, "vcpu-quota");
    assert_eq!(verdict, "unknown", "{quota}");
    assert!(
        quota.ends_with("instances running in the account now take 6 vCPUs of ec2/L-1216C47A"),
        "{quota}"
    );
}

#[test]
fn preflight_fails_naming_a_bad_image() {
    let Some(moto) = Moto::acquire() else { return };
    let subnet = subnets(&moto, &[("127.0.0.0/24", "a")]);
    let ctx = context(&moto, &subnet, "ami-0123456789abcdef0");
    let (run, report) = preflight_json(&ctx, 2);
    assert_eq!(run.code, 1, "{run}");
    only_failing(&report, &["image"]);
    let (_, image) = check(&report, "image");
    assert!(
        image.contains(&format!(
            "the image ami-0123456789abcdef0 of the master: image ami-0123456789abcdef0 does not exist in {REGION}"
        )),
        "{image}"
    );
    // The worker's image resolved: only the master's is named as failing.
    assert!(
        image.contains(&format!("{UBUNTU_AMI}) is available")),
        "{image}"
    );
    assert!(run.stderr.contains("preflight failed: image"), "{run}");
}

#[test]
fn preflight_fails_naming_a_type_not_offered_in_the_zone() {
    let Some(moto) = Moto::acquire() else { return };
    // EC2 (and moto) offer no m5 in us-east-1e.
    let subnet = subnets(&moto, &[("127.0.0.0/24", "e")]);
    let ctx = context(&moto, &subnet, UBUNTU_AMI);
    let (run, report) = preflight_json(&ctx, 2);
    assert_eq!(run.code, 1, "{run}");
    // Without a subnet where the nodes can run, no address counts either.
    only_failing(&report, &["instance-types", "addresses"]);
    let (_, offered) = check(&report, "instance-types");
    for t in ["m5.large", "m5.xlarge"] {
        assert!(
            offered.contains(&format!("{t} is not offered in {} (us-east-1e)", subnet[0])),
            "{offered}"
        );
    }
    assert!(
        offered.contains("the master's types (m5.large) are offered in none"),
        "{offered}"
    );
}

#[test]
fn preflight_fails_naming_a_full_subnet() {
    let Some(moto) = Moto::acquire() else { return };
    // A /28 holds 16 addresses, 5 of them AWS's: 11 for nodes.
    let subnet = subnets(&moto, &[("127.0.0.0/28", "a")]);
    let ctx = context(&moto, &subnet, UBUNTU_AMI);
    let (run, report) = preflight_json(&ctx, 3);
    assert_eq!(run.code, 0, "3 clusters of 3 nodes fit in 11:\n{run}");
    let (run, report4) = preflight_json(&ctx, 4);
    assert_eq!(run.code, 1, "{run}");
    only_failing(&report, &[]);
    only_failing(&report4, &["addresses"]);
    let (_, addresses) = check(&report4, "addresses");
    assert!(
        addresses.contains(&format!(
            "need 12 addresses; {} (us-east-1a) has 11 free; 1 address short",
            subnet[0]
        )),
        "{addresses}"
    );
    let table = ctx.run(&["admin", "preflight", "--students", "4", "-p", "pf"]);
    assert_eq!(table.code, 1, "{table}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("addresses") && l.contains(" fail ") && l.contains(&subnet[0])),
        "{table}"
    );
}

/// The provider's own preflight, as the service calls it: a worker type missing in one of two
/// zones warns, naming it, and the addresses of that zone's subnet are not counted.
#[test]
fn the_provider_s_preflight_warns_of_a_type_missing_in_one_zone() {
    let Some(moto) = Moto::acquire() else { return };
    let ids = subnets(&moto, &[("127.0.0.0/26", "a"), ("127.0.0.64/26", "e")]);
    let dir = tempfile::tempdir().unwrap();
    let provider = ec2_provider(&moto, dir.path(), &site_lines(&ids));
    let mut profile = Profile::for_tests("pf");
    profile.master.image = UBUNTU_AMI.into();
    profile.worker.image = UBUNTU_AMI.into();
    // The master may fall back to c4.large, which both zones offer; us-east-1e no m5.large.
    profile.master.instance_types = vec!["m5.large".into(), "c4.large".into()];
    profile.worker.instance_types = vec!["m5.large".into()];
    let site = SiteConfig::default();
    let store = StoreId::from_stored("st-0123456789abcdef".into());
    let plan = Plan {
        site: &site,
        profile: &profile,
        students: 2,
        workers: 3,
        lifetime: None,
        store: &store,
    };
    let checks = moto.block_on(provider.preflight(&plan));
    let names: Vec<&str> = checks.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(
        names,
        [
            "image",
            "instance-types",
            "addresses",
            "security-group",
            "vcpu-quota",
            "spend"
        ]
    );
    let by = |n: &str| checks.iter().find(|c| c.check == n).unwrap();
    let offered = by("instance-types");
    assert_eq!(offered.verdict, Verdict::Warn, "{offered:?}");
    assert!(
        offered.detail.contains(&format!(
            "m5.large is not offered in {} (us-east-1e)",
            ids[1]
        )),
        "{offered:?}"
    );
    assert!(
        !offered.detail.contains("c4.large is not offered"),
        "{offered:?}"
    );
    let addresses = by("addresses");
    assert_eq!(addresses.verdict, Verdict::Pass, "{addresses:?}");
    assert!(
        addresses.detail.contains(&format!(
            "need 8 addresses; {} (us-east-1a) has 59 free (not counted: {} (us-east-1e)",
            ids[0], ids[1]
        )),
        "{addresses:?}"
    );
    // No lifetime: a session's spend has no bound.
    assert_eq!(by("spend").verdict, Verdict::Warn);
    assert_eq!(by("vcpu-quota").verdict, Verdict::Unknown);
    assert_eq!(by("image").verdict, Verdict::Pass);
}
