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
//!   to the maximum, once per size; see [`crate::sys::fd_link`]). Measured with
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
//! at its deadline ([`crate::sys::interrupt`]) — a `poll(2)` before every read
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
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::process::ServerProcess;
use crate::sys::fd_link::FdLink;

/// The anonymous pipe transport.
pub struct Pipe;

impl Transport for Pipe {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "pipe",
            description: "two anonymous pipes to a server child it starts (stdin/stdout)",
            kernel_objects: "two pipes (pipe:[inode]), inherited by the server child as its stdin and stdout",
            inspect_note: "The server was started with the read end of one pipe as its fd 0 and the write end of another as its fd 1; it moved them to other descriptors (and pointed 0 and 1 at /dev/null, so that nothing else writes into the reply pipe). The client holds the opposite ends: CONNECTED TO names the same pipe inode in both processes. A pipe has no name in any filesystem: only processes that inherit its descriptors across fork(2)/execve(2) can use it, which is why this transport has exactly one client, the parent. Between write(2) and read(2) the bytes wait in the pipe's kernel buffer (see `ipclab limits`).",
            capabilities: Capabilities::stream().inherited(),
        };
        &ABOUT
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
