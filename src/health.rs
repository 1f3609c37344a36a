//! Readiness that tells the truth: NOT_SERVING until migrations are done and the database
//! answers, NOT_SERVING while it is unreachable, SERVING again when it is back. Liveness
//! (the `liveness` entry) stays SERVING while the process can serve, database or not.
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::{StartupFailure, Store, startup_failure};

/// The longest wait between two attempts to reach and migrate the database at start-up.
const RETRY_CAP: Duration = Duration::from_secs(10);
/// The least time between two log lines about those attempts.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(5);

/// The database cannot be used and retrying cannot help: the reason, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DATABASE_URL: {0} (retrying cannot help)")]
pub struct DatabaseUnusable(pub String);

/// Applies the migrations, retrying what can heal (the server not up yet, starting, out of
/// connections; refused credentials too, logged as errors) with capped exponential backoff
/// from `first_delay`, and giving up at once on what cannot ([`startup_failure`]). One log
/// line per attempt, at most every [`RETRY_LOG_EVERY`].
pub async fn migrate_with_retries(
    store: &Store,
    first_delay: Duration,
) -> Result<(), DatabaseUnusable> {
    let mut delay = first_delay.min(RETRY_CAP);
    let mut attempts = 0u32;
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        let Err(error) = store.migrate().await else {
            warn_of_missing_session_settings(store).await;
            return Ok(());
        };
        attempts += 1;
        let failure = startup_failure(&error);
        if let StartupFailure::Fatal(reason) = failure {
            return Err(DatabaseUnusable(reason));
        }
        if logged.is_none_or(|at| at.elapsed() >= RETRY_LOG_EVERY) {
            logged = Some(tokio::time::Instant::now());
            let retry_in_ms = delay.as_millis() as u64;
            if failure == StartupFailure::Credentials {
                tracing::error!(%error, attempts, retry_in_ms, "database refused the credentials; retrying");
            } else {
                tracing::warn!(%error, attempts, retry_in_ms, "database not ready: migrations not applied yet; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_CAP);
    }
}

/// Behind a transaction pooler, says once which role settings are missing (the service
/// works without them, but plans every page anew and leaves an abandoned statement running
/// until it ends).
async fn warn_of_missing_session_settings(store: &Store) {
    match store.session_settings_missing().await {
        Ok(missing) if !missing.is_empty() => tracing::warn!(
            run_once = %missing.join("; "),
            "INVITATIONS_DB_TRANSACTION_POOLING: the database role lacks the session settings \
             a pooler cannot carry"
        ),
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "session settings not checked"),
    }
}

/// The readiness entries: the invitations service, and `""` (the whole server).
pub const READINESS_SERVICES: [&str; 2] = ["invitations.v1.InvitationService", ""];
/// The liveness entry.
pub const LIVENESS_SERVICE: &str = "liveness";

/// How the database is watched.
#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    /// Time between two checks.
    pub interval: Duration,
    /// How long one check may take before it counts as a failure.
    pub check_timeout: Duration,
    /// Consecutive failures before readiness turns NOT_SERVING.
    pub failure_threshold: u32,
    /// Consecutive successes before it turns SERVING again.
    pub success_threshold: u32,
}

pub async fn set_readiness(reporter: &HealthReporter, status: ServingStatus) {
    let ready = if status == ServingStatus::Serving {
        1.0
    } else {
        0.0
    };
    metrics::gauge!("invitations_ready").set(ready);
    for service in READINESS_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Applies migrations ([`migrate_with_retries`]), then watches the database forever; ends
/// only when the database cannot be used at all. Readiness changes only after
/// `failure_threshold` failed or `success_threshold` successful checks in a row, so one
/// slow query does not flap it.
pub async fn supervise(
    store: Store,
    reporter: HealthReporter,
    settings: HealthSettings,
) -> DatabaseUnusable {
    if let Err(unusable) = migrate_with_retries(&store, settings.interval).await {
        return unusable;
    }
    // Planner statistics right after the schema is there, off the readiness path: ANALYZE
    // may have to wait for SQLite's write lock.
    tokio::spawn({
        let store = store.clone();
        async move {
            if let Err(error) = store.optimize().await {
                tracing::debug!(%error, "planner statistics not gathered");
            }
        }
    });
    let mut serving = false;
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        let healthy = matches!(
            tokio::time::timeout(settings.check_timeout, store.ping()).await,
            Ok(Ok(()))
        );
        if healthy {
            failures = 0;
            successes = successes.saturating_add(1);
        } else {
            successes = 0;
            failures = failures.saturating_add(1);
        }
        // Once, at start-up, the first success makes the service ready; after an outage it
        // takes `success_threshold` of them.
        let recovered =
            successes >= settings.success_threshold || (healthy && !store.declared_down());
        if !serving && recovered {
            serving = true;
            store.declare_down(false);
            set_readiness(&reporter, ServingStatus::Serving).await;
            tracing::info!("database reachable: ready");
        } else if serving && failures >= settings.failure_threshold {
            serving = false;
            // Requests now fail fast with DATABASE_UNAVAILABLE instead of each waiting for
            // a connection that will not come.
            store.declare_down(true);
            set_readiness(&reporter, ServingStatus::NotServing).await;
            tracing::warn!(failures, "database unreachable: not ready");
        }
        tokio::time::sleep(settings.interval).await;
    }
}

/// How `health-check` speaks TLS to a gRPC port that requires it.
#[derive(Debug, Clone)]
pub struct CheckTls {
    /// The CA certificates (PEM) to trust.
    pub ca: std::path::PathBuf,
    /// The name the server's certificate is issued to.
    pub server_name: String,
    /// A client certificate and its key (PEM), for a port that requires one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl CheckTls {
    fn client_config(
        &self,
    ) -> Result<tonic::transport::ClientTlsConfig, Box<dyn std::error::Error>> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
        };
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)?))
            .domain_name(self.server_name.clone());
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        Ok(config)
    }
}

/// Asks the health service at `addr` about `service` (what `invitations health-check`
/// runs), over TLS when `tls` says how; answers the status name, e.g. `SERVING`.
pub async fn check(
    addr: std::net::SocketAddr,
    service: &str,
    timeout: Duration,
    tls: Option<&CheckTls>,
) -> Result<String, Box<dyn std::error::Error>> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let target = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let ask = async {
        let endpoint = match tls {
            None => tonic::transport::Endpoint::from_shared(format!("http://{target}"))?,
            Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{target}"))?
                .tls_config(tls.client_config()?)?,
        };
        let channel = endpoint.connect().await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        let status =
            tonic_health::pb::health_check_response::ServingStatus::try_from(answer.status)
                .map_or_else(
                    |_| format!("UNKNOWN({})", answer.status),
                    |s| s.as_str_name().to_owned(),
                );
        Ok::<_, Box<dyn std::error::Error>>(status)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| format!("no answer from {target} within {timeout:?}"))?
}
