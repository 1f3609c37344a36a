//! The process's one reader of the outbox, and its fan-out to the watches it serves.
//!
//! One task reads every enterprise's new events, up to the store's horizon (below which
//! every event has committed: see `InvitationRepository::event_horizon`), and hands each one
//! to the bounded queue of each watch that wants it. So a hundred watches cost one read of
//! the outbox, not a hundred, and no watch can make the process hold more than its queue: a
//! watch whose queue is full is dropped here, marked lagged, and decides for itself what
//! that means (`watch::stream`).
//!
//! The reader wakes when this process commits events (at once), when another process says
//! it did (PostgreSQL LISTEN/NOTIFY, through the store), and at the poll interval in any
//! case, which covers a lost notification or a store that cannot notify.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{EnterpriseId, InvitationEvent, InvitationRepository, WatchFilter};

/// Events read from the outbox per statement.
const READ_BATCH: u64 = 1000;

/// The least time between two reads: under a steady stream of changes, reads gather what
/// arrived meanwhile instead of running back to back.
const MIN_READ_INTERVAL: Duration = Duration::from_millis(20);

/// How long the reader waits before trying again after a failed read.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// An event as the reader hands it out: shared by every watch that wants it.
pub type SharedEvent = Arc<HubEvent>;

/// An event, and the bytes a transport made of it for the first watch that sent it, which
/// every other watch sending it reuses: the bytes, and the offset at which a watch's own
/// part (its cursor) goes.
#[derive(Debug)]
pub struct HubEvent {
    pub event: InvitationEvent,
    pub encoded: OnceLock<(bytes::Bytes, usize)>,
}

impl HubEvent {
    pub fn new(event: InvitationEvent) -> SharedEvent {
        Arc::new(Self {
            event,
            encoded: OnceLock::new(),
        })
    }
}

struct Entry {
    id: u64,
    filter: Arc<WatchFilter>,
    queue: mpsc::Sender<SharedEvent>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    /// Every event up to here has been handed out; `None` until the first read.
    settled: Option<i64>,
    next_id: u64,
    watches: HashMap<EnterpriseId, Vec<Entry>>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken when `settled` is first known.
    started: tokio::sync::Notify,
    /// `settled`, for those who follow it without a queue (the relay).
    settled_changes: tokio::sync::watch::Sender<Option<i64>>,
    /// Those who follow `settled` without a queue and want it current (the relay).
    followers: std::sync::atomic::AtomicUsize,
    /// Woken when a watch joins, so the reader reads for it at once.
    joined: tokio::sync::Notify,
    queue_len: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every change to it is
        // one assignment), so a poisoned lock is taken as it is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The reader and its watches; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    shared: Arc<Shared>,
}

/// One watch's place at the hub: every event it wants after `from` arrives on its queue,
/// until the queue overflows (then [`Subscription::lagged`]). Leaves the hub when dropped.
pub struct Subscription {
    pub from: i64,
    queue: mpsc::Receiver<SharedEvent>,
    lagged: Arc<AtomicBool>,
    id: u64,
    enterprise: EnterpriseId,
    hub: Arc<Shared>,
}

impl EventHub {
    /// A hub whose watches each queue at most `queue_len` events.
    pub fn new(queue_len: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                started: tokio::sync::Notify::new(),
                settled_changes: tokio::sync::watch::Sender::new(None),
                followers: std::sync::atomic::AtomicUsize::new(0),
                joined: tokio::sync::Notify::new(),
                queue_len: queue_len.max(1),
            }),
        }
    }

    /// The most queued events a watch may have.
    pub fn queue_len(&self) -> usize {
        self.shared.queue_len
    }

    /// Every event up to this position has been handed out (`None` before the first read).
    pub fn settled(&self) -> Option<i64> {
        self.shared.lock().settled
    }

    /// Follows [`EventHub::settled`]: every event up to the value has committed, so a reader
    /// of the outbox may read up to it (the store's horizon, already waited for). The reader
    /// keeps it current as long as the receiver lives.
    pub fn settled_changes(&self) -> Follower {
        self.shared.followers.fetch_add(1, Ordering::AcqRel);
        Follower {
            changes: self.shared.settled_changes.subscribe(),
            hub: self.shared.clone(),
        }
    }

    /// Whether anyone needs the reader to keep up with every change: a watch, or a follower.
    fn wanted(&self) -> bool {
        self.shared.followers.load(Ordering::Acquire) > 0 || !self.shared.lock().watches.is_empty()
    }

    /// With nobody to hand events to, moves `settled` to the horizon without reading the
    /// events below it; a watch that joined meanwhile stops it (the next read is for it).
    async fn skip_ahead<R: InvitationRepository>(
        &self,
        store: &R,
    ) -> Result<(), crate::domain::Error> {
        let horizon = store.event_horizon().await?;
        let mut state = self.shared.lock();
        if !state.watches.is_empty() {
            return Ok(());
        }
        let now_settled = state.settled.map_or(horizon, |s| s.max(horizon));
        state.settled = Some(now_settled);
        Ok(())
    }

    /// A place for `filter`'s watch, once the reader knows where the outbox ends. The first
    /// watch to join an idle reader first moves it to the end of the outbox, so that the
    /// reader does not hand it a backlog in one go (which would overflow its queue).
    pub async fn subscribe<R: InvitationRepository>(
        &self,
        filter: Arc<WatchFilter>,
        store: &R,
    ) -> Subscription {
        if self.settled().is_some() && !self.wanted() {
            // Best effort: if the store cannot say, the reader catches up as it can.
            let _ = self.skip_ahead(store).await;
        }
        loop {
            let started = self.shared.started.notified();
            {
                let mut state = self.shared.lock();
                if let Some(from) = state.settled {
                    let (sender, queue) = mpsc::channel(self.shared.queue_len);
                    let lagged = Arc::new(AtomicBool::new(false));
                    let id = state.next_id;
                    state.next_id += 1;
                    let enterprise = filter.enterprise;
                    state.watches.entry(enterprise).or_default().push(Entry {
                        id,
                        filter,
                        queue: sender,
                        lagged: lagged.clone(),
                    });
                    drop(state);
                    metrics::gauge!("invitations_watch_streams").increment(1.0);
                    self.shared.joined.notify_one();
                    return Subscription {
                        from,
                        queue,
                        lagged,
                        id,
                        enterprise,
                        hub: self.shared.clone(),
                    };
                }
            }
            started.await;
        }
    }

    /// Hands out `events` (in position order) and records that every event up to `settled`
    /// has been handed out, in one step under the lock, so a watch that finds its queue
    /// empty knows it has everything up to `settled`.
    fn publish(&self, events: &[InvitationEvent], settled: i64) {
        let mut state = self.shared.lock();
        for event in events {
            let Some(watches) = state.watches.get_mut(&event.invitation.enterprise) else {
                continue;
            };
            let mut shared: Option<SharedEvent> = None;
            watches.retain(|watch| {
                if !watch.filter.matches(event) {
                    return true;
                }
                let event = shared
                    .get_or_insert_with(|| HubEvent::new(event.clone()))
                    .clone();
                match watch.queue.try_send(event) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        watch.lagged.store(true, Ordering::Release);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
        state.watches.retain(|_, watches| !watches.is_empty());
        let first = state.settled.is_none();
        let now_settled = state.settled.map_or(settled, |s| s.max(settled));
        state.settled = Some(now_settled);
        drop(state);
        self.shared
            .settled_changes
            .send_if_modified(|seen| seen.replace(now_settled) != Some(now_settled));
        if first {
            self.shared.started.notify_waiters();
        }
    }

    /// Reads the outbox until `stop`: once at start (where it ends), then whenever events
    /// may have been written, and every `poll`.
    pub async fn run<R: InvitationRepository>(
        self,
        store: R,
        poll: Duration,
        stop: CancellationToken,
    ) {
        // Without a watch or a follower, the reader does not read on every change (each read
        // waits for the store's horizon, which costs the database): it only keeps `settled`
        // near the end of the outbox, once per `poll`, for the next watch to join.
        let mut polled = true;
        loop {
            let read = if self.settled().is_none() || self.wanted() {
                self.read(&store).await
            } else if polled {
                self.skip_ahead(&store).await
            } else {
                Ok(())
            };
            if let Err(error) = read {
                tracing::debug!(%error, "outbox not read; trying again");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_DELAY) => continue,
                }
            }
            // Other replicas' watches wait for this, whether or not this one has any.
            if let Err(error) = store.announce_events().await {
                tracing::debug!(%error, "events not announced to other replicas");
            }
            polled = tokio::select! {
                () = stop.cancelled() => return,
                () = store.events_written() => false,
                () = self.shared.joined.notified() => false,
                () = tokio::time::sleep(poll) => true,
            };
            tokio::time::sleep(MIN_READ_INTERVAL).await;
        }
    }

    /// Hands out every event committed since the last read.
    async fn read<R: InvitationRepository>(&self, store: &R) -> Result<(), crate::domain::Error> {
        loop {
            let horizon = store.event_horizon().await?;
            let Some(settled) = self.settled() else {
                // The first read: watches start from where the outbox ends now.
                self.publish(&[], horizon);
                return Ok(());
            };
            if horizon <= settled {
                return Ok(());
            }
            let events = store.events_since(settled, horizon, READ_BATCH).await?;
            let complete = (events.len() as u64) < READ_BATCH;
            let reached = match events.last() {
                Some(last) if !complete => last.position,
                _ => horizon,
            };
            self.publish(&events, reached);
            if complete {
                return Ok(());
            }
        }
    }
}

impl Subscription {
    /// The next event, once one is queued; `None` when the subscription has ended (its queue
    /// overflowed: see [`Subscription::lagged`]).
    pub async fn next(&mut self) -> Option<SharedEvent> {
        self.queue.recv().await
    }

    /// A queued event, if one is there now.
    pub fn try_next(&mut self) -> Option<SharedEvent> {
        self.queue.try_recv().ok()
    }

    /// The queue overflowed: the hub dropped this watch after the events already queued.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// Where this watch is once its queue is empty: every event it wants up to the returned
    /// position has reached it. `None` while events are queued, or after it lagged.
    pub fn quiet_position(&self) -> Option<i64> {
        let settled = self.hub.lock().settled;
        if self.queue.is_empty() && !self.lagged() {
            settled
        } else {
            None
        }
    }
}

/// A follower of [`EventHub::settled`] (see [`EventHub::settled_changes`]).
pub struct Follower {
    pub changes: tokio::sync::watch::Receiver<Option<i64>>,
    hub: Arc<Shared>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.hub.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!("invitations_watch_streams").decrement(1.0);
        let mut state = self.hub.lock();
        if let Some(watches) = state.watches.get_mut(&self.enterprise) {
            watches.retain(|watch| watch.id != self.id);
            if watches.is_empty() {
                state.watches.remove(&self.enterprise);
            }
        }
    }
}
