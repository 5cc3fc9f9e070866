//! Who is calling: the client's API key matched in constant time against `[auth]` keys, giving the
//! key's identity (its index in `[[auth.keys]]` and its stable id, which limits count by) and its
//! user id, and the key as it appears in usage records. Pure; runs on core threads.

use crate::config::{ApiKeyFormat, AuthConfig};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize().into()
}

/// A configured key that matched: which entry, and its user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMatch<'a> {
    /// Index of the entry in `[[auth.keys]]` (the key's identity for limits).
    pub index: usize,
    /// The key's stable id (`AuthKey::id`): the same across reloads.
    pub id: u64,
    pub user_id: &'a str,
}

/// The configured key matching `key`. Compares SHA-256 digests in constant time and visits every
/// configured key, so timing reveals neither the key nor which one matched.
pub fn lookup<'a>(auth: &'a AuthConfig, key: &[u8]) -> Option<KeyMatch<'a>> {
    let digest = sha256(key);
    let mut found: Option<KeyMatch<'a>> = None;
    for (index, k) in auth.keys.iter().enumerate() {
        if bool::from(k.key_sha256.ct_eq(&digest)) && found.is_none() {
            found = Some(KeyMatch { index, id: k.id(), user_id: &k.user_id });
        }
    }
    found
}

/// The key as written into the usage record.
pub fn format_key(key: &[u8], format: ApiKeyFormat) -> Option<String> {
    let key = String::from_utf8_lossy(key);
    match format {
        ApiKeyFormat::Omit => None,
        ApiKeyFormat::Full => Some(key.into_owned()),
        ApiKeyFormat::Sha256 => Some(hex::encode(sha256(key.as_bytes()))),
        ApiKeyFormat::Redacted => {
            let chars: Vec<char> = key.chars().collect();
            if chars.len() <= 8 {
                Some("...".to_string())
            } else {
                let head: String = chars[..4].iter().collect();
                let tail: String = chars[chars.len() - 3..].iter().collect();
                Some(format!("{head}...{tail}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthKey;

    fn cfg() -> AuthConfig {
        AuthConfig {
            required: true,
            user_header: "x-user-id".into(),
            keys: vec![
                AuthKey {
                    key_sha256: sha256(b"sk-prod-xxx"),
                    user_id: "alice".into(),
                    limits: Default::default(),
                },
                AuthKey {
                    key_sha256: sha256(b"sk-other"),
                    user_id: "bob".into(),
                    limits: Default::default(),
                },
            ],
        }
    }

    #[test]
    fn lookup_matches_exact_keys_only() {
        let c = cfg();
        assert_eq!(
            lookup(&c, b"sk-prod-xxx"),
            Some(KeyMatch { index: 0, id: c.keys[0].id(), user_id: "alice" })
        );
        assert_eq!(lookup(&c, b"sk-other"), Some(KeyMatch { index: 1, id: c.keys[1].id(), user_id: "bob" }));
        assert_eq!(lookup(&c, b"sk-prod-xx"), None);
        assert_eq!(lookup(&c, b""), None);
    }

    #[test]
    fn key_formats() {
        assert_eq!(format_key(b"sk-prod-xxx", ApiKeyFormat::Redacted).unwrap(), "sk-p...xxx");
        assert_eq!(format_key(b"short", ApiKeyFormat::Redacted).unwrap(), "...");
        assert_eq!(format_key(b"k", ApiKeyFormat::Full).unwrap(), "k");
        assert_eq!(format_key(b"k", ApiKeyFormat::Omit), None);
        assert_eq!(format_key(b"abc", ApiKeyFormat::Sha256).unwrap().len(), 64);
    }
}
