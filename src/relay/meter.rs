//! The usage scanner of a relayed body, one variant per body kind (SSE, JSON body, NDJSON and
//! native APIs): what the body loop feeds each read to, and what is billed from what it saw.
//! Runs on core threads; pure, no I/O.

use crate::endpoints::LineScanner;
use crate::usage::record::UsageSource;
use crate::usage::sse::SseScanner;
use crate::usage::{BodyUsageScanner, Usage};

/// The usage scanner for the body's kind. New body kinds (NDJSON, native APIs) add a variant here
/// and an arm in `feed`, `finish`, `finished` and `metered`.
pub(super) enum Scanner {
    Sse(SseScanner),
    Body(BodyUsageScanner),
    /// NDJSON and native-API bodies, rerank and audio JSON (endpoints hook): bytes pass unchanged.
    Native(LineScanner),
}

/// What one `Scanner::feed` asks the relay to send.
pub(super) struct Fed {
    pub release: bool,
    pub forward: usize,
}

impl Scanner {
    pub fn feed(&mut self, data: &mut [u8]) -> Fed {
        match self {
            Scanner::Sse(s) => {
                let f = s.feed(data);
                Fed { release: f.release, forward: f.forward }
            }
            Scanner::Body(s) => {
                s.feed(data);
                Fed { release: false, forward: data.len() }
            }
            Scanner::Native(s) => {
                s.feed(data);
                Fed { release: false, forward: data.len() }
            }
        }
    }

    pub fn released(&self) -> &[u8] {
        match self {
            Scanner::Sse(s) => s.released(),
            Scanner::Body(_) | Scanner::Native(_) => &[],
        }
    }

    pub fn finish(&mut self) -> &[u8] {
        match self {
            Scanner::Sse(s) => s.finish(),
            Scanner::Body(_) => &[],
            Scanner::Native(s) => {
                s.finish();
                &[]
            }
        }
    }

    /// The backend's generation is over: a leaving client no longer cuts it.
    pub fn finished(&self) -> bool {
        match self {
            Scanner::Sse(s) => s.finished(),
            // A JSON body is sent once generation is done.
            Scanner::Body(_) => true,
            Scanner::Native(s) => s.finished(),
        }
    }

    /// What to bill, given whether the body arrived whole.
    pub fn metered(&self, whole: bool) -> (Option<Usage>, UsageSource, bool) {
        match self {
            Scanner::Sse(s) => {
                let (u, src) = match s.usage() {
                    Some(u) if whole => (Some(u), UsageSource::Final),
                    Some(u) => (Some(u), UsageSource::Partial),
                    None if !whole && s.content_events() > 0 => {
                        let n = s.content_events();
                        let u = Usage { completion_tokens: n, total_tokens: n, ..Usage::default() };
                        (Some(u), UsageSource::Estimated)
                    }
                    None => (None, UsageSource::None),
                };
                (u, src, s.error_seen())
            }
            Scanner::Body(s) => match s.result() {
                Some(u) => (Some(u), UsageSource::Final, false),
                None => (None, UsageSource::None, false),
            },
            // Native final objects carry the totals: seen means final, even if the client left
            // after it. Cut before it: the last cumulative counters the backend reported (llama.cpp,
            // SGLang), else CONTRACT 7's estimate from the content objects forwarded.
            Scanner::Native(s) => {
                let (u, src) = match (s.usage(), s.partial()) {
                    (Some(u), _) => (Some(u), UsageSource::Final),
                    (None, Some(u)) if !whole => (Some(u), UsageSource::Partial),
                    (None, _) if !whole && s.content_events() > 0 => {
                        (Some(s.estimate()), UsageSource::Estimated)
                    }
                    (None, _) => (None, UsageSource::None),
                };
                (u, src, s.error_seen())
            }
        }
    }
}
