//! The `Invitation` message as the service sends it: encoded straight from the domain
//! invitation into the response buffer.
//!
//! prost's generated `Invitation` owns a `String` per field. Building one per item meant
//! formatting five resource names into fresh strings, encoding them, then freeing them all
//! (what skipping that buys, measured: `docs/adr/0005-invitation-wire-encoder.md`). The server the service runs (`proto::server`, see `build.rs`) holds this type
//! where the generated one had `Invitation`. It writes exactly the bytes prost writes for
//! [`wire_invitation`](super::wire_invitation)'s message, field for field and in the same
//! order; `the_bytes_are_the_generated_messages` holds it to that over arbitrary
//! invitations.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use prost_types::Timestamp as WireTimestamp;
use uuid::Uuid;

use crate::domain::{EnterpriseId, Etag, Invitation, RoleRef, Timestamp, UserRef};

use super::convert::{wire_status, wire_timestamp};

/// `invitations.v1.ListInvitationsResponse`, as the service sends it.
#[derive(Clone, PartialEq, Message)]
pub struct ListInvitationsResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<WireInvitation>,
    #[prost(string, tag = "2")]
    pub next_page_token: String,
}

/// `invitations.v1.IssueInvitationTokenResponse`, as the service sends it.
#[derive(Clone, PartialEq, Message)]
pub struct IssueInvitationTokenResponse {
    #[prost(message, optional, tag = "1")]
    pub invitation: Option<WireInvitation>,
    #[prost(string, tag = "2")]
    pub token: String,
}

/// `invitations.v1.WatchInvitationsResponse`, as the service sends it.
#[derive(Clone, PartialEq, Message)]
pub struct WatchInvitationsResponse {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<WireEvent>,
    #[prost(string, tag = "2")]
    pub cursor: String,
    #[prost(message, repeated, tag = "3")]
    pub initial_state: Vec<WireInvitation>,
    #[prost(bool, tag = "4")]
    pub initial_state_complete: bool,
    #[prost(enumeration = "crate::proto::invitations::v1::WatchEnd", tag = "5")]
    pub end: i32,
}

/// One `invitations.v1.InvitationEvent` of a watch: the event's fields, encoded once for
/// every watch that sends it (`encoded`, the generated message's bytes without a cursor),
/// with this watch's cursor (field 7) written in its place among them. A hundred watches of
/// one event encode it once and each writes only its cursor;
/// `the_event_bytes_are_the_generated_messages` holds it to the generated message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireEvent {
    encoded: Bytes,
    /// Where in `encoded` the fields numbered after the cursor's begin.
    cursor_at: usize,
    cursor: String,
}

/// `InvitationEvent.cursor`.
const EVENT_CURSOR_TAG: u32 = 7;
/// `InvitationEvent.trace_id`, the one field after the cursor.
const EVENT_TRACE_ID_TAG: u32 = 8;

impl WireEvent {
    pub fn new(encoded: Bytes, cursor_at: usize, cursor: String) -> Self {
        Self {
            encoded,
            cursor_at,
            cursor,
        }
    }

    /// The bytes of `event` without its cursor, in field order, and where the cursor goes.
    pub fn encode_shared(
        mut event: crate::proto::invitations::v1::InvitationEvent,
    ) -> (Bytes, usize) {
        event.cursor.clear();
        let trace_id = std::mem::take(&mut event.trace_id);
        let mut encoded = event.encode_to_vec();
        let cursor_at = encoded.len();
        if !trace_id.is_empty() {
            encoding::string::encode(EVENT_TRACE_ID_TAG, &trace_id, &mut encoded);
        }
        (encoded.into(), cursor_at)
    }
}

impl Message for WireEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let (before, after) = self
            .encoded
            .split_at(self.cursor_at.min(self.encoded.len()));
        buf.put_slice(before);
        if !self.cursor.is_empty() {
            encoding::string::encode(EVENT_CURSOR_TAG, &self.cursor, buf);
        }
        buf.put_slice(after);
    }

    /// The service only sends events.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let cursor = if self.cursor.is_empty() {
            0
        } else {
            encoding::string::encoded_len(EVENT_CURSOR_TAG, &self.cursor)
        };
        self.encoded.len() + cursor
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// One invitation of a response, with its effective status at the time of the response.
///
/// `Default` (no invitation, an empty message) exists only because prost's decoding of the
/// messages that hold this type asks for it; the service never decodes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireInvitation(Option<Prepared>);

/// What encoding needs beyond the invitation, worked out once: prost asks for the length
/// of a nested message twice (for the whole response, then for its length prefix).
#[derive(Clone, Debug, PartialEq)]
struct Prepared {
    invitation: Invitation,
    status: i32,
    etag: Etag,
    encoded_len: usize,
}

impl WireInvitation {
    /// `invitation` as seen at `now`: a pending invitation past `expires_at` is expired.
    pub fn new(invitation: Invitation, now: Timestamp) -> Self {
        let status = wire_status(invitation.status_at(now)) as i32;
        let etag = invitation.etag();
        let mut prepared = Prepared {
            invitation,
            status,
            etag,
            encoded_len: 0,
        };
        prepared.encoded_len = prepared.fields(LengthCounter(0)).0;
        Self(Some(prepared))
    }
}

/// Where the fields go: a buffer, or a count of the bytes they would take. One walk over
/// the fields serves both; where the counter takes a shortcut (names, timestamps), the
/// tests compare the bytes written with prost's.
trait FieldSink {
    fn string(&mut self, tag: u32, parts: &[&[u8]]);
    /// `{collection}/{uuid}`, or the bare uuid when `collection` is empty.
    fn name(&mut self, tag: u32, collection: &str, id: Uuid) {
        let mut text = Uuid::encode_buffer();
        let id = id.hyphenated().encode_lower(&mut text).as_bytes();
        match collection {
            "" => self.string(tag, &[id]),
            _ => self.string(tag, &[collection.as_bytes(), b"/", id]),
        }
    }
    fn enumeration(&mut self, tag: u32, value: i32);
    fn timestamp(&mut self, tag: u32, at: &WireTimestamp);
}

struct LengthCounter(usize);

impl LengthCounter {
    /// A length-delimited field: key, length, then `len` bytes.
    fn length_delimited(&mut self, tag: u32, len: usize) {
        self.0 += encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len;
    }
}

impl FieldSink for LengthCounter {
    fn string(&mut self, tag: u32, parts: &[&[u8]]) {
        self.length_delimited(tag, parts.iter().map(|part| part.len()).sum());
    }
    /// Counted without writing the uuid out: its text is always the same length.
    fn name(&mut self, tag: u32, collection: &str, _: Uuid) {
        let separator = usize::from(!collection.is_empty());
        self.length_delimited(
            tag,
            collection.len() + separator + uuid::fmt::Hyphenated::LENGTH,
        );
    }
    fn enumeration(&mut self, tag: u32, value: i32) {
        self.0 += encoding::int32::encoded_len(tag, &value);
    }
    fn timestamp(&mut self, tag: u32, at: &WireTimestamp) {
        self.0 += encoding::message::encoded_len(tag, at);
    }
}

struct Writer<'b, B>(&'b mut B);

impl<B: BufMut> FieldSink for Writer<'_, B> {
    fn string(&mut self, tag: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        encoding::encode_key(tag, WireType::LengthDelimited, self.0);
        encoding::encode_varint(len as u64, self.0);
        for part in parts {
            self.0.put_slice(part);
        }
    }
    fn enumeration(&mut self, tag: u32, value: i32) {
        encoding::int32::encode(tag, &value, self.0);
    }
    fn timestamp(&mut self, tag: u32, at: &WireTimestamp) {
        self.0.put_slice(TimestampField::new(tag, at).as_bytes());
    }
}

/// A `google.protobuf.Timestamp` field, as prost writes it, laid out in a few bytes on the
/// stack. An invitation has three to five; written through prost's generic varint encoder,
/// byte by byte, they were a third of the cost of encoding it.
struct TimestampField {
    bytes: [u8; Self::MAX_LEN],
    len: usize,
}

impl TimestampField {
    /// Key (at most 5 bytes), length (1: the body is at most 22), and the body: `seconds`
    /// and `nanos` keys of 1 byte and varints of at most 10 each.
    const MAX_LEN: usize = 5 + 1 + 22;

    fn new(tag: u32, at: &WireTimestamp) -> Self {
        let mut bytes = [0u8; Self::MAX_LEN];
        let mut len = put_varint(u64::from(tag << 3 | 2), &mut bytes); // length-delimited
        // The body is at most 22 bytes, so its length is one byte, filled in below.
        let body_at = len + 1;
        len = body_at;
        if at.seconds != 0 {
            bytes[len] = 1 << 3; // field 1, varint
            len += 1 + put_varint(at.seconds as u64, &mut bytes[len + 1..]);
        }
        if at.nanos != 0 {
            bytes[len] = 2 << 3; // field 2, varint
            len += 1 + put_varint(i64::from(at.nanos) as u64, &mut bytes[len + 1..]);
        }
        bytes[body_at - 1] = (len - body_at) as u8;
        Self { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes `value` as a protobuf varint at the start of `out`; returns the bytes written.
fn put_varint(mut value: u64, out: &mut [u8]) -> usize {
    let mut written = 0;
    while value >= 0x80 {
        out[written] = (value as u8) | 0x80;
        value >>= 7;
        written += 1;
    }
    out[written] = value as u8;
    written + 1
}

impl Prepared {
    /// Every field in tag order, as prost's derived encoder writes them: proto3 strings and
    /// enums only when not empty or zero, `optional` ones whenever set, messages whenever set.
    fn fields<S: FieldSink>(&self, mut sink: S) -> S {
        let invitation = &self.invitation;
        sink.name(1, "", invitation.id.as_uuid());
        sink.name(2, EnterpriseId::COLLECTION, invitation.enterprise.as_uuid());
        non_empty(&mut sink, 3, invitation.scope.as_str());
        non_empty(&mut sink, 4, invitation.email.as_str());
        sink.name(5, RoleRef::COLLECTION, invitation.role.as_uuid());
        if self.status != 0 {
            sink.enumeration(6, self.status);
        }
        user(&mut sink, 7, invitation.invited_by);
        if let Some(actor) = invitation.pending_human_actor {
            user(&mut sink, 8, actor);
        }
        if let Some(challenge) = &invitation.challenge_ref {
            sink.string(9, &[challenge.as_bytes()]);
        }
        sink.timestamp(10, &wire_timestamp(invitation.created_at));
        sink.timestamp(11, &wire_timestamp(invitation.updated_at));
        sink.timestamp(12, &wire_timestamp(invitation.expires_at));
        if let Some(at) = invitation.accepted_at {
            sink.timestamp(13, &wire_timestamp(at));
        }
        if let Some(at) = invitation.cancelled_at {
            sink.timestamp(14, &wire_timestamp(at));
        }
        // Never empty.
        sink.string(15, &[self.etag.as_bytes()]);
        if let Some(reason) = &invitation.cancel_reason {
            sink.string(16, &[reason.as_str().as_bytes()]);
        }
        if let Some(by) = invitation.cancelled_by {
            user(&mut sink, 17, by);
        }
        if let Some(by) = invitation.accepted_by {
            user(&mut sink, 18, by);
        }
        sink
    }
}

fn non_empty(sink: &mut impl FieldSink, tag: u32, value: &str) {
    if !value.is_empty() {
        sink.string(tag, &[value.as_bytes()]);
    }
}

fn user(sink: &mut impl FieldSink, tag: u32, user: UserRef) {
    sink.name(tag, UserRef::COLLECTION, user.as_uuid());
}

impl Message for WireInvitation {
    /// Writes the fields into a slice on the stack, then the slice into `buf` at once:
    /// tonic's buffer checks its capacity on every byte put into it, and an invitation is
    /// about 90 small writes (keys, lengths, varints). An invitation larger than the slice
    /// (long reason, scope or challenge) is written straight into `buf`.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        const STACK: usize = 1024;
        let Some(prepared) = &self.0 else { return };
        if prepared.encoded_len > STACK {
            prepared.fields(Writer(buf));
            return;
        }
        let mut scratch = [0u8; STACK];
        let mut unwritten = &mut scratch[..prepared.encoded_len];
        prepared.fields(Writer(&mut unwritten));
        debug_assert!(
            unwritten.is_empty(),
            "the counted length is the written one"
        );
        buf.put_slice(&scratch[..prepared.encoded_len]);
    }

    /// The service only sends invitations; were it ever to decode one, it would read past
    /// its fields and keep none of them.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.as_ref().map_or(0, |prepared| prepared.encoded_len)
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{
        CancelReason, EmailAddress, InvitationId, InvitationStatus, Scope, Version,
    };
    use crate::grpc::wire_invitation;
    use crate::proto::invitations::v1 as generated;

    fn uuid() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    fn at() -> impl Strategy<Value = Timestamp> {
        // Both sides of the epoch, so negative seconds and the nanos split are covered.
        (-4_000_000_000_000_000i64..4_000_000_000_000_000).prop_map(Timestamp::from_unix_micros)
    }

    prop_compose! {
        fn invitation()(
            (id, enterprise, role, invited_by) in (uuid(), uuid(), uuid(), uuid()),
            scope_path in proptest::option::of("[a-z0-9/_-]{1,40}"),
            email in "[a-zA-Z0-9.+]{1,20}@[a-z]{1,10}\\.[a-z]{2,4}",
            stored_status in prop_oneof![
                Just(InvitationStatus::Pending),
                Just(InvitationStatus::Accepted),
                Just(InvitationStatus::Cancelled),
            ],
            pending_human_actor in proptest::option::of(uuid()),
            challenge_ref in proptest::option::of(".{0,30}"),
            (created_at, updated_at, expires_at) in (at(), at(), at()),
            accepted in proptest::option::of((at(), uuid())),
            cancelled in proptest::option::of((at(), uuid(), proptest::option::of(".{1,500}"))),
            version in 0i64..i64::MAX,
        ) -> Invitation {
            let enterprise = EnterpriseId::from_uuid(enterprise);
            let scope = match scope_path {
                None => enterprise.resource_name(),
                Some(path) => format!("{}/{path}", enterprise.resource_name()),
            };
            Invitation {
                id: InvitationId::from_uuid(id),
                enterprise,
                scope: Scope::from_stored(scope).expect("a scope under its enterprise"),
                email: EmailAddress::from_stored(email),
                role: RoleRef::from_uuid(role),
                stored_status,
                invited_by: UserRef::from_uuid(invited_by),
                pending_human_actor: pending_human_actor.map(UserRef::from_uuid),
                challenge_ref,
                created_at,
                updated_at,
                expires_at,
                accepted_at: accepted.map(|(at, _)| at),
                accepted_by: accepted.map(|(_, by)| UserRef::from_uuid(by)),
                cancelled_at: cancelled.as_ref().map(|(at, _, _)| *at),
                cancel_reason: cancelled
                    .as_ref()
                    .and_then(|(_, _, reason)| reason.clone())
                    .map(CancelReason::from_stored),
                cancelled_by: cancelled.map(|(_, by, _)| UserRef::from_uuid(by)),
                version: Version::from_stored(version),
            }
        }
    }

    proptest! {
        #[test]
        fn the_bytes_are_the_generated_messages(
            invitations in proptest::collection::vec(invitation(), 0..4),
            now in at(),
        ) {
            let expected = generated::ListInvitationsResponse {
                items: invitations.iter().map(|i| wire_invitation(i.clone(), now)).collect(),
                next_page_token: "next".into(),
            };
            let sent = ListInvitationsResponse {
                items: invitations.into_iter().map(|i| WireInvitation::new(i, now)).collect(),
                next_page_token: "next".into(),
            };
            prop_assert_eq!(sent.encoded_len(), expected.encoded_len());
            prop_assert_eq!(sent.encode_to_vec(), expected.encode_to_vec());
        }

        #[test]
        fn an_issued_token_response_is_the_generated_message(
            invitation in invitation(),
            now in at(),
        ) {
            let expected = generated::IssueInvitationTokenResponse {
                invitation: Some(wire_invitation(invitation.clone(), now)),
                token: "inv_token".into(),
            };
            let sent = IssueInvitationTokenResponse {
                invitation: Some(WireInvitation::new(invitation, now)),
                token: "inv_token".into(),
            };
            prop_assert_eq!(sent.encode_to_vec(), expected.encode_to_vec());
        }

        #[test]
        fn the_event_bytes_are_the_generated_messages(
            invitation in invitation(),
            occurred_at in at(),
            cursors in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 1..4),
            request_id in proptest::option::of(uuid()),
            trace in proptest::option::of((any::<[u8; 16]>(), any::<[u8; 8]>(), any::<bool>())),
        ) {
            use crate::domain::{
                Actor, EventRecord, EventType, InvitationEvent, RequestId, TraceContext,
            };
            let event = InvitationEvent {
                position: 42,
                record: EventRecord::of(EventType::Cancelled, Actor::System, occurred_at)
                    .with_request_id(request_id.map(RequestId::from_uuid))
                    .with_trace(trace.and_then(|(t, s, sampled)| TraceContext::new(t, s, sampled))),
                invitation,
            };
            let (encoded, cursor_at) = WireEvent::encode_shared(
                crate::grpc::convert::wire_event(&event, String::new()),
            );
            let expected = generated::WatchInvitationsResponse {
                events: cursors
                    .iter()
                    .map(|cursor| crate::grpc::convert::wire_event(&event, cursor.clone()))
                    .collect(),
                cursor: cursors.last().cloned().unwrap_or_default(),
                ..Default::default()
            };
            let sent = WatchInvitationsResponse {
                events: cursors
                    .iter()
                    .map(|cursor| WireEvent::new(encoded.clone(), cursor_at, cursor.clone()))
                    .collect(),
                cursor: cursors.last().cloned().unwrap_or_default(),
                ..Default::default()
            };
            prop_assert_eq!(sent.encoded_len(), expected.encoded_len());
            prop_assert_eq!(sent.encode_to_vec(), expected.encode_to_vec());
        }
    }

    #[test]
    fn timestamp_fields_are_the_bytes_prost_writes() {
        let extremes = [0, 1, -1, 999_999, 1_000_000, -1_000_001, i64::MAX, i64::MIN];
        for micros in extremes {
            let at = wire_timestamp(Timestamp::from_unix_micros(micros));
            // Keys of one to five bytes.
            for tag in [10, 16, 2_048, 1 << 21, (1 << 29) - 1] {
                let mut expected = Vec::new();
                encoding::message::encode(tag, &at, &mut expected);
                assert_eq!(
                    TimestampField::new(tag, &at).as_bytes(),
                    expected.as_slice(),
                    "{micros} µs, tag {tag}"
                );
            }
        }
    }

    #[test]
    fn decoding_keeps_nothing_and_fails_on_nothing() {
        let bytes = generated::ListInvitationsResponse {
            items: vec![generated::Invitation {
                id: "x".into(),
                ..Default::default()
            }],
            next_page_token: "t".into(),
        }
        .encode_to_vec();
        let decoded = ListInvitationsResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.items, vec![WireInvitation::default()]);
        assert_eq!(decoded.next_page_token, "t");
    }
}
