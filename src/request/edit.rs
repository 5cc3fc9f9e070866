//! The splice that makes a backend report usage: `stream_options.include_usage` and/or
//! `continuous_usage_stats` set true, applied while the body is copied to the backend. Pure; runs
//! on core threads.

/// A change to the body: up to three splices, in body order, not overlapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    splices: [Splice; 3],
    len: usize,
}

/// Replace `remove` bytes at `at` with `insert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Splice {
    at: usize,
    remove: usize,
    insert: &'static [u8],
}

impl Edit {
    fn new() -> Edit {
        Edit { splices: [Splice::default(); 3], len: 0 }
    }

    fn push(&mut self, at: usize, remove: usize, insert: &'static [u8]) {
        debug_assert!(
            self.len == 0 || self.splices[self.len - 1].at + self.splices[self.len - 1].remove <= at
        );
        self.splices[self.len] = Splice { at, remove, insert };
        self.len += 1;
    }

    /// Length of the body after the edit.
    pub fn new_len(&self, len: usize) -> usize {
        self.splices[..self.len].iter().fold(len, |n, s| n - s.remove + s.insert.len())
    }

    /// Appends `body` with the edit applied to `out` (the copy the gateway makes anyway).
    pub fn apply_into(&self, body: &[u8], out: &mut Vec<u8>) {
        let mut pos = 0;
        for s in &self.splices[..self.len] {
            out.extend_from_slice(&body[pos..s.at]);
            out.extend_from_slice(s.insert);
            pos = s.at + s.remove;
        }
        out.extend_from_slice(&body[pos..]);
    }
}

/// Where `stream_options` and its two members are, as the walk found them (the last of duplicates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Target {
    /// No body (empty): nothing to edit.
    #[default]
    None,
    /// No `stream_options`: insert the member just after the top-level `{` at this index.
    Absent { open: usize, empty: bool },
    /// `"stream_options": null` at this span: replace the null.
    Null(usize, usize),
    /// An object whose `{` is at `open`, with its two members as found.
    Object { open: usize, empty: bool, include_usage: Member, continuous: Member },
}

/// One boolean member of `stream_options`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Member {
    #[default]
    Absent,
    /// Present and true: nothing to do.
    True,
    /// Present, false or null, at this value span: replace it with `true`.
    Replace(usize, usize),
}

macro_rules! members {
    ($iu:expr, $cus:expr, $pre:literal, $post:literal) => {
        match ($iu, $cus) {
            (true, true) => concat!($pre, "\"include_usage\":true,\"continuous_usage_stats\":true", $post),
            (true, false) => concat!($pre, "\"include_usage\":true", $post),
            _ => concat!($pre, "\"continuous_usage_stats\":true", $post),
        }
        .as_bytes()
    };
}

/// The edit that makes `include_usage` (when `iu`) and `continuous_usage_stats` (when `cus`) true;
/// None when they already are.
pub(super) fn usage_edit(t: Target, iu: bool, cus: bool) -> Option<Edit> {
    let mut e = Edit::new();
    match t {
        Target::None => return None,
        _ if !iu && !cus => return None,
        Target::Absent { open, empty } => {
            let text = if empty {
                members!(iu, cus, "\"stream_options\":{", "}")
            } else {
                members!(iu, cus, "\"stream_options\":{", "},")
            };
            e.push(open + 1, 0, text);
        }
        Target::Null(s, end) => e.push(s, end - s, members!(iu, cus, "{", "}")),
        Target::Object { open, empty, include_usage, continuous } => {
            let add_iu = iu && include_usage == Member::Absent;
            let add_cus = cus && continuous == Member::Absent;
            if add_iu || add_cus {
                let text = if empty {
                    members!(add_iu, add_cus, "", "")
                } else {
                    members!(add_iu, add_cus, "", ",")
                };
                e.push(open + 1, 0, text);
            }
            let mut replace: [Option<(usize, usize)>; 2] = [None, None];
            if let (true, Member::Replace(s, end)) = (iu, include_usage) {
                replace[0] = Some((s, end));
            }
            if let (true, Member::Replace(s, end)) = (cus, continuous) {
                replace[1] = Some((s, end));
            }
            replace.sort_by_key(|r| r.map(|(s, _)| s));
            for (s, end) in replace.into_iter().flatten() {
                e.push(s, end - s, b"true");
            }
        }
    }
    (e.len > 0).then_some(e)
}
