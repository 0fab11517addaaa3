//! Bad input: one clear error, exit code 2, and nothing created. Plus help and profiles.

use crate::support::TestContext;

/// Runs a command that must be refused: exit 2, one `error:` line mentioning every `needles`,
/// and no cluster and no node created.
fn refused(ctx: &TestContext, args: &[&str], needles: &[&str]) {
    let before = ctx.list_json().len();
    let r = ctx.run(args);
    assert_eq!(r.code, 2, "{r}");
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "want exactly one error line:\n{r}");
    for n in needles {
        assert!(r.stderr.contains(n), "error should mention {n:?}:\n{r}");
    }
    assert_eq!(
        ctx.list_json().len(),
        before,
        "something was recorded:\n{r}"
    );
    assert!(ctx.node_dirs().is_empty(), "a node was created:\n{r}");
}

#[test]
fn hostile_and_malformed_cluster_names_are_refused() {
    let ctx = TestContext::new();
    let long = "a".repeat(100);
    for name in [
        "../x", "a;b", "", &long, "UPPER", "a b", "$(id)", "a/b", ".x",
    ] {
        refused(
            &ctx,
            &["launch-cluster", name, "1"],
            &["invalid cluster name"],
        );
    }
    refused(&ctx, &["launch-cluster", "../x", "1"], &["\"../x\""]);
    refused(&ctx, &["launch-cluster", &long, "1"], &["100 characters"]);
    // Something clap reads as an option is still a usage error, exit 2.
    let r = ctx.run(&["launch-cluster", "-x", "1"]);
    assert_eq!(r.code, 2, "{r}");
}

#[test]
fn worker_counts_outside_the_profile_are_refused() {
    let ctx = TestContext::new();
    refused(&ctx, &["launch-cluster", "c", "0"], &["at least 1 worker"]);
    refused(
        &ctx,
        &["launch-cluster", "c", "10000"],
        &["10000 workers", "max_workers = 16"],
    );
    refused(&ctx, &["launch-cluster", "c", "17"], &["max_workers"]);
    // Not a number at all: clap's own error, still exit 2.
    let r = ctx.run(&["launch-cluster", "c", "-1"]);
    assert_eq!(r.code, 2, "{r}");
    let r = ctx.run(&["launch-cluster", "c", "many"]);
    assert_eq!(r.code, 2, "{r}");
}

#[test]
fn profile_problems_are_refused_with_the_file_key_or_variable() {
    let ctx = TestContext::new();
    refused(
        &ctx,
        &["launch-cluster", "c", "1", "--profile", "nope"],
        &["unknown profile \"nope\"", "local-demo"],
    );

    ctx.profile_file(
        "typo.toml",
        "extends = \"local-demo\"\n[worker]\ninstance_typ = \"local\"\n",
    );
    refused(
        &ctx,
        &["launch-cluster", "c", "1", "--profile", "typo"],
        &["typo.toml", "instance_typ"],
    );

    ctx.profile_file(
        "missing-var.toml",
        "extends = \"local-demo\"\nconfigure = []\n[worker]\nuser_data = \"mv/worker.sh.hbs\"\n",
    );
    ctx.profile_file(
        "mv/worker.sh.hbs",
        "#!/bin/sh\necho {{cluster}}\necho {{env.DATASET}}\n",
    );
    refused(
        &ctx,
        &["launch-cluster", "c", "1", "--profile", "missing-var"],
        &["mv/worker.sh.hbs", "env.DATASET", "line 3"],
    );
    // With the variable given, the same profile launches.
    ctx.ok(&[
        "launch-cluster",
        "c",
        "1",
        "--profile",
        "missing-var",
        "--env",
        "DATASET=x",
    ]);

    // A configure-time template with a missing variable is caught before anything launches.
    ctx.profile_file(
        "bad-file.toml",
        "extends = \"local-demo\"\n[[files]]\ntemplate = \"bf/f.hbs\"\ndest = \"f\"\n",
    );
    ctx.profile_file("bf/f.hbs", "{{master.adress}}\n");
    let before_nodes = ctx.node_dirs().len();
    let r = ctx.run(&["launch-cluster", "d", "1", "--profile", "bad-file"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("bf/f.hbs") && r.stderr.contains("master.adress"),
        "{r}"
    );
    assert_eq!(ctx.node_dirs().len(), before_nodes, "{r}");
}

#[test]
fn a_name_in_use_is_refused() {
    let ctx = TestContext::new();
    ctx.ok(&["launch-master", "dup"]);
    let nodes = ctx.node_dirs().len();
    let r = ctx.run(&["launch-cluster", "dup", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("a cluster named dup already exists"),
        "{r}"
    );
    assert_eq!(ctx.node_dirs().len(), nodes);
    assert_eq!(ctx.list_json().len(), 1);
}

#[test]
fn bad_env_and_unknown_clusters_are_refused() {
    let ctx = TestContext::new();
    refused(
        &ctx,
        &["launch-cluster", "c", "1", "--env", "NOEQUALS"],
        &["KEY=VALUE"],
    );
    refused(
        &ctx,
        &["launch-cluster", "c", "1", "--env", "1X=y"],
        &["--env"],
    );
    for args in [
        vec!["exec", "ghost", "--", "true"],
        vec!["terminate-cluster", "ghost", "--yes"],
        vec!["launch-slaves", "ghost", "1"],
        vec!["login", "ghost"],
    ] {
        refused(&ctx, &args, &["no cluster named ghost"]);
    }
}

#[test]
fn a_site_config_typo_names_the_file_and_key() {
    let ctx = TestContext::with_config("[local]\nssh_prot = 2200\n");
    let r = ctx.run(&["list"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(ctx.config.to_str().unwrap()) && r.stderr.contains("ssh_prot"),
        "{r}"
    );
    let r = ctx.run(&["--config", "/nonexistent/stratus.toml", "list"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("/nonexistent/stratus.toml"), "{r}");
}

#[test]
fn help_documents_exit_codes_and_usage_errors_exit_2() {
    let ctx = TestContext::new();
    let r = ctx.ok(&["--help"]);
    assert!(
        r.stdout.contains("Exit codes:") && r.stdout.contains("launch-cluster"),
        "{r}"
    );
    assert!(
        !r.stdout.contains("__node"),
        "the node subcommand is internal:\n{r}"
    );
    let r = ctx.run(&["launch-cluster"]);
    assert_eq!(r.code, 2, "{r}");
    let r = ctx.run(&["no-such-command"]);
    assert_eq!(r.code, 2, "{r}");
}

#[test]
fn profiles_are_listed_and_shown_resolved() {
    let ctx = TestContext::new();
    ctx.profile_file(
        "mine.toml",
        "extends = \"local-demo\"\ndescription = \"mine\"\nmax_workers = 3\n",
    );
    let r = ctx.ok(&["profiles"]);
    assert!(r.stdout.contains("local-demo (default)"), "{r}");
    assert!(r.stdout.contains("mine"), "{r}");
    let r = ctx.ok(&["profiles", "show", "mine"]);
    assert!(r.stdout.contains("max_workers = 3"), "{r}");
    // Inherited from local-demo.
    assert!(r.stdout.contains("workers_file = \"workers\""), "{r}");
    refused(&ctx, &["profiles", "show", "nope"], &["unknown profile"]);
}

#[test]
fn profiles_show_marks_what_the_local_provider_overrides() {
    let ctx = TestContext::with_config("[local]\nssh_port = 2299\nfirst_address = \"127.9.0.2\"\n");
    let r = ctx.ok(&["profiles", "show", "local-demo"]);
    // The profile's own values stay as written...
    assert!(r.stdout.contains("ssh_port = 22\n"), "{r}");
    assert!(r.stdout.contains("ssh_user = \"stratus\""), "{r}");
    // ...marked with what the local provider does instead: the site's port, the caller's user.
    let note: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with('#') && l.contains("local provider"))
        .collect();
    assert_eq!(note.len(), 1, "{r}");
    assert!(
        note[0].starts_with("# on the local provider: ssh_port is [local] ssh_port (2299)"),
        "{r}"
    );
    assert!(
        r.stdout
            .contains("ssh_user (\"stratus\") is only the login name a node accepts"),
        "{r}"
    );
    // The notes come before the settings, and are TOML comments.
    let first_setting = r.stdout.lines().position(|l| !l.starts_with('#')).unwrap();
    let note_at = r.stdout.lines().position(|l| l == note[0]).unwrap();
    assert!(note_at < first_setting, "{r}");
    // A profile that never runs on the local provider has no such note.
    let r = ctx.ok(&["profiles", "show", "hadoop"]);
    assert!(!r.stdout.contains("local provider"), "{r}");
}

#[test]
fn admin_identities_policy_prints_the_students_group_policy_from_the_site_config() {
    let ctx = TestContext::with_config(
        "[ec2]\nregion = \"eu-west-1\"\n[identities]\nclass = \"cs4500\"\nbucket = \"cs4500-data\"\n",
    );
    let r = ctx.ok(&["admin", "identities", "policy"]);
    let policy: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("admin identities policy prints JSON ({e}):\n{r}"));
    let text = policy.to_string();
    assert!(
        text.contains("arn:aws:s3:::cs4500-data/${aws:PrincipalTag/stratus:owner}/*"),
        "{text}"
    );
    let denied: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Deny")
        .map(|s| s["Action"].to_string())
        .collect();
    assert!(
        denied
            .iter()
            .any(|a| a.contains("ec2:RunInstances") && a.contains("iam:*")),
        "{denied:?}"
    );
    assert!(
        r.stderr.contains("group cs4500-students")
            && r.stderr.contains("/stratus/cs4500/")
            && r.stderr.contains("s3://cs4500-data/<login>/"),
        "{r}"
    );
    // Without the table: what is missing, exit 2.
    let r = TestContext::new().run(&["admin", "identities", "policy"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("[identities]"), "{r}");
    // A bad class is refused when the site config is read, naming the key.
    let r = TestContext::with_config("[identities]\nclass = \"CS 4500\"\n").run(&[
        "admin",
        "identities",
        "policy",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("[identities] class \"CS 4500\""), "{r}");
}
