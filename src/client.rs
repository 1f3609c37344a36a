//! For Rust callers of the service (and its own tests and soak): which failed calls are
//! safe to retry because the server never saw them.
//!
//! A connection closing at its maximum age or at a replica's shutdown finishes every call
//! up to the last stream id of its GOAWAY (docs/adr/0006-patched-h2.md); the calls that fail
//! then never reached the server. grpc-core retries those by itself ("transparent retry");
//! tonic does not, so a tonic caller should retry exactly these, on any replica.

/// Whether a failed call is one the server never saw, so that retrying it is safe, even
/// for a call that writes:
/// - the connection was refused (the replica is not listening: restarting, or gone);
/// - the request was still queued in the client when its connection closed (hyper answers
///   it `Canceled` "connection closed" and hands the request back unsent; tonic reports
///   CANCELLED);
/// - the server refused the stream (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7);
/// - the stream was opened after the server's graceful GOAWAY (reason NO_ERROR) announced a
///   lower last stream id. tonic reports it as INTERNAL "h2 protocol error" with the
///   `h2::Error` as its source (grpc/grpc-rust#612), hence the look at the source chain.
pub fn never_reached_the_server(status: &tonic::Status) -> bool {
    std::iter::successors(std::error::Error::source(status), |error| error.source()).any(|error| {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            return hyper.is_canceled();
        }
        error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}
