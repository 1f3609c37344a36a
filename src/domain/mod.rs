//! The invitation domain: validated value types, the invitation itself, and the rules of
//! each operation. Nothing here knows about gRPC or SQL.
mod error;
mod event;
mod invitation;
mod link_token;
mod page_token;
mod repository;
mod service;
mod values;
mod watch;

pub use error::{AuthFailure, Error, FieldViolation, Forbidden, StreamLimitScope, ViolationReason};
pub use event::{
    Actor, DEFAULT_EVENT_RETENTION, EventId, EventRecord, EventType, InvitationEvent, TraceContext,
};
pub use invitation::{Etag, Invitation, InvitationStatus, StatusFilter, Timestamp, Version};
pub use link_token::{LINK_TOKEN_LEN, LinkToken, LinkTokenHash};
pub use page_token::{PageCursor, PageTokenCodec, TokenSigner};
pub use repository::{
    CancelChange, CancelOutcome, IDEMPOTENCY_RETENTION, IdempotencyKey, InsertOutcome,
    InvitationRepository, ListFilter, PriorResponse,
};
pub use service::{
    AcceptCommand, CancelCommand, CreateCommand, DEFAULT_PAGE_SIZE, InvitationService,
    IssueTokenCommand, ListPage, ListQuery, MAX_PAGE_SIZE,
};
pub use values::{
    CancelReason, EmailAddress, EnterpriseId, InvitationId, RequestId, RoleRef, Scope, UserRef,
    ValueError,
};
pub use watch::{EVENT_RETENTION_MARGIN, WatchCursor, WatchCursors, WatchFilter, WatchQuery};
