//! The `multipart/form-data` body of an audio request (RFC 7578): its boundary from the
//! Content-Type, and the `model` and `stream` fields read from the form with one memmem pass over
//! the body (the audio part is skipped, never copied). The body is the one the gateway already
//! holds, within `max_request_body`. Pure, no I/O; runs on core threads.

use memchr::memmem;

/// Fields the gateway reads from a form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FormInfo {
    pub model: Option<String>,
    pub stream: bool,
    pub parts: usize,
}

/// Why a body is not a well-formed form (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormError(pub &'static str);

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// Largest header section of one part.
const MAX_PART_HEAD: usize = 8 * 1024;
/// Longest `model` value kept.
const MAX_MODEL: usize = 512;

/// The boundary of a `multipart/form-data` Content-Type value, or an error saying what is wrong.
pub fn boundary(content_type: &[u8]) -> Result<&[u8], FormError> {
    let mut params = content_type.split(|&b| b == b';');
    let mime = params.next().unwrap_or_default().trim_ascii();
    if !mime.eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(FormError("expected a multipart/form-data body"));
    }
    for p in params {
        let p = p.trim_ascii();
        let Some(eq) = p.iter().position(|&b| b == b'=') else { continue };
        if !p[..eq].trim_ascii().eq_ignore_ascii_case(b"boundary") {
            continue;
        }
        let mut v = p[eq + 1..].trim_ascii();
        if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
            v = &v[1..v.len() - 1];
        }
        if v.is_empty() || v.len() > MAX_BOUNDARY || v.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(FormError("invalid multipart boundary"));
        }
        return Ok(v);
    }
    Err(FormError("multipart/form-data without a boundary"))
}

/// Walks the parts of `body` delimited by `boundary`; malformed framing is an error.
pub fn scan(body: &[u8], boundary: &[u8]) -> Result<FormInfo, FormError> {
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delim);
    // The first delimiter may open the body (no CRLF before it) or follow a preamble.
    let mut at = if body.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        finder.find(body).ok_or(FormError("multipart body without its boundary"))? + delim.len()
    };
    let mut info = FormInfo::default();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(info); // close delimiter (an epilogue may follow)
        }
        // Transport padding, then CRLF.
        let pad = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(FormError("malformed multipart delimiter line"));
        }
        let head_start = at + pad + 2;
        let head_len = if body[head_start..].starts_with(b"\r\n") {
            0
        } else {
            let window = &body[head_start..body.len().min(head_start + MAX_PART_HEAD)];
            memmem::find(window, b"\r\n\r\n")
                .ok_or(FormError("multipart part without the end of its headers"))?
                + 2
        };
        let head = &body[head_start..head_start + head_len];
        let content_start = head_start + head_len + 2;
        let end = finder
            .find(&body[content_start..])
            .map(|k| content_start + k)
            .ok_or(FormError("multipart body without its closing boundary"))?;
        let content = &body[content_start..end];
        info.parts += 1;
        match field_name(head)? {
            Some(b"model") => {
                let v =
                    std::str::from_utf8(content).map_err(|_| FormError("model field is not UTF-8"))?.trim();
                if v.len() > MAX_MODEL {
                    return Err(FormError("model field too long"));
                }
                info.model = (!v.is_empty()).then(|| v.to_string());
            }
            // Read as the backend's pydantic reads a form string (issue 16), or refused.
            Some(b"stream") => {
                info.stream = crate::request::form_bool(content, false).ok_or(FormError(
                    "form field \"stream\" must be one of true/false, 1/0, on/off, yes/no, t/f, y/n",
                ))?
            }
            _ => {}
        }
        at = end + delim.len();
    }
}

/// The `name` of a part from its `Content-Disposition: form-data; name="..."` header.
fn field_name(head: &[u8]) -> Result<Option<&[u8]>, FormError> {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            if line.trim_ascii().is_empty() {
                continue;
            }
            return Err(FormError("malformed multipart part header"));
        };
        if !line[..colon].trim_ascii().eq_ignore_ascii_case(b"content-disposition") {
            continue;
        }
        for p in line[colon + 1..].split(|&b| b == b';').skip(1) {
            let p = p.trim_ascii();
            if let Some(v) = p.strip_prefix(b"name=") {
                let v = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(b: &str, fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in fields {
            out.extend_from_slice(
                format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(file);
        out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        out
    }

    #[test]
    fn stream_is_read_as_pydantic_reads_a_form_string() {
        let read = |v: &str| scan(&form("b", &[("stream", v)], b"x"), b"b").map(|i| i.stream);
        assert_eq!(read("1"), Ok(true));
        assert_eq!(read("On"), Ok(true));
        assert_eq!(read("no"), Ok(false));
        assert_eq!(read(""), Ok(false));
        assert!(read("maybe").is_err());
        assert!(read(" true").is_err());
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(boundary(b"multipart/form-data; boundary=abc").unwrap(), b"abc");
        assert_eq!(boundary(b"Multipart/Form-Data;charset=utf-8; boundary=\"a b\"").unwrap(), b"a b");
        assert!(boundary(b"application/json").is_err());
        assert!(boundary(b"multipart/form-data").is_err());
        assert!(boundary(b"multipart/form-data; boundary=").is_err());
        assert!(boundary(format!("multipart/form-data; boundary={}", "x".repeat(71)).as_bytes()).is_err());
    }

    #[test]
    fn reads_model_and_stream_around_a_binary_file() {
        // The file holds bytes that look like delimiters and headers, but not the real one.
        let file = b"RIFF\x00\x01\r\n--bounda\r\n\r\nname=\"model\"\xff\xfe";
        for fields in [
            &[("model", "whisper-large-v3"), ("stream", "true")][..],
            &[("stream", "true"), ("model", "whisper-large-v3")][..],
        ] {
            let body = form("boundary42", fields, file);
            let info = scan(&body, b"boundary42").unwrap();
            assert_eq!(info.model.as_deref(), Some("whisper-large-v3"));
            assert!(info.stream);
            assert_eq!(info.parts, 3);
        }
        let body = form("zz9", &[], file);
        assert_eq!(scan(&body, b"zz9").unwrap(), FormInfo { model: None, stream: false, parts: 1 });
        // A preamble before the first delimiter is allowed.
        let mut with_preamble = b"ignored preamble\r\n".to_vec();
        with_preamble.extend(form("b", &[("model", "m")], b"x"));
        assert_eq!(scan(&with_preamble, b"b").unwrap().model.as_deref(), Some("m"));
    }

    #[test]
    fn malformed_forms_are_errors_at_every_truncation() {
        let body = form("XyZ", &[("model", "whisper-1")], b"0123456789");
        assert!(scan(&body, b"XyZ").is_ok());
        // Every prefix that cuts before the close delimiter is an error, never a panic.
        let close = body.len() - "--XyZ--\r\n".len() + 5;
        for k in 0..close {
            assert!(scan(&body[..k], b"XyZ").is_err(), "prefix {k}");
        }
        assert!(scan(&body, b"other").is_err());
        assert!(scan(b"--XyZ\r\nno colon here\r\n\r\nv\r\n--XyZ--", b"XyZ").is_err());
        assert!(scan(b"--XyZgarbage\r\n\r\n\r\n--XyZ--", b"XyZ").is_err());
        assert!(scan(b"{\"model\":\"m\"}", b"XyZ").is_err());
    }
}
