//! The on-disk spool of usage records the webhook could not take yet: append-only JSON-lines segments,
//! a persisted read cursor, torn-tail recovery. Used only on the webhook thread (never on core threads).

use serde::Deserialize;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A new segment is started once the current one reaches this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The cursor is persisted at most this often while draining (and always when the spool empties
/// or on [`Spool::sync`]); a crash in between only means a few records are delivered twice.
const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(250);
const CURSOR: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const LOCK: &str = "lock";

/// One record as stored: its idempotency key and its exact JSON (one line, no newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub request_id: String,
    pub json: String,
}

/// A position in the spool: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// Records read by [`Spool::peek`], to be handed back to [`Spool::consume`] once delivered.
#[derive(Debug)]
pub struct Peeked {
    pub entries: Vec<Entry>,
    end: Pos,
}

#[derive(Deserialize)]
struct IdOnly {
    request_id: String,
}

/// The spool directory, opened and locked by this process.
pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    /// Existing segment ids, oldest first.
    segments: VecDeque<u64>,
    write_seg: u64,
    write_len: u64,
    writer: Option<File>,
    read: Pos,
    reader: Option<(Pos, BufReader<File>)>,
    pending: u64,
    cursor_dirty: bool,
    cursor_saved_at: Instant,
    _lock: File,
}

impl Spool {
    /// Opens (creating if needed) the spool under `dir` with 64 MiB segments.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        Spool::open_with_segment_bytes(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// Opens the spool with a custom segment size (tests use small ones).
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => {
                io::Error::new(io::ErrorKind::WouldBlock, "spool directory is in use by another process")
            }
            fs::TryLockError::Error(e) => e,
        })?;
        let mut segments = list_segments(dir)?;
        let cursor = read_cursor(dir);
        let mut read = match (cursor, segments.front()) {
            (Some(c), Some(&first)) if c.segment < first => Pos { segment: first, offset: 0 },
            (Some(c), _) => c,
            (None, Some(&first)) => Pos { segment: first, offset: 0 },
            (None, None) => Pos { segment: 1, offset: 0 },
        };
        // Segments before the cursor were fully delivered before a crash; drop them now.
        while let Some(&s) = segments.front() {
            if s >= read.segment {
                break;
            }
            remove_segment(dir, s);
            segments.pop_front();
        }
        let (write_seg, write_len) = match segments.back() {
            Some(&last) => (last, truncate_torn_tail(&segment_path(dir, last))?),
            None => (read.segment, 0),
        };
        if read.segment == write_seg && read.offset > write_len {
            read.offset = write_len;
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            segments,
            write_seg,
            write_len,
            writer: None,
            read,
            reader: None,
            pending: 0,
            cursor_dirty: false,
            cursor_saved_at: Instant::now(),
            _lock: lock,
        };
        spool.pending = spool.count_from_cursor()?;
        if spool.pending == 0 && !spool.segments.is_empty() {
            spool.reset()?;
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records waiting to be delivered.
    pub fn len(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Appends records behind the waiting ones, with one fsync for the whole batch. On error nothing
    /// of this batch is kept (a partial write is cut off again), so the caller may retry it.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.write_len >= self.segment_bytes && self.segments.back() == Some(&self.write_seg) {
            self.writer = None;
            self.write_seg += 1;
            self.write_len = 0;
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.json.len() + 1).sum());
        for e in entries {
            buf.extend_from_slice(e.json.as_bytes());
            buf.push(b'\n');
        }
        let start = self.write_len;
        let writer = self.writer_file()?;
        let res = writer.write_all(&buf).and_then(|()| writer.sync_data());
        if let Err(e) = res {
            // Best effort: remove whatever part of the batch reached the file.
            if let Err(e2) = writer.set_len(start) {
                log::error!("spool: cannot cut back a failed append in {}: {e2}", self.dir.display());
            }
            self.writer = None;
            return Err(e);
        }
        self.write_len = start + buf.len() as u64;
        self.pending += entries.len() as u64;
        Ok(())
    }

    /// Reads up to `max` of the oldest waiting records without consuming them. Lines that are not
    /// records (corruption) are skipped with a warning.
    pub fn peek(&mut self, max: usize) -> io::Result<Peeked> {
        let mut pos = self.read;
        let mut entries = Vec::new();
        let mut line = Vec::new();
        while entries.len() < max && pos.segment <= self.write_seg {
            let mut reader = match self.reader.take() {
                Some((p, r)) if p == pos => r,
                _ => match File::open(segment_path(&self.dir, pos.segment)) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(pos.offset))?;
                        BufReader::new(f)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => match self.next_segment(pos) {
                        Some(p) => {
                            pos = p;
                            continue;
                        }
                        None => break,
                    },
                    Err(e) => return Err(e),
                },
            };
            line.clear();
            let n = reader.read_until(b'\n', &mut line)? as u64;
            if n == 0 || line.last() != Some(&b'\n') {
                if n > 0 {
                    log::warn!(
                        "spool: skipping a torn line in segment {} of {}",
                        pos.segment,
                        self.dir.display()
                    );
                }
                match self.next_segment(pos) {
                    Some(p) => {
                        pos = p;
                        continue;
                    }
                    None if n == 0 => {
                        self.reader = Some((pos, reader));
                        break;
                    }
                    None => break,
                }
            }
            let at = pos;
            pos.offset += n;
            match parse_line(&line) {
                Some(e) => entries.push(e),
                None => log::warn!(
                    "spool: skipping a line that is not a usage record (segment {} offset {})",
                    at.segment,
                    at.offset
                ),
            }
            self.reader = Some((pos, reader));
        }
        if entries.is_empty() && max > 0 && self.pending > 0 {
            log::warn!(
                "spool: {} records were counted but none can be read in {}; resetting the count",
                self.pending,
                self.dir.display()
            );
            self.pending = 0;
        }
        Ok(Peeked { entries, end: pos })
    }

    /// Marks records returned by [`Spool::peek`] as delivered: advances the cursor (persisted at
    /// most every 250 ms, and at once when the spool becomes empty) and deletes consumed segments.
    pub fn consume(&mut self, peeked: &Peeked) -> io::Result<()> {
        self.read = peeked.end;
        self.pending = self.pending.saturating_sub(peeked.entries.len() as u64);
        self.cursor_dirty = true;
        if self.pending == 0 {
            return self.reset();
        }
        while let Some(&s) = self.segments.front() {
            if s >= self.read.segment {
                break;
            }
            remove_segment(&self.dir, s);
            self.segments.pop_front();
        }
        if self.cursor_saved_at.elapsed() >= CURSOR_SAVE_EVERY {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Persists the read cursor if it moved (appends are already fsync'd when they return).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.cursor_dirty {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Nothing waits any more: point the cursor at a fresh segment, then delete all old ones.
    fn reset(&mut self) -> io::Result<()> {
        self.writer = None;
        self.reader = None;
        self.write_seg = self.write_seg.max(self.read.segment) + 1;
        self.write_len = 0;
        self.read = Pos { segment: self.write_seg, offset: 0 };
        self.pending = 0;
        self.save_cursor()?;
        for s in self.segments.drain(..) {
            remove_segment(&self.dir, s);
        }
        Ok(())
    }

    fn next_segment(&self, pos: Pos) -> Option<Pos> {
        let next = self.segments.iter().copied().find(|&s| s > pos.segment)?;
        Some(Pos { segment: next, offset: 0 })
    }

    fn writer_file(&mut self) -> io::Result<&mut File> {
        if self.writer.is_none() {
            let path = segment_path(&self.dir, self.write_seg);
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if self.segments.back() != Some(&self.write_seg) {
                self.segments.push_back(self.write_seg);
                sync_dir(&self.dir)?;
            }
            self.writer = Some(f);
        }
        self.writer.as_mut().ok_or_else(|| io::Error::other("spool writer missing"))
    }

    fn save_cursor(&mut self) -> io::Result<()> {
        let tmp = self.dir.join(CURSOR_TMP);
        {
            let mut f = File::create(&tmp)?;
            writeln!(f, "{} {}", self.read.segment, self.read.offset)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(CURSOR))?;
        sync_dir(&self.dir)?;
        self.cursor_dirty = false;
        self.cursor_saved_at = Instant::now();
        Ok(())
    }

    /// Valid records from the cursor to the end (used once at open).
    fn count_from_cursor(&mut self) -> io::Result<u64> {
        let mut n = 0;
        for &s in &self.segments {
            if s < self.read.segment {
                continue;
            }
            let mut f = File::open(segment_path(&self.dir, s))?;
            if s == self.read.segment {
                f.seek(SeekFrom::Start(self.read.offset))?;
            }
            let mut r = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                if parse_line(&line).is_some() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            log::warn!("spool: cannot save the read cursor in {}: {e}", self.dir.display());
        }
    }
}

fn parse_line(line: &[u8]) -> Option<Entry> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let id: IdOnly = serde_json::from_slice(body).ok()?;
    let json = String::from_utf8(body.to_vec()).ok()?;
    Some(Entry { request_id: id.request_id, json })
}

fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("segment-{seg:020}.jsonl"))
}

fn list_segments(dir: &Path) -> io::Result<VecDeque<u64>> {
    let mut v = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_prefix("segment-").and_then(|s| s.strip_suffix(".jsonl")) {
            if let Ok(id) = id.parse::<u64>() {
                v.push(id);
            }
        }
    }
    v.sort_unstable();
    Ok(v.into())
}

fn read_cursor(dir: &Path) -> Option<Pos> {
    let text = match fs::read_to_string(dir.join(CURSOR)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("spool: cannot read the cursor in {}: {e}; replaying from the start", dir.display());
            return None;
        }
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Some(Pos { segment, offset }),
        _ => {
            log::warn!("spool: unreadable cursor in {}; replaying from the start", dir.display());
            None
        }
    }
}

/// Cuts a last line without its newline (a write torn by a crash) off the segment; returns the length.
fn truncate_torn_tail(path: &Path) -> io::Result<u64> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end != len {
        log::warn!("spool: cutting a torn last record ({} bytes) off {}", len - end, path.display());
        f.set_len(end)?;
        f.sync_all()?;
    }
    Ok(end)
}

fn remove_segment(dir: &Path, seg: u64) {
    let path = segment_path(dir, seg);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("spool: cannot delete consumed segment {}: {e}", path.display());
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
