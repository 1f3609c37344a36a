//! Idempotent retries of CancelInvitation (AIP-155).
use invitations::domain::InvitationRepository as _;
use std::time::Duration;

use invitations::domain::{InvitationStatus, RequestId, Timestamp};
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, InvitationStatus as WireStatus,
};
use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

use crate::common::{Fixture, Row, TestApp, assert_invalid, assert_row, cancel_as_stored};
use crate::on_both_stores;

/// A cancel of `invitation` with the etag it was stored with, a reason and `request_id`.
fn cancel(
    invitation: &invitations::domain::Invitation,
    request_id: &str,
) -> CancelInvitationRequest {
    CancelInvitationRequest {
        reason: "duplicate".into(),
        request_id: request_id.to_owned(),
        ..cancel_as_stored(invitation)
    }
}

pub(crate) async fn a_retry_returns_the_original_response_without_a_second_write(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("retry@acme.example")).await;
    let request_id = Uuid::new_v4().to_string();
    let first = app
        .cancel(cancel(&invitation, &request_id))
        .await
        .expect("first");
    assert_eq!(first.status, WireStatus::Cancelled as i32);
    // The invitation changes after the first answer (here behind the API's back).
    let admin = Database::connect(app.settings.store.url.expose())
        .await
        .expect("connect");
    admin
        .execute_unprepared(
            "UPDATE invitations SET version = version + 5, updated_at = updated_at + 1 \
             WHERE email_normalized = 'retry@acme.example'",
        )
        .await
        .expect("change it");
    admin.close().await.expect("close");
    // The retry: the original answer, byte for byte, and no write.
    let retried = app
        .cancel(cancel(&invitation, &request_id))
        .await
        .expect("retry");
    assert_eq!(retried, first);
    let stored = app.stored(invitation.id).await;
    assert_eq!(
        stored.version.get(),
        invitation.version.get() + 1 + 5,
        "no second write"
    );
    // Without the request_id the same request is a new one, and fails on the stale etag.
    let status = app
        .cancel(cancel(&invitation, ""))
        .await
        .expect_err("a new request");
    assert_row(&status, Row::EtagMismatch);
}

async fn a_request_id_reused_for_another_request_is_refused(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("a@acme.example")).await;
    let other = app.insert(Fixture::pending("b@acme.example")).await;
    let request_id = Uuid::new_v4().to_string();
    app.cancel(cancel(&invitation, &request_id))
        .await
        .expect("first");
    for different in [
        cancel(&other, &request_id),
        CancelInvitationRequest {
            reason: "another reason".into(),
            ..cancel(&invitation, &request_id)
        },
    ] {
        let status = app.cancel(different).await.expect_err("reused");
        assert_invalid(&status, &[("request_id", Row::RequestIdReused)]);
    }
    assert_eq!(app.stored(other.id).await, other);
    // Request ids are per enterprise: another enterprise may use the same one.
    let (enterprise, token) = app.other_enterprise_admin();
    let theirs = app
        .insert_in(enterprise, Fixture::pending("c@acme.example"))
        .await;
    app.caller(&token)
        .cancel(cancel(&theirs, &request_id))
        .await
        .expect("another enterprise's request");
    let status = app
        .cancel(cancel(&other, "not-a-uuid"))
        .await
        .expect_err("malformed");
    assert_invalid(&status, &[("request_id", Row::InvalidFormat)]);
}

pub(crate) async fn concurrent_retries_write_once_and_agree(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("twins@acme.example")).await;
    let request_id = Uuid::new_v4().to_string();
    let tasks: Vec<_> = (0..10)
        .map(|_| app.spawn_cancel(cancel(&invitation, &request_id)))
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(
            task.await
                .expect("task")
                .expect("every retry is answered OK"),
        );
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "one answer for all"
    );
    let stored = app.stored(invitation.id).await;
    assert_eq!(stored.version, invitation.version.next(), "written once");
    assert_eq!(answers[0].etag, stored.etag().as_str());
}

async fn responses_are_kept_for_the_retention_period(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("old@acme.example")).await;
    let request_id = Uuid::new_v4();
    app.cancel(cancel(&invitation, &request_id.to_string()))
        .await
        .expect("cancelled");
    let id = RequestId::parse(&request_id.to_string()).expect("uuid");
    let now = Timestamp::now();
    assert!(
        app.store
            .prior_response(app.enterprise, id, now)
            .await
            .expect("read")
            .is_some()
    );
    let later = now.saturating_add(Duration::from_secs(24 * 3600 + 60));
    assert!(
        app.store
            .prior_response(app.enterprise, id, later)
            .await
            .expect("read")
            .is_none(),
        "expired"
    );
    assert_eq!(
        app.store.purge_expired_responses(now).await.expect("purge"),
        0
    );
    assert_eq!(
        app.store
            .purge_expired_responses(later)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        app.stored(invitation.id).await.stored_status,
        InvitationStatus::Cancelled,
        "the invitation itself stays"
    );
}

on_both_stores!(
    a_retry_returns_the_original_response_without_a_second_write,
    a_request_id_reused_for_another_request_is_refused,
    concurrent_retries_write_once_and_agree,
    responses_are_kept_for_the_retention_period,
);
