//! Differential property test of the request-body walk (`llmproxy::request::scan`) against a
//! reference reading: serde_json to a `Value` (escapes decoded, last duplicate wins, as Python's
//! json.loads) plus pydantic v2's lax rules as vLLM and SGLang apply them. Every generated body must
//! be either refused by the walk or read identically; a body that spells every field the one way
//! all backends agree on must not be refused.
//!
//! Bodies come from a seeded generator (splitmix64, no dependency): random key order, escapes in
//! keys and values, duplicates, whitespace, nested look-alikes, lax boolean spellings, numbers as
//! floats and strings, key case variants, and damaged bytes. `REQUEST_PROPTEST_CASES` and
//! `REQUEST_PROPTEST_SEED` widen or move the search; a failure prints the seed and the body.

mod request_reference;
use request_reference::{check_body, Verdict};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

// ---------------------------------------------------------------- the generator

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Count,
    Name,
    Options,
    Other,
}

const TOP: [(&str, Kind); 8] = [
    ("stream", Kind::Bool),
    ("model", Kind::Name),
    ("user", Kind::Name),
    ("stream_options", Kind::Options),
    ("max_tokens", Kind::Count),
    ("max_completion_tokens", Kind::Count),
    ("max_output_tokens", Kind::Count),
    ("n", Kind::Count),
];
const DISTRACTORS: [&str; 6] =
    ["messages", "metadata", "temperature", "streaming", "tools", "Stream_options_x"];
const OPTIONS: [&str; 2] = ["include_usage", "continuous_usage_stats"];

/// A generated piece of JSON text and whether every field in it is spelled the way all backends
/// agree on (so the walk must accept it).
struct Gen<'r> {
    r: &'r mut Rng,
    out: String,
    canonical: bool,
}

impl Gen<'_> {
    fn ws(&mut self) {
        if self.r.chance(30) {
            for _ in 0..=self.r.below(3) {
                let w = *self.r.pick(&[" ", "\t", "\n", "\r", "  "]);
                self.out.push_str(w);
            }
        }
    }

    /// A key spelling of `name`: plain, with escaped characters, or (rarely) a case variant.
    fn key(&mut self, name: &str, ours: bool) {
        self.out.push('"');
        let at = self.r.below(name.len());
        let variant = ours && self.r.chance(4) && name.as_bytes()[at].is_ascii_lowercase();
        for (i, c) in name.chars().enumerate() {
            if variant && i == at {
                if c == 's' && self.r.chance(30) {
                    self.out.push('\u{17f}');
                } else if c == 'k' && self.r.chance(30) {
                    self.out.push('\u{212a}');
                } else if self.r.chance(30) {
                    self.out.push_str(&format!("\\u{:04x}", c.to_ascii_uppercase() as u32));
                } else {
                    self.out.push(c.to_ascii_uppercase());
                }
                continue;
            }
            self.char_maybe_escaped(c, 15);
        }
        self.out.push('"');
        if variant {
            self.canonical = false;
        }
    }

    fn char_maybe_escaped(&mut self, c: char, percent: u64) {
        if self.r.chance(percent) && (c as u32) < 0x10000 {
            let hex = format!("{:04x}", c as u32);
            let hex = if self.r.chance(50) { hex.to_ascii_uppercase() } else { hex };
            self.out.push_str("\\u");
            self.out.push_str(&hex);
        } else if c == '"' || c == '\\' {
            self.out.push('\\');
            self.out.push(c);
        } else if c == '\n' {
            self.out.push_str("\\n");
        } else {
            self.out.push(c);
        }
    }

    fn value(&mut self, kind: Kind) -> bool {
        let (text, canonical): (String, bool) = match kind {
            Kind::Bool => {
                let v = *self.r.pick(&[
                    ("true", true),
                    ("false", true),
                    ("null", true),
                    ("1", false),
                    ("0", false),
                    ("1.0", false),
                    ("0.0", false),
                    ("1e0", false),
                    ("2", false),
                    ("-0", false),
                    ("\"true\"", false),
                    ("\"True\"", false),
                    ("\"on\"", false),
                    ("\"OFF\"", false),
                    ("\"yes\"", false),
                    ("\"y\"", false),
                    ("\"t\"", false),
                    ("\"f\"", false),
                    ("\"1\"", false),
                    ("\"0\"", false),
                    ("\"tru\\u0065\"", false),
                    ("\"maybe\"", false),
                    ("[]", false),
                    ("{}", false),
                ]);
                (v.0.to_string(), v.1)
            }
            Kind::Count => match self.r.below(10) {
                0..=4 => {
                    (self.r.pick(&["0", "1", "5", "100", "4096", "18446744073709551615"]).to_string(), true)
                }
                5 => ("null".into(), true),
                _ => (
                    self.r
                        .pick(&[
                            "100.0",
                            "1e2",
                            "1E2",
                            "-1",
                            "\"100\"",
                            "\" 7\"",
                            "true",
                            "1.5",
                            "18446744073709551616",
                            "1.0000000000000001",
                            "[]",
                        ])
                        .to_string(),
                    false,
                ),
            },
            Kind::Name => match self.r.below(10) {
                0 => ("null".into(), true),
                1 => (self.r.pick(&["5", "true", "[\"m\"]", "{}"]).to_string(), false),
                2 => (self.r.pick(&["\"\\ud800\"", "\"a\\udc00\""]).to_string(), false),
                _ => {
                    let mut g = Gen { r: &mut *self.r, out: String::from("\""), canonical: true };
                    let s = *g.r.pick(&[
                        "gpt-expensive",
                        "llama-3",
                        "",
                        "u\u{e9}\u{1f600}",
                        "a\"b\\c\nd",
                        "model",
                    ]);
                    for c in s.chars() {
                        g.char_maybe_escaped(c, 25);
                    }
                    if g.r.chance(10) {
                        g.out.push_str("\\ud83d\\ude00");
                    }
                    g.out.push('"');
                    (g.out, true)
                }
            },
            Kind::Options => match self.r.below(10) {
                0 => ("null".into(), true),
                1 => (self.r.pick(&["true", "\"x\"", "[]", "1"]).to_string(), false),
                _ => {
                    let mut g = Gen { r: &mut *self.r, out: String::new(), canonical: true };
                    g.object(&OPTIONS.map(|k| (k, Kind::Bool)), &["include_usage_x", "stream"], 2);
                    (g.out, g.canonical)
                }
            },
            Kind::Other => {
                let v = *self.r.pick(&[
                    r#"[{"role":"user","content":"\"stream\":true, \"model\":\"x\"","stream":true}]"#,
                    r#"{"stream":true,"model":"nested","stream_options":{"include_usage":true}}"#,
                    "0.7",
                    "true",
                    r#"[[{"a":"]}"},["{"]],{}]"#,
                    r#""}{[]\"\\""#,
                    "null",
                ]);
                (v.to_string(), true)
            }
        };
        self.out.push_str(&text);
        canonical
    }

    /// An object with up to `depth`-limited members drawn (with repeats) from `fields` and
    /// `others`; tracks, per field, whether the final occurrence is canonical and whether a null
    /// follows an earlier value (which the walk refuses: backends disagree).
    fn object(&mut self, fields: &[(&str, Kind)], others: &[&str], max: usize) {
        let mut last: Vec<Option<(bool, bool)>> = vec![None; fields.len()]; // (canonical, is_null)
        let mut null_after_value = vec![false; fields.len()];
        self.out.push('{');
        self.ws();
        let count = self.r.below(max * 3 + 1);
        for m in 0..count {
            if m > 0 {
                self.out.push(',');
                self.ws();
            }
            if self.r.chance(70) {
                let i = self.r.below(fields.len());
                let (name, kind) = fields[i];
                self.key(name, true);
                self.ws();
                self.out.push(':');
                self.ws();
                let before = self.out.len();
                let c = self.value(kind);
                let is_null = &self.out[before..] == "null";
                match (last[i], is_null) {
                    (Some((_, false)), true) => null_after_value[i] = true,
                    (_, false) => null_after_value[i] = false,
                    _ => {}
                }
                last[i] = Some((c, is_null));
            } else {
                let name = *self.r.pick(others);
                self.key(name, false);
                self.ws();
                self.out.push(':');
                self.ws();
                self.value(Kind::Other);
            }
            self.ws();
        }
        self.out.push('}');
        for i in 0..fields.len() {
            if last[i].is_some_and(|(c, _)| !c) || null_after_value[i] {
                self.canonical = false;
            }
        }
    }
}

/// A body and whether the walk must accept it.
fn body(r: &mut Rng) -> (Vec<u8>, bool) {
    let mut g = Gen { r, out: String::new(), canonical: true };
    g.ws();
    g.object(&TOP, &DISTRACTORS, 4);
    g.ws();
    let (mut bytes, mut canonical) = (g.out.into_bytes(), g.canonical);
    // Damage a few bodies: truncate, or overwrite one byte.
    if r.chance(5) && !bytes.is_empty() {
        let at = r.below(bytes.len());
        if r.chance(50) {
            bytes.truncate(at);
        } else {
            bytes[at] = *r.pick(b"\"{}[],:\\ \x00\xff1");
        }
        canonical = false;
    }
    (bytes, canonical)
}

fn check(seed: u64, cases: u64) -> Result<(), String> {
    let mut r = Rng(seed);
    let (mut read, mut refused) = (0u64, 0u64);
    for case in 0..cases {
        let (b, canonical) = body(&mut r);
        match check_body(&b, canonical).map_err(|e| format!("case {case}: {e}"))? {
            Verdict::Read => read += 1,
            Verdict::Refused => refused += 1,
            Verdict::NotJson => {}
        }
    }
    eprintln!("seed {seed}: {cases} bodies, {read} read identically, {refused} refused, the rest not JSON");
    // The generator must exercise both outcomes, or the test proves little.
    if read < cases / 20 || refused < cases / 20 {
        return Err(format!("generator too narrow: {read} read, {refused} refused of {cases}"));
    }
    Ok(())
}

#[test]
fn walk_reads_every_body_like_the_reference_or_refuses_it() {
    let cases = std::env::var("REQUEST_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(40_000);
    let seed = std::env::var("REQUEST_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    if let Err(e) = check(seed, cases) {
        panic!("seed {seed}: {e}");
    }
}
