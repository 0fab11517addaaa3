//! Accounting at class scale (BENCHMARKS.md): a snapshot ingest of 10,000 instances, and a
//! term report over 1,000 users with 16 weeks of usage recorded by 5-minute snapshots. Wall
//! time and the state file's size.
//!
//! `cargo bench --bench accounting` (a release build; the first one takes long on 2 cores).

use std::time::Instant;

use stratus::accounting::report::By;
use stratus::accounting::snapshot::ingest;
use stratus::cluster::Ctx;
use stratus::cluster::provider::Instance;
use stratus::config::SshConfig;
use stratus::core::model::{
    ClusterName, InstanceState, Owner, ProviderKind, RequestId, Role, Tags, now_millis,
};
use stratus::core::printer::Printer;
use stratus::store::{ClusterRecord, Created, NewCluster, NodeRow, Store};

const H: i64 = 3_600_000;

fn file_size(dir: &std::path::Path) -> u64 {
    ["stratus.db", "stratus.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn record() -> ClusterRecord {
    ClusterRecord {
        guard: None,
        profile: stratus::config::profile::Profile::for_tests("hadoop"),
        env: Default::default(),
        extra_keys: Vec::new(),
    }
}

fn main() {
    snapshot_of_10000();
    term_report();
}

fn snapshot_of_10000() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let rec = record();
    let t0 = now_millis() - H;
    let mut listed = Vec::new();
    // 1,000 clusters of 10 nodes (a master and 9 workers), 100 users.
    for c in 0..1000 {
        let owner = Owner::parse(&format!("u{:03}", c % 100)).unwrap();
        let name = ClusterName::parse(&format!("c{c}")).unwrap();
        let request = RequestId::new();
        let Created::Row(cluster) = store
            .create_cluster::<()>(
                &NewCluster {
                    name: &name,
                    owner: &owner,
                    provider: ProviderKind::Ec2,
                    request_id: &request,
                    record: &rec,
                    lifetime: None,
                },
                |_, _| Ok(Ok(())),
            )
            .unwrap()
        else {
            panic!("cluster {c}");
        };
        let nodes: Vec<NodeRow> = (0..10u32)
            .map(|k| NodeRow {
                instance_id: format!("i-{c:05}{k:02}"),
                cluster_id: cluster.id,
                role: if k == 0 { Role::Master } else { Role::Worker },
                index: k,
                request_id: request.to_string(),
                state: InstanceState::Running,
                address: Some(format!("10.{}.{}.{k}", c / 256, c % 256)),
                private_address: Some(format!("10.{}.{}.{k}", c / 256, c % 256)),
                ssh_port: 22,
                instance_type: "m5.large".into(),
                image: "ami-1".into(),
                spot: k > 0,
                host_key: None,
                launched_at: t0,
                ended_at: None,
                volume_gb: 0,
                public_ipv4: false,
            })
            .collect();
        store.record_nodes(&cluster, None, &nodes, &[]).unwrap();
        for n in &nodes {
            listed.push(Instance {
                id: n.instance_id.clone(),
                role: Some(n.role),
                index: Some(n.index),
                state: InstanceState::Running,
                reason: None,
                address: n.address.clone(),
                private_address: n.private_address.clone(),
                ssh_port: 22,
                instance_type: n.instance_type.clone(),
                image: n.image.clone(),
                spot: n.spot,
                tags: Some(Tags {
                    owner: owner.clone(),
                    cluster: name.clone(),
                    role: Some(n.role),
                    profile: "hadoop".into(),
                    request: request.clone(),
                    store: Some(store.id().clone()),
                }),
                host_key: None,
                launched_at: Some(t0),
                volume_gb: None,
                public_ipv4: Some(true),
            });
        }
    }
    let printer = Printer::quiet();
    let ssh = SshConfig::default();
    let ctx = Ctx {
        store: &store,
        state_dir: dir.path(),
        ssh: &ssh,
        printer: &printer,
        pause_at: None,
        hangup: None,
    };
    let before = file_size(dir.path());
    let mut times = Vec::new();
    // A day of 5-minute snapshots (288) of the same 10,000 running instances.
    for s in 0..288 {
        let start = Instant::now();
        let r = ingest(
            ctx,
            ProviderKind::Ec2,
            10 * 60 * 1000,
            listed.clone(),
            t0 + H + s * 5 * 60 * 1000,
        )
        .unwrap();
        times.push(start.elapsed());
        assert_eq!(r.seen, 10_000);
    }
    times.sort();
    println!(
        "snapshot ingest of 10,000 running instances: median {:?}, max {:?} over 288 snapshots (a day at 5 minutes)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!(
        "state file: {:.1} MB before the snapshots, {:.1} MB after 288 (the WAL included)",
        before as f64 / 1e6,
        file_size(dir.path()) as f64 / 1e6
    );
}

fn term_report() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let rec = record();
    // 16 weeks of a term: each of 1,000 users launches 2 clusters a week of a master and 2
    // workers, each running 4 hours. The snapshots' sightings are folded into the intervals
    // (the state grows with intervals, never with snapshots).
    let term_start = jiff::civil::date(2026, 9, 1)
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_millisecond();
    let week = 7 * 24 * H;
    let setup = Instant::now();
    let mut n = 0u64;
    for u in 0..1000 {
        let owner = Owner::parse(&format!("s{u:04}")).unwrap();
        for w in 0..16 {
            for k in 0..2 {
                let name = ClusterName::parse(&format!("w{w}-{k}")).unwrap();
                let request = RequestId::new();
                let Created::Row(cluster) = store
                    .create_cluster::<()>(
                        &NewCluster {
                            name: &name,
                            owner: &owner,
                            provider: ProviderKind::Ec2,
                            request_id: &request,
                            record: &rec,
                            lifetime: None,
                        },
                        |_, _| Ok(Ok(())),
                    )
                    .unwrap()
                else {
                    panic!("cluster");
                };
                let start = term_start + w * week + (k * 3 + (u as i64 % 24)) * H;
                let nodes: Vec<NodeRow> = (0..3u32)
                    .map(|i| {
                        n += 1;
                        NodeRow {
                            instance_id: format!("i-{n:08}"),
                            cluster_id: cluster.id,
                            role: if i == 0 { Role::Master } else { Role::Worker },
                            index: i,
                            request_id: request.to_string(),
                            state: InstanceState::Terminated,
                            address: None,
                            private_address: None,
                            ssh_port: 22,
                            instance_type: "m5.large".into(),
                            image: "ami-1".into(),
                            spot: i > 0,
                            host_key: None,
                            launched_at: start,
                            ended_at: Some(start + 4 * H),
                            // Instance hours alone: the asserted total is theirs.
                            volume_gb: 0,
                            public_ipv4: false,
                        }
                    })
                    .collect();
                store.record_nodes(&cluster, None, &nodes, &[]).unwrap();
                // Ended: the cluster is off the live list.
                store
                    .transition(
                        cluster.id,
                        &[stratus::core::model::ClusterState::Reserved],
                        stratus::core::model::ClusterState::Terminated,
                        None,
                    )
                    .unwrap();
            }
        }
    }
    println!(
        "term set up: {n} intervals of 32,000 clusters of 1,000 users in {:?}",
        setup.elapsed()
    );
    let config = stratus::config::SiteConfig::default();
    let now = term_start + 16 * week;
    for by in [By::User, By::Cluster, By::Day] {
        let start = Instant::now();
        let r = stratus::accounting::report_from_store(
            &store,
            &config,
            Some(term_start),
            Some(now),
            now,
            by,
        )
        .unwrap();
        let took = start.elapsed();
        // By hand: 96,000 instances of 4 hours; the 32,000 masters on demand at $0.096 an
        // hour, the 64,000 workers spot at 70% of it.
        assert_eq!(r.total.millis, 96_000 * 4 * H);
        assert_eq!(
            r.total.micros,
            32_000 * 4 * 96_000 + 64_000 * 4 * 67_200,
            "the shipped m5.large price or the spot fraction changed"
        );
        let csv = stratus::cli::report::csv(&r).unwrap();
        println!(
            "term report by {by:?}: {} rows, total {:.1} instance-hours ${:.2}, in {took:?} ({} bytes of CSV)",
            r.rows.len(),
            r.total.millis as f64 / H as f64,
            stratus::core::money::micros_to_dollars(r.total.micros),
            csv.len()
        );
    }
    println!(
        "state file of the term: {:.1} MB",
        file_size(dir.path()) as f64 / 1e6
    );
}
