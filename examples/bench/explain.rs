//! EXPLAIN: every List filter combination and Cancel on the 1M-row table.

use std::time::Instant;

use invitations::domain::{InvitationStatus, Timestamp};
use sea_orm::sqlx::{self, AssertSqlSafe, Row as _};
use sea_orm::{DbBackend, Value};
use uuid::Uuid;

use crate::db::{Db, sqlite_pool};
use crate::plan::{DEEP_PAGES, Layout, PAGE_SIZE, Plan, StoreKind};

/// The last row of the first `DEEP_PAGES` pages: a deep cursor's position.
const DEEP_CURSOR_ROW: u64 = DEEP_PAGES * PAGE_SIZE - 1;
use crate::seed::{Clock, ID_PREFIX, POOL_PREFIX, enterprise_uuid, mk_uuid};
use crate::sql::{self, ListShape, Slot};

pub(crate) async fn explain(plan: &Plan, store: StoreKind) -> String {
    use InvitationStatus::*;
    let size = plan.sizes.iter().copied().max().unwrap_or(1_000_000);
    let db = Db::create(store, plan.pg_url.as_deref(), "invitations_bench_explain").await;
    db.migrate().await;
    let clock = Clock::now();
    db.seed(Layout::Single, 0, size, clock, false).await;
    db.seed(Layout::Single, 0, 1000, clock, true).await;
    let mut out = format!(
        "# EXPLAIN on {}: {size} rows in one enterprise (+1000 pending to cancel)\n",
        store.name()
    );
    let combos: Vec<(&str, bool, bool, Vec<InvitationStatus>, bool)> = vec![
        ("no filter (first page)", false, false, vec![], false),
        (
            "no filter, the page after 10 000 pages (keyset cursor)",
            false,
            false,
            vec![],
            true,
        ),
        ("statuses = [PENDING]", false, false, vec![Pending], false),
        ("statuses = [ACCEPTED]", false, false, vec![Accepted], false),
        ("statuses = [EXPIRED]", false, false, vec![Expired], false),
        (
            "statuses = [ACCEPTED, CANCELLED]",
            false,
            false,
            vec![Accepted, Cancelled],
            false,
        ),
        (
            "statuses = [PENDING, EXPIRED], deep cursor",
            false,
            false,
            vec![Pending, Expired],
            true,
        ),
        ("email", false, true, vec![], false),
        ("scope", true, false, vec![], false),
        ("scope, deep cursor", true, false, vec![], true),
        (
            "statuses = [PENDING] + email",
            false,
            true,
            vec![Pending],
            false,
        ),
        (
            "statuses = [CANCELLED] + scope",
            true,
            false,
            vec![Cancelled],
            false,
        ),
        ("email + scope", true, true, vec![], false),
        (
            "statuses = [PENDING] + email + scope",
            true,
            true,
            vec![Pending],
            false,
        ),
    ];
    match store {
        StoreKind::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&db.url)
                .await
                .expect("connect");
            let mut conn = pool.acquire().await.expect("conn");
            let mut run = async |sql: String| -> String {
                let rows = sqlx::raw_sql(AssertSqlSafe(sql))
                    .fetch_all(&mut *conn)
                    .await
                    .expect("explain");
                rows.iter()
                    .map(|r| format!("    {}\n", r.get::<String, _>(0)))
                    .collect()
            };
            for (i, (name, scope, email, statuses, cursor)) in combos.iter().enumerate() {
                let list = sql::list(
                    DbBackend::Postgres,
                    &shape(clock, *scope, *email, statuses, *cursor),
                );
                let (sql, params) = (list.sql(), list.pg_literals(no_slots));
                out += &format!(
                    "\n## List: {name}\n\n    {sql}\n\nGeneric plan (a cached prepared statement; what the service runs with plan_cache_mode = force_generic_plan):\n\n"
                );
                run(format!("PREPARE q{i} AS {sql}")).await;
                run("SET plan_cache_mode = force_generic_plan".into()).await;
                out += &run(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE q{i}({})",
                    params.join(", ")
                ))
                .await;
                run("SET plan_cache_mode = force_custom_plan".into()).await;
                out += "\nCustom plan (re-planned for these values; what PostgreSQL picks for the service today, LIMIT being a bind parameter):\n\n";
                out += &run(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE q{i}({})",
                    params.join(", ")
                ))
                .await;
                run("RESET plan_cache_mode".into()).await;
            }
            let cancel = sql::cancel();
            let (sql, params) = (cancel.sql(), cancel.pg_literals(pool_invitation_7));
            out += &format!(
                "\n## Cancel (in a rolled-back transaction)\n\n    {sql}\n\nGeneric plan:\n\n"
            );
            run(format!("PREPARE c AS {sql}")).await;
            run("SET plan_cache_mode = force_generic_plan".into()).await;
            run("BEGIN".into()).await;
            out += &run(format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE c({})",
                params.join(", ")
            ))
            .await;
            run("ROLLBACK".into()).await;
            drop(conn);
            pool.close().await;
        }
        StoreKind::Sqlite => {
            let pool = sqlite_pool(db.sqlite_path.as_ref().expect("path"), 1).await;
            for (name, scope, email, statuses, cursor) in &combos {
                let list = sql::list(
                    DbBackend::Sqlite,
                    &shape(clock, *scope, *email, statuses, *cursor),
                );
                let (sql, literal) = (list.sql(), list.sqlite_literal(no_slots));
                let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {literal}")))
                    .fetch_all(&pool)
                    .await
                    .expect("explain");
                let started = Instant::now();
                let mut n = 0;
                for _ in 0..20 {
                    n = sqlx::query(AssertSqlSafe(literal.clone()))
                        .fetch_all(&pool)
                        .await
                        .expect("run")
                        .len();
                }
                out += &format!("\n## List: {name}\n\n    {sql}\n\n");
                for r in rows {
                    out += &format!("    {}\n", r.get::<String, _>(3));
                }
                out += &format!(
                    "    ({n} rows, {:.3} ms per query)\n",
                    started.elapsed().as_secs_f64() * 1e3 / 20.0
                );
            }
            let [cancel, _event] = sql::sqlite_cancel();
            let (sql, literal) = (cancel.sql(), cancel.sqlite_literal(pool_invitation_7));
            let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {literal}")))
                .fetch_all(&pool)
                .await
                .expect("explain");
            out += &format!("\n## Cancel\n\n    {sql}\n\n");
            for r in rows {
                out += &format!("    {}\n", r.get::<String, _>(3));
            }
            pool.close().await;
        }
    }
    db.drop_db().await;
    out
}

/// A List filter combination of the EXPLAIN, on enterprise 0 at this instant.
fn shape(
    clock: Clock,
    scope: bool,
    email: bool,
    statuses: &[InvitationStatus],
    cursor: bool,
) -> ListShape {
    ListShape {
        enterprise: Some(enterprise_uuid(0)),
        scope,
        email: email.then(|| "user1234@example.com".to_owned()),
        statuses: statuses.to_vec(),
        after: cursor.then(|| {
            Some((
                clock.created_at(DEEP_CURSOR_ROW),
                mk_uuid(ID_PREFIX, DEEP_CURSOR_ROW),
            ))
        }),
        now: Some(Timestamp::now().unix_micros()),
    }
}

fn no_slots(slot: Slot) -> Value {
    unreachable!("the EXPLAIN gives every value of a List: {slot:?}")
}

/// The cancel of pool invitation 7 of enterprise 0, now.
fn pool_invitation_7(slot: Slot) -> Value {
    match slot {
        Slot::Enterprise => enterprise_uuid(0).into(),
        Slot::Id => mk_uuid(POOL_PREFIX, 7).into(),
        Slot::Now => Timestamp::now().unix_micros().into(),
        Slot::EventId => Uuid::now_v7().into(),
        Slot::CursorCreatedAt | Slot::CursorId => unreachable!("a cancel has no cursor"),
    }
}
