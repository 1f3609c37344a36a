//! What happened to an invitation: one event per change, written by the store in the same
//! transaction as the change it describes (the outbox), so that no event exists without its
//! change and no committed change lacks its event.
//!
//! The domain decides what each change is called and who made it ([`EventRecord`]); the
//! store adds the invitation as the change left it and the event's position in the outbox.
//! Dry runs, replays of an earlier `request_id` and writes that matched nothing change
//! nothing, so they have no event.
use std::fmt;
use std::time::Duration;

use uuid::Uuid;

use super::invitation::{Invitation, Timestamp};
use super::values::{RequestId, UserRef};

/// How long events are kept by default (`INVITATIONS_EVENT_RETENTION`).
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The kinds of change, as stored and as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Created,
    /// A link was issued or rotated.
    LinkIssued,
    Accepted,
    Cancelled,
    /// A pending invitation's `expires_at` passed and the store recorded it.
    Expired,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        Self::Created,
        Self::LinkIssued,
        Self::Accepted,
        Self::Cancelled,
        Self::Expired,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::LinkIssued => "link_issued",
            Self::Accepted => "accepted",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse_stored(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

/// Who made a change: a user, or the service itself (expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User(UserRef),
    System,
}

impl Actor {
    const SYSTEM: &'static str = "system";

    pub fn parse_stored(raw: &str) -> Option<Self> {
        match raw {
            Self::SYSTEM => Some(Self::System),
            user => UserRef::from_stored(user.as_bytes()).map(Self::User),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(user) => fmt::Display::fmt(user, f),
            Self::System => f.write_str(Self::SYSTEM),
        }
    }
}

/// An event's identity: a UUIDv7, so ids sort roughly by time; consumers drop duplicates
/// by it (the relay's `Nats-Msg-Id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The W3C trace context of the call that made a change: the trace id joins the event to
/// the call's trace, the span id lets a consumer's work be a child of the call's span. Only
/// while traces are exported (`telemetry.rs`): otherwise there is no span to point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

impl TraceContext {
    /// `None` for the all-zero ids W3C calls invalid.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Self {
            trace_id,
            span_id,
            sampled,
        })
    }

    /// The trace id as W3C writes it: 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` header: `00-{trace id}-{span id}-{flags}`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Reads what [`TraceContext::traceparent`] wrote (version `00` only).
    pub fn parse_traceparent(raw: &str) -> Option<Self> {
        let mut parts = raw.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() || flags.len() != 2 {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Self::new(unhex(trace)?, unhex(span)?, flags & 1 == 1)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

/// What the domain says of a change before the store writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: EventId,
    pub kind: EventType,
    pub occurred_at: Timestamp,
    pub actor: Actor,
    /// The client's `request_id`, when the change was made with one.
    pub request_id: Option<RequestId>,
    /// The call's trace, while traces are exported.
    pub trace: Option<TraceContext>,
}

impl EventRecord {
    /// A change made by `actor` at `at`.
    pub fn of(kind: EventType, actor: Actor, at: Timestamp) -> Self {
        Self {
            id: EventId::generate(),
            kind,
            occurred_at: at,
            actor,
            request_id: None,
            trace: None,
        }
    }

    pub fn with_request_id(mut self, request_id: Option<RequestId>) -> Self {
        self.request_id = request_id;
        self
    }

    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// A pending invitation found past its `expires_at` and stored as expired: the
    /// service's doing, not a user's.
    pub fn expiry(at: Timestamp) -> Self {
        Self::of(EventType::Expired, Actor::System, at)
    }
}

/// An event as the outbox keeps it: its record, the invitation as the change left it (with
/// its new version, hence its new etag; never its link), and its position in the outbox.
#[derive(Debug, Clone)]
pub struct InvitationEvent {
    /// Unique and increasing in the order a reader may deliver events (see the store).
    pub position: i64,
    pub record: EventRecord,
    pub invitation: Invitation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_actors_read_back_as_written() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse_stored(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse_stored("deleted"), None);
        let user = Actor::User(UserRef::from_uuid(Uuid::from_u128(5)));
        for actor in [user, Actor::System] {
            assert_eq!(Actor::parse_stored(&actor.to_string()), Some(actor));
        }
        assert_eq!(Actor::parse_stored("robots/1"), None);
    }

    #[test]
    fn trace_contexts_read_back_as_written() {
        let trace = TraceContext::new([0x4b; 16], [0x07; 8], true).expect("valid");
        let written = trace.traceparent();
        assert_eq!(
            written,
            "00-4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-0707070707070707-01"
        );
        assert_eq!(TraceContext::parse_traceparent(&written), Some(trace));
        assert_eq!(trace.trace_id(), "4b".repeat(16));
        let unsampled = TraceContext::new([1; 16], [2; 8], false).expect("valid");
        assert_eq!(
            TraceContext::parse_traceparent(&unsampled.traceparent()),
            Some(unsampled)
        );
        assert_eq!(TraceContext::new([0; 16], [1; 8], true), None);
        for bad in [
            "",
            "01-4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-0707070707070707-01",
            "00-4B4B4B4B4B4B4B4B4B4B4B4B4B4B4B4B-0707070707070707-01",
            "00-4b4b-0707070707070707-01",
            "00-00000000000000000000000000000000-0707070707070707-01",
            "00-4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-0707070707070707-01-x",
        ] {
            assert_eq!(TraceContext::parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_ids_are_version_7_and_grow() {
        let first = EventId::generate();
        let second = EventId::generate();
        assert_eq!(first.as_uuid().get_version_num(), 7);
        assert!(second > first);
    }
}
