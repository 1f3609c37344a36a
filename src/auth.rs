//! Bearer tokens: `authorization: Bearer <JWT>` → [`Caller`].
//!
//! Two kinds of keys, each bound to one algorithm: an HS256 shared secret of at least 32
//! bytes, and EdDSA (Ed25519) or RS256 public keys from a JWKS file, chosen by the token's
//! `kid` and re-read when the file changes (key rotation without a restart). The token's
//! `alg` must be the key's: `none`, an HS256 token "signed" with a public key, or an
//! unknown `kid` are refused. `exp`, `iss`, `aud` and `sub` are required (jsonwebtoken
//! checks an expected `iss`/`aud` only when present, so they are listed as required claims
//! too), `nbf` is honoured.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::domain::{AuthFailure, Error, Forbidden};
use crate::domain::{EmailAddress, EnterpriseId, UserRef};

/// The capability every management RPC requires.
pub const ENTERPRISE_ADMIN: &str = "enterprise_admin";
/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 §3.2 requires.
pub const MIN_SECRET_LEN: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Verified tokens remembered at most (see [`VerifiedTokens`]).
const VERIFIED_TOKENS_KEPT: usize = 4096;

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
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    enterprise: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

/// When a verified token is valid, in seconds since the epoch.
struct TokenTimes {
    exp: u64,
    nbf: Option<u64>,
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

/// The token of an `authorization` value of the `Bearer` scheme. The scheme is matched
/// without regard to case and may be followed by several spaces (RFC 9110 §11.1, §11.4).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

/// Verifies bearer tokens, and mints them (HS256) for developers.
#[derive(Clone)]
pub struct Authenticator {
    /// The HS256 secret (always configured: it also signs developer tokens).
    hs256: (DecodingKey, EncodingKey),
    /// The JWKS file's keys, when configured.
    jwks: Option<Arc<JwksKeys>>,
    validation: Validation,
    issuer: String,
    audience: String,
    verified: Arc<VerifiedTokens>,
}

/// Tokens that passed verification, by the SHA-256 of their text, with the caller they
/// proved and the window in which they stay valid.
///
/// A client sends the same token on every call until it expires, and verifying it (two
/// base64 decodes, two JSON parses, the signature) is work the first call already did. A
/// remembered token is still checked on every call: against `exp`
/// and `nbf` with the same leeway as the full verification, and, when a JWKS key verified
/// it, against the key set in force (a reload that changes the keys forgets it). Only
/// successes are remembered, so a forged token always takes the full path. The digest is the
/// key, so a lookup compares no secret material byte by byte. At most
/// [`VERIFIED_TOKENS_KEPT`] entries: when full, the expired ones go, and if none has
/// expired, all of them (a flood of distinct valid tokens costs what verifying them costs).
#[derive(Default)]
struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

#[derive(Clone)]
struct VerifiedToken {
    caller: Arc<Caller>,
    /// `exp` plus the leeway: refused as expired once the clock is past it.
    valid_until: u64,
    /// `nbf` minus the leeway.
    valid_from: u64,
    /// The JWKS generation whose key verified it; `None` for the HS256 secret.
    jwks_generation: Option<u64>,
}

impl VerifiedTokens {
    fn get(&self, digest: &[u8; 32]) -> Option<VerifiedToken> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(digest).cloned()
    }

    fn remember(&self, digest: [u8; 32], token: VerifiedToken, now: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= VERIFIED_TOKENS_KEPT {
            entries.retain(|_, kept| kept.valid_until >= now);
            if entries.len() >= VERIFIED_TOKENS_KEPT {
                entries.clear();
            }
        }
        entries.insert(digest, token);
    }
}

/// Public keys from a JWKS file, by `kid`, each with the one algorithm it verifies.
pub struct JwksKeys {
    path: PathBuf,
    reload_every: Duration,
    state: RwLock<JwksState>,
}

struct JwksState {
    /// Moves whenever the keys change, so remembered verifications can tell.
    generation: u64,
    raw: Vec<u8>,
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    checked_at: Instant,
}

/// Why a JWKS file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("JWKS file {path}: {reason}")]
pub struct JwksError {
    path: String,
    reason: String,
}

fn parse_jwks(raw: &[u8]) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_slice(raw).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().ok_or("every key needs a `kid`")?;
        // Each key is bound to the algorithm it names; keys that name none are refused
        // rather than guessed, and only the asymmetric algorithms this service accepts.
        let algorithm = match jwk.common.key_algorithm {
            Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
            Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(other) => {
                return Err(format!(
                    "key {kid}: algorithm {other:?} is not accepted (EdDSA, RS256)"
                ));
            }
            None => return Err(format!("key {kid}: an `alg` is required")),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        if keys.insert(kid.clone(), (algorithm, key)).is_some() {
            return Err(format!("key id {kid} appears twice"));
        }
    }
    Ok(keys)
}

impl JwksKeys {
    /// Reads the file now; fails if it cannot be used.
    pub fn load(path: &Path, reload_every: Duration) -> Result<Self, JwksError> {
        let error = |reason: String| JwksError {
            path: path.display().to_string(),
            reason,
        };
        let raw = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let keys = parse_jwks(&raw).map_err(error)?;
        Ok(Self {
            path: path.to_owned(),
            reload_every,
            state: RwLock::new(JwksState {
                generation: 0,
                raw,
                keys,
                checked_at: Instant::now(),
            }),
        })
    }

    /// Re-reads the file when it is due and has changed. A file that cannot be read or
    /// parsed keeps the previous keys in force (and is logged).
    fn refresh(&self) {
        let due = self.state.read().map_or(true, |state| {
            state.checked_at.elapsed() >= self.reload_every
        });
        if !due {
            return;
        }
        let mut state = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.checked_at.elapsed() < self.reload_every {
            return;
        }
        state.checked_at = Instant::now();
        match std::fs::read(&self.path) {
            Ok(raw) if raw == state.raw => {}
            Ok(raw) => match parse_jwks(&raw) {
                Ok(keys) => {
                    tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS reloaded");
                    state.keys = keys;
                    state.raw = raw;
                    state.generation += 1;
                }
                Err(reason) => {
                    tracing::error!(path = %self.path.display(), %reason, "JWKS change ignored")
                }
            },
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "JWKS unreadable; keeping the keys in force")
            }
        }
    }

    /// The key named `kid` and the generation of the key set it belongs to.
    fn key(&self, kid: &str) -> Option<(Algorithm, DecodingKey, u64)> {
        self.refresh();
        let state = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state
            .keys
            .get(kid)
            .map(|(alg, key)| (*alg, key.clone(), state.generation))
    }

    /// The generation of the key set in force (re-read first when due).
    fn generation(&self) -> u64 {
        self.refresh();
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .generation
    }
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
    /// HS256 only.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self::new(secret, None, issuer, audience)
    }

    /// The HS256 secret, and optionally the keys of a JWKS file.
    pub fn new(hs256_secret: &[u8], jwks: Option<JwksKeys>, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY.as_secs();
        Self {
            hs256: (
                DecodingKey::from_secret(hs256_secret),
                EncodingKey::from_secret(hs256_secret),
            ),
            jwks: jwks.map(Arc::new),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            verified: Arc::default(),
        }
    }

    /// Reads the bearer token from request metadata and verifies it.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, Error> {
        let header = metadata
            .get("authorization")
            .ok_or(Error::Unauthenticated(AuthFailure::Missing))?
            .to_str()
            .map_err(|_| Error::Unauthenticated(AuthFailure::Missing))?;
        let token = bearer_token(header).ok_or(Error::Unauthenticated(AuthFailure::Missing))?;
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Arc<Caller>, Error> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(Error::Unauthenticated(AuthFailure::Invalid));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(remembered) = self.verified.get(&digest) {
            let keys_unchanged = match (remembered.jwks_generation, &self.jwks) {
                (None, _) => true,
                (Some(generation), Some(jwks)) => jwks.generation() == generation,
                (Some(_), None) => false,
            };
            if keys_unchanged {
                if now > remembered.valid_until {
                    return Err(Error::Unauthenticated(AuthFailure::Expired));
                }
                if now >= remembered.valid_from {
                    return Ok(remembered.caller);
                }
            }
            // Not valid yet, or verified by a key set since replaced: the full path decides.
        }
        let (caller, claims, jwks_generation) = self.verify_in_full(token)?;
        let caller = Arc::new(caller);
        self.verified.remember(
            digest,
            VerifiedToken {
                caller: caller.clone(),
                valid_until: claims.exp.saturating_add(LEEWAY.as_secs()),
                valid_from: claims
                    .nbf
                    .map_or(0, |nbf| nbf.saturating_sub(LEEWAY.as_secs())),
                jwks_generation,
            },
            now,
        );
        Ok(caller)
    }

    /// Verifies the signature and every claim: the caller, the times it proved, and the
    /// JWKS generation of the key that verified it (`None` for the HS256 secret).
    fn verify_in_full(&self, token: &str) -> Result<(Caller, TokenTimes, Option<u64>), Error> {
        let invalid = || Error::Unauthenticated(AuthFailure::Invalid);
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        // The key decides the algorithm, never the token: HS256 only with the secret, an
        // asymmetric algorithm only with the JWKS key named by `kid` and bound to it.
        let jwks_key;
        let mut jwks_generation = None;
        let key = match (header.alg, &self.jwks, header.kid.as_deref()) {
            // HS256 tokens carry no `kid`: one that does claims a key it cannot have.
            (Algorithm::HS256, _, None) => &self.hs256.0,
            (alg @ (Algorithm::EdDSA | Algorithm::RS256), Some(jwks), Some(kid)) => {
                match jwks.key(kid) {
                    Some((bound, key, generation)) if bound == alg => {
                        jwks_key = key;
                        jwks_generation = Some(generation);
                        &jwks_key
                    }
                    _ => return Err(invalid()),
                }
            }
            _ => return Err(invalid()),
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<VerifiedClaims>(token, key, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => Error::Unauthenticated(AuthFailure::Expired),
                _ => invalid(),
            })?
            .claims;
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
        let caller = Caller {
            subject,
            enterprise,
            capabilities: claims.capabilities.into_iter().collect(),
            verified_email,
        };
        let times = TokenTimes {
            exp: claims.exp,
            nbf: claims.nbf,
        };
        Ok((caller, times, jwks_generation))
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

    /// Signs with the HS256 secret (developer and test tokens).
    fn sign(&self, claims: Claims) -> String {
        // HS256 signing of a serialisable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.hs256.1)
            .unwrap_or_else(|e| unreachable!("HS256 signing failed: {e}"))
    }
}

/// The tonic interceptor in front of the invitations service: authenticates every call,
/// names the caller in the RPC's span, and leaves the [`Caller`] in the request extensions
/// (where the rate limit, `rate_limit.rs`, finds it). Health and reflection are not behind
/// it.
#[derive(Clone)]
pub struct AuthInterceptor {
    authenticator: Arc<Authenticator>,
}

impl AuthInterceptor {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let caller = self.authenticator.authenticate(request.metadata())?;
        tracing::Span::current().record("subject", tracing::field::display(caller.subject));
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod scheme {
    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for header in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR abc",
            "Bearer   abc ",
        ] {
            assert_eq!(super::bearer_token(header), Some("abc"), "{header:?}");
        }
        for header in ["Basic abc", "Bearerabc", "Bearer", "", "Token abc"] {
            assert_eq!(super::bearer_token(header), None, "{header:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bearer value is refused with UNAUTHENTICATED, never a panic.
        #[test]
        fn arbitrary_bearer_tokens_are_refused(token in any::<String>(), parts in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}") {
            let authenticator = Authenticator::hs256(b"property-secret-of-at-least-32-bytes!", "iss", "aud");
            for candidate in [token.as_str(), parts.as_str()] {
                prop_assert!(matches!(authenticator.verify(candidate), Err(Error::Unauthenticated(_))));
            }
        }
    }
}

#[cfg(test)]
mod verified_tokens {
    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-of-at-least-32-bytes!";

    fn authenticator() -> Authenticator {
        Authenticator::hs256(SECRET, "iss", "aud")
    }

    fn user() -> UserRef {
        UserRef::parse("users/0190a4b1-7a6e-7cc0-8f6e-1d2a3b4c5d6e").expect("user")
    }

    fn token(authenticator: &Authenticator, ttl: Duration) -> String {
        authenticator.mint(user(), None, &[ENTERPRISE_ADMIN.to_owned()], ttl)
    }

    fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// Remembers `caller` under `digest`, valid from `valid_from` to `valid_until`.
    fn remember(
        authenticator: &Authenticator,
        digest: [u8; 32],
        caller: Arc<Caller>,
        valid_from: u64,
        valid_until: u64,
    ) {
        let token = VerifiedToken {
            caller,
            valid_until,
            valid_from,
            jwks_generation: None,
        };
        authenticator.verified.remember(digest, token, unix_now());
    }

    #[test]
    fn a_token_is_verified_once_and_then_remembered() {
        let authenticator = authenticator();
        let token = token(&authenticator, Duration::from_secs(600));
        let first = authenticator.verify(&token).expect("valid");
        let second = authenticator.verify(&token).expect("still valid");
        assert!(Arc::ptr_eq(&first, &second), "the second call is a lookup");
        assert_eq!(authenticator.verified.entries.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let authenticator = authenticator();
        let token = token(&authenticator, Duration::from_secs(600));
        let caller = authenticator.verify(&token).expect("valid");
        // The same entry, as it will be once its `exp` plus the leeway has passed.
        remember(&authenticator, digest(&token), caller, 0, unix_now() - 1);
        assert!(matches!(
            authenticator.verify(&token),
            Err(Error::Unauthenticated(AuthFailure::Expired))
        ));
    }

    #[test]
    fn a_remembered_token_not_valid_yet_is_verified_again() {
        let authenticator = authenticator();
        let token = token(&authenticator, Duration::from_secs(600));
        let caller = authenticator.verify(&token).expect("valid");
        let not_yet = unix_now() + 3600;
        remember(
            &authenticator,
            digest(&token),
            caller.clone(),
            not_yet,
            u64::MAX,
        );
        let again = authenticator
            .verify(&token)
            .expect("the token itself has no nbf");
        assert!(
            !Arc::ptr_eq(&caller, &again),
            "verified in full, not looked up"
        );
    }

    #[test]
    fn refused_tokens_are_not_remembered() {
        let authenticator = authenticator();
        let other = Authenticator::hs256(b"another-secret-of-at-least-32-bytes!!", "iss", "aud");
        let forged = token(&other, Duration::from_secs(600));
        let mut claims = authenticator.claims(user(), None, &[], Duration::ZERO);
        claims.exp = unix_now() - LEEWAY.as_secs() - 60;
        let expired = authenticator.sign(claims);
        for _ in 0..2 {
            assert!(matches!(
                authenticator.verify(&forged),
                Err(Error::Unauthenticated(AuthFailure::Invalid))
            ));
            assert!(matches!(
                authenticator.verify(&expired),
                Err(Error::Unauthenticated(AuthFailure::Expired))
            ));
        }
        assert!(authenticator.verified.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn the_memory_is_bounded() {
        let authenticator = authenticator();
        let caller = authenticator
            .verify(&token(&authenticator, Duration::from_secs(600)))
            .expect("valid");
        for n in 0..(VERIFIED_TOKENS_KEPT as u64 * 2) {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&n.to_le_bytes());
            remember(&authenticator, digest, caller.clone(), 0, unix_now() + 600);
            assert!(authenticator.verified.entries.lock().unwrap().len() <= VERIFIED_TOKENS_KEPT);
        }
    }
}
