//! The server's codec: prost's, with tonic's response buffer sized for a page.
//!
//! tonic writes every response into a buffer of `BufferSettings::buffer_size` (8 KiB by
//! default) that doubles as it fills; a page of 50 invitations is about 17 KiB, so it would
//! be copied twice on its way out. `BufferSettings` is tonic's knob for that: a response
//! starts in a buffer that holds a default page (a larger page still grows it). The buffer
//! lives only until the response is handed to the connection, so what it costs is
//! [`RESPONSE_BUFFER_BYTES`] per response being written.
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where every response's buffer starts: a default page of 50 invitations fits.
pub const RESPONSE_BUFFER_BYTES: usize = 32 * 1024;

/// tonic's default: how much of a stream's responses are buffered before they are flushed.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`], with the response buffer of [`RESPONSE_BUFFER_BYTES`]; requests are
/// decoded as tonic does by default. `build.rs` points the server's generation at it.
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            RESPONSE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}
