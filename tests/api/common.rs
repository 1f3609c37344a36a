//! The test harness: the real server on an ephemeral port, a fresh database per test, and
//! the generated client.
use std::sync::Arc;
use std::time::Duration;

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::config::{Config, Secret, Settings};
use invitations::domain::{
    CancelReason, EmailAddress, EnterpriseId, Invitation, InvitationId, InvitationStatus, RoleRef,
    Scope, Timestamp, UserRef, Version,
};
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::startup::Application;
use invitations::store::Store;
use sea_orm::{ConnectionTrait, Database};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

pub const JWT_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
pub const ISSUER: &str = "invitations-tests";
pub const AUDIENCE: &str = "invitations";
pub const HOUR: Duration = Duration::from_secs(3600);

/// Which store a test runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// The URL of a server where each test creates (and drops) its own database.
    Postgres(String),
}

impl Backend {
    /// PostgreSQL from `TEST_DATABASE_URL`. Without it the test is skipped, saying so, on a
    /// developer's machine; in CI (`CI` set) a missing URL fails the test instead.
    pub fn postgres() -> Option<Self> {
        match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(Self::Postgres(url)),
            _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
                panic!(
                    "TEST_DATABASE_URL must be set in CI: PostgreSQL tests are never skipped there"
                )
            }
            _ => {
                eprintln!("skipping the PostgreSQL variant: TEST_DATABASE_URL is not set");
                None
            }
        }
    }
}

/// Runs each named `async fn(&TestApp)` against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::common::TestApp::spawn($crate::common::Backend::Sqlite).await;
                    super::$name(&app).await;
                    app.finish().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(backend) = $crate::common::Backend::postgres() {
                        let app = $crate::common::TestApp::spawn(backend).await;
                        super::$name(&app).await;
                        app.finish().await;
                    }
                }
            }
        )*
    };
}

/// Where a test's database lives, and how to get rid of it.
enum Database_ {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

/// One running server with its own database, and an enterprise admin to call it as.
pub struct TestApp {
    pub client: InvitationServiceClient<Channel>,
    pub store: Store,
    pub authenticator: Arc<Authenticator>,
    pub settings: Settings,
    pub enterprise: EnterpriseId,
    pub admin: UserRef,
    pub token: String,
    pub addr: std::net::SocketAddr,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
    database: Database_,
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a PostgreSQL URL has a path");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_configured(backend, |_| {}).await
    }

    /// Like `spawn`, with some settings changed.
    pub async fn spawn_configured(backend: Backend, customize: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_inner(backend, customize, true).await
    }

    /// Like `spawn_configured`, but the server migrates by itself once its database answers,
    /// as `serve` does.
    pub async fn spawn_unmigrated(backend: Backend, customize: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_inner(backend, customize, false).await
    }

    async fn spawn_inner(
        backend: Backend,
        customize: impl FnOnce(&mut Config),
        migrate: bool,
    ) -> Self {
        let (url, database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("invitations.db").display());
                (url, Database_::Sqlite(dir))
            }
            Backend::Postgres(admin_url) => {
                let name = format!("invitations_test_{}", Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create the test database");
                admin.close().await.expect("close the admin connection");
                (
                    with_database(&admin_url, &name),
                    Database_::Postgres { admin_url, name },
                )
            }
        };
        let mut config = Config::defaults();
        config.database_url = url.into();
        config.listen_addr = "127.0.0.1:0".parse().expect("address");
        config.jwt_hs256_secret = Some(Secret::new(JWT_SECRET));
        config.jwt_issuer = ISSUER.into();
        config.jwt_audience = AUDIENCE.into();
        config.page_token_secret = Some(Secret::new("page-token-secret-of-at-least-32-bytes"));
        config.db_max_connections = 8;
        config.db_acquire_timeout_ms = 5000;
        config.health_interval_ms = 100;
        config.shutdown_grace_ms = 0;
        config.shutdown_drain_ms = 5000;
        // Most tests make many calls quickly; the rate-limit test turns it on.
        config.rate_limit_per_second = 0;
        customize(&mut config);
        let settings = config.settings().expect("test settings are valid");
        Self::spawn_with(settings, database, migrate).await
    }

    async fn spawn_with(settings: Settings, database: Database_, migrate: bool) -> Self {
        let app = Application::build(&settings)
            .await
            .expect("the server builds");
        // Migrate before serving, so fixtures can be stored at once; the server's own
        // migration run then finds nothing to do.
        if migrate {
            app.store().migrate().await.expect("migrations apply");
        }
        let addr = app.local_addr();
        let store = app.store().clone();
        let authenticator = app.authenticator();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("the server runs");
        });
        // The listener is bound already, so connecting needs no wait.
        let client = InvitationServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the server");
        let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
        let admin = UserRef::from_uuid(Uuid::new_v4());
        let token = authenticator.mint(
            admin,
            Some(enterprise),
            &[ENTERPRISE_ADMIN.to_owned()],
            HOUR,
        );
        Self {
            client,
            store,
            authenticator,
            settings,
            enterprise,
            admin,
            token,
            addr,
            shutdown,
            server,
            database,
        }
    }

    /// A second server (a replica) over the same database and configuration.
    pub async fn replica(
        &self,
    ) -> (
        InvitationServiceClient<Channel>,
        oneshot::Sender<()>,
        JoinHandle<()>,
    ) {
        let app = Application::build(&self.settings)
            .await
            .expect("the replica builds");
        app.store().migrate().await.expect("migrations apply");
        let addr = app.local_addr();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("the replica runs");
        });
        let client = InvitationServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        (client, shutdown, server)
    }

    /// Stops the server and drops the test's database.
    pub async fn finish(self) {
        let _ = self.shutdown.send(());
        self.server.await.expect("the server stops cleanly");
        self.store.close().await;
        match self.database {
            Database_::Sqlite(dir) => drop(dir),
            Database_::Postgres { admin_url, name } => {
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .expect("drop the test database");
                admin.close().await.expect("close the admin connection");
            }
        }
    }

    pub fn client(&self) -> InvitationServiceClient<Channel> {
        self.client.clone()
    }

    /// GetInvitation as this app's admin; the invitation must exist.
    pub async fn fetch(
        &self,
        invitation_id: impl Into<String>,
    ) -> invitations::proto::invitations::v1::Invitation {
        let request = invitations::proto::invitations::v1::GetInvitationRequest {
            invitation_id: invitation_id.into(),
        };
        self.client()
            .get_invitation(self.request(request))
            .await
            .expect("get")
            .into_inner()
    }

    /// A request carrying this app's admin token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        authorized(&self.token, message)
    }

    /// A token for an admin of another enterprise, and that enterprise.
    pub fn other_enterprise_admin(&self) -> (EnterpriseId, String) {
        let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
        let token = self.authenticator.mint(
            UserRef::from_uuid(Uuid::new_v4()),
            Some(enterprise),
            &[ENTERPRISE_ADMIN.to_owned()],
            HOUR,
        );
        (enterprise, token)
    }

    /// Stores an invitation of this app's enterprise directly, in any state.
    pub async fn insert(&self, fixture: Fixture) -> Invitation {
        self.insert_in(self.enterprise, fixture).await
    }

    pub async fn insert_in(&self, enterprise: EnterpriseId, fixture: Fixture) -> Invitation {
        let invitation = fixture.build(enterprise, self.admin);
        self.store
            .insert_raw(&invitation)
            .await
            .expect("insert fixture");
        invitation
    }
}

pub fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// An invitation to store directly: `Fixture::pending("a@x.example")` and friends.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub email: String,
    pub status: InvitationStatus,
    /// Stored as pending with `expires_at` in the past (reported as expired).
    pub lapsed: bool,
    pub created_at: Timestamp,
    pub scope: Option<String>,
}

impl Fixture {
    pub fn new(email: impl Into<String>, status: InvitationStatus) -> Self {
        // An hour ago, so a lapsed fixture (expiring a second after creation) has lapsed.
        let created_at = Timestamp::now().saturating_sub(HOUR);
        Self {
            email: email.into(),
            status,
            lapsed: false,
            created_at,
            scope: None,
        }
    }
    pub fn pending(email: impl Into<String>) -> Self {
        Self::new(email, InvitationStatus::Pending)
    }
    /// Pending in the store, but past `expires_at`.
    pub fn lapsed(email: impl Into<String>) -> Self {
        Self {
            lapsed: true,
            ..Self::new(email, InvitationStatus::Pending)
        }
    }
    pub fn created_at(mut self, at: Timestamp) -> Self {
        self.created_at = at;
        self
    }
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    fn build(self, enterprise: EnterpriseId, admin: UserRef) -> Invitation {
        let changed = self.created_at.saturating_add(Duration::from_secs(60));
        let moved = self.status != InvitationStatus::Pending;
        Invitation {
            id: InvitationId::generate(),
            enterprise,
            scope: match self.scope {
                Some(raw) => Scope::parse(&raw).expect("fixture scope"),
                None => Scope::enterprise_root(enterprise),
            },
            email: EmailAddress::parse(&self.email).expect("fixture address"),
            role: RoleRef::from_uuid(Uuid::new_v4()),
            stored_status: self.status,
            invited_by: admin,
            pending_human_actor: None,
            challenge_ref: None,
            created_at: self.created_at,
            updated_at: if moved { changed } else { self.created_at },
            expires_at: if self.lapsed || self.status == InvitationStatus::Expired {
                self.created_at.saturating_add(Duration::from_secs(1))
            } else {
                Timestamp::now().saturating_add(HOUR * 24)
            },
            accepted_at: (self.status == InvitationStatus::Accepted).then_some(changed),
            accepted_by: (self.status == InvitationStatus::Accepted)
                .then(|| UserRef::from_uuid(Uuid::new_v4())),
            cancelled_at: (self.status == InvitationStatus::Cancelled).then_some(changed),
            cancel_reason: (self.status == InvitationStatus::Cancelled)
                .then(|| CancelReason::parse("fixture").ok().flatten())
                .flatten(),
            cancelled_by: (self.status == InvitationStatus::Cancelled).then_some(admin),
            version: if moved {
                Version::FIRST.next()
            } else {
                Version::FIRST
            },
        }
    }
}

/// Asserts the parts of an error every row of the table has, and returns its metadata.
pub fn assert_error(
    status: &Status,
    code: Code,
    reason: &str,
    documented_code: &str,
    http_status: u16,
) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), code, "code of {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "reason of {status:?}");
    assert_eq!(info.domain, invitations::grpc::status::ERROR_DOMAIN);
    assert_eq!(
        info.metadata.get("code").map(String::as_str),
        Some(documented_code),
        "{status:?}"
    );
    assert_eq!(
        info.metadata.get("httpStatus"),
        Some(&http_status.to_string()),
        "{status:?}"
    );
    info.metadata
}

/// The fields named by a BadRequest, with their reasons.
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("BadRequest in {status:?}"))
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.reason))
        .collect()
}
