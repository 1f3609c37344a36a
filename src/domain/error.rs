//! The one error type of the service: what went wrong, in the domain's words. How each one
//! is answered (gRPC code, documented HTTP status and code, details) is the transport's
//! table, `grpc/status.rs`.
use std::time::Duration;

use super::invitation::{Etag, InvitationStatus};
use super::values::{InvitationId, ValueError};

/// Why one request field was refused: `BadRequest.FieldViolation.reason`, and the
/// `ErrorInfo.reason` when it is the first violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationReason {
    MissingRequiredField,
    InvalidFormat,
    ValueTooLong,
    ValueOutOfRange,
    InvalidPageToken,
    /// A watch cursor this service did not issue for this watch.
    InvalidCursor,
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
            Self::InvalidCursor => "INVALID_CURSOR",
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
    /// A watch resumed from a cursor older than the event retention: the events after it
    /// may be gone. The client lists again (or watches with the initial state).
    #[error("watch cursor older than the event retention of {retention:?}")]
    WatchCursorExpired { retention: Duration },
    /// A watch whose client read slower than its events arrived, past its buffer of
    /// `buffer` events: it ends, and resumes from `resume_cursor`.
    #[error("watch client too slow for its buffer of {buffer} events")]
    WatchTooSlow {
        resume_cursor: String,
        buffer: usize,
    },
    /// The replica stopped before the call finished (its shutdown's drain timeout ran out):
    /// nothing the call wrote is committed; retry it, on another replica.
    #[error("server shutting down")]
    ShuttingDown,
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
