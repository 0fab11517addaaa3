//! `stratus keys create|list|delete NAME`: a student's own EC2 key pairs, `<login>.<name>`,
//! made with the service account's credentials and recorded by exact owner (never found by a
//! name's prefix). The private half goes to its owner's client in the answer and nowhere else;
//! the state keeps the public half, which `launch-cluster --key NAME` authorises on every node
//! of the owner's cluster besides the cluster key.

use crate::cluster::provider::AnyProvider;
use crate::core::error::Error;
use crate::core::model::{Owner, ProviderKind, now_millis, rfc3339};
use crate::service::protocol::{KeyPairMade, KeyPairView, Response};
use crate::service::{Asked, Service, audit};
use crate::store::identities::KeyPairRow;

/// The most characters of a key pair's own name.
const NAME_MAX: usize = 32;
/// The most key pairs one student keeps (EC2 allows 5,000 per region for the whole account).
const PER_OWNER: usize = 10;

/// A key pair's own name: 1 to 32 of a-z, 0-9 and '-', starting with a letter or digit. No '.',
/// so `<login>.<name>` names one owner's one key (a login may hold '.', a name may not).
fn key_name(name: &str) -> Result<&str, Error> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(name)
    } else {
        Err(Error::invalid(format!(
            "{:?} is not a key pair name: 1 to {NAME_MAX} characters of a-z, 0-9 and '-', starting with a letter or digit",
            crate::core::text::shortened(name, 60)
        )))
    }
}

/// The EC2 provider inside the `AnyProvider` that `Service::ec2` returns.
fn as_ec2(provider: &AnyProvider) -> Result<&crate::cluster::provider::ec2::Ec2Provider, Error> {
    match provider {
        AnyProvider::Ec2(ec2) => Ok(ec2),
        _ => Err(Error::runtime("the EC2 provider is not EC2's")),
    }
}

fn view(row: &KeyPairRow) -> KeyPairView {
    KeyPairView {
        name: row.name.clone(),
        ec2_name: row.ec2_name.clone(),
        key_pair_id: row.key_pair_id.clone(),
        fingerprint: row.fingerprint.clone(),
        public_key: row.public_key.clone(),
        created_at: rfc3339(row.created_at),
    }
}

impl Service {
    /// The EC2 provider: key pairs are EC2's.
    async fn ec2(&self) -> Result<std::sync::Arc<AnyProvider>, Error> {
        if self.config().provider != ProviderKind::Ec2 {
            return Err(Error::invalid(
                "key pairs are EC2's, and this site runs the local provider (its clusters take only the cluster key)",
            ));
        }
        self.provider(ProviderKind::Ec2).await
    }

    /// The owner's live key pair of this name.
    fn own_key_pair(&self, owner: &Owner, name: &str) -> Result<KeyPairRow, Error> {
        let name = key_name(name)?;
        self.store()
            .key_pairs(Some(owner.as_str()))?
            .into_iter()
            .find(|k| k.name == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{owner} has no key pair {name} (`stratus keys list` shows yours)"
                ))
            })
    }

    pub(crate) async fn keys_create(
        &self,
        asked: &Asked<'_>,
        name: &str,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        let owner = &asked.caller.owner;
        let name = key_name(name)?;
        let provider = self.ec2().await?;
        let ec2 = as_ec2(&provider)?;
        let ec2_name = format!("{owner}.{name}");
        let held = self.store().key_pairs(Some(owner.as_str()))?;
        if held.len() >= PER_OWNER && !held.iter().any(|k| k.name == name) {
            return Err(Error::refused(format!(
                "{owner} has {} key pairs, the most one student keeps: `stratus keys delete NAME` one first",
                held.len()
            )));
        }
        let Some(id) =
            self.store()
                .record_key_pair(owner.as_str(), name, &ec2_name, now_millis())?
        else {
            return Err(Error::invalid(format!(
                "{owner} has a key pair {name} already (`stratus keys delete {name}` first)"
            )));
        };
        let made = match ec2
            .create_user_key_pair(&ec2_name, owner.as_str(), name, self.store().id())
            .await
        {
            Ok(m) => m,
            Err(e) => {
                self.store().key_pair_gone(id, now_millis())?;
                return Err(e.into());
            }
        };
        // The public half, from the private one (EC2 answers only the private half).
        let public = crate::cluster::ssh::parse_private_key(made.private_key.expose())
            .map(|k| crate::cluster::ssh::public_key_openssh(k.public_key()))
            .map_err(|e| {
                Error::runtime(format!(
                    "EC2's private key of {ec2_name} does not parse: {e}"
                ))
            })?;
        self.store()
            .key_pair_made(id, &made.key_pair_id, &made.fingerprint, &public)?;
        trail.detail(format!("key pair {ec2_name} ({}) made", made.key_pair_id));
        let row = self.own_key_pair(owner, name)?;
        Ok(Response::KeyPairMade(KeyPairMade {
            key: view(&row),
            private_key: made.private_key,
        }))
    }

    pub(crate) fn keys_list(&self, asked: &Asked<'_>) -> Result<Response, Error> {
        let rows = self.store().key_pairs(Some(asked.caller.owner.as_str()))?;
        Ok(Response::KeyPairs(rows.iter().map(view).collect()))
    }

    pub(crate) async fn keys_delete(
        &self,
        asked: &Asked<'_>,
        name: &str,
        trail: &mut audit::Trail,
    ) -> Result<Response, Error> {
        let owner = &asked.caller.owner;
        let row = self.own_key_pair(owner, name)?;
        let provider = self.ec2().await?;
        let ec2 = as_ec2(&provider)?;
        let was_there = ec2
            .delete_user_key_pair(&row.ec2_name, owner.as_str(), self.store().id())
            .await?;
        self.store().key_pair_gone(row.id, now_millis())?;
        trail.detail(format!(
            "key pair {} {}",
            row.ec2_name,
            if was_there {
                "deleted"
            } else {
                "was gone from EC2 already"
            }
        ));
        Ok(Response::KeyPairDeleted(view(&row)))
    }

    /// `launch-cluster --key NAME`: the owner's key pair, still in EC2 and still theirs, as its
    /// name and public half.
    pub(crate) async fn key_for_launch(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<(String, String), Error> {
        let row = self.own_key_pair(owner, name)?;
        let provider = self.ec2().await?;
        let ec2 = as_ec2(&provider)?;
        let found = ec2.user_key_pair(&row.ec2_name).await?;
        let theirs = found.as_ref().is_some_and(|f| {
            f.owner.as_deref() == Some(owner.as_str())
                && f.store.as_deref() == Some(self.store().id().as_str())
        });
        match (theirs, row.public_key) {
            (true, Some(public)) => Ok((row.name, public)),
            (false, _) => Err(Error::invalid(format!(
                "the key pair {} is no longer in EC2 as {owner}'s; `stratus keys delete {}` forgets it",
                row.ec2_name, row.name
            ))),
            (true, None) => Err(Error::invalid(format!(
                "stratus does not know the public half of {}; delete it and make another",
                row.ec2_name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pair_names_hold_no_dot_so_login_dot_name_is_one_owners() {
        for good in ["laptop", "k1", "my-key"] {
            assert_eq!(key_name(good).unwrap(), good);
        }
        for bad in ["", "a.b", "-x", "UPPER", "sp ace", &"x".repeat(33), "a/b"] {
            let e = key_name(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
