//! `udp` — UDP datagrams over loopback, made reliable by ipclab.
//!
//! # What it is
//! UDP sends *datagrams*: each `send` is one packet of at most 65,507
//! bytes (IPv4), delivered whole or not at all, with no connection, no
//! acknowledgement and no flow control. In general a datagram can be lost,
//! duplicated or overtaken by a later one. Over loopback the "network" is a
//! function call inside the kernel, so loss and reordering practically
//! never happen on the wire — with one exception that matters here: when
//! the receiver's socket buffer (`SO_RCVBUF`) is full, an arriving datagram
//! is **dropped**, silently. A sender that fires 1 MiB of datagrams at a
//! receiver that is not reading fast enough loses some. So the transport
//! must do what TCP does, in miniature.
//!
//! # How a session starts (like TFTP)
//! ```text
//!   client (any port)                 server, listening on 127.0.0.1:8008
//!   HELLO {pid, nonce} ──────────────▶ creates a new socket on 127.0.0.1:P,
//!                                      connect()s it to the client:
//!                                      a *half-open* session
//!   WELCOME {pid} ◀─────────────────── sent from 127.0.0.1:P
//!   connect(127.0.0.1:P)
//!   ACK ─────────────────────────────▶ the answer: now a session, with a
//!                                      thread and a slot of --max-clients
//!   DATA/ACK ◀───────────────────────▶ the session's own pair of sockets
//! ```
//! Each session gets its own socket on the server, so the kernel routes a
//! datagram to the right session by its addresses: no demultiplexing thread.
//! A HELLO or WELCOME that goes missing is sent again after a quarter second
//! (a repeated HELLO gets the same WELCOME again, from the same socket).
//!
//! Why the third step: a HELLO costs its sender 16 bytes and nothing else
//! (its sender may even be gone already), while a session costs the server
//! a socket, a thread and one of its `--max-clients` places for as long as
//! the idle timeout. So, as TCP does with its SYN queue, the server keeps
//! sessions whose client has not answered apart: it waits for them in its
//! accept loop (`poll(2)` on the listening socket and theirs), keeps at
//! most `--max-clients` of them (a new HELLO pushes out the oldest that
//! has not answered, and so does a new session when the descriptors run
//! out: `EMFILE`), and drops each after `--timeout`. The answer itself is
//! only looked at (`MSG_PEEK`): it is the session's first datagram. A
//! client's own answer is an ACK sent right after the WELCOME; if that
//! one were lost, its first request would answer instead.
//!
//! # Reliability: a sliding window with cumulative acknowledgements
//! Every datagram starts with 12 bytes: kind (DATA, ACK, FIN), flags, a
//! sequence number and a cumulative acknowledgement ("I have everything
//! before this"). Data travels in datagrams of up to [`CHUNK`] bytes.
//! * A sender keeps each DATA until it is acknowledged, and has at most
//!   [`WINDOW`] of them in flight: 4 × 32 KiB stays below the receiver's
//!   buffer, so the window itself prevents the overflow drop. The datagram
//!   that fills the window asks for an immediate ACK.
//! * A receiver accepts only the next sequence number, in order, and only
//!   while what it holds unread stays within [`RECV_WINDOW`] (a window's
//!   worth): DATA beyond that is dropped unacknowledged and comes again
//!   with the sender's next retransmission, so a peer that sends and never
//!   reads or acknowledges cannot make it buffer more. A duplicate or a
//!   gap is answered with an ACK of what it has (go-back-N: the sender
//!   then retransmits). Acknowledgements ride on the receiver's own DATA
//!   when there is some (in a ping-pong, always: the reply acknowledges
//!   the request), so a small round trip is just two datagrams, like raw
//!   UDP.
//! * A waiter that hears nothing for a quarter second retransmits what is
//!   unacknowledged (and an ACK it owes), then checks its deadline and its
//!   peer. The retransmission timeout is the period of [`crate::sys::interrupt`]'s
//!   wake-up: long for a network, generous for loopback, where it only
//!   fires after a real drop. A waiter that keeps receiving datagrams that
//!   do not move it on (a peer that sends but never acknowledges, or
//!   repeats itself) gives up at its deadline all the same.
//! * Every field of a datagram is the peer's word, and checked: one longer
//!   than `HEADER + CHUNK` (`recv` with `MSG_TRUNC` tells its real length)
//!   or acknowledging a sequence number never sent is not ours and is
//!   dropped whole; sequence numbers never wrap (2^32 datagrams end the
//!   session).
//! * The acknowledgement of the *last* data of a conversation is the one
//!   thing that can stay owed: with no reply to ride on and no timer
//!   thread, it is sent when the receiver next reads, writes or flushes. A
//!   sender waiting on it retransmits until its timeout; in the protocol's
//!   request/reply rhythm the next request (or `quit`) carries it.
//! * FIN ends the stream. On a connected UDP socket, a datagram sent to a
//!   port nobody listens on any more comes back as an ICMP "port
//!   unreachable", which the next `recv` reports as `ECONNREFUSED`: that is
//!   how a side learns that its peer is gone; on loopback it also checks the
//!   peer's pid.
//!
//! # Limits
//! * 65,507 bytes per IPv4 datagram; ipclab uses 32 KiB.
//! * Socket buffers: `/proc/sys/net/core/rmem_default` (208 KiB here), at
//!   most `rmem_max`; ipclab asks for 512 KiB.
//! * Memory per session, whatever the peer does: [`RECV_WINDOW`] received
//!   and unread, [`WINDOW`] datagrams sent and unacknowledged, one datagram
//!   buffer. Half-open sessions: `--max-clients` sockets at most,
//!   `--timeout` each.
//! * Descriptors: one socket per session, so `RLIMIT_NOFILE` (`ulimit -n`)
//!   bounds the sessions; out of them, a HELLO is dropped (the server says
//!   so once) and its client, which sends it again, is served when some
//!   are back.
//!
//! # System calls
//! `socket(2)`, `bind(2)`, `connect(2)`, `send(2)`, `recv(2)` (`MSG_PEEK`,
//! `MSG_TRUNC`), `recvfrom(2)`, `sendto(2)`, `poll(2)`, `setsockopt(2)`
//! (`SO_RCVBUF`, `SO_SNDTIMEO`); see `udp(7)`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, MsgFlags, sockopt};

use super::kit::message_link::peer_alive;
use super::tcp::resolve;
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::runtime;
use crate::sys::interrupt;

/// Payload bytes per DATA datagram.
pub const CHUNK: usize = 32 * 1024;
/// DATA datagrams in flight, unacknowledged.
pub const WINDOW: usize = 4;
/// Bytes a receiver keeps received and not yet read: a window's worth.
/// DATA beyond that is dropped unacknowledged, and sent again.
pub const RECV_WINDOW: usize = WINDOW * CHUNK;
/// Bytes of the header every session datagram starts with: kind, flags,
/// two unused bytes, sequence number, cumulative acknowledgement (both u32,
/// little-endian).
pub const HEADER: usize = 12;
/// The first 4 bytes of a HELLO (16 bytes: magic, pid, nonce) and of a
/// WELCOME (8 bytes: magic, pid).
pub const MAGIC: &[u8; 4] = b"IPCU";

/// Datagram kinds: data, a bare acknowledgement, the end of a stream.
pub const DATA: u8 = 1;
pub const ACK: u8 = 2;
pub const FIN: u8 = 3;
/// Flag: acknowledge this datagram at once.
pub const ACK_NOW: u8 = 1;

/// The UDP transport.
pub struct Udp;

/// A UDP socket bound to `addr`, with a large receive buffer and a send
/// timeout.
fn socket_at(addr: SocketAddr, write_timeout: Duration) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    // Asking is enough: the kernel caps it at rmem_max.
    let _ = socket::setsockopt(&s, sockopt::RcvBuf, &(512 * 1024));
    s.set_write_timeout(Some(write_timeout))?;
    Ok(s)
}

impl Transport for Udp {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "udp",
            description: "UDP over loopback: a socket per session, sliding window, acknowledgements, retransmission",
            kernel_objects: "UDP socket on 127.0.0.1:8008 (ss -ua) and one connected socket per session",
            inspect_note: "UDP sockets have no LISTEN state: the server's first socket is UNCONN on its port and only receives HELLOs. For each client it made a second socket, CONNECTED to the client's address, and the client's socket is connected to that one: the two addresses mirror each other as for TCP, but nothing in the kernel keeps a connection: ipclab's sequence numbers and acknowledgements do.",
            capabilities: Capabilities::messages().crosses_machines(),
        };
        &ABOUT
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let addr = resolve(&cfg.addr)?;
        let sock = socket_at(addr, cfg.timeout).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                " (already in use: is another server running? pick another --addr)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}{hint}"))
        })?;
        sock.set_nonblocking(true)?;
        Ok(Box::new(UdpServer {
            local: sock.local_addr()?,
            sock,
            half_open: VecDeque::new(),
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let server = resolve(&cfg.addr)?;
        let any: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = socket_at(any, cfg.timeout)?;
        let nonce: u64 = (std::process::id() as u64) << 32
            ^ Instant::now().elapsed().as_nanos() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
        let mut hello = Vec::with_capacity(16);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&std::process::id().to_le_bytes());
        hello.extend_from_slice(&nonce.to_le_bytes());
        let deadline = Instant::now() + cfg.timeout;
        let mut buf = [0u8; 64];
        loop {
            sock.send_to(&hello, server).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot send to UDP {server}: {e}"))
            })?;
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(interrupt::PERIOD);
            if runtime::wait_readable(&sock, wait)? {
                match sock.recv_from(&mut buf) {
                    Ok((8, from)) if &buf[..4] == MAGIC => {
                        let pid = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                        sock.connect(from)?;
                        let mut link = UdpLink::new(sock, from, pid, cfg.timeout, cfg.timeout);
                        // The answer that makes the server's half-open
                        // session a session.
                        link.send_ack()?;
                        return Ok(Box::new(link));
                    }
                    Ok(_) => {} // not a WELCOME: ignore it
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!(
                                "no UDP server at {server} (start one with `ipclab serve udp`)"
                            ),
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no UDP server answered at {server} within the timeout"),
                ));
            }
        }
    }
}

struct UdpServer {
    /// Receives HELLOs only; non-blocking.
    sock: UdpSocket,
    local: SocketAddr,
    /// Sessions whose WELCOME is sent and whose client has not answered
    /// yet, oldest first: at most `--max-clients`, each for at most
    /// `--timeout`. They hold a socket but no session slot and no thread.
    half_open: VecDeque<HalfOpen>,
    cfg: Config,
}

/// A session socket waiting for the client's first datagram on it.
struct HalfOpen {
    sock: UdpSocket,
    from: SocketAddr,
    pid: i32,
    nonce: u64,
    since: Instant,
}

impl HalfOpen {
    /// Has the client answered? `Err` if it never will (an ICMP error:
    /// its port is closed).
    fn answered(&self) -> nix::Result<bool> {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        match socket::recv(self.sock.as_raw_fd(), &mut [0u8; 1], flags) {
            // The datagram stays queued: it is the session's first.
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The WELCOME: the magic and the server's pid.
fn welcome() -> [u8; 8] {
    let mut w = [0u8; 8];
    w[..4].copy_from_slice(MAGIC);
    w[4..].copy_from_slice(&(std::process::id() as i32).to_le_bytes());
    w
}

impl UdpServer {
    /// A socket of its own for a session with `from`, connected to it, that
    /// has sent the WELCOME; `None` if `from` cannot be reached. Out of
    /// descriptors, the oldest half-open session gives its own up for it;
    /// with none to give, that is the error (the server reports it and
    /// goes on: the client sends its HELLO again).
    fn session_socket(&mut self, from: SocketAddr) -> io::Result<Option<UdpSocket>> {
        let at = SocketAddr::new(self.local.ip(), 0);
        let sock = match socket_at(at, self.cfg.timeout) {
            Err(e)
                if [Errno::EMFILE, Errno::ENFILE]
                    .contains(&Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                    && self.push_out() =>
            {
                socket_at(at, self.cfg.timeout)?
            }
            r => r?,
        };
        // Whatever goes wrong here concerns this one client only, and
        // there is no one to tell: its HELLO is dropped, as if lost.
        if sock.connect(from).is_err() || sock.send(&welcome()).is_err() {
            return Ok(None);
        }
        Ok(Some(sock))
    }

    /// Make room: drop the oldest half-open session whose client has not
    /// answered (one that has is served at the next accept). False if
    /// there is none.
    fn push_out(&mut self) -> bool {
        match self.half_open.iter().position(|h| h.answered() != Ok(true)) {
            Some(i) => self.half_open.remove(i).is_some(),
            None => false,
        }
    }

    /// One HELLO from the listening socket, if there is one: a half-open
    /// session for it, or its WELCOME again if it is a repeat.
    fn hello(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        let (n, from) = match self.sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // An ICMP error for something sent from this socket: nothing to do.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
            Err(e) => return Err(e),
        };
        if n != 16 || &buf[..4] != MAGIC {
            return Ok(()); // not a HELLO of ours: ignore it
        }
        let pid = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let nonce = u64::from_le_bytes([
            buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15],
        ]);
        if let Some(i) = self.half_open.iter().position(|h| h.from == from) {
            if self.half_open[i].nonce == nonce {
                // Its WELCOME was lost: the same again, from the same socket.
                let _ = self.half_open[i].sock.send(&welcome());
                return Ok(());
            }
            // A new session from the same address replaces the old one.
            self.half_open.remove(i);
        }
        if self.half_open.len() >= self.cfg.max_clients.max(1) && !self.push_out() {
            // All of them have answered and will be sessions at the next
            // accepts; this client sends its HELLO again.
            return Ok(());
        }
        let Some(sock) = self.session_socket(from)? else {
            return Ok(());
        };
        self.half_open.push_back(HalfOpen {
            sock,
            from,
            pid,
            nonce,
            since: Instant::now(),
        });
        Ok(())
    }
}

impl Listener for UdpServer {
    fn endpoint(&self) -> String {
        self.local.to_string()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }

    /// Wait for a HELLO or for a client's answer to its WELCOME; only the
    /// answer makes a session.
    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let timeout = self.cfg.timeout;
        self.half_open.retain(|h| h.since.elapsed() < timeout);
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = std::iter::once(&self.sock)
                .chain(self.half_open.iter().map(|h| &h.sock))
                .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms = wait.as_millis().min(i32::MAX as u128) as i32;
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) | Err(Errno::EINTR) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        // Answers first: a client that has answered is served before more
        // HELLOs are read.
        if let Some(i) = ready[1..].iter().position(|&r| r) {
            match self.half_open[i].answered() {
                Ok(true) => {
                    if let Some(h) = self.half_open.remove(i) {
                        return Ok(Some(Box::new(UdpLink::new(
                            h.sock,
                            h.from,
                            h.pid,
                            self.cfg.idle_timeout,
                            self.cfg.timeout,
                        ))));
                    }
                }
                Ok(false) => {}
                // ICMP port unreachable (the client is gone) or another
                // error of that socket: the handshake is over.
                Err(_) => {
                    self.half_open.remove(i);
                }
            }
            return Ok(None);
        }
        if ready[0] {
            self.hello()?;
        }
        Ok(None)
    }
}

/// One side of a session: a connected UDP socket with sequence numbers,
/// acknowledgements and retransmission.
struct UdpLink {
    sock: UdpSocket,
    peer_pid: Option<i32>,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Sequence number of our next DATA (or FIN).
    next_seq: u32,
    /// Sent and not yet acknowledged: (sequence number, whole datagram).
    unacked: VecDeque<(u32, Vec<u8>)>,
    /// The next sequence number we accept from the peer.
    expected: u32,
    /// We received DATA we have not acknowledged yet.
    ack_owed: bool,
    /// Bytes received in order, not yet read: at most [`RECV_WINDOW`].
    inbox: VecDeque<u8>,
    eof: bool,
    /// One received datagram.
    dgram: Vec<u8>,
    /// Buffers of acknowledged datagrams, reused so that a round trip
    /// allocates nothing once the session is warm.
    spare: Vec<Vec<u8>>,
}

impl UdpLink {
    fn new(
        sock: UdpSocket,
        peer: SocketAddr,
        pid: i32,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        UdpLink {
            sock,
            // A pid means something only on this machine.
            peer_pid: peer.ip().is_loopback().then_some(pid),
            read_timeout,
            write_timeout,
            next_seq: 1,
            unacked: VecDeque::new(),
            expected: 1,
            ack_owed: false,
            inbox: VecDeque::new(),
            eof: false,
            dgram: vec![0; HEADER + CHUNK],
            spare: Vec::new(),
        }
    }

    fn header(&self, kind: u8, flags: u8, seq: u32) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0] = kind;
        h[1] = flags;
        h[4..8].copy_from_slice(&seq.to_le_bytes());
        // Cumulative: everything before `expected` has arrived.
        h[8..12].copy_from_slice(&(self.expected - 1).to_le_bytes());
        h
    }

    fn send_raw(&self, d: &[u8]) -> io::Result<()> {
        match self.sock.send(d) {
            Ok(_) => Ok(()),
            Err(e) => Err(peer_gone(e)),
        }
    }

    /// Keep a window's worth of buffers for reuse, not every one a large
    /// message ever needed.
    fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < WINDOW {
            self.spare.push(b);
        }
    }

    fn send_ack(&mut self) -> io::Result<()> {
        self.ack_owed = false;
        let h = self.header(ACK, 0, 0);
        self.send_raw(&h)
    }

    /// Handle one received datagram of `n` bytes (its real length, which
    /// may exceed the buffer it was received into).
    fn process(&mut self, n: usize) -> io::Result<()> {
        if n < HEADER || n > self.dgram.len() {
            // Not ours: too short for the header, or longer than any DATA
            // (the buffer got only its beginning).
            return Ok(());
        }
        let d = &self.dgram;
        let (kind, flags) = (d[0], d[1]);
        let seq = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        let acked = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        if acked >= self.next_seq {
            // It acknowledges what we never sent: a forgery, not taken.
            return Ok(());
        }
        while self.unacked.front().is_some_and(|(s, _)| *s <= acked) {
            if let Some((_, d)) = self.unacked.pop_front() {
                self.recycle(d);
            }
        }
        match kind {
            DATA if seq == self.expected => {
                let payload = &self.dgram[HEADER..n];
                if self.inbox.len() + payload.len() > RECV_WINDOW {
                    // No room until the reader takes some: dropped, not
                    // acknowledged; the sender sends it again.
                    return Ok(());
                }
                self.expected = next(seq)?;
                self.inbox.extend(payload);
                if flags & ACK_NOW != 0 {
                    self.send_ack()?;
                } else {
                    self.ack_owed = true;
                }
            }
            FIN if seq == self.expected => {
                self.expected = next(seq)?;
                self.eof = true;
                self.send_ack()?;
            }
            // A duplicate (our ACK was lost) or a gap (something before it
            // was): say what we have; the sender goes back to it.
            DATA | FIN => self.send_ack()?,
            _ => {}
        }
        Ok(())
    }

    /// Wait for at least one datagram and process it; every quarter second
    /// without one, retransmit, check the peer and the deadline.
    fn pump(&mut self, deadline: Instant, waiting: &str) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        let alive = peer_alive(self.peer_pid.unwrap_or(0), "peer");
        let ack = self.header(ACK, 0, 0);
        let n = {
            let (dgram, unacked, sock) = (&mut self.dgram, &self.unacked, &self.sock);
            let ack_owed = &mut self.ack_owed;
            interrupt::bounded(
                deadline,
                waiting,
                || {
                    // The retransmission timer.
                    for (_, d) in unacked {
                        sock.send(d).map_err(peer_gone)?;
                    }
                    if *ack_owed {
                        *ack_owed = false;
                        sock.send(&ack).map_err(peer_gone)?;
                    }
                    alive()
                },
                // MSG_TRUNC: the datagram's real length, even if longer
                // than the buffer (then it is not ours).
                || socket::recv(fd, dgram, MsgFlags::MSG_TRUNC),
            )
            .map_err(peer_gone)?
        };
        self.process(n)
    }

    /// Send one DATA datagram carrying `parts` (at most CHUNK bytes), after
    /// waiting for room in the window.
    fn send_data(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let deadline = Instant::now() + self.write_timeout;
        let waiting = "waiting for the peer to acknowledge";
        let mut round = 0;
        while self.unacked.len() >= WINDOW {
            overdue(round, deadline, waiting)?;
            self.pump(deadline, waiting)?;
            round += 1;
        }
        let flags = if self.unacked.len() + 1 == WINDOW {
            ACK_NOW
        } else {
            0
        };
        let seq = self.next_seq;
        let following = next(seq)?;
        let mut d = self.spare.pop().unwrap_or_default();
        d.clear();
        d.extend_from_slice(&self.header(DATA, flags, seq));
        let n = super::gather(parts, CHUNK, |_, p| d.extend_from_slice(p));
        self.send_raw(&d)?;
        self.ack_owed = false;
        self.next_seq = following;
        self.unacked.push_back((seq, d));
        Ok(n)
    }
}

/// The sequence number after `seq`. 2^32 datagrams (at least 4 GiB even of
/// empty ones) end a session rather than wrap around.
fn next(seq: u32) -> io::Result<u32> {
    seq.checked_add(1).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the session used up its 2^32 sequence numbers: start a new one",
        )
    })
}

/// A wait that keeps receiving datagrams that do not move it on (a peer
/// that sends but never acknowledges, that repeats itself or sends more
/// than the window) must still end at its deadline. Checked from the
/// second `round` on, so a wait answered by its first datagram — the round
/// trip's hot path — reads no clock for it.
fn overdue(round: u32, deadline: Instant, waiting: &str) -> io::Result<()> {
    if round > 0 && Instant::now() >= deadline {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "timed out {waiting}: datagrams came, but not the ones awaited (--timeout sets the limit)"
            ),
        ));
    }
    Ok(())
}

/// `ECONNREFUSED` on a connected UDP socket: the ICMP "port unreachable"
/// of a peer whose socket is closed.
fn peer_gone(e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    if e.kind() == io::ErrorKind::ConnectionRefused
        || e.raw_os_error() == Some(Errno::ECONNREFUSED as i32)
    {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the peer's port is closed (ICMP port unreachable): it is gone",
        )
    } else {
        e
    }
}

impl Read for UdpLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = Instant::now() + self.read_timeout;
        let waiting = "waiting for the peer to send";
        let mut round = 0;
        while self.inbox.is_empty() {
            if self.eof {
                return Ok(0);
            }
            overdue(round, deadline, waiting)?;
            self.pump(deadline, waiting)?;
            round += 1;
        }
        let (a, b) = self.inbox.as_slices();
        let n1 = a.len().min(buf.len());
        buf[..n1].copy_from_slice(&a[..n1]);
        let n2 = b.len().min(buf.len() - n1);
        buf[n1..n1 + n2].copy_from_slice(&b[..n2]);
        self.inbox.drain(..n1 + n2);
        Ok(n1 + n2)
    }
}

impl Write for UdpLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.send_data(bufs)
    }

    /// Acknowledge what we received, if that is owed. (Waiting here for
    /// our own data to be acknowledged would block a server after every
    /// reply until the client's next request, and fail a client that is
    /// slow to ask; unacknowledged data is retransmitted by the next read
    /// or write instead.)
    fn flush(&mut self) -> io::Result<()> {
        if self.ack_owed {
            self.send_ack()?;
        }
        Ok(())
    }
}

impl UdpLink {
    /// Wait until everything sent is acknowledged (retransmitting).
    #[cfg(test)]
    fn wait_acked(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.write_timeout;
        let mut round = 0;
        while !self.unacked.is_empty() {
            overdue(round, deadline, "waiting for the peer to acknowledge")?;
            self.pump(deadline, "waiting for the peer to acknowledge")?;
            round += 1;
        }
        Ok(())
    }
}

impl Drop for UdpLink {
    /// FIN: the end of our stream (best effort: a peer that misses it
    /// learns from its pid, ICMP or its idle timeout).
    fn drop(&mut self) {
        let h = self.header(FIN, 0, self.next_seq);
        let _ = self.sock.send(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Two links talking through a proxy that drops every 5th data
    /// datagram and sends every 3rd datagram twice: the data must arrive
    /// whole and in order.
    #[test]
    fn survives_loss_and_duplication() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let t = Duration::from_secs(20);
        let (a, b) = (socket_at(local, t).unwrap(), socket_at(local, t).unwrap());
        let proxy = socket_at(local, t).unwrap();
        let (pa, pb, pp) = (
            a.local_addr().unwrap(),
            b.local_addr().unwrap(),
            proxy.local_addr().unwrap(),
        );
        a.connect(pp).unwrap();
        b.connect(pp).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let relay = {
            let stop = Arc::clone(&stop);
            proxy
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 70_000];
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let Ok((len, from)) = proxy.recv_from(&mut buf) else {
                        continue;
                    };
                    let to = if from == pa { pb } else { pa };
                    n += 1;
                    // Every 5th DATA is lost (ACKs get through: a lost final
                    // ACK is the one case retransmission cannot repair
                    // without a timer thread, see the module doc).
                    if buf[0] == DATA && n.is_multiple_of(5) {
                        continue;
                    }
                    let _ = proxy.send_to(&buf[..len], to);
                    if n.is_multiple_of(3) {
                        let _ = proxy.send_to(&buf[..len], to); // duplicated
                    }
                }
            })
        };
        let me = std::process::id() as i32;
        let mut la = UdpLink::new(a, pp, me, t, t);
        let mut lb = UdpLink::new(b, pp, me, t, t);
        let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        // Request, reply, and a last word whose acknowledgement ends it:
        // each side waits in a read or for an acknowledgement (and so
        // retransmits) until the other has everything.
        let echo = std::thread::spawn(move || {
            let mut got = vec![0u8; 200_000];
            lb.read_exact(&mut got).unwrap();
            lb.write_all(&got).unwrap();
            let mut ok = [0u8; 2];
            lb.read_exact(&mut ok).unwrap();
            lb.flush().unwrap();
        });
        la.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        la.read_exact(&mut back).unwrap();
        la.write_all(b"ok").unwrap();
        la.wait_acked().unwrap();
        echo.join().unwrap();
        assert!(back == msg, "the echo differs");
        stop.store(true, Ordering::SeqCst);
        relay.join().unwrap();
    }
}
