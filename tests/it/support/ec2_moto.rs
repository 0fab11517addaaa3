//! moto for the EC2 tests: the one server `scripts/test` starts (`STRATUS_MOTO_ENDPOINT`), held by
//! one test at a time, reset at the start of each, and an SDK client that looks at what stratus
//! made the way an operator would.
//!
//! moto's state is global (`POST /moto-api/reset` wipes every account and region), and the tests
//! that boot instances bind the addresses moto hands out (127.0.0.4, .5, … in a loopback subnet),
//! so moto tests are serialised machine-wide with an exclusive lock on a file in the temp
//! directory: it holds across test threads, test processes and concurrent test runs.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Tag};

pub const REGION: &str = "us-east-1";
/// An Ubuntu image moto knows (DescribeImages finds it, so a root volume size can be set).
pub const UBUNTU_AMI: &str = "ami-785db401";
/// The SSM parameter of the shipped profiles' image (`resolve:ssm:` it).
pub const UBUNTU_PARAMETER: &str =
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id";

/// The moto server, held exclusively by this test until dropped.
pub struct Moto {
    pub endpoint: String,
    pub rt: tokio::runtime::Runtime,
    pub ec2: aws_sdk_ec2::Client,
    _lock: std::fs::File,
}

impl Moto {
    /// The shared server, locked and reset; `None` (after saying why) when the tests run without
    /// moto and do not have to.
    pub fn acquire() -> Option<Moto> {
        let endpoint = match std::env::var("STRATUS_MOTO_ENDPOINT") {
            Ok(e) if !e.is_empty() => e.trim_end_matches('/').to_owned(),
            _ => {
                if std::env::var("STRATUS_REQUIRE_MOTO").as_deref() == Ok("1") {
                    panic!("STRATUS_REQUIRE_MOTO=1 but STRATUS_MOTO_ENDPOINT is not set");
                }
                crate::support::skip(
                    "STRATUS_MOTO_ENDPOINT is not set (./scripts/test starts moto)",
                );
                return None;
            }
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("stratus-moto-tests.lock"))
            .expect("open the moto lock file");
        lock.lock().expect("lock the moto lock file");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ec2 = client(&endpoint, "testing", "testing");
        let moto = Moto {
            endpoint,
            rt,
            ec2,
            _lock: lock,
        };
        moto.set_auth("inf");
        moto.reset();
        Some(moto)
    }

    /// Wipes every resource (and every IAM user) moto holds, then publishes the SSM parameter
    /// of the shipped profiles' Ubuntu image as AWS does (naming an Ubuntu image moto knows).
    pub fn reset(&self) {
        let (status, body) = self.post("/moto-api/reset", "");
        assert_eq!(status, 200, "moto reset: {body}");
        self.publish_parameter(UBUNTU_PARAMETER, UBUNTU_AMI);
    }

    /// Publishes a public SSM parameter (an image id), as AWS publishes its images'.
    pub fn publish_parameter(&self, name: &str, value: &str) {
        let (status, body) = self.post(
            "/stratus-faults/ssm-parameter",
            &serde_json::json!({"name": name, "value": value, "region": REGION}).to_string(),
        );
        assert_eq!(
            status, 200,
            "publish {name}: {body} (is the server scripts/moto_faults.py?)"
        );
    }

    /// moto's IAM auth: `"0"` enforces it from the next request, `"inf"` turns it off.
    pub fn set_auth(&self, count: &str) {
        let (status, body) = self.post("/moto-api/reset-auth", count);
        assert_eq!(status, 200, "moto reset-auth {count}: {body}");
    }

    /// A POST to moto's management API (or to the fault API of `scripts/moto_faults.py`),
    /// `text/plain` (a form body would be eaten by Flask). Returns the status and the body.
    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.http("POST", path, body)
    }

    /// A GET of moto's management API or of the fault API.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, "")
    }

    fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(&self.endpoint, method, path, body)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A VPC and subnet of 127.0.0.0/24: moto hands instances in it 127.0.0.4, .5, …, addresses a
    /// test can serve SSH on. The VPC has DNS host names on, as a site's must. Returns (vpc id,
    /// subnet id).
    pub fn loopback_subnet(&self) -> (String, String) {
        self.block_on(loopback_vpc(&self.ec2, "127.0.0.0/24"))
    }

    /// A VPC with DNS host names on and `n` subnets (at most 4) splitting 127.0.0.0/24, each in
    /// its own availability zone (us-east-1a, 1b, ...), as a site spreads a class over zones.
    /// Returns (vpc id, subnet ids in zone order).
    pub fn loopback_subnets(&self, n: usize) -> (String, Vec<String>) {
        assert!((1..=4).contains(&n));
        let (vpc, first) = self.loopback_subnet();
        self.block_on(async {
            // The /24 subnet covers everything: replace it with n smaller ones.
            self.ec2
                .delete_subnet()
                .subnet_id(&first)
                .send()
                .await
                .unwrap();
            let mut subnets = Vec::new();
            for k in 0..n {
                let cidr = format!("127.0.0.{}/26", k * 64);
                let zone = format!("{REGION}{}", (b'a' + k as u8) as char);
                let s = self
                    .ec2
                    .create_subnet()
                    .vpc_id(&vpc)
                    .cidr_block(cidr)
                    .availability_zone(zone)
                    .send()
                    .await
                    .unwrap();
                subnets.push(s.subnet().and_then(|s| s.subnet_id()).unwrap().to_owned());
            }
            (vpc, subnets)
        })
    }

    /// Every instance matching the filters, all pages.
    pub fn instances(&self, filters: &[(&str, &str)]) -> Vec<aws_sdk_ec2::types::Instance> {
        let filters: Vec<Filter> = filters
            .iter()
            .map(|(n, v)| Filter::builder().name(*n).values(*v).build())
            .collect();
        self.block_on(async {
            let mut out = Vec::new();
            let mut pages = self
                .ec2
                .describe_instances()
                .set_filters(Some(filters))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for r in page.unwrap().reservations() {
                    out.extend(r.instances().iter().cloned());
                }
            }
            out
        })
    }

    /// The security groups and key pairs whose name is `name`.
    pub fn groups_named(&self, name: &str) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
        self.block_on(async {
            self.ec2
                .describe_security_groups()
                .filters(Filter::builder().name("group-name").values(name).build())
                .send()
                .await
                .unwrap()
                .security_groups()
                .to_vec()
        })
    }

    pub fn key_pairs_named(&self, name: &str) -> Vec<aws_sdk_ec2::types::KeyPairInfo> {
        self.block_on(async {
            self.ec2
                .describe_key_pairs()
                .filters(Filter::builder().name("key-name").values(name).build())
                .include_public_key(true)
                .send()
                .await
                .unwrap()
                .key_pairs()
                .to_vec()
        })
    }

    /// An instance's user-data as the instance would see it: base64-decoded and gunzipped.
    pub fn user_data(&self, instance_id: &str) -> String {
        let b64 = self.block_on(async {
            self.ec2
                .describe_instance_attribute()
                .instance_id(instance_id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await
                .unwrap()
                .user_data()
                .and_then(|v| v.value())
                .unwrap_or_default()
                .to_owned()
        });
        decode_user_data(&b64)
    }

    /// The site config for a stratus talking to this moto, with static test credentials in a
    /// credentials file under `dir`.
    pub fn site_config(&self, dir: &std::path::Path, ec2_extra: &str) -> String {
        let creds = dir.join("aws-credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        )
        .unwrap();
        format!(
            "provider = \"ec2\"\n[ec2]\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\ncredentials_file = {:?}\n{ec2_extra}\n",
            self.endpoint,
            creds.display().to_string()
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // A test that turned auth on and failed must not leave it on for the next.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.set_auth("inf")));
        // Nor a fault or a held call, which would stall the clean-up of the test's clusters.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.post("/stratus-faults/reset", "")
        }));
    }
}

/// An SDK client for moto with the given keys.
pub fn client(endpoint: &str, key: &str, secret: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key, secret, None, None, "moto-test"))
        // moto speaks plain HTTP; stratus's own client is built in its EC2 provider.
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

pub fn decode_user_data(b64: &str) -> String {
    use base64::Engine;
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("user-data is base64");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("user-data is gzip of UTF-8 text");
    text
}

pub fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Whether `tags` carry the cluster's tags with these values.
pub fn assert_cluster_tags(what: &str, tags: &[Tag], owner: &str, cluster: &str, profile: &str) {
    assert_eq!(tag(tags, "stratus:owner"), Some(owner), "{what}: {tags:?}");
    assert_eq!(
        tag(tags, "stratus:cluster"),
        Some(cluster),
        "{what}: {tags:?}"
    );
    assert_eq!(
        tag(tags, "stratus:profile"),
        Some(profile),
        "{what}: {tags:?}"
    );
    assert!(
        tag(tags, "stratus:request").is_some_and(|r| r.starts_with("req-")),
        "{what}: {tags:?}"
    );
    assert!(
        tag(tags, "stratus:store").is_some_and(|r| r.starts_with("st-")),
        "{what}: every resource carries its store's id: {tags:?}"
    );
}

/// One HTTP/1.1 call to the moto server at `endpoint` (`http://host:port`): status and body.
/// A VPC of 127.0.0.0/16 with DNS host names on, and in it a subnet of `subnet_cidr` (within
/// 127.0.0.0/16, so that moto hands its instances loopback addresses). Returns (vpc id, subnet
/// id). A VPC of one's own has DNS host names off, on AWS as in moto; a site turns them on for
/// Hadoop (and stratus refuses a VPC without them).
pub(crate) async fn loopback_vpc(ec2: &aws_sdk_ec2::Client, subnet_cidr: &str) -> (String, String) {
    let vpc = ec2
        .create_vpc()
        .cidr_block("127.0.0.0/16")
        .send()
        .await
        .expect("create the loopback VPC");
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_owned();
    ec2.modify_vpc_attribute()
        .vpc_id(&vpc)
        .enable_dns_hostnames(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(true)
                .build(),
        )
        .send()
        .await
        .expect("turn the VPC's DNS host names on");
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block(subnet_cidr)
        .send()
        .await
        .expect("create the loopback subnet");
    let subnet = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .unwrap()
        .to_owned();
    (vpc, subnet)
}

pub(crate) fn http(endpoint: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let hostport = endpoint
        .strip_prefix("http://")
        .expect("moto's endpoint is http://host:port");
    let mut s = std::net::TcpStream::connect(hostport).expect("connect to moto");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match answer.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => answer,
    };
    (status, body)
}
