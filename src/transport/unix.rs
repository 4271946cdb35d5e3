//! `unix` — a UNIX domain stream socket.
//!
//! # What it is
//! A socket whose address is a path in the filesystem instead of an IP
//! address and port. Only processes on the same machine can connect, and the
//! kernel moves the bytes straight from the sender's socket buffer to the
//! receiver's: no network stack, no checksums, no TCP state machine. It is
//! the mechanism behind X11, D-Bus, Docker's API socket and most local
//! daemons.
//!
//! # How data and synchronisation flow
//! ```text
//!   server                                   client
//!   socket() bind(<dir>/<name>.sock) listen()
//!   poll() + accept()  <------ connect() ---  socket()
//!       |                                       |
//!     read()  <------- request bytes -------  write()/writev()
//!     writev() ------- reply bytes -------->  read()
//! ```
//! `connect` puts the client into the listening socket's backlog; `accept`
//! takes it out as a new connected socket, one per client. After that each
//! direction is a byte stream with its own kernel buffer: `write` copies
//! into the receiver's buffer and wakes a `read` blocked on it. A round trip
//! is therefore four system calls and four copies (user → kernel → user,
//! both ways), plus two wake-ups.
//!
//! The server serves each client on its own thread (see [`crate::server`]):
//! a blocking read per connection is the simplest correct design, and a
//! thread costs nothing while it sleeps in `read`. One idle or slow client
//! then cannot hold up the others.
//!
//! # Limits
//! * The socket path is at most 107 bytes (`sun_path`); keep `--dir` short.
//! * The listen backlog (`/proc/sys/net/core/somaxconn`) bounds clients
//!   waiting to be accepted; a connect to a full backlog would block, so the
//!   client connects non-blocking and retries until its timeout.
//! * Socket buffer sizes (`/proc/sys/net/core/wmem_default`): a larger
//!   message is carried in several `read`s, which the framing handles.
//! * A socket file outlives a server killed with SIGKILL; the next server
//!   finds it, sees that nobody answers (`ECONNREFUSED`) and replaces it.
//!
//! # System calls
//! `socket(2)`, `bind(2)`, `listen(2)`, `poll(2)`, `accept4(2)`,
//! `connect(2)`, `read(2)`, `writev(2)`, `setsockopt(2)` (`SO_SNDTIMEO`),
//! `unlink(2)`; see `unix(7)`. Reads are bounded without a socket timeout:
//! see [`WatchedReads`].

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::{Boundaries, Capabilities, Config, Link, Listener, Transport, WatchedReads};
use crate::clean::{self, Leftover};
use crate::runtime::{self, CreatedPath};

/// The UNIX domain stream socket transport.
pub struct Unix;

impl Transport for Unix {
    fn name(&self) -> &'static str {
        "unix"
    }
    fn description(&self) -> &'static str {
        "UNIX domain stream socket, a thread per client"
    }
    fn kernel_objects(&self) -> &'static str {
        "socket file <dir>/<name>.sock; a listening socket and one connected pair per client"
    }
    fn inspect_note(&self) -> &'static str {
        "The server holds the listening socket bound to <name>.sock (a file of type s in ls -l, though no data ever touches the disk) and one accepted socket per client. The client's socket is the accepted socket's peer: the kernel reports it through sock_diag(7), as `ss -xp` does. Data goes from the sender's buffer straight into the receiver's socket queue: one copy in, one copy out."
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        socket_file_leftovers(dir, ".sock", SockType::Stream, self.name())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: true,
            boundaries: Boundaries::Stream,
            max_message: None,
            crosses_machines: false,
            inherited: false,
        }
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let (listener, file) = listen_on_file(cfg, ".sock", SockType::Stream, self.name())?;
        Ok(Box::new(UnixServer {
            listener: UnixListener::from(listener),
            file,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let stream = connect_with_timeout(&cfg.object_path(".sock"), cfg.timeout)?;
        stream.set_write_timeout(Some(cfg.timeout))?;
        Ok(Box::new(WatchedReads::new(stream, cfg.timeout)))
    }
}

struct UnixServer {
    listener: UnixListener,
    // Dropped after the listener: the file is removed when the server goes.
    file: CreatedPath,
    cfg: Config,
}

impl Listener for UnixServer {
    fn endpoint(&self) -> String {
        self.file.path().display().to_string()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        if !runtime::wait_readable(&self.listener, wait)? {
            return Ok(None);
        }
        let (stream, _) = self.listener.accept()?;
        if !admit(&stream, &self.cfg)? {
            return Ok(None);
        }
        stream.set_write_timeout(Some(self.cfg.timeout))?;
        Ok(Some(Box::new(WatchedReads::new(
            stream,
            self.cfg.idle_timeout,
        ))))
    }
}

/// `ipclab clean` for a transport whose server listens on a UNIX socket
/// file `<dir>/<name><suffix>` of `kind`: stale when nobody listens on it
/// (`ECONNREFUSED`), live when a server accepts or holds it.
pub(crate) fn socket_file_leftovers(
    dir: &Path,
    suffix: &str,
    kind: SockType,
    transport: &'static str,
) -> Vec<Leftover> {
    clean::files_with_suffix(dir, suffix)
        .into_iter()
        .map(|(_, path)| {
            Leftover::judge_file(
                transport,
                "socket file",
                &path,
                |t| t.is_socket(),
                || match connect_socket(&path, kind, transport, Duration::from_secs(1)) {
                    Ok(_) => Ok(Ok("a server answers on it".into())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        Ok(Err("nobody listens on it: its server was killed".into()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        Ok(Ok("a server holds it but does not accept (stopped?)".into()))
                    }
                    Err(e) => Err(e),
                },
            )
        })
        .collect()
}

/// `--same-user`: the peer's credentials, which the kernel recorded when it
/// connected (`SO_PEERCRED`, see `unix(7)`): a client of another user (root
/// can reach any socket file) is refused with an error line and closed.
/// Returns whether the client may stay.
pub(crate) fn admit(fd: &impl std::os::fd::AsFd, cfg: &Config) -> io::Result<bool> {
    if !cfg.same_user {
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
pub(crate) fn refusal(uid: u32, pid: i32) -> Option<String> {
    let me = nix::unistd::getuid().as_raw();
    if uid == me {
        return None;
    }
    eprintln!("ipclab: refused a client of uid {uid} (pid {pid}): --same-user");
    Some(format!(
        "refused: this server serves only uid {me} (--same-user); you are uid {uid} (pid {pid})"
    ))
}

/// A server's socket of `kind` on its file `<dir>/<name><suffix>`, in the
/// prepared runtime directory ([`bind_listening`]), and the file as ours to
/// remove. Shared by every transport that meets its clients at a UNIX
/// socket file.
pub(crate) fn listen_on_file(
    cfg: &Config,
    suffix: &str,
    kind: SockType,
    transport: &str,
) -> io::Result<(OwnedFd, CreatedPath)> {
    runtime::prepare_dir(&cfg.dir)?;
    let path = cfg.object_path(suffix);
    let fd = bind_listening(&path, kind, transport, cfg.timeout)?;
    Ok((fd, CreatedPath::adopt(path)?))
}

/// A listening UNIX socket of `kind` bound to `path` (a datagram socket is
/// only bound). If a socket file is already there, find out whether a
/// server still answers on it: a dead server's file is replaced; a live
/// server is an error. Anything that is not our socket file is left alone.
/// `transport` names the transport in messages.
pub(crate) fn bind_listening(
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
pub(crate) fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    connect_socket(path, SockType::Stream, "unix", timeout).map(UnixStream::from)
}

/// [`connect_with_timeout`] for a UNIX socket of any `kind`; the socket is
/// returned in blocking mode.
pub(crate) fn connect_socket(
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
    super::pipe::set_blocking(&fd)?;
    Ok(fd)
}

/// What a failed `connect(2)` or `sendto(2)` to the server's socket file
/// means, in words.
pub(crate) fn reach_error(e: Errno, path: &Path, transport: &str) -> io::Error {
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
