//! CancelInvitation: the soft cancel, etags, state rules, dry runs and concurrency.
use invitations::domain::InvitationRepository as _;
use invitations::domain::{Invitation, InvitationStatus};
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, InvitationStatus as WireStatus, ListInvitationsRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{Fixture, TestApp, assert_error, violations};
use crate::on_both_stores;

fn cancel_request(invitation: &Invitation, etag: &str) -> CancelInvitationRequest {
    CancelInvitationRequest {
        invitation_id: invitation.id.to_string(),
        etag: etag.to_owned(),
        reason: "User withdrew their request".into(),
        ..Default::default()
    }
}

async fn cancel_is_soft_and_persisted(app: &TestApp) {
    // Arrange
    let invitation = app.insert(Fixture::pending("jane.doe@acme.example")).await;
    let etag = invitation.etag();
    // Act
    let cancelled = app
        .client()
        .cancel_invitation(app.request(cancel_request(&invitation, etag.as_str())))
        .await
        .expect("cancelled")
        .into_inner();
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
        .client()
        .list_invitations(app.request(ListInvitationsRequest {
            statuses: vec![WireStatus::Cancelled as i32],
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.items, vec![cancelled.clone()]);
    // The record stays: a cancel of it again is a state conflict, not a 404.
    let again = app
        .client()
        .cancel_invitation(app.request(cancel_request(&invitation, &cancelled.etag)))
        .await
        .expect_err("already cancelled");
    let metadata = assert_error(
        &again,
        Code::FailedPrecondition,
        "STATE_CONFLICT",
        "state_conflict",
        409,
    );
    assert_eq!(
        metadata.get("currentStatus").map(String::as_str),
        Some("CANCELLED")
    );
    assert_eq!(metadata.get("etag"), Some(&cancelled.etag));
    assert_eq!(
        again.message(),
        "The request cannot be applied to the current resource state."
    );
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

async fn a_stale_etag_is_aborted_with_the_current_one(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("stale@acme.example")).await;
    let stale = "W/\"0.deadbeef\"";
    let status = app
        .client()
        .cancel_invitation(app.request(cancel_request(&invitation, stale)))
        .await
        .expect_err("etag mismatch");
    let metadata = assert_error(
        &status,
        Code::Aborted,
        "ETAG_MISMATCH",
        "precondition_failed",
        412,
    );
    assert_eq!(
        metadata.get("etag").map(String::as_str),
        Some(invitation.etag().as_str())
    );
    assert_eq!(metadata.get("requestEtag").map(String::as_str), Some(stale));
    assert_eq!(
        status.message(),
        "The If-Match value does not match the current ETag"
    );
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
    let cancelled = app
        .insert(Fixture::new(
            "gone@acme.example",
            InvitationStatus::Cancelled,
        ))
        .await;
    let status = app
        .client()
        .cancel_invitation(app.request(cancel_request(&cancelled, stale)))
        .await
        .expect_err("etag mismatch first");
    assert_error(
        &status,
        Code::Aborted,
        "ETAG_MISMATCH",
        "precondition_failed",
        412,
    );
    // Another invitation's etag never matches.
    let status = app
        .client()
        .cancel_invitation(app.request(cancel_request(&invitation, cancelled.etag().as_str())))
        .await
        .expect_err("someone else's etag");
    assert_error(
        &status,
        Code::Aborted,
        "ETAG_MISMATCH",
        "precondition_failed",
        412,
    );
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
            .client()
            .cancel_invitation(app.request(cancel_request(&invitation, invitation.etag().as_str())))
            .await
            .expect_err("not admissible");
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "NOT_ADMISSIBLE",
            "not_admissible",
            422,
        );
        assert_eq!(
            metadata.get("currentStatus").map(String::as_str),
            Some(name)
        );
        assert_eq!(
            metadata.get("etag").map(String::as_str),
            Some(invitation.etag().as_str())
        );
        assert_eq!(
            status.message(),
            "The operation is not admissible in the current state."
        );
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
    let answer = app
        .client()
        .cancel_invitation(app.request(dry.clone()))
        .await
        .expect("dry run")
        .into_inner();
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
    let status = app
        .client()
        .cancel_invitation(app.request(stale))
        .await
        .expect_err("stale");
    assert_error(
        &status,
        Code::Aborted,
        "ETAG_MISMATCH",
        "precondition_failed",
        412,
    );
    let cancelled = app
        .insert(Fixture::new(
            "dry2@acme.example",
            InvitationStatus::Cancelled,
        ))
        .await;
    let status = app
        .client()
        .cancel_invitation(app.request(CancelInvitationRequest {
            validate_only: true,
            ..cancel_request(&cancelled, cancelled.etag().as_str())
        }))
        .await
        .expect_err("cancelled");
    assert_error(
        &status,
        Code::FailedPrecondition,
        "STATE_CONFLICT",
        "state_conflict",
        409,
    );
    // The real cancel still works with the same etag.
    app.client()
        .cancel_invitation(app.request(cancel_request(&invitation, invitation.etag().as_str())))
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
    assert_error(
        &status,
        Code::InvalidArgument,
        "ETAG_CONFLICT",
        "invalid_request",
        400,
    );
    assert_eq!(
        violations(&status),
        vec![("etag".to_owned(), "ETAG_CONFLICT".to_owned())]
    );
    let cancelled = app
        .client()
        .cancel_invitation(with_header("", etag.as_str()))
        .await
        .expect("header alone");
    assert_eq!(cancelled.into_inner().status, WireStatus::Cancelled as i32);
}

async fn bad_cancel_requests_name_each_field(app: &TestApp) {
    let status = app
        .client()
        .cancel_invitation(app.request(CancelInvitationRequest::default()))
        .await
        .expect_err("empty request");
    assert_error(
        &status,
        Code::InvalidArgument,
        "MISSING_REQUIRED_FIELD",
        "invalid_request",
        400,
    );
    assert_eq!(status.message(), "A required field is missing or invalid");
    assert_eq!(
        violations(&status),
        vec![
            (
                "invitation_id".to_owned(),
                "MISSING_REQUIRED_FIELD".to_owned()
            ),
            ("etag".to_owned(), "MISSING_REQUIRED_FIELD".to_owned())
        ]
    );
    let status = app
        .client()
        .cancel_invitation(app.request(CancelInvitationRequest {
            invitation_id: "b8e2f1a0".into(),
            etag: "W/\"1.00000000\"".into(),
            reason: "x".repeat(501),
            ..Default::default()
        }))
        .await
        .expect_err("malformed");
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_FORMAT",
        "invalid_request",
        400,
    );
    assert_eq!(
        violations(&status),
        vec![
            ("invitation_id".to_owned(), "INVALID_FORMAT".to_owned()),
            ("reason".to_owned(), "VALUE_TOO_LONG".to_owned())
        ]
    );
}

async fn concurrent_cancels_with_one_etag_have_one_winner(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("race@acme.example")).await;
    let etag = invitation.etag();
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let mut client = app.client();
            let request = app.request(cancel_request(&invitation, etag.as_str()));
            tokio::spawn(async move { client.cancel_invitation(request).await })
        })
        .collect();
    let mut winners = Vec::new();
    let mut aborted = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(response) => winners.push(response.into_inner()),
            Err(status) => aborted.push(status),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one cancel wins: {aborted:?}");
    assert_eq!(aborted.len(), 19);
    let winner = &winners[0];
    for status in &aborted {
        let metadata = assert_error(
            status,
            Code::Aborted,
            "ETAG_MISMATCH",
            "precondition_failed",
            412,
        );
        assert_eq!(
            metadata.get("etag"),
            Some(&winner.etag),
            "the loser learns the current etag"
        );
    }
    // The version moved by exactly one.
    let stored = app
        .store
        .get(app.enterprise, invitation.id)
        .await
        .expect("read")
        .expect("row");
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
    let mut tasks = Vec::new();
    for round in 0..3 {
        for n in 0..20 {
            let mut client = app.client();
            let request = match n % 3 {
                0 => Err(app.request(
                    invitations::proto::invitations::v1::CreateInvitationRequest {
                        email_constraint: format!("new{round}-{n}@acme.example"),
                        role: format!("roles/{}", uuid::Uuid::new_v4()),
                        ..Default::default()
                    },
                )),
                1 if round == 0 => Ok(app.request(cancel_request(
                    &others[n / 2 % 10],
                    others[n / 2 % 10].etag().as_str(),
                ))),
                _ => Ok(app.request(cancel_request(&contested, contested.etag().as_str()))),
            };
            tasks.push(tokio::spawn(async move {
                match request {
                    Ok(cancel) => client.cancel_invitation(cancel).await.map(|_| "cancel"),
                    Err(create) => client.create_invitation(create).await.map(|_| "create"),
                }
            }));
        }
    }
    let mut contested_wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => {}
            Err(status) => {
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
    }
    let stored = app
        .store
        .get(app.enterprise, contested.id)
        .await
        .expect("read")
        .expect("row");
    if stored.stored_status == InvitationStatus::Cancelled {
        contested_wins += 1;
    }
    assert_eq!(contested_wins, 1);
    assert_eq!(
        stored.version,
        contested.version.next(),
        "exactly one conditional cancel won"
    );
    app.finish().await;
}
