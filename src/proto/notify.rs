//! What the engine tells the application in messages of its own: a message handed back, a
//! refused Hello or Welcome, and the engine's Signals (`ChannelClosed` at the end of every
//! channel). Every one has origin engine and a status.

use crate::proto::message::{Header, Message, OpCode, Origin, ERROR_TEXT};
use crate::proto::status::Status;

/// Marks `m` as handed back by the engine: origin engine, status `status`; the rest of the
/// message is the application's, unchanged.
pub(crate) fn mark_handed_back(m: &mut Message, status: Status) {
    m.header.origin = Origin::Engine;
    m.header.status = status;
}

/// A HelloRequest or WelcomeRequest that could not even start comes back as `reply` (its
/// response opcode) with origin engine and `status`; text headers and body unchanged.
pub(crate) fn refusal(mut request: Message, reply: OpCode, status: Status) -> Message {
    request.header.opcode = reply;
    mark_handed_back(&mut request, status);
    request
}

/// Adds the OS's (or the decoder's) words for a failure to a notification, as the local-only
/// [`ERROR_TEXT`] header. A text too long for the header block is left out.
pub(crate) fn add_error_text(m: &mut Message, why: &str) {
    let _ = m.append_header(ERROR_TEXT, why);
}

/// Appends a `name:value` text header (a local-only one the engine adds); a value too long
/// for the header block is left out.
pub(crate) fn add_header(m: &mut Message, name: &str, value: &str) {
    let _ = m.append_header(name, value);
}

/// Removes the [`ERROR_TEXT`] lines from a message the engine handed back and the
/// application posts again: they are for the application, never for a peer.
pub(crate) fn strip_error_text(m: &mut Message) {
    strip_header(m, ERROR_TEXT);
}

/// Removes every `name:` line from `m`'s text headers (a local-only header).
pub(crate) fn strip_header(m: &mut Message, name: &str) {
    let prefix = format!("{name}:");
    let text = m.text_headers();
    if !text.windows(prefix.len()).any(|w| w == prefix.as_bytes()) {
        return;
    }
    let old = std::mem::take(m.text_headers_mut());
    for line in old.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(prefix.as_bytes()) {
            m.text_headers_mut().extend_from_slice(line);
        }
    }
}

/// Turns `m` into a Signal from the engine on `channel` (its buffers are cleared).
pub(crate) fn signal(mut m: Message, status: Status, channel: u16, message_id: u64) -> Message {
    m.reset();
    m.header = Header::new(OpCode::Signal);
    m.header.origin = Origin::Engine;
    m.header.status = status;
    m.header.channel = channel;
    m.header.message_id = message_id;
    m
}

/// The Signal that ends every channel: origin engine, status `ChannelClosed`, the message_id
/// of the peer's first frame or of the request that opened the channel.
pub(crate) fn channel_closed(m: Message, channel: u16, message_id: u64) -> Message {
    let mut m = signal(m, Status::ChannelClosed, channel, message_id);
    m.end = true;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_carry_only_what_they_say() {
        let mut m = Message::with_opcode(OpCode::Request);
        m.append_header("x", "1").unwrap();
        m.body_mut().extend_from_slice(b"payload");
        let s = channel_closed(m, 7, 42);
        assert_eq!(s.opcode(), OpCode::Signal);
        assert_eq!(s.header.origin, Origin::Engine);
        assert_eq!(s.status(), Status::ChannelClosed);
        assert_eq!((s.channel(), s.message_id()), (7, 42));
        assert!(s.text_headers().is_empty() && s.body().is_empty());
        assert!(s.is_channel_end());
        let mut back = Message::with_opcode(OpCode::Signal);
        mark_handed_back(&mut back, Status::ChannelClosed);
        assert!(
            !back.is_channel_end(),
            "a handed-back Signal is not the end"
        );
        let mut echoed = channel_closed(Message::new(), 7, 42);
        echoed.make_echo().unwrap();
        assert!(!echoed.is_channel_end(), "the application's own Signal now");
    }

    #[test]
    fn error_text_is_added_and_stripped_leaving_the_rest() {
        let mut m = Message::with_opcode(OpCode::Request);
        m.append_header("a", "1").unwrap();
        add_error_text(&mut m, "Connection refused (os error 111)");
        m.append_header("b", "2").unwrap();
        assert_eq!(
            m.header_value(ERROR_TEXT),
            Some("Connection refused (os error 111)")
        );
        strip_error_text(&mut m);
        assert_eq!(m.text_headers(), b"a:1\r\nb:2\r\n");
        strip_error_text(&mut m);
        assert_eq!(m.text_headers(), b"a:1\r\nb:2\r\n", "nothing else goes");
    }

    #[test]
    fn a_refusal_keeps_the_request_but_its_opcode() {
        let mut m = Message::with_opcode(OpCode::HelloRequest);
        m.header.message_id = 9;
        m.append_header("~connect_to", "tcp|h|1").unwrap();
        let r = refusal(m, OpCode::HelloResponse, Status::ConnectFailed);
        assert_eq!(r.opcode(), OpCode::HelloResponse);
        assert_eq!(
            (r.header.origin, r.status()),
            (Origin::Engine, Status::ConnectFailed)
        );
        assert_eq!(r.message_id(), 9);
        assert_eq!(r.header_value("~connect_to"), Some("tcp|h|1"));
    }
}
