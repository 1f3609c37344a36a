//! Authentication (401), capabilities and scope (403), and the cross-enterprise matrix (404).
use invitations::domain::InvitationRepository as _;
use std::collections::HashMap;
use std::time::Duration;

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::domain::{EnterpriseId, UserRef};
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, CreateInvitationRequest, GetInvitationRequest, ListInvitationsRequest,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{AUDIENCE, Fixture, ISSUER, JWT_SECRET, TestApp, assert_error, authorized};
use crate::on_both_stores;

/// Calls every RPC with `token` and returns each answer's error.
async fn every_rpc(
    app: &TestApp,
    token: &str,
    invitation_id: &str,
    etag: &str,
) -> Vec<(&'static str, Status)> {
    let mut client = app.client();
    let mut out = Vec::new();
    if let Err(s) = client
        .list_invitations(authorized(token, ListInvitationsRequest::default()))
        .await
    {
        out.push(("list", s));
    }
    if let Err(s) = client
        .get_invitation(authorized(
            token,
            GetInvitationRequest {
                invitation_id: invitation_id.into(),
            },
        ))
        .await
    {
        out.push(("get", s));
    }
    if let Err(s) = client
        .create_invitation(authorized(
            token,
            CreateInvitationRequest {
                email_constraint: "x@acme.example".into(),
                role: format!("roles/{}", Uuid::new_v4()),
                ..Default::default()
            },
        ))
        .await
    {
        out.push(("create", s));
    }
    if let Err(s) = client
        .cancel_invitation(authorized(
            token,
            CancelInvitationRequest {
                invitation_id: invitation_id.into(),
                etag: etag.into(),
                ..Default::default()
            },
        ))
        .await
    {
        out.push(("cancel", s));
    }
    out
}

async fn bad_tokens_are_unauthenticated(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("a@acme.example")).await;
    let id = invitation.id.to_string();
    let etag = invitation.etag().as_str().to_owned();
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
    let cases = [
        ("garbage".to_owned(), "TOKEN_INVALID"),
        (
            mint_with(
                "another-secret-of-at-least-32-bytes!!",
                ISSUER,
                AUDIENCE,
                hour,
            ),
            "TOKEN_INVALID",
        ),
        (
            mint_with(JWT_SECRET, "someone-else", AUDIENCE, hour),
            "TOKEN_INVALID",
        ),
        (
            mint_with(JWT_SECRET, ISSUER, "another-service", hour),
            "TOKEN_INVALID",
        ),
        (String::from_utf8(flipped).expect("ascii"), "TOKEN_INVALID"),
    ];
    for (token, reason) in &cases {
        let answers = every_rpc(app, token, &id, &etag).await;
        assert_eq!(answers.len(), 4, "every RPC refuses {token}");
        for (rpc, status) in answers {
            assert_error(&status, Code::Unauthenticated, reason, "unauthorized", 401);
            assert_eq!(status.message(), "Authentication required.", "{rpc}");
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
    for (_, status) in every_rpc(app, &expired, &id, &etag).await {
        assert_error(
            &status,
            Code::Unauthenticated,
            "TOKEN_EXPIRED",
            "unauthorized",
            401,
        );
    }
    // No token at all.
    let status = app
        .client()
        .list_invitations(tonic::Request::new(ListInvitationsRequest::default()))
        .await
        .expect_err("no token");
    assert_error(
        &status,
        Code::Unauthenticated,
        "UNAUTHORIZED",
        "unauthorized",
        401,
    );
    // Nothing was touched by any of it.
    let stored = app
        .store
        .get(app.enterprise, invitation.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(stored, invitation);
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
        let answers = every_rpc(
            app,
            &token,
            &invitation.id.to_string(),
            invitation.etag().as_str(),
        )
        .await;
        assert_eq!(answers.len(), 4);
        for (_, status) in answers {
            assert_error(
                &status,
                Code::PermissionDenied,
                "ENTERPRISE_ADMIN_REQUIRED",
                "forbidden_capability_scope",
                403,
            );
            assert_eq!(status.message(), "Enterprise admin capability required");
        }
    }
    let stored = app
        .store
        .get(app.enterprise, invitation.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(stored, invitation);
}

async fn a_scope_outside_the_enterprise_is_forbidden(app: &TestApp) {
    let elsewhere = EnterpriseId::from_uuid(Uuid::new_v4()).to_string();
    let status = app
        .client()
        .list_invitations(app.request(ListInvitationsRequest {
            scope: elsewhere.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("list elsewhere");
    assert_error(
        &status,
        Code::PermissionDenied,
        "SCOPE_NOT_PERMITTED",
        "forbidden_capability_scope",
        403,
    );
    let status = app
        .client()
        .create_invitation(app.request(CreateInvitationRequest {
            email_constraint: "x@acme.example".into(),
            role: format!("roles/{}", Uuid::new_v4()),
            scope: format!("{elsewhere}/teams/red"),
            ..Default::default()
        }))
        .await
        .expect_err("create elsewhere");
    assert_error(
        &status,
        Code::PermissionDenied,
        "SCOPE_NOT_PERMITTED",
        "forbidden_capability_scope",
        403,
    );
}

/// Everything about a NOT_FOUND but the id it names.
fn not_found_shape(
    status: &Status,
    id: &str,
) -> (Code, String, String, HashMap<String, String>, usize) {
    let metadata = assert_error(
        status,
        Code::NotFound,
        "INVITATION_NOT_FOUND",
        "not_found",
        404,
    );
    assert_eq!(metadata.len(), 2, "code and httpStatus only");
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.resource_type, "invitations.v1.Invitation");
    assert_eq!(resource.resource_name, format!("invitations/{id}"));
    assert_eq!(resource.owner, "");
    let info = status.get_details_error_info().expect("ErrorInfo");
    let detail_count = status.get_error_details_vec().len();
    (
        status.code(),
        status.message().to_owned(),
        info.reason,
        info.metadata,
        detail_count,
    )
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
    for rpc in ["get", "cancel"] {
        let call = |id: String| {
            let mut client = app.client();
            let etag = theirs.etag().as_str().to_owned();
            let token = app.token.clone();
            async move {
                match rpc {
                    "get" => client
                        .get_invitation(authorized(
                            &token,
                            GetInvitationRequest { invitation_id: id },
                        ))
                        .await
                        .expect_err("not found"),
                    _ => client
                        .cancel_invitation(authorized(
                            &token,
                            CancelInvitationRequest {
                                invitation_id: id,
                                etag,
                                ..Default::default()
                            },
                        ))
                        .await
                        .expect_err("not found"),
                }
            }
        };
        let cross = call(theirs_id.clone()).await;
        let none = call(missing.clone()).await;
        assert_eq!(
            not_found_shape(&cross, &theirs_id),
            not_found_shape(&none, &missing),
            "{rpc}"
        );
    }
    // List never shows it.
    let listed = app
        .client()
        .list_invitations(app.request(ListInvitationsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.items.is_empty());
    // B's invitation is untouched, and B can still see and cancel it.
    let mut client = app.client();
    let fetched = client
        .get_invitation(authorized(
            &other_token,
            GetInvitationRequest {
                invitation_id: theirs_id.clone(),
            },
        ))
        .await
        .expect("B sees it")
        .into_inner();
    assert_eq!(fetched.etag, theirs.etag().as_str());
    let listed = client
        .list_invitations(authorized(&other_token, ListInvitationsRequest::default()))
        .await
        .expect("B lists it")
        .into_inner();
    assert_eq!(listed.items.len(), 1);
    client
        .cancel_invitation(authorized(
            &other_token,
            CancelInvitationRequest {
                invitation_id: theirs_id,
                etag: fetched.etag,
                ..Default::default()
            },
        ))
        .await
        .expect("B cancels it");
}

on_both_stores!(
    bad_tokens_are_unauthenticated,
    missing_capability_or_enterprise_is_forbidden,
    a_scope_outside_the_enterprise_is_forbidden,
    another_enterprises_invitation_is_indistinguishable_from_none,
);
