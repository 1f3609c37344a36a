//! The rules of each operation, over the store. Callers arrive already authenticated and
//! authorized for one enterprise; every store call is scoped to it.
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::error::{Error, Forbidden, ViolationReason};
use super::event::{Actor, EventRecord, EventType, TraceContext};
use super::invitation::{Etag, Invitation, InvitationStatus, StatusFilter, Timestamp, Version};
use super::link_token::LinkToken;
use super::page_token::{PageCursor, PageTokenCodec};
use super::repository::{
    CancelChange, CancelOutcome, IdempotencyKey, InsertOutcome, InvitationRepository, ListFilter,
};
use super::values::RequestId;
use super::values::{
    CancelReason, EmailAddress, EnterpriseId, InvitationId, RoleRef, Scope, UserRef,
};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Lifetime of an invitation created without `expires_at`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The furthest `expires_at` a new invitation may have.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A validated ListInvitations request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub enterprise: EnterpriseId,
    /// `None` lists the caller's whole enterprise.
    pub scope: Option<Scope>,
    pub statuses: StatusFilter,
    pub email: Option<EmailAddress>,
    pub page_size: u32,
    /// The raw token of the previous page; checked against this query by the service.
    pub page_token: Option<String>,
}

impl ListQuery {
    /// What a page token is bound to: everything that selects rows, but not the page size.
    fn binding(&self) -> Vec<u8> {
        selection(
            self.enterprise,
            self.scope.as_ref(),
            self.email.as_ref(),
            &self.statuses,
        )
        .finalize()
        .to_vec()
    }
}

/// A hash of what selects invitations (enterprise, scope, address, statuses), to which
/// tokens are bound: page tokens, and with more (the event types) watch cursors.
pub(super) fn selection(
    enterprise: EnterpriseId,
    scope: Option<&Scope>,
    email: Option<&EmailAddress>,
    statuses: &StatusFilter,
) -> Sha256 {
    let mut hash = Sha256::new();
    hash.update(enterprise.as_uuid().as_bytes());
    // Length-prefixed, so no two different queries hash the same bytes.
    let scope = scope
        .filter(|s| !s.is_enterprise_root())
        .map_or("", Scope::as_str);
    hash.update((scope.len() as u64).to_be_bytes());
    hash.update(scope.as_bytes());
    let email = email.map(EmailAddress::normalized).unwrap_or_default();
    hash.update((email.len() as u64).to_be_bytes());
    hash.update(email.as_bytes());
    for status in statuses {
        hash.update([*status as u8]);
    }
    hash
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Invitation>,
    pub next_page_token: Option<String>,
    /// The instant the statuses of `items` were evaluated at.
    pub evaluated_at: Timestamp,
}

/// A validated CreateInvitation request.
#[derive(Debug, Clone)]
pub struct CreateCommand {
    pub enterprise: EnterpriseId,
    pub actor: UserRef,
    pub email: EmailAddress,
    pub role: RoleRef,
    pub scope: Option<Scope>,
    pub expires_at: Option<Timestamp>,
    pub pending_human_actor: Option<UserRef>,
    /// The call's trace, for its event.
    pub trace: Option<TraceContext>,
}

/// A validated CancelInvitation request.
#[derive(Debug, Clone)]
pub struct CancelCommand {
    pub enterprise: EnterpriseId,
    pub actor: UserRef,
    pub id: InvitationId,
    /// The If-Match value, compared as an exact string.
    pub if_match: String,
    pub reason: Option<CancelReason>,
    pub validate_only: bool,
    /// Makes retries safe (AIP-155).
    pub request_id: Option<RequestId>,
    /// The call's trace, for its event.
    pub trace: Option<TraceContext>,
}

/// `idempotency_keys.operation` of a cancel.
const CANCEL_OPERATION: &str = "CancelInvitation";

impl CancelCommand {
    /// What makes two cancels the same request: everything the client sent, except the
    /// request_id itself.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.id.as_uuid().as_bytes());
        for part in [
            self.if_match.as_str(),
            self.reason.as_ref().map_or("", CancelReason::as_str),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hash.update([u8::from(self.validate_only)]);
        hash.finalize().into()
    }
}

/// A validated IssueInvitationToken request.
#[derive(Debug, Clone)]
pub struct IssueTokenCommand {
    pub enterprise: EnterpriseId,
    pub actor: UserRef,
    pub id: InvitationId,
    /// Optional If-Match.
    pub if_match: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// The call's trace, for its event.
    pub trace: Option<TraceContext>,
}

/// A validated AcceptInvitation request, on behalf of the invitee.
#[derive(Debug, Clone)]
pub struct AcceptCommand {
    pub token: LinkToken,
    pub invitee: UserRef,
    /// The invitee's verified e-mail address.
    pub email: EmailAddress,
    /// The call's trace, for its event.
    pub trace: Option<TraceContext>,
}

/// The operations, over any repository: the store in the service, a fake in a unit test.
#[derive(Clone)]
pub struct InvitationService<R> {
    store: R,
    page_tokens: PageTokenCodec,
}

/// A new `expires_at` must be in the future and at most [`MAX_LIFETIME`] ahead.
fn check_expiry(at: Timestamp, now: Timestamp) -> Result<Timestamp, Error> {
    if at <= now {
        return Err(Error::invalid(
            "expires_at",
            ViolationReason::ValueOutOfRange,
            "must be in the future",
        ));
    }
    if at > now.saturating_add(MAX_LIFETIME) {
        return Err(Error::invalid(
            "expires_at",
            ViolationReason::ValueOutOfRange,
            "must be at most 30 days from now",
        ));
    }
    Ok(at)
}

pub(super) fn check_scope(enterprise: EnterpriseId, scope: Option<&Scope>) -> Result<(), Error> {
    match scope {
        Some(scope) if scope.enterprise() != enterprise => {
            Err(Error::PermissionDenied(Forbidden::ScopeNotPermitted))
        }
        _ => Ok(()),
    }
}

impl<R: InvitationRepository> InvitationService<R> {
    pub fn new(store: R, page_tokens: PageTokenCodec) -> Self {
        Self { store, page_tokens }
    }

    pub async fn list(&self, query: ListQuery) -> Result<ListPage, Error> {
        check_scope(query.enterprise, query.scope.as_ref())?;
        let binding = query.binding();
        let after = match query.page_token.as_deref() {
            None => None,
            Some(token) => Some(self.page_tokens.decode(token, &binding).map_err(|_| {
                Error::invalid(
                    "page_token",
                    ViolationReason::InvalidPageToken,
                    "is not a page token of this query: it was altered, issued to another \
                     enterprise, or used with other filters",
                )
            })?),
        };
        let now = Timestamp::now();
        let page_size = query.page_size as usize;
        // One row more than the page tells whether another page follows, without a COUNT.
        let mut items = self
            .store
            .list(&ListFilter {
                enterprise: query.enterprise,
                scope: query.scope.as_ref().filter(|s| !s.is_enterprise_root()),
                statuses: &query.statuses,
                email: query.email.as_ref(),
                after,
                limit: page_size as u64 + 1,
                now,
            })
            .await?;
        let next_page_token = if items.len() > page_size {
            items.truncate(page_size);
            items.last().map(|last| {
                self.page_tokens.encode(
                    PageCursor {
                        created_at: last.created_at,
                        id: last.id,
                    },
                    &binding,
                )
            })
        } else {
            None
        };
        Ok(ListPage {
            items,
            next_page_token,
            evaluated_at: now,
        })
    }

    pub async fn get(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
    ) -> Result<Invitation, Error> {
        self.store
            .get(enterprise, id)
            .await?
            .ok_or(Error::InvitationNotFound(id))
    }

    pub async fn create(&self, command: CreateCommand) -> Result<Invitation, Error> {
        check_scope(command.enterprise, command.scope.as_ref())?;
        let now = Timestamp::now();
        let expires_at = match command.expires_at {
            None => now.saturating_add(DEFAULT_LIFETIME),
            Some(at) => check_expiry(at, now)?,
        };
        let invitation = Invitation {
            id: InvitationId::generate(),
            enterprise: command.enterprise,
            scope: command
                .scope
                .unwrap_or_else(|| Scope::enterprise_root(command.enterprise)),
            email: command.email,
            role: command.role,
            stored_status: InvitationStatus::Pending,
            invited_by: command.actor,
            pending_human_actor: command.pending_human_actor,
            challenge_ref: None,
            created_at: now,
            updated_at: now,
            expires_at,
            accepted_at: None,
            accepted_by: None,
            cancelled_at: None,
            cancel_reason: None,
            cancelled_by: None,
            version: Version::FIRST,
        };
        let event = EventRecord::of(EventType::Created, Actor::User(command.actor), now)
            .with_trace(command.trace);
        match self.store.insert_pending(&invitation, &event).await? {
            InsertOutcome::Created => {
                // Never a whole address in the logs.
                tracing::info!(invitation = %invitation.id, email = %invitation.email.masked(), "invitation created");
                Ok(invitation)
            }
            InsertOutcome::DuplicatePending(existing) => {
                Err(Error::InvitationAlreadyExists { existing })
            }
        }
    }

    /// One conditional write; a re-read only explains why it matched nothing.
    pub async fn cancel(&self, command: CancelCommand) -> Result<Invitation, Error> {
        let now = Timestamp::now();
        // A dry run writes nothing, so there is nothing to replay: its request_id is ignored.
        let key = command
            .request_id
            .filter(|_| !command.validate_only)
            .map(|request_id| IdempotencyKey {
                request_id,
                operation: CANCEL_OPERATION,
                fingerprint: command.fingerprint(),
            });
        if let Some(key) = &key
            && let Some(replayed) = self.replay(command.enterprise, key, now).await?
        {
            return Ok(replayed);
        }
        if !command.validate_only
            && let Some(version) = Etag::version_if_of(&command.if_match, command.id)
        {
            let change = CancelChange {
                at: now,
                by: command.actor,
                reason: command.reason.clone(),
            };
            let event = EventRecord::of(EventType::Cancelled, Actor::User(command.actor), now)
                .with_request_id(key.as_ref().map(|key| key.request_id))
                .with_trace(command.trace);
            match self
                .store
                .cancel_pending(
                    command.enterprise,
                    command.id,
                    version,
                    &change,
                    key.as_ref(),
                    &event,
                )
                .await?
            {
                CancelOutcome::Cancelled(cancelled) => {
                    tracing::info!(invitation = %cancelled.id, email = %cancelled.email.masked(), "invitation cancelled");
                    return Ok(*cancelled);
                }
                CancelOutcome::RequestIdTaken | CancelOutcome::NoMatch => {
                    // A concurrent twin with this request_id may have written first: its
                    // response is the answer.
                    if let Some(key) = &key
                        && let Some(replayed) = self.replay(command.enterprise, key, now).await?
                    {
                        return Ok(replayed);
                    }
                }
            }
        }
        let current = self
            .store
            .get(command.enterprise, command.id)
            .await?
            .ok_or(Error::InvitationNotFound(command.id))?;
        let etag = current.etag();
        // The etag check comes first: a client with a stale etag learns that, whatever the state.
        if etag.as_str() != command.if_match {
            return Err(Error::EtagMismatch {
                id: command.id,
                current: etag,
                requested: command.if_match,
            });
        }
        match current.status_at(now) {
            InvitationStatus::Cancelled => Err(Error::StateConflict {
                id: command.id,
                current_status: InvitationStatus::Cancelled,
                etag,
            }),
            status @ (InvitationStatus::Accepted | InvitationStatus::Expired) => {
                Err(Error::NotAdmissible {
                    id: command.id,
                    current_status: status,
                    etag,
                })
            }
            InvitationStatus::Pending if command.validate_only => Ok(current),
            // Versions only grow, so a pending row still at the requested version would have
            // matched the write, which was evaluated at the same instant.
            InvitationStatus::Pending => Err(Error::Internal(format!(
                "conditional cancel of {} matched no row, yet the row is pending at that version",
                command.id
            ))),
        }
    }

    /// The response stored under `key.request_id`: the original answer when the request is
    /// the same, INVALID_ARGUMENT when the id was used for another request.
    async fn replay(
        &self,
        enterprise: EnterpriseId,
        key: &IdempotencyKey,
        now: Timestamp,
    ) -> Result<Option<Invitation>, Error> {
        let Some(prior) = self
            .store
            .prior_response(enterprise, key.request_id, now)
            .await?
        else {
            return Ok(None);
        };
        if prior.operation != key.operation || prior.fingerprint != key.fingerprint {
            return Err(Error::invalid(
                "request_id",
                ViolationReason::RequestIdReused,
                "was already used for a different request",
            ));
        }
        Ok(Some(prior.invitation))
    }

    /// Issues (or rotates) the link of a pending invitation: one conditional write that
    /// replaces the stored hash, so the previous token stops working in the same write.
    pub async fn issue_token(
        &self,
        command: IssueTokenCommand,
    ) -> Result<(Invitation, LinkToken), Error> {
        let now = Timestamp::now();
        let expires_at = command
            .expires_at
            .map(|at| check_expiry(at, now))
            .transpose()?;
        let token = LinkToken::generate()
            .map_err(|e| Error::Internal(format!("no randomness for a link token: {e}")))?;
        let expected = match &command.if_match {
            None => Some(None),
            Some(raw) => Etag::version_if_of(raw, command.id).map(Some),
        };
        let event = EventRecord::of(EventType::LinkIssued, Actor::User(command.actor), now)
            .with_trace(command.trace);
        if let Some(expected) = expected
            && let Some(issued) = self
                .store
                .issue_link(
                    command.enterprise,
                    command.id,
                    expected,
                    token.hash(),
                    expires_at,
                    &event,
                )
                .await?
        {
            tracing::info!(invitation = %issued.id, "invitation link issued");
            return Ok((issued, token));
        }
        let current = self
            .store
            .get(command.enterprise, command.id)
            .await?
            .ok_or(Error::InvitationNotFound(command.id))?;
        let etag = current.etag();
        if let Some(requested) = command.if_match
            && requested != etag.as_str()
        {
            return Err(Error::EtagMismatch {
                id: command.id,
                current: etag,
                requested,
            });
        }
        Err(match current.status_at(now) {
            InvitationStatus::Cancelled => Error::StateConflict {
                id: command.id,
                current_status: InvitationStatus::Cancelled,
                etag,
            },
            status @ (InvitationStatus::Accepted | InvitationStatus::Expired) => {
                Error::NotAdmissible {
                    id: command.id,
                    current_status: status,
                    etag,
                }
            }
            InvitationStatus::Pending => Error::Internal(format!(
                "conditional link issue of {} matched no row, yet the row is pending",
                command.id
            )),
        })
    }

    /// Redeems a link: one conditional write. Only a zero is explained, by the row the
    /// link names now; every way a token can be dead gives one answer.
    pub async fn accept(&self, command: AcceptCommand) -> Result<Invitation, Error> {
        let now = Timestamp::now();
        let link = command.token.hash();
        let event = EventRecord::of(EventType::Accepted, Actor::User(command.invitee), now)
            .with_trace(command.trace);
        if let Some(accepted) = self
            .store
            .accept_by_link(link, &command.email, command.invitee, &event)
            .await?
        {
            tracing::info!(invitation = %accepted.id, email = %accepted.email.masked(), "invitation accepted");
            return Ok(accepted);
        }
        let current = self
            .store
            .find_by_link(link)
            .await?
            .ok_or(Error::InvitationTokenInvalid)?;
        match current.status_at(now) {
            // A double click: the same invitee gets the accepted invitation, unchanged.
            InvitationStatus::Accepted if current.accepted_by == Some(command.invitee) => {
                Ok(current)
            }
            InvitationStatus::Accepted | InvitationStatus::Cancelled => {
                Err(Error::InvitationTokenInvalid)
            }
            InvitationStatus::Expired => Err(Error::NotAdmissible {
                id: current.id,
                current_status: InvitationStatus::Expired,
                etag: current.etag(),
            }),
            InvitationStatus::Pending
                if current.email.normalized() != command.email.normalized() =>
            {
                Err(Error::PermissionDenied(Forbidden::EmailMismatch))
            }
            InvitationStatus::Pending => Err(Error::Internal(format!(
                "conditional accept of {} matched no row, yet the row is pending for this address",
                current.id
            ))),
        }
    }
}
