//! Reads on SQLite, through SQLite's own API on a blocking thread.
//!
//! sqlx runs every SQLite connection on a thread of its own and hands each row over a
//! channel, copying every value into an allocation of its own; a page of 51 rows is about a
//! thousand copies, and returning the connection to the pool pings that thread once more.
//! Here a page is one blocking task: the statement (prepared once per connection) runs to
//! its end and the values are read in place into domain types (what it buys, measured:
//! `docs/adr/0002-sqlite-reader.md`).
//!
//! The readers are connections of their own to the same file, opened lazily, at most
//! [`SqliteReaders::MAX`] or the pool size, whichever is smaller. They are `query_only`:
//! every write still goes through SeaORM's pool, so writes keep one path and one
//! transaction model. In WAL mode a reader never waits for the writer, and each statement
//! sees every transaction committed before it started. An in-memory database is one per
//! connection, so for it reads stay on SeaORM's pool (see [`SqliteReaders::for_url`]).
//!
//! Pages are read on threads of their own, named [`READER_THREAD_NAME`], not on tokio's
//! shared blocking pool: like sqlx's `sqlx-sqlite-worker-*` threads for writes, they are the
//! embedded database's work, and an operator (or the benchmark harness, which moves them off
//! the server's core as it moves PostgreSQL's backends) can tell them apart.
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::Value as SqliteValue;
use rusqlite::{Connection, OpenFlags};
use sea_orm::sea_query::Value;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::{DatabaseConnection, Statement};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{SqliteSync, StoredRow, into_domain};
use crate::domain::Error;
use crate::domain::Invitation;

/// The name of the threads SQLite reads run on.
pub const READER_THREAD_NAME: &str = "sqlite-reader";

/// Statements a reader keeps prepared: every List filter combination fits.
const PREPARED_STATEMENTS: usize = 64;

pub(super) struct SqliteReaders {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per reader connection: a read waits here, like for a pooled connection.
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    busy_timeout: Duration,
    synchronous: SqliteSync,
    threads: ReaderThreads,
}

/// A blocking pool of the readers' own: a runtime that is never driven, used only for
/// `spawn_blocking`, so that its threads carry [`READER_THREAD_NAME`].
struct ReaderThreads(Option<tokio::runtime::Runtime>);

impl ReaderThreads {
    fn start(threads: usize) -> std::io::Result<Self> {
        tokio::runtime::Builder::new_current_thread()
            .thread_name(READER_THREAD_NAME)
            .max_blocking_threads(threads)
            .build()
            .map(|runtime| Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for ReaderThreads {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async caller must not do; a
        // read still running ends on its own and its connection is dropped with it.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl SqliteReaders {
    /// Readers beyond the number that can run at once only add page caches: reads are CPU
    /// work once the pages are cached, and the blocking pool runs one task per reader.
    pub const MAX: usize = 8;

    /// Readers for the database file `url` names; `None` for an in-memory database or a URL
    /// sqlx does not parse (SeaORM's pool reports that one when it connects).
    pub fn for_url(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        busy_timeout: Duration,
        synchronous: SqliteSync,
    ) -> Option<Self> {
        let options = SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename().to_path_buf();
        let in_memory = url.contains(":memory:")
            || url.contains("mode=memory")
            || path.as_os_str().is_empty()
            || path.to_string_lossy().starts_with("file:");
        if in_memory {
            return None;
        }
        let readers = (max_connections as usize).clamp(1, Self::MAX);
        let threads = ReaderThreads::start(readers)
            .inspect_err(|error| {
                tracing::warn!(%error, "no SQLite reader threads; reads go through the pool");
            })
            .ok()?;
        Some(Self {
            threads,
            path,
            idle: Mutex::new(Vec::with_capacity(readers)),
            permits: Arc::new(Semaphore::new(readers)),
            acquire_timeout,
            busy_timeout,
            synchronous,
        })
    }

    /// Runs a statement that SeaORM built for SQLite and reads its rows by position
    /// (`READ_COLUMNS` order).
    pub async fn fetch(self: &Arc<Self>, statement: Statement) -> Result<Vec<Invitation>, Error> {
        let permit =
            tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| {
                    Error::DatabaseUnavailable("no SQLite reader became free in time".into())
                })?
                .map_err(|_| Error::DatabaseUnavailable("the store is closed".into()))?;
        let readers = Arc::clone(self);
        self.threads
            .handle()
            .spawn_blocking(move || {
                let _permit = permit;
                let connection = readers.take()?;
                let page = read_page(&connection, &statement);
                // A connection is kept whatever the statement answered: a failed read leaves no
                // transaction open (the statement is reset when its rows are dropped).
                readers.give_back(connection);
                page
            })
            .await
            .map_err(|join| Error::Internal(format!("a SQLite read did not finish: {join}")))?
    }

    /// Drops every idle reader; readers in use are dropped when their read ends.
    pub fn close(&self) {
        self.permits.close();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn take(&self) -> Result<Connection, Error> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(connection) => Ok(connection),
            None => self.open().map_err(unavailable),
        }
    }

    fn give_back(&self, connection: Connection) {
        if !self.permits.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Read-write without create: a WAL reader writes its read marks to the -shm file.
        // The file exists: migrations ran through SeaORM's pool before any read.
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(self.busy_timeout)?;
        connection.pragma_update(None, "query_only", true)?;
        // A reader commits nothing, but a connection with another setting than the
        // writers' would be one more thing to explain (and to check).
        connection.pragma_update(None, "synchronous", self.synchronous.pragma())?;
        // The query planner stability guarantee: one plan per statement whatever the bound
        // values, as `plan_cache_mode = force_generic_plan` on PostgreSQL. Without it SQLite
        // marks the statement for re-planning whenever a value it could plan by (LIMIT's,
        // and with the bundled STAT4, the enterprise's) is bound again: a full parse and
        // plan on every page (`sqlite3Reprepare`).
        connection.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        connection.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
        Ok(connection)
    }
}

/// Whether reads on this pool go through [`SqliteReaders`]; the pool stays for writes.
pub(super) fn readers_for(
    db: &DatabaseConnection,
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    busy_timeout: Duration,
    synchronous: SqliteSync,
) -> Option<Arc<SqliteReaders>> {
    (db.get_database_backend() == sea_orm::DbBackend::Sqlite)
        .then(|| {
            SqliteReaders::for_url(
                url,
                max_connections,
                acquire_timeout,
                busy_timeout,
                synchronous,
            )
        })
        .flatten()
        .map(Arc::new)
}

fn read_page(connection: &Connection, statement: &Statement) -> Result<Vec<Invitation>, Error> {
    let parameters = statement
        .values
        .as_ref()
        .map(|values| {
            values
                .0
                .iter()
                .map(parameter)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let mut prepared = connection.prepare_cached(&statement.sql).map_err(failure)?;
    let mut rows = prepared
        .query(rusqlite::params_from_iter(parameters))
        .map_err(failure)?;
    let mut page = Vec::new();
    while let Some(row) = rows.next().map_err(failure)? {
        page.push(into_domain(stored_row(row).map_err(failure)?)?);
    }
    Ok(page)
}

/// A row selected with `READ_COLUMNS`, borrowed from SQLite's buffers. Identifiers are
/// stored as 16-byte blobs, as sqlx writes a `Uuid`.
fn stored_row<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<StoredRow<'r>> {
    let text = |i: usize| -> rusqlite::Result<&'r str> { Ok(row.get_ref(i)?.as_str()?) };
    let optional_text =
        |i: usize| -> rusqlite::Result<Option<&'r str>> { Ok(row.get_ref(i)?.as_str_or_null()?) };
    // References are read as bytes (text or blob alike), for `UserRef::from_stored`.
    let reference = |i: usize| -> rusqlite::Result<&'r [u8]> { Ok(row.get_ref(i)?.as_bytes()?) };
    let optional_reference = |i: usize| -> rusqlite::Result<Option<&'r [u8]>> {
        Ok(row.get_ref(i)?.as_bytes_or_null()?)
    };
    let integer = |i: usize| -> rusqlite::Result<i64> { Ok(row.get_ref(i)?.as_i64()?) };
    let optional_integer =
        |i: usize| -> rusqlite::Result<Option<i64>> { Ok(row.get_ref(i)?.as_i64_or_null()?) };
    let uuid = |i: usize| -> rusqlite::Result<Uuid> {
        Uuid::from_slice(row.get_ref(i)?.as_blob()?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
        })
    };
    Ok(StoredRow {
        id: uuid(0)?,
        enterprise_id: uuid(1)?,
        scope: text(2)?,
        email_constraint: text(3)?,
        role: reference(4)?,
        status: text(5)?,
        invited_by: reference(6)?,
        pending_human_actor_ref: optional_reference(7)?,
        challenge_ref: optional_text(8)?,
        created_at: integer(9)?,
        updated_at: integer(10)?,
        expires_at: integer(11)?,
        accepted_at: optional_integer(12)?,
        accepted_by: optional_reference(13)?,
        cancelled_at: optional_integer(14)?,
        cancel_reason: optional_text(15)?,
        cancelled_by: optional_reference(16)?,
        version: integer(17)?,
    })
}

/// A SeaORM bind value as SQLite stores it through sqlx (see `sea-query-sqlx`).
fn parameter(value: &Value) -> Result<SqliteValue, Error> {
    let integer = |v: Option<i64>| v.map_or(SqliteValue::Null, SqliteValue::Integer);
    Ok(match value {
        Value::Bool(v) => integer(v.map(i64::from)),
        Value::Int(v) => integer(v.map(i64::from)),
        Value::BigInt(v) => integer(*v),
        Value::Unsigned(v) => integer(v.map(i64::from)),
        Value::BigUnsigned(v) => match v {
            Some(v) => SqliteValue::Integer(i64::try_from(*v).map_err(|_| {
                Error::Internal(format!("bind value {v} is out of SQLite's range"))
            })?),
            None => SqliteValue::Null,
        },
        Value::String(v) => v.clone().map_or(SqliteValue::Null, SqliteValue::Text),
        Value::Bytes(v) => v.clone().map_or(SqliteValue::Null, SqliteValue::Blob),
        Value::Uuid(v) => v.map_or(SqliteValue::Null, |id| {
            SqliteValue::Blob(id.as_bytes().to_vec())
        }),
        other => {
            return Err(Error::Internal(format!(
                "no SQLite binding for the value {other:?}"
            )));
        }
    })
}

/// SQLite's BUSY and LOCKED are conflicts worth a retry, as on the write path; a file that
/// cannot be opened or read is an unavailable database; the rest is a failed upstream.
fn failure(error: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::TransactionConflict(Box::new(error))
        }
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::NotADatabase
            | ErrorCode::PermissionDenied,
        ) => unavailable(error),
        _ => Error::Upstream(Box::new(error)),
    }
}

fn unavailable(error: rusqlite::Error) -> Error {
    Error::DatabaseUnavailable(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readers(url: &str) -> Option<SqliteReaders> {
        SqliteReaders::for_url(
            url,
            16,
            Duration::from_secs(1),
            Duration::from_secs(1),
            SqliteSync::Full,
        )
    }

    #[test]
    fn files_get_readers_and_in_memory_databases_do_not() {
        assert!(readers("sqlite://data/invitations.db?mode=rwc").is_some());
        assert!(readers("sqlite:invitations.db").is_some());
        assert!(readers("sqlite::memory:").is_none());
        assert!(readers("sqlite://shared?mode=memory&cache=shared").is_none());
    }

    /// Reader connections have the configured `synchronous`, as the writers do.
    #[test]
    fn readers_have_the_configured_synchronous() {
        for (setting, pragma_value) in [(SqliteSync::Full, 2), (SqliteSync::Normal, 1)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("sync.db");
            Connection::open(&path).expect("create the file");
            let url = format!("sqlite://{}", path.display());
            let readers = SqliteReaders::for_url(
                &url,
                2,
                Duration::from_secs(1),
                Duration::from_secs(1),
                setting,
            )
            .expect("readers for a file");
            let reader = readers.open().expect("a reader");
            let synchronous: i64 = reader
                .pragma_query_value(None, "synchronous", |row| row.get(0))
                .expect("synchronous");
            assert_eq!(synchronous, pragma_value, "{setting:?}");
        }
    }

    #[test]
    fn bind_values_are_stored_as_sqlx_stores_them() {
        let id = Uuid::new_v4();
        assert_eq!(
            parameter(&Value::Uuid(Some(id))).ok(),
            Some(SqliteValue::Blob(id.as_bytes().to_vec()))
        );
        assert_eq!(
            parameter(&Value::BigUnsigned(Some(51))).ok(),
            Some(SqliteValue::Integer(51))
        );
        assert_eq!(
            parameter(&Value::String(None)).ok(),
            Some(SqliteValue::Null)
        );
        assert!(parameter(&Value::BigUnsigned(Some(u64::MAX))).is_err());
        assert!(parameter(&Value::Double(Some(1.5))).is_err());
    }
}
