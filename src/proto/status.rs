//! Statuses carried in every message header, and the matching [`Error`] type.
//!
//! The numeric values are part of tofu's behaviour (SPEC section 5): a status byte travels in
//! the header of every message the engine hands back to the application. Conversions never
//! panic: an unknown byte maps to [`Status::UnknownError`].

use std::fmt;

/// The outcome recorded in a message's status byte (tofu's `AmpeStatus`).
///
/// `Success` (0) is the normal value. Every other value has an [`Error`] variant of the same
/// name; [`Status::to_error`] and [`Error::status`] convert between the two.
///
/// ```
/// use tofu::{Error, Status};
/// assert_eq!(Status::Success.to_error(), Ok(()));
/// assert_eq!(Status::ConnectFailed.to_error(), Err(Error::ConnectFailed));
/// assert_eq!(Status::from(22u8), Status::ChannelClosed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[doc(alias = "AmpeStatus")]
pub enum Status {
    /// Everything went as expected.
    Success = 0,
    /// The feature is not implemented. What to do: nothing in this engine returns it today;
    /// treat it as a failure of the request that got it.
    NotImplementedYet = 1,
    /// A Hello/Welcome request carries no address header, or an address could not be
    /// formatted. What to do: build the request with `Address::format_connect` /
    /// `format_listen` (or use `ChannelGroup::connect` / `listen`); `Address::check` says what
    /// is wrong with the address.
    WrongAddress = 2,
    /// The operation is not allowed in the current state. What to do: check the order of
    /// your calls (for example, data before the channel exists).
    NotAllowed = 3,
    /// No message was given (tofu's null handle; Rust's ownership rules it out). What to do:
    /// nothing; kept for the status numbering.
    NullMessage = 4,
    /// The message is not valid for this operation. What to do: check its opcode and header
    /// against the operation.
    InvalidMessage = 5,
    /// The opCode is not one of the ten defined values, or not valid here: posting a
    /// WelcomeResponse (the engine makes those), or a peer sending an undefined opCode (its
    /// channel closes). What to do: post a request or data opcode; a peer that sends garbage
    /// is not a tofu peer.
    InvalidOpCode = 6,
    /// The text-header block is longer than 65535 bytes. What to do: move data to the body,
    /// or split the message (`more`).
    InvalidHeadersLen = 7,
    /// The body is longer than 65535 bytes. What to do: split the payload over several
    /// messages with the `more` flag set on all but the last.
    InvalidBodyLen = 8,
    /// The `more` flag is set on a message that is not Request, Response or Signal. What to
    /// do: clear it; only data messages come in parts.
    InvalidMoreUsage = 9,
    /// The channel number is 0 where a channel is required, or names no live channel (it
    /// closed: its final Signal is on its way or was received). What to do: use the number
    /// `post`/`connect` returned, and stop using it once its `ChannelClosed` Signal came.
    InvalidChannelNumber = 10,
    /// The channel belongs to another channel group. What to do: post through the group that
    /// opened (or accepted) the channel.
    InvalidMessageChannelGroup = 11,
    /// A response-role message has message_id 0. What to do: answer with the request's id
    /// (`Message::make_echo` keeps it).
    InvalidMessageId = 12,
    /// The address could not be parsed or resolved (the expected forms are `tcp|host|port`
    /// and `uds|path`). What to do: fix the address; it will not work on a retry.
    InvalidAddress = 13,
    /// The Unix-domain socket path does not exist (nobody listens there). What to do: start
    /// the listener first, or check the path.
    UdsPathNotFound = 14,
    /// The engine no longer accepts messages: it has stopped, and every post is refused with
    /// this. What to do: stop posting; make a new engine if work remains.
    NotificationDisabled = 15,
    /// The engine could not be woken up (its poller's waker failed; logged). What to do:
    /// treat the engine as broken and drop it.
    NotificationFailed = 16,
    /// The peer closed the connection (end of stream): the reason on messages handed back at
    /// that channel's close. What to do: reconnect if the conversation must go on.
    PeerDisconnected = 17,
    /// The connection failed (error or hang-up reported by the OS, or the poller could not
    /// watch it). What to do: reconnect; the `~error` text header says what the OS said.
    CommunicationFailed = 18,
    /// The pool had no message to give: `Engine::get(Allocation::PoolOnly)` on an empty pool.
    /// What to do: use `Allocation::Always`, or give messages back first. (Zig tofu also
    /// sent it as a Signal when reading paused; this engine pauses reading silently, see
    /// `ReceiveLimit`, so no receive loop meets it.)
    PoolEmpty = 19,
    /// Memory, a channel number or the engine's thread could not be had (all 65534 channel
    /// numbers in use, for example). What to do: close channels you no longer need; retry.
    AllocationFailed = 20,
    /// A message put into a group's queue by `update_receiver` (by the application, not a
    /// peer). What to do: whatever your application meant by it, typically "wake up and look
    /// at your state" or "stop".
    ReceiverUpdate = 21,
    /// The channel is closed. Every channel ends with one engine Signal of this status (after
    /// everything handed back at its close); a message handed back with it was posted to a
    /// channel that no longer exists. What to do: forget the channel number.
    ChannelClosed = 22,
    /// The engine or the channel group is shutting down: `wait_receive`/`receive` return it
    /// once the group is destroyed, or the engine is gone and its queue is drained; messages
    /// unsent at engine shutdown come back with it. What to do: stop using the group.
    ShutdownStarted = 23,
    /// An outgoing connection could not be established (refused, unreachable, out of
    /// descriptors). What to do: check that the peer listens; retry later.
    ConnectFailed = 24,
    /// A listening socket could not be created (the address is in use, permission denied,
    /// ...). What to do: the `~error` text header says what the OS said; choose another
    /// address or port.
    ListenFailed = 25,
    /// A listener failed and closed (an error on the listening socket). What to do: listen
    /// again. (Running out of descriptors only pauses accepting; it does not close the
    /// listener.)
    AcceptFailed = 26,
    /// Writing to the socket failed (the peer reset the connection, for example): the reason
    /// on the messages handed back at that close. What to do: reconnect and send them again.
    SendFailed = 27,
    /// Reading from the socket failed, or the peer started a frame and did not finish it
    /// within `EngineOptions::frame_timeout`. What to do: reconnect; a peer that keeps doing
    /// it is broken or hostile.
    RecvFailed = 28,
    /// A socket option could not be set. What to do: the log says which; usually a platform
    /// limit.
    SetsockoptFailed = 29,
    /// Application-level processing failed (for recipes; `RequestError::status` also maps a
    /// timed-out request to it). What to do: whatever the application's protocol says.
    ProcessingFailed = 30,
    /// Any other failure, and every status byte above 33. What to do: treat it as a failure;
    /// a byte above 33 came from a peer or an application that numbers statuses differently.
    UnknownError = 31,
    /// The channel's send queue is at its limit (`EngineOptions::send_limit`); the message
    /// was not queued and is handed back. What to do: post it again later, or use
    /// `ChannelGroup::send_timeout` / `send`, which wait for room. Not in Zig tofu, whose send
    /// queues are unbounded.
    SendQueueFull = 32,
    /// The TLS session of a `tls|` channel failed: the handshake (unknown certificate
    /// authority, a name that does not match, an expired certificate, no client certificate
    /// where one is required, a peer that does not speak TLS) or a record later on. The
    /// channel closes; the `~error` text header carries rustls's words. What to do: fix the
    /// certificates or the configuration (`EngineOptions::tls_client` / `tls_server`); a
    /// retry fails the same way. Not in Zig tofu, which has no TLS.
    TlsFailed = 33,
}

impl Status {
    /// Every status, in numeric order.
    pub const ALL: [Status; 34] = [
        Status::Success,
        Status::NotImplementedYet,
        Status::WrongAddress,
        Status::NotAllowed,
        Status::NullMessage,
        Status::InvalidMessage,
        Status::InvalidOpCode,
        Status::InvalidHeadersLen,
        Status::InvalidBodyLen,
        Status::InvalidMoreUsage,
        Status::InvalidChannelNumber,
        Status::InvalidMessageChannelGroup,
        Status::InvalidMessageId,
        Status::InvalidAddress,
        Status::UdsPathNotFound,
        Status::NotificationDisabled,
        Status::NotificationFailed,
        Status::PeerDisconnected,
        Status::CommunicationFailed,
        Status::PoolEmpty,
        Status::AllocationFailed,
        Status::ReceiverUpdate,
        Status::ChannelClosed,
        Status::ShutdownStarted,
        Status::ConnectFailed,
        Status::ListenFailed,
        Status::AcceptFailed,
        Status::SendFailed,
        Status::RecvFailed,
        Status::SetsockoptFailed,
        Status::ProcessingFailed,
        Status::UnknownError,
        Status::SendQueueFull,
        Status::TlsFailed,
    ];

    /// Converts a raw status byte; bytes above 33 give [`Status::UnknownError`].
    #[doc(alias = "raw_to_status")]
    pub const fn from_u8(raw: u8) -> Status {
        if (raw as usize) < Status::ALL.len() {
            Status::ALL[raw as usize]
        } else {
            Status::UnknownError
        }
    }

    /// The raw byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// `Ok(())` for `Success`, otherwise the error of the same name.
    #[doc(alias = "raw_to_error")]
    pub fn to_error(self) -> Result<(), Error> {
        match Error::from_status(self) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// True for `Success`.
    pub const fn is_success(self) -> bool {
        matches!(self, Status::Success)
    }
}

impl From<u8> for Status {
    fn from(raw: u8) -> Status {
        Status::from_u8(raw)
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> u8 {
        s as u8
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Every failure the engine reports: one variant per non-success [`Status`], same names.
///
/// ```
/// use tofu::{Error, Status};
/// let e: Box<dyn std::error::Error> = Box::new(Error::PoolEmpty);
/// println!("{e}");
/// assert_eq!(Error::ChannelClosed.status(), Status::ChannelClosed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[doc(alias = "AmpeError")]
#[allow(missing_docs)] // Each variant is documented on the `Status` of the same name.
pub enum Error {
    NotImplementedYet,
    WrongAddress,
    NotAllowed,
    NullMessage,
    InvalidMessage,
    InvalidOpCode,
    InvalidHeadersLen,
    InvalidBodyLen,
    InvalidMoreUsage,
    InvalidChannelNumber,
    InvalidMessageChannelGroup,
    InvalidMessageId,
    InvalidAddress,
    UdsPathNotFound,
    NotificationDisabled,
    NotificationFailed,
    PeerDisconnected,
    CommunicationFailed,
    PoolEmpty,
    AllocationFailed,
    ReceiverUpdate,
    ChannelClosed,
    ShutdownStarted,
    ConnectFailed,
    ListenFailed,
    AcceptFailed,
    SendFailed,
    RecvFailed,
    SetsockoptFailed,
    ProcessingFailed,
    UnknownError,
    SendQueueFull,
    TlsFailed,
}

impl Error {
    /// The status of the same name.
    #[doc(alias = "errorToStatus")]
    pub const fn status(self) -> Status {
        match self {
            Error::NotImplementedYet => Status::NotImplementedYet,
            Error::WrongAddress => Status::WrongAddress,
            Error::NotAllowed => Status::NotAllowed,
            Error::NullMessage => Status::NullMessage,
            Error::InvalidMessage => Status::InvalidMessage,
            Error::InvalidOpCode => Status::InvalidOpCode,
            Error::InvalidHeadersLen => Status::InvalidHeadersLen,
            Error::InvalidBodyLen => Status::InvalidBodyLen,
            Error::InvalidMoreUsage => Status::InvalidMoreUsage,
            Error::InvalidChannelNumber => Status::InvalidChannelNumber,
            Error::InvalidMessageChannelGroup => Status::InvalidMessageChannelGroup,
            Error::InvalidMessageId => Status::InvalidMessageId,
            Error::InvalidAddress => Status::InvalidAddress,
            Error::UdsPathNotFound => Status::UdsPathNotFound,
            Error::NotificationDisabled => Status::NotificationDisabled,
            Error::NotificationFailed => Status::NotificationFailed,
            Error::PeerDisconnected => Status::PeerDisconnected,
            Error::CommunicationFailed => Status::CommunicationFailed,
            Error::PoolEmpty => Status::PoolEmpty,
            Error::AllocationFailed => Status::AllocationFailed,
            Error::ReceiverUpdate => Status::ReceiverUpdate,
            Error::ChannelClosed => Status::ChannelClosed,
            Error::ShutdownStarted => Status::ShutdownStarted,
            Error::ConnectFailed => Status::ConnectFailed,
            Error::ListenFailed => Status::ListenFailed,
            Error::AcceptFailed => Status::AcceptFailed,
            Error::SendFailed => Status::SendFailed,
            Error::RecvFailed => Status::RecvFailed,
            Error::SetsockoptFailed => Status::SetsockoptFailed,
            Error::ProcessingFailed => Status::ProcessingFailed,
            Error::UnknownError => Status::UnknownError,
            Error::SendQueueFull => Status::SendQueueFull,
            Error::TlsFailed => Status::TlsFailed,
        }
    }

    /// The error of a status; `None` for `Success`.
    pub const fn from_status(s: Status) -> Option<Error> {
        Some(match s {
            Status::Success => return None,
            Status::NotImplementedYet => Error::NotImplementedYet,
            Status::WrongAddress => Error::WrongAddress,
            Status::NotAllowed => Error::NotAllowed,
            Status::NullMessage => Error::NullMessage,
            Status::InvalidMessage => Error::InvalidMessage,
            Status::InvalidOpCode => Error::InvalidOpCode,
            Status::InvalidHeadersLen => Error::InvalidHeadersLen,
            Status::InvalidBodyLen => Error::InvalidBodyLen,
            Status::InvalidMoreUsage => Error::InvalidMoreUsage,
            Status::InvalidChannelNumber => Error::InvalidChannelNumber,
            Status::InvalidMessageChannelGroup => Error::InvalidMessageChannelGroup,
            Status::InvalidMessageId => Error::InvalidMessageId,
            Status::InvalidAddress => Error::InvalidAddress,
            Status::UdsPathNotFound => Error::UdsPathNotFound,
            Status::NotificationDisabled => Error::NotificationDisabled,
            Status::NotificationFailed => Error::NotificationFailed,
            Status::PeerDisconnected => Error::PeerDisconnected,
            Status::CommunicationFailed => Error::CommunicationFailed,
            Status::PoolEmpty => Error::PoolEmpty,
            Status::AllocationFailed => Error::AllocationFailed,
            Status::ReceiverUpdate => Error::ReceiverUpdate,
            Status::ChannelClosed => Error::ChannelClosed,
            Status::ShutdownStarted => Error::ShutdownStarted,
            Status::ConnectFailed => Error::ConnectFailed,
            Status::ListenFailed => Error::ListenFailed,
            Status::AcceptFailed => Error::AcceptFailed,
            Status::SendFailed => Error::SendFailed,
            Status::RecvFailed => Error::RecvFailed,
            Status::SetsockoptFailed => Error::SetsockoptFailed,
            Status::ProcessingFailed => Error::ProcessingFailed,
            Status::UnknownError => Error::UnknownError,
            Status::SendQueueFull => Error::SendQueueFull,
            Status::TlsFailed => Error::TlsFailed,
        })
    }

    /// The error of a raw status byte; `None` for 0, `UnknownError` for bytes above 33.
    pub const fn from_u8(raw: u8) -> Option<Error> {
        Error::from_status(Status::from_u8(raw))
    }

    /// A short explanation for people.
    pub const fn description(self) -> &'static str {
        match self {
            Error::NotImplementedYet => "not implemented yet",
            Error::WrongAddress => "the message carries no usable address header",
            Error::NotAllowed => "operation not allowed in this state",
            Error::NullMessage => "no message",
            Error::InvalidMessage => "invalid message",
            Error::InvalidOpCode => "invalid opCode",
            Error::InvalidHeadersLen => "text headers longer than 65535 bytes",
            Error::InvalidBodyLen => "body longer than 65535 bytes",
            Error::InvalidMoreUsage => {
                "the `more` flag is only allowed on Request, Response and Signal"
            }
            Error::InvalidChannelNumber => {
                "channel number is 0 or names no live channel (never opened, or closed already)"
            }
            Error::InvalidMessageChannelGroup => "the channel belongs to another channel group",
            Error::InvalidMessageId => "a response needs a non-zero message_id",
            Error::InvalidAddress => "invalid or unresolvable address",
            Error::UdsPathNotFound => "Unix-domain socket path not found",
            Error::NotificationDisabled => "the engine is shutting down",
            Error::NotificationFailed => "the engine could not be woken",
            Error::PeerDisconnected => "peer disconnected",
            Error::CommunicationFailed => "communication failed",
            Error::PoolEmpty => "message pool empty",
            Error::AllocationFailed => "allocation failed",
            Error::ReceiverUpdate => "receiver update",
            Error::ChannelClosed => "channel closed",
            Error::ShutdownStarted => "shutdown started",
            Error::ConnectFailed => "connect failed",
            Error::ListenFailed => "listen failed",
            Error::AcceptFailed => "accept failed",
            Error::SendFailed => "send failed",
            Error::RecvFailed => "receive failed",
            Error::SetsockoptFailed => "setsockopt failed",
            Error::ProcessingFailed => "processing failed",
            Error::UnknownError => "unknown error",
            Error::SendQueueFull => "the channel's send queue is full; retry after it drains",
            Error::TlsFailed => "the TLS session failed (handshake or record); see the ~error text",
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.status()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_values_match_tofu() {
        assert_eq!(Status::Success as u8, 0);
        assert_eq!(Status::WrongAddress as u8, 2);
        assert_eq!(Status::InvalidAddress as u8, 13);
        assert_eq!(Status::PoolEmpty as u8, 19);
        assert_eq!(Status::ChannelClosed as u8, 22);
        assert_eq!(Status::ConnectFailed as u8, 24);
        assert_eq!(Status::UnknownError as u8, 31);
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn every_byte_converts_without_panic() {
        for b in 0..=255u8 {
            let s = Status::from(b);
            if b <= 33 {
                assert_eq!(u8::from(s), b);
            } else {
                assert_eq!(s, Status::UnknownError);
            }
        }
        assert_eq!(Error::from_u8(0), None);
        assert_eq!(Error::from_u8(200), Some(Error::UnknownError));
    }

    #[test]
    fn error_and_status_round_trip() {
        for s in Status::ALL {
            match s.to_error() {
                Ok(()) => assert_eq!(s, Status::Success),
                Err(e) => {
                    assert_eq!(e.status(), s);
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
