//! Invitations: a gRPC service that lists and cancels user invitations under an enterprise
//! scope. `main.rs` only parses configuration and calls [`startup::Application`].
pub mod auth;
pub mod client;
pub mod config;
pub mod dev;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod proto;
pub mod rate_limit;
pub mod relay;
pub mod secret;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;
