//! Generates the gRPC code (messages, client and server) into OUT_DIR, plus a descriptor
//! set for server reflection. The codec is `crate::grpc::codec::ServerCodec`: prost's, with
//! tonic's response buffer sized for a page (clients get the same codec; the buffer only
//! sets where encoding starts).
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
        .codec_path("crate::grpc::codec::ServerCodec")
        .compile_with_config(protoc_config()?, &[PathBuf::from(PROTO)], &includes)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
