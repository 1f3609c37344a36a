//! Every statement the service runs, built with SeaORM: open this file to answer "what SQL
//! runs on cancel?" ([`Tenant::cancel`] on PostgreSQL; on SQLite, and when the cancel keeps
//! a replay record, [`Tenant::cancel_update`] and [`record_event`] in one transaction).
//! Nothing here executes; `mod.rs` runs what these build (`statements.rs` keeps the rendered
//! text of the two hottest, `Tenant::page` and `Tenant::cancel`).
//!
//! Every change is written with its event (the outbox, `invitation_events`): [`with_event`]
//! makes both one statement on PostgreSQL; elsewhere [`record_event`] follows the change in
//! its transaction.
//!
//! Tenancy is a constructor: every statement on an enterprise's rows starts from
//! [`Tenant`], which cannot be built without an enterprise, so the enterprise filter is
//! written once. The one statement that is not an enterprise's is the invitee's lookup by
//! link token ([`by_link`]): the token itself is the invitee's authority.
use sea_orm::sea_query::{
    Alias, CommonTableExpression, Expr, ExprTrait, OnConflict, Query, SubQueryStatement, WithClause,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DbBackend, DeleteMany, EntityTrait, Insert,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement, UpdateMany,
};

use uuid::Uuid;

use super::entity::active_model;
use super::entity::{self, Column, Entity};
use super::idempotency;
use super::outbox;
use super::relay;
use crate::domain::{
    CancelChange, EmailAddress, EnterpriseId, EventRecord, IDEMPOTENCY_RETENTION, IdempotencyKey,
    Invitation, InvitationId, InvitationStatus, LinkTokenHash, ListFilter, RequestId, Timestamp,
    UserRef, Version,
};

/// What every read selects and every conditional write returns, in this order (the row
/// decoders of `mod.rs` read by position). The link hash is not among them: it never leaves
/// the table. Nor is the case-folded e-mail: it is there for lookups, and the domain folds
/// the address itself when it needs it.
pub const READ_COLUMNS: [Column; 18] = [
    Column::Id,
    Column::EnterpriseId,
    Column::Scope,
    Column::EmailConstraint,
    Column::Role,
    Column::Status,
    Column::InvitedBy,
    Column::PendingHumanActorRef,
    Column::ChallengeRef,
    Column::CreatedAt,
    Column::UpdatedAt,
    Column::ExpiresAt,
    Column::AcceptedAt,
    Column::AcceptedBy,
    Column::CancelledAt,
    Column::CancelReason,
    Column::CancelledBy,
    Column::Version,
];

/// Whether the statuses narrow the page (none, or all of them, do not).
pub fn filters_statuses(filter: &ListFilter<'_>) -> bool {
    !filter.statuses.is_empty() && filter.statuses.len() < InvitationStatus::ALL.len()
}

/// One enterprise's rows: the only way to a statement on them.
#[derive(Debug, Clone, Copy)]
pub struct Tenant(EnterpriseId);

impl Tenant {
    pub fn of(enterprise: EnterpriseId) -> Self {
        Self(enterprise)
    }

    fn rows(self) -> Condition {
        Condition::all().add(Column::EnterpriseId.eq(self.0.as_uuid()))
    }

    fn select(self) -> Select<Entity> {
        Entity::find().filter(self.rows())
    }

    fn update(self) -> UpdateMany<Entity> {
        Entity::update_many().filter(self.rows())
    }

    /// A page in (created_at desc, id desc) order, strictly after `filter.after`, by the
    /// page index `(enterprise_id, created_at, id)`.
    pub fn page(self, filter: &ListFilter<'_>, backend: DbBackend) -> Statement {
        let mut query = self.select();
        if let Some(scope) = filter.scope {
            query = query.filter(Column::Scope.eq(scope.as_str()));
        }
        if let Some(email) = filter.email {
            query = query.filter(Column::EmailNormalized.eq(email.normalized()));
        }
        if filters_statuses(filter) {
            let any = filter
                .statuses
                .iter()
                .fold(Condition::any(), |any, status| {
                    any.add(effective_status_is(*status, filter.now))
                });
            query = query.filter(any);
        }
        if let Some(after) = filter.after {
            // A row-value comparison, which both stores serve from the page index as a range.
            query = query.filter(
                Expr::tuple([Expr::col(Column::CreatedAt), Expr::col(Column::Id)]).lt(Expr::tuple(
                    [
                        Expr::val(after.created_at.unix_micros()),
                        Expr::val(after.id.as_uuid()),
                    ],
                )),
            );
        }
        readable(
            query
                .order_by_desc(Column::CreatedAt)
                .order_by_desc(Column::Id)
                .limit(filter.limit),
            backend,
        )
    }

    /// One invitation by id.
    pub fn get(self, id: InvitationId, backend: DbBackend) -> Statement {
        readable(self.select().filter(Column::Id.eq(id.as_uuid())), backend)
    }

    /// The cancel on PostgreSQL: one statement that makes the conditional write of
    /// [`Tenant::cancel_update`] and records `event` about the row it changed
    /// ([`with_event`]), returning the row as it is after.
    pub fn cancel(
        self,
        id: InvitationId,
        expected: Version,
        change: &CancelChange,
        now: Timestamp,
        event: &EventRecord,
    ) -> Statement {
        with_event(self.cancel_update(id, expected, change, now), event)
    }

    /// The cancel's conditional write: on (id, enterprise, version, effective pending at
    /// `now`), it also revokes the link.
    pub fn cancel_update(
        self,
        id: InvitationId,
        expected: Version,
        change: &CancelChange,
        now: Timestamp,
    ) -> UpdateMany<Entity> {
        self.update()
            .col_expr(
                Column::Status,
                Expr::value(InvitationStatus::Cancelled.as_str()),
            )
            .col_expr(Column::CancelledAt, Expr::value(change.at.unix_micros()))
            .col_expr(Column::CancelledBy, Expr::value(change.by.to_string()))
            .col_expr(
                Column::CancelReason,
                Expr::value(change.reason.as_ref().map(|r| r.as_str().to_owned())),
            )
            .col_expr(Column::UpdatedAt, Expr::value(change.at.unix_micros()))
            .col_expr(Column::Version, Expr::value(expected.next().get()))
            .col_expr(Column::LinkTokenHash, Expr::value(Option::<Vec<u8>>::None))
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(Column::Version.eq(expected.get()))
            .filter(effective_status_is(InvitationStatus::Pending, now))
    }

    /// A new link (replacing any previous one) and optionally a new expiry: one conditional
    /// write on (id, enterprise, effective pending[, version]).
    pub fn issue_link(
        self,
        id: InvitationId,
        expected: Option<Version>,
        link: LinkTokenHash,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> UpdateMany<Entity> {
        let mut update = self
            .update()
            .col_expr(Column::LinkTokenHash, Expr::value(link.0.to_vec()))
            .col_expr(Column::UpdatedAt, Expr::value(now.unix_micros()))
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(effective_status_is(InvitationStatus::Pending, now));
        if let Some(expires_at) = expires_at {
            update = update.col_expr(Column::ExpiresAt, Expr::value(expires_at.unix_micros()));
        }
        if let Some(expected) = expected {
            update = update.filter(Column::Version.eq(expected.get()));
        }
        update
    }

    /// Pending invitations for `email` (of the tenant's rows they are applied to).
    fn pending_for(email: &EmailAddress) -> Condition {
        Condition::all()
            .add(Column::EmailNormalized.eq(email.normalized()))
            .add(Column::Status.eq(InvitationStatus::Pending.as_str()))
    }

    /// Before a create: a pending invitation for the same address whose `expires_at` has
    /// passed is stored as expired (its version moves, as for every change), so that the
    /// unique index on pending rows only sees live ones.
    pub fn expire_lapsed(self, email: &EmailAddress, now: Timestamp) -> UpdateMany<Entity> {
        self.expiry(now)
            .filter(Column::EmailNormalized.eq(email.normalized()))
    }

    /// The sweeper's write: the invitation, if it is still pending and past its expiry at
    /// `now`, stored as expired.
    pub fn expire(self, id: InvitationId, now: Timestamp) -> UpdateMany<Entity> {
        self.expiry(now).filter(Column::Id.eq(id.as_uuid()))
    }

    /// The tenant's pending rows past their expiry at `now`, stored as expired.
    fn expiry(self, now: Timestamp) -> UpdateMany<Entity> {
        self.update()
            .col_expr(
                Column::Status,
                Expr::value(InvitationStatus::Expired.as_str()),
            )
            .col_expr(Column::UpdatedAt, Expr::value(now.unix_micros()))
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
            .filter(lapsed(now))
    }

    /// The create: an insert that does nothing when the unique index on pending rows (one per
    /// enterprise and address) already has one.
    pub fn insert_pending(self, invitation: &Invitation) -> Insert<entity::ActiveModel> {
        debug_assert_eq!(invitation.enterprise, self.0);
        Entity::insert(active_model(invitation))
            .on_conflict(OnConflict::new().do_nothing().to_owned())
    }

    /// The create and its `created` event as one statement, for PostgreSQL (see
    /// [`with_event`]): the insert of [`Tenant::insert_pending`], and the event only when it
    /// inserted. The store's first try: it returns nothing when any pending row holds the
    /// address, lapsed or live, and the store then takes the transaction that first stores a
    /// lapsed one as expired. When it inserts, no pending row had the address, so that
    /// transaction would have expired nothing: the outcome is the same in one round trip.
    pub fn insert_pending_with_event(
        self,
        invitation: &Invitation,
        event: &EventRecord,
    ) -> Statement {
        let mut insert = self.insert_pending(invitation).into_query();
        insert.returning(Query::returning().columns(READ_COLUMNS));
        change_and_event(insert, event)
    }

    /// The pending invitation for `email` that a create collided with.
    pub fn pending_with_address(self, email: &EmailAddress) -> Select<Entity> {
        self.select().filter(Self::pending_for(email))
    }

    /// The tenant's events after `position` (all, without one) and up to `horizon`, oldest
    /// first.
    pub fn events_after(
        self,
        position: Option<i64>,
        horizon: i64,
        limit: u64,
    ) -> Select<outbox::Entity> {
        let mut query = outbox::Entity::find()
            .filter(outbox::Column::EnterpriseId.eq(self.0.as_uuid()))
            .filter(outbox::Column::Position.lte(horizon));
        if let Some(position) = position {
            query = query.filter(outbox::Column::Position.gt(position));
        }
        query.order_by_asc(outbox::Column::Position).limit(limit)
    }

    /// The response stored under `request_id` within the retention period.
    pub fn prior_response(
        self,
        request_id: RequestId,
        now: Timestamp,
    ) -> Select<idempotency::Entity> {
        idempotency::Entity::find()
            .filter(idempotency::Column::EnterpriseId.eq(self.0.as_uuid()))
            .filter(idempotency::Column::RequestId.eq(request_id.as_uuid()))
            .filter(idempotency::Column::CreatedAt.gte(retention_cutoff(now)))
    }

    /// An expired response under the same `request_id`, making room for a new one.
    pub fn forget_lapsed_response(
        self,
        request_id: RequestId,
        now: Timestamp,
    ) -> DeleteMany<idempotency::Entity> {
        idempotency::Entity::delete_many()
            .filter(idempotency::Column::EnterpriseId.eq(self.0.as_uuid()))
            .filter(idempotency::Column::RequestId.eq(request_id.as_uuid()))
            .filter(idempotency::Column::CreatedAt.lt(retention_cutoff(now)))
    }

    /// Stores a response under `key`, unless a response is stored under it already.
    pub fn store_response(
        self,
        key: &IdempotencyKey,
        response: String,
        now: Timestamp,
    ) -> Insert<idempotency::ActiveModel> {
        idempotency::Entity::insert(idempotency::ActiveModel {
            enterprise_id: Set(self.0.as_uuid()),
            request_id: Set(key.request_id.as_uuid()),
            operation: Set(key.operation.to_owned()),
            request_fingerprint: Set(key.fingerprint.to_vec()),
            response: Set(response),
            created_at: Set(now.unix_micros()),
        })
        .on_conflict(OnConflict::new().do_nothing().to_owned())
    }
}

/// The invitation whose current link this is, whatever its enterprise.
pub fn by_link(link: LinkTokenHash, backend: DbBackend) -> Statement {
    readable(
        Entity::find().filter(Column::LinkTokenHash.eq(link.0.to_vec())),
        backend,
    )
}

/// The accept: one conditional write on (link, effective pending, e-mail). The link stays,
/// so the same invitee repeating the accept finds it accepted by them.
pub fn accept_by_link(
    link: LinkTokenHash,
    invitee_email: &EmailAddress,
    invitee: UserRef,
    now: Timestamp,
) -> UpdateMany<Entity> {
    Entity::update_many()
        .col_expr(
            Column::Status,
            Expr::value(InvitationStatus::Accepted.as_str()),
        )
        .col_expr(Column::AcceptedAt, Expr::value(now.unix_micros()))
        .col_expr(Column::AcceptedBy, Expr::value(invitee.to_string()))
        .col_expr(Column::UpdatedAt, Expr::value(now.unix_micros()))
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .filter(Column::LinkTokenHash.eq(link.0.to_vec()))
        .filter(Column::EmailNormalized.eq(invitee_email.normalized()))
        .filter(effective_status_is(InvitationStatus::Pending, now))
}

/// A change and its event as one statement, for PostgreSQL: a data-modifying `WITH` makes
/// the conditional write, and the event copies the row as the write left it, so the two
/// commit together or not at all, in one round trip. The statement returns the snapshot in
/// [`READ_COLUMNS`] order (nothing when the write matched no row, and then no event).
///
/// ```sql
/// WITH "changed" AS (UPDATE "invitations" SET ... WHERE ... RETURNING <READ_COLUMNS>)
/// INSERT INTO "invitation_events" (<record>, <snapshot>)
///   SELECT <record values>, <READ_COLUMNS> FROM "changed"
///   RETURNING <snapshot>
/// ```
///
/// SQLite has no data-modifying `WITH`: there the store runs the write and
/// [`record_event`] in one transaction. Both write the same row (a test compares them).
pub fn with_event(update: UpdateMany<Entity>, event: &EventRecord) -> Statement {
    let mut change = update.into_query();
    change.returning(Query::returning().columns(READ_COLUMNS));
    change_and_event(change, event)
}

/// `change` (a write returning [`READ_COLUMNS`]) in a data-modifying `WITH`, and `event`
/// inserted from what it returned.
fn change_and_event(change: impl Into<SubQueryStatement>, event: &EventRecord) -> Statement {
    let changed = Alias::new("changed");
    let mut snapshot = Query::select();
    snapshot
        .exprs(outbox::record_values(event).map(Expr::val))
        .columns(READ_COLUMNS)
        .from(changed.clone());
    let mut insert = Query::insert();
    insert
        .into_table(outbox::Entity)
        .columns(
            outbox::RECORD_COLUMNS
                .into_iter()
                .chain(outbox::SNAPSHOT_COLUMNS),
        )
        .select_from(snapshot)
        // Proven infallible: the select lists as many values as the insert names columns
        // (5 record values and the 18 columns of both tables; a test builds it).
        .expect("one value per event column")
        .returning(Query::returning().columns(outbox::SNAPSHOT_COLUMNS));
    let with = WithClause::new()
        .cte(
            CommonTableExpression::new()
                .query(change)
                .table_name(changed)
                .to_owned(),
        )
        .to_owned();
    DbBackend::Postgres.build(&insert.with(with))
}

/// `event` about `invitation` (as the change left it), for a transaction that has made the
/// change (and on SQLite, where [`with_event`] cannot run).
pub fn record_event(event: &EventRecord, invitation: &Invitation) -> Insert<outbox::ActiveModel> {
    outbox::Entity::insert(outbox::active_model(event, invitation))
}

/// The oldest `batch` events, of those that are older than `cutoff`: a purge in small
/// batches, each a short statement that walks the primary key, so writers never wait long.
pub fn purge_lapsed_events(cutoff: Timestamp, batch: u64) -> DeleteMany<outbox::Entity> {
    let oldest = Query::select()
        .column(outbox::Column::Position)
        .from(outbox::Entity)
        .order_by(outbox::Column::Position, sea_orm::Order::Asc)
        .limit(batch)
        .to_owned();
    outbox::Entity::delete_many()
        .filter(outbox::Column::Position.in_subquery(oldest))
        .filter(outbox::Column::OccurredAt.lt(cutoff.unix_micros()))
}

/// Pending rows past their expiry at `now` (see `Invitation::status_at`).
fn lapsed(now: Timestamp) -> Condition {
    Condition::all()
        .add(Column::Status.eq(InvitationStatus::Pending.as_str()))
        .add(Column::ExpiresAt.lte(now.unix_micros()))
}

/// PostgreSQL: the last position the outbox's sequence handed out, committed or not (NULL
/// before the first). The sequence caches one value at a time (`bigserial`'s default), so
/// no session can later take a position below it.
pub fn last_position_taken() -> Statement {
    Statement::from_string(
        DbBackend::Postgres,
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('invitation_events', 'position'))",
    )
}

/// Every enterprise's events after `position` and up to `horizon`, in position order: what
/// the process's one reader of the outbox hands to its watchers (`watch::hub`).
pub fn events_since(position: i64, horizon: i64, limit: u64) -> Select<outbox::Entity> {
    outbox::Entity::find()
        .filter(outbox::Column::Position.gt(position))
        .filter(outbox::Column::Position.lte(horizon))
        .order_by_asc(outbox::Column::Position)
        .limit(limit)
}

/// The relay `name` for `holder` until `until`, if its lease is `holder`'s or lapsed at `now`
/// (returning the relay's row: its position); nothing when another holder's runs.
pub fn claim_relay(
    name: &str,
    holder: Uuid,
    now: Timestamp,
    until: Timestamp,
) -> UpdateMany<relay::Entity> {
    relay::Entity::update_many()
        .col_expr(relay::Column::Holder, Expr::value(holder))
        .col_expr(relay::Column::LeaseUntil, Expr::value(until.unix_micros()))
        .filter(relay::Column::Name.eq(name))
        .filter(
            Condition::any()
                .add(relay::Column::Holder.eq(holder))
                .add(relay::Column::LeaseUntil.lt(now.unix_micros())),
        )
}

/// Moves the relay `name` to `position` and renews its lease until `until`, if `holder`
/// still holds it (one row affected) .
pub fn advance_relay(
    name: &str,
    holder: Uuid,
    position: i64,
    until: Timestamp,
) -> UpdateMany<relay::Entity> {
    relay::Entity::update_many()
        .col_expr(relay::Column::Position, Expr::value(position))
        .col_expr(relay::Column::LeaseUntil, Expr::value(until.unix_micros()))
        .filter(relay::Column::Name.eq(name))
        .filter(relay::Column::Holder.eq(holder))
}

/// Gives up `holder`'s lease of the relay `name` at once, so another replica takes over
/// without waiting for it to lapse.
pub fn release_relay(name: &str, holder: Uuid) -> UpdateMany<relay::Entity> {
    relay::Entity::update_many()
        .col_expr(relay::Column::Holder, Expr::value(Option::<Uuid>::None))
        .col_expr(relay::Column::LeaseUntil, Expr::value(0i64))
        .filter(relay::Column::Name.eq(name))
        .filter(relay::Column::Holder.eq(holder))
}

/// The PostgreSQL channel on which a process says it committed events.
pub const EVENTS_CHANNEL: &str = "invitation_events";

/// PostgreSQL: tells the other processes listening on [`EVENTS_CHANNEL`] that events were
/// committed (once per read of the outbox, not per change: NOTIFY inside each change's
/// transaction would serialise commits).
pub fn announce_events() -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, '')",
        [EVENTS_CHANNEL.into()],
    )
}

/// PostgreSQL: the transactions running in this database now that have an id (have
/// written), as an `xid[]` literal (`NULL` when there are none).
///
/// Read from `pg_stat_activity`, not from a snapshot's in-progress list: a snapshot leaves
/// out every transaction whose id is above the last one to finish (its `xmax`), and a
/// writer that took the newest position is often just that. A role sees the ids of its own
/// sessions' transactions, which are the ones that write events.
pub fn writers_in_flight() -> Statement {
    Statement::from_string(
        DbBackend::Postgres,
        "SELECT array_agg(backend_xid)::text FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_xid IS NOT NULL \
         AND pid <> pg_backend_pid()",
    )
}

/// PostgreSQL: how many of `writers` (from [`writers_in_flight`]) are still running. A
/// transaction leaves `pg_stat_activity`'s `backend_xid` when new snapshots start to see it
/// as finished (not when `pg_xact_status` says committed, a moment earlier), so once none
/// is left a reader sees all they wrote.
pub fn writers_still_running(writers: String) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_xid = ANY($1::xid[])",
        [writers.into()],
    )
}

/// PostgreSQL: this connection's `plan_cache_mode` and `client_connection_check_interval`,
/// the session settings the store relies on (`Store::connect_with` says why).
pub fn session_settings() -> Statement {
    Statement::from_string(
        DbBackend::Postgres,
        "SELECT current_setting('plan_cache_mode'), \
         current_setting('client_connection_check_interval')",
    )
}

/// SQLite: the highest position written.
pub fn last_position() -> Select<outbox::Entity> {
    outbox::Entity::find()
        .select_only()
        .column_as(outbox::Column::Position.max(), "last")
}

/// Key of the transaction-level advisory lock held by the replica sweeping expiries (the
/// migration lock's key plus one).
const SWEEPER_LOCK_KEY: i64 = 7_597_139_862_771_034_472;

/// PostgreSQL: whether this transaction is now the one sweeper (`true`), or another
/// replica's transaction is (`false`). The lock ends with the transaction.
pub fn try_become_sweeper() -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_try_advisory_xact_lock($1)",
        [SWEEPER_LOCK_KEY.into()],
    )
}

/// Up to `batch` pending invitations of any enterprise past their expiry at `now`, the
/// longest lapsed first (by the partial index on pending expiries): what the sweeper
/// stores as expired next, as (id, enterprise).
pub fn lapsed_pending(now: Timestamp, batch: u64) -> Select<Entity> {
    Entity::find()
        .select_only()
        .columns([Column::Id, Column::EnterpriseId])
        .filter(lapsed(now))
        .order_by_asc(Column::ExpiresAt)
        .limit(batch)
}

/// Every enterprise's responses older than the retention period (housekeeping).
pub fn purge_lapsed_responses(now: Timestamp) -> DeleteMany<idempotency::Entity> {
    idempotency::Entity::delete_many()
        .filter(idempotency::Column::CreatedAt.lt(retention_cutoff(now)))
}

fn retention_cutoff(now: Timestamp) -> i64 {
    now.saturating_sub(IDEMPOTENCY_RETENTION).unix_micros()
}

/// Rows whose effective status (see `Invitation::status_at`) is `status` at `now`.
fn effective_status_is(status: InvitationStatus, now: Timestamp) -> Condition {
    let stored = |s: InvitationStatus| Column::Status.eq(s.as_str());
    let now = now.unix_micros();
    match status {
        InvitationStatus::Pending => Condition::all()
            .add(stored(InvitationStatus::Pending))
            .add(Column::ExpiresAt.gt(now)),
        InvitationStatus::Expired => Condition::any().add(stored(InvitationStatus::Expired)).add(
            Condition::all()
                .add(stored(InvitationStatus::Pending))
                .add(Column::ExpiresAt.lte(now)),
        ),
        InvitationStatus::Accepted | InvitationStatus::Cancelled => {
            Condition::all().add(stored(status))
        }
    }
}

/// `update`, returning [`READ_COLUMNS`] of the row it changes: a write whose event follows
/// in its transaction (SQLite).
pub fn returning(update: UpdateMany<Entity>, backend: DbBackend) -> Statement {
    let mut query = update.into_query();
    query.returning(Query::returning().columns(READ_COLUMNS));
    backend.build(&query)
}

/// `select`, reading [`READ_COLUMNS`] (never the link hash).
fn readable(select: Select<Entity>, backend: DbBackend) -> Statement {
    select.select_only().columns(READ_COLUMNS).build(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InvitationId, UserRef};

    /// The SQL of the cancel, as PostgreSQL receives it: the statement this file exists to
    /// show. A change to it is a change to the service's one conditional write and its event.
    #[test]
    fn the_cancel_is_one_conditional_update_and_its_event() {
        let now = Timestamp::from_unix_micros(2);
        let change = CancelChange {
            at: now,
            by: UserRef::from_uuid(uuid::Uuid::nil()),
            reason: None,
        };
        let event = EventRecord::of(
            crate::domain::EventType::Cancelled,
            crate::domain::Actor::User(change.by),
            now,
        );
        let statement = Tenant::of(EnterpriseId::from_uuid(uuid::Uuid::nil())).cancel(
            InvitationId::from_uuid(uuid::Uuid::nil()),
            Version::FIRST,
            &change,
            Timestamp::from_unix_micros(1),
            &event,
        );
        let sql = statement.sql;
        assert!(
            sql.starts_with("WITH \"changed\" AS (UPDATE \"invitations\" SET \"status\" = $1"),
            "{sql}"
        );
        for condition in [
            "\"enterprise_id\" = ",
            "\"id\" = ",
            "\"version\" = ",
            "\"status\" = ",
            "\"expires_at\" > ",
        ] {
            assert!(sql.contains(condition), "{condition} in {sql}");
        }
        assert!(sql.contains("\"link_token_hash\" = $"), "{sql}");
        assert!(
            sql.contains(") INSERT INTO \"invitation_events\" ("),
            "{sql}"
        );
        assert!(sql.contains(" FROM \"changed\" RETURNING "), "{sql}");
        assert!(!sql.contains("RETURNING \"link_token_hash\""), "{sql}");
        assert_eq!(
            statement.values.expect("bound values").0.len(),
            12 + outbox::RECORD_COLUMNS.len(),
            "the write's values, then the event's"
        );
    }
}
