//! Wire types → domain commands (validation happens once, here) and domain → wire types.
use std::collections::BTreeSet;

use prost_types::Timestamp as WireTimestamp;
use tonic::metadata::MetadataMap;

use crate::auth::EnterpriseAdmin;
use crate::domain::{
    AcceptCommand, CancelCommand, CancelReason, CreateCommand, DEFAULT_PAGE_SIZE, EmailAddress,
    Invitation, InvitationId, InvitationStatus, IssueTokenCommand, LinkToken, ListQuery,
    MAX_PAGE_SIZE, RoleRef, Scope, StatusFilter, Timestamp, UserRef, ValueError,
};
use crate::domain::{Error, FieldViolation, ViolationReason};
use crate::domain::{EventType, InvitationEvent, RequestId, WatchFilter, WatchQuery};
use crate::proto::invitations::v1 as pb;

/// More entries than there are statuses can only be duplicates; far more is an attack.
const MAX_STATUS_FILTERS: usize = 16;
/// Longest etag accepted; ours are about 30 characters.
const MAX_ETAG_LEN: usize = 128;
/// Longest page token accepted before the codec even looks at it.
const MAX_PAGE_TOKEN_LEN: usize = 512;

/// Collects every violation of a request, so one answer names every bad field.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn check<T>(&mut self, field: &'static str, parsed: Result<T, ValueError>) -> Option<T> {
        parsed
            .map_err(|e| self.0.push(FieldViolation::from_value(field, e)))
            .ok()
    }

    fn optional<T>(
        &mut self,
        field: &'static str,
        raw: &str,
        parse: impl FnOnce(&str) -> Result<T, ValueError>,
    ) -> Option<T> {
        if raw.is_empty() {
            None
        } else {
            self.check(field, parse(raw))
        }
    }

    fn push(
        &mut self,
        field: &'static str,
        reason: ViolationReason,
        description: impl Into<String>,
    ) {
        self.0.push(FieldViolation::new(field, reason, description));
    }

    /// An opaque token the domain checks: none when empty, a violation when longer than any
    /// this service issues (so hostile input costs nothing).
    fn opaque(
        &mut self,
        field: &'static str,
        raw: String,
        reason: ViolationReason,
        description: &'static str,
    ) -> Option<String> {
        match raw.len() {
            0 => None,
            len if len > MAX_PAGE_TOKEN_LEN => {
                self.push(field, reason, description);
                None
            }
            _ => Some(raw),
        }
    }

    /// `Ok(value)` when no violation was recorded; every field was parsed by then.
    fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Error> {
        if self.0.is_empty()
            && let Some(value) = build()
        {
            return Ok(value);
        }
        let mut violations = self.0;
        if violations.is_empty() {
            violations.push(FieldViolation::new(
                "",
                ViolationReason::InvalidFormat,
                "is invalid",
            ));
        }
        Err(Error::InvalidArgument(violations))
    }
}

pub(super) fn wire_status(status: InvitationStatus) -> pb::InvitationStatus {
    match status {
        InvitationStatus::Pending => pb::InvitationStatus::Pending,
        InvitationStatus::Accepted => pb::InvitationStatus::Accepted,
        InvitationStatus::Cancelled => pb::InvitationStatus::Cancelled,
        InvitationStatus::Expired => pb::InvitationStatus::Expired,
    }
}

fn domain_status(raw: i32) -> Option<InvitationStatus> {
    match pb::InvitationStatus::try_from(raw).ok()? {
        pb::InvitationStatus::Unspecified => None,
        pb::InvitationStatus::Pending => Some(InvitationStatus::Pending),
        pb::InvitationStatus::Accepted => Some(InvitationStatus::Accepted),
        pb::InvitationStatus::Cancelled => Some(InvitationStatus::Cancelled),
        pb::InvitationStatus::Expired => Some(InvitationStatus::Expired),
    }
}

pub fn wire_timestamp(at: Timestamp) -> WireTimestamp {
    let micros = at.unix_micros();
    WireTimestamp {
        seconds: micros.div_euclid(1_000_000),
        // In 0..1_000_000_000 by construction of div_euclid/rem_euclid.
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

fn domain_timestamp(at: &WireTimestamp) -> Result<Timestamp, ValueError> {
    const SHAPE: &str = "must be a valid timestamp (nanos in 0..1e9)";
    if !(0..1_000_000_000).contains(&at.nanos) {
        return Err(ValueError::Malformed(SHAPE));
    }
    at.seconds
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(i64::from(at.nanos / 1_000)))
        .map(Timestamp::from_unix_micros)
        .ok_or(ValueError::Malformed(SHAPE))
}

/// The invitation as a caller sees it at `now`, as the generated message a client decodes.
/// The service itself sends [`super::WireInvitation`], which writes these same bytes without
/// building the message; its tests hold it to this function, and the benchmark's no-op
/// server answers with these.
pub fn wire_invitation(invitation: Invitation, now: Timestamp) -> pb::Invitation {
    let status = wire_status(invitation.status_at(now)) as i32;
    let etag = invitation.etag().into_string();
    pb::Invitation {
        id: invitation.id.to_canonical(),
        enterprise_ref: invitation.enterprise.resource_name(),
        scope: invitation.scope.into_string(),
        email_constraint: invitation.email.into_string(),
        role: invitation.role.resource_name(),
        status,
        invited_by: invitation.invited_by.resource_name(),
        pending_human_actor_ref: invitation.pending_human_actor.map(|u| u.resource_name()),
        challenge_ref: invitation.challenge_ref,
        created_at: Some(wire_timestamp(invitation.created_at)),
        updated_at: Some(wire_timestamp(invitation.updated_at)),
        expires_at: Some(wire_timestamp(invitation.expires_at)),
        accepted_at: invitation.accepted_at.map(wire_timestamp),
        cancelled_at: invitation.cancelled_at.map(wire_timestamp),
        etag,
        cancel_reason: invitation.cancel_reason.map(CancelReason::into_string),
        cancelled_by: invitation.cancelled_by.map(|u| u.resource_name()),
        accepted_by: invitation.accepted_by.map(|u| u.resource_name()),
    }
}

pub fn list_query(
    admin: EnterpriseAdmin,
    request: pb::ListInvitationsRequest,
) -> Result<ListQuery, Error> {
    let mut violations = Violations::default();
    let page_size = match u32::try_from(request.page_size) {
        Err(_) => {
            violations.push(
                "page_size",
                ViolationReason::ValueOutOfRange,
                "must not be negative",
            );
            None
        }
        Ok(0) => Some(DEFAULT_PAGE_SIZE),
        Ok(size) => Some(size.min(MAX_PAGE_SIZE)),
    };
    let statuses = status_filter(&mut violations, &request.statuses);
    let email = violations.optional(
        "email_constraint",
        &request.email_constraint,
        EmailAddress::parse,
    );
    let scope = violations.optional("scope", &request.scope, Scope::parse);
    let page_token = violations.opaque(
        "page_token",
        request.page_token,
        ViolationReason::InvalidPageToken,
        "is not a page token of this query",
    );
    let email_given = !request.email_constraint.is_empty();
    let scope_given = !request.scope.is_empty();
    violations.finish(|| {
        Some(ListQuery {
            enterprise: admin.enterprise,
            scope: if scope_given { Some(scope?) } else { None },
            statuses,
            email: if email_given { Some(email?) } else { None },
            page_size: page_size?,
            page_token,
        })
    })
}

/// The values of a repeated enum filter (`statuses`, `types`): UNSPECIFIED, unknown values
/// and more entries than any real filter needs are violations.
fn enum_set<T: Ord>(
    violations: &mut Violations,
    field: &'static str,
    raw: &[i32],
    parse: impl Fn(i32) -> Option<T>,
    what: &str,
) -> BTreeSet<T> {
    let mut values = BTreeSet::new();
    if raw.len() > MAX_STATUS_FILTERS {
        violations.push(
            field,
            ViolationReason::ValueOutOfRange,
            format!("must have at most {MAX_STATUS_FILTERS} entries"),
        );
        return values;
    }
    for raw in raw {
        match parse(*raw) {
            Some(value) => {
                values.insert(value);
            }
            None => violations.push(
                field,
                ViolationReason::InvalidFormat,
                format!("{raw} is not {what} (UNSPECIFIED is not allowed)"),
            ),
        }
    }
    values
}

fn status_filter(violations: &mut Violations, raw: &[i32]) -> StatusFilter {
    enum_set(violations, "statuses", raw, domain_status, "a status")
}

fn domain_event_type(raw: i32) -> Option<EventType> {
    match pb::InvitationEventType::try_from(raw).ok()? {
        pb::InvitationEventType::Unspecified => None,
        pb::InvitationEventType::Created => Some(EventType::Created),
        pb::InvitationEventType::LinkIssued => Some(EventType::LinkIssued),
        pb::InvitationEventType::Accepted => Some(EventType::Accepted),
        pb::InvitationEventType::Cancelled => Some(EventType::Cancelled),
        pb::InvitationEventType::Expired => Some(EventType::Expired),
    }
}

pub fn wire_event_type(kind: EventType) -> pb::InvitationEventType {
    match kind {
        EventType::Created => pb::InvitationEventType::Created,
        EventType::LinkIssued => pb::InvitationEventType::LinkIssued,
        EventType::Accepted => pb::InvitationEventType::Accepted,
        EventType::Cancelled => pb::InvitationEventType::Cancelled,
        EventType::Expired => pb::InvitationEventType::Expired,
    }
}

pub fn watch_query(
    admin: EnterpriseAdmin,
    request: pb::WatchInvitationsRequest,
) -> Result<WatchQuery, Error> {
    let mut violations = Violations::default();
    let statuses = status_filter(&mut violations, &request.statuses);
    let types = enum_set(
        &mut violations,
        "types",
        &request.types,
        domain_event_type,
        "an event type",
    );
    let email = violations.optional(
        "email_constraint",
        &request.email_constraint,
        EmailAddress::parse,
    );
    let scope = violations.optional("scope", &request.scope, Scope::parse);
    let start_cursor = violations.opaque(
        "start_cursor",
        request.start_cursor,
        ViolationReason::InvalidCursor,
        "is not a cursor of this watch",
    );
    let email_given = !request.email_constraint.is_empty();
    let scope_given = !request.scope.is_empty();
    let filter = violations.finish(|| {
        Some((
            if scope_given { Some(scope?) } else { None },
            if email_given { Some(email?) } else { None },
        ))
    });
    let (scope, email) = filter?;
    Ok(WatchQuery {
        filter: WatchFilter::new(admin.enterprise, scope, statuses, email, types)?,
        start_cursor,
        send_initial_state: request.send_initial_state,
    })
}

/// An event as a watch sends it: the invitation as the change left it, with its status as
/// of the event.
pub fn wire_event(event: &InvitationEvent, cursor: String) -> pb::InvitationEvent {
    let record = &event.record;
    pb::InvitationEvent {
        event_id: record.id.to_string(),
        r#type: wire_event_type(record.kind) as i32,
        occurred_at: Some(wire_timestamp(record.occurred_at)),
        actor: record.actor.to_string(),
        request_id: record
            .request_id
            .map(|id| id.as_uuid().hyphenated().to_string()),
        invitation: Some(wire_invitation(
            event.invitation.clone(),
            record.occurred_at,
        )),
        cursor,
        trace_id: record
            .trace
            .map(|trace| trace.trace_id())
            .unwrap_or_default(),
    }
}

pub fn invitation_id(raw: &str) -> Result<InvitationId, Error> {
    let mut violations = Violations::default();
    let id = violations.check("invitation_id", InvitationId::parse(raw));
    violations.finish(|| id)
}

pub fn create_command(
    admin: EnterpriseAdmin,
    request: pb::CreateInvitationRequest,
) -> Result<CreateCommand, Error> {
    let mut violations = Violations::default();
    let email = violations.check(
        "email_constraint",
        EmailAddress::parse(&request.email_constraint),
    );
    let role = violations.check("role", RoleRef::parse(&request.role));
    let scope = violations.optional("scope", &request.scope, Scope::parse);
    let pending_human_actor = violations.optional(
        "pending_human_actor_ref",
        &request.pending_human_actor_ref,
        UserRef::parse,
    );
    let expires_at = request
        .expires_at
        .as_ref()
        .and_then(|at| violations.check("expires_at", domain_timestamp(at)));
    let (scope_given, actor_given, expiry_given) = (
        !request.scope.is_empty(),
        !request.pending_human_actor_ref.is_empty(),
        request.expires_at.is_some(),
    );
    violations.finish(|| {
        Some(CreateCommand {
            enterprise: admin.enterprise,
            actor: admin.subject,
            email: email?,
            role: role?,
            scope: if scope_given { Some(scope?) } else { None },
            expires_at: if expiry_given {
                Some(expires_at?)
            } else {
                None
            },
            pending_human_actor: if actor_given {
                Some(pending_human_actor?)
            } else {
                None
            },
            trace: None,
        })
    })
}

/// The If-Match value: the `etag` field or the `if-match` metadata (one of them, or both
/// when equal). `Some(None)` when neither is given and it is optional; `None` after a
/// violation.
fn if_match(
    field: &str,
    metadata: &MetadataMap,
    required: bool,
    violations: &mut Violations,
) -> Option<Option<String>> {
    let header = match metadata.get("if-match").map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value.trim()),
        Some(Err(_)) => {
            violations.push(
                "etag",
                ViolationReason::InvalidFormat,
                "if-match metadata must be printable ASCII",
            );
            return None;
        }
    };
    let value = match (field, header) {
        ("", None | Some("")) if !required => return Some(None),
        ("", None | Some("")) => {
            violations.push(
                "etag",
                ViolationReason::MissingRequiredField,
                "is required: send the invitation's current etag in `etag` or `if-match` metadata",
            );
            return None;
        }
        (field, None | Some("")) => field,
        ("", Some(header)) => header,
        (field, Some(header)) if field == header => field,
        _ => {
            violations.push(
                "etag",
                ViolationReason::EtagConflict,
                "differs from the if-match metadata; send one, or the same value in both",
            );
            return None;
        }
    };
    if value.len() > MAX_ETAG_LEN {
        violations.push(
            "etag",
            ViolationReason::ValueTooLong,
            format!("must be at most {MAX_ETAG_LEN} characters"),
        );
        return None;
    }
    Some(Some(value.to_owned()))
}

pub fn cancel_command(
    admin: EnterpriseAdmin,
    metadata: &MetadataMap,
    request: pb::CancelInvitationRequest,
) -> Result<CancelCommand, Error> {
    let mut violations = Violations::default();
    let id = violations.check("invitation_id", InvitationId::parse(&request.invitation_id));
    let reason = violations.check("reason", CancelReason::parse(&request.reason));
    let if_match = if_match(&request.etag, metadata, true, &mut violations).flatten();
    let request_id = violations.optional("request_id", &request.request_id, RequestId::parse);
    let request_id_given = !request.request_id.is_empty();
    violations.finish(|| {
        Some(CancelCommand {
            enterprise: admin.enterprise,
            actor: admin.subject,
            id: id?,
            if_match: if_match?,
            reason: reason?,
            validate_only: request.validate_only,
            request_id: if request_id_given {
                Some(request_id?)
            } else {
                None
            },
            trace: None,
        })
    })
}

pub fn issue_token_command(
    admin: EnterpriseAdmin,
    metadata: &MetadataMap,
    request: pb::IssueInvitationTokenRequest,
) -> Result<IssueTokenCommand, Error> {
    let mut violations = Violations::default();
    let id = violations.check("invitation_id", InvitationId::parse(&request.invitation_id));
    let if_match = if_match(&request.etag, metadata, false, &mut violations);
    let expires_at = request
        .expires_at
        .as_ref()
        .and_then(|at| violations.check("expires_at", domain_timestamp(at)));
    let expiry_given = request.expires_at.is_some();
    violations.finish(|| {
        Some(IssueTokenCommand {
            enterprise: admin.enterprise,
            actor: admin.subject,
            id: id?,
            if_match: if_match?,
            expires_at: if expiry_given {
                Some(expires_at?)
            } else {
                None
            },
            trace: None,
        })
    })
}

pub fn accept_command(
    invitee: UserRef,
    email: EmailAddress,
    token: &str,
) -> Result<AcceptCommand, Error> {
    let mut violations = Violations::default();
    let token = violations.check("token", LinkToken::parse(token));
    violations.finish(|| {
        Some(AcceptCommand {
            token: token?,
            invitee,
            email,
            trace: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for micros in [0, 1, -1, 1_767_225_600_123_456, -1_500_000] {
            let at = Timestamp::from_unix_micros(micros);
            assert_eq!(domain_timestamp(&wire_timestamp(at)), Ok(at));
        }
        assert!(
            domain_timestamp(&WireTimestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
        assert!(
            domain_timestamp(&WireTimestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    fn admin() -> EnterpriseAdmin {
        EnterpriseAdmin {
            subject: UserRef::from_uuid(Uuid::from_u128(1)),
            enterprise: crate::domain::EnterpriseId::from_uuid(Uuid::from_u128(2)),
        }
    }

    fn invalid_argument_only<T>(outcome: Result<T, Error>) -> bool {
        matches!(outcome, Ok(_) | Err(Error::InvalidArgument(_)))
    }

    proptest! {
        /// Whatever a request holds, it becomes a command or INVALID_ARGUMENT naming fields.
        #[test]
        fn list_requests_parse_or_are_invalid(
            page_size in any::<i32>(),
            page_token in any::<String>(),
            statuses in proptest::collection::vec(any::<i32>(), 0..40),
            email in any::<String>(),
            scope in any::<String>(),
        ) {
            let request = pb::ListInvitationsRequest { page_size, page_token, statuses, email_constraint: email, scope };
            let outcome = list_query(admin(), request);
            if let Ok(query) = &outcome {
                prop_assert!((1..=MAX_PAGE_SIZE).contains(&query.page_size));
            }
            prop_assert!(invalid_argument_only(outcome));
        }

        #[test]
        fn cancel_and_create_requests_parse_or_are_invalid(
            id in any::<String>(),
            etag in any::<String>(),
            reason in any::<String>(),
            request_id in any::<String>(),
            seconds in any::<i64>(),
            nanos in any::<i32>(),
        ) {
            let cancel = pb::CancelInvitationRequest {
                invitation_id: id.clone(),
                etag: etag.clone(),
                reason: reason.clone(),
                validate_only: false,
                request_id,
            };
            prop_assert!(invalid_argument_only(cancel_command(admin(), &MetadataMap::new(), cancel)));
            let create = pb::CreateInvitationRequest {
                email_constraint: reason,
                role: id,
                scope: etag,
                expires_at: Some(WireTimestamp { seconds, nanos }),
                pending_human_actor_ref: String::new(),
            };
            prop_assert!(invalid_argument_only(create_command(admin(), create)));
        }
    }
}
