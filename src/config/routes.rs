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

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::endpoints::Endpoint;

    #[test]
    fn routes_and_paths_parse_and_every_problem_is_reported() {
        let c = Config::parse(
            "[[backends]]\nurl = \"http://127.0.0.1:1\"\npaths = [\"/api/chat\", \"/v1/rerank\"]\n\n[routes]\ndisabled = [\"/tokenize\"]\n",
            "t",
        )
        .unwrap();
        assert!(!c.routes.enabled(Endpoint::Tokenize));
        assert!(c.routes.enabled(Endpoint::Detokenize));
        assert!(c.backends[0].paths.contains(Endpoint::OllamaChat));
        assert!(!c.backends[0].paths.contains(Endpoint::ChatCompletions));
        let e = Config::parse(
            "[[backends]]\nurl = \"http://127.0.0.1:1\"\npaths = [\"/nope\"]\n\n[routes]\ndisabled = [\"/health\", \"/v2/rerank\"]\n",
            "t",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.problems.iter().any(|p| p.contains("backends[0].paths") && p.contains("/nope")), "{e}");
        assert!(e.problems.iter().any(|p| p.contains("routes.disabled") && p.contains("/health")), "{e}");
    }
}
