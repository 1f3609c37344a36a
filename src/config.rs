//! Every setting: a flag, an environment variable, a default and the doc comment `--help`
//! shows. Bad settings fail at start with a one-line reason.
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::MIN_SECRET_LEN;
use crate::health::HealthSettings;
use crate::store::StoreSettings;

pub use crate::secret::{DatabaseUrl, Secret};

pub const DEFAULT_DATABASE_URL: &str = "sqlite://invitations.db";
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:50051";

/// One value of `INVITATIONS_STORE_ACCELERATORS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreAccelerator {
    All,
    None,
    KeptConnections,
    SqliteReader,
    RenderedStatements,
}

fn accelerators(chosen: &[StoreAccelerator]) -> crate::store::Accelerators {
    let mut accelerators = crate::store::Accelerators::NONE;
    for accelerator in chosen {
        match accelerator {
            StoreAccelerator::All => accelerators = crate::store::Accelerators::default(),
            StoreAccelerator::None => {}
            StoreAccelerator::KeptConnections => accelerators.kept_connections = true,
            StoreAccelerator::SqliteReader => accelerators.sqlite_reader = true,
            StoreAccelerator::RenderedStatements => accelerators.rendered_statements = true,
        }
    }
    accelerators
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Invitations gRPC service: lists and cancels user invitations under an enterprise scope.
#[derive(Debug, Parser)]
#[command(name = "invitations", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Start on a fresh SQLite database with a demo enterprise, and print a bearer token and
    /// grpcurl commands to try.
    Dev,
    /// Ask a running server's gRPC health service; exit 0 only if the entry is SERVING.
    /// For container health checks where no grpc_health_probe is installed.
    HealthCheck {
        /// Address to ask; defaults to the operations address if set, else the listen address
        /// (0.0.0.0 is asked on 127.0.0.1).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Health entry: `invitations.v1.InvitationService` (readiness) or `liveness`.
        #[arg(long, default_value = "invitations.v1.InvitationService")]
        service: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Ask over TLS, trusting the CA certificates of this PEM file (for a gRPC port with
        /// INVITATIONS_TLS_*; the operations port is plaintext and needs none).
        #[arg(long)]
        cacert: Option<std::path::PathBuf>,
        /// With --cacert: the name the server's certificate must be issued to.
        #[arg(long, default_value = "localhost", requires = "cacert")]
        tls_server_name: String,
        /// With --cacert: a client certificate (PEM) to present, for a port that requires one.
        #[arg(long, requires_all = ["cacert", "key"])]
        cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --cert.
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
    },
    /// Print a bearer token signed with the configured secret.
    MintToken {
        /// `users/{uuid}` of the caller; a random user when omitted.
        #[arg(long)]
        sub: Option<String>,
        /// `enterprises/{uuid}` the caller administers.
        #[arg(long)]
        enterprise: Option<String>,
        /// Capabilities to grant (repeatable).
        #[arg(long = "capability", default_values_t = [crate::auth::ENTERPRISE_ADMIN.to_owned()])]
        capabilities: Vec<String>,
        /// Lifetime of the token in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Database: `sqlite://FILE` (embedded, created if missing) or `postgres://USER@HOST/DB`.
    /// (The value is never shown by `--help`: it may hold a password.)
    #[arg(help_heading = "Database", long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, global = true)]
    pub database_url: DatabaseUrl,

    /// A file holding the database URL (as Kubernetes mounts secrets), instead of
    /// DATABASE_URL.
    #[arg(
        help_heading = "Database",
        long,
        env = "DATABASE_URL_FILE",
        global = true
    )]
    pub database_url_file: Option<std::path::PathBuf>,

    /// A file holding the database password, put into DATABASE_URL (which then has none) and
    /// into INVITATIONS_DB_LISTEN_URL when that names a user without a password.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_DATABASE_PASSWORD_FILE",
        global = true
    )]
    pub database_password_file: Option<std::path::PathBuf>,

    /// Address the gRPC server listens on.
    #[arg(help_heading = "Server", long, env = "INVITATIONS_LISTEN_ADDR", default_value = DEFAULT_LISTEN_ADDR, global = true)]
    pub listen_addr: SocketAddr,

    /// A second, plaintext address that serves only operations: gRPC health (for probes
    /// that speak no TLS, and for `invitations health-check`). Off when unset.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_OPS_LISTEN_ADDR",
        global = true
    )]
    pub ops_listen_addr: Option<SocketAddr>,

    /// A PEM certificate chain: the gRPC listener speaks TLS with it (with
    /// INVITATIONS_TLS_KEY_PATH). Re-read when it changes.
    #[arg(
        help_heading = "TLS",
        long,
        env = "INVITATIONS_TLS_CERT_PATH",
        global = true
    )]
    pub tls_cert_path: Option<std::path::PathBuf>,

    /// The PEM private key of INVITATIONS_TLS_CERT_PATH. Re-read when it changes.
    #[arg(
        help_heading = "TLS",
        long,
        env = "INVITATIONS_TLS_KEY_PATH",
        global = true
    )]
    pub tls_key_path: Option<std::path::PathBuf>,

    /// PEM CA certificates: clients must present a certificate signed by one of them (mTLS),
    /// besides their bearer token. Re-read when it changes.
    #[arg(
        help_heading = "TLS",
        long,
        env = "INVITATIONS_TLS_CLIENT_CA_PATH",
        global = true
    )]
    pub tls_client_ca_path: Option<std::path::PathBuf>,

    /// Milliseconds between two looks at the TLS files for changes.
    #[arg(
        help_heading = "TLS",
        long,
        env = "INVITATIONS_TLS_RELOAD_MS",
        default_value_t = 1000,
        global = true
    )]
    pub tls_reload_ms: u64,

    /// HS256 secret that signs bearer tokens: at least 32 bytes. Required, except by `dev`,
    /// which makes one up.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_JWT_HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_hs256_secret: Option<Secret>,

    /// A file holding the HS256 secret, instead of INVITATIONS_JWT_HS256_SECRET.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_JWT_HS256_SECRET_FILE",
        global = true
    )]
    pub jwt_hs256_secret_file: Option<std::path::PathBuf>,

    /// A JWKS file of EdDSA (Ed25519) and RS256 public keys that also verify bearer tokens,
    /// by `kid`; each key must name its `alg`. Re-read when it changes.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_JWT_JWKS_PATH",
        global = true
    )]
    pub jwt_jwks_path: Option<std::path::PathBuf>,

    /// Milliseconds between two looks at the JWKS file for changes.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_JWT_JWKS_RELOAD_MS",
        default_value_t = 1000,
        global = true
    )]
    pub jwt_jwks_reload_ms: u64,

    /// Expected `iss` of bearer tokens.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_JWT_ISSUER",
        default_value = "invitations",
        global = true
    )]
    pub jwt_issuer: String,

    /// Expected `aud` of bearer tokens.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_JWT_AUDIENCE",
        default_value = "invitations",
        global = true
    )]
    pub jwt_audience: String,

    /// Key that signs page tokens: at least 32 bytes. Every replica must share it. Derived
    /// from the JWT secret when unset.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_PAGE_TOKEN_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub page_token_secret: Option<Secret>,

    /// A file holding the page-token key, instead of INVITATIONS_PAGE_TOKEN_SECRET.
    #[arg(
        help_heading = "Auth",
        long,
        env = "INVITATIONS_PAGE_TOKEN_SECRET_FILE",
        global = true
    )]
    pub page_token_secret_file: Option<std::path::PathBuf>,

    /// Largest number of database connections in the pool.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

    /// Milliseconds a request waits for a database connection before it is answered UNAVAILABLE.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 2000,
        global = true
    )]
    pub db_acquire_timeout_ms: u64,

    /// `true` when DATABASE_URL leads to a pooler in transaction mode (PgBouncer 1.21 or later,
    /// `pool_mode = transaction`, `max_prepared_statements` above 0): no session settings are
    /// sent when connecting (set them on the role instead: README "Scaling out"), and LISTEN
    /// uses INVITATIONS_DB_LISTEN_URL, without which other replicas' events are found by polling.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_DB_TRANSACTION_POOLING",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub db_transaction_pooling: bool,

    /// A PostgreSQL URL that keeps its session (the server itself, or a session-mode database
    /// of the pooler) for the connection that LISTENs for other replicas' events; by default
    /// DATABASE_URL, unless INVITATIONS_DB_TRANSACTION_POOLING is on.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_DB_LISTEN_URL",
        hide_env_values = true,
        global = true
    )]
    pub db_listen_url: Option<DatabaseUrl>,

    /// A file holding INVITATIONS_DB_LISTEN_URL (with its password).
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_DB_LISTEN_URL_FILE",
        global = true
    )]
    pub db_listen_url_file: Option<std::path::PathBuf>,

    /// Milliseconds a SQLite writer waits for the write lock.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_SQLITE_BUSY_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub sqlite_busy_timeout_ms: u64,

    /// What a SQLite commit waits for: `full` (on disk before the answer; survives a power
    /// loss) or `normal` (fewer fsyncs; the last commits can be lost if the machine, not
    /// the process, crashes).
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value_t = crate::store::SqliteSync::Full,
        global = true
    )]
    pub sqlite_synchronous: crate::store::SqliteSync,

    /// Milliseconds between two database health checks.
    #[arg(
        help_heading = "Health",
        long,
        env = "INVITATIONS_HEALTH_INTERVAL_MS",
        default_value_t = 1000,
        global = true
    )]
    pub health_interval_ms: u64,

    /// Failed health checks in a row before readiness turns NOT_SERVING.
    #[arg(
        help_heading = "Health",
        long,
        env = "INVITATIONS_HEALTH_FAILURE_THRESHOLD",
        default_value_t = 3,
        global = true
    )]
    pub health_failure_threshold: u32,

    /// Successful health checks in a row before readiness turns SERVING again.
    #[arg(
        help_heading = "Health",
        long,
        env = "INVITATIONS_HEALTH_SUCCESS_THRESHOLD",
        default_value_t = 2,
        global = true
    )]
    pub health_success_threshold: u32,

    /// After SIGTERM/SIGINT: milliseconds to keep serving with readiness NOT_SERVING, so
    /// load balancers stop sending before the listener closes.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_SHUTDOWN_GRACE_MS",
        default_value_t = 5000,
        global = true
    )]
    pub shutdown_grace_ms: u64,

    /// Then: milliseconds in-flight RPCs get to finish before the process exits anyway.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_SHUTDOWN_DRAIN_MS",
        default_value_t = 10000,
        global = true
    )]
    pub shutdown_drain_ms: u64,

    /// Largest request message accepted, in bytes (larger: OUT_OF_RANGE).
    #[arg(help_heading = "Limits", long, env = "INVITATIONS_MAX_REQUEST_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_request_bytes: usize,

    /// Largest request metadata (HTTP/2 header list) accepted, in bytes.
    #[arg(help_heading = "Limits", long, env = "INVITATIONS_MAX_METADATA_BYTES", default_value_t = 16 * 1024, global = true)]
    pub max_metadata_bytes: u32,

    /// RPCs in flight on this replica before new ones are refused with RESOURCE_EXHAUSTED.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_CONCURRENT_REQUESTS",
        default_value_t = 256,
        global = true
    )]
    pub max_concurrent_requests: usize,

    /// RPCs in flight for one caller (`sub` within its enterprise) before its next ones are
    /// refused with RESOURCE_EXHAUSTED, so no single caller can take the replica's whole limit.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_CONCURRENT_REQUESTS_PER_CALLER",
        default_value_t = 64,
        global = true
    )]
    pub max_concurrent_requests_per_caller: usize,

    /// Milliseconds a request message may take to arrive completely after its headers;
    /// later, the call ends with DEADLINE_EXCEEDED (REQUEST_READ_TIMEOUT).
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_REQUEST_READ_TIMEOUT_MS",
        default_value_t = 2000,
        global = true
    )]
    pub request_read_timeout_ms: u64,

    /// Client connections held at once; a connection over the limit is closed as soon as it
    /// is accepted.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_CONNECTIONS",
        default_value_t = 1000,
        global = true
    )]
    pub max_connections: usize,

    /// Concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_CONCURRENT_STREAMS",
        default_value_t = 100,
        global = true
    )]
    pub max_concurrent_streams: u32,

    /// Requests still arriving (headers received, message not yet complete) on this replica,
    /// all connections together; more are refused with RESOURCE_EXHAUSTED.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_PENDING_REQUESTS",
        default_value_t = 512,
        global = true
    )]
    pub max_pending_requests: usize,

    /// Open long-lived streams (WatchInvitations, health `Watch`, reflection) per connection.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_WATCH_STREAMS_PER_CONNECTION",
        default_value_t = 16,
        global = true
    )]
    pub max_watch_streams_per_connection: usize,

    /// Open long-lived streams (WatchInvitations, health `Watch`, reflection) on this replica.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_MAX_WATCH_STREAMS",
        default_value_t = 1000,
        global = true
    )]
    pub max_watch_streams: usize,

    /// Bytes of responses not yet taken by their client, per connection; while a connection
    /// holds more, its new calls are refused with RESOURCE_EXHAUSTED (RESPONSES_UNREAD).
    #[arg(help_heading = "Limits", long, env = "INVITATIONS_MAX_UNSENT_BYTES_PER_CONNECTION", default_value_t = 4 * 1024 * 1024, global = true)]
    pub max_unsent_bytes_per_connection: usize,

    /// Bytes of responses not yet taken by their clients, all connections together; while
    /// the replica holds more, new calls are refused with RESOURCE_EXHAUSTED.
    #[arg(help_heading = "Limits", long, env = "INVITATIONS_MAX_UNSENT_BYTES", default_value_t = 32 * 1024 * 1024, global = true)]
    pub max_unsent_bytes: usize,

    /// Longest an RPC may run, in milliseconds; a shorter client deadline wins.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_REQUEST_TIMEOUT_MS",
        default_value_t = 10000,
        global = true
    )]
    pub request_timeout_ms: u64,

    /// HTTP/2 keepalive ping interval in milliseconds.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_HTTP2_KEEPALIVE_INTERVAL_MS",
        default_value_t = 30000,
        global = true
    )]
    pub http2_keepalive_interval_ms: u64,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_HTTP2_KEEPALIVE_TIMEOUT_MS",
        default_value_t = 10000,
        global = true
    )]
    pub http2_keepalive_timeout_ms: u64,

    /// Milliseconds after which a connection is gracefully closed, so long-lived clients
    /// reconnect and spread over replicas.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_MAX_CONNECTION_AGE_MS",
        default_value_t = 300_000,
        global = true
    )]
    pub max_connection_age_ms: u64,

    /// Server reflection (v1 and v1alpha), which lets grpcurl and similar tools discover the
    /// API without its .proto files: `true` or `false`. Health needs no token either way.
    #[arg(
        help_heading = "Server",
        long,
        env = "INVITATIONS_REFLECTION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub reflection: bool,

    /// How long events (one per change of an invitation) are kept, as a duration such as
    /// `7days`, `36h` or `90min`; older ones are deleted in small batches every few minutes.
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_EVENT_RETENTION",
        default_value = "7days",
        value_parser = parse_retention,
        global = true
    )]
    pub event_retention: Duration,

    /// Milliseconds between two sweeps that store pending invitations past their expiry as
    /// expired, each with its `expired` event (one replica sweeps at a time). Reads show
    /// EXPIRED from the moment `expires_at` passes either way.
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_EXPIRY_SWEEP_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub expiry_sweep_ms: u64,

    /// Milliseconds a WatchInvitations stream may stay idle before it sends a checkpoint (a
    /// cursor with no event).
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_WATCH_CHECKPOINT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub watch_checkpoint_ms: u64,

    /// How long a WatchInvitations stream lasts (less up to a tenth, at random) before it
    /// ends with a cursor, so that reconnecting clients spread over replicas; a human
    /// duration (`humantime`).
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_WATCH_MAX_AGE",
        default_value = "5min",
        value_parser = parse_watch_max_age,
        global = true
    )]
    pub watch_max_age: Duration,

    /// Events a WatchInvitations stream may have waiting for its client; past them it ends
    /// with RESOURCE_EXHAUSTED (WATCH_TOO_SLOW) and a cursor to resume from.
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_WATCH_BUFFER",
        default_value_t = 1024,
        global = true
    )]
    pub watch_buffer: usize,

    /// NATS server to relay every event to (JetStream), e.g. `nats://nats:4222`; unset, no
    /// relay runs. May carry credentials (`nats://user:password@host`).
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_NATS_URL",
        hide_env_values = true,
        global = true
    )]
    pub nats_url: Option<Secret>,

    /// A file holding the NATS URL (with its credentials), instead of INVITATIONS_NATS_URL.
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_NATS_URL_FILE",
        global = true
    )]
    pub nats_url_file: Option<std::path::PathBuf>,

    /// The JetStream stream the relay publishes to; created with subjects `invitations.v1.>`
    /// (and the event retention as its maximum age) if it does not exist.
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_NATS_STREAM",
        default_value = "INVITATIONS",
        global = true
    )]
    pub nats_stream: String,

    /// Milliseconds a replica's hold on the relay lasts unless renewed: when the relaying
    /// replica dies, another takes over after this.
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_NATS_LEASE_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub nats_lease_ms: u64,

    /// Milliseconds between two reads of the outbox when nothing says it changed (changes
    /// made by this replica, and on PostgreSQL by the others, are read at once).
    #[arg(
        help_heading = "Events",
        long,
        env = "INVITATIONS_WATCH_POLL_MS",
        default_value_t = 1000,
        global = true
    )]
    pub watch_poll_ms: u64,

    /// Requests per second each caller (`sub` within its enterprise) may make; 0 disables.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_RATE_LIMIT_PER_SECOND",
        default_value_t = 50,
        global = true
    )]
    pub rate_limit_per_second: u32,

    /// Requests a caller may make at once above the steady rate.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_RATE_LIMIT_BURST",
        default_value_t = 100,
        global = true
    )]
    pub rate_limit_burst: u32,

    /// Redis server through which the replicas share one rate limit per caller (a GCRA
    /// script, each round trip leasing up to 10 ms of the caller's rate), e.g.
    /// `redis://redis:6379`; unset, each replica limits on its own. May carry credentials
    /// (`redis://:password@host`). If Redis does not answer, each replica falls back to its
    /// own limit until it does.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_RATE_LIMIT_REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub rate_limit_redis_url: Option<Secret>,

    /// A file holding the Redis URL (with its credentials), instead of
    /// INVITATIONS_RATE_LIMIT_REDIS_URL.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_RATE_LIMIT_REDIS_URL_FILE",
        global = true
    )]
    pub rate_limit_redis_url_file: Option<std::path::PathBuf>,

    /// PEM CA certificates that a `rediss://` Redis's certificate must chain to, instead of
    /// the system's trusted roots (a Redis whose certificate a private CA issued).
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_RATE_LIMIT_REDIS_CA_PATH",
        global = true
    )]
    pub rate_limit_redis_ca_path: Option<std::path::PathBuf>,

    /// Milliseconds a call waits for Redis's decision before its replica decides alone.
    #[arg(
        help_heading = "Limits",
        long,
        env = "INVITATIONS_RATE_LIMIT_REDIS_TIMEOUT_MS",
        default_value_t = 50,
        global = true
    )]
    pub rate_limit_redis_timeout_ms: u64,

    /// Store accelerators to use (docs/adr/): `all`, `none`, or a list of
    /// `kept-connections`, `sqlite-reader`, `rendered-statements`. Each one left out takes
    /// SeaORM's plain path instead, with the same answers and more CPU per request.
    #[arg(
        help_heading = "Database",
        long,
        env = "INVITATIONS_STORE_ACCELERATORS",
        value_delimiter = ',',
        default_value = "all",
        global = true
    )]
    pub store_accelerators: Vec<StoreAccelerator>,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(help_heading = "Telemetry", long, env = "INVITATIONS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
}

/// Settings checked and ready to build the server from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_addr: SocketAddr,
    /// TLS on the gRPC listener, if configured.
    pub tls: Option<crate::tls::TlsSettings>,
    /// The operations listener (health), if any.
    pub ops_listen_addr: Option<SocketAddr>,
    /// How long events are kept.
    pub event_retention: Duration,
    /// How often lapsed invitations are stored as expired.
    pub expiry_sweep: Duration,
    pub watch: crate::watch::WatchSettings,
    /// The relay to NATS JetStream, when configured.
    pub relay: Option<RelaySettings>,
    /// The Redis that shares the rate limit between replicas, when configured.
    pub shared_rate_limit: Option<SharedRateLimitSettings>,
    pub store: StoreSettings,
    pub store_accelerators: crate::store::Accelerators,
    pub jwt: JwtSettings,
    pub page_token_secret: Secret,
    pub server: ServerSettings,
    pub health: HealthSettings,
    /// Whether server reflection is served.
    pub reflection: bool,
}

/// Where the replicas share their rate limit (`INVITATIONS_RATE_LIMIT_REDIS_*`).
#[derive(Debug, Clone)]
pub struct SharedRateLimitSettings {
    pub url: Secret,
    /// PEM CA certificates for a `rediss://` URL, instead of the system's roots.
    pub ca: Option<Vec<u8>>,
    /// How long a call waits for Redis's decision.
    pub timeout: Duration,
}

/// What the relay needs (`INVITATIONS_NATS_*`).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub url: String,
    /// The JetStream stream, created with `relay::SUBJECTS` if it does not exist.
    pub stream: String,
    /// How long a lease lasts unless renewed; a dead relay's successor waits this long.
    pub lease: Duration,
    /// How long the stream keeps messages when the relay creates it.
    pub max_age: Duration,
}

/// Transport limits, rate limits and shutdown timing.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub max_request_bytes: usize,
    pub max_metadata_bytes: u32,
    pub max_concurrent_requests: usize,
    pub max_concurrent_requests_per_caller: usize,
    pub request_read_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub max_pending_requests: usize,
    pub max_watch_streams_per_connection: usize,
    pub max_watch_streams: usize,
    pub max_unsent_bytes_per_connection: usize,
    pub max_unsent_bytes: usize,
    pub request_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub max_connection_age: Duration,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub shutdown_grace: Duration,
    pub shutdown_drain: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub hs256_secret: Secret,
    pub jwks_path: Option<std::path::PathBuf>,
    pub jwks_reload: Duration,
    pub issuer: String,
    pub audience: String,
}

/// Marks of the placeholders our examples ship (`deploy/kubernetes/secret.example.yaml`): a
/// real secret never contains them, and a deployment that copied the example must not start.
/// (docker-compose.yml's `dev-only-...` defaults are not refused: that stack publishes on
/// loopback only, so `docker compose up` works with no setup.)
const EXAMPLE_MARKS: [&str; 2] = ["EXAMPLE-ONLY", "CHANGE-ME"];

fn is_example(value: &[u8]) -> bool {
    EXAMPLE_MARKS
        .iter()
        .any(|mark| value.windows(mark.len()).any(|w| w == mark.as_bytes()))
}

/// A one-line reason the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// A secret setting given as a file: its content, less one trailing line break (as `echo`
/// and editors leave one; nothing else is trimmed). The content is never quoted in an error.
fn read_secret_file(path: &std::path::Path, setting: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError(format!(
            "cannot read {setting} ({}): {error}",
            path.display()
        ))
    })?;
    let text = match text.strip_suffix('\n') {
        Some(line) => line.strip_suffix('\r').unwrap_or(line),
        None => &text,
    };
    if text.is_empty() {
        return Err(ConfigError(format!(
            "{setting} ({}) is empty",
            path.display()
        )));
    }
    Ok(text.to_owned())
}

fn given_twice(setting: &str) -> ConfigError {
    ConfigError(format!(
        "{setting} and {setting}_FILE are both set: give one"
    ))
}

fn derive_page_token_secret(jwt_secret: &Secret) -> Secret {
    // A separate key per purpose: a page token can never double as anything signed with
    // the JWT secret. HMAC accepts any key length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(jwt_secret.expose()).unwrap_or_else(|_| unreachable!());
    mac.update(b"invitations/page-token/v1");
    let key: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Secret::new(key)
}

impl Config {
    /// Every default, as `--help` shows them; for tests and tools that build settings in code.
    pub fn defaults() -> Self {
        // Parsing no arguments cannot fail: every field has a default or is optional.
        Cli::try_parse_from(["invitations"])
            .map(|cli| cli.config)
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    pub fn store_settings(&self) -> Result<StoreSettings, ConfigError> {
        let url = self.database_url.expose().trim();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(
                "DATABASE_URL must start with sqlite: or postgres:// (or postgresql://)".into(),
            ));
        }
        if !url.starts_with("sqlite:") {
            // The parser's reason never quotes the input, so the password stays out of it.
            let parsed = url::Url::parse(url).map_err(|error| {
                ConfigError(format!(
                    "DATABASE_URL is not a valid URL ({error}): percent-encode / # @ % : ? in the password"
                ))
            })?;
            // The TLS files the URL names must be there: one missing is a mistake of the
            // deployment (a Secret not mounted), which no retry mends.
            for (key, path) in parsed.query_pairs() {
                if matches!(key.as_ref(), "sslrootcert" | "sslcert" | "sslkey")
                    && let Err(error) = std::fs::File::open(path.as_ref())
                {
                    return Err(ConfigError(format!(
                        "DATABASE_URL: {key} {path} cannot be read: {error}"
                    )));
                }
            }
        }
        if self.db_max_connections == 0 {
            return Err(ConfigError(
                "INVITATIONS_DB_MAX_CONNECTIONS must be at least 1".into(),
            ));
        }
        if self.db_acquire_timeout_ms == 0 {
            return Err(ConfigError(
                "INVITATIONS_DB_ACQUIRE_TIMEOUT_MS must be at least 1".into(),
            ));
        }
        if is_example(url.as_bytes()) {
            return Err(ConfigError(
                "DATABASE_URL holds the example password of deploy/kubernetes/secret.example.yaml: set the real one".into(),
            ));
        }
        let listen_url = match &self.db_listen_url {
            Some(listen) => {
                let listen = listen.expose().trim();
                if url.starts_with("sqlite:") {
                    return Err(ConfigError(
                        "INVITATIONS_DB_LISTEN_URL is for PostgreSQL; DATABASE_URL is SQLite"
                            .into(),
                    ));
                }
                if !(listen.starts_with("postgres://") || listen.starts_with("postgresql://")) {
                    return Err(ConfigError(
                        "INVITATIONS_DB_LISTEN_URL must start with postgres:// (or postgresql://)"
                            .into(),
                    ));
                }
                // As for DATABASE_URL: the parser's reason never quotes the password.
                if let Err(error) = url::Url::parse(listen) {
                    return Err(ConfigError(format!(
                        "INVITATIONS_DB_LISTEN_URL is not a valid URL ({error}): percent-encode / # @ % : ? in the password"
                    )));
                }
                Some(listen.into())
            }
            None => None,
        };
        Ok(StoreSettings {
            url: url.into(),
            transaction_pooling: self.db_transaction_pooling,
            listen_url,
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            sqlite_busy_timeout: Duration::from_millis(self.sqlite_busy_timeout_ms),
            sqlite_synchronous: self.sqlite_synchronous,
        })
    }

    /// Reads the secrets given as files (`…_FILE`, as Kubernetes mounts secrets) into their
    /// settings, once, before anything uses them. A secret given both ways is an error.
    /// DATABASE_URL counts as given when it is not the default.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.jwt_hs256_secret_file {
            if self.jwt_hs256_secret.is_some() {
                return Err(given_twice("INVITATIONS_JWT_HS256_SECRET"));
            }
            let secret = read_secret_file(path, "INVITATIONS_JWT_HS256_SECRET_FILE")?;
            self.jwt_hs256_secret = Some(Secret::new(secret));
        }
        if let Some(path) = &self.page_token_secret_file {
            if self.page_token_secret.is_some() {
                return Err(given_twice("INVITATIONS_PAGE_TOKEN_SECRET"));
            }
            let secret = read_secret_file(path, "INVITATIONS_PAGE_TOKEN_SECRET_FILE")?;
            self.page_token_secret = Some(Secret::new(secret));
        }
        if let Some(path) = &self.rate_limit_redis_url_file {
            if self.rate_limit_redis_url.is_some() {
                return Err(given_twice("INVITATIONS_RATE_LIMIT_REDIS_URL"));
            }
            let url = read_secret_file(path, "INVITATIONS_RATE_LIMIT_REDIS_URL_FILE")?;
            self.rate_limit_redis_url = Some(Secret::new(url));
        }
        if let Some(path) = &self.db_listen_url_file {
            if self.db_listen_url.is_some() {
                return Err(given_twice("INVITATIONS_DB_LISTEN_URL"));
            }
            let url = read_secret_file(path, "INVITATIONS_DB_LISTEN_URL_FILE")?;
            self.db_listen_url = Some(url.into());
        }
        if let Some(path) = &self.nats_url_file {
            if self.nats_url.is_some() {
                return Err(given_twice("INVITATIONS_NATS_URL"));
            }
            let url = read_secret_file(path, "INVITATIONS_NATS_URL_FILE")?;
            self.nats_url = Some(Secret::new(url));
        }
        if let Some(path) = &self.database_url_file {
            if self.database_url != DEFAULT_DATABASE_URL {
                return Err(given_twice("DATABASE_URL"));
            }
            self.database_url = read_secret_file(path, "DATABASE_URL_FILE")?.into();
        }
        if let Some(path) = &self.database_password_file {
            let password = read_secret_file(path, "INVITATIONS_DATABASE_PASSWORD_FILE")?;
            let shape = || {
                ConfigError(
                    "INVITATIONS_DATABASE_PASSWORD_FILE needs a DATABASE_URL of the form \
                     postgres://USER@HOST/DB, without a password"
                        .into(),
                )
            };
            let mut url = url::Url::parse(self.database_url.expose()).map_err(|_| shape())?;
            if !url.scheme().starts_with("postgres") || url.username().is_empty() {
                return Err(shape());
            }
            if url.password().is_some() {
                return Err(ConfigError(
                    "DATABASE_URL has a password and INVITATIONS_DATABASE_PASSWORD_FILE is set: give one"
                        .into(),
                ));
            }
            url.set_password(Some(&password)).map_err(|()| shape())?;
            self.database_url = url.to_string().into();
            // The listener is the same role reaching past the pooler: one mounted password
            // serves both, so rotating it touches one file. A listen URL that carries its
            // own password keeps it.
            if let Some(listen) = &self.db_listen_url
                && let Ok(mut listen_url) = url::Url::parse(listen.expose().trim())
                && listen_url.password().is_none()
                && !listen_url.username().is_empty()
                && listen_url.set_password(Some(&password)).is_ok()
            {
                self.db_listen_url = Some(listen_url.to_string().into());
            }
        }
        Ok(())
    }

    /// The CA file of INVITATIONS_RATE_LIMIT_REDIS_CA_PATH, read and checked at start: it
    /// holds certificates, and the URL asks for TLS.
    fn redis_ca(&self, url: &Secret) -> Result<Option<Vec<u8>>, ConfigError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let Some(path) = &self.rate_limit_redis_ca_path else {
            return Ok(None);
        };
        if !url.expose().starts_with(b"rediss://") {
            return Err(ConfigError(
                "INVITATIONS_RATE_LIMIT_REDIS_CA_PATH needs a rediss:// (TLS) Redis URL".into(),
            ));
        }
        let pem = std::fs::read(path).map_err(|error| {
            ConfigError(format!(
                "INVITATIONS_RATE_LIMIT_REDIS_CA_PATH {}: {error}",
                path.display()
            ))
        })?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                ConfigError(format!(
                    "INVITATIONS_RATE_LIMIT_REDIS_CA_PATH {}: not PEM certificates ({error})",
                    path.display()
                ))
            })?;
        if certificates.is_empty() {
            return Err(ConfigError(format!(
                "INVITATIONS_RATE_LIMIT_REDIS_CA_PATH {}: no certificate in the file",
                path.display()
            )));
        }
        Ok(Some(pem))
    }

    pub fn jwt_settings(&self) -> Result<JwtSettings, ConfigError> {
        let secret = self.jwt_hs256_secret.clone().ok_or_else(|| {
            ConfigError("INVITATIONS_JWT_HS256_SECRET (or --jwt-hs256-secret) is required".into())
        })?;
        if secret.expose().len() < MIN_SECRET_LEN {
            return Err(ConfigError(format!(
                "INVITATIONS_JWT_HS256_SECRET must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        if is_example(secret.expose()) {
            return Err(ConfigError(
                "INVITATIONS_JWT_HS256_SECRET is the example placeholder: set a random secret (openssl rand -hex 32)".into(),
            ));
        }
        if self.jwt_issuer.is_empty() || self.jwt_audience.is_empty() {
            return Err(ConfigError(
                "INVITATIONS_JWT_ISSUER and INVITATIONS_JWT_AUDIENCE must not be empty".into(),
            ));
        }
        Ok(JwtSettings {
            hs256_secret: secret,
            jwks_path: self.jwt_jwks_path.clone(),
            jwks_reload: Duration::from_millis(self.jwt_jwks_reload_ms.max(1)),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        })
    }

    /// TLS on the gRPC listener: a certificate and its key, both or neither; a client CA
    /// only with them.
    pub fn tls_settings(&self) -> Result<Option<crate::tls::TlsSettings>, ConfigError> {
        match (&self.tls_cert_path, &self.tls_key_path) {
            (Some(cert_path), Some(key_path)) => Ok(Some(crate::tls::TlsSettings {
                cert_path: cert_path.clone(),
                key_path: key_path.clone(),
                client_ca_path: self.tls_client_ca_path.clone(),
                reload: match self.tls_reload_ms {
                    0 => {
                        return Err(ConfigError(
                            "INVITATIONS_TLS_RELOAD_MS must be at least 1".into(),
                        ));
                    }
                    ms => Duration::from_millis(ms),
                },
            })),
            (None, None) if self.tls_client_ca_path.is_some() => Err(ConfigError(
                "INVITATIONS_TLS_CLIENT_CA_PATH needs INVITATIONS_TLS_CERT_PATH and \
                 INVITATIONS_TLS_KEY_PATH: client certificates are asked for over TLS"
                    .into(),
            )),
            (None, None) => Ok(None),
            _ => Err(ConfigError(
                "INVITATIONS_TLS_CERT_PATH and INVITATIONS_TLS_KEY_PATH go together: give both"
                    .into(),
            )),
        }
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let jwt = self.jwt_settings()?;
        let page_token_secret = match &self.page_token_secret {
            Some(secret) if secret.expose().len() < MIN_SECRET_LEN => {
                return Err(ConfigError(format!(
                    "INVITATIONS_PAGE_TOKEN_SECRET must be at least {MIN_SECRET_LEN} bytes"
                )));
            }
            Some(secret) if is_example(secret.expose()) => {
                return Err(ConfigError(
                    "INVITATIONS_PAGE_TOKEN_SECRET is the example placeholder: set a random secret (openssl rand -hex 32)".into(),
                ));
            }
            // One key for two purposes would let a page token stand in for anything the JWT
            // secret signs, and the other way round.
            Some(secret) if secret == &jwt.hs256_secret => {
                return Err(ConfigError(
                    "INVITATIONS_PAGE_TOKEN_SECRET must differ from INVITATIONS_JWT_HS256_SECRET (or be left unset to derive one)".into(),
                ));
            }
            Some(secret) => secret.clone(),
            None => derive_page_token_secret(&jwt.hs256_secret),
        };
        let positive = |value: u64, name: &str| {
            if value == 0 {
                Err(ConfigError(format!("{name} must be at least 1")))
            } else {
                Ok(Duration::from_millis(value))
            }
        };
        if self.max_request_bytes < 1024 {
            return Err(ConfigError(
                "INVITATIONS_MAX_REQUEST_BYTES must be at least 1024".into(),
            ));
        }
        if self.max_metadata_bytes < 1024 {
            return Err(ConfigError(
                "INVITATIONS_MAX_METADATA_BYTES must be at least 1024".into(),
            ));
        }
        for (value, name) in [
            (
                self.max_concurrent_requests,
                "INVITATIONS_MAX_CONCURRENT_REQUESTS",
            ),
            (
                self.max_concurrent_requests_per_caller,
                "INVITATIONS_MAX_CONCURRENT_REQUESTS_PER_CALLER",
            ),
            (self.max_connections, "INVITATIONS_MAX_CONNECTIONS"),
            (
                self.max_concurrent_streams as usize,
                "INVITATIONS_MAX_CONCURRENT_STREAMS",
            ),
            (
                self.max_pending_requests,
                "INVITATIONS_MAX_PENDING_REQUESTS",
            ),
            (
                self.max_watch_streams_per_connection,
                "INVITATIONS_MAX_WATCH_STREAMS_PER_CONNECTION",
            ),
            (self.max_watch_streams, "INVITATIONS_MAX_WATCH_STREAMS"),
            (self.watch_buffer, "INVITATIONS_WATCH_BUFFER"),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        // Below the largest request, a connection could not even receive one answer.
        for (value, name) in [
            (
                self.max_unsent_bytes_per_connection,
                "INVITATIONS_MAX_UNSENT_BYTES_PER_CONNECTION",
            ),
            (self.max_unsent_bytes, "INVITATIONS_MAX_UNSENT_BYTES"),
        ] {
            if value < 64 * 1024 {
                return Err(ConfigError(format!("{name} must be at least 65536")));
            }
        }
        if self.health_failure_threshold == 0 || self.health_success_threshold == 0 {
            return Err(ConfigError(
                "INVITATIONS_HEALTH_*_THRESHOLD must be at least 1".into(),
            ));
        }
        let server = ServerSettings {
            max_request_bytes: self.max_request_bytes,
            max_metadata_bytes: self.max_metadata_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            max_concurrent_requests_per_caller: self.max_concurrent_requests_per_caller,
            request_read_timeout: positive(
                self.request_read_timeout_ms,
                "INVITATIONS_REQUEST_READ_TIMEOUT_MS",
            )?,
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            max_pending_requests: self.max_pending_requests,
            max_watch_streams_per_connection: self.max_watch_streams_per_connection,
            max_watch_streams: self.max_watch_streams,
            max_unsent_bytes_per_connection: self.max_unsent_bytes_per_connection,
            max_unsent_bytes: self.max_unsent_bytes,
            request_timeout: positive(self.request_timeout_ms, "INVITATIONS_REQUEST_TIMEOUT_MS")?,
            http2_keepalive_interval: positive(
                self.http2_keepalive_interval_ms,
                "INVITATIONS_HTTP2_KEEPALIVE_INTERVAL_MS",
            )?,
            http2_keepalive_timeout: positive(
                self.http2_keepalive_timeout_ms,
                "INVITATIONS_HTTP2_KEEPALIVE_TIMEOUT_MS",
            )?,
            max_connection_age: positive(
                self.max_connection_age_ms,
                "INVITATIONS_MAX_CONNECTION_AGE_MS",
            )?,
            rate_limit_per_second: self.rate_limit_per_second,
            rate_limit_burst: self.rate_limit_burst,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            shutdown_drain: positive(self.shutdown_drain_ms, "INVITATIONS_SHUTDOWN_DRAIN_MS")?,
        };
        let health = HealthSettings {
            interval: positive(self.health_interval_ms, "INVITATIONS_HEALTH_INTERVAL_MS")?,
            check_timeout: Duration::from_millis(self.db_acquire_timeout_ms.max(1)),
            failure_threshold: self.health_failure_threshold,
            success_threshold: self.health_success_threshold,
        };
        Ok(Settings {
            listen_addr: self.listen_addr,
            tls: self.tls_settings()?,
            ops_listen_addr: self.ops_listen_addr,
            event_retention: self.event_retention,
            expiry_sweep: positive(self.expiry_sweep_ms, "INVITATIONS_EXPIRY_SWEEP_MS")?,
            watch: crate::watch::WatchSettings {
                checkpoint: positive(self.watch_checkpoint_ms, "INVITATIONS_WATCH_CHECKPOINT_MS")?,
                max_age: self.watch_max_age,
                queue_len: self.watch_buffer,
                poll: positive(self.watch_poll_ms, "INVITATIONS_WATCH_POLL_MS")?,
            },
            relay: match &self.nats_url {
                None => None,
                Some(url) => Some(RelaySettings {
                    url: String::from_utf8_lossy(url.expose()).into_owned(),
                    stream: self.nats_stream.clone(),
                    lease: positive(self.nats_lease_ms, "INVITATIONS_NATS_LEASE_MS")?,
                    max_age: self.event_retention,
                }),
            },
            shared_rate_limit: match &self.rate_limit_redis_url {
                None => None,
                Some(url) => Some(SharedRateLimitSettings {
                    url: url.clone(),
                    ca: self.redis_ca(url)?,
                    timeout: positive(
                        self.rate_limit_redis_timeout_ms,
                        "INVITATIONS_RATE_LIMIT_REDIS_TIMEOUT_MS",
                    )?,
                }),
            },
            store: self.store_settings()?,
            store_accelerators: accelerators(&self.store_accelerators),
            jwt,
            page_token_secret,
            server,
            health,
            reflection: self.reflection,
        })
    }
}

/// A watch's maximum age: a human duration (`humantime`), at least a second.
fn parse_watch_max_age(raw: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if age < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(age)
}

/// A retention period: a human duration (`humantime`), at least a minute, so that a
/// resuming watcher has time to come back.
fn parse_retention(raw: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if retention < Duration::from_secs(60) {
        return Err("must be at least 1min".into());
    }
    Ok(retention)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(password: &str, listen_url: Option<&str>) -> Config {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{password}\n")).expect("write");
        let mut args = vec![
            "invitations".to_string(),
            "--database-url=postgres://app@pooler:6432/invitations".to_string(),
            format!("--database-password-file={}", file.display()),
        ];
        if let Some(listen) = listen_url {
            args.push(format!("--db-listen-url={listen}"));
        }
        let mut config = Cli::try_parse_from(args).expect("parsed").config;
        config.read_secret_files().expect("secrets read");
        config
    }

    #[test]
    fn the_password_file_reaches_the_listen_url_that_has_none() {
        let config = configured("s3/cr#t", Some("postgres://app@postgres:5432/invitations"));
        assert_eq!(
            config.database_url.expose(),
            "postgres://app:s3%2Fcr%23t@pooler:6432/invitations"
        );
        assert_eq!(
            config.db_listen_url.as_ref().map(DatabaseUrl::expose),
            Some("postgres://app:s3%2Fcr%23t@postgres:5432/invitations")
        );
    }

    #[test]
    fn a_listen_url_with_its_own_password_keeps_it() {
        let config = configured(
            "rotated",
            Some("postgres://app:own@postgres:5432/invitations"),
        );
        assert_eq!(
            config.db_listen_url.as_ref().map(DatabaseUrl::expose),
            Some("postgres://app:own@postgres:5432/invitations")
        );
        assert!(configured("rotated", None).db_listen_url.is_none());
    }
}
