//! Generated protobuf and gRPC code (see `build.rs`).
#![allow(clippy::all, clippy::pedantic)]

pub mod invitations {
    pub mod v1 {
        tonic::include_proto!("invitations.v1");
    }
}

/// The server the service runs: `invitations::v1`'s requests, and for responses that carry
/// invitations, [`crate::grpc::wire`]'s messages.
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/invitations.v1.rs"));
}

/// Descriptors of `invitations.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("invitations_descriptor");
