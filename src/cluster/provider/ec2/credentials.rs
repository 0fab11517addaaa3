//! Temporary credentials and their expiry.
//!
//! A site may run the service account on temporary keys (an `aws_session_token`, from STS,
//! SSO, or a SAML or Okta login), which expire silently: the cron snapshot and the reaper would
//! then stop working with nobody noticing. So the expiry travels with the keys, in the
//! credentials file that holds them: `aws_credential_expiration = 2026-11-01T12:00:00Z` in the
//! profile's section (the name of the variable `aws configure export-credentials` prints;
//! `x_security_token_expires`, which SAML and Okta tools write, is read too). It is not a key of
//! the site config: whatever refreshes the token rewrites the credentials file, and an expiry
//! kept elsewhere would go stale at the first refresh. A user's own command may give it as
//! `AWS_CREDENTIAL_EXPIRATION` beside `AWS_SESSION_TOKEN`.
//!
//! Within a day of the expiry, `admin doctor` and every cron run (`accounting snapshot`,
//! `accounting reap`) warn; once expired, every EC2 command fails at once with a sentence saying
//! so, before it calls anything. Temporary keys without a known expiry are warned about too.

use std::time::{Duration, SystemTime};

use aws_sdk_ec2::config::Credentials;

use crate::cluster::provider::AnyProvider;
use crate::config::{Ec2Config, Trust};

/// How long before the expiry the warnings start.
pub const WARN_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// What the credentials in use are.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Where they come from, for messages: `the credentials file /etc/… (profile default)`.
    pub described: String,
    /// They carry a session token: they expire.
    pub temporary: bool,
    pub expires_at: Option<jiff::Timestamp>,
    /// The key (or variable) that gives the expiry where they come from.
    pub expiry_key: &'static str,
}

impl Facts {
    pub(super) fn of(
        creds: &Credentials,
        expires_at: Option<jiff::Timestamp>,
        described: String,
        expiry_key: &'static str,
    ) -> Self {
        Self {
            described,
            temporary: creds.session_token().is_some(),
            expires_at,
            expiry_key,
        }
    }

    /// Why they can no longer be used, once expired.
    pub fn expired(&self, now: jiff::Timestamp) -> Option<String> {
        let at = self.expires_at?;
        (at <= now).then(|| {
            format!(
                "the AWS credentials in {} expired at {at} ({} ago); put fresh keys there, with their {}",
                self.described,
                span(now.duration_since(at)),
                self.expiry_key
            )
        })
    }

    /// The warning to give now, if any: they expire within a day, or they are temporary and
    /// nobody said until when.
    pub fn warning(&self, now: jiff::Timestamp) -> Option<String> {
        match self.expires_at {
            Some(at) if at > now => {
                let left = at.duration_since(now);
                (left.unsigned_abs() <= WARN_BEFORE).then(|| {
                    format!(
                        "the AWS credentials in {} expire at {at}, in {}: after that every EC2 command fails, the accounting snapshot and the reaper included; put fresh keys there, with their {}",
                        self.described,
                        span(left),
                        self.expiry_key
                    )
                })
            }
            Some(_) => self.expired(now),
            None if self.temporary => Some(format!(
                "the AWS credentials in {} are temporary (they have a session token) but say nothing of when they expire; add {} so that stratus warns a day before",
                self.described, self.expiry_key
            )),
            None => None,
        }
    }
}

/// `2h 5m`, `3d 4h`: a span as a person reads it.
fn span(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, h) => format!("{h}h {minutes}m"),
        (d, h) => format!("{d}d {h}h"),
    }
}

/// Parses an expiry as RFC 3339 (`2026-11-01T12:00:00Z`, an offset, or fractional seconds).
pub fn parse_expiry(text: &str) -> Result<jiff::Timestamp, String> {
    text.trim()
        .trim_matches('"')
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("{text:?} is not a time like 2026-11-01T12:00:00Z ({e})"))
}

pub(super) fn system_time(t: jiff::Timestamp) -> SystemTime {
    let ms = t.as_millisecond();
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// What `admin doctor` says of the `[ec2]` credentials: a problem (they have expired), or a
/// warning (they expire within a day, or without a known expiry). Credentials it cannot read
/// yet (a new install's empty file) are not its matter here.
pub fn doctor(config: &Ec2Config, trust: &Trust) -> Result<Option<String>, String> {
    let facts = match super::client::credentials(config, trust) {
        Ok((_, facts)) => facts,
        Err(e) => {
            tracing::debug!("cannot read the credentials to check their expiry: {e}");
            return Ok(None);
        }
    };
    let now = jiff::Timestamp::now();
    if let Some(expired) = facts.expired(now) {
        return Err(expired);
    }
    Ok(facts.warning(now))
}

/// The warning a cron run gives about the credentials of the provider it uses, if any.
pub fn notice(provider: &AnyProvider) -> Option<String> {
    match provider {
        AnyProvider::Ec2(p) => p.credentials.warning(jiff::Timestamp::now()),
        AnyProvider::Local(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(token: bool, expires: Option<&str>) -> Facts {
        let creds = Credentials::new("A", "s", token.then(|| "t".to_owned()), None, "test");
        Facts::of(
            &creds,
            expires.map(|e| parse_expiry(e).unwrap()),
            "the credentials file /c (profile default)".into(),
            "aws_credential_expiration",
        )
    }

    #[test]
    fn a_day_ahead_they_warn_and_once_expired_they_fail() {
        let now: jiff::Timestamp = "2026-11-01T12:00:00Z".parse().unwrap();
        let f = facts(true, Some("2026-11-01T17:30:00Z"));
        let w = f.warning(now).unwrap();
        assert!(
            w.contains("expire at 2026-11-01T17:30:00Z, in 5h 30m"),
            "{w}"
        );
        assert!(w.contains("aws_credential_expiration"), "{w}");
        assert!(f.expired(now).is_none());
        // More than a day ahead: nothing to say.
        assert!(
            facts(true, Some("2026-11-03T12:00:00Z"))
                .warning(now)
                .is_none()
        );
        let f = facts(true, Some("2026-10-30T11:00:00Z"));
        let e = f.expired(now).unwrap();
        assert!(
            e.contains("expired at 2026-10-30T11:00:00Z (2d 1h ago)"),
            "{e}"
        );
        assert!(e.contains("/c (profile default)"), "{e}");
        // Temporary without an expiry: said; static keys: nothing.
        assert!(
            facts(true, None)
                .warning(now)
                .unwrap()
                .contains("session token")
        );
        assert!(facts(false, None).warning(now).is_none());
        assert!(parse_expiry("tomorrow").is_err());
        assert_eq!(parse_expiry("\"2026-11-01T13:00:00+01:00\"").unwrap(), now);
    }
}
