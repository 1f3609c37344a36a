//! CancelInvitation: the soft cancel, etags, state rules, dry runs and concurrency.
use invitations::domain::{Invitation, InvitationStatus};
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, InvitationStatus as WireStatus,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{
    Fixture, Row, TestApp, assert_invalid, assert_row, create_request, list_request,
};
use crate::on_both_stores;

/// A cancel of `invitation` with `etag`, and a reason.
fn cancel_request(invitation: &Invitation, etag: &str) -> CancelInvitationRequest {
    CancelInvitationRequest {
        reason: "User withdrew their request".into(),
        ..crate::common::cancel_request(invitation.id, etag)
    }
}

async fn cancel_is_soft_and_persisted(app: &TestApp) {
    // Arrange
    let invitation = app.insert(Fixture::pending("jane.doe@acme.example")).await;
    let etag = invitation.etag();
    // Act
    let cancelled = app
        .cancel(cancel_request(&invitation, etag.as_str()))
        .await
        .expect("cancelled");
    // Assert: the whole invitation comes back, cancelled, with a new etag.
    assert_eq!(cancelled.id, invitation.id.to_string());
    assert_eq!(cancelled.status, WireStatus::Cancelled as i32);
    assert_eq!(
        cancelled.cancel_reason.as_deref(),
        Some("User withdrew their request")
    );
    assert_eq!(cancelled.cancelled_by, Some(app.admin.to_string()));
    assert!(cancelled.cancelled_at.is_some());
    assert_eq!(cancelled.updated_at, cancelled.cancelled_at);
    assert_ne!(cancelled.etag, etag.as_str());
    assert!(cancelled.etag.starts_with("W/\""));
    assert_eq!(cancelled.email_constraint, "jane.doe@acme.example");
    assert_eq!(cancelled.enterprise_ref, app.enterprise.to_string());
    assert_eq!(cancelled.accepted_at, None);
    // Get and List show what was stored.
    let fetched = app.fetch(invitation.id.to_string()).await;
    assert_eq!(fetched, cancelled);
    let listed = app
        .list(list_request(&[WireStatus::Cancelled]))
        .await
        .expect("list");
    assert_eq!(listed.items, vec![cancelled.clone()]);
    // The record stays: a cancel of it again is a state conflict, not a 404.
    let again = app
        .cancel(cancel_request(&invitation, &cancelled.etag))
        .await
        .expect_err("already cancelled");
    let metadata = assert_row(&again, Row::StateConflict);
    assert_eq!(metadata["currentStatus"], "CANCELLED");
    assert_eq!(metadata["etag"], cancelled.etag);
    let failure = again
        .get_details_precondition_failure()
        .expect("PreconditionFailure");
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].r#type, "STATUS");
    assert_eq!(
        failure.violations[0].subject,
        format!("invitations/{}", invitation.id)
    );
}

pub(crate) async fn a_stale_etag_is_aborted_with_the_current_one(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("stale@acme.example")).await;
    let stale = "W/\"0.deadbeef\"";
    let status = app
        .cancel(cancel_request(&invitation, stale))
        .await
        .expect_err("etag mismatch");
    let metadata = assert_row(&status, Row::EtagMismatch);
    assert_eq!(metadata["etag"], invitation.etag().as_str());
    assert_eq!(metadata["requestEtag"], stale);
    let failure = status
        .get_details_precondition_failure()
        .expect("PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "ETAG");
    assert_eq!(
        failure.violations[0].subject,
        format!("invitations/{}", invitation.id)
    );
    // Nothing was written.
    let fetched = app.fetch(invitation.id.to_string()).await;
    assert_eq!(fetched.status, WireStatus::Pending as i32);
    assert_eq!(fetched.etag, invitation.etag().as_str());
    // The etag check comes before the state check: a cancelled invitation with a stale
    // etag is a 412, not a 409.
    let cancelled = app.insert(Fixture::cancelled("gone@acme.example")).await;
    let status = app
        .cancel(cancel_request(&cancelled, stale))
        .await
        .expect_err("etag mismatch first");
    assert_row(&status, Row::EtagMismatch);
    // Another invitation's etag never matches.
    let status = app
        .cancel(cancel_request(&invitation, cancelled.etag().as_str()))
        .await
        .expect_err("someone else's etag");
    assert_row(&status, Row::EtagMismatch);
}

async fn accepted_and_expired_are_not_admissible(app: &TestApp) {
    for (fixture, name) in [
        (
            Fixture::new("accepted@acme.example", InvitationStatus::Accepted),
            "ACCEPTED",
        ),
        (
            Fixture::new("expired@acme.example", InvitationStatus::Expired),
            "EXPIRED",
        ),
        (Fixture::lapsed("lapsed@acme.example"), "EXPIRED"),
    ] {
        let invitation = app.insert(fixture).await;
        let status = app
            .cancel(cancel_request(&invitation, invitation.etag().as_str()))
            .await
            .expect_err("not admissible");
        let metadata = assert_row(&status, Row::NotAdmissible);
        assert_eq!(metadata["currentStatus"], name);
        assert_eq!(metadata["etag"], invitation.etag().as_str());
        let failure = status
            .get_details_precondition_failure()
            .expect("PreconditionFailure");
        assert_eq!(failure.violations[0].r#type, "STATUS");
    }
}

async fn validate_only_checks_everything_and_writes_nothing(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("dry@acme.example")).await;
    let dry = CancelInvitationRequest {
        validate_only: true,
        ..cancel_request(&invitation, invitation.etag().as_str())
    };
    let answer = app.cancel(dry.clone()).await.expect("dry run");
    assert_eq!(
        answer.status,
        WireStatus::Pending as i32,
        "returned as it is now"
    );
    assert_eq!(answer.etag, invitation.etag().as_str());
    let fetched = app.fetch(invitation.id.to_string()).await;
    assert_eq!(fetched, answer, "nothing was written");
    // A dry run still makes every check.
    let stale = CancelInvitationRequest {
        etag: "W/\"9.00000000\"".into(),
        ..dry.clone()
    };
    let status = app.cancel(stale).await.expect_err("stale");
    assert_row(&status, Row::EtagMismatch);
    let cancelled = app.insert(Fixture::cancelled("dry2@acme.example")).await;
    let status = app
        .cancel(CancelInvitationRequest {
            validate_only: true,
            ..cancel_request(&cancelled, cancelled.etag().as_str())
        })
        .await
        .expect_err("cancelled");
    assert_row(&status, Row::StateConflict);
    // The real cancel still works with the same etag.
    app.cancel(cancel_request(&invitation, invitation.etag().as_str()))
        .await
        .expect("real cancel");
}

async fn if_match_metadata_works_alone_and_must_agree(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("header@acme.example")).await;
    let etag = invitation.etag();
    let with_header = |field: &str, header: &str| {
        let mut request = app.request(cancel_request(&invitation, field));
        request
            .metadata_mut()
            .insert("if-match", header.parse().expect("ascii"));
        request
    };
    let status = app
        .client()
        .cancel_invitation(with_header("W/\"1.00000000\"", etag.as_str()))
        .await
        .expect_err("field and header differ");
    assert_invalid(&status, &[("etag", Row::EtagConflict)]);
    let cancelled = app
        .client()
        .cancel_invitation(with_header("", etag.as_str()))
        .await
        .expect("header alone");
    assert_eq!(cancelled.into_inner().status, WireStatus::Cancelled as i32);
}

async fn bad_cancel_requests_name_each_field(app: &TestApp) {
    let status = app
        .cancel(CancelInvitationRequest::default())
        .await
        .expect_err("empty request");
    assert_invalid(
        &status,
        &[
            ("invitation_id", Row::MissingRequiredField),
            ("etag", Row::MissingRequiredField),
        ],
    );
    let status = app
        .cancel(CancelInvitationRequest {
            reason: "x".repeat(501),
            ..crate::common::cancel_request("b8e2f1a0", "W/\"1.00000000\"")
        })
        .await
        .expect_err("malformed");
    assert_invalid(
        &status,
        &[
            ("invitation_id", Row::InvalidFormat),
            ("reason", Row::ValueTooLong),
        ],
    );
}

pub(crate) async fn concurrent_cancels_with_one_etag_have_one_winner(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("race@acme.example")).await;
    let etag = invitation.etag();
    let attempts: Vec<_> = (0..20)
        .map(|_| app.spawn_cancel(cancel_request(&invitation, etag.as_str())))
        .collect();
    let mut winners = Vec::new();
    let mut aborted = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(cancelled) => winners.push(cancelled),
            Err(status) => aborted.push(status),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one cancel wins: {aborted:?}");
    assert_eq!(aborted.len(), 19);
    let winner = &winners[0];
    for status in &aborted {
        let metadata = assert_row(status, Row::EtagMismatch);
        assert_eq!(
            metadata["etag"], winner.etag,
            "the loser learns the current etag"
        );
    }
    // The version moved by exactly one.
    let stored = app.stored(invitation.id).await;
    assert_eq!(stored.version, invitation.version.next());
    assert_eq!(stored.stored_status, InvitationStatus::Cancelled);
}

on_both_stores!(
    cancel_is_soft_and_persisted,
    a_stale_etag_is_aborted_with_the_current_one,
    accepted_and_expired_are_not_admissible,
    validate_only_checks_everything_and_writes_nothing,
    if_match_metadata_works_alone_and_must_agree,
    bad_cancel_requests_name_each_field,
    concurrent_cancels_with_one_etag_have_one_winner,
);

/// The embedded store under write contention: 20 writers at once (as many connections),
/// creating, cancelling others, and racing for one invitation. SQLite's lock never shows:
/// every answer is OK or the documented conflict, and exactly one racing cancel wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_under_contention_never_says_database_is_locked() {
    let app = TestApp::spawn_configured(crate::common::Backend::Sqlite, |config| {
        config.db_max_connections = 20;
    })
    .await;
    let contested = app.insert(Fixture::pending("contested@acme.example")).await;
    let mut others = Vec::new();
    for n in 0..10 {
        others.push(
            app.insert(Fixture::pending(format!("other{n}@acme.example")))
                .await,
        );
    }
    let with_its_etag =
        |invitation: &Invitation| cancel_request(invitation, invitation.etag().as_str());
    let mut tasks = Vec::new();
    for round in 0..3 {
        for n in 0..20 {
            let caller = app.caller(&app.token);
            let request = match n % 3 {
                0 => Err(create_request(format!("new{round}-{n}@acme.example"))),
                1 if round == 0 => Ok(with_its_etag(&others[n / 2 % 10])),
                _ => Ok(with_its_etag(&contested)),
            };
            tasks.push(tokio::spawn(async move {
                match request {
                    Ok(cancel) => caller.cancel(cancel).await.map(|_| "cancel"),
                    Err(create) => caller.create(create).await.map(|_| "create"),
                }
            }));
        }
    }
    for task in tasks {
        if let Err(status) = task.await.expect("task") {
            assert!(
                !status.message().to_lowercase().contains("locked"),
                "{status:?}"
            );
            assert!(
                matches!(status.code(), Code::Aborted | Code::FailedPrecondition),
                "only documented conflicts: {status:?}"
            );
        }
    }
    let stored = app.stored(contested.id).await;
    assert_eq!(stored.stored_status, InvitationStatus::Cancelled);
    assert_eq!(
        stored.version,
        contested.version.next(),
        "exactly one conditional cancel won"
    );
    app.finish().await;
}
