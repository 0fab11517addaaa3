//! Not a test of its own: the EC2 hypervisor of `scripts/bench-class`, which runs it (it is
//! `#[ignore]`d, so `scripts/test` never does). The benchmark's launches configure their
//! clusters, so every instance of the class must boot somewhere: this boots each one as a local
//! node on its loopback private IP, as the EC2 tests' hypervisor does for one cluster.
//!
//! It reads `STRATUS_BENCH_ENDPOINT` (moto behind the fault proxy), `STRATUS_BENCH_DIR` (where it
//! writes `subnet`, then `nodes` (where its nodes live) and `ready`, and at the end
//! `hypervisor.json`, and where the script writes `stop`), `STRATUS_BENCH_SSH_USER` and `STRATUS_BENCH_SSH_PORT` (the bench profile's).
//! It creates a VPC of 127.0.0.0/16 with DNS host names on and a subnet of 127.0.0.0/21 (room
//! for 2,043 instances; the default class has 840), so that moto hands out loopback addresses.
//! It fails if any instance could not be booted. Its report counts the nodes that received the
//! profile's files, so the benchmark shows that each launch's configure step reached them all.

use std::path::PathBuf;
use std::time::Duration;

use crate::ec2::ec2_hypervisor::{Console, HYPERVISOR_KEY, Hypervisor, HypervisorConfig};
use crate::ec2::ec2_moto::{client, loopback_vpc};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: scripts/bench-class sets it"))
}

#[test]
#[ignore = "the hypervisor of scripts/bench-class, which runs it"]
fn hypervisor_for_the_class_benchmark() {
    let endpoint = var("STRATUS_BENCH_ENDPOINT");
    let dir = PathBuf::from(var("STRATUS_BENCH_DIR"));
    let user = var("STRATUS_BENCH_SSH_USER");
    let port: u16 = var("STRATUS_BENCH_SSH_PORT")
        .parse()
        .expect("a port number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ec2 = client(&endpoint, HYPERVISOR_KEY, "testing");
    let (_vpc, subnet) = rt.block_on(loopback_vpc(&ec2, "127.0.0.0/21"));
    std::fs::write(dir.join("subnet"), &subnet).unwrap();
    let hypervisor = Hypervisor::start(HypervisorConfig {
        endpoint,
        cluster: None,
        user,
        port,
        never_boot: Default::default(),
        console: Console::HostKeys,
    });
    // For the script's cleanup, should this process be killed before it stops its nodes.
    std::fs::write(
        dir.join("nodes"),
        hypervisor.nodes_root().to_string_lossy().as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("ready"), "").unwrap();
    // The script says when the benchmark is over; nothing here depends on how long it takes.
    while !dir.join("stop").exists() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = hypervisor.report();
    // What the launches' configure step left on the nodes: the profile's file on every node,
    // and the workers file on each master.
    let homes = hypervisor.node_homes();
    let with = |file: &str| homes.iter().filter(|h| h.join(file).is_file()).count();
    let summary = serde_json::json!({
        "booted": report.booted.len(),
        "nodes_with_cluster_txt": with("cluster.txt"),
        "masters_with_workers_file": with("workers"),
        "stopped": report.stopped.len(),
        "errors": report.errors,
    });
    std::fs::write(dir.join("hypervisor.json"), summary.to_string()).unwrap();
    drop(hypervisor);
    assert!(
        report.errors.is_empty(),
        "the hypervisor could not boot everything: {:?}",
        report.errors
    );
}
