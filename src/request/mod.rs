//! What the gateway reads from a JSON request body, read as the backends read it or refused with a
//! 400 naming the field: `stream`, `model`, `user`, `stream_options` (`include_usage`,
//! `continuous_usage_stats`), `max_tokens` / `max_completion_tokens` / `max_output_tokens` and `n`;
//! and the splice that makes a backend report usage. One entry point, [`scan`]: a walk over the
//! top-level keys (values skipped unparsed) that decodes escaped keys, lets the last duplicate win,
//! and accepts for each field only the spelling every backend reads the same way (README: "How
//! request bodies are read"). Pure, no I/O; runs on core threads.

mod edit;
mod fields;
mod lax;
mod unescape;
mod walk;

pub use edit::Edit;

/// The longest `model` or `user` (and user-header value) the gateway takes, in bytes: they are
/// copied into the usage record, the access log and the limits' subjects, so a longer one is
/// refused (400) rather than carried. Real model ids are under 100 bytes.
pub const MAX_NAME_BYTES: usize = 1024;
pub use lax::form_bool;
pub(crate) use walk::skip_ws;

use edit::{Member, Target};
use fields::{classify, message, Field, Key, Problem, STREAM_OPTIONS, TOP};
use walk::{walk_object, Malformed};

/// Fields the gateway acts on, read from the top-level JSON object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// `stream` as sent: None when absent or null (every backend then applies its API's default:
    /// no stream for the OpenAI-style APIs, a stream for Ollama's native API). See [`Self::streams`].
    pub stream: Option<bool>,
    pub model: Option<String>,
    pub user: Option<String>,
    /// The client asked for usage itself: `stream_options.include_usage` is true.
    pub include_usage: bool,
    /// The client asked for per-chunk usage itself: `stream_options.continuous_usage_stats` is true.
    pub continuous_usage_stats: bool,
    /// The largest of `max_tokens`, `max_completion_tokens` and `max_output_tokens` present: the
    /// most any backend may generate for it (vLLM prefers `max_completion_tokens`, others read
    /// `max_tokens`; the largest bounds them all). None when none is present.
    pub max_output_tokens: Option<u64>,
    /// `n` (choices per prompt) as sent; None when absent or null.
    pub n: Option<u64>,
    /// Where a usage edit goes.
    target: Target,
}

impl RequestInfo {
    /// Whether the backend streams the answer, given the API's default for an absent `stream`.
    pub fn streams(&self, default: bool) -> bool {
        self.stream.unwrap_or(default)
    }

    /// The edit that makes `stream_options.include_usage` (when `include_usage`) and
    /// `stream_options.continuous_usage_stats` (when `continuous_usage_stats`) true: members added
    /// to an existing `stream_options` object, an existing false or null replaced, or the whole
    /// `stream_options` member added. None when nothing needs changing. The caller decides when an
    /// edit applies (a streaming request to an API that takes `stream_options`).
    pub fn usage_edit(&self, include_usage: bool, continuous_usage_stats: bool) -> Option<Edit> {
        edit::usage_edit(
            self.target,
            include_usage && !self.include_usage,
            continuous_usage_stats && !self.continuous_usage_stats,
        )
    }

    /// The include_usage edit for an OpenAI-style request (`stream` absent means no stream).
    pub fn include_usage_edit(&self) -> Option<Edit> {
        if self.streams(false) {
            self.usage_edit(true, false)
        } else {
            None
        }
    }
}

/// Why a body is refused (400); the message names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError(pub &'static str);

impl From<Malformed> for BodyError {
    fn from(_: Malformed) -> BodyError {
        BodyError("invalid JSON in request body")
    }
}

/// Reads the gateway's fields from a request body. An empty body gives defaults.
pub fn scan(body: &[u8]) -> Result<RequestInfo, BodyError> {
    let mut info = RequestInfo::default();
    let open = skip_ws(body, 0);
    if open == body.len() {
        return Ok(info);
    }
    if body[open] != b'{' {
        return Err(BodyError("request body must be a JSON object"));
    }
    let mut slots = [Slot::Absent; TOP.len()];
    let (end, empty) = walk_object(body, open, |m| {
        if let Key::Field(f) = classify(m.key, &TOP)? {
            slots[f as usize].set(body, m.value);
        }
        Ok::<_, BodyError>(())
    })?;
    if skip_ws(body, end) != body.len() {
        return Err(BodyError("invalid JSON in request body: data after the object"));
    }
    let slot = |f: Field| (slots[f as usize], f);
    info.stream = read_bool(body, slot(Field::Stream))?;
    info.model = read_string(body, slot(Field::Model))?;
    info.user = read_string(body, slot(Field::User))?;
    info.n = read_count(body, slot(Field::N))?;
    for f in [Field::MaxTokens, Field::MaxCompletionTokens, Field::MaxOutputTokens] {
        if let Some(v) = read_count(body, slot(f))? {
            info.max_output_tokens = Some(info.max_output_tokens.map_or(v, |m| m.max(v)));
        }
    }
    info.target = match slots[Field::StreamOptions as usize] {
        Slot::Absent => Target::Absent { open, empty },
        Slot::Null(s, e) => Target::Null(s, e),
        Slot::NullAfterValue => {
            return Err(BodyError(message(Field::StreamOptions, Problem::NullAfterValue)))
        }
        Slot::Value(s, e) if body[s] == b'{' => stream_options(body, s, e, &mut info)?,
        Slot::Value(..) => return Err(BodyError(message(Field::StreamOptions, Problem::NotObject))),
    };
    Ok(info)
}

/// Reads `include_usage` and `continuous_usage_stats` from the `stream_options` object at `s..e`.
fn stream_options(body: &[u8], s: usize, e: usize, info: &mut RequestInfo) -> Result<Target, BodyError> {
    let mut slots = [Slot::Absent; STREAM_OPTIONS.len()];
    let (end, empty) = walk_object(body, s, |m| {
        if let Key::Field(f) = classify(m.key, &STREAM_OPTIONS)? {
            slots[f as usize - Field::IncludeUsage as usize].set(body, m.value);
        }
        Ok::<_, BodyError>(())
    })?;
    if end != e {
        return Err(Malformed.into());
    }
    let member = |slot: Slot, f: Field| -> Result<(bool, Member), BodyError> {
        Ok(match (read_bool(body, (slot, f))?, slot) {
            (Some(true), _) => (true, Member::True),
            (_, Slot::Value(s, e) | Slot::Null(s, e)) => (false, Member::Replace(s, e)),
            _ => (false, Member::Absent),
        })
    };
    let (asked, include_usage) = member(slots[0], Field::IncludeUsage)?;
    info.include_usage = asked;
    let (asked, continuous) = member(slots[1], Field::ContinuousUsageStats)?;
    info.continuous_usage_stats = asked;
    Ok(Target::Object { open: s, empty, include_usage, continuous })
}

/// A field's occurrences so far, the last one winning (as Python's json, Go and nlohmann keep them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Slot {
    #[default]
    Absent,
    /// The value's span (not null).
    Value(usize, usize),
    /// null (and nothing but null before it).
    Null(usize, usize),
    /// null after a value: Python reads null, Go keeps the earlier value for a non-pointer field.
    NullAfterValue,
}

impl Slot {
    fn set(&mut self, body: &[u8], (s, e): (usize, usize)) {
        *self = match (*self, &body[s..e] == b"null") {
            (_, false) => Slot::Value(s, e),
            (Slot::Absent | Slot::Null(..), true) => Slot::Null(s, e),
            (Slot::Value(..) | Slot::NullAfterValue, true) => Slot::NullAfterValue,
        };
    }

    /// The value's bytes; None when absent or null.
    fn value(self, body: &[u8], f: Field) -> Result<Option<&[u8]>, BodyError> {
        match self {
            Slot::Absent | Slot::Null(..) => Ok(None),
            Slot::NullAfterValue => Err(BodyError(message(f, Problem::NullAfterValue))),
            Slot::Value(s, e) => Ok(Some(&body[s..e])),
        }
    }
}

/// A boolean: JSON true or false only. pydantic's lax mode would also take 0/1, 0.0/1.0 and
/// strings such as "yes" or "off", but llama.cpp reads those as the default and Go, serde and
/// OpenAI refuse them: no reading matches every backend, so they are refused.
fn read_bool(body: &[u8], (slot, f): (Slot, Field)) -> Result<Option<bool>, BodyError> {
    match slot.value(body, f)? {
        None => Ok(None),
        Some(b"true") => Ok(Some(true)),
        Some(b"false") => Ok(Some(false)),
        Some(_) => Err(BodyError(message(f, Problem::NotBool))),
    }
}

/// A count: a plain JSON integer (`0` or digits without a leading zero) that fits in u64. Floats
/// (even 100.0 or 1e2), signs, and strings are refused: pydantic, llama.cpp and Go each read a
/// different subset of them.
fn read_count(body: &[u8], (slot, f): (Slot, Field)) -> Result<Option<u64>, BodyError> {
    let Some(v) = slot.value(body, f)? else { return Ok(None) };
    let plain = !v.is_empty() && v.iter().all(u8::is_ascii_digit) && (v[0] != b'0' || v.len() == 1);
    let n =
        plain.then(|| v.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))));
    match n.flatten() {
        Some(n) => Ok(Some(n)),
        None => Err(BodyError(message(f, Problem::NotCount))),
    }
}

/// A string, escapes decoded; allocates only the result.
fn read_string(body: &[u8], (slot, f): (Slot, Field)) -> Result<Option<String>, BodyError> {
    let Some(v) = slot.value(body, f)? else { return Ok(None) };
    if v.first() != Some(&b'"') {
        return Err(BodyError(message(f, Problem::NotString)));
    }
    let raw = &v[1..v.len() - 1];
    let s = if memchr::memchr(b'\\', raw).is_none() && raw.iter().all(|&c| c >= 0x20) {
        std::str::from_utf8(raw).ok().map(str::to_string)
    } else {
        unescape::to_string(raw)
    };
    match s {
        Some(s) if s.len() > MAX_NAME_BYTES => Err(BodyError(message(f, Problem::TooLong))),
        Some(s) => Ok(Some(s)),
        None => Err(BodyError(message(f, Problem::BadString))),
    }
}

#[cfg(test)]
mod tests;
