//! The suite's core cases through a real PgBouncer in transaction mode
//! (`TEST_PGBOUNCER_URL`; `.ci/run` starts one, see `.ci/pgbouncer`), with
//! `INVITATIONS_DB_TRANSACTION_POOLING` on: each server connection of the pooler serves
//! many of the service's connections, one transaction at a time, so a statement that
//! relied on its session (a prepared statement, a setting, a session lock, LISTEN) would
//! fail or go wrong here. The pooler is checked to be in transaction mode with fewer server
//! connections than the service opens, so these tests cannot pass on a pooler that keeps
//! sessions.
use crate::common::{Backend, TestApp, create_request, with_database};
use crate::watch::{next_events, open_with};
use sea_orm::sqlx::{self, Connection, Row};
use std::collections::HashMap;
use std::time::Duration;

/// PgBouncer's `SHOW CONFIG`, from its admin console (the `pgbouncer` database, which
/// speaks the simple query protocol only).
async fn pooler_config(pooled_url: &str) -> HashMap<String, String> {
    let mut admin = sqlx::PgConnection::connect(&with_database(pooled_url, "pgbouncer"))
        .await
        .expect("connect to PgBouncer's admin console (admin_users must name the test's user)");
    let rows = sqlx::raw_sql("SHOW CONFIG")
        .fetch_all(&mut admin)
        .await
        .expect("SHOW CONFIG");
    rows.iter()
        .map(|row| {
            let value: Option<String> = row.get("value");
            (row.get::<String, _>("key"), value.unwrap_or_default())
        })
        .collect()
}

/// The pooler of `TEST_PGBOUNCER_URL`, once checked to pool by transaction with fewer server
/// connections than a test's server opens; `None` (skipped, saying so) without the URL.
async fn pooler() -> Option<Backend> {
    let backend = Backend::pgbouncer()?;
    let Backend::PgBouncer { pooled_url, .. } = &backend else {
        unreachable!("Backend::pgbouncer is PgBouncer")
    };
    let config = pooler_config(pooled_url).await;
    assert_eq!(
        config["pool_mode"], "transaction",
        "PgBouncer must pool by transaction"
    );
    let server_connections: u32 = config["default_pool_size"].parse().expect("a number");
    assert!(
        server_connections < 8,
        "the pooler must hold fewer server connections per database ({server_connections}) \
         than the test server's pool (8), so that they are shared"
    );
    assert!(
        config["max_prepared_statements"] != "0",
        "sqlx prepares named statements: PgBouncer needs max_prepared_statements"
    );
    Some(backend)
}

/// Runs each named core case, written for any store, against PostgreSQL through PgBouncer.
macro_rules! through_pgbouncer {
    ($($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(backend) = pooler().await {
                    let app = TestApp::spawn(backend).await;
                    crate::$module::$case(&app).await;
                    app.finish().await;
                }
            }
        )*
    };
}

through_pgbouncer!(
    list::full_walks_return_each_match_once_in_order,
    list::page_tokens_survive_a_restart_and_work_on_a_replica,
    cancel::a_stale_etag_is_aborted_with_the_current_one,
    cancel::concurrent_cancels_with_one_etag_have_one_winner,
    idempotency::a_retry_returns_the_original_response_without_a_second_write,
    idempotency::concurrent_retries_write_once_and_agree,
    links::issue_rotate_and_accept,
    links::accept_and_cancel_race_has_one_consistent_outcome,
    events::every_change_records_exactly_its_event,
    events::a_reader_up_to_the_horizon_sees_every_event_once,
    watch::a_watch_delivers_each_change_once_with_its_cursor,
    watch::cursors_are_bound_to_their_watch_and_expire,
);

/// The expiry sweepers of two replicas share the work through a transaction-level advisory
/// lock, which a transaction pooler keeps (a session-level one it would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_invitations_get_one_expired_event_across_replicas() {
    if let Some(backend) = pooler().await {
        crate::events::lapsed_invitations_get_exactly_one_expired_event_across_replicas(backend)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_sweeper_has_one_outcome() {
    if let Some(backend) = pooler().await {
        crate::events::a_cancel_racing_the_sweeper_has_one_outcome(backend).await;
    }
}

/// A watch on one replica sees a change made on another: by polling when LISTEN has nowhere
/// to go (behind a transaction pooler it would hear nothing), and at once with
/// `INVITATIONS_DB_LISTEN_URL` naming the server itself while the watching replica polls
/// only every minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_another_replicas_changes_with_and_without_a_listen_url() {
    let Some(backend) = pooler().await else {
        return;
    };
    let Backend::PgBouncer { admin_url, .. } = &backend else {
        unreachable!("Backend::pgbouncer is PgBouncer")
    };
    let admin_url = admin_url.clone();
    let app = TestApp::spawn(backend).await;
    let direct = with_database(&admin_url, app.database_name().expect("PostgreSQL"));
    for (listen_url, poll) in [
        (None, Duration::from_millis(200)),
        (Some(direct), Duration::from_secs(60)),
    ] {
        let listens = listen_url.is_some();
        let (mut watcher, stop, server) = app
            .replica_with(|settings| {
                settings.store.listen_url = listen_url.map(|url| url.as_str().into());
                settings.watch.poll = poll;
            })
            .await;
        let mut stream = open_with(&mut watcher, &app.token, Default::default())
            .await
            .expect("the watch opens");
        // Past the watch's catch-up from the outbox: the change can only reach it through
        // the replica's outbox reader, woken by LISTEN or by its poll.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let created = app
            .create(create_request(format!("pooled-{listens}@acme.example")))
            .await
            .expect("created on the other replica");
        let (events, _) = next_events(&mut stream, 1).await;
        let snapshot = events[0].invitation.as_ref().expect("a snapshot");
        assert_eq!(snapshot.id, created.id, "listen URL given: {listens}");
        let _ = stop.send(());
        server.await.expect("the replica stops");
    }
    app.finish().await;
}

/// Without `INVITATIONS_DB_TRANSACTION_POOLING` the service asks for session settings the
/// pooler cannot keep, and the pooler refuses the connection: a mistake of the deployment,
/// which `serve` and `migrate` report at once, naming the setting, instead of retrying.
#[test]
fn without_the_setting_start_up_stops_at_once_naming_it() {
    let Some(Backend::PgBouncer {
        admin_url,
        pooled_url,
    }) = Backend::pgbouncer()
    else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (name, _) = runtime.block_on(crate::common::create_database(&admin_url));
    let url = with_database(&pooled_url, &name);
    for args in [&[][..], &["migrate"][..]] {
        let (code, last) = crate::process::run_until_exit(
            args,
            &[("DATABASE_URL", url.as_str())],
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(1), "{args:?}: {last}");
        assert!(
            last.contains("set INVITATIONS_DB_TRANSACTION_POOLING=true"),
            "{args:?}: {last}"
        );
        assert!(last.ends_with("(retrying cannot help)"), "{last}");
    }
    let (code, last) = crate::process::run_until_exit(
        &["migrate"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("INVITATIONS_DB_TRANSACTION_POOLING", "true"),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        code,
        Some(0),
        "migrate through the pooler with the setting: {last}"
    );
    runtime.block_on(crate::common::drop_database(&admin_url, &name));
}

/// The session settings come from the role (or the database) behind a pooler: a replica
/// that finds them missing says which statements give them, once ready; given, it says
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_session_settings_are_named_with_the_statements_that_give_them() {
    let Some(Backend::PgBouncer {
        admin_url,
        pooled_url,
    }) = Backend::pgbouncer()
    else {
        return;
    };
    let (name, direct) = crate::common::create_database(&admin_url).await;
    let url = with_database(&pooled_url, &name);
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("INVITATIONS_DB_TRANSACTION_POOLING", "true"),
    ];
    let warned = |logs: &[String]| {
        logs.iter()
            .find(|line| line.contains("lacks the session settings"))
            .cloned()
    };
    let served = crate::process::Served::start_ready(&env, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(line) = warned(&served.logs()) {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", served.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        line.contains("ALTER ROLE CURRENT_USER SET plan_cache_mode = force_generic_plan")
            && line.contains("ALTER ROLE CURRENT_USER SET client_connection_check_interval"),
        "{line}"
    );
    drop(served);

    // The database's defaults reach every server connection the pooler opens after them.
    let admin = sea_orm::Database::connect(&direct).await.expect("connect");
    for setting in [
        "plan_cache_mode = force_generic_plan",
        "client_connection_check_interval = '250ms'",
    ] {
        sea_orm::ConnectionTrait::execute_unprepared(
            &admin,
            &format!("ALTER DATABASE \"{name}\" SET {setting}"),
        )
        .await
        .expect("ALTER DATABASE");
    }
    admin.close().await.expect("close");
    // The pooler's server connections opened before carry the old defaults.
    let mut console = sqlx::PgConnection::connect(&with_database(&pooled_url, "pgbouncer"))
        .await
        .expect("the admin console");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("RECONNECT \"{name}\"")))
        .execute(&mut console)
        .await
        .expect("RECONNECT");
    let served = crate::process::Served::start_ready(&env, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(warned(&served.logs()), None);
    drop(served);
    crate::common::drop_database(&admin_url, &name).await;
}
