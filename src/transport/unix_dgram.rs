//! `unix-dgram` — UNIX domain datagram sockets.
//!
//! # What it is
//! The third type of UNIX domain socket (see `unix(7)` and the
//! [`unix_seqpacket`](super::unix_seqpacket) module for all three).
//! `SOCK_DGRAM` has **no connections**: a socket bound to an address
//! receives every datagram that anyone sends to that address with
//! `sendto(2)`, each one whole, with the sender's address attached.
//! Unlike UDP, a UNIX datagram is never lost, duplicated or reordered on
//! Linux: it goes straight into the receiver's queue, and a sender whose
//! receiver's queue is full *waits* (or gets `EAGAIN`) instead of having
//! its datagram dropped.
//!
//! Compared with the other two types:
//!
//! | | `SOCK_STREAM` (`unix`) | `SOCK_SEQPACKET` | `SOCK_DGRAM` (this) |
//! |---|---|---|---|
//! | connection | yes (`listen`/`accept`) | yes | no: one bound socket hears everyone |
//! | boundaries | none: a byte stream | one `write` = one `read` | one `sendto` = one `recvfrom` |
//! | peer closes | `read` returns 0 | `read` returns 0 | **nobody is told** |
//! | who sent it | fixed at `accept` | fixed at `accept` | every datagram carries its sender |
//!
//! # How data and synchronisation flow
//! Datagram sockets have no `accept`, so the server makes its sessions
//! itself:
//! ```text
//!   server                                        client
//!   socket(DGRAM) bind(<dir>/<name>.dgram)        socket(DGRAM) bind(autobind: "@1a2b3")
//!   setsockopt(SO_PASSCRED)
//!   recvmsg() <--------- "hello" ---------------  sendto(<name>.dgram)
//!     (sender "@1a2b3", SCM_CREDENTIALS: pid, uid)
//!   session: socket(DGRAM) bind(autobind: "@4c5d6")
//!            connect("@1a2b3")
//!   write() ----------- "welcome" ------------->  recvmsg() (sender "@4c5d6", server pid)
//!                                                 connect("@4c5d6")
//!   poll() <----------- "ready" ----------------  write()
//!   (now a session: a thread of its own)
//!   read()  <---------- request datagram -------  write()
//!   write() ----------- reply datagram -------->  read()
//! ```
//! * **Half-open sessions.** A greeting costs its sender one datagram; a
//!   session costs the server a socket, and a thread that waits up to the
//!   idle timeout. So a greeted session is not a session yet: it waits on
//!   the accept loop itself (one more descriptor in its `poll(2)`, no
//!   thread) for the client's "ready", which a client sends as soon as it
//!   has connected its socket to the session's. Only then does it become a
//!   session with a thread. One that is not ready within `--timeout` (a
//!   forged greeting, a client that greeted and closed) is closed; at most
//!   `--max-clients` wait at once, the oldest closed first. This is the
//!   third step of TCP's handshake, and a SYN queue, for the same reason.
//! * **Addresses.** A client needs an address for the replies. Binding to
//!   an empty (`sizeof(sa_family_t)`-long) address asks the kernel to
//!   *autobind*: it picks a free name in the **abstract namespace** (shown
//!   as `@…` by `ss -x`), which is no file at all and vanishes with the
//!   socket, so a killed client leaves nothing behind. Each server session
//!   gets its own autobound socket, so the bound file only ever carries
//!   greetings, and a slow session cannot hold up the others.
//! * **`connect` on a datagram socket** makes no connection: it fixes the
//!   default destination (so plain `write`/`read` work) and makes the
//!   socket accept datagrams from that address only. A session socket
//!   therefore hears its client alone.
//! * **Credentials.** With `SO_PASSCRED`, every datagram received carries
//!   the sender's pid, uid and gid (`SCM_CREDENTIALS`, checked by the
//!   kernel). The server learns its client's pid from the greeting,
//!   `--same-user` compares the uid (a refusal is an `ERR` line instead of
//!   the welcome), and the client learns the server's pid from the welcome.
//! * **End of stream.** Nothing tells a datagram socket that its peer
//!   closed: a read would just wait for the next datagram. So each side
//!   sends an **empty datagram** when it closes its link (ipclab never sends
//!   an empty message otherwise), and a read that waits checks every quarter
//!   second whether the peer's process still lives (`kill(pid, 0)`), so a
//!   peer killed with SIGKILL is noticed in a fraction of a second.
//! * **Boundaries.** Each protocol message goes out as one datagram; one
//!   larger than 64 KiB (the 1 MiB echo) as a sequence of 64 KiB datagrams,
//!   which the framing joins — they cannot be lost or reordered.
//! * This is TFTP's design, and the `udp` transport's: the kernel routes
//!   each datagram to its session by address, so no thread has to sort
//!   them. Its price: a program that does not greet cannot talk to the
//!   server. `socat - UNIX-SENDTO:<name>.dgram,bind=<file>` sends every
//!   line to the bound file and accepts answers from that address only, so
//!   each of its datagrams is answered, from the bound socket, with an
//!   `ERR` line that says so.
//!
//! # Limits
//! * The receive queue holds at most `/proc/sys/net/unix/max_dgram_qlen`
//!   datagrams (10 by default); the sender then blocks, bounded by
//!   `SO_SNDTIMEO`, until the receiver reads.
//! * A datagram must fit the sender's buffer (`SO_SNDBUF`, 208 KiB by
//!   default): larger ones fail with `EMSGSIZE`. A datagram read into a
//!   smaller buffer is cut: its rest is lost. ipclab reads into 64 KiB, the
//!   largest it sends, with `recv(2)`'s `MSG_TRUNC` flag, which returns the
//!   real length: a session that receives a longer datagram ends with an
//!   error rather than hand on a stream with a hole in it.
//! * A sender that was never bound has no address: nobody can answer it.
//! * The bound socket file outlives a server killed with SIGKILL; the next
//!   server finds that nobody receives on it (`ECONNREFUSED`) and replaces
//!   it, and `ipclab clean` removes it.
//!
//! # System calls
//! `socket(2)` (`SOCK_DGRAM`), `bind(2)` (a path, and autobind),
//! `setsockopt(2)` (`SO_PASSCRED`, `SO_SNDTIMEO`), `poll(2)`, `sendto(2)`,
//! `recvmsg(2)` (`SCM_CREDENTIALS`, see `unix(7)` and `cmsg(3)`),
//! `connect(2)`, `recv(2)` (`MSG_TRUNC`), `write(2)`, `writev(2)`, `kill(2)`,
//! `unlink(2)`.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrLike, UnixAddr,
    sockopt,
};
use nix::sys::time::TimeVal;

use super::unix_seqpacket::{PACKET, Packets};
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{Leftover, socket_file_leftovers};
use crate::runtime::{self, CreatedPath};
use crate::sys::unix_socket::{listen_on_file, reach_error, refusal};

const SUFFIX: &str = ".dgram";
/// The client's greeting, and the server's answer from the session socket.
const HELLO: &[u8] = b"ipclab unix-dgram hello 1";
const WELCOME: &[u8] = b"ipclab unix-dgram welcome 1";
/// The client's first datagram to its session socket: it has connected.
const READY: &[u8] = b"ipclab unix-dgram ready 1";
/// The answer to a datagram that is not a greeting.
const NOT_GREETED: &str = "this ipclab unix-dgram server starts a session for each greeting and answers from that session's socket; talk to it with `ipclab client unix-dgram`";

/// The UNIX domain datagram socket transport.
pub struct UnixDgram;

impl Transport for UnixDgram {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "unix-dgram",
            description: "UNIX domain SOCK_DGRAM sockets: no connections, one autobound socket per session",
            kernel_objects: "socket file <dir>/<name>.dgram (greetings only); autobound abstract sockets (@…) per session",
            inspect_note: "The server holds the datagram socket bound to <name>.dgram, which only receives greetings, and one more socket per client, bound to an abstract name the kernel picked (autobind, shown as @…; no file). Each session socket is connected to its client's socket and the client's to it, so the kernel reports them as peers, like a stream pair; but connect(2) on a datagram socket only fixes the destination and filters senders: no connection exists, and nothing tells one side when the other closes.",
            // ipclab's packets; the kernel's own limit is the send buffer.
            capabilities: Capabilities::messages()
                .max_message(PACKET)
                .peer_credentials(),
        };
        &ABOUT
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let (sock, file) = listen_on_file(
            &cfg.dir,
            cfg.object_path(SUFFIX),
            SockType::Datagram,
            self.name(),
            cfg.timeout,
        )?;
        socket::setsockopt(&sock, sockopt::PassCred, &true)?;
        Ok(Box::new(DgramServer {
            sock,
            file,
            cfg: cfg.clone(),
            buf: vec![0; PACKET],
            half_open: VecDeque::new(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let path = cfg.object_path(SUFFIX);
        let server = UnixAddr::new(&path)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        // The server is whoever owns the socket file: only a welcome sent
        // with that uid (SCM_CREDENTIALS, which the kernel fills in and
        // only root could forge) is taken — another user who learns our
        // abstract address (it is listed in /proc/net/unix) cannot pose as
        // the server.
        let owner = std::fs::symlink_metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .map_err(|e| {
                reach_error(
                    Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    &path,
                    self.name(),
                )
            })?;
        let fd = new_socket()?;
        // The welcome's credentials tell us the server's pid.
        socket::setsockopt(&fd, sockopt::PassCred, &true)?;
        set_send_timeout(&fd, cfg.timeout)?;
        loop {
            match socket::sendto(fd.as_raw_fd(), HELLO, &server, MsgFlags::empty()) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server at {} receives nothing: its queue stayed full (is it frozen?)",
                            path.display()
                        ),
                    ));
                }
                Err(e) => return Err(reach_error(e, &path, self.name())),
            }
        }
        let (pid, session) = welcome(&fd, &path, owner, cfg.timeout)?;
        let closed = |e: Errno| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the server's session socket closed before the session began: {e}"),
            )
        };
        socket::connect(fd.as_raw_fd(), &session).map_err(closed)?;
        // The third step: the server makes this a session (a thread of its
        // own) only now (see "Half-open sessions").
        socket::send(fd.as_raw_fd(), READY, MsgFlags::empty()).map_err(closed)?;
        // Credentials are no longer needed; without them no datagram asks
        // the kernel for any.
        socket::setsockopt(&fd, sockopt::PassCred, &false)?;
        Ok(Box::new(Packets::link(
            fd,
            cfg.timeout,
            cfg.timeout,
            Some(pid),
        )?))
    }

    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        socket_file_leftovers(dir, SUFFIX, SockType::Datagram, self.name())
    }
}

/// A datagram socket bound to an abstract name the kernel picks.
fn new_socket() -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new_unnamed())?;
    Ok(fd)
}

fn set_send_timeout(fd: &OwnedFd, t: Duration) -> io::Result<()> {
    let tv = TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
    Ok(socket::setsockopt(fd, sockopt::SendTimeout, &tv)?)
}

/// One datagram received with its sender's address and credentials.
struct Received {
    len: usize,
    truncated: bool,
    from: Option<UnixAddr>,
    /// (pid, uid) from `SCM_CREDENTIALS`.
    cred: Option<(i32, u32)>,
}

/// Take the next datagram, if one is queued, into `buf`.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(libc::ucred);
    let msg = match socket::recvmsg::<UnixAddr>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
        r => r?,
    };
    let mut cred = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmCredentials(u) = c {
            cred = Some((u.pid(), u.uid()));
        }
    }
    Ok(Some(Received {
        len: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        // An unbound sender's address is empty: nobody to answer.
        // (Checked by length: nix's accessors assert on an empty address.)
        from: msg
            .address
            .filter(|a| a.len() as usize > std::mem::size_of::<libc::sa_family_t>()),
        cred,
    }))
}

/// The client's wait for the server's welcome: the server's pid and its
/// session socket's address. An `ERR` line instead is the server's refusal.
/// Datagrams sent by any uid other than `owner` (the socket file's) are
/// ignored: they are not from the server.
fn welcome(
    fd: &OwnedFd,
    path: &Path,
    owner: u32,
    timeout: Duration,
) -> io::Result<(i32, UnixAddr)> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !runtime::wait_readable(fd, left)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the server at {} did not answer within {timeout:?} (is it frozen?)",
                    path.display()
                ),
            ));
        }
        let Some(r) = receive(fd, &mut buf)? else {
            continue;
        };
        if !matches!(r.cred, Some((_, uid)) if uid == owner) {
            continue;
        }
        let data = &buf[..r.len];
        if data.starts_with(b"ERR ") {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                String::from_utf8_lossy(data).trim_end().to_string(),
            ));
        }
        match (data == WELCOME, r.from, r.cred) {
            (true, Some(from), Some((pid, _))) => return Ok((pid, from)),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} answered with something other than ipclab's welcome (another program's socket?)",
                        path.display()
                    ),
                ));
            }
        }
    }
}

struct DgramServer {
    sock: OwnedFd,
    // Dropped after the socket: the file goes with the server.
    file: CreatedPath,
    cfg: Config,
    /// Where a greeting is received (large enough to see any datagram
    /// whole, so a long one is not taken for a greeting).
    buf: Vec<u8>,
    /// Greeted and welcomed, not yet ready, oldest first (see "Half-open
    /// sessions"): no thread, at most `max_clients`, each for at most
    /// `--timeout`.
    half_open: VecDeque<HalfOpen>,
}

/// A session socket whose client has not said "ready" yet.
struct HalfOpen {
    sock: OwnedFd,
    /// The greeting's sender, by its credentials.
    pid: i32,
    since: Instant,
}

impl DgramServer {
    /// Tell a sender that is not served why, from the bound socket
    /// (without waiting: a sender whose queue is full misses it).
    fn answer(&self, to: &UnixAddr, why: &str) {
        let line = format!("ERR {why}\n");
        let _ = socket::sendto(
            self.sock.as_raw_fd(),
            line.as_bytes(),
            to,
            MsgFlags::MSG_DONTWAIT,
        );
    }
}

impl Listener for DgramServer {
    fn endpoint(&self) -> String {
        self.file.path().display().to_string()
    }

    /// Wait for a greeting or for a half-open session's "ready"; a session
    /// is returned only once its client is ready.
    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        // Half-open sessions older than --timeout are closed.
        let now = Instant::now();
        while let Some(h) = self.half_open.front()
            && now.duration_since(h.since) >= self.cfg.timeout
        {
            self.half_open.pop_front();
        }
        let wait = match self.half_open.front() {
            Some(h) => wait.min(self.cfg.timeout.saturating_sub(now.duration_since(h.since))),
            None => wait,
        };
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut fds: Vec<PollFd> = std::iter::once(&self.sock)
            .chain(self.half_open.iter().map(|h| &h.sock))
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(Errno::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if let Some(i) = readable[1..].iter().position(|&r| r) {
            let h = self.half_open.remove(i).expect("polled");
            return self.ready(h);
        }
        self.greeting()
    }
}

impl DgramServer {
    /// A half-open session's first datagram: "ready" makes it a session;
    /// anything else (an end-of-stream marker, a request that skipped the
    /// handshake) closes it.
    fn ready(&self, h: HalfOpen) -> io::Result<Option<Box<dyn Link>>> {
        let mut first = [0u8; 64];
        // MSG_TRUNC: the datagram's real length, so a long one that begins
        // with "ready" is not taken for it.
        match socket::recv(
            h.sock.as_raw_fd(),
            &mut first,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) if n <= first.len() && first[..n] == *READY => {}
            Ok(_) => {
                eprintln!(
                    "ipclab: a client (pid {}) did not complete its greeting: closing its session",
                    h.pid
                );
                return Ok(None);
            }
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let link = Packets::link(h.sock, self.cfg.idle_timeout, self.cfg.timeout, Some(h.pid))?;
        Ok(Some(Box::new(link)))
    }

    /// A datagram on the bound socket: a greeting gets a half-open session
    /// and its welcome; anything else an error line, or nothing.
    fn greeting(&mut self) -> io::Result<Option<Box<dyn Link>>> {
        let Some(r) = receive(&self.sock, &mut self.buf)? else {
            return Ok(None);
        };
        let (Some(from), Some((pid, uid))) = (r.from, r.cred) else {
            eprintln!(
                "ipclab: a datagram from an unbound socket: no address to answer (bind the client's socket)"
            );
            return Ok(None);
        };
        if r.len == 0 {
            // A late end-of-stream marker: nothing to serve.
            return Ok(None);
        }
        if r.truncated || self.buf[..r.len] != *HELLO {
            self.answer(&from, NOT_GREETED);
            return Ok(None);
        }
        // `--same-user`: refused before any session exists, by the
        // credentials the kernel attached to the greeting.
        if let Some(why) = self.cfg.same_user.then(|| refusal(uid, pid)).flatten() {
            self.answer(&from, &why);
            return Ok(None);
        }
        let session = new_socket()?;
        match socket::connect(session.as_raw_fd(), &from) {
            Ok(()) => {}
            // The client is gone already.
            Err(Errno::ECONNREFUSED | Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        // Without waiting: a client that sends greetings and reads no
        // welcomes fills its queue, and must not hold up the accept loop.
        match socket::send(session.as_raw_fd(), WELCOME, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) => {
                eprintln!("ipclab: a client (pid {pid}) did not take its welcome: {e}");
                return Ok(None);
            }
        }
        if self.half_open.len() >= self.cfg.max_clients.max(1) {
            // Full: the oldest goes (a real client is ready within a round
            // trip of its welcome; the oldest is the least likely one).
            self.half_open.pop_front();
        }
        self.half_open.push_back(HalfOpen {
            sock: session,
            pid,
            since: Instant::now(),
        });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tempfile::TempDir, Box<dyn Listener>, UnixAddr) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            dir: dir.path().join("rt"),
            name: "t".into(),
            ..Config::default()
        };
        let listener = UnixDgram.listen(&cfg).unwrap();
        let addr = UnixAddr::new(&cfg.object_path(SUFFIX)).unwrap();
        (dir, listener, addr)
    }

    /// A welcome from a uid other than the socket file's owner is not the
    /// server's: it is ignored (the red team's man in the middle, another
    /// user sending a welcome to a root client's abstract address).
    #[test]
    fn a_welcome_from_another_uid_is_ignored() {
        let client = new_socket().unwrap();
        socket::setsockopt(&client, sockopt::PassCred, &true).unwrap();
        let me = socket::getsockname::<UnixAddr>(client.as_raw_fd()).unwrap();
        let poser = new_socket().unwrap();
        socket::sendto(poser.as_raw_fd(), WELCOME, &me, MsgFlags::empty()).unwrap();
        let ours = nix::unistd::getuid().as_raw();
        let path = Path::new("/nonexistent/t.dgram");
        // Owned by another uid: our own welcome is a poser's, and ignored.
        let e = welcome(
            &client,
            path,
            ours.wrapping_add(1),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // From the owner: taken.
        socket::sendto(poser.as_raw_fd(), WELCOME, &me, MsgFlags::empty()).unwrap();
        let (pid, _) = welcome(&client, path, ours, Duration::from_secs(2)).unwrap();
        assert_eq!(pid, std::process::id() as i32);
    }

    /// A program that sends a request instead of the greeting gets no
    /// session, and is told why from the address it sent to.
    #[test]
    fn a_datagram_that_is_not_a_greeting_is_answered_with_an_error() {
        let (_dir, mut listener, addr) = server();
        let other = new_socket().unwrap();
        socket::sendto(other.as_raw_fd(), b"ping\n", &addr, MsgFlags::empty()).unwrap();
        assert!(listener.accept(Duration::from_secs(5)).unwrap().is_none());
        assert!(runtime::wait_readable(&other, Duration::from_secs(5)).unwrap());
        let mut buf = [0u8; 512];
        let (n, from) = socket::recvfrom::<UnixAddr>(other.as_raw_fd(), &mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]);
        assert!(
            line.starts_with("ERR ") && line.contains("ipclab client unix-dgram"),
            "{line}"
        );
        assert_eq!(from.unwrap().path(), addr.path());
    }

    /// A client that greets again and again and reads no welcomes cannot
    /// hold up the accept loop: once its queue is full, its greetings get
    /// no session, at once.
    #[test]
    fn greetings_whose_welcomes_are_not_read_do_not_stall_accept() {
        let (_dir, mut listener, addr) = server();
        let (done, finished) = std::sync::mpsc::channel();
        // On a thread, so that a stall is a failure here, not a hang.
        std::thread::spawn(move || {
            let greedy = new_socket().unwrap();
            let mut sessions = Vec::new();
            for _ in 0..30 {
                socket::sendto(greedy.as_raw_fd(), HELLO, &addr, MsgFlags::empty()).unwrap();
                if let Some(s) = listener.accept(Duration::from_secs(5)).unwrap() {
                    sessions.push(s);
                }
            }
            let _ = done.send(sessions.len());
        });
        let sessions = finished
            .recv_timeout(Duration::from_secs(3))
            .expect("accept stalled on a client that reads no welcomes");
        // The queue holds /proc/sys/net/unix/max_dgram_qlen (10) welcomes.
        assert!(sessions < 30, "{sessions} sessions");
    }

    /// A greeting from a socket without an address cannot be answered: no
    /// session, and the server goes on.
    #[test]
    fn an_unbound_sender_gets_no_session() {
        let (_dir, mut listener, addr) = server();
        let unbound = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::sendto(unbound.as_raw_fd(), HELLO, &addr, MsgFlags::empty()).unwrap();
        assert!(listener.accept(Duration::from_secs(5)).unwrap().is_none());
    }
}
