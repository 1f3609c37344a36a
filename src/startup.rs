//! Builds the server from settings and runs it: health, reflection and the authenticated
//! invitations service behind request telemetry and the limits of `limits/`, with a bounded
//! graceful shutdown. Tests build the same [`Application`] on port 0.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::auth::{AuthInterceptor, Authenticator, JwksKeys};
use crate::config::Settings;
use crate::domain::{EVENT_RETENTION_MARGIN, InvitationService, PageTokenCodec, WatchCursors};
use crate::grpc::InvitationApi;
use crate::health::{self, LIVENESS_SERVICE};
use crate::limits::{Admission, Incoming, StreamLimitLayer};
use crate::metrics::ScrapeLayer;
use crate::middleware::ObserveLayer;
use crate::proto::server::invitation_service_server::InvitationServiceServer;
use crate::rate_limit::{RateLimitLayer, RateLimiter};
use crate::shutdown::{CLOSE_BOUND, CallsInFlight, InFlightLayer};
use crate::store::Store;
use crate::tls::ServerTls;
use crate::watch::Watcher;
use crate::watch::hub::EventHub;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

/// The exit code of a `serve` that stopped on a signal but had to abandon calls at the
/// drain timeout (their clients were answered UNAVAILABLE `SHUTTING_DOWN` and nothing they
/// wrote was committed). 0 means every call was answered; 1 is a failure to start or serve.
pub const EXIT_CALLS_ABANDONED: u8 = 3;

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Calls still running at the drain timeout, ended without their answer.
    pub abandoned_calls: usize,
}

impl Stopped {
    pub fn exit_code(self) -> std::process::ExitCode {
        if self.abandoned_calls == 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(EXIT_CALLS_ABANDONED)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Only SQLite opens its file here (PostgreSQL connects when first used), and a file
    /// that cannot be opened stays so.
    #[error("DATABASE_URL: the database cannot be opened: {0} (retrying cannot help)")]
    Connect(#[source] sea_orm::DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Jwks(#[from] crate::auth::JwksError),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Database(#[from] health::DatabaseUnusable),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("INVITATIONS_RATE_LIMIT_REDIS_URL: not a Redis URL ({0})")]
    RateLimit(String),
}

/// A bound server, not serving yet. The database is not touched until it runs: migrations
/// and readiness are the health supervisor's job, so the process comes up (and says it is
/// not ready) even while the database is down.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The operations listener (health only, plaintext), when configured.
    ops_listener: Option<(TcpListener, SocketAddr)>,
    /// TLS on the main listener, when configured.
    tls: Option<Arc<ServerTls>>,
    store: Store,
    authenticator: Arc<Authenticator>,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let store = Store::connect_with(&settings.store, settings.store_accelerators)
            .await
            .map_err(StartupError::Connect)?;
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: settings.listen_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen_addr,
            source,
        })?;
        let ops_listener = match settings.ops_listen_addr {
            None => None,
            Some(addr) => {
                let bind_failed = |source| StartupError::Bind { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(bind_failed)?;
                let local = listener.local_addr().map_err(bind_failed)?;
                Some((listener, local))
            }
        };
        let tls = settings.tls.clone().map(ServerTls::load).transpose()?;
        let jwks = settings
            .jwt
            .jwks_path
            .as_deref()
            .map(|path| JwksKeys::load(path, settings.jwt.jwks_reload))
            .transpose()?;
        let authenticator = Arc::new(Authenticator::new(
            settings.jwt.hs256_secret.expose(),
            jwks,
            &settings.jwt.issuer,
            &settings.jwt.audience,
        ));
        Ok(Self {
            listener,
            local_addr,
            ops_listener,
            tls,
            store,
            authenticator,
            settings: settings.clone(),
        })
    }

    /// The bound address (the real port when the settings asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound operations address, when one was configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().map(|(_, addr)| *addr)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    /// Serves until `shutdown` completes, then: readiness NOT_SERVING at once, serving on
    /// for the grace delay, no new connections or calls, at most the drain timeout for
    /// in-flight calls (tonic's own wait has no bound), then the calls still running are
    /// abandoned (`shutdown.rs`) and the database pool gets at most [`CLOSE_BOUND`] to close.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Stopped, StartupError> {
        let limits = self.settings.server;
        // Metrics are recorded only where they can be scraped, from the first readiness on.
        let metrics = self.ops_listener.is_some().then(crate::metrics::install);
        let (reporter, health_service) = tonic_health::server::health_reporter();
        health::set_readiness(&reporter, ServingStatus::NotServing).await;
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let mut supervisor = tokio::spawn(health::supervise(
            self.store.clone(),
            reporter.clone(),
            self.settings.health,
        ));
        let janitor = tokio::spawn(housekeeping(
            self.store.clone(),
            self.settings.event_retention,
        ));
        let sweeper = tokio::spawn(sweep_expiries(
            self.store.clone(),
            self.settings.expiry_sweep,
        ));

        // Both reflection versions: grpcurl 1.8.7 and older speak only v1alpha. The error
        // detail and health types are registered so grpcurl can decode them.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = if self.settings.reflection {
            (
                Some(reflection().build_v1()?),
                Some(reflection().build_v1alpha()?),
            )
        } else {
            (None, None)
        };

        let page_tokens = PageTokenCodec::new(self.settings.page_token_secret.expose());
        let admission = Admission::new(
            limits.max_concurrent_requests,
            limits.max_concurrent_requests_per_caller,
        );
        let service = InvitationService::new(self.store.clone(), page_tokens.clone());
        // Watches end, each with its cursor, when the drain begins; the outbox's reader
        // stops with them.
        let drain = CancellationToken::new();
        let hub = EventHub::new(self.settings.watch.queue_len);
        let reader = tokio::spawn(hub.clone().run(
            self.store.clone(),
            self.settings.watch.poll,
            drain.clone(),
        ));
        let relay = self.settings.relay.clone().map(|settings| {
            tokio::spawn(crate::relay::run(
                self.store.clone(),
                hub.clone(),
                settings,
                drain.clone(),
            ))
        });
        let watcher = Watcher::new(
            self.store.clone(),
            service.clone(),
            hub,
            WatchCursors::new(page_tokens.signer().clone(), self.settings.event_retention),
            self.settings.watch,
            drain.clone(),
        );
        let api = InvitationApi::new(service, watcher, admission);
        let limiter = Arc::new(match &self.settings.shared_rate_limit {
            None => RateLimiter::new(limits.rate_limit_per_second, limits.rate_limit_burst),
            Some(shared) => RateLimiter::shared(
                limits.rate_limit_per_second,
                limits.rate_limit_burst,
                &String::from_utf8_lossy(shared.url.expose()),
                shared.ca.as_deref(),
                shared.timeout,
            )
            // The error names what is wrong with the URL, never the URL (its password).
            .map_err(|error| StartupError::RateLimit(format!("{:?}", error.kind())))?,
        });
        limiter.warm_up().await;
        // Authenticated first, then limited per caller, then read.
        let invitations = InterceptedService::new(
            RateLimitLayer::new(limiter).layer(
                InvitationServiceServer::new(api)
                    .max_decoding_message_size(limits.max_request_bytes),
            ),
            AuthInterceptor::new(self.authenticator.clone()),
        );

        // Health and metrics alone, in plaintext, on their own port: health answers through
        // the grace period (NOT_SERVING) like the main one, and stops with it; Prometheus
        // scrapes `GET /metrics` over HTTP/1.1 there.
        let mut background = tokio::task::JoinSet::new();
        let operations = self
            .ops_listener
            .zip(metrics)
            .map(|((listener, addr), metrics)| {
                tracing::info!(%addr, "serving operations (health, /metrics)");
                background.spawn(crate::metrics::upkeep(metrics.clone()));
                let store = self.store.clone();
                let pool_figures = std::sync::Arc::new(move || store.record_pool_figures());
                tokio::spawn(
                    Server::builder()
                        .accept_http1(true)
                        .layer(ScrapeLayer::new(metrics, pool_figures))
                        .add_service(health_service.clone())
                        .serve_with_incoming(Incoming::new(listener, OPS_MAX_CONNECTIONS)),
                )
            });

        let calls = CallsInFlight::new();
        let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .timeout(limits.request_timeout)
            .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
            .http2_max_header_list_size(limits.max_metadata_bytes)
            .max_connection_age(limits.max_connection_age)
            // tonic advertises no stream limit unless told: one connection could open streams
            // without end.
            .max_concurrent_streams(limits.max_concurrent_streams)
            .layer(ObserveLayer::new(limits.max_request_bytes))
            .layer(StreamLimitLayer::new(&limits))
            .layer(InFlightLayer::new(calls.clone()))
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(invitations)
            .serve_with_incoming_shutdown(
                Incoming::new(self.listener, limits.max_connections).with_tls(self.tls.clone()),
                async {
                    let _ = stopped.await;
                },
            );
        tracing::info!(
            addr = %self.local_addr,
            backend = ?self.store.backend(),
            tls = self.tls.is_some(),
            "serving gRPC"
        );
        let mut server = tokio::spawn(server);
        // Rotated certificates are picked up until the process ends (dropped with it).
        if let Some(tls) = self.tls.clone() {
            background.spawn(tls.watch_files());
        }

        tokio::select! {
            finished = &mut server => {
                if let Some(operations) = &operations {
                    operations.abort();
                }
                reader.abort();
                if let Some(relay) = &relay {
                    relay.abort();
                }
                supervisor.abort();
                janitor.abort();
                sweeper.abort();
                finished??;
                return Ok(Stopped { abandoned_calls: 0 });
            }
            // The database cannot be used and never will be as configured: stop at once, so
            // a rollout fails fast instead of waiting on a replica that stays not ready.
            unusable = &mut supervisor => {
                server.abort();
                if let Some(operations) = &operations {
                    operations.abort();
                }
                reader.abort();
                if let Some(relay) = &relay {
                    relay.abort();
                }
                janitor.abort();
                sweeper.abort();
                self.store.close().await;
                return Err(unusable?.into());
            }
            () = shutdown => {}
        }
        supervisor.abort();
        janitor.abort();
        // A sweep stopped mid-batch rolls back whole; the next process finishes it.
        sweeper.abort();
        health::set_readiness(&reporter, ServingStatus::NotServing).await;
        tracing::info!(
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "shutting down: not ready, still serving"
        );
        tokio::time::sleep(limits.shutdown_grace).await;
        let _ = stop_accepting.send(());
        drain.cancel();
        if let Some(operations) = &operations {
            operations.abort();
        }
        tracing::info!(
            drain_ms = limits.shutdown_drain.as_millis() as u64,
            "shutting down: draining in-flight calls"
        );
        let outcome = match tokio::time::timeout(limits.shutdown_drain, &mut server).await {
            Ok(finished) => finished?
                .map(|()| Stopped { abandoned_calls: 0 })
                .map_err(StartupError::from),
            Err(_) => {
                let abandoned_calls = calls.abandon();
                tracing::warn!(
                    abandoned_calls,
                    "shutting down: drain timeout reached; abandoning the calls still running \
                     (nothing they wrote is committed)"
                );
                server.abort();
                Ok(Stopped { abandoned_calls })
            }
        };
        // The abandoned calls' answers go out first (each on its connection's task). An
        // abandoned call's database connection may still wait for the statement it sent,
        // and the pool would wait for it: the process exits instead, and the connection
        // dies with it.
        let abandoned = matches!(outcome, Ok(Stopped { abandoned_calls }) if abandoned_calls > 0);
        let closed = async {
            calls.settled().await;
            // The relay gives its lease up, so another replica takes over at once.
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            if abandoned {
                match self.store.cancel_running_statements().await {
                    Ok(0) => {}
                    Ok(cancelled) => {
                        tracing::warn!(cancelled, "shutting down: abandoned statements cancelled");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "shutting down: abandoned statements not cancelled");
                    }
                }
            }
            self.store.close().await;
        };
        if tokio::time::timeout(CLOSE_BOUND, closed).await.is_err() {
            tracing::warn!(
                close_bound_ms = CLOSE_BOUND.as_millis() as u64,
                "shutting down: the database pool did not close in time; its connections \
                 close with the process"
            );
        }
        tracing::info!("stopped");
        outcome
    }
}

/// Connections the operations listener holds at once (probes and operators, not clients).
const OPS_MAX_CONNECTIONS: usize = 64;

/// Invitations stored as expired per transaction by the expiry sweeper.
const EXPIRY_SWEEP_BATCH: u64 = 100;

/// Every `every`: the pending invitations past their expiry are stored as expired, each
/// with its `expired` event, a batch per transaction, until none is left or another replica
/// turns out to be the sweeper (`Store::expire_lapsed`). Reads derive EXPIRED by themselves
/// meanwhile, so a row the sweeper has not reached yet reads the same.
async fn sweep_expiries(store: Store, every: std::time::Duration) {
    // The first sweep one interval after start, like every other: not while the process is
    // still migrating and coming up (and a test's fixtures stay as they were stored).
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut expired = 0;
        loop {
            match store
                .expire_lapsed(crate::domain::Timestamp::now(), EXPIRY_SWEEP_BATCH)
                .await
            {
                Ok(Some(batch)) => {
                    expired += batch;
                    if batch < EXPIRY_SWEEP_BATCH {
                        break;
                    }
                }
                Ok(None) => break,
                // Readiness and the health supervisor already say so.
                Err(error @ crate::domain::Error::DatabaseUnavailable(_)) => {
                    tracing::debug!(%error, "expiry sweep skipped");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "expiry sweep failed; the next one retries");
                    break;
                }
            }
        }
        if expired > 0 {
            tracing::info!(expired, "lapsed invitations stored as expired");
        }
    }
}

/// Events deleted per statement by the retention purge.
const EVENT_PURGE_BATCH: u64 = 500;

/// Every few minutes: refreshes SQLite's planner statistics, deletes the stored responses
/// of retried requests past their retention, and the events past theirs (and past the
/// margin that keeps a cursor good for the whole retention: `EVENT_RETENTION_MARGIN`).
async fn housekeeping(store: Store, event_retention: std::time::Duration) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        every.tick().await;
        if let Err(error) = store.optimize().await {
            tracing::debug!(%error, "planner statistics not refreshed");
        }
        match store
            .purge_expired_responses(crate::domain::Timestamp::now())
            .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            Err(error) => tracing::debug!(%error, "idempotency key purge skipped"),
        }
        match store
            .purge_lapsed_events(
                crate::domain::Timestamp::now(),
                event_retention + EVENT_RETENTION_MARGIN,
                EVENT_PURGE_BATCH,
            )
            .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "events past their retention purged"),
            Err(error) => tracing::debug!(%error, "event purge skipped"),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends). The handlers are
/// installed when this is called, not when the future is first awaited: a signal that
/// arrives while the server is still starting is then kept for the shutdown instead of
/// killing the process on the spot.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        async fn received(signal: std::io::Result<Signal>, name: &'static str) {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        }
        let interrupt = received(signal(SignalKind::interrupt()), "SIGINT");
        let terminate = received(signal(SignalKind::terminate()), "SIGTERM");
        async move {
            tokio::select! {
                () = interrupt => tracing::info!("received SIGINT"),
                () = terminate => tracing::info!("received SIGTERM"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
            tracing::info!("received Ctrl-C");
        }
    }
}
