//! The `x-ratelimit-*` header block (OpenAI's names) a limited subject's responses carry, written
//! into a fixed inline buffer at admission (no allocation), and seconds until 00:00 UTC. Pure.
//! All six headers are always written; a dimension the subject has no limit for is `UNLIMITED`.

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

impl Dimension {
    /// A dimension without a limit: limit and remaining are the largest 32-bit signed integer
    /// (never a reason to throttle, parsed by any client's integer type), reset `0s`.
    pub const UNLIMITED: Dimension =
        Dimension { limit: i32::MAX as u64, remaining: i32::MAX as u64, reset_secs: 0 };
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

    /// Writes the three headers of `requests` and the three of `tokens`.
    pub fn write(requests: Dimension, tokens: Dimension) -> HeaderBlock {
        let mut h = HeaderBlock::default();
        h.number(b"x-ratelimit-limit-requests", requests.limit, b"");
        h.number(b"x-ratelimit-remaining-requests", requests.remaining, b"");
        h.number(b"x-ratelimit-reset-requests", requests.reset_secs, b"s");
        h.number(b"x-ratelimit-limit-tokens", tokens.limit, b"");
        h.number(b"x-ratelimit-remaining-tokens", tokens.remaining, b"");
        h.number(b"x-ratelimit-reset-tokens", tokens.reset_secs, b"s");
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
        let h = HeaderBlock::write(big, big);
        let text = std::str::from_utf8(h.as_bytes()).unwrap();
        assert_eq!(text.lines().count(), 6, "{text}");
        let h =
            HeaderBlock::write(Dimension { limit: 10, remaining: 3, reset_secs: 42 }, Dimension::UNLIMITED);
        assert_eq!(
            h.as_bytes(),
            &b"x-ratelimit-limit-requests: 10\r\nx-ratelimit-remaining-requests: 3\r\nx-ratelimit-reset-requests: 42s\r\n\
               x-ratelimit-limit-tokens: 2147483647\r\nx-ratelimit-remaining-tokens: 2147483647\r\nx-ratelimit-reset-tokens: 0s\r\n"[..]
        );
        assert_eq!(secs_to_midnight(86_400 * 3 + 86_399), 1);
        assert_eq!(secs_to_midnight(86_400 * 3), 86_400);
    }
}
