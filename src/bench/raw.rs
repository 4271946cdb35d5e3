//! Minimal raw-syscall ping-pongs: the reference rows ipclab's own
//! transports are measured against, in the same run and placement.
//!
//! A raw peer is a child made with `fork(2)` that knows nothing of ipclab:
//! it reads exactly one message of the agreed size with `read(2)` and writes
//! it back with `write(2)`, until end of file. Between `fork` and `_exit`
//! it calls only async-signal-safe functions on memory allocated before the
//! fork (the parent may have other threads). It reads the whole message
//! before answering: echoing bytes as they arrive could deadlock on large
//! messages (see the pipe transport's doc).
//!
//! The parent's round trip is a `write` and a `read` loop — no framing, no
//! timeouts, no checks beyond the benchmark's own. The difference between a
//! transport's figure and its raw row is ipclab's overhead.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Which mechanism a raw peer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    Pipe,
    Unix,
    Tcp,
}

impl RawKind {
    pub const ALL: [RawKind; 3] = [RawKind::Pipe, RawKind::Unix, RawKind::Tcp];

    /// The row's name: `raw-pipe`, …
    pub fn name(self) -> &'static str {
        match self {
            RawKind::Pipe => "raw-pipe",
            RawKind::Unix => "raw-unix",
            RawKind::Tcp => "raw-tcp",
        }
    }

    /// The ipclab transport it is the baseline of.
    pub fn transport(self) -> &'static str {
        &self.name()[4..]
    }
}

/// A running raw echo child and our two ends.
pub struct RawPeer {
    child: Pid,
    /// Our ends; taken (closed) on drop.
    fds: Option<(OwnedFd, OwnedFd)>,
    reply: Vec<u8>,
}

impl RawPeer {
    /// Fork a raw echo child for messages of exactly `size` bytes, pinned
    /// to `cpu` if given.
    pub fn start(kind: RawKind, size: usize, cpu: Option<usize>) -> io::Result<RawPeer> {
        // (parent tx, parent rx, child rx, child tx)
        let (ptx, prx, crx, ctx): (OwnedFd, OwnedFd, OwnedFd, OwnedFd) = match kind {
            RawKind::Pipe => {
                let (req_r, req_w) = nix::unistd::pipe()?;
                let (rep_r, rep_w) = nix::unistd::pipe()?;
                (req_w, rep_r, req_r, rep_w)
            }
            RawKind::Unix => {
                let (a, b) = std::os::unix::net::UnixStream::pair()?;
                let (a, b): (OwnedFd, OwnedFd) = (a.into(), b.into());
                (a.try_clone()?, a, b.try_clone()?, b)
            }
            RawKind::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0")?;
                let a = TcpStream::connect(l.local_addr()?)?;
                let (b, _) = l.accept()?;
                a.set_nodelay(true)?;
                b.set_nodelay(true)?;
                let (a, b): (OwnedFd, OwnedFd) = (a.into(), b.into());
                (a.try_clone()?, a, b.try_clone()?, b)
            }
        };
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if let Some(c) = cpu {
            // SAFETY: plain bit manipulation on a zeroed set.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        let mut buf = vec![0u8; size.max(1)];
        let (cr, cw) = (crx.as_raw_fd(), ctx.as_raw_fd());
        let (pr, pw) = (prx.as_raw_fd(), ptx.as_raw_fd());
        // SAFETY: the child calls only async-signal-safe functions (close,
        // sched_setaffinity, read, write, _exit) on memory that exists already.
        match unsafe { fork() }? {
            ForkResult::Child => unsafe {
                libc::close(pr);
                if pw != pr {
                    libc::close(pw);
                }
                if cpu.is_some() {
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                }
                child_loop(cr, cw, &mut buf, size)
            },
            ForkResult::Parent { child } => {
                drop(crx);
                drop(ctx);
                Ok(RawPeer {
                    child,
                    fds: Some((ptx, prx)),
                    reply: vec![0; size],
                })
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.child
    }

    /// One round trip of `msg` (its length must be the agreed size);
    /// returns the echo.
    pub fn echo(&mut self, msg: &[u8]) -> io::Result<&[u8]> {
        let (tx, rx) = match &self.fds {
            Some((t, r)) => (t.as_raw_fd(), r.as_raw_fd()),
            None => return Err(io::Error::other("closed")),
        };
        let mut off = 0;
        while off < msg.len() {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::write(tx, msg[off..].as_ptr().cast(), msg.len() - off) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            off += n as usize;
        }
        let len = msg.len();
        let mut got = 0;
        while got < len {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::read(rx, self.reply[got..].as_mut_ptr().cast(), len - got) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the raw peer exited",
                ));
            }
            got += n as usize;
        }
        Ok(&self.reply[..len])
    }
}

/// The child: read exactly `size` bytes, write them back, until EOF.
unsafe fn child_loop(rx: RawFd, tx: RawFd, buf: &mut [u8], size: usize) -> ! {
    loop {
        let mut got = 0;
        while got < size {
            let n = unsafe { libc::read(rx, buf[got..].as_mut_ptr().cast(), size - got) };
            if n == 0 {
                unsafe { libc::_exit(0) };
            }
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                unsafe { libc::_exit(1) };
            }
            got += n as usize;
        }
        let mut off = 0;
        while off < size {
            let n = unsafe { libc::write(tx, buf[off..].as_ptr().cast(), size - off) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                unsafe { libc::_exit(1) };
            }
            off += n as usize;
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        // Closing our ends makes the child's read return 0: it exits.
        drop(self.fds.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = kill(self.child, Signal::SIGKILL);
                    let _ = waitpid(self.child, None);
                    return;
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_peers_echo_every_size() {
        for kind in RawKind::ALL {
            for size in [1, 64, 100_000] {
                let mut p = RawPeer::start(kind, size, None).unwrap();
                let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
                for _ in 0..3 {
                    assert_eq!(p.echo(&msg).unwrap(), &msg[..], "{kind:?} {size}");
                }
            }
        }
    }
}
