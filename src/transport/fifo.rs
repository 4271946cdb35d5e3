//! `fifo` — named pipes: a well-known FIFO to meet, a private FIFO pair per client.
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
//!                          <dir>/<name>.fifo  (well-known, created by the server)
//!   client A ──HELLO A──▶ ┌──────────────┐
//!   client B ──HELLO B──▶ │ meeting FIFO │ ──▶ server: opens the client's pair
//!                         └──────────────┘
//!   client A ──▶ <name>.<pidA>-<n>.req   ──▶ session A ─┐   (private, created
//!   client A ◀── <name>.<pidA>-<n>.reply ◀──────────────┘    by the client)
//!   client B ──▶ <name>.<pidB>-<n>.req   ──▶ session B ─┐
//!   client B ◀── <name>.<pidB>-<n>.reply ◀──────────────┘
//! ```
//! A FIFO is one-way, and anyone may write into the well-known FIFO, so it
//! cannot carry a conversation: replies could not find their way back, and
//! requests from several clients would interleave. So each client makes a
//! private FIFO for each direction, named after its pid (and a connection
//! number, since one process may hold several connections), and announces
//! them in one **HELLO** packet on the well-known FIFO. From then on a
//! session is exactly a pair of pipes: a `write` and a `read` per direction,
//! no thread in between.
//!
//! (The textbook FIFO server — Stevens, *UNIX Network Programming* vol. 2,
//! ch. 4 — sends every request through the well-known FIFO and only the
//! replies through a private one. With many clients the server must then
//! sort requests by client, and a request larger than `PIPE_BUF` must be
//! cut into packets that say whose they are. ipclab's first FIFO transport
//! did that; the hand-off from its sorting thread to the session made a
//! 64 B round trip 3.4× a pipe's. With a private pair per client it costs
//! what a pipe costs.)
//!
//! **Keeping HELLOs whole.** Writes from several clients interleave on the
//! well-known FIFO. POSIX promises that a write of at most `PIPE_BUF` bytes
//! (4096 on Linux) is *atomic*: its bytes land together, never mixed with
//! another writer's. A HELLO is 12 bytes, one write, so it always arrives
//! whole:
//! ```text
//!   HELLO: | pid u32 | connection u32 | kind u8 = 1 | 0 | length u16 = 0 |
//! ```
//! A pipe keeps no write boundaries, though: a writer that is not an
//! ipclab client can leave a fragment (five bytes, say), and the next
//! client's HELLO then follows it in the same read. So the server does not
//! cut the stream into 12-byte packets blindly: where 12 bytes do not look
//! like a HELLO, or name no pair it can open, it moves on by one byte, and
//! finds the next real HELLO wherever it begins.
//!
//! # Opening without hanging
//! `open(2)` of a FIFO blocks until the other side opens it too — a client
//! whose server is gone would hang in `open` forever. So every open is
//! `O_NONBLOCK`, in an order that makes each one succeed:
//! * the client opens the well-known FIFO with `O_WRONLY | O_NONBLOCK`: it
//!   fails at once with `ENXIO` if no server has it open for reading (a
//!   stale FIFO of a dead server) and `ENOENT` if there is no FIFO at all;
//! * the client opens its reply FIFO for reading (a non-blocking read open
//!   always succeeds), and its request FIFO for reading *and then* for
//!   writing: a non-blocking write open needs a reader, and until the
//!   server has its own, the client's placeholder reader is that reader;
//! * on HELLO the server opens the reply FIFO for writing (the client's
//!   reader is there) and the request FIFO for reading, removes both names
//!   (both ends of each are open, so the FIFOs live on nameless, and a
//!   client killed from here on leaves nothing), and writes one WELCOME byte
//!   into the reply FIFO; the client, which waited for it in `poll(2)`,
//!   closes its placeholder.
//!
//! # Trusting a HELLO
//! Anyone who can write the well-known FIFO can name any path in a HELLO,
//! so the server opens only what its client must have made: both names are
//! first looked at with `lstat(2)` (a FIFO, not a symbolic link, of the
//! server's own user; anything else is not opened at all), then opened
//! with `O_NOFOLLOW`, and the opened descriptors are checked again with
//! `fstat(2)` — the same file as looked at, still a FIFO of ours — before
//! any name is removed. Nothing on the accept path waits: the opens are
//! non-blocking, and the WELCOME is one non-blocking write into a FIFO that
//! a real client has just made and that only the server writes, so a reply
//! FIFO that is already full is refused at once instead of holding up
//! every other client for `--timeout`.
//!
//! # End of a session
//! Exactly as for a pipe: `read` returns end of file once every write end
//! is closed, so a client that quits, crashes or is killed ends its session
//! at once (the server holds only the read end of the request FIFO), and a
//! server that dies ends the client's. The server keeps one write
//! descriptor of its own on the well-known FIFO, so that its reads there
//! never see end of file between clients.
//!
//! # Leftovers
//! A client killed between creating its FIFOs and the server's opening
//! them leaves their names; its server removes them within a second, by
//! the dead pid in the names ([`Listener::sweep`]), and so does
//! `ipclab clean`. A stale well-known FIFO left by a SIGKILLed server is recognised
//! by the next server (opening it for writing fails with `ENXIO`: nobody
//! reads it) and replaced; a live server's FIFO is reported as in use.
//!
//! # Limits
//! * `PIPE_BUF` = 4096: the atomic unit on the shared FIFO.
//! * The FIFO buffer: 64 KiB by default, like a pipe; a writer grows it to
//!   fit a message, as the pipe transport does.
//!
//! # System calls
//! `mkfifo(3)` (`mknod(2)`), `open(2)` with `O_NONBLOCK`, `fcntl(2)`,
//! `poll(2)`, `read(2)`, `write(2)`/`writev(2)`, `unlink(2)`; see `fifo(7)`,
//! `pipe(7)` (on `PIPE_BUF`).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use nix::unistd::{getuid, mkfifo};

use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{self, Leftover};
use crate::runtime::{self, CreatedPath};
use crate::sys::fd_link::{FdLink, set_blocking, write_within};

/// `PIPE_BUF` on Linux: writes up to this size are atomic.
pub const PIPE_BUF: usize = libc::PIPE_BUF;
const HEADER: usize = 12;
const HELLO: u8 = 1;
/// The server's one-byte answer on the reply FIFO: the session is open.
const WELCOME: u8 = b'W';

/// The FIFO transport.
pub struct Fifo;

impl Transport for Fifo {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "fifo",
            description: "named pipes: a well-known FIFO to meet, a private request/reply FIFO pair per client",
            kernel_objects: "FIFO <dir>/<name>.fifo for HELLOs; FIFOs <dir>/<name>.<pid>-<n>.req and .reply per client (unlinked once open)",
            inspect_note: "The server holds the well-known FIFO <name>.fifo open for reading, and for writing too, so that its reads never see end-of-file between clients. Each session is a pair of FIFOs the client made: the server reads the request FIFO and writes the reply FIFO, the client the other way round. Their names are already gone (the server removed them once both ends were open), which is why they show as nameless pipes, exactly like an anonymous pipe pair: only their creation differed. Unlike a pipe, a FIFO has a path (type p in ls -l), so unrelated processes can meet at it; the data still goes through a kernel pipe buffer and never touches the disk.",
            capabilities: Capabilities::stream(),
        };
        &ABOUT
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let mut found: Vec<Leftover> = objects::files_with_suffix(dir, ".fifo")
            .into_iter()
            .map(|(_, path)| {
                Leftover::judge_file(
                    "fifo",
                    "FIFO",
                    &path,
                    |t| t.is_fifo(),
                    || match open_fifo(&path, OFlag::O_WRONLY) {
                        Ok(_) => Ok(Ok("a server reads it".into())),
                        Err(Errno::ENXIO) => {
                            Ok(Err("nobody reads it: its server was killed".into()))
                        }
                        Err(e) => Err(e.into()),
                    },
                )
            })
            .collect();
        // <name>.<pid>-<conn>.req / .reply: a client's private FIFOs.
        for (suffix, what) in [(".req", "request FIFO"), (".reply", "reply FIFO")] {
            for (instance, path) in objects::files_with_suffix(dir, suffix) {
                let pid = instance
                    .rsplit_once('.')
                    .and_then(|(_, pc)| pc.split_once('-'))
                    .and_then(|(p, _)| p.parse::<i32>().ok());
                found.push(Leftover::judge_file(
                    "fifo",
                    what,
                    &path,
                    |t| t.is_fifo(),
                    || match pid {
                        Some(p) => Ok(objects::pid_verdict("client", p)),
                        None => Err(io::Error::other("no client pid in its name")),
                    },
                ));
            }
        }
        found
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let path = cfg.object_path(".fifo");
        make_fifo_replacing_stale(&path)?;
        let file = CreatedPath::adopt(path.clone())?;
        let rx = File::from(open_fifo(&path, OFlag::O_RDONLY)?);
        // Our own writer: reads never see end of file between clients.
        let keepalive = File::from(open_fifo(&path, OFlag::O_WRONLY)?);
        Ok(Box::new(FifoServer {
            rx,
            _keepalive: keepalive,
            file,
            cfg: cfg.clone(),
            buf: [0; PIPE_BUF],
            len: 0,
            ready: VecDeque::new(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let conn = NEXT.fetch_add(1, Ordering::Relaxed);
        let server_path = cfg.object_path(".fifo");
        let req = make_private_fifo(&private_path(cfg, pid, conn, ".req"))?;
        let reply = make_private_fifo(&private_path(cfg, pid, conn, ".reply"))?;
        // Never blocks: a read open needs no writer.
        let rx = open_fifo(reply.path(), OFlag::O_RDONLY)?;
        // A write open needs a reader; until the server opens its own, the
        // placeholder is that reader.
        let placeholder = open_fifo(req.path(), OFlag::O_RDONLY)?;
        let tx = open_fifo(req.path(), OFlag::O_WRONLY)?;
        let mut hello = File::from(open_fifo(&server_path, OFlag::O_WRONLY).map_err(|e| {
            match e {
                Errno::ENOENT => io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no server at {}: the FIFO does not exist (start one with `ipclab serve fifo`)",
                        server_path.display()
                    ),
                ),
                Errno::ENXIO => io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "no server reads {} (a stale FIFO; start one with `ipclab serve fifo`)",
                        server_path.display()
                    ),
                ),
                e => io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot open {}: {e}", server_path.display()),
                ),
            }
        })?);
        let mut packet = [0u8; HEADER];
        packet[0..4].copy_from_slice(&pid.to_le_bytes());
        packet[4..8].copy_from_slice(&conn.to_le_bytes());
        packet[8] = HELLO;
        // One write of 12 bytes: atomic, whatever other clients write.
        write_within(&mut hello, cfg.timeout, |f| f.write(&packet))?;
        drop(hello);

        // The welcome: the server has both FIFOs open.
        let mut rx = File::from(rx);
        let deadline = Instant::now() + cfg.timeout;
        let mut byte = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !runtime::wait_readable(&rx, left)? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the server at {} did not open this client's FIFOs within {:?} (is it frozen?)",
                        server_path.display(),
                        cfg.timeout
                    ),
                ));
            }
            match rx.read(&mut byte) {
                Ok(1) if byte[0] == WELCOME => break,
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server closed this client's FIFOs before the session began",
                    ));
                }
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server's welcome was not ipclab's",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        drop(placeholder);
        set_blocking(&rx)?;
        Ok(Box::new(FdLink::new(
            rx.into(),
            tx,
            cfg.timeout,
            cfg.timeout,
        )?))
    }
}

fn private_path(cfg: &Config, pid: u32, conn: u32, suffix: &str) -> PathBuf {
    cfg.object_path(&format!(".{pid}-{conn}{suffix}"))
}

/// Open a FIFO without blocking (see "Opening without hanging").
fn open_fifo(path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    open(
        path,
        flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
}

/// A client's private FIFO, removed again if the session never starts (the
/// server removes the name once it has opened it).
fn make_private_fifo(path: &Path) -> io::Result<CreatedPath> {
    // A FIFO of this very name can only be left by a dead process that had
    // our pid before us; it is ours to replace.
    if let Ok(m) = fs::symlink_metadata(path)
        && m.file_type().is_fifo()
        && m.uid() == getuid().as_raw()
    {
        fs::remove_file(path)?;
    }
    mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot create {}: {e}", path.display()),
        )
    })?;
    CreatedPath::adopt(path.to_path_buf())
}

/// Create the well-known FIFO; replace a stale one (nobody reads it),
/// refuse a live one and anything that is not our FIFO.
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
    match open_fifo(path, OFlag::O_WRONLY) {
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

/// The serving side: takes HELLOs off the well-known FIFO and opens each
/// client's pair.
struct FifoServer {
    rx: File,
    _keepalive: File,
    file: CreatedPath,
    cfg: Config,
    buf: [u8; PIPE_BUF],
    len: usize,
    /// Sessions opened from HELLOs read together, handed out one per
    /// `accept`.
    ready: VecDeque<Box<dyn Link>>,
}

impl Listener for FifoServer {
    fn endpoint(&self) -> String {
        self.file.path().display().to_string()
    }

    /// A client killed before the server opened its FIFO pair leaves the
    /// two names; this server's own ones (`<name>.<pid>-<n>.req/.reply`)
    /// whose client is gone are removed.
    fn sweep(&mut self) {
        super::sweep_leftovers(
            Fifo.leftovers(&self.cfg.dir),
            &format!("{}.", self.cfg.name),
        );
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
        // HELLOs are written whole, but a pipe keeps no write boundaries:
        // bytes that are no HELLO (a fragment, garbage) are skipped one at
        // a time, so the next real HELLO is found wherever it begins.
        let mut at = 0;
        let mut skipped = 0;
        while self.len - at >= HEADER {
            let h = &self.buf[at..at + HEADER];
            let pid = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let conn = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            if h[8] != HELLO || h[9..12] != [0, 0, 0] {
                at += 1;
                skipped += 1;
                continue;
            }
            match self.open_session(pid, conn) {
                Ok(link) => {
                    self.ready.push_back(link);
                    at += HEADER;
                }
                Err(e) => {
                    eprintln!("ipclab: fifo: no session for client pid {pid} ({conn}): {e}");
                    // Perhaps no HELLO at all, but twelve bytes that only
                    // looked like one: a real HELLO may begin inside them.
                    at += 1;
                }
            }
        }
        if skipped > 0 {
            eprintln!(
                "ipclab: fifo: skipped {skipped} byte(s) on the well-known FIFO that were no HELLO \
                 (only `ipclab client fifo` speaks this handshake)"
            );
        }
        self.buf.copy_within(at..self.len, 0);
        self.len -= at;
        Ok(self.ready.pop_front())
    }
}

impl FifoServer {
    /// Open the pair a HELLO names, if it is one a client of ours made
    /// (see "Trusting a HELLO"); nothing here waits.
    fn open_session(&self, pid: u32, conn: u32) -> io::Result<Box<dyn Link>> {
        let req_path = private_path(&self.cfg, pid, conn, ".req");
        let reply_path = private_path(&self.cfg, pid, conn, ".reply");
        let gone = || {
            // No reader on its reply FIFO, or no FIFOs at all: the client
            // left (or never made them) before we got to it.
            io::Error::new(
                io::ErrorKind::NotFound,
                "its FIFOs are gone or closed: it left before its session began",
            )
        };
        let not_ours = |path: &Path| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a FIFO of this server's user: not opened",
                    path.display()
                ),
            )
        };
        // Looked at before anything is opened: a FIFO of ours, by name.
        let mut seen = Vec::with_capacity(2);
        for path in [&reply_path, &req_path] {
            let m = match fs::symlink_metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
                Err(e) => return Err(e),
            };
            if !is_our_fifo(&m) {
                return Err(not_ours(path));
            }
            seen.push(m);
        }
        let open = |path: &Path, flags| {
            open_fifo(path, flags).map_err(|e| match e {
                Errno::ENXIO | Errno::ENOENT => gone(),
                e => e.into(),
            })
        };
        let tx = open(&reply_path, OFlag::O_WRONLY)?;
        let rx = open(&req_path, OFlag::O_RDONLY)?;
        // The proof is the opened descriptor: the file looked at, still a
        // FIFO of ours (not one swapped in since).
        for ((fd, path), before) in [(&tx, &reply_path), (&rx, &req_path)]
            .into_iter()
            .zip(&seen)
        {
            let opened = File::from(fd.try_clone()?).metadata()?;
            if !is_our_fifo(&opened) || (opened.dev(), opened.ino()) != (before.dev(), before.ino())
            {
                return Err(not_ours(path));
            }
        }
        // Both ends are open now, so the names have done their job: remove
        // them, and a client killed from here on leaves nothing behind.
        // (The same "unlink after open" as posix-mq's connection queues.)
        for (path, m) in [&reply_path, &req_path].into_iter().zip(&seen) {
            if let Ok(now) = fs::symlink_metadata(path)
                && (now.dev(), now.ino()) == (m.dev(), m.ino())
            {
                let _ = fs::remove_file(path);
            }
        }
        // One non-blocking write: a real client's reply FIFO is new and
        // empty, so a full one is no client's, and waiting for room would
        // hold up every other client.
        let mut tx = File::from(tx);
        match tx.write(&[WELCOME]) {
            Ok(1) => {}
            Ok(_) => return Err(io::Error::other("its reply FIFO took no WELCOME")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "its reply FIFO was full before its session began: no client of ours made it",
                ));
            }
            Err(e) => return Err(e),
        }
        set_blocking(&rx)?;
        Ok(Box::new(FdLink::new(
            rx,
            tx.into(),
            self.cfg.idle_timeout,
            self.cfg.timeout,
        )?))
    }
}

/// A FIFO (not a symbolic link) of the server's own user.
fn is_our_fifo(m: &fs::Metadata) -> bool {
    m.file_type().is_fifo() && m.uid() == getuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Garbage and HELLOs naming no FIFOs on the well-known FIFO open no
    /// session, and the next real client is served.
    #[test]
    fn bad_hellos_open_nothing_and_the_server_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            dir: dir.path().join("rt"),
            name: "t".into(),
            timeout: Duration::from_secs(5),
            ..Config::default()
        };
        let mut server = Fifo.listen(&cfg).unwrap();
        let mut w = File::from(open_fifo(&cfg.object_path(".fifo"), OFlag::O_WRONLY).unwrap());
        // A HELLO for a client that made no FIFOs, then bytes that are no
        // packet at all.
        let mut hello = [0u8; HEADER];
        hello[0..4].copy_from_slice(&999_999u32.to_le_bytes());
        hello[8] = HELLO;
        w.write_all(&hello).unwrap();
        w.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        for _ in 0..3 {
            assert!(server.accept(Duration::from_millis(200)).unwrap().is_none());
        }
        // A real client: its link works once the server accepts it.
        let client = std::thread::spawn({
            let cfg = cfg.clone();
            move || {
                let mut link = Fifo.connect(&cfg).unwrap();
                link.write_all(b"hi").unwrap();
                let mut back = [0u8; 2];
                link.read_exact(&mut back).unwrap();
                back
            }
        });
        let mut session = loop {
            if let Some(s) = server.accept(Duration::from_secs(5)).unwrap() {
                break s;
            }
        };
        let mut got = [0u8; 2];
        session.read_exact(&mut got).unwrap();
        session.write_all(&got).unwrap();
        assert_eq!(&client.join().unwrap(), b"hi");
    }
}
