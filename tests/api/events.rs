//! The outbox: every change made through the API records exactly one event, in the change's
//! transaction, with the documented fields; calls that change nothing record none.
use std::collections::HashSet;
use std::time::Duration;

use invitations::domain::{
    Actor, EventType, InvitationEvent, InvitationId, InvitationRepository as _, InvitationStatus,
    RequestId, Timestamp, UserRef,
};
use invitations::proto::invitations::v1 as wire;
use tonic::Code;
use uuid::Uuid;

use crate::common::{
    Backend, Fixture, Row, TestApp, assert_row, cancel_request, create_request, issue_request,
};
use crate::{on_both_stores, on_each_backend};

/// Every event of the app's enterprise, oldest first.
async fn events(app: &TestApp) -> Vec<InvitationEvent> {
    let horizon = app.store.event_horizon().await.expect("horizon");
    app.store
        .events_after(app.enterprise, None, horizon, 10_000)
        .await
        .expect("events read")
}

/// The events of one invitation, oldest first.
async fn events_of(app: &TestApp, id: InvitationId) -> Vec<InvitationEvent> {
    events(app)
        .await
        .into_iter()
        .filter(|event| event.invitation.id == id)
        .collect()
}

fn id_of(answer: &wire::Invitation) -> InvitationId {
    InvitationId::parse(&answer.id).expect("an invitation id")
}

/// `event` is a `kind` by `actor`, and its snapshot is the invitation as the call answered it
/// and as the store holds it now (same version, so the same etag).
async fn assert_event(
    app: &TestApp,
    event: &InvitationEvent,
    kind: EventType,
    actor: Actor,
    answer: &wire::Invitation,
) {
    assert_eq!(event.record.kind, kind, "{event:?}");
    assert_eq!(event.record.actor, actor, "{event:?}");
    assert_eq!(event.record.id.as_uuid().get_version_num(), 7, "UUIDv7");
    assert_eq!(event.invitation.etag().as_str(), answer.etag, "{event:?}");
    let stored = app.stored(event.invitation.id).await;
    assert_eq!(
        event.invitation, stored,
        "the snapshot is the row as changed"
    );
    let age = Timestamp::now().saturating_sub(Duration::from_secs(60));
    assert!(event.record.occurred_at > age, "{event:?}");
}

pub(crate) async fn every_change_records_exactly_its_event(app: &TestApp) {
    let admin = Actor::User(app.admin);
    // Create, then issue a link, then rotate it, then cancel with a reason and a request_id.
    let created = app
        .create(create_request("first@acme.example"))
        .await
        .expect("created");
    let id = id_of(&created);
    let [event] = &events_of(app, id).await[..] else {
        panic!("one event after a create");
    };
    assert_event(app, event, EventType::Created, admin, &created).await;
    assert_eq!(event.record.request_id, None);

    let issued = app.issue(issue_request(id)).await.expect("issued");
    let link = events_of(app, id).await.pop().expect("an event");
    let issued = issued.invitation.expect("invitation");
    assert_event(app, &link, EventType::LinkIssued, admin, &issued).await;
    assert_eq!(link.invitation.version.get(), 2);
    let rotated = app.issue(issue_request(id)).await.expect("rotated");
    let rotated = rotated.invitation.expect("invitation");
    let rotation = events_of(app, id).await.pop().expect("an event");
    assert_event(app, &rotation, EventType::LinkIssued, admin, &rotated).await;
    assert_eq!(rotation.invitation.version.get(), 3);
    let request_id = Uuid::new_v4();
    let cancelled = app
        .cancel(wire::CancelInvitationRequest {
            reason: "hired elsewhere".into(),
            request_id: request_id.to_string(),
            ..cancel_request(id, rotated.etag.clone())
        })
        .await
        .expect("cancelled");
    let all = events_of(app, id).await;
    let [_, _, _, cancel] = &all[..] else {
        panic!("four events, one per change: {all:?}");
    };
    assert_event(app, cancel, EventType::Cancelled, admin, &cancelled).await;
    assert_eq!(
        cancel.record.request_id,
        Some(RequestId::from_uuid(request_id))
    );
    assert_eq!(
        cancel.invitation.cancel_reason.as_ref().map(|r| r.as_str()),
        Some("hired elsewhere")
    );
    assert_eq!(cancel.invitation.stored_status, InvitationStatus::Cancelled);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "positions grow in the order of the changes: {all:?}"
    );

    // A cancel without a request_id (one statement on PostgreSQL) and an accept.
    let other = app
        .create(create_request("second@acme.example"))
        .await
        .expect("created");
    let cancelled = app
        .cancel(cancel_request(other.id.clone(), other.etag.clone()))
        .await
        .expect("cancelled");
    let cancel = events_of(app, id_of(&other)).await.pop().expect("an event");
    assert_event(app, &cancel, EventType::Cancelled, admin, &cancelled).await;
    assert_eq!(cancel.record.request_id, None);

    let invitee = UserRef::from_uuid(Uuid::new_v4());
    let invitee_token =
        app.authenticator
            .mint_invitee(invitee, "third@acme.example", Duration::from_secs(600));
    let third = app
        .create(create_request("third@acme.example"))
        .await
        .expect("created");
    let link = app
        .issue(issue_request(&third.id))
        .await
        .expect("issued")
        .token;
    let accepted = app
        .caller(&invitee_token)
        .accept(&link)
        .await
        .expect("accepted");
    let accept = events_of(app, id_of(&third)).await.pop().expect("an event");
    assert_event(
        app,
        &accept,
        EventType::Accepted,
        Actor::User(invitee),
        &accepted,
    )
    .await;

    // Nothing else was recorded: 4 + 2 + 3 events in all.
    assert_eq!(events(app).await.len(), 9);
}

async fn calls_that_change_nothing_record_nothing(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("quiet@acme.example")).await;
    let etag = invitation.etag().as_str().to_owned();
    // A dry run.
    app.cancel(wire::CancelInvitationRequest {
        validate_only: true,
        ..cancel_request(invitation.id, etag.clone())
    })
    .await
    .expect("validated");
    // A stale etag.
    let stale = app
        .cancel(cancel_request(invitation.id, "\"stale\""))
        .await
        .expect_err("a stale etag");
    assert_row(&stale, Row::EtagMismatch);
    // A duplicate create.
    let duplicate = app
        .create(create_request("quiet@acme.example"))
        .await
        .expect_err("a duplicate");
    assert_row(&duplicate, Row::InvitationAlreadyExists);
    // An accept with another address.
    let link = app
        .issue(issue_request(invitation.id))
        .await
        .expect("issued");
    let wrong = app.authenticator.mint_invitee(
        UserRef::from_uuid(Uuid::new_v4()),
        "someone-else@acme.example",
        Duration::from_secs(600),
    );
    app.caller(&wrong)
        .accept(&link.token)
        .await
        .expect_err("another address");
    assert_eq!(events(app).await.len(), 1, "only the link was issued");

    // A cancel with a request_id, then its replay: one event.
    let request_id = Uuid::new_v4().to_string();
    let request = wire::CancelInvitationRequest {
        request_id,
        ..cancel_request(invitation.id, link.invitation.expect("invitation").etag)
    };
    let first = app.cancel(request.clone()).await.expect("cancelled");
    let replayed = app.cancel(request).await.expect("replayed");
    assert_eq!(first, replayed);
    // A link for a cancelled invitation, and a second cancel.
    app.issue(issue_request(invitation.id))
        .await
        .expect_err("cancelled");
    app.cancel(cancel_request(invitation.id, first.etag.clone()))
        .await
        .expect_err("already cancelled");
    let kinds: Vec<_> = events(app).await.iter().map(|e| e.record.kind).collect();
    assert_eq!(kinds, [EventType::LinkIssued, EventType::Cancelled]);
}

async fn a_lapsed_invitation_replaced_by_a_create_gets_its_expired_event(app: &TestApp) {
    let lapsed = app.insert(Fixture::lapsed("again@acme.example")).await;
    let created = app
        .create(create_request("again@acme.example"))
        .await
        .expect("created");
    let all = events(app).await;
    let [expired, new] = &all[..] else {
        panic!("the expiry, then the create: {all:?}");
    };
    assert_eq!(expired.record.kind, EventType::Expired);
    assert_eq!(expired.record.actor, Actor::System);
    assert_eq!(expired.invitation.id, lapsed.id);
    assert_eq!(expired.invitation.stored_status, InvitationStatus::Expired);
    assert_eq!(expired.invitation, app.stored(lapsed.id).await);
    assert_eq!(new.record.kind, EventType::Created);
    assert_eq!(new.invitation.id, id_of(&created));
}

async fn an_enterprise_reads_only_its_own_events(app: &TestApp) {
    app.create(create_request("mine@acme.example"))
        .await
        .expect("created");
    let (other, token) = app.other_enterprise_admin();
    app.caller(&token)
        .create(create_request("theirs@acme.example"))
        .await
        .expect("created");
    let mine = events(app).await;
    let theirs = app
        .store
        .events_after(other, None, i64::MAX, 100)
        .await
        .expect("events read");
    assert_eq!((mine.len(), theirs.len()), (1, 1));
    assert_eq!(mine[0].invitation.enterprise, app.enterprise);
    assert_eq!(theirs[0].invitation.enterprise, other);
    // Reading after a position returns what follows it.
    assert!(
        app.store
            .events_after(app.enterprise, Some(mine[0].position), i64::MAX, 100)
            .await
            .expect("events read")
            .is_empty()
    );
}

async fn events_past_their_retention_are_purged_in_batches(app: &TestApp) {
    for n in 0..5 {
        app.create(create_request(format!("purge{n}@acme.example")))
            .await
            .expect("created");
    }
    let retention = Duration::from_secs(7 * 24 * 3600);
    let now = Timestamp::now();
    let kept = app
        .store
        .purge_lapsed_events(now, retention, 2)
        .await
        .expect("purge");
    assert_eq!(kept, 0, "nothing is a week old");
    assert_eq!(events(app).await.len(), 5);
    let later = now.saturating_add(retention + Duration::from_secs(1));
    let purged = app
        .store
        .purge_lapsed_events(later, retention, 2)
        .await
        .expect("purge");
    assert_eq!(purged, 5, "in three batches of at most two");
    assert!(events(app).await.is_empty());
}

/// PostgreSQL commits positions out of order: a transaction that took a position and has
/// not committed holds the horizon below it, while later positions are already visible.
async fn the_horizon_waits_for_a_position_still_in_flight(app: &TestApp) {
    let first = app
        .create(create_request("before@acme.example"))
        .await
        .expect("created");
    let held = app.hold_lock("SELECT 1").await;
    // The held transaction takes the next position (a copy of the first event, new id).
    held.execute(&format!(
        "INSERT INTO invitation_events (event_id, event_type, occurred_at, actor, request_id, \
         invitation_id, enterprise_id, scope, email_constraint, role, status, invited_by, \
         pending_human_actor_ref, challenge_ref, created_at, updated_at, expires_at, \
         accepted_at, accepted_by, cancelled_at, cancel_reason, cancelled_by, version) \
         SELECT '{}', event_type, occurred_at, actor, request_id, invitation_id, \
         enterprise_id, scope, email_constraint, role, status, invited_by, \
         pending_human_actor_ref, challenge_ref, created_at, updated_at, expires_at, \
         accepted_at, accepted_by, cancelled_at, cancel_reason, cancelled_by, version \
         FROM invitation_events WHERE invitation_id = '{}'",
        Uuid::now_v7(),
        first.id
    ))
    .await;
    for n in 0..3 {
        app.create(create_request(format!("after{n}@acme.example")))
            .await
            .expect("created");
    }
    // Read without a horizon, the three later events show and the held one is missing: a
    // reader resuming after them would never see it.
    let unbounded = app
        .store
        .events_after(app.enterprise, None, i64::MAX, 100)
        .await
        .expect("events read");
    assert_eq!(unbounded.len(), 4, "{unbounded:?}");
    assert!(unbounded[1].position > unbounded[0].position + 1, "a gap");
    // The horizon waits for the held transaction.
    let waiting = tokio::time::timeout(Duration::from_millis(300), app.store.event_horizon()).await;
    assert!(waiting.is_err(), "the horizon did not wait: {waiting:?}");
    held.commit().await;
    let horizon = app.store.event_horizon().await.expect("horizon");
    let all = app
        .store
        .events_after(app.enterprise, None, horizon, 100)
        .await
        .expect("events read");
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[1].position == w[0].position + 1));
}

/// Eight writers and one reader resuming after its last position, up to the horizon: the
/// reader sees every event exactly once, in position order.
pub(crate) async fn a_reader_up_to_the_horizon_sees_every_event_once(app: &TestApp) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let caller = app.caller(&app.token);
            tokio::spawn(async move {
                for n in 0..25 {
                    let created = caller
                        .create(create_request(format!("w{w}n{n}@acme.example")))
                        .await
                        .expect("created");
                    caller
                        .cancel(cancel_request(created.id.clone(), created.etag.clone()))
                        .await
                        .expect("cancelled");
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        let horizon = app.store.event_horizon().await.expect("horizon");
        let batch = app
            .store
            .events_after(app.enterprise, cursor, horizon, 50)
            .await
            .expect("events read");
        if let Some(last) = batch.last() {
            cursor = Some(last.position);
            done = false;
        }
        seen.extend(batch);
    }
    for writer in writers {
        writer.await.expect("the writer ran");
    }
    assert_eq!(seen.len(), 8 * 25 * 2);
    let ids: HashSet<_> = seen.iter().map(|e| e.record.id).collect();
    assert_eq!(ids.len(), seen.len(), "no event twice");
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
}

on_both_stores!(a_reader_up_to_the_horizon_sees_every_event_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_horizon_waits_for_a_position_still_in_flight_on_postgres() {
    if let Some(backend) = Backend::postgres() {
        let app = TestApp::spawn(backend).await;
        the_horizon_waits_for_a_position_still_in_flight(&app).await;
        app.finish().await;
    }
}

on_both_stores!(
    every_change_records_exactly_its_event,
    calls_that_change_nothing_record_nothing,
    a_lapsed_invitation_replaced_by_a_create_gets_its_expired_event,
    an_enterprise_reads_only_its_own_events,
    events_past_their_retention_are_purged_in_batches,
);

/// Two servers on one database, each sweeping every 50 ms.
async fn sweeping_pair(backend: Backend) -> (TestApp, Replica) {
    let app = TestApp::spawn_configured(backend, |config| config.expiry_sweep_ms = 50).await;
    let replica = app.replica().await;
    (app, replica)
}

type Replica = (
    wire::invitation_service_client::InvitationServiceClient<tonic::transport::Channel>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Waits (at most 10 s) until the enterprise has `count` events.
async fn await_events(app: &TestApp, count: usize) -> Vec<InvitationEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = events(app).await;
        if all.len() >= count || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn lapsed_invitations_get_exactly_one_expired_event_across_replicas(
    backend: Backend,
) {
    let (app, (_, stop, replica)) = sweeping_pair(backend).await;
    let mut lapsed = Vec::new();
    for n in 0..250 {
        lapsed.push(
            app.insert(Fixture::lapsed(format!("l{n}@acme.example")))
                .await,
        );
    }
    let live = app.insert(Fixture::pending("live@acme.example")).await;
    let all = await_events(&app, lapsed.len()).await;
    // A few more sweeps of both servers, to see that none records a second event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_after = events(&app).await;
    assert_eq!(all_after.len(), all.len(), "no event after the last expiry");
    assert_eq!(all.len(), lapsed.len(), "one event per lapsed invitation");
    let mut seen = HashSet::new();
    for event in &all {
        assert_eq!(event.record.kind, EventType::Expired);
        assert_eq!(event.record.actor, Actor::System);
        assert_eq!(event.invitation.stored_status, InvitationStatus::Expired);
        assert_eq!(event.invitation.version.get(), 2);
        assert!(seen.insert(event.invitation.id), "twice: {event:?}");
    }
    for invitation in &lapsed {
        assert!(seen.contains(&invitation.id));
        assert_eq!(
            app.stored(invitation.id).await.stored_status,
            InvitationStatus::Expired
        );
    }
    assert_eq!(
        app.stored(live.id).await.stored_status,
        InvitationStatus::Pending
    );
    let _ = stop.send(());
    replica.await.expect("the replica stops");
    app.finish().await;
}

pub(crate) async fn a_cancel_racing_the_sweeper_has_one_outcome(backend: Backend) {
    let (app, (_, stop, replica)) = sweeping_pair(backend).await;
    // Invitations that all lapse at one instant, and a cancel of each sent around it.
    let lapse_at = Timestamp::now().saturating_add(Duration::from_millis(1500));
    let mut created = Vec::new();
    for n in 0..40 {
        let request = wire::CreateInvitationRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: lapse_at.unix_micros() / 1_000_000,
                nanos: (lapse_at.unix_micros() % 1_000_000) as i32 * 1000,
            }),
            ..create_request(format!("race{n}@acme.example"))
        };
        created.push(app.create(request).await.expect("created"));
    }
    let until_lapse = Duration::from_micros(
        (lapse_at.unix_micros() - Timestamp::now().unix_micros()).max(0) as u64,
    );
    tokio::time::sleep(until_lapse.saturating_sub(Duration::from_millis(60))).await;
    let mut cancels = Vec::new();
    for (n, invitation) in created.iter().enumerate() {
        cancels.push(app.spawn_cancel(cancel_request(
            invitation.id.clone(),
            invitation.etag.clone(),
        )));
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut answers = Vec::new();
    for cancel in cancels {
        answers.push(cancel.await.expect("the call ran"));
    }
    // Every invitation ends cancelled or expired (the sweeper reaches the rest), with the one
    // event of its one outcome; the cancel's answer says which.
    let all = await_events(&app, 2 * created.len()).await;
    let (mut cancelled, mut expired) = (0, 0);
    for (invitation, answer) in created.iter().zip(&answers) {
        let id = id_of(invitation);
        let terminal: Vec<_> = all
            .iter()
            .filter(|e| e.invitation.id == id && e.record.kind != EventType::Created)
            .collect();
        let [event] = &terminal[..] else {
            panic!("one outcome for {id}: {terminal:?}");
        };
        let stored = app.stored(id).await;
        assert_eq!(event.invitation, stored);
        match answer {
            Ok(answer) => {
                cancelled += 1;
                assert_eq!(event.record.kind, EventType::Cancelled);
                assert_eq!(answer.etag, stored.etag().as_str());
            }
            Err(status) => {
                expired += 1;
                assert_eq!(event.record.kind, EventType::Expired, "{status:?}");
                assert!(
                    matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                    "{status:?}"
                );
            }
        }
    }
    eprintln!("race: {cancelled} cancelled, {expired} expired");
    let _ = stop.send(());
    replica.await.expect("the replica stops");
    app.finish().await;
}

on_each_backend!(
    lapsed_invitations_get_exactly_one_expired_event_across_replicas:
        lapsed_expiries_on_sqlite, lapsed_expiries_on_postgres
);
on_each_backend!(
    a_cancel_racing_the_sweeper_has_one_outcome:
        cancel_and_sweeper_race_on_sqlite, cancel_and_sweeper_race_on_postgres
);
