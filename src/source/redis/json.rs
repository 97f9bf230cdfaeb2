//! The flat JSON objects the Redis source writes (`{"key": "text" | number | bool | null, ...}`):
//! the fleet's records and the dead-letter records (`envelope::dead_record`). Written and read
//! here, so the library needs no JSON crate. Nested values are not part of the format: a reader
//! refuses them with a reason, and the admin API shows such a record as unreadable rather than
//! dropping it.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Builds one object, fields in the order given.
#[derive(Debug, Default)]
pub(crate) struct Object {
    out: String,
}

impl Object {
    pub(crate) fn new() -> Self {
        Object {
            out: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        quote(&mut self.out, key);
        self.out.push(':');
    }

    pub(crate) fn text(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        quote(&mut self.out, value);
        self
    }

    pub(crate) fn number(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub(crate) fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub(crate) fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A value of a flat JSON object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    /// A number as written.
    Num(String),
    Bool(bool),
    Null,
}

impl Value {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Num(n) => n.parse().ok(),
            _ => None,
        }
    }
}

/// Parses `{"k": v, ...}` with string, number, boolean and null values; the error says what
/// is wrong and at which byte.
pub(crate) fn parse_flat(bytes: &[u8]) -> Result<BTreeMap<String, Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        text,
    };
    let mut out = BTreeMap::new();
    p.ws();
    p.expect(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = p.value()?;
            out.insert(key, value);
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(format!("expected , or }} at byte {}", p.i)),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }
    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at byte {}",
                b as char,
                self.i.saturating_sub(1)
            ))
        }
    }
    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                Ok(Value::Num(self.text[start..self.i].to_owned()))
            }
            _ => Err(format!("unsupported value at byte {}", self.i)),
        }
    }
    fn word(&mut self, w: &str, v: Value) -> Result<Value, String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("bad literal at byte {}", self.i))
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .text
            .get(self.i..self.i + 4)
            .ok_or("short \\u escape")?;
        let v = u32::from_str_radix(h, 16).map_err(|_| format!("bad \\u escape {h}"))?;
        self.i += 4;
        Ok(v)
    }
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while !matches!(self.peek(), Some(b'"' | b'\\') | None) {
                self.i += 1;
            }
            out.push_str(&self.text[start..self.i]);
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err("lone surrogate".into());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("bad surrogate pair".into());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or("bad code point")?
                        }
                        _ => return Err(format!("bad escape at byte {}", self.i)),
                    };
                    out.push(c);
                }
                _ => return Err("unterminated string".into()),
            }
        }
    }
}

/// Reads a flat object; `None` when the text is not one.
pub(crate) fn parse(text: &str) -> Option<BTreeMap<String, Value>> {
    parse_flat(text.as_bytes()).ok()
}

/// Field readers for a parsed object: a missing or mistyped field reads as empty, 0 or false.
pub(crate) trait Fields {
    fn text(&self, key: &str) -> String;
    fn number(&self, key: &str) -> u64;
    fn flag(&self, key: &str) -> bool;
}

impl Fields for BTreeMap<String, Value> {
    fn text(&self, key: &str) -> String {
        self.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    fn number(&self, key: &str) -> u64 {
        match self.get(key) {
            Some(v @ Value::Num(n)) => v.as_u64().unwrap_or_else(|| {
                // A number another writer (a Lua script's cjson) gave as a float.
                n.parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0)
                    .map_or(0, |f| f as u64)
            }),
            _ => 0,
        }
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let text = Object::new()
            .text("id", "h\"o\\st:1\n\u{1}é")
            .number("pid", 42)
            .bool("coordinated", true)
            .finish();
        let map = parse(&text).expect("parses");
        assert_eq!(map.text("id"), "h\"o\\st:1\n\u{1}é");
        assert_eq!(map.number("pid"), 42);
        assert!(map.flag("coordinated"));
        assert_eq!(parse("{}"), Some(BTreeMap::new()));
        assert_eq!(parse("{\"f\":1.5e3}").unwrap().number("f"), 1500);
        assert_eq!(parse("{\"a\":1,}"), None);
        assert_eq!(parse("nope"), None);
    }

    #[test]
    fn reads_what_the_source_writes() {
        let rec = br#"{"queue":"fila","reason":"permanent","error":"bad \"x\"\n\u0001","attempts":2,"ok":true,"n":null,"payload":"{\"\u00e9\":1} \ud83d\ude00"}"#;
        let m = parse_flat(rec).unwrap();
        assert_eq!(m["error"].as_str(), Some("bad \"x\"\n\u{1}"));
        assert_eq!(m["attempts"].as_u64(), Some(2));
        assert_eq!(m["payload"].as_str(), Some("{\"é\":1} 😀"));
        assert_eq!(m["ok"], Value::Bool(true));
        assert!(parse_flat(b"{\"a\":[1]}").is_err());
        assert!(parse_flat(b"{\"a\":1} x").is_err());
        assert!(parse_flat(b"not json").is_err());
        assert_eq!(parse_flat(b" { } ").unwrap().len(), 0);
    }
}
