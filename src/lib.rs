//! LLMProxy: a thread-per-core io_uring gateway for LLM inference servers with exact, lossless usage
//! metering. The binary (`main.rs`) wires these modules together; tests and benches use them directly.

pub mod auth;
pub mod chunked;
pub mod config;
pub mod error;
pub mod http1;
pub mod record;
pub mod request;
pub mod sse;
pub mod usage;
pub mod metrics;
pub mod balancer;
pub mod health;
