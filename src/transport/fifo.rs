//! `fifo` — named pipes: one well-known request FIFO, a reply FIFO per client.
//!
//! # What it is
//! A FIFO ("named pipe", `mkfifo(3)`) is a pipe with a name in the
//! filesystem. Unlike an anonymous pipe, unrelated processes can open it by
//! its path; the data still never touches the disk — the file is only a
//! meeting point, and the bytes go through a buffer in the kernel exactly as
//! in a pipe. `ls -l` shows it with type `p`.
//!
//! # The classic client/server design
//! ```text
//!                        <dir>/<name>.fifo  (well-known, created by the server)
//!   client A ──packets──▶ ┌──────────────┐
//!   client B ──packets──▶ │ request FIFO │ ──▶ server: demultiplexes packets by client
//!                         └──────────────┘        │
//!   client A ◀── <dir>/<name>.<pidA>-<n>.reply ◀──┤  (private, created by the client)
//!   client B ◀── <dir>/<name>.<pidB>-<n>.reply ◀──┘
//! ```
//! A FIFO is one-way, and every client writes into the *same* request FIFO,
//! so a reply cannot go back the same way: each client makes a private reply
//! FIFO named after its pid (and a connection number, since one process may
//! hold several connections) and announces itself in its first packet.
//!
//! **Keeping messages whole.** Writes from several clients interleave on the
//! request FIFO. POSIX promises that a write of at most `PIPE_BUF` bytes
//! (4096 on Linux) is *atomic*: its bytes land together, never mixed with
//! another writer's. So every write to the request FIFO is one packet of at
//! most `PIPE_BUF` bytes: a 12-byte header naming the client, then up to
//! 4084 bytes of the client's byte stream. A message larger than that (the
//! 1 MiB echo) is simply carried by many packets; the server appends each
//! packet's bytes to that client's stream, so interleaving *between* packets
//! of different clients is harmless. (A write larger than `PIPE_BUF` may be
//! split by the kernel and interleaved with another writer's bytes — exactly
//! what the packets avoid.) Replies need no packets: a reply FIFO has one
//! writer, the server.
//!
//! ```text
//!   packet: | pid u32 | connection u32 | kind u8 | 0 | length u16 | data (≤ 4084) |
//!   kinds:  1 HELLO (a new client: open my reply FIFO)  2 DATA  3 BYE (I am leaving)
//! ```
//!
//! # Opening without hanging
//! `open(2)` of a FIFO blocks until the other side opens it too — a client
//! whose server is gone would hang in `open` forever. So:
//! * the client opens the request FIFO with `O_WRONLY | O_NONBLOCK`: it fails
//!   at once with `ENXIO` if no server has it open for reading (a stale FIFO
//!   of a dead server) and `ENOENT` if there is no FIFO at all;
//! * the client opens its reply FIFO with `O_RDONLY | O_NONBLOCK`, which
//!   never blocks, before announcing it; the server then opens it with
//!   `O_WRONLY | O_NONBLOCK`, which succeeds because the reader is there;
//! * the server opens the request FIFO for reading with `O_NONBLOCK` and then
//!   keeps one write descriptor of its own open on it: otherwise each time the
//!   last client closed its end the server's reads would see end of file. (On
//!   Linux, `O_RDWR` on a FIFO does both in one call, but POSIX leaves it
//!   undefined.)
//!
//! Every wait after that is a `poll(2)` bounded by the timeout; a client's
//! reply FIFO reports a hang-up (end of file) when the server dies.
//!
//! # Liveness
//! A client killed with SIGKILL sends no BYE. The server checks, while a
//! session waits for data, whether the client's pid still exists
//! (`kill(pid, 0)`), and ends the session of a dead client within a second.
//! The reply FIFO's *name* is gone long before: once the server has opened
//! it for writing (the client opened it for reading before its HELLO), the
//! server removes it — both ends are open, so the FIFO lives on nameless
//! until they close, and a client killed afterwards leaves nothing. Only a
//! client killed between creating it and the HELLO leaves one, which
//! `ipclab clean` recognises by the dead pid in its name. A stale request FIFO left by a
//! SIGKILLed server is recognised by the next server (opening it for writing
//! fails with `ENXIO`: nobody reads it) and replaced; a live server's FIFO is
//! reported as in use.
//!
//! # Limits
//! * `PIPE_BUF` = 4096: the atomic unit, hence the packet size.
//! * The FIFO buffer: 64 KiB by default, like a pipe.
//! * The server's demultiplexing thread forwards each packet to the client's
//!   session thread: one more wake-up per message than a pipe has.
//!
//! # System calls
//! `mkfifo(3)` (`mknod(2)`), `open(2)` with `O_NONBLOCK`, `poll(2)`,
//! `read(2)`, `write(2)`, `unlink(2)`, `kill(2)` with signal 0; see `fifo(7)`,
//! `pipe(7)` (on `PIPE_BUF`).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::signal::kill;
use nix::sys::stat::Mode;
use nix::unistd::{Pid, getuid, mkfifo};

use super::pipe::{read_within, write_within};
use super::{Boundaries, Capabilities, Config, Link, Listener, Transport};
use crate::clean::{self, Leftover};
use crate::runtime::{self, CreatedPath};

/// `PIPE_BUF` on Linux: writes up to this size are atomic.
pub const PIPE_BUF: usize = libc::PIPE_BUF;
const HEADER: usize = 12;
const MAX_DATA: usize = PIPE_BUF - HEADER;
const HELLO: u8 = 1;
const DATA: u8 = 2;
const BYE: u8 = 3;

/// The FIFO transport.
pub struct Fifo;

impl Transport for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }
    fn description(&self) -> &'static str {
        "named pipes: a well-known request FIFO, a private reply FIFO per client"
    }
    fn kernel_objects(&self) -> &'static str {
        "FIFO <dir>/<name>.fifo for requests; FIFO <dir>/<name>.<pid>-<n>.reply per client"
    }
    fn inspect_note(&self) -> &'static str {
        "The server holds the request FIFO <name>.fifo open for reading, and for writing too, so that its reads never see end-of-file between clients. The client holds the same FIFO (the same inode) for writing, and its own reply FIFO for reading while the server holds that one for writing; the reply FIFO's name is already gone (the server removed it once both ends were open), which is why only one FIFO file is listed below. Unlike a pipe, a FIFO has a path (type p in ls -l), so unrelated processes can meet at it; the data still goes through a kernel pipe buffer and never touches the disk."
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let mut found: Vec<Leftover> = clean::files_with_suffix(dir, ".fifo")
            .into_iter()
            .map(|(_, path)| {
                Leftover::judge_file(
                    "fifo",
                    "FIFO",
                    &path,
                    |t| t.is_fifo(),
                    || match open(
                        &path,
                        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                        Mode::empty(),
                    ) {
                        Ok(_) => Ok(Ok("a server reads it".into())),
                        Err(Errno::ENXIO) => {
                            Ok(Err("nobody reads it: its server was killed".into()))
                        }
                        Err(e) => Err(e.into()),
                    },
                )
            })
            .collect();
        // <name>.<pid>-<conn>.reply: a client's reply FIFO.
        for (instance, path) in clean::files_with_suffix(dir, ".reply") {
            let pid = instance
                .rsplit_once('.')
                .and_then(|(_, pc)| pc.split_once('-'))
                .and_then(|(p, _)| p.parse::<i32>().ok());
            found.push(Leftover::judge_file(
                "fifo",
                "reply FIFO",
                &path,
                |t| t.is_fifo(),
                || match pid {
                    Some(p) => Ok(clean::pid_verdict("client", p)),
                    None => Err(io::Error::other("no client pid in its name")),
                },
            ));
        }
        found
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: true,
            boundaries: Boundaries::Stream,
            max_message: Some(PIPE_BUF),
            crosses_machines: false,
            inherited: false,
        }
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let path = cfg.object_path(".fifo");
        make_fifo_replacing_stale(&path)?;
        let file = CreatedPath::adopt(path.clone())?;
        let rx = File::from(open(
            &path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?);
        // Our own writer: reads never see end of file between clients.
        let keepalive = File::from(open(
            &path,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?);
        Ok(Box::new(FifoServer {
            rx,
            _keepalive: keepalive,
            file,
            cfg: cfg.clone(),
            buf: vec![0; 64 * 1024],
            len: 0,
            sessions: HashMap::new(),
            ready: VecDeque::new(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let conn = NEXT.fetch_add(1, Ordering::Relaxed);
        let server_path = cfg.object_path(".fifo");
        let reply_path = reply_path(cfg, pid, conn);
        // A reply FIFO of this very name can only be left by a dead process
        // that had our pid before us; it is ours to replace.
        if let Ok(m) = fs::symlink_metadata(&reply_path)
            && m.file_type().is_fifo()
            && m.uid() == getuid().as_raw()
        {
            fs::remove_file(&reply_path)?;
        }
        mkfifo(&reply_path, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot create {}: {e}", reply_path.display()),
            )
        })?;
        let reply = CreatedPath::adopt(reply_path.clone())?;
        let rx = File::from(open(
            &reply_path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?);
        let tx = match open(
            &server_path,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no server at {}: the FIFO does not exist (start one with `ipclab serve fifo`)",
                        server_path.display()
                    ),
                ));
            }
            Err(Errno::ENXIO) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "no server reads {} (a stale FIFO; start one with `ipclab serve fifo`)",
                        server_path.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot open {}: {e}", server_path.display()),
                ));
            }
        };
        let mut link = FifoClient {
            rx,
            tx,
            pid,
            conn,
            timeout: cfg.timeout,
            packet: [0; PIPE_BUF],
            _reply: reply,
        };
        link.send_packet(HELLO, &[])?;
        Ok(Box::new(link))
    }
}

fn reply_path(cfg: &Config, pid: u32, conn: u32) -> PathBuf {
    cfg.object_path(&format!(".{pid}-{conn}.reply"))
}

/// Create the request FIFO; replace a stale one (nobody reads it), refuse a
/// live one and anything that is not our FIFO.
fn make_fifo_replacing_stale(path: &Path) -> io::Result<()> {
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    match mkfifo(path, mode) {
        Ok(()) => return Ok(()),
        Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot create {}: {e}", path.display()),
            ));
        }
    }
    runtime::check_ours(path, |t| t.is_fifo(), "a FIFO")?;
    match open(
        path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is already in use by a live server (stop it, or pick another --name)",
                path.display()
            ),
        )),
        Err(Errno::ENXIO) => {
            fs::remove_file(path)?;
            mkfifo(path, mode).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// The client's end: packets into the request FIFO, bytes out of its reply FIFO.
struct FifoClient {
    rx: File,
    tx: File,
    pid: u32,
    conn: u32,
    timeout: Duration,
    packet: [u8; PIPE_BUF],
    _reply: CreatedPath,
}

impl FifoClient {
    /// Write one packet (header + `data`, at most `PIPE_BUF` bytes) in one
    /// atomic write.
    fn send_packet(&mut self, kind: u8, data: &[u8]) -> io::Result<()> {
        let n = self.fill_header(kind, data.len());
        self.packet[HEADER..n].copy_from_slice(data);
        self.write_packet(n)
    }

    fn fill_header(&mut self, kind: u8, len: usize) -> usize {
        debug_assert!(len <= MAX_DATA);
        self.packet[0..4].copy_from_slice(&self.pid.to_le_bytes());
        self.packet[4..8].copy_from_slice(&self.conn.to_le_bytes());
        self.packet[8] = kind;
        self.packet[9] = 0;
        self.packet[10..12].copy_from_slice(&(len as u16).to_le_bytes());
        HEADER + len
    }

    fn write_packet(&mut self, n: usize) -> io::Result<()> {
        let packet = &self.packet[..n];
        let written = write_within(&mut self.tx, self.timeout, |f| f.write(packet))?;
        // A write of at most PIPE_BUF bytes is all or nothing.
        debug_assert_eq!(written, n);
        Ok(())
    }
}

impl Read for FifoClient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_within(&mut self.rx, self.timeout, buf)
    }
}

impl Write for FifoClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_DATA);
        self.send_packet(DATA, &buf[..n])?;
        Ok(n)
    }

    /// Gather as much of `bufs` as fits into one packet: a small message
    /// (header + payload) is one write.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(MAX_DATA - n);
            self.packet[HEADER + n..HEADER + n + take].copy_from_slice(&b[..take]);
            n += take;
            if n == MAX_DATA {
                break;
            }
        }
        let total = self.fill_header(DATA, n);
        self.write_packet(total)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for FifoClient {
    fn drop(&mut self) {
        // Best effort: the server also notices a dead pid.
        let n = self.fill_header(BYE, 0);
        let _ = self.tx.write(&self.packet[..n]);
    }
}

/// The serving side: reads packets from the request FIFO and hands each
/// client's bytes to that client's session.
struct FifoServer {
    rx: File,
    _keepalive: File,
    file: CreatedPath,
    cfg: Config,
    buf: Vec<u8>,
    len: usize,
    sessions: HashMap<(u32, u32), Session>,
    ready: VecDeque<Box<dyn Link>>,
}

/// Bytes the listener took off the request FIFO for one session, not yet
/// read by it. A queue that keeps its capacity: no allocation per packet.
#[derive(Default)]
struct Inbox {
    bytes: VecDeque<u8>,
    /// BYE came, or the session was dropped.
    closed: bool,
}

type SharedInbox = Arc<(Mutex<Inbox>, Condvar)>;

fn lock(inbox: &SharedInbox) -> MutexGuard<'_, Inbox> {
    inbox.0.lock().unwrap_or_else(|p| p.into_inner())
}

struct Session {
    inbox: SharedInbox,
}

impl Listener for FifoServer {
    fn endpoint(&self) -> String {
        self.file.path().display().to_string()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        if let Some(link) = self.ready.pop_front() {
            return Ok(Some(link));
        }
        if !runtime::wait_readable(&self.rx, wait)? {
            return Ok(None);
        }
        match self.rx.read(&mut self.buf[self.len..]) {
            Ok(n) => self.len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        self.dispatch();
        Ok(self.ready.pop_front())
    }
}

impl FifoServer {
    /// Hand out every complete packet in the buffer.
    fn dispatch(&mut self) {
        let mut at = 0;
        while self.len - at >= HEADER {
            let h = &self.buf[at..at + HEADER];
            let pid = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let conn = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let kind = h[8];
            let len = u16::from_le_bytes([h[10], h[11]]) as usize;
            if len > MAX_DATA || !(HELLO..=BYE).contains(&kind) {
                // Only our uid can write here (mode 0600), but do not trust it:
                // a corrupt stream cannot be resynchronised, so drop it.
                eprintln!(
                    "ipclab: fifo: a malformed packet on the request FIFO; discarding buffered input"
                );
                at = self.len;
                break;
            }
            if self.len - at < HEADER + len {
                break;
            }
            let key = (pid, conn);
            match kind {
                HELLO => {
                    if let Some(link) = self.open_session(key) {
                        self.ready.push_back(link);
                    }
                }
                DATA => {
                    let data = &self.buf[at + HEADER..at + HEADER + len];
                    // Bounded, so a client that floods the FIFO cannot make
                    // the server hoard memory; a session whose reader is
                    // gone is forgotten.
                    let limit = self.cfg.max_frame + (64 << 10);
                    let drop_it = match self.sessions.get(&key) {
                        Some(s) if Arc::strong_count(&s.inbox) == 1 => true,
                        Some(s) => {
                            let mut inbox = lock(&s.inbox);
                            if inbox.bytes.len() + len > limit {
                                inbox.closed = true;
                            } else {
                                inbox.bytes.extend(data);
                            }
                            s.inbox.1.notify_one();
                            inbox.closed
                        }
                        None => false,
                    };
                    if drop_it {
                        self.sessions.remove(&key);
                    }
                }
                _ => {
                    if let Some(s) = self.sessions.remove(&key) {
                        lock(&s.inbox).closed = true;
                        s.inbox.1.notify_one();
                    }
                }
            }
            at += HEADER + len;
        }
        self.buf.copy_within(at..self.len, 0);
        self.len -= at;
    }

    fn open_session(&mut self, key: (u32, u32)) -> Option<Box<dyn Link>> {
        let path = reply_path(&self.cfg, key.0, key.1);
        let tx = match open(
            &path,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            // The client left before we got to it.
            Err(_) => return None,
        };
        let opened = match tx.metadata() {
            Ok(m) if m.file_type().is_fifo() && m.uid() == getuid().as_raw() => m,
            _ => return None,
        };
        // Both ends are open now (the client opened its end for reading
        // before it said HELLO), so the name has done its job: remove it,
        // and a client killed from here on leaves nothing behind. (The
        // same "unlink after open" as posix-mq's connection queues.)
        if let Ok(m) = fs::symlink_metadata(&path)
            && (m.dev(), m.ino()) == (opened.dev(), opened.ino())
        {
            let _ = fs::remove_file(&path);
        }
        let inbox = SharedInbox::default();
        self.sessions.insert(
            key,
            Session {
                inbox: Arc::clone(&inbox),
            },
        );
        Some(Box::new(ServerSide {
            inbox,
            tx,
            pid: Pid::from_raw(key.0 as i32),
            reply_path: path,
            idle_timeout: self.cfg.idle_timeout,
            write_timeout: self.cfg.timeout,
        }))
    }
}

/// One client session as the server sees it: bytes forwarded by the
/// listener in, the client's reply FIFO out.
struct ServerSide {
    inbox: SharedInbox,
    tx: File,
    pid: Pid,
    reply_path: PathBuf,
    idle_timeout: Duration,
    write_timeout: Duration,
}

/// How often a waiting session checks that its client is alive.
const LIVENESS: Duration = Duration::from_millis(500);

impl Read for ServerSide {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = Instant::now() + self.idle_timeout;
        let mut inbox = lock(&self.inbox);
        while inbox.bytes.is_empty() {
            if inbox.closed {
                return Ok(0); // BYE: end of stream
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing",
                ));
            }
            let (guard, waited) = self
                .inbox
                .1
                .wait_timeout(inbox, left.min(LIVENESS))
                .unwrap_or_else(|p| p.into_inner());
            inbox = guard;
            if waited.timed_out()
                && inbox.bytes.is_empty()
                && kill(self.pid, None) == Err(Errno::ESRCH)
            {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("client pid {} died", self.pid),
                ));
            }
        }
        let n = buf.len().min(inbox.bytes.len());
        let (front, back) = inbox.bytes.as_slices();
        let k = n.min(front.len());
        buf[..k].copy_from_slice(&front[..k]);
        buf[k..n].copy_from_slice(&back[..n - k]);
        inbox.bytes.drain(..n);
        Ok(n)
    }
}

impl Write for ServerSide {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_within(&mut self.tx, self.write_timeout, |f| f.write(buf))
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        write_within(&mut self.tx, self.write_timeout, |f| f.write_vectored(bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ServerSide {
    fn drop(&mut self) {
        // A client killed with SIGKILL cannot remove its reply FIFO; we can,
        // once its pid is gone and the file is still a FIFO of ours.
        if kill(self.pid, None) == Err(Errno::ESRCH)
            && let Ok(m) = fs::symlink_metadata(&self.reply_path)
            && m.file_type().is_fifo()
            && m.uid() == getuid().as_raw()
        {
            let _ = fs::remove_file(&self.reply_path);
        }
    }
}
