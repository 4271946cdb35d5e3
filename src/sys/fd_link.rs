//! A link over a pair of file descriptors — pipes or FIFOs — with bounded
//! waits, and the descriptor flags it needs. Shared by the `pipe` and
//! `fifo` transports and by [`crate::process`], which wires a server child
//! to two new pipes.
//!
//! Reads are plain blocking `read(2)`s, woken by [`crate::sys::interrupt`]
//! to look at their deadline; the write end is non-blocking, and a full
//! pipe is waited out in `poll(2)`. The pipe written into is grown
//! (`F_SETPIPE_SZ`, see `fcntl(2)` and `pipe(7)`) to fit a message, up to
//! `/proc/sys/fs/pipe-max-size`.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;

use crate::runtime;
use crate::sys::interrupt;

/// A link over two file descriptors (pipes or FIFOs) with bounded waits:
/// reads are plain blocking reads bounded by the wake-up signal
/// ([`crate::sys::interrupt::read`]); the write end is made non-blocking when it
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
    /// [`crate::transport::WatchedReads`]): no `poll` in front of it.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        interrupt::read(self.rx.as_raw_fd(), buf, self.read_timeout)
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
pub fn set_nonblocking(f: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Clear `O_NONBLOCK` on `f`: its reads block again (bounded by
/// [`crate::sys::interrupt`]).
pub fn set_blocking(f: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Run a write on a non-blocking `f`; while it finds the pipe full
/// (`EAGAIN`), wait at most `timeout` in `poll(2)` for room.
pub fn write_within(
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

/// Two new pipes for a server child: returns (child stdin, child stdout,
/// the parent's link over the other ends, every wait bounded by `timeout`).
/// All four ends are close-on-exec (`pipe2(2)` with `O_CLOEXEC`).
pub fn make_pipes(timeout: Duration) -> io::Result<(OwnedFd, OwnedFd, FdLink)> {
    let (req_r, req_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (rep_r, rep_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let link = FdLink::new(rep_r, req_w, timeout, timeout)?;
    Ok((req_r, rep_w, link))
}
