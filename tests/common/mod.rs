//! Helpers shared by the integration tests (`mod common;`). Each test binary uses a subset.
#![allow(dead_code, unused_imports)]

pub mod receiver;

pub use receiver::{Hit, Mode, Receiver};
