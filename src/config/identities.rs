//! The site's `[identities]` table: the students' own, limited AWS identities (issue 16), the
//! IAM policy of their group (`stratus admin identities policy`), and the class roster with the
//! plan a sync of the identities to it makes (for `admin identities sync --roster FILE`, whose
//! IAM side comes next).
//!
//! ```toml
//! [identities]
//! class = "cs4500"          # IAM users live under the path /stratus/cs4500/
//! user_prefix = "cs4500-"   # a student's IAM user: the prefix and the Unix login (default: class-)
//! group = "cs4500-students" # the students' IAM group (default: class-students)
//! bucket = "cs4500-data"    # the class's S3 bucket: each student may use s3://bucket/<login>/
//! ```
//!
//! The group's policy, as shipped (an instructor may print it, change it and attach their own):
//! - every EC2 `Describe*` call, in the site's region (they support no resource-level
//!   permissions, so a student sees the class's instances, not only their own);
//! - S3 only under `s3://<bucket>/<login>/`: listing that prefix, and reading, writing and
//!   deleting objects under it; the login is the `stratus:owner` tag every student's IAM user
//!   carries, read through `${aws:PrincipalTag/stratus:owner}`;
//! - denied whatever else is granted: `ec2:RunInstances` (launches go through stratus, which
//!   counts them against the quota), every `iam:` action, and any instance action on an
//!   instance whose `stratus:owner` tag is not the student's own.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::model::{Owner, TAG_OWNER};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesConfig {
    /// The class: IAM users live under `/stratus/<class>/`.
    pub class: String,
    /// What a student's IAM user name starts with, before the Unix login (default `<class>-`).
    pub user_prefix: Option<String>,
    /// The students' IAM group (default `<class>-students`).
    pub group: Option<String>,
    /// The class's S3 bucket, of which each student may use the prefix `<login>/`.
    pub bucket: Option<String>,
    /// The students' group policy, as JSON: the instructor's own (default: the shipped one,
    /// which `admin identities policy` prints). `admin identities sync` puts it on the group.
    pub policy_file: Option<std::path::PathBuf>,
}

/// Unix logins are at most 32 characters (`LOGIN_NAME_MAX` on Linux): with the prefix, an IAM
/// user name must fit IAM's 64.
const LOGIN_MAX: usize = 32;
const IAM_USER_MAX: usize = 64;
const IAM_GROUP_MAX: usize = 128;

/// The instance actions a student's key is denied on instances that are not theirs: every one
/// that acts on a running instance or its tags.
const INSTANCE_ACTIONS: &[&str] = &[
    "ec2:CreateTags",
    "ec2:DeleteTags",
    "ec2:GetConsoleOutput",
    "ec2:GetConsoleScreenshot",
    "ec2:ModifyInstanceAttribute",
    "ec2:RebootInstances",
    "ec2:StartInstances",
    "ec2:StopInstances",
    "ec2:TerminateInstances",
];

impl IdentitiesConfig {
    /// The IAM path of the class's users.
    pub fn path(&self) -> String {
        format!("/stratus/{}/", self.class)
    }

    pub fn user_prefix(&self) -> String {
        self.user_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-", self.class))
    }

    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("{}-students", self.class))
    }

    /// A student's IAM user name: the prefix and the login.
    pub fn user_name(&self, login: &Owner) -> String {
        format!("{}{login}", self.user_prefix())
    }

    /// What is wrong with the table, in one sentence, if anything.
    pub fn problem(&self) -> Option<String> {
        let class_ok = !self.class.is_empty()
            && self.class.len() <= 32
            && self
                .class
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.class.starts_with('-');
        if !class_ok {
            return Some(format!(
                "[identities] class {:?} must be 1 to 32 characters of a-z, 0-9 and '-', not starting with '-' (it names the IAM path /stratus/<class>/)",
                cut(&self.class)
            ));
        }
        let iam_chars = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        };
        let prefix = self.user_prefix();
        if !iam_chars(&prefix) || prefix.len() + LOGIN_MAX > IAM_USER_MAX {
            return Some(format!(
                "[identities] user_prefix {:?} must be at most {} characters of letters, digits and +=,.@_- (with a login of up to {LOGIN_MAX}, an IAM user name is at most {IAM_USER_MAX})",
                cut(&prefix),
                IAM_USER_MAX - LOGIN_MAX
            ));
        }
        let group = self.group();
        if group.is_empty() || group.len() > IAM_GROUP_MAX || !iam_chars(&group) {
            return Some(format!(
                "[identities] group {:?} must be 1 to {IAM_GROUP_MAX} characters of letters, digits and +=,.@_-",
                cut(&group)
            ));
        }
        if let Some(bucket) = &self.bucket
            && !bucket_name_ok(bucket)
        {
            return Some(format!(
                "[identities] bucket {:?} is not an S3 bucket name: 3 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
                cut(bucket)
            ));
        }
        None
    }
}

/// At most 100 characters of a value, for a message.
fn cut(s: &str) -> String {
    crate::core::text::shortened(s, 100)
}

/// S3's rules for a bucket name (general purpose buckets).
fn bucket_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// The name of the students' group's inline policy.
pub const GROUP_POLICY_NAME: &str = "stratus-students";

/// The group's policy as the site has it: `policy_file`'s JSON, else the shipped one.
pub fn site_group_policy(identities: &IdentitiesConfig, region: &str) -> Result<Value, String> {
    let Some(path) = &identities.policy_file else {
        return Ok(group_policy(identities, region));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read [identities] policy_file {}: {e}",
            path.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "[identities] policy_file {} is not JSON: {e}",
            path.display()
        )
    })?;
    if v.get("Statement").is_none() {
        return Err(format!(
            "[identities] policy_file {} is not an IAM policy (no \"Statement\")",
            path.display()
        ));
    }
    Ok(v)
}

/// The shipped IAM policy of the students' group, for this table and the site's EC2 region.
pub fn group_policy(identities: &IdentitiesConfig, region: &str) -> Value {
    let owner = format!("${{aws:PrincipalTag/{TAG_OWNER}}}");
    let mut statements = vec![json!({
        "Sid": "DescribeTheClassInstances",
        "Effect": "Allow",
        "Action": "ec2:Describe*",
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:RequestedRegion": region}}
    })];
    if let Some(bucket) = &identities.bucket {
        statements.push(json!({
            "Sid": "ListOwnPrefix",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": format!("arn:aws:s3:::{bucket}"),
            "Condition": {"StringLike": {"s3:prefix": [format!("{owner}/"), format!("{owner}/*")]}}
        }));
        statements.push(json!({
            "Sid": "ObjectsUnderOwnPrefix",
            "Effect": "Allow",
            "Action": [
                "s3:AbortMultipartUpload",
                "s3:DeleteObject",
                "s3:GetObject",
                "s3:ListMultipartUploadParts",
                "s3:PutObject"
            ],
            "Resource": format!("arn:aws:s3:::{bucket}/{owner}/*")
        }));
    }
    statements.push(json!({
        "Sid": "NeverLaunchNorTouchIam",
        "Effect": "Deny",
        "Action": ["ec2:RunInstances", "iam:*"],
        "Resource": "*"
    }));
    statements.push(json!({
        "Sid": "NoOtherOwnersInstances",
        "Effect": "Deny",
        "Action": INSTANCE_ACTIONS,
        "Resource": "arn:aws:ec2:*:*:instance/*",
        "Condition": {"StringNotEquals": {format!("ec2:ResourceTag/{TAG_OWNER}"): owner}}
    }));
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// A class roster (`admin identities sync --roster FILE`): the logins that should have an
/// identity. Either one login per line (blank lines and `#` comments skipped), or a CSV file
/// whose header names a `login` column (any case, any position; what a course's student list
/// exports), told apart by a comma in the first line that is not a comment (or by that line
/// being the header `login` alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub logins: BTreeSet<Owner>,
    /// Lines (1-based) naming a login an earlier line named: kept once, and worth a warning.
    pub repeated: Vec<(usize, Owner)>,
}

/// Reads a roster; an error names the line and what is wrong with it. A roster that names no
/// login at all is refused: a sync with it would remove every student's identity.
pub fn parse_roster(text: &str) -> Result<Roster, String> {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    let rows = match first {
        // A CSV of the one column `login` has no comma; its header is no student's login.
        Some(l) if l.contains(',') || l.trim_matches('"').eq_ignore_ascii_case("login") => {
            csv_logins(text)?
        }
        _ => text
            .lines()
            .enumerate()
            .map(|(n, l)| (n + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(n, l)| (n, l.to_owned()))
            .collect(),
    };
    let mut roster = Roster {
        logins: BTreeSet::new(),
        repeated: Vec::new(),
    };
    for (line, login) in rows {
        let owner = Owner::parse(&login).map_err(|_| {
            format!(
                "line {line} of the roster: {:?} is not a login (1 to 32 letters, digits, '_', '-' and '.', starting with a letter, digit or '_')",
                cut(&login)
            )
        })?;
        if !roster.logins.insert(owner.clone()) {
            roster.repeated.push((line, owner));
        }
    }
    if roster.logins.is_empty() {
        return Err(
            "the roster names no login: a sync with it would remove every student's identity"
                .into(),
        );
    }
    Ok(roster)
}

/// The `login` column of a CSV roster, with each row's line.
fn csv_logins(text: &str) -> Result<Vec<(usize, String)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("the roster's header line is not CSV: {e}"))?
        .clone();
    let column = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("login"))
        .ok_or_else(|| {
            format!(
                "the roster's first line has commas but no `login` column (it has: {}): a CSV roster needs one",
                cut(&headers.iter().collect::<Vec<_>>().join(", "))
            )
        })?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("the roster is not CSV: {e}"))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        match record.get(column) {
            Some(login) if !login.is_empty() => out.push((line, login.to_owned())),
            _ if record.iter().all(str::is_empty) => {}
            _ => return Err(format!("line {line} of the roster has no login")),
        }
    }
    Ok(out)
}

/// What a sync does: the identities to create (on the roster, not yet made) and to remove
/// (made, no longer on the roster). Who has an identity is known by the IAM users' owner tags,
/// never by a name's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    pub create: Vec<Owner>,
    pub remove: Vec<Owner>,
    /// On the roster and made already: left as they are.
    pub kept: usize,
}

pub fn sync_plan(roster: &Roster, existing: &BTreeSet<Owner>) -> SyncPlan {
    SyncPlan {
        create: roster.logins.difference(existing).cloned().collect(),
        remove: existing.difference(&roster.logins).cloned().collect(),
        kept: roster.logins.intersection(existing).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> IdentitiesConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn names_default_from_the_class_and_are_checked() {
        let t = table("class = \"cs4500\"\nbucket = \"cs4500-data\"\n");
        assert_eq!(t.problem(), None);
        assert_eq!(t.path(), "/stratus/cs4500/");
        assert_eq!(t.user_prefix(), "cs4500-");
        assert_eq!(t.group(), "cs4500-students");
        let bad = [
            ("class = \"CS 4500\"\n", "[identities] class \"CS 4500\""),
            ("class = \"\"\n", "must be 1 to 32"),
            (
                "class = \"c\"\nuser_prefix = \"x/y\"\n",
                "[identities] user_prefix \"x/y\"",
            ),
            (
                &format!("class = \"c\"\nuser_prefix = \"{}\"\n", "p".repeat(33)),
                "at most 32 characters",
            ),
            ("class = \"c\"\ngroup = \"a group\"\n", "[identities] group"),
            (
                "class = \"c\"\nbucket = \"Data_Bucket\"\n",
                "is not an S3 bucket name",
            ),
            (
                "class = \"c\"\nbucket = \"a..b\"\n",
                "is not an S3 bucket name",
            ),
            (
                "class = \"c\"\nbucket = \"10.0.0.1\"\n",
                "is not an S3 bucket name",
            ),
        ];
        for (text, want) in bad {
            let problem = table(text).problem().unwrap_or_default();
            assert!(problem.contains(want), "{text:?}: {problem}");
        }
        // A typo is a parse error, not a silent default.
        assert!(toml::from_str::<IdentitiesConfig>("class = \"c\"\nbuckett = \"b\"\n").is_err());
    }

    #[test]
    fn the_group_may_describe_and_use_its_own_prefix_and_never_launch_or_touch_iam() {
        let t = table("class = \"cs4500\"\nbucket = \"cs4500-data\"\n");
        let p = group_policy(&t, "eu-west-1");
        let statements = p["Statement"].as_array().unwrap();
        let allowed: Vec<&Value> = statements
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .collect();
        let actions = |s: &Value| -> Vec<String> {
            match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                other => panic!("{other}"),
            }
        };
        // Nothing allowed but EC2's describes and S3 under the bucket.
        for s in &allowed {
            for a in actions(s) {
                assert!(
                    a.starts_with("ec2:Describe") || a.starts_with("s3:"),
                    "{a} is allowed"
                );
            }
        }
        assert_eq!(
            allowed[0]["Condition"]["StringEquals"]["aws:RequestedRegion"],
            "eu-west-1"
        );
        let objects = allowed
            .iter()
            .find(|s| s["Sid"] == "ObjectsUnderOwnPrefix")
            .unwrap();
        assert_eq!(
            objects["Resource"],
            "arn:aws:s3:::cs4500-data/${aws:PrincipalTag/stratus:owner}/*"
        );
        let list = allowed
            .iter()
            .find(|s| s["Sid"] == "ListOwnPrefix")
            .unwrap();
        assert_eq!(list["Resource"], "arn:aws:s3:::cs4500-data");
        // Denied whatever else an instructor grants.
        let denied: Vec<&Value> = statements
            .iter()
            .filter(|s| s["Effect"] == "Deny")
            .collect();
        let never = denied.iter().find(|s| s["Resource"] == "*").unwrap();
        assert_eq!(actions(never), ["ec2:RunInstances", "iam:*"]);
        let others = denied
            .iter()
            .find(|s| s["Sid"] == "NoOtherOwnersInstances")
            .unwrap();
        assert!(actions(others).contains(&"ec2:TerminateInstances".to_owned()));
        assert_eq!(
            others["Condition"]["StringNotEquals"]["ec2:ResourceTag/stratus:owner"],
            "${aws:PrincipalTag/stratus:owner}"
        );
        // Without a bucket, no S3 at all.
        let p = group_policy(&table("class = \"c\"\n"), "eu-west-1");
        assert!(!p.to_string().contains("s3:"), "{p}");
    }

    fn logins(r: &Roster) -> Vec<&str> {
        r.logins.iter().map(Owner::as_str).collect()
    }

    #[test]
    fn a_roster_is_one_login_per_line_or_a_csv_with_a_login_column() {
        let r = parse_roster("# CS 4500, fall\nalice\n\n  bob  \nalice\n").unwrap();
        assert_eq!(logins(&r), ["alice", "bob"]);
        assert_eq!(r.repeated, [(5, Owner::parse("alice").unwrap())]);
        let csv = "Name,Email,Login\n\"Smith, Ann\",ann@example.edu,asmith\nBo,bo@example.edu, bo_1 \n,,\n";
        let r = parse_roster(csv).unwrap();
        assert_eq!(logins(&r), ["asmith", "bo_1"]);
        assert!(r.repeated.is_empty());
        // A CSV of the login column alone: its header is not a student.
        assert_eq!(logins(&parse_roster("Login\nalice\n").unwrap()), ["alice"]);
        // What is wrong, and where.
        let bad = [
            (
                "alice\nbob smith\n",
                "line 2 of the roster: \"bob smith\" is not a login",
            ),
            (
                "name,email\nann,a@x\n",
                "no `login` column (it has: name, email)",
            ),
            ("name,login\nann,\n", "line 2 of the roster has no login"),
            ("login\n-x\n", "line 2 of the roster: \"-x\""),
            ("# nobody yet\n\n", "names no login"),
            ("login\n", "names no login"),
            ("", "names no login"),
        ];
        for (text, want) in bad {
            let e = parse_roster(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_sync_creates_the_missing_removes_the_departed_and_then_has_nothing_to_do() {
        let roster = parse_roster("alice\nbob\ncarol\n").unwrap();
        let made: BTreeSet<Owner> = ["bob", "dave"]
            .iter()
            .map(|l| Owner::parse(l).unwrap())
            .collect();
        let plan = sync_plan(&roster, &made);
        let names = |v: &[Owner]| v.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&plan.create), ["alice", "carol"]);
        assert_eq!(names(&plan.remove), ["dave"]);
        assert_eq!(plan.kept, 1);
        // After it: nothing.
        let after: BTreeSet<Owner> = roster.logins.clone();
        let again = sync_plan(&roster, &after);
        assert!(
            again.create.is_empty() && again.remove.is_empty(),
            "{again:?}"
        );
        assert_eq!(again.kept, 3);
        let t = table("class = \"cs4500\"\n");
        assert_eq!(t.user_name(&Owner::parse("alice").unwrap()), "cs4500-alice");
    }
}
