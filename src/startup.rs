//! Builds the server from settings: connects and migrates the store, binds the listener,
//! and wires health, reflection and the authenticated invitations service. Tests build the
//! same [`Application`] on port 0.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{AuthInterceptor, Authenticator};
use crate::config::Settings;
use crate::domain::{InvitationService, PageTokenCodec};
use crate::grpc::InvitationApi;
use crate::proto::invitations::v1::invitation_service_server::InvitationServiceServer;
use crate::store::Store;

/// The health entry of the invitations service (readiness), besides `""`.
pub const SERVICE_HEALTH_NAME: &str = "invitations.v1.InvitationService";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sea_orm::DbErr),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] sea_orm::DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A server that is bound and whose store is migrated, ready to serve.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Store,
    authenticator: Arc<Authenticator>,
    page_tokens: PageTokenCodec,
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let store = Store::connect(&settings.store)
            .await
            .map_err(StartupError::Connect)?;
        store.migrate().await.map_err(StartupError::Migrate)?;
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
        let authenticator = Arc::new(Authenticator::hs256(
            settings.jwt.hs256_secret.expose(),
            &settings.jwt.issuer,
            &settings.jwt.audience,
        ));
        Ok(Self {
            listener,
            local_addr,
            store,
            authenticator,
            page_tokens: PageTokenCodec::new(settings.page_token_secret.expose()),
        })
    }

    /// The bound address (the real port when the settings asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight calls end.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_readiness(&health, ServingStatus::Serving).await;

        // Both reflection versions: grpcurl 1.8.7 and older speak only v1alpha. The error
        // detail and health types are registered so grpcurl can decode them.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let api = InvitationApi::new(InvitationService::new(
            self.store.clone(),
            self.page_tokens.clone(),
        ));
        let invitations = InterceptedService::new(
            InvitationServiceServer::new(api),
            AuthInterceptor::new(self.authenticator.clone()),
        );

        tracing::info!(addr = %self.local_addr, backend = ?self.store.backend(), "serving gRPC");
        Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(invitations)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), async {
                shutdown.await;
                set_readiness(&health, ServingStatus::NotServing).await;
                tracing::info!("shutting down: no new calls accepted");
            })
            .await?;
        Ok(())
    }
}

async fn set_readiness(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_HEALTH_NAME, status).await;
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
