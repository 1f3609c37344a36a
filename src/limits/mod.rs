//! What one client, one connection or one stream may hold of a replica, so that no caller,
//! authenticated or not, can exhaust its memory or its capacity for everyone else
//! (docs/SECURITY.md, B1):
//!
//! - [`connection`]: connections at most `INVITATIONS_MAX_CONNECTIONS`; each with a watchdog
//!   that closes it when a response stays unread past the request timeout.
//! - [`stream`]: per stream, before any handler: the request message within the read
//!   timeout, requests still arriving capped, long-lived streams capped per connection and
//!   per replica, unread response bytes capped per connection and per replica.
//! - [`admission`]: per call, once the request is complete and authenticated: calls in
//!   flight capped per replica and per caller.
//!
//! HTTP/2 itself (streams per connection, header list size) is set on the server builder
//! (`startup.rs`).
pub mod admission;
pub mod connection;
pub mod stream;

pub use admission::{Admission, Slot};
pub use connection::{ConnectionInfo, Incoming};
pub use stream::StreamLimitLayer;

/// The encoded size of a response message, which a handler puts in the response's
/// extensions so that [`stream`] can count it as unread until the peer takes it.
#[derive(Debug, Clone, Copy)]
pub struct ResponseSize(pub usize);

/// What a stream is, from its method path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A unary call of the service.
    Call,
    /// `grpc.health.v1.Health/Check`.
    HealthCheck,
    /// `grpc.health.v1.Health/Watch`: answers until the client leaves.
    HealthWatch,
    /// Server reflection: a bidirectional stream that stays open as long as the client likes.
    Reflection,
    /// `invitations.v1.InvitationService/WatchInvitations`: events until its maximum age.
    InvitationWatch,
}

impl StreamKind {
    pub fn of(path: &str) -> Self {
        match path {
            "/grpc.health.v1.Health/Check" => Self::HealthCheck,
            "/grpc.health.v1.Health/Watch" => Self::HealthWatch,
            "/invitations.v1.InvitationService/WatchInvitations" => Self::InvitationWatch,
            _ if path.starts_with("/grpc.reflection.") => Self::Reflection,
            _ => Self::Call,
        }
    }

    pub fn is_health(self) -> bool {
        matches!(self, Self::HealthCheck | Self::HealthWatch)
    }

    /// Open for as long as the client likes: capped by count, not by time.
    pub fn is_long_lived(self) -> bool {
        matches!(
            self,
            Self::HealthWatch | Self::Reflection | Self::InvitationWatch
        )
    }

    /// The request is one message that ends (a reflection request stream does not).
    pub fn request_ends(self) -> bool {
        self != Self::Reflection
    }
}
