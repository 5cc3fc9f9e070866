//! The journal's write side (journal thread only): group commit in two steps. [`Journal::flush`]
//! hands what was appended, and the acknowledgements, to the kernel with one `write` per file (from
//! then on they survive `kill -9` and an OOM kill: the page cache outlives the process);
//! [`Journal::sync_entries`] makes the segment survive a power loss too (one fdatasync for every
//! group written since the last). Acknowledgements are fdatasync'd separately and rarely
//! ([`Journal::sync_acks`]): an acknowledgement lost to a power loss only means that record is
//! delivered once more. [`Journal::commit`] does all three (stop, disk probe, tests).
//!
//! The fdatasync stays on the journal thread: on a separate thread, appends to the page being
//! written back wait for that write-back (ext4, Linux 6.18: a 3 KB append p99 1.6-4.8 ms instead of
//! 0.3 ms), and the `kill -9` test lost records more often that way.

use super::{ack_path, frame, remove_segment, scan, segment_path, sync_dir, Journal, Pos, Unwritten};
use frame::Decoded;
use std::fs::OpenOptions;
use std::io::{self, Write};

impl Journal {
    /// Everything appended and acknowledged so far written and fdatasync'd (graceful stop, disk
    /// probe). On a failed write nothing of this group stays in the file; its entries are returned so
    /// the caller can keep them in memory.
    pub fn commit(&mut self) -> Result<(), Unwritten> {
        self.flush()?;
        self.sync_entries()
            .and_then(|()| self.sync_acks())
            .map_err(|error| Unwritten { error, entries: Vec::new() })
    }

    /// Everything appended and acknowledged is on disk (graceful stop).
    pub fn sync(&mut self) -> Result<(), Unwritten> {
        self.commit()
    }

    /// Writes the appended frames (one `write`) and the pending acknowledgements (one `write` per
    /// `.ack` file) without fdatasync, then deletes what is fully delivered. A failed frame write
    /// leaves nothing of its group in the file and returns the group's entries; a failed
    /// acknowledgement write returns no entries (those records may be delivered again after a crash).
    pub fn flush(&mut self) -> Result<(), Unwritten> {
        if !self.buf.is_empty() {
            if let Err(error) = self.write_buf() {
                return Err(self.unwind(error));
            }
        }
        if !self.acks.is_empty() {
            if let Err(error) = self.write_acks() {
                return Err(Unwritten { error, entries: Vec::new() });
            }
        }
        self.collect_garbage();
        Ok(())
    }

    /// Appended frames or acknowledgements wait for the next [`Journal::flush`].
    pub fn unwritten(&self) -> bool {
        !self.buf.is_empty() || !self.acks.is_empty()
    }

    /// `.ack` files were written since the last [`Journal::sync_acks`].
    pub fn acks_unsynced(&self) -> bool {
        !self.acks_unsynced.is_empty()
    }

    /// Frames were written since the last [`Journal::sync_entries`].
    pub fn unsynced(&self) -> bool {
        self.seg_unsynced
    }

    /// fdatasync of the segment being written, if it was written since the last one.
    pub fn sync_entries(&mut self) -> io::Result<()> {
        if self.seg_unsynced {
            if let Some(w) = &self.writer {
                w.sync_data()?;
            }
            self.seg_unsynced = false;
        }
        Ok(())
    }

    /// fdatasync of the `.ack` files written since the last one.
    pub fn sync_acks(&mut self) -> io::Result<()> {
        for seg in std::mem::take(&mut self.acks_unsynced) {
            if let Some(f) = self.ack_files.get(&seg) {
                if let Err(e) = f.sync_data() {
                    self.acks_unsynced.insert(seg);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn write_buf(&mut self) -> io::Result<()> {
        if self.writer.is_none() {
            let f =
                OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, self.write_seg))?;
            sync_dir(&self.dir)?;
            self.writer = Some(f);
        }
        let Some(w) = self.writer.as_mut() else { return Err(io::Error::other("journal writer missing")) };
        w.write_all(&self.buf)?;
        self.committed += self.buf.len() as u64;
        self.seg_unsynced = true;
        if let Some(s) = self.segs.get_mut(&self.write_seg) {
            s.bytes = self.committed;
        }
        self.buf.clear();
        if self.committed >= self.segment_bytes {
            // A full segment is synced before the next one starts, so only the one being written can
            // hold unsynced frames. Its frames are written: a failed sync is reported, not unwound.
            let synced = self.sync_entries();
            self.seal();
            synced?;
        }
        Ok(())
    }

    /// A failed group: cut the file back, forget the group's entries, hand them back.
    fn unwind(&mut self, error: io::Error) -> Unwritten {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.set_len(self.committed) {
                log::warn!("journal: cannot cut back a failed append in {}: {e}", self.dir.display());
            }
            if self.seg_unsynced {
                // Written frames of earlier groups, not yet synced: one try before the file closes.
                if w.sync_data().is_ok() {
                    self.seg_unsynced = false;
                }
            }
        }
        let mut entries = Vec::new();
        let mut off = 0;
        while off < self.buf.len() {
            let Decoded::Entry { ts_ms, payload, len } = frame::decode(&self.buf[off..]) else { break };
            let pos = Pos { seg: self.write_seg, off: self.committed + off as u64 };
            if let Some(l) = scan::to_loaded(pos, ts_ms, payload) {
                entries.push(l);
            }
            self.skip.remove(&pos);
            off += len;
        }
        if let Some(s) = self.segs.get_mut(&self.write_seg) {
            s.entries = s.entries.saturating_sub(entries.len() as u64);
            if s.entries == 0 && self.committed == 0 {
                self.segs.remove(&self.write_seg);
            }
        }
        self.buf.clear();
        let end = self.end();
        if self.load > end {
            self.load = end;
        }
        Unwritten { error, entries }
    }

    /// Marks a delivered entry; written by the next flush.
    pub fn ack(&mut self, pos: Pos) {
        if let Some(s) = self.segs.get_mut(&pos.seg) {
            s.acked += 1;
            self.acks.push(pos);
        }
    }

    fn write_acks(&mut self) -> io::Result<()> {
        self.acks.sort_unstable();
        let mut i = 0;
        let mut out = Vec::with_capacity(self.acks.len() * frame::ACK_LEN);
        while i < self.acks.len() {
            let seg = self.acks[i].seg;
            out.clear();
            while i < self.acks.len() && self.acks[i].seg == seg {
                frame::encode_ack(&mut out, self.acks[i].off);
                i += 1;
            }
            if !self.segs.contains_key(&seg) {
                continue;
            }
            let f = match self.ack_files.entry(seg) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(OpenOptions::new().create(true).append(true).open(ack_path(&self.dir, seg))?)
                }
            };
            f.write_all(&out)?;
            self.acks_unsynced.insert(seg);
        }
        self.acks.clear();
        Ok(())
    }

    /// Starts a new segment (the buffer is empty: called right after a write).
    pub(super) fn seal(&mut self) {
        let load_at_end = self.load == self.end();
        self.writer = None;
        self.seg_unsynced = false;
        self.write_seg += 1;
        self.committed = 0;
        if load_at_end {
            self.load = self.end();
        }
    }

    /// Deletes segments whose entries are all delivered; retires an idle, delivered active one.
    fn collect_garbage(&mut self) {
        let active_done = self.segs.get(&self.write_seg).is_some_and(|s| s.acked == s.entries);
        if active_done
            && self.buf.is_empty()
            && self.committed >= super::RETIRE_IDLE_BYTES
            && !self.has_disk_only()
            && !self.seg_unsynced
        {
            self.seal();
        }
        let done: Vec<u64> = self
            .segs
            .iter()
            .filter(|(&id, s)| id < self.write_seg && s.acked >= s.entries && self.load.seg > id)
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.segs.remove(&id);
            self.ack_files.remove(&id);
            self.acks_unsynced.remove(&id);
            remove_segment(&self.dir, id);
        }
    }
}
