//! The repository: the domain's port (`domain::InvitationRepository`) on SeaORM, and the
//! only place that knows SQL. Every statement is built in [`queries`]; rows are decoded in
//! [`rows`]; this file runs them, on SeaORM's pool or in its transactions, and sorts the
//! database's failures into the domain's errors.
//!
//! Writes that depend on state are single conditional statements whose `RETURNING` rows (or
//! `rows_affected`) decide the outcome, so no read-then-write race exists on either store.
//! Authorization is part of every query: each one is built from a [`queries::Tenant`].
mod entity;
mod idempotency;
mod queries;
mod rows;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use invitations_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, RuntimeErr, SqlErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};

use crate::domain::{
    CancelChange, CancelOutcome, EmailAddress, EnterpriseId, Error, IdempotencyKey, InsertOutcome,
    Invitation, InvitationId, InvitationRepository, LinkTokenHash, ListFilter, PriorResponse,
    RequestId, Timestamp, UserRef, Version,
};
use crate::secret::DatabaseUrl;
use queries::Tenant;
use rows::InvitationRow;

/// Rows a SQLite connection may hand over before the reader takes them: a whole page of
/// the largest size, plus the row that tells whether another page follows.
pub const SQLITE_ROW_CHANNEL: usize = 1024;

/// The PostgreSQL advisory lock that serialises migration runs (see [`Store::migrate`]):
/// the bytes of `"invt-mig"`, 7597139862771034471 (0x696e76742d6d6967). Advisory locks are
/// per database, so it only has to be unique among the users of this one. A waiting or
/// running migration shows in `pg_locks` as `locktype = 'advisory'`, `classid = 1768846964`,
/// `objid = 762145127`, `objsubid = 1`.
pub const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"invt-mig");

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
}

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// How many times a read is tried: once more than the pool has connections (see
    /// [`Store::read`]).
    read_attempts: u32,
    state: Arc<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    /// Migrations have been applied by this process: the schema is there.
    migrated: AtomicBool,
    /// The health supervisor found the database unreachable (see `health::supervise`).
    down: AtomicBool,
}

impl Store {
    /// Connects (creating a SQLite file if needed). SQLite runs in WAL mode so readers never
    /// block the writer, with a busy timeout so concurrent writers queue instead of failing.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(settings.url.expose().to_owned());
        let busy = settings.sqlite_busy_timeout;
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
            // starts with enterprise_id: the generic plan is the right one (BENCHMARKS.md).
            .map_sqlx_postgres_opts(|o: PgConnectOptions| {
                o.options([("plan_cache_mode", "force_generic_plan")])
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
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(busy)
                    .foreign_keys(true)
            });
        let db = Database::connect(options).await?;
        Ok(Self {
            db,
            read_attempts: settings.max_connections + 1,
            state: Arc::default(),
        })
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
    pub async fn migrate(&self) -> Result<(), DbErr> {
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

    /// SQLite's planner has no statistics until something gathers them, and without them a
    /// List filtered by e-mail and scope walks the wrong index (189 ms instead of 0.1 ms on
    /// a 1M-row enterprise, BENCHMARKS.md). `PRAGMA optimize` analyzes only the tables that
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
    }

    pub fn declared_down(&self) -> bool {
        self.state.down.load(Ordering::Acquire)
    }

    /// The connection to use for a request, or why there is none worth waiting for.
    fn usable(&self) -> Result<&DatabaseConnection, Error> {
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

    /// Closes every pooled connection (for an orderly shutdown).
    pub async fn close(&self) {
        if let Err(error) = self.db.close_by_ref().await {
            tracing::warn!(%error, "closing the database pool failed");
        }
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(classify)
    }

    /// Deletes responses older than the retention period; returns how many.
    pub async fn purge_expired_responses(&self, now: Timestamp) -> Result<u64, Error> {
        let deleted = queries::purge_lapsed_responses(now)
            .exec(self.usable()?)
            .await
            .map_err(classify)?;
        Ok(deleted.rows_affected)
    }

    /// Writes a whole invitation as given, whatever its status. For seeding demo data and
    /// test fixtures (accepted or lapsed invitations have no RPC that makes them yet).
    pub async fn insert_raw(&self, invitation: &Invitation) -> Result<(), Error> {
        entity::Entity::insert(rows::active_model(invitation))
            .exec_without_returning(&self.db)
            .await
            .map_err(classify)?;
        Ok(())
    }

    fn tenant_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Runs a read, again if its connection turns out to be dead. The pool pings only a
    /// connection that sat idle for a while (a ping per request would double every round
    /// trip), so after the server closed its connections (a restart, a pooler, an idle
    /// timeout) the pool still holds them; each failed try discards one. A read is safe to
    /// repeat; a write never is, and is never repeated.
    async fn read<T, F>(
        &self,
        statement: Statement,
        run: impl Fn(Statement) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            match run(statement.clone()).await {
                Err(Error::DatabaseUnavailable(cause))
                    if attempt < self.read_attempts && !self.declared_down() =>
                {
                    tracing::debug!(%cause, attempt, "a read failed on its connection; reading again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Runs a statement that selects (or returns) [`rows::READ_COLUMNS`], decoding every row.
async fn fetch_all(
    db: &impl ConnectionTrait,
    statement: Statement,
) -> Result<Vec<Invitation>, Error> {
    InvitationRow::find_by_statement(statement)
        .all(db)
        .await
        .map_err(classify)?
        .into_iter()
        .map(Invitation::try_from)
        .collect()
}

/// The same, for a statement that matches one row at most.
async fn fetch_one(
    db: &impl ConnectionTrait,
    statement: Statement,
) -> Result<Option<Invitation>, Error> {
    InvitationRow::find_by_statement(statement)
        .one(db)
        .await
        .map_err(classify)?
        .map(Invitation::try_from)
        .transpose()
}

impl InvitationRepository for Store {
    async fn list(&self, filter: &ListFilter<'_>) -> Result<Vec<Invitation>, Error> {
        let statement = Tenant::of(filter.enterprise).page(filter, self.tenant_backend());
        let db = self.usable()?;
        self.read(statement, |statement| fetch_all(db, statement))
            .await
    }

    async fn get(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
    ) -> Result<Option<Invitation>, Error> {
        let statement = Tenant::of(enterprise).get(id, self.tenant_backend());
        let db = self.usable()?;
        self.read(statement, |statement| fetch_one(db, statement))
            .await
    }

    /// Expires a lapsed pending invitation for the same address, then inserts, in one
    /// transaction: the unique index on pending rows decides between concurrent creators.
    async fn insert_pending(
        &self,
        invitation: &Invitation,
        now: Timestamp,
    ) -> Result<InsertOutcome, Error> {
        let tenant = Tenant::of(invitation.enterprise);
        let db = self.usable()?;
        let txn = db.begin().await.map_err(classify)?;
        tenant
            .expire_lapsed(&invitation.email, now)
            .exec(&txn)
            .await
            .map_err(classify)?;
        let inserted = tenant
            .insert_pending(invitation)
            .exec_without_returning(&txn)
            .await;
        match inserted {
            Ok(1) => {
                txn.commit().await.map_err(classify)?;
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
    async fn cancel_pending(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
        expected: Version,
        change: &CancelChange,
        now: Timestamp,
        key: Option<&IdempotencyKey>,
    ) -> Result<CancelOutcome, Error> {
        let tenant = Tenant::of(enterprise);
        let cancel = tenant.cancel(id, expected, change, now, self.tenant_backend());
        let db = self.usable()?;
        let Some(key) = key else {
            return Ok(match fetch_one(db, cancel).await? {
                Some(cancelled) => CancelOutcome::Cancelled(Box::new(cancelled)),
                None => CancelOutcome::NoMatch,
            });
        };
        let txn = db.begin().await.map_err(classify)?;
        let Some(row) = InvitationRow::find_by_statement(cancel)
            .one(&txn)
            .await
            .map_err(classify)?
        else {
            txn.rollback().await.map_err(classify)?;
            return Ok(CancelOutcome::NoMatch);
        };
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
        Ok(CancelOutcome::Cancelled(Box::new(Invitation::try_from(
            row,
        )?)))
    }

    async fn prior_response(
        &self,
        enterprise: EnterpriseId,
        request_id: RequestId,
        now: Timestamp,
    ) -> Result<Option<PriorResponse>, Error> {
        let Some(found) = Tenant::of(enterprise)
            .prior_response(request_id, now)
            .one(self.usable()?)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let row: InvitationRow = serde_json::from_str(&found.response).map_err(|e| {
            Error::Internal(format!(
                "stored response of {} is unreadable: {e}",
                request_id.as_uuid()
            ))
        })?;
        Ok(Some(PriorResponse {
            operation: found.operation,
            fingerprint: found.request_fingerprint,
            invitation: Invitation::try_from(row)?,
        }))
    }

    async fn issue_link(
        &self,
        enterprise: EnterpriseId,
        id: InvitationId,
        expected: Option<Version>,
        link: LinkTokenHash,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Invitation>, Error> {
        let statement = Tenant::of(enterprise).issue_link(
            id,
            expected,
            link,
            expires_at,
            now,
            self.tenant_backend(),
        );
        fetch_one(self.usable()?, statement).await
    }

    async fn accept_by_link(
        &self,
        link: LinkTokenHash,
        invitee_email: &EmailAddress,
        invitee: UserRef,
        now: Timestamp,
    ) -> Result<Option<Invitation>, Error> {
        let statement =
            queries::accept_by_link(link, invitee_email, invitee, now, self.tenant_backend());
        fetch_one(self.usable()?, statement).await
    }

    async fn find_by_link(&self, link: LinkTokenHash) -> Result<Option<Invitation>, Error> {
        let db = self.usable()?;
        self.read(queries::by_link(link, self.tenant_backend()), |statement| {
            fetch_one(db, statement)
        })
        .await
    }
}

/// Sorts a database failure into what the client should be told.
fn classify(error: DbErr) -> Error {
    if is_transaction_conflict(&error) {
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
    if unavailable {
        Error::DatabaseUnavailable(Box::new(error))
    } else {
        Error::Upstream(Box::new(error))
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
                    || code.parse::<u32>().is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6))
            }))
        }
        _ => false,
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
