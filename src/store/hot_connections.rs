//! PostgreSQL connections kept checked out between requests, for reads and for the
//! single-statement conditional writes.
//!
//! sqlx 0.9 pings every connection that goes back to its pool (`sqlx-core`
//! `pool/connection.rs`, `return_to_pool`, in a task it spawns; there is no option to turn
//! it off). That is a second round trip and a second wake-up of PostgreSQL per request
//! (what it costs, measured: `docs/adr/0001-kept-postgres-connections.md`). A request here
//! takes a connection that an earlier one left, and leaves
//! it for the next, so a busy service pings only when a connection goes back to the pool.
//! Transactions still take their connections from the pool.
//!
//! Under overload (more requests than connections) a request that finds no kept connection,
//! and the pool without one to give, waits for whichever comes first: a connection handed
//! over by a request that finishes, in the order the waiters arrived, or one from the pool.
//! Without the hand-over, a finishing request would keep its connection for whichever
//! request came next, and the ones already queued in the pool would wait until the load
//! fell: a tail latency many times the median under overload.
//!
//! What keeps the pool's guarantees:
//! - only a connection whose statement ran to its end is kept; a failed or abandoned read
//!   (a dropped future) drops it back into the pool, whose ping sorts out its state;
//! - at most half the pool is kept idle, so transactions find connections when the reads
//!   leave them room;
//! - a connection kept longer than [`HotConnections::IDLE`], or out of the pool longer
//!   than [`HotConnections::CIRCULATION`], is neither reused nor handed over: it goes back
//!   to the pool (which tests it before reuse after 30 s idle), so the pool's lifetime and
//!   idle rules still apply. Without requests they stay kept, at most half the pool;
//! - a store declared down or closed drops them all.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;

use crate::domain::Error;

pub(super) struct HotConnections {
    state: Mutex<State>,
    capacity: usize,
    closed: AtomicBool,
}

struct State {
    /// Kept connections, the most recently used last.
    idle: Vec<HotConnection>,
    /// Requests waiting for a connection, oldest first. A waiter that got one from the pool
    /// first, or gave up, has closed its end and is skipped.
    waiting: VecDeque<oneshot::Sender<HotConnection>>,
    /// How long `waiting` may grow before closed ends are swept out of it.
    sweep_at: usize,
}

pub(super) struct HotConnection {
    pub connection: PoolConnection<Postgres>,
    checked_out_at: Instant,
    last_used: Instant,
}

/// What a request gets when it asks for a connection.
enum Turn {
    Kept(HotConnection),
    Pool,
    Wait(oneshot::Receiver<HotConnection>),
}

impl HotConnections {
    /// A kept connection unused this long goes back to the pool.
    pub const IDLE: Duration = Duration::from_secs(10);
    /// A connection goes back to the pool this long after it was taken from it.
    pub const CIRCULATION: Duration = Duration::from_secs(60);
    const FIRST_SWEEP: usize = 64;

    pub fn new(max_connections: u32) -> Self {
        let capacity = (max_connections / 2) as usize;
        Self {
            state: Mutex::new(State {
                idle: Vec::with_capacity(capacity),
                waiting: VecDeque::new(),
                sweep_at: Self::FIRST_SWEEP,
            }),
            capacity,
            closed: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently kept connection that is still fresh or, when there is none, the
    /// pool or (when `pool_is_exhausted`) a place in the queue of waiting requests.
    fn take_or_queue(&self, pool_is_exhausted: impl Fn() -> bool) -> Turn {
        let now = Instant::now();
        let mut stale = Vec::new();
        let turn = {
            let mut state = self.state();
            loop {
                match state.idle.pop() {
                    Some(hot) if hot.is_fresh(now) => break Turn::Kept(hot),
                    Some(hot) => stale.push(hot),
                    None if pool_is_exhausted() => break Turn::Wait(state.queue()),
                    None => break Turn::Pool,
                }
            }
        };
        // Dropped outside the lock: each drop hands its connection back to the pool.
        drop(stale);
        turn
    }

    /// A kept connection (`true`) or one from the pool (`false`). When the pool has none to
    /// give, the request also joins the queue, and takes whichever comes first: a
    /// connection a finishing request hands over, in the order the requests asked, or one
    /// from the pool.
    ///
    /// Only then: a request served by a hand-over drops its pool request, and while the
    /// pool could still open connections that request might be half-way through opening
    /// one (measured: racing always, List at c=32 fell to a quarter of its throughput as
    /// cancelled connection attempts piled up).
    pub async fn checkout(&self, pool: &PgPool) -> Result<(HotConnection, bool), Error> {
        let started = Instant::now();
        let checked_out = self.take_or_wait(pool).await;
        metrics::histogram!("invitations_db_connection_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        checked_out
    }

    /// Kept connections counted as idle by the pool's gauges.
    pub fn idle_count(&self) -> usize {
        self.state().idle.len()
    }

    async fn take_or_wait(&self, pool: &PgPool) -> Result<(HotConnection, bool), Error> {
        let pool_is_exhausted =
            || pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections();
        let mut handed_over = match self.take_or_queue(pool_is_exhausted) {
            Turn::Kept(hot) => return Ok((hot, true)),
            Turn::Pool => return Self::from_pool(pool).await,
            Turn::Wait(receiver) => receiver,
        };
        tokio::select! {
            biased;
            handed = &mut handed_over => match handed {
                Ok(hot) => Ok((hot, true)),
                // Only a closing store drops the queue: the pool has the last word.
                Err(_) => Self::from_pool(pool).await,
            },
            acquired = HotConnection::acquire(pool) => {
                // A connection handed over meanwhile goes to the next waiter, or is kept.
                handed_over.close();
                if let Ok(hot) = handed_over.try_recv() {
                    self.keep(hot);
                }
                Ok((acquired.map_err(super::sqlx_failure)?, false))
            }
        }
    }

    async fn from_pool(pool: &PgPool) -> Result<(HotConnection, bool), Error> {
        let hot = HotConnection::acquire(pool)
            .await
            .map_err(super::sqlx_failure)?;
        Ok((hot, false))
    }

    /// Hands a connection whose statement ran to its end to the longest-waiting request,
    /// or keeps it if there is room.
    pub fn keep(&self, mut hot: HotConnection) {
        hot.last_used = Instant::now();
        if self.closed.load(Ordering::Acquire) || !hot.is_fresh(hot.last_used) {
            return;
        }
        let surplus = {
            let mut state = self.state();
            let mut connection = hot;
            loop {
                match state.waiting.pop_front() {
                    Some(waiter) => match waiter.send(connection) {
                        Ok(()) => break None,
                        // That request was served by the pool, or gave up.
                        Err(back) => connection = back,
                    },
                    None if state.idle.len() < self.capacity => {
                        state.idle.push(connection);
                        break None;
                    }
                    None => break Some(connection),
                }
            }
        };
        // Outside the lock: the drop hands the connection back to the pool.
        drop(surplus);
    }

    /// Hands every kept connection back to the pool.
    pub fn release_all(&self) {
        let kept = std::mem::take(&mut self.state().idle);
        drop(kept);
    }

    /// Keeps nothing from now on, and hands every kept connection back.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let (kept, waiting) = {
            let mut state = self.state();
            (
                std::mem::take(&mut state.idle),
                std::mem::take(&mut state.waiting),
            )
        };
        drop((kept, waiting));
    }
}

impl State {
    fn queue(&mut self) -> oneshot::Receiver<HotConnection> {
        // Waiters that were served by the pool leave their closed ends behind until a
        // hand-over meets them; when no request finishes (the database is down, say) they
        // would pile up, so they are swept out whenever the queue doubles.
        if self.waiting.len() >= self.sweep_at {
            self.waiting.retain(|waiter| !waiter.is_closed());
            self.sweep_at = (self.waiting.len() * 2).max(HotConnections::FIRST_SWEEP);
        }
        let (sender, receiver) = oneshot::channel();
        self.waiting.push_back(sender);
        receiver
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use sea_orm::sqlx::postgres::PgPoolOptions;

    use super::*;

    /// A pool of `size` connections, or `None` (saying so) outside CI without PostgreSQL.
    async fn pool(size: u32) -> Option<PgPool> {
        let url = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
                panic!("TEST_DATABASE_URL must be set in CI")
            }
            _ => {
                eprintln!("skipping: TEST_DATABASE_URL is not set");
                return None;
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .expect("connect");
        Some(pool)
    }

    async fn until_waiting(hot: &HotConnections, count: usize) {
        for _ in 0..500 {
            let live = hot
                .state()
                .waiting
                .iter()
                .filter(|w| !w.is_closed())
                .count();
            if live == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("never {count} waiting");
    }

    /// With the pool exhausted, finishing requests hand their connections to the waiting
    /// ones in arrival order; a waiter that gave up is passed over; with nobody waiting the
    /// connection is kept for the next request.
    #[tokio::test]
    async fn finishing_requests_hand_over_in_arrival_order() {
        let Some(pool) = pool(2).await else { return };
        let hot = Arc::new(HotConnections::new(2));
        let (first, _) = hot.checkout(&pool).await.expect("first");
        let (second, _) = hot.checkout(&pool).await.expect("second");
        // The pool is empty: the next three wait, oldest first.
        let waiter = |hot: &Arc<HotConnections>| {
            let (hot, pool) = (Arc::clone(hot), pool.clone());
            tokio::spawn(async move { hot.checkout(&pool).await })
        };
        let gives_up = waiter(&hot);
        until_waiting(&hot, 1).await;
        let oldest = waiter(&hot);
        until_waiting(&hot, 2).await;
        let youngest = waiter(&hot);
        until_waiting(&hot, 3).await;
        gives_up.abort();
        assert!(gives_up.await.is_err(), "aborted");

        hot.keep(first);
        let (handed, kept) = oldest.await.expect("task").expect("oldest");
        assert!(kept, "handed over, not taken from the pool");
        assert!(!youngest.is_finished(), "the youngest still waits");
        hot.keep(second);
        let (handed_too, kept) = youngest.await.expect("task").expect("youngest");
        assert!(kept);

        // Nobody waits now: a finishing request's connection is kept for the next one.
        hot.keep(handed);
        assert_eq!(hot.state().idle.len(), 1);
        let (again, kept) = hot.checkout(&pool).await.expect("again");
        assert!(kept);
        hot.keep(again);
        hot.keep(handed_too);
        // At most half the pool stays kept; the other connection went back to the pool.
        assert_eq!(hot.state().idle.len(), 1);
        hot.close();
        pool.close().await;
    }

    /// Waiters served by the pool leave closed ends in the queue; they are swept out before
    /// they pile up.
    #[tokio::test]
    async fn closed_waiters_are_swept_out() {
        let hot = HotConnections::new(2);
        for _ in 0..1000 {
            drop(hot.state().queue());
        }
        let live = hot.state().queue();
        let state = hot.state();
        assert!(
            state.waiting.len() <= HotConnections::FIRST_SWEEP + 1,
            "{} waiting",
            state.waiting.len()
        );
        assert!(state.waiting.back().is_some_and(|w| !w.is_closed()));
        drop(state);
        drop(live);
    }
}
