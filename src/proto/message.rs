//! The message: a binary [`Header`], a block of text headers and a body.
//!
//! The message is tofu's whole API: its [`OpCode`] says what to do (listen, connect, send,
//! close), and every result comes back as a message. This module has no I/O; the wire image
//! of a message is produced and parsed by [`crate::proto::wire`].
//!
//! A message taken from a [`Pool`](crate::Pool) goes back to that pool when it is dropped,
//! keeping its buffers' capacity, so steady-state messaging allocates nothing.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::status::{Error, Status};

/// Channel number 0: "not assigned yet" (legal only on a posted Hello/Welcome request).
pub const CHANNEL_UNASSIGNED: u16 = 0;
/// Channel number 65535, reserved by the engine; never a real channel.
pub const CHANNEL_RESERVED: u16 = 65535;
/// The largest text-header block and the largest body, in bytes.
pub const MAX_SECTION_LEN: usize = u16::MAX as usize;
/// Text header the engine adds to its own notifications with the OS's words for a failure
/// (`~error:Connection refused (os error 111)`): on a refused Hello or Welcome, on messages
/// handed back at a close caused by a socket error or a bad frame, and on that channel's
/// final Signal. Local only: never sent (a handed-back message posted again loses it).
pub const ERROR_TEXT: &str = "~error";
/// Text header a TLS server adds to the HelloRequest of a client that presented a verified
/// certificate (mutual TLS, feature `tls`): `CN=<subject common name>` and `DNS=<name>` for
/// each DNS subject alternative name, separated by `, `. Local only: a received one is
/// replaced, and a HelloResponse posted back loses it.
///
/// ```
/// # let mut hello = tofu::Message::with_opcode(tofu::OpCode::HelloRequest);
/// # hello.append_header(tofu::message::PEER_IDENTITY, "CN=node-1, DNS=node-1.example").unwrap();
/// if let Some(who) = hello.header_value(tofu::message::PEER_IDENTITY) {
///     assert!(who.contains("CN=node-1"));
/// }
/// ```
pub const PEER_IDENTITY: &str = "~peer_identity";
/// Largest buffer kept as a thread's spare (a maximal text-header block or body).
const SPARE_MAX: usize = MAX_SECTION_LEN;

thread_local! {
    /// The buffers of the last pool-less message dropped on this thread, taken by the next
    /// [`Message::new`] here. Memory reuse only, per thread: no lock, no I/O; at most one
    /// pair of buffers of at most [`SPARE_MAX`] bytes each per thread.
    static SPARE: Cell<Option<(Vec<u8>, Vec<u8>)>> = const { Cell::new(None) };
}

/// Makes `text` and `body` (cleared here) this thread's spare buffers for its next
/// [`Message::new`] if it has none; otherwise (or when the thread is ending) they are freed.
pub(crate) fn offer_thread_spare(mut text: Vec<u8>, mut body: Vec<u8>) {
    text.clear();
    body.clear();
    let _ = SPARE.try_with(|s| match s.take() {
        None => s.set(Some((text, body))),
        kept => s.set(kept),
    });
}

/// What a message asks for. The numeric values are the wire values (bits 0-3 of `proto`).
///
/// ```
/// use tofu::{MessageType, OpCode, Role};
/// assert_eq!(OpCode::HelloRequest.message_type(), MessageType::Hello);
/// assert_eq!(OpCode::Request.role(), Role::Request);
/// assert_eq!(OpCode::Request.echo(), Ok(OpCode::Response));
/// assert_eq!(OpCode::try_from(5u8), Ok(OpCode::ByeRequest));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// Data that expects a Response (by application convention).
    Request = 0,
    /// Data answering a Request; needs a non-zero message_id.
    Response = 1,
    /// One-way data.
    Signal = 2,
    /// Connect to the address in `~connect_to`, then send this message as the first frame.
    HelloRequest = 3,
    /// The peer's answer to a HelloRequest.
    HelloResponse = 4,
    /// Ask the peer to close the channel gracefully.
    ByeRequest = 5,
    /// Answer to ByeRequest; its receiver closes the channel.
    ByeResponse = 6,
    /// With `oob` set (the default): abort the channel locally, nothing is sent.
    /// With `oob` clear: transmitted to the peer as a one-way close notice.
    ByeSignal = 7,
    /// Listen on the address in `~listen_on`. Never transmitted.
    WelcomeRequest = 8,
    /// The engine's answer to WelcomeRequest. Never transmitted; applications may not post it.
    WelcomeResponse = 9,
}

/// The family an [`OpCode`] belongs to.
///
/// ```
/// use tofu::{MessageType, OpCode};
/// let regular = OpCode::ALL.iter().filter(|o| o.message_type() == MessageType::Regular);
/// assert_eq!(regular.count(), 3); // Request, Response, Signal
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Request, Response, Signal.
    Regular,
    /// HelloRequest, HelloResponse.
    Hello,
    /// ByeRequest, ByeResponse, ByeSignal.
    Bye,
    /// WelcomeRequest, WelcomeResponse.
    Welcome,
}

/// The role an [`OpCode`] plays.
///
/// ```
/// use tofu::{OpCode, Role};
/// assert_eq!(OpCode::ByeSignal.role(), Role::Signal);
/// assert_eq!(OpCode::WelcomeResponse.role(), Role::Response);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Request, HelloRequest, ByeRequest, WelcomeRequest.
    Request,
    /// Response, HelloResponse, ByeResponse, WelcomeResponse: need a non-zero message_id.
    Response,
    /// Signal, ByeSignal.
    Signal,
}

impl OpCode {
    /// All ten opcodes in wire order.
    pub const ALL: [OpCode; 10] = [
        OpCode::Request,
        OpCode::Response,
        OpCode::Signal,
        OpCode::HelloRequest,
        OpCode::HelloResponse,
        OpCode::ByeRequest,
        OpCode::ByeResponse,
        OpCode::ByeSignal,
        OpCode::WelcomeRequest,
        OpCode::WelcomeResponse,
    ];

    /// The family of this opcode.
    pub const fn message_type(self) -> MessageType {
        match self {
            OpCode::Request | OpCode::Response | OpCode::Signal => MessageType::Regular,
            OpCode::HelloRequest | OpCode::HelloResponse => MessageType::Hello,
            OpCode::ByeRequest | OpCode::ByeResponse | OpCode::ByeSignal => MessageType::Bye,
            OpCode::WelcomeRequest | OpCode::WelcomeResponse => MessageType::Welcome,
        }
    }

    /// The role of this opcode.
    pub const fn role(self) -> Role {
        match self {
            OpCode::Request
            | OpCode::HelloRequest
            | OpCode::ByeRequest
            | OpCode::WelcomeRequest => Role::Request,
            OpCode::Response
            | OpCode::HelloResponse
            | OpCode::ByeResponse
            | OpCode::WelcomeResponse => Role::Response,
            OpCode::Signal | OpCode::ByeSignal => Role::Signal,
        }
    }

    /// The opcode of the answer: Request→Response, Signal→Signal, HelloRequest→HelloResponse,
    /// ByeRequest→ByeResponse, WelcomeRequest→WelcomeResponse; any other is `InvalidOpCode`.
    pub const fn echo(self) -> Result<OpCode, Error> {
        match self {
            OpCode::Request => Ok(OpCode::Response),
            OpCode::Signal => Ok(OpCode::Signal),
            OpCode::HelloRequest => Ok(OpCode::HelloResponse),
            OpCode::ByeRequest => Ok(OpCode::ByeResponse),
            OpCode::WelcomeRequest => Ok(OpCode::WelcomeResponse),
            _ => Err(Error::InvalidOpCode),
        }
    }
}

impl TryFrom<u8> for OpCode {
    type Error = Error;

    /// 0..=9 are opcodes; 10..=15 (and anything larger) are `InvalidOpCode`.
    fn try_from(raw: u8) -> Result<OpCode, Error> {
        OpCode::ALL
            .get(raw as usize)
            .copied()
            .ok_or(Error::InvalidOpCode)
    }
}

/// Who produced a message.
///
/// ```
/// use tofu::{Message, OpCode, Origin};
/// // What a receive loop checks to tell the engine's reports from the peer's messages.
/// let m = Message::with_opcode(OpCode::Signal);
/// assert_eq!(m.origin(), Origin::Application);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Origin {
    /// The local application (through `post` or `update_receiver`) or the remote peer.
    #[default]
    Application = 0,
    /// The engine: a status report, a returned message or an engine Signal.
    Engine = 1,
}

/// The fixed part of every message (tofu's `BinaryHeader`), in native form.
///
/// The text-header and body lengths are not stored here: they are the lengths of the
/// message's buffers, filled in when the message is encoded.
///
/// ```
/// use tofu::{Header, OpCode, Status};
/// let mut h = Header::new(OpCode::Response);
/// h.channel = 3;
/// h.message_id = 42;
/// assert_eq!((h.status, h.more), (Status::Success, false));
/// assert!(Header::new(OpCode::ByeSignal).oob, "a ByeSignal aborts locally by default");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(alias = "BinaryHeader")]
pub struct Header {
    /// Local channel number: 0 = unassigned, 1..=65534 = a channel, 65535 reserved.
    pub channel: u16,
    /// What the message asks for.
    pub opcode: OpCode,
    /// Application or engine.
    pub origin: Origin,
    /// More messages with the same message_id follow (Request, Response and Signal only).
    pub more: bool,
    /// tofu's `_internalA` bit: on a posted ByeSignal it means "abort locally, do not
    /// transmit"; on other messages it puts the message at the front of the send queue.
    /// Never set on received messages.
    #[doc(alias = "_internalA")]
    pub oob: bool,
    /// The status; `Success` on everything the application posts or a peer sends.
    pub status: Status,
    /// Correlation id; travels end to end unchanged. 0 on a post means "assign one".
    pub message_id: u64,
}

impl Header {
    /// The default header for an opcode: channel 0, origin application, status success,
    /// message_id 0, `more` clear, and `oob` set only for ByeSignal (a local abort).
    pub const fn new(opcode: OpCode) -> Header {
        Header {
            channel: CHANNEL_UNASSIGNED,
            opcode,
            origin: Origin::Application,
            more: false,
            oob: matches!(opcode, OpCode::ByeSignal),
            status: Status::Success,
            message_id: 0,
        }
    }
}

impl Default for Header {
    fn default() -> Header {
        Header::new(OpCode::Request)
    }
}

/// Why a text header could not be appended.
///
/// ```
/// use tofu::{Message, message::TextHeaderError};
/// let mut m = Message::new();
/// assert_eq!(m.append_header("bad:name", "x"), Err(TextHeaderError::BadName));
/// assert_eq!(m.append_header("name", ""), Err(TextHeaderError::BadValue));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextHeaderError {
    /// The name is empty after trimming, or contains `:`, CR or LF.
    BadName,
    /// The value is empty, or contains CR or LF.
    BadValue,
}

impl fmt::Display for TextHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextHeaderError::BadName => {
                "bad text-header name: it must be non-empty and contain no ':', CR or LF"
            }
            TextHeaderError::BadValue => {
                "bad text-header value: it must be non-empty and contain no CR or LF"
            }
        })
    }
}

impl std::error::Error for TextHeaderError {}

/// One parsed text header. Names are compared exactly (no case folding).
///
/// ```
/// let mut m = tofu::Message::new();
/// m.append_header("lang", "en")?;
/// let h = m.headers().next().unwrap();
/// assert_eq!((h.name_str(), h.value_str()), (Some("lang"), Some("en")));
/// # Ok::<(), tofu::message::TextHeaderError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextHeader<'a> {
    /// The name, as written (not trimmed).
    pub name: &'a [u8],
    /// The value, trimmed of spaces and tabs; may be empty.
    pub value: &'a [u8],
}

impl<'a> TextHeader<'a> {
    /// The name as text, if it is UTF-8.
    pub fn name_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.name).ok()
    }

    /// The value as text, if it is UTF-8.
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value).ok()
    }
}

/// Iterates the `name:value\r\n` lines of a text-header block with tofu's parser rules:
///
/// * empty lines are skipped;
/// * a line splits at its first `:`; the name is not trimmed, the value is trimmed of spaces
///   and tabs; a line without `:` is a name with an empty value;
/// * the last line may lack its CRLF;
/// * a line with an empty name ends the iteration.
///
/// ```
/// use tofu::TextHeaders;
/// let block = b"a: 1\r\nb:2\r\nflag\r\n";
/// let names: Vec<_> = TextHeaders::new(block).map(|h| h.name_str().unwrap()).collect();
/// assert_eq!(names, ["a", "b", "flag"]);
/// assert_eq!(TextHeaders::new(block).value_of("b"), Some(&b"2"[..]));
/// ```
#[derive(Clone, Debug)]
#[doc(alias = "TextHeaderIterator")]
pub struct TextHeaders<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> TextHeaders<'a> {
    /// Iterates over a raw block.
    pub fn new(buf: &'a [u8]) -> TextHeaders<'a> {
        TextHeaders { buf, pos: 0 }
    }

    /// The value of the first header named exactly `name`.
    pub fn value_of(mut self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        Iterator::find(&mut self, |h| h.name == name).map(|h| h.value)
    }
}

impl<'a> Iterator for TextHeaders<'a> {
    type Item = TextHeader<'a>;

    fn next(&mut self) -> Option<TextHeader<'a>> {
        loop {
            let rest = self.buf.get(self.pos..)?;
            if rest.is_empty() {
                return None;
            }
            let (line, advance) = match find_crlf(rest) {
                Some(i) => (&rest[..i], i + 2),
                None => (rest, rest.len()),
            };
            self.pos += advance;
            if line.is_empty() {
                continue;
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], trim_space_tab(&line[i + 1..])),
                None => (line, &line[line.len()..]),
            };
            if name.is_empty() {
                self.pos = self.buf.len();
                return None;
            }
            return Some(TextHeader { name, value });
        }
    }
}

impl std::iter::FusedIterator for TextHeaders<'_> {}

fn find_crlf(s: &[u8]) -> Option<usize> {
    s.windows(2).position(|w| w == b"\r\n")
}

fn trim_space_tab(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn trim_name(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// The next value of the process-wide message_id counter (starts at 1, shared by every engine).
#[doc(alias = "next_mid")]
pub fn next_message_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where a pooled [`Message`] goes back to: the one seam between this sans-I/O layer and the
/// engine. The engine's pool implements it; this layer only calls it, from `Message`'s
/// `Drop`. An implementation must not
/// block for long: it runs on whatever thread drops the message.
pub(crate) trait Recycle: Any + Send + Sync {
    /// Takes back the buffers of a dropped message (to keep or to free).
    fn recycle(self: Arc<Self>, text: Vec<u8>, body: Vec<u8>);
    /// This home as `Any`, so its owner can take its own type back without a new reference.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// A message: [`Header`], text headers and body.
///
/// Messages are moved, never shared: `post` consumes one, `wait_receive` hands one over.
/// A message that came from a [`Pool`](crate::Pool) returns to it on drop.
///
/// ```
/// use tofu::{Message, OpCode};
/// let mut m = Message::with_opcode(OpCode::Request).on_channel(1).with_body(b"payload");
/// m.append_header("trace-id", "abc")?;
/// assert_eq!(m.header_value("trace-id"), Some("abc"));
/// m.make_echo()?; // the Response to it: same channel, message_id and headers
/// assert_eq!((m.opcode(), m.body()), (OpCode::Response, &b"payload"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Message {
    /// The binary header.
    pub header: Header,
    text: Vec<u8>,
    body: Vec<u8>,
    pub(crate) home: Option<Arc<dyn Recycle>>,
    /// The length of a frame received from a peer that waits in a group's queue, 0 once
    /// handed to the application (counted by its group: the reactor stops reading the
    /// group's channels when too much waits).
    pub(crate) held: u32,
    /// The engine's last message of a channel (see [`is_channel_end`](Self::is_channel_end)).
    pub(crate) end: bool,
}

impl Message {
    /// A new message that belongs to no pool (a Request with default header, empty buffers).
    ///
    /// It reuses the buffers of the last pool-less message dropped on this thread, if any:
    /// a loop that builds messages with `new` / `with_opcode` and posts them allocates
    /// nothing per message once running. Small ones are encoded and dropped at once, on the
    /// posting thread; large ones are written and dropped by the engine's thread, which
    /// keeps their buffers with the channel for the posting thread's next post to make them
    /// its spare.
    pub fn new() -> Message {
        match SPARE.try_with(Cell::take) {
            Ok(Some((text, body))) => Message::with_buffers(text, body),
            // Nothing is allocated until a buffer is written (tofu starts both at 256
            // bytes): a body set once is allocated once, at its size.
            _ => Message::with_buffers(Vec::new(), Vec::new()),
        }
    }

    pub(crate) fn with_buffers(text: Vec<u8>, body: Vec<u8>) -> Message {
        Message {
            header: Header::default(),
            text,
            body,
            home: None,
            held: 0,
            end: false,
        }
    }

    /// A new message with the default header of `opcode`.
    pub fn with_opcode(opcode: OpCode) -> Message {
        let mut m = Message::new();
        m.header = Header::new(opcode);
        m
    }

    /// This message with `header.channel` set: the channel to post it to.
    ///
    /// ```
    /// use tofu::{Message, OpCode};
    /// let m = Message::with_opcode(OpCode::Signal).on_channel(7).with_body(b"hi");
    /// assert_eq!((m.channel(), m.body()), (7, &b"hi"[..]));
    /// ```
    pub fn on_channel(mut self, channel: u16) -> Message {
        self.header.channel = channel;
        self
    }

    /// This message with a copy of `bytes` as its body (see [`set_body`](Self::set_body)).
    pub fn with_body(mut self, bytes: &[u8]) -> Message {
        self.set_body(bytes);
        self
    }

    /// Shortcut for `header.opcode`.
    pub fn opcode(&self) -> OpCode {
        self.header.opcode
    }

    /// Shortcut for `header.channel`.
    pub fn channel(&self) -> u16 {
        self.header.channel
    }

    /// Shortcut for `header.message_id`.
    pub fn message_id(&self) -> u64 {
        self.header.message_id
    }

    /// Shortcut for `header.status`.
    pub fn status(&self) -> Status {
        self.header.status
    }

    /// Shortcut for `header.origin`.
    pub fn origin(&self) -> Origin {
        self.header.origin
    }

    /// True for a channel's final Signal: the engine's last message of that channel (origin
    /// engine, status `ChannelClosed`), after which nothing more of it comes and its number
    /// may name another channel later.
    ///
    /// Tell it this way, not by opcode, origin and status: a Signal the application posted
    /// and the engine hands back at a close looks the same (`Signal`, origin engine,
    /// `ChannelClosed`), and there may be many of those before the final one.
    ///
    /// ```
    /// use tofu::{Message, OpCode};
    /// let m = Message::with_opcode(OpCode::Signal);
    /// assert!(!m.is_channel_end()); // only the engine makes a channel's final Signal
    /// ```
    pub fn is_channel_end(&self) -> bool {
        self.end
    }

    /// Appends the line `name:value\r\n` (no space after the colon, as tofu writes it).
    ///
    /// The name is trimmed of spaces, tabs, CR and LF; it must then be non-empty and free of
    /// `:`, CR and LF. The value must be non-empty and free of CR and LF; it is not trimmed.
    pub fn append_header(&mut self, name: &str, value: &str) -> Result<(), TextHeaderError> {
        let name = trim_name(name.as_bytes());
        if name.is_empty() || name.iter().any(|&b| matches!(b, b':' | b'\r' | b'\n')) {
            return Err(TextHeaderError::BadName);
        }
        let value = value.as_bytes();
        if value.is_empty() || value.iter().any(|&b| matches!(b, b'\r' | b'\n')) {
            return Err(TextHeaderError::BadValue);
        }
        self.text.reserve(name.len() + value.len() + 3);
        self.text.extend_from_slice(name);
        self.text.push(b':');
        self.text.extend_from_slice(value);
        self.text.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Iterates the text headers.
    pub fn headers(&self) -> TextHeaders<'_> {
        TextHeaders::new(&self.text)
    }

    /// The value of the first text header named exactly `name`, if it is UTF-8.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers()
            .value_of(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The raw text-header block.
    pub fn text_headers(&self) -> &[u8] {
        &self.text
    }

    /// The raw text-header block, for direct editing. `post` rejects more than 65535 bytes.
    pub fn text_headers_mut(&mut self) -> &mut Vec<u8> {
        &mut self.text
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, for direct editing. `post` rejects more than 65535 bytes.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    /// Replaces the body with a copy of `bytes` (reusing the buffer).
    pub fn set_body(&mut self, bytes: &[u8]) {
        self.body.clear();
        self.body.extend_from_slice(bytes);
    }

    /// Back to a fresh state: default header, empty buffers (capacity kept).
    pub fn reset(&mut self) {
        self.header = Header::default();
        self.end = false;
        self.text.clear();
        self.body.clear();
    }

    /// Turns a received request into its answer in place (`opcode := opcode.echo()`), keeping
    /// message_id, `more`, text headers and body, and clearing origin, status and `oob`.
    pub fn make_echo(&mut self) -> Result<(), Error> {
        let op = self.header.opcode.echo()?;
        self.header.opcode = op;
        self.header.origin = Origin::Application;
        self.header.status = Status::Success;
        self.header.oob = false;
        self.end = false;
        Ok(())
    }

    /// A copy with its own buffers (belonging to no pool).
    pub fn duplicate(&self) -> Message {
        Message {
            header: self.header,
            text: self.text.clone(),
            body: self.body.clone(),
            home: None,
            held: 0,
            end: self.end,
        }
    }

    /// tofu's post-time validation (`check_and_prepare`), in tofu's order:
    ///
    /// 1. WelcomeResponse may not be posted → `InvalidOpCode`;
    /// 2. origin := application, status := success;
    /// 3. a response-role message with message_id 0 → `InvalidMessageId`;
    /// 4. `more` on a non-regular message → `InvalidMoreUsage`;
    /// 5. channel 0 on anything but Hello/Welcome requests, a Hello/Welcome request with a
    ///    channel, or channel 65535 → `InvalidChannelNumber`;
    /// 6. text headers over 65535 bytes → `InvalidHeadersLen`;
    /// 7. a Hello/Welcome request without text headers → `WrongAddress`;
    /// 8. body over 65535 bytes → `InvalidBodyLen`;
    /// 9. message_id 0 → the next value of [`next_message_id`].
    ///
    /// On failure the status byte is set to the error's status.
    #[doc(alias = "check_and_prepare")]
    pub fn validate_for_post(&mut self) -> Result<(), Error> {
        let r = self.check();
        if let Err(e) = r {
            self.header.status = e.status();
        }
        r
    }

    fn check(&mut self) -> Result<(), Error> {
        self.end = false;
        let h = &mut self.header;
        if h.opcode == OpCode::WelcomeResponse {
            return Err(Error::InvalidOpCode);
        }
        h.origin = Origin::Application;
        h.status = Status::Success;
        if h.opcode.role() == Role::Response && h.message_id == 0 {
            return Err(Error::InvalidMessageId);
        }
        if h.opcode.message_type() != MessageType::Regular && h.more {
            return Err(Error::InvalidMoreUsage);
        }
        let creates_channel = matches!(h.opcode, OpCode::HelloRequest | OpCode::WelcomeRequest);
        if (h.channel == CHANNEL_UNASSIGNED) != creates_channel || h.channel == CHANNEL_RESERVED {
            return Err(Error::InvalidChannelNumber);
        }
        if self.text.len() > MAX_SECTION_LEN {
            return Err(Error::InvalidHeadersLen);
        }
        if self.text.is_empty() && creates_channel {
            return Err(Error::WrongAddress);
        }
        if self.body.len() > MAX_SECTION_LEN {
            return Err(Error::InvalidBodyLen);
        }
        if self.header.message_id == 0 {
            self.header.message_id = next_message_id();
        }
        Ok(())
    }

    /// The capacity of the body buffer (what a pooled message keeps across uses).
    pub fn body_capacity(&self) -> usize {
        self.body.capacity()
    }

    /// The message left its group's queue for the application, or the application gave it
    /// to the engine: it is no longer a held received frame (see `GroupShared::hold`).
    pub(crate) fn release_hold(&mut self) {
        self.held = 0;
    }

    /// Capacities of the text-header and body buffers.
    pub(crate) fn capacities(&self) -> (usize, usize) {
        (self.text.capacity(), self.body.capacity())
    }

    pub(crate) fn take_buffers(&mut self) -> (Vec<u8>, Vec<u8>) {
        (
            std::mem::take(&mut self.text),
            std::mem::take(&mut self.body),
        )
    }
}

impl Default for Message {
    fn default() -> Message {
        Message::new()
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        let (mut text, mut body) = self.take_buffers();
        match self.home.take() {
            Some(home) => home.recycle(text, body),
            None if text.capacity() <= SPARE_MAX && body.capacity() <= SPARE_MAX => {
                text.clear();
                body.clear();
                // Replaces (and frees) an older spare; nothing when the thread is ending.
                let _ = SPARE.try_with(|s| s.set(Some((text, body))));
            }
            None => {} // freed
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("header", &self.header)
            .field("text_headers", &String::from_utf8_lossy(&self.text))
            .field("body_len", &self.body.len())
            .field("channel_end", &self.end)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(block: &str) -> Vec<(String, String)> {
        TextHeaders::new(block.as_bytes())
            .map(|h| {
                (
                    String::from_utf8(h.name.to_vec()).unwrap(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn p(n: &str, v: &str) -> (String, String) {
        (n.to_string(), v.to_string())
    }

    #[test]
    fn iterator_without_crlf() {
        assert_eq!(pairs("a: b"), vec![p("a", "b")]);
    }

    #[test]
    fn iterator_spec_cases() {
        assert_eq!(
            pairs("a: b\r\nc:  \r\nd:e\r\n\r\nf: g\r\n\r\n"),
            vec![p("a", "b"), p("c", ""), p("d", "e"), p("f", "g")]
        );
        assert_eq!(pairs(": ss\r\n\r\n"), vec![]);
        assert_eq!(pairs("a:b\r\n\r\n: ss\r\n\r\n"), vec![p("a", "b")]);
        assert_eq!(pairs(""), vec![]);
    }

    #[test]
    fn iterator_details() {
        // Only the first colon splits; names are not trimmed; no colon = empty value.
        assert_eq!(
            pairs(" x :a:b\r\nflag\r\n"),
            vec![p(" x ", "a:b"), p("flag", "")]
        );
        // The iterator is fused after an empty name.
        let mut it = TextHeaders::new(b":x\r\na:b");
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }

    #[test]
    fn append_and_find() {
        let mut m = Message::new();
        m.append_header("  name\t", "value with : colon ").unwrap();
        m.append_header("dup", "1").unwrap();
        m.append_header("dup", "2").unwrap();
        assert_eq!(
            m.text_headers(),
            b"name:value with : colon \r\ndup:1\r\ndup:2\r\n"
        );
        assert_eq!(m.header_value("dup"), Some("1"));
        assert_eq!(m.header_value("name"), Some("value with : colon"));
        assert_eq!(m.header_value("Name"), None);
        assert_eq!(m.append_header(" \r\n", "v"), Err(TextHeaderError::BadName));
        assert_eq!(m.append_header("a:b", "v"), Err(TextHeaderError::BadName));
        assert_eq!(m.append_header("a", ""), Err(TextHeaderError::BadValue));
        assert_eq!(
            m.append_header("a", "x\r\ny:z"),
            Err(TextHeaderError::BadValue)
        );
    }

    #[test]
    fn opcode_tables() {
        for (i, op) in OpCode::ALL.iter().enumerate() {
            assert_eq!(OpCode::try_from(i as u8), Ok(*op));
        }
        for raw in 10..=255u8 {
            assert_eq!(OpCode::try_from(raw), Err(Error::InvalidOpCode));
        }
        assert_eq!(OpCode::Request.echo(), Ok(OpCode::Response));
        assert_eq!(OpCode::Signal.echo(), Ok(OpCode::Signal));
        assert_eq!(OpCode::HelloRequest.echo(), Ok(OpCode::HelloResponse));
        assert_eq!(OpCode::ByeRequest.echo(), Ok(OpCode::ByeResponse));
        assert_eq!(OpCode::WelcomeRequest.echo(), Ok(OpCode::WelcomeResponse));
        for op in [
            OpCode::Response,
            OpCode::HelloResponse,
            OpCode::ByeResponse,
            OpCode::ByeSignal,
            OpCode::WelcomeResponse,
        ] {
            assert_eq!(op.echo(), Err(Error::InvalidOpCode));
        }
        assert_eq!(OpCode::ByeSignal.role(), Role::Signal);
        assert_eq!(OpCode::WelcomeResponse.role(), Role::Response);
        assert_eq!(OpCode::HelloRequest.message_type(), MessageType::Hello);
        assert!(Header::new(OpCode::ByeSignal).oob);
        assert!(!Header::new(OpCode::ByeRequest).oob);
    }

    #[test]
    fn sequential_message_ids() {
        let a = next_message_id();
        let b = next_message_id();
        assert!(a >= 1);
        assert!(b > a);
    }

    fn post_error(m: &mut Message) -> Error {
        let e = m.validate_for_post().expect_err("validation must fail");
        assert_eq!(m.status(), e.status());
        e
    }

    #[test]
    fn validation_errors_in_order() {
        // 1: WelcomeResponse cannot be posted.
        let mut m = Message::with_opcode(OpCode::WelcomeResponse);
        m.header.message_id = 1;
        assert_eq!(post_error(&mut m), Error::InvalidOpCode);

        // 3 before 5: a Response with id 0 and channel 0 reports the id.
        let mut m = Message::with_opcode(OpCode::Response);
        assert_eq!(post_error(&mut m), Error::InvalidMessageId);
        for op in [OpCode::HelloResponse, OpCode::ByeResponse] {
            let mut m = Message::with_opcode(op);
            m.header.channel = 5;
            assert_eq!(post_error(&mut m), Error::InvalidMessageId);
        }

        // 4: more on a non-regular message (checked before the channel).
        let mut m = Message::with_opcode(OpCode::ByeRequest);
        m.header.more = true;
        assert_eq!(post_error(&mut m), Error::InvalidMoreUsage);

        // 5: channel rules.
        let mut m = Message::new();
        assert_eq!(post_error(&mut m), Error::InvalidChannelNumber);
        let mut m = Message::with_opcode(OpCode::ByeRequest);
        assert_eq!(post_error(&mut m), Error::InvalidChannelNumber);
        let mut m = Message::with_opcode(OpCode::HelloRequest);
        m.header.channel = 9;
        m.append_header("~connect_to", "tcp|127.0.0.1|1").unwrap();
        assert_eq!(post_error(&mut m), Error::InvalidChannelNumber);
        let mut m = Message::new();
        m.header.channel = CHANNEL_RESERVED;
        assert_eq!(post_error(&mut m), Error::InvalidChannelNumber);

        // 6: text headers too long (before the missing-address check of 7).
        let mut m = Message::with_opcode(OpCode::Signal);
        m.header.channel = 1;
        m.text_headers_mut().resize(MAX_SECTION_LEN + 1, b'a');
        assert_eq!(post_error(&mut m), Error::InvalidHeadersLen);

        // 7: Hello/Welcome need some text header.
        for op in [OpCode::HelloRequest, OpCode::WelcomeRequest] {
            let mut m = Message::with_opcode(op);
            assert_eq!(post_error(&mut m), Error::WrongAddress);
        }

        // 8: body too long.
        let mut m = Message::new();
        m.header.channel = 1;
        m.body_mut().resize(MAX_SECTION_LEN + 1, 0);
        assert_eq!(post_error(&mut m), Error::InvalidBodyLen);
    }

    #[test]
    fn validation_success_normalises_and_assigns_id() {
        let mut m = Message::new();
        m.header.channel = 3;
        m.header.origin = Origin::Engine;
        m.header.status = Status::ChannelClosed;
        m.body_mut().resize(MAX_SECTION_LEN, 7);
        m.text_headers_mut().resize(MAX_SECTION_LEN, b'x');
        m.validate_for_post().unwrap();
        assert_eq!(m.origin(), Origin::Application);
        assert_eq!(m.status(), Status::Success);
        assert_ne!(m.message_id(), 0);

        let mut m = Message::with_opcode(OpCode::Request);
        m.header.channel = 3;
        m.header.message_id = 77;
        m.header.more = true;
        m.validate_for_post().unwrap();
        assert_eq!(m.message_id(), 77);
    }

    #[test]
    fn echo_in_place() {
        let mut m = Message::with_opcode(OpCode::Request);
        m.header.message_id = 9;
        m.header.more = true;
        m.set_body(b"abc");
        m.make_echo().unwrap();
        assert_eq!(m.opcode(), OpCode::Response);
        assert_eq!(m.message_id(), 9);
        assert_eq!(m.body(), b"abc");
        assert!(
            m.header.more,
            "more travels with the echo (Zig: 0x20 -> 0x21)"
        );
        let mut r = Message::with_opcode(OpCode::Response);
        assert_eq!(r.make_echo(), Err(Error::InvalidOpCode));
    }
}
