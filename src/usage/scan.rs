//! Token usage as the backend reported it: the `"usage":{...}` object located by a byte scan and
//! parsed alone (never the whole response), and the rules that turn many reports into one total
//! (`UsageTracker`). The JSON-body scanner built on these is `body.rs`. Runs on core threads;
//! pure, no I/O.

use crate::request::skip_ws;
use memchr::memmem;
use serde::Deserialize;

/// Tokens of one request. The details are None when the backend did not report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from a cache (OpenAI/vLLM/SGLang `prompt_tokens_details.cached_tokens`,
    /// Responses `input_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`).
    pub cached_tokens: Option<u64>,
    /// Anthropic `cache_creation_input_tokens`.
    pub cache_creation_tokens: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`, Responses `output_tokens_details`, SGLang's
    /// top-level `reasoning_tokens`.
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct RawDetails {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// One usage object as found on the wire; OpenAI and Responses/Anthropic names both accepted.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<RawDetails>,
    completion_tokens_details: Option<RawDetails>,
    input_tokens_details: Option<RawDetails>,
    output_tokens_details: Option<RawDetails>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// A parsed usage report: the fields that were present.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub total: Option<u64>,
    pub cached: Option<u64>,
    pub cache_creation: Option<u64>,
    pub reasoning: Option<u64>,
}

impl Report {
    fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.completion.is_none() && self.total.is_none()
    }

    fn merge(&mut self, newer: Report) {
        self.prompt = newer.prompt.or(self.prompt);
        self.completion = newer.completion.or(self.completion);
        // A total that no longer matches newer parts would be stale: recompute unless given.
        self.total = newer.total.or(if newer.prompt.is_some() || newer.completion.is_some() {
            None
        } else {
            self.total
        });
        self.cached = newer.cached.or(self.cached);
        self.cache_creation = newer.cache_creation.or(self.cache_creation);
        self.reasoning = newer.reasoning.or(self.reasoning);
    }

    fn usage(&self) -> Usage {
        let p = self.prompt.unwrap_or(0);
        let c = self.completion.unwrap_or(0);
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: self.total.unwrap_or(p.saturating_add(c)),
            cached_tokens: self.cached,
            cache_creation_tokens: self.cache_creation,
            reasoning_tokens: self.reasoning,
        }
    }
}

pub(super) const USAGE_KEY: &[u8] = b"\"usage\":";

/// Searcher for [`USAGE_KEY`], built once (`memmem::find` builds one on every call).
pub(crate) fn find_usage_key(hay: &[u8]) -> Option<usize> {
    static F: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(USAGE_KEY));
    F.find(hay)
}
/// Largest usage object we accept; real ones are under 1 KiB even with every detail field.
pub const MAX_USAGE_OBJECT: usize = 16 * 1024;

/// Parses a complete usage object (`{...}`).
pub fn parse_usage_object(obj: &[u8]) -> Option<Report> {
    let raw: RawUsage = serde_json::from_slice(obj).ok()?;
    let d = |x: Option<RawDetails>| x.unwrap_or_default();
    let r = Report {
        prompt: raw.prompt_tokens.or(raw.input_tokens),
        completion: raw.completion_tokens.or(raw.output_tokens),
        total: raw.total_tokens,
        cached: d(raw.prompt_tokens_details)
            .cached_tokens
            .or(d(raw.input_tokens_details).cached_tokens)
            .or(raw.cache_read_input_tokens),
        cache_creation: raw.cache_creation_input_tokens,
        reasoning: d(raw.completion_tokens_details)
            .reasoning_tokens
            .or(d(raw.output_tokens_details).reasoning_tokens)
            .or(raw.reasoning_tokens),
    };
    (!r.is_empty()).then_some(r)
}

/// Length of the JSON object starting at `b[0] == b'{'`, or None when it does not end within `b`.
pub fn object_len(b: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                loop {
                    let j = memchr::memchr2(b'"', b'\\', &b[i..])? + i;
                    if b[j] == b'\\' {
                        i = j + 2;
                        if i > b.len() {
                            return None;
                        }
                    } else {
                        i = j;
                        break;
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Every usage report in one complete JSON text (an SSE event's data, or a whole small body).
/// Calls `f` with each non-null usage object found.
pub fn for_each_report(text: &[u8], mut f: impl FnMut(Report)) {
    for_each_report_at(text, |_, _, r| f(r));
}

/// As [`for_each_report`], also giving where the member's key starts and where its object ends.
pub fn for_each_report_at(text: &[u8], f: impl FnMut(usize, usize, Report)) {
    if let Some(first) = find_usage_key(text) {
        for_each_report_from(text, first, f);
    }
}

/// As [`for_each_report_at`], with the first `"usage":` key already found at `first` (by a caller's
/// own pass over the text); later ones are searched for.
pub fn for_each_report_from(text: &[u8], first: usize, mut f: impl FnMut(usize, usize, Report)) {
    let mut next = Some(first);
    while let Some(key) = next {
        let v = skip_ws(text, key + USAGE_KEY.len());
        let mut at = v;
        if text.get(v) == Some(&b'{') {
            if let Some(n) = object_len(&text[v..]) {
                if let Some(r) = parse_usage_object(&text[v..v + n]) {
                    f(key, v + n, r);
                }
                at = v + 1;
            }
        }
        next = text.get(at..).and_then(find_usage_key).map(|i| at + i);
    }
}

/// The most choices whose usage one response reports separately (a multi-prompt completion has a
/// choice per prompt; OpenAI caps `n` at 128). Reports for further choices are not counted.
pub const MAX_CHOICES: usize = 4096;

/// Combines the usage reports of one response. Usage is cumulative: the last report wins, never a
/// sum, except per-choice reports, whose completions add up across choices. Their prompts add up
/// only when each choice is its own prompt (TGI/llama.cpp multi-prompt completions report once per
/// prompt); continuous per-choice reports (vLLM/SGLang, n > 1) repeat the one prompt on every
/// choice, so it is counted once.
#[derive(Debug, Default, Clone)]
pub struct UsageTracker {
    /// Reports that cover the whole request (`choices: []` chunks, Responses, Anthropic, bodies).
    whole: Option<Report>,
    /// Last report per choice index, for reports riding on a choice's chunk.
    per_choice: Vec<(u32, Report)>,
    /// Per-choice reports are cumulative ones (continuous usage asked, or a choice reported twice).
    continuous: bool,
}

impl UsageTracker {
    /// A report covering the whole request (merged field by field: Anthropic splits input/output).
    pub fn whole(&mut self, r: Report) {
        match &mut self.whole {
            Some(w) => w.merge(r),
            None => self.whole = Some(r),
        }
    }

    /// A report carried on the chunk of choice `index`. Kept sorted by index (choices come in
    /// order, so a new one is pushed at the end) and at most [`MAX_CHOICES`] of them: a backend
    /// numbering choices without end cannot grow a request's state or its lookups without bound.
    pub fn per_choice(&mut self, index: u32, r: Report) {
        match self.per_choice.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(k) => {
                self.per_choice[k].1.merge(r);
                self.continuous = true;
            }
            Err(k) if self.per_choice.len() < MAX_CHOICES => self.per_choice.insert(k, (index, r)),
            Err(_) => {}
        }
    }

    /// The backend was asked for cumulative usage on every chunk.
    pub fn set_continuous(&mut self) {
        self.continuous = true;
    }

    /// Whether any usage was reported yet.
    pub fn has_report(&self) -> bool {
        self.whole.is_some() || !self.per_choice.is_empty()
    }

    /// Final usage, or None when the backend reported none.
    pub fn result(&self) -> Option<Usage> {
        if let Some(w) = &self.whole {
            return Some(w.usage());
        }
        if self.per_choice.is_empty() {
            return None;
        }
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        let mut sum = Usage::default();
        for (_, r) in &self.per_choice {
            let u = r.usage();
            if self.continuous {
                sum.prompt_tokens = sum.prompt_tokens.max(u.prompt_tokens);
                sum.cached_tokens = sum.cached_tokens.max(u.cached_tokens);
                sum.cache_creation_tokens = sum.cache_creation_tokens.max(u.cache_creation_tokens);
            } else {
                sum.prompt_tokens = sum.prompt_tokens.saturating_add(u.prompt_tokens);
                sum.cached_tokens = add(sum.cached_tokens, u.cached_tokens);
                sum.cache_creation_tokens = add(sum.cache_creation_tokens, u.cache_creation_tokens);
            }
            sum.completion_tokens = sum.completion_tokens.saturating_add(u.completion_tokens);
            sum.reasoning_tokens = add(sum.reasoning_tokens, u.reasoning_tokens);
        }
        sum.total_tokens = sum.prompt_tokens.saturating_add(sum.completion_tokens);
        Some(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_naming_schemes() {
        let r =
            parse_usage_object(br#"{"prompt_tokens":13,"total_tokens":16,"completion_tokens":3}"#).unwrap();
        assert_eq!(
            r.usage(),
            Usage { prompt_tokens: 13, completion_tokens: 3, total_tokens: 16, ..Default::default() }
        );
        let r = parse_usage_object(br#"{"input_tokens":5,"output_tokens":7}"#).unwrap();
        assert_eq!(
            r.usage(),
            Usage { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12, ..Default::default() }
        );
        assert!(parse_usage_object(b"{}").is_none());
    }

    #[test]
    fn object_len_skips_strings_and_nesting() {
        let s = br#"{"a":{"b":"}\"{"},"c":[1,{}]} tail"#;
        assert_eq!(object_len(s), Some(s.len() - 5));
        assert_eq!(object_len(br#"{"a":"#), None);
    }

    #[test]
    fn last_report_wins_and_choices_add_up() {
        let mut t = UsageTracker::default();
        let r = |p, c, t| Report { prompt: p, completion: c, total: t, ..Default::default() };
        let u = |p, c, t| {
            Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t, ..Default::default() })
        };
        // One report per prompt (TGI multi-prompt completions): prompts add up.
        t.per_choice(0, r(Some(2), Some(5), Some(7)));
        t.per_choice(1, r(Some(3), Some(4), Some(7)));
        assert_eq!(t.result(), u(5, 9, 14));
        t.whole(r(Some(5), Some(9), Some(14)));
        t.whole(r(None, Some(10), None));
        assert_eq!(t.result(), u(5, 10, 15));
        // Continuous reports on n = 2 choices of one prompt: the prompt once.
        let mut t = UsageTracker::default();
        t.per_choice(0, r(Some(11), Some(1), Some(12)));
        t.per_choice(1, r(Some(11), Some(1), Some(12)));
        t.per_choice(0, r(Some(11), Some(3), Some(14)));
        assert_eq!(t.result(), u(11, 4, 15));
        let mut t = UsageTracker::default();
        t.set_continuous();
        t.per_choice(0, r(Some(11), Some(0), Some(11)));
        t.per_choice(1, r(Some(11), Some(0), Some(11)));
        assert_eq!(t.result(), u(11, 0, 11));
        // Absurd counts saturate instead of overflowing (a panic in debug builds, 0 in release).
        let mut t = UsageTracker::default();
        t.per_choice(0, r(Some(u64::MAX), Some(1), None));
        t.per_choice(1, r(Some(1), Some(u64::MAX), None));
        assert_eq!(t.result(), u(u64::MAX, u64::MAX, u64::MAX));
        assert_eq!(r(Some(u64::MAX), Some(1), None).usage().total_tokens, u64::MAX);
        // Choices out of order are still matched; past MAX_CHOICES no new one is kept.
        let mut t = UsageTracker::default();
        for i in (0..MAX_CHOICES as u32 + 10).rev() {
            t.per_choice(i, r(Some(1), Some(1), None));
        }
        t.per_choice(100, r(Some(1), Some(1), None));
        assert_eq!(t.per_choice.len(), MAX_CHOICES);
        assert_eq!(
            t.result(),
            u(1, MAX_CHOICES as u64, MAX_CHOICES as u64 + 1),
            "continuous: the prompt once"
        );
    }
}

#[cfg(test)]
mod detail_tests {
    use super::*;

    #[test]
    fn details_of_every_shape() {
        let openai = br#"{"prompt_tokens":20,"completion_tokens":100,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":8,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":64}}"#;
        let r = parse_usage_object(openai).unwrap().usage();
        assert_eq!((r.cached_tokens, r.reasoning_tokens, r.cache_creation_tokens), (Some(8), Some(64), None));
        let responses = br#"{"input_tokens":30,"input_tokens_details":{"cached_tokens":4},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":39}"#;
        let r = parse_usage_object(responses).unwrap().usage();
        assert_eq!((r.prompt_tokens, r.cached_tokens, r.reasoning_tokens), (30, Some(4), Some(5)));
        let anthropic = br#"{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"output_tokens":7}"#;
        let r = parse_usage_object(anthropic).unwrap().usage();
        assert_eq!(
            (r.cached_tokens, r.cache_creation_tokens, r.reasoning_tokens),
            (Some(50), Some(100), None)
        );
        let sglang = br#"{"prompt_tokens":18,"total_tokens":22,"completion_tokens":4,"prompt_tokens_details":null,"reasoning_tokens":3}"#;
        let r = parse_usage_object(sglang).unwrap().usage();
        assert_eq!((r.cached_tokens, r.reasoning_tokens), (None, Some(3)));
        let plain = br#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#;
        let r = parse_usage_object(plain).unwrap().usage();
        assert_eq!((r.cached_tokens, r.cache_creation_tokens, r.reasoning_tokens), (None, None, None));
    }
}
