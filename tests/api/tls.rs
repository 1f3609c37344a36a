//! TLS and mutual TLS for clients of the gRPC listener, through the real binary with
//! certificates the test makes: who is served, who is refused, the client certificate's
//! subject in the RPC's log line, and certificates rotated in place while connections stay.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use invitations::proto::invitations::v1::ListInvitationsRequest;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::authorized;
use crate::operability::{READINESS, await_health};
use crate::pki::Pki;
use crate::process::{Served, admin_token, run_until_exit};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port()
}

/// The binary with TLS from `pki` (`server.crt`/`server.key`, and `client-ca.crt` as the
/// client CA when `mutual`), ready: its health is asked on the plaintext operations port.
async fn serve_tls(pki: &Pki, mutual: bool) -> Served {
    let ops = format!("127.0.0.1:{}", free_port());
    let (cert, key, client_ca) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("client-ca.crt"),
    );
    let mut env = vec![
        ("INVITATIONS_TLS_CERT_PATH", cert.as_str()),
        ("INVITATIONS_TLS_KEY_PATH", key.as_str()),
        ("INVITATIONS_TLS_RELOAD_MS", "100"),
        ("INVITATIONS_OPS_LISTEN_ADDR", ops.as_str()),
    ];
    if mutual {
        env.push(("INVITATIONS_TLS_CLIENT_CA_PATH", client_ca.as_str()));
    }
    let served = Served::start(&env);
    let ops = ops.parse().expect("address");
    await_health(
        ops,
        READINESS,
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;
    served
}

/// A TLS channel to `addr` trusting `{ca}.crt` for the name `localhost`, presenting
/// `{client}.crt` when given.
async fn connect(
    addr: SocketAddr,
    pki: &Pki,
    ca: &str,
    client: Option<&str>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read(&format!("{ca}.crt"))))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            pki.read(&format!("{client}.crt")),
            pki.read(&format!("{client}.key")),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS configuration")
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

/// ListInvitations with `token` (none when `None`) on `channel`.
async fn list(channel: Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let request = match token {
        Some(token) => authorized(token, ListInvitationsRequest::default()),
        None => tonic::Request::new(ListInvitationsRequest::default()),
    };
    InvitationServiceClient::new(channel)
        .list_invitations(request)
        .await
        .map(drop)
}

/// Connects as [`connect`] does and lists with `token`: what a client gets, as text on error.
async fn call(
    addr: SocketAddr,
    pki: &Pki,
    ca: &str,
    client: Option<&str>,
    token: Option<&str>,
) -> Result<(), String> {
    let channel = connect(addr, pki, ca, client).await?;
    list(channel, token)
        .await
        .map_err(|status| format!("{status:?}"))
}

/// Waits, at most 10 s, for a log line holding every one of `needles`.
fn await_log(served: &Served, needles: &[&str]) -> String {
    await_log_after(served, 0, needles)
}

/// The same, among the lines after the first `skip` (what was logged after a step).
fn await_log_after(served: &Served, skip: usize, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = served
            .logs()
            .into_iter()
            .skip(skip)
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?} in {:#?}",
            served.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With a certificate and key, the listener speaks TLS only: a client that trusts the CA is
/// served; a plaintext client and one that trusts another CA are not; health stays on the
/// plaintext operations port, where `health-check` asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_the_certificate_are_served_over_tls() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    pki.ca("other-ca");
    pki.leaf(&ca, "server", &["localhost"], "localhost", false);
    let served = serve_tls(&pki, false).await;
    let (token, _) = admin_token();

    // Connections that never finish their handshake (silent, or half a ClientHello) hold
    // only their own slots: the next client is served at once, not after their 10 s.
    let mut silent = Vec::new();
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut stream = tokio::net::TcpStream::connect(served.addr)
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, opening)
            .await
            .expect("write");
        silent.push(stream);
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        call(served.addr, &pki, "ca", None, Some(&token)),
    )
    .await
    .expect("served while two handshakes hang")
    .expect("a client that trusts the CA is served");
    drop(silent);
    let other = call(served.addr, &pki, "other-ca", None, Some(&token)).await;
    assert!(other.is_err(), "a client that trusts another CA: {other:?}");

    let plaintext = Endpoint::from_shared(format!("http://{}", served.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let refused = list(channel, Some(&token)).await;
        assert!(refused.is_err(), "a plaintext call was served");
    }
    await_log(
        &served,
        &["TLS certificate loaded", "CN=localhost", "not asked"],
    );

    // `health-check` asks the TLS port when told which CA to trust.
    let addr = served.addr.to_string();
    let ca = pki.path("ca.crt");
    let (code, last) = run_until_exit(
        &["health-check", "--addr", &addr, "--cacert", &ca],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{last}");
    let other = pki.path("other-ca.crt");
    let (code, _) = run_until_exit(
        &["health-check", "--addr", &addr, "--cacert", &other],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "health-check trusted another CA");
}

/// With a client CA, a call needs a client certificate signed by it and a bearer token: one
/// without the other is refused. The certificate's subject is in the RPC's log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_and_the_token() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client_ca = pki.ca("client-ca");
    let stranger_ca = pki.ca("stranger-ca");
    pki.leaf(&ca, "server", &["localhost"], "localhost", false);
    pki.leaf(&client_ca, "billing", &[], "billing-service", false);
    pki.leaf(&client_ca, "lapsed", &[], "lapsed-service", true);
    pki.leaf(&stranger_ca, "stranger", &[], "stranger-service", false);
    let served = serve_tls(&pki, true).await;
    let (token, _) = admin_token();

    for (client, what) in [
        (None, "no client certificate"),
        (Some("stranger"), "a certificate of another CA"),
        (Some("lapsed"), "an expired certificate"),
    ] {
        let refused = call(served.addr, &pki, "ca", client, Some(&token)).await;
        assert!(refused.is_err(), "{what} was served");
    }
    let channel = connect(served.addr, &pki, "ca", Some("billing"))
        .await
        .expect("connect with a client certificate");
    let status = list(channel.clone(), None)
        .await
        .expect_err("a certificate without a token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    list(channel, Some(&token))
        .await
        .expect("a certificate and a token");

    let line = await_log(
        &served,
        &[
            "rpc finished",
            "ListInvitations",
            "CN=billing-service",
            "Ok",
        ],
    );
    assert!(line.contains("client_certificate"), "{line}");
    await_log(&served, &["TLS handshake failed"]);
    await_log(&served, &["TLS certificate loaded", "required"]);

    // `health-check` over mTLS: with a client certificate only.
    let (addr, ca) = (served.addr.to_string(), pki.path("ca.crt"));
    let (cert, key) = (pki.path("billing.crt"), pki.path("billing.key"));
    let ask = ["health-check", "--addr", &addr, "--cacert", &ca];
    let (code, last) = run_until_exit(
        &[&ask[..], &["--cert", &cert, "--key", &key]].concat(),
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{last}");
    let (code, _) = run_until_exit(&ask, &[], Duration::from_secs(10));
    assert_eq!(
        code,
        Some(1),
        "health-check without a client certificate was answered"
    );
}

/// A certificate replaced in place (as cert-manager does) is served to new connections
/// within the reload interval, while a connection opened before it keeps working; a broken
/// replacement keeps the last good certificate and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_reach_new_connections_and_open_ones_stay() {
    let pki = Pki::new();
    let old_ca = pki.ca("old-ca");
    let new_ca = pki.ca("new-ca");
    pki.leaf(&old_ca, "server", &["localhost"], "localhost", false);
    let served = serve_tls(&pki, false).await;
    let (token, _) = admin_token();

    let opened_before = connect(served.addr, &pki, "old-ca", None)
        .await
        .expect("connect before the rotation");
    list(opened_before.clone(), Some(&token))
        .await
        .expect("served before the rotation");

    pki.leaf(&new_ca, "server", &["localhost"], "rotated", false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(served.addr, &pki, "new-ca", None, Some(&token))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    await_log(&served, &["TLS certificate reloaded", "CN=rotated"]);
    // A new connection would now meet a certificate this channel does not trust: served
    // means its connection was kept.
    list(opened_before, Some(&token))
        .await
        .expect("the connection opened before the rotation still serves");
    let old = call(served.addr, &pki, "old-ca", None, Some(&token)).await;
    assert!(
        old.is_err(),
        "a new connection still got the old certificate"
    );

    // Half a rotation: a key that is not the certificate's, then a file that is no PEM.
    let good_key = pki.read("server.key");
    pki.leaf(&new_ca, "mismatched", &["localhost"], "mismatched", false);
    let before = served.logs().len();
    pki.write("server.key", &pki.read("mismatched.key"));
    await_log_after(
        &served,
        before,
        &[
            "cannot be used",
            "INVITATIONS_TLS_CERT_PATH",
            "do not go together",
        ],
    );
    pki.write("server.key", &good_key);
    pki.write("server.crt", "not a certificate");
    await_log(&served, &["cannot be used", "no certificate"]);
    call(served.addr, &pki, "new-ca", None, Some(&token))
        .await
        .expect("the last good certificate is still served");
}

/// TLS settings that cannot work stop start-up with one line naming the setting.
#[test]
fn tls_settings_that_cannot_work_stop_start_up() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    pki.leaf(&ca, "server", &["localhost"], "localhost", false);
    pki.leaf(&ca, "other", &["localhost"], "localhost", false);
    let (cert, key, other_key) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("other.key"),
    );
    let missing = pki.path("missing.crt");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("INVITATIONS_TLS_CERT_PATH", &cert)],
            "INVITATIONS_TLS_CERT_PATH and INVITATIONS_TLS_KEY_PATH go together",
        ),
        (
            vec![("INVITATIONS_TLS_CLIENT_CA_PATH", &cert)],
            "INVITATIONS_TLS_CLIENT_CA_PATH needs INVITATIONS_TLS_CERT_PATH",
        ),
        (
            vec![
                ("INVITATIONS_TLS_CERT_PATH", &missing),
                ("INVITATIONS_TLS_KEY_PATH", &key),
            ],
            "INVITATIONS_TLS_CERT_PATH (",
        ),
        (
            vec![
                ("INVITATIONS_TLS_CERT_PATH", &cert),
                ("INVITATIONS_TLS_KEY_PATH", &cert),
            ],
            "INVITATIONS_TLS_KEY_PATH (",
        ),
        (
            vec![
                ("INVITATIONS_TLS_CERT_PATH", &cert),
                ("INVITATIONS_TLS_KEY_PATH", &other_key),
            ],
            "do not go together",
        ),
        (
            vec![
                ("INVITATIONS_TLS_CERT_PATH", &cert),
                ("INVITATIONS_TLS_KEY_PATH", &key),
                ("INVITATIONS_TLS_CLIENT_CA_PATH", &key),
            ],
            "INVITATIONS_TLS_CLIENT_CA_PATH (",
        ),
    ];
    for (env, expected) in cases {
        let (code, last) = run_until_exit(&["serve"], &env, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{env:?}: {last}");
        assert!(last.contains(expected), "{env:?}: {last}");
        assert!(
            !last.contains("BEGIN"),
            "a file's content was printed: {last}"
        );
    }
    let (code, last) = run_until_exit(
        &["health-check"],
        &[
            ("INVITATIONS_TLS_CERT_PATH", &cert),
            ("INVITATIONS_TLS_KEY_PATH", &key),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "{last}");
    assert!(
        last.contains("INVITATIONS_OPS_LISTEN_ADDR") && last.contains("--cacert"),
        "{last}"
    );
}
