//! A cluster's security group rules as a set: what the site config and profile ask for, what the
//! group holds, and the difference, so `prepare` converges on exactly the configured rules
//! (a leftover group of an earlier cluster keeps no stale opening).
//!
//! EC2 groups rules as IpPermissions (protocol, ports, several sources); here each rule is one
//! (protocol, ports, source) atom, which makes the comparison exact.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{IpPermission, IpRange, Ipv6Range, PrefixListId, UserIdGroupPair};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Source {
    Group(String),
    Cidr(String),
    Cidr6(String),
    PrefixList(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Rule {
    /// `-1` (all), `tcp`, `udp`, … as EC2 names them.
    pub protocol: String,
    pub ports: Option<(i32, i32)>,
    pub source: Source,
}

/// All traffic among the group's members; SSH over TCP from each client network; and the
/// profile's extra ports (web UIs) only from the site's `ui_cidrs`, which are empty by default:
/// Hadoop's web UIs and REST APIs accept jobs and files from anyone who reaches them, so students
/// reach them through `stratus proxy` instead.
pub(super) fn desired(
    group_id: &str,
    ssh_port: u16,
    ui_ports: &[u16],
    client_cidrs: &[String],
    ui_cidrs: &[String],
) -> BTreeSet<Rule> {
    let mut set = BTreeSet::new();
    set.insert(Rule {
        protocol: "-1".into(),
        ports: None,
        source: Source::Group(group_id.to_owned()),
    });
    let tcp = |port: u16, cidr: &String| Rule {
        protocol: "tcp".into(),
        ports: Some((port as i32, port as i32)),
        source: Source::Cidr(cidr.clone()),
    };
    for cidr in client_cidrs {
        set.insert(tcp(ssh_port, cidr));
    }
    for &port in ui_ports {
        for cidr in ui_cidrs {
            set.insert(tcp(port, cidr));
        }
    }
    set
}

/// The rules a group holds.
pub(super) fn from_permissions(perms: &[IpPermission]) -> BTreeSet<Rule> {
    let mut set = BTreeSet::new();
    for p in perms {
        let protocol = match p.ip_protocol() {
            Some("6") => "tcp".to_owned(),
            Some("17") => "udp".to_owned(),
            Some(other) => other.to_owned(),
            None => "-1".to_owned(),
        };
        let ports = if protocol == "-1" {
            None
        } else {
            match (p.from_port(), p.to_port()) {
                (Some(f), Some(t)) => Some((f, t)),
                _ => None,
            }
        };
        let mut add = |source| {
            set.insert(Rule {
                protocol: protocol.clone(),
                ports,
                source,
            });
        };
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                add(Source::Group(id.to_owned()));
            }
        }
        for r in p.ip_ranges() {
            if let Some(c) = r.cidr_ip() {
                add(Source::Cidr(c.to_owned()));
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(c) = r.cidr_ipv6() {
                add(Source::Cidr6(c.to_owned()));
            }
        }
        for r in p.prefix_list_ids() {
            if let Some(id) = r.prefix_list_id() {
                add(Source::PrefixList(id.to_owned()));
            }
        }
    }
    set
}

/// (to add, to remove).
pub(super) fn diff(desired: &BTreeSet<Rule>, existing: &BTreeSet<Rule>) -> (Vec<Rule>, Vec<Rule>) {
    (
        desired.difference(existing).cloned().collect(),
        existing.difference(desired).cloned().collect(),
    )
}

/// The rules as IpPermissions, one per rule, with a description saying why each exists.
pub(super) fn permissions(rules: &[Rule], ssh_port: u16) -> Vec<IpPermission> {
    rules
        .iter()
        .map(|r| {
            let why = match (&r.source, r.ports) {
                (Source::Group(_), _) => "stratus: traffic among the cluster's nodes",
                (_, Some((p, _))) if p == ssh_port as i32 => "stratus: SSH from a client network",
                _ => "stratus: web UI from a client network",
            };
            let mut b = IpPermission::builder().ip_protocol(&r.protocol);
            if let Some((from, to)) = r.ports {
                b = b.from_port(from).to_port(to);
            }
            b = match &r.source {
                Source::Group(id) => b.user_id_group_pairs(
                    UserIdGroupPair::builder()
                        .group_id(id)
                        .description(why)
                        .build(),
                ),
                Source::Cidr(c) => {
                    b.ip_ranges(IpRange::builder().cidr_ip(c).description(why).build())
                }
                Source::Cidr6(c) => b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
                Source::PrefixList(id) => {
                    b.prefix_list_ids(PrefixListId::builder().prefix_list_id(id).build())
                }
            };
            b.build()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_on_the_configured_rules() {
        let cidrs = vec!["203.0.113.0/24".to_owned(), "198.51.100.7/32".to_owned()];
        let want = desired("sg-1", 22, &[9870], &cidrs, &[]);
        // The web UI port is not opened to the client networks: no ui_cidrs, no rule.
        assert_eq!(want.len(), 1 + 2);
        assert!(want.iter().all(|r| r.ports != Some((9870, 9870))));
        let with_ui = desired("sg-1", 22, &[9870], &cidrs, &["10.1.0.0/16".to_owned()]);
        assert_eq!(with_ui.len(), 1 + 2 + 1);
        let want = desired("sg-1", 22, &[], &cidrs, &[]);
        // A group holding the self rule, one wanted rule and one stale opening.
        let held = from_permissions(&permissions(
            &[
                Rule {
                    protocol: "-1".into(),
                    ports: None,
                    source: Source::Group("sg-1".into()),
                },
                Rule {
                    protocol: "tcp".into(),
                    ports: Some((22, 22)),
                    source: Source::Cidr("203.0.113.0/24".into()),
                },
                Rule {
                    protocol: "tcp".into(),
                    ports: Some((22, 22)),
                    source: Source::Cidr("0.0.0.0/0".into()),
                },
            ],
            22,
        ));
        let (add, remove) = diff(&want, &held);
        assert_eq!(add.len(), 1);
        assert_eq!(remove.len(), 1);
        assert_eq!(remove[0].source, Source::Cidr("0.0.0.0/0".into()));
        assert!(
            add.iter()
                .all(|r| r.source != Source::Cidr("0.0.0.0/0".into()))
        );
    }

    #[test]
    fn all_traffic_has_no_ports() {
        let p = IpPermission::builder()
            .ip_protocol("-1")
            .from_port(-1)
            .to_port(-1)
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-1").build())
            .build();
        let rules = from_permissions(&[p]);
        assert!(rules.contains(&Rule {
            protocol: "-1".into(),
            ports: None,
            source: Source::Group("sg-1".into())
        }));
    }
}
