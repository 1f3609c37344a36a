//! Invitation links: issue, rotate, accept, revoke, and the accept-versus-cancel race.
use std::collections::HashSet;
use std::time::Duration;

use invitations::domain::{Invitation, InvitationStatus, UserRef};
use invitations::proto::invitations::v1::{
    InvitationStatus as WireStatus, IssueInvitationTokenRequest, ListInvitationsRequest,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{
    Fixture, Row, TestApp, assert_invalid, assert_row, cancel_request, issue_request, list_request,
};
use crate::{on_both_stores, on_each_backend};

const INVITEE_EMAIL: &str = "Invitee@Acme.Example";

/// An invitee with a verified e-mail (the invitation's, in another case).
fn invitee(app: &TestApp, email: &str) -> (UserRef, String) {
    let user = UserRef::from_uuid(Uuid::new_v4());
    (
        user,
        app.authenticator
            .mint_invitee(user, email, Duration::from_secs(600)),
    )
}

async fn issue(app: &TestApp, invitation: &Invitation) -> (String, String) {
    let issued = app
        .issue(issue_request(invitation.id))
        .await
        .expect("issued");
    let etag = issued.invitation.expect("the invitation").etag;
    (issued.token, etag)
}

async fn accept(
    app: &TestApp,
    token: &str,
    link: &str,
) -> Result<invitations::proto::invitations::v1::Invitation, Status> {
    app.caller(token).accept(link).await
}

fn assert_token_invalid(status: &Status) {
    assert_row(status, Row::InvitationTokenInvalid);
    // Nothing else: no id, no owner, no state.
    assert_eq!(status.get_error_details_vec().len(), 1, "{status:?}");
}

pub(crate) async fn issue_rotate_and_accept(app: &TestApp) {
    // Arrange
    let invitation = app.insert(Fixture::pending(INVITEE_EMAIL)).await;
    let (first, first_etag) = issue(app, &invitation).await;
    assert!(first.starts_with("inv_") && first.len() == 47, "{first}");
    assert_ne!(
        first_etag,
        invitation.etag().as_str(),
        "issuing changes the etag"
    );
    let (second, second_etag) = issue(app, &invitation).await;
    assert_ne!(first, second);
    assert_ne!(first_etag, second_etag);
    // The token is never shown again.
    let fetched = app.fetch(invitation.id.to_string()).await;
    let listed = app.list(ListInvitationsRequest::default()).await;
    let shown = format!("{fetched:?}{:?}", listed.expect("list"));
    assert!(!shown.contains(&first) && !shown.contains(&second));

    // The database holds the SHA-256 of the current token, and never a token.
    let db = sea_orm::Database::connect(app.settings.store.url.expose())
        .await
        .expect("connect");
    let backend = sea_orm::ConnectionTrait::get_database_backend(&db);
    let row = sea_orm::ConnectionTrait::query_one_raw(
        &db,
        sea_orm::Statement::from_string(
            backend,
            format!(
                "SELECT link_token_hash FROM invitations WHERE email_normalized = '{}'",
                INVITEE_EMAIL.to_lowercase()
            ),
        ),
    )
    .await
    .expect("query")
    .expect("the row");
    let stored: Vec<u8> = row.try_get("", "link_token_hash").expect("the hash");
    use sha2::Digest;
    assert_eq!(stored, sha2::Sha256::digest(second.as_bytes()).to_vec());
    db.close().await.expect("close");

    let (user, token) = invitee(app, "invitee@acme.example");
    // Act + Assert: the rotated-out token is dead, the new one works.
    assert_token_invalid(&accept(app, &token, &first).await.expect_err("rotated out"));
    let accepted = accept(app, &token, &second).await.expect("accepted");
    assert_eq!(accepted.status, WireStatus::Accepted as i32);
    assert_eq!(accepted.accepted_by, Some(user.to_string()));
    assert!(accepted.accepted_at.is_some());
    assert_ne!(accepted.etag, second_etag);
    // A double click is not an error: the same invitation, unchanged.
    let again = accept(app, &token, &second)
        .await
        .expect("the same user again");
    assert_eq!(again, accepted);
    // Anyone else learns nothing.
    let (_, stranger) = invitee(app, "invitee@acme.example");
    assert_token_invalid(
        &accept(app, &stranger, &second)
            .await
            .expect_err("another user"),
    );
    // Listed as accepted.
    let accepted_only = app.list(list_request(&[WireStatus::Accepted])).await;
    assert_eq!(accepted_only.expect("list").items, vec![accepted.clone()]);
    // Cancelling an accepted invitation is not admissible, with its details.
    let status = app
        .cancel(cancel_request(invitation.id, &accepted.etag))
        .await
        .expect_err("accepted");
    let metadata = assert_row(&status, Row::NotAdmissible);
    assert_eq!(metadata["currentStatus"], "ACCEPTED");
    assert_eq!(metadata["etag"], accepted.etag);
    // Re-issuing for an accepted invitation follows the cancel rules.
    let status = app
        .issue(issue_request(invitation.id))
        .await
        .expect_err("accepted");
    assert_row(&status, Row::NotAdmissible);
}

async fn the_email_must_match_and_be_verified(app: &TestApp) {
    let invitation = app.insert(Fixture::pending(INVITEE_EMAIL)).await;
    let (link, _) = issue(app, &invitation).await;
    let (_, someone_else) = invitee(app, "someone.else@acme.example");
    let status = accept(app, &someone_else, &link)
        .await
        .expect_err("mismatch");
    assert_row(&status, Row::EmailMismatch);
    // No e-mail claim at all (an admin's token).
    let status = accept(app, &app.token, &link)
        .await
        .expect_err("no verified e-mail");
    assert_row(&status, Row::EmailNotVerified);
    // The invitation is untouched and the right invitee can still accept.
    let (_, right) = invitee(app, "INVITEE@acme.example");
    accept(app, &right, &link).await.expect("the invitee");
}

async fn cancel_revokes_and_expiry_is_not_admissible(app: &TestApp) {
    let invitation = app.insert(Fixture::pending(INVITEE_EMAIL)).await;
    let (link, etag) = issue(app, &invitation).await;
    app.cancel(cancel_request(invitation.id, etag))
        .await
        .expect("cancelled");
    let (_, token) = invitee(app, INVITEE_EMAIL);
    let revoked = accept(app, &token, &link).await.expect_err("revoked");
    let unknown = accept(app, &token, &format!("inv_{}", "A".repeat(43)))
        .await
        .expect_err("unknown");
    assert_token_invalid(&revoked);
    assert_token_invalid(&unknown);
    assert_eq!(revoked.message(), unknown.message());
    let info = |s: &Status| {
        s.get_details_error_info()
            .map(|i| (i.reason, i.domain, i.metadata))
    };
    assert_eq!(info(&revoked), info(&unknown), "no oracle");

    // An expired invitation: issued while pending, then lapsed (stored directly).
    let lapsed = app.insert(Fixture::lapsed("late@acme.example")).await;
    let status = app
        .issue(issue_request(lapsed.id))
        .await
        .expect_err("expired");
    let metadata = assert_row(&status, Row::NotAdmissible);
    assert_eq!(metadata["currentStatus"], "EXPIRED");
    // Issue with a short expiry, then let it pass.
    let soon = app.insert(Fixture::pending("soon@acme.example")).await;
    let expires = invitations::domain::Timestamp::now().saturating_add(Duration::from_millis(1500));
    let issued = app
        .issue(IssueInvitationTokenRequest {
            invitation_id: soon.id.to_string(),
            etag: soon.etag().as_str().to_owned(),
            expires_at: Some(prost_types::Timestamp {
                seconds: expires.unix_micros().div_euclid(1_000_000),
                nanos: (expires.unix_micros().rem_euclid(1_000_000) * 1000) as i32,
            }),
        })
        .await
        .expect("issued with a new expiry");
    let (_, soon_invitee) = invitee(app, "soon@acme.example");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let status = accept(app, &soon_invitee, &issued.token)
        .await
        .expect_err("expired");
    let metadata = assert_row(&status, Row::NotAdmissible);
    assert_eq!(metadata["currentStatus"], "EXPIRED");
}

async fn bad_link_requests(app: &TestApp) {
    let (_, token) = invitee(app, INVITEE_EMAIL);
    for (raw, row) in [
        ("", Row::MissingRequiredField),
        ("inv_short", Row::InvalidFormat),
        ("x".repeat(5000).as_str(), Row::InvalidFormat),
        (&format!("inv_{}", "é".repeat(21)), Row::InvalidFormat),
    ] {
        let status = accept(app, &token, raw).await.expect_err("malformed");
        assert_invalid(&status, &[("token", row)]);
    }
    // Issuing needs an admin, an id, and a current etag when one is given.
    let invitation = app.insert(Fixture::pending("x@acme.example")).await;
    let status = app
        .caller(&token)
        .issue(issue_request(invitation.id))
        .await
        .expect_err("an invitee may not issue");
    assert_row(&status, Row::EnterpriseAdminRequired);
    let status = app
        .issue(IssueInvitationTokenRequest {
            etag: "W/\"7.00000000\"".into(),
            ..issue_request(invitation.id)
        })
        .await
        .expect_err("stale etag");
    assert_row(&status, Row::EtagMismatch);
    let (other, _) = app.other_enterprise_admin();
    let theirs = app
        .insert_in(other, Fixture::pending("y@acme.example"))
        .await;
    let status = app
        .issue(issue_request(theirs.id))
        .await
        .expect_err("another enterprise's");
    assert_row(&status, Row::InvitationNotFound);
}

/// Many accepts (the invitee, one token) against many cancels (an admin, one etag): one
/// write happens, and every answer agrees with it. Repeated 100 times.
pub(crate) async fn accept_and_cancel_race_has_one_consistent_outcome(app: &TestApp) {
    let mut outcomes = HashSet::new();
    for round in 0..100 {
        let invitation = app
            .insert(Fixture::pending(format!("race{round}@acme.example")))
            .await;
        let (link, etag) = issue(app, &invitation).await;
        let (user, token) = invitee(app, &format!("race{round}@acme.example"));
        let accepts: Vec<_> = (0..4)
            .map(|_| {
                let (invitee, link) = (app.caller(&token), link.clone());
                tokio::spawn(async move { invitee.accept(&link).await })
            })
            .collect();
        let cancels: Vec<_> = (0..4)
            .map(|_| app.spawn_cancel(cancel_request(invitation.id, &etag)))
            .collect();
        let mut accept_results = Vec::new();
        for task in accepts {
            accept_results.push(task.await.expect("task"));
        }
        let mut cancel_results = Vec::new();
        for task in cancels {
            cancel_results.push(task.await.expect("task"));
        }
        let stored = app.stored(invitation.id).await;
        // Issuing moved the version once; exactly one more write happened.
        assert_eq!(
            stored.version,
            invitation.version.next().next(),
            "round {round}"
        );
        match stored.stored_status {
            InvitationStatus::Accepted => {
                assert_eq!(stored.accepted_by, Some(user));
                for result in &accept_results {
                    let accepted = result.as_ref().expect("every accept is OK");
                    assert_eq!(accepted.etag, stored.etag().as_str());
                }
                for result in &cancel_results {
                    let status = result.as_ref().expect_err("every cancel is ABORTED");
                    let metadata = assert_row(status, Row::EtagMismatch);
                    assert_eq!(metadata["etag"], stored.etag().as_str());
                }
                // Retried with the current etag: not admissible, currently accepted.
                let retry = app
                    .cancel(cancel_request(invitation.id, stored.etag().as_str()))
                    .await
                    .expect_err("accepted");
                let metadata = assert_row(&retry, Row::NotAdmissible);
                assert_eq!(metadata["currentStatus"], "ACCEPTED");
            }
            InvitationStatus::Cancelled => {
                let ok: Vec<_> = cancel_results.iter().filter(|r| r.is_ok()).collect();
                assert_eq!(ok.len(), 1, "round {round}: one cancel wins");
                for result in cancel_results.iter().filter(|r| r.is_err()) {
                    assert_row(result.as_ref().expect_err("loser"), Row::EtagMismatch);
                }
                for result in &accept_results {
                    assert_token_invalid(result.as_ref().expect_err("every accept fails"));
                }
            }
            other => panic!("round {round}: unexpected {other:?}"),
        }
        outcomes.insert(stored.stored_status);
    }
    eprintln!("race outcomes seen over 100 rounds: {outcomes:?}");
}

on_both_stores!(
    issue_rotate_and_accept,
    the_email_must_match_and_be_verified,
    cancel_revokes_and_expiry_is_not_admissible,
    bad_link_requests,
    accept_and_cancel_race_has_one_consistent_outcome,
);

/// Failed redeems take tokens from the caller's bucket like any call: guessing is throttled.
async fn failed_redeems_count_against_the_rate_limit(backend: crate::common::Backend) {
    let app = TestApp::spawn_configured(backend, |config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 3;
    })
    .await;
    let (_, token) = invitee(&app, INVITEE_EMAIL);
    for n in 0..3 {
        let guess = format!("inv_{:A>43}", n);
        assert_token_invalid(
            &accept(&app, &token, &guess)
                .await
                .expect_err("a wrong guess"),
        );
    }
    let status = accept(&app, &token, &format!("inv_{}", "B".repeat(43)))
        .await
        .expect_err("throttled");
    assert_row(&status, Row::RateLimited);
    app.finish().await;
}

on_each_backend!(
    failed_redeems_count_against_the_rate_limit:
    failed_redeems_are_rate_limited_sqlite,
    failed_redeems_are_rate_limited_postgres
);

/// Any string as a link token gets INVALID_ARGUMENT (malformed) or NOT_FOUND (well formed,
/// unknown), promptly; the server never fails or slows down on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_link_tokens_get_only_documented_answers() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let app = TestApp::spawn(crate::common::Backend::Sqlite).await;
    let (_, token) = invitee(&app, INVITEE_EMAIL);
    let strategy = prop_oneof![
        any::<String>(),
        "inv_[A-Za-z0-9_-]{43}",
        "inv_[A-Za-z0-9_+/=-]{0,60}",
        proptest::collection::vec(any::<char>(), 0..5000)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ];
    let mut runner = TestRunner::new(Config::default());
    let samples: Vec<String> = (0..200)
        .map(|_| strategy.new_tree(&mut runner).expect("a sample").current())
        .collect();
    for candidate in samples {
        let started = std::time::Instant::now();
        let status = accept(&app, &token, &candidate)
            .await
            .expect_err("no such link");
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::NotFound),
            "{candidate:?}: {status:?}"
        );
        assert!(status.get_details_error_info().is_some(), "{status:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "slow on {candidate:?}"
        );
    }
    app.finish().await;
}
