use super::*;

fn rec(id: &str) -> String {
    format!(r#"{{"request_id":"{id}","prompt_tokens":1}}"#)
}

fn load_all(j: &mut Journal) -> Vec<Loaded> {
    let mut out = Vec::new();
    j.refill(usize::MAX, &mut out).unwrap();
    out
}

#[test]
fn appended_unacked_entries_survive_reopen_acked_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut positions = Vec::new();
    {
        let mut j = Journal::open(dir.path(), 200).unwrap();
        for i in 0..10 {
            positions.push(j.append(i, &rec(&format!("r{i}")), true));
            j.commit().unwrap();
        }
        assert!(j.segs.len() > 1, "small segments rotate");
        for p in &positions[..4] {
            j.ack(*p);
        }
        j.commit().unwrap();
        assert_eq!(j.pending(), 6);
    }
    let mut j = Journal::open(dir.path(), 200).unwrap();
    assert_eq!(j.pending(), 6);
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, (4..10).map(|i| format!("r{i}")).collect::<Vec<_>>());
}

#[test]
fn delivered_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), 100).unwrap();
    let ps: Vec<Pos> = (0..20).map(|i| j.append(i, &rec(&format!("r{i}")), true)).collect();
    j.commit().unwrap();
    let more: Vec<Pos> = (20..40).map(|i| j.append(i, &rec(&format!("r{i}")), true)).collect();
    j.commit().unwrap();
    for p in ps.iter().chain(&more) {
        j.ack(*p);
    }
    j.commit().unwrap();
    assert_eq!(j.pending(), 0);
    let logs = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log"));
    assert_eq!(logs.count(), 0, "sealed, delivered segments are gone");
}

#[test]
fn disk_only_entries_are_read_back_in_bounded_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    for i in 0..100 {
        j.append(i, &rec(&format!("r{i}")), false);
    }
    j.commit().unwrap();
    assert!(j.has_disk_only());
    assert_eq!(j.oldest_disk_ts(), Some(0));
    let mut got = Vec::new();
    j.refill(30, &mut got).unwrap();
    assert_eq!(got.len(), 30);
    assert_eq!(j.oldest_disk_ts(), Some(30));
    j.refill(1000, &mut got).unwrap();
    assert_eq!(got.len(), 100);
    assert!(!j.has_disk_only());
    assert_eq!(got[99].request_id, "r99");
}

#[test]
fn torn_tail_is_cut_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            j.append(i, &rec(&format!("r{i}")), true);
        }
        j.commit().unwrap();
    }
    let seg = list_segments(dir.path()).unwrap()[0];
    let path = segment_path(dir.path(), seg);
    let mut bytes = fs::read(&path).unwrap();
    let whole = bytes.len();
    let mut extra = Vec::new();
    frame::encode(&mut extra, 9, rec("torn").as_bytes());
    bytes.extend_from_slice(&extra[..extra.len() - 5]);
    fs::write(&path, &bytes).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 1);
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, whole, "torn tail cut off");
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, vec!["r0", "r1", "r2"]);
}

/// The segment file as a crash leaves it (before the graceful close cuts the zeros off).
fn crashed_copy(j: &Journal, seg: u64) -> Vec<u8> {
    fs::read(segment_path(&j.dir, seg)).unwrap()
}

#[test]
fn preallocated_tail_is_zeros_not_counted_and_cut_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    let p = j.append(1, &rec("r0"), true);
    j.commit().unwrap();
    let data = j.committed as usize;
    let file = crashed_copy(&j, p.seg);
    assert!(file.len() >= (1 << 19), "zero-filled ahead: {} bytes", file.len());
    assert!(file[data..].iter().all(|&b| b == 0));
    assert_eq!(j.bytes(), data as u64, "journal bytes count data, not zeros");
    drop(j);
    assert_eq!(fs::metadata(segment_path(dir.path(), p.seg)).unwrap().len() as usize, data, "cut on close");
    // Crashed instead: the zeros stay, and are the segment's clean end.
    fs::write(segment_path(dir.path(), p.seg), &file).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 0);
    assert_eq!(j.bytes(), data as u64);
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, vec!["r0"]);
    assert_eq!(read_pending(dir.path()).unwrap().len(), 1);
}

#[test]
fn preallocated_segment_cut_mid_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (file, cut) = {
        let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            j.append(i, &rec(&format!("r{i}")), true);
        }
        j.commit().unwrap();
        let torn = j.append(9, &rec("torn"), true);
        j.commit().unwrap();
        let mut file = crashed_copy(&j, torn.seg);
        // Power loss: the last frame's second half never reached the disk (zeros, as preallocated).
        let end = j.committed as usize;
        let cut = torn.off as usize + (end - torn.off as usize) / 2;
        file[cut..end].fill(0);
        (file, torn.off)
    };
    let path = segment_path(dir.path(), 1);
    fs::write(&path, &file).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 1, "the torn entry is counted once");
    assert_eq!(fs::metadata(&path).unwrap().len(), cut, "torn tail (and zeros) cut off");
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, vec!["r0", "r1", "r2"]);
}

#[test]
fn restart_after_a_crash_appends_past_the_zeros_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for round in 0..3 {
        let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(j.corrupt, 0, "round {round}: zero tails are clean ends");
        assert_eq!(j.pending(), ids.len() as u64);
        let mut seg = 0;
        for i in 0..5 {
            let id = format!("r{round}-{i}");
            seg = j.append(i, &rec(&id), true).seg;
            ids.push(id);
            j.commit().unwrap();
        }
        // kill -9: the file keeps its zeros (the graceful close would have cut them).
        let file = crashed_copy(&j, seg);
        drop(j);
        fs::write(segment_path(dir.path(), seg), &file).unwrap();
    }
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 0);
    let got: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(got, ids);
    // A frame written after a zero gap (data lost in the middle) is found, the gap counted.
    drop(j);
    let seg = list_segments(dir.path()).unwrap()[0];
    let path = segment_path(dir.path(), seg);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len();
    bytes.extend_from_slice(&[0; 100]);
    frame::encode(&mut bytes, 1, rec("after-gap").as_bytes());
    fs::write(&path, &bytes).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 1, "the zero gap before a frame is corrupt, at {at}");
    assert!(load_all(&mut j).iter().any(|l| l.request_id == "after-gap"));
}

#[test]
fn corrupt_middle_is_skipped_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let positions: Vec<Pos>;
    {
        let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
        positions = (0..5).map(|i| j.append(i, &rec(&format!("r{i}")), true)).collect();
        j.commit().unwrap();
    }
    let path = segment_path(dir.path(), positions[0].seg);
    let mut bytes = fs::read(&path).unwrap();
    // Flip bytes inside the payload of r1 and smash the magic of r3.
    bytes[positions[1].off as usize + frame::HEADER + 3] ^= 0xff;
    bytes[positions[3].off as usize] = b'X';
    fs::write(&path, &bytes).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 2);
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, vec!["r0", "r2", "r4"]);
}

#[test]
fn held_entries_are_not_handed_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    j.append(1, &rec("disk"), false);
    j.append(2, &rec("held"), true);
    j.commit().unwrap();
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, vec!["disk"]);
}

/// Writes an old-format spool (releases before the journal): JSON-lines segments and a cursor.
fn old_spool(dir: &Path, segments: &[(u64, &str)], cursor: Option<&str>) {
    for (id, text) in segments {
        fs::write(dir.join(format!("segment-{id:020}.jsonl")), text).unwrap();
    }
    if let Some(c) = cursor {
        fs::write(dir.join("cursor"), c).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn old_spool_records_after_the_cursor_are_imported_once_and_its_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let first = format!("{}\n{}\n", rec("old1"), rec("old2"));
    let second = format!("{}\n{}\nnot json\n{}\n{{\"request_id\":\"tor", rec("a"), rec("b"), rec("c"));
    // Segment 3 is before the cursor (delivered); in segment 4 the cursor is after "old1".
    old_spool(
        dir.path(),
        &[(3, &rec("gone\n")), (4, &first), (5, &second)],
        Some(&format!("4 {}\n", rec("old1").len() + 1)),
    );
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.pending(), 4);
    assert_eq!(j.corrupt, 2, "the line that is not a record and the torn last line");
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, ["old2", "a", "b", "c"]);
    let left = names(dir.path());
    assert!(left.iter().all(|n| !n.starts_with("segment-") && !n.starts_with("cursor")), "{left:?}");
    drop(j);
    // Imported once: a second start finds them in the journal only.
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.pending(), 4);
    assert_eq!(load_all(&mut j).len(), 4);
}

#[test]
fn old_spool_without_cursor_is_imported_whole_and_an_empty_one_just_removed() {
    let dir = tempfile::tempdir().unwrap();
    old_spool(dir.path(), &[(1, &format!("{}\n", rec("x"))), (2, &format!("{}\n", rec("y")))], None);
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(load_all(&mut j).into_iter().map(|l| l.request_id).collect::<Vec<_>>(), ["x", "y"]);
    drop(j);

    let dir = tempfile::tempdir().unwrap();
    // What the old spool left once everything was delivered: a cursor at a fresh, absent segment.
    old_spool(dir.path(), &[], Some("9 0\n"));
    let j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.pending(), 0);
    assert_eq!(names(dir.path()), ["lock"]);
}
