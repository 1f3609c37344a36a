//! Request parsing on arbitrary wire bytes: every message that decodes becomes a domain
//! command or INVALID_ARGUMENT; link and bearer tokens are refused, never a panic.
#![no_main]

use invitations::auth::{Authenticator, EnterpriseAdmin};
use invitations::domain::{EnterpriseId, LinkToken, UserRef};
use invitations::domain::Error;
use invitations::grpc::convert;
use invitations::proto::invitations::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn invalid_argument_only<T>(outcome: Result<T, Error>) {
    assert!(matches!(outcome, Ok(_) | Err(Error::InvalidArgument(_))));
}

fuzz_target!(|data: &[u8]| {
    let admin = EnterpriseAdmin {
        subject: UserRef::from_uuid(uuid_from(1)),
        enterprise: EnterpriseId::from_uuid(uuid_from(2)),
    };
    if let Ok(request) = pb::ListInvitationsRequest::decode(data) {
        invalid_argument_only(convert::list_query(admin, request));
    }
    if let Ok(request) = pb::CancelInvitationRequest::decode(data) {
        invalid_argument_only(convert::cancel_command(admin, &tonic::metadata::MetadataMap::new(), request));
    }
    if let Ok(request) = pb::CreateInvitationRequest::decode(data) {
        invalid_argument_only(convert::create_command(admin, request));
    }
    if let Ok(request) = pb::IssueInvitationTokenRequest::decode(data) {
        invalid_argument_only(convert::issue_token_command(admin, &tonic::metadata::MetadataMap::new(), request));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = LinkToken::parse(text);
        let authenticator = Authenticator::hs256(b"fuzzing-secret-of-at-least-32-bytes!", "iss", "aud");
        assert!(matches!(authenticator.verify(text), Err(Error::Unauthenticated(_))));
    }
});

fn uuid_from(n: u128) -> invitations_uuid::Uuid {
    invitations_uuid::Uuid::from_u128(n)
}
