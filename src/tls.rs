//! TLS for clients of the gRPC listener, and mutual TLS when a client CA is given
//! (`INVITATIONS_TLS_*`).
//!
//! The certificate, its key and the client CA are files that a certificate manager rotates in
//! place (cert-manager, a Kubernetes Secret volume swapping its `..data` link). They are read
//! again every `reload`, and when their content changed a new configuration is built. Each
//! handshake takes the configuration in force when it starts: open connections keep theirs,
//! new ones get the new certificate, and nothing is dropped. A change that cannot be used (a
//! half-written file, a key that does not match its certificate, a CA file with no
//! certificate) keeps the last good configuration and says so once per content.
//!
//! A client certificate never replaces the bearer token: the handshake checks the first, the
//! interceptor the second, and a call needs both. The certificate's subject is logged with
//! each RPC (`middleware.rs`).
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The files and how often to look at them.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Client certificates are required and must chain to this CA (mTLS).
    pub client_ca_path: Option<PathBuf>,
    pub reload: Duration,
}

/// A TLS file that cannot be used: the setting, the file and why, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{setting} ({path}): {reason}")]
pub struct TlsError {
    setting: &'static str,
    path: String,
    reason: String,
}

/// A handshake that has not finished by then is dropped with its connection slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, at most, failed handshakes are logged at `warn` (the others at `debug`).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The listener's TLS: the configuration in force and what the files held when last read.
pub struct ServerTls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<ServerConfig>>,
    reload: Mutex<ReloadState>,
    failures: Mutex<FailureLog>,
}

/// What the files held at the last looks, so that each change is loaded or reported once.
struct ReloadState {
    /// The content in force.
    loaded: [u8; 32],
    /// Content that could not be used, seen once: a look that straddles a rotation can read
    /// the new certificate with the old key, so a broken content is reported only when the
    /// next look finds it again.
    suspect: Option<[u8; 32]>,
    /// Broken content already reported.
    reported: Option<[u8; 32]>,
    missing_reported: bool,
}

#[derive(Default)]
struct FailureLog {
    last_warn: Option<Instant>,
    since_warn: u64,
}

/// The files' bytes, read together.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        let read = |setting, path: &PathBuf| {
            std::fs::read(path).map_err(|error| TlsError {
                setting,
                path: path.display().to_string(),
                reason: format!("cannot read: {error}"),
            })
        };
        Ok(Self {
            cert: read("INVITATIONS_TLS_CERT_PATH", &settings.cert_path)?,
            key: read("INVITATIONS_TLS_KEY_PATH", &settings.key_path)?,
            client_ca: settings
                .client_ca_path
                .as_ref()
                .map(|path| read("INVITATIONS_TLS_CLIENT_CA_PATH", path))
                .transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.finalize().into()
    }
}

impl ServerTls {
    /// Reads the files and builds the first configuration: a file that cannot be used stops
    /// start-up, naming its setting.
    pub fn load(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        // ring, as sqlx and async-nats already use: rustls deprecates it for lacking
        // post-quantum key exchange, which only aws-lc-rs (a C build of aws-lc) offers.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Files::read(&settings)?;
        let config = build(&settings, &provider, &files)?;
        log_loaded(
            &files,
            settings.client_ca_path.is_some(),
            "TLS certificate loaded",
        );
        Ok(Arc::new(Self {
            reload: Mutex::new(ReloadState {
                loaded: files.digest(),
                suspect: None,
                reported: None,
                missing_reported: false,
            }),
            settings,
            provider,
            current: RwLock::new(config),
            failures: Mutex::default(),
        }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        // A poisoned lock only means a panic while swapping one Arc for another.
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// The TLS handshake on an accepted connection, bounded by [`HANDSHAKE_TIMEOUT`], and the
    /// subject of the client's certificate when it gave one. A failure is logged here (a
    /// client that does not trust us, a missing or unknown client certificate, a port scan).
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Option<(TlsStream<TcpStream>, Option<Arc<str>>)> {
        let remote = stream.peer_addr().ok();
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(stream));
        let error = match handshake.await {
            Ok(Ok(stream)) => {
                let subject = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(subject_of);
                return Some((stream, subject));
            }
            Ok(Err(error)) => error,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
        };
        self.log_failure(remote, &error);
        None
    }

    fn log_failure(&self, remote: Option<std::net::SocketAddr>, error: &io::Error) {
        let mut log = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if log
            .last_warn
            .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_EVERY)
        {
            tracing::warn!(
                remote = ?remote,
                %error,
                failed_since_last_warning = log.since_warn,
                "TLS handshake failed"
            );
            log.last_warn = Some(now);
            log.since_warn = 0;
        } else {
            log.since_warn += 1;
            tracing::debug!(remote = ?remote, %error, "TLS handshake failed");
        }
    }

    /// Looks at the files every `reload`, for ever (the server aborts it when it stops).
    pub async fn watch_files(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.settings.reload);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let settings = self.settings.clone();
            // Off the runtime's workers: a file system can be slow.
            match tokio::task::spawn_blocking(move || Files::read(&settings)).await {
                Ok(files) => self.reload(files),
                Err(error) => tracing::error!(%error, "reading the TLS files failed"),
            }
        }
    }

    /// Builds a new configuration if the files changed since they were last loaded.
    fn reload(&self, files: Result<Files, TlsError>) {
        let mut state = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        let files = match files {
            Ok(files) => {
                state.missing_reported = false;
                files
            }
            Err(error) => {
                // A file briefly missing while it is replaced: the next look finds it.
                if !std::mem::replace(&mut state.missing_reported, true) {
                    tracing::warn!(%error, "TLS files cannot be read: keeping the last good certificate");
                }
                return;
            }
        };
        let digest = files.digest();
        if digest == state.loaded || state.reported == Some(digest) {
            return;
        }
        match build(&self.settings, &self.provider, &files) {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
                state.loaded = digest;
                state.suspect = None;
                state.reported = None;
                log_loaded(
                    &files,
                    self.settings.client_ca_path.is_some(),
                    "TLS certificate reloaded",
                );
            }
            Err(error) if state.suspect == Some(digest) => {
                state.reported = Some(digest);
                tracing::warn!(%error, "TLS files changed but cannot be used: keeping the last good certificate");
            }
            Err(_) => state.suspect = Some(digest),
        }
    }
}

/// The server configuration: HTTP/2 only (gRPC), the certificate chain and its key, and,
/// with a client CA, client certificates required and verified against it.
fn build(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
    files: &Files,
) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_error = |reason: String| TlsError {
        setting: "INVITATIONS_TLS_CERT_PATH",
        path: settings.cert_path.display().to_string(),
        reason,
    };
    let chain = certificates(&files.cert).map_err(cert_error)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|error| TlsError {
        setting: "INVITATIONS_TLS_KEY_PATH",
        path: settings.key_path.display().to_string(),
        reason: format!("no usable private key: {error}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| cert_error(error.to_string()))?;
    let builder = match (&settings.client_ca_path, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let ca_error = |reason: String| TlsError {
                setting: "INVITATIONS_TLS_CLIENT_CA_PATH",
                path: path.display().to_string(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for certificate in certificates(pem).map_err(ca_error)? {
                roots
                    .add(certificate)
                    .map_err(|error| ca_error(format!("not a usable CA certificate: {error}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|error| ca_error(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, None) => builder.with_no_client_auth(),
        // Files::read reads the CA exactly when its path is set.
        _ => unreachable!("a client CA read without its path, or its path without reading"),
    };
    // Checks that the key is the certificate's.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| cert_error(format!("certificate and key do not go together: {error}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    if settings.client_ca_path.is_some() {
        // A resumed session skips the client certificate's verification: under mTLS every
        // connection shows a certificate valid now, against the CA in force now. gRPC
        // connections are long-lived, so full handshakes cost little.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not a PEM certificate file: {error}"))?;
    if chain.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(chain)
}

/// A certificate's subject as RFC 4514 text (`CN=billing, O=Example`).
fn subject_of(certificate: &CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    Some(parsed.subject().to_string().into())
}

fn log_loaded(files: &Files, client_auth: bool, message: &str) {
    let leaf = certificates(&files.cert)
        .ok()
        .and_then(|chain| chain.into_iter().next());
    let parsed = leaf
        .as_ref()
        .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok());
    let (subject, not_after, expired) = match &parsed {
        Some((_, certificate)) => (
            certificate.subject().to_string(),
            certificate.validity().not_after.to_string(),
            !certificate.validity().is_valid(),
        ),
        None => (String::new(), String::new(), false),
    };
    let client_certificates = if client_auth { "required" } else { "not asked" };
    if expired {
        tracing::warn!(%subject, %not_after, client_certificates, "{message}, but it is not valid now");
    } else {
        tracing::info!(%subject, %not_after, client_certificates, "{message}");
    }
}

/// A client connection as accepted: plaintext, or after the TLS handshake.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_flush(cx),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
