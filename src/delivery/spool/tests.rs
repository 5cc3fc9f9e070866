use super::*;

fn entry(i: usize) -> Entry {
    let request_id = format!("req_{i}");
    let json = format!(r#"{{"request_id":"{request_id}","n":{i}}}"#);
    Entry { request_id, json }
}

fn entries(r: std::ops::Range<usize>) -> Vec<Entry> {
    r.map(entry).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("segment-"))
        .collect();
    v.sort();
    v
}

fn drain(s: &mut Spool, batch: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    loop {
        let p = s.peek(batch).unwrap();
        if p.entries.is_empty() {
            assert!(s.is_empty(), "peek found nothing but {} records are counted", s.len());
            return out;
        }
        out.extend(p.entries.iter().cloned());
        s.consume(&p).unwrap();
    }
}

#[test]
fn segments_roll_over_and_drain_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open_with_segment_bytes(dir.path(), 200).unwrap();
    for chunk in 0..10 {
        s.append(&entries(chunk * 5..chunk * 5 + 5)).unwrap();
    }
    assert_eq!(s.len(), 50);
    let files = segment_files(dir.path());
    assert!(files.len() >= 5, "expected several segments, got {files:?}");
    for f in &files {
        // A segment only rolls over between append batches, so it may exceed the limit by one batch.
        assert!(fs::metadata(f).unwrap().len() < 200 + 5 * 40, "{f:?} too big");
    }
    // Consume part way: fully consumed segments are deleted.
    let p = s.peek(30).unwrap();
    assert_eq!(p.entries, entries(0..30));
    s.consume(&p).unwrap();
    assert!(segment_files(dir.path()).len() < files.len());
    assert_eq!(s.len(), 20);
    assert_eq!(drain(&mut s, 7), entries(30..50));
    assert!(segment_files(dir.path()).is_empty(), "drained spool keeps no segments");
    // Appending after a full drain starts a fresh segment.
    s.append(&entries(50..52)).unwrap();
    assert_eq!(drain(&mut s, 10), entries(50..52));
}

#[test]
fn cursor_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open_with_segment_bytes(dir.path(), 150).unwrap();
        s.append(&entries(0..10)).unwrap();
        s.append(&entries(10..20)).unwrap();
        let p = s.peek(7).unwrap();
        assert_eq!(p.entries, entries(0..7));
        s.consume(&p).unwrap();
        s.sync().unwrap();
    }
    let mut s = Spool::open_with_segment_bytes(dir.path(), 150).unwrap();
    assert_eq!(s.len(), 13);
    let p = s.peek(100).unwrap();
    assert_eq!(p.entries, entries(7..20));
    // Not consumed: a reopen sees the same records again (at-least-once).
    drop(s);
    let mut s = Spool::open_with_segment_bytes(dir.path(), 150).unwrap();
    assert_eq!(s.len(), 13);
    assert_eq!(drain(&mut s, 4), entries(7..20));
    drop(s);
    let s = Spool::open(dir.path()).unwrap();
    assert!(s.is_empty());
}

#[test]
fn cursor_is_saved_on_drop_without_sync() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path()).unwrap();
        s.append(&entries(0..5)).unwrap();
        let p = s.peek(2).unwrap();
        s.consume(&p).unwrap();
    }
    let mut s = Spool::open(dir.path()).unwrap();
    assert_eq!(drain(&mut s, 10), entries(2..5));
}

#[test]
fn torn_last_line_is_cut_and_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path()).unwrap();
        s.append(&entries(0..3)).unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(br#"{"request_id":"torn","#).unwrap();
    let mut s = Spool::open(dir.path()).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len, "torn tail truncated");
    // New records land on a clean line boundary, not glued to the torn bytes.
    s.append(&entries(3..5)).unwrap();
    assert_eq!(drain(&mut s, 2), entries(0..5));
}

#[test]
fn corrupt_complete_lines_are_skipped_not_blocking() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path()).unwrap();
        s.append(&entries(0..2)).unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"not json at all\n{\"no_id\":1}\n\0\0\0\n").unwrap();
    drop(f);
    let mut s = Spool::open(dir.path()).unwrap();
    assert_eq!(s.len(), 2);
    s.append(&entries(2..4)).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(drain(&mut s, 1), entries(0..4));
}

#[test]
fn spool_dir_is_locked_against_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Spool::open(dir.path()).unwrap();
    let err = Spool::open(dir.path()).err().expect("second open must fail");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
}
