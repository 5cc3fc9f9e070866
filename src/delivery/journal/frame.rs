//! The journal's entry framing, without I/O: `magic "LJR1" | u32 len | u32 crc32(ts ‖ payload) |
//! u64 ts_ms | payload` (little endian). A torn or corrupt frame is detected by its length bound and
//! checksum; [`resync`] finds the next frame start after garbage. Used on the delivery thread.

/// Marks the start of every frame (lets a reader skip a corrupt region to the next entry).
pub const MAGIC: [u8; 4] = *b"LJR1";
/// Bytes before the payload.
pub const HEADER: usize = 4 + 4 + 4 + 8;
/// A usage record is a few hundred bytes; anything longer than this is a corrupt length.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid frame of `len` bytes.
    Entry { ts_ms: u64, payload: &'a [u8], len: usize },
    /// The buffer ends inside a frame that looks valid so far (read more, or a torn tail at EOF).
    Incomplete,
    /// Not a valid frame here.
    Corrupt,
}

/// Appends one frame to `out`.
pub fn encode(out: &mut Vec<u8>, ts_ms: u64, payload: &[u8]) {
    let ts = ts_ms.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&ts);
    h.update(payload);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&ts);
    out.extend_from_slice(payload);
}

/// Decodes the frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let n = buf.len().min(4);
    if buf[..n] != MAGIC[..n] {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[12..HEADER + len]);
    if h.finalize() != crc {
        return Decoded::Corrupt;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&buf[12..20]);
    Decoded::Entry { ts_ms: u64::from_le_bytes(ts), payload: &buf[HEADER..HEADER + len], len: HEADER + len }
}

/// Offset of the next possible frame start strictly after position 0, if any.
pub fn resync(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf.get(1..)?, &MAGIC).map(|i| i + 1)
}

/// An acknowledgement record in a segment's `.ack` file: `u64 offset | u32 crc32(offset)`.
pub const ACK_LEN: usize = 12;

pub fn encode_ack(out: &mut Vec<u8>, offset: u64) {
    let b = offset.to_le_bytes();
    out.extend_from_slice(&b);
    out.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
}

/// Valid offsets in an `.ack` file's bytes (a torn last record or a corrupt one is ignored).
pub fn decode_acks(buf: &[u8]) -> impl Iterator<Item = u64> + '_ {
    buf.chunks_exact(ACK_LEN).filter_map(|c| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[..8]);
        let crc = u32::from_le_bytes([c[8], c[9], c[10], c[11]]);
        (crc32fast::hash(&b) == crc).then_some(u64::from_le_bytes(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_prefix_is_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, br#"{"request_id":"a"}"#);
        let whole = buf.len();
        assert_eq!(decode(&buf), Decoded::Entry { ts_ms: 42, payload: br#"{"request_id":"a"}"#, len: whole });
        for cut in 0..whole {
            assert_eq!(decode(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"payload bytes");
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(!matches!(decode(&b), Decoded::Entry { .. }), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn resync_finds_the_next_frame_after_garbage() {
        let mut buf = b"garbage LJR garbage".to_vec();
        let at = buf.len();
        encode(&mut buf, 1, b"x");
        assert_eq!(resync(&buf), Some(at));
        assert!(matches!(decode(&buf[at..]), Decoded::Entry { .. }));
        assert_eq!(resync(b"LJR1"), None);
    }

    #[test]
    fn acks_skip_torn_and_corrupt_records() {
        let mut buf = Vec::new();
        encode_ack(&mut buf, 10);
        encode_ack(&mut buf, 20);
        buf[ACK_LEN + 1] ^= 1;
        encode_ack(&mut buf, 30);
        buf.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_acks(&buf).collect::<Vec<_>>(), vec![10, 30]);
    }
}
