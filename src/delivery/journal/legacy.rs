//! Upgrade from the spool format of releases before the journal (runs once in [`super::Journal::open`],
//! on the thread starting the gateway, never on a core thread). That spool kept records as JSON
//! lines in `segment-<20 digits>.jsonl` files and a `cursor` file (`"<segment> <offset>\n"`,
//! replaced atomically through `cursor.tmp`) naming the first record not yet delivered; segments
//! numbered below the cursor's were delivered. Every record after the cursor is appended to the
//! journal and committed (fdatasync) in groups; after each group the cursor is advanced past it, so
//! a crash during the import neither loses a record nor imports a committed group twice (except the
//! one group between its commit and the cursor's rename). Once everything is journaled the old files
//! are removed: the cursor first points past the last segment, then the segments go, then the
//! cursor. A line without its newline (a torn append) or a line that is not a record is skipped,
//! logged and counted as corrupt, as the old spool did. If the journal cannot be written the old
//! files are left for the next start and the error is logged.

use super::Journal;
use serde::Deserialize;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

const CURSOR: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
/// Frames buffered before a group commit (and a cursor advance).
const GROUP_BYTES: usize = 1 << 20;

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Records moved into the journal.
    pub records: u64,
    /// Torn or unreadable lines skipped.
    pub skipped: u64,
}

#[derive(Deserialize)]
struct IdOnly {
    #[allow(dead_code)]
    request_id: String,
}

/// Imports the old spool in `dir` into `j`, if there is one. Only an error of the journal or of the
/// old files' reading is returned; the old files are then kept.
pub(super) fn import(dir: &Path, j: &mut Journal) -> io::Result<Imported> {
    let segments = list(dir)?;
    let cursor_exists = dir.join(CURSOR).exists() || dir.join(CURSOR_TMP).exists();
    let mut done = Imported::default();
    if segments.is_empty() && !cursor_exists {
        return Ok(done);
    }
    let (mut seg, mut off) = read_cursor(dir).unwrap_or((segments.first().copied().unwrap_or(0), 0));
    for &id in &segments {
        if id < seg {
            continue;
        }
        if id > seg {
            (seg, off) = (id, 0);
        }
        let path = segment_path(dir, id);
        let ts_ms = mtime_ms(&path);
        let mut f = File::open(&path)?;
        f.seek(SeekFrom::Start(off))?;
        let mut r = BufReader::new(f);
        let mut line = Vec::new();
        let mut group = 0usize;
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            off += n as u64;
            let body = match line.strip_suffix(b"\n") {
                Some(b) => b,
                None => {
                    skipped(&mut done, j, &path, off - n as u64, "a torn last line");
                    break;
                }
            };
            match std::str::from_utf8(body).ok().filter(|s| serde_json::from_str::<IdOnly>(s).is_ok()) {
                Some(json) => {
                    j.append(ts_ms, json, false);
                    done.records += 1;
                    group += body.len();
                }
                None => skipped(&mut done, j, &path, off - n as u64, "a line that is not a usage record"),
            }
            if group >= GROUP_BYTES {
                commit(j)?;
                save_cursor(dir, seg, off)?;
                group = 0;
            }
        }
        commit(j)?;
        save_cursor(dir, id + 1, 0)?;
    }
    // Everything after the cursor is journaled and the cursor points past every segment.
    for &id in &segments {
        remove(&segment_path(dir, id))?;
    }
    sync_dir(dir)?;
    remove(&dir.join(CURSOR))?;
    remove(&dir.join(CURSOR_TMP))?;
    sync_dir(dir)?;
    Ok(done)
}

fn skipped(done: &mut Imported, j: &mut Journal, path: &Path, at: u64, what: &str) {
    log::warn!("spool upgrade: skipping {what} at offset {at} of {}", path.display());
    done.skipped += 1;
    j.corrupt += 1;
}

fn commit(j: &mut Journal) -> io::Result<()> {
    j.commit().map_err(|u| u.error)
}

fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("segment-{seg:020}.jsonl"))
}

/// Old segment ids, oldest first.
fn list(dir: &Path) -> io::Result<Vec<u64>> {
    super::numbered_files(dir, "segment-", ".jsonl")
}

/// The old cursor; `None` (replay from the first segment, as the old spool did) when it is missing
/// or unreadable.
fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = match fs::read_to_string(dir.join(CURSOR)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(
                "spool upgrade: cannot read the cursor in {}: {e}; importing every record",
                dir.display()
            );
            return None;
        }
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(seg)), Some(Ok(off))) => Some((seg, off)),
        _ => {
            log::warn!("spool upgrade: unreadable cursor in {}; importing every record", dir.display());
            None
        }
    }
}

fn save_cursor(dir: &Path, seg: u64, off: u64) -> io::Result<()> {
    let tmp = dir.join(CURSOR_TMP);
    {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{seg} {off}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(CURSOR))?;
    sync_dir(dir)
}

fn mtime_ms(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
