//! The students' IAM identities (issue 16) against moto's IAM and EC2 (the EC2 tests' server,
//! which serves IAM on the same port): `identity init`, `rotate` (with the client killed at
//! each step between making the new key and deleting the old), `show` and `delete`; the
//! roster sync; and, as root with real Unix users through the installed wrapper, where the
//! files land, a planted symbolic link, a login that is not on the roster, and the bulk
//! rotation. What IAM holds is read with an SDK client of the test's own.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use crate::ec2::ec2_moto::Moto;
use crate::support::{Run, TestContext};

const IDENTITIES: &str = "[identities]\nclass = \"c1\"\nbucket = \"c1-data\"\n";

/// An IAM client of moto, as an administrator would look.
struct IamView {
    iam: aws_sdk_iam::Client,
    rt: tokio::runtime::Runtime,
}

impl IamView {
    fn new(endpoint: &str) -> IamView {
        let conf = aws_sdk_iam::Config::builder()
            .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
            .region(aws_sdk_iam::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "moto-test",
            ))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        IamView {
            iam: aws_sdk_iam::Client::from_conf(conf),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// The user's path and tags, or `None`.
    fn user(&self, name: &str) -> Option<(String, Vec<(String, String)>)> {
        self.rt.block_on(async {
            let got = self.iam.get_user().user_name(name).send().await.ok()?;
            let u = got.user()?;
            let tags = self
                .iam
                .list_user_tags()
                .user_name(name)
                .send()
                .await
                .unwrap();
            Some((
                u.path().to_owned(),
                tags.tags()
                    .iter()
                    .map(|t| (t.key().to_owned(), t.value().to_owned()))
                    .collect(),
            ))
        })
    }

    fn keys(&self, name: &str) -> BTreeSet<String> {
        self.rt.block_on(async {
            let got = self
                .iam
                .list_access_keys()
                .user_name(name)
                .send()
                .await
                .unwrap();
            got.access_key_metadata()
                .iter()
                .filter_map(|k| k.access_key_id().map(str::to_owned))
                .collect()
        })
    }

    fn groups(&self, name: &str) -> Vec<String> {
        self.rt.block_on(async {
            let got = self
                .iam
                .list_groups_for_user()
                .user_name(name)
                .send()
                .await
                .unwrap();
            got.groups()
                .iter()
                .map(|g| g.group_name().to_owned())
                .collect()
        })
    }

    fn users_under(&self, path: &str) -> BTreeSet<String> {
        self.rt.block_on(async {
            let got = self
                .iam
                .list_users()
                .path_prefix(path)
                .send()
                .await
                .unwrap();
            got.users()
                .iter()
                .map(|u| u.user_name().to_owned())
                .collect()
        })
    }

    fn create_key(&self, name: &str) -> String {
        self.rt.block_on(async {
            let got = self
                .iam
                .create_access_key()
                .user_name(name)
                .send()
                .await
                .unwrap();
            got.access_key().unwrap().access_key_id().to_owned()
        })
    }

    fn create_user(&self, name: &str, path: &str) {
        self.rt.block_on(async {
            self.iam
                .create_user()
                .user_name(name)
                .path(path)
                .send()
                .await
                .unwrap();
        })
    }
}

/// The `[section]`'s `key` in an AWS file's text.
fn value_in(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == format!("[{section}]");
            continue;
        }
        if inside
            && let Some((k, v)) = t.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

fn login() -> String {
    stratus::sys::passwd(stratus::sys::real_uid())
        .unwrap()
        .unwrap()
        .name
}

fn context(moto: &Moto) -> (TestContext, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ctx =
        TestContext::with_config(&format!("{}{IDENTITIES}", moto.site_config(dir.path(), "")));
    (ctx, dir)
}

fn files_key(home: &Path) -> Option<String> {
    let text = fs::read_to_string(home.join(".aws/credentials")).ok()?;
    value_in(&text, "stratus", "aws_access_key_id")
}

fn secret_in_files(home: &Path) -> String {
    let text = fs::read_to_string(home.join(".aws/credentials")).unwrap();
    value_in(&text, "stratus", "aws_secret_access_key").unwrap()
}

fn show(ctx: &TestContext) -> Value {
    serde_json::from_str(&ctx.ok(&["identity", "show", "--json"]).stdout).unwrap()
}

fn shown_keys(ctx: &TestContext) -> BTreeSet<String> {
    show(ctx)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

fn crash_at(ctx: &TestContext, step: &str) -> Run {
    let out = ctx
        .cmd()
        .env("STRATUS_TEST_CRASH_AT", step)
        .args(["identity", "rotate"])
        .output()
        .unwrap();
    let r = Run {
        args: vec!["identity".into(), "rotate".into()],
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_bytes: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.code, 137, "the crash at {step} did not happen:\n{r}");
    r
}

#[test]
fn identity_init_rotate_through_crashes_show_and_delete_against_moto() {
    let Some(moto) = Moto::acquire() else {
        return;
    };
    let iam = IamView::new(&moto.endpoint);
    let (ctx, _dir) = context(&moto);
    let user = format!("c1-{}", login());
    // The student's own profiles, to be kept as they are.
    let aws = ctx.home.join(".aws");
    fs::create_dir(&aws).unwrap();
    let own = "# my own keys\n[default]\naws_access_key_id = AKIAOWN\naws_secret_access_key = ownsecret\n";
    fs::write(aws.join("credentials"), own).unwrap();
    fs::set_permissions(aws.join("credentials"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(aws.join("config"), "[profile other]\nregion = eu-west-1\n").unwrap();

    // init, at trace level: the secret is in the file and nowhere else.
    let init = ctx
        .cmd()
        .env("RUST_LOG", "trace")
        .args(["identity", "init"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&init.stdout).into_owned(),
        String::from_utf8_lossy(&init.stderr).into_owned(),
    );
    assert!(init.status.success(), "{stdout}\n{stderr}");
    let (path, tags) = iam.user(&user).expect("init made the IAM user");
    assert_eq!(path, "/stratus/c1/");
    assert!(
        tags.contains(&("stratus:owner".into(), login())),
        "{tags:?}"
    );
    assert!(
        tags.iter()
            .any(|(k, v)| k == "stratus:store" && v.starts_with("st-")),
        "{tags:?}"
    );
    assert_eq!(iam.groups(&user), vec!["c1-students".to_owned()]);
    let first = files_key(&ctx.home).expect("init wrote the key into the files");
    assert_eq!(iam.keys(&user), BTreeSet::from([first.clone()]));
    let secret = secret_in_files(&ctx.home);
    assert_eq!(secret.len(), 40, "{secret}");
    assert!(
        !stdout.contains(&secret) && !stderr.contains(&secret),
        "the secret was printed at RUST_LOG=trace"
    );
    assert!(stderr.contains(&first), "init names the key id:\n{stderr}");
    let creds = fs::read_to_string(aws.join("credentials")).unwrap();
    assert!(
        creds.starts_with(own),
        "the student's own profile is kept:\n{creds}"
    );
    let mode = fs::metadata(aws.join("credentials")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let config = fs::read_to_string(aws.join("config")).unwrap();
    assert!(
        config.starts_with("[profile other]\nregion = eu-west-1\n"),
        "{config}"
    );
    assert_eq!(
        value_in(&config, "profile stratus", "region").as_deref(),
        Some("us-east-1")
    );
    // Again: nothing new.
    let again = ctx.ok(&["identity", "init"]);
    assert!(again.stderr.contains("already hold"), "{again}");
    assert_eq!(iam.keys(&user), BTreeSet::from([first.clone()]));
    assert_eq!(shown_keys(&ctx), BTreeSet::from([first.clone()]));

    // Killed after the new key is made, before the files are written: the files still hold
    // the old key, which still works; a re-run deletes the lost key and rotates.
    crash_at(&ctx, "created");
    let two = iam.keys(&user);
    assert_eq!(two.len(), 2, "{two:?}");
    assert!(two.contains(&first));
    assert_eq!(files_key(&ctx.home).as_deref(), Some(first.as_str()));
    let lost: String = two.iter().find(|k| **k != first).unwrap().clone();
    ctx.ok(&["identity", "rotate"]);
    let second = files_key(&ctx.home).unwrap();
    assert!(second != first && second != lost, "{second}");
    assert_eq!(iam.keys(&user), BTreeSet::from([second.clone()]));

    // Killed after the files are rewritten, before the old key is deleted: the files hold
    // the new key; a re-run leaves one key, the files', and never the user without one.
    crash_at(&ctx, "written");
    let third = files_key(&ctx.home).unwrap();
    assert_ne!(third, second);
    assert_eq!(
        iam.keys(&user),
        BTreeSet::from([second.clone(), third.clone()])
    );
    ctx.ok(&["identity", "rotate"]);
    let fourth = files_key(&ctx.home).unwrap();
    assert_eq!(iam.keys(&user), BTreeSet::from([fourth.clone()]));
    assert_eq!(shown_keys(&ctx), BTreeSet::from([fourth.clone()]));
    let creds = fs::read_to_string(aws.join("credentials")).unwrap();
    assert!(
        creds.starts_with(own),
        "still kept after rotations:\n{creds}"
    );

    // Every identity action is an audit row naming key ids, never a secret.
    let audit = ctx.ok(&["admin", "audit", "--json"]).stdout;
    for action in ["identity-init", "identity-rotate", "identity-retire"] {
        assert!(audit.contains(action), "{action} is not audited:\n{audit}");
    }
    assert!(audit.contains(&fourth), "{audit}");
    assert!(!audit.contains(&secret_in_files(&ctx.home)), "{audit}");

    // delete: keys, membership and user gone.
    let deleted = ctx.ok(&["identity", "delete", "--yes"]);
    assert!(deleted.stderr.contains(&fourth), "{deleted}");
    assert_eq!(iam.user(&user), None);
    assert_eq!(show(&ctx)["exists"], Value::Bool(false));
    // Off a terminal, without --yes, nothing is deleted.
    ctx.ok(&["identity", "init"]);
    let refused = ctx.run(&["identity", "delete"]);
    assert_eq!(refused.code, 2, "{refused}");
    assert!(iam.user(&user).is_some());
}

#[test]
fn the_roster_sync_is_idempotent_and_removes_a_departed_user_with_two_keys() {
    let Some(moto) = Moto::acquire() else {
        return;
    };
    let iam = IamView::new(&moto.endpoint);
    let (ctx, dir) = context(&moto);
    // Someone else's user under the class's path: never touched.
    iam.create_user("c1-stranger", "/stratus/c1/");
    // The install's own user (as an instructor would be) has an identity off the roster: a
    // sync never removes it.
    ctx.ok(&["identity", "init"]);
    let own = format!("c1-{}", login());
    let roster = dir.path().join("roster.csv");
    fs::write(&roster, "name,login\nAlice,alice\nBob,bob\nCarol,carol\n").unwrap();
    let r = roster.to_str().unwrap();
    let plan = ctx.ok(&["admin", "identities", "sync", "--roster", r, "--dry-run"]);
    assert!(
        plan.stdout.contains("would create alice, bob, carol"),
        "{plan}"
    );
    assert_eq!(
        iam.users_under("/stratus/c1/"),
        BTreeSet::from(["c1-stranger".to_owned(), own.clone()]),
        "a dry run changes nothing"
    );
    ctx.ok(&["admin", "identities", "sync", "--roster", r]);
    let made = iam.users_under("/stratus/c1/");
    let expected: BTreeSet<String> = ["c1-alice", "c1-bob", "c1-carol", "c1-stranger", &own]
        .map(String::from)
        .into();
    assert_eq!(made, expected);
    for u in ["c1-alice", "c1-bob", "c1-carol"] {
        assert_eq!(iam.groups(u), vec!["c1-students".to_owned()], "{u}");
    }
    let again = ctx.ok(&["admin", "identities", "sync", "--roster", r]);
    assert!(
        again.stdout.contains("created none") && again.stdout.contains("removed none"),
        "{again}"
    );
    assert_eq!(iam.users_under("/stratus/c1/"), expected);
    // Bob holds two keys; then leaves the class.
    let keys = [iam.create_key("c1-bob"), iam.create_key("c1-bob")];
    let listed = ctx.ok(&["admin", "identities", "list", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let bob = rows.iter().find(|r| r["login"] == "bob").unwrap();
    assert_eq!(bob["keys"].as_array().unwrap().len(), 2, "{bob}");
    assert_eq!(rows.len(), 4, "the stranger is not listed: {rows:?}");
    fs::write(&roster, "login\nalice\ncarol\n").unwrap();
    let removed = ctx.ok(&["admin", "identities", "sync", "--roster", r]);
    assert!(removed.stdout.contains("removed bob"), "{removed}");
    for k in &keys {
        assert!(removed.stdout.contains(k.as_str()), "{removed}");
    }
    assert_eq!(iam.user("c1-bob"), None);
    let after: BTreeSet<String> = ["c1-alice", "c1-carol", "c1-stranger", &own]
        .map(String::from)
        .into();
    assert_eq!(iam.users_under("/stratus/c1/"), after);
    let twice = ctx.ok(&["admin", "identities", "sync", "--roster", r]);
    assert!(
        twice.stdout.contains("created none") && twice.stdout.contains("removed none"),
        "{twice}"
    );
    // An empty roster, or a bad login, is refused naming the problem, and changes nothing.
    fs::write(&roster, "login\n").unwrap();
    let empty = ctx.run(&["admin", "identities", "sync", "--roster", r]);
    assert_eq!(empty.code, 2, "{empty}");
    fs::write(&roster, "alice\nbad login\n").unwrap();
    let bad = ctx.run(&["admin", "identities", "sync", "--roster", r]);
    assert_eq!(bad.code, 2, "{bad}");
    assert!(bad.stderr.contains("line 2"), "names the line: {bad}");
    assert_eq!(iam.users_under("/stratus/c1/"), after);
}

/// As root: real students through the installed wrapper. A student not on the roster is
/// refused (and audited); the files land in each student's own home, as the student, 0600,
/// merged with a profile already there; a symbolic link planted at `~/.aws/credentials`,
/// pointing at another student's file, is refused before any key exists, and the other file is
/// unchanged; root's bulk rotation rewrites a student's files as the student.
#[test]
fn through_the_wrapper_each_students_files_land_in_their_own_home_and_no_one_elses() {
    let Some((_serial, moto, subnet)) = crate::privileged::start_with_moto() else {
        return;
    };
    let iam = IamView::new(&moto.endpoint);
    let site = crate::privileged::Site::new(&moto.endpoint, &subnet, 3);
    fs::write(
        site.config(),
        format!("{}\n{IDENTITIES}", site.config_text()),
    )
    .unwrap();
    let (ann, bea, cid) = (site.student(0), site.student(1), site.student(2));
    let user_of = |u: &crate::privileged::User| format!("c1-{}", u.name);

    // No roster yet, then not on it: refused, audited, nothing made.
    site.stratus(ann, &["identity", "init"])
        .refused("the instructor has not synced the class roster");
    let roster = site.canary.join("roster.txt");
    fs::write(&roster, format!("{}\n{}\n", ann.name, bea.name)).unwrap();
    fs::set_permissions(&roster, fs::Permissions::from_mode(0o644)).unwrap();
    site.stratus(
        &site.instructor,
        &[
            "admin",
            "identities",
            "sync",
            "--roster",
            roster.to_str().unwrap(),
        ],
    )
    .ok();
    site.stratus(cid, &["identity", "init"])
        .refused("is not on the class roster");
    // A student may not sync, nor act for another.
    site.stratus(
        ann,
        &[
            "admin",
            "identities",
            "sync",
            "--roster",
            roster.to_str().unwrap(),
        ],
    )
    .refused("only instructors");
    assert_eq!(iam.user(&user_of(cid)), None);
    let audit = site.audit();
    let refusals: Vec<&Value> = audit
        .iter()
        .filter(|r| r["user"] == cid.name.as_str() && r["action"] == "identity-init")
        .collect();
    assert_eq!(refusals.len(), 1, "{audit:?}");
    assert_eq!(refusals[0]["decision"], "refused");

    // Ann's own profile, then init: merged, hers, 0600.
    let own = "[default]\nregion = eu-west-1\n";
    site.sh(
        ann,
        &format!(
            "mkdir -m 700 ~/.aws && printf '{}' > ~/.aws/config",
            own.replace('\n', "\\n")
        ),
    )
    .ok();
    site.stratus(ann, &["identity", "init"]).ok();
    let creds = ann.home.join(".aws/credentials");
    let meta = fs::metadata(&creds).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (ann.uid, ann.gid, 0o600)
    );
    let config = fs::read_to_string(ann.home.join(".aws/config")).unwrap();
    assert!(config.starts_with(own), "{config}");
    let anns_key = files_key(&ann.home).unwrap();
    assert_eq!(iam.keys(&user_of(ann)), BTreeSet::from([anns_key.clone()]));
    let anns_secret = secret_in_files(&ann.home);
    let audit = serde_json::to_string(&site.audit()).unwrap();
    assert!(audit.contains(&anns_key) && !audit.contains(&anns_secret));

    // Bea plants a link to Ann's file (Ann made hers readable to show it stays unchanged).
    fs::set_permissions(&ann.home, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(ann.home.join(".aws"), fs::Permissions::from_mode(0o755)).unwrap();
    let before = fs::read(&creds).unwrap();
    site.sh(
        bea,
        &format!(
            "mkdir -m 700 ~/.aws && ln -s {} ~/.aws/credentials",
            creds.display()
        ),
    )
    .ok();
    site.stratus(bea, &["identity", "init"])
        .refused("symbolic link");
    assert_eq!(fs::read(&creds).unwrap(), before, "Ann's file is unchanged");
    assert_eq!(
        iam.keys(&user_of(bea)),
        BTreeSet::new(),
        "no key was made for Bea"
    );
    assert!(
        fs::symlink_metadata(bea.home.join(".aws/credentials"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Root rotates every key due: Ann's files, rewritten as Ann.
    let out = crate::privileged::Out::of(
        "admin identities rotate".into(),
        std::process::Command::new(site.cli())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/root")
            .env("STRATUS_CONFIG", site.config())
            .args(["admin", "identities", "rotate", "--older-than", "0"])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(out.stderr.contains("every key due was rotated"), "{out}");
    let rotated = files_key(&ann.home).unwrap();
    assert_ne!(rotated, anns_key);
    assert_eq!(iam.keys(&user_of(ann)), BTreeSet::from([rotated]));
    let meta = fs::metadata(&creds).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (ann.uid, 0o600));
    let listed = crate::privileged::Out::of(
        "admin identities list".into(),
        std::process::Command::new(site.cli())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/root")
            .env("STRATUS_CONFIG", site.config())
            .args(["admin", "identities", "list", "--json"])
            .output()
            .unwrap(),
    )
    .ok();
    let rows = listed.json();
    let files: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["login"].as_str().unwrap().to_owned(),
                r["files"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        files.contains(&(ann.name.clone(), "in place".into())),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|(l, f)| *l == bea.name && f.starts_with("refused")),
        "{files:?}"
    );

    // Ann's own key pair: its private half in her ~/.ssh, hers, 0600. Bea can neither delete
    // it nor launch with it, by its name or by its EC2 name (not even on the wrapper's stdin).
    site.stratus(ann, &["keys", "create", "laptop"]).ok();
    let key_file = ann.home.join(".ssh/stratus-laptop");
    let meta = fs::metadata(&key_file).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (ann.uid, 0o600),
        "{}",
        key_file.display()
    );
    let anns_pair = format!("{}.laptop", ann.name);
    assert_eq!(moto.key_pairs_named(&anns_pair).len(), 1);
    site.stratus(bea, &["keys", "delete", "laptop"])
        .refused("has no key pair laptop");
    site.stratus(bea, &["launch-cluster", "c", "1", "--key", "laptop"])
        .refused("has no key pair laptop");
    let forged = site.wrap(
        bea,
        &serde_json::json!({"action": "keys-delete", "name": anns_pair}),
    );
    assert_eq!(forged.code, 2, "{forged}");
    assert_eq!(
        moto.key_pairs_named(&anns_pair).len(),
        1,
        "Ann's key pair is whole"
    );
    assert!(
        site.sql("SELECT id FROM clusters").is_empty(),
        "nothing was launched"
    );
    site.stratus(ann, &["keys", "delete", "laptop"]).ok();
    assert!(moto.key_pairs_named(&anns_pair).is_empty());
}

/// `keys create|list|delete` and `launch-cluster --key` against moto, the nodes booted by the
/// test hypervisor: the key pair is `<login>.<name>` in EC2, tagged with its owner and the
/// store; its private half is only in `~/.ssh/stratus-NAME`, 0600, and nowhere in what stratus
/// printed or recorded; `--key` authorises it on every node (a worker added later too); a
/// second `create` of the name, a bad name and `--key` of a key one does not have are refused.
#[test]
fn keys_create_list_delete_and_a_launch_that_authorises_one() {
    let Some(moto) = Moto::acquire() else {
        return;
    };
    let ctx = crate::ec2::loopback_context(&moto);
    crate::ec2::e2e_profile(&ctx, 60, None);
    let _hv = crate::ec2::hypervisor(&moto, "withkey", &[]);
    let owner = login();
    let made = ctx.ok(&["keys", "create", "laptop"]);
    let file = ctx.home.join(".ssh/stratus-laptop");
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let private = fs::read_to_string(&file).unwrap();
    assert!(
        private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{private}"
    );
    let body: String = private.lines().nth(1).unwrap().to_owned();
    assert!(
        !made.stdout.contains(&body) && !made.stderr.contains(&body),
        "{made}"
    );
    let ec2_name = format!("{owner}.laptop");
    let kp = moto.key_pairs_named(&ec2_name);
    assert_eq!(kp.len(), 1, "{kp:?}");
    let tags = kp[0].tags();
    assert_eq!(
        crate::ec2::ec2_moto::tag(tags, "stratus:owner"),
        Some(owner.as_str())
    );
    assert!(crate::ec2::ec2_moto::tag(tags, "stratus:store").is_some_and(|s| s.starts_with("st-")));
    assert_eq!(
        crate::ec2::ec2_moto::tag(tags, "stratus:key"),
        Some("laptop")
    );
    let listed: Value = serde_json::from_str(&ctx.ok(&["keys", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["ec2_name"], ec2_name.as_str());
    let public = listed[0]["public_key"].as_str().unwrap().to_owned();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    let audit = ctx.ok(&["admin", "audit", "--json"]).stdout;
    assert!(
        audit.contains("keys-create") && !audit.contains(&body),
        "{audit}"
    );

    // Refusals, with nothing made.
    let again = ctx.run(&["keys", "create", "laptop"]);
    assert_eq!(again.code, 2, "{again}");
    let bad = ctx.run(&["keys", "create", "a.b"]);
    assert_eq!(bad.code, 2, "{bad}");
    assert!(bad.stderr.contains("not a key pair name"), "{bad}");
    assert!(moto.key_pairs_named(&format!("{owner}.a.b")).is_empty());
    let none = ctx.run(&[
        "launch-cluster",
        "withkey",
        "1",
        "-p",
        "e2e",
        "--key",
        "desktop",
    ]);
    assert_eq!(none.code, 2, "{none}");
    assert!(none.stderr.contains("no key pair desktop"), "{none}");
    assert!(
        ctx.list_json().is_empty(),
        "a refused --key launched nothing"
    );

    // --key: authorised on every node, the cluster key still what stratus logs in with.
    ctx.ok(&[
        "launch-cluster",
        "withkey",
        "1",
        "-p",
        "e2e",
        "--key",
        "laptop",
    ]);
    let check = format!(
        "grep -c -xF {} .ssh/authorized_keys || true",
        shell_words(&public)
    );
    let r = ctx.ok(&["exec", "withkey", "--all", "--", &check]);
    assert!(r.stdout.contains("[withkey-master] 1\n"), "{r}");
    assert!(r.stdout.contains("[withkey-worker-1] 1\n"), "{r}");
    ctx.ok(&["launch-slaves", "withkey", "1"]);
    let r = ctx.ok(&["exec", "withkey", "--all", "--", &check]);
    assert!(r.stdout.contains("[withkey-worker-2] 1\n"), "{r}");

    // delete: gone from EC2 and from the list; the file stays the student's; a worker added
    // after it does not get it.
    ctx.ok(&["keys", "delete", "laptop"]);
    ctx.ok(&["launch-slaves", "withkey", "1"]);
    let r = ctx.ok(&["exec", "withkey", "--all", "--", &check]);
    assert!(r.stdout.contains("[withkey-worker-3] 0\n"), "{r}");
    assert!(r.stdout.contains("[withkey-worker-1] 1\n"), "{r}");
    ctx.ok(&["terminate-cluster", "withkey", "--yes"]);
    assert!(moto.key_pairs_named(&ec2_name).is_empty());
    assert_eq!(ctx.ok(&["keys", "list", "--json"]).stdout.trim(), "[]");
    assert!(file.exists());
    assert_eq!(ctx.run(&["keys", "delete", "laptop"]).code, 2);
}

/// A word for `sh -c`, single-quoted.
fn shell_words(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
