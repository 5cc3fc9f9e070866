//! Record formats on the wire, without I/O: `record` (CONTRACT section 5: the record object, or a JSON
//! array of them with `batch_max > 1`) and `cloudevents` (CONTRACT section 10: CloudEvents 1.0
//! structured mode as OpenMeter ingests it). Built on the delivery threads, never on a core thread.

use super::Entry;
use crate::config::RecordFormat;
use crate::json::write_str;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const CT_JSON: &str = "application/json";
pub const CT_CLOUDEVENT: &str = "application/cloudevents+json";
pub const CT_CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json";

/// How bodies are built: the format, whether every body is an array, the CloudEvents `source`.
#[derive(Debug, Clone)]
pub struct Formatter {
    pub format: RecordFormat,
    /// `batch_max > 1`: bodies are arrays, even of one record.
    pub arrays: bool,
    /// `llmproxy/<host name>`.
    pub source: String,
}

/// One body ready to send.
#[derive(Debug)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    /// `request_id` for one record; `batch-<sha256 of the ids joined by ",">` for an array.
    pub idempotency_key: String,
}

#[derive(Deserialize)]
struct EventFields<'a> {
    #[serde(borrow)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<std::borrow::Cow<'a, str>>,
}

impl Formatter {
    pub fn new(format: RecordFormat, batch_max: usize) -> Formatter {
        Formatter { format, arrays: batch_max > 1, source: format!("llmproxy/{}", host_name()) }
    }

    /// The whole body for `entries` (non-empty).
    pub fn body(&self, entries: &[Entry]) -> Body {
        let array = self.arrays || entries.len() != 1;
        let mut bytes = Vec::with_capacity(entries.iter().map(|e| e.json.len() + 256).sum::<usize>() + 2);
        if array {
            bytes.push(b'[');
        }
        let mut h = Sha256::new();
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
                h.update(b",");
            }
            h.update(e.request_id.as_bytes());
            self.one(&mut bytes, e);
        }
        if array {
            bytes.push(b']');
        }
        let idempotency_key = if array {
            format!("batch-{}", hex::encode(h.finalize()))
        } else {
            entries[0].request_id.clone()
        };
        let content_type = match (self.format, array) {
            (RecordFormat::Record, _) => CT_JSON,
            (RecordFormat::CloudEvents, false) => CT_CLOUDEVENT,
            (RecordFormat::CloudEvents, true) => CT_CLOUDEVENTS_BATCH,
        };
        Body { bytes, content_type, idempotency_key }
    }

    /// One record in this format, appended to `out` (the NATS sink publishes these one by one).
    pub fn one(&self, out: &mut Vec<u8>, e: &Entry) {
        match self.format {
            RecordFormat::Record => out.extend_from_slice(e.json.as_bytes()),
            RecordFormat::CloudEvents => cloudevent(out, &self.source, e),
        }
    }
}

/// `{"specversion":"1.0","id":…,"source":…,"type":"llm.usage","subject":…,"time":…,
/// "datacontenttype":"application/json","data":<record>}`.
fn cloudevent(out: &mut Vec<u8>, source: &str, e: &Entry) {
    let f: Option<EventFields<'_>> = serde_json::from_str(&e.json).ok();
    let subject = f.as_ref().and_then(|f| f.user_id.as_deref()).unwrap_or("anonymous");
    let time = f.as_ref().and_then(|f| f.timestamp.as_deref()).unwrap_or("");
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    write_str(out, &e.request_id);
    out.extend_from_slice(b",\"source\":");
    write_str(out, source);
    out.extend_from_slice(b",\"type\":\"llm.usage\",\"subject\":");
    write_str(out, subject);
    out.extend_from_slice(b",\"time\":");
    write_str(out, time);
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
    out.extend_from_slice(e.json.as_bytes());
    out.push(b'}');
}

/// This machine's host name (for the CloudEvents `source`), "localhost" if unknown.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..n]) {
        Ok(s) if !s.is_empty() => s.to_string(),
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, user: Option<&str>) -> Entry {
        let user = user.map_or("null".to_string(), |u| format!("\"{u}\""));
        Entry {
            request_id: id.into(),
            json: format!(r#"{{"request_id":"{id}","user_id":{user},"timestamp":"2026-01-14T10:30:00Z"}}"#),
        }
    }

    #[test]
    fn record_single_and_batch() {
        let f = Formatter::new(RecordFormat::Record, 1);
        let b = f.body(&[e("a", None)]);
        assert_eq!(b.bytes, e("a", None).json.as_bytes());
        assert_eq!((b.content_type, b.idempotency_key.as_str()), (CT_JSON, "a"));
        let f = Formatter::new(RecordFormat::Record, 5);
        let b = f.body(&[e("a", None), e("b", None)]);
        assert_eq!(b.bytes, format!("[{},{}]", e("a", None).json, e("b", None).json).as_bytes());
        assert_eq!(b.idempotency_key, format!("batch-{}", hex::encode(Sha256::digest(b"a,b"))));
    }

    #[test]
    fn cloudevents_have_every_field() {
        let f = Formatter::new(RecordFormat::CloudEvents, 1);
        let b = f.body(&[e("r1", Some("alice"))]);
        assert_eq!(b.content_type, CT_CLOUDEVENT);
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "r1");
        assert_eq!(v["source"], format!("llmproxy/{}", host_name()));
        assert_eq!(v["type"], "llm.usage");
        assert_eq!(v["subject"], "alice");
        assert_eq!(v["time"], "2026-01-14T10:30:00Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(
            v["data"],
            serde_json::from_str::<serde_json::Value>(&e("r1", Some("alice")).json).unwrap()
        );
        let f = Formatter::new(RecordFormat::CloudEvents, 10);
        let b = f.body(&[e("r1", None), e("r2", Some("bob"))]);
        assert_eq!(b.content_type, CT_CLOUDEVENTS_BATCH);
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(v[0]["subject"], "anonymous");
        assert_eq!(v[1]["subject"], "bob");
    }
}
