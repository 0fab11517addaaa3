//! The test doubles behave as the real things do (issue 13, item 1): the hypervisor shows the
//! user-data's output on the console as it is written and cloud-init's host keys only once the
//! user-data has returned; the fault proxy throttles with a token bucket per action, counts what
//! it throttled, answers any action with any EC2 error code and that code's HTTP status, and
//! lets launches in one subnet run together as EC2 does, where moto alone can fail them.
//!
//! Instances are launched here with the SDK, not with stratus, so that each double is seen on
//! its own; the last tests run stratus through the faithful hypervisor.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use serde_json::json;
use stratus::cluster::provider::ec2::console::host_keys;

use crate::ec2::ec2_hypervisor::{
    CONSOLE_KEEPS, Console, Hypervisor, HypervisorConfig, fresh_public_key,
};
use crate::ec2::ec2_moto::{Moto, REGION, UBUNTU_AMI};
use crate::ec2::{loopback_context, owner};
use crate::support::eventually;

/// A user-data that prints `started`, then `waiting N` every 0.1 s until `gate` exists, then
/// `done`; with `early_keys`, it first prints the node's host keys framed as cloud-init does.
fn gated_user_data(gate: &Path, early_keys: bool) -> String {
    let keys = if early_keys {
        "echo '-----BEGIN SSH HOST KEY KEYS-----'\n\
         cat \"$STRATUS_SSH_DIR\"/ssh_host_*_key.pub\n\
         echo '-----END SSH HOST KEY KEYS-----'\n"
    } else {
        ""
    };
    format!(
        "#!/bin/bash\n{keys}echo started\nn=0\nwhile [ ! -e {gate:?} ]; do n=$((n + 1)); echo \"waiting $n\"; sleep 0.1; done\necho done\n"
    )
}

/// One instance, tagged as stratus tags a master (what the hypervisor needs to boot it), in
/// the loopback subnet, with this user-data. Returns its id.
fn run_master(moto: &Moto, subnet: &str, cluster: &str, user_data: &str) -> String {
    use base64::Engine;
    let key_name = format!("{cluster}-key");
    // gzip, then base64, as stratus sends it (cloud-init takes either).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, user_data.as_bytes()).unwrap();
    let user_data = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let owner = owner();
    moto.block_on(async {
        moto.ec2
            .import_key_pair()
            .key_name(&key_name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(fresh_public_key(
                russh::keys::Algorithm::Ed25519,
            )))
            .send()
            .await
            .unwrap();
        let tags = [
            ("Name", format!("{cluster}-master")),
            ("stratus:owner", owner.clone()),
            ("stratus:cluster", cluster.to_owned()),
            ("stratus:role", "master".to_owned()),
            ("stratus:profile", "doubles".to_owned()),
            ("stratus:request", "rq-doubles".to_owned()),
        ];
        let spec = tags.iter().fold(
            TagSpecification::builder().resource_type(ResourceType::Instance),
            |b, (k, v)| b.tags(Tag::builder().key(*k).value(v).build()),
        );
        let r = moto
            .ec2
            .run_instances()
            .image_id(UBUNTU_AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
            .min_count(1)
            .max_count(1)
            .key_name(&key_name)
            .subnet_id(subnet)
            .user_data(user_data)
            .tag_specifications(spec.build())
            .send()
            .await
            .unwrap();
        r.instances()[0].instance_id().unwrap().to_owned()
    })
}

/// What GetConsoleOutput answers for the instance now, decoded.
fn console(moto: &Moto, id: &str) -> String {
    use base64::Engine;
    let out = moto.block_on(async {
        moto.ec2
            .get_console_output()
            .instance_id(id)
            .send()
            .await
            .unwrap()
    });
    let b64 = out.output().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("console output is base64"),
    )
    .expect("console output is UTF-8")
}

/// Waits until the console shows `needle`; returns the console then.
fn console_showing(moto: &Moto, id: &str, needle: &str, hv: &Hypervisor) -> String {
    eventually(Duration::from_secs(60), || {
        let text = console(moto, id);
        text.contains(needle).then_some(text)
    })
    .unwrap_or_else(|| {
        panic!(
            "the console of {id} never showed {needle:?}: {}\nhypervisor: {:?}",
            console(moto, id),
            hv.report()
        )
    })
}

fn hypervisor(moto: &Moto, cluster: &str, console: Console) -> Hypervisor {
    Hypervisor::start(HypervisorConfig {
        endpoint: moto.endpoint.clone(),
        cluster: Some(cluster.into()),
        user: "ubuntu".into(),
        port: 2200,
        never_boot: Default::default(),
        console,
    })
}

fn key_line(k: &russh::keys::PublicKey) -> String {
    stratus::cluster::ssh::public_key_openssh(k)
}

#[test]
fn host_keys_reach_the_console_only_after_a_slow_user_data_returns() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnet) = moto.loopback_subnet();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let id = run_master(&moto, &subnet, "slow", &gated_user_data(&gate, false));
    let hv = hypervisor(&moto, "slow", Console::HostKeys);

    // The user-data's output streams to the console while it runs, after the boot messages,
    // each line as journald forwards cloud-final's output.
    let early = console_showing(&moto, &id, "cloud-init[701]: started\r\n", &hv);
    assert!(
        early.find("Linux version") < early.find("started"),
        "{early}"
    );
    // Ten rounds of the user-data's loop later (a second at least), still no keys.
    let later = console_showing(&moto, &id, "cloud-init[701]: waiting 10\r\n", &hv);
    assert!(!later.contains("SSH HOST KEY"), "{later}");
    assert!(host_keys(&later).is_none(), "{later}");
    assert!(!later.contains("cloud-init[701]: done"), "{later}");

    // The user-data returns: cloud-init's keys-to-console prints the node's keys after it.
    std::fs::write(&gate, "").unwrap();
    let last = console_showing(&moto, &id, "-----END SSH HOST KEY KEYS-----", &hv);
    let done = last
        .find("cloud-init[701]: done")
        .expect("the user-data's last line");
    let begin = last.find("-----BEGIN SSH HOST KEY KEYS-----").unwrap();
    assert!(done < begin, "{last}");
    assert!(
        last.trim_end().ends_with("seconds"),
        "cloud-init's finished line last: {last}"
    );
    let keys = host_keys(&last).expect("a complete block");
    assert_eq!(
        keys.len(),
        2,
        "an ECDSA key, then the node's ed25519 one: {last}"
    );
    let host_key = hv.report().host_keys[&id].clone();
    assert_eq!(key_line(&keys[1]), host_key, "{last}");
    assert!(
        key_line(&keys[0]).starts_with("ecdsa-sha2-nistp256 "),
        "{last}"
    );
    assert!(hv.report().errors.is_empty(), "{:?}", hv.report().errors);
}

#[test]
fn a_user_data_that_prints_the_keys_first_has_them_on_the_console_while_it_runs() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnet) = moto.loopback_subnet();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let id = run_master(&moto, &subnet, "early", &gated_user_data(&gate, true));
    let hv = hypervisor(&moto, "early", Console::Silent);

    let text = console_showing(&moto, &id, "cloud-init[701]: waiting 3\r\n", &hv);
    let keys = host_keys(&text).expect("the user-data's block, complete");
    let host_key = hv.report().host_keys[&id].clone();
    assert_eq!(keys.len(), 1, "{text}");
    assert_eq!(key_line(&keys[0]), host_key, "{text}");
    // Printed by the user-data (behind journald's prefix), not by cloud-init, which has not
    // got that far.
    assert!(
        text.contains("cloud-init[701]: -----BEGIN SSH HOST KEY KEYS-----\r\n"),
        "{text}"
    );
    assert!(!text.contains("FINGERPRINTS"), "{text}");

    // Console::Silent: once the user-data returns, cloud-init adds no block of its own.
    std::fs::write(&gate, "").unwrap();
    let last = console_showing(&moto, &id, "finished at", &hv);
    assert_eq!(
        last.matches("-----BEGIN SSH HOST KEY KEYS-----").count(),
        1,
        "{last}"
    );
    assert!(last.contains("cloud-init[701]: done\r\n"), "{last}");
}

#[test]
fn the_console_keeps_its_last_64_kib_as_ec2_does() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnet) = moto.loopback_subnet();
    // Keys first, then 100 KiB of install output: the early keys scroll out of the console.
    let user_data = "#!/bin/bash\n\
        echo '-----BEGIN SSH HOST KEY KEYS-----'\n\
        cat \"$STRATUS_SSH_DIR\"/ssh_host_ed25519_key.pub\n\
        echo '-----END SSH HOST KEY KEYS-----'\n\
        for i in $(seq 1 1600); do printf 'unpacking %04d %s\\n' \"$i\" \"$(printf 'x%.0s' $(seq 1 40))\"; done\n\
        echo installed\n";
    let id = run_master(&moto, &subnet, "scroll", user_data);
    let hv = hypervisor(&moto, "scroll", Console::Silent);
    let text = console_showing(&moto, &id, "finished at", &hv);
    assert!(text.len() <= CONSOLE_KEEPS, "{}", text.len());
    assert!(text.len() > CONSOLE_KEEPS - 200, "{}", text.len());
    assert!(text.contains("cloud-init[701]: installed\r\n"));
    assert!(!text.contains("Linux version"), "the start scrolled out");
    assert!(!text.contains("unpacking 0001 "), "the start scrolled out");
    assert!(host_keys(&text).is_none(), "the early keys scrolled out");
}

/// An SDK client for moto that does not retry, so each call is one request.
fn one_shot_client(moto: &Moto) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "t"))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

type Failure<E> = aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>;

/// An SDK error as EC2's code and the answer's HTTP status.
fn fail<E: ProvideErrorMetadata + std::fmt::Debug>(e: Failure<E>) -> (String, u16) {
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("not a service error: {e:?}"));
    (code, status)
}

/// One call of `action` (a describe without arguments): Ok, or the error's code and HTTP status.
fn call(moto: &Moto, ec2: &aws_sdk_ec2::Client, action: &str) -> Result<(), (String, u16)> {
    moto.block_on(async {
        match action {
            "DescribeVpcs" => ec2.describe_vpcs().send().await.map(drop).map_err(fail),
            "DescribeSubnets" => ec2.describe_subnets().send().await.map(drop).map_err(fail),
            "DescribeKeyPairs" => ec2
                .describe_key_pairs()
                .send()
                .await
                .map(drop)
                .map_err(fail),
            "DescribeSecurityGroups" => ec2
                .describe_security_groups()
                .send()
                .await
                .map(drop)
                .map_err(fail),
            "DescribeInstances" => ec2
                .describe_instances()
                .send()
                .await
                .map(drop)
                .map_err(fail),
            other => panic!("no call for {other}"),
        }
    })
}

/// Calls `action` until one is throttled; the number that went through.
fn drain(moto: &Moto, ec2: &aws_sdk_ec2::Client, action: &str) -> u32 {
    let mut passed = 0;
    loop {
        match call(moto, ec2, action) {
            Ok(()) => passed += 1,
            Err((code, status)) => {
                assert_eq!((code.as_str(), status), ("RequestLimitExceeded", 503));
                return passed;
            }
        }
        assert!(passed < 1000, "{action} is never throttled");
    }
}

#[test]
fn a_token_bucket_per_action_throttles_with_its_burst_and_refill_and_counts_what_it_throttled() {
    let Some(moto) = Moto::acquire() else { return };
    let faults = moto.faults();
    let ec2 = one_shot_client(&moto);
    // Slow refills, so that a loaded machine's slow calls do not blur the counts.
    let conf = faults.configure(json!({"buckets": {
        "DescribeVpcs": {"burst": 3, "refill_per_sec": 0.5},
        "*": {"burst": 2, "refill_per_sec": 0.5},
    }}));
    assert_eq!(conf["buckets"]["DescribeVpcs"]["burst"], 3.0, "{conf}");

    // `*`: every action not named has its own bucket of 2: a full one lets exactly its burst
    // through, then answers RequestLimitExceeded (HTTP 503) without asking moto.
    assert_eq!(drain(&moto, &ec2, "DescribeSubnets"), 2);
    assert_eq!(drain(&moto, &ec2, "DescribeKeyPairs"), 2);
    // A named action has its own, untouched by the others'.
    let start = Instant::now();
    assert_eq!(drain(&moto, &ec2, "DescribeVpcs"), 3);
    let emptied = Instant::now();
    let drained = emptied - start;
    assert!(
        drained < Duration::from_millis(1500),
        "{drained:?}: calls too slow to measure the refill"
    );
    let counts = faults.counts();
    assert_eq!(counts["DescribeVpcs"], 4, "{counts:?}");
    assert_eq!(counts["DescribeSubnets"], 3, "{counts:?}");
    assert_eq!(
        faults.throttled(),
        [
            ("DescribeVpcs", 1),
            ("DescribeSubnets", 1),
            ("DescribeKeyPairs", 1)
        ]
        .into_iter()
        .map(|(a, n)| (a.to_owned(), n))
        .collect()
    );

    // Refill: a token every 2 s. 4.6 s after it was emptied, DescribeVpcs has 2 tokens (and a
    // fraction), not 3: the time slept is what is measured, not a wait for something.
    std::thread::sleep(Duration::from_millis(4600));
    assert_eq!(
        drain(&moto, &ec2, "DescribeVpcs"),
        2,
        "after {:?}",
        emptied.elapsed()
    );
    // Never beyond its burst: 7 s at 0.5 a second would be 3.5, but DescribeSubnets' bucket
    // holds 2.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(drain(&moto, &ec2, "DescribeSubnets"), 2);
    assert_eq!(faults.throttled()["DescribeVpcs"], 2);
    assert_eq!(faults.throttled_total(), 5, "{:?}", faults.throttled());

    // Reset: no buckets, no throttled counts.
    faults.reset();
    assert!(faults.throttled().is_empty());
    for _ in 0..10 {
        call(&moto, &ec2, "DescribeVpcs").expect("no bucket after reset");
    }
}

#[test]
fn any_action_can_be_answered_with_any_error_code_and_ec2s_status_for_it() {
    let Some(moto) = Moto::acquire() else { return };
    let faults = moto.faults();
    let ec2 = one_shot_client(&moto);
    let cases = [
        ("DescribeVpcs", "Unavailable", 503),
        ("DescribeSubnets", "InternalError", 500),
        ("DescribeKeyPairs", "RequestLimitExceeded", 503),
        ("DescribeSecurityGroups", "UnauthorizedOperation", 400),
        ("DescribeInstances", "InsufficientInstanceCapacity", 500),
    ];
    faults.configure(json!({"refuse_when": cases
        .iter()
        .map(|(action, code, _)| json!({"action": action, "code": code}))
        .collect::<Vec<_>>()}));
    for (action, code, status) in cases {
        for _ in 0..2 {
            // No `when`, no `times`: every call of the action, every time.
            assert_eq!(
                call(&moto, &ec2, action),
                Err((code.to_owned(), status)),
                "{action}"
            );
        }
    }
    assert_eq!(faults.count("DescribeInstances"), 2);
    // A refusal with RequestLimitExceeded counts as throttled; the others do not.
    assert_eq!(
        faults.throttled(),
        [("DescribeKeyPairs".to_owned(), 2)].into_iter().collect()
    );
    // A status of one's own, and `times`.
    faults.configure(json!({"refuse_when": [
        {"action": "DescribeVpcs", "code": "Unsupported", "status": 409, "times": 1}
    ]}));
    assert_eq!(
        call(&moto, &ec2, "DescribeVpcs"),
        Err(("Unsupported".to_owned(), 409))
    );
    call(&moto, &ec2, "DescribeVpcs").expect("times: 1");
    call(&moto, &ec2, "DescribeSubnets").expect("refuse_when replaced");
}

/// A profile whose user-data runs `BODY`, with a short ready wait, keys read from the console.
fn slow_profile(ctx: &crate::support::TestContext, body: &str, ready_secs: u32) {
    ctx.profile_file(
        "slow.toml",
        &format!(
            "description = \"a slow user-data\"\nproviders = [\"ec2\"]\nmax_workers = 4\n\
             ssh_user = \"ubuntu\"\nssh_port = 2200\nready_timeout_secs = {ready_secs}\n\n\
             [master]\nimage = \"{UBUNTU_AMI}\"\ninstance_type = \"m5.large\"\nuser_data = \"slow/node.sh.hbs\"\n\n\
             [worker]\nimage = \"{UBUNTU_AMI}\"\ninstance_type = \"m5.large\"\nuser_data = \"slow/node.sh.hbs\"\n"
        ),
    );
    ctx.profile_file("slow/node.sh.hbs", body);
}

#[test]
fn stratus_waits_in_vain_for_the_keys_of_a_user_data_slower_than_its_ready_wait() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    slow_profile(&ctx, &gated_user_data(&gate, false), 8);
    let hv = hypervisor(&moto, "sl", Console::HostKeys);
    // Configure (the default) waits for every node's keys and SSH; `--no-configure` would not.
    let r = ctx.run(&["launch-cluster", "sl", "1", "-p", "slow"]);
    let report = hv.report();
    let consoles: Vec<String> = report.booted.iter().map(|id| console(&moto, id)).collect();
    assert_eq!(
        r.code, 1,
        "{r}\nconsoles: {consoles:#?}\nhypervisor: {report:?}"
    );
    assert!(
        r.stderr.contains("showed no SSH host keys on its console"),
        "{r}"
    );
    assert!(!report.booted.is_empty(), "{report:?}");
    // The user-data was running all along: its output is on the console, its keys are not.
    assert!(
        consoles
            .iter()
            .any(|c| c.contains("cloud-init[701]: waiting ")),
        "{consoles:#?}"
    );
}

#[test]
fn stratus_launches_while_a_user_data_that_printed_the_keys_first_still_runs() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    slow_profile(&ctx, &gated_user_data(&gate, true), 8);
    let hv = hypervisor(&moto, "ek", Console::HostKeys);
    let start = Instant::now();
    let r = ctx.ok(&["launch-cluster", "ek", "1", "-p", "slow"]);
    assert!(r.stdout.contains("cluster ek is up"), "{r}");
    // The user-data still runs (the gate is shut): the keys came from its own block.
    assert!(!gate.exists());
    let ids: Vec<String> = hv.report().host_keys.keys().cloned().collect();
    assert_eq!(ids.len(), 2, "{:?}", hv.report());
    for id in &ids {
        let text = console(&moto, id);
        assert!(
            !text.contains("FINGERPRINTS"),
            "cloud-init's block is not there yet: {text}"
        );
    }
    let known = std::fs::read_dir(ctx.state.join("clusters"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("known_hosts"))
        .find(|p| p.exists())
        .unwrap();
    let known = std::fs::read_to_string(known).unwrap();
    for key in hv.report().host_keys.values() {
        assert!(known.contains(key.as_str()), "{known}");
    }
    eprintln!("launched in {:?}", start.elapsed());
    ctx.ok(&["terminate-cluster", "ek", "--yes"]);
}

/// Launches at the same moment in one subnet each get their instances, once (EC2 never fails
/// them for running together). moto takes a subnet's addresses from a generator two threads
/// cannot run at once: two RunInstances in it together could fail midway, leave an instance
/// behind and answer 500, which an SDK retries (same ClientToken) into a second launch. The proxy
/// forwards such calls one at a time. The client here retries nothing, so any such failure shows.
#[test]
fn launches_at_once_in_one_subnet_each_get_their_instances_once() {
    let Some(moto) = Moto::acquire() else { return };
    let (_vpc, subnet) = moto.loopback_subnet();
    let ec2 = one_shot_client(&moto);
    const CALLS: usize = 24;
    let answers = moto.block_on(futures_util::future::join_all((0..CALLS).map(|_| {
        ec2.run_instances()
            .image_id(UBUNTU_AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
            .min_count(2)
            .max_count(2)
            .subnet_id(&subnet)
            .send()
    })));
    let mut launched = Vec::new();
    for a in answers {
        let a = a.map_err(fail).expect("every launch succeeds");
        launched.extend(
            a.instances()
                .iter()
                .map(|i| i.instance_id().unwrap().to_owned()),
        );
    }
    assert_eq!(launched.len(), 2 * CALLS);
    let held = moto.instances(&[("subnet-id", subnet.as_str())]);
    let mut ids: Vec<String> = held
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    ids.sort();
    launched.sort();
    assert_eq!(
        ids, launched,
        "moto holds exactly what the launches answered"
    );
    let addresses: std::collections::BTreeSet<&str> =
        held.iter().filter_map(|i| i.private_ip_address()).collect();
    assert_eq!(
        addresses.len(),
        2 * CALLS,
        "one address each: {addresses:?}"
    );
}
