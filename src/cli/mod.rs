//! The `tofu` command's building blocks.

pub mod alloc;
pub mod bench;
pub mod client;
pub mod os;
pub mod service;
pub mod soak;
#[cfg(feature = "tls")]
pub mod tls;

/// Escapes a string for JSON output.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
