//! Turning SDK errors into `ProviderError`s a student can act on: one sentence, no SDK
//! internals. EC2 reports what went wrong as an error code
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>); the code
//! decides the kind (capacity, bad request, credentials), and the message EC2 wrote goes along.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::cluster::provider::ProviderError;

/// What an error message needs to say where things went: the endpoint and the credentials.
#[derive(Debug, Clone)]
pub(super) struct Context {
    /// `the EC2 API of us-east-1` or `the EC2 endpoint http://127.0.0.1:5000`.
    pub endpoint: String,
    /// Where the credentials came from, for "check …" advice.
    pub credentials: String,
}

/// Codes meaning "the cloud has no room for this here, now": another zone, another type, or a
/// later try may work. `Unsupported` is what EC2 answers for a type that an availability zone
/// does not offer (<https://repost.aws/knowledge-center/ec2-instance-type-not-supported-az-error>).
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientAddressCapacity",
    "SpotMaxPriceTooLow",
    "InsufficientCapacityOnOutpost",
    "UnfulfillableCapacity",
    "Unsupported",
];

/// Codes meaning the account is at a limit that only its owner can raise, with what to tell the
/// instructor. No retry, zone or type helps.
/// <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-resource-limits.html>
const QUOTA: &[(&str, &str)] = &[
    (
        "VcpuLimitExceeded",
        "the instructor must raise the account's vCPU quota for On-Demand instances in the region (Service Quotas, Amazon EC2, \"Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances\"); the README says how many vCPUs a class needs",
    ),
    (
        "MaxSpotInstanceCountExceeded",
        "the instructor must raise the account's Spot vCPU quota in the region (Service Quotas, Amazon EC2, \"All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests\"); the README says how many vCPUs a class needs",
    ),
    (
        "InstanceLimitExceeded",
        "the instructor must raise the account's instance limit in the region (Service Quotas, Amazon EC2)",
    ),
    (
        "InsufficientFreeAddressesInSubnet",
        "the subnet has no free IP addresses left: the instructor must widen the subnet, or list more subnets under [ec2] subnet_ids",
    ),
];

/// Whether stratus itself answers a refusal with this code (another placement, or a stop), so
/// that the SDK must not retry it as it is.
pub(super) fn handled_by_stratus(code: &str) -> bool {
    CAPACITY.contains(&code) || QUOTA.iter().any(|(c, _)| *c == code)
}

/// Codes meaning "slow down": the account's request rate for the action is spent (EC2 throttles
/// per account, region and action), after the SDK's own retries.
/// <https://docs.aws.amazon.com/AWSEC2/latest/devguide/ec2-api-throttling.html>
const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
];

/// Codes meaning the caller's identity was not accepted, or may not do this.
const AUTH_REJECTED: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "RequestExpired",
    "UnrecognizedClientException",
];
const AUTH_FORBIDDEN: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
    "Blocked",
];

/// The error code of a failed call, if EC2 sent one.
pub(super) fn code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(_) => err.code(),
        _ => None,
    }
}

/// Maps a failed SDK call to the provider's error kinds.
pub(super) fn classify<E>(op: &str, ctx: &Context, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(op, error = %aws_sdk_ec2::error::DisplayErrorContext(&err), "EC2 call failed");
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let message = se.err().message().unwrap_or("").trim().to_owned();
            match se.err().code() {
                Some(code) => from_code(op, ctx, code, &message),
                // moto (and proxies) answer some failures with an HTML page and no code.
                None => ProviderError::Api {
                    op: op.to_owned(),
                    message: format!(
                        "{} answered HTTP {status} without an error code",
                        ctx.endpoint
                    ),
                },
            }
        }
        SdkError::TimeoutError(_) => ProviderError::Unavailable {
            op: op.to_owned(),
            message: format!("{} did not answer in time", ctx.endpoint),
        },
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                ProviderError::Unavailable {
                    op: op.to_owned(),
                    message: format!("{} did not answer in time", ctx.endpoint),
                }
            } else if d.is_io() {
                ProviderError::Unavailable {
                    op: op.to_owned(),
                    message: format!("cannot reach {}", ctx.endpoint),
                }
            } else if mentions_credentials(&err) {
                no_credentials(ctx)
            } else {
                ProviderError::Api {
                    op: op.to_owned(),
                    message: format!("the request to {} could not be sent", ctx.endpoint),
                }
            }
        }
        SdkError::ConstructionFailure(_) if mentions_credentials(&err) => no_credentials(ctx),
        SdkError::ConstructionFailure(_) => ProviderError::Api {
            op: op.to_owned(),
            message: "the request could not be built".into(),
        },
        SdkError::ResponseError(_) => ProviderError::Api {
            op: op.to_owned(),
            message: format!("{} sent an answer that is not EC2's", ctx.endpoint),
        },
        _ => ProviderError::Api {
            op: op.to_owned(),
            message: format!("{} failed in an unexpected way", ctx.endpoint),
        },
    }
}

fn from_code(op: &str, ctx: &Context, code: &str, message: &str) -> ProviderError {
    let detail = if message.is_empty() {
        code.to_owned()
    } else {
        format!("{} ({code})", message.trim_end_matches('.'))
    };
    if AUTH_REJECTED.contains(&code) {
        return ProviderError::Auth(format!(
            "{} rejected stratus's AWS credentials ({code}); check {}",
            ctx.endpoint, ctx.credentials
        ));
    }
    if AUTH_FORBIDDEN.contains(&code) {
        return ProviderError::Auth(format!(
            "the AWS credentials from {} are not allowed to call {op} ({code}); the service account needs the IAM policy `stratus admin iam-policy` prints",
            ctx.credentials
        ));
    }
    if let Some((_, advice)) = QUOTA.iter().find(|(c, _)| *c == code) {
        return ProviderError::Quota(format!(
            "{op} refused: {detail}: the AWS account is at a limit; {advice}"
        ));
    }
    if CAPACITY.contains(&code) {
        return ProviderError::Capacity(detail);
    }
    if THROTTLED.contains(&code) {
        return ProviderError::Throttled(format!("{op} was throttled: {detail}"));
    }
    if matches!(
        code,
        "InternalError"
            | "InternalFailure"
            | "ServerInternal"
            | "Unavailable"
            | "ServiceUnavailable"
    ) {
        return ProviderError::Unavailable {
            op: op.to_owned(),
            message: detail,
        };
    }
    // stratus's own group or key pair gone missing (deleted by someone else meanwhile) is a
    // failure at run time, not something wrong with what the user asked for.
    let ours_missing = matches!(
        code,
        "InvalidGroup.NotFound" | "InvalidGroupId.NotFound" | "InvalidKeyPair.NotFound"
    );
    let invalid = (code.starts_with("Invalid") && !code.ends_with(".Duplicate") && !ours_missing)
        || code.starts_with("MissingParameter")
        || (code.starts_with("Unsupported") && code != "Unsupported")
        || code == "VPCIdNotSpecified";
    if invalid {
        return ProviderError::InvalidRequest(format!("{op} refused the request: {detail}"));
    }
    ProviderError::Api {
        op: op.to_owned(),
        message: detail,
    }
}

fn no_credentials(ctx: &Context) -> ProviderError {
    ProviderError::Auth(format!(
        "no usable AWS credentials: check {}",
        ctx.credentials
    ))
}

/// Whether anything in the error's chain is about credentials (the SDK reports a credentials
/// provider that found nothing as a failure to send).
fn mentions_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.to_string().to_ascii_lowercase().contains("credentials") {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            endpoint: "the EC2 API of us-east-1".into(),
            credentials: "the credentials file /c".into(),
        }
    }

    #[test]
    fn codes_pick_the_kind() {
        let k = |code| from_code("RunInstances", &ctx(), code, "some message.");
        assert!(matches!(
            k("InsufficientInstanceCapacity"),
            ProviderError::Capacity(_)
        ));
        assert!(matches!(
            k("SpotMaxPriceTooLow"),
            ProviderError::Capacity(_)
        ));
        for quota in [
            "InstanceLimitExceeded",
            "VcpuLimitExceeded",
            "InsufficientFreeAddressesInSubnet",
            "MaxSpotInstanceCountExceeded",
        ] {
            let e = k(quota);
            assert!(matches!(e, ProviderError::Quota(_)), "{quota}: {e:?}");
            assert!(e.stops_launch(), "{quota}");
            let text = e.to_string();
            assert!(text.contains("the instructor must"), "{text}");
            assert!(text.contains(quota), "{text}");
        }
        for capacity in [
            "Unsupported",
            "UnfulfillableCapacity",
            "InsufficientInstanceCapacity",
        ] {
            let e = k(capacity);
            assert!(matches!(e, ProviderError::Capacity(_)), "{capacity}: {e:?}");
            assert!(!e.stops_launch(), "{capacity}");
        }
        assert!(matches!(
            k("UnsupportedOperation"),
            ProviderError::InvalidRequest(_)
        ));
        assert!(matches!(
            k("InvalidAMIID.NotFound"),
            ProviderError::InvalidRequest(_)
        ));
        assert!(matches!(
            k("InvalidParameterValue"),
            ProviderError::InvalidRequest(_)
        ));
        assert!(matches!(
            k("InvalidKeyPair.NotFound"),
            ProviderError::Api { .. }
        ));
        assert!(matches!(
            k("InvalidGroup.NotFound"),
            ProviderError::Api { .. }
        ));
        assert!(matches!(k("AuthFailure"), ProviderError::Auth(_)));
        assert!(matches!(k("InvalidClientTokenId"), ProviderError::Auth(_)));
        assert!(matches!(k("UnauthorizedOperation"), ProviderError::Auth(_)));
        assert!(matches!(k("AccessDenied"), ProviderError::Auth(_)));
        assert!(matches!(
            k("InvalidGroup.Duplicate"),
            ProviderError::Api { .. }
        ));
        assert!(matches!(
            k("InternalError"),
            ProviderError::Unavailable { .. }
        ));
        for code in [
            "InsufficientInstanceCapacity",
            "Unsupported",
            "VcpuLimitExceeded",
        ] {
            assert!(handled_by_stratus(code), "{code}");
        }
        assert!(!handled_by_stratus("RequestLimitExceeded"));
        assert!(!handled_by_stratus("InternalError"));
        for code in ["RequestLimitExceeded", "Throttling"] {
            assert!(matches!(k(code), ProviderError::Throttled(_)), "{code}");
        }
    }

    #[test]
    fn auth_messages_are_one_sentence_with_advice() {
        let e = from_code(
            "DescribeInstances",
            &ctx(),
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        )
        .to_string();
        assert_eq!(
            e,
            "the EC2 API of us-east-1 rejected stratus's AWS credentials (AuthFailure); check the credentials file /c"
        );
        assert!(!e.contains('\n'));
    }
}
