//! How an AWS failure is understood: every SDK error is turned into an
//! [`AwsFault`] whose [`FaultKind`] tells the caller what to do with it. Each
//! service area then wraps the fault in its own error enum
//! ([`ComputeError`](super::ComputeError), [`SsmError`](super::SsmError),
//! [`QueueError`](super::QueueError)).

use std::error::Error as StdError;
use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// The AWS service a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Amazon EC2.
    Ec2,
    /// AWS Systems Manager (Parameter Store and Run Command).
    Ssm,
    /// Amazon SQS.
    Sqs,
}

impl Service {
    /// Lower-case name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Ec2 => "ec2",
            Service::Ssm => "ssm",
            Service::Sqs => "sqs",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed call means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// AWS throttled the call and the SDK's retries ran out: retry later, with
    /// backoff. A normal state, never a crash.
    Throttled,
    /// The thing named does not exist (instance, parameter, queue, command).
    NotFound,
    /// AWS refused the request as invalid: retrying the same request will not
    /// help; the spec or the code must change. Shown to the user in status.
    InvalidRequest,
    /// EC2 has no capacity for the instance type in that zone, or does not
    /// offer it there: try another type or subnet.
    Capacity,
    /// The credentials are missing, expired or lack a permission.
    AccessDenied,
    /// The call (or one attempt of it) took longer than its timeout.
    Timeout,
    /// A server error or a broken connection that outlived the SDK's retries:
    /// retry later.
    Unavailable,
}

impl FaultKind {
    /// Whether the same call may succeed later without any change.
    pub fn is_retryable(self) -> bool {
        match self {
            FaultKind::Throttled | FaultKind::Timeout | FaultKind::Unavailable => true,
            FaultKind::Capacity => true,
            FaultKind::NotFound | FaultKind::InvalidRequest | FaultKind::AccessDenied => false,
        }
    }

    /// Lower-case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Throttled => "throttled",
            FaultKind::NotFound => "not_found",
            FaultKind::InvalidRequest => "invalid_request",
            FaultKind::Capacity => "capacity",
            FaultKind::AccessDenied => "access_denied",
            FaultKind::Timeout => "timeout",
            FaultKind::Unavailable => "unavailable",
        }
    }
}

/// One failed AWS call: which, why, and the AWS error code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsFault {
    /// What the failure means for the caller.
    pub kind: FaultKind,
    /// The service called.
    pub service: Service,
    /// The API operation, e.g. `RunInstances`.
    pub operation: &'static str,
    /// The AWS error code, e.g. `InsufficientInstanceCapacity`, when AWS sent one.
    pub code: Option<String>,
    /// AWS's message, or a description of the transport failure.
    pub message: String,
    /// HTTP status of the last response, when there was one.
    pub status: Option<u16>,
}

impl fmt::Display for AwsFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.operation)?;
        if let Some(code) = &self.code {
            write!(f, ": {code}")?;
        }
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl StdError for AwsFault {}

/// Error codes AWS uses for throttling, across EC2 (query), SSM and SQS (JSON).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
    "AWS.SimpleQueueService.RequestThrottled",
];

const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "Unsupported",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
];

const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "OptInRequired",
];

const NOT_FOUND_CODES: &[&str] = &[
    "ParameterNotFound",
    "ParameterVersionNotFound",
    "InvalidDocument",
    "InvalidCommandId",
    "InvocationDoesNotExist",
    "InvalidInstanceId",
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    "ResourceNotFoundException",
];

/// Classifies an AWS error code (and HTTP status) into a [`FaultKind`].
pub fn kind_of_code(code: &str, status: Option<u16>) -> FaultKind {
    // JSON-protocol codes may arrive qualified: `com.amazonaws.sqs#QueueDoesNotExist`.
    let code = code.rsplit('#').next().unwrap_or(code);
    if THROTTLING_CODES.contains(&code) {
        FaultKind::Throttled
    } else if CAPACITY_CODES.contains(&code) {
        FaultKind::Capacity
    } else if ACCESS_CODES.contains(&code) {
        FaultKind::AccessDenied
    } else if NOT_FOUND_CODES.contains(&code)
        || code.ends_with(".NotFound")
        || code.ends_with("NotFound")
        || code.ends_with("NotFoundException")
    {
        FaultKind::NotFound
    } else if matches!(status, Some(s) if s >= 500) {
        FaultKind::Unavailable
    } else {
        FaultKind::InvalidRequest
    }
}

impl AwsFault {
    /// Turns an SDK error into a fault, keeping the AWS code and message.
    pub fn from_sdk<E>(
        service: Service,
        operation: &'static str,
        err: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let (kind, code, message) = match &err {
            SdkError::ServiceError(service_err) => {
                let e = service_err.err();
                let code = e.code().map(str::to_owned);
                let kind = match &code {
                    Some(code) => kind_of_code(code, status),
                    None if matches!(status, Some(s) if s >= 500) => FaultKind::Unavailable,
                    None => FaultKind::InvalidRequest,
                };
                (kind, code, e.message().unwrap_or_default().to_owned())
            }
            SdkError::TimeoutError(_) => (FaultKind::Timeout, None, source_chain(&err)),
            SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                (FaultKind::Timeout, None, source_chain(&err))
            }
            SdkError::DispatchFailure(failure) if failure.is_user() => {
                (FaultKind::InvalidRequest, None, source_chain(&err))
            }
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                (FaultKind::Unavailable, None, source_chain(&err))
            }
            // The request could not even be built: a bug or an invalid input.
            SdkError::ConstructionFailure(_) => {
                (FaultKind::InvalidRequest, None, source_chain(&err))
            }
            _ => (FaultKind::Unavailable, None, source_chain(&err)),
        };
        AwsFault {
            kind,
            service,
            operation,
            code,
            message,
            status,
        }
    }
}

/// The error and its sources, joined, for messages of transport failures.
fn source_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_retryable() {
        for code in [
            "RequestLimitExceeded",
            "ThrottlingException",
            "com.amazonaws.sqs#RequestThrottled",
        ] {
            let kind = kind_of_code(code, Some(400));
            assert_eq!(kind, FaultKind::Throttled, "{code}");
            assert!(kind.is_retryable());
        }
    }

    #[test]
    fn capacity_and_not_found_codes_are_recognised() {
        assert_eq!(
            kind_of_code("InsufficientInstanceCapacity", Some(500)),
            FaultKind::Capacity
        );
        assert_eq!(kind_of_code("Unsupported", Some(400)), FaultKind::Capacity);
        assert_eq!(
            kind_of_code("InvalidInstanceID.NotFound", Some(400)),
            FaultKind::NotFound
        );
        assert_eq!(
            kind_of_code("com.amazonaws.sqs#QueueDoesNotExist", Some(400)),
            FaultKind::NotFound
        );
        assert_eq!(
            kind_of_code("ParameterNotFound", Some(400)),
            FaultKind::NotFound
        );
    }

    #[test]
    fn unknown_client_codes_are_permanent_and_server_codes_are_not() {
        let invalid = kind_of_code("InvalidParameterValue", Some(400));
        assert_eq!(invalid, FaultKind::InvalidRequest);
        assert!(!invalid.is_retryable());
        assert_eq!(
            kind_of_code("InternalError", Some(500)),
            FaultKind::Unavailable
        );
        assert_eq!(
            kind_of_code("UnauthorizedOperation", Some(403)),
            FaultKind::AccessDenied
        );
    }
}
