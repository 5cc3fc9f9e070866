//! Usage metering: everything that turns backend response bytes into a billing record. Pure code, no
//! I/O; runs on core threads (the record is serialized on the webhook thread).
//! - `scan`: the `"usage":{...}` object found by a byte scan and parsed alone; the tracker that
//!   turns many reports into one total.
//! - `body`: the JSON-body scanner (usage of a non-streaming body fed in pieces).
//! - `sse`: the SSE scanner fed every streamed chunk on its way to the client.
//! - `event`: what one SSE event says besides usage (error, finish, content, the usage member).
//! - `record`: the usage record of CONTRACT section 5.

mod body;
mod event;
pub mod record;
mod scan;
pub mod sse;

pub use body::BodyUsageScanner;
pub use scan::*;
