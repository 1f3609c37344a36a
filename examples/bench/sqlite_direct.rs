//! The database limit on SQLite: the service's SQL driven directly, without the service.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use invitations::domain::Timestamp;
use sea_orm::sqlx::{self, AssertSqlSafe};
use sea_orm::{DbBackend, Value};
use uuid::Uuid;

use crate::closed_loop::{Sample, Span, closed_loop, splitmix};
use crate::seed::{POOL_PREFIX, enterprise_uuid, mk_uuid};
use crate::sql::{self, ListShape, READ_COLUMN_COUNT, Slot, to_rusqlite};

/// The SQLite read path at its cheapest: rusqlite connections with the service's reader
/// settings (`src/store/sqlite_reader.rs`), one blocking task per page, every value of every
/// row touched in place, the statement prepared once per connection.
struct SqliteDirectReaders {
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl SqliteDirectReaders {
    /// As many connections as the service's readers at this concurrency: at most 8.
    fn open(path: &Path, conc: usize) -> Arc<Self> {
        let connections = conc.clamp(1, 8);
        let idle = (0..connections)
            .map(|_| {
                let connection = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .expect("open the SQLite file");
                connection
                    .busy_timeout(Duration::from_secs(5))
                    .expect("busy timeout");
                connection
                    .pragma_update(None, "query_only", true)
                    .expect("query_only");
                connection
                    .set_db_config(
                        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                        true,
                    )
                    .expect("QPSG");
                connection
            })
            .collect();
        Arc::new(Self {
            idle: std::sync::Mutex::new(idle),
            permits: Arc::new(tokio::sync::Semaphore::new(connections)),
        })
    }
}

pub(crate) async fn sqlite_list(
    path: &Path,
    enterprises: u64,
    cursor: Option<(i64, Uuid)>,
    conc: usize,
    span: Span,
) -> Sample {
    let readers = SqliteDirectReaders::open(path, conc);
    let page = Arc::new(sql::list(
        DbBackend::Sqlite,
        &ListShape::page(cursor.is_some()),
    ));
    closed_loop(conc, span, move |index, _| {
        let readers = readers.clone();
        let page = page.clone();
        async move {
            let permit = readers
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let ent = enterprise_uuid(splitmix(index as u64) % enterprises);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let connection = readers
                    .idle
                    .lock()
                    .expect("readers")
                    .pop()
                    .expect("a reader per permit");
                let page = (|| {
                    let mut statement = connection.prepare_cached(page.sql())?;
                    let params = page.values_with(|slot| match slot {
                        Slot::Enterprise => ent.into(),
                        Slot::CursorCreatedAt => cursor.expect("a cursor").0.into(),
                        Slot::CursorId => cursor.expect("a cursor").1.into(),
                        Slot::Id | Slot::Now | Slot::EventId => {
                            unreachable!("a page binds none of these")
                        }
                    });
                    let mut rows = statement
                        .query(rusqlite::params_from_iter(params.iter().map(to_rusqlite)))?;
                    let mut count = 0usize;
                    while let Some(row) = rows.next()? {
                        for column in 0..READ_COLUMN_COUNT {
                            std::hint::black_box(row.get_ref(column)?);
                        }
                        count += 1;
                    }
                    Ok::<_, rusqlite::Error>(count)
                })();
                readers.idle.lock().expect("readers").push(connection);
                page.map(|rows| {
                    std::hint::black_box(rows);
                })
                .map_err(|e| format!("SQL: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        }
    })
    .await
}

pub(crate) async fn sqlite_cancel(
    pool: sqlx::SqlitePool,
    enterprises: u64,
    base: u64,
    conc: usize,
    span: Span,
) -> Sample {
    let statements = Arc::new(sql::sqlite_cancel());
    closed_loop(conc, span, move |index, _| {
        let (pool, statements) = (pool.clone(), statements.clone());
        async move {
            let k = base + index as u64;
            let now = Timestamp::now().unix_micros();
            let fill = |slot| match slot {
                Slot::Enterprise => enterprise_uuid(k % enterprises).into(),
                Slot::Id => mk_uuid(POOL_PREFIX, k).into(),
                Slot::Now => now.into(),
                Slot::EventId => Uuid::now_v7().into(),
                Slot::CursorCreatedAt | Slot::CursorId => unreachable!("a cancel has no cursor"),
            };
            let [write, record] = &*statements;
            let failed = |e: sqlx::Error| format!("SQL: {e}");
            let query = |probe: &sql::Probe| {
                let text = AssertSqlSafe(probe.sql().to_owned());
                probe.values_with(fill).iter().fold(sqlx::query(text), bind)
            };
            // As the store runs them: the write, then its event, in one transaction.
            let mut txn = pool.begin().await.map_err(failed)?;
            let rows = query(write).fetch_all(&mut *txn).await.map_err(failed)?;
            if rows.len() != 1 {
                return Err("NO_ROW".into());
            }
            query(record).execute(&mut *txn).await.map_err(failed)?;
            txn.commit().await.map_err(failed)?;
            Ok(())
        }
    })
    .await
}

/// A sea-query value bound as SeaORM binds it on SQLite.
fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    value: &Value,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    match to_rusqlite(value) {
        rusqlite::types::Value::Null => query.bind(Option::<i64>::None),
        rusqlite::types::Value::Integer(n) => query.bind(n),
        rusqlite::types::Value::Real(x) => query.bind(x),
        rusqlite::types::Value::Text(s) => query.bind(s),
        rusqlite::types::Value::Blob(b) => query.bind(b),
    }
}
