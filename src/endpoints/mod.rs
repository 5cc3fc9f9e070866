//! Endpoints beyond chat and completions (CONTRACT 12): the route table, and the pure parsers the
//! proxy needs for them: the line scanner for NDJSON and native SSE streams with the native usage
//! extractors, and the multipart form reader for audio requests. No I/O; used on core threads.

pub mod lines;
pub mod multipart;
pub mod native;
pub mod routes;

pub use lines::LineScanner;
pub use routes::{Endpoint, PathSet, Shape};
