//! The body fields the gateway acts on, how a key is matched to one (decoded; a key that matches
//! only the way Go's case-insensitive decoder matches is refused), and the 400 message naming the
//! field for each way a value can be refused. Pure; runs on core threads.

use super::unescape::ShortKey;
use super::BodyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Stream,
    Model,
    User,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    N,
    /// `stream_options.include_usage`
    IncludeUsage,
    /// `stream_options.continuous_usage_stats`
    ContinuousUsageStats,
}

/// Top-level fields with their keys.
pub(super) const TOP: [(&[u8], Field); 8] = [
    (b"stream", Field::Stream),
    (b"model", Field::Model),
    (b"user", Field::User),
    (b"stream_options", Field::StreamOptions),
    (b"max_tokens", Field::MaxTokens),
    (b"max_completion_tokens", Field::MaxCompletionTokens),
    (b"max_output_tokens", Field::MaxOutputTokens),
    (b"n", Field::N),
];

/// Fields inside `stream_options`.
pub(super) const STREAM_OPTIONS: [(&[u8], Field); 2] =
    [(b"include_usage", Field::IncludeUsage), (b"continuous_usage_stats", Field::ContinuousUsageStats)];

/// What a key is to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Field(Field),
    Other,
}

/// Matches a raw key (escapes not decoded) against `names`. Python, serde and nlohmann match keys
/// exactly after decoding escapes; Go (Ollama) also matches them case-insensitively, with `ſ` as
/// `s` and the Kelvin sign as `k` (Unicode simple folding). A key that only Go would take for one of
/// ours is refused: the backends disagree on it.
pub(super) fn classify(raw: &[u8], names: &[(&[u8], Field)]) -> Result<Key, BodyError> {
    // Fast path: plain ASCII keys without escapes (nearly every key of every body).
    if raw.len() <= 32 && raw.iter().all(|&c| c.is_ascii() && c != b'\\') {
        if let Some(&(_, f)) = names.iter().find(|(n, _)| *n == raw) {
            return Ok(Key::Field(f));
        }
        return match names.iter().find(|(n, _)| n.eq_ignore_ascii_case(raw)) {
            Some(&(_, f)) => Err(BodyError(message(f, Problem::KeySpelling))),
            None => Ok(Key::Other),
        };
    }
    let Some(key) = ShortKey::decode(raw) else {
        // Longer than any of ours, or not decoded alike by every parser: never one of ours.
        return Ok(Key::Other);
    };
    let key = key.bytes();
    if let Some(&(_, f)) = names.iter().find(|(n, _)| *n == key) {
        return Ok(Key::Field(f));
    }
    match names.iter().find(|(n, _)| go_fold_eq(key, n)) {
        Some(&(_, f)) => Err(BodyError(message(f, Problem::KeySpelling))),
        None => Ok(Key::Other),
    }
}

/// Whether Go's encoding/json would match `key` to the lower-case ASCII `name`.
fn go_fold_eq(key: &[u8], name: &[u8]) -> bool {
    let mut k = key;
    for &n in name {
        let rest = if k.first().is_some_and(|c| c.to_ascii_lowercase() == n) {
            &k[1..]
        } else if n == b's' && k.starts_with("\u{17f}".as_bytes()) {
            &k[2..]
        } else if n == b'k' && k.starts_with("\u{212a}".as_bytes()) {
            &k[3..]
        } else {
            return false;
        };
        k = rest;
    }
    k.is_empty()
}

/// Ways a field's value can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Problem {
    NotBool,
    NotCount,
    NotString,
    BadString,
    NotObject,
    KeySpelling,
    NullAfterValue,
    TooLong,
}

macro_rules! per_field {
    ($f:expr, $pre:literal, $post:literal) => {
        match $f {
            Field::Stream => concat!($pre, "\"stream\"", $post),
            Field::Model => concat!($pre, "\"model\"", $post),
            Field::User => concat!($pre, "\"user\"", $post),
            Field::StreamOptions => concat!($pre, "\"stream_options\"", $post),
            Field::MaxTokens => concat!($pre, "\"max_tokens\"", $post),
            Field::MaxCompletionTokens => concat!($pre, "\"max_completion_tokens\"", $post),
            Field::MaxOutputTokens => concat!($pre, "\"max_output_tokens\"", $post),
            Field::N => concat!($pre, "\"n\"", $post),
            Field::IncludeUsage => concat!($pre, "\"stream_options.include_usage\"", $post),
            Field::ContinuousUsageStats => concat!($pre, "\"stream_options.continuous_usage_stats\"", $post),
        }
    };
}

/// The 400 message: names the field and says what spelling the gateway reads.
pub(super) fn message(f: Field, p: Problem) -> &'static str {
    match p {
        Problem::NotBool => per_field!(f, "request field ", " must be true, false or null"),
        Problem::NotCount => per_field!(
            f,
            "request field ",
            " must be a whole number written as a plain JSON integer (no sign, fraction, exponent or quotes, at most 20 digits), or null"
        ),
        Problem::NotString => per_field!(f, "request field ", " must be a JSON string or null"),
        Problem::BadString => per_field!(
            f,
            "request field ",
            " is not a string every backend reads alike (lone surrogate escape, control character or invalid UTF-8)"
        ),
        Problem::NotObject => per_field!(f, "request field ", " must be a JSON object or null"),
        Problem::KeySpelling => per_field!(
            f,
            "request body has a key that some backends read as ",
            " (same letters in another case); spell it exactly"
        ),
        Problem::TooLong => per_field!(f, "request field ", " is longer than 1024 bytes"),
        Problem::NullAfterValue => per_field!(
            f,
            "request field ",
            " is repeated with null after a value; backends disagree on which one counts"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_after_decoding_and_go_spellings_are_refused() {
        assert_eq!(classify(b"stream", &TOP), Ok(Key::Field(Field::Stream)));
        assert_eq!(classify(br"str\u0065am", &TOP), Ok(Key::Field(Field::Stream)));
        assert_eq!(classify(br"\u006e", &TOP), Ok(Key::Field(Field::N)));
        assert_eq!(classify(b"messages", &TOP), Ok(Key::Other));
        assert_eq!(classify(b"streams", &TOP), Ok(Key::Other));
        assert_eq!(classify(br"str\ud800eam", &TOP), Ok(Key::Other));
        for k in ["Stream", "STREAM", r"\u0053tream", "\u{17f}tream", "MAX_TO\u{212a}ENS", "N"] {
            let e = classify(k.as_bytes(), &TOP).unwrap_err();
            assert!(
                e.0.contains("\"stream\"") || e.0.contains("max_tokens") || e.0.contains("\"n\""),
                "{k}: {e:?}"
            );
        }
        assert!(classify(b"Include_Usage", &STREAM_OPTIONS).unwrap_err().0.contains("include_usage"));
    }
}
