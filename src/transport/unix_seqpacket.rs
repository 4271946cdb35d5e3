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
//!   than the packet gets the beginning and **loses the rest** (the
//!   `MSG_TRUNC` case), so the receiver always reads into a buffer as large
//!   as the largest packet the sender may send.
//!
//! # How data and synchronisation flow
//! Exactly as for the stream socket — `socket`, `bind(<dir>/<name>.seqpacket)`,
//! `listen`, `accept` per client, a thread per session — except that each
//! protocol message goes out as one packet (one `write`; above 4 KiB a
//! `writev` of header and payload) and comes in with one `read`. A message larger than a packet
//! (the 1 MiB echo) goes as a sequence of 64 KiB packets, which the framing
//! joins as it would join stream pieces.
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
//! `accept4(2)`, `connect(2)`, `read(2)`, `write(2)`, `writev(2)`,
//! `setsockopt(2)` (`SO_SNDTIMEO`), `unlink(2)`; see `unix(7)`.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, SockFlag, SockType, sockopt};
use nix::sys::time::TimeVal;

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
            capabilities: Capabilities::messages().max_message(PACKET),
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
        Ok(Box::new(PacketLink::new(
            fd,
            cfg.timeout,
            cfg.timeout,
            None,
        )?))
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
        if !super::unix::admit(&fd, &self.cfg)? {
            return Ok(None);
        }
        Ok(Some(Box::new(PacketLink::new(
            fd,
            self.cfg.idle_timeout,
            self.cfg.timeout,
            None,
        )?)))
    }
}

/// A connected packet socket as a byte link: each write is one packet of
/// at most [`PACKET`] bytes; each read takes one whole packet into `rbuf`
/// and hands it out. An empty packet is the end of the stream.
///
/// Shared with `unix-dgram`, whose connected datagram sockets behave the
/// same way but for one thing: the kernel tells nobody when the peer's
/// socket closes. For them `peer` is the peer's pid, checked while a read
/// waits, and dropping the link sends the empty datagram itself.
pub(crate) struct PacketLink {
    fd: OwnedFd,
    read_timeout: Duration,
    rbuf: Vec<u8>,
    rlen: usize,
    roff: usize,
    /// Gathers the parts of a message larger than one `writev` may carry.
    sbuf: Vec<u8>,
    /// Datagram sockets only: the peer process (0 when unknown), and that
    /// we owe it an end-of-stream marker.
    peer: Option<i32>,
}

impl PacketLink {
    pub(crate) fn new(
        fd: OwnedFd,
        read_timeout: Duration,
        write_timeout: Duration,
        peer: Option<i32>,
    ) -> io::Result<Self> {
        let tv = TimeVal::new(
            write_timeout.as_secs() as _,
            write_timeout.subsec_micros() as _,
        );
        socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        Ok(PacketLink {
            fd,
            read_timeout,
            rbuf: vec![0; PACKET],
            rlen: 0,
            roff: 0,
            sbuf: Vec::new(),
            peer,
        })
    }
}

impl std::os::fd::AsFd for PacketLink {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PacketLink {
    fn drop(&mut self) {
        if self.peer.is_some() {
            // The end-of-stream marker; a peer that is gone or not reading
            // changes nothing now.
            let _ = socket::send(self.fd.as_raw_fd(), &[], MsgFlags::MSG_DONTWAIT);
        }
    }
}

impl Read for PacketLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.roff == self.rlen {
            // The whole next packet (never larger than PACKET); 0 is the
            // peer's orderly close.
            let (fd, rbuf, peer) = (self.fd.as_raw_fd(), &mut self.rbuf, self.peer);
            let n = crate::interrupt::bounded(
                crate::interrupt::Deadline::After(self.read_timeout),
                "waiting for the peer to send",
                || match peer {
                    // 0: the peer is in a pid namespace we cannot see.
                    Some(pid) if pid > 0 && !crate::interrupt::pid_alive(pid) => {
                        Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            format!("the peer (pid {pid}) died"),
                        ))
                    }
                    _ => Ok(()),
                },
                // SAFETY: a valid fd and buffer.
                || Errno::result(unsafe { libc::read(fd, rbuf.as_mut_ptr().cast(), rbuf.len()) }),
            )? as usize;
            if n == 0 {
                return Ok(0);
            }
            self.rlen = n;
            self.roff = 0;
        }
        let n = buf.len().min(self.rlen - self.roff);
        buf[..n].copy_from_slice(&self.rbuf[self.roff..self.roff + n]);
        self.roff += n;
        Ok(n)
    }
}

impl Write for PacketLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// One packet: the parts as they are when they fit in one, else the
    /// first [`PACKET`] bytes gathered.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let sent = if bufs.len() == 1 && total <= PACKET {
            // One part (ipclab gathers small messages): plain write(2).
            nix::unistd::write(&self.fd, &bufs[0])
        } else if total <= PACKET {
            nix::sys::uio::writev(&self.fd, bufs)
        } else {
            let sbuf = &mut self.sbuf;
            sbuf.clear();
            super::gather(bufs, PACKET, |_, p| sbuf.extend_from_slice(p));
            nix::unistd::write(&self.fd, sbuf)
        };
        sent.map_err(|e| match e {
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
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
