//! The SQL the service runs (src/store/mod.rs, as SeaORM renders it), for the database limit
//! and the query plans.

use invitations::domain::{InvitationStatus, Timestamp};
use uuid::Uuid;

use crate::plan::{DEEP_PAGES, PAGE_SIZE, StoreKind};
use crate::seed::{COLUMNS, Clock, ID_PREFIX, enterprise_uuid, mk_uuid};

/// What the service's reads select and its writes return (`READ_COLUMNS` in
/// `src/store/mod.rs`): every column but the link hash, which never leaves the table.
pub(crate) const READ_COLUMNS: &[&str] = COLUMNS.split_last().expect("columns").1;

fn select_list() -> String {
    READ_COLUMNS
        .iter()
        .map(|c| format!("\"invitations\".\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Store::list` without filters; `ent`, `cursor` and `limit` are placeholders or literals.
pub(crate) fn list_sql(ent: &str, cursor: Option<(&str, &str)>, limit: &str) -> String {
    let keyset = cursor
        .map(|(c, id)| format!(" AND (\"created_at\", \"id\") < ({c}, {id})"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM \"invitations\" WHERE \"invitations\".\"enterprise_id\" = {ent}{keyset} \
         ORDER BY \"invitations\".\"created_at\" DESC, \"invitations\".\"id\" DESC LIMIT {limit}",
        select_list()
    )
}

/// `Store::cancel_pending`: placeholders `p(1..=12)` in SeaORM's order.
pub(crate) fn cancel_sql(p: impl Fn(usize) -> String) -> String {
    format!(
        "UPDATE \"invitations\" SET \"status\" = {}, \"cancelled_at\" = {}, \"cancelled_by\" = {}, \
         \"cancel_reason\" = {}, \"updated_at\" = {}, \"version\" = {}, \"link_token_hash\" = {} \
         WHERE \"invitations\".\"id\" = {} AND \"invitations\".\"enterprise_id\" = {} \
         AND \"invitations\".\"version\" = {} AND (\"invitations\".\"status\" = {} \
         AND \"invitations\".\"expires_at\" > {}) RETURNING {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        p(10),
        p(11),
        p(12),
        READ_COLUMNS
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// SQL (with `$n` placeholders for PostgreSQL, `?` for SQLite) for a filter combination, as
/// `Store::list` builds it: enterprise, scope, e-mail, statuses, cursor.
pub(crate) fn list_filter_sql(
    store: StoreKind,
    clock: Clock,
    scope: bool,
    email: bool,
    statuses: &[InvitationStatus],
    cursor: bool,
) -> (String, Vec<String>) {
    let mut n = 0;
    let mut params = vec![];
    let mut p = |value: String| {
        n += 1;
        params.push(value);
        match store {
            StoreKind::Postgres => format!("${n}"),
            StoreKind::Sqlite => "?".into(),
        }
    };
    let q = |c: &str| format!("\"invitations\".\"{c}\"");
    let lit_uuid = |u: Uuid| match store {
        StoreKind::Postgres => format!("'{u}'::uuid"),
        StoreKind::Sqlite => format!("X'{}'", u.simple()),
    };
    let ent = enterprise_uuid(0);
    let mut sql = format!(
        "SELECT {} FROM \"invitations\" WHERE {} = {}",
        select_list(),
        q("enterprise_id"),
        p(lit_uuid(ent))
    );
    if scope {
        sql += &format!(
            " AND {} = {}",
            q("scope"),
            p(format!("'enterprises/{ent}/teams/blue'"))
        );
    }
    if email {
        sql += &format!(
            " AND {} = {}",
            q("email_normalized"),
            p("'user1234@example.com'".into())
        );
    }
    let now = Timestamp::now().unix_micros().to_string();
    if !statuses.is_empty() {
        let mut any = vec![];
        for s in statuses {
            any.push(match s {
                InvitationStatus::Pending => format!(
                    "({} = {} AND {} > {})",
                    q("status"),
                    p("'pending'".into()),
                    q("expires_at"),
                    p(now.clone())
                ),
                InvitationStatus::Expired => format!(
                    "({} = {} OR ({} = {} AND {} <= {}))",
                    q("status"),
                    p("'expired'".into()),
                    q("status"),
                    p("'pending'".into()),
                    q("expires_at"),
                    p(now.clone())
                ),
                other => format!("{} = {}", q("status"), p(format!("'{}'", other.as_str()))),
            });
        }
        sql += &format!(" AND ({})", any.join(" OR "));
    }
    if cursor {
        let row = DEEP_PAGES * PAGE_SIZE - 1;
        let c = p(clock.created_at(row).to_string());
        let i = p(lit_uuid(mk_uuid(ID_PREFIX, row)));
        sql += &format!(" AND (\"created_at\", \"id\") < ({c}, {i})");
    }
    sql += &format!(
        " ORDER BY {} DESC, {} DESC LIMIT {}",
        q("created_at"),
        q("id"),
        p("51".into())
    );
    (sql, params)
}
