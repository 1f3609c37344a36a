//! Generates the gRPC code into OUT_DIR, plus a descriptor set for server reflection.
//!
//! Two generations of the one proto file:
//! - `OUT_DIR/invitations.v1.rs`: the messages, the client and a server, as tonic generates
//!   them; clients, tests and the benchmark's no-op server use these.
//! - `OUT_DIR/server/invitations.v1.rs`: only the server the service runs. Its requests are
//!   the first generation's; its responses that carry invitations (or events) are
//!   `crate::grpc::wire`'s,
//!   which encode straight from the domain invitation into the same bytes (see that module
//!   for why, and for the test that holds them to the generated messages' bytes). Its codec
//!   is `crate::grpc::codec::ServerCodec`: prost's, with tonic's response buffer sized for a
//!   page.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate so that a fresh clone builds with
//! cargo alone; a `PROTOC` environment variable still wins for those who want their own.
use std::{env, path::PathBuf};

const PROTO: &str = "proto/invitations/v1/invitations.proto";

fn protoc_config() -> Result<tonic_prost_build::Config, Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    match env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("invitations_descriptor.bin"))
        .compile_with_config(protoc_config()?, &[PathBuf::from(PROTO)], &includes)?;

    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_dir)
        .codec_path("crate::grpc::codec::ServerCodec")
        .extern_path(".invitations.v1", "crate::proto::invitations::v1")
        .extern_path(
            ".invitations.v1.Invitation",
            "crate::grpc::wire::WireInvitation",
        )
        .extern_path(
            ".invitations.v1.ListInvitationsResponse",
            "crate::grpc::wire::ListInvitationsResponse",
        )
        .extern_path(
            ".invitations.v1.IssueInvitationTokenResponse",
            "crate::grpc::wire::IssueInvitationTokenResponse",
        )
        .extern_path(
            ".invitations.v1.WatchInvitationsResponse",
            "crate::grpc::wire::WatchInvitationsResponse",
        )
        .compile_with_config(protoc_config()?, &[PathBuf::from(PROTO)], &includes)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
