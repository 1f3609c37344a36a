//! The server's codec: prost's, with tonic's response buffer sized for a page, and a request
//! that is not valid protobuf answered with the documented INVALID_ARGUMENT.
//!
//! tonic writes every response into a buffer of `BufferSettings::buffer_size` (8 KiB by
//! default) that doubles as it fills; a page of 50 invitations is about 17 KiB, so it would
//! be copied twice on its way out. `BufferSettings` is tonic's knob for that: a response
//! starts in a buffer that holds a default page of typical invitations (a larger page, or
//! one with long optional fields, still grows it). The buffer
//! lives only until the response is handed to the connection, so what it costs is
//! [`RESPONSE_BUFFER_BYTES`] per response being written.
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::domain::{Error, ViolationReason};

/// Where every response's buffer starts: a default page of 50 typical invitations fits
/// (`a_default_page_fits_the_response_buffer`).
pub const RESPONSE_BUFFER_BYTES: usize = 32 * 1024;

/// tonic's default: how much of a stream's responses are buffered before they are flushed.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`], with the response buffer of [`RESPONSE_BUFFER_BYTES`]; requests are
/// decoded as tonic does by default. `build.rs` points the server's generation at it.
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ServerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            RESPONSE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder, except that a request it cannot decode (a string field that is not
/// UTF-8, say) is the documented row INVALID_ARGUMENT `INVALID_ENCODING`, where tonic would
/// answer INTERNAL: the client sent it, the server did not fail.
#[derive(Debug)]
pub struct ServerDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ServerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|_| {
            Status::from(Error::invalid(
                "",
                ViolationReason::InvalidEncoding,
                "the request is not a valid protobuf message of its type (every string must be UTF-8)",
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::{
        CancelReason, EmailAddress, EnterpriseId, Invitation, InvitationId, InvitationStatus,
        RoleRef, Scope, Timestamp, UserRef, Version,
    };
    use crate::grpc::wire_invitation;
    use crate::proto::invitations::v1 as pb;

    /// A cancelled invitation: every field a page usually carries is set.
    fn cancelled(n: u128) -> Invitation {
        let enterprise = EnterpriseId::from_uuid(Uuid::from_u128(n << 64 | 1));
        let at = Timestamp::from_unix_micros(1_767_225_600_123_456);
        Invitation {
            id: InvitationId::from_uuid(Uuid::from_u128(n << 64 | 2)),
            enterprise,
            scope: Scope::parse(&format!("{}/teams/blue", enterprise.resource_name()))
                .expect("a scope"),
            email: EmailAddress::parse("first.last@example.com").expect("an address"),
            role: RoleRef::from_uuid(Uuid::from_u128(3)),
            stored_status: InvitationStatus::Cancelled,
            invited_by: UserRef::from_uuid(Uuid::from_u128(4)),
            pending_human_actor: Some(UserRef::from_uuid(Uuid::from_u128(5))),
            challenge_ref: None,
            created_at: at,
            updated_at: at,
            expires_at: at,
            accepted_at: None,
            accepted_by: None,
            cancelled_at: Some(at),
            cancel_reason: CancelReason::parse("left the team").expect("a reason"),
            cancelled_by: Some(UserRef::from_uuid(Uuid::from_u128(6))),
            version: Version::FIRST.next(),
        }
    }

    #[test]
    fn a_default_page_fits_the_response_buffer() {
        let page = pb::ListInvitationsResponse {
            items: (0..50)
                .map(|n| wire_invitation(cancelled(n), Timestamp::now()))
                .collect(),
            next_page_token: "t".repeat(120),
        };
        let framed = 5 + page.encoded_len();
        assert!(
            framed <= RESPONSE_BUFFER_BYTES,
            "a page of 50 is {framed} bytes"
        );
    }
}
