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

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::SockType;

use super::{About, Capabilities, Config, Link, Listener, Transport, WatchedReads};
use crate::objects::{Leftover, socket_file_leftovers};
use crate::runtime::{self, CreatedPath};
use crate::sys::unix_socket::{self, connect_with_timeout, listen_on_file};

/// The UNIX domain stream socket transport.
pub struct Unix;

impl Transport for Unix {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "unix",
            description: "UNIX domain stream socket, a thread per client",
            kernel_objects: "socket file <dir>/<name>.sock; a listening socket and one connected pair per client",
            inspect_note: "The server holds the listening socket bound to <name>.sock (a file of type s in ls -l, though no data ever touches the disk) and one accepted socket per client. The client's socket is the accepted socket's peer: the kernel reports it through sock_diag(7), as `ss -xp` does. Data goes from the sender's buffer straight into the receiver's socket queue: one copy in, one copy out.",
            capabilities: Capabilities::stream().peer_credentials(),
        };
        &ABOUT
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        socket_file_leftovers(dir, ".sock", SockType::Stream, self.name())
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let (listener, file) = listen_on_file(
            &cfg.dir,
            cfg.object_path(".sock"),
            SockType::Stream,
            self.name(),
            cfg.timeout,
        )?;
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
        if !unix_socket::admit(&stream, self.cfg.same_user)? {
            return Ok(None);
        }
        stream.set_write_timeout(Some(self.cfg.timeout))?;
        Ok(Some(Box::new(WatchedReads::new(
            stream,
            self.cfg.idle_timeout,
        ))))
    }
}
