//! The service's own statements, as `invitations::store::queries` builds them, turned into
//! what each database limit runs: a pgbench script, binds for SQLite, literal SQL for
//! EXPLAIN. Nothing here writes SQL: a statement is built from stand-in values the harness
//! recognises afterwards (the [`Slot`]s), which each runner replaces with its own per call;
//! every other value is the statement's own.

use invitations::domain::{
    Actor, CancelChange, EmailAddress, EnterpriseId, EventId, EventRecord, EventType, Invitation,
    InvitationId, InvitationStatus, ListFilter, PageCursor, RoleRef, Scope, StatusFilter,
    Timestamp, UserRef, Version,
};
use invitations::store::queries::{self, READ_COLUMNS, Tenant};
use sea_orm::sea_query::{PostgresQueryBuilder, QueryBuilder};
use sea_orm::{DbBackend, QueryTrait, Statement, Value};
use uuid::Uuid;

use crate::plan::PAGE_SIZE;
use crate::seed::{admin_uuid, role_uuid};

/// How many columns a read returns (the service's `READ_COLUMNS`).
pub(crate) const READ_COLUMN_COUNT: usize = READ_COLUMNS.len();

/// A bound value a runner supplies per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Enterprise,
    Id,
    CursorCreatedAt,
    CursorId,
    Now,
    /// A new event's id: unique per call.
    EventId,
}

/// Stand-ins, chosen so that no statement's own value can equal one.
const ENTERPRISE: Uuid = Uuid::from_u128(0x5107_0000_0000_4000_8000_0000_0000_0e00);
const ID: Uuid = Uuid::from_u128(0x5107_0000_0000_4000_8000_0000_0000_01d0);
const CURSOR_ID: Uuid = Uuid::from_u128(0x5107_0000_0000_4000_8000_0000_0000_0c1d);
const CURSOR_CREATED_AT: i64 = -5_107_000_001;
const NOW: i64 = -5_107_000_002;
const EVENT_ID: Uuid = Uuid::from_u128(0x5107_0000_0000_7000_8000_0000_0000_0e7e);

/// One of the service's statements and, for each of its bound values, the slot it fills.
pub(crate) struct Probe {
    pub(crate) statement: Statement,
    pub(crate) slots: Vec<Option<Slot>>,
}

/// The List filters a statement is built for; `None` values stand for a slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListShape {
    /// The enterprise, or a slot.
    pub(crate) enterprise: Option<Uuid>,
    /// The sub-scope `…/teams/blue` of that enterprise (needs `enterprise`).
    pub(crate) scope: bool,
    pub(crate) email: Option<String>,
    pub(crate) statuses: Vec<InvitationStatus>,
    /// The keyset cursor: `Some(None)` is a slot, `Some(Some(..))` a given position.
    pub(crate) after: Option<Option<(i64, Uuid)>>,
    /// When effective statuses are evaluated, or a slot.
    pub(crate) now: Option<i64>,
}

impl ListShape {
    /// The first page of an enterprise (a slot), or the page after a cursor (slots too).
    pub(crate) fn page(deep: bool) -> Self {
        Self {
            after: deep.then_some(None),
            ..Self::default()
        }
    }
}

/// `Store::list`'s statement for `shape`.
pub(crate) fn list(backend: DbBackend, shape: &ListShape) -> Probe {
    let enterprise = EnterpriseId::from_uuid(shape.enterprise.unwrap_or(ENTERPRISE));
    let scope = shape.scope.then(|| {
        Scope::parse(&format!("{}/teams/blue", enterprise.resource_name()))
            .expect("a sub-scope of the enterprise")
    });
    let email = shape
        .email
        .as_deref()
        .map(|e| EmailAddress::parse(e).expect("an address"));
    let statuses: StatusFilter = shape.statuses.iter().copied().collect();
    let after = shape.after.map(|after| {
        let (created_at, id) = after.unwrap_or((CURSOR_CREATED_AT, CURSOR_ID));
        PageCursor {
            created_at: Timestamp::from_unix_micros(created_at),
            id: InvitationId::from_uuid(id),
        }
    });
    let filter = ListFilter {
        enterprise,
        scope: scope.as_ref(),
        statuses: &statuses,
        email: email.as_ref(),
        after,
        limit: PAGE_SIZE + 1,
        now: Timestamp::from_unix_micros(shape.now.unwrap_or(NOW)),
    };
    probe(Tenant::of(enterprise).page(&filter, backend))
}

/// What a cancel (no idempotency key) writes: the administrator cancels version 1, without
/// a reason; the invitation, its enterprise, the instant and the event's id are slots.
fn cancel_change() -> (CancelChange, EventRecord) {
    let now = Timestamp::from_unix_micros(NOW);
    let by = UserRef::from_uuid(admin_uuid());
    let change = CancelChange {
        at: now,
        by,
        reason: None,
    };
    let event = EventRecord {
        id: EventId::from_uuid(EVENT_ID),
        ..EventRecord::of(EventType::Cancelled, Actor::User(by), now)
    };
    (change, event)
}

/// `Store::cancel`'s statement on PostgreSQL: the conditional write and its event, one
/// statement.
pub(crate) fn cancel() -> Probe {
    let (change, event) = cancel_change();
    let now = change.at;
    probe(Tenant::of(EnterpriseId::from_uuid(ENTERPRISE)).cancel(
        InvitationId::from_uuid(ID),
        Version::FIRST,
        &change,
        now,
        &event,
    ))
}

/// `Store::cancel`'s statements on SQLite, run in one transaction: the conditional write
/// (returning the row, as SeaORM asks for it), then the event about the row it returned. The
/// event's snapshot is a cancelled invitation as the write leaves one, its id and enterprise
/// the call's.
pub(crate) fn sqlite_cancel() -> [Probe; 2] {
    let (change, event) = cancel_change();
    let tenant = Tenant::of(EnterpriseId::from_uuid(ENTERPRISE));
    let id = InvitationId::from_uuid(ID);
    let write = queries::returning(
        tenant.cancel_update(id, Version::FIRST, &change, change.at),
        DbBackend::Sqlite,
    );
    let cancelled = Invitation {
        id,
        enterprise: EnterpriseId::from_uuid(ENTERPRISE),
        scope: Scope::enterprise_root(EnterpriseId::from_uuid(ENTERPRISE)),
        email: EmailAddress::parse("user1234@example.com").expect("an address"),
        role: RoleRef::from_uuid(role_uuid()),
        stored_status: InvitationStatus::Cancelled,
        invited_by: change.by,
        pending_human_actor: None,
        challenge_ref: None,
        created_at: change.at,
        updated_at: change.at,
        expires_at: change.at,
        accepted_at: None,
        accepted_by: None,
        cancelled_at: Some(change.at),
        cancel_reason: None,
        cancelled_by: Some(change.by),
        version: Version::FIRST.next(),
    };
    let record = queries::record_event(&event, &cancelled).build(DbBackend::Sqlite);
    [probe(write), probe(record)]
}

fn probe(statement: Statement) -> Probe {
    let slots = values(&statement).iter().map(slot_of).collect();
    Probe { statement, slots }
}

fn values(statement: &Statement) -> &[Value] {
    statement.values.as_ref().map_or(&[], |v| &v.0)
}

fn slot_of(value: &Value) -> Option<Slot> {
    [
        (Value::from(ENTERPRISE), Slot::Enterprise),
        (Value::from(ID), Slot::Id),
        (Value::from(CURSOR_ID), Slot::CursorId),
        (Value::from(CURSOR_CREATED_AT), Slot::CursorCreatedAt),
        (Value::from(NOW), Slot::Now),
        (Value::from(EVENT_ID), Slot::EventId),
    ]
    .into_iter()
    .find_map(|(stand_in, slot)| (*value == stand_in).then_some(slot))
}

impl Probe {
    pub(crate) fn sql(&self) -> &str {
        &self.statement.sql
    }

    /// The bound values, each slot filled by `fill`.
    pub(crate) fn values_with(&self, fill: impl Fn(Slot) -> Value) -> Vec<Value> {
        values(&self.statement)
            .iter()
            .zip(&self.slots)
            .map(|(value, slot)| slot.map_or_else(|| value.clone(), &fill))
            .collect()
    }

    /// The PostgreSQL text with its `$n` placeholders replaced: a slot by `fill`, any other
    /// value by its literal.
    pub(crate) fn pg_text(&self, fill: impl Fn(Slot) -> String) -> String {
        let params: Vec<String> = values(&self.statement)
            .iter()
            .zip(&self.slots)
            .map(|(value, slot)| slot.map_or_else(|| pg_literal(value), &fill))
            .collect();
        replace_numbered(&self.statement.sql, &params)
    }

    /// The values as PostgreSQL literals, slots filled by `fill` (for `EXECUTE q(…)`).
    pub(crate) fn pg_literals(&self, fill: impl Fn(Slot) -> Value) -> Vec<String> {
        self.values_with(fill).iter().map(pg_literal).collect()
    }

    /// The SQLite text with every `?` replaced by its value as a literal (for EXPLAIN).
    pub(crate) fn sqlite_literal(&self, fill: impl Fn(Slot) -> Value) -> String {
        let mut values = self.values_with(fill).into_iter();
        let mut out = String::new();
        for ch in self.statement.sql.chars() {
            match ch {
                '?' => out += &sqlite_literal(&values.next().expect("a value per placeholder")),
                other => out.push(other),
            }
        }
        out
    }
}

fn pg_literal(value: &Value) -> String {
    PostgresQueryBuilder.value_to_string(value)
}

/// SQLite stores a UUID as its 16 bytes (as SeaORM binds it).
fn sqlite_literal(value: &Value) -> String {
    match value {
        Value::Uuid(Some(u)) => format!("X'{}'", u.simple()),
        other => pg_literal(other),
    }
}

/// `sql` with each `$n` replaced by `params[n - 1]`.
fn replace_numbered(sql: &str, params: &[String]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, ch)) = chars.next() {
        if ch != '$' {
            out.push(ch);
            continue;
        }
        let mut n = 0usize;
        let mut digits = 0;
        while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
            n = n * 10 + d.to_digit(10).expect("a digit") as usize;
            digits += 1;
            chars.next();
        }
        match digits {
            0 => out.push('$'),
            _ => out += &params[n - 1],
        }
    }
    out
}

/// A sea-query value as a rusqlite value, for the SQLite runners.
pub(crate) fn to_rusqlite(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::String(Some(s)) => V::Text(s.clone()),
        Value::BigInt(Some(n)) => V::Integer(*n),
        Value::Int(Some(n)) => V::Integer(i64::from(*n)),
        Value::BigUnsigned(Some(n)) => V::Integer(i64::try_from(*n).expect("fits in i64")),
        Value::Uuid(Some(u)) => V::Blob(u.as_bytes().to_vec()),
        Value::Bytes(Some(b)) => V::Blob(b.clone()),
        Value::String(None)
        | Value::BigInt(None)
        | Value::Int(None)
        | Value::Uuid(None)
        | Value::Bytes(None) => V::Null,
        other => panic!("a value the SQLite runner does not bind: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_is_found_where_the_statement_binds_it() {
        let cancel = cancel();
        for slot in [Slot::Enterprise, Slot::Id, Slot::Now, Slot::EventId] {
            assert!(cancel.slots.contains(&Some(slot)), "{slot:?}");
        }
        let [write, record] = sqlite_cancel();
        for slot in [Slot::Enterprise, Slot::Id, Slot::Now] {
            assert!(write.slots.contains(&Some(slot)), "{slot:?}");
        }
        for slot in [Slot::Enterprise, Slot::Id, Slot::Now, Slot::EventId] {
            assert!(record.slots.contains(&Some(slot)), "{slot:?}");
        }
        let page = list(DbBackend::Sqlite, &ListShape::page(true));
        for slot in [Slot::Enterprise, Slot::CursorCreatedAt, Slot::CursorId] {
            assert!(page.slots.contains(&Some(slot)), "{slot:?}");
        }
    }

    #[test]
    fn numbered_placeholders_are_replaced_whole() {
        let params: Vec<String> = (1..=12).map(|n| format!("<{n}>")).collect();
        assert_eq!(
            replace_numbered("a = $1 AND b = $12 AND c = $2", &params),
            "a = <1> AND b = <12> AND c = <2>"
        );
    }
}
