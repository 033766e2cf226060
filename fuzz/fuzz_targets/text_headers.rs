//! Text headers: the `TextHeaders` parser on arbitrary bytes, and `append_header` followed by
//! parsing.
//!
//! The input is used twice, so plain text files are seeds:
//! * as a raw text-header block: no panic; the iterator terminates (at most one header per
//!   input byte) and stays finished; every name is non-empty and holds no `:` and no CRLF;
//!   every value is trimmed and holds no CRLF; `value_of` finds the first header of a name;
//!   the result equals a plain reference parser written from the documented rules;
//! * split at NUL bytes into name, value, name, value, ...: each pair goes through
//!   `append_header`; whatever it accepts parses back as the same name (trimmed as append
//!   trims it) and the same value (trimmed as the parser trims it), in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tofu::message::TextHeaderError;
use tofu::{Message, TextHeaders};

fuzz_target!(|data: &[u8]| {
    parse_block(data);
    append_then_parse(data);
});

fn parse_block(data: &[u8]) {
    let mut it = TextHeaders::new(data);
    let mut got = Vec::new();
    for h in it.by_ref() {
        assert!(got.len() < data.len(), "more headers than input bytes");
        assert!(!h.name.is_empty(), "empty name yielded");
        assert!(!contains(h.name, b"\r\n"), "CRLF in a name");
        assert!(!h.name.contains(&b':'), "colon in a name");
        assert!(!contains(h.value, b"\r\n"), "CRLF in a value");
        assert_eq!(trim(h.value), h.value, "value not trimmed");
        got.push((h.name, h.value));
    }
    assert!(it.next().is_none(), "iterator not fused");
    assert_eq!(got, reference(data), "differs from the documented rules");
    for (i, (name, _)) in got.iter().enumerate() {
        let first = got.iter().position(|(n, _)| n == name).unwrap_or(i);
        if let Ok(name) = std::str::from_utf8(name) {
            assert_eq!(TextHeaders::new(data).value_of(name), Some(got[first].1));
        }
    }
}

fn append_then_parse(data: &[u8]) {
    let mut m = Message::new();
    let mut accepted = Vec::new();
    let mut parts = data.split(|&b| b == 0);
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        let name = String::from_utf8_lossy(name);
        let value = String::from_utf8_lossy(value);
        let before = m.text_headers().len();
        match m.append_header(&name, &value) {
            Ok(()) => {
                let name = trim_name(name.as_bytes()).to_vec();
                let value = trim(value.as_bytes()).to_vec();
                accepted.push((name, value));
            }
            Err(e) => {
                assert_eq!(m.text_headers().len(), before, "a refused append wrote");
                let bad_name = trim_name(name.as_bytes()).is_empty()
                    || trim_name(name.as_bytes())
                        .iter()
                        .any(|b| matches!(b, b':' | b'\r' | b'\n'));
                let want = if bad_name {
                    TextHeaderError::BadName
                } else {
                    TextHeaderError::BadValue
                };
                assert_eq!(e, want, "{name:?}: {value:?}");
            }
        }
    }
    let parsed: Vec<(Vec<u8>, Vec<u8>)> = m
        .headers()
        .map(|h| (h.name.to_vec(), h.value.to_vec()))
        .collect();
    assert_eq!(parsed, accepted, "appended headers do not parse back");
}

/// tofu's rules, written out independently of the library's iterator.
fn reference(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut end = rest.len();
        let mut next = rest.len();
        for i in 0..rest.len().saturating_sub(1) {
            if rest[i] == b'\r' && rest[i + 1] == b'\n' {
                end = i;
                next = i + 2;
                break;
            }
        }
        let line = &rest[..end];
        rest = &rest[next..];
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => (&line[..c], trim(&line[c + 1..])),
            None => (line, &line[line.len()..]),
        };
        if name.is_empty() {
            break;
        }
        out.push((name, value));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn trim(s: &[u8]) -> &[u8] {
    trim_by(s, |b| matches!(b, b' ' | b'\t'))
}

fn trim_name(s: &[u8]) -> &[u8] {
    trim_by(s, |b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn trim_by(s: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    let start = s.iter().position(|&b| !strip(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !strip(b)).map_or(start, |i| i + 1);
    &s[start..end]
}
