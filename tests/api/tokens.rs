//! Token attacks, and asymmetric keys from a JWKS file with rotation.
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use invitations::proto::invitations::v1::ListInvitationsRequest;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;
use uuid::Uuid;

use crate::common::{
    AUDIENCE, Backend, Fixture, ISSUER, JWT_SECRET, Row, TestApp, assert_row, cancel_as_stored,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn jwks_of(names: &[&str]) -> String {
    let all: Value =
        serde_json::from_slice(&std::fs::read(fixture("public-jwks.json")).expect("fixture"))
            .expect("json");
    json!({ "keys": names.iter().map(|n| all[*n].clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Valid claims for an admin of `enterprise`; tests remove or change one at a time.
fn claims(enterprise: &str) -> Value {
    json!({
        "sub": format!("users/{}", Uuid::new_v4()),
        "enterprise": enterprise,
        "capabilities": ["enterprise_admin"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn ed_key(name: &str) -> EncodingKey {
    EncodingKey::from_ed_pem(&std::fs::read(fixture(&format!("{name}.pem"))).expect("pem"))
        .expect("ed key")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-a.pem")).expect("pem")).expect("rsa key")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        claims,
    )
}

fn without(mut claims: Value, field: &str) -> Value {
    claims.as_object_mut().expect("object").remove(field);
    claims
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

async fn app_with_jwks(keys: &[&str]) -> (TestApp, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(keys)).expect("write jwks");
    let jwks_path = path.clone();
    let app = TestApp::spawn_configured(Backend::Sqlite, move |config| {
        config.jwt_jwks_path = Some(jwks_path);
        config.jwt_jwks_reload_ms = 50;
    })
    .await;
    (app, dir, path)
}

async fn list_with(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.caller(token).list(Default::default()).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_token_are_unauthenticated_and_touch_nothing() {
    let (app, _dir, _) = app_with_jwks(&["ed25519-a", "rsa-a"]).await;
    let enterprise = app.enterprise.to_string();
    let good = claims(&enterprise);
    let invitation = app.insert(Fixture::pending("target@acme.example")).await;
    // The keys work (so each refusal below is about the attack, not the set-up).
    for token in [
        sign(
            Algorithm::EdDSA,
            Some("ed25519-a"),
            &ed_key("ed25519-a"),
            &good,
        ),
        sign(Algorithm::RS256, Some("rsa-a"), &rsa_key(), &good),
        hs256(&good),
    ] {
        list_with(&app, &token).await.expect("a valid token");
    }
    let eddsa = sign(
        Algorithm::EdDSA,
        Some("ed25519-a"),
        &ed_key("ed25519-a"),
        &good,
    );
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let public_pem = std::fs::read(fixture("rsa-a.pub.pem")).expect("pem");
    let hs256_with_public_key = sign(
        Algorithm::HS256,
        Some("rsa-a"),
        &EncodingKey::from_secret(&public_pem),
        &good,
    );
    let mut flipped = eddsa.clone().into_bytes();
    let at = flipped.len() - 5;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    // A claim changed, or removed.
    let changed = |claim: &str, value: Value| hs256(&with(good.clone(), claim, value));
    let missing = |claim: &str| hs256(&without(good.clone(), claim));
    let ed25519_a = ed_key("ed25519-a");
    let secret = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let cases: Vec<(&str, String, Row)> = vec![
        ("alg none", alg_none, Row::TokenInvalid),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
            Row::TokenInvalid,
        ),
        ("one signature byte flipped", flipped, Row::TokenInvalid),
        (
            "expired past the leeway",
            changed("exp", json!(now() - 120)),
            Row::TokenExpired,
        ),
        (
            "nbf in the future",
            changed("nbf", json!(now() + 600)),
            Row::TokenInvalid,
        ),
        (
            "wrong iss",
            changed("iss", json!("evil")),
            Row::TokenInvalid,
        ),
        ("missing iss", missing("iss"), Row::TokenInvalid),
        (
            "wrong aud",
            changed("aud", json!("another-service")),
            Row::TokenInvalid,
        ),
        ("missing aud", missing("aud"), Row::TokenInvalid),
        ("missing sub", missing("sub"), Row::TokenInvalid),
        (
            "sub not a user",
            changed("sub", json!("admin")),
            Row::TokenInvalid,
        ),
        ("missing exp", missing("exp"), Row::TokenInvalid),
        (
            "unknown kid",
            sign(Algorithm::EdDSA, Some("nope"), &ed25519_a, &good),
            Row::TokenInvalid,
        ),
        (
            "no kid",
            sign(Algorithm::EdDSA, None, &ed25519_a, &good),
            Row::TokenInvalid,
        ),
        (
            "EdDSA key's kid on an RS256 token",
            sign(Algorithm::RS256, Some("ed25519-a"), &rsa_key(), &good),
            Row::TokenInvalid,
        ),
        (
            "a key not in the set under a known kid",
            sign(
                Algorithm::EdDSA,
                Some("ed25519-a"),
                &ed_key("ed25519-b"),
                &good,
            ),
            Row::TokenInvalid,
        ),
        ("garbage", "a.b.c".to_owned(), Row::TokenInvalid),
        (
            "HS256 claiming a JWKS key's kid",
            sign(Algorithm::HS256, Some("ed25519-a"), &secret, &good),
            Row::TokenInvalid,
        ),
    ];
    for (name, token, row) in &cases {
        let status = list_with(&app, token).await.expect_err(name);
        assert_row(&status, *row);
        let status = app
            .caller(token)
            .cancel(cancel_as_stored(&invitation))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}");
    }
    // Malformed authorization headers.
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", ""] {
        let mut request = tonic::Request::new(ListInvitationsRequest::default());
        if let Ok(value) = header.parse() {
            request.metadata_mut().insert("authorization", value);
        }
        let status = app
            .client()
            .list_invitations(request)
            .await
            .expect_err(header);
        assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
    }
    let stored = app.stored(invitation.id).await;
    assert_eq!(stored, invitation, "nothing was touched");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_without_a_restart() {
    let (app, _dir, path) = app_with_jwks(&["ed25519-a"]).await;
    let good = claims(&app.enterprise.to_string());
    let old = sign(
        Algorithm::EdDSA,
        Some("ed25519-a"),
        &ed_key("ed25519-a"),
        &good,
    );
    let new = sign(
        Algorithm::EdDSA,
        Some("ed25519-b"),
        &ed_key("ed25519-b"),
        &good,
    );
    list_with(&app, &old).await.expect("the current key");
    assert_eq!(
        list_with(&app, &new).await.expect_err("not yet").code(),
        Code::Unauthenticated
    );

    // Rotate: the file now holds only the new key.
    std::fs::write(&path, jwks_of(&["ed25519-b"])).expect("rotate");
    let mut rotated = false;
    for _ in 0..100 {
        if list_with(&app, &new).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new key is picked up without a restart");
    let status = list_with(&app, &old)
        .await
        .expect_err("the rotated-out key");
    assert_row(&status, Row::TokenInvalid);

    // A broken file keeps the keys in force.
    std::fs::write(&path, "{ not json").expect("break");
    tokio::time::sleep(Duration::from_millis(200)).await;
    list_with(&app, &new)
        .await
        .expect("the last good keys stay in force");
    app.finish().await;
}

#[test]
fn a_bad_jwks_file_fails_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("jwks.json");
    let all: Value =
        serde_json::from_slice(&std::fs::read(fixture("public-jwks.json")).expect("fixture"))
            .expect("json");
    for (content, reason) in [
        ("{ not json".to_owned(), "not a JWK set"),
        (
            json!({"keys": [without(all["ed25519-a"].clone(), "alg")]}).to_string(),
            "an `alg` is required",
        ),
        (
            json!({"keys": [without(all["ed25519-a"].clone(), "kid")]}).to_string(),
            "needs a `kid`",
        ),
        (
            json!({"keys": [with(all["rsa-a"].clone(), "alg", json!("RS512"))]}).to_string(),
            "is not accepted",
        ),
    ] {
        std::fs::write(&path, content).expect("write");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_invitations"))
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.path().join("db.sqlite").display()),
            )
            .env("INVITATIONS_LISTEN_ADDR", "127.0.0.1:0")
            .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
            .env("INVITATIONS_JWT_JWKS_PATH", &path)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
}
