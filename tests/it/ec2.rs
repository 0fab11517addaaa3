//! The EC2 provider against moto's EC2 server, through the real binary and the library: tags on
//! everything it creates, security group rules as configured, user-data as rendered, listing past
//! moto's 100-reservation pages, terminate and delete leaving nothing behind, a whole cluster
//! configured over SSH on loopback instances (the test acting as the hypervisor), rollback when a
//! worker never answers, and one clear sentence when credentials are wrong or missing.
//!
//! moto is shared and global: every test here holds `Moto` (an exclusive lock, then a reset)
//! for its whole run. Without `STRATUS_MOTO_ENDPOINT` they skip, unless
//! `STRATUS_REQUIRE_MOTO=1`.

#[path = "support/ec2_hypervisor.rs"]
pub(crate) mod ec2_hypervisor;
#[path = "support/ec2_moto.rs"]
pub(crate) mod ec2_moto;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceLifecycleType, InstanceStateName};
use serde_json::Value;
use stratus::cluster::provider::ec2::{Ec2Provider, group_name, key_name};
use stratus::cluster::provider::{ClusterRef, Provider, ProviderError, Selector, SshAccess};
use stratus::config::{Ec2Config, SiteConfig, Trust};
use stratus::core::model::{ClusterName, Naming, Owner, RequestId, StoreId};

pub(crate) use crate::support::BIN;
use crate::support::{TestContext, eventually};
use ec2_hypervisor::{Console, Hypervisor, HypervisorConfig};
use ec2_moto::{Moto, UBUNTU_AMI, assert_cluster_tags, tag};

pub(crate) const CIDRS: [&str; 2] = ["203.0.113.0/24", "198.51.100.7/32"];

/// A loopback subnet and a context whose EC2 nodes get addresses there.
pub(crate) fn loopback_context(moto: &Moto) -> TestContext {
    let (_vpc, subnet) = moto.loopback_subnet();
    ec2_context(
        moto,
        &format!(
            "subnet_id = \"{subnet}\"\naddress = \"private_ip\"\nclient_cidrs = [\"127.0.0.0/8\"]\n"
        ),
    )
}

/// A context whose site config points stratus at this moto, with `ec2_extra` in `[ec2]`.
pub(crate) fn ec2_context(moto: &Moto, ec2_extra: &str) -> TestContext {
    let ctx = TestContext::new();
    let site = moto.site_config(ctx.root.path(), ec2_extra);
    std::fs::write(
        &ctx.config,
        format!(
            "profiles_dir = {:?}\n{site}",
            ctx.profiles.display().to_string()
        ),
    )
    .unwrap();
    ctx
}

pub(crate) fn owner() -> String {
    stratus::service::caller::Caller::from_real_uid()
        .unwrap()
        .owner
        .to_string()
}

pub(crate) fn nodes(cluster: &Value) -> Vec<Value> {
    cluster["nodes"].as_array().unwrap().clone()
}

/// A profile with everything the provider acts on: SSH and web ports, spot workers with a root
/// volume size, and user-data that echoes its boot facts.
pub(crate) const TAGGED: &str = r#"
description = "EC2 test: tags, rules, user-data"
providers = ["ec2"]
max_workers = 200
ssh_user = "ubuntu"
ssh_port = 2200
ports = [9870, 8088]
ready_timeout_secs = 60

[master]
image = "IMAGE"
instance_type = "m5.large"
user_data = "tagged/node.sh.hbs"

[worker]
image = "IMAGE"
instance_type = "m5.xlarge"
user_data = "tagged/node.sh.hbs"
spot = true
volume_gb = 40
"#;

pub(crate) const TAGGED_USER_DATA: &str = "#!/bin/bash\n# {{cluster}} role={{role}} owner={{owner}} request={{request_id}} profile={{profile.name}}\necho booted\n";

pub(crate) fn tagged_profile(ctx: &TestContext) {
    ctx.profile_file("tagged.toml", &TAGGED.replace("IMAGE", UBUNTU_AMI));
    ctx.profile_file("tagged/node.sh.hbs", TAGGED_USER_DATA);
}

/// The ingress rules of a group as (protocol, from, to, source) atoms.
fn rules(g: &aws_sdk_ec2::types::SecurityGroup) -> BTreeSet<(String, i32, i32, String)> {
    let mut set = BTreeSet::new();
    for p in g.ip_permissions() {
        let proto = p.ip_protocol().unwrap_or("-1").to_owned();
        let (from, to) = if proto == "-1" {
            (-1, -1)
        } else {
            (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1))
        };
        let sources = p
            .user_id_group_pairs()
            .iter()
            .map(|g| g.group_id())
            .chain(p.ip_ranges().iter().map(|r| r.cidr_ip()))
            .chain(p.ipv6_ranges().iter().map(|r| r.cidr_ipv6()));
        for source in sources {
            set.insert((proto.clone(), from, to, source.unwrap_or("?").to_owned()));
        }
    }
    set
}

fn first_two_fields(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn launch_list_terminate_tags_everything_and_leaves_nothing() {
    let Some(moto) = Moto::acquire() else { return };
    let (vpc, subnet) = moto.loopback_subnet();
    let ctx = ec2_context(
        &moto,
        &format!("subnet_id = \"{subnet}\"\naddress = \"private_ip\"\nclient_cidrs = {CIDRS:?}\n"),
    );
    tagged_profile(&ctx);
    let owner = owner();
    ctx.ok(&[
        "launch-cluster",
        "tg",
        "2",
        "-p",
        "tagged",
        "--no-configure",
    ]);

    // Instances: tagged from birth, in our group, with the key pair, terminate on shutdown,
    // workers on spot, user-data exactly the rendered template.
    let instances = moto.instances(&[("tag:stratus:cluster", "tg")]);
    assert_eq!(instances.len(), 3, "{instances:#?}");
    let requests: BTreeSet<&str> = instances
        .iter()
        .filter_map(|i| tag(i.tags(), "stratus:request"))
        .collect();
    assert_eq!(requests.len(), 1, "one request for the whole launch");
    let request = requests.into_iter().next().unwrap().to_owned();
    let group = moto.groups_named(&format!("stratus-{owner}@tg"));
    assert_eq!(group.len(), 1, "{group:#?}");
    let group = &group[0];
    let group_id = group.group_id().unwrap();
    let mut workers = 0;
    let mut worker_indices = BTreeSet::new();
    for i in &instances {
        let id = i.instance_id().unwrap();
        let t = i.tags();
        assert_cluster_tags(id, t, &owner, "tg", "tagged");
        let role = tag(t, "stratus:role").unwrap();
        let name = tag(t, "Name").unwrap();
        assert_eq!(tag(t, "stratus:ssh-port"), Some("2200"));
        assert_eq!(
            i.state().and_then(|s| s.name()),
            Some(&InstanceStateName::Running)
        );
        assert!(
            i.private_ip_address().unwrap().starts_with("127.0.0."),
            "{i:?}"
        );
        assert_eq!(i.key_name(), Some(format!("{owner}@tg").as_str()));
        assert!(
            i.security_groups()
                .iter()
                .any(|g| g.group_id() == Some(group_id))
        );
        assert_eq!(i.subnet_id(), Some(subnet.as_str()));
        // One launch call per role: a node's index is its batch's first index plus its launch
        // index, and every node of a role has the same user-data.
        assert_eq!(tag(t, "stratus:store"), Some(store_id(&ctx).as_str()));
        let index = match role {
            "master" => {
                assert_eq!(name, "tg-master");
                assert_eq!(i.instance_lifecycle(), None, "the master is on-demand");
                assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.large"));
                0
            }
            "worker" => {
                workers += 1;
                assert_eq!(name, "tg-worker");
                assert_eq!(i.instance_lifecycle(), Some(&InstanceLifecycleType::Spot));
                assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.xlarge"));
                let first: u32 = tag(t, "stratus:first-index").unwrap().parse().unwrap();
                first + u32::try_from(i.ami_launch_index().unwrap()).unwrap()
            }
            other => panic!("role {other}"),
        };
        worker_indices.insert(index);
        // stratus's guard part, then the profile's own user-data, whole.
        let parts = stratus::templates::split_multipart(&moto.user_data(id)).unwrap();
        assert_eq!(parts[0].0, "00-stratus-guard.sh");
        assert_eq!(
            parts[1].1,
            format!(
                "#!/bin/bash\n# tg role={role} owner={owner} request={request} profile=tagged\necho booted\n"
            )
        );
        let shutdown = moto.block_on(async {
            moto.ec2
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(
                    aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior,
                )
                .send()
                .await
                .unwrap()
                .instance_initiated_shutdown_behavior()
                .and_then(|v| v.value())
                .map(str::to_owned)
        });
        assert_eq!(shutdown.as_deref(), Some("terminate"), "{id}");
    }
    assert_eq!(workers, 2);
    assert_eq!(worker_indices, BTreeSet::from([0, 1, 2]));
    let listed: BTreeSet<String> = nodes(&ctx.cluster_json("tg"))
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([
            "tg-master".into(),
            "tg-worker-1".into(),
            "tg-worker-2".into()
        ])
    );

    // Root volumes carry the tags too; the workers' are resized.
    let volumes = moto.block_on(async {
        moto.ec2
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("tag:stratus:cluster")
                    .values("tg")
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .volumes()
            .to_vec()
    });
    assert_eq!(volumes.len(), 3, "{volumes:#?}");
    for v in &volumes {
        assert_cluster_tags("volume", v.tags(), &owner, "tg", "tagged");
        if tag(v.tags(), "stratus:role") == Some("worker") {
            assert_eq!(v.size(), Some(40), "{v:?}");
        }
    }

    // The group: in the subnet's VPC, tagged, and exactly the configured rules.
    assert_eq!(group.vpc_id(), Some(vpc.as_str()));
    assert_cluster_tags("security group", group.tags(), &owner, "tg", "tagged");
    assert_eq!(tag(group.tags(), "stratus:request"), Some(request.as_str()));
    // SSH only: the profile lists web ports (9870, 8088), but with no `ui_cidrs` in the site
    // config they stay closed to the client networks.
    let mut want = BTreeSet::from([("-1".to_owned(), -1, -1, group_id.to_owned())]);
    for cidr in CIDRS {
        want.insert(("tcp".to_owned(), 2200, 2200, cidr.to_owned()));
    }
    assert_eq!(rules(group), want);
    // Each ingress rule stratus added is a tagged resource of its own.
    let sg_rules = moto.block_on(async {
        moto.ec2
            .describe_security_group_rules()
            .filters(Filter::builder().name("group-id").values(group_id).build())
            .send()
            .await
            .unwrap()
            .security_group_rules()
            .to_vec()
    });
    let ingress: Vec<_> = sg_rules
        .iter()
        .filter(|r| r.is_egress() == Some(false))
        .collect();
    assert_eq!(ingress.len(), want.len(), "{sg_rules:#?}");
    for r in ingress {
        assert_cluster_tags("security group rule", r.tags(), &owner, "tg", "tagged");
    }

    // The key pair: tagged, holding the cluster key stratus keeps (mode 0600) in its state.
    let kp = moto.key_pairs_named(&format!("{owner}@tg"));
    assert_eq!(kp.len(), 1);
    assert_cluster_tags("key pair", kp[0].tags(), &owner, "tg", "tagged");
    let dir = std::fs::read_dir(ctx.state.join("clusters"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-tg"))
        .expect("the cluster's key directory");
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    assert_eq!(
        first_two_fields(kp[0].public_key().unwrap()),
        first_two_fields(&public)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("id_ed25519"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // list shows what EC2 reports.
    let c = ctx.cluster_json("tg");
    assert_eq!(c["provider"], "ec2");
    assert_eq!(
        c["state"], "running",
        "--no-configure stops at running: {c:#}"
    );
    let ns = nodes(&c);
    assert_eq!(ns.len(), 3);
    for n in &ns {
        assert_eq!(n["state"], "running");
        assert_eq!(n["ssh_port"], 2200);
        assert!(
            n["address"].as_str().unwrap().starts_with("127.0.0."),
            "{n}"
        );
    }

    // Terminate: nothing of the cluster runs, and the group and key pair are gone.
    let r = ctx.ok(&["terminate-cluster", "tg", "--yes"]);
    assert!(r.stderr.contains("terminated cluster tg (3 nodes)"), "{r}");
    let live: Vec<_> = moto
        .instances(&[("tag:stratus:cluster", "tg")])
        .into_iter()
        .filter(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        })
        .collect();
    assert!(live.is_empty(), "still live: {live:#?}");
    assert!(moto.groups_named(&format!("stratus-{owner}@tg")).is_empty());
    assert!(moto.key_pairs_named(&format!("{owner}@tg")).is_empty());
    let c = ctx.cluster_json("tg");
    assert_eq!(c["state"], "terminated");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
}

/// The EC2 provider of the site config `ec2_config` makes, as a user's own command builds it.
pub(crate) fn ec2_provider(moto: &Moto, dir: &std::path::Path, extra: &str) -> Ec2Provider {
    let config = ec2_config(moto, dir, extra);
    moto.block_on(Ec2Provider::new(
        &config,
        &Trust::Caller(Box::new(stratus::core::env::AwsEnv::of_this_process())),
    ))
    .unwrap()
}

pub(crate) fn ec2_config(moto: &Moto, dir: &std::path::Path, extra: &str) -> Ec2Config {
    let text = moto.site_config(dir, extra);
    SiteConfig::parse(&text, &dir.join("config.toml"))
        .unwrap()
        .ec2
        .unwrap()
}

fn access(port: u16, web: &[u16]) -> SshAccess {
    let key = stratus::cluster::ssh::generate_key().unwrap();
    SshAccess {
        user: "ubuntu".into(),
        public_key: stratus::cluster::ssh::public_key_openssh(key.public_key()),
        port,
        web_ports: web.to_vec(),
    }
}

#[test]
fn prepare_is_idempotent_converges_and_never_adopts_foreign_resources() {
    let Some(moto) = Moto::acquire() else { return };
    let dir = tempfile::tempdir().unwrap();
    let provider = ec2_provider(&moto, dir.path(), "client_cidrs = [\"203.0.113.0/24\"]");
    let owner = Owner::parse("alice").unwrap();
    let cluster = ClusterRef {
        owner: owner.clone(),
        name: ClusterName::parse("idem").unwrap(),
        profile: "p".into(),
        request: RequestId::new(),
        store: StoreId::generate(),
        naming: Naming::At,
    };
    let gname = group_name(&cluster.owner, &cluster.name, cluster.naming);
    let kname = key_name(&cluster.owner, &cluster.name, cluster.naming);
    let a = access(22, &[8088]);
    // The profile's web port is not opened to the client networks (no ui_cidrs): SSH only.
    let expected = |gid: &str| {
        BTreeSet::from([
            ("-1".to_owned(), -1, -1, gid.to_owned()),
            ("tcp".to_owned(), 22, 22, "203.0.113.0/24".to_owned()),
        ])
    };

    // Twice: one group with the same rules, one key pair.
    moto.block_on(provider.prepare(&cluster, &a)).unwrap();
    moto.block_on(provider.prepare(&cluster, &a)).unwrap();
    let groups = moto.groups_named(&gname);
    assert_eq!(groups.len(), 1);
    let gid = groups[0].group_id().unwrap().to_owned();
    assert_eq!(rules(&groups[0]), expected(&gid));
    assert_eq!(moto.key_pairs_named(&kname).len(), 1);

    // A stale opening someone added is revoked; a new cluster key replaces the old key pair.
    moto.block_on(async {
        moto.ec2
            .authorize_security_group_ingress()
            .group_id(&gid)
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .cidr_ip("0.0.0.0/0")
            .send()
            .await
            .unwrap()
    });
    let b = access(22, &[8088]);
    let cluster2 = ClusterRef {
        request: RequestId::new(),
        ..cluster.clone()
    };
    moto.block_on(provider.prepare(&cluster2, &b)).unwrap();
    let groups = moto.groups_named(&gname);
    assert_eq!(groups.len(), 1);
    assert_eq!(
        rules(&groups[0]),
        expected(&gid),
        "the 0.0.0.0/0 rule must go"
    );
    assert_eq!(
        tag(groups[0].tags(), "stratus:request"),
        Some(cluster2.request.as_str()),
        "a reused group belongs to the new request"
    );
    let kp = moto.key_pairs_named(&kname);
    assert_eq!(kp.len(), 1);
    assert_eq!(
        first_two_fields(kp[0].public_key().unwrap()),
        first_two_fields(&b.public_key)
    );

    // The same cluster name of the same owner from another state directory (another store id)
    // is refused, never taken over; and releasing from there deletes nothing.
    let other_store = ClusterRef {
        store: StoreId::generate(),
        ..cluster2.clone()
    };
    let err = moto
        .block_on(provider.prepare(&other_store, &b))
        .unwrap_err();
    assert!(
        err.to_string().contains("another stratus state directory"),
        "{err}"
    );
    moto.block_on(provider.release(&other_store)).unwrap();
    assert_eq!(moto.groups_named(&gname).len(), 1);
    assert_eq!(moto.key_pairs_named(&kname).len(), 1);

    // A key pair of that name that is not stratus's is refused, not adopted or deleted.
    let foreign = ClusterRef {
        name: ClusterName::parse("foreign").unwrap(),
        ..cluster.clone()
    };
    moto.block_on(async {
        moto.ec2
            .import_key_pair()
            .key_name(key_name(&foreign.owner, &foreign.name, foreign.naming))
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(a.public_key.as_bytes()))
            .send()
            .await
            .unwrap()
    });
    let err = moto.block_on(provider.prepare(&foreign, &a)).unwrap_err();
    assert!(matches!(err, ProviderError::InvalidRequest(_)), "{err:?}");
    assert!(err.to_string().contains("not stratus's"), "{err}");
    moto.block_on(provider.release(&foreign)).unwrap();
    assert_eq!(
        moto.key_pairs_named(&key_name(&foreign.owner, &foreign.name, foreign.naming))
            .len(),
        1,
        "release must not delete a key pair that is not stratus's"
    );

    // The whole internet only when the site says so.
    let text = moto.site_config(dir.path(), "client_cidrs = [\"0.0.0.0/0\"]");
    assert!(SiteConfig::parse(&text, std::path::Path::new("c")).is_err());
    let world = ec2_config(
        &moto,
        dir.path(),
        "client_cidrs = [\"0.0.0.0/0\"]\nallow_world = true",
    );
    let open = moto
        .block_on(Ec2Provider::new(
            &world,
            &Trust::Caller(Box::new(stratus::core::env::AwsEnv::of_this_process())),
        ))
        .unwrap();
    moto.block_on(open.prepare(&cluster2, &b)).unwrap();
    assert!(
        rules(&moto.groups_named(&gname)[0]).contains(&(
            "tcp".to_owned(),
            22,
            22,
            "0.0.0.0/0".to_owned()
        )),
        "allow_world = true opens SSH to the world"
    );

    // Release, twice: nothing left, and nothing to complain about the second time.
    moto.block_on(provider.release(&cluster2)).unwrap();
    moto.block_on(provider.release(&cluster2)).unwrap();
    assert!(moto.groups_named(&gname).is_empty());
    assert!(moto.key_pairs_named(&kname).is_empty());
}

#[test]
fn listing_pages_past_moto_s_100_reservations() {
    let Some(moto) = Moto::acquire() else { return };
    // The default VPC: instances get random 10.x addresses, and no connection is ever made.
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let owner = owner();
    // Neighbours that must never be listed or touched: untagged instances, and another cluster
    // of the same owner (of no store of ours) in 100 reservations of one instance each, so
    // listing pages past moto's 100 reservations (a launch is one reservation per role now).
    moto.block_on(async {
        let mut calls: Vec<(i32, Vec<(&str, &str)>)> = vec![(3, vec![])];
        calls.extend((0..100).map(|_| (1, vec![("stratus:cluster", "other")])));
        for (n, tags) in calls {
            let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
            }
            spec = spec.tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("stratus:owner")
                    .value(&owner)
                    .build(),
            );
            moto.ec2
                .run_instances()
                .image_id(UBUNTU_AMI)
                .min_count(n)
                .max_count(n)
                .tag_specifications(spec.build())
                .send()
                .await
                .unwrap();
        }
    });
    let started = std::time::Instant::now();
    ctx.ok(&[
        "launch-cluster",
        "big",
        "120",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    eprintln!("121 nodes launched in {:?}", started.elapsed());

    let c = ctx.cluster_json("big");
    let ns = nodes(&c);
    assert_eq!(ns.len(), 121);
    assert!(ns.iter().all(|n| n["state"] == "running"), "{c:#}");

    // Through the library: every page, and only what the selector names.
    let provider = ec2_provider(&moto, ctx.root.path(), "");
    let o = Owner::parse(&owner).unwrap();
    let big = moto
        .block_on(provider.describe(&Selector {
            owner: Some(o.clone()),
            cluster: Some(ClusterName::parse("big").unwrap()),
            request: None,
            store: None,
        }))
        .unwrap();
    let ids: BTreeSet<&str> = big.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 121);
    assert!(
        big.iter()
            .all(|i| i.tags.as_ref().unwrap().cluster.as_str() == "big")
    );
    let all_stratus = moto
        .block_on(provider.describe(&Selector::default()))
        .unwrap();
    assert_eq!(
        all_stratus.len(),
        221,
        "121 of big and 100 of other; untagged ones never"
    );

    ctx.ok(&["terminate-cluster", "big", "--yes"]);
    let c = ctx.cluster_json("big");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    let others = moto.instances(&[("tag:stratus:cluster", "other")]);
    assert_eq!(others.len(), 100);
    assert!(
        others
            .iter()
            .all(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running)),
        "another cluster's instances must not be touched"
    );
    let untagged = moto
        .instances(&[])
        .into_iter()
        .filter(|i| tag(i.tags(), "stratus:cluster").is_none())
        .filter(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running))
        .count();
    assert_eq!(untagged, 3);
}

/// A test image: its user-data records the node's role and serves one line on the node's own
/// address; the configure step checks, from the master, that every worker in the workers file
/// answers there.
pub(crate) const E2E: &str = r#"
description = "EC2 end to end on loopback instances"
providers = ["ec2"]
max_workers = 8
MIN_WORKERS
ssh_user = "ubuntu"
ssh_port = 2200
ready_timeout_secs = READY
workers_file = "workers"
ports = [8480]
intra_cluster_key = true
configure = ["./check-workers.sh"]
on_workers_change = ["./check-workers.sh"]

[vars]
service_port = 8480

[master]
image = "IMAGE"
instance_type = "m5.large"
user_data = "e2e/node.sh.hbs"

[worker]
image = "IMAGE"
instance_type = "m5.large"
user_data = "e2e/node.sh.hbs"
spot = true

[[files]]
template = "e2e/cluster.txt.hbs"
dest = "cluster.txt"
to = "all"

[[files]]
template = "e2e/check-workers.sh.hbs"
dest = "check-workers.sh"
mode = "0755"
"#;

const E2E_NODE: &str = r#"#!/bin/bash
# e2e user-data of a {{role}} of {{cluster}} (the node's own name is in $STRATUS_NODE_NAME on a
# local node, which the test's hypervisor boots it as).
set -euo pipefail
cd "$HOME"
echo {{quote role}} > role
echo {{quote request_id}} > request
nohup perl -MIO::Socket::INET -e '
    my ($addr, $port, $reply) = @ARGV;
    my $s = IO::Socket::INET->new(LocalAddr => $addr, LocalPort => $port, Listen => 8,
                                  ReuseAddr => 1, Proto => "tcp")
        or die "cannot listen on $addr:$port: $!\n";
    $SIG{PIPE} = "IGNORE";
    while (my $c = $s->accept) { print $c "$reply\n"; close $c; }
' "$STRATUS_NODE_ADDRESS" {{profile.vars.service_port}} "$STRATUS_NODE_NAME {{role}}" \
    > service.log 2>&1 < /dev/null &
"#;

const E2E_CLUSTER_TXT: &str = "master {{master.name}} {{master.address}}\n{{#each workers}}worker {{name}} {{address}}\n{{/each}}";

const E2E_CHECK: &str = r#"#!/bin/bash
set -uo pipefail
cd "$HOME"
n=0
while read -r addr; do
    [ -n "$addr" ] || continue
    reply=""
    for _ in $(seq 1 100); do
        reply=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" && read -r line <&3 && echo "$line"' \
            "$addr" {{profile.vars.service_port}} 2>/dev/null) && [ -n "$reply" ] && break
        sleep 0.1
    done
    case "$reply" in
        *" worker") n=$((n + 1)); echo "ok $addr $reply" >> checked ;;
        *) echo "no worker answered at $addr" >&2; exit 1 ;;
    esac
done < workers
echo "$n workers answered" | tee -a checked
"#;

pub(crate) fn e2e_profile(ctx: &TestContext, ready_secs: u32, min_workers: Option<u32>) {
    let text = E2E
        .replace("IMAGE", UBUNTU_AMI)
        .replace("READY", &ready_secs.to_string())
        .replace(
            "MIN_WORKERS",
            &min_workers
                .map(|m| format!("min_workers = {m}"))
                .unwrap_or_default(),
        );
    ctx.profile_file("e2e.toml", &text);
    ctx.profile_file("e2e/node.sh.hbs", E2E_NODE);
    ctx.profile_file("e2e/cluster.txt.hbs", E2E_CLUSTER_TXT);
    ctx.profile_file("e2e/check-workers.sh.hbs", E2E_CHECK);
}

pub(crate) fn hypervisor(moto: &Moto, cluster: &str, never_boot: &[&str]) -> Hypervisor {
    hypervisor_with(moto, cluster, never_boot, Console::HostKeys)
}

/// `hypervisor`, with what the booted nodes' consoles show.
pub(crate) fn hypervisor_with(
    moto: &Moto,
    cluster: &str,
    never_boot: &[&str],
    console: Console,
) -> Hypervisor {
    Hypervisor::start(HypervisorConfig {
        endpoint: moto.endpoint.clone(),
        cluster: Some(cluster.into()),
        user: "ubuntu".into(),
        port: 2200,
        never_boot: never_boot.iter().map(|s| s.to_string()).collect(),
        console,
    })
}

#[test]
fn a_cluster_configured_over_ssh_on_loopback_instances() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    e2e_profile(&ctx, 60, None);
    let hv = hypervisor(&moto, "e2e", &[]);

    let r = ctx.ok(&["launch-cluster", "e2e", "2", "-p", "e2e"]);
    assert!(
        r.stdout.contains("cluster e2e is up: 1 master + 2 workers"),
        "{r}"
    );
    let c = ctx.cluster_json("e2e");
    assert_eq!(c["state"], "configured", "{c:#}");
    let ns = nodes(&c);
    assert_eq!(ns.len(), 3);
    let master = ns.iter().find(|n| n["role"] == "master").unwrap();
    let master_addr = master["address"].as_str().unwrap();
    for n in &ns {
        let addr = n["address"].as_str().unwrap();
        assert!(addr.starts_with("127.0.0."), "{n}");
    }

    // The configure step ran on the master and reached every worker at its EC2 address.
    let r = ctx.ok(&["exec", "e2e", "--", "cat", "checked"]);
    assert!(r.stdout.contains("2 workers answered"), "{r}");
    // Each node ran its own user-data, and every node got the pushed cluster file.
    let r = ctx.ok(&[
        "exec",
        "e2e",
        "--all",
        "--",
        "cat role; grep ^master cluster.txt",
    ]);
    assert!(r.stdout.contains("[e2e-master] master\n"), "{r}");
    assert!(r.stdout.contains("[e2e-worker-1] worker\n"), "{r}");
    assert!(r.stdout.contains("[e2e-worker-2] worker\n"), "{r}");
    assert_eq!(
        r.stdout
            .matches(&format!("master e2e-master {master_addr}\n"))
            .count(),
        3,
        "{r}"
    );
    // The intra-cluster key: its private half on the master only, its public half authorised
    // everywhere.
    let r = ctx.ok(&[
        "exec",
        "e2e",
        "--all",
        "--",
        "stat -c %a .ssh/stratus_cluster_ed25519 2>/dev/null || echo none; grep -c -xFf .ssh/stratus_cluster_ed25519.pub .ssh/authorized_keys",
    ]);
    assert!(
        r.stdout.contains("[e2e-master] 600\n[e2e-master] 1\n"),
        "{r}"
    );
    assert!(
        r.stdout.contains("[e2e-worker-1] none\n[e2e-worker-1] 1\n"),
        "{r}"
    );
    assert!(
        r.stdout.contains("[e2e-worker-2] none\n[e2e-worker-2] 1\n"),
        "{r}"
    );

    // Host keys were read from the consoles (ed25519, not the ECDSA key listed before it) and
    // pinned before first contact.
    assert!(moto.faults().count("GetConsoleOutput") >= 3);
    let known = std::fs::read_dir(ctx.state.join("clusters"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("known_hosts"))
        .find(|p| p.exists())
        .unwrap();
    let known = std::fs::read_to_string(known).unwrap();
    assert_eq!(known.lines().count(), 3, "{known}");
    assert!(
        known.contains(&format!("[{master_addr}]:2200 ssh-ed25519 ")),
        "{known}"
    );
    assert!(!known.contains("ecdsa"), "{known}");

    // Another worker, from a new process: it finds the cluster's group, gets the intra-cluster
    // key from the master, and the master's check now counts three workers.
    let r = ctx.ok(&["launch-slaves", "e2e", "1"]);
    assert!(r.stdout.contains("added e2e-worker-3 to e2e"), "{r}");
    let r = ctx.ok(&["exec", "e2e", "--", "tail", "-n", "1", "checked"]);
    assert_eq!(r.stdout, "3 workers answered\n", "{r}");
    let r = ctx.ok(&[
        "exec",
        "e2e",
        "--all",
        "--",
        "grep -c -xFf .ssh/stratus_cluster_ed25519.pub .ssh/authorized_keys",
    ]);
    assert!(r.stdout.contains("[e2e-worker-3] 1\n"), "{r}");
    assert_eq!(nodes(&ctx.cluster_json("e2e")).len(), 4);

    let owner = owner();
    ctx.ok(&["terminate-cluster", "e2e", "--yes"]);
    let report = eventually(Duration::from_secs(20), || {
        let r = hv.report();
        (r.stopped.len() == 4).then_some(r)
    })
    .unwrap_or_else(|| panic!("the hypervisor did not stop every node: {:?}", hv.report()));
    assert_eq!(report.booted.len(), 4);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        moto.groups_named(&format!("stratus-{owner}@e2e"))
            .is_empty()
    );
    assert!(moto.key_pairs_named(&format!("{owner}@e2e")).is_empty());
}

#[test]
fn a_worker_that_never_answers_rolls_back_everything() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    e2e_profile(&ctx, 8, Some(2));
    let hv = hypervisor(&moto, "rb", &["rb-worker-2"]);

    let r = ctx.run(&["launch-cluster", "rb", "2", "-p", "e2e"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("rb-worker-2"), "{r}");
    assert!(r.stderr.contains("only 1 of 2 workers are up"), "{r}");

    // Nothing of the request runs, and the group and key pair are gone.
    let instances = moto.instances(&[("tag:stratus:cluster", "rb")]);
    assert_eq!(instances.len(), 3);
    for i in &instances {
        assert!(
            matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ),
            "{i:?}"
        );
    }
    let owner = owner();
    assert!(moto.groups_named(&format!("stratus-{owner}@rb")).is_empty());
    assert!(moto.key_pairs_named(&format!("{owner}@rb")).is_empty());
    let c = ctx.cluster_json("rb");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    // The nodes that did boot were stopped when EC2 said their instances were terminated.
    let report = eventually(Duration::from_secs(20), || {
        let r = hv.report();
        (r.stopped.len() == 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("booted nodes were not stopped: {:?}", hv.report()));
    assert_eq!(report.booted.len(), 2);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// The context and profile of the host key tests: loopback instances, `[ec2]` with `extra`.
fn host_key_context(moto: &Moto, ready_secs: u32, extra: &str) -> TestContext {
    let (_vpc, subnet) = moto.loopback_subnet();
    let ctx = ec2_context(
        moto,
        &format!(
            "subnet_id = \"{subnet}\"\naddress = \"private_ip\"\nclient_cidrs = [\"127.0.0.0/8\"]\n{extra}"
        ),
    );
    e2e_profile(&ctx, ready_secs, Some(1));
    ctx
}

/// Every instance of `cluster` is terminated, its group and key pair are gone, and the cluster
/// is recorded failed.
fn assert_rolled_back(moto: &Moto, ctx: &TestContext, cluster: &str) {
    assert!(
        !moto
            .instances(&[("tag:stratus:cluster", cluster)])
            .is_empty()
    );
    assert_eq!(live_instances(moto, cluster), 0);
    let owner = owner();
    assert!(
        moto.groups_named(&format!("stratus-{owner}@{cluster}"))
            .is_empty()
    );
    assert!(
        moto.key_pairs_named(&format!("{owner}@{cluster}"))
            .is_empty()
    );
    let c = ctx.cluster_json(cluster);
    assert_eq!(c["state"], "failed", "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
}

#[test]
fn a_node_presenting_another_key_than_its_console_shows_fails_the_launch() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = host_key_context(&moto, 60, "");
    // Only a worker, and min_workers = 1: an interception is no node to replace or do without.
    let forged: BTreeSet<String> = ["mitm-worker-1".to_owned()].into();
    let hv = hypervisor_with(&moto, "mitm", &[], Console::ForgedFor(forged));

    let r = ctx.run(&["launch-cluster", "mitm", "2", "-p", "e2e"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("host key mismatch for mitm-worker-1"),
        "{r}"
    );
    assert!(r.stderr.contains("expected SHA256:"), "{r}");
    assert!(!r.stderr.contains("replacing"), "{r}");
    assert_rolled_back(&moto, &ctx, "mitm");
    let report = eventually(Duration::from_secs(20), || {
        let r = hv.report();
        (r.stopped.len() == r.booted.len()).then_some(r)
    })
    .unwrap_or_else(|| panic!("booted nodes were not stopped: {:?}", hv.report()));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn a_console_without_host_keys_fails_the_wait_naming_the_setting() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = host_key_context(&moto, 5, "");
    let hv = hypervisor_with(&moto, "nokeys", &[], Console::Silent);

    let r = ctx.run(&["launch-cluster", "nokeys", "1", "-p", "e2e"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("the master did not come up"), "{r}");
    assert!(
        r.stderr.contains("nokeys-master (i-")
            && r.stderr
                .contains("showed no SSH host keys on its console within 5s"),
        "{r}"
    );
    assert!(
        r.stderr.contains("[ec2] host_keys = \"first-contact\""),
        "{r}"
    );
    assert_rolled_back(&moto, &ctx, "nokeys");
    // The console was asked with backoff, not in a tight loop: a few calls per node in 5 s.
    let calls = moto.faults().count("GetConsoleOutput");
    assert!((1..=12).contains(&calls), "{calls} GetConsoleOutput calls");
    drop(hv);
}

#[test]
fn with_first_contact_host_keys_an_image_that_prints_none_still_launches() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = host_key_context(&moto, 60, "host_keys = \"first-contact\"\n");
    let hv = hypervisor_with(&moto, "tofu", &[], Console::Silent);

    let r = ctx.ok(&["launch-cluster", "tofu", "1", "-p", "e2e"]);
    assert!(
        r.stdout
            .contains("cluster tofu is up: 1 master + 1 workers"),
        "{r}"
    );
    assert_eq!(moto.faults().count("GetConsoleOutput"), 0);
    // Pinned on first contact all the same.
    let r = ctx.ok(&["exec", "tofu", "--all", "--", "cat", "role"]);
    assert!(r.stdout.contains("[tofu-worker-1] worker"), "{r}");
    ctx.ok(&["terminate-cluster", "tofu", "--yes"]);
    eventually(Duration::from_secs(20), || {
        (hv.report().stopped.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the nodes were not stopped: {:?}", hv.report()));
}

#[test]
fn exec_on_a_cluster_launched_without_configure_pins_keys_from_the_consoles() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = host_key_context(&moto, 60, "");
    // The worker's console shows another key than the worker presents.
    let forged: BTreeSet<String> = ["nc-worker-1".to_owned()].into();
    let hv = hypervisor_with(&moto, "nc", &[], Console::ForgedFor(forged));

    ctx.ok(&["launch-cluster", "nc", "1", "-p", "e2e", "--no-configure"]);
    assert_eq!(moto.faults().count("GetConsoleOutput"), 0);
    eventually(Duration::from_secs(30), || {
        (hv.report().booted.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the nodes did not boot: {:?}", hv.report()));
    // The master's console shows its key: exec pins it from there, and reaches it.
    let r = ctx.ok(&["exec", "nc", "--", "cat", "role"]);
    assert_eq!(r.stdout, "master\n", "{r}");
    assert!(moto.faults().count("GetConsoleOutput") >= 1);
    // The worker presents another key than its console shows: refused.
    let r = ctx.run(&["exec", "nc", "--all", "--", "cat", "role"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains("host key mismatch for nc-worker-1"),
        "{r}"
    );
    assert!(!r.stdout.contains("[nc-worker-1] worker"), "{r}");
    ctx.ok(&["terminate-cluster", "nc", "--yes"]);
    eventually(Duration::from_secs(20), || {
        (hv.report().stopped.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the nodes were not stopped: {:?}", hv.report()));
}

/// stderr is one `error: …` line, without the SDK's vocabulary.
fn assert_one_sentence(r: &crate::support::Run, needle: &str) {
    // The lines a launch says before it launches (its rate, what the budget allows) are not
    // the error's.
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains(" nodes of profile "))
        .collect();
    assert_eq!(lines.len(), 1, "{r}");
    assert!(lines[0].starts_with("error: "), "{r}");
    assert!(lines[0].contains(needle), "{r}");
    for internal in [
        "SdkError",
        "ServiceError",
        "DispatchFailure",
        "caused by",
        "Error {",
        "aws_sdk",
        "smithy",
    ] {
        assert!(!r.stderr.contains(internal), "{internal:?} in: {r}");
    }
}

#[test]
fn rejected_credentials_are_one_sentence() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    // From now on moto wants a real IAM access key; the test's `testing` key is none.
    moto.set_auth("0");
    let r = ctx.run(&["launch-cluster", "c", "1", "-p", "tagged", "--no-configure"]);
    moto.set_auth("inf");
    assert_eq!(r.code, 1, "{r}");
    assert_one_sentence(
        &r,
        "rejected stratus's AWS credentials (AuthFailure); check the credentials file",
    );
    // Nothing was recorded or created.
    assert!(ctx.list_json().is_empty());
    assert!(moto.instances(&[]).is_empty());
}

#[test]
fn missing_credentials_and_an_unreachable_endpoint_are_one_sentence() {
    // None of these reach any server: no moto needed. The endpoint is a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let ctx = TestContext::new();
    tagged_profile(&ctx);
    let write = |ec2: &str| {
        std::fs::write(
            &ctx.config,
            format!(
                "profiles_dir = {:?}\nprovider = \"ec2\"\n[ec2]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n{ec2}\n",
                ctx.profiles.display().to_string()
            ),
        )
        .unwrap()
    };
    let launch = ["launch-cluster", "c", "1", "-p", "tagged", "--no-configure"];

    // A credentials file without keys.
    let creds = ctx.root.path().join("creds");
    std::fs::write(&creds, "[default]\nregion = us-east-1\n").unwrap();
    write(&format!(
        "credentials_file = {:?}",
        creds.display().to_string()
    ));
    let r = ctx.run(&launch);
    assert_eq!(r.code, 1, "{r}");
    assert_one_sentence(
        &r,
        "has no aws_access_key_id and aws_secret_access_key in [default]",
    );

    // A credentials file that is not there.
    std::fs::remove_file(&creds).unwrap();
    let r = ctx.run(&launch);
    assert_eq!(r.code, 1, "{r}");
    assert_one_sentence(&r, "cannot read the AWS credentials file");

    // Nothing configured and nothing in the standard places (stratus reads static keys only:
    // no metadata service, no credential_process, so nothing outside 127.0.0.0/8 is contacted).
    write("");
    let out = ctx.cmd().args(launch).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: no AWS credentials: ")
            && stderr.contains(".aws/credentials does not exist"),
        "{stderr}"
    );

    // Credentials, but nothing answers at the endpoint.
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
    )
    .unwrap();
    write(&format!(
        "credentials_file = {:?}",
        creds.display().to_string()
    ));
    let r = ctx.run(&launch);
    assert_eq!(r.code, 1, "{r}");
    assert_one_sentence(&r, &format!("cannot reach the EC2 endpoint {endpoint}"));
    assert!(ctx.list_json().is_empty(), "nothing may be recorded");
}

/// The store id of a context's state database (what its resources are tagged with).
pub(crate) fn store_id(ctx: &TestContext) -> StoreId {
    stratus::store::Store::open_in(&ctx.state)
        .unwrap()
        .id()
        .clone()
}

/// Leftovers of a cluster that no row knows, as a crashed launch leaves them: its security group
/// and key pair, and `nodes` instances tagged with it and `store` (through the provider, as
/// stratus would, in one launch call).
pub(crate) fn leftovers(
    moto: &Moto,
    provider: &Ec2Provider,
    store: &StoreId,
    cluster: &str,
    nodes: u32,
) -> ClusterRef {
    use stratus::cluster::provider::BatchSpec;
    use stratus::core::model::Role;
    let cref = ClusterRef {
        owner: Owner::parse(&owner()).unwrap(),
        name: ClusterName::parse(cluster).unwrap(),
        profile: "tagged".into(),
        request: RequestId::new(),
        store: store.clone(),
        naming: Naming::At,
    };
    let a = access(2200, &[]);
    moto.block_on(provider.prepare(&cref, &a)).unwrap();
    if nodes > 0 {
        let spec = BatchSpec {
            role: Role::Worker,
            first_index: 1,
            count: nodes,
            min_count: nodes,
            name: format!("{cluster}-worker"),
            image: UBUNTU_AMI.into(),
            instance_type: "m5.large".into(),
            instance_types: vec!["m5.large".into()],
            spot: false,
            volume_gb: None,
            user_data: "#!/bin/sh\n".into(),
            tags: stratus::core::model::Tags {
                role: Some(Role::Worker),
                ..cref.tags()
            },
            client_token: format!("{}-w", cref.request),
        };
        let launched = moto.block_on(provider.launch(&cref, &a, &spec, &Unrecorded));
        assert!(launched.error.is_none(), "{:?}", launched.error);
        assert_eq!(launched.instances.len(), nodes as usize);
    }
    cref
}

/// The journal of a launch that records nothing: as a launcher that crashed before recording
/// would leave it.
pub(crate) struct Unrecorded;

impl stratus::cluster::provider::Journal for Unrecorded {
    fn begin(&self, _token: &str) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) fn live_instances(moto: &Moto, cluster: &str) -> usize {
    moto.instances(&[("tag:stratus:cluster", cluster)])
        .iter()
        .filter(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        })
        .count()
}

/// The group and key pair of `cluster` exist (both) or are gone (both).
pub(crate) fn resources_exist(moto: &Moto, cluster: &str) -> bool {
    let owner = owner();
    let g = moto
        .groups_named(&format!("stratus-{owner}@{cluster}"))
        .len();
    let k = moto.key_pairs_named(&format!("{owner}@{cluster}")).len();
    assert_eq!(g, k, "group and key pair of {cluster} out of step");
    g == 1
}

pub(crate) fn app_for(ctx: &TestContext) -> stratus::service::Service {
    let (config, config_path) = SiteConfig::load(Some(&ctx.config), None).unwrap();
    let settings = stratus::service::Settings {
        trust: Trust::Caller(Box::new(stratus::core::env::AwsEnv::of_this_process())),
        config,
        config_path,
        state_dir: ctx.state.clone(),
        pause_at: None,
    };
    stratus::service::Service::new(
        settings,
        std::sync::Arc::new(stratus::core::printer::Printer::quiet()),
    )
    .unwrap()
}

#[test]
fn delete_cluster_removes_an_ended_cluster_with_its_leftovers_and_refuses_the_rest() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let provider = ec2_provider(
        &moto,
        ctx.root.path(),
        &format!("client_cidrs = {CIDRS:?}\n"),
    );

    // An unknown name is refused like everywhere else.
    let r = ctx.run(&["delete-cluster", "nosuch"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("no cluster named nosuch"), "{r}");

    // An ended cluster with a leftover instance under its tags (a straggler of this store) and
    // its resources: delete-cluster removes all of it and takes the cluster off the list.
    ctx.ok(&[
        "launch-cluster",
        "left",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    ctx.ok(&["terminate-cluster", "left", "--yes"]);
    leftovers(&moto, &provider, &store_id(&ctx), "left", 1);
    assert_eq!(live_instances(&moto, "left"), 1);
    assert!(resources_exist(&moto, "left"));
    let r = ctx.ok(&["delete-cluster", "left"]);
    assert!(
        r.stderr
            .contains("deleted cluster left (1 instances terminated)"),
        "{r}"
    );
    assert_eq!(live_instances(&moto, "left"), 0);
    assert!(!resources_exist(&moto, "left"));
    assert!(
        !ctx.ok(&["list", "--all", "--json"])
            .stdout
            .contains("\"left\""),
        "a deleted cluster is off the list"
    );
    // Its usage stays: the launch's two nodes and the leftover.
    let usage: Vec<Value> = serde_json::from_str(&ctx.ok(&["usage", "--json"]).stdout).unwrap();
    assert!(usage.iter().any(|u| u["cluster"] == "left"), "{usage:?}");

    // A live cluster is terminate-cluster's business.
    ctx.ok(&[
        "launch-cluster",
        "live",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let r = ctx.run(&["delete-cluster", "live"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("use `stratus terminate-cluster live`"),
        "{r}"
    );
    assert_eq!(live_instances(&moto, "live"), 2);
    assert!(resources_exist(&moto, "live"));
}

#[test]
fn reconcile_rolls_back_an_abandoned_launch_and_records_and_removes_leftovers() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnet) = moto.loopback_subnet();
    let extra = format!(
        "subnet_id = \"{subnet}\"\naddress = \"private_ip\"\nclient_cidrs = [\"127.0.0.0/8\"]\n"
    );
    let ctx = ec2_context(&moto, &extra);
    e2e_profile(&ctx, 120, None);
    let provider = ec2_provider(&moto, ctx.root.path(), &extra);

    // A launch killed while it waits for SSH (no hypervisor boots its instances): its row stays
    // `requested`, its instances run, its group and key pair stay.
    let mut child = ctx
        .cmd()
        .args(["launch-cluster", "ab", "1", "-p", "e2e"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let launched = eventually(Duration::from_secs(30), || {
        (live_instances(&moto, "ab") == 2).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(launched.is_some(), "the launch did not start its instances");
    assert_eq!(ctx.cluster_json("ab")["state"], "requested");
    // Leftovers of this store that no row knows: a cluster's resources alone, and a cluster's
    // running instance.
    let store = store_id(&ctx);
    leftovers(&moto, &provider, &store, "ghost", 0);
    leftovers(&moto, &provider, &store, "orphan", 1);

    // With the default grace periods: the launch whose process died is rolled back at once (its
    // request's lock is free), and the resources of a cluster with no row and no instance go.
    // An instance whose launcher cannot be told (no lock file) is young: left alone.
    let r = ctx.ok(&["reconcile", "--json"]);
    let done: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    let clusters: BTreeSet<&str> = done
        .iter()
        .map(|a| a["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, BTreeSet::from(["ab", "ghost"]), "{r}");
    assert!(
        done.iter()
            .any(|a| a["cluster"] == "ab" && a["what"].as_str().unwrap().contains("launcher died")),
        "{r}"
    );
    assert!(!resources_exist(&moto, "ghost"));
    assert_eq!(live_instances(&moto, "ab"), 0);
    assert!(!resources_exist(&moto, "ab"));
    let c = ctx.cluster_json("ab");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
    assert_eq!(
        live_instances(&moto, "orphan"),
        1,
        "a young instance is left to its launcher"
    );

    // Past the grace periods: a dry run says what would happen and changes nothing...
    let app = app_for(&ctx);
    let me = Owner::parse(&owner()).unwrap();
    let now = stratus::cluster::reconcile::Options {
        orphan_grace: Duration::ZERO,
        stuck_after: Some(Duration::ZERO),
        ..stratus::cluster::reconcile::Options::new(true)
    };
    let would = moto
        .block_on(stratus::cluster::reconcile::reconcile(
            app.ctx(),
            &provider,
            Some(&me),
            &now,
        ))
        .unwrap();
    let clusters: BTreeSet<&str> = would.iter().map(|a| a.cluster.as_str()).collect();
    assert_eq!(clusters, BTreeSet::from(["orphan"]), "{would:?}");
    assert!(
        would.iter().all(|a| a.what.starts_with("would ")),
        "{would:?}"
    );
    assert_eq!(live_instances(&moto, "orphan"), 1);

    // ...and the real run records the orphan (with its hours) and terminates it; its resources
    // go on the next run, once it is gone.
    let done = moto
        .block_on(stratus::cluster::reconcile::reconcile(
            app.ctx(),
            &provider,
            Some(&me),
            &stratus::cluster::reconcile::Options {
                dry_run: false,
                ..now.clone()
            },
        ))
        .unwrap();
    assert_eq!(
        done.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        would.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        "the real run does what the dry run said"
    );
    assert!(
        done.iter()
            .any(|a| a.cluster == "orphan" && a.what.contains("recorded and terminated 1")),
        "{done:?}"
    );
    assert_eq!(live_instances(&moto, "orphan"), 0);
    let usage: Vec<Value> = serde_json::from_str(&ctx.ok(&["usage", "--json"]).stdout).unwrap();
    assert!(
        usage
            .iter()
            .any(|u| u["cluster"] == "orphan" && u["instance_hours"].as_f64().unwrap() > 0.0),
        "the orphan's hours are counted: {usage:?}"
    );
    let done = moto
        .block_on(stratus::cluster::reconcile::reconcile(
            app.ctx(),
            &provider,
            Some(&me),
            &stratus::cluster::reconcile::Options {
                dry_run: false,
                ..now
            },
        ))
        .unwrap();
    assert!(
        done.iter()
            .any(|a| a.cluster == "orphan" && a.action == "release"),
        "{done:?}"
    );
    assert!(!resources_exist(&moto, "orphan"));

    // Nothing is left to do.
    let r = ctx.ok(&["reconcile"]);
    assert!(r.stderr.contains("nothing to reconcile"), "{r}");
}

#[test]
fn a_public_address_is_asked_for_in_a_site_subnet() {
    let Some(moto) = Moto::acquire() else { return };
    // moto's subnets, like many a site's own, hand out no public address by default.
    let (_vpc, subnet) = moto.loopback_subnet();
    let ctx = ec2_context(
        &moto,
        &format!("subnet_id = \"{subnet}\"\naddress = \"public_ip\"\nclient_cidrs = {CIDRS:?}\n"),
    );
    tagged_profile(&ctx);
    // --no-configure: stratus never connects to these (public, made-up) addresses.
    ctx.ok(&[
        "launch-cluster",
        "pub",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let owner = owner();
    let group = moto.groups_named(&format!("stratus-{owner}@pub"));
    let group_id = group[0].group_id().unwrap();
    let instances = moto.instances(&[("tag:stratus:cluster", "pub")]);
    assert_eq!(instances.len(), 2);
    for i in &instances {
        assert_eq!(i.subnet_id(), Some(subnet.as_str()));
        // The group is on the network interface (moto lists it only there).
        let eni = &i.network_interfaces()[0];
        assert!(
            eni.groups().iter().any(|g| g.group_id() == Some(group_id)),
            "{i:?}"
        );
        assert!(i.public_ip_address().is_some(), "{i:?}");
    }
    let c = ctx.cluster_json("pub");
    for n in nodes(&c) {
        let addr = n["address"].as_str().unwrap();
        let public = instances
            .iter()
            .filter_map(|i| i.public_ip_address())
            .any(|p| p == addr);
        assert!(public, "{addr} is not one of the public addresses: {c:#}");
    }
    ctx.ok(&["terminate-cluster", "pub", "--yes"]);
    assert!(
        moto.groups_named(&format!("stratus-{owner}@pub"))
            .is_empty()
    );
}

/// A profile whose roles list fallback types, in order of preference (issue 13, item 4).
pub(crate) const FALLBACK: &str = r#"
description = "EC2 test: instance types in order of preference"
providers = ["ec2"]
max_workers = 20
ssh_user = "ubuntu"
ssh_port = 2200
ready_timeout_secs = 60

[master]
image = "IMAGE"
instance_types = ["m5.large", "m6i.large"]
user_data = "tagged/node.sh.hbs"

[worker]
image = "IMAGE"
instance_types = ["m5.xlarge", "m5a.large"]
user_data = "tagged/node.sh.hbs"
"#;

pub(crate) fn fallback_profile(ctx: &TestContext) {
    ctx.profile_file("fallback.toml", &FALLBACK.replace("IMAGE", UBUNTU_AMI));
    ctx.profile_file("tagged/node.sh.hbs", TAGGED_USER_DATA);
}

/// Every launch batch the state database holds: (token, settled).
pub(crate) fn batches(ctx: &TestContext) -> Vec<(String, bool)> {
    let db = rusqlite::Connection::open(ctx.state.join("stratus.db")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT token, settled_at IS NOT NULL FROM launch_batches ORDER BY created_at, token",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// EC2 without room for the preferred type in one zone, and not offering it (`Unsupported`) or
/// not fulfilling it (`UnfulfillableCapacity`) in the other: each role moves on to the next
/// subnet, then to its next type, within one round (no pause), every call written down first
/// with a token of its own and settled with its answer.
#[test]
fn a_capacity_shortage_moves_to_the_next_subnet_then_the_next_type() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnets) = moto.loopback_subnets(2);
    let ctx = ec2_context(
        &moto,
        &format!("subnet_ids = {subnets:?}\naddress = \"private_ip\"\nclient_cidrs = {CIDRS:?}\n"),
    );
    fallback_profile(&ctx);
    let faults = moto.faults();
    faults.configure(serde_json::json!({"refuse_when": [
        {"action": "RunInstances", "code": "InsufficientInstanceCapacity",
         "message": "We currently do not have sufficient capacity in the Availability Zone you requested.",
         "when": {"SubnetId": subnets[0]}},
        {"action": "RunInstances", "code": "Unsupported",
         "message": "The requested configuration is currently not supported.",
         "when": {"SubnetId": subnets[1], "InstanceType": "m5.large"}},
        {"action": "RunInstances", "code": "UnfulfillableCapacity",
         "when": {"SubnetId": subnets[1], "InstanceType": "m5.xlarge"}},
    ]}));
    ctx.ok(&[
        "launch-cluster",
        "fb",
        "2",
        "-p",
        "fallback",
        "--no-configure",
    ]);

    let instances = moto.instances(&[("tag:stratus:cluster", "fb")]);
    assert_eq!(instances.len(), 3, "{instances:#?}");
    for i in &instances {
        let (role, ty) = (
            tag(i.tags(), "stratus:role").unwrap(),
            i.instance_type().map(|t| t.as_str()),
        );
        match role {
            "master" => assert_eq!(ty, Some("m6i.large")),
            _ => assert_eq!(ty, Some("m5a.large")),
        }
        assert_eq!(i.subnet_id(), Some(subnets[1].as_str()), "{i:?}");
    }
    let listed = ctx.cluster_json("fb");
    let mut types: Vec<String> = nodes(&listed)
        .iter()
        .map(|n| n["instance_type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["m5a.large", "m5a.large", "m6i.large"], "{listed:#}");
    // Per role: type 1 in zone a, type 1 in zone b, type 2 in zone a, type 2 in zone b.
    assert_eq!(faults.count("RunInstances"), 8);
    let written = batches(&ctx);
    assert_eq!(written.len(), 8, "one batch per call: {written:?}");
    assert!(written.iter().all(|(_, settled)| *settled), "{written:?}");
    let tokens: BTreeSet<&str> = written.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tokens.len(), 8, "{written:?}");
    ctx.ok(&["terminate-cluster", "fb", "--yes"]);
}

/// The account at a limit: each quota error stops the launch at its first answer (no other
/// subnet, type or replacement round), names what the instructor must raise, and rolls back what
/// did launch (the master).
#[test]
fn quota_errors_stop_the_launch_at_once_and_roll_it_back() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let faults = moto.faults();
    for (n, (code, advice)) in [
        (
            "VcpuLimitExceeded",
            "raise the account's vCPU quota for On-Demand",
        ),
        (
            "MaxSpotInstanceCountExceeded",
            "raise the account's Spot vCPU quota",
        ),
        (
            "InstanceLimitExceeded",
            "raise the account's instance limit",
        ),
        ("InsufficientFreeAddressesInSubnet", "widen the subnet"),
    ]
    .into_iter()
    .enumerate()
    {
        faults.reset();
        faults.configure(serde_json::json!({"refuse_when": [
            {"action": "RunInstances", "code": code, "when": {"InstanceType": "m5.xlarge"}},
        ]}));
        let name = format!("q{n}");
        let r = ctx.run(&[
            "launch-cluster",
            &name,
            "2",
            "-p",
            "tagged",
            "--no-configure",
        ]);
        assert_eq!(r.code, 1, "{r}");
        assert!(r.stderr.contains(code), "{r}");
        assert!(r.stderr.contains("the AWS account is at a limit"), "{r}");
        assert!(r.stderr.contains(advice), "{r}");
        assert!(
            r.stderr.contains("terminating everything it launched"),
            "{r}"
        );
        assert_eq!(faults.count("RunInstances"), 2, "one call per role: {r}");
        assert_eq!(live_instances(&moto, &name), 0, "the master is rolled back");
        assert_eq!(ctx.cluster_json(&name)["state"], "failed");
    }
}

/// A whole round without room: the launch pauses and goes round again (and succeeds when room
/// comes back); three rounds without room fail it, naming every type and subnet it tried.
#[test]
fn a_round_without_room_pauses_then_tries_again_and_gives_up_naming_what_it_tried() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnets) = moto.loopback_subnets(2);
    let ctx = ec2_context(
        &moto,
        &format!("subnet_ids = {subnets:?}\naddress = \"private_ip\"\nclient_cidrs = {CIDRS:?}\n"),
    );
    fallback_profile(&ctx);
    let faults = moto.faults();
    // Room again after the first round's four calls.
    faults.configure(serde_json::json!({"refuse_when": [
        {"action": "RunInstances", "code": "InsufficientInstanceCapacity", "times": 4},
    ]}));
    let started = std::time::Instant::now();
    ctx.ok(&["launch-master", "r1", "-p", "fallback", "--no-configure"]);
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "the second round comes after a pause"
    );
    assert_eq!(faults.count("RunInstances"), 5);
    let master = moto.instances(&[("tag:stratus:cluster", "r1")]);
    assert_eq!(master.len(), 1);
    assert_eq!(
        master[0].instance_type().map(|t| t.as_str()),
        Some("m5.large")
    );
    assert!(batches(&ctx).iter().all(|(_, settled)| *settled));
    ctx.ok(&["terminate-cluster", "r1", "--yes"]);

    faults.reset();
    faults.configure(serde_json::json!({"refuse_when": [
        {"action": "RunInstances", "code": "InsufficientInstanceCapacity"},
    ]}));
    let started = std::time::Instant::now();
    let r = ctx.run(&["launch-master", "r2", "-p", "fallback", "--no-configure"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(started.elapsed() >= Duration::from_secs(40), "{r}");
    assert_eq!(
        faults.count("RunInstances"),
        12,
        "four placements, three rounds: {r}"
    );
    assert!(r.stderr.contains("EC2 had no room for r2-master"), "{r}");
    assert!(r.stderr.contains("in 3 rounds"), "{r}");
    for ty in ["m5.large", "m6i.large"] {
        for s in &subnets {
            assert!(
                r.stderr.contains(&format!("{ty} in {s} (us-east-1")),
                "names {ty} in {s}: {r}"
            );
        }
    }
    assert_eq!(ctx.cluster_json("r2")["state"], "failed");
    assert_eq!(live_instances(&moto, "r2"), 0);
}

/// The policy allows a launch only if it allows every type the launch may fall back to, and
/// reserves the most units any of them takes; refused before anything is created.
#[test]
fn the_policy_checks_every_type_a_launch_may_fall_back_to() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    fallback_profile(&ctx);
    let policy = ctx.config.parent().unwrap().join("policy.toml");
    let write_policy = |units: &str| {
        std::fs::write(
            &policy,
            format!("[units]\n{units}\n[default]\nmax_units = 2\nprofiles = [\"fallback\"]\n"),
        )
        .unwrap()
    };
    let faults = moto.faults();
    write_policy("\"m5.large\" = 1\n\"m5.xlarge\" = 1\n\"m5a.large\" = 1\n");
    let r = ctx.run(&["launch-master", "p1", "-p", "fallback", "--no-configure"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(
            "instance type m6i.large (a fallback type of the master of profile fallback) is not listed under [units]"
        ),
        "{r}"
    );
    write_policy("\"m5.large\" = 1\n\"m6i.large\" = 3\n");
    let r = ctx.run(&["launch-master", "p2", "-p", "fallback", "--no-configure"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("max_units for"), "{r}");
    assert!(r.stderr.contains("1 master of m6i.large at 3"), "{r}");
    assert_eq!(faults.count("RunInstances"), 0);
    assert!(ctx.list_json().is_empty(), "nothing recorded");
}

/// Amazon Linux 2023's current image as AWS publishes it, in SSM (moto knows it).
const AL2023_PARAMETER: &str =
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

/// `volume_gb` sizes the root volume of the image the node boots, whatever its root device:
/// Amazon Linux 2023's `/dev/xvda` (named by an SSM parameter, which stratus resolves) and
/// Ubuntu's `/dev/sda1`, each from the image's own `RootDeviceName`; one volume per node, never
/// a second empty disk. A parameter SSM does not have is refused before anything launches.
#[test]
fn the_root_volume_is_the_resolved_image_s_own_root_device() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    let profile = TAGGED
        .replace(
            "[master]\nimage = \"IMAGE\"",
            &format!("[master]\nimage = \"resolve:ssm:{AL2023_PARAMETER}\"\nvolume_gb = 40"),
        )
        .replace("IMAGE", UBUNTU_AMI);
    ctx.profile_file("tagged.toml", &profile);
    ctx.profile_file("tagged/node.sh.hbs", TAGGED_USER_DATA);
    ctx.ok(&[
        "launch-cluster",
        "rd",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let instances = moto.instances(&[("tag:stratus:cluster", "rd")]);
    assert_eq!(instances.len(), 2);
    for i in &instances {
        let role = tag(i.tags(), "stratus:role").unwrap();
        let ami = i.image_id().unwrap();
        let image = moto.block_on(async {
            moto.ec2
                .describe_images()
                .image_ids(ami)
                .send()
                .await
                .unwrap()
                .images()[0]
                .clone()
        });
        let (want_device, want_gb) = match role {
            "master" => {
                assert!(ami.starts_with("ami-"), "resolved, not {ami}");
                assert!(
                    image.name().unwrap_or_default().starts_with("al2023-ami-"),
                    "{image:?}"
                );
                ("/dev/xvda", 40)
            }
            _ => {
                assert_eq!(ami, UBUNTU_AMI);
                ("/dev/sda1", 40)
            }
        };
        assert_eq!(image.root_device_name(), Some(want_device));
        let mappings = i.block_device_mappings();
        assert_eq!(mappings.len(), 1, "one volume, the root: {mappings:?}");
        assert_eq!(mappings[0].device_name(), Some(want_device), "{mappings:?}");
        let volume = mappings[0].ebs().and_then(|e| e.volume_id()).unwrap();
        let size = moto.block_on(async {
            moto.ec2
                .describe_volumes()
                .volume_ids(volume)
                .send()
                .await
                .unwrap()
                .volumes()[0]
                .size()
        });
        assert_eq!(size, Some(want_gb), "{role}");
    }
    ctx.ok(&["terminate-cluster", "rd", "--yes"]);

    let missing = profile.replace(AL2023_PARAMETER, "/aws/service/nosuch/ami-id");
    ctx.profile_file("tagged.toml", &missing);
    let r = ctx.run(&[
        "launch-cluster",
        "rm",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains("SSM has no parameter /aws/service/nosuch/ami-id in us-east-1"),
        "{r}"
    );
    assert_eq!(live_instances(&moto, "rm"), 0);
}

/// A VPC whose instances get no DNS host names breaks Hadoop: `prepare` refuses it with the
/// command that fixes it, before creating anything.
#[test]
fn a_vpc_without_dns_host_names_is_refused_before_anything_is_created() {
    let Some(moto) = Moto::acquire() else { return };
    let (vpc, subnet) = moto.loopback_subnet();
    moto.block_on(async {
        moto.ec2
            .modify_vpc_attribute()
            .vpc_id(&vpc)
            .enable_dns_hostnames(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(false)
                    .build(),
            )
            .send()
            .await
            .unwrap()
    });
    let ctx = ec2_context(
        &moto,
        &format!(
            "subnet_ids = [\"{subnet}\"]\naddress = \"private_ip\"\nclient_cidrs = {CIDRS:?}\n"
        ),
    );
    tagged_profile(&ctx);
    let r = ctx.run(&[
        "launch-cluster",
        "dn",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains(&format!("VPC {vpc} has enableDnsHostnames off")),
        "{r}"
    );
    assert!(r.stderr.contains("--enable-dns-hostnames"), "{r}");
    let faults = moto.faults();
    assert_eq!(faults.count("RunInstances"), 0);
    assert!(
        moto.groups_named(&format!("stratus-{}@dn", owner()))
            .is_empty()
    );
    assert!(moto.key_pairs_named(&format!("{}@dn", owner())).is_empty());
}

/// Instance types without the latest console output (Xen: t2, m4) refuse `Latest=true` with
/// codes EC2 does not document: any error of that first call falls back to the buffered output,
/// which still shows the keys, and later reads ask for it alone.
#[test]
fn any_error_of_the_first_latest_console_read_falls_back_to_the_buffered_output() {
    let Some(moto) = Moto::acquire() else { return };
    let dir = tempfile::tempdir().unwrap();
    let provider = ec2_provider(&moto, dir.path(), "");
    let id = moto.block_on(async {
        moto.ec2
            .run_instances()
            .image_id(UBUNTU_AMI)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap()
            .instances()[0]
            .instance_id()
            .unwrap()
            .to_owned()
    });
    let key = ec2_hypervisor::fresh_public_key(russh::keys::Algorithm::Ed25519);
    let (status, body) = moto.post(
        "/stratus-faults/console",
        &serde_json::json!({"instance_id": id, "output": ec2_hypervisor::console_text(std::slice::from_ref(&key))})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let faults = moto.faults();
    faults.configure(serde_json::json!({"refuse_when": [
        {"action": "GetConsoleOutput", "code": "InvalidParameter",
         "message": "The Latest parameter is not supported for this instance type.",
         "when": {"Latest": "true"}},
    ]}));
    let keys = moto
        .block_on(provider.console_host_keys(&id))
        .unwrap()
        .expect("the buffered output shows the keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(
        first_two_fields(&stratus::cluster::ssh::public_key_openssh(&keys[0])),
        first_two_fields(&key)
    );
    assert_eq!(
        faults.count("GetConsoleOutput"),
        2,
        "the latest, then the buffered"
    );
    moto.block_on(provider.console_host_keys(&id))
        .unwrap()
        .unwrap();
    assert_eq!(
        faults.count("GetConsoleOutput"),
        3,
        "the buffered output alone from then on"
    );
}

/// Temporary keys in the credentials file, with their expiry: within a day of it, every cron run
/// warns (a student's command does not); with none given, cron warns that none is known; once
/// expired, every EC2 command fails at once, naming the file and the time, calling nothing.
#[test]
fn temporary_credentials_warn_a_day_ahead_and_stop_every_command_once_expired() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    let creds = ctx.root.path().join("aws-credentials");
    let write = |expiry: Option<jiff::Timestamp>| {
        let line = expiry
            .map(|t| format!("aws_credential_expiration = {t}\n"))
            .unwrap_or_default();
        std::fs::write(
            &creds,
            format!("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\naws_session_token = FwoGZXIvYXdzEBYaDN\n{line}"),
        )
        .unwrap();
    };
    let now = jiff::Timestamp::now().as_second();
    let soon = jiff::Timestamp::from_second(now + 5 * 3600).unwrap();
    write(Some(soon));
    let described = format!("the credentials file {} (profile default)", creds.display());
    for cmd in [
        &["accounting", "snapshot", "--quiet"][..],
        &["accounting", "reap", "--quiet"][..],
    ] {
        let r = ctx.ok(cmd);
        assert!(
            r.stderr.contains(&format!(
                "warning: the AWS credentials in {described} expire at {soon}, in 4h 5"
            )),
            "{r}"
        );
    }
    let r = ctx.ok(&["list"]);
    assert!(!r.stderr.contains("expire"), "students are not told: {r}");
    // Far ahead: nothing to say.
    write(Some(
        jiff::Timestamp::from_second(now + 3 * 86_400).unwrap(),
    ));
    let r = ctx.ok(&["accounting", "snapshot", "--quiet"]);
    assert!(!r.stderr.contains("expire"), "{r}");
    write(None);
    let r = ctx.ok(&["accounting", "snapshot", "--quiet"]);
    assert!(
        r.stderr.contains("are temporary (they have a session token) but say nothing of when they expire; add aws_credential_expiration"),
        "{r}"
    );

    let past = jiff::Timestamp::from_second(now - 2 * 3600).unwrap();
    write(Some(past));
    let faults = moto.faults();
    faults.reset();
    for cmd in [
        &["accounting", "snapshot", "--quiet"][..],
        &["accounting", "reap", "--quiet"][..],
        &["reconcile"][..],
        &[
            "launch-cluster",
            "ex",
            "1",
            "-p",
            "tagged",
            "--no-configure",
        ][..],
    ] {
        let r = ctx.run(cmd);
        assert_eq!(r.code, 1, "{r}");
        assert!(
            r.stderr.contains(&format!(
                "error: the AWS credentials in {described} expired at {past} (2h 0m ago); put fresh keys there, with their aws_credential_expiration"
            )),
            "{r}"
        );
    }
    assert_eq!(faults.counts().values().sum::<u64>(), 0, "no call was made");
}

/// A campus egress proxy: a small HTTP proxy on 127.0.0.1 that forwards requests in absolute
/// form (what an HTTP proxy gets for an http:// URL) to moto, and answers CONNECT (what it gets
/// for an https:// URL, AWS's) with 502. It records the request line of everything it gets.
struct EgressProxy {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EgressProxy {
    fn start(upstream: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (upstream, log) = (upstream.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = Self::serve(conn, &upstream, &log);
                });
            }
        });
        Self { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// One request from the client: forwarded whole, then the connection is closed (the answer
    /// says so).
    fn serve(
        conn: std::net::TcpStream,
        upstream: &str,
        log: &std::sync::Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        use std::io::{BufRead, BufReader, Read, Write};
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        log.lock().unwrap().push(format!("{method} {target}"));
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if !lower.starts_with("connection:") && !lower.starts_with("proxy-") {
                headers.push(h);
            }
        }
        let mut out = conn;
        if method == "CONNECT" {
            return out.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        let Some(path) = target
            .strip_prefix("http://")
            .map(|rest| rest.find('/').map(|i| &rest[i..]).unwrap_or("/"))
        else {
            return out.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        };
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut up = std::net::TcpStream::connect(upstream)?;
        write!(up, "{method} {path} HTTP/1.1\r\n")?;
        for h in &headers {
            up.write_all(h.as_bytes())?;
        }
        up.write_all(b"Connection: close\r\n\r\n")?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        out.write_all(&answer)
    }
}

/// `[ec2] https_proxy` sends every EC2 call through the site's proxy, and nothing else does: with
/// an endpoint whose host name cannot resolve (`.invalid`), a launch still works, because only
/// the proxy ever connects to it; an https:// endpoint is asked of the proxy with CONNECT; and
/// proxy variables in the caller's environment are ignored.
#[test]
fn https_proxy_carries_every_call_and_the_environment_s_proxies_do_not() {
    let Some(moto) = Moto::acquire() else { return };
    let upstream = moto.endpoint.trim_start_matches("http://").to_owned();
    let proxy = EgressProxy::start(&upstream);
    let ctx = ec2_context(
        &moto,
        &format!(
            "client_cidrs = {CIDRS:?}\nhttps_proxy = \"{}\"\n",
            proxy.url()
        ),
    );
    let config = std::fs::read_to_string(&ctx.config).unwrap();
    let unresolvable = "http://ec2.stratus-egress-test.invalid";
    std::fs::write(&ctx.config, config.replace(&moto.endpoint, unresolvable)).unwrap();
    tagged_profile(&ctx);
    let faults = moto.faults();
    ctx.ok(&[
        "launch-cluster",
        "px",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let seen = proxy.seen();
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.iter().all(|l| l == &format!("POST {unresolvable}/")),
        "every call in absolute form, to the endpoint: {seen:?}"
    );
    assert_eq!(faults.count("RunInstances"), 2, "the calls reached moto");
    assert_eq!(moto.instances(&[("tag:stratus:cluster", "px")]).len(), 2);
    ctx.ok(&["terminate-cluster", "px", "--yes"]);

    // AWS's endpoints are https://: the proxy is asked to CONNECT to them.
    let config = std::fs::read_to_string(&ctx.config).unwrap();
    std::fs::write(
        &ctx.config,
        config.replace(unresolvable, "https://ec2.stratus-egress-test.invalid"),
    )
    .unwrap();
    let r = ctx.run(&["accounting", "snapshot"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        proxy
            .seen()
            .contains(&"CONNECT ec2.stratus-egress-test.invalid:443".to_owned()),
        "{:?}",
        proxy.seen()
    );

    // Without https_proxy, the caller's proxy variables change nothing.
    let before = proxy.seen().len();
    let plain = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&plain);
    let mut cmd = plain.cmd();
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env(var, proxy.url());
    }
    let out = cmd
        .args([
            "launch-cluster",
            "np",
            "1",
            "-p",
            "tagged",
            "--no-configure",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(moto.instances(&[("tag:stratus:cluster", "np")]).len(), 2);
    assert_eq!(proxy.seen().len(), before, "{:?}", proxy.seen());
    plain.ok(&["terminate-cluster", "np", "--yes"]);
}

/// Estimates count what AWS bills for a node besides its instance hours: its public IPv4
/// address ($0.005 an hour) and its gp3 root volume ($0.08 per GB-month in us-east-1, pro rata
/// over a 730-hour month). The launch records both with each node: the volume the profile asks
/// for (else the image's own root volume), and an address only where the network gives one.
#[test]
fn estimates_count_each_node_s_public_address_and_volume() {
    let Some(moto) = Moto::acquire() else { return };
    // The default VPC gives every node a public address.
    let ctx = ec2_context(&moto, &format!("client_cidrs = {CIDRS:?}\n"));
    tagged_profile(&ctx);
    ctx.ok(&[
        "launch-cluster",
        "ev",
        "2",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    ctx.ok(&["terminate-cluster", "ev", "--yes"]);
    let ivs = ctx.intervals_of("ev");
    assert_eq!(ivs.len(), 3);
    let image_gb = moto.block_on(async {
        let images = moto
            .ec2
            .describe_images()
            .image_ids(UBUNTU_AMI)
            .send()
            .await
            .unwrap();
        let image = images.images()[0].clone();
        image
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == image.root_device_name())
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size())
            .map(|gb| gb as u32)
    });
    let mut expected = 0i64;
    for iv in &ivs {
        assert!(iv.public_ipv4, "{iv:?}");
        let (per_hour, gb) = if iv.instance_type == "m5.xlarge" {
            // Spot workers of 40 GB: 70% of $0.192.
            assert!(iv.spot);
            (134_400, 40)
        } else {
            // The master: the image's own root volume (8 GiB if the image does not say).
            (96_000, image_gb.unwrap_or(8))
        };
        assert_eq!(iv.volume_gb, gb, "{iv:?}");
        let rate = (per_hour + 5_000) * 730 + i64::from(gb) * 80_000;
        let ms = iv.ended_at.unwrap() - iv.started_at;
        let seconds = (ms.max(60_000) + 999) / 1000;
        expected += ((i128::from(rate) * i128::from(seconds) * 1000 + 730 * 1_800_000)
            / (730 * 3_600_000)) as i64;
    }
    let usage: Value = serde_json::from_str(&ctx.ok(&["usage", "--json"]).stdout).unwrap();
    let row = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == "ev")
        .unwrap()
        .clone();
    let dollars = row["cost_dollars"].as_f64().unwrap();
    assert_eq!((dollars * 1e6).round() as i64, expected, "{row}");

    // A subnet of the site's that maps no public addresses, reached on private ones: no
    // address to pay for.
    let (_vpc, subnet) = moto.loopback_subnet();
    let private = ec2_context(
        &moto,
        &format!("subnet_id = \"{subnet}\"\naddress = \"private_ip\"\nclient_cidrs = {CIDRS:?}\n"),
    );
    tagged_profile(&private);
    private.ok(&[
        "launch-cluster",
        "pv",
        "1",
        "-p",
        "tagged",
        "--no-configure",
    ]);
    let ivs = private.intervals_of("pv");
    assert_eq!(ivs.len(), 2);
    assert!(ivs.iter().all(|iv| !iv.public_ipv4), "{ivs:?}");
    private.ok(&["terminate-cluster", "pv", "--yes"]);
}

#[test]
fn an_ec2_nodes_user_data_sets_the_deadline_and_extend_moves_it_on_the_nodes() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    e2e_profile(&ctx, 60, None);
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        "[units]\n\"m5.large\" = 1\n[default]\nlifetime_hours = 2\nmax_lifetime_hours = 4\n[reaper]\ngrace_minutes = 20\n",
    )
    .unwrap();
    let hv = hypervisor(&moto, "clock", &[]);
    ctx.ok(&["launch-cluster", "clock", "1", "-p", "e2e"]);
    let c = ctx.cluster_json("clock");
    let at = |v: &serde_json::Value| {
        v.as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    };
    let (created, deadline) = (at(&c["created_at"]), at(&c["deadline"]));
    assert_eq!(deadline - created, 2 * 3_600_000, "{c:#}");
    let secs = (deadline + 999).div_euclid(1000);

    // The user-data EC2 holds: stratus's guard part first, with the deadline and the grace,
    // then the profile's own.
    for n in nodes(&c) {
        let text = moto.user_data(n["id"].as_str().unwrap());
        let parts = stratus::templates::split_multipart(&text).expect("a multi-part user-data");
        assert_eq!(parts.len(), 2, "{text}");
        assert_eq!(parts[0].0, "00-stratus-guard.sh");
        assert!(
            parts[0].1.contains(&format!("\ndeadline={secs}\n")),
            "{}",
            parts[0].1
        );
        assert!(parts[0].1.contains("grace=1200\n"), "{}", parts[0].1);
        assert!(
            parts[0]
                .1
                .contains("systemctl enable --now stratus-guard.timer")
        );
        assert!(parts[1].1.starts_with("#!/bin/bash"), "{}", parts[1].1);
    }
    // The hypervisor's nodes ran it: the deadline on each node, and the login message.
    let r = ctx.ok(&[
        "exec",
        "clock",
        "--all",
        "--",
        "cat \"$STRATUS_STATE_DIR/clock/deadline\"; head -n 1 \"$STRATUS_STATE_DIR/guard/motd\"",
    ]);
    for node in ["clock-master", "clock-worker-1"] {
        assert!(r.stdout.contains(&format!("[{node}] {secs}\n")), "{r}");
        assert!(
            r.stdout
                .contains(&format!("[{node}] stratus: cluster clock of ")),
            "{r}"
        );
    }

    // extend moves it on every node.
    let r = ctx.ok(&["extend", "clock", "1h30m"]);
    assert!(
        r.stdout.contains("extended cluster clock by 1 h 30 min"),
        "{r}"
    );
    let moved = (deadline + 90 * 60_000 + 999).div_euclid(1000);
    let r = ctx.ok(&[
        "exec",
        "clock",
        "--all",
        "--",
        "cat \"$STRATUS_STATE_DIR/clock/deadline\"",
    ]);
    assert_eq!(r.stdout.matches(&format!("{moved}\n")).count(), 2, "{r}");
    // Past max_lifetime_hours: refused, and the nodes keep the deadline.
    let r = ctx.run(&["extend", "clock", "1h"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("4 h in all"), "{r}");

    ctx.ok(&["terminate-cluster", "clock", "--yes"]);
    let report = eventually(Duration::from_secs(20), || {
        let r = hv.report();
        (r.stopped.len() == 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("the hypervisor did not stop every node: {:?}", hv.report()));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn an_ec2_node_past_its_deadline_powers_off_and_ec2_terminates_it_with_no_stratus_process() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    e2e_profile(&ctx, 60, None);
    std::fs::write(
        ctx.config.parent().unwrap().join("policy.toml"),
        "[units]\n\"m5.large\" = 1\n[default]\nlifetime_hours = 2\n[reaper]\ngrace_minutes = 0\n",
    )
    .unwrap();
    let hv = hypervisor(&moto, "off", &[]);
    ctx.ok(&["launch-cluster", "off", "1", "-p", "e2e"]);
    let ids: Vec<String> = nodes(&ctx.cluster_json("off"))
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    // The deadline on the nodes passed a minute ago (as if the cluster had lived its 2 hours):
    // from here no stratus process runs, and each node's own guard powers it off.
    ctx.ok(&[
        "exec",
        "off",
        "--all",
        "--",
        "echo $(( $(date +%s) - 60 )) > \"$STRATUS_STATE_DIR/clock/deadline\"",
    ]);
    let report = eventually(Duration::from_secs(60), || {
        let r = hv.report();
        (r.powered_off.len() == 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("the nodes did not power off: {:?}", hv.report()));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // Their launch asked EC2 to terminate them on a shutdown, not to stop them (a stopped
    // instance still costs its volumes, and would escape the class's lifetime).
    for id in &ids {
        assert!(
            report
                .powered_off
                .contains(&(id.clone(), "terminate".to_owned())),
            "{:?}",
            report.powered_off
        );
    }
    let states: Vec<String> = moto
        .instances(&[("tag:stratus:cluster", "off")])
        .iter()
        .map(|i| i.state().unwrap().name().unwrap().as_str().to_owned())
        .collect();
    assert!(
        states.len() == 2
            && states
                .iter()
                .all(|s| s == "terminated" || s == "shutting-down"),
        "{states:?}"
    );
    // The next snapshot settles the cluster as ended.
    ctx.ok(&["accounting", "snapshot", "--quiet"]);
    let c = ctx.cluster_json("off");
    assert!(
        nodes(&c).iter().all(|n| n["state"] == "terminated"),
        "{c:#}"
    );
}
