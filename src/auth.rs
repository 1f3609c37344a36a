//! Bearer tokens: `authorization: Bearer <JWT>` → [`Caller`].
//!
//! HS256 with a shared secret of at least 32 bytes. `exp`, `iss`, `aud` and `sub` are
//! required (jsonwebtoken checks an expected `iss`/`aud` only when present, so they are
//! listed as required claims too), `nbf` is honoured, and the key only verifies HS256.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::domain::{EmailAddress, EnterpriseId, UserRef};
use crate::error::{AuthFailure, Error, Forbidden};
use crate::rate_limit::RateLimiter;

/// The capability every management RPC requires.
pub const ENTERPRISE_ADMIN: &str = "enterprise_admin";
/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 §3.2 requires.
pub const MIN_SECRET_LEN: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims `mint-token` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

/// The claims read from a verified token; `exp`, `iss`, `aud` and `nbf` are checked by the
/// validation itself (so `aud` may be a string or an array, as RFC 7519 allows).
#[derive(Debug, Deserialize)]
struct VerifiedClaims {
    sub: String,
    #[serde(default)]
    enterprise: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: UserRef,
    pub enterprise: Option<EnterpriseId>,
    pub capabilities: HashSet<String>,
    /// The `email` claim, only when `email_verified` is true and it is an address.
    pub verified_email: Option<EmailAddress>,
}

/// A caller allowed to manage the invitations of one enterprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnterpriseAdmin {
    pub subject: UserRef,
    pub enterprise: EnterpriseId,
}

impl Caller {
    pub fn enterprise_admin(&self) -> Result<EnterpriseAdmin, Error> {
        match self.enterprise {
            Some(enterprise) if self.capabilities.contains(ENTERPRISE_ADMIN) => {
                Ok(EnterpriseAdmin {
                    subject: self.subject,
                    enterprise,
                })
            }
            _ => Err(Error::PermissionDenied(Forbidden::EnterpriseAdminRequired)),
        }
    }
}

/// Verifies bearer tokens, and mints them for developers.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY.as_secs();
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Reads the bearer token from request metadata and verifies it.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Error> {
        let header = metadata
            .get("authorization")
            .ok_or(Error::Unauthenticated(AuthFailure::Missing))?
            .to_str()
            .map_err(|_| Error::Unauthenticated(AuthFailure::Missing))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Error::Unauthenticated(AuthFailure::Missing))?
            .trim();
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, Error> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(Error::Unauthenticated(AuthFailure::Invalid));
        }
        let claims =
            jsonwebtoken::decode::<VerifiedClaims>(token, &self.decoding, &self.validation)
                .map_err(|error| match error.kind() {
                    ErrorKind::ExpiredSignature => Error::Unauthenticated(AuthFailure::Expired),
                    _ => Error::Unauthenticated(AuthFailure::Invalid),
                })?
                .claims;
        let invalid = || Error::Unauthenticated(AuthFailure::Invalid);
        let subject = UserRef::parse(&claims.sub).map_err(|_| invalid())?;
        let enterprise = claims
            .enterprise
            .as_deref()
            .map(EnterpriseId::parse_ref)
            .transpose()
            .map_err(|_| invalid())?;
        let verified_email = match (claims.email, claims.email_verified) {
            (Some(email), Some(true)) => EmailAddress::parse(&email).ok(),
            _ => None,
        };
        Ok(Caller {
            subject,
            enterprise,
            capabilities: claims.capabilities.into_iter().collect(),
            verified_email,
        })
    }

    /// Signs a token for `subject`, valid for `ttl` from now.
    pub fn mint(
        &self,
        subject: UserRef,
        enterprise: Option<EnterpriseId>,
        capabilities: &[String],
        ttl: Duration,
    ) -> String {
        self.sign(self.claims(subject, enterprise, capabilities, ttl))
    }

    /// Signs an invitee's token: no enterprise, no capability, a verified e-mail.
    pub fn mint_invitee(&self, subject: UserRef, email: &str, ttl: Duration) -> String {
        self.sign(Claims {
            email: Some(email.to_owned()),
            email_verified: Some(true),
            ..self.claims(subject, None, &[], ttl)
        })
    }

    fn claims(
        &self,
        subject: UserRef,
        enterprise: Option<EnterpriseId>,
        capabilities: &[String],
        ttl: Duration,
    ) -> Claims {
        let now = unix_now();
        Claims {
            sub: subject.to_string(),
            enterprise: enterprise.map(|e| e.to_string()),
            capabilities: capabilities.to_vec(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            nbf: None,
            email: None,
            email_verified: None,
        }
    }

    fn sign(&self, claims: Claims) -> String {
        // HS256 signing of a serialisable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_else(|e| unreachable!("HS256 signing failed: {e}"))
    }
}

/// The tonic interceptor in front of the invitations service: authenticates every call,
/// names the caller in the RPC's span, takes a token from the caller's rate-limit bucket,
/// and leaves the [`Caller`] in the request extensions. Health and reflection are not
/// behind it.
#[derive(Clone)]
pub struct AuthInterceptor {
    authenticator: Arc<Authenticator>,
    limiter: Arc<RateLimiter>,
}

impl AuthInterceptor {
    pub fn new(authenticator: Arc<Authenticator>, limiter: Arc<RateLimiter>) -> Self {
        Self {
            authenticator,
            limiter,
        }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let caller = self.authenticator.authenticate(request.metadata())?;
        tracing::Span::current().record("subject", tracing::field::display(caller.subject));
        self.limiter
            .check(&caller)
            .map_err(|retry_after| Error::RateLimited { retry_after })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
