//! Usage metering: everything that turns backend response bytes into a billing record. Pure code, no
//! I/O; runs on core threads (the record is serialized on the webhook thread).
//! - `scan`: the `"usage":{...}` object found by a byte scan and parsed alone; JSON-body scanner.
//! - `sse`: the SSE scanner fed every streamed chunk on its way to the client.
//! - `event`: what one SSE event says besides usage (error, finish, content, the usage member).
//! - `record`: the usage record of CONTRACT section 5.

mod event;
pub mod record;
mod scan;
pub mod sse;

pub use scan::*;
