//! THE table: every domain [`Error`] becomes one named row (gRPC code, documented HTTP
//! status and code, `ErrorInfo.reason`, message, details), and the row becomes the status a
//! client receives. Pure: the answer is logged where it is made (`grpc::answer`).
//!
//! Every status carries `google.rpc.ErrorInfo` with domain [`ERROR_DOMAIN`] and metadata
//! `code` (the documented error code) and `httpStatus` (the documented HTTP status), so a
//! gateway can restore the documented HTTP error exactly. The README's error table is
//! generated from this one (`the_readme_table_is_this_table`).
use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as PbFieldViolation, StatusExt};

use crate::domain::{
    AuthFailure, Error, Forbidden, InvitationId, InvitationStatus, ViolationReason,
};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "invitations.api";

/// `ResourceInfo.resource_type` of an invitation.
/// The reason of a call refused by the per-caller rate limit (counted on its own in
/// `metrics.rs`).
pub const RATE_LIMITED_REASON: &str = "RATE_LIMITED";

/// The reasons of the refusals that shed load to protect the replica (counted on their own in
/// `metrics.rs`).
pub const LOAD_SHED_REASONS: [&str; 4] = [
    "SERVER_OVERLOADED",
    "CALLER_CONCURRENCY_LIMIT",
    "STREAM_LIMIT_REACHED",
    "RESPONSES_UNREAD",
];

pub const INVITATION_RESOURCE_TYPE: &str = "invitations.v1.Invitation";

/// How one error is answered.
#[derive(Debug, Clone)]
pub struct ErrorRow {
    pub code: Code,
    /// The documented HTTP status (metadata `httpStatus`).
    pub http_status: u16,
    /// The documented error code (metadata `code`).
    pub documented_code: &'static str,
    /// `ErrorInfo.reason`.
    pub reason: &'static str,
    pub message: &'static str,
    /// `ErrorInfo.metadata` particular to the error (`code` and `httpStatus` are added).
    pub metadata: HashMap<String, String>,
    /// The other details (BadRequest, ResourceInfo, PreconditionFailure, RetryInfo).
    pub details: ErrorDetails,
}

impl ErrorRow {
    pub fn into_status(self) -> Status {
        let ErrorRow {
            code,
            http_status,
            documented_code,
            reason,
            message,
            mut metadata,
            mut details,
        } = self;
        metadata.insert("code".into(), documented_code.into());
        metadata.insert("httpStatus".into(), http_status.to_string());
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        row(&error).into_status()
    }
}

/// Logs, once, an error that is the server's side of the story: its whole cause chain, which
/// the client never sees. Client errors are not logged (the `rpc finished` line has the code).
pub fn log_server_side(error: &Error) {
    let kind = match error {
        Error::TransactionConflict(_) => {
            tracing::warn!(error = %error, "transaction conflict; the client may retry");
            return;
        }
        Error::DatabaseUnavailable(_) => "database_unavailable",
        Error::Upstream(_) => "upstream",
        Error::Internal(_) => "internal",
        _ => return,
    };
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(kind, error = %chain, "request failed on the server side");
}

/// How long a client should wait before retrying a 503.
const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a client should wait before retrying on an overloaded replica.
const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How long a client should wait before opening another long-lived stream.
const STREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

/// RetryInfo and metadata `retryAfterMs`: every row that asks the client to come back.
fn ask_to_retry(
    details: &mut ErrorDetails,
    metadata: &mut HashMap<String, String>,
    delay: Duration,
) {
    details.set_retry_info(Some(delay));
    metadata.insert("retryAfterMs".into(), millis_ceil(delay));
}

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

pub fn row(error: &Error) -> ErrorRow {
    let mut details = ErrorDetails::new();
    let mut metadata: HashMap<String, String> = HashMap::new();
    let (code, http_status, documented_code, reason, message): (
        Code,
        u16,
        &'static str,
        &'static str,
        &'static str,
    ) = match error {
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
                reason.as_str(),
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
                reason,
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
                reason,
                message,
            )
        }
        Error::InvitationTokenInvalid => (
            Code::NotFound,
            404,
            "invitation_token_invalid",
            "INVITATION_TOKEN_INVALID",
            "The invitation link is not valid.",
        ),
        Error::InvitationNotFound(id) => {
            // The owner is left empty on purpose: naming it would tell a caller of
            // another enterprise that the id exists.
            details.set_resource_info(INVITATION_RESOURCE_TYPE, invitation_subject(*id), "", "");
            (
                Code::NotFound,
                404,
                "not_found",
                "INVITATION_NOT_FOUND",
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
                "STATE_CONFLICT",
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
                "ETAG_MISMATCH",
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
                "NOT_ADMISSIBLE",
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
                "INVITATION_ALREADY_EXISTS",
                "A pending invitation for this address already exists.",
            )
        }
        Error::RequestTooLarge { limit } => {
            metadata.insert("maxRequestBytes".into(), limit.to_string());
            (
                Code::OutOfRange,
                413,
                "payload_too_large",
                "REQUEST_TOO_LARGE",
                "The request is too large.",
            )
        }
        Error::RateLimited { retry_after } => {
            ask_to_retry(&mut details, &mut metadata, *retry_after);
            (
                Code::ResourceExhausted,
                429,
                "rate_limited",
                RATE_LIMITED_REASON,
                "Too many requests.",
            )
        }
        Error::Overloaded => {
            ask_to_retry(&mut details, &mut metadata, OVERLOAD_RETRY_DELAY);
            (
                Code::ResourceExhausted,
                429,
                "rate_limited",
                "SERVER_OVERLOADED",
                "Too many requests.",
            )
        }
        Error::CallerOverloaded { limit } => {
            ask_to_retry(&mut details, &mut metadata, OVERLOAD_RETRY_DELAY);
            metadata.insert("maxConcurrentRequestsPerCaller".into(), limit.to_string());
            (
                Code::ResourceExhausted,
                429,
                "rate_limited",
                "CALLER_CONCURRENCY_LIMIT",
                "Too many requests.",
            )
        }
        Error::StreamLimit { scope, limit } => {
            ask_to_retry(&mut details, &mut metadata, STREAM_RETRY_DELAY);
            metadata.insert("scope".into(), scope.as_str().into());
            metadata.insert("maxStreams".into(), limit.to_string());
            (
                Code::ResourceExhausted,
                429,
                "rate_limited",
                "STREAM_LIMIT_REACHED",
                "Too many requests.",
            )
        }
        Error::ResponsesUnread { limit } => {
            ask_to_retry(&mut details, &mut metadata, OVERLOAD_RETRY_DELAY);
            metadata.insert("maxUnsentBytes".into(), limit.to_string());
            (
                Code::ResourceExhausted,
                429,
                "rate_limited",
                "RESPONSES_UNREAD",
                "Too many requests.",
            )
        }
        Error::RequestReadTimeout { timeout } => {
            metadata.insert("readTimeoutMs".into(), millis_ceil(*timeout));
            (
                Code::DeadlineExceeded,
                408,
                "request_timeout",
                "REQUEST_READ_TIMEOUT",
                "The request was not received in time.",
            )
        }
        Error::WatchCursorExpired { retention } => {
            metadata.insert("retentionSeconds".into(), retention.as_secs().to_string());
            details.add_precondition_failure_violation(
                "CURSOR_EXPIRED",
                "start_cursor",
                "the cursor is older than the event retention; list again, then watch",
            );
            (
                Code::FailedPrecondition,
                410,
                "gone",
                "WATCH_CURSOR_EXPIRED",
                "The watch cursor has expired.",
            )
        }
        Error::WatchTooSlow {
            resume_cursor,
            buffer,
        } => {
            metadata.insert("resumeCursor".into(), resume_cursor.clone());
            metadata.insert("maxBufferedEvents".into(), buffer.to_string());
            (
                Code::ResourceExhausted,
                429,
                "rate_limited",
                "WATCH_TOO_SLOW",
                "The watch fell behind its events; resume from resumeCursor.",
            )
        }
        Error::ShuttingDown => {
            ask_to_retry(&mut details, &mut metadata, OVERLOAD_RETRY_DELAY);
            (
                Code::Unavailable,
                503,
                "temporarily_unavailable",
                "SHUTTING_DOWN",
                "The server stopped before the request finished; retry it.",
            )
        }
        Error::TransactionConflict(_) => (
            Code::Aborted,
            409,
            "state_conflict",
            "TRANSACTION_CONFLICT",
            "The request conflicted with a concurrent one; retry it.",
        ),
        Error::DatabaseUnavailable(_) => {
            ask_to_retry(&mut details, &mut metadata, DATABASE_RETRY_DELAY);
            (
                Code::Unavailable,
                503,
                "temporarily_unavailable",
                "DATABASE_UNAVAILABLE",
                "A downstream service is temporarily unavailable",
            )
        }
        Error::Upstream(_) => (
            Code::Unavailable,
            502,
            "upstream_error",
            "UPSTREAM_ERROR",
            "An upstream service returned an unexpected error.",
        ),
        Error::Internal(_) => (
            Code::Internal,
            500,
            "internal_error",
            "INTERNAL",
            "Internal error.",
        ),
    };
    ErrorRow {
        code,
        http_status,
        documented_code,
        reason,
        message,
        metadata,
        details,
    }
}

#[cfg(test)]
mod readme {
    use std::time::Duration;

    use super::*;
    use crate::domain::{Etag, StreamLimitScope, Version};

    /// One error of every row: every variant, and every reason a variant can give.
    fn one_of_each() -> Vec<Error> {
        let id = InvitationId::generate();
        let etag = Etag::of(id, Version::FIRST);
        let cause = || Box::<dyn std::error::Error + Send + Sync>::from("cause");
        let mut errors: Vec<Error> = [
            ViolationReason::MissingRequiredField,
            ViolationReason::InvalidFormat,
            ViolationReason::ValueTooLong,
            ViolationReason::ValueOutOfRange,
            ViolationReason::InvalidPageToken,
            ViolationReason::InvalidCursor,
            ViolationReason::EtagConflict,
            ViolationReason::RequestIdReused,
            ViolationReason::InvalidEncoding,
        ]
        .into_iter()
        .map(|reason| Error::invalid("field", reason, "why"))
        .collect();
        errors.extend(
            [
                AuthFailure::Missing,
                AuthFailure::Expired,
                AuthFailure::Invalid,
            ]
            .map(Error::Unauthenticated),
        );
        errors.extend(
            [
                Forbidden::EnterpriseAdminRequired,
                Forbidden::ScopeNotPermitted,
                Forbidden::EmailMismatch,
                Forbidden::EmailNotVerified,
            ]
            .map(Error::PermissionDenied),
        );
        errors.extend([
            Error::InvitationNotFound(id),
            Error::InvitationTokenInvalid,
            Error::StateConflict {
                id,
                current_status: InvitationStatus::Cancelled,
                etag,
            },
            Error::EtagMismatch {
                id,
                current: etag,
                requested: "W/\"0.x\"".into(),
            },
            Error::NotAdmissible {
                id,
                current_status: InvitationStatus::Accepted,
                etag,
            },
            Error::InvitationAlreadyExists { existing: id },
            Error::RequestTooLarge { limit: 65536 },
            Error::RateLimited {
                retry_after: Duration::from_millis(20),
            },
            Error::Overloaded,
            Error::CallerOverloaded { limit: 64 },
            Error::StreamLimit {
                scope: StreamLimitScope::Connection,
                limit: 16,
            },
            Error::ResponsesUnread { limit: 4096 },
            Error::RequestReadTimeout {
                timeout: Duration::from_secs(2),
            },
            Error::WatchCursorExpired {
                retention: Duration::from_secs(7 * 24 * 3600),
            },
            Error::WatchTooSlow {
                resume_cursor: "cursor".into(),
                buffer: 1024,
            },
            Error::ShuttingDown,
            Error::TransactionConflict(cause()),
            Error::Upstream(cause()),
            Error::DatabaseUnavailable(cause()),
            Error::Internal("bug".into()),
        ]);
        errors
    }

    /// `INVALID_ARGUMENT` for `Code::InvalidArgument`.
    fn code_name(code: Code) -> String {
        let mut name = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
        name
    }

    /// The "more details" cell: the kinds of details, and the metadata particular to the row.
    fn details_cell(row: &ErrorRow) -> String {
        let mut parts: Vec<String> = [
            ("BadRequest", row.details.bad_request().is_some()),
            ("ResourceInfo", row.details.resource_info().is_some()),
            (
                "PreconditionFailure",
                row.details.precondition_failure().is_some(),
            ),
            ("RetryInfo", row.details.retry_info().is_some()),
        ]
        .into_iter()
        .filter(|(_, present)| *present)
        .map(|(name, _)| name.to_owned())
        .collect();
        let mut keys: Vec<&String> = row.metadata.keys().collect();
        keys.sort();
        if !keys.is_empty() {
            let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
            parts.push(format!("metadata {}", keys.join(", ")));
        }
        if parts.is_empty() {
            return "none".to_owned();
        }
        parts.join("; ")
    }

    /// The README's table, made from [`row`]: rows that differ only in their reason share a
    /// line.
    fn table() -> String {
        let mut lines: Vec<(String, Vec<&'static str>)> = Vec::new();
        for error in one_of_each() {
            let row = row(&error);
            let key = format!(
                "| {} {} | {} | {{}} | {} |",
                row.http_status,
                row.documented_code,
                code_name(row.code),
                details_cell(&row)
            );
            match lines.last_mut() {
                Some((last, reasons)) if *last == key => reasons.push(row.reason),
                _ => lines.push((key, vec![row.reason])),
            }
        }
        let mut table = String::from(
            "| documented | gRPC code | `ErrorInfo.reason` | more details |\n| --- | --- | --- | --- |\n",
        );
        for (line, reasons) in lines {
            table.push_str(&line.replace("{}", &reasons.join(", ")));
            table.push('\n');
        }
        table
    }

    const START: &str = "<!-- error table: made from src/grpc/status.rs; BLESS=1 cargo test readme rewrites it -->\n";
    const END: &str = "<!-- end of error table -->";

    #[test]
    fn the_readme_table_is_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let start = readme.find(START).expect("the table's start marker") + START.len();
        let end = readme[start..].find(END).expect("the table's end marker") + start;
        let expected = table();
        if readme[start..end] != expected {
            if std::env::var_os("BLESS").is_some() {
                let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
                std::fs::write(path, updated).expect("write README.md");
                return;
            }
            panic!(
                "README.md's error table differs from src/grpc/status.rs; it should read:\n{expected}\n(BLESS=1 cargo test readme rewrites it)"
            );
        }
    }

    #[test]
    fn every_reason_has_one_row() {
        let mut reasons: Vec<&str> = one_of_each().iter().map(|e| row(e).reason).collect();
        let all = reasons.len();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), all, "a reason names one row");
    }

    #[test]
    fn the_refusals_metrics_count_apart_are_rows() {
        let shed: Vec<&str> = [
            Error::Overloaded,
            Error::CallerOverloaded { limit: 1 },
            Error::StreamLimit {
                scope: StreamLimitScope::Server,
                limit: 1,
            },
            Error::ResponsesUnread { limit: 1 },
        ]
        .iter()
        .map(|error| row(error).reason)
        .collect();
        assert_eq!(shed, LOAD_SHED_REASONS);
        let limited = Error::RateLimited {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(row(&limited).reason, RATE_LIMITED_REASON);
        let reasons: Vec<&str> = one_of_each().iter().map(|e| row(e).reason).collect();
        assert!(
            reasons
                .iter()
                .all(|reason| reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')),
            "metrics take a reason only if it is upper case: {reasons:?}"
        );
    }
}
