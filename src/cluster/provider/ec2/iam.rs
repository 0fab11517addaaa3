//! The students' IAM identities (issue 16), with the service account's credentials: their
//! users (under the class's path, tagged with the owner and the store id), their membership of
//! the students' group, and their access keys. SDK types stay here; what leaves is the module's
//! own (`IamUser`, `KeyInfo`, `NewKey`), and a new key's secret leaves only as a `Secret`,
//! which never prints.
//!
//! IAM is eventually consistent: a user just made can be `NoSuchEntity` to the next call for a
//! moment, and a new key takes seconds before AWS accepts it. The calls that follow a creation
//! retry `NoSuchEntity` for a while (`settle`); the key check waits for the key
//! (`key_works`).

use std::time::{Duration, Instant};

use aws_sdk_iam::error::ProvideErrorMetadata;

use super::client;
use super::error::{Context, classify};
use crate::cluster::provider::ProviderError;
use crate::config::{Ec2Config, Trust};
use crate::core::model::{TAG_OWNER, TAG_STORE};
use crate::core::secret::Secret;

/// How long a call after a creation retries IAM's `NoSuchEntity`, and how long a new key may
/// take before AWS accepts it (AWS documents "usually seconds").
const SETTLE: Duration = Duration::from_secs(60);
const SETTLE_STEP: Duration = Duration::from_millis(500);

/// The IAM client of one install.
pub struct Iam {
    client: aws_sdk_iam::Client,
    ctx: Context,
}

/// A student's IAM user as stratus reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamUser {
    pub name: String,
    pub path: String,
    /// Its `stratus:owner` and `stratus:store` tags.
    pub owner: Option<String>,
    pub store: Option<String>,
}

/// An access key's id, age and status: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub created: Option<jiff::Timestamp>,
    pub active: bool,
}

/// A key just created: the one moment its secret exists outside IAM.
#[derive(Debug)]
pub struct NewKey {
    pub id: String,
    pub secret: Secret,
}

fn code_of<E: ProvideErrorMetadata>(
    e: &aws_sdk_iam::error::SdkError<E, aws_sdk_iam::config::http::HttpResponse>,
) -> Option<String> {
    match e {
        aws_sdk_iam::error::SdkError::ServiceError(se) => se.err().code().map(str::to_owned),
        _ => None,
    }
}

fn time_of(t: Option<&aws_sdk_iam::primitives::DateTime>) -> Option<jiff::Timestamp> {
    t.and_then(|t| jiff::Timestamp::from_second(t.secs()).ok())
}

/// Calls `f` until it is not `NoSuchEntity`, for at most `SETTLE`: a user or group made a moment
/// ago may not be known to every IAM server yet.
async fn settle<T, E, F, Fut>(
    mut f: F,
) -> Result<T, aws_sdk_iam::error::SdkError<E, aws_sdk_iam::config::http::HttpResponse>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<
                T,
                aws_sdk_iam::error::SdkError<E, aws_sdk_iam::config::http::HttpResponse>,
            >,
        >,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        match f().await {
            Err(e)
                if code_of(&e).as_deref() == Some("NoSuchEntity") && Instant::now() < deadline =>
            {
                tokio::time::sleep(SETTLE_STEP).await;
            }
            r => return r,
        }
    }
}

impl Iam {
    pub fn new(config: &Ec2Config, trust: &Trust) -> Result<Self, ProviderError> {
        let (client, ctx) = client::build_iam(config, trust)?;
        Ok(Self { client, ctx })
    }

    /// The user of this name, with its tags; `None` when IAM has no such user.
    pub async fn user(&self, name: &str) -> Result<Option<IamUser>, ProviderError> {
        let got = match self.client.get_user().user_name(name).send().await {
            Ok(o) => o,
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(classify("GetUser", &self.ctx, e)),
        };
        let Some(user) = got.user() else {
            return Ok(None);
        };
        // GetUser carries the user's tags.
        let tags: Vec<(String, String)> = user
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        let tag = |k: &str| {
            tags.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        Ok(Some(IamUser {
            name: user.user_name().to_owned(),
            path: user.path().to_owned(),
            owner: tag(TAG_OWNER),
            store: tag(TAG_STORE),
        }))
    }

    /// `user`, for a user just made: IAM may not show it to every call at once, so a missing
    /// user is looked for again for a while.
    pub async fn user_made(&self, name: &str) -> Result<Option<IamUser>, ProviderError> {
        let deadline = Instant::now() + SETTLE;
        loop {
            match self.user(name).await? {
                None if Instant::now() < deadline => tokio::time::sleep(SETTLE_STEP).await,
                found => return Ok(found),
            }
        }
    }

    /// Makes the user under `path`, tagged with its owner and the store; an existing user of
    /// the name is left as it is (the caller checks its tags).
    pub async fn create_user(
        &self,
        name: &str,
        path: &str,
        owner: &str,
        store: &str,
    ) -> Result<bool, ProviderError> {
        let tag = |k: &str, v: &str| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProviderError::Other(format!("cannot build an IAM tag: {e}")))
        };
        let r = self
            .client
            .create_user()
            .user_name(name)
            .path(path)
            .tags(tag(TAG_OWNER, owner)?)
            .tags(tag(TAG_STORE, store)?)
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if code_of(&e).as_deref() == Some("EntityAlreadyExists") => Ok(false),
            Err(e) => Err(classify("CreateUser", &self.ctx, e)),
        }
    }

    /// The users under `path`, with their tags.
    pub async fn users(&self, path: &str) -> Result<Vec<IamUser>, ProviderError> {
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_users()
                .path_prefix(path)
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| classify("ListUsers", &self.ctx, e))?;
            names.extend(
                page.users()
                    .iter()
                    .filter(|u| u.path() == path)
                    .map(|u| u.user_name().to_owned()),
            );
            match (page.is_truncated(), page.marker()) {
                (true, Some(m)) => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        let mut out = Vec::new();
        for name in names {
            if let Some(u) = self.user(&name).await? {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// Makes the group under `path` if it does not exist, with `policy` as its inline policy
    /// `policy_name`; an existing group is left as it is. Whether it was made.
    pub async fn ensure_group(
        &self,
        group: &str,
        path: &str,
        policy_name: &str,
        policy: &str,
    ) -> Result<bool, ProviderError> {
        match self.client.get_group().group_name(group).send().await {
            Ok(got) => {
                let theirs = got.group().map(|g| g.path().to_owned());
                if theirs.as_deref() != Some(path) {
                    return Err(ProviderError::InvalidRequest(format!(
                        "the IAM group {group} exists under the path {}, not {path}: it is not the class's, and stratus leaves it alone ([identities] group names another)",
                        theirs.as_deref().unwrap_or("?")
                    )));
                }
                return Ok(false);
            }
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => {}
            Err(e) => return Err(classify("GetGroup", &self.ctx, e)),
        }
        match self
            .client
            .create_group()
            .group_name(group)
            .path(path)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if code_of(&e).as_deref() == Some("EntityAlreadyExists") => return Ok(false),
            Err(e) => return Err(classify("CreateGroup", &self.ctx, e)),
        }
        self.put_group_policy(group, policy_name, policy).await?;
        Ok(true)
    }

    /// The group's inline policy of this name, as JSON; `None` when it has none.
    pub async fn group_policy(
        &self,
        group: &str,
        policy_name: &str,
    ) -> Result<Option<serde_json::Value>, ProviderError> {
        let got = match self
            .client
            .get_group_policy()
            .group_name(group)
            .policy_name(policy_name)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(classify("GetGroupPolicy", &self.ctx, e)),
        };
        // IAM answers the document URL-encoded.
        let doc = got.policy_document();
        let decoded = percent_decode(doc);
        Ok(serde_json::from_str(&decoded)
            .or_else(|_| serde_json::from_str(doc))
            .ok())
    }

    pub async fn put_group_policy(
        &self,
        group: &str,
        policy_name: &str,
        policy: &str,
    ) -> Result<(), ProviderError> {
        settle(|| {
            self.client
                .put_group_policy()
                .group_name(group)
                .policy_name(policy_name)
                .policy_document(policy)
                .send()
        })
        .await
        .map_err(|e| classify("PutGroupPolicy", &self.ctx, e))?;
        Ok(())
    }

    /// The groups the user is in.
    pub async fn groups_of(&self, user: &str) -> Result<Vec<String>, ProviderError> {
        let got = settle(|| self.client.list_groups_for_user().user_name(user).send())
            .await
            .map_err(|e| classify("ListGroupsForUser", &self.ctx, e))?;
        Ok(got
            .groups()
            .iter()
            .map(|g| g.group_name().to_owned())
            .collect())
    }

    pub async fn add_to_group(&self, user: &str, group: &str) -> Result<(), ProviderError> {
        settle(|| {
            self.client
                .add_user_to_group()
                .user_name(user)
                .group_name(group)
                .send()
        })
        .await
        .map_err(|e| classify("AddUserToGroup", &self.ctx, e))?;
        Ok(())
    }

    /// Takes the user out of the group (nothing when it is not in it).
    pub async fn remove_from_group(&self, user: &str, group: &str) -> Result<(), ProviderError> {
        match self
            .client
            .remove_user_from_group()
            .user_name(user)
            .group_name(group)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => Ok(()),
            Err(e) => Err(classify("RemoveUserFromGroup", &self.ctx, e)),
        }
    }

    /// The user's access keys, oldest first.
    pub async fn keys(&self, user: &str) -> Result<Vec<KeyInfo>, ProviderError> {
        let got = settle(|| self.client.list_access_keys().user_name(user).send())
            .await
            .map_err(|e| classify("ListAccessKeys", &self.ctx, e))?;
        let mut keys: Vec<KeyInfo> = got
            .access_key_metadata()
            .iter()
            .filter_map(|k| {
                Some(KeyInfo {
                    id: k.access_key_id()?.to_owned(),
                    created: time_of(k.create_date()),
                    active: k.status() == Some(&aws_sdk_iam::types::StatusType::Active),
                })
            })
            .collect();
        keys.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// A new access key for the user. IAM allows two per user: the caller makes room first.
    pub async fn create_key(&self, user: &str) -> Result<NewKey, ProviderError> {
        let got = settle(|| self.client.create_access_key().user_name(user).send())
            .await
            .map_err(|e| classify("CreateAccessKey", &self.ctx, e))?;
        let key = got.access_key().ok_or_else(|| ProviderError::Api {
            op: "CreateAccessKey".into(),
            message: format!("{} answered without a key", self.ctx.endpoint),
        })?;
        Ok(NewKey {
            id: key.access_key_id().to_owned(),
            secret: Secret::new(key.secret_access_key()),
        })
    }

    /// Deletes one of the user's keys (nothing when it is gone already).
    pub async fn delete_key(&self, user: &str, id: &str) -> Result<(), ProviderError> {
        match self
            .client
            .delete_access_key()
            .user_name(user)
            .access_key_id(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => Ok(()),
            Err(e) => Err(classify("DeleteAccessKey", &self.ctx, e)),
        }
    }

    /// Deletes the user (nothing when it is gone already); its keys and groups must be gone.
    pub async fn delete_user(&self, user: &str) -> Result<(), ProviderError> {
        match self.client.delete_user().user_name(user).send().await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => Ok(()),
            Err(e) => Err(classify("DeleteUser", &self.ctx, e)),
        }
    }
}

/// Whether EC2 accepts `id` and `secret` (one `DescribeRegions` in the site's region, which the
/// students' group policy allows), waiting up to `SETTLE` for IAM to make a new key known:
/// `Ok(())` once it does, else the last refusal.
pub async fn key_works(
    config: &Ec2Config,
    trust: &Trust,
    id: &str,
    secret: &Secret,
) -> Result<(), ProviderError> {
    let (ec2, ctx) = client::with_key(config, trust, id, secret.expose())?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = ec2
            .describe_regions()
            .region_names(&config.region)
            .send()
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) => {
                let err = classify("DescribeRegions", &ctx, e);
                let unknown_yet = matches!(err, ProviderError::Auth(_));
                if !unknown_yet || Instant::now() >= deadline {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Decodes `%XX` escapes (IAM's policy documents come URL-encoded); anything else is kept.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_documents_are_url_decoded() {
        assert_eq!(
            percent_decode("%7B%22Version%22%3A%20%222012-10-17%22%7D"),
            r#"{"Version": "2012-10-17"}"#
        );
        assert_eq!(percent_decode("{\"a\":1}"), "{\"a\":1}");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
