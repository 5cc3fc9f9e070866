//! Reading journal segments back (delivery thread): the sliding read window used by refill, the
//! recovery scan at open (counts, torn-tail cut, corrupt regions skipped), and frame -> record.
//!
//! A segment may end in zeros its writer put ahead of the data (see `write.rs`) and a crash left
//! there: where no frame decodes and only zero bytes follow, the segment ends cleanly (not counted).
//! A frame cut by the zeros (its start written, its end not) is a torn entry as before: its bytes
//! are not all zero. A recycled segment file may instead hold, after the data, frames of the
//! segment that used the file before: stale, stepped over and not counted ([`frame::Decoded::Stale`]).

use super::frame::{self, Decoded};
use super::{Loaded, Pos};
use serde::Deserialize;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Read this much at a time; a frame is at most `HEADER + MAX_PAYLOAD`.
const CHUNK: usize = 256 * 1024;

#[derive(Deserialize)]
struct IdOnly {
    request_id: String,
}

/// A decoded frame payload as a record (its request_id parsed), or None if it is not one.
pub(super) fn to_loaded(pos: Pos, ts_ms: u64, payload: &[u8]) -> Option<Loaded> {
    let id: IdOnly = serde_json::from_slice(payload).ok()?;
    let json = String::from_utf8(payload.to_vec()).ok()?;
    Some(Loaded { pos, ts_ms, request_id: id.request_id, json })
}

/// A window of one segment's bytes kept between refills.
#[derive(Default)]
pub(super) struct Reader {
    seg: u64,
    file: Option<File>,
    start: u64,
    data: Vec<u8>,
    more: bool,
}

impl Reader {
    /// Bytes of segment `at.seg` from `at.off` (up to `limit`), reading from the file as needed.
    pub(super) fn window(&mut self, dir: &Path, at: Pos, limit: u64) -> io::Result<&[u8]> {
        if self.file.is_none() || self.seg != at.seg {
            self.file = Some(File::open(super::segment_path(dir, at.seg))?);
            self.seg = at.seg;
            self.start = at.off;
            self.data.clear();
        }
        let end = self.start + self.data.len() as u64;
        if at.off < self.start || at.off > end {
            self.start = at.off;
            self.data.clear();
        }
        let have = self.start + self.data.len() as u64 - at.off;
        let want = if std::mem::take(&mut self.more) { have as usize + CHUNK } else { CHUNK / 4 };
        if (have as usize) < want && self.start + (self.data.len() as u64) < limit {
            let used = (at.off - self.start) as usize;
            self.data.drain(..used);
            self.start = at.off;
            let from = self.start + self.data.len() as u64;
            let n = ((limit - from) as usize).min(want.max(CHUNK));
            let old = self.data.len();
            self.data.resize(old + n, 0);
            let Some(f) = self.file.as_ref() else { return Ok(&[]) };
            let got = read_full_at(f, &mut self.data[old..], from)?;
            self.data.truncate(old + got);
        }
        let from = (at.off - self.start) as usize;
        let to = ((limit - self.start) as usize).min(self.data.len());
        Ok(self.data.get(from..to).unwrap_or(&[]))
    }

    /// The last window ended inside a frame: read further next time.
    pub(super) fn want_more(&mut self) {
        self.more = true;
    }
}

fn read_full_at(f: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What the recovery scan found in one segment.
pub(super) struct Scanned {
    pub entries: u64,
    pub acked: u64,
    pub corrupt: u64,
    pub bytes: u64,
}

/// What [`walk`] found besides the frames.
struct Walked {
    /// Corrupt regions skipped before later valid frames.
    corrupt: u64,
    /// Offset just after the last valid frame.
    valid_end: u64,
    /// The segment ends in a torn or corrupt region (after `valid_end`).
    torn: bool,
}

/// A corrupt region found by [`walk`] after the last frame of the segment so far.
struct Region {
    /// It starts like a frame of this segment (a torn frame of its own).
    own_start: bool,
    /// A stale frame (the file's earlier segment) follows it: the rest of an overwritten old frame.
    stale_after: bool,
}

/// Walks every frame of segment `seg`'s file. `visit` gets each valid one. Frames of the segment
/// that used the file before ([`Decoded::Stale`]) are stepped over whole and not counted.
///
/// Where the data ends, a recycled file holds the rest of an earlier frame that the last group
/// partly overwrote, then that segment's whole frames: not a frame start, but not corruption either.
/// So a corrupt region after the last valid frame is a torn tail only if it starts like a frame of
/// this segment, or if no stale frame follows it; a corrupt region with a valid frame of this
/// segment after it is counted as corrupt, as before. (A torn frame whose start never reached the
/// disk looks like the rest of an earlier frame: it is lost uncounted, as it was never synced.)
fn walk(bytes: &[u8], seg: u64, mut visit: impl FnMut(u64, u64, &[u8])) -> Walked {
    let mut off = 0usize;
    let mut w = Walked { corrupt: 0, valid_end: 0, torn: false };
    // A corrupt region not (yet) followed by a frame of this segment.
    let mut region: Option<Region> = None;
    while off < bytes.len() {
        match frame::decode(&bytes[off..], seg) {
            Decoded::Entry { ts_ms, payload, len } => {
                visit(off as u64, ts_ms, payload);
                off += len;
                w.valid_end = off as u64;
                if region.take().is_some() {
                    w.corrupt += 1;
                }
            }
            Decoded::Stale { len } => {
                off += len;
                if let Some(r) = region.as_mut() {
                    r.stale_after = true;
                }
            }
            // The zeros written ahead of the data, never overwritten.
            _ if bytes[off..].iter().all(|&b| b == 0) => break,
            Decoded::Incomplete => {
                w.torn = true;
                return w;
            }
            Decoded::Corrupt => {
                if region.is_none() {
                    region =
                        Some(Region { own_start: frame::starts_as(&bytes[off..], seg), stale_after: false });
                }
                match frame::resync(&bytes[off..]) {
                    Some(i) => off += i,
                    // Garbage up to the end (or a frame cut short by the zeros after it).
                    None => break,
                }
            }
        }
    }
    w.torn = region.is_some_and(|r| r.own_start || !r.stale_after);
    w
}

/// Recovery scan of segment `seg` at open. The last segment (the one a crash may have torn) is cut
/// back to its last valid frame.
pub(super) fn segment(path: &Path, seg: u64, acks: &HashSet<u64>, last: bool) -> io::Result<Scanned> {
    let bytes = std::fs::read(path)?;
    let mut entries = 0;
    let mut acked = 0;
    let Walked { mut corrupt, valid_end, torn } = walk(&bytes, seg, |off, _, payload| {
        if serde_json::from_slice::<IdOnly>(payload).is_ok() {
            entries += 1;
            if acks.contains(&off) {
                acked += 1;
            }
        }
    });
    // Bytes readable: the zeros and stale frames after the data are not (refill stops before them);
    // a torn or corrupt tail is, up to the file's end (refill skips it).
    let mut len = if torn { bytes.len() as u64 } else { valid_end };
    if torn && valid_end < len {
        corrupt += 1;
        log::warn!(
            "journal: {} bytes at the end of {} are a torn or corrupt entry; skipped",
            len - valid_end,
            path.display()
        );
        if last {
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(valid_end)?;
            f.sync_all()?;
            len = valid_end;
        }
    }
    if corrupt > 0 {
        log::warn!("journal: {corrupt} torn or corrupt region(s) skipped in {}", path.display());
    }
    Ok(Scanned { entries, acked, corrupt, bytes: len })
}

/// Undelivered entries of one segment (read-only; for [`super::read_pending`]).
pub(super) fn collect(path: &Path, seg: u64, acks: &HashSet<u64>, out: &mut Vec<Loaded>) -> io::Result<()> {
    let bytes = std::fs::read(path)?;
    walk(&bytes, seg, |off, ts, payload| {
        if !acks.contains(&off) {
            if let Some(l) = to_loaded(Pos { seg, off }, ts, payload) {
                out.push(l);
            }
        }
    });
    Ok(())
}
