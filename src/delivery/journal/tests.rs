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
    frame::encode(&mut extra, seg, 9, rec("torn").as_bytes());
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
    frame::encode(&mut bytes, seg, 1, rec("after-gap").as_bytes());
    fs::write(&path, &bytes).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.corrupt, 1, "the zero gap before a frame is corrupt, at {at}");
    assert!(load_all(&mut j).iter().any(|l| l.request_id == "after-gap"));
}

fn ino(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap())
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    names(dir).into_iter().filter(|n| n.ends_with(suffix)).collect()
}

/// Fills and delivers `n` segments: appends (committing one at a time, each entry acknowledged)
/// until the journal moves on to a new segment, `n` times. Entries are tagged `tag`.
fn deliver_segments(j: &mut Journal, n: usize, tag: &str) {
    for round in 0..n {
        let start = j.end().seg;
        let mut i = 0;
        while j.end().seg == start {
            let p = j.append(i, &rec(&format!("{tag}{round}-{i}")), true);
            j.commit().unwrap();
            j.ack(p);
            i += 1;
        }
        j.commit().unwrap();
    }
}

#[test]
fn delivered_segment_files_are_recycled_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    deliver_segments(&mut j, 3, "a");
    // One at a time: each segment's file becomes the spare that the segment after the next takes.
    let spares = files_ending(dir.path(), ".spare");
    assert_eq!(spares.len(), 1, "a delivered file kept for reuse: {:?}", names(dir.path()));
    assert!(files_ending(dir.path(), ".ack").is_empty(), "a spare keeps no acknowledgements");
    let spare_inodes: Vec<u64> = spares.iter().map(|n| ino(&dir.path().join(n))).collect();
    // The next segment is a spare renamed: no new file, no zeros (its earlier frames follow the data).
    let p = j.append(1, &rec("next"), true);
    j.commit().unwrap();
    let path = segment_path(dir.path(), p.seg);
    assert!(spare_inodes.contains(&ino(&path)), "segment {} reuses a spare's file", p.seg);
    assert!(files_ending(dir.path(), ".spare").is_empty());
    let file = fs::read(&path).unwrap();
    assert!(file.len() as u64 >= 1000 && file[j.committed as usize..].iter().any(|&b| b != 0));
    // Many segments later the directory still holds the same few files.
    deliver_segments(&mut j, 20, "b");
    assert!(files_ending(dir.path(), ".log").len() <= 2, "{:?}", names(dir.path()));
    assert!(files_ending(dir.path(), ".spare").len() <= MAX_SPARES, "{:?}", names(dir.path()));
    drop(j);
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    assert_eq!((j.pending(), j.corrupt), (1, 0), "only 'next' is undelivered");
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, vec!["next"]);
}

#[test]
fn a_backlog_delivered_at_once_keeps_at_most_the_spare_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    let mut held = Vec::new();
    while j.end().seg < 6 {
        held.push(j.append(1, &rec(&format!("r{}", held.len())), true));
        j.commit().unwrap();
    }
    assert_eq!(files_ending(dir.path(), ".log").len(), 5);
    for p in held {
        j.ack(p);
    }
    j.commit().unwrap();
    assert_eq!(files_ending(dir.path(), ".spare").len(), MAX_SPARES, "{:?}", names(dir.path()));
    assert!(files_ending(dir.path(), ".log").is_empty() && files_ending(dir.path(), ".ack").is_empty());
}

/// A recycled segment as a crash (`kill -9`: the page cache holds every write) leaves it: its own
/// frames, then its file's earlier segment's. Returns the segment, the crashed file, the spare's old
/// bytes, and the ids written to it.
fn crashed_recycled_segment(dir: &Path) -> (u64, Vec<u8>, Vec<u8>, Vec<String>) {
    let mut j = Journal::open(dir, 1000).unwrap();
    deliver_segments(&mut j, 2, "old");
    let spare = files_ending(dir, ".spare").pop().expect("a spare");
    let old = fs::read(dir.join(&spare)).unwrap();
    let ids: Vec<String> = (0..3).map(|i| format!("new-{i}")).collect();
    let mut seg = 0;
    for id in &ids {
        seg = j.append(1, &rec(id), true).seg;
        j.commit().unwrap();
    }
    let file = crashed_copy(&j, seg);
    assert!(file.len() > j.committed as usize + 500, "the earlier frames are still there");
    drop(j);
    (seg, file, old, ids)
}

#[test]
fn a_recycled_segment_replays_its_own_entries_after_a_crash_not_the_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, file, _, ids) = crashed_recycled_segment(dir.path());
    let path = segment_path(dir.path(), seg);
    fs::write(&path, &file).unwrap();
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    assert_eq!(j.corrupt, 0, "stale frames are not corruption");
    assert_eq!(j.pending(), 3);
    let got: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(got, ids);
    let pending: Vec<String> = read_pending(dir.path()).unwrap().into_iter().map(|l| l.request_id).collect();
    assert_eq!(pending, ids);
}

#[test]
fn a_recycled_segment_torn_over_stale_frames_loses_only_the_torn_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, mut file, old, ids) = crashed_recycled_segment(dir.path());
    // Power loss: the last frame's second half never reached the disk, the file's old bytes are there.
    let last = {
        let mut off = 0;
        let mut starts = Vec::new();
        while let frame::Decoded::Entry { len, .. } = frame::decode(&file[off..], seg) {
            starts.push(off);
            off += len;
        }
        assert_eq!(starts.len(), 3);
        (starts[2], off)
    };
    let cut = last.0 + (last.1 - last.0) / 2;
    file[cut..last.1].copy_from_slice(&old[cut..last.1]);
    let path = segment_path(dir.path(), seg);
    fs::write(&path, &file).unwrap();
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    assert_eq!(j.corrupt, 1, "the torn entry is counted once");
    assert_eq!(fs::metadata(&path).unwrap().len(), last.0 as u64, "cut back to the last whole entry");
    let got: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(got, ids[..2]);
}

#[test]
fn a_recycled_segment_torn_at_every_byte_replays_a_prefix_and_never_a_stale_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, file, old, ids) = crashed_recycled_segment(dir.path());
    let mut end = 0;
    let mut ends = Vec::new();
    while let frame::Decoded::Entry { len, .. } = frame::decode(&file[end..], seg) {
        end += len;
        ends.push(end);
    }
    let path = segment_path(dir.path(), seg);
    for cut in 0..=end {
        // Power loss: what the group wrote from `cut` on never reached the disk.
        let mut torn = file.clone();
        torn[cut..end].copy_from_slice(&old[cut..end]);
        let scratch = tempfile::tempdir().unwrap();
        fs::write(scratch.path().join(path.file_name().unwrap()), &torn).unwrap();
        let mut j = Journal::open(scratch.path(), 1000).unwrap();
        let got: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
        assert!(ids.starts_with(&got), "cut at {cut}: {got:?} is not a prefix of {ids:?}");
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(got.len(), whole, "cut at {cut}: every entry written whole before it is replayed");
        assert!(j.corrupt <= 1, "cut at {cut}: {} corrupt", j.corrupt);
        if cut == end {
            assert_eq!((got.len(), j.corrupt), (3, 0), "nothing lost: a clean end");
        }
    }
}

#[test]
fn numbering_after_a_restart_stays_above_the_spares_stale_frames() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut j = Journal::open(dir.path(), 1000).unwrap();
        deliver_segments(&mut j, 4, "old");
        assert!(files_ending(dir.path(), ".log").is_empty(), "{:?}", names(dir.path()));
    }
    // Every segment delivered and gone: only spares, holding frames numbered up to the last one.
    let top = list_ids(dir.path(), ".spare").unwrap().pop().expect("a spare");
    let fresh = {
        let mut j = Journal::open(dir.path(), 1000).unwrap();
        assert!(j.write_seg > top, "segment {} must not repeat a spare's {top}", j.write_seg);
        let p = j.append(1, &rec("fresh"), true);
        j.commit().unwrap();
        let file = crashed_copy(&j, p.seg);
        drop(j);
        fs::write(segment_path(dir.path(), p.seg), &file).unwrap();
        p
    };
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    assert_eq!((j.pending(), j.corrupt), (1, 0));
    let got: Vec<Pos> = load_all(&mut j).into_iter().map(|l| l.pos).collect();
    assert_eq!(got, vec![fresh]);
}

#[test]
fn an_orphaned_ack_file_is_removed_and_its_number_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let p = {
        let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
        let p = j.append(1, &rec("a"), true);
        j.commit().unwrap();
        j.ack(p);
        j.commit().unwrap();
        p
    };
    // A crash between deleting segment 1's entries and its acknowledgements.
    assert!(fs::metadata(ack_path(dir.path(), p.seg)).is_ok());
    fs::remove_file(segment_path(dir.path(), p.seg)).unwrap();
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert!(fs::metadata(ack_path(dir.path(), p.seg)).is_err(), "{:?}", names(dir.path()));
    // The next record lands at the same offset of a new number, and is not taken as delivered.
    let q = j.append(1, &rec("b"), true);
    assert!(q.seg > p.seg && q.off == p.off);
    j.commit().unwrap();
    drop(j);
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.pending(), 1);
    assert_eq!(load_all(&mut j).into_iter().map(|l| l.request_id).collect::<Vec<_>>(), vec!["b"]);
}

#[test]
fn a_segment_of_the_first_frame_format_is_read_and_then_deleted_not_recycled() {
    let dir = tempfile::tempdir().unwrap();
    // Written by a release before recycling: "LJR1" frames (no segment number).
    let mut bytes = Vec::new();
    for i in 0..3u64 {
        frame::encode_v1(&mut bytes, i, rec(&format!("v1-{i}")).as_bytes());
    }
    fs::write(segment_path(dir.path(), 7), &bytes).unwrap();
    let mut j = Journal::open(dir.path(), 1000).unwrap();
    assert_eq!((j.pending(), j.corrupt), (3, 0));
    let got = load_all(&mut j);
    let ids: Vec<&str> = got.iter().map(|l| l.request_id.as_str()).collect();
    assert_eq!(ids, vec!["v1-0", "v1-1", "v1-2"]);
    for l in &got {
        j.ack(l.pos);
    }
    j.append(1, &rec("v2"), true);
    j.commit().unwrap();
    assert!(!names(dir.path()).iter().any(|n| n.contains("00000000000000000007")), "{:?}", names(dir.path()));
    assert!(files_ending(dir.path(), ".spare").is_empty(), "an old-format file is not kept for reuse");
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

/// Files whose number the journal could never have written (2^64 - 1: its successor overflows)
/// are ignored with a warning, and the journal opens, writes and reads back as usual.
#[test]
fn files_numbered_past_any_segment_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "journal-18446744073709551615.log",
        "journal-18446744073709551615.spare",
        "journal-99999999999999999999.ack",
    ] {
        fs::write(dir.path().join(name), b"not ours").unwrap();
    }
    fs::write(dir.path().join("segment-18446744073709551615.jsonl"), b"{}\n").unwrap();
    assert_eq!(numbered_files(dir.path(), "segment-", ".jsonl").unwrap(), Vec::<u64>::new());
    {
        let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
        j.append(1, &rec("r1"), true);
        j.commit().unwrap();
    }
    let mut j = Journal::open(dir.path(), 1 << 20).unwrap();
    let ids: Vec<String> = load_all(&mut j).into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids, ["r1"]);
}
