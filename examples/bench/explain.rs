//! EXPLAIN: every List filter combination and Cancel on the 1M-row table.

use std::time::Instant;

use invitations::domain::{InvitationStatus, Timestamp};
use sea_orm::sqlx::{self, AssertSqlSafe, Row as _};

use crate::db::{Db, sqlite_pool};
use crate::plan::{Layout, Plan, StoreKind};
use crate::seed::{Clock, POOL_PREFIX, admin_uuid, enterprise_uuid, mk_uuid};
use crate::sql::{cancel_sql, list_filter_sql};

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
                let (sql, params) =
                    list_filter_sql(store, clock, *scope, *email, statuses, *cursor);
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
            let sql = cancel_sql(|i| format!("${i}"));
            let now = Timestamp::now().unix_micros();
            let params = [
                "'cancelled'".to_owned(),
                now.to_string(),
                format!("'users/{}'", admin_uuid()),
                "NULL".into(),
                now.to_string(),
                "2".into(),
                "NULL".into(),
                format!("'{}'::uuid", mk_uuid(POOL_PREFIX, 7)),
                format!("'{}'::uuid", enterprise_uuid(0)),
                "1".into(),
                "'pending'".into(),
                now.to_string(),
            ];
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
                let (sql, params) =
                    list_filter_sql(store, clock, *scope, *email, statuses, *cursor);
                let mut literal = String::new();
                let mut it = params.iter();
                for ch in sql.chars() {
                    if ch == '?' {
                        literal += it.next().expect("param");
                    } else {
                        literal.push(ch);
                    }
                }
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
            let sql = cancel_sql(|_| "?".to_owned());
            let now = Timestamp::now().unix_micros();
            let literal = cancel_sql(|i| match i {
                1 => "'cancelled'".into(),
                3 => format!("'users/{}'", admin_uuid()),
                4 | 7 => "NULL".into(),
                6 => "2".into(),
                8 => format!("X'{}'", mk_uuid(POOL_PREFIX, 7).simple()),
                9 => format!("X'{}'", enterprise_uuid(0).simple()),
                10 => "1".into(),
                11 => "'pending'".into(),
                _ => now.to_string(),
            });
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
