//! The one error type of the service, and THE table that turns it into a gRPC status.
//!
//! Every status carries `google.rpc.ErrorInfo` with domain [`ERROR_DOMAIN`] and metadata
//! `code` (the documented error code) and `httpStatus` (the documented HTTP status), so a
//! gateway can restore the documented HTTP error exactly. The same table is in the README.
//! Internal causes are logged here, once, and never sent to the client.
use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as PbFieldViolation, StatusExt};

use crate::domain::{Etag, InvitationId, InvitationStatus, ValueError};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "invitations.api";

/// `ResourceInfo.resource_type` of an invitation.
pub const INVITATION_RESOURCE_TYPE: &str = "invitations.v1.Invitation";

/// Why one request field was refused: `BadRequest.FieldViolation.reason`, and the
/// `ErrorInfo.reason` when it is the first violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationReason {
    MissingRequiredField,
    InvalidFormat,
    ValueTooLong,
    ValueOutOfRange,
    InvalidPageToken,
    EtagConflict,
    RequestIdReused,
    /// The message is not valid protobuf for its type (e.g. a string field is not UTF-8).
    InvalidEncoding,
}

impl ViolationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingRequiredField => "MISSING_REQUIRED_FIELD",
            Self::InvalidFormat => "INVALID_FORMAT",
            Self::ValueTooLong => "VALUE_TOO_LONG",
            Self::ValueOutOfRange => "VALUE_OUT_OF_RANGE",
            Self::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Self::EtagConflict => "ETAG_CONFLICT",
            Self::RequestIdReused => "REQUEST_ID_REUSED",
            Self::InvalidEncoding => "INVALID_ENCODING",
        }
    }
}

/// One refused request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub reason: ViolationReason,
    pub description: String,
}

impl FieldViolation {
    pub fn new(
        field: &'static str,
        reason: ViolationReason,
        description: impl Into<String>,
    ) -> Self {
        Self {
            field,
            reason,
            description: description.into(),
        }
    }

    pub fn from_value(field: &'static str, error: ValueError) -> Self {
        match error {
            ValueError::Missing => {
                Self::new(field, ViolationReason::MissingRequiredField, "is required")
            }
            ValueError::Malformed(shape) => Self::new(field, ViolationReason::InvalidFormat, shape),
            ValueError::TooLong { max } => Self::new(
                field,
                ViolationReason::ValueTooLong,
                format!("must be at most {max} characters"),
            ),
        }
    }
}

/// Why a bearer token was refused (`ErrorInfo.reason` of the 401 row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata, or not a `Bearer` one.
    Missing,
    /// Past `exp` (beyond the leeway).
    Expired,
    /// Anything else: bad signature, algorithm, issuer, audience, `nbf`, claims.
    Invalid,
}

/// Why an authenticated caller may not do this (`ErrorInfo.reason` of the 403 row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    EnterpriseAdminRequired,
    ScopeNotPermitted,
    /// The invitee's verified e-mail is not the invitation's `email_constraint`.
    EmailMismatch,
    /// The invitee's token has no `email` claim with `email_verified: true`.
    EmailNotVerified,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("unauthenticated: {0:?}")]
    Unauthenticated(AuthFailure),
    #[error("permission denied: {0:?}")]
    PermissionDenied(Forbidden),
    /// Also the answer for an invitation of another enterprise: the two are indistinguishable.
    #[error("invitation {0} not found")]
    InvitationNotFound(InvitationId),
    /// An unknown, rotated-out or revoked link token, or one accepted by someone else: one
    /// answer for all, so a token holder learns nothing about which it was.
    #[error("invalid invitation link token")]
    InvitationTokenInvalid,
    #[error("invitation is already {current_status:?}")]
    StateConflict {
        id: InvitationId,
        current_status: InvitationStatus,
        etag: Etag,
    },
    #[error("etag mismatch")]
    EtagMismatch {
        id: InvitationId,
        current: Etag,
        requested: String,
    },
    #[error("invitation is {current_status:?}, which does not admit this operation")]
    NotAdmissible {
        id: InvitationId,
        current_status: InvitationStatus,
        etag: Etag,
    },
    #[error("a pending invitation {existing} exists for this address")]
    InvitationAlreadyExists { existing: InvitationId },
    /// The request message is larger than the configured limit.
    #[error("request message over {limit} bytes")]
    RequestTooLarge { limit: usize },
    /// The caller spent its request budget (token bucket per caller).
    #[error("rate limited for {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// Too many RPCs in flight on this replica: refused at once rather than queued.
    #[error("server overloaded")]
    Overloaded,
    /// This caller already has `limit` RPCs in flight on this replica: refused at once, so
    /// one caller cannot take the replica's whole limit.
    #[error("caller has {limit} RPCs in flight")]
    CallerOverloaded { limit: usize },
    /// A long-lived stream (health `Watch`, reflection) over the limit of its connection or of
    /// the replica.
    #[error("{scope} stream limit of {limit} reached")]
    StreamLimit {
        scope: StreamLimitScope,
        limit: usize,
    },
    /// The caller's connection holds more than `limit` bytes of responses it has not read.
    #[error("responses over {limit} bytes unread on this connection")]
    ResponsesUnread { limit: usize },
    /// The request message did not arrive completely within `timeout` of its headers.
    #[error("request message not received within {timeout:?}")]
    RequestReadTimeout { timeout: Duration },
    /// The database gave up a transaction (serialization failure or deadlock): retry.
    #[error("transaction conflict")]
    TransactionConflict(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database cannot be reached (or no connection freed up in time): retry later.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database answered something unexpected.
    #[error("unexpected database error")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or corrupt data: never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Which limit of long-lived streams was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLimitScope {
    Connection,
    Server,
}

impl StreamLimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Server => "server",
        }
    }
}

impl std::fmt::Display for StreamLimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub fn invalid(
        field: &'static str,
        reason: ViolationReason,
        description: impl Into<String>,
    ) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, reason, description)])
    }
}

/// How long a client should wait before retrying a 503.
const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a client should wait before retrying on an overloaded replica.
const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How long a client should wait before opening another long-lived stream.
const STREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Milliseconds, rounded up, so a client that waits this long is never early.
fn millis_ceil(delay: Duration) -> String {
    delay.as_micros().div_ceil(1000).to_string()
}

fn status_name(status: InvitationStatus) -> &'static str {
    match status {
        InvitationStatus::Pending => "PENDING",
        InvitationStatus::Accepted => "ACCEPTED",
        InvitationStatus::Cancelled => "CANCELLED",
        InvitationStatus::Expired => "EXPIRED",
    }
}

fn invitation_subject(id: InvitationId) -> String {
    format!("invitations/{id}")
}

/// Logs an error's whole cause chain, once.
fn log_cause(kind: &str, error: &Error) {
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(kind, error = %chain, "request failed on the server side");
}

/// THE mapping table. No wildcard arm: a new variant does not compile until it has a row.
impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let mut details = ErrorDetails::new();
        let mut metadata: HashMap<String, String> = HashMap::new();
        let (code, http, documented_code, reason, message): (Code, u16, &str, String, &str) =
            match &error {
                Error::InvalidArgument(violations) => {
                    let reason = violations
                        .first()
                        .map_or(ViolationReason::InvalidFormat, |v| v.reason);
                    details.set_bad_request(
                        violations
                            .iter()
                            .map(|v| PbFieldViolation {
                                field: v.field.to_owned(),
                                description: v.description.clone(),
                                reason: v.reason.as_str().to_owned(),
                                localized_message: None,
                            })
                            .collect::<Vec<_>>(),
                    );
                    let message = if reason == ViolationReason::MissingRequiredField {
                        "A required field is missing or invalid"
                    } else {
                        "The request is invalid."
                    };
                    (
                        Code::InvalidArgument,
                        400,
                        "invalid_request",
                        reason.as_str().to_owned(),
                        message,
                    )
                }
                Error::Unauthenticated(failure) => {
                    let reason = match failure {
                        AuthFailure::Missing => "UNAUTHORIZED",
                        AuthFailure::Expired => "TOKEN_EXPIRED",
                        AuthFailure::Invalid => "TOKEN_INVALID",
                    };
                    (
                        Code::Unauthenticated,
                        401,
                        "unauthorized",
                        reason.to_owned(),
                        "Authentication required.",
                    )
                }
                Error::PermissionDenied(forbidden) => {
                    let (reason, documented_code, message) = match forbidden {
                        Forbidden::EnterpriseAdminRequired => (
                            "ENTERPRISE_ADMIN_REQUIRED",
                            "forbidden_capability_scope",
                            "Enterprise admin capability required",
                        ),
                        Forbidden::ScopeNotPermitted => (
                            "SCOPE_NOT_PERMITTED",
                            "forbidden_capability_scope",
                            "The requested scope is outside the caller's enterprise",
                        ),
                        Forbidden::EmailMismatch => (
                            "EMAIL_MISMATCH",
                            "email_mismatch",
                            "The invitation is for another e-mail address.",
                        ),
                        Forbidden::EmailNotVerified => (
                            "EMAIL_NOT_VERIFIED",
                            "email_not_verified",
                            "A verified e-mail address is required to accept an invitation.",
                        ),
                    };
                    (
                        Code::PermissionDenied,
                        403,
                        documented_code,
                        reason.to_owned(),
                        message,
                    )
                }
                Error::InvitationTokenInvalid => (
                    Code::NotFound,
                    404,
                    "invitation_token_invalid",
                    "INVITATION_TOKEN_INVALID".to_owned(),
                    "The invitation link is not valid.",
                ),
                Error::InvitationNotFound(id) => {
                    // The owner is left empty on purpose: naming it would tell a caller of
                    // another enterprise that the id exists.
                    details.set_resource_info(
                        INVITATION_RESOURCE_TYPE,
                        invitation_subject(*id),
                        "",
                        "",
                    );
                    (
                        Code::NotFound,
                        404,
                        "not_found",
                        "INVITATION_NOT_FOUND".to_owned(),
                        "Invitation not found.",
                    )
                }
                Error::StateConflict {
                    id,
                    current_status,
                    etag,
                } => {
                    metadata.insert("currentStatus".into(), status_name(*current_status).into());
                    metadata.insert("etag".into(), etag.as_str().into());
                    details.add_precondition_failure_violation(
                        "STATUS",
                        invitation_subject(*id),
                        format!("the invitation is already {}", current_status.as_str()),
                    );
                    (
                        Code::FailedPrecondition,
                        409,
                        "state_conflict",
                        "STATE_CONFLICT".to_owned(),
                        "The request cannot be applied to the current resource state.",
                    )
                }
                Error::EtagMismatch {
                    id,
                    current,
                    requested,
                } => {
                    metadata.insert("etag".into(), current.as_str().into());
                    metadata.insert("requestEtag".into(), requested.clone());
                    details.add_precondition_failure_violation(
                        "ETAG",
                        invitation_subject(*id),
                        "the If-Match value does not match the current etag",
                    );
                    (
                        Code::Aborted,
                        412,
                        "precondition_failed",
                        "ETAG_MISMATCH".to_owned(),
                        "The If-Match value does not match the current ETag",
                    )
                }
                Error::NotAdmissible {
                    id,
                    current_status,
                    etag,
                } => {
                    metadata.insert("currentStatus".into(), status_name(*current_status).into());
                    metadata.insert("etag".into(), etag.as_str().into());
                    details.add_precondition_failure_violation(
                        "STATUS",
                        invitation_subject(*id),
                        format!("the invitation is {}", current_status.as_str()),
                    );
                    (
                        Code::FailedPrecondition,
                        422,
                        "not_admissible",
                        "NOT_ADMISSIBLE".to_owned(),
                        "The operation is not admissible in the current state.",
                    )
                }
                Error::InvitationAlreadyExists { existing } => {
                    details.set_resource_info(
                        INVITATION_RESOURCE_TYPE,
                        invitation_subject(*existing),
                        "",
                        "a pending invitation for this address already exists",
                    );
                    (
                        Code::AlreadyExists,
                        409,
                        "already_exists",
                        "INVITATION_ALREADY_EXISTS".to_owned(),
                        "A pending invitation for this address already exists.",
                    )
                }
                Error::RequestTooLarge { limit } => {
                    metadata.insert("maxRequestBytes".into(), limit.to_string());
                    (
                        Code::OutOfRange,
                        413,
                        "payload_too_large",
                        "REQUEST_TOO_LARGE".to_owned(),
                        "The request is too large.",
                    )
                }
                Error::RateLimited { retry_after } => {
                    details.set_retry_info(Some(*retry_after));
                    metadata.insert("retryAfterMs".into(), millis_ceil(*retry_after));
                    (
                        Code::ResourceExhausted,
                        429,
                        "rate_limited",
                        "RATE_LIMITED".to_owned(),
                        "Too many requests.",
                    )
                }
                Error::Overloaded => {
                    details.set_retry_info(Some(OVERLOAD_RETRY_DELAY));
                    metadata.insert("retryAfterMs".into(), millis_ceil(OVERLOAD_RETRY_DELAY));
                    (
                        Code::ResourceExhausted,
                        429,
                        "rate_limited",
                        "SERVER_OVERLOADED".to_owned(),
                        "Too many requests.",
                    )
                }
                Error::CallerOverloaded { limit } => {
                    details.set_retry_info(Some(OVERLOAD_RETRY_DELAY));
                    metadata.insert("retryAfterMs".into(), millis_ceil(OVERLOAD_RETRY_DELAY));
                    metadata.insert("maxConcurrentRequestsPerCaller".into(), limit.to_string());
                    (
                        Code::ResourceExhausted,
                        429,
                        "rate_limited",
                        "CALLER_CONCURRENCY_LIMIT".to_owned(),
                        "Too many requests.",
                    )
                }
                Error::StreamLimit { scope, limit } => {
                    details.set_retry_info(Some(STREAM_RETRY_DELAY));
                    metadata.insert("retryAfterMs".into(), millis_ceil(STREAM_RETRY_DELAY));
                    metadata.insert("scope".into(), scope.as_str().into());
                    metadata.insert("maxStreams".into(), limit.to_string());
                    (
                        Code::ResourceExhausted,
                        429,
                        "rate_limited",
                        "STREAM_LIMIT_REACHED".to_owned(),
                        "Too many requests.",
                    )
                }
                Error::ResponsesUnread { limit } => {
                    details.set_retry_info(Some(OVERLOAD_RETRY_DELAY));
                    metadata.insert("retryAfterMs".into(), millis_ceil(OVERLOAD_RETRY_DELAY));
                    metadata.insert("maxUnsentBytes".into(), limit.to_string());
                    (
                        Code::ResourceExhausted,
                        429,
                        "rate_limited",
                        "RESPONSES_UNREAD".to_owned(),
                        "Too many requests.",
                    )
                }
                Error::RequestReadTimeout { timeout } => {
                    metadata.insert("readTimeoutMs".into(), millis_ceil(*timeout));
                    (
                        Code::DeadlineExceeded,
                        408,
                        "request_timeout",
                        "REQUEST_READ_TIMEOUT".to_owned(),
                        "The request was not received in time.",
                    )
                }
                Error::TransactionConflict(_) => {
                    tracing::warn!(error = %error, "transaction conflict; the client may retry");
                    (
                        Code::Aborted,
                        409,
                        "state_conflict",
                        "TRANSACTION_CONFLICT".to_owned(),
                        "The request conflicted with a concurrent one; retry it.",
                    )
                }
                Error::DatabaseUnavailable(_) => {
                    log_cause("database_unavailable", &error);
                    details.set_retry_info(Some(DATABASE_RETRY_DELAY));
                    metadata.insert(
                        "retryAfterMs".into(),
                        DATABASE_RETRY_DELAY.as_millis().to_string(),
                    );
                    (
                        Code::Unavailable,
                        503,
                        "temporarily_unavailable",
                        "DATABASE_UNAVAILABLE".to_owned(),
                        "A downstream service is temporarily unavailable",
                    )
                }
                Error::Upstream(_) => {
                    log_cause("upstream", &error);
                    (
                        Code::Unavailable,
                        502,
                        "upstream_error",
                        "UPSTREAM_ERROR".to_owned(),
                        "An upstream service returned an unexpected error.",
                    )
                }
                Error::Internal(_) => {
                    log_cause("internal", &error);
                    (
                        Code::Internal,
                        500,
                        "internal_error",
                        "INTERNAL".to_owned(),
                        "Internal error.",
                    )
                }
            };
        metadata.insert("code".into(), documented_code.into());
        metadata.insert("httpStatus".into(), http.to_string());
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}
