//! UNIX domain sockets as the servers and clients of several transports
//! use them (`unix`, `unix-seqpacket`, `unix-dgram`, `eventfd`): a socket
//! file bound and listened on, with a stale one (nobody answers:
//! `ECONNREFUSED`) replaced and a live one never displaced; a connect that
//! never blocks longer than its timeout; `--same-user` by the peer's
//! credentials (`SO_PEERCRED`); and the failures of reaching a server, in
//! words.
//!
//! See `unix(7)`, `socket(2)`, `bind(2)`, `listen(2)`, `connect(2)`,
//! `getsockopt(2)`. No `unsafe`: nix wraps every call made here.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::runtime::{self, CreatedPath};
use crate::sys::fd_link::set_blocking;

/// `--same-user`: the peer's credentials, which the kernel recorded when it
/// connected (`SO_PEERCRED`, see `unix(7)`): a client of another user (root
/// can reach any socket file) is refused with an error line and closed.
/// Returns whether the client may stay; without `same_user`, everyone may.
pub fn admit(fd: &impl AsFd, same_user: bool) -> io::Result<bool> {
    if !same_user {
        return Ok(true);
    }
    let cred = socket::getsockopt(fd, socket::sockopt::PeerCredentials)?;
    match refusal(cred.uid(), cred.pid()) {
        None => Ok(true),
        Some(why) => {
            let _ = nix::unistd::write(fd, format!("ERR {why}\n").as_bytes());
            Ok(false)
        }
    }
}

/// `--same-user`'s verdict on a client of `uid`: `None` if it is of this
/// process's user, else the reason it is refused (also logged).
pub fn refusal(uid: u32, pid: i32) -> Option<String> {
    let me = nix::unistd::getuid().as_raw();
    if uid == me {
        return None;
    }
    eprintln!("ipclab: refused a client of uid {uid} (pid {pid}): --same-user");
    Some(format!(
        "refused: this server serves only uid {me} (--same-user); you are uid {uid} (pid {pid})"
    ))
}

/// A server's socket of `kind` on its file `path` in the runtime directory
/// `dir`, which is prepared first ([`runtime::prepare_dir`]); bound by
/// [`bind_listening`], waiting at most `timeout` to find out whether a
/// server still answers on an old file; and the file as ours to remove.
/// Shared by every transport that meets its clients at a UNIX socket file.
pub fn listen_on_file(
    dir: &Path,
    path: PathBuf,
    kind: SockType,
    transport: &str,
    timeout: Duration,
) -> io::Result<(OwnedFd, CreatedPath)> {
    runtime::prepare_dir(dir)?;
    let fd = bind_listening(&path, kind, transport, timeout)?;
    Ok((fd, CreatedPath::adopt(path)?))
}

/// A listening UNIX socket of `kind` bound to `path` (a datagram socket is
/// only bound). If a socket file is already there, find out whether a
/// server still answers on it: a dead server's file is replaced; a live
/// server is an error. Anything that is not our socket file is left alone.
/// `transport` names the transport in messages.
pub fn bind_listening(
    path: &Path,
    kind: SockType,
    transport: &str,
    timeout: Duration,
) -> io::Result<OwnedFd> {
    let bind = || -> io::Result<OwnedFd> {
        let fd = socket::socket(AddressFamily::Unix, kind, SockFlag::SOCK_CLOEXEC, None)?;
        let addr = UnixAddr::new(path).map_err(|e| with_path(e.into(), "bad socket path", path))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
        // A datagram socket has no connections to listen for: bound, it
        // receives.
        if kind != SockType::Datagram {
            socket::listen(
                &fd,
                socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
            )?;
        }
        Ok(fd)
    };
    match bind() {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        other => return other.map_err(|e| with_path(e, "cannot bind", path)),
    }
    runtime::check_ours(path, |t| t.is_socket(), "a socket")?;
    match connect_socket(path, kind, transport, timeout) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is already in use by a live server (stop it, or pick another --name)",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path)?;
            bind().map_err(|e| with_path(e, "cannot bind", path))
        }
        Err(e) => Err(e),
    }
}

/// Connect without ever blocking longer than `timeout`: a blocking
/// `connect` to a server whose backlog is full (a frozen server) would wait
/// indefinitely, so connect non-blocking and retry with a bounded back-off.
pub fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    connect_socket(path, SockType::Stream, "unix", timeout).map(UnixStream::from)
}

/// [`connect_with_timeout`] for a UNIX socket of any `kind`; the socket is
/// returned in blocking mode.
pub fn connect_socket(
    path: &Path,
    kind: SockType,
    transport: &str,
    timeout: Duration,
) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        kind,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path).map_err(|e| with_path(e.into(), "bad socket path", path))?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the server at {} accepts no connections (backlog full: is it frozen?)",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(reach_error(e, path, transport)),
        }
    }
    set_blocking(&fd)?;
    Ok(fd)
}

/// What a failed `connect(2)` or `sendto(2)` to the server's socket file
/// means, in words.
pub fn reach_error(e: Errno, path: &Path, transport: &str) -> io::Error {
    match e {
        Errno::ENOENT => io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no server at {}: the socket file does not exist (start one with `ipclab serve {transport}`)",
                path.display()
            ),
        ),
        Errno::ECONNREFUSED => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "no server listens on {} (a stale socket file; start one with `ipclab serve {transport}`)",
                path.display()
            ),
        ),
        Errno::EPROTOTYPE => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "{} is a socket of another type (another transport's server?)",
                path.display()
            ),
        ),
        e => with_path(e.into(), "cannot reach", path),
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
