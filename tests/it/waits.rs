//! A launch's waits on EC2 (moto, the fault proxy and the test's hypervisor): a throttled
//! DescribeInstances while nodes install is looked at again, never a failed launch, and a node's
//! console is not read again once its key is pinned.

use std::time::Duration;

use crate::ec2::ec2_moto::Moto;
use crate::ec2::{e2e_profile, hypervisor, loopback_context};
use crate::support::eventually;

/// The e2e profile, with an install that runs in the background after the user-data returns and
/// ends only when the test creates `release`.
fn installing_profile(ctx: &crate::support::TestContext, release: &std::path::Path) {
    e2e_profile(ctx, 60, None);
    let toml = ctx.profiles.join("e2e.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "ready_timeout_secs = 60",
            "ready_timeout_secs = 60\nboot_timeout_secs = 600",
        ),
    )
    .unwrap();
    let node = ctx.profiles.join("e2e/node.sh.hbs");
    let mut script = std::fs::read_to_string(&node).unwrap();
    script.push_str(&format!(
        "mkdir -p \"$STRATUS_STATE_DIR\"\n\
         ( echo 'installing hadoop' > \"$STRATUS_STATE_DIR/phase\"\n\
         \x20 while [ ! -e {release:?} ]; do sleep 0.2; done\n\
         \x20 echo done >> \"$STRATUS_STATE_DIR/phase\" ) >/dev/null 2>&1 </dev/null &\n"
    ));
    std::fs::write(&node, script).unwrap();
}

#[test]
fn a_throttled_describe_while_nodes_install_is_looked_at_again_never_a_failed_launch() {
    let Some(moto) = Moto::acquire() else { return };
    let ctx = loopback_context(&moto);
    let release = ctx.root.path().join("release");
    installing_profile(&ctx, &release);
    let _hv = hypervisor(&moto, "e2e", &[]);
    let mut launch = ctx
        .cmd()
        .args(["launch-cluster", "e2e", "1", "-p", "e2e"])
        .env("RUST_LOG", "stratus::cluster::waits=info,warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = launch.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[launch] {line}");
            let _ = tx.send(line);
        }
    });
    // Off a terminal the launch says when it starts waiting for the install: both nodes then
    // answered SSH, their keys pinned from their consoles.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l == "e2e: waiting for the install (2 nodes)")
    {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("no install wait ({e}):\n{}", seen.join("\n")),
        }
    }
    let faults = moto.faults();
    let consoles_read = faults.count("GetConsoleOutput");
    assert!(
        consoles_read >= 2,
        "{consoles_read} console reads for 2 nodes"
    );
    // More throttled answers in a row than one call's retries (8 attempts): at least one
    // describe of the wait fails as throttled.
    faults.configure(serde_json::json!({"throttle": {"DescribeInstances": 10}}));
    let spent = eventually(Duration::from_secs(400), || {
        let left = faults.configure(serde_json::json!({}))["throttle"]["DescribeInstances"]
            .as_u64()
            .unwrap_or(0);
        (left == 0).then_some(())
    });
    assert!(spent.is_some(), "the wait stopped describing");
    std::fs::write(&release, "").unwrap();

    let status = launch.wait().unwrap();
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    assert!(status.success(), "the launch failed:\n{}", seen.join("\n"));
    // A describe of the wait ran out of retries, throttled, and the wait looked again.
    assert!(
        seen.iter()
            .any(|l| l.contains("DescribeInstances was throttled")
                && l.contains("looking again at the next round")),
        "no throttled describe reached the wait:\n{}",
        seen.join("\n")
    );
    let c = ctx.cluster_json("e2e");
    assert_eq!(c["state"], "configured", "{c:#}");
    // Once pinned, no console was read again, throughout the install.
    assert_eq!(faults.count("GetConsoleOutput"), consoles_read);
    ctx.ok(&["terminate-cluster", "e2e", "--yes"]);
}
