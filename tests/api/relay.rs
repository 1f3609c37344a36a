//! The relay to NATS JetStream, against a real `nats-server -js`: every event once, under its
//! subject, with its id as `Nats-Msg-Id` and the event as payload; one replica relays at a
//! time and another takes over; NATS being down loses nothing.
use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use invitations::domain::{EnterpriseId, InvitationRepository as _, Timestamp};
use invitations::proto::invitations::v1 as wire;
use invitations::store::Store;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use uuid::Uuid;

use crate::common::{Backend, TestApp, authorized, cancel_request, create_request, issue_request};
use crate::{on_both_stores, on_each_backend};

/// The NATS server of `TEST_NATS_URL`: like PostgreSQL's, skipped without it on a
/// developer's machine, never in CI.
pub(crate) fn nats_url() -> Option<String> {
    crate::common::component_url("TEST_NATS_URL")
}

/// A message of the stream: its subject, its `Nats-Msg-Id`, its `traceparent` (when the
/// change was made by a traced call) and the event it carries.
#[derive(Debug)]
pub(crate) struct Published {
    pub subject: String,
    pub message_id: String,
    pub traceparent: Option<String>,
    pub event: wire::InvitationEvent,
}

/// Every message the stream holds for `enterprise`, oldest first.
pub(crate) async fn published(url: &str, enterprise: EnterpriseId) -> Vec<Published> {
    let client = async_nats::connect(url).await.expect("NATS");
    let jetstream = jetstream::new(client);
    let Ok(stream) = jetstream.get_stream("INVITATIONS").await else {
        return Vec::new();
    };
    let reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("invitations.v1.{}.>", enterprise.as_uuid()),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..consumer::pull::Config::default()
        })
        .await
        .expect("a consumer");
    let mut all = Vec::new();
    loop {
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .expect("fetch");
        let before = all.len();
        while let Some(message) = batch.next().await {
            let message = message.expect("a message");
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let message_id = header("Nats-Msg-Id").unwrap_or_default();
            let traceparent = header("traceparent");
            all.push(Published {
                subject: message.subject.to_string(),
                message_id,
                traceparent,
                event: wire::InvitationEvent::decode(message.payload.clone()).expect("protobuf"),
            });
        }
        if all.len() == before {
            return all;
        }
    }
}

/// Waits (15 s at most) until the stream holds `count` messages for `enterprise`.
async fn await_published(url: &str, enterprise: EnterpriseId, count: usize) -> Vec<Published> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let all = published(url, enterprise).await;
        if all.len() >= count || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stream holds exactly the enterprise's events, once each, in the outbox's order.
async fn assert_relayed_exactly(app: &TestApp, url: &str) {
    // A store of its own: the app's closes with its server.
    let store = Store::connect(&app.settings.store)
        .await
        .expect("the store");
    store.migrate().await.expect("already migrated");
    let horizon = store.event_horizon().await.expect("horizon");
    let stored = store
        .events_after(app.enterprise, None, horizon, 10_000)
        .await
        .expect("events");
    let all = await_published(url, app.enterprise, stored.len()).await;
    // A moment more: anything extra would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_again = published(url, app.enterprise).await;
    assert_eq!(all_again.len(), all.len(), "nothing more arrives");
    let ids: Vec<String> = all.iter().map(|p| p.message_id.clone()).collect();
    let expected: Vec<String> = stored.iter().map(|e| e.record.id.to_string()).collect();
    assert_eq!(
        ids, expected,
        "every event once, in order, its id as Nats-Msg-Id"
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    for (message, event) in all.iter().zip(&stored) {
        assert_eq!(
            message.subject,
            format!(
                "invitations.v1.{}.{}",
                app.enterprise.as_uuid(),
                event.record.kind.as_str()
            )
        );
        assert_eq!(message.event.event_id, event.record.id.to_string());
        let snapshot = message.event.invitation.as_ref().expect("a snapshot");
        assert_eq!(snapshot.etag, event.invitation.etag().as_str());
        assert_eq!(snapshot.id, event.invitation.id.to_string());
        assert!(message.event.cursor.is_empty(), "cursors belong to watches");
    }
    store.close().await;
}

async fn every_event_reaches_jetstream_once(backend: Backend) {
    let Some(url) = nats_url() else { return };
    let app = TestApp::spawn_configured(backend, |config| {
        config.nats_url = Some(invitations::config::Secret::new(url.clone()));
        config.nats_lease_ms = 1000;
    })
    .await;
    let created = app
        .create(create_request("r1@acme.example"))
        .await
        .expect("created");
    let issued = app.issue(issue_request(&created.id)).await.expect("issued");
    let issued = issued.invitation.expect("invitation");
    app.cancel(cancel_request(&created.id, &issued.etag))
        .await
        .expect("cancelled");
    assert_relayed_exactly(&app, &url).await;
    let all = published(&url, app.enterprise).await;
    let types: Vec<i32> = all.iter().map(|p| p.event.r#type).collect();
    assert_eq!(
        types,
        [
            wire::InvitationEventType::Created as i32,
            wire::InvitationEventType::LinkIssued as i32,
            wire::InvitationEventType::Cancelled as i32,
        ]
    );
    app.finish().await;
}

/// Two replicas: one relays; when it stops, the other takes over where it stood.
async fn another_replica_takes_the_relay_over(backend: Backend) {
    let Some(url) = nats_url() else { return };
    let mut app = TestApp::spawn_configured(backend, |config| {
        config.nats_url = Some(invitations::config::Secret::new(url.clone()));
        config.nats_lease_ms = 1000;
    })
    .await;
    // The first server relays (its first event arrives) before the second starts.
    app.create(create_request("t0@acme.example"))
        .await
        .expect("created");
    assert_eq!(await_published(&url, app.enterprise, 1).await.len(), 1);
    let (mut replica, stop, replica_task) = app.replica().await;
    for n in 1..20 {
        app.create(create_request(format!("t{n}@acme.example")))
            .await
            .expect("created");
    }
    assert_eq!(await_published(&url, app.enterprise, 20).await.len(), 20);
    app.begin_shutdown();
    for n in 20..40 {
        replica
            .create_invitation(authorized(
                &app.token,
                create_request(format!("t{n}@acme.example")),
            ))
            .await
            .expect("created");
    }
    assert_relayed_exactly(&app, &url).await;
    let _ = stop.send(());
    replica_task.await.expect("the replica stops");
    app.finish().await;
}

/// The lease: one holder at a time; another takes it once it lapses or is given up, where
/// the relay stood; a holder that lost it cannot move the relay.
async fn one_replica_holds_the_relay_at_a_time(app: &TestApp) {
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let lease = Duration::from_secs(10);
    let now = Timestamp::now();
    let until = now.saturating_add(lease);
    let store = &app.store;
    assert_eq!(
        store
            .claim_relay("nats", first, now, until)
            .await
            .expect("claim"),
        Some(0)
    );
    assert_eq!(
        store
            .claim_relay("nats", first, now, until)
            .await
            .expect("renew"),
        Some(0)
    );
    assert_eq!(
        store
            .claim_relay("nats", second, now, until)
            .await
            .expect("claim"),
        None,
        "the first holder's lease runs"
    );
    assert!(
        !store
            .advance_relay("nats", second, 5, until)
            .await
            .expect("advance")
    );
    assert!(
        store
            .advance_relay("nats", first, 7, until)
            .await
            .expect("advance")
    );

    let lapsed = until.saturating_add(Duration::from_secs(1));
    let later = lapsed.saturating_add(lease);
    assert_eq!(
        store
            .claim_relay("nats", second, lapsed, later)
            .await
            .expect("claim"),
        Some(7),
        "the lapsed lease is taken where the relay stood"
    );
    assert!(
        !store
            .advance_relay("nats", first, 9, later)
            .await
            .expect("advance"),
        "lost"
    );
    store.release_relay("nats", second).await.expect("release");
    assert_eq!(
        store
            .claim_relay("nats", first, now, until)
            .await
            .expect("claim"),
        Some(7)
    );
}

on_both_stores!(one_replica_holds_the_relay_at_a_time);

on_each_backend!(
    every_event_reaches_jetstream_once:
        relayed_once_on_sqlite, relayed_once_on_postgres
);
on_each_backend!(
    another_replica_takes_the_relay_over:
        relay_failover_on_sqlite, relay_failover_on_postgres
);

/// A `nats-server -js` of the test's own, on a free port, with its store in a directory
/// that outlives a restart.
struct OwnNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl OwnNats {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Self {
            port,
            dir: tempfile::tempdir().expect("a directory"),
            child: None,
        };
        nats.restart().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = tokio::process::Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server (Debian's nats-server package)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("killed");
        }
    }
}

/// NATS goes away while changes are made and comes back: every event arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_being_down_loses_nothing() {
    if nats_url().is_none() {
        return;
    }
    let backend = Backend::postgres().unwrap_or(Backend::Sqlite);
    let mut nats = OwnNats::start().await;
    let url = nats.url();
    let app = TestApp::spawn_configured(backend, |config| {
        config.nats_url = Some(invitations::config::Secret::new(url.clone()));
        config.nats_lease_ms = 1000;
    })
    .await;
    for n in 0..10 {
        app.create(create_request(format!("d{n}@acme.example")))
            .await
            .expect("created");
    }
    assert_eq!(await_published(&url, app.enterprise, 10).await.len(), 10);
    nats.kill().await;
    for n in 10..25 {
        app.create(create_request(format!("d{n}@acme.example")))
            .await
            .expect("created");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart().await;
    assert_relayed_exactly(&app, &url).await;
    app.finish().await;
    nats.kill().await;
}
