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
