//! Per-flavour bytes of `/v1/chat/completions` and `/v1/completions`: chunk envelopes, key order,
//! usage placement and quirks as captured from each server (see shared/fixtures/backends/NOTES.md).

use super::Flavor;

/// Everything a generated answer depends on.
pub(super) struct Ctx {
    pub flavor: Flavor,
    pub chat: bool,
    pub model: String,
    pub id: String,
    pub created: u64,
    pub tokens: u32,
    /// Prompt tokens of each prompt (chat: one entry).
    pub prompts: Vec<u32>,
    /// Choices per prompt.
    pub n: u32,
    pub include_usage: bool,
    pub continuous: bool,
    pub no_usage: bool,
    /// Report cached (half the prompt) and reasoning (half the completion) details.
    pub details: bool,
    pub ttft_ms: f64,
    pub itl_ms: f64,
}

/// One SSE event; `paced` events wait `itl` before they go out (the first one waits `ttft`).
pub(super) struct Ev {
    pub paced: bool,
    pub bytes: Vec<u8>,
}

pub(super) fn data_ev(paced: bool, json: &str) -> Ev {
    Ev { paced, bytes: format!("data: {json}\n\n").into_bytes() }
}

pub(super) fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

pub(super) fn token(k: u32) -> String {
    format!(" tok{k}")
}

pub(super) fn fnum(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "0.0".to_string()
    }
}

impl Ctx {
    pub fn choices(&self) -> u32 {
        self.prompts.len() as u32 * self.n
    }
    pub fn prompt_total(&self) -> u32 {
        self.prompts.iter().sum()
    }
    fn prompt_of(&self, choice: u32) -> u32 {
        self.prompts.get((choice / self.n.max(1)) as usize).copied().unwrap_or(1)
    }
    fn object(&self, stream: bool) -> &'static str {
        match (self.chat, stream) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    /// The flavour's usage object for `p` prompt and `c` completion tokens.
    pub fn usage(&self, p: u32, c: u32, stream_tail: bool) -> String {
        let t = p + c;
        let (cached, reasoning) = if self.details { (p / 2, c / 2) } else { (0, 0) };
        match self.flavor {
            Flavor::Vllm if self.details => format!(
                r#"{{"prompt_tokens":{p},"total_tokens":{t},"completion_tokens":{c},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}"#
            ),
            Flavor::Vllm if stream_tail => {
                format!(r#"{{"prompt_tokens":{p},"total_tokens":{t},"completion_tokens":{c}}}"#)
            }
            Flavor::Vllm => format!(
                r#"{{"prompt_tokens":{p},"total_tokens":{t},"completion_tokens":{c},"prompt_tokens_details":null}}"#
            ),
            Flavor::Sglang if self.details => format!(
                r#"{{"prompt_tokens":{p},"total_tokens":{t},"completion_tokens":{c},"prompt_tokens_details":{{"cached_tokens":{cached}}},"reasoning_tokens":{reasoning}}}"#
            ),
            Flavor::Sglang => format!(
                r#"{{"prompt_tokens":{p},"total_tokens":{t},"completion_tokens":{c},"prompt_tokens_details":null,"reasoning_tokens":0}}"#
            ),
            Flavor::Llamacpp => {
                format!(r#"{{"completion_tokens":{c},"prompt_tokens":{p},"total_tokens":{t}}}"#)
            }
            Flavor::Openai if self.chat => format!(
                concat!(
                    r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"#,
                    r#""prompt_tokens_details":{{"cached_tokens":{},"audio_tokens":0}},"#,
                    r#""completion_tokens_details":{{"reasoning_tokens":{},"audio_tokens":0,"#,
                    r#""accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#
                ),
                p, c, t, cached, reasoning
            ),
            Flavor::Tgi | Flavor::Ollama | Flavor::Openai => {
                format!(r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t}}}"#)
            }
        }
    }

    fn timings(&self, c: u32) -> String {
        let p = self.prompt_total().max(1) as f64;
        let pms = self.ttft_ms.max(0.001);
        let cms = (self.itl_ms * c as f64).max(0.001);
        let cn = (c.max(1)) as f64;
        format!(
            concat!(
                r#"{{"prompt_n":{},"prompt_ms":{},"prompt_per_token_ms":{},"prompt_per_second":{},"#,
                r#""predicted_n":{},"predicted_ms":{},"predicted_per_token_ms":{},"predicted_per_second":{}}}"#
            ),
            p,
            fnum(pms),
            fnum(pms / p),
            fnum(1000.0 * p / pms),
            c,
            fnum(cms),
            fnum(cms / cn),
            fnum(1000.0 * cn / cms)
        )
    }

    /// Top-level object of one stream chunk around `choices`; `usage`: None = no key, Some("null")...
    fn envelope(&self, choices: &str, usage: Option<&str>, first: bool) -> String {
        let (id, obj, cr, m) = (q(&self.id), self.object(true), self.created, q(&self.model));
        let u = usage.map(|u| format!(r#","usage":{u}"#)).unwrap_or_default();
        match self.flavor {
            Flavor::Vllm => {
                let pti = if first && self.chat { r#","prompt_token_ids":null"# } else { "" };
                format!(
                    r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u}{pti}}}"#
                )
            }
            Flavor::Sglang => {
                format!(
                    r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u}}}"#
                )
            }
            Flavor::Tgi => format!(
                r#"{{"object":"{obj}","id":"","created":{cr},"model":{m},"system_fingerprint":"{}","choices":[{choices}]{u}}}"#,
                TGI_FP
            ),
            Flavor::Llamacpp => {
                let timings = match usage {
                    Some(u) if u != "null" => format!(r#","timings":{}"#, self.timings(self.tokens)),
                    _ => String::new(),
                };
                format!(
                    r#"{{"choices":[{choices}],"created":{cr},"id":{id},"model":{m},"system_fingerprint":"{}","object":"{obj}"{u}{timings}}}"#,
                    LLAMA_FP
                )
            }
            Flavor::Ollama if self.chat => format!(
                r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"system_fingerprint":"fp_ollama","choices":[{choices}]{u}}}"#
            ),
            Flavor::Ollama => format!(
                r#"{{"id":{id},"object":"{obj}","created":{cr},"choices":[{choices}],"model":{m},"system_fingerprint":"fp_ollama"{u}}}"#
            ),
            Flavor::Openai if self.chat => format!(
                r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"service_tier":"default","system_fingerprint":null,"choices":[{choices}]{u},"obfuscation":{}}}"#,
                q(&obfuscation(self.created, choices.len() + u.len()))
            ),
            Flavor::Openai if choices.is_empty() => {
                format!(r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m}{u},"choices":[]}}"#)
            }
            Flavor::Openai => {
                format!(
                    r#"{{"id":{id},"object":"{obj}","created":{cr},"choices":[{choices}],"model":{m}{u}}}"#
                )
            }
        }
    }

    /// A chat stream choice: `Role` (opening chunk), `Text(t)`, or `Finish`.
    fn chat_choice(&self, i: u32, part: Part) -> String {
        let f = self.flavor;
        match part {
            Part::Role => match f {
                Flavor::Vllm => format!(
                    r#"{{"index":{i},"delta":{{"role":"assistant","content":"","reasoning_content":null}},"logprobs":null,"finish_reason":null}}"#
                ),
                Flavor::Sglang => format!(
                    r#"{{"index":{i},"delta":{{"role":"assistant","content":"","reasoning_content":null}},"logprobs":null,"finish_reason":null,"matched_stop":null}}"#
                ),
                Flavor::Llamacpp => format!(
                    r#"{{"finish_reason":null,"index":{i},"delta":{{"role":"assistant","content":null}}}}"#
                ),
                _ => format!(
                    r#"{{"index":{i},"delta":{{"role":"assistant","content":"","refusal":null}},"finish_reason":null}}"#
                ),
            },
            Part::Text(t) => {
                let t = q(t);
                match f {
                    Flavor::Vllm => format!(
                        r#"{{"index":{i},"delta":{{"content":{t},"reasoning_content":null}},"logprobs":null,"finish_reason":null,"token_ids":null}}"#
                    ),
                    Flavor::Tgi => format!(
                        r#"{{"index":{i},"delta":{{"role":"assistant","content":{t}}},"logprobs":null,"finish_reason":null}}"#
                    ),
                    Flavor::Sglang => format!(
                        r#"{{"index":{i},"delta":{{"content":{t},"reasoning_content":null}},"logprobs":null,"finish_reason":null,"matched_stop":null}}"#
                    ),
                    Flavor::Llamacpp => {
                        format!(r#"{{"finish_reason":null,"index":{i},"delta":{{"content":{t}}}}}"#)
                    }
                    Flavor::Ollama => format!(
                        r#"{{"index":{i},"delta":{{"role":"assistant","content":{t}}},"finish_reason":null}}"#
                    ),
                    Flavor::Openai => {
                        format!(r#"{{"index":{i},"delta":{{"content":{t}}},"finish_reason":null}}"#)
                    }
                }
            }
            Part::Finish => match f {
                Flavor::Vllm => format!(
                    r#"{{"index":{i},"delta":{{"content":"","reasoning_content":null}},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}}"#
                ),
                Flavor::Tgi => format!(
                    r#"{{"index":{i},"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":"stop"}}"#
                ),
                Flavor::Sglang => format!(
                    r#"{{"index":{i},"delta":{{"reasoning_content":null}},"logprobs":null,"finish_reason":"stop","matched_stop":2}}"#
                ),
                Flavor::Llamacpp => format!(r#"{{"finish_reason":"stop","index":{i},"delta":{{}}}}"#),
                Flavor::Ollama => format!(
                    r#"{{"index":{i},"delta":{{"role":"assistant","content":""}},"finish_reason":"stop"}}"#
                ),
                Flavor::Openai => format!(r#"{{"index":{i},"delta":{{}},"finish_reason":"stop"}}"#),
            },
        }
    }

    /// A completions stream choice carrying `t`; `finish` marks the prompt's last token.
    fn text_choice(&self, i: u32, t: &str, finish: bool) -> String {
        let t = q(t);
        let fr = if finish { r#""length""# } else { "null" };
        match self.flavor {
            Flavor::Vllm => format!(
                r#"{{"index":{i},"text":{t},"logprobs":null,"finish_reason":{fr},"stop_reason":null}}"#
            ),
            Flavor::Tgi => {
                let fr = if finish { "length" } else { "" };
                format!(r#"{{"index":{i},"text":{t},"logprobs":null,"finish_reason":"{fr}"}}"#)
            }
            Flavor::Sglang => format!(
                r#"{{"index":{i},"text":{t},"logprobs":null,"finish_reason":{fr},"matched_stop":null}}"#
            ),
            Flavor::Ollama => format!(r#"{{"text":{t},"index":{i},"finish_reason":{fr}}}"#),
            Flavor::Llamacpp | Flavor::Openai => {
                format!(r#"{{"text":{t},"index":{i},"logprobs":null,"finish_reason":{fr}}}"#)
            }
        }
    }
}

pub(super) const TGI_FP: &str = "3.3.6-native";
pub(super) const LLAMA_FP: &str = "b6097-9515c613";

#[derive(Clone, Copy)]
enum Part<'a> {
    Role,
    Text(&'a str),
    Finish,
}

/// OpenAI pads chunks with a random-length `obfuscation` string (pseudo-random here, may be empty).
fn obfuscation(seed: u64, salt: usize) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut x = (seed ^ (salt as u64) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % 16) as usize;
    (0..len).map(|_| ABC[(next() % ABC.len() as u64) as usize] as char).collect()
}

/// The SSE events of a streamed chat or completions answer, `[DONE]` included.
pub(super) fn stream(c: &Ctx) -> Vec<Ev> {
    let f = c.flavor;
    let usage_on = c.include_usage && !c.no_usage;
    let continuous = usage_on && c.continuous && matches!(f, Flavor::Vllm | Flavor::Sglang);
    let choices = c.choices();
    let p = c.prompt_total();
    // Usage key of ordinary (non-tail) chunks, given the completion tokens so far of the chunk's
    // choice (vLLM/SGLang count per choice and repeat the whole prompt on every choice).
    let running = |done: u32| -> Option<String> {
        if continuous {
            return Some(c.usage(p, done, true));
        }
        match f {
            Flavor::Tgi | Flavor::Sglang => Some("null".into()),
            Flavor::Openai if usage_on && c.chat => Some("null".into()),
            Flavor::Openai if usage_on => Some("null".into()),
            Flavor::Ollama if usage_on && !c.chat => Some(c.usage(0, 0, false)),
            _ => None,
        }
    };
    let mut evs = Vec::new();
    if c.chat {
        if matches!(f, Flavor::Vllm | Flavor::Sglang | Flavor::Llamacpp | Flavor::Openai) {
            for i in 0..choices {
                let ch = c.chat_choice(i, Part::Role);
                evs.push(data_ev(i == 0, &c.envelope(&ch, running(0).as_deref(), true)));
            }
        }
        for k in 0..c.tokens {
            let t = token(k);
            for i in 0..choices {
                let ch = c.chat_choice(i, Part::Text(&t));
                evs.push(data_ev(i == 0, &c.envelope(&ch, running(k + 1).as_deref(), evs.is_empty())));
            }
        }
        for i in 0..choices {
            let ch = c.chat_choice(i, Part::Finish);
            let u = match f {
                Flavor::Llamacpp if !c.no_usage => Some(c.usage(p, c.tokens * choices, false)),
                _ => running(c.tokens),
            };
            evs.push(data_ev(i == 0, &c.envelope(&ch, u.as_deref(), evs.is_empty())));
        }
    } else {
        let steps = c.tokens.max(1);
        for k in 0..steps {
            let t = if c.tokens == 0 { String::new() } else { token(k) };
            let last = k + 1 == steps;
            for i in 0..choices {
                let done = (k + 1) * u32::from(c.tokens > 0);
                let ch = c.text_choice(i, &t, last);
                let u = match f {
                    Flavor::Tgi if last && !c.no_usage => Some(c.usage(c.prompt_of(i), c.tokens, false)),
                    // llama-server runs one task per prompt; each task's final chunk reports that
                    // task's own usage (like TGI), not the request's total.
                    Flavor::Llamacpp if last && !c.no_usage => Some(c.usage(c.prompt_of(i), c.tokens, false)),
                    _ => running(done),
                };
                evs.push(data_ev(i == 0, &c.envelope(&ch, u.as_deref(), evs.is_empty())));
            }
        }
    }
    let tail = usage_on && !matches!(f, Flavor::Llamacpp) && (c.chat || f != Flavor::Tgi);
    if tail {
        let u = c.usage(p, c.tokens * choices, true);
        evs.push(data_ev(false, &c.envelope("", Some(&u), false)));
    }
    evs.push(data_ev(false, "[DONE]"));
    evs
}

/// The non-streamed JSON body of a chat or completions answer.
pub(super) fn body(c: &Ctx) -> String {
    let f = c.flavor;
    let text: String = (0..c.tokens).map(token).collect();
    let t = q(&text);
    let ch = c.choices();
    let p = c.prompt_total();
    let u =
        if c.no_usage { String::new() } else { format!(r#","usage":{}"#, c.usage(p, c.tokens * ch, false)) };
    let (id, obj, cr, m) = (q(&c.id), c.object(false), c.created, q(&c.model));
    let choice = |i: u32| -> String {
        match (f, c.chat) {
            (Flavor::Vllm, true) => format!(
                r#"{{"index":{i},"message":{{"role":"assistant","reasoning_content":null,"content":{t},"tool_calls":[]}},"logprobs":null,"finish_reason":"stop","stop_reason":null}}"#
            ),
            (Flavor::Vllm, false) => format!(
                r#"{{"index":{i},"text":{t},"logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null}}"#
            ),
            (Flavor::Tgi, true) => format!(
                r#"{{"index":{i},"message":{{"role":"assistant","content":{t}}},"logprobs":null,"finish_reason":"stop"}}"#
            ),
            (Flavor::Tgi, false) => {
                format!(r#"{{"index":{i},"text":{t},"logprobs":null,"finish_reason":"length"}}"#)
            }
            (Flavor::Sglang, true) => format!(
                r#"{{"index":{i},"message":{{"role":"assistant","content":{t},"reasoning_content":null,"tool_calls":null}},"logprobs":null,"finish_reason":"stop","matched_stop":2}}"#
            ),
            (Flavor::Sglang, false) => format!(
                r#"{{"index":{i},"text":{t},"logprobs":null,"finish_reason":"length","matched_stop":null}}"#
            ),
            (Flavor::Llamacpp, true) => format!(
                r#"{{"finish_reason":"stop","index":{i},"message":{{"role":"assistant","content":{t}}}}}"#
            ),
            (Flavor::Llamacpp, false) | (Flavor::Openai, false) => {
                format!(r#"{{"text":{t},"index":{i},"logprobs":null,"finish_reason":"length"}}"#)
            }
            (Flavor::Ollama, true) => format!(
                r#"{{"index":{i},"message":{{"role":"assistant","content":{t}}},"finish_reason":"stop"}}"#
            ),
            (Flavor::Ollama, false) => format!(r#"{{"text":{t},"index":{i},"finish_reason":"stop"}}"#),
            (Flavor::Openai, true) => format!(
                r#"{{"index":{i},"message":{{"role":"assistant","content":{t},"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}"#
            ),
        }
    };
    let choices = (0..ch).map(choice).collect::<Vec<_>>().join(",");
    match f {
        Flavor::Vllm if c.chat => format!(
            r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u},"prompt_logprobs":null,"kv_transfer_params":null}}"#
        ),
        Flavor::Vllm => format!(
            r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u},"kv_transfer_params":null}}"#
        ),
        Flavor::Tgi => format!(
            r#"{{"object":"{obj}","id":"","created":{cr},"model":{m},"system_fingerprint":"{TGI_FP}","choices":[{choices}]{u}}}"#
        ),
        Flavor::Sglang => format!(
            r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u},"metadata":{{"weight_version":"default"}}}}"#
        ),
        Flavor::Llamacpp => {
            let timings =
                if c.no_usage { String::new() } else { format!(r#","timings":{}"#, c.timings(c.tokens)) };
            format!(
                r#"{{"choices":[{choices}],"created":{cr},"model":{m},"system_fingerprint":"{LLAMA_FP}","object":"{obj}"{u},"id":{id}{timings}}}"#
            )
        }
        Flavor::Ollama => format!(
            r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"system_fingerprint":"fp_ollama","choices":[{choices}]{u}}}"#
        ),
        Flavor::Openai if c.chat => format!(
            r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u},"service_tier":"default","system_fingerprint":null}}"#
        ),
        Flavor::Openai => {
            format!(r#"{{"id":{id},"object":"{obj}","created":{cr},"model":{m},"choices":[{choices}]{u}}}"#)
        }
    }
}
