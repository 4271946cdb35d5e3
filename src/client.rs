//! The client side of the protocol, written once for every transport.
//!
//! ```no_run
//! use ipclab::{client::Client, protocol::Form, transport::{self, Config}};
//! let cfg = Config::default();
//! let mut c = Client::connect(transport::by_name("unix")?, &cfg, Form::Binary)?;
//! c.ping()?;
//! assert_eq!(c.echo(b"any \0 bytes\n")?, b"any \0 bytes\n");
//! c.quit()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

use crate::conn::{FramedConn, write_parts};
use crate::protocol::{Form, Message, Reply, Request, parse_reply};
use crate::transport::{Config, Link, Transport};

/// A client session with a server.
pub struct Client {
    conn: FramedConn<Box<dyn Link>>,
    form: Form,
}

impl Client {
    /// Connect to the server of `transport` described by `cfg`.
    pub fn connect(transport: &dyn Transport, cfg: &Config, form: Form) -> io::Result<Self> {
        let mut c = Self::from_link(transport.connect(cfg)?, cfg.max_frame, form);
        c.conn.set_message_timeout(cfg.timeout);
        Ok(c)
    }

    /// Speak the protocol over a link made elsewhere.
    pub fn from_link(link: Box<dyn Link>, max_frame: usize, form: Form) -> Self {
        Client {
            conn: FramedConn::new(link, max_frame),
            form,
        }
    }

    /// The form requests are sent in.
    pub fn form(&self) -> Form {
        self.form
    }

    /// Send further requests in `form`.
    pub fn set_form(&mut self, form: Form) {
        self.form = form;
    }

    /// The link underneath (to write raw bytes in tests and demos).
    pub fn link_mut(&mut self) -> &mut Box<dyn Link> {
        self.conn.link_mut()
    }

    /// One round trip: send `req`, wait for its reply.
    pub fn request(&mut self, req: &Request<'_>) -> io::Result<Reply<'_>> {
        if let Request::Echo(p) = req
            && p.len() > self.conn.max_frame()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a payload of {} bytes exceeds the maximum frame of {} bytes (raise --max-frame)",
                    p.len(),
                    self.conn.max_frame()
                ),
            ));
        }
        // The reply comes in the request's form (see protocol::scan_with).
        self.conn.expect_lines(self.form == Form::Text);
        if let Err(e) = self.conn.send_request(self.form, req) {
            return Err(self.why_the_send_failed(e));
        }
        let msg = self.recv()?;
        parse_reply(&msg, req).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `ping` → `pong`.
    pub fn ping(&mut self) -> io::Result<()> {
        match self.request(&Request::Ping)? {
            Reply::Pong => Ok(()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// `echo` → the payload, as the server sent it back.
    pub fn echo(&mut self, payload: &[u8]) -> io::Result<&[u8]> {
        match self.request(&Request::Echo(payload))? {
            Reply::Data(d) => Ok(d),
            other => Err(unexpected("the echoed data", &other)),
        }
    }

    /// `quit` → `bye`; the server then ends the session.
    pub fn quit(&mut self) -> io::Result<()> {
        match self.request(&Request::Quit)? {
            Reply::Bye => Ok(()),
            other => Err(unexpected("bye", &other)),
        }
    }

    /// Send `line` exactly as typed (plus `\n`) and return the reply line,
    /// or `None` if the server closed the session. This is the interactive,
    /// telnet-like mode, and works against any line-based echo server.
    pub fn send_line(&mut self, line: &[u8]) -> io::Result<Option<Vec<u8>>> {
        write_parts(
            self.conn.link_mut(),
            &mut [io::IoSlice::new(line), io::IoSlice::new(b"\n")],
        )?;
        self.conn.expect_lines(true);
        match self.conn.recv()? {
            None => Ok(None),
            Some(Message::Line(l)) => Ok(Some(l.to_vec())),
            Some(Message::Frame { payload, .. }) => Ok(Some(payload.to_vec())),
            Some(other) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable reply: {other:?}"),
            )),
        }
    }

    /// A send that failed because the server closed its end may have been
    /// refused with a reason (a request over the server's `--max-frame`):
    /// the reason, if it is there to read, says more than "broken pipe".
    fn why_the_send_failed(&mut self, e: io::Error) -> io::Error {
        let closed = matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if closed
            && let Ok(Some(msg)) = self.conn.recv()
            && let Ok(Reply::Error(reason)) = parse_reply(&msg, &Request::Ping)
        {
            return io::Error::other(format!(
                "the server refused the request: {}",
                String::from_utf8_lossy(reason)
            ));
        }
        if closed {
            return io::Error::new(
                e.kind(),
                format!("the server closed the connection while the request was being sent ({e})"),
            );
        }
        e
    }

    fn recv(&mut self) -> io::Result<Message<'_>> {
        self.conn.recv()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the session without replying",
            )
        })
    }
}

fn unexpected(wanted: &str, got: &Reply<'_>) -> io::Error {
    match got {
        Reply::Error(reason) => io::Error::other(format!(
            "the server answered with an error: {}",
            String::from_utf8_lossy(reason)
        )),
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {wanted}, got {}", describe(other)),
        ),
    }
}

fn describe(r: &Reply<'_>) -> String {
    match r {
        Reply::Pong => "pong".into(),
        Reply::Bye => "bye".into(),
        Reply::Data(d) => format!("{} bytes of data", d.len()),
        Reply::Error(e) => format!("ERR {}", String::from_utf8_lossy(e)),
    }
}
