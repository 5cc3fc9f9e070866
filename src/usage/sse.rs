//! SseScanner: fed every decoded chunk of a streamed response on its way to the client. memchr finds
//! event boundaries; one pass over each event finds the keys it reads (`event::scan_keys`); only
//! events that carry usage are parsed; usage-only events and per-chunk usage
//! members we caused are cut out (a byte splice in place).
//! Runs on core threads; pure, no I/O; keeps at most one partial event between reads.

use super::event;
use super::{for_each_report_from, Usage, UsageTracker};
use crate::request::skip_ws;
use memchr::memmem;

/// An event larger than this is not kept for usage scanning (usage events are a few hundred bytes).
pub const MAX_PARTIAL_EVENT: usize = 1 << 20;

/// What the relay must send after one `feed`.
///
/// Call order (the relay's contract with the scanner): after each `feed(data)`, if `release` is
/// true send `released()` first, then `data[..forward]`, and do both before the next `feed` (the
/// next call reuses the released buffer). When the body has ended, call `finish()` once, after the
/// last `feed`'s bytes were queued, and send what it returns after them. `usage()`, `metered()` and
/// the counters may be read at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Send `released()` first: bytes held back earlier, now complete (and perhaps spliced).
    pub release: bool,
    /// Then the first `forward` bytes of the fed chunk (compacted in place).
    pub forward: usize,
}

/// What the scanner does to the stream besides reading usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cutting {
    /// Cut usage-only events (`"choices":[]` + usage): set when the gateway injected include_usage.
    pub usage_only: bool,
    /// Cut the `"usage":{...}` member out of events that carry choices: set when the gateway
    /// injected continuous_usage_stats and the client did not ask for it.
    pub usage_member: bool,
    /// The backend reports cumulative usage on every chunk (asked by the gateway or the client).
    pub continuous: bool,
}

/// How one complete event goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Keep,
    Cut,
    /// Remove bytes `a..b` of the event.
    Splice(usize, usize),
}

#[derive(Debug, Default)]
pub struct SseScanner {
    cut: Cutting,
    /// Bytes of the event in progress (up to MAX_PARTIAL_EVENT).
    partial: Vec<u8>,
    /// Total length of the event in progress, even past the cap.
    partial_total: usize,
    /// How many bytes of the event in progress were withheld from the client (0 or partial_total).
    held: usize,
    /// Boundary progress across chunks: 1 after a line's `\n`, 2 after `\n\r`.
    tail: u8,
    /// Bytes to send before the current chunk (see `Feed::release`).
    released: Vec<u8>,
    tracker: UsageTracker,
    events: u64,
    stripped: u64,
    /// Events with generated content while no usage had been reported yet.
    content_events: u64,
    finished: bool,
    error: bool,
}

impl SseScanner {
    pub fn new(strip_usage_only: bool) -> Self {
        Self::with(Cutting { usage_only: strip_usage_only, ..Cutting::default() })
    }

    pub fn with(cut: Cutting) -> Self {
        let mut s = SseScanner { cut, ..Default::default() };
        if cut.continuous {
            s.tracker.set_continuous();
        }
        s
    }

    /// Scans `data` (the next decoded bytes of the stream). Cut events and members are removed in
    /// place; the returned `Feed` says what to send. Bytes are passed on as soon as they cannot be
    /// part of something to cut: only a partial event that could still be cut (or spliced) is held.
    pub fn feed(&mut self, data: &mut [u8]) -> Feed {
        if data.is_empty() {
            // A read that brought only chunked framing: nothing changes (the line-ending progress
            // in `tail` must survive it, or a blank line split around it is missed).
            return Feed { release: false, forward: 0 };
        }
        let mut release = false;
        let mut r = 0; // start of the current event's bytes within data
        let mut w = 0; // end of the bytes kept so far
        let mut pos = 0; // where to look for the next newline
        let mut tail = self.tail;
        while let Some((end, one_line)) = find_event_end(data, pos, tail) {
            // The spans of data[r..end] to keep (second one empty unless spliced).
            let mut keep = (r, end, end, end);
            if self.partial_total > 0 {
                self.push_partial(&data[r..end]);
                let action = self.complete_event_from_partial();
                if self.held > 0 {
                    // Everything before data[r..] was withheld: send the whole event (as cut) now.
                    let held = self.held.min(self.partial.len());
                    match action {
                        Action::Cut => keep = (r, r, end, end),
                        Action::Keep => {
                            self.released.clear();
                            self.released.extend_from_slice(&self.partial[..held]);
                            release = true;
                        }
                        Action::Splice(a, b) => {
                            self.released.clear();
                            self.released.extend_from_slice(&self.partial[..a]);
                            self.released.extend_from_slice(&self.partial[b..]);
                            release = true;
                            keep = (r, r, end, end);
                        }
                    }
                }
                self.partial.clear();
                self.partial_total = 0;
                self.held = 0;
            } else {
                match self.inspect_event(&data[r..end], one_line) {
                    Action::Keep => {}
                    Action::Cut => keep = (r, r, end, end),
                    Action::Splice(a, b) => keep = (r, r + a, r + b, end),
                }
            }
            for (from, to) in [(keep.0, keep.1), (keep.2, keep.3)] {
                if from < to {
                    // Until something is cut, kept bytes are already in place (w == from).
                    if w != from {
                        data.copy_within(from..to, w);
                    }
                    w += to - from;
                }
            }
            r = end;
            pos = end;
            tail = 0;
        }
        // data[r..] is the start (or more) of an event that has not ended yet.
        if r < data.len() {
            let fresh = self.partial_total == 0;
            let was_held = self.held > 0 && self.held == self.partial_total;
            self.push_partial(&data[r..]);
            let hold = (fresh || was_held)
                && self.partial_total <= MAX_PARTIAL_EVENT
                && (self.cut.usage_member || (self.cut.usage_only && could_be_usage_only(&self.partial)));
            if hold {
                self.held = self.partial_total;
            } else {
                if self.held > 0 {
                    self.released.clear();
                    self.released.extend_from_slice(&self.partial[..self.held.min(self.partial.len())]);
                    self.held = 0;
                    release = true;
                }
                if w != r {
                    data.copy_within(r..data.len(), w);
                }
                w += data.len() - r;
            }
            self.tail = tail_state(&data[r..], tail);
        } else {
            self.tail = 0;
        }
        Feed { release, forward: w }
    }

    /// Held bytes to send before the chunk of the last `feed` that returned `release: true`.
    pub fn released(&self) -> &[u8] {
        &self.released
    }

    /// The stream ended: an unterminated last event is still scanned for usage. Returns held bytes
    /// that must still go to the client (an unterminated event that was not cut, or its splice).
    pub fn finish(&mut self) -> &[u8] {
        self.released.clear();
        if self.partial_total > 0 {
            let action = self.complete_event_from_partial();
            if self.held > 0 {
                let held = self.held.min(self.partial.len());
                match action {
                    Action::Cut => {}
                    Action::Keep => self.released.extend_from_slice(&self.partial[..held]),
                    Action::Splice(a, b) => {
                        self.released.extend_from_slice(&self.partial[..a]);
                        self.released.extend_from_slice(&self.partial[b..]);
                    }
                }
            }
            self.partial.clear();
            self.partial_total = 0;
            self.held = 0;
        }
        &self.released
    }

    pub fn usage(&self) -> Option<Usage> {
        self.tracker.result()
    }

    /// Events seen so far (complete ones).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Usage-only events cut from the stream.
    pub fn stripped(&self) -> u64 {
        self.stripped
    }

    /// Events with non-empty generated content seen before the backend reported any usage.
    pub fn content_events(&self) -> u64 {
        self.content_events
    }

    /// A choice finished (`finish_reason`): the backend's generation is over.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The stream carried an error event.
    pub fn error_seen(&self) -> bool {
        self.error
    }

    fn push_partial(&mut self, b: &[u8]) {
        let room = MAX_PARTIAL_EVENT.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&b[..b.len().min(room)]);
        self.partial_total += b.len();
    }

    fn complete_event_from_partial(&mut self) -> Action {
        if self.partial_total > self.partial.len() {
            // Oversized: its head is kept, usage in it cannot be trusted; never cut it.
            self.events += 1;
            return Action::Keep;
        }
        let ev = std::mem::take(&mut self.partial);
        let action = self.inspect_event(&ev, false);
        self.partial = ev;
        action
    }

    /// Records what one complete event says; returns what to do with it. `one_line`: no line
    /// ended in it before its blank line (false when unknown).
    fn inspect_event(&mut self, ev: &[u8], one_line: bool) -> Action {
        self.events += 1;
        if !self.error && event::is_error(ev) {
            self.error = true;
        }
        // One pass over the event for every key read here (issue 9's cost: a memmem search per key).
        let keys = event::scan_keys(ev, one_line);
        self.finished |= keys.finish;
        if keys.content && !self.tracker.has_report() {
            self.content_events += 1;
        }
        let Some(first) = keys.usage else { return Action::Keep };
        let mut found = None;
        // Where the choices are matters only for an event that carries usage.
        let mut choices = Choices::Absent;
        let tracker = &mut self.tracker;
        for_each_report_from(ev, first, |key, end, r| {
            // The first key was found on a data line by `scan_keys`; later ones are checked here.
            if key != first && !event::in_data_line(ev, key) {
                return;
            }
            if found.is_none() {
                found = Some((key, end));
                choices = choices_of(ev);
            }
            match choices {
                Choices::Absent | Choices::Empty => tracker.whole(r),
                Choices::First(i) => tracker.per_choice(i, r),
            }
        });
        let Some((key, end)) = found else { return Action::Keep };
        match choices {
            Choices::Empty if self.cut.usage_only => {
                self.stripped += 1;
                Action::Cut
            }
            Choices::First(_) if self.cut.usage_member => match event::member_span(ev, key, end) {
                Some((a, b)) => Action::Splice(a, b),
                None => Action::Keep,
            },
            _ => Action::Keep,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choices {
    Absent,
    Empty,
    /// Index of the first choice.
    First(u32),
}

const CHOICES_KEY: &[u8] = b"\"choices\":";

/// Searcher for [`CHOICES_KEY`], built once: this runs on every event.
fn find_choices_key(hay: &[u8]) -> Option<usize> {
    static F: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(CHOICES_KEY));
    F.find(hay)
}

fn choices_of(ev: &[u8]) -> Choices {
    let Some(c) = find_choices_key(ev) else { return Choices::Absent };
    let i = skip_ws(ev, c + CHOICES_KEY.len());
    if ev.get(i) != Some(&b'[') {
        return Choices::Absent;
    }
    let j = skip_ws(ev, i + 1);
    if ev.get(j) == Some(&b']') {
        return Choices::Empty;
    }
    let idx = memmem::find(&ev[j..], b"\"index\":")
        .map(|k| {
            let d = skip_ws(ev, j + k + 8);
            ev[d..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .fold(0u32, |a, c| a.saturating_mul(10).saturating_add(u32::from(c - b'0')))
        })
        .unwrap_or(0);
    Choices::First(idx)
}

/// A partial event could still turn out to be a usage-only one unless it already shows a non-empty
/// `choices` array. (An event that opens with a comment line is no exception: `inspect_event` cuts
/// it whole when a usage-only data line follows, so it is held like any other.)
fn could_be_usage_only(partial: &[u8]) -> bool {
    match find_choices_key(partial) {
        None => true,
        Some(c) => {
            let i = skip_ws(partial, c + CHOICES_KEY.len());
            match partial.get(i) {
                None => true,
                Some(b'[') => {
                    let j = skip_ws(partial, i + 1);
                    matches!(partial.get(j), None | Some(b']'))
                }
                Some(_) => false,
            }
        }
    }
}

/// End (exclusive) of the first event ending in `data[pos..]`: a blank line; and whether no line
/// ended before it there (the event is one line; false when its start came in an earlier chunk).
/// `tail` carries a line ending begun in the previous chunk (1: `\n` seen, 2: `\n\r` seen) when
/// `pos` is the chunk start.
fn find_event_end(data: &[u8], pos: usize, tail: u8) -> Option<(usize, bool)> {
    if tail == 1 && pos == 0 {
        match data.first() {
            Some(b'\n') => return Some((1, false)),
            Some(b'\r') if data.get(1) == Some(&b'\n') => return Some((2, false)),
            _ => {}
        }
    }
    if tail == 2 && pos == 0 && data.first() == Some(&b'\n') {
        return Some((1, false));
    }
    let mut i = pos;
    while let Some(k) = memchr::memchr(b'\n', &data[i..]) {
        let nl = i + k;
        match data.get(nl + 1) {
            Some(b'\n') => return Some((nl + 2, i == pos)),
            Some(b'\r') if data.get(nl + 2) == Some(&b'\n') => return Some((nl + 3, i == pos)),
            _ => i = nl + 1,
        }
    }
    None
}

/// Line-ending progress at the end of an unfinished event's bytes.
fn tail_state(b: &[u8], prev: u8) -> u8 {
    match b {
        [.., b'\n'] => 1,
        [.., b'\n', b'\r'] => 2,
        [b'\r'] if prev == 1 => 2,
        _ => 0,
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
