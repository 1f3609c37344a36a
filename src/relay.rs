//! The relay of the outbox to NATS JetStream (`INVITATIONS_NATS_URL`).
//!
//! Every event is published to JetStream, on subject `invitations.v1.<enterprise>.<type>`
//! (`<enterprise>` the bare UUID, `<type>` as stored: `created`, `link_issued`, `accepted`,
//! `cancelled`, `expired`), with `Nats-Msg-Id` set to the event's id, so JetStream drops a
//! message it already has within its duplicate window. The payload is the protobuf encoding
//! of `invitations.v1.InvitationEvent` (`proto/invitations/v1/invitations.proto`; its
//! `cursor` is left empty: cursors belong to watches), with header `Content-Type:
//! application/protobuf; messageType=invitations.v1.InvitationEvent`, and, when the change
//! was made by a traced call, the W3C `traceparent` of that call's span.
//!
//! One replica relays at a time: it holds the relay's lease (the `event_relays` row) and
//! renews it with every advance of the relay's position, which is stored in the database
//! after JetStream has acknowledged every event up to it. So a restart, a failover to
//! another replica, or NATS being down loses nothing, and republishes at most the events
//! after the last stored position (dropped by JetStream as duplicates within its window). A
//! replica that stops gives the lease up; one that dies hands over once its lease lapses.
//! The relay reads up to where the process's outbox reader (`watch::hub`) has settled, so it
//! never passes an event that is not committed yet.
use async_nats::jetstream::{self, message::PublishMessage, stream};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::RelaySettings;
use crate::domain::{InvitationEvent, InvitationRepository, Timestamp};
use crate::grpc::convert::wire_event;
use crate::watch::hub::EventHub;

/// The relay's row in `event_relays`.
const RELAY: &str = "nats";

/// Events published before their acknowledgements are awaited and the position stored.
const BATCH: u64 = 500;

/// The `Content-Type` header of every message.
pub const CONTENT_TYPE: &str = "application/protobuf; messageType=invitations.v1.InvitationEvent";

/// The subjects every event is published under.
pub const SUBJECTS: &str = "invitations.v1.>";

/// The subject of `event`.
pub fn subject(event: &InvitationEvent) -> String {
    format!(
        "invitations.v1.{}.{}",
        event.invitation.enterprise.as_uuid().hyphenated(),
        event.record.kind.as_str()
    )
}

/// Relays until `stop`, taking the lease whenever it is free.
pub async fn run<R: InvitationRepository>(
    store: R,
    hub: EventHub,
    settings: RelaySettings,
    stop: CancellationToken,
) {
    let holder = Uuid::new_v4();
    let client = match async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .name("invitations-relay")
        .connect(settings.url.as_str())
        .await
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "INVITATIONS_NATS_URL: cannot connect; events are not relayed");
            return;
        }
    };
    let jetstream = jetstream::new(client);
    let mut follower = hub.settled_changes();
    let retry = settings.lease / 3;
    loop {
        let relayed = tokio::select! {
            () = stop.cancelled() => break,
            relayed = lead(&store, &jetstream, &mut follower.changes, &settings, holder) => relayed,
        };
        match relayed {
            // Standing by: the replica that leads reports the lag.
            Ok(()) => record_lag(None),
            Err(error) => tracing::warn!(error = %error, "event relay interrupted; trying again"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(retry) => {}
        }
    }
    if let Err(error) = store.release_relay(RELAY, holder).await {
        tracing::debug!(%error, "relay lease not released; it lapses by itself");
    }
}

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("store: {0}")]
    Store(#[from] crate::domain::Error),
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// Takes the lease if free, then relays while it holds it. Returns `Ok` when another
/// replica holds the lease (or took it over).
async fn lead<R: InvitationRepository>(
    store: &R,
    jetstream: &jetstream::Context,
    settled: &mut tokio::sync::watch::Receiver<Option<i64>>,
    settings: &RelaySettings,
    holder: Uuid,
) -> Result<(), RelayError> {
    let now = Timestamp::now();
    let Some(mut position) = store
        .claim_relay(RELAY, holder, now, now.saturating_add(settings.lease))
        .await?
    else {
        return Ok(());
    };
    tracing::info!(position, "relaying events to NATS JetStream");
    // Before JetStream is asked anything: while it is down, each try measures the lag
    // anew, so the gauge grows with the outage instead of keeping its last value.
    let horizon = *settled.borrow();
    if let Some(horizon) = horizon.filter(|h| *h > position) {
        let oldest = store.events_since(position, horizon, 1).await?;
        record_lag(oldest.first());
    }
    jetstream
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![SUBJECTS.to_owned()],
            max_age: settings.max_age,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| RelayError::JetStream(e.to_string()))?;
    let renew = settings.lease / 3;
    loop {
        let horizon = *settled.borrow_and_update();
        let mut reached = position;
        if let Some(horizon) = horizon.filter(|h| *h > position) {
            let events = store.events_since(position, horizon, BATCH).await?;
            record_lag(events.first());
            publish(jetstream, &events).await?;
            metrics::counter!("invitations_events_relayed_total").increment(events.len() as u64);
            reached = match events.last() {
                Some(last) if events.len() as u64 == BATCH => last.position,
                _ => horizon,
            };
        }
        let until = Timestamp::now().saturating_add(settings.lease);
        if !store.advance_relay(RELAY, holder, reached, until).await? {
            tracing::warn!("relay lease lost to another replica; standing by");
            return Ok(());
        }
        if reached > position {
            position = reached;
            continue;
        }
        // Caught up: wait for more, renewing the lease meanwhile.
        record_lag(None);
        let _ = tokio::time::timeout(renew, settled.changed()).await;
    }
}

/// `invitations_outbox_lag_seconds`: the age of `oldest`, the first event not relayed yet
/// (0 when there is none).
fn record_lag(oldest: Option<&InvitationEvent>) {
    let waited = oldest.map_or(0, |event| {
        Timestamp::now().unix_micros() - event.record.occurred_at.unix_micros()
    });
    metrics::gauge!("invitations_outbox_lag_seconds").set(waited.max(0) as f64 / 1e6);
}

/// Publishes `events` in order and waits until JetStream has acknowledged every one.
async fn publish(
    jetstream: &jetstream::Context,
    events: &[InvitationEvent],
) -> Result<(), RelayError> {
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let payload = wire_event(event, String::new()).encode_to_vec();
        let mut message = PublishMessage::build()
            .message_id(event.record.id.to_string())
            .header("Content-Type", CONTENT_TYPE)
            .payload(payload.into());
        // A consumer continues the trace of the call that made the change (the W3C header,
        // as the OpenTelemetry messaging conventions carry it).
        if let Some(trace) = event.record.trace {
            message = message.header("traceparent", trace.traceparent());
        }
        let ack = jetstream
            .send_publish(subject(event), message)
            .await
            .map_err(|e| RelayError::JetStream(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await
            .map_err(|e| RelayError::JetStream(e.to_string()))?;
    }
    Ok(())
}
