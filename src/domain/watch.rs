//! WatchInvitations' rules: which events a watch wants ([`WatchFilter`]), and its cursors
//! ([`WatchCursors`]): where a stream is in the outbox, signed like page tokens, bound to
//! the enterprise and the filters, and good for as long as the events after them are kept.
use std::collections::BTreeSet;
use std::time::Duration;

use sha2::Digest;

use super::error::{Error, ViolationReason};
use super::event::{EventType, InvitationEvent};
use super::invitation::{StatusFilter, Timestamp};
use super::page_token::TokenSigner;
use super::service::{check_scope, selection};
use super::values::{EmailAddress, EnterpriseId, Scope};

/// How much longer than the retention the outbox keeps an event: a cursor is good for the
/// retention after it was issued, and an event after it may have been stamped a little
/// earlier (its transaction was in flight, or another replica's clock is behind).
pub const EVENT_RETENTION_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A validated WatchInvitations request.
#[derive(Debug, Clone)]
pub struct WatchQuery {
    pub filter: WatchFilter,
    /// The raw cursor to resume after; checked against the filter by [`WatchCursors`].
    pub start_cursor: Option<String>,
    pub send_initial_state: bool,
}

/// Which events a watch wants: its enterprise's, narrowed by the invitation as the change
/// left it (scope, address, status as of the event) and by the event's type.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub enterprise: EnterpriseId,
    /// A sub-scope to match exactly; `None` for the whole enterprise.
    pub scope: Option<Scope>,
    pub statuses: StatusFilter,
    pub email: Option<EmailAddress>,
    /// Empty means every type.
    pub types: BTreeSet<EventType>,
}

impl WatchFilter {
    /// A filter of `enterprise`'s events; a scope of another enterprise is refused.
    pub fn new(
        enterprise: EnterpriseId,
        scope: Option<Scope>,
        statuses: StatusFilter,
        email: Option<EmailAddress>,
        types: BTreeSet<EventType>,
    ) -> Result<Self, Error> {
        check_scope(enterprise, scope.as_ref())?;
        Ok(Self {
            enterprise,
            scope: scope.filter(|s| !s.is_enterprise_root()),
            statuses,
            email,
            types,
        })
    }

    pub fn matches(&self, event: &InvitationEvent) -> bool {
        let invitation = &event.invitation;
        invitation.enterprise == self.enterprise
            && (self.types.is_empty() || self.types.contains(&event.record.kind))
            && self.scope.as_ref().is_none_or(|s| *s == invitation.scope)
            && self
                .email
                .as_ref()
                .is_none_or(|e| e.normalized() == invitation.email.normalized())
            && (self.statuses.is_empty()
                || self
                    .statuses
                    .contains(&invitation.status_at(event.record.occurred_at)))
    }

    /// What a cursor is bound to: the selection, as for page tokens, and the types.
    fn binding(&self) -> Vec<u8> {
        let mut hash = selection(
            self.enterprise,
            self.scope.as_ref(),
            self.email.as_ref(),
            &self.statuses,
        );
        hash.update(b"watch");
        for kind in &self.types {
            hash.update([*kind as u8]);
        }
        hash.finalize().to_vec()
    }
}

/// Where a watch is: every event up to `position` that it wants has been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchCursor {
    /// An outbox position (see `InvitationEvent::position`).
    pub position: i64,
    /// When the cursor was issued: it is good for the event retention from then.
    pub issued_at: Timestamp,
}

const CURSOR_FORMAT: u8 = 2;
const CURSOR_LEN: usize = 16;

/// Signs and checks watch cursors.
#[derive(Clone)]
pub struct WatchCursors {
    signer: TokenSigner,
    retention: Duration,
}

impl WatchCursors {
    /// Cursors signed by `signer` (the page tokens' key), good for `retention`.
    pub fn new(signer: TokenSigner, retention: Duration) -> Self {
        Self { signer, retention }
    }

    pub fn encode(&self, cursor: WatchCursor, filter: &WatchFilter) -> String {
        let mut payload = [0u8; CURSOR_LEN];
        payload[..8].copy_from_slice(&cursor.position.to_be_bytes());
        payload[8..].copy_from_slice(&cursor.issued_at.unix_micros().to_be_bytes());
        self.signer.sign(CURSOR_FORMAT, &payload, &filter.binding())
    }

    /// The cursor, if this service issued it for this filter and it is still good at `now`:
    /// else INVALID_ARGUMENT (altered, another enterprise's or other filters'), or
    /// FAILED_PRECONDITION `WATCH_CURSOR_EXPIRED`.
    pub fn decode(
        &self,
        token: &str,
        filter: &WatchFilter,
        now: Timestamp,
    ) -> Result<WatchCursor, Error> {
        let payload: [u8; CURSOR_LEN] = self
            .signer
            .open(CURSOR_FORMAT, token, &filter.binding())
            .map_err(|_| {
            Error::invalid(
                "start_cursor",
                ViolationReason::InvalidCursor,
                "is not a cursor of this watch: it was altered, issued to another \
                     enterprise, or used with other filters",
            )
        })?;
        let mut position = [0u8; 8];
        position.copy_from_slice(&payload[..8]);
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&payload[8..]);
        let cursor = WatchCursor {
            position: i64::from_be_bytes(position),
            issued_at: Timestamp::from_unix_micros(i64::from_be_bytes(micros)),
        };
        if cursor.issued_at < now.saturating_sub(self.retention) {
            return Err(Error::WatchCursorExpired {
                retention: self.retention,
            });
        }
        Ok(cursor)
    }

    /// How long events are kept (and cursors good).
    pub fn retention(&self) -> Duration {
        self.retention
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn filter(enterprise: u128) -> WatchFilter {
        WatchFilter::new(
            EnterpriseId::from_uuid(Uuid::from_u128(enterprise)),
            None,
            StatusFilter::new(),
            None,
            BTreeSet::new(),
        )
        .expect("the enterprise's own scope")
    }

    #[test]
    fn cursors_round_trip_for_their_filter_until_the_retention_passes() {
        let cursors = WatchCursors::new(TokenSigner::new(b"k"), Duration::from_secs(3600));
        let now = Timestamp::now();
        let cursor = WatchCursor {
            position: 42,
            issued_at: now,
        };
        let token = cursors.encode(cursor, &filter(1));
        assert_eq!(cursors.decode(&token, &filter(1), now).ok(), Some(cursor));

        let mut other_types = filter(1);
        other_types.types.insert(EventType::Cancelled);
        for other in [filter(2), other_types] {
            assert!(matches!(
                cursors.decode(&token, &other, now),
                Err(Error::InvalidArgument(_))
            ));
        }
        let later = now.saturating_add(Duration::from_secs(3601));
        assert!(matches!(
            cursors.decode(&token, &filter(1), later),
            Err(Error::WatchCursorExpired { .. })
        ));
    }

    #[test]
    fn a_page_token_is_not_a_cursor() {
        let signer = TokenSigner::new(b"k");
        let cursors = WatchCursors::new(signer.clone(), Duration::from_secs(3600));
        let page_token = signer.sign(1, &[0u8; CURSOR_LEN], &filter(1).binding());
        assert!(matches!(
            cursors.decode(&page_token, &filter(1), Timestamp::now()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
