//! Gzip for the simulated backends (`gzip` option): deflate "stored" blocks, which every gzip
//! reader accepts, so an answer is compressed-encoded (what the gateway must not meter blindly)
//! without a compression library. A stream keeps its pacing: one block per event.

/// CRC-32 (IEEE) of `data`, continuing from `crc`.
fn crc32(mut crc: u32, data: &[u8]) -> u32 {
    crc = !crc;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Appends `data` as non-final stored blocks.
fn blocks(out: &mut Vec<u8>, data: &[u8]) {
    for piece in data.chunks(65_535) {
        let n = piece.len() as u16;
        out.push(0);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(piece);
    }
}

/// The gzip encoding of the concatenation of `parts`, as one output piece per input piece (the
/// header rides on the first, the final block and trailer on the last).
pub(super) fn encode_parts(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut crc = 0;
    let mut len: u32 = 0;
    let mut out = Vec::with_capacity(parts.len().max(1));
    for (i, p) in parts.iter().enumerate() {
        let mut o = Vec::with_capacity(p.len() + 16);
        if i == 0 {
            o.extend_from_slice(&HEADER);
        }
        blocks(&mut o, p);
        crc = crc32(crc, p);
        len = len.wrapping_add(p.len() as u32);
        out.push(o);
    }
    if out.is_empty() {
        out.push(HEADER.to_vec());
    }
    if let Some(last) = out.last_mut() {
        last.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        last.extend_from_slice(&crc.to_le_bytes());
        last.extend_from_slice(&len.to_le_bytes());
    }
    out
}

/// Whether an `accept-encoding` value accepts gzip.
pub(super) fn accepted(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|v| {
        v.split(',').any(|t| {
            let mut it = t.split(';');
            let name = it.next().unwrap_or("").trim();
            let q0 = it.any(|p| {
                matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000")
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q0
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc_and_accept() {
        assert_eq!(super::crc32(0, b"123456789"), 0xCBF4_3926);
        assert!(super::accepted(Some("gzip, deflate")));
        assert!(super::accepted(Some("br;q=1, GZIP;q=0.5")));
        assert!(!super::accepted(Some("identity")));
        assert!(!super::accepted(Some("gzip;q=0")));
        assert!(!super::accepted(None));
    }
}
