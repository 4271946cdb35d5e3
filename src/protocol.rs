//! The one protocol every transport speaks: `ping`, `echo <payload>`, `quit`.
//!
//! A message comes in one of two *forms*, and a server tells them apart by
//! the first byte of each message, so one server accepts both — even mixed
//! on one connection:
//!
//! * **Text form** — a line ending in `\n` (a trailing `\r`, as telnet sends,
//!   is dropped). This is the classic line-based echo server, so `nc`,
//!   `telnet` and `socat` can talk to an ipclab server by typing:
//!
//!   | request              | reply                      |
//!   |----------------------|----------------------------|
//!   | `ping`               | `pong`                     |
//!   | `echo hello world`   | `hello world`              |
//!   | `quit`               | `bye`, then the session ends |
//!   | anything else        | `ERR <reason>`             |
//!
//!   Text cannot carry a `\n` inside a payload, so it is for people.
//!
//! * **Binary form** — a length-prefixed frame that carries any bytes
//!   (NUL, `\n`, 0xFF …). Benchmarks and tests use it. An 8-byte header:
//!
//!   ```text
//!    0        1         2       3       4               8
//!   +--------+---------+-------+-------+---------------+------------------+
//!   | 0xA5   | version | kind  |   0   | length u32 LE | payload (length) |
//!   +--------+---------+-------+-------+---------------+------------------+
//!   ```
//!
//!   `0xA5` is not ASCII, so no typed command starts with it. Kinds:
//!   requests `PING`, `ECHO`, `QUIT`; replies `PONG`, `DATA`, `ERROR`, `BYE`.
//!
//! Echo is symmetric: the whole payload travels both ways on every transport.
//!
//! Limits: a frame or a line longer than the configured maximum (16 MiB by
//! default) is answered with an error reply *before* anything is allocated
//! for it; since the rest of the stream cannot then be trusted, the server
//! ends that session. An unknown command or kind, or a well-framed but
//! malformed request, gets an error reply and the session goes on.
//!
//! This module is pure: it parses and describes messages held in buffers.
//! Reading them from a transport and writing them back is
//! [`crate::conn::FramedConn`]'s work.

use std::fmt;

/// First byte of every binary frame.
pub const MAGIC: u8 = 0xA5;
/// Version byte of the binary header.
pub const VERSION: u8 = 1;
/// Length of the binary header in bytes.
pub const HEADER_LEN: usize = 8;
/// Default maximum payload of one frame (and length of one text line).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Kind byte of binary frames.
pub mod kind {
    pub const PING: u8 = 0x01;
    pub const ECHO: u8 = 0x02;
    pub const QUIT: u8 = 0x03;
    pub const PONG: u8 = 0x81;
    pub const DATA: u8 = 0x82;
    pub const ERROR: u8 = 0x83;
    pub const BYE: u8 = 0x84;
}

/// The two encodings of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Text,
    Binary,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Text => "text",
            Form::Binary => "binary",
        })
    }
}

/// A request, borrowing its payload from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Ping,
    Echo(&'a [u8]),
    Quit,
}

/// A reply, borrowing its payload from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Pong,
    Data(&'a [u8]),
    Error(&'a [u8]),
    Bye,
}

/// One message as it was cut out of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete binary frame.
    Frame { kind: u8, payload: &'a [u8] },
    /// A complete text line, without its `\n` and any trailing `\r`.
    Line(&'a [u8]),
    /// A frame header or a line that exceeds the maximum; nothing of it was
    /// kept. The stream cannot be resynchronised after this.
    Oversized { form: Form, announced: u64 },
    /// A binary header that cannot be trusted (wrong version).
    Malformed(&'static str),
}

impl Message<'_> {
    /// The form a reply to this message should take.
    pub fn form(&self) -> Form {
        match self {
            Message::Frame { .. } | Message::Malformed(_) => Form::Binary,
            Message::Line(_) => Form::Text,
            Message::Oversized { form, .. } => *form,
        }
    }
}

/// What [`scan`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A whole message, and how many bytes of the buffer it used.
    Complete(Message<'a>, usize),
    /// More bytes are needed. `need` is the total the message will take when
    /// it is known (a binary frame); `None` for a line still missing its `\n`.
    Incomplete { need: Option<usize> },
}

/// Cut the first message out of `buf`.
///
/// `searched` is how many bytes of `buf` are already known to hold no `\n`
/// (so a long line is not re-scanned from the start on every read);
/// `max` is the largest payload or line accepted.
pub fn scan(buf: &[u8], searched: usize, max: usize) -> Scan<'_> {
    scan_with(buf, searched, max, false)
}

/// [`scan`] for a peer that knows it expects a line: with `lines_only`, a
/// first byte of 0xA5 does not start a binary frame. A *request* always
/// starts with a command word or the magic byte, so a server tells the
/// forms apart by the first byte; but the *reply* to a text `echo` is the
/// payload itself, which may start with any byte — so a client reads the
/// reply to a text request as a line, whatever its first byte.
pub fn scan_with(buf: &[u8], searched: usize, max: usize, lines_only: bool) -> Scan<'_> {
    let Some(&first) = buf.first() else {
        return Scan::Incomplete { need: None };
    };
    if first == MAGIC && !lines_only {
        if buf.len() < HEADER_LEN {
            return Scan::Incomplete {
                need: Some(HEADER_LEN),
            };
        }
        if buf[1] != VERSION {
            return Scan::Complete(
                Message::Malformed("unsupported binary frame version"),
                buf.len(),
            );
        }
        let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if len > max {
            return Scan::Complete(
                Message::Oversized {
                    form: Form::Binary,
                    announced: len as u64,
                },
                buf.len(),
            );
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            return Scan::Incomplete { need: Some(total) };
        }
        return Scan::Complete(
            Message::Frame {
                kind: buf[2],
                payload: &buf[HEADER_LEN..total],
            },
            total,
        );
    }
    let from = searched.min(buf.len());
    match buf[from..].iter().position(|&b| b == b'\n') {
        Some(i) => {
            let end = from + i;
            let mut line = &buf[..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.len() > max {
                return Scan::Complete(
                    Message::Oversized {
                        form: Form::Text,
                        announced: line.len() as u64,
                    },
                    end + 1,
                );
            }
            Scan::Complete(Message::Line(line), end + 1)
        }
        // One byte of slack for a trailing '\r'.
        None if buf.len() > max + 1 => Scan::Complete(
            Message::Oversized {
                form: Form::Text,
                announced: buf.len() as u64,
            },
            buf.len(),
        ),
        None => Scan::Incomplete { need: None },
    }
}

/// The 8-byte header of a binary frame.
pub fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("frame length checked against the maximum by the caller");
    let l = len.to_le_bytes();
    [MAGIC, VERSION, kind, 0, l[0], l[1], l[2], l[3]]
}

/// Why a well-framed message is not a valid request. The session goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Interpret a complete frame or line as a request.
///
/// Only [`Message::Frame`] and [`Message::Line`] are requests; the caller
/// answers `Oversized` and `Malformed` itself (and ends the session).
pub fn parse_request<'a>(msg: &Message<'a>) -> Result<Request<'a>, BadRequest> {
    match *msg {
        Message::Frame { kind, payload } => match kind {
            kind::PING if payload.is_empty() => Ok(Request::Ping),
            kind::PING => Err(BadRequest("ping takes no payload".into())),
            kind::ECHO => Ok(Request::Echo(payload)),
            kind::QUIT => Ok(Request::Quit),
            other => Err(BadRequest(format!(
                "unknown frame kind 0x{other:02x} (expected ping 0x01, echo 0x02 or quit 0x03)"
            ))),
        },
        Message::Line(line) => {
            let (word, rest) = match line.iter().position(|&b| b == b' ') {
                Some(i) => (&line[..i], Some(&line[i + 1..])),
                None => (line, None),
            };
            let blank =
                |r: Option<&[u8]>| r.is_none_or(|r| r.iter().all(|b| b.is_ascii_whitespace()));
            if word.eq_ignore_ascii_case(b"echo") {
                Ok(Request::Echo(rest.unwrap_or(b"")))
            } else if word.eq_ignore_ascii_case(b"ping") && blank(rest) {
                Ok(Request::Ping)
            } else if word.eq_ignore_ascii_case(b"quit") && blank(rest) {
                Ok(Request::Quit)
            } else if line.is_empty() {
                Err(BadRequest(
                    "empty line (commands: ping, echo <text>, quit)".into(),
                ))
            } else {
                let shown: String = String::from_utf8_lossy(word).chars().take(40).collect();
                Err(BadRequest(format!(
                    "unknown command '{}' (commands: ping, echo <text>, quit)",
                    shown.escape_debug()
                )))
            }
        }
        Message::Oversized { .. } | Message::Malformed(_) => {
            Err(BadRequest("not a complete request".into()))
        }
    }
}

/// Interpret a complete frame or line as a reply.
///
/// In the text form a reply is just a line, so what it means depends on what
/// was asked: after `echo`, any line that does not start with `ERR ` is the
/// echoed data (which is why the benchmarks use the binary form).
pub fn parse_reply<'a>(msg: &Message<'a>, asked: &Request<'_>) -> Result<Reply<'a>, String> {
    match *msg {
        Message::Frame { kind, payload } => match kind {
            kind::PONG => Ok(Reply::Pong),
            kind::DATA => Ok(Reply::Data(payload)),
            kind::ERROR => Ok(Reply::Error(payload)),
            kind::BYE => Ok(Reply::Bye),
            other => Err(format!("unknown reply kind 0x{other:02x}")),
        },
        Message::Line(line) => {
            if let Some(reason) = line.strip_prefix(b"ERR ") {
                return Ok(Reply::Error(reason));
            }
            Ok(match asked {
                Request::Ping if line == b"pong" => Reply::Pong,
                Request::Quit if line == b"bye" => Reply::Bye,
                _ => Reply::Data(line),
            })
        }
        Message::Oversized { form, announced } => Err(format!(
            "{form} reply of {announced} bytes exceeds the maximum frame size"
        )),
        Message::Malformed(why) => Err(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = header(kind, payload.len()).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn text_commands() {
        fn req(s: &[u8]) -> Result<Request<'_>, BadRequest> {
            match scan(s, 0, 100) {
                Scan::Complete(m, _) => parse_request(&m),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(req(b"ping\n"), Ok(Request::Ping));
        assert_eq!(req(b"PING\r\n"), Ok(Request::Ping));
        assert_eq!(
            req(b"echo hello world\n"),
            Ok(Request::Echo(b"hello world"))
        );
        assert_eq!(req(b"echo\n"), Ok(Request::Echo(b"")));
        assert_eq!(req(b"echo  two\r\n"), Ok(Request::Echo(b" two")));
        assert_eq!(req(b"quit\n"), Ok(Request::Quit));
        assert!(
            req(b"frobnicate now\n")
                .unwrap_err()
                .0
                .contains("frobnicate")
        );
        assert!(req(b"\n").is_err());
        assert!(req(b"ping pong\n").is_err());
        assert!(req(b"\xff\xfe\n").is_err());
    }

    #[test]
    fn binary_frames() {
        let f = frame(kind::ECHO, b"a\0\n\xffb");
        match scan(&f, 0, 100) {
            Scan::Complete(m, used) => {
                assert_eq!(used, f.len());
                assert_eq!(parse_request(&m), Ok(Request::Echo(b"a\0\n\xffb")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            scan(&f[..3], 0, 100),
            Scan::Incomplete {
                need: Some(HEADER_LEN)
            }
        );
        assert_eq!(scan(&f[..9], 0, 100), Scan::Incomplete { need: Some(13) });
        assert!(
            parse_request(&Message::Frame {
                kind: 9,
                payload: b""
            })
            .is_err()
        );
        assert!(
            parse_request(&Message::Frame {
                kind: kind::PING,
                payload: b"x"
            })
            .is_err()
        );
    }

    #[test]
    fn oversized_is_reported_before_allocation() {
        let mut h = header(kind::ECHO, 0);
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        match scan(&h, 0, DEFAULT_MAX_FRAME) {
            Scan::Complete(Message::Oversized { form, announced }, _) => {
                assert_eq!(form, Form::Binary);
                assert_eq!(announced, u32::MAX as u64);
            }
            other => panic!("{other:?}"),
        }
        let long = vec![b'x'; 12];
        assert!(matches!(
            scan(&long, 0, 10),
            Scan::Complete(
                Message::Oversized {
                    form: Form::Text,
                    ..
                },
                12
            )
        ));
        let mut bad = frame(kind::PING, b"");
        bad[1] = 7;
        assert!(matches!(
            scan(&bad, 0, 10),
            Scan::Complete(Message::Malformed(_), _)
        ));
    }

    #[test]
    fn text_replies_depend_on_the_request() {
        let line = |s: &'static [u8]| Message::Line(s);
        assert_eq!(parse_reply(&line(b"pong"), &Request::Ping), Ok(Reply::Pong));
        assert_eq!(
            parse_reply(&line(b"pong"), &Request::Echo(b"pong")),
            Ok(Reply::Data(b"pong"))
        );
        assert_eq!(
            parse_reply(&line(b"ERR nope"), &Request::Ping),
            Ok(Reply::Error(b"nope"))
        );
        assert_eq!(parse_reply(&line(b"bye"), &Request::Quit), Ok(Reply::Bye));
    }

    proptest! {
        // Random garbage: scan never panics, never claims more than it was given,
        // and never asks for more than one maximal frame.
        #[test]
        fn scan_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..300) {
            match scan(&buf, 0, max) {
                Scan::Complete(m, used) => {
                    prop_assert!(used <= buf.len());
                    if let Message::Frame { payload, .. } | Message::Line(payload) = m {
                        prop_assert!(payload.len() <= max);
                    }
                    let _ = parse_request(&m);
                    let _ = parse_reply(&m, &Request::Ping);
                }
                Scan::Incomplete { need } => {
                    if let Some(n) = need { prop_assert!(n <= HEADER_LEN + max); }
                }
            }
        }

        // Any payload survives a binary round trip byte for byte.
        #[test]
        fn binary_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let f = frame(kind::ECHO, &payload);
            match scan(&f, 0, 4096) {
                Scan::Complete(m, used) => {
                    prop_assert_eq!(used, f.len());
                    prop_assert_eq!(parse_request(&m), Ok(Request::Echo(&payload[..])));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        // Scanning with a 'searched' hint gives the same answer as from scratch.
        #[test]
        fn searched_hint_is_consistent(line in "[a-z ]{0,40}", split in 0usize..40) {
            let buf = format!("{line}\n");
            let hint = split.min(line.len());
            prop_assert_eq!(scan(buf.as_bytes(), hint, 100), scan(buf.as_bytes(), 0, 100));
        }
    }
}
