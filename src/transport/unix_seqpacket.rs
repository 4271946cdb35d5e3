//! `unix-seqpacket` — a UNIX domain socket that keeps message boundaries.
//!
//! # What it is
//! UNIX domain sockets come in three types (see `unix(7)`):
//! * `SOCK_STREAM` (the `unix` transport): a connection carrying a byte
//!   stream, like TCP. Two `write`s of 10 bytes may arrive as one `read` of
//!   20, or as reads of 3 and 17: the receiver must find the boundaries
//!   itself (ipclab's framing does).
//! * `SOCK_DGRAM`: no connection; each `sendto` is one datagram that
//!   arrives whole (on Linux, reliably and in order: the sender blocks when
//!   the receiver's queue is full, unlike UDP).
//! * `SOCK_SEQPACKET` (this transport): a connection, like a stream, but
//!   each `write` is one *packet* that arrives whole, in order, with its
//!   boundary: one `write` is one `read`. A `read` with a buffer smaller
//!   than the packet gets the beginning and **loses the rest**, so the
//!   receiver reads into a buffer as large as the largest packet the sender
//!   may send, and with `recv(2)`'s `MSG_TRUNC` flag, which makes it return
//!   the packet's real length: a longer one (not ipclab's) ends the session
//!   with an error instead of leaving a hole in the stream.
//!
//! # How data and synchronisation flow
//! Exactly as for the stream socket — `socket`, `bind(<dir>/<name>.seqpacket)`,
//! `listen`, `accept` per client, a thread per session — except that each
//! protocol message goes out as one packet (one `write`; above 4 KiB a
//! `writev` of header and payload) and comes in with one `recv`. A message
//! larger than a packet (the 1 MiB echo) goes as a sequence of 64 KiB
//! packets, which the framing joins as it would join stream pieces. The
//! byte link over the packets is the one the message queues use too
//! ([`MessageLink`]).
//!
//! # Limits
//! * A packet must fit the socket's send buffer (`SO_SNDBUF`, from
//!   `/proc/sys/net/core/wmem_default`, 208 KiB here): larger ones fail with
//!   `EMSGSIZE`. 64 KiB packets stay well below.
//! * Otherwise as for `unix`: the 107-byte path limit, the listen backlog,
//!   and a socket file that a killed server leaves (replaced by the next
//!   server, removed by `ipclab clean`).
//!
//! # System calls
//! `socket(2)` (`SOCK_SEQPACKET`), `bind(2)`, `listen(2)`, `poll(2)`,
//! `accept4(2)`, `connect(2)`, `recv(2)` (`MSG_TRUNC`), `write(2)`, `writev(2)`,
//! `setsockopt(2)` (`SO_SNDTIMEO`), `unlink(2)`; see `unix(7)`.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, SockFlag, SockType, sockopt};
use nix::sys::time::TimeVal;

use super::kit::message_link::{MessageChannel, MessageLink, peer_alive};
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{Leftover, socket_file_leftovers};
use crate::runtime::{self, CreatedPath};
use crate::sys::unix_socket::{connect_socket, listen_on_file};

/// The largest packet either side sends.
pub(crate) const PACKET: usize = 64 * 1024;
const SUFFIX: &str = ".seqpacket";

/// The UNIX domain sequenced-packet socket transport.
pub struct UnixSeqpacket;

impl Transport for UnixSeqpacket {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "unix-seqpacket",
            description: "UNIX domain SOCK_SEQPACKET socket: a connection that keeps message boundaries",
            kernel_objects: "socket file <dir>/<name>.seqpacket; a listening socket and one connected pair per client",
            inspect_note: "The same picture as the unix transport (a listening socket bound to a file, one accepted socket per client, each the peer of a client socket), but the type column says seqpacket: every write(2) on these sockets is one packet that the peer's read(2) receives whole, so the kernel keeps the message boundaries that a stream socket forgets.",
            // ipclab's packets; the kernel's own limit is the send buffer.
            capabilities: Capabilities::messages()
                .max_message(PACKET)
                .peer_credentials(),
        };
        &ABOUT
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let (listener, file) = listen_on_file(
            &cfg.dir,
            cfg.object_path(SUFFIX),
            SockType::SeqPacket,
            self.name(),
            cfg.timeout,
        )?;
        Ok(Box::new(SeqServer {
            listener,
            file,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let fd = connect_socket(
            &cfg.object_path(SUFFIX),
            SockType::SeqPacket,
            self.name(),
            cfg.timeout,
        )?;
        Ok(Box::new(Packets::link(fd, cfg.timeout, cfg.timeout, None)?))
    }

    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        socket_file_leftovers(dir, SUFFIX, SockType::SeqPacket, self.name())
    }
}

struct SeqServer {
    listener: OwnedFd,
    // Dropped after the listener: the file goes with the server.
    file: CreatedPath,
    cfg: Config,
}

impl Listener for SeqServer {
    fn endpoint(&self) -> String {
        self.file.path().display().to_string()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        if !runtime::wait_readable(&self.listener, wait)? {
            return Ok(None);
        }
        let fd = socket::accept4(&self.listener, SockFlag::SOCK_CLOEXEC)?;
        if !crate::sys::unix_socket::admit(&fd, self.cfg.same_user)? {
            return Ok(None);
        }
        let link = Packets::link(fd, self.cfg.idle_timeout, self.cfg.timeout, None)?;
        Ok(Some(Box::new(link)))
    }
}

/// A connected packet socket as a message channel: one packet is one
/// message of at most [`PACKET`] bytes, and the socket's close is the end
/// of the stream.
///
/// Shared with `unix-dgram`, whose connected datagram sockets behave the
/// same way but for one thing: the kernel tells nobody when the peer's
/// socket closes. For them `peer` is the peer's pid, watched while a read
/// waits, and the link's end is an empty datagram.
pub(crate) struct Packets {
    fd: OwnedFd,
    read_timeout: Duration,
    /// Datagram sockets only: the peer process (0 when unknown).
    peer: Option<i32>,
}

/// A packet or connected datagram socket as a byte link.
pub(crate) type PacketLink = MessageLink<Packets>;

impl Packets {
    /// The link over `fd`: reads wait at most `read_timeout`, writes
    /// `write_timeout` (`SO_SNDTIMEO`).
    pub(crate) fn link(
        fd: OwnedFd,
        read_timeout: Duration,
        write_timeout: Duration,
        peer: Option<i32>,
    ) -> io::Result<PacketLink> {
        let tv = TimeVal::new(
            write_timeout.as_secs() as _,
            write_timeout.subsec_micros() as _,
        );
        socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        let chan = Packets {
            fd,
            read_timeout,
            peer,
        };
        Ok(MessageLink::new(chan, PACKET))
    }
}

impl MessageChannel for Packets {
    /// The whole next packet; 0 is the peer's orderly close (or its empty
    /// datagram). `MSG_TRUNC`: its real length, even when it was longer
    /// than `buf` and cut.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        crate::sys::interrupt::bounded(
            crate::sys::interrupt::Deadline::After(self.read_timeout),
            "waiting for the peer to send",
            peer_alive(self.peer.unwrap_or(0), "peer"),
            || socket::recv(fd, buf, MsgFlags::MSG_TRUNC),
        )
    }

    fn send(&mut self, msg: &mut [u8]) -> io::Result<()> {
        self.send_parts(&[IoSlice::new(msg)])
            .expect("sockets send parts")
    }

    /// One part (ipclab gathers small messages): plain `write(2)`; more:
    /// `writev(2)`.
    fn send_parts(&mut self, parts: &[IoSlice<'_>]) -> Option<io::Result<()>> {
        let sent = match parts {
            [one] => nix::unistd::write(&self.fd, one),
            _ => nix::sys::uio::writev(&self.fd, parts),
        };
        Some(sent.map(drop).map_err(|e| match e {
            Errno::EAGAIN => io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer's receive queue stayed full (is it reading?)",
            ),
            // A datagram peer whose socket is closed.
            Errno::ECONNREFUSED => io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer is gone (its socket is closed)",
            ),
            e => e.into(),
        }))
    }

    /// A datagram socket's end-of-stream marker; a peer that is gone or not
    /// reading changes nothing now.
    fn end(&mut self) {
        if self.peer.is_some() {
            let _ = socket::send(self.fd.as_raw_fd(), &[], MsgFlags::MSG_DONTWAIT);
        }
    }
}
