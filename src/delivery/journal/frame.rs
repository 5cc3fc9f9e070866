//! The journal's entry framing, without I/O: `magic "LJR2" | u32 len | u32 crc32(seg ‖ ts ‖ payload)
//! | u64 seg | u64 ts_ms | payload` (little endian). A torn or corrupt frame is detected by its length
//! bound and checksum; [`resync`] finds the next frame start after garbage.
//!
//! `seg` is the number of the segment the frame was written to. Segment files are recycled (see
//! `write.rs`), so a file holds, after its own frames, whole valid frames of the segment that used it
//! before: [`decode`] tells those apart ([`Decoded::Stale`]) by their segment number, which no later
//! segment repeats. Frames of the first format (`"LJR1"`, no segment number, crc32(ts ‖ payload)),
//! written before files were recycled, are still read; a file holding them is never recycled.

/// Marks the start of every frame (lets a reader skip a corrupt region to the next entry).
pub const MAGIC: [u8; 4] = *b"LJR2";
/// The first format's magic (read, never written).
const MAGIC_V1: [u8; 4] = *b"LJR1";
/// Bytes before the payload.
pub const HEADER: usize = 4 + 4 + 4 + 8 + 8;
const HEADER_V1: usize = 4 + 4 + 4 + 8;
/// Offset of a current-format frame's segment number (after magic, length and checksum).
const SEG_AT: usize = 12;
/// A usage record is a few hundred bytes; anything longer than this is a corrupt length.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid frame of `len` bytes of the segment asked for.
    Entry { ts_ms: u64, payload: &'a [u8], len: usize },
    /// A whole, valid frame of `len` bytes of an earlier segment that used this file: not an entry.
    Stale { len: usize },
    /// The buffer ends inside a frame that looks valid so far (read more, or a torn tail at EOF).
    Incomplete,
    /// Not a valid frame here.
    Corrupt,
}

/// Appends one frame of segment `seg` to `out`.
pub fn encode(out: &mut Vec<u8>, seg: u64, ts_ms: u64, payload: &[u8]) {
    let seg = seg.to_le_bytes();
    let ts = ts_ms.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&seg);
    h.update(&ts);
    h.update(payload);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&seg);
    out.extend_from_slice(&ts);
    out.extend_from_slice(payload);
}

/// Appends one frame of the first format ("LJR1", no segment number), as releases before recycled
/// segment files wrote them: for the tests that read such files.
#[cfg(test)]
pub(crate) fn encode_v1(out: &mut Vec<u8>, ts_ms: u64, payload: &[u8]) {
    let ts = ts_ms.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&ts);
    h.update(payload);
    out.extend_from_slice(&MAGIC_V1);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&ts);
    out.extend_from_slice(payload);
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes the frame at the start of `buf`, read from segment `seg`.
pub fn decode(buf: &[u8], seg: u64) -> Decoded<'_> {
    let n = buf.len().min(4);
    let header = if buf[..n] == MAGIC[..n] {
        HEADER
    } else if buf[..n] == MAGIC_V1[..n] {
        HEADER_V1
    } else {
        return Decoded::Corrupt;
    };
    // (Fewer than four bytes matching both magics: Incomplete either way.)
    if buf.len() < header {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    if buf.len() < header + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if crc32fast::hash(&buf[12..header + len]) != crc {
        return Decoded::Corrupt;
    }
    let payload = &buf[header..header + len];
    if header == HEADER_V1 {
        return Decoded::Entry { ts_ms: u64_at(buf, 12), payload, len: header + len };
    }
    if u64_at(buf, SEG_AT) != seg {
        return Decoded::Stale { len: header + len };
    }
    Decoded::Entry { ts_ms: u64_at(buf, SEG_AT + 8), payload, len: header + len }
}

/// `buf` starts like a frame of segment `seg` (its magic, and for the current format its segment
/// number when that much is there), whether or not the frame is whole and valid.
pub fn starts_as(buf: &[u8], seg: u64) -> bool {
    if buf.starts_with(&MAGIC_V1) {
        return true;
    }
    buf.starts_with(&MAGIC) && (buf.len() < SEG_AT + 8 || u64_at(buf, SEG_AT) == seg)
}

/// Offset of the next possible frame start strictly after position 0, if any.
pub fn resync(buf: &[u8]) -> Option<usize> {
    let mut from = 1;
    loop {
        let i = from + memchr::memmem::find(buf.get(from..)?, &MAGIC[..3])?;
        match buf.get(i + 3) {
            Some(&v) if v == MAGIC[3] || v == MAGIC_V1[3] => return Some(i),
            Some(_) => from = i + 1,
            // "LJR" at the very end (a reader of a window keeps its last three bytes for this).
            None => return None,
        }
    }
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
        encode(&mut buf, 5, 42, br#"{"request_id":"a"}"#);
        let whole = buf.len();
        assert_eq!(
            decode(&buf, 5),
            Decoded::Entry { ts_ms: 42, payload: br#"{"request_id":"a"}"#, len: whole }
        );
        for cut in 0..whole {
            assert_eq!(decode(&buf[..cut], 5), Decoded::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, 7, b"payload bytes");
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(!matches!(decode(&b, 3), Decoded::Entry { .. }), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn a_frame_of_another_segment_is_stale_whole() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, 7, b"old record");
        let len = buf.len();
        assert_eq!(decode(&buf, 4), Decoded::Stale { len });
        assert_eq!(decode(&buf, 2), Decoded::Stale { len });
        // A stale frame is still checked: a torn or flipped one is not skipped as whole.
        buf[HEADER + 2] ^= 1;
        assert_eq!(decode(&buf, 4), Decoded::Corrupt);
        assert_eq!(decode(&buf[..len - 1], 4), Decoded::Incomplete);
    }

    #[test]
    fn first_format_frames_are_still_read() {
        // "LJR1" | len | crc32(ts ‖ payload) | ts | payload, as written before segments were recycled.
        let payload = br#"{"request_id":"v1"}"#;
        let mut buf = Vec::new();
        encode_v1(&mut buf, 9, payload);
        assert!(buf.starts_with(b"LJR1") && buf.len() == HEADER_V1 + payload.len());
        let whole = buf.len();
        assert_eq!(decode(&buf, 17), Decoded::Entry { ts_ms: 9, payload, len: whole });
        for cut in 0..whole {
            assert_eq!(decode(&buf[..cut], 17), Decoded::Incomplete, "cut at {cut}");
        }
        buf[whole - 1] ^= 1;
        assert_eq!(decode(&buf, 17), Decoded::Corrupt);
    }

    #[test]
    fn resync_finds_the_next_frame_after_garbage() {
        let mut buf = b"garbage LJR garbage LJRx".to_vec();
        let at = buf.len();
        encode(&mut buf, 1, 1, b"x");
        assert_eq!(resync(&buf), Some(at));
        assert!(matches!(decode(&buf[at..], 1), Decoded::Entry { .. }));
        assert_eq!(resync(b"LJR2"), None);
        assert_eq!(resync(b"xLJR"), None, "a magic cut short at the end is not a start yet");
        assert_eq!(resync(b"xxLJR1"), Some(2), "first-format frames are found too");
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
