//! TLS to PostgreSQL, as libpq's URL asks for it (`sslmode`, `sslrootcert`), against the
//! machine's server (ssl on, its snakeoil certificate issued to `localhost`). What fails
//! verification stops start-up: `process::database_failures_that_cannot_heal_...`.
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::common::{Backend, TestApp, create_request, list_request};
use crate::process::SNAKEOIL;

/// The service's own connections to its database, and how many of them use TLS.
async fn tls_connections(app: &TestApp) -> (i64, i64) {
    let url = app.settings.store.url.expose();
    let plain = url.split('?').next().expect("a URL").to_owned();
    let own = Database::connect(plain).await.expect("a plain connection");
    let row = own
        .query_one_raw(Statement::from_string(
            own.get_database_backend(),
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.application_name LIKE 'invitations%'",
        ))
        .await
        .expect("pg_stat_ssl")
        .expect("a row");
    own.close().await.expect("close");
    (
        row.try_get_by_index(0).expect("count"),
        row.try_get_by_index(1).expect("count"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_connects_as_libpq_would() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    for (query, host, encrypted) in [
        ("sslmode=disable", "127.0.0.1", false),
        ("sslmode=prefer", "127.0.0.1", true),
        ("sslmode=require", "127.0.0.1", true),
        (
            &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
            "127.0.0.1",
            true,
        ),
        (
            &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
            "localhost",
            true,
        ),
    ] {
        let app = TestApp::spawn_configured(backend.clone(), |config| {
            let url = config
                .database_url
                .expose()
                .replace("@127.0.0.1:", &format!("@{host}:"));
            let joined = if url.contains('?') { '&' } else { '?' };
            config.database_url = format!("{url}{joined}{query}").into();
        })
        .await;
        app.create(create_request("tls@acme.example"))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e:?}"));
        let page = app.list(list_request(&[])).await.expect("listed");
        assert_eq!(page.items.len(), 1);
        let (connections, with_tls) = tls_connections(&app).await;
        assert!(connections > 0, "{query}");
        let expected = if encrypted { connections } else { 0 };
        assert_eq!(with_tls, expected, "{query}: {connections} connections");
        app.finish().await;
    }
}
