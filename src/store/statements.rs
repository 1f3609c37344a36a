//! The SQL of the two statements every busy client runs, List's page and Cancel's
//! conditional write with its event (PostgreSQL), rendered by SeaORM once per shape and then
//! reused.
//!
//! Building a statement with sea-query allocates its whole expression tree and renders it to
//! text on every call, a visible share of a Cancel's CPU (`docs/adr/0003-rendered-statements.md`
//! has the figures). The text
//! depends only on the shape of the request (which filters are present, which statuses), so
//! it is rendered the first time a shape is seen, by the same SeaORM builder as before, and
//! kept. The bind values of each call are listed here in the order the builder emits them;
//! the first rendering of every shape compares them with the builder's own in debug builds,
//! and a unit test compares every shape on both stores.
use std::sync::OnceLock;

use sea_orm::sea_query::{Value, Values};
use sea_orm::{DbBackend, Statement};

use super::outbox;
use super::queries::filters_statuses;
use super::{CancelChange, ListFilter};
use crate::domain::{
    EnterpriseId, EventRecord, InvitationId, InvitationStatus, Timestamp, Version,
};

/// Scope present, e-mail present, cursor present, and one bit per status filtered on.
const LIST_SHAPES: usize = 1 << (3 + InvitationStatus::ALL.len());

/// The statements rendered so far by one store (one backend).
pub(super) struct RenderedStatements {
    backend: DbBackend,
    list: [OnceLock<String>; LIST_SHAPES],
    cancel: OnceLock<String>,
}

impl RenderedStatements {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            list: std::array::from_fn(|_| OnceLock::new()),
            cancel: OnceLock::new(),
        }
    }

    /// The page statement for `filter`; `build` renders it the first time its shape is seen.
    pub fn list(&self, filter: &ListFilter<'_>, build: impl FnOnce() -> Statement) -> Statement {
        let values = list_values(filter);
        let sql = self.list[list_shape(filter)].get_or_init(|| first_rendering(build, &values));
        self.statement(sql, values)
    }

    /// The conditional cancel; `build` renders it the first time.
    pub fn cancel(&self, values: Values, build: impl FnOnce() -> Statement) -> Statement {
        let sql = self.cancel.get_or_init(|| first_rendering(build, &values));
        self.statement(sql, values)
    }

    fn statement(&self, sql: &str, values: Values) -> Statement {
        Statement {
            sql: sql.to_owned(),
            values: Some(values),
            db_backend: self.backend,
        }
    }
}

/// The builder's text, after checking (in debug builds) that the values listed here are
/// the builder's, in its order.
fn first_rendering(build: impl FnOnce() -> Statement, values: &Values) -> String {
    let built = build();
    debug_assert_eq!(
        built.values.as_ref(),
        Some(values),
        "the bind values listed in store/statements.rs are not SeaORM's for {}",
        built.sql
    );
    built.sql
}

/// Which page statement `filter` needs: the index of its shape.
fn list_shape(filter: &ListFilter<'_>) -> usize {
    let statuses = if filters_statuses(filter) {
        InvitationStatus::ALL
            .iter()
            .enumerate()
            .filter(|(_, status)| filter.statuses.contains(status))
            .fold(0, |bits, (bit, _)| bits | 1 << bit)
    } else {
        0
    };
    usize::from(filter.scope.is_some())
        | usize::from(filter.email.is_some()) << 1
        | usize::from(filter.after.is_some()) << 2
        | statuses << 3
}

/// The page's bind values, in the order of `Store::list_select`'s conditions.
fn list_values(filter: &ListFilter<'_>) -> Values {
    let mut values = Vec::with_capacity(12);
    values.push(Value::from(filter.enterprise.as_uuid()));
    if let Some(scope) = filter.scope {
        values.push(Value::from(scope.as_str()));
    }
    if let Some(email) = filter.email {
        values.push(Value::from(email.normalized()));
    }
    if filters_statuses(filter) {
        for status in filter.statuses {
            effective_status_values(&mut values, *status, filter.now);
        }
    }
    if let Some(after) = filter.after {
        values.push(Value::from(after.created_at.unix_micros()));
        values.push(Value::from(after.id.as_uuid()));
    }
    values.push(Value::from(filter.limit));
    Values(values)
}

/// The values of `queries::effective_status_is(status, now)`, in its order.
fn effective_status_values(values: &mut Vec<Value>, status: InvitationStatus, now: Timestamp) {
    let now = now.unix_micros();
    match status {
        InvitationStatus::Pending => {
            values.push(Value::from(InvitationStatus::Pending.as_str()));
            values.push(Value::from(now));
        }
        InvitationStatus::Expired => {
            values.push(Value::from(InvitationStatus::Expired.as_str()));
            values.push(Value::from(InvitationStatus::Pending.as_str()));
            values.push(Value::from(now));
        }
        InvitationStatus::Accepted | InvitationStatus::Cancelled => {
            values.push(Value::from(status.as_str()));
        }
    }
}

/// The cancel's bind values, in the order of `Tenant::cancel_update`'s assignments and
/// conditions, then the event's (`queries::with_event`).
pub(super) fn cancel_values(
    enterprise: EnterpriseId,
    id: InvitationId,
    expected: Version,
    change: &CancelChange,
    now: Timestamp,
    event: &EventRecord,
) -> Values {
    let mut values = Vec::with_capacity(12 + outbox::RECORD_COLUMNS.len());
    values.push(Value::from(InvitationStatus::Cancelled.as_str()));
    values.push(Value::from(change.at.unix_micros()));
    values.push(Value::from(change.by.to_string()));
    values.push(Value::from(
        change.reason.as_ref().map(|r| r.as_str().to_owned()),
    ));
    values.push(Value::from(change.at.unix_micros()));
    values.push(Value::from(expected.next().get()));
    values.push(Value::from(Option::<Vec<u8>>::None));
    values.push(Value::from(enterprise.as_uuid()));
    values.push(Value::from(id.as_uuid()));
    values.push(Value::from(expected.get()));
    effective_status_values(&mut values, InvitationStatus::Pending, now);
    values.extend(outbox::record_values(event));
    Values(values)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::{
        Actor, CancelReason, EmailAddress, EventType, PageCursor, RequestId, Scope, StatusFilter,
        UserRef,
    };
    use crate::store::queries::Tenant;

    const BACKENDS: [DbBackend; 2] = [DbBackend::Postgres, DbBackend::Sqlite];

    #[test]
    fn every_page_shape_binds_what_seaorm_builds() {
        let enterprise = EnterpriseId::from_uuid(Uuid::from_u128(7));
        let scope =
            Scope::parse(&format!("{}/teams/blue", enterprise.resource_name())).expect("scope");
        let email = EmailAddress::parse("Someone@Example.com").expect("email");
        let cursor = PageCursor {
            created_at: Timestamp::from_unix_micros(1_700_000_000_000_000),
            id: InvitationId::from_uuid(Uuid::from_u128(9)),
        };
        for backend in BACKENDS {
            let rendered = RenderedStatements::new(backend);
            for shape in 0..LIST_SHAPES {
                let statuses: StatusFilter = InvitationStatus::ALL
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| shape >> 3 & 1 << bit != 0)
                    .map(|(_, status)| *status)
                    .collect();
                // The same shape twice, at two instants and page sizes: the second answer is
                // the rendered text with the second request's values.
                for (now, limit) in [(1_000, 51), (2_000, 8)] {
                    let filter = ListFilter {
                        enterprise,
                        scope: (shape & 1 != 0).then_some(&scope),
                        statuses: &statuses,
                        email: (shape & 2 != 0).then_some(&email),
                        after: (shape & 4 != 0).then_some(cursor),
                        limit,
                        now: Timestamp::from_unix_micros(now),
                    };
                    let page = || Tenant::of(enterprise).page(&filter, backend);
                    let built = page();
                    let reused = rendered.list(&filter, page);
                    assert_eq!(reused.sql, built.sql, "shape {shape}");
                    assert_eq!(reused.values, built.values, "shape {shape}: {}", built.sql);
                    assert_eq!(reused.db_backend, backend);
                }
            }
        }
    }

    #[test]
    fn the_cancel_binds_what_seaorm_builds() {
        let enterprise = EnterpriseId::from_uuid(Uuid::from_u128(7));
        let id = InvitationId::from_uuid(Uuid::from_u128(9));
        let by = UserRef::from_uuid(Uuid::from_u128(11));
        let rendered = RenderedStatements::new(DbBackend::Postgres);
        let cases = [
            (1, None, None),
            (4, Some("no longer needed"), Some(Uuid::from_u128(13))),
            (9, None, None),
        ];
        for (version, reason, request_id) in cases {
            let change = CancelChange {
                at: Timestamp::from_unix_micros(5_000 + version),
                by,
                reason: reason.map(|r| CancelReason::from_stored(r.to_owned())),
            };
            let event = EventRecord::of(EventType::Cancelled, Actor::User(by), change.at)
                .with_request_id(request_id.map(RequestId::from_uuid));
            let expected = Version::from_stored(version);
            let now = Timestamp::from_unix_micros(6_000);
            let build = || Tenant::of(enterprise).cancel(id, expected, &change, now, &event);
            let built = build();
            let values = cancel_values(enterprise, id, expected, &change, now, &event);
            let reused = rendered.cancel(values, build);
            assert_eq!(reused.sql, built.sql);
            assert_eq!(reused.values, built.values, "{}", built.sql);
        }
    }
}
