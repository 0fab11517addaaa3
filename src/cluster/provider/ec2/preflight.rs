//! `stratus admin preflight`: what a class's launches will ask of the account, checked against it
//! before the lab, with read-only calls and one DryRun. Each check says what it looked at and
//! gives a verdict: `pass`, `warn` (the lab can go on, but something is worth knowing), `fail`
//! (launches will be refused or fail) or `unknown` (it could not be checked, and why).
//!
//! - `image`: each role's image resolves (`resolve:ssm:` through SSM) and is available in the
//!   region (DescribeImages);
//! - `instance-types`: each role's types are offered in the zones of the site's subnets
//!   (DescribeInstanceTypeOfferings,
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypeOfferings.html>);
//!   a role with no type offered in any zone fails, a type missing in one zone warns (launches
//!   fall over to the next placement, as `capacity` does);
//! - `addresses`: the subnets where a role can run have the free addresses the class's nodes
//!   take (DescribeSubnets' `AvailableIpAddressCount`, which leaves out AWS's five reserved ones);
//! - `security-group`: the rules a cluster's group gets (`rules::desired`) are within EC2's
//!   default 60 inbound rules per group, the ports are ports, the VPC exists with DNS host
//!   names, and a DryRun of CreateSecurityGroup in it, tagged as a launch tags it, is allowed;
//!   the rules themselves are not sent (AuthorizeSecurityGroupIngress needs a group);
//! - `vcpu-quota`: the account's quota of running On-Demand Standard vCPUs (Service Quotas
//!   `L-1216C47A`; spot workers against `L-34B43A08`) covers the class's clusters: `fail` when
//!   the quota itself is too small, `warn` when it is only with what already runs in the account
//!   (pending and running instances of those families, DescribeInstances); `unknown` when the
//!   service account may not read it, which still says what already runs;
//! - `spend`: the class's expected spend per hour, and per lab session of the lifetime the
//!   policy or the profile allows, from the site's prices (integer micro-dollars).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{InstanceLifecycleType, InstanceType, LocationType, ResourceType};
use serde::{Deserialize, Serialize};

use super::image::ImageState;
use super::{Ec2Provider, filter, tag_spec};
use crate::cluster::provider::ProviderError;
use crate::config::profile::{Profile, RoleSettings};
use crate::config::{AddressKind, SiteConfig, prices};
use crate::core::model::{Millis, StoreId, TAG_STORE};
use crate::core::money::{Micros, dollars_text};

/// EC2's default quota of inbound rules per security group (`L-0EA8095F`).
/// <https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html#vpc-limits-security-groups>
pub const MAX_INBOUND_RULES: usize = 60;
/// Service Quotas: Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances, in vCPUs.
pub const ON_DEMAND_QUOTA: &str = "L-1216C47A";
/// Service Quotas: All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests, in vCPUs.
pub const SPOT_QUOTA: &str = "L-34B43A08";

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// Could not be checked; the detail says why. Not a failure.
    Unknown,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Unknown => "unknown",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One line of the preflight's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    pub fn new(check: &str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            check: check.to_owned(),
            verdict,
            detail: detail.into(),
        }
    }

    /// One check from its parts: the worst verdict, the details joined.
    fn of(check: &str, parts: Vec<(Verdict, String)>) -> Self {
        let verdict = parts.iter().map(|(v, _)| *v).max().unwrap_or(Verdict::Pass);
        let detail: Vec<String> = parts.into_iter().map(|(_, d)| d).collect();
        Self::new(check, verdict, detail.join("; "))
    }
}

/// What the class will launch: `students` clusters of the profile, each a master and `workers`
/// workers, living at most `lifetime`.
pub struct Plan<'a> {
    pub site: &'a SiteConfig,
    pub profile: &'a Profile,
    pub students: u32,
    pub workers: u32,
    pub lifetime: Option<Millis>,
    /// The store a launch tags its resources with (the DryRun carries it, as IAM requires).
    pub store: &'a StoreId,
}

impl Plan<'_> {
    /// Each role, its settings and its nodes per cluster.
    fn roles(&self) -> [(&'static str, &RoleSettings, u32); 2] {
        [
            ("master", &self.profile.master, 1),
            ("worker", &self.profile.worker, self.workers),
        ]
    }

    /// The class's nodes: a master and the workers, per student.
    pub fn nodes(&self) -> u64 {
        u64::from(self.students) * (1 + u64::from(self.workers))
    }

    /// `10 clusters of 1 master and 2 workers`, for details.
    fn clusters(&self) -> String {
        format!(
            "{} cluster{} of 1 master and {} worker{}",
            self.students,
            plural(u64::from(self.students)),
            self.workers,
            plural(u64::from(self.workers))
        )
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A subnet a launch may use, with its free addresses now.
#[derive(Debug, Clone)]
struct Place {
    subnet: String,
    zone: String,
    free: u64,
}

impl Place {
    fn name(&self) -> String {
        format!("{} ({})", self.subnet, self.zone)
    }
}

impl Ec2Provider {
    /// Every check of the plan against the account (see the module's comment), in the table's
    /// order. A check that cannot be made says so in its own line; nothing here fails as a
    /// whole once the provider is built.
    pub async fn preflight(&self, plan: &Plan<'_>) -> Vec<Check> {
        let mut checks = vec![self.check_images(plan).await];
        match self.places().await {
            Ok(places) => {
                let (offered, usable) = self.check_offerings(plan, &places).await;
                checks.push(offered);
                checks.push(check_addresses(plan, &places, &usable));
            }
            Err(e) => {
                for what in ["instance-types", "addresses"] {
                    checks.push(Check::new(what, Verdict::Fail, e.to_string()));
                }
            }
        }
        checks.push(self.check_group(plan).await);
        checks.push(self.check_vcpus(plan).await);
        checks.push(self.check_spend(plan).await);
        checks
    }

    /// Each distinct image of the profile resolves and is available.
    async fn check_images(&self, plan: &Plan<'_>) -> Check {
        let mut images: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (role, settings, _) in plan.roles() {
            images
                .entry(settings.image.as_str())
                .or_default()
                .push(role);
        }
        let mut parts = Vec::new();
        for (image, roles) in images {
            let whose = format!("the image {image} of the {}", roles.join(" and "));
            let ami = match self.resolve_image(image).await {
                Ok(ami) => ami,
                Err(e) => {
                    parts.push((Verdict::Fail, format!("{whose}: {e}")));
                    continue;
                }
            };
            let named = if ami == image {
                whose.clone()
            } else {
                format!("{whose} ({ami})")
            };
            parts.push(match self.image_state(&ami).await {
                Ok(ImageState::Available { .. }) => (Verdict::Pass, format!("{named} is available")),
                Ok(ImageState::Pending) => (
                    Verdict::Warn,
                    format!("{named} is still being made; launches fail until it is available"),
                ),
                Ok(ImageState::Failed(why)) => (Verdict::Fail, format!("{named} failed: {why}")),
                Ok(ImageState::Unknown) => (
                    Verdict::Fail,
                    format!(
                        "{named}: image {ami} does not exist in {} (or is not shared with this account)",
                        self.config.region
                    ),
                ),
                Err(e) => (Verdict::Fail, format!("{named}: {e}")),
            });
        }
        Check::of("image", parts)
    }

    /// The site's subnets (or, without any, the default VPC's subnet in each zone, where EC2
    /// places an instance launched without one) with their free addresses, described now: the
    /// network the provider keeps is looked up once per process, and its counts would be stale.
    async fn places(&self) -> Result<Vec<Place>, ProviderError> {
        let network = self.network().await?;
        let mut req = self.client.describe_subnets();
        req = if network.subnets.is_empty() {
            req.filters(filter("vpc-id", self.default_vpc().await?))
                .filters(filter("default-for-az", "true"))
        } else {
            req.set_subnet_ids(Some(network.subnets.iter().map(|s| s.id.clone()).collect()))
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.err("DescribeSubnets", e))?;
        let mut places: Vec<Place> = out
            .subnets()
            .iter()
            .filter_map(|s| {
                Some(Place {
                    subnet: s.subnet_id()?.to_owned(),
                    zone: s.availability_zone().unwrap_or_default().to_owned(),
                    free: s
                        .available_ip_address_count()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                })
            })
            .collect();
        // The site's order of preference, as launches go through them.
        let order = |p: &Place| network.subnets.iter().position(|s| s.id == p.subnet);
        places.sort_by_key(|p| (order(p), p.zone.clone()));
        if places.is_empty() {
            return Err(ProviderError::InvalidRequest(format!(
                "the default VPC of {} has no default subnet",
                self.config.region
            )));
        }
        Ok(places)
    }

    /// Which of `types` EC2 offers in which of `zones`, as (type, zone).
    async fn offerings(
        &self,
        types: &BTreeSet<&str>,
        zones: &BTreeSet<&str>,
    ) -> Result<BTreeSet<(String, String)>, ProviderError> {
        let mut pages = self
            .client
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-type")
                    .set_values(Some(types.iter().map(|t| (*t).to_owned()).collect()))
                    .build(),
            )
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("location")
                    .set_values(Some(zones.iter().map(|z| (*z).to_owned()).collect()))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut offered = BTreeSet::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("DescribeInstanceTypeOfferings", e))?;
            for o in page.instance_type_offerings() {
                if let (Some(t), Some(z)) = (o.instance_type(), o.location()) {
                    offered.insert((t.as_str().to_owned(), z.to_owned()));
                }
            }
        }
        Ok(offered)
    }

    /// Each role's types in each place's zone. Returns the check, and the places where every
    /// role has a type offered (what the addresses check counts).
    async fn check_offerings(&self, plan: &Plan<'_>, places: &[Place]) -> (Check, Vec<bool>) {
        let types: BTreeSet<&str> = plan
            .roles()
            .iter()
            .flat_map(|(_, s, _)| s.types())
            .collect();
        let zones: BTreeSet<&str> = places.iter().map(|p| p.zone.as_str()).collect();
        let offered = match self.offerings(&types, &zones).await {
            Ok(o) => o,
            Err(e) => {
                let check = Check::new("instance-types", Verdict::Fail, e.to_string());
                return (check, vec![true; places.len()]);
            }
        };
        offering_verdicts(plan, places, &offered)
    }

    /// The cluster's security group as a launch makes it: the rules' count and ports, the VPC
    /// and its DNS, and a DryRun of CreateSecurityGroup there.
    async fn check_group(&self, plan: &Plan<'_>) -> Check {
        let mut parts = rule_verdicts(plan, &self.config.client_cidrs, &self.config.ui_cidrs);
        if let Err(e) = self.check_dns().await {
            parts.push((Verdict::Fail, e.to_string()));
            return Check::of("security-group", parts);
        }
        let vpc = match self.network().await.map(|n| n.vpc.clone()) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => self.default_vpc().await,
            Err(e) => Err(e),
        };
        let vpc = match vpc {
            Ok(v) => v,
            Err(e) => {
                parts.push((Verdict::Fail, e.to_string()));
                return Check::of("security-group", parts);
            }
        };
        parts.push(self.dry_run_group(plan, &vpc).await);
        Check::of("security-group", parts)
    }

    async fn dry_run_group(&self, plan: &Plan<'_>, vpc: &str) -> (Verdict, String) {
        let name = format!("stratus-preflight-{}", plan.store);
        let r = self
            .client
            .create_security_group()
            .dry_run(true)
            .group_name(&name)
            .description("stratus admin preflight (a dry run: nothing is created)")
            .vpc_id(vpc)
            .tag_specifications(tag_spec(
                ResourceType::SecurityGroup,
                &[(TAG_STORE.to_owned(), plan.store.to_string())],
            ))
            .send()
            .await;
        match r {
            Err(e) if super::error::code(&e) == Some("DryRunOperation") => (
                Verdict::Pass,
                format!(
                    "VPC {vpc} gives DNS host names, and a dry run of CreateSecurityGroup there, tagged with the store, was allowed"
                ),
            ),
            Err(e) => (
                Verdict::Fail,
                format!(
                    "a dry run of CreateSecurityGroup in VPC {vpc}: {}",
                    self.err("CreateSecurityGroup", e)
                ),
            ),
            // An endpoint that ignores DryRun made it: take it away again.
            Ok(out) => {
                let id = out.group_id().unwrap_or_default().to_owned();
                let gone = self
                    .client
                    .delete_security_group()
                    .group_id(&id)
                    .send()
                    .await;
                (
                    Verdict::Warn,
                    format!(
                        "the endpoint ignored DryRun and created security group {id} in VPC {vpc}; {}",
                        if gone.is_ok() {
                            "it is deleted again"
                        } else {
                            "delete it by hand"
                        }
                    ),
                )
            }
        }
    }

    /// The vCPUs of each type, from DescribeInstanceTypes.
    async fn vcpus(
        &self,
        types: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, u64>, ProviderError> {
        let out = self
            .client
            .describe_instance_types()
            .set_instance_types(Some(
                types
                    .iter()
                    .map(|t| InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| self.err("DescribeInstanceTypes", e))?;
        Ok(out
            .instance_types()
            .iter()
            .filter_map(|t| {
                let vcpus = t.v_cpu_info()?.default_v_cpus()?;
                Some((
                    t.instance_type()?.as_str().to_owned(),
                    u64::try_from(vcpus).ok()?,
                ))
            })
            .collect())
    }

    /// The class's vCPUs (each role's preferred type) against the account's quotas, beside what
    /// already runs.
    async fn check_vcpus(&self, plan: &Plan<'_>) -> Check {
        let running = self.running_types().await;
        let mut types: BTreeSet<String> = plan
            .roles()
            .iter()
            .map(|(_, s, _)| s.types()[0].to_owned())
            .collect();
        if let Ok(running) = &running {
            types.extend(running.iter().map(|(t, _)| t.clone()));
        }
        let vcpus = match self.vcpus(&types).await {
            Ok(v) => v,
            Err(e) => {
                let types: BTreeSet<&str> = types.iter().map(String::as_str).collect();
                return Check::new(
                    "vcpu-quota",
                    Verdict::Unknown,
                    format!("cannot learn the vCPUs of {}: {e}", list(&types)),
                );
            }
        };
        let needs = match vcpu_needs(plan, &vcpus) {
            Ok(n) => n,
            Err(why) => return Check::new("vcpu-quota", Verdict::Unknown, why),
        };
        let in_use = running.map(|r| vcpus_in_use(&r, &vcpus));
        let mut parts = Vec::new();
        for (code, need) in needs {
            let used = match &in_use {
                Ok(u) => Ok(u.get(code).copied().unwrap_or(0)),
                Err(why) => Err(why.clone()),
            };
            parts.push(match self.quota(code).await {
                Ok((have, default)) => {
                    let quota = Quota {
                        code,
                        need,
                        have,
                        used: used.clone(),
                    };
                    let (v, mut why) = quota_verdict(plan, &quota, &self.config.region);
                    if default {
                        why.push_str(" (AWS's default: the account has not raised it)");
                    }
                    (v, why)
                }
                Err(why) => (
                    Verdict::Unknown,
                    format!(
                        "{why}; the vCPUs are not checked{}",
                        in_use_text(code, &used)
                    ),
                ),
            });
        }
        Check::of("vcpu-quota", parts)
    }

    /// The type and lifecycle of each pending or running instance in the account's region,
    /// whoever launched it: they all count against the same quotas.
    async fn running_types(&self) -> Result<Vec<(String, bool)>, String> {
        let mut pages = self
            .client
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("DescribeInstances", e).to_string())?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                if let Some(t) = i.instance_type() {
                    let spot = i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot);
                    out.push((t.as_str().to_owned(), spot));
                }
            }
        }
        Ok(out)
    }

    /// The account's value of an EC2 quota (vCPUs) and whether it is AWS's default, or why it
    /// cannot be read. GetServiceQuota answers the applied value, and for a quota never raised
    /// it may have none (NoSuchResourceException); then AWS's default applies.
    /// <https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_GetServiceQuota.html>
    async fn quota(&self, code: &str) -> Result<(u64, bool), String> {
        let applied = self
            .quotas
            .get_service_quota()
            .service_code("ec2")
            .quota_code(code)
            .send()
            .await;
        let e = match applied {
            Ok(out) => return quota_value(out.quota(), code).map(|v| (v, false)),
            Err(e) => e,
        };
        if quota_error(&e).0 != "NoSuchResourceException" {
            return Err(quota_reason(&e, code, "GetServiceQuota"));
        }
        let default = self
            .quotas
            .get_aws_default_service_quota()
            .service_code("ec2")
            .quota_code(code)
            .send()
            .await;
        match default {
            Ok(out) => quota_value(out.quota(), code).map(|v| (v, true)),
            Err(d) => Err(format!(
                "{}; {}",
                quota_reason(&e, code, "GetServiceQuota"),
                quota_reason(&d, code, "GetAWSDefaultServiceQuota")
            )),
        }
    }

    /// What the class costs per hour and per lab session.
    async fn check_spend(&self, plan: &Plan<'_>) -> Check {
        let public = matches!(
            self.config.address,
            AddressKind::PublicIp | AddressKind::PublicDns
        );
        let first = self.config.subnets().into_iter().next();
        // As the launch counts its nodes' addresses (`run_instances`).
        let public_ipv4 = self
            .public_ipv4(first.as_ref(), public)
            .await
            .unwrap_or(true);
        spend(plan, public_ipv4)
    }
}

fn list(items: &BTreeSet<&str>) -> String {
    items.iter().copied().collect::<Vec<_>>().join(", ")
}

/// Verdicts of the offerings, and which places every role can run in.
fn offering_verdicts(
    plan: &Plan<'_>,
    places: &[Place],
    offered: &BTreeSet<(String, String)>,
) -> (Check, Vec<bool>) {
    let is_offered = |t: &str, zone: &str| offered.contains(&(t.to_owned(), zone.to_owned()));
    let mut parts = Vec::new();
    let mut usable = vec![true; places.len()];
    for (role, settings, _) in plan.roles() {
        let types = settings.types();
        let missing: Vec<String> = types
            .iter()
            .flat_map(|t| {
                places
                    .iter()
                    .filter(|p| !is_offered(t, &p.zone))
                    .map(move |p| format!("{t} is not offered in {}", p.name()))
            })
            .collect();
        for (k, p) in places.iter().enumerate() {
            if !types.iter().any(|t| is_offered(t, &p.zone)) {
                usable[k] = false;
            }
        }
        let anywhere = places
            .iter()
            .any(|p| types.iter().any(|t| is_offered(t, &p.zone)));
        let types_text = types.join(", ");
        parts.push(if !anywhere {
            (
                Verdict::Fail,
                format!(
                    "the {}'s types ({types_text}) are offered in none of the subnets' zones: {}; list a type EC2 offers there, or subnets in other zones",
                    role,
                    missing.join(", ")
                ),
            )
        } else if !missing.is_empty() {
            (
                Verdict::Warn,
                format!(
                    "{} (launches there fall over to the next subnet or type)",
                    missing.join(", ")
                ),
            )
        } else {
            (
                Verdict::Pass,
                format!(
                    "the {role}'s {types_text} offered in {}",
                    places
                        .iter()
                        .map(|p| p.zone.as_str())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        });
    }
    let check = Check::of("instance-types", parts);
    (check, usable)
}

/// The class's nodes against the free addresses of the places every role can run in.
fn check_addresses(plan: &Plan<'_>, places: &[Place], usable: &[bool]) -> Check {
    let need = plan.nodes();
    let counted: Vec<&Place> = places
        .iter()
        .zip(usable)
        .filter(|(_, u)| **u)
        .map(|(p, _)| p)
        .collect();
    let free: u64 = counted.iter().map(|p| p.free).sum();
    let each: Vec<String> = counted
        .iter()
        .map(|p| format!("{} has {} free", p.name(), p.free))
        .collect();
    let left_out: Vec<String> = places
        .iter()
        .zip(usable)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p.name())
        .collect();
    let mut detail = format!(
        "{} need {need} addresses; {}",
        plan.clusters(),
        if each.is_empty() {
            "no subnet can run every role".to_owned()
        } else {
            each.join(", ")
        }
    );
    if !left_out.is_empty() {
        detail.push_str(&format!(
            " (not counted: {}, where a role's types are not offered)",
            left_out.join(", ")
        ));
    }
    if free < need {
        detail.push_str(&format!(
            "; {} address{} short: widen the subnets or list more under [ec2] subnet_ids",
            need - free,
            if need - free == 1 { "" } else { "es" }
        ));
        return Check::new("addresses", Verdict::Fail, detail);
    }
    Check::new("addresses", Verdict::Pass, detail)
}

/// The group's rules as a launch asks for them: within EC2's default quota, on real ports, from
/// client networks that let the class in and do not open the web UIs to everyone.
fn rule_verdicts(
    plan: &Plan<'_>,
    client_cidrs: &[String],
    ui_cidrs: &[String],
) -> Vec<(Verdict, String)> {
    let p = plan.profile;
    let rules = super::rules::desired("sg-preflight", p.ssh_port, &p.ports, client_cidrs, ui_cidrs);
    let mut parts = Vec::new();
    if p.ssh_port == 0 || p.ports.contains(&0) {
        parts.push((
            Verdict::Fail,
            format!("profile {} opens port 0, which is no port", p.name),
        ));
    }
    if rules.len() > MAX_INBOUND_RULES {
        parts.push((
            Verdict::Fail,
            format!(
                "a cluster's group needs {} inbound rules (one among its nodes, SSH from each of {} client_cidrs, each of {} ports from each of {} ui_cidrs), more than the {MAX_INBOUND_RULES} EC2 allows per group by default (quota L-0EA8095F)",
                rules.len(),
                client_cidrs.len(),
                p.ports.len(),
                ui_cidrs.len()
            ),
        ));
    } else {
        parts.push((
            Verdict::Pass,
            format!(
                "{} inbound rules per cluster (at most {MAX_INBOUND_RULES})",
                rules.len()
            ),
        ));
    }
    if client_cidrs.is_empty() {
        parts.push((
            Verdict::Warn,
            "[ec2] client_cidrs is empty: no network outside the cluster may reach its SSH port"
                .into(),
        ));
    }
    let world: Vec<&String> = ui_cidrs.iter().filter(|c| c.ends_with("/0")).collect();
    if !world.is_empty() && !p.ports.is_empty() {
        parts.push((
            Verdict::Warn,
            format!(
                "[ec2] ui_cidrs opens the web UIs (ports {}) to every address ({}): Hadoop's UIs accept jobs from anyone who reaches them",
                p.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
                world.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    parts
}

/// Whether a type counts against the Standard quotas (families A, C, D, H, I, M, R, T, Z); the
/// accelerated and special families (`inf`, `dl`, `trn`, `mac`, `hpc`, `g`, `p`, `x`, `u`, …)
/// have quotas of their own.
pub fn standard_family(instance_type: &str) -> bool {
    let family: String = instance_type
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let special = ["inf", "dl", "trn", "mac", "hpc"];
    family
        .chars()
        .next()
        .is_some_and(|c| "acdhimrtz".contains(c))
        && !special.iter().any(|s| family.starts_with(s))
}

/// The vCPUs the class needs, by quota: on-demand nodes, and spot workers.
fn vcpu_needs(
    plan: &Plan<'_>,
    vcpus: &BTreeMap<String, u64>,
) -> Result<Vec<(&'static str, u64)>, String> {
    let mut needs: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (role, settings, n) in plan.roles() {
        let t = settings.types()[0];
        if !standard_family(t) {
            return Err(format!(
                "{t} (the {role}) is not of a Standard family; its quota is not the one checked here"
            ));
        }
        let v = vcpus
            .get(t)
            .ok_or_else(|| format!("DescribeInstanceTypes does not know {t} (the {role})"))?;
        // The master is always on-demand.
        let code = if settings.spot && role != "master" {
            SPOT_QUOTA
        } else {
            ON_DEMAND_QUOTA
        };
        *needs.entry(code).or_default() += v * u64::from(n) * u64::from(plan.students);
    }
    Ok(needs.into_iter().collect())
}

/// The vCPUs that instances already running take, by quota (those of other families count
/// against other quotas, and a type EC2 did not describe is left out).
fn vcpus_in_use(
    running: &[(String, bool)],
    vcpus: &BTreeMap<String, u64>,
) -> BTreeMap<&'static str, u64> {
    let mut used: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (t, spot) in running {
        if !standard_family(t) {
            continue;
        }
        if let Some(v) = vcpus.get(t) {
            *used
                .entry(if *spot { SPOT_QUOTA } else { ON_DEMAND_QUOTA })
                .or_default() += v;
        }
    }
    used
}

/// What a quota check weighs: the class's need, the quota, and what already runs (or why that
/// could not be read).
struct Quota<'a> {
    code: &'a str,
    need: u64,
    have: u64,
    used: Result<u64, String>,
}

/// The clause on what already runs, for a quota's line.
fn in_use_text(code: &str, used: &Result<u64, String>) -> String {
    match used {
        Ok(0) => "; nothing of it runs in the account now".to_owned(),
        Ok(n) => format!("; instances running in the account now take {n} vCPUs of ec2/{code}"),
        Err(why) => format!("; what already runs is not counted ({why})"),
    }
}

/// A quota's value: a count of vCPUs, whole and far below 2^53.
fn quota_value(
    quota: Option<&aws_sdk_servicequotas::types::ServiceQuota>,
    code: &str,
) -> Result<u64, String> {
    quota
        .and_then(|q| q.value())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v.floor() as u64)
        .ok_or_else(|| format!("Service Quotas gave no value for ec2/{code}"))
}

/// The code and message of a Service Quotas error.
fn quota_error<E>(e: &E) -> (String, String)
where
    E: aws_sdk_servicequotas::error::ProvideErrorMetadata,
{
    (
        e.code().unwrap_or_default().to_owned(),
        e.message().unwrap_or_default().to_owned(),
    )
}

/// Why a quota could not be read, in a sentence (never "not allowed to call", which names an
/// EC2 refusal: this one is not a failure).
fn quota_reason<E>(
    e: &aws_sdk_servicequotas::error::SdkError<
        E,
        aws_sdk_servicequotas::config::http::HttpResponse,
    >,
    code: &str,
    op: &str,
) -> String
where
    E: aws_sdk_servicequotas::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_servicequotas::error::SdkError;
    let (what, message) = quota_error(e);
    match what.as_str() {
        "AccessDeniedException" | "NoAccessException" | "UnauthorizedOperation" => format!(
            "the service account may not read Service Quotas ({op}: {what}); the policy `stratus admin iam-policy` prints allows servicequotas:{op}"
        ),
        "NoSuchResourceException" => {
            format!("Service Quotas has no quota ec2/{code} here ({op}: {message})")
        }
        // An answer that is no Service Quotas error (an endpoint without the API), or none.
        "" => match e {
            SdkError::ServiceError(se) => format!(
                "cannot read the quota ec2/{code} ({op}): the endpoint answered HTTP {} and no Service Quotas error",
                se.raw().status().as_u16()
            ),
            _ => format!(
                "cannot read the quota ec2/{code} ({op}): {}",
                crate::core::text::shortened(
                    &aws_sdk_servicequotas::error::DisplayErrorContext(e).to_string(),
                    300
                )
            ),
        },
        _ => format!("cannot read the quota ec2/{code} ({op}): {message} ({what})"),
    }
}

fn quota_verdict(plan: &Plan<'_>, q: &Quota<'_>, region: &str) -> (Verdict, String) {
    let what = if q.code == SPOT_QUOTA {
        "All Standard Spot Instance Requests"
    } else {
        "Running On-Demand Standard instances"
    };
    let (code, need, have) = (q.code, q.need, q.have);
    let said = format!(
        "{} need {need} vCPUs of {what} (ec2/{code}); the account's quota in {region} is {have}",
        plan.clusters()
    );
    let raise = format!("ask AWS to raise it (Service Quotas, Amazon EC2, {code})");
    match &q.used {
        _ if need > have => (Verdict::Fail, format!("{said}: {raise}")),
        Ok(used) if need + used > have => (
            Verdict::Warn,
            format!(
                "{said}, and instances running now take {used} of it, leaving {}: launches past that are refused until those end, or {raise}",
                have - used.min(&have)
            ),
        ),
        used => (Verdict::Pass, format!("{said}{}", in_use_text(code, used))),
    }
}

/// Hours and minutes, for people: `8 h`, `1 h 30 min`.
fn hours_text(ms: Millis) -> String {
    let minutes = ms / 60_000;
    match (minutes / 60, minutes % 60) {
        (h, 0) => format!("{h} h"),
        (0, m) => format!("{m} min"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// The class's spend per hour, and per lab session of the plan's lifetime: each role's
/// preferred type, its root volume and (when the network gives one) its public address, at the
/// site's prices (`prices::node_rate`).
fn spend(plan: &Plan<'_>, public_ipv4: bool) -> Check {
    // Micro-dollars per 730 hours of one cluster.
    let mut rate: Micros = 0;
    let mut unpriced = Vec::new();
    for (_, settings, n) in plan.roles() {
        let node = prices::NodeCost {
            instance_type: settings.types()[0],
            spot: settings.spot,
            volume_gb: settings.volume_gb.unwrap_or(prices::DEFAULT_ROOT_GB),
            public_ipv4,
        };
        match prices::node_rate(plan.site, &node) {
            Some(r) => rate += r * i64::from(n),
            None => unpriced.push(node.instance_type),
        }
    }
    if !unpriced.is_empty() {
        return Check::new(
            "spend",
            Verdict::Unknown,
            format!(
                "no price is known for {}; add it under [prices] in the site config",
                unpriced.join(", ")
            ),
        );
    }
    let class = rate * i64::from(plan.students);
    let hour = 3_600_000;
    let mut detail = format!(
        "{} an hour for {} ({} each, root volumes{} included)",
        dollars_text(prices::piece_at_rate(class, hour)),
        plan.clusters(),
        dollars_text(prices::piece_at_rate(rate, hour)),
        if public_ipv4 {
            " and public addresses"
        } else {
            ""
        }
    );
    let Some(lifetime) = plan.lifetime else {
        detail.push_str("; no lifetime limits a cluster (the policy's or the profile's max_lifetime_hours), so a session's spend has no bound");
        return Check::new("spend", Verdict::Warn, detail);
    };
    detail.push_str(&format!(
        "; {} per lab session of {} (the longest a cluster may live), {} per student",
        dollars_text(prices::piece_at_rate(class, lifetime)),
        hours_text(lifetime),
        dollars_text(prices::piece_at_rate(rate, lifetime))
    ));
    Check::new("spend", Verdict::Pass, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let mut p = Profile::for_tests("hadoop");
        for (role, t) in [(&mut p.master, "m5.large"), (&mut p.worker, "m5.xlarge")] {
            role.instance_type = t.into();
            role.instance_types = vec![t.into()];
        }
        p.ports = vec![9870];
        p
    }

    /// A site with the built-in prices, the profile, a store.
    fn fixture() -> (SiteConfig, Profile, StoreId) {
        (
            SiteConfig::default(),
            profile(),
            StoreId::from_stored("st-1".into()),
        )
    }

    fn plan<'a>(site: &'a SiteConfig, profile: &'a Profile, store: &'a StoreId) -> Plan<'a> {
        Plan {
            site,
            profile,
            students: 10,
            workers: 2,
            lifetime: Some(4 * 3_600_000),
            store,
        }
    }

    fn place(subnet: &str, zone: &str, free: u64) -> Place {
        Place {
            subnet: subnet.into(),
            zone: zone.into(),
            free,
        }
    }

    #[test]
    fn verdicts_combine_to_the_worst() {
        let c = Check::of(
            "x",
            vec![
                (Verdict::Pass, "a".into()),
                (Verdict::Unknown, "b".into()),
                (Verdict::Warn, "c".into()),
            ],
        );
        assert_eq!((c.verdict, c.detail.as_str()), (Verdict::Warn, "a; b; c"));
        assert!(Verdict::Fail > Verdict::Warn && Verdict::Unknown > Verdict::Pass);
        assert_eq!(
            serde_json::to_string(&Check::new("image", Verdict::Unknown, "d")).unwrap(),
            r#"{"check":"image","verdict":"unknown","detail":"d"}"#
        );
    }

    #[test]
    fn a_type_missing_in_one_zone_warns_and_in_every_zone_fails() {
        let (site, p, store) = fixture();
        let plan = plan(&site, &p, &store);
        let places = [
            place("subnet-a", "us-east-1a", 100),
            place("subnet-e", "us-east-1e", 100),
        ];
        let both = |t: &str| {
            [
                (t.to_owned(), "us-east-1a".to_owned()),
                (t.to_owned(), "us-east-1e".to_owned()),
            ]
        };
        let all: BTreeSet<_> = both("m5.large")
            .into_iter()
            .chain(both("m5.xlarge"))
            .collect();
        let (c, usable) = offering_verdicts(&plan, &places, &all);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        assert_eq!(usable, [true, true]);
        let mut some = all.clone();
        some.remove(&("m5.xlarge".to_owned(), "us-east-1e".to_owned()));
        let (c, usable) = offering_verdicts(&plan, &places, &some);
        assert_eq!(c.verdict, Verdict::Warn, "{c:?}");
        assert!(
            c.detail
                .contains("m5.xlarge is not offered in subnet-e (us-east-1e)"),
            "{c:?}"
        );
        assert_eq!(usable, [true, false]);
        let none: BTreeSet<_> = both("m5.large").into_iter().collect();
        let (c, _) = offering_verdicts(&plan, &places, &none);
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(
            c.detail
                .contains("the worker's types (m5.xlarge) are offered in none"),
            "{c:?}"
        );
    }

    #[test]
    fn addresses_count_only_where_every_role_runs() {
        let (site, p, store) = fixture();
        let plan = plan(&site, &p, &store);
        let places = [
            place("subnet-a", "us-east-1a", 20),
            place("subnet-b", "us-east-1b", 20),
        ];
        // 10 clusters of 3 nodes: 30 addresses.
        let c = check_addresses(&plan, &places, &[true, true]);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        let c = check_addresses(&plan, &places, &[true, false]);
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(
            c.detail
                .contains("need 30 addresses; subnet-a (us-east-1a) has 20 free"),
            "{c:?}"
        );
        assert!(c.detail.contains("10 addresses short"), "{c:?}");
        assert!(
            c.detail.contains("not counted: subnet-b (us-east-1b)"),
            "{c:?}"
        );
    }

    #[test]
    fn too_many_rules_or_port_zero_fail_and_open_uis_warn() {
        let (site, mut p, store) = fixture();
        let cidrs: Vec<String> = (0..30).map(|i| format!("10.0.{i}.0/24")).collect();
        let worst = |parts: Vec<(Verdict, String)>| parts.into_iter().max().unwrap();
        let ok = rule_verdicts(&plan(&site, &p, &store), &cidrs[..2], &[]);
        assert_eq!(worst(ok).0, Verdict::Pass);
        p.ports = vec![9870, 8088];
        // 1 + 30 SSH + 2 ports × 30 networks.
        let (v, why) = worst(rule_verdicts(&plan(&site, &p, &store), &cidrs, &cidrs));
        assert_eq!(v, Verdict::Fail);
        assert!(why.contains("needs 91 inbound rules"), "{why}");
        let (v, why) = worst(rule_verdicts(
            &plan(&site, &p, &store),
            &cidrs[..1],
            &["0.0.0.0/0".to_owned()],
        ));
        assert_eq!(v, Verdict::Warn);
        assert!(why.contains("to every address (0.0.0.0/0)"), "{why}");
        p.ssh_port = 0;
        let (v, _) = worst(rule_verdicts(&plan(&site, &p, &store), &cidrs[..1], &[]));
        assert_eq!(v, Verdict::Fail);
    }

    #[test]
    fn vcpus_by_quota_and_their_verdict() {
        let (site, mut p, store) = fixture();
        let vcpus: BTreeMap<String, u64> =
            [("m5.large".to_owned(), 2), ("m5.xlarge".to_owned(), 4)].into();
        // 10 × (2 + 2 × 4).
        assert_eq!(
            vcpu_needs(&plan(&site, &p, &store), &vcpus).unwrap(),
            [(ON_DEMAND_QUOTA, 100)]
        );
        p.worker.spot = true;
        assert_eq!(
            vcpu_needs(&plan(&site, &p, &store), &vcpus).unwrap(),
            [(ON_DEMAND_QUOTA, 20), (SPOT_QUOTA, 80)]
        );
        let plan = plan(&site, &p, &store);
        let q = |code, need, have, used| Quota {
            code,
            need,
            have,
            used,
        };
        let (v, why) = quota_verdict(&plan, &q(ON_DEMAND_QUOTA, 20, 32, Ok(12)), "us-east-1");
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(why.ends_with("take 12 vCPUs of ec2/L-1216C47A"), "{why}");
        // The quota covers the class, but not beside what runs now.
        let (v, why) = quota_verdict(&plan, &q(ON_DEMAND_QUOTA, 20, 32, Ok(13)), "us-east-1");
        assert_eq!(v, Verdict::Warn, "{why}");
        assert!(
            why.contains("instances running now take 13 of it, leaving 19"),
            "{why}"
        );
        let (v, why) = quota_verdict(
            &plan,
            &q(
                ON_DEMAND_QUOTA,
                20,
                32,
                Err("DescribeInstances refused".into()),
            ),
            "us-east-1",
        );
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(
            why.contains("what already runs is not counted (DescribeInstances refused)"),
            "{why}"
        );
        let (v, why) = quota_verdict(&plan, &q(SPOT_QUOTA, 80, 64, Ok(0)), "us-east-1");
        assert_eq!(v, Verdict::Fail);
        assert!(why.contains("need 80 vCPUs of All Standard Spot Instance Requests (ec2/L-34B43A08); the account's quota in us-east-1 is 64"), "{why}");
        let running = [
            ("m5.large".to_owned(), false),
            ("m5.xlarge".to_owned(), true),
            ("g5.xlarge".to_owned(), false),
            ("m5.unknown".to_owned(), false),
        ];
        assert_eq!(
            vcpus_in_use(&running, &vcpus),
            [(ON_DEMAND_QUOTA, 2), (SPOT_QUOTA, 4)].into()
        );
        assert!(
            standard_family("m5.large")
                && standard_family("t3.micro")
                && standard_family("im4gn.large")
        );
        assert!(
            !standard_family("inf2.xlarge")
                && !standard_family("g5.xlarge")
                && !standard_family("p4d.24xlarge")
        );
    }

    #[test]
    fn spend_per_hour_and_per_session_in_micro_dollars() {
        let (site, p, store) = fixture();
        let plan = plan(&site, &p, &store);
        // An hour of a cluster without addresses: m5.large $0.096 + 2 × m5.xlarge $0.192, and
        // three 8 GiB gp3 volumes at $0.08 per GB-month (24 × 80_000 / 730 micro-dollars).
        let c = spend(&plan, false);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        let cluster_hour = 96_000 + 2 * 192_000 + (24 * 80_000 + 365) / 730;
        assert_eq!(cluster_hour, 482_630);
        assert!(
            c.detail.starts_with(&format!(
                "{} an hour for 10 clusters",
                dollars_text(10 * cluster_hour)
            )),
            "{c:?}"
        );
        assert!(c.detail.contains("per lab session of 4 h"), "{c:?}");
        assert!(
            c.detail
                .contains(&format!("{} per student", dollars_text(4 * cluster_hour))),
            "{c:?}"
        );
        let endless = Plan {
            lifetime: None,
            ..plan
        };
        assert_eq!(spend(&endless, true).verdict, Verdict::Warn);
        let mut odd = profile();
        odd.worker.instance_types = vec!["x9.huge".into()];
        let c = spend(
            &Plan {
                profile: &odd,
                ..endless
            },
            true,
        );
        assert_eq!(c.verdict, Verdict::Unknown);
        assert!(c.detail.contains("no price is known for x9.huge"), "{c:?}");
        assert_eq!(hours_text(90 * 60_000), "1 h 30 min");
    }
}
