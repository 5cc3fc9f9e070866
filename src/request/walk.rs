//! The byte walk over one JSON object: members as (key, value) spans, values skipped unparsed and
//! checked only as far as needed to find where they end. Pure, no allocation; runs on core threads.

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

/// One member of an object: the key's raw bytes (between the quotes, escapes not decoded) and the
/// value's span in the body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member<'a> {
    pub key: &'a [u8],
    pub value: (usize, usize),
}

/// Walks the object whose `{` is at `b[open]`, calling `each` for every member in order; returns
/// the index just past its `}` and whether it had no members.
pub(super) fn walk_object<E: From<Malformed>>(
    b: &[u8],
    open: usize,
    mut each: impl FnMut(Member<'_>) -> Result<(), E>,
) -> Result<(usize, bool), E> {
    debug_assert_eq!(b.get(open), Some(&b'{'));
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Ok((i + 1, true));
    }
    loop {
        let key_end = skip_string(b, i).ok_or(Malformed)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(Malformed.into());
        }
        let v = skip_ws(b, i + 1);
        let v_end = skip_value(b, v).ok_or(Malformed)?;
        each(Member { key, value: (v, v_end) })?;
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok((i + 1, false)),
            _ => return Err(Malformed.into()),
        }
    }
}

/// First index at or after `i` that is not JSON whitespace (the one helper for every byte scanner).
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `b[i] == '"'`.
pub(super) fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        let k = memchr::memchr2(b'"', b'\\', b.get(j..)?)? + j;
        if b[k] == b'\\' {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

/// End (exclusive) of the JSON value starting at `b[i]`, checked only as far as needed to skip it:
/// strings are skipped whole, braces and brackets counted together (a valid body nests them right;
/// an invalid one is refused by the backend, so how it is skipped does not matter).
pub(super) fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            // The next `"`, `{`, `}` and the next `[`, `]` at or after j (usize::MAX: none left),
            // each found once and kept until passed: one pass over the value, not one search per
            // structural byte.
            let find_a = |j: usize| memchr::memchr3(b'"', b'{', b'}', &b[j..]).map_or(usize::MAX, |k| k + j);
            let find_b = |j: usize| memchr::memchr2(b'[', b']', &b[j..]).map_or(usize::MAX, |k| k + j);
            let (mut next_a, mut next_b) = (find_a(j), find_b(j));
            loop {
                let k = next_a.min(next_b);
                if k == usize::MAX {
                    return None;
                }
                match b[k] {
                    b'"' => j = skip_string(b, k)?,
                    b'{' | b'[' => {
                        depth += 1;
                        j = k + 1;
                    }
                    _ => {
                        depth -= 1;
                        j = k + 1;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                }
                if next_a < j {
                    next_a = find_a(j);
                }
                if next_b < j {
                    next_b = find_b(j);
                }
            }
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}
