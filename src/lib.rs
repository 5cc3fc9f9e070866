//! LLMProxy: a thread-per-core io_uring gateway for LLM inference servers with exact, lossless usage
//! metering. The binary (`main.rs`) wires these modules together; tests and benches use them directly.

pub mod auth;
pub mod config;
pub mod mock;
pub mod record;
