//! Databases: a fresh one per dataset, migrated by the service's own store, seeded in batches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use invitations::store::{Store, StoreSettings};
use sea_orm::sqlx::{self, AssertSqlSafe, Row as _};

use crate::plan::{Layout, StoreKind};
use crate::seed::{Clock, seed_sql};

/// The service's `synchronous`: INVITATIONS_SQLITE_SYNCHRONOUS as the service reads it.
pub(crate) fn sqlite_synchronous() -> invitations::store::SqliteSync {
    std::env::var("INVITATIONS_SQLITE_SYNCHRONOUS")
        .ok()
        .and_then(|value| clap::ValueEnum::from_str(&value, true).ok())
        .unwrap_or_default()
}

pub(crate) async fn sqlite_pool(path: &Path, connections: u32) -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    // The service's options (src/store/mod.rs): WAL, its `synchronous` (the service process
    // inherits the harness's INVITATIONS_SQLITE_SYNCHRONOUS), busy timeout, the row channel.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .row_buffer_size(invitations::store::SQLITE_ROW_CHANNEL)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlite_synchronous().sqlx_option())
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(connections)
        .min_connections(1)
        .connect_with(options)
        .await
        .expect("open the SQLite file")
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A fresh benchmark database; dropped by [`Db::drop_db`].
pub(crate) struct Db {
    store: StoreKind,
    pub(crate) url: String,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
    pub(crate) sqlite_path: Option<PathBuf>,
}

impl Db {
    pub(crate) async fn create(store: StoreKind, pg_url: Option<&str>, name: &str) -> Db {
        match store {
            StoreKind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("invitations.db");
                Db {
                    store,
                    url: format!("sqlite://{}", path.display()),
                    admin_url: None,
                    name: name.to_owned(),
                    _dir: Some(dir),
                    sqlite_path: Some(path),
                }
            }
            StoreKind::Postgres => {
                let admin_url = pg_url.expect("a PostgreSQL URL").to_owned();
                let admin = sqlx::PgPool::connect(&admin_url)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&admin)
                .await
                .expect("drop the old benchmark database");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&admin)
                    .await
                    .expect("create the benchmark database");
                admin.close().await;
                Db {
                    store,
                    url: with_database(&admin_url, name),
                    admin_url: Some(admin_url),
                    name: name.to_owned(),
                    _dir: None,
                    sqlite_path: None,
                }
            }
        }
    }

    /// Applies the service's migrations through its own store.
    pub(crate) async fn migrate(&self) {
        let store = Store::connect(&StoreSettings {
            url: self.url.as_str().into(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
            sqlite_synchronous: sqlite_synchronous(),
            transaction_pooling: false,
            listen_url: None,
        })
        .await
        .expect("connect");
        store.migrate().await.expect("migrations apply");
        store.close().await;
    }

    async fn exec(&self, sql: &str) {
        match self.store {
            StoreKind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}: {}", &sql[..sql.len().min(300)]));
                pool.close().await;
            }
            StoreKind::Sqlite => {
                let pool = sqlite_pool(self.sqlite_path.as_ref().expect("path"), 1).await;
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}: {}", &sql[..sql.len().min(300)]));
                pool.close().await;
            }
        }
    }

    pub(crate) async fn count(&self, where_: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM invitations WHERE {where_}");
        match self.store {
            StoreKind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
                let n: i64 = sqlx::query(AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .expect("count")
                    .get(0);
                pool.close().await;
                n
            }
            StoreKind::Sqlite => {
                let pool = sqlite_pool(self.sqlite_path.as_ref().expect("path"), 1).await;
                let n: i64 = sqlx::query(AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .expect("count")
                    .get(0);
                pool.close().await;
                n
            }
        }
    }

    /// Seeds rows in batches (one statement per batch).
    pub(crate) async fn seed(
        &self,
        layout: Layout,
        from: u64,
        count: u64,
        clock: Clock,
        pool: bool,
    ) {
        const BATCH: u64 = 250_000;
        let mut at = from;
        while at < from + count {
            let n = BATCH.min(from + count - at);
            self.exec(&seed_sql(self.store, layout, at, n, clock, pool))
                .await;
            at += n;
        }
        if self.store == StoreKind::Postgres {
            self.exec("VACUUM ANALYZE invitations").await;
        }
    }

    pub(crate) async fn drop_db(self) {
        if let Some(admin_url) = &self.admin_url {
            let admin = sqlx::PgPool::connect(admin_url).await.expect("connect");
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}
