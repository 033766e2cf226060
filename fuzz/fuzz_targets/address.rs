//! `Address`: parsing, display, and the trip through a Hello/Welcome message.
//!
//! Input starting with a NUL byte builds an address from parts (byte 1: even = TCP, odd =
//! UDS; bytes 2-3: port; the rest: host or path), to reach values the parser would refuse.
//! Any other input is parsed as `tcp|host|port` / `uds|path` text (plain text files are seeds).
//!
//! Checked for every valid address: `validate` agrees with the parser; `Display` parses back
//! to an equal address; `format_connect` and `format_listen` succeed (also after earlier text
//! headers) and `Address::from_message` gives the same address back. An invalid address is
//! refused by `format_*` with `WrongAddress` and never displays as text that parses to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tofu::address::{CONNECT_TO, LISTEN_ON};
use tofu::{Address, Error, Message, OpCode};

fuzz_target!(|data: &[u8]| {
    if let [0, kind, p0, p1, rest @ ..] = data {
        let text = String::from_utf8_lossy(rest).into_owned();
        let a = if kind % 2 == 0 {
            Address::tcp(text, u16::from_be_bytes([*p0, *p1]))
        } else {
            Address::uds(text)
        };
        check_built(&a);
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = text.parse::<Address>() {
        assert_eq!(a.validate(), Ok(()), "parsed but invalid: {text:?}");
        check_valid(&a);
    }
});

fn check_built(a: &Address) {
    if a.validate().is_ok() {
        check_valid(a);
        return;
    }
    assert_ne!(a.to_string().parse::<Address>().as_ref(), Ok(a));
    let mut m = Message::new();
    assert_eq!(a.format_connect(&mut m), Err(Error::WrongAddress));
    assert_eq!(a.format_listen(&mut m), Err(Error::WrongAddress));
}

fn check_valid(a: &Address) {
    let shown = a.to_string();
    assert_eq!(
        shown.parse::<Address>().as_ref(),
        Ok(a),
        "display {shown:?}"
    );

    let mut m = Message::new();
    a.format_connect(&mut m).expect("a valid address formats");
    assert_eq!(m.opcode(), OpCode::HelloRequest);
    assert_eq!(
        m.header_value(CONNECT_TO),
        Some(shown.as_str()),
        "header value"
    );
    assert_eq!(
        Address::from_message(&m).as_ref(),
        Ok(a),
        "via {CONNECT_TO}"
    );

    let mut m = Message::new();
    m.append_header("x-app", "1").expect("a fixed header");
    a.format_listen(&mut m).expect("a valid address formats");
    assert_eq!(m.opcode(), OpCode::WelcomeRequest);
    assert_eq!(Address::from_message(&m).as_ref(), Ok(a), "via {LISTEN_ON}");
}
