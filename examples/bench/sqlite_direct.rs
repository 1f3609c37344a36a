//! The database limit on SQLite: the service's SQL driven directly, without the service.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use invitations::domain::Timestamp;
use sea_orm::sqlx::{self, AssertSqlSafe};
use uuid::Uuid;

use crate::closed_loop::{Sample, Span, closed_loop, splitmix};
use crate::plan::PAGE_SIZE;
use crate::seed::{POOL_PREFIX, admin_uuid, enterprise_uuid, mk_uuid};
use crate::sql::{READ_COLUMNS, cancel_sql, list_sql};

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
    let sql: Arc<str> = if cursor.is_some() {
        list_sql("?", Some(("?", "?")), "?").into()
    } else {
        list_sql("?", None, "?").into()
    };
    closed_loop(conc, span, move |index, _| {
        let readers = readers.clone();
        let sql = sql.clone();
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
                    let mut statement = connection.prepare_cached(&sql)?;
                    let mut params: Vec<rusqlite::types::Value> =
                        vec![rusqlite::types::Value::Blob(ent.as_bytes().to_vec())];
                    if let Some((c, id)) = cursor {
                        params.push(rusqlite::types::Value::Integer(c));
                        params.push(rusqlite::types::Value::Blob(id.as_bytes().to_vec()));
                    }
                    params.push(rusqlite::types::Value::Integer((PAGE_SIZE + 1) as i64));
                    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                    let mut count = 0usize;
                    while let Some(row) = rows.next()? {
                        for column in 0..READ_COLUMNS.len() {
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
    let sql: Arc<str> = cancel_sql(|_| "?".to_owned()).into();
    let admin = format!("users/{}", admin_uuid());
    closed_loop(conc, span, move |index, _| {
        let (pool, sql, admin) = (pool.clone(), sql.clone(), admin.clone());
        async move {
            let k = base + index as u64;
            let now = Timestamp::now().unix_micros();
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind("cancelled")
                .bind(now)
                .bind(admin)
                .bind(Option::<String>::None)
                .bind(now)
                .bind(2i64)
                .bind(Option::<Vec<u8>>::None)
                .bind(mk_uuid(POOL_PREFIX, k))
                .bind(enterprise_uuid(k % enterprises))
                .bind(1i64)
                .bind("pending")
                .bind(now)
                .fetch_all(&pool)
                .await
                .map_err(|e| format!("SQL: {e}"))?;
            if rows.len() == 1 {
                Ok(())
            } else {
                Err("NO_ROW".into())
            }
        }
    })
    .await
}
