//! `eventfd` — shared memory for the data, `eventfd` counters for the
//! wake-ups, and the descriptors handed over a UNIX socket.
//!
//! # What it is
//! An `eventfd(2)` is the smallest kernel object there is: a 64-bit counter
//! behind a file descriptor. `write` adds to it; `read` returns it and
//! resets it to zero, blocking while it is zero. It carries no data, only
//! "something happened", and it can be passed to `poll`/`epoll` like any
//! descriptor. Here it replaces the semaphores of the `shm` transport:
//!
//! ```text
//!   client                                               server
//!   memfd (2 × 64 KiB data) + 4 eventfds ──SCM_RIGHTS──▶  (receives the 5 descriptors)
//!   read(c2s_empty) ─ copy in ─ write(c2s_full, 1) ─────▶ read(c2s_full) ─ copy out ─ write(c2s_empty, 1)
//!   read(s2c_full) ◀──────────────────────────────────── write(s2c_full, 1) ─ copy in ─ read(s2c_empty)
//!   copy out ─ write(s2c_empty, 1)
//! ```
//! Each direction is a one-slot buffer, as in `shm`: `full` says "a chunk
//! is there", `empty` says "you may write the next one". The drawing shows
//! the slow path of `empty`: the sender finds the slot still taken (a flag
//! in the shared page says so) only when it gets ahead of the reader — the
//! chunks of a message larger than 64 KiB. Then it raises a second flag,
//! "I wait", and sleeps in `read(empty)`; the reader writes `empty` only
//! when it sees that flag. In a ping-pong the slot is always free again by
//! the time the next message goes out, so a round trip costs what a bare
//! eventfd ping-pong costs: one `write(full)` and one `read(full)` per
//! direction.
//!
//! # How the descriptors get there
//! An eventfd and a `memfd_create(2)` region have no name: a process gets
//! one by creating it, by inheriting it across `fork`, or by receiving it
//! over a UNIX socket as *ancillary data* (`SCM_RIGHTS`, see `unix(7)`),
//! where the kernel installs copies of the sender's descriptors into the
//! receiver. ipclab uses the socket: the client connects to
//! `<dir>/<name>.eventfd`, sends one byte with its five descriptors
//! attached, and keeps the connection open for the whole session. That way
//! any process can be a client (inheritance would allow only the server's
//! parent, like the `pipe` transport), and the connection doubles as a
//! life line: when a peer dies, the kernel closes its end, and the other
//! side's `poll` sees the hang-up.
//!
//! # eventfd against semaphores
//! A process-shared POSIX semaphore (`shm`) is a word in shared memory: a
//! `sem_post` or `sem_wait` that finds no waiter is one atomic instruction,
//! and only a real wait or wake enters the kernel (`futex(2)`). An eventfd
//! always does: every signal is a `write` and every wait a `read`, even
//! when nobody sleeps — which is why `empty` above is guarded by flags in
//! shared memory, the same trick a semaphore plays inside. (Without them,
//! signalling and waiting on `empty` for every chunk, a 64 B round trip
//! took 6.43 µs instead of 5.10: `ipclab bench eventfd shm --sizes 64`,
//! with `shm` at 5.1 µs in both runs.) In exchange an eventfd is a file
//! descriptor: it works with `poll`, `epoll` and `io_uring`, so one thread
//! can wait for many of them and for sockets at once.
//!
//! # Limits
//! * 64 KiB per chunk in each direction (larger messages go in chunks).
//! * Five descriptors per client on each side (the open-file limit,
//!   `ulimit -n`, see `ipclab limits`).
//!
//! # System calls
//! `memfd_create(2)`, `ftruncate(2)`, `mmap(2)`, `eventfd(2)`,
//! `sendmsg(2)`/`recvmsg(2)` with `SCM_RIGHTS`, `read(2)`/`write(2)` on the
//! eventfds, `poll(2)` on the socket (readable means the peer hung up), plus the socket calls of
//! the `unix` transport.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};

use super::unix::{connect_socket, listen_on_file};
use super::{Boundaries, Capabilities, Config, Link, Listener, Transport};
use crate::clean::Leftover;
use crate::interrupt;
use crate::runtime::{self, CreatedPath};

/// Bytes per chunk in each direction.
pub const CAPACITY: usize = 64 * 1024;
const DATA_OFFSET: usize = 4096;
const REGION: usize = DATA_OFFSET + 2 * CAPACITY;
const SUFFIX: &str = ".eventfd";
/// Descriptors a client hands over: the region, then c2s full, c2s empty,
/// s2c full, s2c empty.
const FDS: usize = 5;

/// The eventfd transport.
pub struct Eventfd;

impl Transport for Eventfd {
    fn name(&self) -> &'static str {
        "eventfd"
    }
    fn description(&self) -> &'static str {
        "a memfd for the data, eventfd counters for the wake-ups, passed over a UNIX socket"
    }
    fn kernel_objects(&self) -> &'static str {
        "socket file <dir>/<name>.eventfd; per client a memfd region and 4 eventfds (anon_inode:[eventfd])"
    }
    fn inspect_note(&self) -> &'static str {
        "Each process holds four anon_inode:[eventfd] descriptors (their fdinfo shows eventfd-count, the counter right now) and maps the same memfd region, which /proc/<pid>/maps lists as /memfd:ipclab-eventfd (deleted): a file with no name anywhere. The server never opened any of them: the client created them and sent them over the UNIX socket, and the kernel installed copies in the server (SCM_RIGHTS). The socket pair stays connected only so that each side notices when the other dies."
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: true,
            boundaries: Boundaries::Messages,
            max_message: Some(CAPACITY),
            crosses_machines: false,
            inherited: false,
        }
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let (listener, file) = listen_on_file(cfg, SUFFIX, SockType::Stream, self.name())?;
        Ok(Box::new(EfdServer {
            listener,
            file,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let sock = connect_socket(
            &cfg.object_path(SUFFIX),
            SockType::Stream,
            self.name(),
            cfg.timeout,
        )?;
        let memfd = nix::sys::memfd::memfd_create(
            "ipclab-eventfd",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )?;
        nix::unistd::ftruncate(&memfd, REGION as libc::off_t)?;
        // c2s full, c2s empty, s2c full, s2c empty.
        let efds = [
            new_eventfd(0)?,
            new_eventfd(0)?,
            new_eventfd(0)?,
            new_eventfd(0)?,
        ];
        let raw: Vec<RawFd> = std::iter::once(memfd.as_raw_fd())
            .chain(efds.iter().map(|e| e.as_raw_fd()))
            .collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(b"E")],
            &cmsg,
            MsgFlags::empty(),
            None,
        )?;
        let [c2s_full, c2s_empty, s2c_full, s2c_empty] = efds;
        Ok(Box::new(EfdLink {
            sock,
            ch: Some(Channel::new(
                &memfd, s2c_full, s2c_empty, c2s_full, c2s_empty,
            )?),
            rx: 1,
            read_timeout: cfg.timeout,
            write_timeout: cfg.timeout,
            chunk: None,
            off: 0,
            eof: false,
        }))
    }

    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        super::unix::socket_file_leftovers(dir, SUFFIX, SockType::Stream, self.name())
    }
}

fn new_eventfd(initial: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor is owned at once.
    let fd = unsafe { libc::eventfd(initial, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct EfdServer {
    listener: OwnedFd,
    // Dropped after the listener: the file goes with the server.
    file: CreatedPath,
    cfg: Config,
}

impl Listener for EfdServer {
    fn endpoint(&self) -> String {
        self.file.path().display().to_string()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        if !runtime::wait_readable(&self.listener, wait)? {
            return Ok(None);
        }
        let sock = socket::accept4(&self.listener, SockFlag::SOCK_CLOEXEC)?;
        if !super::unix::admit(&sock, &self.cfg)? {
            return Ok(None);
        }
        // The descriptors are received by the session's own thread, on its
        // first read: a client that connects and sends nothing holds up
        // only its own session, never the accept loop.
        Ok(Some(Box::new(EfdLink {
            sock,
            ch: None,
            rx: 0,
            read_timeout: self.cfg.idle_timeout,
            write_timeout: self.cfg.timeout,
            chunk: None,
            off: 0,
            eof: false,
        })))
    }
}

/// Receive a client's five descriptors (within `timeout`) and map its region.
fn receive_channel(sock: &OwnedFd, timeout: Duration) -> io::Result<Channel> {
    if !runtime::wait_readable(sock, timeout)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client sent no descriptors",
        ));
    }
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; FDS]);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors for us.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an eventfd client of ours");
    if fds.len() != FDS {
        return Err(bad());
    }
    let mut it = fds.into_iter();
    let memfd = it.next().ok_or_else(bad)?;
    // The region must be what a client of ours made.
    if std::fs::File::from(memfd.try_clone()?).metadata()?.len() != REGION as u64 {
        return Err(bad());
    }
    let mut next = || it.next().ok_or_else(bad);
    let (c2s_full, c2s_empty, s2c_full, s2c_empty) = (next()?, next()?, next()?, next()?);
    Channel::new(&memfd, c2s_full, c2s_empty, s2c_full, s2c_empty)
}

/// The shared region and the four counters, as one side sees them.
struct Channel {
    map: MmapRaw,
    /// Incoming: "a chunk is there" (we read it), "slot free" (we write it).
    rx_full: OwnedFd,
    rx_empty: OwnedFd,
    /// Outgoing: "a chunk is there" (we write it), "slot free" (we read it).
    tx_full: OwnedFd,
    tx_empty: OwnedFd,
}

impl Channel {
    fn new(
        memfd: &OwnedFd,
        rx_full: OwnedFd,
        rx_empty: OwnedFd,
        tx_full: OwnedFd,
        tx_empty: OwnedFd,
    ) -> io::Result<Channel> {
        let map = MmapOptions::new()
            .len(REGION)
            .map_raw(&std::fs::File::from(memfd.try_clone()?))?;
        Ok(Channel {
            map,
            rx_full,
            rx_empty,
            tx_full,
            tx_empty,
        })
    }

    /// Word `i` of direction `dir`'s line in the header page: 0 the
    /// chunk's length, 1 "the slot holds an unread chunk", 2 "the sender
    /// waits for the slot".
    fn word(&self, dir: usize, i: usize) -> &AtomicU32 {
        // SAFETY: within the mapping, aligned; only ever used atomically.
        unsafe { &*(self.map.as_ptr().add(dir * 64 + i * 4) as *const AtomicU32) }
    }

    fn len_word(&self, dir: usize) -> &AtomicU32 {
        self.word(dir, 0)
    }

    fn busy(&self, dir: usize) -> &AtomicU32 {
        self.word(dir, 1)
    }

    fn sender_waits(&self, dir: usize) -> &AtomicU32 {
        self.word(dir, 2)
    }

    fn data(&self, dir: usize) -> *mut u8 {
        // SAFETY: within the mapping.
        unsafe { self.map.as_mut_ptr().add(DATA_OFFSET + dir * CAPACITY) }
    }
}

/// One side: reads chunks of direction `rx`, writes chunks of `1 - rx`.
struct EfdLink {
    /// The session's socket: it carried the descriptors, and is then only
    /// watched for the peer's hang-up.
    sock: OwnedFd,
    /// None on the server until the client's descriptors have arrived.
    ch: Option<Channel>,
    rx: usize,
    read_timeout: Duration,
    write_timeout: Duration,
    /// The incoming chunk being read: its length and how much is consumed.
    chunk: Option<usize>,
    off: usize,
    eof: bool,
}

impl EfdLink {
    /// The channel, received first if it has not been yet.
    fn channel(&mut self) -> io::Result<&Channel> {
        if self.ch.is_none() {
            self.ch = Some(receive_channel(&self.sock, self.read_timeout)?);
        }
        Ok(self.ch.as_ref().expect("just set"))
    }

    /// Wait for `efd` to count, bounded; between quarter seconds, check
    /// that the peer has not hung up the socket.
    fn wait(sock: &OwnedFd, efd: &OwnedFd, timeout: Duration, waiting: &str) -> io::Result<()> {
        let sock = sock.as_fd();
        let mut value = [0u8; 8];
        interrupt::bounded(
            Instant::now() + timeout,
            waiting,
            || {
                // Nothing more is ever sent on it: readable means end of file.
                let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(n) if n > 0 => Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the peer is gone (its end of the socket hung up)",
                    )),
                    _ => Ok(()),
                }
            },
            || {
                // SAFETY: a valid fd and an 8-byte buffer.
                Errno::result(unsafe { libc::read(efd.as_raw_fd(), value.as_mut_ptr().cast(), 8) })
            },
        )
        .map(|_| ())
    }

    /// Wait until the outgoing slot (`dir`) is free, within `timeout`. The
    /// common case — the peer took the last chunk long ago — is one atomic
    /// load, no system call. Otherwise: say we wait, look once more (the
    /// peer may have freed the slot just before it could see our flag),
    /// and sleep on `efd`, which the peer signals only when it sees the
    /// flag. Both sides store, then load the other's word (sequentially
    /// consistent), so at least one of them sees the other: no lost
    /// wake-up. A wake-up left over from an earlier race is spurious, so
    /// the slot is checked again after each.
    fn wait_slot(
        sock: &OwnedFd,
        ch: &Channel,
        dir: usize,
        timeout: Duration,
        waiting: &str,
    ) -> io::Result<()> {
        if ch.busy(dir).load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            ch.sender_waits(dir).store(1, Ordering::SeqCst);
            if ch.busy(dir).load(Ordering::SeqCst) == 0 {
                ch.sender_waits(dir).store(0, Ordering::SeqCst);
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let slept = Self::wait(sock, &ch.tx_empty, left, waiting);
            ch.sender_waits(dir).store(0, Ordering::SeqCst);
            slept?;
            if ch.busy(dir).load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out {waiting} (--timeout sets the limit)"),
                ));
            }
        }
    }

    /// The reader's side of [`EfdLink::wait_slot`]: the incoming slot
    /// (`dir`) is free; wake the sender only if it waits.
    fn free_slot(ch: &Channel, dir: usize) -> io::Result<()> {
        ch.busy(dir).store(0, Ordering::SeqCst);
        if ch.sender_waits(dir).load(Ordering::SeqCst) != 0 {
            Self::signal(&ch.rx_empty)?;
        }
        Ok(())
    }

    fn signal(efd: &OwnedFd) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: a valid fd and an 8-byte buffer; an eventfd write blocks
        // only when the counter would overflow, which one slot never does.
        Errno::result(unsafe { libc::write(efd.as_raw_fd(), one.as_ptr().cast(), 8) })?;
        Ok(())
    }

    /// Fill the outgoing slot with up to CAPACITY bytes of `bufs`.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let tx = 1 - self.rx;
        let timeout = self.write_timeout;
        self.channel()?;
        let (sock, ch) = (&self.sock, self.ch.as_ref().expect("received"));
        Self::wait_slot(
            sock,
            ch,
            tx,
            timeout,
            "waiting for the peer to take the last chunk",
        )?;
        let area = ch.data(tx);
        let n = super::gather(bufs, CAPACITY, |at, p| {
            // SAFETY: within our area, which the reader does not touch
            // until we signal `full`.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), area.add(at), p.len()) }
        });
        ch.len_word(tx).store(n as u32, Ordering::SeqCst);
        ch.busy(tx).store(1, Ordering::SeqCst);
        Self::signal(&ch.tx_full)?;
        Ok(n)
    }
}

impl Read for EfdLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let (rx, timeout) = (self.rx, self.read_timeout);
        self.channel()?;
        let (sock, ch) = (&self.sock, self.ch.as_ref().expect("received"));
        let len = match self.chunk {
            Some(len) => len,
            None => {
                Self::wait(sock, &ch.rx_full, timeout, "waiting for the peer to send")?;
                let len = (ch.len_word(rx).load(Ordering::SeqCst) as usize).min(CAPACITY);
                if len == 0 {
                    self.eof = true;
                    return Ok(0);
                }
                self.chunk = Some(len);
                self.off = 0;
                len
            }
        };
        let n = buf.len().min(len - self.off);
        // SAFETY: the chunk lies in the peer's area, which it does not
        // touch until we signal `empty`.
        unsafe { std::ptr::copy_nonoverlapping(ch.data(rx).add(self.off), buf.as_mut_ptr(), n) };
        self.off += n;
        if self.off == len {
            self.chunk = None;
            Self::free_slot(ch, rx)?;
        }
        Ok(n)
    }
}

impl Write for EfdLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.send(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EfdLink {
    /// End of stream: an empty chunk, if the slot frees up soon (a peer
    /// that stopped reading learns it from the socket's hang-up instead).
    fn drop(&mut self) {
        let tx = 1 - self.rx;
        let Some(ch) = &self.ch else { return };
        if Self::wait_slot(
            &self.sock,
            ch,
            tx,
            Duration::from_millis(100),
            "ending the stream",
        )
        .is_ok()
        {
            ch.len_word(tx).store(0, Ordering::SeqCst);
            ch.busy(tx).store(1, Ordering::SeqCst);
            let _ = Self::signal(&ch.tx_full);
        }
    }
}
