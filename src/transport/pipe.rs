//! `pipe` — two anonymous pipes between a parent and its child.
//!
//! # What it is
//! `pipe(2)` gives two file descriptors: whatever is written to one end can
//! be read from the other, in order, through a buffer in the kernel (64 KiB
//! by default). A pipe has no name: the only way to share one is to
//! *inherit* it, which is why pipes work only between related processes —
//! here, the client and the server child it starts. It is the mechanism
//! behind every `|` in a shell.
//!
//! A pipe is one-way, so a conversation needs two:
//!
//! ```text
//!        client (parent)                          server (child: ipclab serve pipe)
//!   req_w ─── request pipe ──────────────────────▶ fd 0 (stdin)
//!   rep_r ◀── reply pipe ───────────────────────── fd 1 (stdout)
//! ```
//!
//! The server speaks the protocol on its stdin and stdout, so
//! `ipclab serve pipe` *is* a pipe server whenever its parent wires pipes to
//! it — and a person can also type into it in a terminal. `ipclab client
//! pipe` and `ipclab demo pipe` start their own server child; a server
//! started by hand has no client but you.
//!
//! # How data and synchronisation flow
//! The parent creates both pipes (`pipe2(2)` with `O_CLOEXEC`), starts the
//! child with the read end of one as its stdin and the write end of the
//! other as its stdout (`dup2(2)` in the child, then `execve(2)`), and then
//! **closes its copies of the child's ends**. A `read` on a pipe sees end of
//! file only when *every* write end is closed: if the parent kept the
//! request pipe's read end or, worse, the reply pipe's write end open, it
//! would never see end of file when the child dies — it would wait for a
//! reply that its own forgotten descriptor could in theory still send. The
//! same reasoning makes the server see end of file when the client goes.
//!
//! `write` copies into the pipe buffer and wakes a reader blocked in `read`;
//! a writer whose buffer is full waits until the reader drains it. A round
//! trip is two writes and two reads (`strace -c` counts exactly that), with
//! four copies.
//!
//! **Large messages and deadlock.** A 1 MiB echo is 16 times the pipe
//! buffer. A naive server that echoes bytes as they arrive would start
//! writing the reply while the client is still blocked writing the request:
//! the reply pipe fills (the client is not reading yet), the server blocks,
//! stops reading, the request pipe fills, and both wait forever. ipclab's
//! server reads a whole message before it replies (the framing in
//! [`crate::conn`] collects the frame first), and the client writes the
//! whole request before it reads: each pipe only ever has one side waiting
//! on it, so there is no cycle.
//!
//! # Limits
//! * Buffer: 64 KiB by default (`F_GETPIPE_SZ`), at most
//!   `/proc/sys/fs/pipe-max-size` (1 MiB) per pipe via `F_SETPIPE_SZ`. A
//!   message that does not fit goes in pieces, and each piece waits for
//!   the reader to make room: a 64 KiB payload plus ipclab's 8-byte header
//!   would cost an extra wake-up per direction. So the writer grows the
//!   pipe to the next power of two above a message before writing it (up
//!   to the maximum, once per size; `FdLink::fit`). Measured with
//!   `ipclab bench pipe --sizes 64K,1M` against the raw baseline, which
//!   keeps 64 KiB: 64 KiB went from 1.50× raw to 1.10–1.16×, and 1 MiB
//!   from 1.16× to 0.86× (faster than the raw pipe, which moves 1 MiB in
//!   16 pieces).
//! * `PIPE_BUF` (4096 bytes on Linux): writes up to this size are atomic,
//!   which matters only with several writers (see the FIFO transport).
//! * One client: the parent that made the pipes. When it closes its ends
//!   (or `quit`s), the server exits.
//!
//! # Timeouts
//! A pipe has no `SO_RCVTIMEO`. Reads are plain blocking `read(2)`s, which a
//! wake-up signal interrupts after a quarter second so the reader can look
//! at its deadline ([`crate::interrupt`]) — a `poll(2)` before every read
//! would cost a system call per message. The write ends are non-blocking,
//! so a full pipe makes `write` return `EAGAIN` and the wait for space is a
//! bounded `poll(2)`. (The server's stdout is made non-blocking only if it is a
//! pipe: never a terminal it shares with a shell.)
//!
//! # System calls
//! `pipe2(2)`, `fork(2)`/`execve(2)` (via `std::process::Command`), `dup2(2)`,
//! `close(2)`, `poll(2)`, `read(2)`, `write(2)`/`writev(2)`, `fcntl(2)`
//! (`O_NONBLOCK`); see `pipe(7)`.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;

use super::{Boundaries, Capabilities, Config, Link, Listener, Transport};
use crate::process::ServerProcess;
use crate::runtime;

/// The anonymous pipe transport.
pub struct Pipe;

impl Transport for Pipe {
    fn name(&self) -> &'static str {
        "pipe"
    }
    fn description(&self) -> &'static str {
        "two anonymous pipes to a server child it starts (stdin/stdout)"
    }
    fn kernel_objects(&self) -> &'static str {
        "two pipes (pipe:[inode]), inherited by the server child as its stdin and stdout"
    }
    fn inspect_note(&self) -> &'static str {
        "The server was started with the read end of one pipe as its fd 0 and the write end of another as its fd 1; it moved them to other descriptors (and pointed 0 and 1 at /dev/null, so that nothing else writes into the reply pipe). The client holds the opposite ends: CONNECTED TO names the same pipe inode in both processes. A pipe has no name in any filesystem: only processes that inherit its descriptors across fork(2)/execve(2) can use it, which is why this transport has exactly one client, the parent. Between write(2) and read(2) the bytes wait in the pipe's kernel buffer (see `ipclab limits`)."
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: false,
            boundaries: Boundaries::Stream,
            max_message: None,
            crosses_machines: false,
            inherited: true,
        }
    }

    /// The serving side adopts this process's stdin and stdout.
    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let stdin = io::stdin().as_fd().try_clone_to_owned()?;
        let stdout = io::stdout().as_fd().try_clone_to_owned()?;
        let endpoint = format!(
            "stdin {} / stdout {}",
            describe_fd(&stdin),
            describe_fd(&stdout)
        );
        let interactive = nix::unistd::isatty(io::stdin().as_fd()).unwrap_or(false);
        if interactive {
            eprintln!(
                "ipclab: a pipe exists only between related processes: `ipclab client pipe` and \
                 `ipclab demo pipe` start their own server child. Here the pipe server reads \
                 your terminal: type ping, echo hello, quit."
            );
        } else {
            // Nothing else may write into the reply pipe: point fd 0 and 1
            // at /dev/null; the protocol uses the copies taken above.
            let null = File::options().read(true).write(true).open("/dev/null")?;
            nix::unistd::dup2_stdin(&null)?;
            nix::unistd::dup2_stdout(&null)?;
        }
        let link = FdLink::new(stdin, stdout, cfg.idle_timeout, cfg.timeout)?;
        Ok(Box::new(PipeServer {
            link: Some(link),
            endpoint,
        }))
    }

    /// Start a server child wired to two new pipes.
    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let server = ServerProcess::spawn(&cfg.server_exe()?, self, cfg, &["--quiet"])?;
        server.into_link()
    }
}

struct PipeServer {
    link: Option<FdLink>,
    endpoint: String,
}

impl Listener for PipeServer {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        match self.link.take() {
            Some(link) => Ok(Some(Box::new(link))),
            None => {
                std::thread::sleep(wait);
                Ok(None)
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.link.is_none()
    }
}

/// `pipe:[12345]`, `a terminal`, `/dev/null` — what an fd is, for people.
fn describe_fd(fd: &OwnedFd) -> String {
    match File::from(fd.try_clone().expect("dup")).metadata() {
        Ok(m) if m.file_type().is_fifo() => format!("pipe:[{}]", m.ino()),
        Ok(m) if m.file_type().is_char_device() => "a terminal".into(),
        Ok(m) => format!("inode {}", m.ino()),
        Err(_) => "?".into(),
    }
}

/// A link over two file descriptors (pipes or FIFOs) with bounded waits:
/// reads are plain blocking reads bounded by the wake-up signal
/// ([`crate::interrupt::read`]); the write end is made non-blocking when it
/// is a pipe or FIFO, and a full pipe is waited out in `poll(2)`.
pub struct FdLink {
    rx: File,
    tx: File,
    read_timeout: Duration,
    write_timeout: Duration,
    /// The capacity of the pipe we write into (`F_GETPIPE_SZ`); 0 when
    /// `tx` is not a pipe (a terminal, a file).
    tx_capacity: usize,
}

impl FdLink {
    /// Read from `rx`, write to `tx`.
    pub fn new(
        rx: OwnedFd,
        tx: OwnedFd,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> io::Result<Self> {
        let tx = File::from(tx);
        let mut tx_capacity = 0;
        if tx.metadata()?.file_type().is_fifo() {
            set_nonblocking(&tx)?;
            tx_capacity = fcntl(&tx, FcntlArg::F_GETPIPE_SZ).unwrap_or(0).max(0) as usize;
        }
        Ok(FdLink {
            rx: File::from(rx),
            tx,
            read_timeout,
            write_timeout,
            tx_capacity,
        })
    }

    /// Make the pipe we write into large enough for a message of `len`
    /// bytes, up to `/proc/sys/fs/pipe-max-size`: a message that fits is
    /// one `write` and one wake-up of the reader; one that does not fit
    /// goes in pieces, each waiting for the reader to make room. Grown
    /// once per size class, never shrunk; a refusal (the user's
    /// `pipe-user-pages-soft` is used up) just leaves the pipe as it is.
    fn fit(&mut self, len: usize) {
        if self.tx_capacity == 0 || len <= self.tx_capacity {
            return;
        }
        static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let max = *MAX.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1 << 20)
        });
        if self.tx_capacity >= max {
            return;
        }
        let want = len.next_power_of_two().min(max) as i32;
        match fcntl(&self.tx, FcntlArg::F_SETPIPE_SZ(want)) {
            Ok(got) => self.tx_capacity = got.max(0) as usize,
            // Do not ask again.
            Err(_) => self.tx_capacity = max,
        }
    }
}

impl Read for FdLink {
    /// A plain blocking `read(2)`, bounded by the wake-up signal (see
    /// [`super::WatchedReads`]): no `poll` in front of it.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::interrupt::read(self.rx.as_raw_fd(), buf, self.read_timeout)
    }
}

impl Write for FdLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fit(buf.len());
        write_within(&mut self.tx, self.write_timeout, |f| f.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.fit(bufs.iter().map(|b| b.len()).sum());
        write_within(&mut self.tx, self.write_timeout, |f| f.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Set `O_NONBLOCK` on `f`.
pub(crate) fn set_nonblocking(f: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Clear `O_NONBLOCK` on `f`: its reads block again (bounded by
/// [`crate::interrupt`]).
pub(crate) fn set_blocking(f: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Run a write on a non-blocking `f`; while it finds the pipe full
/// (`EAGAIN`), wait at most `timeout` in `poll(2)` for room.
pub(crate) fn write_within(
    f: &mut File,
    timeout: Duration,
    mut op: impl FnMut(&mut File) -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        match op(f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !runtime::wait_fd(f, PollFlags::POLLOUT, timeout)? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the pipe stayed full for {timeout:?}: the peer is not reading"),
                    ));
                }
            }
            other => return other,
        }
    }
}

/// The client's side of a pipe server: the two pipe ends, and the server
/// child, which is told to go (its stdin reaches end of file) and reaped
/// when the link is dropped.
pub struct PipeClientLink {
    link: Option<FdLink>,
    server: ServerProcess,
}

impl PipeClientLink {
    pub(crate) fn new(link: FdLink, server: ServerProcess) -> Self {
        PipeClientLink {
            link: Some(link),
            server,
        }
    }

    fn link(&mut self) -> &mut FdLink {
        self.link.as_mut().expect("present until drop")
    }
}

impl Read for PipeClientLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.link().read(buf)
    }
}

impl Write for PipeClientLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.link().write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.link().write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeClientLink {
    fn drop(&mut self) {
        // Closing our ends is the server's signal to go: its read sees end of
        // file. Give it a moment, then ServerProcess's drop stops it for sure.
        drop(self.link.take());
        let _ = self.server.wait_timeout(Duration::from_secs(1));
    }
}

/// Make both pipe ends for a server child: returns (child stdin, child
/// stdout, the parent's link).
pub(crate) fn make_pipes(cfg: &Config) -> io::Result<(OwnedFd, OwnedFd, FdLink)> {
    let (req_r, req_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (rep_r, rep_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let link = FdLink::new(rep_r, req_w, cfg.timeout, cfg.timeout)?;
    Ok((req_r, rep_w, link))
}
