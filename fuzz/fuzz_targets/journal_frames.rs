//! A journal segment whose bytes were damaged anyhow (torn, overwritten, cut): `Journal::open`
//! recovers it without a panic, and every record it hands back is one that was written (a frame
//! whose checksum passes is never a different record).
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::delivery::journal::{frame, Journal, DEFAULT_SEGMENT_BYTES};

fn record(i: usize) -> String {
    format!(r#"{{"request_id":"req_{i:04}","prompt_tokens":{i},"completion_tokens":7}}"#)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, edits)) = data.split_first() else { return };
    let n = (n % 16) as usize + 1;
    let mut seg = Vec::new();
    for i in 0..n {
        frame::encode(&mut seg, 1, 1_700_000_000_000 + i as u64, record(i).as_bytes());
    }
    // Edits: (u16 offset, byte) overwrites; a final odd byte cuts the file there (a torn tail).
    let mut chunks = edits.chunks_exact(3);
    for c in &mut chunks {
        let at = u16::from_le_bytes([c[0], c[1]]) as usize;
        if at < seg.len() {
            seg[at] = c[2];
        } else {
            seg.push(c[2]);
        }
    }
    if let [cut, ..] = chunks.remainder() {
        let keep = seg.len() * *cut as usize / 255;
        seg.truncate(keep);
    }
    // Raw decoding of the damaged bytes never panics, at any offset.
    for at in 0..seg.len().min(64) {
        let _ = frame::decode(&seg[at..], 1);
        let _ = frame::resync(&seg[at..]);
        let _ = frame::starts_as(&seg[at..], 1);
    }
    let _ = frame::decode_acks(&seg).count();

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(format!("journal-{:020}.log", 1)), &seg).expect("write");
    let Ok(mut j) = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES) else { return };
    let written: Vec<String> = (0..n).map(record).collect();
    let mut out = Vec::new();
    for _ in 0..4 {
        if j.refill(1024, &mut out).is_err() {
            break;
        }
    }
    assert!(out.len() <= n);
    for l in &out {
        assert!(written.contains(&l.json), "a record that was never written: {}", l.json);
    }
});
