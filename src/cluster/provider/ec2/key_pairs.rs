//! The students' own EC2 key pairs (`stratus keys`), made with the service account's
//! credentials: named `<owner>.<name>`, tagged with the owner, the store and the key's name. EC2
//! makes the key (ed25519) and hands its private half over once, to this call: it leaves as a
//! `Secret` for its owner's file, and stratus keeps only the public half. A key pair is only
//! ever touched when its tags say it is this store's and the owner's: a name is never proof.

use aws_sdk_ec2::types::{KeyType, ResourceType};

use super::{Ec2Provider, filter, tag_spec, tag_value};
use crate::cluster::provider::ProviderError;
use crate::core::model::{StoreId, TAG_OWNER, TAG_STORE};
use crate::core::secret::Secret;

/// The tag that names a student's key pair by its own name (`keys create NAME`).
pub const TAG_KEY: &str = "stratus:key";

/// A key pair just made.
#[derive(Debug)]
pub struct MadeKeyPair {
    pub key_pair_id: String,
    pub fingerprint: String,
    /// The private half (OpenSSH format), for its owner alone.
    pub private_key: Secret,
}

/// A student's key pair as EC2 holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundKeyPair {
    pub key_pair_id: Option<String>,
    pub owner: Option<String>,
    pub store: Option<String>,
}

impl Ec2Provider {
    /// Makes the key pair `ec2_name` for `owner`, tagged as theirs.
    pub async fn create_user_key_pair(
        &self,
        ec2_name: &str,
        owner: &str,
        name: &str,
        store: &StoreId,
    ) -> Result<MadeKeyPair, ProviderError> {
        let tags = vec![
            (TAG_OWNER.to_owned(), owner.to_owned()),
            (TAG_STORE.to_owned(), store.as_str().to_owned()),
            (TAG_KEY.to_owned(), name.to_owned()),
        ];
        let out = self
            .client
            .create_key_pair()
            .key_name(ec2_name)
            .key_type(KeyType::Ed25519)
            .tag_specifications(tag_spec(ResourceType::KeyPair, &tags))
            .send()
            .await
            .map_err(|e| self.err("CreateKeyPair", e))?;
        let missing = |what: &str| ProviderError::Api {
            op: "CreateKeyPair".into(),
            message: format!("{} answered without the key's {what}", self.ctx.endpoint),
        };
        Ok(MadeKeyPair {
            key_pair_id: out.key_pair_id().ok_or_else(|| missing("id"))?.to_owned(),
            fingerprint: out
                .key_fingerprint()
                .ok_or_else(|| missing("fingerprint"))?
                .to_owned(),
            private_key: Secret::new(out.key_material().ok_or_else(|| missing("material"))?),
        })
    }

    /// The key pair of this exact name, if EC2 has it.
    pub async fn user_key_pair(
        &self,
        ec2_name: &str,
    ) -> Result<Option<FoundKeyPair>, ProviderError> {
        let out = self
            .client
            .describe_key_pairs()
            .filters(filter("key-name", ec2_name))
            .send()
            .await
            .map_err(|e| self.err("DescribeKeyPairs", e))?;
        Ok(out
            .key_pairs()
            .iter()
            .find(|k| k.key_name() == Some(ec2_name))
            .map(|k| FoundKeyPair {
                key_pair_id: k.key_pair_id().map(str::to_owned),
                owner: tag_value(k.tags(), TAG_OWNER).map(str::to_owned),
                store: tag_value(k.tags(), TAG_STORE).map(str::to_owned),
            }))
    }

    /// Deletes the key pair `ec2_name` if EC2 has it and its tags say it is `owner`'s of this
    /// store; whether it was there.
    pub async fn delete_user_key_pair(
        &self,
        ec2_name: &str,
        owner: &str,
        store: &StoreId,
    ) -> Result<bool, ProviderError> {
        let Some(found) = self.user_key_pair(ec2_name).await? else {
            return Ok(false);
        };
        if found.owner.as_deref() != Some(owner) || found.store.as_deref() != Some(store.as_str()) {
            return Err(ProviderError::InvalidRequest(format!(
                "the EC2 key pair {ec2_name} is not {owner}'s key pair of this install; stratus leaves it alone"
            )));
        }
        // By name: moto ignores KeyPairId here.
        self.client
            .delete_key_pair()
            .key_name(ec2_name)
            .send()
            .await
            .map_err(|e| self.err("DeleteKeyPair", e))?;
        Ok(true)
    }
}
