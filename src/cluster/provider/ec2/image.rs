//! Images baked from an instance (`stratus admin image build`): CreateImage, tagged in the call,
//! and DescribeImages to follow it until it is available.
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateImage.html>
//!
//! The image's EBS snapshots are tagged with the image's tags once DescribeImages names them,
//! not in the CreateImage call: moto (5.2.5, the tests' EC2) does not implement snapshot
//! TagSpecifications there. They are findable meanwhile as the image's, which is tagged from the
//! start.

use aws_sdk_ec2::types::{ImageState as SdkImageState, ResourceType};

use super::{Ec2Provider, tag_spec};
use crate::cluster::provider::ProviderError;

/// Where an image stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    /// Still being made.
    Pending,
    /// Ready to launch from; the ids of its snapshots.
    Available { snapshots: Vec<String> },
    /// EC2 gave up on it, with its reason.
    Failed(String),
    /// Not (yet) known to DescribeImages: EC2 is eventually consistent.
    Unknown,
}

impl Ec2Provider {
    /// Creates an image of `instance`, tagged with `tags` from the start. EC2 reboots the
    /// instance first (NoReboot off), so the file systems are consistent in the image.
    pub async fn create_image(
        &self,
        instance: &str,
        name: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> Result<String, ProviderError> {
        let out = self
            .client
            .create_image()
            .instance_id(instance)
            .name(name)
            .description(description)
            .tag_specifications(tag_spec(ResourceType::Image, tags))
            .send()
            .await
            .map_err(|e| self.err("CreateImage", e))?;
        out.image_id()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Api {
                op: "CreateImage".into(),
                message: "the answer has no image id".into(),
            })
    }

    /// The state of one image.
    pub async fn image_state(&self, image: &str) -> Result<ImageState, ProviderError> {
        // A filter, not ImageIds: an image EC2 does not list yet is no error.
        let out = self
            .client
            .describe_images()
            .filters(super::filter("image-id", image))
            .send()
            .await
            .map_err(|e| self.err("DescribeImages", e))?;
        let Some(found) = out.images().iter().find(|i| i.image_id() == Some(image)) else {
            return Ok(ImageState::Unknown);
        };
        Ok(match found.state() {
            Some(SdkImageState::Available) => ImageState::Available {
                snapshots: found
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .map(str::to_owned)
                    .collect(),
            },
            Some(
                s @ (SdkImageState::Failed
                | SdkImageState::Error
                | SdkImageState::Invalid
                | SdkImageState::Deregistered),
            ) => ImageState::Failed(
                found
                    .state_reason()
                    .and_then(|r| r.message())
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .unwrap_or_else(|| s.as_str().to_owned()),
            ),
            _ => ImageState::Pending,
        })
    }
}
