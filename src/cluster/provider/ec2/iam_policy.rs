//! The IAM policy the service account needs (`stratus admin iam-policy`): exactly the EC2 actions
//! this provider calls, each on the resources it touches, with every action that changes or
//! ends something limited to what this state database launched.
//!
//! `ACTIONS` is the one list of the EC2 actions stratus calls. A unit test reads this
//! provider's source and fails when it calls an action the list lacks (or the list names one it
//! no longer calls), so the policy cannot drift from the code; `tests/it/iam.rs` runs a launch,
//! a terminate, a snapshot, a reap and an image build against moto with IAM enforcement on,
//! holding this policy, and again with each action removed.
//!
//! What the policy says (<https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html>):
//! - the Describe calls on `*` (they support no resource-level permissions), in the site's region;
//! - RunInstances split in two: the resources it creates (instance, volume, network interface,
//!   spot request) only with `aws:RequestTag/stratus:store` = this store's id, the instance
//!   also only of the types the class policy's `[units]` lists (`ec2:InstanceType`); and the
//!   resources it uses (image, subnet, security group, key pair);
//! - CreateSecurityGroup, ImportKeyPair, the rules AuthorizeSecurityGroupIngress creates, and
//!   CreateImage's image, likewise only with the store's tag in the request;
//! - tag-on-create (`ec2:CreateTags` with `ec2:CreateAction`) for those calls only;
//! - TerminateInstances, GetConsoleOutput, CancelSpotInstanceRequests, DeleteSecurityGroup,
//!   Authorize/RevokeSecurityGroupIngress, DeleteKeyPair, CreateTags and CreateImage on existing
//!   resources only where `ec2:ResourceTag/stratus:store` is this store's id;
//! - `ssm:GetParameters` for the profiles' `resolve:ssm:` images (those parameters only), which
//!   stratus resolves itself to learn the image's root device;
//! - `servicequotas:GetServiceQuota` and `GetAWSDefaultServiceQuota` in the region, for the vCPU
//!   quotas `admin preflight` compares with the class (reads only; they take no resource);
//! - what EC2 does on stratus's behalf: `iam:CreateServiceLinkedRole` for spot, once per account,
//!   when a profile runs workers on spot;
//! - with `[identities]`, the students' identities (`IAM_ACTIONS`, which the same kind of test
//!   checks against `iam.rs`): their users under `/stratus/<class>/` (made only tagged with
//!   this store), their keys, and the one students' group; `iam:ListUsers` on `*`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::core::model::{StoreId, TAG_STORE};

/// Every EC2 action the provider calls (the SDK's operation names).
pub const ACTIONS: &[&str] = &[
    "AuthorizeSecurityGroupIngress",
    "CancelSpotInstanceRequests",
    "CreateImage",
    "CreateKeyPair",
    "CreateSecurityGroup",
    "CreateTags",
    "DeleteKeyPair",
    "DeleteSecurityGroup",
    "DescribeImages",
    "DescribeInstanceTypeOfferings",
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeKeyPairs",
    "DescribeSecurityGroups",
    "DescribeSpotInstanceRequests",
    "DescribeSubnets",
    "DescribeVpcAttribute",
    "DescribeVpcs",
    "GetConsoleOutput",
    "ImportKeyPair",
    "RevokeSecurityGroupIngress",
    "RunInstances",
    "TerminateInstances",
];

/// The calls that make something new, whose tags `ec2:CreateTags` may set (tag-on-create).
const CREATE_ACTIONS: &[&str] = &[
    "AuthorizeSecurityGroupIngress",
    "CreateImage",
    "CreateKeyPair",
    "CreateSecurityGroup",
    "ImportKeyPair",
    "RunInstances",
];

/// Every IAM action the students' identities call (`iam.rs`), but `TagUser`, which IAM
/// requires of a CreateUser with tags.
pub const IAM_ACTIONS: &[&str] = &[
    "AddUserToGroup",
    "CreateAccessKey",
    "CreateGroup",
    "CreateUser",
    "DeleteAccessKey",
    "DeleteUser",
    "GetGroup",
    "GetGroupPolicy",
    "GetUser",
    "ListAccessKeys",
    "ListGroupsForUser",
    "ListUsers",
    "PutGroupPolicy",
    "RemoveUserFromGroup",
];

/// The students' identities the service account manages (`[identities]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityScope {
    /// `/stratus/<class>/`.
    pub path: String,
    pub group: String,
    /// What the students' IAM user names start with.
    pub user_prefix: String,
}

/// What the policy is generated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInput {
    pub region: String,
    /// The state database's id: what every resource stratus launches is tagged with.
    pub store: StoreId,
    /// The instance types a launch may ask for (the class policy's `[units]`).
    pub instance_types: BTreeSet<String>,
    /// The site's subnets and VPC, when it names them (else any of the region).
    pub subnet_ids: Vec<String>,
    pub vpc_id: Option<String>,
    /// The SSM parameters the profiles' images are resolved from (`resolve:ssm:NAME`).
    pub ssm_parameters: BTreeSet<String>,
    /// Whether a profile runs workers on spot capacity.
    pub spot: bool,
    /// The students' identities, when the site has `[identities]`.
    pub identities: Option<IdentityScope>,
}

/// The AWS partition of a region (its ARNs' second field).
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

fn ec2_actions(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|a| Value::String(format!("ec2:{a}")))
            .collect(),
    )
}

/// The names a policy's statements are written with: ARNs of the region, and the store's tag
/// as a request tag and as a resource tag.
struct Doc<'a> {
    partition: &'static str,
    region: &'a str,
    store: &'a str,
    request_tag: String,
    resource_tag: String,
}

impl Doc<'_> {
    fn arn(&self, kind: &str, id: &str) -> String {
        format!("arn:{}:ec2:{}:*:{kind}/{id}", self.partition, self.region)
    }

    /// An ARN of a resource no account owns in its name (images, snapshots).
    fn shared(&self, kind: &str) -> String {
        format!("arn:{}:ec2:{}::{kind}/*", self.partition, self.region)
    }

    /// The request must tag what it creates with this store's id.
    fn request_store(&self) -> Value {
        json!({ "StringEquals": { &self.request_tag: self.store } })
    }

    /// The resource must already carry this store's id.
    fn resource_store(&self) -> Value {
        json!({ "StringEquals": { &self.resource_tag: self.store } })
    }
}

/// The policy document, as IAM JSON.
pub fn generate(input: &PolicyInput) -> Value {
    let d = Doc {
        partition: partition(&input.region),
        region: &input.region,
        store: input.store.as_str(),
        request_tag: format!("aws:RequestTag/{TAG_STORE}"),
        resource_tag: format!("ec2:ResourceTag/{TAG_STORE}"),
    };
    let mut statements = launches(&d, input);
    statements.extend(creates(&d, input));
    statements.extend(tags_and_changes(&d));
    statements.extend(others(&d, input));
    if let Some(scope) = &input.identities {
        statements.extend(identities(&d, scope));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// The students' identities: users and keys under the class's path, the students' group.
fn identities(d: &Doc<'_>, scope: &IdentityScope) -> Vec<Value> {
    let iam =
        |names: &[&str]| -> Vec<String> { names.iter().map(|a| format!("iam:{a}")).collect() };
    let users = format!("arn:{}:iam::*:user{}*", d.partition, scope.path);
    let group = format!(
        "arn:{}:iam::*:group{}{}",
        d.partition, scope.path, scope.group
    );
    vec![
        json!({
            "Sid": "StudentUsersCreatedTagged",
            "Effect": "Allow",
            "Action": iam(&["CreateUser", "TagUser"]),
            "Resource": users,
            "Condition": { "StringEquals": { format!("aws:RequestTag/{TAG_STORE}"): d.store } },
        }),
        json!({
            "Sid": "StudentUsersAndKeys",
            "Effect": "Allow",
            "Action": iam(&[
                "CreateAccessKey",
                "DeleteAccessKey",
                "DeleteUser",
                "GetUser",
                "ListAccessKeys",
                "ListGroupsForUser",
            ]),
            "Resource": users,
            // Only this install's students: another's under the same path are not its own.
            "Condition": { "StringEquals": { format!("aws:ResourceTag/{TAG_STORE}"): d.store } },
        }),
        json!({
            "Sid": "StudentsGroup",
            "Effect": "Allow",
            "Action": iam(&[
                "AddUserToGroup",
                "CreateGroup",
                "GetGroup",
                "GetGroupPolicy",
                "PutGroupPolicy",
                "RemoveUserFromGroup",
            ]),
            "Resource": group,
        }),
        json!({
            // A lookup of a user or group that does not exist yet (before `init` or the first
            // sync makes it) is checked against its ARN without the path, which IAM cannot know.
            "Sid": "LookUpStudentsNotMadeYet",
            "Effect": "Allow",
            "Action": ["iam:GetUser", "iam:GetGroup"],
            "Resource": [
                format!("arn:{}:iam::*:user/{}*", d.partition, scope.user_prefix),
                format!("arn:{}:iam::*:group/{}", d.partition, scope.group),
            ],
        }),
        json!({
            // ListUsers names no user: it is allowed on `*`, and stratus lists the path only.
            "Sid": "ListStudentUsers",
            "Effect": "Allow",
            "Action": "iam:ListUsers",
            "Resource": "*",
        }),
    ]
}

/// Describes in the region, and RunInstances: what it creates (tagged, of the class's types)
/// apart from what it uses (the image, the site's subnets, the store's groups and keys).
fn launches(d: &Doc<'_>, input: &PolicyInput) -> Vec<Value> {
    let types: Vec<&String> = input.instance_types.iter().collect();
    let subnets: Vec<String> = if input.subnet_ids.is_empty() {
        vec![d.arn("subnet", "*")]
    } else {
        input
            .subnet_ids
            .iter()
            .map(|s| d.arn("subnet", s))
            .collect()
    };
    // Every Describe the provider calls; the default VPC is looked up only when the site names
    // no subnet.
    let describes: Vec<&str> = ACTIONS
        .iter()
        .copied()
        .filter(|a| a.starts_with("Describe"))
        .filter(|a| *a != "DescribeVpcs" || input.subnet_ids.is_empty())
        .collect();
    let mut launch_creates = vec![d.arn("volume", "*"), d.arn("network-interface", "*")];
    if input.spot {
        launch_creates.push(d.arn("spot-instances-request", "*"));
    }
    vec![
        json!({
            "Sid": "Describe",
            "Effect": "Allow",
            "Action": ec2_actions(&describes),
            "Resource": "*",
            "Condition": { "StringEquals": { "aws:RequestedRegion": d.region } },
        }),
        json!({
            "Sid": "LaunchInstancesOfTheClassTypes",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": d.arn("instance", "*"),
            "Condition": { "StringEquals": { &d.request_tag: d.store, "ec2:InstanceType": types } },
        }),
        json!({
            "Sid": "LaunchCreatesTagged",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": launch_creates,
            "Condition": d.request_store(),
        }),
        json!({
            "Sid": "LaunchUses",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": std::iter::once(d.shared("image")).chain(subnets).collect::<Vec<_>>(),
        }),
        json!({
            "Sid": "LaunchUsesTheStoresGroupsAndKeys",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": [d.arn("security-group", "*"), d.arn("key-pair", "*")],
            "Condition": d.resource_store(),
        }),
    ]
}

/// What else stratus creates: groups (in the site's VPC), key pairs, images and rules, each
/// tagged with the store's id in the call that creates it.
fn creates(d: &Doc<'_>, input: &PolicyInput) -> Vec<Value> {
    vec![
        json!({
            "Sid": "CreateGroupsTagged",
            "Effect": "Allow",
            "Action": "ec2:CreateSecurityGroup",
            "Resource": d.arn("security-group", "*"),
            "Condition": d.request_store(),
        }),
        json!({
            // The clusters' key pairs (imported) and the students' own (made by EC2).
            "Sid": "ImportKeysTagged",
            "Effect": "Allow",
            "Action": ["ec2:ImportKeyPair", "ec2:CreateKeyPair"],
            "Resource": d.arn("key-pair", "*"),
            "Condition": d.request_store(),
        }),
        json!({
            "Sid": "CreateImagesTagged",
            "Effect": "Allow",
            "Action": "ec2:CreateImage",
            "Resource": d.shared("image"),
            "Condition": d.request_store(),
        }),
        json!({
            // The rules a group gets; the group itself must be the store's (below).
            "Sid": "RulesCreatedTagged",
            "Effect": "Allow",
            "Action": "ec2:AuthorizeSecurityGroupIngress",
            "Resource": d.arn("security-group-rule", "*"),
            "Condition": d.request_store(),
        }),
        json!({
            "Sid": "GroupsInTheSiteVpc",
            "Effect": "Allow",
            "Action": "ec2:CreateSecurityGroup",
            "Resource": d.arn("vpc", input.vpc_id.as_deref().unwrap_or("*")),
        }),
        json!({
            // CreateImage makes a snapshot of each volume; the image's own tags are required
            // above, and the instance must be this store's (below).
            "Sid": "ImageSnapshots",
            "Effect": "Allow",
            "Action": "ec2:CreateImage",
            "Resource": d.shared("snapshot"),
        }),
    ]
}

/// Tags set at creation only (`ec2:CreateAction`), and every change to what exists only where
/// it carries this store's id.
fn tags_and_changes(d: &Doc<'_>) -> Vec<Value> {
    vec![
        json!({
            "Sid": "TagOnCreate",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": [
                d.arn("instance", "*"),
                d.arn("volume", "*"),
                d.arn("network-interface", "*"),
                d.arn("spot-instances-request", "*"),
                d.arn("security-group", "*"),
                d.arn("security-group-rule", "*"),
                d.arn("key-pair", "*"),
                d.shared("image"),
            ],
            "Condition": {
                "StringEquals": { "ec2:CreateAction": CREATE_ACTIONS, &d.request_tag: d.store }
            },
        }),
        json!({
            // The snapshots of a baked image are tagged once the image exists (they carry no
            // tag yet, so only the tag asked for can be checked).
            "Sid": "TagImageSnapshots",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": d.shared("snapshot"),
            "Condition": d.request_store(),
        }),
        json!({
            "Sid": "OnlyThisStoresResources",
            "Effect": "Allow",
            "Action": ec2_actions(&[
                "AuthorizeSecurityGroupIngress",
                "CancelSpotInstanceRequests",
                "CreateImage",
                "CreateTags",
                "DeleteKeyPair",
                "DeleteSecurityGroup",
                "GetConsoleOutput",
                "RevokeSecurityGroupIngress",
                "TerminateInstances",
            ]),
            "Resource": [
                d.arn("instance", "*"),
                d.arn("spot-instances-request", "*"),
                d.arn("security-group", "*"),
                d.arn("key-pair", "*"),
            ],
            "Condition": d.resource_store(),
        }),
    ]
}

/// The vCPU quotas `admin preflight` reads; SSM for the profiles' `resolve:ssm:` images, and
/// spot's service role, when needed.
fn others(d: &Doc<'_>, input: &PolicyInput) -> Vec<Value> {
    let mut statements = vec![json!({
        // Read only: the account's vCPU quotas, whether they cover the class. Service Quotas'
        // reads are not limited by resource (`*`), so by region, as the Describes.
        "Sid": "ReadTheVcpuQuotas",
        "Effect": "Allow",
        "Action": ["servicequotas:GetServiceQuota", "servicequotas:GetAWSDefaultServiceQuota"],
        "Resource": "*",
        "Condition": { "StringEquals": { "aws:RequestedRegion": d.region } },
    })];
    if !input.ssm_parameters.is_empty() {
        let params: Vec<String> = input
            .ssm_parameters
            .iter()
            .map(|name| {
                format!(
                    "arn:{}:ssm:{}::parameter/{}",
                    d.partition,
                    d.region,
                    name.trim_start_matches('/')
                )
            })
            .collect();
        statements.push(json!({
            // stratus resolves `resolve:ssm:` images itself, to know their root device.
            "Sid": "ResolveProfileImages",
            "Effect": "Allow",
            "Action": "ssm:GetParameters",
            "Resource": params,
        }));
    }
    if input.spot {
        statements.push(json!({
            // Once per account: the first spot launch creates EC2's spot role.
            "Sid": "SpotServiceRole",
            "Effect": "Allow",
            "Action": "iam:CreateServiceLinkedRole",
            "Resource": format!(
                "arn:{}:iam::*:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
                d.partition
            ),
            "Condition": { "StringLike": { "iam:AWSServiceName": "spot.amazonaws.com" } },
        }));
    }
    statements
}

/// The EC2 actions a policy document allows, in any statement (without the `ec2:` prefix).
pub fn ec2_actions_of(policy: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in policy["Statement"].as_array().into_iter().flatten() {
        let actions = match &s["Action"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        out.extend(
            actions
                .into_iter()
                .filter_map(|a| a.strip_prefix("ec2:"))
                .map(str::to_owned),
        );
    }
    out
}

/// `RunInstances` -> `run_instances`: the SDK's method for an operation.
pub fn sdk_method(action: &str) -> String {
    let mut out = String::new();
    for (i, c) in action.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The policy's inputs from the site: its `[ec2]` table, the class policy's `[units]` (without
/// a class policy, the types the site's EC2 profiles name), and the site's EC2 profiles as
/// their files say (their `resolve:ssm:` images, and whether any runs workers on spot).
/// The instance types a class policy allows (its `[units]`), and the file that says so.
pub struct ClassTypes<'a> {
    pub policy: &'a std::path::Path,
    pub types: BTreeSet<String>,
}

pub fn input_from_site(
    config: &crate::config::SiteConfig,
    class: Option<ClassTypes<'_>>,
    profiles: &crate::config::profile::ProfileSet,
    store: StoreId,
) -> Result<PolicyInput, crate::core::error::Error> {
    use crate::core::error::Error;
    use crate::core::model::{ProviderKind, Role};
    let ec2 = config.ec2.as_ref().ok_or_else(|| {
        Error::invalid(
            "admin iam-policy is for the ec2 provider: the site config has no [ec2] table",
        )
    })?;
    let mut ec2_profiles = Vec::new();
    for name in profiles.names() {
        match profiles.resolve_as_written(&name) {
            Ok(p) if p.supports(ProviderKind::Ec2) => ec2_profiles.push(p),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "profile {name} is left out of the policy: {}",
                crate::core::error::one_line(&e)
            ),
        }
    }
    let instance_types: BTreeSet<String> = match &class {
        Some(c) => c
            .types
            .iter()
            .filter(|t| t.as_str() != "local")
            .cloned()
            .collect(),
        None => ec2_profiles
            .iter()
            .flat_map(|p| [Role::Master, Role::Worker].map(|r| p.role(r).instance_type.clone()))
            .collect(),
    };
    if instance_types.is_empty() {
        return Err(Error::invalid(match &class {
            Some(c) => format!(
                "the class policy {} lists no EC2 instance type under [units], so no launch could be allowed",
                c.policy.display()
            ),
            None => "no EC2 profile names an instance type, so no launch could be allowed".into(),
        }));
    }
    let ssm_parameters = ec2_profiles
        .iter()
        .flat_map(|p| [Role::Master, Role::Worker].map(|r| p.role(r).image.clone()))
        .filter_map(|i| i.strip_prefix("resolve:ssm:").map(str::to_owned))
        .collect();
    Ok(PolicyInput {
        region: ec2.region.clone(),
        store,
        instance_types,
        subnet_ids: ec2.subnets(),
        vpc_id: ec2.vpc_id.clone(),
        ssm_parameters,
        spot: ec2_profiles.iter().any(|p| p.worker.spot),
        identities: config.identities.as_ref().map(|i| IdentityScope {
            path: i.path(),
            group: i.group(),
            user_prefix: i.user_prefix(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PolicyInput {
        PolicyInput {
            region: "eu-west-1".into(),
            store: StoreId::from_stored("st-0123".into()),
            instance_types: ["m5.large".to_owned(), "m5.xlarge".to_owned()].into(),
            subnet_ids: vec!["subnet-1".into()],
            vpc_id: None,
            ssm_parameters: ["/aws/service/canonical/ubuntu/x/ami-id".to_owned()].into(),
            spot: true,
            identities: None,
        }
    }

    /// The statements that allow `action` on a resource matching `resource` (a `*` in the
    /// statement's resource matches anything), with their conditions.
    fn allowing(policy: &Value, action: &str, resource: &str) -> Vec<Value> {
        let matches = |pattern: &str, value: &str| {
            let parts: Vec<&str> = pattern.split('*').collect();
            let mut rest = value;
            for (i, part) in parts.iter().enumerate() {
                if i == 0 {
                    let Some(r) = rest.strip_prefix(part) else {
                        return false;
                    };
                    rest = r;
                } else if i == parts.len() - 1 {
                    return rest.ends_with(part);
                } else {
                    let Some(at) = rest.find(part) else {
                        return false;
                    };
                    rest = &rest[at + part.len()..];
                }
            }
            rest.is_empty()
        };
        let list = |v: &Value| match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| list(&s["Action"]).iter().any(|a| a == action))
            .filter(|s| list(&s["Resource"]).iter().any(|r| matches(r, resource)))
            .map(|s| s["Condition"].clone())
            .collect()
    }

    #[test]
    fn every_listed_action_and_no_other_is_allowed() {
        // Without a subnet every listed action is needed; with one, the default VPC is never
        // looked up.
        let mut anywhere = input();
        anywhere.subnet_ids.clear();
        let listed: BTreeSet<String> = ACTIONS.iter().map(|a| (*a).to_owned()).collect();
        assert_eq!(ec2_actions_of(&generate(&anywhere)), listed);
        let mut in_subnets = listed.clone();
        in_subnets.remove("DescribeVpcs");
        assert_eq!(ec2_actions_of(&generate(&input())), in_subnets);
    }

    #[test]
    fn what_ends_or_changes_something_is_limited_to_the_store() {
        let policy = generate(&input());
        for action in [
            "ec2:TerminateInstances",
            "ec2:DeleteSecurityGroup",
            "ec2:DeleteKeyPair",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:GetConsoleOutput",
            "ec2:CancelSpotInstanceRequests",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:CreateImage",
        ] {
            for resource in [
                "arn:aws:ec2:eu-west-1:123:instance/i-1",
                "arn:aws:ec2:eu-west-1:123:security-group/sg-1",
                "arn:aws:ec2:eu-west-1:123:key-pair/key-1",
                "arn:aws:ec2:eu-west-1:123:spot-instances-request/sir-1",
            ] {
                for condition in allowing(&policy, action, resource) {
                    assert_eq!(
                        condition,
                        json!({"StringEquals": {"ec2:ResourceTag/stratus:store": "st-0123"}}),
                        "{action} on {resource}"
                    );
                }
            }
        }
        // Existing resources are tagged only when they are the store's; a new resource only in
        // the call that creates it, with the store's tag.
        let tagging = allowing(
            &policy,
            "ec2:CreateTags",
            "arn:aws:ec2:eu-west-1:123:instance/i-1",
        );
        assert_eq!(tagging.len(), 2, "{tagging:?}");
        assert!(
            tagging
                .contains(&json!({"StringEquals": {"ec2:ResourceTag/stratus:store": "st-0123"}}))
        );
        let on_create = tagging
            .iter()
            .find(|c| c["StringEquals"].get("ec2:CreateAction").is_some())
            .expect("tag-on-create");
        assert_eq!(
            on_create["StringEquals"]["aws:RequestTag/stratus:store"],
            "st-0123"
        );
        let creators: BTreeSet<&str> = on_create["StringEquals"]["ec2:CreateAction"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(creators, CREATE_ACTIONS.iter().copied().collect());
    }

    #[test]
    fn run_instances_creates_only_tagged_and_of_the_class_types() {
        let policy = generate(&input());
        let instance = allowing(
            &policy,
            "ec2:RunInstances",
            "arn:aws:ec2:eu-west-1:123:instance/i-1",
        );
        assert_eq!(
            instance,
            vec![json!({"StringEquals": {
                "aws:RequestTag/stratus:store": "st-0123",
                "ec2:InstanceType": ["m5.large", "m5.xlarge"],
            }})]
        );
        for created in [
            "volume/vol-1",
            "network-interface/eni-1",
            "spot-instances-request/sir-1",
        ] {
            let c = allowing(
                &policy,
                "ec2:RunInstances",
                &format!("arn:aws:ec2:eu-west-1:123:{created}"),
            );
            assert_eq!(
                c,
                vec![json!({"StringEquals": {"aws:RequestTag/stratus:store": "st-0123"}})],
                "{created}"
            );
        }
        // What it uses: any image, the site's subnet only, the store's groups and key pairs.
        for used in [
            "arn:aws:ec2:eu-west-1::image/ami-1",
            "arn:aws:ec2:eu-west-1:123:subnet/subnet-1",
        ] {
            assert_eq!(
                allowing(&policy, "ec2:RunInstances", used),
                vec![Value::Null],
                "{used}"
            );
        }
        for used in [
            "arn:aws:ec2:eu-west-1:123:security-group/sg-1",
            "arn:aws:ec2:eu-west-1:123:key-pair/k",
        ] {
            assert_eq!(
                allowing(&policy, "ec2:RunInstances", used),
                vec![json!({"StringEquals": {"ec2:ResourceTag/stratus:store": "st-0123"}})],
                "{used}"
            );
        }
        assert!(
            allowing(
                &policy,
                "ec2:RunInstances",
                "arn:aws:ec2:eu-west-1:123:subnet/subnet-2"
            )
            .is_empty()
        );
        // Another region: nothing.
        assert!(
            allowing(
                &policy,
                "ec2:RunInstances",
                "arn:aws:ec2:us-east-1:123:instance/i-1"
            )
            .is_empty()
        );
    }

    #[test]
    fn what_ec2_does_on_stratus_s_behalf_follows_the_profiles() {
        let policy = generate(&input());
        let ssm = allowing(
            &policy,
            "ssm:GetParameters",
            "arn:aws:ssm:eu-west-1::parameter/aws/service/canonical/ubuntu/x/ami-id",
        );
        assert_eq!(ssm, vec![Value::Null]);
        assert!(policy.to_string().contains("iam:CreateServiceLinkedRole"));
        let plain = generate(&PolicyInput {
            ssm_parameters: BTreeSet::new(),
            spot: false,
            ..input()
        });
        let text = plain.to_string();
        assert!(!text.contains("ssm:"), "{text}");
        assert!(!text.contains("iam:"), "{text}");
        assert!(!text.contains("spot-instances-request/*\",\"arn:aws:ec2:eu-west-1:*:volume"));
        // Every EC2 action but DescribeVpcs (the input names a subnet).
        assert_eq!(ec2_actions_of(&plain).len(), ACTIONS.len() - 1);
    }

    #[test]
    fn the_preflight_may_read_quotas_in_the_region_and_change_none() {
        let policy = generate(&input());
        let quota = "arn:aws:servicequotas:eu-west-1:123:ec2/L-1216C47A";
        let region = json!({"StringEquals": {"aws:RequestedRegion": "eu-west-1"}});
        for read in [
            "servicequotas:GetServiceQuota",
            "servicequotas:GetAWSDefaultServiceQuota",
        ] {
            assert_eq!(
                allowing(&policy, read, quota),
                vec![region.clone()],
                "{read}"
            );
        }
        assert!(allowing(&policy, "servicequotas:RequestServiceQuotaIncrease", quota).is_empty());
    }

    #[test]
    fn partitions_and_sdk_names() {
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("eu-west-1"), "aws");
        assert_eq!(sdk_method("RunInstances"), "run_instances");
        assert_eq!(
            sdk_method("DescribeSpotInstanceRequests"),
            "describe_spot_instance_requests"
        );
    }

    /// The SDK calls of this provider's source: every `client.<method>(` of an SDK client, EC2's
    /// from every file but `iam.rs`, IAM's from `iam.rs`.
    fn sdk_calls_in_source() -> (BTreeSet<String>, BTreeSet<String>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![dir];
        let (mut calls, mut iam_calls) = (BTreeSet::new(), BTreeSet::new());
        let mut sdk_users = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let in_provider = path.components().any(|c| c.as_os_str() == "ec2");
            if !in_provider {
                if text.contains("aws_sdk_ec2") || text.contains("aws_sdk_iam") {
                    sdk_users.push(path.clone());
                }
                continue;
            }
            let into = if path.file_name().is_some_and(|n| n == "iam.rs") {
                &mut iam_calls
            } else {
                &mut calls
            };
            // Whitespace out, so a chain split over lines reads `self.client.run_instances(`.
            let flat: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            let mut rest = flat.as_str();
            while let Some(at) = rest.find(".client.") {
                rest = &rest[at + ".client.".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if rest[name.len()..].starts_with('(') && !name.is_empty() {
                    into.insert(name);
                }
            }
        }
        // The SDKs are used nowhere else (so the scan above saw every call).
        assert!(
            sdk_users.is_empty(),
            "{sdk_users:?} use aws_sdk_ec2 or aws_sdk_iam outside the EC2 provider"
        );
        (calls, iam_calls)
    }

    #[test]
    fn the_iam_action_list_is_what_the_identities_call_and_the_policy_allows() {
        let (_, called) = sdk_calls_in_source();
        let listed: BTreeSet<String> = IAM_ACTIONS.iter().map(|a| sdk_method(a)).collect();
        assert_eq!(called, listed, "iam.rs's calls and IAM_ACTIONS");
        let mut with = input();
        with.identities = Some(IdentityScope {
            path: "/stratus/c1/".into(),
            group: "c1-students".into(),
            user_prefix: "c1-".into(),
        });
        let policy = generate(&with);
        let allowed: BTreeSet<String> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                _ => Vec::new(),
            })
            .filter_map(|a| a.strip_prefix("iam:").map(str::to_owned))
            .collect();
        for a in IAM_ACTIONS {
            assert!(allowed.contains(*a), "the policy lacks iam:{a}");
        }
        assert!(allowed.contains("TagUser"));
        let text = policy.to_string();
        assert!(text.contains("arn:aws:iam::*:user/stratus/c1/*"), "{text}");
        assert!(
            text.contains("arn:aws:iam::*:group/stratus/c1/c1-students"),
            "{text}"
        );
        // Without [identities], no IAM action but the spot role.
        let plain = generate(&input()).to_string();
        assert!(!plain.contains("iam:CreateUser"), "{plain}");
    }

    #[test]
    fn the_action_list_is_what_the_provider_calls() {
        let (called, _) = sdk_calls_in_source();
        let listed: BTreeSet<String> = ACTIONS.iter().map(|a| sdk_method(a)).collect();
        let missing: Vec<_> = called.difference(&listed).collect();
        let unused: Vec<_> = listed.difference(&called).collect();
        assert!(
            missing.is_empty(),
            "the provider calls {missing:?}, which iam_policy::ACTIONS lacks: add them, and to the policy's statements"
        );
        assert!(
            unused.is_empty(),
            "iam_policy::ACTIONS lists {unused:?}, which the provider no longer calls"
        );
    }
}
