//! The `x-ratelimit-*` header block (OpenAI's names) a limited subject's responses carry, written
//! into a fixed inline buffer at admission (no allocation), and seconds until 00:00 UTC. Pure.

/// Ready `name: value\r\n` lines.
#[derive(Clone)]
pub struct HeaderBlock {
    buf: [u8; 400],
    len: usize,
}

impl Default for HeaderBlock {
    fn default() -> Self {
        HeaderBlock { buf: [0; 400], len: 0 }
    }
}

/// One dimension (requests or tokens) of the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimension {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

impl HeaderBlock {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if self.len + n > self.buf.len() {
            return;
        }
        for p in parts {
            self.buf[self.len..self.len + p.len()].copy_from_slice(p);
            self.len += p.len();
        }
    }

    fn number(&mut self, name: &[u8], v: u64, unit: &[u8]) {
        let mut b = itoa::Buffer::new();
        self.push(&[name, b": ", b.format(v).as_bytes(), unit, b"\r\n"]);
    }

    /// Writes the three headers of `requests` and of `tokens` (each when that limit exists).
    pub fn write(requests: Option<Dimension>, tokens: Option<Dimension>) -> HeaderBlock {
        let mut h = HeaderBlock::default();
        if let Some(d) = requests {
            h.number(b"x-ratelimit-limit-requests", d.limit, b"");
            h.number(b"x-ratelimit-remaining-requests", d.remaining, b"");
            h.number(b"x-ratelimit-reset-requests", d.reset_secs, b"s");
        }
        if let Some(d) = tokens {
            h.number(b"x-ratelimit-limit-tokens", d.limit, b"");
            h.number(b"x-ratelimit-remaining-tokens", d.remaining, b"");
            h.number(b"x-ratelimit-reset-tokens", d.reset_secs, b"s");
        }
        h
    }
}

/// Seconds from `now_secs` (Unix time) to the next 00:00 UTC.
pub fn secs_to_midnight(now_secs: u64) -> u64 {
    86_400 - now_secs % 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_has_openai_names_and_fits_every_width() {
        let big = Dimension { limit: u64::MAX, remaining: u64::MAX, reset_secs: u64::MAX };
        let h = HeaderBlock::write(Some(big), Some(big));
        let text = std::str::from_utf8(h.as_bytes()).unwrap();
        assert_eq!(text.lines().count(), 6, "{text}");
        let h = HeaderBlock::write(Some(Dimension { limit: 10, remaining: 3, reset_secs: 42 }), None);
        assert_eq!(
            h.as_bytes(),
            b"x-ratelimit-limit-requests: 10\r\nx-ratelimit-remaining-requests: 3\r\nx-ratelimit-reset-requests: 42s\r\n"
        );
        assert_eq!(secs_to_midnight(86_400 * 3 + 86_399), 1);
        assert_eq!(secs_to_midnight(86_400 * 3), 86_400);
    }
}
