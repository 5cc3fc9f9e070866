//! LLMProxy: a thread-per-core io_uring gateway for LLM inference servers with exact, lossless usage
//! metering. The binary (`main.rs`) wires these modules together; tests and benches use them directly.

pub mod access_log;
pub mod auth;
pub mod balancer;
pub mod chunked;
pub mod config;
pub mod connection;
pub mod core;
pub mod cores;
pub mod counters;
pub mod deadline;
pub mod delivery;
pub mod discovery;
pub mod doorbell;
pub mod endpoints;
pub mod error;
pub mod gateway;
pub mod health;
pub mod http1;
pub mod ids;
pub mod json;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod models;
pub mod net;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod request;
pub mod resolve;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod usage;
pub mod warm;
pub mod watch;
// Old paths kept so code written against them keeps compiling.
pub use usage::{record, sse};
