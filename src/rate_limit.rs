//! Per-caller rate limits: the 429 row. A caller is its `sub` within its enterprise, so
//! one noisy client never slows another.
//!
//! Each replica keeps token buckets of its own ([`LocalLimit`]), so N replicas admit N times
//! the configured rate. With `INVITATIONS_RATE_LIMIT_REDIS_URL` the replicas share one limit
//! instead ([`SharedLimit`]): a GCRA script in Redis, timed by the Redis server's clock so
//! the replicas' clocks do not matter. A round trip takes a lease of up to 10 ms of the
//! caller's rate ([`SharedLimit::lease_size`]), which this replica's next calls of that
//! caller spend before asking again: one round trip per call at modest rates, a few dozen
//! a second per busy caller at high ones. Redis counts every token it leases, so the
//! replicas together never admit more than the limit; a lease left unspent for
//! [`LEASE_LIFETIME`] lapses (a little under-admission, never over). When Redis does not answer in
//! time the call is decided by the replica's own buckets (never refused because Redis is
//! down), the log and `invitations_rate_limit_shared` say so, and a probe brings the shared
//! limit back once Redis answers again.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::Caller;
use crate::domain::{EnterpriseId, Error, UserRef};

/// Buckets kept before idle, full ones are forgotten (they carry no information).
const PRUNE_ABOVE: usize = 50_000;

/// How often a replica that fell back to its own buckets asks Redis whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The most tokens one round trip leases.
const LEASE_MAX: u64 = 64;

/// How long leased tokens stay spendable: not much longer than the 10 ms of rate a lease
/// holds, so a replica cannot spend a lease as a late burst.
const LEASE_LIFETIME: Duration = Duration::from_millis(20);

/// The limit every call passes before its handler runs.
pub struct RateLimiter {
    local: LocalLimit,
    shared: Option<Arc<SharedLimit>>,
}

impl RateLimiter {
    /// `per_second` tokens refill continuously up to `burst`; each RPC takes one. Kept by
    /// this replica alone.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            local: LocalLimit::new(per_second, burst),
            shared: None,
        }
    }

    /// The same limit, shared by every replica through the Redis server at `url` (connected
    /// by [`Self::warm_up`] or on first use: a Redis that is down at start is a fallback,
    /// not a failed start). Each decision waits at most `timeout` for Redis. A `rediss://`
    /// URL speaks TLS (rustls), verified against `ca` (PEM) when given, else the system's
    /// trusted roots.
    pub fn shared(
        per_second: u32,
        burst: u32,
        url: &str,
        ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let local = LocalLimit::new(per_second, burst);
        let client = match ca {
            Some(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(PROBE_EVERY);
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        let shared = Arc::new(SharedLimit {
            redis,
            script: redis::Script::new(GCRA),
            // At least 1 µs: Redis refuses an expiry of 0 ms.
            interval_micros: ((1e6 / f64::from(per_second.max(1))).round() as u64).max(1),
            burst: u64::from(burst.max(1)),
            timeout,
            lease_size: (u64::from(per_second) / 100).clamp(1, LEASE_MAX),
            leases: Mutex::default(),
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
        });
        let shared = (per_second > 0).then_some(shared);
        if shared.is_some() {
            metrics::gauge!("invitations_rate_limit_shared").set(1.0);
        }
        Ok(Self { local, shared })
    }

    /// Takes a token for the caller `subject` of `enterprise`, or says how long until one
    /// is there.
    pub async fn check(
        &self,
        enterprise: Option<EnterpriseId>,
        subject: UserRef,
    ) -> Result<(), Duration> {
        if self.local.per_second <= 0.0 {
            return Ok(());
        }
        if let Some(shared) = &self.shared
            && shared.up.load(Ordering::Acquire)
        {
            match shared.check(enterprise, subject).await {
                Ok(decision) => return decision,
                Err(reason) => shared.fall_back(&reason),
            }
        }
        self.local.check(enterprise, subject)
    }

    /// Connects to Redis and loads the script before the first call needs them, waiting
    /// at most [`PROBE_EVERY`]: otherwise a replica's first calls would pay the connection
    /// (and a TLS handshake) within a decision's timeout, fall back, and admit on their own
    /// for a probe's interval. A Redis that does not answer here is a fallback, as it would
    /// be for a call; start-up goes on either way.
    pub async fn warm_up(&self) {
        if let Some(shared) = &self.shared {
            match tokio::time::timeout(PROBE_EVERY, shared.probe_once()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => shared.fall_back(&error.to_string()),
                Err(_) => shared.fall_back(&format!(
                    "no answer within {} ms of start",
                    PROBE_EVERY.as_millis()
                )),
            }
        }
    }
}

/// Token buckets kept by this replica.
#[derive(Debug)]
struct LocalLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<(Option<EnterpriseId>, UserRef), Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl LocalLimit {
    fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    fn check(&self, enterprise: Option<EnterpriseId>, subject: UserRef) -> Result<(), Duration> {
        let now = Instant::now();
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.refilled_at).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry((enterprise, subject)).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        let refill = now.duration_since(bucket.refilled_at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

/// GCRA (the generic cell rate algorithm), the token bucket kept as one number per caller:
/// the theoretical arrival time (TAT) of its next call, in microseconds of the Redis
/// server's clock. A call fits now when TAT is at most `burst - 1` intervals ahead of now;
/// each call admitted moves TAT one interval on. This grants up to ARGV[3] calls at once
/// (those that fit). The key expires once TAT has passed (a full bucket carries no
/// information). Answers {calls granted, 0}, or {0, microseconds until one would fit}.
///
/// KEYS[1]: the caller; ARGV[1]: the interval between calls at the steady rate (µs);
/// ARGV[2]: the burst (calls); ARGV[3]: the calls wanted.
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local fit = math.floor((now + burst * interval - tat) / interval)
if fit < 1 then
  return {0, tat + interval - burst * interval - now}
end
local granted = math.min(fit, wanted)
local next_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {granted, 0}
";

/// The limit shared through Redis.
struct SharedLimit {
    redis: redis::aio::ConnectionManager,
    script: redis::Script,
    interval_micros: u64,
    burst: u64,
    /// Tokens one round trip asks for: 10 ms of the rate, at least 1, at most [`LEASE_MAX`].
    lease_size: u64,
    /// Tokens this replica holds per caller, leased from Redis.
    leases: Mutex<HashMap<(Option<EnterpriseId>, UserRef), Lease>>,
    timeout: Duration,
    /// Redis answered last time; while not, calls are decided by the local buckets.
    up: AtomicBool,
    /// A probe is running (at most one).
    probing: AtomicBool,
}

/// Tokens leased from Redis for one caller, spendable until `until`.
#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u64,
    until: Instant,
}

impl SharedLimit {
    /// The decision for one call: a token of the caller's lease, else Redis's; or why
    /// there is none.
    async fn check(
        &self,
        enterprise: Option<EnterpriseId>,
        subject: UserRef,
    ) -> Result<Result<(), Duration>, String> {
        let caller = (enterprise, subject);
        if self.spend_leased(caller) {
            return Ok(Ok(()));
        }
        let key = format!(
            "invitations:rate:{}:{}",
            enterprise.map_or_else(|| "-".to_owned(), |e| e.as_uuid().to_string()),
            subject.as_uuid()
        );
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(key);
        invocation
            .arg(self.interval_micros)
            .arg(self.burst)
            .arg(self.lease_size);
        let waited = invocation.invoke_async::<(u64, u64)>(&mut redis);
        match tokio::time::timeout(self.timeout, waited).await {
            Ok(Ok((0, micros))) => Ok(Err(Duration::from_micros(micros.max(1)))),
            Ok(Ok((granted, _))) => {
                // One token for this call; the rest for this caller's next ones here.
                self.keep_leased(caller, granted - 1);
                Ok(Ok(()))
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<(Option<EnterpriseId>, UserRef), Lease>> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a token of the caller's lease, if it holds one still spendable.
    fn spend_leased(&self, caller: (Option<EnterpriseId>, UserRef)) -> bool {
        let mut leases = self.leases();
        match leases.get_mut(&caller) {
            Some(lease) if lease.tokens > 0 && lease.until > Instant::now() => {
                lease.tokens -= 1;
                true
            }
            _ => false,
        }
    }

    /// Keeps `tokens` leased for the caller's next calls on this replica.
    fn keep_leased(&self, caller: (Option<EnterpriseId>, UserRef), tokens: u64) {
        if tokens == 0 {
            return;
        }
        let now = Instant::now();
        let mut leases = self.leases();
        if leases.len() > PRUNE_ABOVE {
            leases.retain(|_, lease| lease.until > now);
        }
        let lease = leases.entry(caller).or_insert(Lease {
            tokens: 0,
            until: now,
        });
        // Tokens of a lapsed lease are not carried over: they were leased for then.
        if lease.until <= now {
            lease.tokens = 0;
        }
        lease.tokens += tokens;
        lease.until = now + LEASE_LIFETIME;
    }

    /// From now on the local buckets decide, until a probe finds Redis answering.
    fn fall_back(self: &Arc<Self>, reason: &str) {
        metrics::counter!("invitations_rate_limit_fallbacks_total").increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("invitations_rate_limit_shared").set(0.0);
            tracing::warn!(
                %reason,
                "rate limit: Redis did not answer; each replica limits callers on its own \
                 until it does"
            );
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().probe());
        }
    }

    /// Runs the script once for a caller of its own (connecting first if need be).
    async fn probe_once(&self) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key("invitations:rate:probe");
        invocation.arg(self.interval_micros).arg(self.burst).arg(1);
        invocation.invoke_async::<(u64, u64)>(&mut redis).await?;
        Ok(())
    }

    /// Runs the script every [`PROBE_EVERY`], for a caller of its own, until Redis answers
    /// it (not just a PING: a Redis that answers but cannot run the script, a read-only
    /// replica after a failover say, must not bring the shared limit back), then shares the
    /// limit again.
    async fn probe(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if let Ok(Ok(())) =
                tokio::time::timeout(self.timeout.max(PROBE_EVERY / 2), self.probe_once()).await
            {
                break;
            }
        }
        // `up` last: until then no call asks Redis, so none can fall back and find a probe
        // still marked as running.
        self.probing.store(false, Ordering::Release);
        metrics::gauge!("invitations_rate_limit_shared").set(1.0);
        tracing::info!("rate limit: Redis answers again; the limit is shared by the replicas");
        self.up.store(true, Ordering::Release);
    }
}

/// The rate limit in front of the invitations service, behind its authentication: a call
/// the caller's limit refuses is answered RESOURCE_EXHAUSTED (`RATE_LIMITED`) before its
/// request is read.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

/// Served under the name of the service it guards.
impl<S: tonic::server::NamedService> tonic::server::NamedService for RateLimited<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<Body>> for RateLimited<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a fresh clone takes its place.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let limiter = self.limiter.clone();
        let caller = request
            .extensions()
            .get::<Arc<Caller>>()
            .map(|caller| (caller.enterprise, caller.subject));
        Box::pin(async move {
            if let Some((enterprise, subject)) = caller
                && let Err(retry_after) = limiter.check(enterprise, subject).await
            {
                return Ok(tonic::Status::from(Error::RateLimited { retry_after }).into_http());
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        limiter: &LocalLimit,
        (enterprise, subject): (Option<EnterpriseId>, UserRef),
    ) -> Result<(), Duration> {
        limiter.check(enterprise, subject)
    }

    fn caller(enterprise: u128, subject: u128) -> (Option<EnterpriseId>, UserRef) {
        (
            Some(EnterpriseId::from_uuid(uuid::Uuid::from_u128(enterprise))),
            UserRef::from_uuid(uuid::Uuid::from_u128(subject)),
        )
    }

    #[test]
    fn a_burst_then_a_real_delay_per_caller() {
        let limiter = LocalLimit::new(2, 3);
        let alice = caller(1, 1);
        for _ in 0..3 {
            assert_eq!(check(&limiter, alice), Ok(()));
        }
        let delay = check(&limiter, alice).expect_err("over the burst");
        assert!(
            delay > Duration::from_millis(400) && delay <= Duration::from_millis(500),
            "{delay:?}"
        );
        // The same subject in another enterprise, and another subject, are other callers.
        assert_eq!(check(&limiter, caller(2, 1)), Ok(()));
        assert_eq!(check(&limiter, caller(1, 2)), Ok(()));
    }

    #[tokio::test]
    async fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0, 1);
        let (enterprise, subject) = caller(1, 1);
        for _ in 0..100 {
            assert_eq!(limiter.check(enterprise, subject).await, Ok(()));
        }
    }
}
