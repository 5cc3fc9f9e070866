//! `[routes]` and `[[backends]] paths`: which of the routed paths (CONTRACT 12) the gateway
//! answers, and which paths each backend serves. Parsed at load; read on core threads per request.

use super::Problems;
use crate::endpoints::{Endpoint, PathSet};
use serde::Deserialize;

/// `[routes]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesConfig {
    /// Paths answered 404 as if they were not routed (default: none).
    pub disabled: PathSet,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig { disabled: PathSet::NONE }
    }
}

impl RoutesConfig {
    pub fn enabled(&self, e: Endpoint) -> bool {
        !self.disabled.contains(e)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRoutes {
    disabled: Option<Vec<String>>,
}

pub(super) fn convert(p: &mut Problems<'_>, raw: &RawRoutes) -> RoutesConfig {
    let list = raw.disabled.as_deref().unwrap_or_default();
    let (disabled, bad) = PathSet::parse(list.iter().map(String::as_str));
    for b in bad {
        p.push("routes.disabled", b);
    }
    RoutesConfig { disabled }
}

/// `[[backends]] paths`: absent means every proxied path (the backend answers for itself).
pub(super) fn backend_paths(p: &mut Problems<'_>, i: usize, paths: &Option<Vec<String>>) -> PathSet {
    let Some(list) = paths else { return PathSet::ALL };
    let (set, bad) = PathSet::parse(list.iter().map(String::as_str));
    for b in bad {
        p.push(&format!("backends[{i}].paths"), b);
    }
    if list.is_empty() {
        p.push(
            &format!("backends[{i}].paths"),
            "an empty list serves nothing; leave the key out to serve every path",
        );
    }
    set
}
