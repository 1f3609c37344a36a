//! The invitation domain: validated value types, the invitation itself, and the rules of
//! each operation. Nothing here knows about gRPC or SQL.
mod invitation;
mod link_token;
mod page_token;
mod service;
mod values;

pub use invitation::{Etag, Invitation, InvitationStatus, Timestamp, Version};
pub use link_token::{LINK_TOKEN_LEN, LinkToken, LinkTokenHash};
pub use page_token::{PageCursor, PageTokenCodec};
pub use service::{
    AcceptCommand, CancelCommand, CreateCommand, DEFAULT_PAGE_SIZE, InvitationService,
    IssueTokenCommand, ListPage, ListQuery, MAX_PAGE_SIZE, StatusFilter,
};
pub use values::{
    CancelReason, EmailAddress, EnterpriseId, InvitationId, RequestId, RoleRef, Scope, UserRef,
    ValueError,
};
