//! Where nodes launch: the site's subnets (several, ideally one per availability zone, all in
//! one VPC), or the region's default VPC, and the check that the VPC gives instances DNS
//! hostnames, which YARN and the MapReduce shuffle use to find each other.
//!
//! Looked up once per process and kept: a class launching at once asks EC2 the same few
//! questions once per launch, not once per call.

use aws_sdk_ec2::types::VpcAttributeName;

use super::{Ec2Provider, filter};
use crate::cluster::provider::ProviderError;

/// One subnet the site launches into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Subnet {
    pub id: String,
    /// Its availability zone, for messages (`us-east-1a`).
    pub zone: String,
    /// Whether instances launched into it get a public IPv4 address without asking.
    pub public_ips: bool,
}

/// The site's network as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Network {
    /// The VPC of the subnets; `None`: the region's default VPC (no subnet configured).
    pub vpc: Option<String>,
    /// The subnets in the site's order of preference; empty: the default VPC's, EC2's choice.
    pub subnets: Vec<Subnet>,
}

impl Network {
    /// A subnet as messages name it: `subnet-0abc (us-east-1a)`.
    pub fn describe(&self, subnet: Option<&str>) -> String {
        match subnet {
            None => "the default VPC".into(),
            Some(id) => match self.subnets.iter().find(|s| s.id == id) {
                Some(s) if !s.zone.is_empty() => format!("{id} ({})", s.zone),
                _ => id.to_owned(),
            },
        }
    }
}

impl Ec2Provider {
    /// The site's subnets and their VPC, looked up on first use.
    pub(super) async fn network(&self) -> Result<&Network, ProviderError> {
        self.network
            .get_or_try_init(|| self.look_up_network())
            .await
    }

    async fn look_up_network(&self) -> Result<Network, ProviderError> {
        let wanted = self.config.subnets();
        if wanted.is_empty() {
            return Ok(Network {
                vpc: self.config.vpc_id.clone(),
                subnets: Vec::new(),
            });
        }
        let out = self
            .client
            .describe_subnets()
            .set_subnet_ids(Some(wanted.clone()))
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            // EC2 answers a list with an unknown id with this code, naming the id.
            Err(e) if super::error::code(&e) == Some("InvalidSubnetID.NotFound") => {
                return Err(ProviderError::InvalidRequest(format!(
                    "[ec2] subnets {} do not all exist in {} ({})",
                    wanted.join(", "),
                    self.config.region,
                    aws_sdk_ec2::error::ProvideErrorMetadata::message(&e).unwrap_or("not found")
                )));
            }
            Err(e) => return Err(self.err("DescribeSubnets", e)),
        };
        let mut subnets = Vec::new();
        let mut vpcs: Vec<(String, String)> = Vec::new();
        for id in &wanted {
            let Some(s) = out
                .subnets()
                .iter()
                .find(|s| s.subnet_id() == Some(id.as_str()))
            else {
                return Err(ProviderError::InvalidRequest(format!(
                    "[ec2] subnet {id} does not exist in {}",
                    self.config.region
                )));
            };
            let vpc = s.vpc_id().unwrap_or_default().to_owned();
            vpcs.push((id.clone(), vpc));
            subnets.push(Subnet {
                id: id.clone(),
                zone: s.availability_zone().unwrap_or_default().to_owned(),
                public_ips: s.map_public_ip_on_launch().unwrap_or(false),
            });
        }
        let vpc = vpcs[0].1.clone();
        if let Some((other, its)) = vpcs.iter().find(|(_, v)| *v != vpc) {
            return Err(ProviderError::InvalidRequest(format!(
                "[ec2] subnets must all be in one VPC (a cluster's security group belongs to one): {} is in {vpc}, {other} in {its}",
                vpcs[0].0
            )));
        }
        if let Some(want) = &self.config.vpc_id
            && *want != vpc
        {
            return Err(ProviderError::InvalidRequest(format!(
                "[ec2] subnet {} is in VPC {vpc}, not in vpc_id {want}",
                vpcs[0].0
            )));
        }
        Ok(Network {
            vpc: Some(vpc),
            subnets,
        })
    }

    /// Refuses a VPC whose instances get no DNS hostnames (or no DNS at all): Hadoop's daemons
    /// find each other by host name. Checked once per process.
    /// <https://docs.aws.amazon.com/vpc/latest/userguide/AmazonDNS-concepts.html>
    pub(super) async fn check_dns(&self) -> Result<(), ProviderError> {
        self.dns_checked
            .get_or_try_init(|| async {
                let vpc = match self.network().await?.vpc.clone() {
                    Some(v) => v,
                    None => self.default_vpc().await?,
                };
                for (attribute, key) in [
                    (VpcAttributeName::EnableDnsSupport, "enableDnsSupport"),
                    (VpcAttributeName::EnableDnsHostnames, "enableDnsHostnames"),
                ] {
                    let out = self
                        .client
                        .describe_vpc_attribute()
                        .vpc_id(&vpc)
                        .attribute(attribute.clone())
                        .send()
                        .await
                        .map_err(|e| self.err("DescribeVpcAttribute", e))?;
                    let on = match attribute {
                        VpcAttributeName::EnableDnsSupport => out.enable_dns_support(),
                        _ => out.enable_dns_hostnames(),
                    }
                    .and_then(|v| v.value())
                    .unwrap_or(false);
                    if !on {
                        return Err(ProviderError::InvalidRequest(format!(
                            "VPC {vpc} has {key} off: its instances get no DNS host names, and Hadoop (YARN, the MapReduce shuffle) finds its nodes by name; turn it on (aws ec2 modify-vpc-attribute --vpc-id {vpc} --enable-dns-hostnames '{{\"Value\":true}}', and --enable-dns-support likewise) or use another VPC"
                        )));
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The region's default VPC, where nodes launch without a configured subnet.
    pub(super) async fn default_vpc(&self) -> Result<String, ProviderError> {
        let out = self
            .client
            .describe_vpcs()
            .filters(filter("is-default", "true"))
            .send()
            .await
            .map_err(|e| self.err("DescribeVpcs", e))?;
        out.vpcs()
            .iter()
            .find_map(|v| v.vpc_id())
            .map(str::to_owned)
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "{} has no default VPC; set [ec2] subnet_ids to the subnets to launch into",
                    self.config.region
                ))
            })
    }
}
