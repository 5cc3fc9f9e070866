//! The shared input shape of the split targets: a flags byte, a count of cut points (0-7), that
//! many two-byte cut positions, then the body. The same body is fed whole and in the pieces the
//! cuts make, and the target checks both ways agree (every byte split of real input must read the
//! same as the whole).

pub struct Input<'a> {
    #[allow(dead_code)] // not every target has options
    pub flags: u8,
    pub body: &'a [u8],
    /// Sorted cut offsets into `body`, each within 0..=len.
    pub cuts: Vec<usize>,
}

pub fn input(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (&k, rest) = rest.split_first()?;
    let k = (k % 8) as usize;
    if rest.len() < 2 * k {
        return None;
    }
    let (raw, body) = rest.split_at(2 * k);
    let mut cuts: Vec<usize> =
        raw.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (body.len() + 1)).collect();
    cuts.sort_unstable();
    Some(Input { flags, body, cuts })
}

impl Input<'_> {
    /// The body's pieces between the cuts (empty pieces included: a read may return nothing new).
    pub fn pieces(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(self.cuts.len() + 1);
        let mut at = 0;
        for &c in &self.cuts {
            out.push(&self.body[at..c]);
            at = c;
        }
        out.push(&self.body[at..]);
        out
    }
}
