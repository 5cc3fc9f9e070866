//! Chunked transfer-coding decoder: a byte-level state machine that moves the payload to the front
//! of the buffer it is given (in place, no copy elsewhere). No I/O; used for both request and response bodies.

/// Where the decoder is within the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size,
    /// After the size: extensions or whitespace until LF.
    SizeRest,
    /// Inside chunk data; `remaining` bytes left.
    Data,
    /// Expecting CR (or a bare LF) after chunk data.
    DataCr,
    /// Expecting LF after chunk data's CR.
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer line, skipping to LF.
    TrailerLine,
    /// Saw CR of the final empty line.
    TrailerEndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedError(pub &'static str);

/// Result of decoding one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Payload bytes now at the front of the buffer.
    pub payload: usize,
    /// Input bytes consumed; less than the input only once `done` (bytes after the body).
    pub consumed: usize,
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    remaining: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size, size: 0, digits: 0, remaining: 0 }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `buf` in place: chunk payload is moved to `buf[..payload]`.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Result<Decoded, ChunkedError> {
        let mut r = 0;
        let mut w = 0;
        while r < buf.len() {
            match self.state {
                State::Data => {
                    let n = (buf.len() - r).min(self.remaining.min(usize::MAX as u64) as usize);
                    if w != r {
                        buf.copy_within(r..r + n, w);
                    }
                    w += n;
                    r += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Done => break,
                _ => {}
            }
            let b = buf[r];
            r += 1;
            self.state = match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        if self.digits >= 15 {
                            return Err(ChunkedError("chunk size too large"));
                        }
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                        State::Size
                    }
                    _ if self.digits == 0 => return Err(ChunkedError("missing chunk size")),
                    b'\n' => self.end_of_size_line(),
                    b'\r' | b';' | b' ' | b'\t' => State::SizeRest,
                    _ => return Err(ChunkedError("invalid chunk size")),
                },
                State::SizeRest => match b {
                    b'\n' => self.end_of_size_line(),
                    _ => State::SizeRest,
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size,
                    _ => return Err(ChunkedError("missing CRLF after chunk data")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size,
                    _ => return Err(ChunkedError("missing LF after chunk data")),
                },
                State::TrailerStart => match b {
                    b'\r' => State::TrailerEndLf,
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\n' => State::TrailerStart,
                    _ => State::TrailerLine,
                },
                State::TrailerEndLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError("bad end of chunked body")),
                },
                State::Data | State::Done => unreachable!("handled above"),
            };
        }
        Ok(Decoded { payload: w, consumed: r, done: self.state == State::Done })
    }

    fn end_of_size_line(&mut self) -> State {
        let size = self.size;
        self.size = 0;
        self.digits = 0;
        if size == 0 {
            State::TrailerStart
        } else {
            self.remaining = size;
            State::Data
        }
    }
}

/// Writes the chunk-size line for `len` payload bytes into the end of `prefix`; returns its length.
pub fn size_line(len: usize, prefix: &mut [u8; 18]) -> usize {
    let mut tmp = [0u8; 16];
    let mut n = 0;
    let mut v = len;
    loop {
        tmp[n] = b"0123456789abcdef"[v & 15];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let total = n + 2;
    let start = prefix.len() - total;
    for i in 0..n {
        prefix[start + i] = tmp[n - 1 - i];
    }
    prefix[prefix.len() - 2] = b'\r';
    prefix[prefix.len() - 1] = b'\n';
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut prev = 0;
        let mut consumed = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut piece = input[prev..c].to_vec();
            let r = d.decode_in_place(&mut piece)?;
            out.extend_from_slice(&piece[..r.payload]);
            consumed += r.consumed;
            prev = c;
            if r.done {
                return Ok((out, consumed, true));
            }
        }
        Ok((out, consumed, d.is_done()))
    }

    #[test]
    fn decodes_at_every_split() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for k in 0..=input.len() {
            let (out, consumed, done) = decode_split(input, &[k]).unwrap();
            assert_eq!(out, b"hello 0123456789", "split {k}");
            assert!(done);
            assert_eq!(consumed, input.len() - 4, "split {k}");
        }
    }

    #[test]
    fn accepts_bare_lf() {
        let (out, _, done) = decode_split(b"3\nabc\n0\n\n", &[]).unwrap();
        assert_eq!(out, b"abc");
        assert!(done);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_split(b"zz\r\n", &[]).is_err());
        assert!(decode_split(b"3\r\nabcX", &[]).is_err());
        assert!(decode_split(b"ffffffffffffffffff\r\n", &[]).is_err());
        assert!(decode_split(b"\r\n", &[]).is_err());
    }

    #[test]
    fn size_lines() {
        let mut p = [0u8; 18];
        let n = size_line(0x1a2, &mut p);
        assert_eq!(&p[18 - n..], b"1a2\r\n");
        let n = size_line(0, &mut p);
        assert_eq!(&p[18 - n..], b"0\r\n");
    }
}
