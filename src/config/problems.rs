//! Config problems: `ConfigError` (every problem, one per line) and `Problems`, which collects
//! them while converting, each with its key and file:line, and reads durations, sizes,
//! integers and choices. Main thread.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The longest duration any setting takes: one year.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Every problem found in a config file; `Display` prints one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while converting; each names its key (and file:line where known).
pub(super) struct Problems<'a> {
    pub(super) origin: &'a str,
    pub(super) source: &'a str,
    pub(super) list: Vec<String>,
}

impl Problems<'_> {
    pub(super) fn push(&mut self, key: &str, msg: impl fmt::Display) {
        let line = self.line_of(key);
        match line {
            Some(l) => self.list.push(format!("{}:{}: {}: {}", self.origin, l, key, msg)),
            None => self.list.push(format!("{}: {}: {}", self.origin, key, msg)),
        }
    }

    /// Best-effort line of the last path component of `key` (e.g. `limits.header_read_timeout`).
    pub(super) fn line_of(&self, key: &str) -> Option<usize> {
        let leaf = key.rsplit('.').next()?;
        let leaf = leaf.split('[').next()?;
        let section = key.split('.').next().unwrap_or("").split('[').next().unwrap_or("");
        let mut in_section = !key.contains('.');
        for (i, line) in self.source.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with('[') {
                let name = t.trim_matches(|c| c == '[' || c == ']' || c == ' ');
                in_section = name == section;
                continue;
            }
            if in_section || !key.contains('.') {
                if let Some(rest) = t.strip_prefix(leaf) {
                    if rest.trim_start().starts_with('=') {
                        return Some(i + 1);
                    }
                }
            }
        }
        None
    }

    /// A duration of at most [`MAX_DURATION`] (every one here is a timeout or an interval; a longer
    /// one is a typo, and past ~300 billion years `Instant` arithmetic would overflow).
    pub(super) fn duration(&mut self, key: &str, v: &Option<String>, default: &str) -> Duration {
        let s = v.as_deref().unwrap_or(default);
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d <= MAX_DURATION => d,
            Ok(_) => {
                self.push(key, format_args!("{s:?} is longer than a year, the longest duration allowed"));
                humantime::parse_duration(default).unwrap_or_default()
            }
            Err(e) => {
                self.push(
                    key,
                    format_args!("invalid duration {s:?} ({e}); use e.g. \"500ms\", \"30s\", \"2m\""),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    pub(super) fn positive_duration(&mut self, key: &str, v: &Option<String>, default: &str) -> Duration {
        let d = self.duration(key, v, default);
        if d.is_zero() {
            self.push(key, "must be greater than 0");
        }
        d
    }

    /// A size of at most `max` bytes.
    pub(super) fn size(&mut self, key: &str, v: &Option<String>, default: &str, max: u64) -> u64 {
        let s = v.as_deref().unwrap_or(default);
        match s.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() <= max => b.as_u64(),
            Ok(_) => {
                self.push(
                    key,
                    format_args!("{s:?} is more than the most allowed, {}", bytesize::ByteSize(max)),
                );
                16 << 20
            }
            Err(e) => {
                self.push(key, format_args!("invalid size {s:?} ({e}); use e.g. \"16MiB\""));
                16 << 20
            }
        }
    }

    pub(super) fn int(&mut self, key: &str, v: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let n = v.unwrap_or(default);
        if n < min || n > max {
            self.push(key, format_args!("{n} is out of range ({min}..={max})"));
            return default;
        }
        n
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &str,
        v: &Option<String>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(s) = v else { return default };
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(key, format_args!("unknown value {s:?}; expected one of {}", names.join(", ")));
                default
            }
        }
    }
}

pub(super) fn parse_addr(p: &mut Problems<'_>, key: &str, s: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => Some(a),
            None => {
                p.push(key, format_args!("{s:?} resolves to no address"));
                None
            }
        },
        Err(e) => {
            p.push(key, format_args!("invalid address {s:?} ({e}); expected host:port"));
            None
        }
    }
}
