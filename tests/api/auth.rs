//! Authentication (401), capabilities and scope (403), and the cross-enterprise matrix (404).
use std::time::Duration;

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::domain::{EnterpriseId, Invitation, UserRef};
use invitations::proto::invitations::v1::{CreateInvitationRequest, ListInvitationsRequest};
use tonic::Status;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{
    AUDIENCE, Fixture, ISSUER, JWT_SECRET, Row, TestApp, assert_row, cancel_as_stored,
    cancel_request, create_request,
};
use crate::on_both_stores;

/// Calls every RPC with `token` (on `invitation`, where one is named) and returns each
/// answer's error.
async fn every_rpc(
    app: &TestApp,
    token: &str,
    invitation: &Invitation,
) -> Vec<(&'static str, Status)> {
    let caller = app.caller(token);
    [
        ("list", caller.list(Default::default()).await.err()),
        ("get", caller.get(invitation.id.to_string()).await.err()),
        (
            "create",
            caller.create(create_request("x@acme.example")).await.err(),
        ),
        (
            "cancel",
            caller.cancel(cancel_as_stored(invitation)).await.err(),
        ),
    ]
    .into_iter()
    .filter_map(|(rpc, refused)| Some((rpc, refused?)))
    .collect()
}

async fn bad_tokens_are_unauthenticated(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("a@acme.example")).await;
    let admin = UserRef::from_uuid(Uuid::new_v4());
    let caps = [ENTERPRISE_ADMIN.to_owned()];
    let mint_with = |secret: &str, issuer: &str, audience: &str, ttl: Duration| {
        Authenticator::hs256(secret.as_bytes(), issuer, audience).mint(
            admin,
            Some(app.enterprise),
            &caps,
            ttl,
        )
    };
    let hour = Duration::from_secs(3600);
    let valid = mint_with(JWT_SECRET, ISSUER, AUDIENCE, hour);
    let mut flipped = valid.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let invalid = [
        "garbage".to_owned(),
        mint_with(
            "another-secret-of-at-least-32-bytes!!",
            ISSUER,
            AUDIENCE,
            hour,
        ),
        mint_with(JWT_SECRET, "someone-else", AUDIENCE, hour),
        mint_with(JWT_SECRET, ISSUER, "another-service", hour),
        String::from_utf8(flipped).expect("ascii"),
    ];
    for token in &invalid {
        let answers = every_rpc(app, token, &invitation).await;
        assert_eq!(answers.len(), 4, "every RPC refuses {token}");
        for (_, status) in answers {
            assert_row(&status, Row::TokenInvalid);
        }
    }
    // Expired: a token minted two minutes in the past (past the 30 s leeway).
    let expired = {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            sub: String,
            enterprise: String,
            capabilities: [&'a str; 1],
            iss: &'a str,
            aud: &'a str,
            exp: u64,
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            sub: admin.to_string(),
            enterprise: app.enterprise.to_string(),
            capabilities: [ENTERPRISE_ADMIN],
            iss: ISSUER,
            aud: AUDIENCE,
            exp: now - 120,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (_, status) in every_rpc(app, &expired, &invitation).await {
        assert_row(&status, Row::TokenExpired);
    }
    // No token at all.
    let status = app
        .client()
        .list_invitations(tonic::Request::new(ListInvitationsRequest::default()))
        .await
        .expect_err("no token");
    assert_row(&status, Row::Unauthorized);
    // Nothing was touched by any of it.
    assert_eq!(app.stored(invitation.id).await, invitation);
}

async fn missing_capability_or_enterprise_is_forbidden(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("a@acme.example")).await;
    let user = UserRef::from_uuid(Uuid::new_v4());
    let no_capability = app.authenticator.mint(
        user,
        Some(app.enterprise),
        &["viewer".to_owned()],
        Duration::from_secs(60),
    );
    let no_enterprise = app.authenticator.mint(
        user,
        None,
        &[ENTERPRISE_ADMIN.to_owned()],
        Duration::from_secs(60),
    );
    for token in [no_capability, no_enterprise] {
        let answers = every_rpc(app, &token, &invitation).await;
        assert_eq!(answers.len(), 4);
        for (_, status) in answers {
            assert_row(&status, Row::EnterpriseAdminRequired);
        }
    }
    assert_eq!(app.stored(invitation.id).await, invitation);
}

async fn a_scope_outside_the_enterprise_is_forbidden(app: &TestApp) {
    let elsewhere = EnterpriseId::from_uuid(Uuid::new_v4()).to_string();
    let status = app
        .list(ListInvitationsRequest {
            scope: elsewhere.clone(),
            ..Default::default()
        })
        .await
        .expect_err("list elsewhere");
    assert_row(&status, Row::ScopeNotPermitted);
    let status = app
        .create(CreateInvitationRequest {
            scope: format!("{elsewhere}/teams/red"),
            ..create_request("x@acme.example")
        })
        .await
        .expect_err("create elsewhere");
    assert_row(&status, Row::ScopeNotPermitted);
}

/// Asserts a NOT_FOUND of the invitation `id` that says nothing else: no metadata of its own,
/// no owner.
fn assert_not_found(status: &Status, id: &str) {
    let metadata = assert_row(status, Row::InvitationNotFound);
    assert!(
        metadata.is_empty(),
        "code and httpStatus only: {metadata:?}"
    );
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.resource_type, "invitations.v1.Invitation");
    assert_eq!(resource.resource_name, format!("invitations/{id}"));
    assert_eq!(resource.owner, "");
    assert_eq!(status.get_error_details_vec().len(), 2, "{status:?}");
}

async fn another_enterprises_invitation_is_indistinguishable_from_none(app: &TestApp) {
    // Arrange: B's invitation, and A's admin (this app's token).
    let (other, other_token) = app.other_enterprise_admin();
    let theirs = app
        .insert_in(other, Fixture::pending("theirs@acme.example"))
        .await;
    let missing = Uuid::new_v4().to_string();
    let theirs_id = theirs.id.to_string();
    // Act + Assert: Get and Cancel (even with the right etag) say NOT_FOUND, the same way.
    let etag = theirs.etag();
    for id in [&theirs_id, &missing] {
        let got = app.get(id).await.expect_err("not found");
        assert_not_found(&got, id);
        let cancel = cancel_request(id, etag.as_str());
        let cancelled = app.cancel(cancel).await.expect_err("not found");
        assert_not_found(&cancelled, id);
    }
    // List never shows it.
    let listed = app.list(Default::default()).await.expect("list");
    assert!(listed.items.is_empty());
    // B's invitation is untouched, and B can still see and cancel it.
    let b = app.caller(&other_token);
    let fetched = b.get(&theirs_id).await.expect("B sees it");
    assert_eq!(fetched.etag, theirs.etag().as_str());
    let listed = b.list(Default::default()).await.expect("B lists it");
    assert_eq!(listed.items.len(), 1);
    b.cancel(cancel_request(theirs_id, fetched.etag))
        .await
        .expect("B cancels it");
}

on_both_stores!(
    bad_tokens_are_unauthenticated,
    missing_capability_or_enterprise_is_forbidden,
    a_scope_outside_the_enterprise_is_forbidden,
    another_enterprises_invitation_is_indistinguishable_from_none,
);
