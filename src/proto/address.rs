//! Addresses, in tofu's text syntax: `tcp|<host>|<port>`, `tls|<host>|<port>` and `uds|<path>`.
//!
//! A HelloRequest carries the address to connect to in its `~connect_to` text header; a
//! WelcomeRequest carries the address to listen on in `~listen_on`. Both headers travel to the
//! peer unchanged (tofu sends the HelloRequest with its headers).
//!
//! * `tcp||7099` (empty host) means all IPv4 interfaces for a listener.
//! * A host may be an IPv4 or IPv6 literal or a DNS name, at most 255 bytes.
//! * On Linux a UDS path starting with `@` names an abstract socket (`@name`); elsewhere the
//!   socket layer refuses it when the socket is created.
//! * An empty UDS listen path makes the engine choose a temporary path.
//! * `tls|host|port` is TCP with TLS over it (feature `tls`): the same host and port rules;
//!   a client checks the server's certificate against the host part.
//!
//! Unlike Zig tofu, malformed values (four or more `|` parts, an unknown protocol token, an
//! over-long host or path, a `|` inside a host or path) are errors, never truncation or UB.

use std::fmt;
use std::str::FromStr;

use crate::proto::message::{Header, Message, OpCode};
use crate::proto::status::Error;

/// Text-header name of a HelloRequest's address.
pub const CONNECT_TO: &str = "~connect_to";
/// Text-header name of a WelcomeRequest's address.
pub const LISTEN_ON: &str = "~listen_on";
/// tofu's default port.
pub const DEFAULT_PORT: u16 = 7099;
/// Longest host, in bytes.
pub const MAX_HOST_LEN: usize = 255;
/// Size of the largest `sun_path` of the platforms tofu runs on (Linux and Windows: 108
/// bytes, its terminating NUL included): a UDS path (or abstract name after `@`) of more than
/// `SUN_PATH_LEN - 1` bytes is not an address anywhere. Whether a path fits *this* platform
/// (104 bytes on macOS and the BSDs: [`UDS_PATH_MAX`](crate::address::UDS_PATH_MAX)) and
/// whether it may be an abstract name (Linux only) is the socket layer's check, made when the
/// socket is created.
pub const SUN_PATH_LEN: usize = 108;

/// Where to connect or listen.
///
/// ```
/// use tofu::Address;
/// let a: Address = "tcp|127.0.0.1|7099".parse()?; // or an AddressError saying what is wrong
/// assert_eq!(a, Address::tcp("127.0.0.1", 7099));
/// assert_eq!(a.to_string(), "tcp|127.0.0.1|7099");
/// let sock: core::net::SocketAddr = "[::1]:80".parse().unwrap(); // a value, no socket
/// assert_eq!(Address::from(sock), Address::tcp("::1", 80));
/// assert_eq!(Address::from(std::path::Path::new("/run/app.sock")), Address::uds("/run/app.sock"));
/// # Ok::<(), tofu::AddressError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP endpoint: host (IP literal, DNS name, or empty for "all interfaces") and port.
    Tcp {
        /// Host name or IP literal; empty means all IPv4 interfaces (listeners only).
        host: String,
        /// Port number.
        port: u16,
    },
    /// TCP with TLS (rustls) over it, feature `tls`: host and port as for [`Address::Tcp`];
    /// a client checks the server's certificate against `host` (a DNS name or an IP literal).
    /// The frames inside are tofu's; only the byte stream is encrypted. Zig tofu has no TLS.
    Tls {
        /// Host name or IP literal; empty means all IPv4 interfaces (listeners only).
        host: String,
        /// Port number.
        port: u16,
    },
    /// A Unix-domain stream socket: a filesystem path, or `@name` for a Linux abstract name.
    Uds {
        /// The path; empty (listeners only) means "choose a temporary path".
        path: String,
    },
}

impl Address {
    /// A TCP address.
    pub fn tcp(host: impl Into<String>, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    /// A TLS address (TCP with TLS over it; see [`Address::Tls`]).
    ///
    /// ```
    /// let a = tofu::Address::tls("example.com", 7443);
    /// assert_eq!(a.to_string(), "tls|example.com|7443");
    /// assert_eq!("tls|example.com|7443".parse(), Ok(a));
    /// ```
    pub fn tls(host: impl Into<String>, port: u16) -> Address {
        Address::Tls {
            host: host.into(),
            port,
        }
    }

    /// True for a `tls|` address.
    pub fn is_tls(&self) -> bool {
        matches!(self, Address::Tls { .. })
    }

    /// The TCP port of a `tcp|` or `tls|` address.
    pub fn port(&self) -> Option<u16> {
        match self {
            Address::Tcp { port, .. } | Address::Tls { port, .. } => Some(*port),
            Address::Uds { .. } => None,
        }
    }

    /// A Unix-domain socket address.
    pub fn uds(path: impl Into<String>) -> Address {
        Address::Uds { path: path.into() }
    }

    /// Checks the syntax: host at most 255 bytes, path shorter than [`SUN_PATH_LEN`], no `|`
    /// or NUL in host or path, no space or tab at the end of a path, no `host:port` in the
    /// host. Errors are `InvalidAddress`; [`check`](Self::check) says what is wrong. (Limits
    /// of the platform are checked when the socket is created: see [`SUN_PATH_LEN`].)
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(Error::from)
    }

    /// [`validate`](Self::validate), with an error that names the part that is wrong.
    ///
    /// ```
    /// use tofu::Address;
    /// let e = Address::tcp("127.0.0.1:7099", 0).check().unwrap_err();
    /// assert!(e.to_string().contains("give the port as the third part"), "{e}");
    /// ```
    pub fn check(&self) -> Result<(), AddressError> {
        let bad = |problem: String| Err(AddressError::new(&self.to_string(), problem));
        match self {
            Address::Tcp { host, .. } | Address::Tls { host, .. } => {
                if host.len() > MAX_HOST_LEN {
                    return bad(format!(
                        "the host is {} bytes long; at most {MAX_HOST_LEN}",
                        host.len()
                    ));
                }
                if host.contains(['|', '\0', '\r', '\n']) {
                    return bad(format!(
                        "the host {host:?} contains '|', NUL or a line break"
                    ));
                }
                if host.contains([' ', '\t']) {
                    return bad(format!(
                        "the host {host:?} contains a space or tab; a host name or IP address \
                         has none"
                    ));
                }
                // An IPv6 literal has two colons or more; one colon is `host:port`.
                if host.matches(':').count() == 1 {
                    return bad(format!(
                        "the host {host:?} looks like host:port; give the port as the third \
                         part ({}|host|port)",
                        if self.is_tls() { "tls" } else { "tcp" }
                    ));
                }
            }
            Address::Uds { path } => {
                // A filesystem path needs room for its NUL; an abstract name (after `@`) has
                // a leading NUL instead, so `@` plus up to SUN_PATH_LEN - 1 bytes fit.
                let too_long = if path.starts_with('@') {
                    path.len() > SUN_PATH_LEN
                } else {
                    path.len() >= SUN_PATH_LEN
                };
                if too_long {
                    return bad(format!(
                        "the path is {} bytes long; a Unix domain socket path has fewer than {SUN_PATH_LEN}",
                        path.len()
                    ));
                }
                if path.contains(['|', '\0', '\r', '\n']) {
                    return bad(format!(
                        "the path {path:?} contains '|', NUL or a line break"
                    ));
                }
                // The path ends the header value, and header values are read back trimmed:
                // a trailing space or tab would be lost on the way (`uds| ` would even turn
                // into the empty "temporary path").
                if path.ends_with([' ', '\t']) {
                    return bad(format!(
                        "the path {path:?} ends in a space or tab, which a text header loses"
                    ));
                }
            }
        }
        Ok(())
    }

    /// [`check`](Self::check) for a connect: port 0 (any free port) is for a listen only.
    pub(crate) fn check_connect(&self) -> Result<(), AddressError> {
        self.check()?;
        if self.port() == Some(0) {
            return Err(AddressError {
                well_formed: true,
                ..AddressError::new(
                    &self.to_string(),
                    "port 0 cannot be connected to (it asks for any free port: a listen's \
                     choice; the listener's address says which port it got)"
                        .to_string(),
                )
            });
        }
        Ok(())
    }

    /// Parses `tcp|host|port`, `tls|host|port` or `uds|path`, with an error that names the
    /// expected form and the part that is wrong (`str::parse` is the same function; the
    /// error converts to [`Error::InvalidAddress`]).
    ///
    /// ```
    /// use tofu::Address;
    /// assert_eq!(Address::parse("tcp|localhost|7099"), Ok(Address::tcp("localhost", 7099)));
    /// let e = Address::parse("127.0.0.1:7099").unwrap_err();
    /// assert!(e.to_string().contains("tcp|host|port"), "{e}");
    /// ```
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let bad = |problem: &str| Err(AddressError::new(s, problem.to_string()));
        if !s.contains('|') {
            if s.contains("://") {
                return bad("tofu addresses are not URLs");
            }
            return bad("there is no '|' between the parts");
        }
        let mut parts = s.split('|');
        let proto = parts.next().unwrap_or("");
        let second = parts.next().unwrap_or("");
        let third = parts.next();
        if parts.next().is_some() {
            return bad("too many '|'");
        }
        let addr = match (proto, third) {
            ("uds", None) => Address::uds(second),
            ("uds", Some(_)) => return bad("uds takes one part after 'uds|': the path"),
            ("tcp", None) => return bad("tcp needs a host and a port: tcp|host|port"),
            ("tls", None) => return bad("tls needs a host and a port: tls|host|port"),
            ("tcp" | "tls", Some(port)) => {
                let port = match port.parse::<u16>() {
                    Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => p,
                    _ => {
                        return Err(AddressError::new(
                            s,
                            format!("the port {port:?} is not a number from 0 to 65535"),
                        ))
                    }
                };
                if proto == "tls" {
                    Address::tls(second, port)
                } else {
                    Address::tcp(second, port)
                }
            }
            _ => {
                return Err(AddressError::new(
                    s,
                    format!("unknown protocol {proto:?}: tcp, tls or uds"),
                ))
            }
        };
        addr.check().map_err(|e| AddressError::new(s, e.problem))?;
        Ok(addr)
    }

    /// Makes `msg` a HelloRequest to this address: replaces its header with
    /// `Header::new(HelloRequest)` (channel 0, message_id 0) and appends `~connect_to`.
    /// Earlier text headers are kept. An invalid address is `WrongAddress`.
    pub fn format_connect(&self, msg: &mut Message) -> Result<(), Error> {
        self.format(msg, OpCode::HelloRequest, CONNECT_TO)
    }

    /// Makes `msg` a WelcomeRequest for this address (header replaced, `~listen_on` appended).
    pub fn format_listen(&self, msg: &mut Message) -> Result<(), Error> {
        self.format(msg, OpCode::WelcomeRequest, LISTEN_ON)
    }

    fn format(&self, msg: &mut Message, op: OpCode, name: &str) -> Result<(), Error> {
        self.validate().map_err(|_| Error::WrongAddress)?;
        let value = self.to_string();
        msg.header = Header::new(op);
        msg.append_header(name, &value)
            .map_err(|_| Error::WrongAddress)
    }

    /// Puts this address in place of the one `msg` carries (its first `~connect_to` or
    /// `~listen_on`, by its opcode; appended when it has none): the engine reports where a
    /// listener is really bound. Other text headers keep their order.
    pub(crate) fn replace_in(&self, msg: &mut Message) -> Result<(), Error> {
        let name = match msg.opcode() {
            OpCode::HelloRequest | OpCode::HelloResponse => CONNECT_TO,
            OpCode::WelcomeRequest | OpCode::WelcomeResponse => LISTEN_ON,
            _ => return Err(Error::InvalidAddress),
        };
        let old = std::mem::take(msg.text_headers_mut());
        let mut replaced = false;
        for line in old.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let ours = !replaced
                && line
                    .strip_prefix(name.as_bytes())
                    .is_some_and(|r| r.first() == Some(&b':'));
            let out = msg.text_headers_mut();
            if ours {
                replaced = true;
                out.extend_from_slice(format!("{name}:{self}").as_bytes());
            } else {
                out.extend_from_slice(line);
            }
            out.extend_from_slice(b"\r\n");
        }
        if !replaced {
            msg.append_header(name, &self.to_string())
                .map_err(|_| Error::WrongAddress)?;
        }
        Ok(())
    }

    /// The address a Hello (`~connect_to`) or Welcome (`~listen_on`) message carries: the
    /// first header of that name. Missing or malformed → `InvalidAddress`.
    pub fn from_message(msg: &Message) -> Result<Address, Error> {
        let name = match msg.opcode() {
            OpCode::HelloRequest | OpCode::HelloResponse => CONNECT_TO,
            OpCode::WelcomeRequest | OpCode::WelcomeResponse => LISTEN_ON,
            _ => return Err(Error::InvalidAddress),
        };
        let value = msg.headers().value_of(name).ok_or(Error::InvalidAddress)?;
        let text = std::str::from_utf8(value).map_err(|_| Error::InvalidAddress)?;
        Address::parse(text).map_err(Error::from)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// [`Address::parse`]: `tcp|host|port` or `uds|path`, with an error that says what is
    /// wrong (it converts to [`Error::InvalidAddress`]).
    fn from_str(s: &str) -> Result<Address, AddressError> {
        Address::parse(s)
    }
}

impl From<&std::path::Path> for Address {
    /// A Unix domain socket address for a path (not valid UTF-8 is replaced lossily).
    fn from(path: &std::path::Path) -> Address {
        Address::uds(path.to_string_lossy().into_owned())
    }
}

/// Why a text or an [`Address`] is not a valid address: the input, and what is wrong with
/// it, in words that name the expected form (`tcp|host|port` or `uds|path`).
///
/// ```
/// let e = tofu::Address::parse("tcp://127.0.0.1:7099").unwrap_err();
/// println!("{e}"); // says which form was expected and what is wrong
/// assert_eq!(tofu::Error::from(e), tofu::Error::InvalidAddress);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressError {
    input: String,
    problem: String,
    /// The input is a well-formed address that cannot be used so (port 0 for a connect):
    /// the error does not list the forms then.
    well_formed: bool,
}

impl AddressError {
    fn new(input: &str, problem: String) -> AddressError {
        AddressError {
            input: input.to_string(),
            problem,
            well_formed: false,
        }
    }

    /// What is wrong, without the input.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.well_formed {
            return write!(f, "{:?}: {}", self.input, self.problem);
        }
        write!(
            f,
            "{:?} is not a tofu address: {} (expected tcp|host|port, tls|host|port or uds|path)",
            self.input, self.problem
        )
    }
}

impl std::error::Error for AddressError {}

impl From<AddressError> for Error {
    /// Every address error is the status `InvalidAddress`.
    fn from(_: AddressError) -> Error {
        Error::InvalidAddress
    }
}

impl fmt::Display for Address {
    /// The header value: `tcp|host|port`, `tls|host|port` or `uds|path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } => write!(f, "tcp|{host}|{port}"),
            Address::Tls { host, port } => write!(f, "tls|{host}|{port}"),
            Address::Uds { path } => write!(f, "uds|{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let a: Address = "tcp|127.0.0.1|7099".parse().unwrap();
        assert_eq!(a, Address::tcp("127.0.0.1", 7099));
        assert_eq!(a.to_string(), "tcp|127.0.0.1|7099");
        let a: Address = "tcp||80".parse().unwrap();
        assert_eq!(a, Address::tcp("", 80));
        let a: Address = "tcp|::1|65535".parse().unwrap();
        assert_eq!(a, Address::tcp("::1", 65535));
        let a: Address = "uds|/tmp/x.port".parse().unwrap();
        assert_eq!(a, Address::uds("/tmp/x.port"));
        assert_eq!(a.to_string(), "uds|/tmp/x.port");
        let a: Address = "uds|".parse().unwrap();
        assert_eq!(a, Address::uds(""));
        let a: Address = "tls|example.com|7443".parse().unwrap();
        assert_eq!(a, Address::tls("example.com", 7443));
        assert_eq!(
            (a.to_string().as_str(), a.is_tls(), a.port()),
            ("tls|example.com|7443", true, Some(7443))
        );
        assert!(Address::parse("tls|h")
            .unwrap_err()
            .to_string()
            .contains("tls|host|port"));
        assert!(Address::parse("tls|h:1|2")
            .unwrap_err()
            .problem()
            .contains("(tls|host|port)"));
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "",
            "tcp",
            "tcp|host",
            "tcp|h|p",
            "tcp|h|-1",
            "tcp|h|+1",
            "tcp|h|65536",
            "tcp|h|",
            "tcp|h|1|x",
            "uds|a|b|c",
            "udp|h|1",
            "uds|a|1",
            "xyz|/tmp/a",
            "|a",
        ] {
            assert_eq!(
                bad.parse::<Address>().map_err(Error::from),
                Err(Error::InvalidAddress),
                "{bad:?}"
            );
        }
        let long_host = format!("tcp|{}|1", "h".repeat(MAX_HOST_LEN + 1));
        assert!(long_host.parse::<Address>().is_err());
        let ok_host = format!("tcp|{}|1", "h".repeat(MAX_HOST_LEN));
        assert!(ok_host.parse::<Address>().is_ok());
        let long_path = format!("uds|/{}", "p".repeat(SUN_PATH_LEN));
        assert!(long_path.parse::<Address>().is_err());
        let max_path = format!("uds|/{}", "p".repeat(SUN_PATH_LEN - 2));
        assert!(max_path.parse::<Address>().is_ok());
    }

    #[test]
    fn format_into_messages() {
        let mut m = Message::new();
        m.header.message_id = 99;
        m.header.channel = 4;
        m.append_header("x-app", "1").unwrap();
        Address::tcp("127.0.0.1", 7099)
            .format_connect(&mut m)
            .unwrap();
        assert_eq!(m.opcode(), OpCode::HelloRequest);
        assert_eq!(m.message_id(), 0);
        assert_eq!(m.channel(), 0);
        assert_eq!(
            m.text_headers(),
            b"x-app:1\r\n~connect_to:tcp|127.0.0.1|7099\r\n"
        );
        assert_eq!(
            Address::from_message(&m),
            Ok(Address::tcp("127.0.0.1", 7099))
        );

        let mut m = Message::new();
        Address::uds("/tmp/s").format_listen(&mut m).unwrap();
        assert_eq!(m.opcode(), OpCode::WelcomeRequest);
        assert_eq!(m.header_value(LISTEN_ON), Some("uds|/tmp/s"));
        assert_eq!(Address::from_message(&m), Ok(Address::uds("/tmp/s")));

        let mut m = Message::new();
        assert_eq!(
            Address::tcp("a|b", 1).format_connect(&mut m),
            Err(Error::WrongAddress)
        );
        assert_eq!(
            Address::uds("x".repeat(SUN_PATH_LEN)).format_listen(&mut m),
            Err(Error::WrongAddress)
        );
    }

    #[test]
    fn replace_in_keeps_the_other_headers_in_order() {
        let mut m = Message::new();
        m.append_header("a", "1").unwrap();
        Address::tcp("127.0.0.1", 0).format_listen(&mut m).unwrap();
        m.append_header("b", "2").unwrap();
        m.header.opcode = OpCode::WelcomeResponse;
        Address::tcp("127.0.0.1", 40001).replace_in(&mut m).unwrap();
        assert_eq!(
            m.text_headers(),
            b"a:1\r\n~listen_on:tcp|127.0.0.1|40001\r\nb:2\r\n"
        );
        assert_eq!(
            Address::from_message(&m),
            Ok(Address::tcp("127.0.0.1", 40001))
        );
    }

    #[test]
    fn parse_errors_name_the_expected_form_and_the_wrong_part() {
        for (input, says) in [
            ("127.0.0.1:7099", "no '|'"),
            ("tcp://127.0.0.1:7099", "not URLs"),
            ("tcp|h", "tcp|host|port"),
            ("tcp|h|99999", "\"99999\" is not a number from 0 to 65535"),
            ("tcp|h|-1", "\"-1\" is not a number"),
            ("udp|h|1", "unknown protocol \"udp\""),
            ("tcp|a|1|2", "too many '|'"),
            ("uds|/a|b", "uds takes one part"),
            ("tcp|127.0.0.1:80|1", "looks like host:port"),
            ("uds|/tmp/s ", "ends in a space or tab"),
            ("tcp| 127.0.0.1 |7099", "contains a space or tab"),
        ] {
            let e = Address::parse(input).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(says), "{input:?}: {text}");
            assert!(
                text.contains("expected tcp|host|port, tls|host|port or uds|path"),
                "{text}"
            );
            assert!(text.contains(&format!("{input:?}")), "{text}");
            assert_eq!(input.parse::<Address>(), Err(e), "str::parse says the same");
        }
        // IPv6 literals keep their colons.
        assert_eq!(
            Address::parse("tcp|::1|7099"),
            Ok(Address::tcp("::1", 7099))
        );
        assert_eq!(
            Address::from(std::path::Path::new("/tmp/x")),
            Address::uds("/tmp/x")
        );
    }

    #[test]
    fn from_message_needs_the_right_header() {
        let mut m = Message::with_opcode(OpCode::HelloRequest);
        assert_eq!(Address::from_message(&m), Err(Error::InvalidAddress));
        m.append_header(LISTEN_ON, "tcp|a|1").unwrap();
        assert_eq!(Address::from_message(&m), Err(Error::InvalidAddress));
        m.append_header(CONNECT_TO, "tcp|a|1|2").unwrap();
        assert_eq!(Address::from_message(&m), Err(Error::InvalidAddress));
        let mut m = Message::with_opcode(OpCode::Request);
        m.append_header(CONNECT_TO, "tcp|a|1").unwrap();
        assert_eq!(Address::from_message(&m), Err(Error::InvalidAddress));
    }

    #[test]
    fn uds_paths_ending_in_blanks_are_refused() {
        // A text-header value loses its trailing spaces and tabs, so `uds|/tmp/s ` would be
        // read back from `~connect_to` as `/tmp/s`, and `uds| ` as the empty "temporary
        // path" (found by fuzz/fuzz_targets/address.rs).
        for path in ["/tmp/s ", "/tmp/s\t", " ", "\t \t"] {
            let a = Address::uds(path);
            assert_eq!(a.validate(), Err(Error::InvalidAddress), "{path:?}");
            assert!(format!("uds|{path}").parse::<Address>().is_err());
            assert_eq!(
                a.format_connect(&mut Message::new()),
                Err(Error::WrongAddress)
            );
            assert_eq!(
                a.format_listen(&mut Message::new()),
                Err(Error::WrongAddress)
            );
        }
        // Blanks elsewhere travel intact.
        for path in [" /tmp/s", "/tmp/a b"] {
            let a = Address::uds(path);
            let mut m = Message::new();
            a.format_connect(&mut m).unwrap();
            assert_eq!(Address::from_message(&m), Ok(a));
        }
    }

    #[test]
    fn abstract_names() {
        let a: Address = "uds|@tofu-abstract".parse().unwrap();
        assert_eq!(a, Address::uds("@tofu-abstract"));
    }
}
