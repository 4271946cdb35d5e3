//! `tcp` — TCP over the loopback interface.
//!
//! # What it is
//! The Internet's reliable byte stream, here between two processes on one
//! machine through the loopback interface (`lo`, 127.0.0.1). It is the only
//! mechanism in ipclab that also works between machines, and the slowest of
//! the socket family locally: every write still goes through the full TCP/IP
//! stack — segments, sequence numbers, acknowledgements, checksums (offloaded
//! on `lo`) — before loopback hands the packet straight back to the receive
//! path.
//!
//! # How data and synchronisation flow
//! ```text
//!   server                                   client
//!   socket() bind(127.0.0.1:8008) listen()
//!   poll() + accept()  <-- SYN/SYN-ACK/ACK --  connect()
//!     read()  <------- request segment ------  writev()
//!     writev() ------- reply segment ------->  read()
//! ```
//! As with the UNIX socket, a round trip is four system calls and four
//! copies; on top come the TCP and IP layers and the softirq that delivers
//! the loopback packet.
//!
//! **`TCP_NODELAY`** is set on both ends. Without it, Nagle's algorithm
//! holds back a small segment while an earlier one is unacknowledged, and
//! the peer's delayed-ACK timer (up to 40 ms on Linux) holds back that
//! acknowledgement: a request/response protocol whose message is split in
//! two writes would stall for tens of milliseconds. We write each message in
//! one `writev`, but a benchmark must not depend on that.
//!
//! The server binds 127.0.0.1 unless `--addr` names another address: a
//! student's echo server should not be reachable from the network by
//! accident. The server serves each client on its own thread.
//!
//! # Limits
//! * Ports: one server per address and port; `--addr 127.0.0.1:0` lets the
//!   kernel choose a free port, which the server prints.
//! * Socket buffers (`/proc/sys/net/ipv4/tcp_rmem`, `tcp_wmem`) and the
//!   listen backlog (`/proc/sys/net/core/somaxconn`).
//! * A server restarted on the same port works at once: the listening socket
//!   uses `SO_REUSEADDR` (Rust's standard library sets it), so connections
//!   of the old server lingering in `TIME_WAIT` do not block the bind.
//!
//! # System calls
//! `socket(2)`, `setsockopt(2)` (`SO_REUSEADDR`, `TCP_NODELAY`,
//! `SO_SNDTIMEO`), `bind(2)`, `listen(2)`, `poll(2)`,
//! `accept4(2)`, `connect(2)`, `read(2)`, `writev(2)`; see `tcp(7)`, `ip(7)`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{About, Capabilities, Config, Link, Listener, Transport, WatchedReads};
use crate::runtime;

/// The TCP loopback transport.
pub struct Tcp;

impl Transport for Tcp {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "tcp",
            description: "TCP over loopback (TCP_NODELAY), a thread per client",
            kernel_objects: "a listening TCP socket on --addr (127.0.0.1:8008); one connection per client",
            inspect_note: "This is the classic lsof exercise. The server holds the listening socket (LISTEN on 127.0.0.1 and its port) and the socket accept(2) returned for this client; the client's socket mirrors that one, with the local and remote addresses swapped, so the client's ephemeral port is the accepted socket's remote port. Over loopback the packets never reach a network card, but they still go through the whole TCP/IP stack: segments, acknowledgements and a socket buffer on each side.",
            capabilities: Capabilities::stream().crosses_machines(),
        };
        &ABOUT
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        let addr = resolve(&cfg.addr)?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                " (already in use: is another server running? pick another --addr)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
        })?;
        Ok(Box::new(TcpServer {
            local: listener.local_addr()?,
            listener,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let addr = resolve(&cfg.addr)?;
        let stream = TcpStream::connect_timeout(&addr, cfg.timeout).map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::ConnectionRefused => {
                    " (no server listens there; start one with `ipclab serve tcp`)"
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    " (no answer within --timeout)"
                }
                _ => "",
            };
            io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}{hint}"))
        })?;
        configure(&stream, cfg.timeout)?;
        Ok(Box::new(WatchedReads::new(stream, cfg.timeout)))
    }
}

struct TcpServer {
    listener: TcpListener,
    local: SocketAddr,
    cfg: Config,
}

impl Listener for TcpServer {
    fn endpoint(&self) -> String {
        self.local.to_string()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        if !runtime::wait_readable(&self.listener, wait)? {
            return Ok(None);
        }
        let (stream, _) = self.listener.accept()?;
        configure(&stream, self.cfg.timeout)?;
        Ok(Some(Box::new(WatchedReads::new(
            stream,
            self.cfg.idle_timeout,
        ))))
    }
}

/// `TCP_NODELAY`, and a send timeout (reads are bounded by [`WatchedReads`]).
fn configure(s: &TcpStream, write: Duration) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(write))
}

pub(crate) fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad --addr '{addr}': {e} (expected HOST:PORT)"),
            )
        })?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--addr '{addr}' resolves to no address"),
            )
        })
}
