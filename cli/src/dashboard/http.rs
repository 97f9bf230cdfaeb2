//! Small HTTP helpers for the dashboard: query and form decoding, JSON and asset responses,
//! the token check.

use std::collections::HashMap;
use std::io::Read;

use tiny_http::{Header, Request, Response};

/// Largest request body read (forms are a few fields).
const MAX_BODY: u64 = 64 * 1024;

pub(crate) type Reply = Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header")
}

/// A response with the headers every answer carries: no caching, no sniffing, and a content
/// security policy that allows only this server's own script and style.
pub(crate) fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ))
}

pub(crate) fn json(status: u16, body: &serde_json::Value) -> Reply {
    reply(status, "application/json", body.to_string().into_bytes())
}

pub(crate) fn error(status: u16, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// `%XX` and `+` decoding of one query or form component.
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2` as a map (the last value of a repeated name wins).
pub(crate) fn params(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The request's path and its query parameters.
pub(crate) fn target(req: &Request) -> (String, HashMap<String, String>) {
    let url = req.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    (path.to_owned(), params(query))
}

/// The form body (`application/x-www-form-urlencoded`), at most 64 KiB. Read only after the
/// token was checked; a body without a `Content-Length` (chunked), or a longer one, is refused
/// before a byte of it is read.
pub(crate) fn form(req: &mut Request) -> Result<HashMap<String, String>, String> {
    match req.body_length() {
        None => return Err("Content-Length: required".into()),
        Some(n) if n as u64 > MAX_BODY => return Err("body larger than 64 KiB".into()),
        Some(_) => {}
    }
    let mut body = String::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_string(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    if body.len() as u64 > MAX_BODY {
        return Err("body larger than 64 KiB".into());
    }
    Ok(params(&body))
}

/// The token a request carries: `Authorization: Bearer T` only (a header, so it is checked
/// before any body is read).
pub(crate) fn token_of(req: &Request) -> Option<&str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right (only its length, which is not secret enough to matter and is checked last).
pub(crate) fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_tokens() {
        assert_eq!(decode("a+b%20c%2"), "a b c%2");
        assert_eq!(decode("%41%"), "A%");
        assert_eq!(params("q=fila%3Aa&x")["q"], "fila:a");
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cres", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3crett", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
    }
}
