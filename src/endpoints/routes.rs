//! The routed paths (CONTRACT 3 and 12): which path is which endpoint, its method, the response
//! shape its usage is read from, and whether it is billed; and `Route::of`, the one place that
//! decides what the gateway does with a request (answer it, proxy it, 404, 405). A pure table,
//! used on core threads for every request (`from_path` is one `match` on the path).

use crate::http1::Method;

/// What the gateway does with a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    Models,
    Health,
    Metrics,
    RerankV1,
    RerankV2,
    Rerank,
    ScoreV1,
    Score,
    Pooling,
    Classify,
    AudioTranscriptions,
    AudioTranslations,
    Tokenize,
    Detokenize,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    LlamacppCompletion,
    SglangGenerate,
    Unknown,
}

/// Where the usage of an endpoint's response is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI-style `usage` object (chat, completions, embeddings, responses, messages, score,
    /// pooling, classify) in a JSON body or an SSE stream.
    OpenAi,
    /// `usage.total_tokens`, all of it input.
    Rerank,
    /// `usage.input_tokens`/`output_tokens`, or `usage.seconds`; the request is a multipart form.
    Audio,
    /// Consumes nothing: no usage record.
    Unbilled,
    /// Ollama native: `prompt_eval_count`/`eval_count` of the final object; NDJSON streams.
    Ollama,
    /// llama.cpp native: `tokens_evaluated`/`tokens_predicted` (the `"stop": true` event).
    Llamacpp,
    /// SGLang native: `meta_info.prompt_tokens`/`completion_tokens`.
    Sglang,
    /// Answered by the gateway itself (models, health, metrics) or not routed.
    Gateway,
}

/// Every endpoint with its path, in `index()` order (`Unknown` last).
const TABLE: [(Endpoint, &str); 25] = [
    (Endpoint::ChatCompletions, "/v1/chat/completions"),
    (Endpoint::Completions, "/v1/completions"),
    (Endpoint::Embeddings, "/v1/embeddings"),
    (Endpoint::Responses, "/v1/responses"),
    (Endpoint::Messages, "/v1/messages"),
    (Endpoint::Models, "/v1/models"),
    (Endpoint::Health, "/health"),
    (Endpoint::Metrics, "/metrics"),
    (Endpoint::RerankV1, "/v1/rerank"),
    (Endpoint::RerankV2, "/v2/rerank"),
    (Endpoint::Rerank, "/rerank"),
    (Endpoint::ScoreV1, "/v1/score"),
    (Endpoint::Score, "/score"),
    (Endpoint::Pooling, "/pooling"),
    (Endpoint::Classify, "/classify"),
    (Endpoint::AudioTranscriptions, "/v1/audio/transcriptions"),
    (Endpoint::AudioTranslations, "/v1/audio/translations"),
    (Endpoint::Tokenize, "/tokenize"),
    (Endpoint::Detokenize, "/detokenize"),
    (Endpoint::OllamaChat, "/api/chat"),
    (Endpoint::OllamaGenerate, "/api/generate"),
    (Endpoint::OllamaEmbed, "/api/embed"),
    (Endpoint::LlamacppCompletion, "/completion"),
    (Endpoint::SglangGenerate, "/generate"),
    (Endpoint::Unknown, "other"),
];

impl Endpoint {
    /// Every endpoint, in `index()` order.
    pub const ALL: [Endpoint; 25] = {
        let mut all = [Endpoint::Unknown; 25];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    /// The endpoints proxied to backends (not answered by the gateway itself).
    pub fn proxied() -> impl Iterator<Item = Endpoint> {
        Endpoint::ALL.into_iter().filter(|e| e.shape() != Shape::Gateway)
    }

    pub fn from_path(path: &str) -> Endpoint {
        let p = path.split('?').next().unwrap_or(path);
        match p {
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/responses" => Endpoint::Responses,
            "/v1/messages" => Endpoint::Messages,
            "/v1/models" => Endpoint::Models,
            "/health" => Endpoint::Health,
            "/metrics" => Endpoint::Metrics,
            "/v1/rerank" => Endpoint::RerankV1,
            "/v2/rerank" => Endpoint::RerankV2,
            "/rerank" => Endpoint::Rerank,
            "/v1/score" => Endpoint::ScoreV1,
            "/score" => Endpoint::Score,
            "/pooling" => Endpoint::Pooling,
            "/classify" => Endpoint::Classify,
            "/v1/audio/transcriptions" => Endpoint::AudioTranscriptions,
            "/v1/audio/translations" => Endpoint::AudioTranslations,
            "/tokenize" => Endpoint::Tokenize,
            "/detokenize" => Endpoint::Detokenize,
            "/api/chat" => Endpoint::OllamaChat,
            "/api/generate" => Endpoint::OllamaGenerate,
            "/api/embed" => Endpoint::OllamaEmbed,
            "/completion" => Endpoint::LlamacppCompletion,
            "/generate" => Endpoint::SglangGenerate,
            _ => Endpoint::Unknown,
        }
    }

    /// The path (the record's `endpoint` and the metrics label); `"other"` for unknown paths.
    pub fn path(self) -> &'static str {
        TABLE[self.index()].1
    }

    /// The method this endpoint answers to.
    pub fn method(self) -> Method {
        match self {
            Endpoint::Models | Endpoint::Health | Endpoint::Metrics => Method::Get,
            _ => Method::Post,
        }
    }

    /// Endpoints whose streams the gateway may ask for usage (`stream_options.include_usage`).
    pub fn takes_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    pub fn shape(self) -> Shape {
        match self {
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::Messages
            | Endpoint::ScoreV1
            | Endpoint::Score
            | Endpoint::Pooling
            | Endpoint::Classify => Shape::OpenAi,
            Endpoint::RerankV1 | Endpoint::RerankV2 | Endpoint::Rerank => Shape::Rerank,
            Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => Shape::Audio,
            Endpoint::Tokenize | Endpoint::Detokenize => Shape::Unbilled,
            Endpoint::OllamaChat | Endpoint::OllamaGenerate | Endpoint::OllamaEmbed => Shape::Ollama,
            Endpoint::LlamacppCompletion => Shape::Llamacpp,
            Endpoint::SglangGenerate => Shape::Sglang,
            Endpoint::Models | Endpoint::Health | Endpoint::Metrics | Endpoint::Unknown => Shape::Gateway,
        }
    }

    /// Whether a proxied request to this endpoint produces a usage record.
    pub fn billed(self) -> bool {
        !matches!(self.shape(), Shape::Unbilled | Shape::Gateway)
    }

    /// Whether a request that does not say `"stream"` streams (Ollama's native API does).
    pub fn streams_by_default(self) -> bool {
        matches!(self, Endpoint::OllamaChat | Endpoint::OllamaGenerate)
    }

    /// Chat and the other OpenAI-core paths that were routed before CONTRACT 12.
    pub fn is_core(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Responses
                | Endpoint::Messages
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The bit of this endpoint in a [`PathSet`].
    pub fn bit(self) -> u64 {
        1u64 << self.index()
    }
}

/// What the gateway does with a request, decided once (`Route::of`) from its path and method, the
/// paths `[routes] disabled`, and the listener it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Answered by the gateway itself: `/health`, `/metrics`, `/v1/models`.
    Local(Endpoint),
    /// Sent to a backend.
    Proxy(Endpoint),
    /// 404: an unknown or disabled path, or one the admin listener does not serve.
    NotFound(Endpoint),
    /// 405: a known path with the wrong method.
    WrongMethod(Endpoint),
}

impl Route {
    /// `target` is the request target (path and query); `admin` says the request came on the
    /// `admin_listen` listener, which serves `/health` and `/metrics` only.
    pub fn of(target: &str, method: Method, disabled: PathSet, admin: bool) -> Route {
        let e = Endpoint::from_path(target);
        let served =
            if admin { matches!(e, Endpoint::Health | Endpoint::Metrics) } else { e != Endpoint::Unknown };
        if !served || disabled.contains(e) {
            Route::NotFound(e)
        } else if method != e.method() {
            Route::WrongMethod(e)
        } else if e.shape() == Shape::Gateway {
            Route::Local(e)
        } else {
            Route::Proxy(e)
        }
    }

    /// The endpoint (the metrics label): `Unknown` for a path that is not routed.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Route::Local(e) | Route::Proxy(e) | Route::NotFound(e) | Route::WrongMethod(e) => e,
        }
    }
}

/// A set of endpoints as a bitmask (`[routes] disabled`, `[[backends]] paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSet(pub u64);

impl PathSet {
    pub const NONE: PathSet = PathSet(0);
    pub const ALL: PathSet = PathSet(u64::MAX);

    pub fn contains(self, e: Endpoint) -> bool {
        self.0 & e.bit() != 0
    }

    pub fn insert(&mut self, e: Endpoint) {
        self.0 |= e.bit();
    }

    /// Parses a list of routed paths; unknown or gateway-answered paths are returned as problems.
    pub fn parse<'a>(paths: impl IntoIterator<Item = &'a str>) -> (PathSet, Vec<String>) {
        let mut set = PathSet::NONE;
        let mut bad = Vec::new();
        for p in paths {
            let e = Endpoint::from_path(p);
            if e.shape() == Shape::Gateway || p.contains('?') {
                bad.push(format!("{p:?} is not a proxied path (one of {})", proxied_list()));
            } else {
                set.insert(e);
            }
        }
        (set, bad)
    }
}

fn proxied_list() -> String {
    Endpoint::proxied().map(Endpoint::path).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_index_order_and_paths_round_trip() {
        for (i, (e, p)) in TABLE.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(Endpoint::ALL[i], *e);
            if *e != Endpoint::Unknown {
                assert_eq!(Endpoint::from_path(p), *e);
                assert_eq!(Endpoint::from_path(&format!("{p}?x=1")), *e);
            }
        }
        assert!(Endpoint::ALL.len() <= 64, "PathSet is a u64");
        assert_eq!(Endpoint::from_path("/v1/chat/completions/"), Endpoint::Unknown);
        assert_eq!(Endpoint::from_path("/api/tags"), Endpoint::Unknown);
    }

    #[test]
    fn shapes_and_billing() {
        assert!(!Endpoint::Tokenize.billed());
        assert!(!Endpoint::Detokenize.billed());
        assert!(Endpoint::RerankV2.billed());
        assert!(!Endpoint::Health.billed());
        assert!(Endpoint::OllamaChat.streams_by_default());
        assert!(!Endpoint::OllamaEmbed.streams_by_default());
        assert_eq!(Endpoint::proxied().count(), 21);
    }

    #[test]
    fn one_route_per_request() {
        use Method::{Get, Other, Post};
        let none = PathSet::NONE;
        let mut rerank_off = PathSet::NONE;
        rerank_off.insert(Endpoint::RerankV1);
        let cases = [
            // (target, method, disabled, admin listener, route)
            ("/v1/chat/completions", Post, none, false, Route::Proxy(Endpoint::ChatCompletions)),
            ("/v1/chat/completions?x=1", Post, none, false, Route::Proxy(Endpoint::ChatCompletions)),
            ("/v1/chat/completions", Get, none, false, Route::WrongMethod(Endpoint::ChatCompletions)),
            ("/v1/chat/completions", Other, none, false, Route::WrongMethod(Endpoint::ChatCompletions)),
            ("/v1/models", Get, none, false, Route::Local(Endpoint::Models)),
            ("/v1/models", Post, none, false, Route::WrongMethod(Endpoint::Models)),
            ("/health", Get, none, false, Route::Local(Endpoint::Health)),
            ("/metrics", Get, none, false, Route::Local(Endpoint::Metrics)),
            ("/nope", Get, none, false, Route::NotFound(Endpoint::Unknown)),
            ("/nope", Post, none, false, Route::NotFound(Endpoint::Unknown)),
            ("/v1/rerank", Post, rerank_off, false, Route::NotFound(Endpoint::RerankV1)),
            ("/v1/rerank", Get, rerank_off, false, Route::NotFound(Endpoint::RerankV1)),
            ("/api/chat", Post, rerank_off, false, Route::Proxy(Endpoint::OllamaChat)),
            // The admin listener: /health and /metrics only.
            ("/health", Get, none, true, Route::Local(Endpoint::Health)),
            ("/metrics", Get, none, true, Route::Local(Endpoint::Metrics)),
            ("/metrics", Post, none, true, Route::WrongMethod(Endpoint::Metrics)),
            ("/v1/models", Get, none, true, Route::NotFound(Endpoint::Models)),
            ("/v1/chat/completions", Post, none, true, Route::NotFound(Endpoint::ChatCompletions)),
        ];
        for (target, method, disabled, admin, want) in cases {
            assert_eq!(Route::of(target, method, disabled, admin), want, "{target} {method:?} admin={admin}");
            assert_eq!(want.endpoint(), Endpoint::from_path(target));
        }
    }

    #[test]
    fn path_sets_parse_and_report_problems() {
        let (s, bad) = PathSet::parse(["/api/chat", "/v1/rerank", "/health", "/nope"]);
        assert!(s.contains(Endpoint::OllamaChat) && s.contains(Endpoint::RerankV1));
        assert!(!s.contains(Endpoint::ChatCompletions));
        assert_eq!(bad.len(), 2);
    }
}
