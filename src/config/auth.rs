//! `[auth]`: whether a key is required, the user header, and the keys (hashed at load, each with
//! its own limits), into `AuthConfig`. Main thread.

use super::raw::RawAuth;
use super::{rate_limit, AuthConfig, AuthKey, Problems};
use sha2::{Digest, Sha256};

pub(super) fn convert(p: &mut Problems<'_>, a: &RawAuth) -> AuthConfig {
    let mut keys = Vec::new();
    for (i, k) in a.keys.iter().enumerate() {
        let user_id = match k.user_id.as_deref() {
            Some(u) if !u.is_empty() => u.to_string(),
            _ => {
                p.push(&format!("auth.keys[{i}].user_id"), "missing");
                continue;
            }
        };
        let digest = match (&k.key, &k.key_sha256) {
            (Some(key), None) if !key.is_empty() => Some(Sha256::digest(key.as_bytes()).into()),
            (None, Some(hexd)) => match hex::decode(hexd.trim()) {
                Ok(v) if v.len() == 32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&v);
                    Some(d)
                }
                _ => {
                    p.push(&format!("auth.keys[{i}].key_sha256"), "must be 64 hex digits");
                    None
                }
            },
            (Some(_), Some(_)) => {
                p.push(&format!("auth.keys[{i}]"), "set either key or key_sha256, not both");
                None
            }
            _ => {
                p.push(&format!("auth.keys[{i}].key"), "missing (set key or key_sha256)");
                None
            }
        };
        let raw_limits = rate_limit::RawKeyLimits {
            requests_per_minute: k.requests_per_minute,
            tokens_per_minute: k.tokens_per_minute,
            max_concurrent: k.max_concurrent,
            tokens_per_day: k.tokens_per_day,
        };
        let limits = rate_limit::convert_key(i, &raw_limits, p);
        if let Some(key_sha256) = digest {
            keys.push(AuthKey { key_sha256, user_id, limits });
        }
    }
    if a.required.unwrap_or(false) && keys.is_empty() {
        p.push("auth.required", "is true but no [[auth.keys]] are configured: every request would get 401");
    }
    AuthConfig {
        required: a.required.unwrap_or(false),
        user_header: a.user_header.clone().unwrap_or_else(|| "x-user-id".to_string()).to_ascii_lowercase(),
        keys,
    }
}
