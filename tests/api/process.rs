//! The real binary: graceful shutdown on SIGTERM, structured logs, and configuration errors.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::client::never_reached_the_server;
use invitations::domain::{EnterpriseId, UserRef};
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{CreateInvitationRequest, ListInvitationsRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{AUDIENCE, ISSUER, JWT_SECRET, authorized};
use crate::operability::{READINESS, await_health};

const BINARY: &str = env!("CARGO_BIN_EXE_invitations");

/// The machine's PostgreSQL serves this self-signed certificate, issued to `localhost`.
pub const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The binary, serving on SQLite with JSON logs collected from stderr.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn command(dir: &tempfile::TempDir) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("invitations.db").display()),
        )
        .env("INVITATIONS_LISTEN_ADDR", "127.0.0.1:0")
        .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
        .env("INVITATIONS_JWT_ISSUER", ISSUER)
        .env("INVITATIONS_JWT_AUDIENCE", AUDIENCE)
        .env("INVITATIONS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("INVITATIONS_PAGE_TOKEN_SECRET");
    command
}

impl Served {
    pub fn start(extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = command(&dir);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "serving gRPC"
                    && let Some(addr) = json["addr"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = addr_tx.send(addr);
                }
                sink.lock().expect("log sink").push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the binary reports its address");
        Self {
            child,
            addr,
            logs,
            _dir: dir,
        }
    }

    /// Starts the binary and waits, at most `within`, until it is ready.
    pub async fn start_ready(extra_env: &[(&str, &str)], within: Duration) -> Self {
        let served = Self::start(extra_env);
        await_health(served.addr, READINESS, ServingStatus::Serving, within).await;
        served
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log sink").clone()
    }

    /// The SQLite file it serves (unless `DATABASE_URL` was given another).
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self._dir.path().join("invitations.db")
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
        assert!(status.expect("kill").success());
    }

    /// Waits for the exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn admin_token() -> (String, UserRef) {
    let admin = UserRef::from_uuid(Uuid::new_v4());
    let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
    let token = Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE).mint(
        admin,
        Some(enterprise),
        &[ENTERPRISE_ADMIN.to_owned()],
        Duration::from_secs(600),
    );
    (token, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_without_failing_an_accepted_rpc_and_exits_in_bound() {
    let grace = Duration::from_millis(800);
    let drain = Duration::from_millis(3000);
    let env = [
        ("INVITATIONS_SHUTDOWN_GRACE_MS", "800"),
        ("INVITATIONS_SHUTDOWN_DRAIN_MS", "3000"),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
    ];
    let mut served = Served::start_ready(&env, Duration::from_secs(10)).await;
    let (token, _) = admin_token();

    // A stream of RPCs from four clients, until the server stops accepting.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token, stop) = (served.addr, token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = InvitationServiceClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect");
                let mut outcomes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let outcome = client
                        .list_invitations(authorized(&token, ListInvitationsRequest::default()))
                        .await;
                    let refused = outcome.is_err();
                    outcomes.push((Instant::now(), outcome.map(|_| ())));
                    if refused {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    let signalled = Instant::now();
    served.signal("TERM");
    // Readiness drops at once, while calls are still served during the grace delay.
    let at_once = Duration::from_millis(500);
    await_health(served.addr, READINESS, ServingStatus::NotServing, at_once).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = served.wait_exit(Duration::from_secs(10));
        (status, served)
    });
    let (exit, served) = status.await.expect("join");
    let exited_after = signalled.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    // Assert: exit 0, within grace + drain (plus start-up slack of the runtime).
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        exited_after >= grace,
        "it kept serving for the grace delay: {exited_after:?}"
    );
    assert!(
        exited_after < grace + drain + Duration::from_secs(1),
        "exited in {exited_after:?}"
    );
    let mut served_during_grace = 0;
    for caller in callers {
        for (at, outcome) in caller.await.expect("caller") {
            match outcome {
                Ok(()) => {
                    if at > signalled {
                        served_during_grace += 1;
                    }
                }
                // Refused once the server stopped accepting, in one of the ways that say the
                // server never saw the call: never an error of the service itself, nor a
                // call it had accepted (the server's own log below shows every RPC it
                // accepted succeeded).
                Err(status) => {
                    assert!(never_reached_the_server(&status), "{status:?}");
                    assert!(
                        status.get_details_error_info().is_none(),
                        "not a service error: {status:?}"
                    );
                    assert!(
                        at >= signalled + grace,
                        "refused only after the grace delay: {status:?}"
                    );
                }
            }
        }
    }
    assert!(
        served_during_grace > 0,
        "calls were served after SIGTERM, during the grace delay"
    );
    let accepted: Vec<serde_json::Value> = served
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|r| {
            r["message"] == "rpc finished"
                && r["span"]["method"] == "/invitations.v1.InvitationService/ListInvitations"
        })
        .collect();
    assert!(accepted.len() >= served_during_grace);
    for record in &accepted {
        assert_eq!(record["code"], "Ok", "an accepted RPC failed: {record}");
    }
    let logs = served.logs().join("\n");
    assert!(logs.contains("received SIGTERM"), "{logs}");
    assert!(logs.contains("\"stopped\""), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_structured_and_never_show_tokens_or_addresses() {
    let env = [("INVITATIONS_SHUTDOWN_GRACE_MS", "0")];
    let served = Served::start_ready(&env, Duration::from_secs(10)).await;
    let (token, admin) = admin_token();
    let mut client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let mut request = authorized(
        &token,
        CreateInvitationRequest {
            email_constraint: "Secret.Person@acme.example".into(),
            role: format!("roles/{}", Uuid::new_v4()),
            ..Default::default()
        },
    );
    request
        .metadata_mut()
        .insert("x-request-id", "req-logs-1".parse().expect("ascii"));
    let created = client
        .create_invitation(request)
        .await
        .expect("created")
        .into_inner();
    // A link issued and redeemed: the secret never reaches the log.
    let link = client
        .issue_invitation_token(authorized(
            &token,
            invitations::proto::invitations::v1::IssueInvitationTokenRequest {
                invitation_id: created.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("issued")
        .into_inner()
        .token;
    let invitee = Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE).mint_invitee(
        UserRef::from_uuid(Uuid::new_v4()),
        "secret.person@acme.example",
        Duration::from_secs(60),
    );
    client
        .accept_invitation(authorized(
            &invitee,
            invitations::proto::invitations::v1::AcceptInvitationRequest {
                token: link.clone(),
            },
        ))
        .await
        .expect("accepted");
    let refused = client
        .list_invitations(authorized("not.a.token", ListInvitationsRequest::default()))
        .await
        .expect_err("bad token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    served.signal("TERM");
    let mut served = served;
    assert!(served.wait_exit(Duration::from_secs(10)).success());

    let lines = served.logs();
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let finished = |code: &str, method: &str| {
        records.iter().find(|r| {
            r["message"] == "rpc finished"
                && r["code"] == code
                && r["span"]["method"] == method
                && r["latency_ms"].is_number()
        })
    };
    let created = finished("Ok", "/invitations.v1.InvitationService/CreateInvitation")
        .expect("a line for the create");
    assert_eq!(created["span"]["request_id"], "req-logs-1");
    assert_eq!(created["span"]["subject"], admin.to_string());
    let refused = finished(
        "Unauthenticated",
        "/invitations.v1.InvitationService/ListInvitations",
    )
    .expect("a line for the refused call");
    assert!(
        refused["span"]["request_id"]
            .as_str()
            .is_some_and(|id| Uuid::parse_str(id).is_ok())
    );
    let all = lines.join("\n");
    assert!(
        all.contains("S***@acme.example"),
        "the address is logged masked"
    );
    assert!(
        !all.to_lowercase().contains("secret.person"),
        "never the whole address"
    );
    assert!(!all.contains(&token), "never a token");
    assert!(!all.contains(&invitee), "never an invitee's token");
    assert!(
        !all.contains(&link) && !all.contains(&link[4..]),
        "never a link token"
    );
    assert!(all.contains("invitation accepted"), "the accept is logged");
    assert!(!all.contains(JWT_SECRET), "never the secret");
}

#[test]
fn bad_configuration_fails_at_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (key, value, reason) in [
        (
            "INVITATIONS_JWT_HS256_SECRET",
            "short",
            "INVITATIONS_JWT_HS256_SECRET must be at least 32 bytes",
        ),
        (
            "DATABASE_URL",
            "mysql://localhost/x",
            "DATABASE_URL must start with sqlite: or postgres://",
        ),
        (
            "DATABASE_URL",
            "postgres://localhost/x?sslmode=verify-full&sslrootcert=/no/such/ca.pem",
            "DATABASE_URL: sslrootcert /no/such/ca.pem cannot be read",
        ),
        (
            "INVITATIONS_MAX_CONCURRENT_REQUESTS",
            "0",
            "INVITATIONS_MAX_CONCURRENT_REQUESTS must be at least 1",
        ),
        (
            "INVITATIONS_DB_LISTEN_URL",
            "postgres://invitations@localhost/invitations",
            "INVITATIONS_DB_LISTEN_URL is for PostgreSQL; DATABASE_URL is SQLite",
        ),
        (
            "INVITATIONS_PAGE_TOKEN_SECRET",
            "short",
            "INVITATIONS_PAGE_TOKEN_SECRET must be at least 32 bytes",
        ),
        // The example Secret's placeholders (deploy/kubernetes/secret.example.yaml).
        (
            "INVITATIONS_JWT_HS256_SECRET",
            "EXAMPLE-ONLY-jwt-secret-replace-with-32-or-more-random-bytes",
            "INVITATIONS_JWT_HS256_SECRET is the example placeholder",
        ),
        (
            "INVITATIONS_PAGE_TOKEN_SECRET",
            "EXAMPLE-ONLY-page-token-secret-replace-with-32-or-more-random-bytes",
            "INVITATIONS_PAGE_TOKEN_SECRET is the example placeholder",
        ),
        (
            "DATABASE_URL",
            "postgres://invitations:EXAMPLE-PASSWORD-CHANGE-ME@postgres:5432/invitations",
            "DATABASE_URL holds the example password",
        ),
        (
            "INVITATIONS_PAGE_TOKEN_SECRET",
            JWT_SECRET,
            "INVITATIONS_PAGE_TOKEN_SECRET must differ from INVITATIONS_JWT_HS256_SECRET",
        ),
    ] {
        let output = command(&dir).env(key, value).output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{key}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(reason), "{key}: {stderr}");
    }
    let output = command(&dir)
        .env_remove("INVITATIONS_JWT_HS256_SECRET")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("INVITATIONS_JWT_HS256_SECRET"));
}

/// The CA of a TLS Redis is checked at start: it needs a `rediss://` URL, and a file of
/// certificates.
#[test]
fn a_redis_ca_that_cannot_work_fails_at_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("not-pem.crt");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let ca = crate::pki::Pki::new();
    ca.ca("ca");
    let ca = ca.path("ca.crt");
    let not_pem = not_pem.display().to_string();
    for (url, path, reason) in [
        (
            "redis://127.0.0.1:6379",
            ca.as_str(),
            "needs a rediss:// (TLS) Redis URL",
        ),
        (
            "rediss://localhost:6380",
            "/no/such/ca.crt",
            "/no/such/ca.crt: No such file",
        ),
        (
            "rediss://localhost:6380",
            not_pem.as_str(),
            "no certificate in the file",
        ),
    ] {
        let output = command(&dir)
            .env("INVITATIONS_RATE_LIMIT_REDIS_URL", url)
            .env("INVITATIONS_RATE_LIMIT_REDIS_CA_PATH", path)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{url} {path}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("INVITATIONS_RATE_LIMIT_REDIS_CA_PATH"),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{reason} in {stderr}");
    }
}

#[test]
fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = command(&dir).arg("migrate").output().expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("invitations.db").exists());
    // Twice is harmless.
    assert!(
        command(&dir)
            .arg("migrate")
            .output()
            .expect("run")
            .status
            .success()
    );
}

/// A DATABASE_URL whose password holds `/`, `#`, `@`, `%` or `:` (common in generated
/// passwords) never has that password printed: not by `serve`, `migrate`, `dev` or
/// `health-check`, in their errors or their logs, whether the URL parses or not.
#[test]
fn database_passwords_are_never_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    for password in ["pa/ss#w@rd", "p@ss:w%rd", "Zm9v/YmFy#cXV4@", "x:y%2Fz%23w"] {
        // Port 1: nothing listens, so a URL that parses fails to connect.
        let url = format!("postgres://invitations:{password}@127.0.0.1:1/invitations");
        for subcommand in ["serve", "migrate", "dev", "health-check"] {
            let mut child = command(&dir)
                .arg(subcommand)
                .env("DATABASE_URL", &url)
                .env("INVITATIONS_DB_ACQUIRE_TIMEOUT_MS", "200")
                .env("INVITATIONS_SHUTDOWN_GRACE_MS", "0")
                .env("INVITATIONS_LOG_FORMAT", "pretty")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start");
            // `serve` with a URL that parses keeps running, not ready: stop it after a
            // few failed attempts to reach the database.
            let deadline = Instant::now() + Duration::from_millis(1500);
            while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let output = child.wait_with_output().expect("output");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                !printed.contains(password),
                "{subcommand} printed the password {password:?}:\n{printed}"
            );
        }
        // A URL that does not parse gets its reason, naming the setting and what to do (one
        // that parses is retried: nothing listens yet, which can heal).
        if !password.contains(['/', '#']) {
            continue;
        }
        let output = command(&dir)
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .env("INVITATIONS_DB_ACQUIRE_TIMEOUT_MS", "200")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("DATABASE_URL is not a valid URL") && stderr.contains("percent-encode"),
            "{stderr}"
        );
    }
}

/// Pretty logs written to a pipe or a file carry no colour codes (a terminal gets them).
#[test]
fn pretty_logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = command(&dir)
        .arg("migrate")
        .env("INVITATIONS_LOG_FORMAT", "pretty")
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("run migrate");
    assert!(output.status.success(), "{output:?}");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("INFO"), "some log lines: {logs}");
    assert!(!logs.contains('\u{1b}'), "no escape sequences: {logs:?}");
}

/// `dev` stops at once on Ctrl-C: no grace delay, unlike `serve`.
#[test]
fn dev_mode_stops_at_once_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = command(&dir)
        .arg("dev")
        .env("INVITATIONS_SHUTDOWN_GRACE_MS", "5000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dev");
    // The banner is printed once the server is up.
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let up = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("invitations dev mode"));
    assert!(up, "dev printed its banner");
    std::thread::spawn(move || lines.for_each(drop));

    let interrupted = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(status.expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "dev did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_after = interrupted.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        stopped_after < Duration::from_millis(1500),
        "stopped after {stopped_after:?}, not after the 5 s grace"
    );
}

/// `--help` reads as a table of contents: every setting under its topic.
#[test]
fn help_groups_the_settings_by_topic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = command(&dir).arg("--help").output().expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let mut topic = "";
    let mut topics = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            topic = line.trim_end_matches(':');
            topics.push(topic.to_owned());
        } else if let Some(flag) = line.trim_start().strip_prefix("--") {
            let flag = flag.split_whitespace().next().unwrap_or_default();
            assert!(
                topic != "Options" || ["help", "version"].contains(&flag),
                "--{flag} has no topic"
            );
        }
    }
    for wanted in [
        "Server",
        "TLS",
        "Database",
        "Auth",
        "Limits",
        "Health",
        "Events",
        "Telemetry",
    ] {
        assert!(topics.iter().any(|t| t == wanted), "{wanted} in {topics:?}");
    }
}

/// `INVITATIONS_REFLECTION=false`: reflection answers UNIMPLEMENTED in both versions, while
/// calls and health (no token) still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_turned_off() {
    use tonic_reflection::pb::{v1, v1alpha};
    let env = [("INVITATIONS_REFLECTION", "false")];
    let served = Served::start_ready(&env, Duration::from_secs(10)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    let list_services = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let v1_answer = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([list_services]))
        .await;
    let list_services = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let v1alpha_answer =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([list_services]))
            .await;
    for answer in [v1_answer.map(drop), v1alpha_answer.map(drop)] {
        let status = answer.expect_err("no reflection");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }

    let (token, _) = admin_token();
    InvitationServiceClient::new(channel)
        .list_invitations(authorized(&token, ListInvitationsRequest::default()))
        .await
        .expect("calls still work");
    await_health(
        served.addr,
        READINESS,
        ServingStatus::Serving,
        Duration::from_secs(1),
    )
    .await;
}

/// Secrets given as files (`…_FILE`, as Kubernetes mounts them): the JWT secret signs the
/// tokens `mint-token` prints, DATABASE_URL_FILE names the database `migrate` creates, and
/// INVITATIONS_DATABASE_PASSWORD_FILE goes into a PostgreSQL URL; a file's trailing line
/// break is not part of the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_can_be_given_as_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "a-file-secret-of-at-least-32-bytes-long";
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write");
    let token = command(&dir)
        .env_remove("INVITATIONS_JWT_HS256_SECRET")
        .env("INVITATIONS_JWT_HS256_SECRET_FILE", &secret_file)
        .args(["mint-token", "--enterprise"])
        .arg(format!("enterprises/{}", Uuid::new_v4()))
        .output()
        .expect("mint-token");
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).expect("utf-8");
    Authenticator::hs256(secret.as_bytes(), ISSUER, AUDIENCE)
        .verify(token.trim())
        .expect("signed with the file's secret, without its line break");

    let database = dir.path().join("from-file.db");
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("sqlite://{}\n", database.display())).expect("write");
    let migrated = command(&dir)
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &url_file)
        .arg("migrate")
        .output()
        .expect("migrate");
    assert!(migrated.status.success(), "{migrated:?}");
    assert!(database.exists(), "the database the file names");

    if let Some(crate::common::Backend::Postgres(admin_url)) = crate::common::Backend::postgres() {
        // The machine's PostgreSQL trusts local connections, so any password is accepted:
        // what this checks is that the URL with the password put in still works.
        let (name, url) = crate::common::create_database(&admin_url).await;
        let password_file = dir.path().join("database-password");
        std::fs::write(&password_file, "pa/ss#w@rd:%\n").expect("write");
        let migrated = command(&dir)
            .env("DATABASE_URL", &url)
            .env("INVITATIONS_DATABASE_PASSWORD_FILE", &password_file)
            .arg("migrate")
            .output()
            .expect("migrate");
        crate::common::drop_database(&admin_url, &name).await;
        assert!(migrated.status.success(), "{migrated:?}");
        let printed = String::from_utf8_lossy(&migrated.stderr);
        assert!(!printed.contains("pa/ss#w@rd"), "{printed}");
    }
}

/// A secret given both ways, or a file that cannot be read, stops start-up with one line that
/// names the settings and never what the file holds.
#[test]
fn a_secret_given_twice_or_an_unreadable_file_fails_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, "the-content-of-the-secret-file-0123456789").expect("write");
    let missing = dir.path().join("missing");
    let cases = [
        (
            vec![("INVITATIONS_JWT_HS256_SECRET_FILE", secret_file.as_os_str())],
            "INVITATIONS_JWT_HS256_SECRET and INVITATIONS_JWT_HS256_SECRET_FILE are both set",
        ),
        (
            vec![("INVITATIONS_PAGE_TOKEN_SECRET_FILE", missing.as_os_str())],
            "cannot read INVITATIONS_PAGE_TOKEN_SECRET_FILE",
        ),
        (
            vec![("DATABASE_URL_FILE", secret_file.as_os_str())],
            "DATABASE_URL and DATABASE_URL_FILE are both set",
        ),
        (
            vec![
                (
                    "INVITATIONS_NATS_URL",
                    "nats://user:pass@127.0.0.1:4222".as_ref(),
                ),
                ("INVITATIONS_NATS_URL_FILE", secret_file.as_os_str()),
            ],
            "INVITATIONS_NATS_URL and INVITATIONS_NATS_URL_FILE are both set",
        ),
    ];
    for (env, expected) in cases {
        let mut command = command(&dir);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.arg("serve").output().expect("run");
        let printed = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{printed}");
        assert!(printed.contains(expected), "{printed}");
        assert_eq!(printed.trim().lines().count(), 1, "one line: {printed}");
        assert!(!printed.contains("the-content"), "{printed}");
    }
}

/// Runs the binary with `args` and `env` until it exits (at most `within`, then it is
/// killed and the code is `None`): its exit code and the last line it wrote to stderr.
pub fn run_until_exit(
    args: &[&str],
    env: &[(&str, &str)],
    within: Duration,
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = command(&dir);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).expect("stderr");
    let last = stderr.trim().lines().last().unwrap_or_default().to_owned();
    (code, last)
}

/// What retrying cannot heal stops `serve` and `migrate` at once, with one last line naming
/// the setting and the reason: a database that does not exist, a server certificate that
/// fails verification (wrong host name, unknown CA), a SQLite file that cannot be opened.
#[test]
fn database_failures_that_cannot_heal_stop_start_up_at_once() {
    let mut cases = vec![(
        "sqlite:///no-such-folder-for-invitations/invitations.db".to_owned(),
        "the database cannot be opened",
    )];
    if let Some(crate::common::Backend::Postgres(url)) = crate::common::Backend::postgres() {
        let missing = crate::common::with_database(&url, "no_such_database_for_invitations");
        cases.push((missing, "the database does not exist"));
        // The server's certificate (the machine's snakeoil one, issued to `localhost`) asked
        // for by another name, and checked against CAs that did not issue it.
        let tls =
            |query: &str| format!("{url}{}{query}", if url.contains('?') { '&' } else { '?' });
        cases.push((
            tls(&format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"))
                .replace("@localhost:", "@127.0.0.1:"),
            "certificate not valid for name \"127.0.0.1\"",
        ));
        cases.push((
            tls("sslmode=verify-ca&sslrootcert=/etc/ssl/certs/ca-certificates.crt"),
            "TLS to the database failed: invalid peer certificate: UnknownIssuer",
        ));
    }
    for (url, reason) in &cases {
        for args in [&[][..], &["migrate"][..]] {
            let started = Instant::now();
            let (code, last) =
                run_until_exit(args, &[("DATABASE_URL", url)], Duration::from_secs(10));
            assert_eq!(code, Some(1), "{args:?} {url}: {last}");
            assert!(last.starts_with("invitations: DATABASE_URL: "), "{last}");
            assert!(last.contains(reason), "{reason} in {last}");
            assert!(last.ends_with("(retrying cannot help)"), "{last}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                started.elapsed()
            );
        }
    }
}

/// What can heal (nothing listening yet, a host name not resolvable yet) is retried with
/// backoff: the process stays up and not ready, and says so in few lines; it stops cleanly
/// when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failures_that_can_heal_are_retried_quietly() {
    let mut servers: Vec<Served> = [
        "postgres://postgres@127.0.0.1:1/test",
        "postgres://postgres@no-such-host.invalid/test",
    ]
    .into_iter()
    .map(|url| {
        Served::start(&[
            ("DATABASE_URL", url),
            ("INVITATIONS_HEALTH_INTERVAL_MS", "50"),
            ("INVITATIONS_SHUTDOWN_GRACE_MS", "0"),
        ])
    })
    .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for served in &servers {
        // Attempts at 50, 100, 200 ... ms: six or seven in three seconds, logged once
        // (then at most every five seconds).
        let retries = served
            .logs()
            .iter()
            .filter(|line| line.contains("retrying"))
            .count();
        assert_eq!(retries, 1, "{:#?}", served.logs());
        await_health(
            served.addr,
            READINESS,
            ServingStatus::NotServing,
            Duration::from_secs(1),
        )
        .await;
    }
    for served in &mut servers {
        served.signal("TERM");
        assert!(served.wait_exit(Duration::from_secs(10)).success());
    }
}

/// Refused credentials (a password being rotated) are retried too, at ERROR level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_retried_as_errors() {
    let Some(crate::common::Backend::Postgres(url)) = crate::common::Backend::postgres() else {
        return;
    };
    let stranger = url.replacen(
        "postgres://postgres",
        "postgres://no_such_role_for_invitations",
        1,
    );
    assert_ne!(stranger, url, "TEST_DATABASE_URL names the postgres user");
    let mut served = Served::start(&[
        ("DATABASE_URL", &stranger),
        ("INVITATIONS_HEALTH_INTERVAL_MS", "50"),
    ]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = served.logs();
    let errors: Vec<_> = logs
        .iter()
        .filter(|line| line.contains("\"ERROR\"") && line.contains("refused the credentials"))
        .collect();
    assert_eq!(errors.len(), 1, "{logs:#?}");
    served.signal("TERM");
    assert!(served.wait_exit(Duration::from_secs(10)).success());
}

/// `invitations health-check` asks the operations listener when one is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_asks_the_operations_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port();
    let ops = format!("127.0.0.1:{port}");
    let served = Served::start_ready(
        &[("INVITATIONS_OPS_LISTEN_ADDR", &ops)],
        Duration::from_secs(20),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let output = command(&dir)
        .arg("health-check")
        .env("INVITATIONS_OPS_LISTEN_ADDR", &ops)
        .env("INVITATIONS_LISTEN_ADDR", "127.0.0.1:1")
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "invitations.v1.InvitationService: SERVING"
    );
    drop(served);
}
