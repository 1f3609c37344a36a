//! WatchInvitations: a stream of the changes of one enterprise's invitations, resumable from
//! any cursor it gave.
//!
//! A watch reads the events it missed from the outbox itself (from its start cursor up to
//! where the process's reader, [`hub::EventHub`], stood when the watch joined it), then takes
//! the rest from its queue at the hub. Either way it delivers an event only once every event
//! before it has committed (the store's horizon), in position order, so a client that
//! resumes after the last cursor it saw gets exactly the events after it.
//!
//! A watch ends, always with a cursor to resume from:
//! - after its maximum age (jittered down by up to a tenth, so that reconnecting clients
//!   spread over replicas), with a last message saying so;
//! - when the process drains for shutdown, likewise;
//! - with RESOURCE_EXHAUSTED `WATCH_TOO_SLOW` when its client reads slower than its events
//!   arrive and its queue overflows. A watch whose queue overflows while it is still reading
//!   missed events from the outbox is not the client's fault: it reads on from the outbox.
pub mod hub;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    Error, Invitation, InvitationRepository, InvitationService, ListQuery, MAX_PAGE_SIZE,
    Timestamp, ViolationReason, WatchCursor, WatchCursors, WatchFilter, WatchQuery,
};
use hub::{EventHub, HubEvent, SharedEvent, Subscription};

/// Events read from the outbox per statement while catching up.
const CATCH_UP_BATCH: u64 = 500;

/// The most events one message carries.
const EVENTS_PER_MESSAGE: usize = 100;

/// How watches behave (`INVITATIONS_WATCH_*`).
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// An idle watch sends a checkpoint this often.
    pub checkpoint: Duration,
    /// A watch ends after about this long.
    pub max_age: Duration,
    /// Events a watch may have queued before it is too slow.
    pub queue_len: usize,
    /// How often the outbox is read when nothing says it changed.
    pub poll: Duration,
}

/// Why a watch ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    MaxAge,
    Shutdown,
}

/// What a watch sends.
#[derive(Debug)]
pub enum WatchItem {
    /// A page of the initial state, with the instant its statuses were evaluated at.
    InitialState {
        items: Vec<Invitation>,
        evaluated_at: Timestamp,
    },
    /// The initial state is complete; changes after `cursor` follow.
    InitialStateComplete { cursor: String },
    /// Events in position order, each with its cursor; `cursor` is the last one's.
    Events {
        events: Vec<(SharedEvent, String)>,
        cursor: String,
    },
    /// Nothing happened for a while; the watch is at `cursor`.
    Checkpoint { cursor: String },
    /// The last message.
    End { reason: WatchEnd, cursor: String },
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem, Error>> + Send>>;

/// Opens watches; one per process, cheap to clone.
#[derive(Clone)]
pub struct Watcher<R> {
    store: R,
    service: InvitationService<R>,
    hub: EventHub,
    cursors: WatchCursors,
    settings: WatchSettings,
    drain: CancellationToken,
}

/// What the live part of a watch woke up for.
enum Wake {
    /// The drain began, or the maximum age passed.
    End,
    Event(Option<SharedEvent>),
    Idle,
}

impl<R: InvitationRepository> Watcher<R> {
    /// Watches fed by `hub`, which ends them (with a cursor) once `drain` is cancelled.
    pub fn new(
        store: R,
        service: InvitationService<R>,
        hub: EventHub,
        cursors: WatchCursors,
        settings: WatchSettings,
        drain: CancellationToken,
    ) -> Self {
        Self {
            store,
            service,
            hub,
            cursors,
            settings,
            drain,
        }
    }

    /// Checks the query (its cursor included) and opens the watch. Without a cursor the
    /// watch starts where the outbox ends when this returns, before the client hears that
    /// the watch is open: every change committed after that reaches it.
    pub async fn open(&self, query: WatchQuery) -> Result<WatchStream, Error> {
        let start = query
            .start_cursor
            .as_deref()
            .map(|token| self.cursors.decode(token, &query.filter, Timestamp::now()))
            .transpose()?
            .map(|cursor| cursor.position);
        if query.send_initial_state && start.is_some() {
            return Err(Error::invalid(
                "send_initial_state",
                ViolationReason::InvalidFormat,
                "cannot be combined with start_cursor: the initial state is the state now",
            ));
        }
        let watch = self.clone();
        let filter = Arc::new(query.filter);
        let initial_state = query.send_initial_state;
        let deadline = Instant::now() + jittered(self.settings.max_age);
        // Not where the hub has read to, which may be behind (or not known yet).
        let mut position = match start {
            Some(position) => position,
            None => self.store.event_horizon().await?,
        };
        Ok(Box::pin(async_stream::try_stream! {
            let cursor = |position: i64| {
                watch.cursors.encode(
                    WatchCursor { position, issued_at: Timestamp::now() },
                    &filter,
                )
            };
            if initial_state {
                let mut page_token = None;
                loop {
                    if watch.drain.is_cancelled() {
                        Err(Error::ShuttingDown)?;
                    }
                    let page = watch.service.list(ListQuery {
                        enterprise: filter.enterprise,
                        scope: filter.scope.clone(),
                        statuses: filter.statuses.clone(),
                        email: filter.email.clone(),
                        page_size: MAX_PAGE_SIZE,
                        page_token,
                    }).await?;
                    page_token = page.next_page_token;
                    if !page.items.is_empty() {
                        yield WatchItem::InitialState {
                            items: page.items,
                            evaluated_at: page.evaluated_at,
                        };
                    }
                    if page_token.is_none() {
                        break;
                    }
                }
                yield WatchItem::InitialStateComplete { cursor: cursor(position) };
            }
            'watch: loop {
                let mut joined = watch.join(&filter).await?;
                // What the hub had handed out before this watch joined it. A position past
                // the hub's (it has not read that far yet) skips the hub's events up to it.
                while position < joined.from {
                    if watch.drain.is_cancelled() || Instant::now() >= deadline {
                        break 'watch;
                    }
                    let batch = watch
                        .store
                        .events_after(filter.enterprise, Some(position), joined.from, CATCH_UP_BATCH)
                        .await?;
                    let reached = match batch.last() {
                        Some(last) if batch.len() as u64 == CATCH_UP_BATCH => last.position,
                        _ => joined.from,
                    };
                    position = reached;
                    let events: Vec<(SharedEvent, String)> = batch
                        .into_iter()
                        .filter(|event| filter.matches(event))
                        .map(|event| {
                            let at = cursor(event.position);
                            (HubEvent::new(event), at)
                        })
                        .collect();
                    for chunk in chunks(events) {
                        let last = chunk.last().map(|(_, at)| at.clone()).unwrap_or_default();
                        yield WatchItem::Events { events: chunk, cursor: last };
                    }
                }
                if joined.lagged() {
                    // Fell behind while catching up: read on from the outbox.
                    continue 'watch;
                }
                loop {
                    let wake = tokio::select! {
                        biased;
                        () = watch.drain.cancelled() => Wake::End,
                        () = tokio::time::sleep_until(deadline) => Wake::End,
                        event = joined.next() => Wake::Event(event),
                        () = tokio::time::sleep(watch.settings.checkpoint) => Wake::Idle,
                    };
                    match wake {
                        Wake::End => {
                            if let Some(quiet) = joined.quiet_position() {
                                position = position.max(quiet);
                            }
                            break 'watch;
                        }
                        Wake::Event(None) => {
                            Err(Error::WatchTooSlow {
                                resume_cursor: cursor(position),
                                buffer: watch.hub.queue_len(),
                            })?;
                        }
                        Wake::Event(Some(first)) => {
                            let mut events = Vec::new();
                            let mut next = Some(first);
                            while let Some(event) = next {
                                // A cursor from a replica whose reader was ahead of this one's.
                                if event.event.position > position {
                                    position = event.event.position;
                                    events.push((event, cursor(position)));
                                }
                                next = if events.len() < EVENTS_PER_MESSAGE {
                                    joined.try_next()
                                } else {
                                    None
                                };
                            }
                            if let Some((_, last)) = events.last() {
                                let last = last.clone();
                                yield WatchItem::Events { events, cursor: last };
                            }
                        }
                        Wake::Idle => {
                            if let Some(quiet) = joined.quiet_position() {
                                position = position.max(quiet);
                            }
                            yield WatchItem::Checkpoint { cursor: cursor(position) };
                        }
                    }
                }
            }
            // Only a drain or the maximum age leaves the loop.
            let reason = if watch.drain.is_cancelled() { WatchEnd::Shutdown } else { WatchEnd::MaxAge };
            yield WatchItem::End { reason, cursor: cursor(position) };
        }))
    }

    /// A place at the hub; a drain while the hub has not read the outbox yet is
    /// UNAVAILABLE (nothing was sent, the client retries elsewhere).
    async fn join(&self, filter: &Arc<WatchFilter>) -> Result<Subscription, Error> {
        tokio::select! {
            () = self.drain.cancelled() => Err(Error::ShuttingDown),
            joined = self.hub.subscribe(filter.clone(), &self.store) => Ok(joined),
        }
    }
}

/// Messages of at most [`EVENTS_PER_MESSAGE`] events.
fn chunks(events: Vec<(SharedEvent, String)>) -> Vec<Vec<(SharedEvent, String)>> {
    let mut chunks = Vec::new();
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        chunks.push(events.by_ref().take(EVENTS_PER_MESSAGE).collect());
    }
    chunks
}

/// `max_age` less up to a tenth of it, at random.
fn jittered(max_age: Duration) -> Duration {
    let tenth = max_age / 10;
    let fraction = f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX);
    max_age.saturating_sub(tenth.mul_f64(fraction))
}
