//! PostgreSQL connections kept checked out between requests, for reads and for the
//! single-statement conditional writes.
//!
//! sqlx 0.9 pings every connection that goes back to its pool (`sqlx-core`
//! `pool/connection.rs`, `return_to_pool`, in a task it spawns; there is no option to turn
//! it off). That is a second round trip and a second wake-up of PostgreSQL per request;
//! measured on List, about a tenth of the service's CPU and a seventh of PostgreSQL's
//! (BENCHMARKS.md). A request here takes a connection that an earlier one left, and leaves
//! it for the next, so a busy service pings only when a connection goes back to the pool.
//! Transactions still take their connections from the pool.
//!
//! What keeps the pool's guarantees:
//! - only a connection whose statement ran to its end is kept; a failed or abandoned read
//!   (a dropped future) drops it back into the pool, whose ping sorts out its state;
//! - at most half the pool is kept, so transactions always find connections;
//! - a connection kept longer than [`HotConnections::IDLE`], or out of the pool longer
//!   than [`HotConnections::CIRCULATION`], is not reused: the next request hands it back
//!   to the pool (which tests it before reuse after 30 s idle), so the pool's lifetime and
//!   idle rules still apply. Without requests they stay kept, at most half the pool;
//! - a store declared down or closed drops them all.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{PgPool, Postgres};

use crate::error::Error;

pub(super) struct HotConnections {
    idle: Mutex<Vec<HotConnection>>,
    capacity: usize,
    closed: AtomicBool,
}

pub(super) struct HotConnection {
    pub connection: PoolConnection<Postgres>,
    checked_out_at: Instant,
    last_used: Instant,
}

impl HotConnections {
    /// A kept connection unused this long goes back to the pool.
    pub const IDLE: Duration = Duration::from_secs(10);
    /// A connection goes back to the pool this long after it was taken from it.
    pub const CIRCULATION: Duration = Duration::from_secs(60);

    pub fn new(max_connections: u32) -> Self {
        let capacity = (max_connections / 2) as usize;
        Self {
            idle: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            closed: AtomicBool::new(false),
        }
    }

    /// The most recently kept connection that is still fresh, if any.
    fn take(&self) -> Option<HotConnection> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                match idle.pop() {
                    Some(hot) if hot.is_fresh(now) => break Some(hot),
                    Some(hot) => stale.push(hot),
                    None => break None,
                }
            }
        };
        // Dropped outside the lock: each drop hands its connection back to the pool.
        drop(stale);
        kept
    }

    /// A kept connection (`true`) or, when none is fresh, one from the pool (`false`).
    pub async fn checkout(&self, pool: &PgPool) -> Result<(HotConnection, bool), Error> {
        match self.take() {
            Some(kept) => Ok((kept, true)),
            None => Ok((
                HotConnection::acquire(pool)
                    .await
                    .map_err(super::sqlx_failure)?,
                false,
            )),
        }
    }

    /// Keeps a connection whose statement ran to its end, if there is room.
    pub fn keep(&self, mut hot: HotConnection) {
        hot.last_used = Instant::now();
        if self.closed.load(Ordering::Acquire) || !hot.is_fresh(hot.last_used) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.capacity {
            idle.push(hot);
        }
    }

    /// Hands every kept connection back to the pool.
    pub fn release_all(&self) {
        let kept = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(kept);
    }

    /// Keeps nothing from now on, and hands every kept connection back.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.release_all();
    }
}

impl HotConnection {
    /// A pooled connection that answers a ping. One that does not is closed (not returned),
    /// and the next is tried, as many times as the pool has connections.
    pub async fn acquire_live(pool: &PgPool) -> Result<Self, Error> {
        use sea_orm::sqlx::Connection;
        let mut last_failure = None;
        for _ in 0..pool.options().get_max_connections().max(1) {
            let mut hot = Self::acquire(pool).await.map_err(super::sqlx_failure)?;
            match hot.connection.ping().await {
                Ok(()) => return Ok(hot),
                Err(failure) => {
                    hot.connection.close_on_drop();
                    last_failure = Some(failure);
                }
            }
        }
        Err(last_failure.map_or_else(
            || Error::DatabaseUnavailable("no live database connection".into()),
            super::sqlx_failure,
        ))
    }

    /// A connection from the pool, waiting as long as the pool's acquire timeout.
    pub async fn acquire(pool: &PgPool) -> Result<Self, sea_orm::sqlx::Error> {
        let connection = pool.acquire().await?;
        let now = Instant::now();
        Ok(Self {
            connection,
            checked_out_at: now,
            last_used: now,
        })
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) < HotConnections::IDLE
            && now.duration_since(self.checked_out_at) < HotConnections::CIRCULATION
    }
}
