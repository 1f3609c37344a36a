//! The repository: the domain's port (`domain::InvitationRepository`), and the only place
//! that knows SQL. Every statement is built in [`queries`] from a `Tenant`; this file runs
//! them and answers with domain types. Three accelerators sit beside it, each replacing a
//! library path the benchmark showed too slow for issue 4's targets (`docs/adr/`, one record
//! each): `hot_connections` (PostgreSQL connections kept between requests),
//! `sqlite_reader` (SQLite pages read with rusqlite), `statements` (the two hottest
//! statements rendered once per shape), plus positional row decoding below.
//!
//! Writes that depend on state are single conditional statements whose `rows_affected`
//! (or `RETURNING` rows) decide the outcome, so no read-then-write race exists on either
//! store. Each change commits with its event (`outbox`): in the same statement on
//! PostgreSQL, in the same transaction on SQLite.
mod entity;
mod hot_connections;
mod idempotency;
mod outbox;
pub mod queries;
mod relay;
mod rows;
mod sqlite_reader;
mod statements;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use invitations_migrations::{Migrator, MigratorTrait};
use sea_orm::sea_query::Values;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgRow};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, RuntimeErr, SqlErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use sea_query_sqlx::SqlxValues;
use uuid::Uuid;

use crate::domain::Error;
use crate::domain::{
    CancelChange, CancelOutcome, EmailAddress, EnterpriseId, EventRecord, IdempotencyKey,
    InsertOutcome, Invitation, InvitationEvent, InvitationId, InvitationRepository, LinkTokenHash,
    ListFilter, PriorResponse, RequestId, Timestamp, UserRef, Version,
};
use crate::secret::DatabaseUrl;
use entity::{Entity, Model};
use hot_connections::{HotConnection, HotConnections};
use queries::Tenant;
use rows::{StoredRow, into_domain, model_into_domain};
pub use sqlite_reader::READER_THREAD_NAME as SQLITE_READER_THREAD_NAME;
use sqlite_reader::SqliteReaders;
use statements::RenderedStatements;

/// Rows a SQLite connection may hand over before the reader takes them: a whole page of
/// the largest size, plus the row that tells whether another page follows.
pub const SQLITE_ROW_CHANNEL: usize = 1024;

/// How often (ms) a PostgreSQL backend running one of our statements checks that this
/// process is still there: the longest a statement of a process that exited can still
/// commit, if the lock it waits for is released just then.
const CLIENT_CONNECTION_CHECK_INTERVAL_MS: &str = "250";

/// How often the event horizon looks again at the transactions it waits for.
const HORIZON_RECHECK: Duration = Duration::from_millis(2);

/// The most rows a read makes room for before they arrive.
const MAX_EXPECTED_ROWS: usize = 1024;

/// The PostgreSQL advisory lock that serialises migration runs (see [`Store::migrate`]):
/// the bytes of `"invt-mig"`, 7597139862771034471 (0x696e76742d6d6967). Advisory locks are
/// per database, so it only has to be unique among the users of this one. A waiting or
/// running migration shows in `pg_locks` as `locktype = 'advisory'`, `classid = 1768846964`,
/// `objid = 762145127`, `objsubid = 1`.
pub const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"invt-mig");

/// Which accelerators the store uses (docs/adr/0001 to 0003). All are on by default; turning
/// one off takes SeaORM's plain path for what it replaces, with the same answers: for an
/// operator who suspects one, for the benchmark that measures what each buys, and for the
/// test that holds them equal (`accelerators_answer_as_the_plain_path_does`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accelerators {
    /// PostgreSQL connections kept between requests (`hot_connections`).
    pub kept_connections: bool,
    /// SQLite pages read with rusqlite (`sqlite_reader`).
    pub sqlite_reader: bool,
    /// List's and Cancel's statements rendered once per shape (`statements`).
    pub rendered_statements: bool,
}

impl Default for Accelerators {
    fn default() -> Self {
        Self {
            kept_connections: true,
            sqlite_reader: true,
            rendered_statements: true,
        }
    }
}

impl Accelerators {
    pub const NONE: Self = Self {
        kept_connections: false,
        sqlite_reader: false,
        rendered_statements: false,
    };
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub url: DatabaseUrl,
    pub max_connections: u32,
    /// How long a request waits for a free connection before it is answered UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// How long a SQLite writer waits for the write lock.
    pub sqlite_busy_timeout: Duration,
    /// What a SQLite commit waits for (README, "Durability").
    pub sqlite_synchronous: SqliteSync,
    /// `url` leads to a pooler in transaction mode (see [`Store::connect_with`]).
    pub transaction_pooling: bool,
    /// Where the connection that LISTENs for other processes' events goes, when not `url`.
    pub listen_url: Option<DatabaseUrl>,
}

/// `PRAGMA synchronous` of every SQLite connection, in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SqliteSync {
    /// A commit is on disk before it is answered: it survives a power loss or an OS crash.
    #[default]
    Full,
    /// A commit survives the process crashing, but the last ones may be lost if the machine
    /// does; faster commits (fewer fsyncs).
    Normal,
}

impl SqliteSync {
    /// The pragma's value.
    pub fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }

    /// The same, as sqlx's connect option.
    pub fn sqlx_option(self) -> SqliteSynchronous {
        match self {
            Self::Full => SqliteSynchronous::Full,
            Self::Normal => SqliteSynchronous::Normal,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// On a SQLite file, the connections reads go through (see `sqlite_reader`).
    sqlite_readers: Option<Arc<SqliteReaders>>,
    /// On PostgreSQL, the connections reads and single-statement writes keep between
    /// requests (see `hot_connections`).
    hot_connections: Option<Arc<HotConnections>>,
    /// The hot statements' SQL, rendered once per shape (see `statements`).
    statements: Option<Arc<RenderedStatements>>,
    state: Arc<StoreState>,
    /// On PostgreSQL, how to open a connection of its own, outside the pool, and the
    /// `application_name` every connection of this process carries (see
    /// [`Store::cancel_running_statements`]).
    postgres: Option<Arc<(PgConnectOptions, String)>>,
    /// On PostgreSQL, where the connection that LISTENs for other processes' events goes.
    listen: Listen,
    /// Connections go through a transaction pooler: the session settings are the role's.
    transaction_pooling: bool,
    /// How long a request waits for a connection (and for the first migration run).
    acquire_timeout: Duration,
}

#[derive(Debug, Default)]
struct StoreState {
    /// Migrations have been applied by this process: the schema is there.
    migrated: AtomicBool,
    /// The first migration run of this process has ended, applied or failed. Until then a
    /// call waits for it (see [`Store::usable`]).
    first_migration_ended: AtomicBool,
    /// Woken when a migration run ends.
    migration_ended: tokio::sync::Notify,
    /// The health supervisor found the database unreachable (see `health::supervise`).
    down: AtomicBool,
    /// Woken when this process commits events (see [`Store::events_written`]).
    events_here: tokio::sync::Notify,
    /// Woken when another process says it committed events (PostgreSQL's LISTEN).
    events_elsewhere: Arc<tokio::sync::Notify>,
    /// This process committed events it has not told the others about yet.
    events_unannounced: AtomicBool,
    /// The LISTEN connection's task has been started.
    listening: AtomicBool,
}

/// Sorts a database failure into what the client should be told.
fn classify(error: DbErr) -> Error {
    if is_transaction_conflict(&error) {
        metrics::counter!("invitations_db_errors_total", "class" => "transaction_conflict")
            .increment(1);
        return Error::TransactionConflict(Box::new(error));
    }
    let unavailable = match &error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(cause)) | DbErr::Query(RuntimeErr::SqlxError(cause)) => {
            use sea_orm::sqlx::Error as Sqlx;
            match cause.as_ref() {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::Tls(_)
                | Sqlx::WorkerCrashed => true,
                // PostgreSQL: class 08 (connection exception), 57P0x (server shutting down),
                // 53xxx (insufficient resources).
                Sqlx::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08") || code.starts_with("57P0") || code.starts_with("53")
                }),
                _ => false,
            }
        }
        _ => false,
    };
    let class = if unavailable { "unavailable" } else { "other" };
    metrics::counter!("invitations_db_errors_total", "class" => class).increment(1);
    if unavailable {
        Error::DatabaseUnavailable(Box::new(error))
    } else {
        Error::Upstream(Box::new(error))
    }
}

/// Whether retrying a database failure met at start-up (or by the migration job) can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupFailure {
    /// The server is not reachable yet, is starting up, or is out of connections.
    Heals,
    /// The server refused the credentials: retried (a password may be being rotated), but
    /// worth an operator's attention.
    Credentials,
    /// Retrying cannot help; the reason, one line.
    Fatal(String),
}

/// Sorts a failure to reach or migrate the database (see [`StartupFailure`]). What is not
/// known to be hopeless is retried, as it was before the sorting existed.
pub fn startup_failure(error: &DbErr) -> StartupFailure {
    use sea_orm::sqlx::Error as Sqlx;
    let cause = match error {
        DbErr::Conn(RuntimeErr::SqlxError(cause))
        | DbErr::Exec(RuntimeErr::SqlxError(cause))
        | DbErr::Query(RuntimeErr::SqlxError(cause)) => cause.as_ref(),
        _ => return StartupFailure::Heals,
    };
    match cause {
        Sqlx::Configuration(reason) => {
            StartupFailure::Fatal(format!("the connection settings are wrong: {reason}"))
        }
        Sqlx::Tls(reason) => StartupFailure::Fatal(format!("TLS to the database failed: {reason}")),
        // A handshake that failed on the certificate (unknown CA, wrong host name, expired)
        // reaches us as an I/O error around rustls' own.
        Sqlx::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            StartupFailure::Fatal(format!("TLS to the database failed: {io}"))
        }
        Sqlx::Database(db) => match db.code().as_deref() {
            // invalid_catalog_name
            Some("3D000") => {
                StartupFailure::Fatal(format!("the database does not exist: {}", db.message()))
            }
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => StartupFailure::Credentials,
            // protocol_violation from PgBouncer, which refuses a session setting in the
            // startup packet (`options`) that it cannot carry between server connections.
            Some("08P01") if db.message().starts_with("unsupported startup parameter") => {
                StartupFailure::Fatal(format!(
                    "a connection pooler refused the session settings ({}): behind PgBouncer \
                     in transaction mode set INVITATIONS_DB_TRANSACTION_POOLING=true",
                    db.message()
                ))
            }
            // SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_NOTADB: the file or its folder
            Some("14" | "8" | "26") => {
                StartupFailure::Fatal(format!("the SQLite file cannot be used: {}", db.message()))
            }
            _ => StartupFailure::Heals,
        },
        _ => StartupFailure::Heals,
    }
}

/// The database gave up a write because of another one: PostgreSQL's 40001 (serialization
/// failure) and 40P01 (deadlock), and SQLite's BUSY or LOCKED (primary codes 5 and 6, with
/// their extended codes) once the busy timeout has run out. All are worth a retry.
fn is_transaction_conflict(error: &DbErr) -> bool {
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(cause)) | DbErr::Query(RuntimeErr::SqlxError(cause)) => {
            matches!(cause.as_ref(), sea_orm::sqlx::Error::Database(db)
            if db.code().is_some_and(|code| {
                code == "40001"
                    || code == "40P01"
                    || is_sqlite_busy(Some(&code))
            }))
        }
        _ => false,
    }
}

fn sqlx_failure(error: sea_orm::sqlx::Error) -> Error {
    classify(DbErr::Query(RuntimeErr::SqlxError(Arc::new(error))))
}

/// Where [`Store::listen_for_events`] listens.
#[derive(Clone)]
enum Listen {
    /// On a connection like the pool's.
    Pool,
    /// On a connection of its own URL (`INVITATIONS_DB_LISTEN_URL`).
    Url(Box<PgConnectOptions>),
    /// Nowhere: behind a transaction pooler a LISTEN would hear nothing (the server connection
    /// goes back to the pool after the statement), so other processes' events are found
    /// by the outbox reader's polling alone.
    Off,
}

/// The session settings of every PostgreSQL connection (`Store::connect_with` says why).
/// Behind a transaction pooler there is no session to set them on: the connection is
/// opened without them, and the role carries them (README, "Scaling out").
fn postgres_options(options: PgConnectOptions, transaction_pooling: bool) -> PgConnectOptions {
    if transaction_pooling {
        return options;
    }
    options.options([
        ("plan_cache_mode", "force_generic_plan"),
        (
            "client_connection_check_interval",
            CLIENT_CONNECTION_CHECK_INTERVAL_MS,
        ),
    ])
}

/// Puts a SQLite file in WAL mode (readers never block the writer), on every new connection.
///
/// Not one of sqlx's connect pragmas, because SQLite answers a switch of a new file to WAL
/// with SQLITE_BUSY at once, without waiting for the busy timeout, when another connection
/// is switching or writing the same file at that moment: three `migrate`s and a `serve`
/// started together on an empty file (`tests/api/migrations.rs`). As a connect pragma that
/// failed the connection, and `serve` exited. Here the switch is retried until the busy
/// timeout runs out. Once the file is in WAL mode (the mode is kept in the file) the pragma
/// only reads it. An in-memory database answers `memory` and stays so.
async fn use_wal(
    connection: &mut sea_orm::sqlx::SqliteConnection,
    busy_timeout: Duration,
) -> Result<(), sea_orm::sqlx::Error> {
    const PAUSE: Duration = Duration::from_millis(5);
    let give_up = tokio::time::Instant::now() + busy_timeout;
    loop {
        match sea_orm::sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut *connection)
            .await
        {
            Err(sea_orm::sqlx::Error::Database(error))
                if is_sqlite_busy(error.code().as_deref())
                    && tokio::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(PAUSE).await;
            }
            outcome => return outcome.map(drop),
        }
    }
}

/// SQLite's BUSY or LOCKED: primary codes 5 and 6, with their extended codes.
fn is_sqlite_busy(code: Option<&str>) -> bool {
    code.and_then(|code| code.parse::<u32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Runs a statement that SeaORM built, on SeaORM's pool, and maps the rows by position.
/// SeaORM's own model mapping looks every column up by name and formats an error message
/// for each NULL it meets (a row has up to eight), copying as it goes
/// (`docs/adr/0004-positional-row-decoding.md`).
async fn fetch_invitations(
    db: &DatabaseConnection,
    statement: Statement,
    expected_rows: usize,
) -> Result<Vec<Invitation>, Error> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let rows = sqlx_query(statement).fetch(db.get_postgres_connection_pool());
            decode_invitations(rows, expected_rows, postgres_invitation).await
        }
        DbBackend::Sqlite => {
            let rows = sqlx_query(statement).fetch(db.get_sqlite_connection_pool());
            decode_invitations(rows, expected_rows, sqlite_invitation).await
        }
        other => Err(Error::Internal(format!("no store for {other:?}"))),
    }
}

/// A read on PostgreSQL, on a connection an earlier request kept (see `hot_connections`).
async fn read_postgres(
    hot: &HotConnections,
    pool: &sea_orm::sqlx::PgPool,
    statement: Statement,
    expected_rows: usize,
) -> Result<Vec<Invitation>, Error> {
    let (connection, kept) = hot.checkout(pool).await?;
    if !kept {
        return run_and_keep(hot, connection, statement, expected_rows).await;
    }
    match run_and_keep(hot, connection, statement.clone(), expected_rows).await {
        // The server may have closed a kept connection while it sat idle (a restart, an
        // idle timeout). A read is safe to repeat: once, on a connection from the pool.
        // What closed it most likely closed the others too, kept or pooled: drop the kept
        // ones, and read on the first pooled connection that answers a ping.
        Err(Error::DatabaseUnavailable(cause)) => {
            tracing::debug!(%cause, "a kept connection failed; reading again");
            hot.release_all();
            let connection = HotConnection::acquire_live(pool).await?;
            run_and_keep(hot, connection, statement, expected_rows).await
        }
        other => other,
    }
}

/// Runs one statement that returns [`READ_COLUMNS`] and keeps the connection if it ran to
/// its end.
async fn run_and_keep(
    hot: &HotConnections,
    mut connection: HotConnection,
    statement: Statement,
    expected_rows: usize,
) -> Result<Vec<Invitation>, Error> {
    // On failure the connection is dropped, back into the pool, whose ping resets it (and
    // reads what is left of an answer a corrupt row cut short).
    let rows = sqlx_query(statement).fetch(&mut *connection.connection);
    let invitations = decode_invitations(rows, expected_rows, postgres_invitation).await?;
    hot.keep(connection);
    Ok(invitations)
}

/// A statement SeaORM built, as a sqlx query with its values bound.
fn sqlx_query<DB: sea_orm::sqlx::Database>(
    statement: Statement,
) -> sea_orm::sqlx::query::Query<'static, DB, SqlxValues>
where
    SqlxValues: sea_orm::sqlx::IntoArguments<DB>,
{
    let values = SqlxValues(statement.values.unwrap_or(Values(Vec::new())));
    sea_orm::sqlx::query_with(sea_orm::sqlx::AssertSqlSafe(statement.sql), values)
}

fn postgres_invitation(row: &PgRow) -> Result<Invitation, Error> {
    into_domain(StoredRow::of_postgres(row).map_err(sqlx_failure)?)
}

fn sqlite_invitation(row: &sea_orm::sqlx::sqlite::SqliteRow) -> Result<Invitation, Error> {
    into_domain(StoredRow::of_sqlx(row).map_err(sqlx_failure)?)
}

/// Maps each row as it arrives. PostgreSQL sends a page of 50 in about three reads, and the
/// rows of the first are mapped while the rest are on their way; each row's buffer is freed
/// as soon as it is read, and no vector of rows grows as they come.
async fn decode_invitations<R>(
    mut rows: impl tokio_stream::Stream<Item = Result<R, sea_orm::sqlx::Error>> + Unpin,
    expected_rows: usize,
    invitation: impl Fn(&R) -> Result<Invitation, Error>,
) -> Result<Vec<Invitation>, Error> {
    use tokio_stream::StreamExt;
    // Sized up front: the vector of invitations (about 300 bytes each) would otherwise grow
    // by copying five times a page.
    let mut invitations = Vec::with_capacity(expected_rows);
    while let Some(row) = rows.next().await {
        invitations.push(invitation(&row.map_err(sqlx_failure)?)?);
    }
    Ok(invitations)
}

impl Store {
    /// Connects (creating a SQLite file if needed). SQLite runs in WAL mode so readers never
    /// block the writer, with a busy timeout so concurrent writers queue instead of failing.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, DbErr> {
        Self::connect_with(settings, Accelerators::default()).await
    }

    /// [`Store::connect`], with only the accelerators given.
    pub async fn connect_with(
        settings: &StoreSettings,
        accelerators: Accelerators,
    ) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(settings.url.expose().to_owned());
        // Unique to this process, so that its own statements can be told apart from other
        // replicas' in pg_stat_activity: the name the URL gives (or `invitations`), then a
        // random suffix, within PostgreSQL's 63 bytes.
        // Parsed once; `None` for a SQLite URL.
        let postgres_url = PgConnectOptions::from_str(settings.url.expose()).ok();
        let given = postgres_url
            .as_ref()
            .and_then(|options| options.get_application_name().map(str::to_owned));
        let base: String = given
            .as_deref()
            .unwrap_or("invitations")
            .chars()
            .take(30)
            .collect();
        let application_name = format!("{base} {}", Uuid::new_v4().simple());
        let named = application_name.clone();
        let busy = settings.sqlite_busy_timeout;
        let synchronous = settings.sqlite_synchronous;
        let transaction_pooling = settings.transaction_pooling;
        options
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_timeout(settings.acquire_timeout)
            .sqlx_logging(false)
            // A ping on every checkout doubles the round trips of every query; ping only a
            // connection that sat idle long enough to have been dropped by a proxy.
            .test_before_acquire_if_idle_for(Duration::from_secs(30))
            // LIMIT is a bind parameter, so PostgreSQL would re-plan a page on every
            // execution (planning costs more than the index range scan). Every statement
            // here is an equality on indexed columns plus a keyset range on an index that
            // starts with enterprise_id: the generic plan is the right one (the query plans
            // are in BENCHMARKS.md).
            //
            // A backend whose client is gone stops waiting (for a lock, say) and rolls back
            // within `client_connection_check_interval`: a call abandoned at shutdown is
            // not committed after the process exits (`shutdown.rs`). PostgreSQL 14 or later.
            .map_sqlx_postgres_opts(move |o: PgConnectOptions| {
                postgres_options(o, transaction_pooling).application_name(&named)
            })
            // No connection at start: the process comes up (liveness, health) even while
            // the database is down, and readiness says so.
            .connect_lazy(true)
            .map_sqlx_sqlite_opts(move |o: SqliteConnectOptions| {
                o.create_if_missing(true)
                    // sqlx runs each SQLite connection on a thread that hands rows over a
                    // bounded channel (50 by default). A page is up to 1 001 rows; with room
                    // for all of them the thread finishes the statement without waiting
                    // for the reader row by row.
                    .row_buffer_size(SQLITE_ROW_CHANNEL)
                    .synchronous(synchronous.sqlx_option())
                    .busy_timeout(busy)
                    .foreign_keys(true)
            })
            .map_sqlx_sqlite_pool_opts(move |pool| {
                pool.after_connect(move |connection, _| Box::pin(use_wal(connection, busy)))
            });
        let db = Database::connect(options).await?;
        let sqlite_readers = if accelerators.sqlite_reader {
            sqlite_reader::readers_for(
                &db,
                settings.url.expose(),
                settings.max_connections,
                settings.acquire_timeout,
                busy,
                synchronous,
            )
        } else {
            None
        };
        let hot_connections = (accelerators.kept_connections
            && db.get_database_backend() == DbBackend::Postgres)
            .then(|| Arc::new(HotConnections::new(settings.max_connections)));
        let statements = accelerators
            .rendered_statements
            .then(|| Arc::new(RenderedStatements::new(db.get_database_backend())));
        let postgres = postgres_url
            .filter(|_| db.get_database_backend() == DbBackend::Postgres)
            .map(|options| {
                Arc::new((
                    postgres_options(options, transaction_pooling)
                        .application_name(&application_name),
                    application_name,
                ))
            });
        let listen = match &settings.listen_url {
            Some(url) => Listen::Url(Box::new(
                PgConnectOptions::from_str(url.expose())
                    .map_err(|error| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(error))))?
                    .application_name(&format!("{base} listener")),
            )),
            None if settings.transaction_pooling => Listen::Off,
            None => Listen::Pool,
        };
        Ok(Self {
            db,
            sqlite_readers,
            hot_connections,
            statements,
            state: Arc::default(),
            postgres,
            listen,
            transaction_pooling: settings.transaction_pooling,
            acquire_timeout: settings.acquire_timeout,
        })
    }

    /// Sets the connection pool's gauges (at each scrape of `/metrics`): its bound, and its
    /// open connections idle or in use. On PostgreSQL a connection kept between requests
    /// (`hot_connections`) counts as idle, like one in the pool; on a SQLite file the reader
    /// connections are not counted (they are opened once, one per permit).
    pub fn record_pool_figures(&self) {
        let (max, open, idle) = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                let kept = self
                    .hot_connections
                    .as_ref()
                    .map_or(0, |hot| hot.idle_count());
                (
                    pool.options().get_max_connections(),
                    pool.size(),
                    pool.num_idle() + kept,
                )
            }
            DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (
                    pool.options().get_max_connections(),
                    pool.size(),
                    pool.num_idle(),
                )
            }
            _ => return,
        };
        let idle = idle.min(open as usize);
        metrics::gauge!("invitations_db_pool_max_connections").set(f64::from(max));
        metrics::gauge!("invitations_db_pool_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("invitations_db_pool_connections", "state" => "in_use")
            .set((open as usize - idle) as f64);
    }

    /// The database, as the OpenTelemetry conventions name it (`db.system.name`).
    fn system_name(&self) -> &'static str {
        match self.backend() {
            DbBackend::Postgres => "postgresql",
            DbBackend::Sqlite => "sqlite",
            _ => "other_sql",
        }
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Applies every pending migration; the store serves requests only after this.
    ///
    /// Any number of processes may run this at once on one database: the `migrate` Job and
    /// every `serve` replica of a first `kubectl apply`. Unguarded they race. On PostgreSQL
    /// two `CREATE TABLE`s of one name, neither seeing the other's uncommitted table, collide
    /// on the catalog (`duplicate key value violates unique constraint
    /// "pg_type_typname_nsp_index"`); on SQLite, where sea-orm-migration runs migrations
    /// outside a transaction, one process finds a table or column another has just added.
    /// So the whole run is one transaction that first takes the migration lock: on PostgreSQL
    /// the transaction-level advisory lock [`MIGRATION_LOCK_KEY`], on SQLite the write lock
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout). The others wait, then find nothing
    /// pending. The lock ends with the transaction (commit, rollback on an error or a dropped
    /// future, or the connection's death), so no pooled connection keeps it; and a run
    /// applies every pending migration or none (on PostgreSQL each is a savepoint in it).
    ///
    /// A future migration that cannot run in a transaction (`CREATE INDEX CONCURRENTLY`)
    /// would need a session-level `pg_advisory_lock` on a dedicated connection instead.
    async fn migrate_once(&self) -> Result<(), DbErr> {
        let run = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?;
        if run.get_database_backend() == DbBackend::Postgres {
            run.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [MIGRATION_LOCK_KEY.into()],
            ))
            .await?;
        }
        Migrator::up(&run, None).await?;
        run.commit().await?;
        self.state.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// Behind a transaction pooler the session settings cannot be sent at connect, so the
    /// role must carry them: the statements that would still give them to it (none when
    /// it has them, or without a pooler).
    pub async fn session_settings_missing(&self) -> Result<Vec<String>, DbErr> {
        if !self.transaction_pooling || self.backend() != DbBackend::Postgres {
            return Ok(Vec::new());
        }
        let row = self.db.query_one_raw(queries::session_settings()).await?;
        let (plan_cache_mode, check_interval) = match row {
            Some(row) => (
                row.try_get_by_index::<String>(0)?,
                row.try_get_by_index::<String>(1)?,
            ),
            None => return Ok(Vec::new()),
        };
        let mut missing = Vec::new();
        if plan_cache_mode != "force_generic_plan" {
            missing.push("ALTER ROLE CURRENT_USER SET plan_cache_mode = force_generic_plan".into());
        }
        if check_interval == "0" {
            missing.push(format!(
                "ALTER ROLE CURRENT_USER SET client_connection_check_interval = \
                 '{CLIENT_CONNECTION_CHECK_INTERVAL_MS}ms'"
            ));
        }
        Ok(missing)
    }

    /// Applies every pending migration, and tells the calls waiting for the first run.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        let outcome = self.migrate_once().await;
        self.state
            .first_migration_ended
            .store(true, Ordering::Release);
        self.state.migration_ended.notify_waiters();
        outcome
    }

    /// SQLite's planner has no statistics until something gathers them, and without them a
    /// List filtered by e-mail and scope walks the wrong index (a scan of the enterprise
    /// instead of a lookup). `PRAGMA optimize` analyzes only the tables that
    /// need it, so it is cheap to repeat. PostgreSQL's autovacuum does this by itself.
    /// It may wait for the write lock, so nothing that readiness depends on awaits it.
    pub async fn optimize(&self) -> Result<(), DbErr> {
        if self.db.get_database_backend() == DbBackend::Sqlite {
            self.db
                .execute_unprepared("PRAGMA optimize=0x10002")
                .await?;
        }
        Ok(())
    }

    /// Marks the database unreachable (or reachable again); while it is, every call fails
    /// fast with DATABASE_UNAVAILABLE.
    pub fn declare_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Release);
        if down && let Some(hot) = &self.hot_connections {
            hot.release_all();
        }
    }

    pub fn declared_down(&self) -> bool {
        self.state.down.load(Ordering::Acquire)
    }

    /// The connection to use for a request, or why there is none worth waiting for.
    ///
    /// A replica that has just started checks the schema before anything else; a call that
    /// reaches it meanwhile (a client that connects without looking at readiness) waits for
    /// that first run, at most the acquire timeout, instead of being refused. Once the first
    /// run has failed (the database is down), calls fail fast until a run succeeds.
    async fn usable(&self) -> Result<&DatabaseConnection, Error> {
        if !self.state.migrated.load(Ordering::Acquire) {
            self.first_migration().await;
        }
        if !self.state.migrated.load(Ordering::Acquire) {
            return Err(Error::DatabaseUnavailable(
                "the schema is not migrated yet".into(),
            ));
        }
        if self.declared_down() {
            return Err(Error::DatabaseUnavailable(
                "the database is unreachable (health check)".into(),
            ));
        }
        Ok(&self.db)
    }

    /// Until the first migration run ends, or the acquire timeout.
    async fn first_migration(&self) {
        let waited = async {
            loop {
                let ended = self.state.migration_ended.notified();
                if self.state.first_migration_ended.load(Ordering::Acquire) {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(self.acquire_timeout, waited).await;
    }

    /// Closes every pooled connection (for an orderly shutdown).
    pub async fn close(&self) {
        if let Some(readers) = &self.sqlite_readers {
            readers.close();
        }
        if let Some(hot) = &self.hot_connections {
            hot.close();
        }
        if let Err(error) = self.db.close_by_ref().await {
            tracing::warn!(%error, "closing the database pool failed");
        }
    }

    /// Cancels every statement this process still has running on PostgreSQL (a cancel
    /// request for each of its backends, `pg_cancel_backend`), on a connection of its own:
    /// the pool may be held whole by the statements to cancel. For a shutdown's abandoned
    /// calls: a statement waiting for a lock ends now, rolled back, instead of committing
    /// whenever the lock is released. Returns how many were cancelled; 0 on SQLite, whose
    /// writes end with the process.
    pub async fn cancel_running_statements(&self) -> Result<u64, sea_orm::sqlx::Error> {
        use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
        let Some(postgres) = &self.postgres else {
            return Ok(0);
        };
        let (options, application_name) = postgres.as_ref();
        let mut connection = options.connect().await?;
        let cancelled: i64 = sea_orm::sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .bind(application_name)
        .fetch_one(&mut connection)
        .await?;
        let _ = connection.close().await;
        Ok(u64::try_from(cancelled).unwrap_or(0))
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(classify)
    }

    /// A read of [`READ_COLUMNS`], expecting about `expected_rows` rows.
    async fn read_statement(
        &self,
        statement: Statement,
        expected_rows: usize,
    ) -> Result<Vec<Invitation>, Error> {
        let db = self.usable().await?;
        match (&self.sqlite_readers, &self.hot_connections) {
            (Some(readers), _) => readers.fetch(statement).await,
            (None, Some(hot)) => {
                let pool = db.get_postgres_connection_pool();
                read_postgres(hot, pool, statement, expected_rows).await
            }
            (None, None) => fetch_invitations(db, statement, expected_rows).await,
        }
    }

    /// A conditional write and its `event`, committed together; the row as the write left it,
    /// or `None` (and no event) when the write matched nothing. `postgres` is the write as
    /// one statement with its event (`queries::with_event`), when it is already built.
    async fn change_with_event(
        &self,
        update: sea_orm::UpdateMany<Entity>,
        event: &EventRecord,
        postgres: Option<Statement>,
    ) -> Result<Option<Invitation>, Error> {
        if self.backend() == DbBackend::Postgres {
            let statement = postgres.unwrap_or_else(|| queries::with_event(update, event));
            let changed = self.write_returning(statement).await?;
            if changed.is_some() {
                self.events_committed();
            }
            return Ok(changed);
        }
        let txn = self.usable().await?.begin().await.map_err(classify)?;
        let changed = self.change_in(&txn, update, event).await?;
        match changed {
            Some(_) => {
                txn.commit().await.map_err(classify)?;
                self.events_committed();
            }
            None => txn.rollback().await.map_err(classify)?,
        }
        Ok(changed)
    }

    /// [`Store::change_with_event`] inside `txn`, which the caller commits.
    async fn change_in(
        &self,
        txn: &DatabaseTransaction,
        update: sea_orm::UpdateMany<Entity>,
        event: &EventRecord,
    ) -> Result<Option<Invitation>, Error> {
        let backend = self.backend();
        let statement = match backend {
            DbBackend::Postgres => queries::with_event(update, event),
            _ => queries::returning(update, backend),
        };
        let Some(row) = txn.query_one_raw(statement).await.map_err(classify)? else {
            return Ok(None);
        };
        let invitation = model_into_domain(&rows::model_of_result(&row).map_err(classify)?)?;
        if backend != DbBackend::Postgres {
            queries::record_event(event, &invitation)
                .exec_without_returning(txn)
                .await
                .map_err(classify)?;
        }
        Ok(Some(invitation))
    }

    /// Stores up to `batch` pending invitations found past their expiry at `now` as expired,
    /// each with its `expired` event, in one transaction; returns how many, or `None` when
    /// another replica is sweeping.
    ///
    /// One sweeper at a time: on PostgreSQL the transaction first takes an advisory lock
    /// (`queries::try_become_sweeper`), and a replica that finds it taken skips this round;
    /// on SQLite the transaction takes the write lock first (`BEGIN IMMEDIATE`). Each row is
    /// one conditional write, like a cancel or an accept, so a cancel racing the sweeper has
    /// one outcome: the second write to reach the row matches nothing.
    pub async fn expire_lapsed(&self, now: Timestamp, batch: u64) -> Result<Option<u64>, Error> {
        let txn = self
            .usable()
            .await?
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
            .map_err(classify)?;
        if self.backend() == DbBackend::Postgres {
            let row = txn
                .query_one_raw(queries::try_become_sweeper())
                .await
                .map_err(classify)?;
            let sweeper = row
                .map(|row| row.try_get_by_index::<bool>(0))
                .transpose()
                .map_err(classify)?;
            if sweeper != Some(true) {
                txn.rollback().await.map_err(classify)?;
                return Ok(None);
            }
        }
        let lapsed: Vec<(Uuid, Uuid)> = queries::lapsed_pending(now, batch)
            .into_tuple()
            .all(&txn)
            .await
            .map_err(classify)?;
        let mut expired = 0;
        for (id, enterprise) in lapsed {
            let update = Tenant::of(EnterpriseId::from_uuid(enterprise))
                .expire(InvitationId::from_uuid(id), now);
            if self
                .change_in(&txn, update, &EventRecord::expiry(now))
                .await?
                .is_some()
            {
                expired += 1;
            }
        }
        txn.commit().await.map_err(classify)?;
        if expired > 0 {
            self.events_committed();
        }
        Ok(Some(expired))
    }

    /// A statement returning [`READ_COLUMNS`] of the row it changed, if any.
    async fn write_returning(&self, statement: Statement) -> Result<Option<Invitation>, Error> {
        let db = self.usable().await?;
        let rows = match &self.hot_connections {
            // Never repeated: the first attempt may have been applied.
            Some(hot) => {
                let (connection, _) = hot.checkout(db.get_postgres_connection_pool()).await?;
                run_and_keep(hot, connection, statement, 1).await?
            }
            None => fetch_invitations(db, statement, 1).await?,
        };
        Ok(rows.into_iter().next())
    }

    /// The events a read of the outbox selects, decoded.
    async fn read_events(
        &self,
        select: sea_orm::Select<outbox::Entity>,
    ) -> Result<Vec<InvitationEvent>, Error> {
        select
            .all(self.usable().await?)
            .await
            .map_err(classify)?
            .iter()
            .map(rows::into_domain_event)
            .collect()
    }

    /// Tells [`Store::events_written`]'s waiters that this process committed events.
    fn events_committed(&self) {
        self.state.events_unannounced.store(true, Ordering::Release);
        self.state.events_here.notify_one();
    }

    /// PostgreSQL: a connection of its own that LISTENs for other processes' announcements
    /// (`queries::announce_events`) and wakes [`Store::events_written`]; it reconnects by
    /// itself when the connection drops, and wakes the waiter then too, since announcements
    /// may have been missed meanwhile.
    fn listen_for_events(&self) {
        if self.backend() != DbBackend::Postgres
            || self.state.listening.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let pool = match &self.listen {
            Listen::Pool => self.db.get_postgres_connection_pool().clone(),
            Listen::Url(options) => sea_orm::sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with((**options).clone()),
            Listen::Off => {
                tracing::info!(
                    "behind a transaction pooler without INVITATIONS_DB_LISTEN_URL: other \
                     replicas' events are found at the watch poll interval"
                );
                return;
            }
        };
        let elsewhere = self.state.events_elsewhere.clone();
        tokio::spawn(async move {
            use sea_orm::sqlx::postgres::PgListener;
            loop {
                let listening = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(queries::EVENTS_CHANNEL).await?;
                    // What was announced before the LISTEN took hold was not heard.
                    elsewhere.notify_one();
                    loop {
                        // `None`: the connection dropped and was made again.
                        let _ = listener.try_recv().await?;
                        elsewhere.notify_one();
                    }
                };
                let stopped: Result<(), sea_orm::sqlx::Error> = listening.await;
                if let Err(error) = stopped {
                    tracing::debug!(%error, "event announcements not heard; listening again");
                }
                elsewhere.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Deletes events older than `retention`, in batches of `batch` (each its own short
    /// statement, so writers are never held up for long); returns how many.
    pub async fn purge_lapsed_events(
        &self,
        now: Timestamp,
        retention: Duration,
        batch: u64,
    ) -> Result<u64, Error> {
        let cutoff = now.saturating_sub(retention);
        let db = self.usable().await?;
        let mut purged = 0;
        loop {
            let deleted = queries::purge_lapsed_events(cutoff, batch)
                .exec(db)
                .await
                .map_err(classify)?
                .rows_affected;
            purged += deleted;
            if deleted == 0 {
                return Ok(purged);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Deletes responses older than the retention period; returns how many.
    pub async fn purge_expired_responses(&self, now: Timestamp) -> Result<u64, Error> {
        let deleted = queries::purge_lapsed_responses(now)
            .exec(self.usable().await?)
            .await
            .map_err(classify)?;
        Ok(deleted.rows_affected)
    }

    /// Writes a whole invitation as given, whatever its status. For seeding demo data and
    /// test fixtures (accepted or lapsed invitations have no RPC that makes them yet).
    pub async fn insert_raw(&self, invitation: &Invitation) -> Result<(), Error> {
        Entity::insert(entity::active_model(invitation))
            .exec_without_returning(&self.db)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// The domain's port (`domain::InvitationRepository`), on SeaORM. Every statement comes
/// from [`queries`].
impl InvitationRepository for Store {
    #[tracing::instrument(level = "debug", name = "SELECT invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "SELECT",
        db.collection.name = "invitations",
    ))]
    async fn list(&self, filter: &ListFilter<'_>) -> Result<Vec<Invitation>, Error> {
        let backend = self.backend();
        let page = || Tenant::of(filter.enterprise).page(filter, backend);
        let statement = match &self.statements {
            Some(rendered) => rendered.list(filter, page),
            None => page(),
        };
        // The limit is a validated page size plus one.
        let expected_rows = usize::try_from(filter.limit)
            .unwrap_or(usize::MAX)
            .min(MAX_EXPECTED_ROWS);
        self.read_statement(statement, expected_rows).await
    }

    #[tracing::instrument(level = "debug", name = "SELECT invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "SELECT",
        db.collection.name = "invitations",
    ))]
    async fn get(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
    ) -> Result<Option<Invitation>, Error> {
        let statement = Tenant::of(enterprise).get(id, self.backend());
        Ok(self.read_statement(statement, 1).await?.into_iter().next())
    }

    /// A pending row past its `expires_at` no longer counts: in the same transaction it is
    /// first stored as expired, then the unique index on pending rows decides between
    /// concurrent creators. On PostgreSQL the create is first tried as one statement with its
    /// event (`Tenant::insert_pending_with_event`), which is the whole create whenever no
    /// pending row holds the address; the transaction runs only when one does.
    #[tracing::instrument(level = "debug", name = "INSERT invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "INSERT",
        db.collection.name = "invitations",
    ))]
    async fn insert_pending(
        &self,
        invitation: &Invitation,
        event: &EventRecord,
    ) -> Result<InsertOutcome, Error> {
        let now = event.occurred_at;
        let tenant = Tenant::of(invitation.enterprise);
        if self.backend() == DbBackend::Postgres {
            let statement = tenant.insert_pending_with_event(invitation, event);
            if self.write_returning(statement).await?.is_some() {
                self.events_committed();
                return Ok(InsertOutcome::Created);
            }
        }
        let db = self.usable().await?;
        let txn = db.begin().await.map_err(classify)?;
        let lapsed = tenant
            .expire_lapsed(&invitation.email, now)
            .exec_with_returning(&txn)
            .await
            .map_err(classify)?;
        let inserted = tenant
            .insert_pending(invitation)
            .exec_without_returning(&txn)
            .await;
        match inserted {
            Ok(1) => {
                // The expiries are recorded only with the create: when the create loses to
                // another pending invitation, the transaction rolls back whole.
                for row in &lapsed {
                    queries::record_event(&EventRecord::expiry(now), &model_into_domain(row)?)
                        .exec_without_returning(&txn)
                        .await
                        .map_err(classify)?;
                }
                queries::record_event(event, invitation)
                    .exec_without_returning(&txn)
                    .await
                    .map_err(classify)?;
                txn.commit().await.map_err(classify)?;
                self.events_committed();
                Ok(InsertOutcome::Created)
            }
            Ok(_) => {
                txn.rollback().await.map_err(classify)?;
                let existing = tenant
                    .pending_with_address(&invitation.email)
                    .one(db)
                    .await
                    .map_err(classify)?;
                match existing {
                    Some(row) => Ok(InsertOutcome::DuplicatePending(InvitationId::from_uuid(
                        row.id,
                    ))),
                    // The other pending row was cancelled or accepted meanwhile: the conflict
                    // was real when it happened, so it is still reported as one.
                    None => Err(Error::InvitationAlreadyExists {
                        existing: invitation.id,
                    }),
                }
            }
            Err(error) => Err(match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => {
                    Error::Internal("insert conflicted although it ignores conflicts".into())
                }
                _ => classify(error),
            }),
        }
    }

    /// With an idempotency key, the response is stored in the cancel's transaction, after
    /// the write (so a SQLite transaction takes the write lock at once).
    #[tracing::instrument(level = "debug", name = "UPDATE invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "UPDATE",
        db.collection.name = "invitations",
    ))]
    async fn cancel_pending(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
        expected: Version,
        change: &CancelChange,
        key: Option<&IdempotencyKey>,
        event: &EventRecord,
    ) -> Result<CancelOutcome, Error> {
        let now = event.occurred_at;
        let tenant = Tenant::of(enterprise);
        let Some(key) = key else {
            let postgres = (self.backend() == DbBackend::Postgres).then(|| {
                let cancel = || tenant.cancel(id, expected, change, now, event);
                match &self.statements {
                    Some(rendered) => rendered.cancel(
                        statements::cancel_values(enterprise, id, expected, change, now, event),
                        cancel,
                    ),
                    None => cancel(),
                }
            });
            let update = tenant.cancel_update(id, expected, change, now);
            return Ok(
                match self.change_with_event(update, event, postgres).await? {
                    Some(invitation) => CancelOutcome::Cancelled(Box::new(invitation)),
                    None => CancelOutcome::NoMatch,
                },
            );
        };
        let db = self.usable().await?;
        let txn = db.begin().await.map_err(classify)?;
        let Some(row) = tenant
            .cancel_update(id, expected, change, now)
            .exec_with_returning(&txn)
            .await
            .map_err(classify)?
            .into_iter()
            .next()
        else {
            txn.rollback().await.map_err(classify)?;
            return Ok(CancelOutcome::NoMatch);
        };
        let cancelled = model_into_domain(&row)?;
        queries::record_event(event, &cancelled)
            .exec_without_returning(&txn)
            .await
            .map_err(classify)?;
        let response = serde_json::to_string(&row)
            .map_err(|e| Error::Internal(format!("cannot serialise a response for replay: {e}")))?;
        tenant
            .forget_lapsed_response(key.request_id, now)
            .exec(&txn)
            .await
            .map_err(classify)?;
        let stored = tenant
            .store_response(key, response, now)
            .exec_without_returning(&txn)
            .await
            .map_err(classify)?;
        if stored != 1 {
            txn.rollback().await.map_err(classify)?;
            return Ok(CancelOutcome::RequestIdTaken);
        }
        txn.commit().await.map_err(classify)?;
        self.events_committed();
        Ok(CancelOutcome::Cancelled(Box::new(cancelled)))
    }

    #[tracing::instrument(level = "debug", name = "SELECT idempotency_keys", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "SELECT",
        db.collection.name = "idempotency_keys",
    ))]
    async fn prior_response(
        &self,
        enterprise: EnterpriseId,
        request_id: RequestId,
        now: Timestamp,
    ) -> Result<Option<PriorResponse>, Error> {
        let Some(found) = Tenant::of(enterprise)
            .prior_response(request_id, now)
            .one(self.usable().await?)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let row: Model = serde_json::from_str(&found.response).map_err(|e| {
            Error::Internal(format!(
                "stored response of {} is unreadable: {e}",
                request_id.as_uuid()
            ))
        })?;
        Ok(Some(PriorResponse {
            operation: found.operation,
            fingerprint: found.request_fingerprint,
            invitation: model_into_domain(&row)?,
        }))
    }

    #[tracing::instrument(level = "debug", name = "UPDATE invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "UPDATE",
        db.collection.name = "invitations",
    ))]
    async fn issue_link(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
        expected: Option<Version>,
        link: LinkTokenHash,
        expires_at: Option<Timestamp>,
        event: &EventRecord,
    ) -> Result<Option<Invitation>, Error> {
        let now = event.occurred_at;
        let update = Tenant::of(enterprise).issue_link(id, expected, link, expires_at, now);
        self.change_with_event(update, event, None).await
    }

    #[tracing::instrument(level = "debug", name = "UPDATE invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "UPDATE",
        db.collection.name = "invitations",
    ))]
    async fn accept_by_link(
        &self,
        link: LinkTokenHash,
        invitee_email: &EmailAddress,
        invitee: UserRef,
        event: &EventRecord,
    ) -> Result<Option<Invitation>, Error> {
        let now = event.occurred_at;
        let update = queries::accept_by_link(link, invitee_email, invitee, now);
        self.change_with_event(update, event, None).await
    }

    #[tracing::instrument(level = "debug", name = "SELECT invitations", skip_all, fields(
        otel.kind = "client",
        db.system.name = self.system_name(),
        db.operation.name = "SELECT",
        db.collection.name = "invitations",
    ))]
    async fn find_by_link(&self, link: LinkTokenHash) -> Result<Option<Invitation>, Error> {
        let statement = queries::by_link(link, self.backend());
        Ok(self.read_statement(statement, 1).await?.into_iter().next())
    }

    /// On PostgreSQL a position is taken when the event is inserted, before its transaction
    /// commits, so a transaction can commit a higher position before a lower one is visible.
    /// The horizon is the last position taken, once every transaction of this database
    /// that had written when it was read has ended: each one that took a position at or
    /// below it had an id by then (its change came first), so it was among them. The wait
    /// is usually a few milliseconds; a long writing transaction in this database delays it
    /// (never skips it).
    /// On SQLite writers commit one at a time, in position order: the horizon is the last.
    async fn event_horizon(&self) -> Result<i64, Error> {
        let db = self.usable().await?;
        let first_value = |row: Option<sea_orm::QueryResult>| -> Result<Option<i64>, Error> {
            Ok(row
                .map(|row| row.try_get_by_index::<Option<i64>>(0))
                .transpose()
                .map_err(classify)?
                .flatten())
        };
        if self.backend() != DbBackend::Postgres {
            let last = queries::last_position()
                .into_tuple::<Option<i64>>()
                .one(db)
                .await
                .map_err(classify)?;
            return Ok(last.flatten().unwrap_or(0));
        }
        let last = first_value(
            db.query_one_raw(queries::last_position_taken())
                .await
                .map_err(classify)?,
        )?;
        let writers: Option<String> = db
            .query_one_raw(queries::writers_in_flight())
            .await
            .map_err(classify)?
            .map(|row| row.try_get_by_index::<Option<String>>(0))
            .transpose()
            .map_err(classify)?
            .flatten();
        let Some(writers) = writers else {
            return Ok(last.unwrap_or(0));
        };
        loop {
            let running = first_value(
                db.query_one_raw(queries::writers_still_running(writers.clone()))
                    .await
                    .map_err(classify)?,
            )?;
            if running == Some(0) {
                return Ok(last.unwrap_or(0));
            }
            tokio::time::sleep(HORIZON_RECHECK).await;
        }
    }

    async fn events_written(&self) {
        self.listen_for_events();
        tokio::select! {
            () = self.state.events_here.notified() => {}
            () = self.state.events_elsewhere.notified() => {}
        }
    }

    async fn announce_events(&self) -> Result<(), Error> {
        if self.backend() != DbBackend::Postgres
            || !self.state.events_unannounced.swap(false, Ordering::AcqRel)
        {
            return Ok(());
        }
        let db = self.usable().await?;
        db.execute_raw(queries::announce_events())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn claim_relay(
        &self,
        relay: &'static str,
        holder: Uuid,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<i64>, Error> {
        let claimed = queries::claim_relay(relay, holder, now, until)
            .exec_with_returning(self.usable().await?)
            .await
            .map_err(classify)?;
        Ok(claimed.first().map(|row| row.position))
    }

    async fn advance_relay(
        &self,
        relay: &'static str,
        holder: Uuid,
        position: i64,
        until: Timestamp,
    ) -> Result<bool, Error> {
        let advanced = queries::advance_relay(relay, holder, position, until)
            .exec(self.usable().await?)
            .await
            .map_err(classify)?;
        Ok(advanced.rows_affected == 1)
    }

    async fn release_relay(&self, relay: &'static str, holder: Uuid) -> Result<(), Error> {
        queries::release_relay(relay, holder)
            .exec(self.usable().await?)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn events_since(
        &self,
        position: i64,
        horizon: i64,
        limit: u64,
    ) -> Result<Vec<InvitationEvent>, Error> {
        self.read_events(queries::events_since(position, horizon, limit))
            .await
    }

    async fn events_after(
        &self,
        enterprise: EnterpriseId,
        position: Option<i64>,
        horizon: i64,
        limit: u64,
    ) -> Result<Vec<InvitationEvent>, Error> {
        self.read_events(Tenant::of(enterprise).events_after(position, horizon, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use sea_orm::sqlx::error::{DatabaseError, ErrorKind};

    use super::*;

    /// A database error with a given SQLSTATE, as PostgreSQL would send it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "test"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn exec_error(code: &'static str) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(
            sea_orm::sqlx::Error::Database(Box::new(Sqlstate(code))),
        )))
    }

    #[test]
    fn reads_select_every_column_but_the_link_hash_and_folded_email_in_declaration_order() {
        use sea_orm::{Iden, Iterable};

        use super::entity::Column;
        use super::queries::READ_COLUMNS;
        // StoredRow::of_sqlx reads by position in the entity's declaration order.
        let declared: Vec<String> = Column::iter()
            .filter(|c| !matches!(c, Column::LinkTokenHash | Column::EmailNormalized))
            .map(|c| c.to_string())
            .collect();
        let read: Vec<String> = READ_COLUMNS.iter().map(|c| c.to_string()).collect();
        assert_eq!(read, declared);
    }

    /// Every writer connection of the pool has the configured `synchronous` (and WAL).
    #[tokio::test]
    async fn every_sqlite_connection_has_the_configured_synchronous() {
        const CONNECTIONS: u32 = 3;
        for (setting, pragma_value) in [(SqliteSync::Full, 2), (SqliteSync::Normal, 1)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("sync.db").display());
            let store = Store::connect(&StoreSettings {
                url: url.as_str().into(),
                max_connections: CONNECTIONS,
                acquire_timeout: Duration::from_secs(5),
                sqlite_busy_timeout: Duration::from_secs(5),
                sqlite_synchronous: setting,
                transaction_pooling: false,
                listen_url: None,
            })
            .await
            .expect("connect");
            let pool = store.db.get_sqlite_connection_pool();
            let mut held = Vec::new();
            for _ in 0..CONNECTIONS {
                let mut connection = pool.acquire().await.expect("a connection");
                let synchronous: i64 = sea_orm::sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut *connection)
                    .await
                    .expect("synchronous");
                let journal: String = sea_orm::sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&mut *connection)
                    .await
                    .expect("journal_mode");
                assert_eq!(synchronous, pragma_value, "{setting:?}");
                assert_eq!(journal, "wal");
                held.push(connection);
            }
            drop(held);
            store.close().await;
        }
    }

    #[test]
    fn start_up_failures_are_sorted_by_whether_retrying_can_help() {
        for code in ["08006", "08001", "57P03", "53300", "40001"] {
            assert_eq!(
                startup_failure(&exec_error(code)),
                StartupFailure::Heals,
                "{code}"
            );
        }
        for code in ["28P01", "28000"] {
            assert_eq!(
                startup_failure(&exec_error(code)),
                StartupFailure::Credentials,
                "{code}"
            );
        }
        for code in ["3D000", "14", "8", "26"] {
            assert!(
                matches!(startup_failure(&exec_error(code)), StartupFailure::Fatal(_)),
                "{code}"
            );
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let io = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(refused.into())));
        assert_eq!(startup_failure(&io), StartupFailure::Heals);
        let timed_out = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(
            sea_orm::sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(startup_failure(&timed_out), StartupFailure::Heals);
        let tls = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sea_orm::sqlx::Error::Tls(
            "certificate verify failed".into(),
        ))));
        assert!(matches!(startup_failure(&tls), StartupFailure::Fatal(_)));
    }

    #[test]
    fn database_failures_are_sorted_into_the_documented_rows() {
        // Serialization failure and deadlock: retryable conflicts (ABORTED).
        for code in ["40001", "40P01", "5", "517", "6"] {
            assert!(
                matches!(classify(exec_error(code)), Error::TransactionConflict(_)),
                "{code}"
            );
        }
        // Connection trouble and a server going away: 503.
        for code in ["08006", "57P01", "53300"] {
            assert!(
                matches!(classify(exec_error(code)), Error::DatabaseUnavailable(_)),
                "{code}"
            );
        }
        let io = DbErr::Query(RuntimeErr::SqlxError(Arc::new(sea_orm::sqlx::Error::Io(
            std::io::Error::other("reset"),
        ))));
        assert!(matches!(classify(io), Error::DatabaseUnavailable(_)));
        // Anything else the database says: 502.
        for code in ["42P01", "23514"] {
            assert!(
                matches!(classify(exec_error(code)), Error::Upstream(_)),
                "{code}"
            );
        }
        let status = tonic::Status::from(classify(exec_error("40001")));
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert!(
            !status.message().contains("40001"),
            "no database text for the client"
        );
    }
}
