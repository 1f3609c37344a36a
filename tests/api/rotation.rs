//! A connection closing at its maximum age spares the calls it accepted (issue 22, item 2).
//!
//! The frame-level sequence of the issue over a bare HTTP/2 connection: stream 1 opened (its
//! request body not finished), the server's graceful GOAWAY and its PING, the PING answered,
//! the second GOAWAY (last stream id 1), then HEADERS and WINDOW_UPDATE for stream 3, which
//! the client opened before it saw the GOAWAY, then stream 1's body. RFC 9113 §6.8: the
//! server ignores stream 3 and finishes stream 1. Unpatched h2 took the WINDOW_UPDATE for a
//! frame on an idle stream and closed the connection with PROTOCOL_ERROR, killing stream 1
//! (`vendor/h2`, docs/adr/0006-patched-h2.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use invitations::client::never_reached_the_server;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{GetInvitationRequest, ListInvitationsRequest};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::common::authorized;
use crate::process::{Served, admin_token};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn write_frame(out: &mut OwnedWriteHalf, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("a small frame");
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    out.write_all(&frame).await.expect("write a frame");
}

/// The next frame, or `None` once the server closed the connection.
async fn read_frame(input: &mut OwnedReadHalf) -> Option<Frame> {
    let mut header = [0u8; 9];
    input.read_exact(&mut header).await.ok()?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    input.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1), as a string length.
fn hpack_length(length: usize, block: &mut Vec<u8>) {
    if length < 127 {
        block.push(length as u8);
        return;
    }
    block.push(127);
    let mut rest = length - 127;
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
}

/// Every header as a literal without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0x00);
        hpack_length(name.len(), &mut block);
        block.extend(name.as_bytes());
        hpack_length(value.len(), &mut block);
        block.extend(value.as_bytes());
    }
    block
}

fn grpc_request(path: &str, authority: &str, token: &str) -> Vec<u8> {
    let bearer = format!("Bearer {token}");
    header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", &bearer),
    ])
}

/// Answers SETTINGS and PING as any client does; fails on a GOAWAY with an error.
async fn answer_control(frame: &Frame, out: &mut OwnedWriteHalf) {
    match frame.kind {
        SETTINGS if frame.flags & ACK == 0 => write_frame(out, SETTINGS, ACK, 0, &[]).await,
        PING if frame.flags & ACK == 0 => write_frame(out, PING, ACK, 0, &frame.payload).await,
        GOAWAY => {
            let error = u32::from_be_bytes(frame.payload[4..8].try_into().expect("4 bytes"));
            assert_eq!(error, 0, "GOAWAY with error code {error}: {frame:?}");
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_update_for_a_stream_refused_by_goaway_spares_the_accepted_one() {
    let env = [
        ("INVITATIONS_MAX_CONNECTION_AGE_MS", "400"),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
    ];
    let served = Served::start_ready(&env, Duration::from_secs(10)).await;
    let (token, _) = admin_token();
    // Arrange: an invitation to get, made over a connection of its own.
    let mut client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let invitation = client
        .create_invitation(authorized(
            &token,
            invitations::proto::invitations::v1::CreateInvitationRequest {
                email_constraint: "rotated@acme.example".into(),
                role: format!("roles/{}", uuid::Uuid::new_v4()),
                ..Default::default()
            },
        ))
        .await
        .expect("created")
        .into_inner();

    let (mut input, mut out) = TcpStream::connect(served.addr)
        .await
        .expect("connect")
        .into_split();
    out.write_all(PREFACE).await.expect("preface");
    write_frame(&mut out, SETTINGS, 0, 0, &[]).await;
    let authority = served.addr.to_string();
    let get = grpc_request(
        "/invitations.v1.InvitationService/GetInvitation",
        &authority,
        &token,
    );
    // Stream 1: headers only; its message comes after the GOAWAY.
    write_frame(&mut out, HEADERS, END_HEADERS, 1, &get).await;

    // Act: wait for the second GOAWAY, the one that names stream 1 as the last.
    let last_goaway = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let frame = read_frame(&mut input)
                .await
                .expect("the connection stays open until stream 1 is answered");
            answer_control(&frame, &mut out).await;
            if frame.kind == GOAWAY {
                let last = u32::from_be_bytes(frame.payload[..4].try_into().expect("4 bytes"));
                if last & 0x7fff_ffff == 1 {
                    return;
                }
            }
        }
    })
    .await;
    assert!(last_goaway.is_ok(), "no GOAWAY naming stream 1 at the age");
    // Stream 3, opened as if before the GOAWAY arrived, then stream 1's message.
    let list = grpc_request(
        "/invitations.v1.InvitationService/ListInvitations",
        &authority,
        &token,
    );
    write_frame(&mut out, HEADERS, END_HEADERS, 3, &list).await;
    write_frame(&mut out, WINDOW_UPDATE, 0, 3, &65_535u32.to_be_bytes()).await;
    let message = GetInvitationRequest {
        invitation_id: invitation.id.clone(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend(u32::try_from(message.len()).expect("small").to_be_bytes());
    body.extend(message);
    write_frame(&mut out, DATA, END_STREAM, 1, &body).await;

    // Assert: stream 1 is answered with its invitation, and ends with trailers.
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let mut answer: Vec<u8> = Vec::new();
        loop {
            let Some(frame) = read_frame(&mut input).await else {
                panic!("the connection closed before stream 1 was answered");
            };
            answer_control(&frame, &mut out).await;
            assert!(
                !(frame.kind == RST_STREAM && frame.stream == 1),
                "stream 1 was reset: {frame:?}"
            );
            if frame.stream == 1 && frame.kind == DATA {
                answer.extend(&frame.payload);
            }
            if frame.stream == 1 && frame.kind == HEADERS && frame.flags & END_STREAM != 0 {
                return answer;
            }
        }
    })
    .await
    .expect("stream 1 answered in time");
    let id = invitation.id.as_bytes();
    assert!(
        answered.windows(id.len()).any(|window| window == id),
        "stream 1's answer carries the invitation: {answered:?}"
    );
}

/// Calls across many rotations of their connections (a 500 ms maximum age) from tonic
/// clients: every call the server received succeeds, and the server received each call
/// once. tonic has no transparent retry (grpc-core has): a request still queued in the
/// client when its connection closes fails CANCELLED without having been sent, so the
/// callers here retry exactly the failures `never_reached_the_server` recognises, as a
/// tonic client should. grpc-core's clients run the same load in `.ci/rotation-load`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_across_many_rotations_all_succeed() {
    const CALLS: usize = 20_000;
    const CHANNELS: usize = 4;
    const CALLERS_PER_CHANNEL: usize = 2;
    const LIST: &str = "/invitations.v1.InvitationService/ListInvitations";
    let env = [
        ("INVITATIONS_MAX_CONNECTION_AGE_MS", "500"),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
    ];
    let served = Served::start_ready(&env, Duration::from_secs(10)).await;
    let (token, _) = admin_token();
    let started = std::time::Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..CHANNELS {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        for _ in 0..CALLERS_PER_CHANNEL {
            let mut client = InvitationServiceClient::new(channel.clone());
            let (token, next) = (token.clone(), next.clone());
            callers.push(tokio::spawn(async move {
                let (mut failures, mut never_sent) = (Vec::new(), 0);
                while next.fetch_add(1, Ordering::Relaxed) < CALLS {
                    loop {
                        let request = ListInvitationsRequest {
                            page_size: 5,
                            ..Default::default()
                        };
                        match client.list_invitations(authorized(&token, request)).await {
                            Ok(_) => break,
                            Err(status) if never_reached_the_server(&status) => never_sent += 1,
                            Err(status) => {
                                failures.push(status);
                                break;
                            }
                        }
                    }
                }
                (failures, never_sent)
            }));
        }
    }
    let (mut failures, mut never_sent) = (Vec::new(), 0);
    for caller in callers {
        let (failed, retried) = caller.await.expect("caller");
        failures.extend(failed);
        never_sent += retried;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{CALLS} calls in {elapsed:?} on {CHANNELS} channels (about {} connections closed at \
         their age); {never_sent} never sent and retried",
        elapsed.as_millis() / 500 * CHANNELS as u128
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );

    // The server's side: each call received once, and every one answered OK. A call's line
    // is written as its response ends, which may be just after the client has the answer,
    // and reaches the log reader a moment later: the count is read until it stops growing.
    let received = |served: &Served| -> Vec<serde_json::Value> {
        served
            .logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|record| {
                record["message"] == "rpc finished" && record["span"]["method"] == LIST
            })
            .collect()
    };
    let mut count = received(&served).len();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = received(&served).len();
        if now == count {
            break;
        }
        count = now;
    }
    let received = received(&served);
    assert_eq!(received.len(), CALLS, "calls the server received");
    assert!(
        received.iter().all(|record| record["code"] == "Ok"),
        "every call the server received succeeded"
    );
}
