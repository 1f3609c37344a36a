//! The test harness: the real server on an ephemeral port, a fresh database per test, and
//! the generated client.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::config::{Config, Secret, Settings};
use invitations::domain::{
    AuthFailure, CancelReason, EmailAddress, EnterpriseId, Error, Etag, Forbidden, Invitation,
    InvitationId, InvitationRepository as _, InvitationStatus, RoleRef, Scope, StreamLimitScope,
    Timestamp, UserRef, Version, ViolationReason,
};
use invitations::proto::invitations::v1 as wire;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::startup::Application;
use invitations::store::Store;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, TransactionTrait,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
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
    /// PostgreSQL through a pooler in transaction mode: each test's database is made on the
    /// server of `admin_url` and served through the pooler of `pooled_url`.
    PgBouncer {
        admin_url: String,
        pooled_url: String,
    },
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

    /// PostgreSQL through the PgBouncer of `TEST_PGBOUNCER_URL` (any database name: the
    /// pooler forwards every name to the server of `TEST_DATABASE_URL`); skipped like
    /// [`Backend::postgres`] without it.
    pub fn pgbouncer() -> Option<Self> {
        let Self::Postgres(admin_url) = Self::postgres()? else {
            unreachable!("Backend::postgres is PostgreSQL")
        };
        let pooled_url = component_url("TEST_PGBOUNCER_URL")?;
        Some(Self::PgBouncer {
            admin_url,
            pooled_url,
        })
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

/// Two tests, named as given, that run `$body(backend)` on SQLite and on PostgreSQL: for
/// tests that configure their own server.
#[macro_export]
macro_rules! on_each_backend {
    ($body:ident: $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $body($crate::common::Backend::Sqlite).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            if let Some(backend) = $crate::common::Backend::postgres() {
                $body(backend).await;
            }
        }
    };
}

/// The URL of a component a test needs (`TEST_NATS_URL`, `TEST_REDIS_URL`): like
/// PostgreSQL's, the test is skipped without it on a developer's machine, saying so, and
/// fails instead in CI (`CI` set).
pub fn component_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
            panic!("{variable} must be set in CI: its tests are never skipped there")
        }
        _ => {
            eprintln!("skipping: {variable} is not set");
            None
        }
    }
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
    /// The operations listener's address, when the settings asked for one.
    pub ops_addr: Option<std::net::SocketAddr>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
    database: Database_,
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a PostgreSQL URL has a path");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Runs one statement on the PostgreSQL server of `admin_url`, on a connection of its own.
async fn administer(admin_url: &str, statement: &str) {
    let admin = Database::connect(admin_url)
        .await
        .expect("connect to TEST_DATABASE_URL");
    admin
        .execute_unprepared(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    admin.close().await.expect("close the admin connection");
}

/// A new, empty database on the PostgreSQL server of `admin_url`: its name and its URL.
pub async fn create_database(admin_url: &str) -> (String, String) {
    let name = format!("invitations_test_{}", Uuid::new_v4().simple());
    administer(admin_url, &format!("CREATE DATABASE \"{name}\"")).await;
    let url = with_database(admin_url, &name);
    (name, url)
}

/// Drops a database made by [`create_database`], whoever is still connected to it.
pub async fn drop_database(admin_url: &str, name: &str) {
    administer(
        admin_url,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await;
}

/// A server built from settings and serving until told to stop.
struct Running {
    addr: std::net::SocketAddr,
    ops_addr: Option<std::net::SocketAddr>,
    store: Store,
    authenticator: Arc<Authenticator>,
    client: InvitationServiceClient<Channel>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Running {
    async fn start(settings: &Settings, migrate: bool) -> Self {
        let app = Application::build(settings)
            .await
            .expect("the server builds");
        // Migrate before serving, so fixtures can be stored at once; the server's own
        // migration run then finds nothing to do.
        if migrate {
            app.store().migrate().await.expect("migrations apply");
        }
        let addr = app.local_addr();
        let ops_addr = app.ops_addr();
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
        Self {
            addr,
            ops_addr,
            store,
            authenticator,
            client,
            shutdown,
            server,
        }
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
        let transaction_pooling = matches!(backend, Backend::PgBouncer { .. });
        let (url, database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("invitations.db").display());
                (url, Database_::Sqlite(dir))
            }
            Backend::Postgres(admin_url) => {
                let (name, url) = create_database(&admin_url).await;
                (url, Database_::Postgres { admin_url, name })
            }
            Backend::PgBouncer {
                admin_url,
                pooled_url,
            } => {
                let (name, _) = create_database(&admin_url).await;
                let url = with_database(&pooled_url, &name);
                (url, Database_::Postgres { admin_url, name })
            }
        };
        let mut config = Config::defaults();
        config.database_url = url.into();
        config.db_transaction_pooling = transaction_pooling;
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
        // Lapsed fixtures stay as stored (a sweep moves their version, hence their etag);
        // the sweeper's tests set their own interval.
        config.expiry_sweep_ms = 3_600_000;
        customize(&mut config);
        let settings = config.settings().expect("test settings are valid");
        let running = Running::start(&settings, migrate).await;
        let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
        let admin = UserRef::from_uuid(Uuid::new_v4());
        let token = running.authenticator.mint(
            admin,
            Some(enterprise),
            &[ENTERPRISE_ADMIN.to_owned()],
            HOUR,
        );
        Self {
            client: running.client,
            store: running.store,
            authenticator: running.authenticator,
            settings,
            enterprise,
            admin,
            token,
            addr: running.addr,
            ops_addr: running.ops_addr,
            shutdown: running.shutdown,
            server: running.server,
            database,
        }
    }

    /// The name of this app's PostgreSQL database (`None` on SQLite).
    pub fn database_name(&self) -> Option<&str> {
        match &self.database {
            Database_::Sqlite(_) => None,
            Database_::Postgres { name, .. } => Some(name),
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
        let running = Running::start(&self.settings, true).await;
        (running.client, running.shutdown, running.server)
    }

    /// Another server on this app's database, with its settings changed by `adjust`.
    pub async fn replica_with(
        &self,
        adjust: impl FnOnce(&mut Settings),
    ) -> (
        InvitationServiceClient<Channel>,
        oneshot::Sender<()>,
        JoinHandle<()>,
    ) {
        let mut settings = self.settings.clone();
        adjust(&mut settings);
        let running = Running::start(&settings, true).await;
        (running.client, running.shutdown, running.server)
    }

    /// Tells the server to stop (it goes through its grace period and drain), without
    /// waiting; `finish` waits.
    pub fn begin_shutdown(&mut self) {
        let (dummy, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.shutdown, dummy).send(());
    }

    /// Stops the server and drops the test's database.
    pub async fn finish(self) {
        let _ = self.shutdown.send(());
        self.server.await.expect("the server stops cleanly");
        self.store.close().await;
        match self.database {
            Database_::Sqlite(dir) => drop(dir),
            Database_::Postgres { admin_url, name } => drop_database(&admin_url, &name).await,
        }
    }

    pub fn client(&self) -> InvitationServiceClient<Channel> {
        self.client.clone()
    }

    /// This server called with `token`.
    pub fn caller(&self, token: &str) -> Caller {
        Caller::new(self.client(), token)
    }

    /// This server called as this app's admin.
    fn as_admin(&self) -> Caller {
        self.caller(&self.token)
    }

    /// ListInvitations as this app's admin.
    pub async fn list(
        &self,
        request: wire::ListInvitationsRequest,
    ) -> Result<wire::ListInvitationsResponse, Status> {
        self.as_admin().list(request).await
    }

    /// GetInvitation as this app's admin.
    pub async fn get(&self, invitation_id: impl Into<String>) -> Result<wire::Invitation, Status> {
        self.as_admin().get(invitation_id).await
    }

    /// CreateInvitation as this app's admin.
    pub async fn create(
        &self,
        request: wire::CreateInvitationRequest,
    ) -> Result<wire::Invitation, Status> {
        self.as_admin().create(request).await
    }

    /// CancelInvitation as this app's admin.
    pub async fn cancel(
        &self,
        request: wire::CancelInvitationRequest,
    ) -> Result<wire::Invitation, Status> {
        self.as_admin().cancel(request).await
    }

    /// CancelInvitation as this app's admin, in a task of its own (for races).
    pub fn spawn_cancel(
        &self,
        request: wire::CancelInvitationRequest,
    ) -> JoinHandle<Result<wire::Invitation, Status>> {
        self.as_admin().spawn_cancel(request)
    }

    /// IssueInvitationToken as this app's admin.
    pub async fn issue(
        &self,
        request: wire::IssueInvitationTokenRequest,
    ) -> Result<wire::IssueInvitationTokenResponse, Status> {
        self.as_admin().issue(request).await
    }

    /// GetInvitation as this app's admin; the invitation must exist.
    pub async fn fetch(&self, invitation_id: impl Into<String>) -> wire::Invitation {
        self.get(invitation_id).await.expect("get")
    }

    /// The invitation as the store holds it now; it must exist.
    pub async fn stored(&self, id: InvitationId) -> Invitation {
        self.store
            .get(self.enterprise, id)
            .await
            .expect("read")
            .expect("row")
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

    /// A token for another admin of this app's enterprise (another caller, same tenant).
    pub fn colleague(&self) -> String {
        self.authenticator.mint(
            UserRef::from_uuid(Uuid::new_v4()),
            Some(self.enterprise),
            &[ENTERPRISE_ADMIN.to_owned()],
            HOUR,
        )
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

    /// Takes a lock on this app's database with `statement`, in a transaction of a second
    /// connection, and holds it until released.
    pub async fn hold_lock(&self, statement: &str) -> HeldLock {
        let connection = Database::connect(self.settings.store.url.expose())
            .await
            .expect("second connection");
        let transaction = connection.begin().await.expect("begin");
        transaction
            .execute_unprepared(statement)
            .await
            .expect("take the lock");
        HeldLock {
            connection,
            transaction,
        }
    }
}

/// On SQLite: the database's write lock (every writer waits, readers do not).
pub const SQLITE_WRITE_LOCK: &str = "UPDATE invitations SET updated_at = updated_at";

/// A lock held by [`TestApp::hold_lock`].
pub struct HeldLock {
    connection: DatabaseConnection,
    transaction: DatabaseTransaction,
}

impl HeldLock {
    pub async fn release(self) {
        self.transaction.rollback().await.expect("release the lock");
        self.connection.close().await.expect("close");
    }

    /// Runs `statement` in the held transaction.
    pub async fn execute(&self, statement: &str) {
        self.transaction
            .execute_unprepared(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    /// Commits what the held transaction did, and lets go.
    pub async fn commit(self) {
        self.transaction.commit().await.expect("commit");
        self.connection.close().await.expect("close");
    }
}

/// With writes blocked, a cancel of `invitation` that cannot finish, sent again until it holds
/// the call slot that a List probe is then refused for (a probe can take the slot first and
/// get the cancel refused). Returns the stuck cancel, still running, and the probe's refusal.
pub async fn cancel_stuck_in_the_only_slot(
    app: &TestApp,
    invitation: &Invitation,
) -> (StuckCancel, Status) {
    let cancel = || app.spawn_cancel(cancel_as_stored(invitation));
    let mut stuck = cancel();
    for _ in 0..500 {
        if stuck.is_finished() {
            let shed = stuck
                .await
                .expect("task")
                .expect_err("the lock is held: the cancel cannot finish");
            assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
            stuck = cancel();
        }
        match app.list(Default::default()).await {
            Err(status) if status.code() == Code::ResourceExhausted && !stuck.is_finished() => {
                let id = invitation.id;
                return (StuckCancel { task: stuck, id }, status);
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("no call was refused while the stuck cancel held the slot");
}

/// A cancel waiting for a lock ([`cancel_stuck_in_the_only_slot`]).
pub struct StuckCancel {
    task: JoinHandle<Result<wire::Invitation, Status>>,
    id: InvitationId,
}

impl StuckCancel {
    /// Releases `lock`, and asserts that the cancel then completes.
    pub async fn completes_once(self, lock: HeldLock) {
        lock.release().await;
        let cancelled = self
            .task
            .await
            .expect("task")
            .expect("the stuck cancel completes");
        assert_eq!(cancelled.id, self.id.to_string());
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

/// One caller of a server: a client and its bearer token. Each RPC answers its message.
#[derive(Clone)]
pub struct Caller {
    client: InvitationServiceClient<Channel>,
    token: String,
}

impl Caller {
    pub fn new(client: InvitationServiceClient<Channel>, token: impl Into<String>) -> Self {
        Self {
            client,
            token: token.into(),
        }
    }

    pub async fn list(
        &self,
        request: wire::ListInvitationsRequest,
    ) -> Result<wire::ListInvitationsResponse, Status> {
        let request = authorized(&self.token, request);
        let answer = self.client.clone().list_invitations(request).await;
        answer.map(tonic::Response::into_inner)
    }

    pub async fn get(&self, invitation_id: impl Into<String>) -> Result<wire::Invitation, Status> {
        let invitation_id = invitation_id.into();
        let request = authorized(&self.token, wire::GetInvitationRequest { invitation_id });
        let answer = self.client.clone().get_invitation(request).await;
        answer.map(tonic::Response::into_inner)
    }

    pub async fn create(
        &self,
        request: wire::CreateInvitationRequest,
    ) -> Result<wire::Invitation, Status> {
        let request = authorized(&self.token, request);
        let answer = self.client.clone().create_invitation(request).await;
        answer.map(tonic::Response::into_inner)
    }

    pub async fn cancel(
        &self,
        request: wire::CancelInvitationRequest,
    ) -> Result<wire::Invitation, Status> {
        let request = authorized(&self.token, request);
        let answer = self.client.clone().cancel_invitation(request).await;
        answer.map(tonic::Response::into_inner)
    }

    /// CancelInvitation in a task of its own (for races).
    pub fn spawn_cancel(
        &self,
        request: wire::CancelInvitationRequest,
    ) -> JoinHandle<Result<wire::Invitation, Status>> {
        let caller = self.clone();
        tokio::spawn(async move { caller.cancel(request).await })
    }

    pub async fn issue(
        &self,
        request: wire::IssueInvitationTokenRequest,
    ) -> Result<wire::IssueInvitationTokenResponse, Status> {
        let request = authorized(&self.token, request);
        let answer = self.client.clone().issue_invitation_token(request).await;
        answer.map(tonic::Response::into_inner)
    }

    /// AcceptInvitation of the link token `link`.
    pub async fn accept(&self, link: &str) -> Result<wire::Invitation, Status> {
        let token = link.to_owned();
        let request = authorized(&self.token, wire::AcceptInvitationRequest { token });
        let answer = self.client.clone().accept_invitation(request).await;
        answer.map(tonic::Response::into_inner)
    }
}

/// CancelInvitation of `invitation_id` with `etag`, and nothing else.
pub fn cancel_request(
    invitation_id: impl ToString,
    etag: impl Into<String>,
) -> wire::CancelInvitationRequest {
    wire::CancelInvitationRequest {
        invitation_id: invitation_id.to_string(),
        etag: etag.into(),
        ..Default::default()
    }
}

/// CancelInvitation of a stored invitation with the etag it was stored with.
pub fn cancel_as_stored(invitation: &Invitation) -> wire::CancelInvitationRequest {
    cancel_request(invitation.id, invitation.etag().as_str())
}

/// CreateInvitation for `email`, with a new role.
pub fn create_request(email: impl Into<String>) -> wire::CreateInvitationRequest {
    wire::CreateInvitationRequest {
        email_constraint: email.into(),
        role: format!("roles/{}", Uuid::new_v4()),
        ..Default::default()
    }
}

/// IssueInvitationToken for `invitation_id`, with no etag and the default expiry.
pub fn issue_request(invitation_id: impl ToString) -> wire::IssueInvitationTokenRequest {
    wire::IssueInvitationTokenRequest {
        invitation_id: invitation_id.to_string(),
        ..Default::default()
    }
}

/// ListInvitations of the invitations in `statuses`.
pub fn list_request(statuses: &[wire::InvitationStatus]) -> wire::ListInvitationsRequest {
    wire::ListInvitationsRequest {
        statuses: statuses.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    }
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
    pub fn cancelled(email: impl Into<String>) -> Self {
        Self::new(email, InvitationStatus::Cancelled)
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

/// A row of the documented error table (README.md, made from `src/grpc/status.rs`), named by
/// its `ErrorInfo.reason`. A test says which row it expects ([`assert_row`]); what each row is
/// answered with is written once, in [`TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    MissingRequiredField,
    InvalidFormat,
    ValueTooLong,
    ValueOutOfRange,
    InvalidPageToken,
    InvalidCursor,
    EtagConflict,
    RequestIdReused,
    InvalidEncoding,
    Unauthorized,
    TokenExpired,
    TokenInvalid,
    EnterpriseAdminRequired,
    ScopeNotPermitted,
    EmailMismatch,
    EmailNotVerified,
    InvitationTokenInvalid,
    InvitationNotFound,
    StateConflict,
    EtagMismatch,
    NotAdmissible,
    InvitationAlreadyExists,
    RequestTooLarge,
    RateLimited,
    ServerOverloaded,
    CallerConcurrencyLimit,
    StreamLimitReached,
    ResponsesUnread,
    RequestReadTimeout,
    WatchCursorExpired,
    WatchTooSlow,
    ShuttingDown,
    TransactionConflict,
    DatabaseUnavailable,
    UpstreamError,
    Internal,
}

/// The error table as the tests expect it, one line a row: gRPC code, documented HTTP status
/// (metadata `httpStatus`), documented code (metadata `code`), `ErrorInfo.reason`, message.
/// Written out rather than read from the server's table, so that a change there fails a test;
/// `the_expected_rows_are_the_servers_rows` holds the two together.
#[rustfmt::skip]
const TABLE: [(Row, Code, u16, &str, &str, &str); 36] = [
    (Row::MissingRequiredField, Code::InvalidArgument, 400, "invalid_request", "MISSING_REQUIRED_FIELD", "A required field is missing or invalid"),
    (Row::InvalidFormat, Code::InvalidArgument, 400, "invalid_request", "INVALID_FORMAT", "The request is invalid."),
    (Row::ValueTooLong, Code::InvalidArgument, 400, "invalid_request", "VALUE_TOO_LONG", "The request is invalid."),
    (Row::ValueOutOfRange, Code::InvalidArgument, 400, "invalid_request", "VALUE_OUT_OF_RANGE", "The request is invalid."),
    (Row::InvalidPageToken, Code::InvalidArgument, 400, "invalid_request", "INVALID_PAGE_TOKEN", "The request is invalid."),
    (Row::InvalidCursor, Code::InvalidArgument, 400, "invalid_request", "INVALID_CURSOR", "The request is invalid."),
    (Row::EtagConflict, Code::InvalidArgument, 400, "invalid_request", "ETAG_CONFLICT", "The request is invalid."),
    (Row::RequestIdReused, Code::InvalidArgument, 400, "invalid_request", "REQUEST_ID_REUSED", "The request is invalid."),
    (Row::InvalidEncoding, Code::InvalidArgument, 400, "invalid_request", "INVALID_ENCODING", "The request is invalid."),
    (Row::Unauthorized, Code::Unauthenticated, 401, "unauthorized", "UNAUTHORIZED", "Authentication required."),
    (Row::TokenExpired, Code::Unauthenticated, 401, "unauthorized", "TOKEN_EXPIRED", "Authentication required."),
    (Row::TokenInvalid, Code::Unauthenticated, 401, "unauthorized", "TOKEN_INVALID", "Authentication required."),
    (Row::EnterpriseAdminRequired, Code::PermissionDenied, 403, "forbidden_capability_scope", "ENTERPRISE_ADMIN_REQUIRED", "Enterprise admin capability required"),
    (Row::ScopeNotPermitted, Code::PermissionDenied, 403, "forbidden_capability_scope", "SCOPE_NOT_PERMITTED", "The requested scope is outside the caller's enterprise"),
    (Row::EmailMismatch, Code::PermissionDenied, 403, "email_mismatch", "EMAIL_MISMATCH", "The invitation is for another e-mail address."),
    (Row::EmailNotVerified, Code::PermissionDenied, 403, "email_not_verified", "EMAIL_NOT_VERIFIED", "A verified e-mail address is required to accept an invitation."),
    (Row::InvitationTokenInvalid, Code::NotFound, 404, "invitation_token_invalid", "INVITATION_TOKEN_INVALID", "The invitation link is not valid."),
    (Row::InvitationNotFound, Code::NotFound, 404, "not_found", "INVITATION_NOT_FOUND", "Invitation not found."),
    (Row::StateConflict, Code::FailedPrecondition, 409, "state_conflict", "STATE_CONFLICT", "The request cannot be applied to the current resource state."),
    (Row::EtagMismatch, Code::Aborted, 412, "precondition_failed", "ETAG_MISMATCH", "The If-Match value does not match the current ETag"),
    (Row::NotAdmissible, Code::FailedPrecondition, 422, "not_admissible", "NOT_ADMISSIBLE", "The operation is not admissible in the current state."),
    (Row::InvitationAlreadyExists, Code::AlreadyExists, 409, "already_exists", "INVITATION_ALREADY_EXISTS", "A pending invitation for this address already exists."),
    (Row::RequestTooLarge, Code::OutOfRange, 413, "payload_too_large", "REQUEST_TOO_LARGE", "The request is too large."),
    (Row::RateLimited, Code::ResourceExhausted, 429, "rate_limited", "RATE_LIMITED", "Too many requests."),
    (Row::ServerOverloaded, Code::ResourceExhausted, 429, "rate_limited", "SERVER_OVERLOADED", "Too many requests."),
    (Row::CallerConcurrencyLimit, Code::ResourceExhausted, 429, "rate_limited", "CALLER_CONCURRENCY_LIMIT", "Too many requests."),
    (Row::StreamLimitReached, Code::ResourceExhausted, 429, "rate_limited", "STREAM_LIMIT_REACHED", "Too many requests."),
    (Row::ResponsesUnread, Code::ResourceExhausted, 429, "rate_limited", "RESPONSES_UNREAD", "Too many requests."),
    (Row::RequestReadTimeout, Code::DeadlineExceeded, 408, "request_timeout", "REQUEST_READ_TIMEOUT", "The request was not received in time."),
    (Row::WatchCursorExpired, Code::FailedPrecondition, 410, "gone", "WATCH_CURSOR_EXPIRED", "The watch cursor has expired."),
    (Row::WatchTooSlow, Code::ResourceExhausted, 429, "rate_limited", "WATCH_TOO_SLOW", "The watch fell behind its events; resume from resumeCursor."),
    (Row::ShuttingDown, Code::Unavailable, 503, "temporarily_unavailable", "SHUTTING_DOWN", "The server stopped before the request finished; retry it."),
    (Row::TransactionConflict, Code::Aborted, 409, "state_conflict", "TRANSACTION_CONFLICT", "The request conflicted with a concurrent one; retry it."),
    (Row::DatabaseUnavailable, Code::Unavailable, 503, "temporarily_unavailable", "DATABASE_UNAVAILABLE", "A downstream service is temporarily unavailable"),
    (Row::UpstreamError, Code::Unavailable, 502, "upstream_error", "UPSTREAM_ERROR", "An upstream service returned an unexpected error."),
    (Row::Internal, Code::Internal, 500, "internal_error", "INTERNAL", "Internal error."),
];

/// What a client reads of a row: code, HTTP status, documented code, reason and message.
type Expected = (Code, u16, &'static str, &'static str, &'static str);

impl Row {
    fn expected(self) -> Expected {
        let line = TABLE.iter().find(|line| line.0 == self);
        let (_, code, http_status, documented_code, reason, message) =
            *line.unwrap_or_else(|| panic!("{self:?} is in TABLE"));
        (code, http_status, documented_code, reason, message)
    }

    /// `ErrorInfo.reason` (and `FieldViolation.reason`, for the 400 rows).
    pub fn reason(self) -> &'static str {
        self.expected().3
    }

    /// A domain error that the server's table answers with this row.
    fn example(self) -> Error {
        let id = InvitationId::generate();
        let etag = Etag::of(id, Version::FIRST);
        let cause = || Box::<dyn std::error::Error + Send + Sync>::from("cause");
        let invalid = |reason| Error::invalid("field", reason, "why");
        match self {
            Row::MissingRequiredField => invalid(ViolationReason::MissingRequiredField),
            Row::InvalidFormat => invalid(ViolationReason::InvalidFormat),
            Row::ValueTooLong => invalid(ViolationReason::ValueTooLong),
            Row::ValueOutOfRange => invalid(ViolationReason::ValueOutOfRange),
            Row::InvalidPageToken => invalid(ViolationReason::InvalidPageToken),
            Row::InvalidCursor => invalid(ViolationReason::InvalidCursor),
            Row::EtagConflict => invalid(ViolationReason::EtagConflict),
            Row::RequestIdReused => invalid(ViolationReason::RequestIdReused),
            Row::InvalidEncoding => invalid(ViolationReason::InvalidEncoding),
            Row::Unauthorized => Error::Unauthenticated(AuthFailure::Missing),
            Row::TokenExpired => Error::Unauthenticated(AuthFailure::Expired),
            Row::TokenInvalid => Error::Unauthenticated(AuthFailure::Invalid),
            Row::EnterpriseAdminRequired => {
                Error::PermissionDenied(Forbidden::EnterpriseAdminRequired)
            }
            Row::ScopeNotPermitted => Error::PermissionDenied(Forbidden::ScopeNotPermitted),
            Row::EmailMismatch => Error::PermissionDenied(Forbidden::EmailMismatch),
            Row::EmailNotVerified => Error::PermissionDenied(Forbidden::EmailNotVerified),
            Row::InvitationTokenInvalid => Error::InvitationTokenInvalid,
            Row::InvitationNotFound => Error::InvitationNotFound(id),
            Row::StateConflict => Error::StateConflict {
                id,
                current_status: InvitationStatus::Cancelled,
                etag,
            },
            Row::EtagMismatch => Error::EtagMismatch {
                id,
                current: etag,
                requested: "W/\"0.x\"".into(),
            },
            Row::NotAdmissible => Error::NotAdmissible {
                id,
                current_status: InvitationStatus::Accepted,
                etag,
            },
            Row::InvitationAlreadyExists => Error::InvitationAlreadyExists { existing: id },
            Row::RequestTooLarge => Error::RequestTooLarge { limit: 65536 },
            Row::RateLimited => Error::RateLimited {
                retry_after: Duration::from_millis(20),
            },
            Row::ServerOverloaded => Error::Overloaded,
            Row::CallerConcurrencyLimit => Error::CallerOverloaded { limit: 1 },
            Row::StreamLimitReached => Error::StreamLimit {
                scope: StreamLimitScope::Connection,
                limit: 16,
            },
            Row::ResponsesUnread => Error::ResponsesUnread { limit: 4096 },
            Row::RequestReadTimeout => Error::RequestReadTimeout {
                timeout: Duration::from_secs(2),
            },
            Row::WatchCursorExpired => Error::WatchCursorExpired {
                retention: std::time::Duration::from_secs(60),
            },
            Row::WatchTooSlow => Error::WatchTooSlow {
                resume_cursor: "cursor".into(),
                buffer: 8,
            },
            Row::ShuttingDown => Error::ShuttingDown,
            Row::TransactionConflict => Error::TransactionConflict(cause()),
            Row::DatabaseUnavailable => Error::DatabaseUnavailable(cause()),
            Row::UpstreamError => Error::Upstream(cause()),
            Row::Internal => Error::Internal("bug".into()),
        }
    }
}

/// The kinds of details a status or a row carries, besides `ErrorInfo`.
fn detail_kinds(details: &ErrorDetails) -> Vec<&'static str> {
    [
        ("RetryInfo", details.retry_info().is_some()),
        ("DebugInfo", details.debug_info().is_some()),
        ("QuotaFailure", details.quota_failure().is_some()),
        (
            "PreconditionFailure",
            details.precondition_failure().is_some(),
        ),
        ("BadRequest", details.bad_request().is_some()),
        ("RequestInfo", details.request_info().is_some()),
        ("ResourceInfo", details.resource_info().is_some()),
        ("Help", details.help().is_some()),
        ("LocalizedMessage", details.localized_message().is_some()),
    ]
    .into_iter()
    .filter_map(|(kind, present)| present.then_some(kind))
    .collect()
}

/// Asserts that `status` is `row` of the error table, as a client reads it: the code, the
/// message, `ErrorInfo` (reason, domain, documented code and HTTP status), the metadata keys
/// and the kinds of details the row has. Returns the metadata particular to the row (without
/// `code` and `httpStatus`), for the test to check its values.
#[track_caller]
pub fn assert_row(status: &Status, row: Row) -> HashMap<String, String> {
    let (code, http_status, documented_code, reason, message) = row.expected();
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("ErrorInfo in {status:?}"));
    assert_eq!(
        (status.code(), info.reason.as_str(), status.message()),
        (code, reason, message),
        "{row:?}: {status:?}"
    );
    assert_eq!(info.domain, invitations::grpc::status::ERROR_DOMAIN);
    let mut metadata = info.metadata;
    assert_eq!(
        (metadata.remove("code"), metadata.remove("httpStatus")),
        (
            Some(documented_code.to_owned()),
            Some(http_status.to_string())
        ),
        "{row:?}: {status:?}"
    );
    // The metadata keys and detail kinds are the README's "more details" column.
    let table = invitations::grpc::status::row(&row.example());
    let mut keys: Vec<&String> = metadata.keys().collect();
    let mut wanted: Vec<&String> = table.metadata.keys().collect();
    keys.sort();
    wanted.sort();
    assert_eq!(keys, wanted, "metadata of {row:?}: {status:?}");
    assert_eq!(
        detail_kinds(&status.get_error_details()),
        detail_kinds(&table.details),
        "details of {row:?}: {status:?}"
    );
    metadata
}

/// Asserts an INVALID_ARGUMENT that names exactly these fields, in this order, each with the
/// reason of its row; the first one's is the status's row.
#[track_caller]
pub fn assert_invalid(status: &Status, fields: &[(&str, Row)]) {
    let first = fields.first().expect("at least one field").1;
    assert_row(status, first);
    let expected: Vec<(String, String)> = fields
        .iter()
        .map(|(field, row)| ((*field).to_owned(), row.reason().to_owned()))
        .collect();
    assert_eq!(violations(status), expected, "{status:?}");
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

/// The rows the tests expect are the rows the server answers with, and each is named once.
#[test]
fn the_expected_rows_are_the_servers_rows() {
    for (row, ..) in TABLE {
        let answer = invitations::grpc::status::row(&row.example());
        assert_eq!(
            (
                answer.code,
                answer.http_status,
                answer.documented_code,
                answer.reason,
                answer.message,
            ),
            row.expected(),
            "{row:?}"
        );
        let named = TABLE.iter().filter(|line| line.0 == row).count();
        assert_eq!(named, 1, "{row:?} has one line");
    }
}
