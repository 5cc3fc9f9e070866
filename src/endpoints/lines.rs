//! LineScanner: watches the body of a native-API response on its way to the client, the way
//! `SseScanner` watches OpenAI streams, but never changes a byte: the relay forwards every read as
//! it arrives and only shows it to the scanner. memchr finds line ends (NDJSON lines, or the
//! `data:` lines of llama.cpp/SGLang native SSE); each complete object is classified by
//! `native::inspect` (a suffix check or one key lookup for ordinary objects). A JSON body that is
//! not a stream is scanned as one object. Pure, no I/O; runs on core threads; keeps at most one
//! partial line between reads, bounded by `LINE_CAP`.

use super::native::{inspect, Seen};
use super::routes::Shape;
use crate::usage::Usage;

/// A partial line longer than this keeps only its last `TAIL` bytes (the final objects of every
/// native shape end with their counters).
pub const LINE_CAP: usize = 256 * 1024;
/// What an overlong line keeps.
pub const TAIL: usize = 16 * 1024;

#[derive(Debug)]
pub struct LineScanner {
    shape: Shape,
    /// The body is one JSON object (not a stream): newlines do not end it.
    whole: bool,
    line: Vec<u8>,
    /// The line in progress outgrew LINE_CAP: `line` holds only its tail.
    clipped: bool,
    prompt: u64,
    completion: u64,
    audio_seconds: Option<f64>,
    final_seen: bool,
    /// The last cumulative (prompt, completion) an ordinary object reported (llama.cpp, SGLang).
    running: Option<(u64, u64)>,
    error: bool,
    content_events: u64,
    objects: u64,
}

impl LineScanner {
    /// A scanner for a response of `shape`; `stream` when it is NDJSON or SSE, else one JSON body.
    pub fn new(shape: Shape, stream: bool) -> Self {
        LineScanner {
            shape,
            whole: !stream,
            line: Vec::new(),
            clipped: false,
            prompt: 0,
            completion: 0,
            audio_seconds: None,
            final_seen: false,
            running: None,
            error: false,
            content_events: 0,
            objects: 0,
        }
    }

    /// Looks at the next decoded bytes of the body (they go to the client unchanged).
    pub fn feed(&mut self, data: &[u8]) {
        if self.whole {
            self.push(data);
            return;
        }
        let mut start = 0;
        while let Some(k) = memchr::memchr(b'\n', &data[start..]) {
            let end = start + k;
            if self.line.is_empty() && !self.clipped {
                self.line_done(&data[start..end], false);
            } else {
                self.push(&data[start..end]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, self.clipped);
                self.line = line;
                self.line.clear();
                self.clipped = false;
            }
            start = end + 1;
        }
        if start < data.len() {
            self.push(&data[start..]);
        }
    }

    /// The body ended: an unterminated last line (or the whole JSON body) is inspected.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, self.clipped);
            self.line = line;
            self.line.clear();
        }
        self.clipped = false;
    }

    fn push(&mut self, b: &[u8]) {
        self.line.extend_from_slice(b);
        if self.line.len() > LINE_CAP {
            let cut = self.line.len() - TAIL;
            self.line.drain(..cut);
            self.clipped = true;
        }
    }

    /// One complete line (or body); `clipped` when only its tail was kept.
    fn line_done(&mut self, line: &[u8], clipped: bool) {
        let mut l = line.trim_ascii();
        if !self.whole && !clipped {
            // Native SSE: only `data:` lines carry objects; `event:`, `id:`, comments are skipped.
            if let Some(rest) = l.strip_prefix(b"data:") {
                l = rest.trim_ascii_start();
            } else if l.first().is_some_and(|&c| c != b'{' && c != b'[') {
                return;
            }
        }
        if l.is_empty() || l == b"[DONE]" {
            return;
        }
        self.objects += 1;
        match inspect(self.shape, l) {
            Seen::Ordinary { content } => self.content_events += u64::from(content && !self.final_seen),
            Seen::Running { content, prompt, completion } => {
                self.content_events += u64::from(content && !self.final_seen);
                // Cumulative: the last report wins.
                self.running = Some((prompt, completion));
            }
            Seen::Final { prompt, completion, audio_seconds } => {
                // Cumulative: the last final object wins, never a sum.
                self.final_seen = true;
                self.prompt = prompt.unwrap_or(0);
                self.completion = completion.unwrap_or(0);
                self.audio_seconds = audio_seconds.or(self.audio_seconds);
            }
            Seen::Error => self.error = true,
            Seen::Other => {}
        }
    }

    /// The backend's usage: from the final object, or None when it has not been seen (yet).
    #[allow(clippy::needless_update)] // `Usage` may gain fields (cached, reasoning): they stay 0.
    pub fn usage(&self) -> Option<Usage> {
        self.final_seen.then(|| Usage {
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            total_tokens: self.prompt.saturating_add(self.completion),
            ..Default::default()
        })
    }

    /// CONTRACT 7's `partial` usage of a stream cut before its final object: the last cumulative
    /// counters the backend reported on an ordinary object, when its objects carry them.
    #[allow(clippy::needless_update)]
    pub fn partial(&self) -> Option<Usage> {
        self.running.map(|(p, c)| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p.saturating_add(c),
            ..Default::default()
        })
    }

    /// CONTRACT 7's estimate for a stream cut before its final object: the content-bearing
    /// objects forwarded so far, prompt 0.
    #[allow(clippy::needless_update)]
    pub fn estimate(&self) -> Usage {
        Usage {
            prompt_tokens: 0,
            completion_tokens: self.content_events,
            total_tokens: self.content_events,
            ..Default::default()
        }
    }

    /// `usage.seconds` of an audio response.
    pub fn audio_seconds(&self) -> Option<f64> {
        self.audio_seconds
    }

    /// The final object (the one with the totals) was seen: generation is over.
    pub fn final_seen(&self) -> bool {
        self.final_seen
    }

    /// The backend's generation is over: a JSON body (sent once done), or a stream whose final
    /// object was seen. A client leaving after this does not cut the backend.
    pub fn finished(&self) -> bool {
        self.whole || self.final_seen
    }

    /// An error object was seen in the body.
    pub fn error_seen(&self) -> bool {
        self.error
    }

    /// Objects carrying generated content seen before the final one.
    pub fn content_events(&self) -> u64 {
        self.content_events
    }

    /// Complete objects seen.
    pub fn objects(&self) -> u64 {
        self.objects
    }
}

#[cfg(test)]
#[path = "lines_tests.rs"]
mod tests;
