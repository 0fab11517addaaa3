//! The image a node boots, and its root device.
//!
//! A profile names an image by AMI id, or by an SSM parameter (`resolve:ssm:/aws/service/…`,
//! as AWS publishes each distribution's current images). stratus resolves the parameter itself
//! (SSM GetParameters, once per process) and launches the AMI it names, so that it knows the
//! image's root device: the block device mapping that sets `volume_gb` must name the root
//! device exactly (Ubuntu's is `/dev/sda1`, Amazon Linux 2023's `/dev/xvda`), or EC2 adds a
//! second, empty volume and leaves the root at the image's size. The device comes from
//! DescribeImages' `RootDeviceName`, never from a guess.
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/finding-an-ami-parameter-store.html>

use aws_sdk_ssm::error::ProvideErrorMetadata;

use super::Ec2Provider;
use crate::cluster::provider::ProviderError;

/// An image's root device name and the size of its root volume in GiB, as far as known.
pub(super) type RootVolume = (Option<String>, Option<u32>);

/// How a profile names an image by SSM parameter.
pub const SSM_PREFIX: &str = "resolve:ssm:";

impl Ec2Provider {
    /// The AMI to launch for `image`: itself, or what its SSM parameter names.
    pub(super) async fn resolve_image(&self, image: &str) -> Result<String, ProviderError> {
        let Some(parameter) = image.strip_prefix(SSM_PREFIX) else {
            return Ok(image.to_owned());
        };
        if let Some(ami) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
        {
            return Ok(ami.clone());
        }
        let out = self
            .ssm
            .get_parameters()
            .names(parameter)
            .send()
            .await
            .map_err(|e| {
                let code = e.code().unwrap_or_default().to_owned();
                let message = e.message().unwrap_or_default().to_owned();
                match code.as_str() {
                    "AccessDeniedException" | "UnrecognizedClientException" => ProviderError::Auth(format!(
                        "the AWS credentials from {} may not read the SSM parameter {parameter} ({code}); the service account needs ssm:GetParameters on it (see the README's IAM policy)",
                        self.ctx.credentials
                    )),
                    "" => ProviderError::Api {
                        op: "GetParameters".into(),
                        message: format!(
                            "cannot resolve the image {image}: {}",
                            aws_sdk_ssm::error::DisplayErrorContext(&e)
                        ),
                    },
                    _ => ProviderError::Api {
                        op: "GetParameters".into(),
                        message: format!("cannot resolve the image {image}: {message} ({code})"),
                    },
                }
            })?;
        let ami = out
            .parameters()
            .iter()
            .find_map(|p| p.value())
            .map(str::trim)
            .filter(|v| v.starts_with("ami-"))
            .map(str::to_owned)
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "the image {image} names no AMI: SSM has no parameter {parameter} in {} (or it holds no image id)",
                    self.config.region
                ))
            })?;
        tracing::info!(image, ami = %ami, "resolved the image");
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_owned(), ami.clone());
        Ok(ami)
    }

    /// An AMI's root device (its `RootDeviceName`) and the size of its root volume in GiB, from
    /// DescribeImages (once per AMI). An image EC2 does not describe is an error only when its
    /// root volume is to be sized (`needed`); otherwise its size is just unknown.
    pub(super) async fn root_volume(
        &self,
        ami: &str,
        needed: bool,
    ) -> Result<RootVolume, ProviderError> {
        if let Some(found) = self
            .root_devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ami)
        {
            return Ok(found.clone());
        }
        let out = match self.client.describe_images().image_ids(ami).send().await {
            Ok(out) => out,
            Err(e) if !needed => {
                tracing::debug!(image = ami, "cannot describe the image: {e}");
                return Ok((None, None));
            }
            Err(e) => return Err(self.err("DescribeImages", e)),
        };
        let Some(found) = out.images().iter().find(|i| i.image_id() == Some(ami)) else {
            if !needed {
                return Ok((None, None));
            }
            return Err(ProviderError::InvalidRequest(format!(
                "image {ami} does not exist in {} (or is not shared with this account)",
                self.config.region
            )));
        };
        let device = found
            .root_device_name()
            .filter(|d| !d.is_empty())
            .map(str::to_owned);
        let size = found
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == device.as_deref())
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size())
            .and_then(|gb| u32::try_from(gb).ok());
        let facts = (device, size);
        self.root_devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ami.to_owned(), facts.clone());
        Ok(facts)
    }
}
