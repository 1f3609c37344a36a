//! TLS to PostgreSQL, as libpq's URL asks for it (`sslmode`, `sslrootcert`), against the
//! machine's server (ssl on, its snakeoil certificate issued to `localhost`). What fails
//! verification stops start-up: `process::database_failures_that_cannot_heal_...`.
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::common::{Backend, TestApp, create_request, list_request};
use crate::pki::Pki;
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

/// Certificates made for one test: a CA, server certificates it signed (for `localhost`,
/// valid and expired), a client certificate for the user `postgres`, and an unrelated CA.
fn database_pki() -> Pki {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    pki.ca("other-ca");
    pki.leaf(&ca, "server", &["localhost"], "localhost", false);
    pki.leaf(&ca, "expired", &["localhost"], "localhost", true);
    pki.leaf(&ca, "client", &[], "postgres", false);
    pki
}

/// A PostgreSQL cluster of the test's own, on a free port, requiring TLS and a client
/// certificate signed by the test's CA; stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

/// Runs `program` as the `postgres` user when the tests run as root (PostgreSQL refuses
/// root), as is otherwise.
fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let mut command = if root {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        std::process::Command::new(program)
    };
    command
        .args(args)
        .output()
        .expect("run a PostgreSQL program")
}

impl Cluster {
    /// A cluster serving `server`'s certificate (`{server}.crt` of the test's PKI), or with
    /// TLS off when `server` is `None`.
    fn start(pki: &Pki, server: Option<&str>) -> Self {
        Self::start_with(pki, server, "cert")
    }

    /// The same, with `auth` as the `hostssl` rules' method (`cert`, or `trust` where the
    /// certificate of the client is not what is tested).
    fn start_with(pki: &Pki, server: Option<&str>, auth: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres", &dir.path().display().to_string()])
            .status();
        let init = as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
        );
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let (hba, tls_options) = match server {
            Some(server) => {
                for (from, to) in [
                    (format!("{server}.crt"), "server.crt"),
                    (format!("{server}.key"), "server.key"),
                    ("ca.crt".to_owned(), "ca.crt"),
                ] {
                    std::fs::copy(pki.path(&from), data.join(to)).expect("copy a certificate");
                }
                (
                    format!(
                        "hostssl all all 127.0.0.1/32 {auth}\nhostssl all all ::1/128 {auth}\n"
                    ),
                    "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key \
                     -c ssl_ca_file=ca.crt",
                )
            }
            None => (
                "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n".to_owned(),
                "-c ssl=off",
            ),
        };
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres", &data.display().to_string()])
            .status();
        let _ = std::process::Command::new("chmod")
            .args(["600", &data.join("server.key").display().to_string()])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {tls_options}",
            dir.path().display()
        );
        let started = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-o",
                &options,
                "-w",
                "-l",
                &dir.path().join("log").display().to_string(),
                "start",
            ],
        );
        assert!(
            started.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&started.stdout),
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        Self { dir, port }
    }

    /// A URL of this cluster's `postgres` database with `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let _ = as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}

/// `invitations migrate` against `url`: its exit code (`None` when still running after
/// 10 s) and last line.
fn migrate(url: &str) -> (Option<i32>, String) {
    crate::process::run_until_exit(
        &["migrate"],
        &[("DATABASE_URL", url)],
        std::time::Duration::from_secs(10),
    )
}

/// `verify-full` against a cluster with the test's own CA: the right host with a client
/// certificate passes; another host name, an unknown CA and an expired server certificate
/// each stop `migrate` at once with one line; a missing client certificate is refused by the
/// server, which is retried as refused credentials.
#[test]
fn verify_full_against_a_cluster_with_its_own_ca() {
    if Backend::postgres().is_none() {
        return;
    }
    let pki = database_pki();
    let client = format!(
        "sslcert={}&sslkey={}",
        pki.path("client.crt"),
        pki.path("client.key")
    );
    let full = |ca: &str| format!("sslmode=verify-full&sslrootcert={}&{client}", pki.path(ca));
    let cluster = Cluster::start(&pki, Some("server"));
    let (code, last) = migrate(&cluster.url("localhost", &full("ca.crt")));
    assert_eq!(code, Some(0), "{last}");
    assert_eq!(last, "invitations: migrations applied");
    for (host, query, reason) in [
        (
            "127.0.0.1",
            full("ca.crt"),
            "certificate not valid for name \"127.0.0.1\"",
        ),
        ("localhost", full("other-ca.crt"), "UnknownIssuer"),
    ] {
        let (code, last) = migrate(&cluster.url(host, &query));
        assert_eq!(code, Some(1), "{host} {query}: {last}");
        assert!(
            last.starts_with("invitations: DATABASE_URL: TLS to the database failed"),
            "{last}"
        );
        assert!(last.contains(reason), "{reason} in {last}");
    }
    // No client certificate: the server says no, as it would to a wrong password.
    let bare = format!("sslmode=verify-full&sslrootcert={}", pki.path("ca.crt"));
    let (code, last) = migrate(&cluster.url("localhost", &bare));
    assert_eq!(code, None, "retried, not given up: {last}");
    assert!(last.contains("refused the credentials"), "{last}");
    drop(cluster);

    let expired = Cluster::start(&pki, Some("expired"));
    let (code, last) = migrate(&expired.url("localhost", &full("ca.crt")));
    assert_eq!(code, Some(1), "{last}");
    assert!(
        last.contains("TLS to the database failed") && last.contains("certificate expired"),
        "{last}"
    );
}

/// A server that does not speak TLS, asked for it: start-up stops at once with one line.
#[test]
fn tls_refused_by_the_server_stops_start_up() {
    if Backend::postgres().is_none() {
        return;
    }
    let pki = database_pki();
    let plain = Cluster::start(&pki, None);
    let (code, last) = migrate(&plain.url("127.0.0.1", "sslmode=disable"));
    assert_eq!(code, Some(0), "{last}");
    for mode in ["require", "verify-full"] {
        let query = format!("sslmode={mode}&sslrootcert={}", pki.path("ca.crt"));
        let (code, last) = migrate(&plain.url("localhost", &query));
        assert_eq!(code, Some(1), "{mode}: {last}");
        assert!(
            last.starts_with("invitations: DATABASE_URL: TLS to the database failed"),
            "{last}"
        );
    }
}

/// The certificates of `deploy/dev-certs.sh`, which docker-compose.yml gives PostgreSQL, are
/// accepted by PostgreSQL and pass the service's `verify-full` against the script's CA, by
/// host name and by address, as compose's `sslmode=verify-full&sslrootcert=/certs/ca.crt`.
#[test]
fn the_dev_certs_script_makes_what_compose_verifies() {
    if Backend::postgres().is_none() {
        return;
    }
    let pki = Pki::from_dev_certs_script();
    let cluster = Cluster::start_with(&pki, Some("server"), "trust");
    let query = format!("sslmode=verify-full&sslrootcert={}", pki.path("ca.crt"));
    for host in ["localhost", "127.0.0.1"] {
        let (code, last) = migrate(&cluster.url(host, &query));
        assert_eq!(code, Some(0), "{host}: {last}");
    }
}
