//! Byte streams and dialing for every hop. `Stream` is what the client loop and the relay read and
//! write (plain TCP, or TLS on either side) through monoio's owned-buffer traits; `dial` is the one
//! way to open a backend connection: async on the core threads, blocking for the health thread.

pub mod accept;
pub mod dial;
pub mod shared_tcp;
pub mod stream;

pub use accept::{accept_tls, HandshakeFailure};
pub use dial::{connect, connect_blocking, BlockingStream, DialError};
pub use stream::Stream;
