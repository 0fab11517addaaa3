//! `admin preflight`: a class's launches checked before the lab, by the service (which holds
//! the credentials the launches will use). The EC2 provider checks the account
//! (`cluster::provider::ec2::preflight`); here the request becomes its plan (how big each
//! student's cluster is, how long it may live) and the class policy's rules are applied to it,
//! as `admission` applies them to a launch: the last student's launch, with every other
//! student's cluster running, must be admitted.
//!
//! The cluster of each student: a master and `--workers` workers; without it the largest the
//! policy lets a student launch (`[default] max_nodes`, master included), else
//! `DEFAULT_WORKERS`; never more than the profile's `max_workers`.

use std::convert::Infallible;

use super::protocol::{PreflightReport, Response};
use super::{Asked, Service};
use crate::cluster::provider::AnyProvider;
use crate::cluster::provider::ec2::preflight::{Check, Plan, Verdict};
use crate::config::ProviderKind;
use crate::config::profile::Profile;
use crate::core::error::Error;
use crate::core::model::Millis;
use crate::core::money::{Micros, MilliUnits, dollars_text, units_text};
use crate::policy::admission::{InUse, Rules};
use crate::policy::{Limits, Policy};

/// Workers per cluster when neither `--workers` nor the policy's `max_nodes` says.
pub const DEFAULT_WORKERS: u32 = 2;

/// Who the policy's limits are resolved for: a student of no group of their own, whose limits
/// are `[default]`'s.
const A_STUDENT: &str = "each student";

/// What is in use when the last of `others + 1` students launches: the others' clusters, each
/// of `units`, and nothing of the student's own.
struct OthersRunning {
    others: u32,
    units: MilliUnits,
}

impl InUse for OthersRunning {
    type Error = Infallible;
    fn live_clusters(&mut self) -> Result<u32, Infallible> {
        Ok(0)
    }
    fn user_units(&mut self) -> Result<MilliUnits, Infallible> {
        Ok(0)
    }
    fn class_units(&mut self) -> Result<MilliUnits, Infallible> {
        Ok(self.units * MilliUnits::from(self.others))
    }
    fn spending(&mut self) -> Result<(Micros, Micros), Infallible> {
        Ok((0, 0))
    }
}

/// How many workers each cluster has, and why.
fn workers(
    asked: Option<u32>,
    limits: Option<&Limits>,
    profile: &Profile,
) -> Result<(u32, String), Error> {
    if let Some(w) = asked {
        if w == 0 || w > profile.max_workers {
            return Err(Error::invalid(format!(
                "--workers must be 1 to {} (profile {}'s max_workers)",
                profile.max_workers, profile.name
            )));
        }
        return Ok((w, "--workers".into()));
    }
    if let Some(max) = limits.and_then(|l| l.max_nodes)
        && max >= 2
    {
        let w = (max - 1).min(profile.max_workers);
        return Ok((w, format!("the policy's max_nodes = {max}")));
    }
    Ok((
        DEFAULT_WORKERS.min(profile.max_workers),
        "the default; --workers sets it".into(),
    ))
}

/// The class policy's verdict on the plan: each student's launch admitted by `[default]`, the
/// last one beside every other student's running cluster.
fn policy_check(policy: &Policy, config: &crate::config::SiteConfig, plan: &Plan<'_>) -> Check {
    let rules = Rules::new(policy, config, A_STUDENT, &[]);
    let mut alone = OthersRunning {
        others: 0,
        units: 0,
    };
    let Ok(first) = rules.admit_launch(plan.profile, plan.workers, &mut alone);
    let ask = match first {
        Ok(ask) => ask,
        Err(refusal) => {
            return Check::new(
                "policy",
                Verdict::Fail,
                format!("every student's launch: {refusal}"),
            );
        }
    };
    let mut beside = OthersRunning {
        others: plan.students - 1,
        units: ask.units,
    };
    let Ok(last) = rules.admit_launch(plan.profile, plan.workers, &mut beside);
    let cost = if ask.max_cost > 0 {
        format!(", up to {} over its lifetime", dollars_text(ask.max_cost))
    } else {
        String::new()
    };
    match last {
        Ok(_) => Check::new(
            "policy",
            Verdict::Pass,
            format!(
                "each student's cluster is admitted by [default] ({} units: {}{cost}); {} students' use {} units{}",
                units_text(ask.units),
                ask.breakdown,
                plan.students,
                units_text(ask.units * MilliUnits::from(plan.students)),
                match policy.class_max_units {
                    Some(m) => format!(" of the class's {}", units_text(m)),
                    None => String::new(),
                }
            ),
        ),
        Err(refusal) => Check::new(
            "policy",
            Verdict::Fail,
            format!(
                "the launch of student {} of {}, with the others' clusters running: {refusal}",
                plan.students, plan.students
            ),
        ),
    }
}

impl Service {
    /// `admin preflight` (instructors, the install's own user): see the module's comment.
    pub(super) async fn preflight(
        &self,
        asked: &Asked<'_>,
        profile: &str,
        students: u32,
        workers_asked: Option<u32>,
    ) -> Result<Response, Error> {
        self.own_or_instructor(asked, "only instructors may run the preflight")?;
        let config = self.config();
        if config.provider != ProviderKind::Ec2 || config.ec2.is_none() {
            return Err(Error::invalid(
                "admin preflight checks an EC2 account: the site config needs provider = \"ec2\" and an [ec2] table",
            ));
        }
        if students == 0 {
            return Err(Error::invalid("--students must be at least 1"));
        }
        let profile = self.profiles()?.resolve(profile)?;
        if !profile.supports(ProviderKind::Ec2) {
            return Err(Error::invalid(format!(
                "profile {} is not for the ec2 provider",
                profile.name
            )));
        }
        let (policy, policy_problem) = match asked.policy.for_launch(config.mode) {
            Ok(p) => (p, None),
            Err(e) => (None, Some(crate::core::error::one_line(&e))),
        };
        let limits = policy.map(|p| p.limits(A_STUDENT, &[]));
        let (workers, workers_from) = workers(workers_asked, limits.as_ref(), &profile)?;
        let lifetime: Option<Millis> = match &limits {
            Some(l) => l.first_lifetime(&profile),
            None => Limits::default().first_lifetime(&profile),
        };
        let provider = self.provider(ProviderKind::Ec2).await?;
        let AnyProvider::Ec2(ec2) = provider.as_ref() else {
            return Err(Error::runtime("the EC2 provider is not EC2's"));
        };
        let plan = Plan {
            site: config,
            profile: &profile,
            students,
            workers,
            lifetime,
            store: self.store().id(),
        };
        let mut checks = ec2.preflight(&plan).await;
        checks.push(match (policy, policy_problem) {
            (_, Some(problem)) => Check::new("policy", Verdict::Fail, problem),
            (Some(p), None) => policy_check(p, config, &plan),
            (None, None) => Check::new(
                "policy",
                Verdict::Pass,
                "no class policy: nothing limits a launch",
            ),
        });
        let ok = checks.iter().all(|c| c.verdict != Verdict::Fail);
        Ok(Response::Preflight(PreflightReport {
            profile: profile.name.clone(),
            students,
            workers,
            workers_from,
            nodes_per_cluster: 1 + workers,
            checks,
            ok,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::admission::tests::{policy, profile};

    #[test]
    fn workers_come_from_the_flag_then_max_nodes_then_the_default() {
        let p = profile();
        assert_eq!(workers(Some(3), None, &p).unwrap().0, 3);
        let e = workers(Some(9), None, &p).unwrap_err();
        assert!(e.to_string().contains("1 to 4"), "{e}");
        assert_eq!(e.exit_code(), crate::core::error::exit::BAD_INPUT);
        let limits = Limits {
            max_nodes: Some(3),
            ..Default::default()
        };
        assert_eq!(
            workers(None, Some(&limits), &p).unwrap(),
            (2, "the policy's max_nodes = 3".to_owned())
        );
        let big = Limits {
            max_nodes: Some(50),
            ..Default::default()
        };
        assert_eq!(workers(None, Some(&big), &p).unwrap().0, p.max_workers);
        assert_eq!(workers(None, None, &p).unwrap().0, DEFAULT_WORKERS);
    }

    #[test]
    fn the_last_student_must_fit_beside_the_others() {
        let site = crate::config::SiteConfig::default();
        let p = profile();
        let store = crate::core::model::StoreId::from_stored("st-1".into());
        let plan = |students| Plan {
            site: &site,
            profile: &p,
            students,
            workers: 2,
            lifetime: None,
            store: &store,
        };
        let pol = policy("[class]\nmax_units = 10\n[units]\n\"m5.large\" = 1\n");
        // 3 units a cluster: 3 students fit in 10, 4 do not.
        let c = policy_check(&pol, &site, &plan(3));
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        assert!(
            c.detail
                .contains("3 students' use 9 units of the class's 10"),
            "{c:?}"
        );
        let c = policy_check(&pol, &site, &plan(4));
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("student 4 of 4"), "{c:?}");
        assert!(c.detail.contains("the class's max_units is 10"), "{c:?}");
        // A type the policy does not price in units refuses every launch.
        let none = policy("[units]\n\"t3.micro\" = 1\n");
        let c = policy_check(&none, &site, &plan(1));
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("m5.large"), "{c:?}");
    }
}
