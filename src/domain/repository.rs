//! The port the domain needs from a store: the repository trait and the outcomes it answers
//! with. `store/` implements it for SQLite and PostgreSQL; nothing here knows SQL.
use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use super::error::Error;
use super::event::{EventRecord, InvitationEvent};
use super::invitation::{Invitation, StatusFilter, Timestamp, Version};
use super::link_token::LinkTokenHash;
use super::page_token::PageCursor;
use super::values::{
    CancelReason, EmailAddress, EnterpriseId, InvitationId, RequestId, Scope, UserRef,
};

/// Invitations, always within one enterprise (or found by a link token's hash, which is
/// unique). Every write is one conditional statement whose outcome says what happened, and
/// every write that changes a row records its `event` about the row as changed, in the same
/// transaction: a write that matches nothing, or rolls back, records none. A write is
/// evaluated at its event's instant (`event.occurred_at`: "now" for effective statuses).
pub trait InvitationRepository: Clone + Send + Sync + 'static {
    /// A page of `filter.enterprise`'s invitations, newest first (ties by id), after the
    /// cursor.
    fn list(
        &self,
        filter: &ListFilter<'_>,
    ) -> impl Future<Output = Result<Vec<Invitation>, Error>> + Send;

    fn get(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
    ) -> impl Future<Output = Result<Option<Invitation>, Error>> + Send;

    /// Inserts a pending invitation unless the enterprise has one for the same address. A
    /// pending invitation for the address found past its expiry is stored as expired first,
    /// with its own event ([`EventRecord::expiry`]).
    fn insert_pending(
        &self,
        invitation: &Invitation,
        event: &EventRecord,
    ) -> impl Future<Output = Result<InsertOutcome, Error>> + Send;

    /// Cancels the invitation if it is pending and still at `expected`; with a key,
    /// stores the response under it in the same transaction.
    fn cancel_pending(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
        expected: Version,
        change: &CancelChange,
        key: Option<&IdempotencyKey>,
        event: &EventRecord,
    ) -> impl Future<Output = Result<CancelOutcome, Error>> + Send;

    /// The response stored under `request_id`, if it is younger than the retention.
    fn prior_response(
        &self,
        enterprise: EnterpriseId,
        request_id: RequestId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<PriorResponse>, Error>> + Send;

    /// Gives a pending invitation a new link (replacing any previous one), if it is pending
    /// and, when given, still at `expected`; `None` when nothing matched.
    fn issue_link(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
        expected: Option<Version>,
        link: LinkTokenHash,
        expires_at: Option<Timestamp>,
        event: &EventRecord,
    ) -> impl Future<Output = Result<Option<Invitation>, Error>> + Send;

    /// Accepts the pending invitation of `link` for the invitee whose address it is for;
    /// `None` when nothing matched.
    fn accept_by_link(
        &self,
        link: LinkTokenHash,
        invitee_email: &EmailAddress,
        invitee: UserRef,
        event: &EventRecord,
    ) -> impl Future<Output = Result<Option<Invitation>, Error>> + Send;

    fn find_by_link(
        &self,
        link: LinkTokenHash,
    ) -> impl Future<Output = Result<Option<Invitation>, Error>> + Send;

    /// The highest position below which every event has committed or never will: a reader
    /// that reads only up to it, and resumes after the last position it read, sees every
    /// event exactly once. May wait for transactions in flight to end.
    fn event_horizon(&self) -> impl Future<Output = Result<i64, Error>> + Send;

    /// Completes when events may have been committed since the last call: at once for this
    /// process's writes, and where the store can hear them, for other processes' (which
    /// [`InvitationRepository::announce_events`] tells). Readers poll as well.
    fn events_written(&self) -> impl Future<Output = ()> + Send;

    /// Tells other processes watching the store that this one committed events, if it did
    /// since the last call.
    fn announce_events(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Takes (or renews) the lease of the relay `relay` for `holder` until `until`, unless
    /// another holder's lease still runs at `now`: the relay's position (every event up to
    /// it has been relayed) when taken, `None` otherwise.
    fn claim_relay(
        &self,
        relay: &'static str,
        holder: Uuid,
        now: Timestamp,
        until: Timestamp,
    ) -> impl Future<Output = Result<Option<i64>, Error>> + Send;

    /// Records that `relay` relayed every event up to `position`, renewing the lease until
    /// `until`; `false` when `holder` no longer holds it (nothing is written then).
    fn advance_relay(
        &self,
        relay: &'static str,
        holder: Uuid,
        position: i64,
        until: Timestamp,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Gives up `holder`'s lease of `relay`, if it holds it.
    fn release_relay(
        &self,
        relay: &'static str,
        holder: Uuid,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Up to `limit` of every enterprise's events after `position` and up to `horizon`, in
    /// position order.
    fn events_since(
        &self,
        position: i64,
        horizon: i64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<InvitationEvent>, Error>> + Send;

    /// Up to `limit` of the enterprise's events after `position` (from the oldest kept,
    /// without one) and up to `horizon` (see [`InvitationRepository::event_horizon`]), in
    /// position order.
    fn events_after(
        &self,
        enterprise: EnterpriseId,
        position: Option<i64>,
        horizon: i64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<InvitationEvent>, Error>> + Send;
}

/// Which rows a list wants; see [`InvitationRepository::list`].
#[derive(Debug)]
pub struct ListFilter<'a> {
    pub enterprise: EnterpriseId,
    /// A sub-scope to match exactly; `None` for the whole enterprise.
    pub scope: Option<&'a Scope>,
    pub statuses: &'a StatusFilter,
    pub email: Option<&'a EmailAddress>,
    pub after: Option<PageCursor>,
    pub limit: u64,
    /// The instant effective statuses are evaluated at.
    pub now: Timestamp,
}

/// What a cancel writes.
#[derive(Debug, Clone)]
pub struct CancelChange {
    pub at: Timestamp,
    pub by: UserRef,
    pub reason: Option<CancelReason>,
}

/// How long the response of a request made with a `request_id` is kept for replay.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A write made with a client `request_id`: what to store it under.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey {
    pub request_id: RequestId,
    pub operation: &'static str,
    /// SHA-256 of everything that makes the request what it is.
    pub fingerprint: [u8; 32],
}

/// The stored response of an earlier request with the same `request_id`.
#[derive(Debug, Clone)]
pub struct PriorResponse {
    pub operation: String,
    pub fingerprint: Vec<u8>,
    pub invitation: Invitation,
}

#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Cancelled(Box<Invitation>),
    /// The conditional write matched no row.
    NoMatch,
    /// Another request already stored a response under this `request_id`; nothing was written.
    RequestIdTaken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Created,
    /// Another pending invitation for the same address and enterprise exists.
    DuplicatePending(InvitationId),
}
