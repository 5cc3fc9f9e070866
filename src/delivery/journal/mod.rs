//! The write-ahead usage journal in `spool_dir`, owned by the delivery thread (never touched by a
//! core thread). Records are appended as checksummed frames ([`frame`]) to numbered segment files
//! and made durable by group commit ([`write`]: one `write` for everything appended since the last,
//! then one fdatasync at most every few milliseconds). Deliveries are acknowledged per entry in a
//! small `.ack` file next to each segment (written each round, fdatasync'd rarely), so delivery may
//! finish out of order. A segment whose entries are all
//! acknowledged is deleted. Entries not held in memory ("disk-only", from `load` on) are read back
//! by [`Journal::refill`] when memory has room again. On open, torn tails and corrupt regions are
//! detected, logged, skipped and counted; acknowledged entries are not replayed.
//!
//! The segment being written is kept zero-filled ahead of its data ([`write`]: real zeros, written
//! before the frames that overwrite them), so appending does not change the file's size or block
//! map and an fdatasync has no metadata to commit for it. A zero byte where a frame should start
//! is therefore the clean end of a segment when only zeros follow; anything else there is a torn or
//! corrupt region as before ([`scan`]). Delivered segment files are recycled rather than deleted
//! (up to [`MAX_SPARES`] kept as `journal-N.spare`): a new segment overwrites one in place, with no
//! zeros to write, no blocks to allocate and no file to delete; the frames it still holds of its
//! earlier segment carry that segment's number and are read as stale ([`frame`]).

pub mod frame;
mod legacy;
mod scan;
#[cfg(test)]
mod tests;
mod write;

use frame::Decoded;
use scan::Reader;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// A new segment is started once the current one has reached this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// The segment size the gateway uses: [`DEFAULT_SEGMENT_BYTES`], or `LLMPROXY_JOURNAL_SEGMENT_BYTES`
/// (at least 4096; the tests run the binary with small segments so that it recycles files under
/// load).
pub fn segment_bytes() -> u64 {
    let Ok(v) = std::env::var("LLMPROXY_JOURNAL_SEGMENT_BYTES") else { return DEFAULT_SEGMENT_BYTES };
    match v.parse::<u64>() {
        Ok(n) if n >= 4096 => n,
        _ => {
            log::warn!("LLMPROXY_JOURNAL_SEGMENT_BYTES={v:?} is not a size of at least 4096 bytes; using the default {DEFAULT_SEGMENT_BYTES}");
            DEFAULT_SEGMENT_BYTES
        }
    }
}
/// An idle, fully delivered active segment is retired once it is at least this big.
const RETIRE_IDLE_BYTES: u64 = 1024 * 1024;
/// The segment being written is zero-filled this far ahead of its data, in steps of this size
/// (bounded by the segment size): one size change, and one fdatasync writing metadata, per step.
const PREALLOC_STEP: u64 = 1024 * 1024;
/// Delivered segment files kept for reuse (`journal-N.spare`, N the segment they held last).
const MAX_SPARES: usize = 2;
const LOCK: &str = "lock";

/// Where an entry lives: segment number and byte offset of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub seg: u64,
    pub off: u64,
}

/// An entry read back from disk.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub pos: Pos,
    pub ts_ms: u64,
    pub request_id: String,
    pub json: String,
}

/// Entries whose group commit failed: they are not on disk, the caller must keep them.
#[derive(Debug)]
pub struct Unwritten {
    pub error: io::Error,
    pub entries: Vec<Loaded>,
}

#[derive(Debug, Default)]
struct Seg {
    /// Valid entries (including appended, not yet committed ones).
    entries: u64,
    acked: u64,
    /// Bytes readable (the file length for a sealed segment).
    bytes: u64,
    /// Offsets acknowledged before this process started (recovered segments only).
    recovered_acks: Option<HashSet<u64>>,
}

pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    segs: BTreeMap<u64, Seg>,
    write_seg: u64,
    /// Bytes of `write_seg` already written to the file.
    committed: u64,
    writer: Option<File>,
    /// Length of `write_seg`'s file: `committed` plus what lies ahead of the data (zeros written
    /// ahead, or a recycled file's earlier frames).
    zeroed_end: u64,
    /// Delivered segment files kept for reuse, by the number of the segment each held last.
    spares: Vec<u64>,
    /// Zero-filling `write_seg` works (false after a failure, e.g. a full disk: plain appends until
    /// the next segment).
    prealloc: bool,
    /// Failed zero-fills since the caller last looked ([`Journal::take_prealloc_failures`]).
    prealloc_failures: u64,
    /// A zero-fill failure was logged and none has succeeded since.
    prealloc_episode: bool,
    /// Frames appended after `committed`, written by the next commit.
    buf: Vec<u8>,
    /// Next entry not held in memory by the caller.
    load: Pos,
    reader: Reader,
    /// Positions at or after `load` whose entries the caller already holds (re-appended records).
    skip: HashSet<Pos>,
    acks: Vec<Pos>,
    ack_files: HashMap<u64, File>,
    /// Frames of `write_seg` were written since its last fdatasync.
    seg_unsynced: bool,
    /// Segments whose `.ack` file was written since its last fdatasync.
    acks_unsynced: HashSet<u64>,
    /// Frames or regions skipped as torn or corrupt since open.
    pub corrupt: u64,
    /// Timestamp of the oldest disk-only entry, when known.
    oldest_disk_ts: Option<u64>,
    _lock: File,
}

impl Journal {
    /// Opens (creating if needed) and locks the journal in `dir`, recovering what a previous process
    /// left: torn tails cut, corrupt regions skipped, acknowledged entries not replayed.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => {
                io::Error::new(io::ErrorKind::WouldBlock, "spool directory is in use by another process")
            }
            fs::TryLockError::Error(e) => e,
        })?;
        let ids = list_segments(dir)?;
        let mut spares = list_ids(dir, ".spare")?;
        for extra in spares.drain(..spares.len().saturating_sub(MAX_SPARES)) {
            remove_file(&spare_path(dir, extra));
        }
        // Acknowledgements whose segment is gone (a crash between the two steps of deleting or
        // recycling it): not needed, and a new segment of that number must not inherit them.
        let orphan_acks: Vec<u64> =
            list_ids(dir, ".ack")?.into_iter().filter(|id| ids.binary_search(id).is_err()).collect();
        for &id in &orphan_acks {
            remove_file(&ack_path(dir, id));
        }
        let mut segs = BTreeMap::new();
        let mut corrupt = 0;
        let last = ids.last().copied();
        let above = last.max(spares.last().copied()).max(orphan_acks.last().copied());
        for id in ids {
            let acks: HashSet<u64> = match fs::read(ack_path(dir, id)) {
                Ok(b) => frame::decode_acks(&b).collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
                Err(e) => return Err(e),
            };
            let s = scan::segment(&segment_path(dir, id), id, &acks, Some(id) == last)?;
            corrupt += s.corrupt;
            if s.entries == s.acked {
                remove_segment(dir, id);
                continue;
            }
            segs.insert(
                id,
                Seg { entries: s.entries, acked: s.acked, bytes: s.bytes, recovered_acks: Some(acks) },
            );
        }
        let first = segs.keys().next().copied();
        // Above every number a spare's stale frames carry (so none is ever taken for this one's), and
        // every number an orphaned `.ack` file had.
        let write_seg = above.map_or(1, |l| l + 1);
        let mut j = Journal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            segs,
            write_seg,
            committed: 0,
            writer: None,
            zeroed_end: 0,
            spares,
            prealloc: true,
            prealloc_failures: 0,
            prealloc_episode: false,
            buf: Vec::new(),
            load: Pos { seg: first.unwrap_or(write_seg), off: 0 },
            reader: Reader::default(),
            skip: HashSet::new(),
            acks: Vec::new(),
            ack_files: HashMap::new(),
            seg_unsynced: false,
            acks_unsynced: HashSet::new(),
            corrupt,
            oldest_disk_ts: None,
            _lock: lock,
        };
        if j.pending() > 0 {
            j.oldest_disk_ts = Some(0);
        }
        match legacy::import(dir, &mut j) {
            Ok(i) if i.records > 0 || i.skipped > 0 => log::info!(
                "spool upgrade: {} undelivered records of the old spool in {} moved into the journal ({} torn or unreadable lines skipped); the old files are removed",
                i.records,
                dir.display(),
                i.skipped
            ),
            Ok(_) => {}
            Err(e) => log::error!(
                "spool upgrade: cannot move the old spool in {} into the journal: {e}; its files are kept and tried again at the next start",
                dir.display()
            ),
        }
        Ok(j)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Position just after the last appended entry.
    pub fn end(&self) -> Pos {
        Pos { seg: self.write_seg, off: self.committed + self.buf.len() as u64 }
    }

    /// Entries not acknowledged (in memory or on disk).
    pub fn pending(&self) -> u64 {
        self.segs.values().map(|s| s.entries - s.acked).sum()
    }

    /// Bytes the journal holds on disk (and in its commit buffer).
    pub fn bytes(&self) -> u64 {
        self.segs.values().map(|s| s.bytes).sum::<u64>() + self.buf.len() as u64
    }

    /// Entries exist that the caller does not hold in memory.
    pub fn has_disk_only(&self) -> bool {
        self.load < self.end()
    }

    /// Age source for the backlog gauge: the oldest disk-only entry's timestamp, 0 if unknown.
    pub fn oldest_disk_ts(&self) -> Option<u64> {
        if self.has_disk_only() {
            self.oldest_disk_ts.or(Some(0))
        } else {
            None
        }
    }

    /// Appends one entry (durable after the next successful [`Journal::commit`]). `in_memory`: the
    /// caller keeps the entry, so [`Journal::refill`] must not hand it out again.
    pub fn append(&mut self, ts_ms: u64, json: &str, in_memory: bool) -> Pos {
        let pos = self.end();
        frame::encode(&mut self.buf, self.write_seg, ts_ms, json.as_bytes());
        self.segs.entry(self.write_seg).or_default().entries += 1;
        if in_memory {
            if self.load == pos {
                self.load = self.end();
            } else {
                self.skip.insert(pos);
            }
        } else if self.oldest_disk_ts.is_none() {
            self.oldest_disk_ts = Some(ts_ms);
        }
        pos
    }

    /// Reads up to `room` disk-only entries (oldest first) into `out`, skipping acknowledged, held
    /// and corrupt ones. Only committed bytes are read.
    pub fn refill(&mut self, room: usize, out: &mut Vec<Loaded>) -> io::Result<()> {
        let mut taken = 0;
        while taken < room {
            let limit = if self.load.seg == self.write_seg {
                self.committed
            } else {
                self.segs.get(&self.load.seg).map_or(0, |s| s.bytes)
            };
            if self.load.off >= limit {
                if self.load.seg >= self.write_seg {
                    break;
                }
                let next = self.segs.range(self.load.seg + 1..).next().map_or(self.write_seg, |(&k, _)| k);
                self.load = Pos { seg: next.min(self.write_seg), off: 0 };
                continue;
            }
            let window = self.reader.window(&self.dir, self.load, limit)?;
            match frame::decode(window, self.load.seg) {
                // Only where a crash mixed this segment's frames with the file's earlier ones.
                Decoded::Stale { len } => self.load.off += len as u64,
                Decoded::Entry { ts_ms, payload, len } => {
                    let pos = self.load;
                    self.load.off += len as u64;
                    if self.skip.remove(&pos) {
                        continue;
                    }
                    let acked = self
                        .segs
                        .get(&pos.seg)
                        .and_then(|s| s.recovered_acks.as_ref())
                        .is_some_and(|a| a.contains(&pos.off));
                    if acked {
                        continue;
                    }
                    match scan::to_loaded(pos, ts_ms, payload) {
                        Some(l) => {
                            out.push(l);
                            taken += 1;
                        }
                        None => self.skipped(pos, "an entry that is not a usage record"),
                    }
                }
                Decoded::Incomplete if (window.len() as u64) < limit - self.load.off => {
                    self.reader.want_more();
                }
                Decoded::Incomplete => {
                    self.skipped(self.load, "a torn entry");
                    self.load.off = limit;
                }
                Decoded::Corrupt => {
                    let at = self.load;
                    let whole = window.len() as u64 == limit - self.load.off;
                    match frame::resync(window) {
                        Some(i) => self.load.off += i as u64,
                        None if whole => self.load.off = limit,
                        None => self.load.off += (window.len() as u64).saturating_sub(3).max(1),
                    }
                    self.skipped(at, "corrupt bytes");
                }
            }
        }
        self.oldest_disk_ts = if self.has_disk_only() { self.peek_ts() } else { None };
        Ok(())
    }

    fn peek_ts(&mut self) -> Option<u64> {
        let limit = if self.load.seg == self.write_seg {
            self.committed
        } else {
            self.segs.get(&self.load.seg)?.bytes
        };
        if self.load.off >= limit {
            return None;
        }
        let seg = self.load.seg;
        match self.reader.window(&self.dir, self.load, limit).ok().map(|w| frame::decode(w, seg)) {
            Some(Decoded::Entry { ts_ms, .. }) => Some(ts_ms),
            _ => None,
        }
    }

    fn skipped(&mut self, at: Pos, what: &str) {
        if self.segs.get(&at.seg).is_some_and(|s| s.recovered_acks.is_some()) {
            // Counted and logged by the recovery scan at open.
            return;
        }
        self.corrupt += 1;
        log::warn!(
            "journal: skipping {what} in segment {} at offset {} of {}",
            at.seg,
            at.off,
            self.dir.display()
        );
    }
}

pub(crate) fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("journal-{seg:020}.log"))
}

fn ack_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("journal-{seg:020}.ack"))
}

pub(crate) fn spare_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("journal-{seg:020}.spare"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    list_ids(dir, ".log")
}

/// Numbers N of the `journal-N<suffix>` files in `dir`, ascending.
fn list_ids(dir: &Path, suffix: &str) -> io::Result<Vec<u64>> {
    numbered_files(dir, "journal-", suffix)
}

/// Segment numbers count up by one from 1 (one per segment written): a file numbered above this
/// was not written by the journal, and is left alone (its number + 1 would overflow).
const MAX_SEGMENT_ID: u64 = 1 << 48;

/// Numbers N of the `<prefix>N<suffix>` files in `dir`, ascending (this format's and the old
/// spool's segment files). A number past [`MAX_SEGMENT_ID`] is skipped with a warning.
fn numbered_files(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<u64>> {
    let mut v = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.strip_prefix(prefix).and_then(|s| s.strip_suffix(suffix)) else { continue };
        match id.parse::<u64>() {
            Ok(id) if id <= MAX_SEGMENT_ID => v.push(id),
            Ok(_) => log::warn!("journal: ignoring {} in {}: not a segment number", name, dir.display()),
            Err(_) => {}
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Deletes a delivered segment: its entries first, then its acknowledgements (the other order could
/// leave, after a crash, entries without their acknowledgements, which would be delivered again).
fn remove_segment(dir: &Path, seg: u64) {
    remove_file(&segment_path(dir, seg));
    remove_file(&ack_path(dir, seg));
}

/// Deletes a file the journal no longer needs (a delivered segment's, an extra spare, an orphaned
/// `.ack`); a failure is logged, a file already gone is not.
fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("journal: cannot delete {}: {e}", path.display());
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Undelivered entries in a journal directory, read without locking it (tests, tooling).
pub fn read_pending(dir: &Path) -> io::Result<Vec<Loaded>> {
    let mut out = Vec::new();
    for id in list_segments(dir)? {
        let acks: HashSet<u64> = match fs::read(ack_path(dir, id)) {
            Ok(b) => frame::decode_acks(&b).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        scan::collect(&segment_path(dir, id), id, &acks, &mut out)?;
    }
    Ok(out)
}
