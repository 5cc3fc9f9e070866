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
