//! The transport trait: what every IPC mechanism in ipclab implements.
//!
//! A transport is one kernel mechanism that carries bytes between two
//! processes. It has two halves:
//!
//! * the **serving side**, a [`Listener`] made by [`Transport::listen`], which
//!   *creates* the kernel objects (a socket file, a FIFO, a queue …) and
//!   hands out one [`Link`] per client session;
//! * the **connecting side**, [`Transport::connect`], which *opens* those
//!   objects and returns a [`Link`] to the server.
//!
//! A [`Link`] is just `Read + Write`: a transport moves bytes and nothing
//! else. Framing ([`crate::conn`]), the server's request loop
//! ([`crate::server`]) and the client's round trip ([`crate::client`]) are
//! written once, above this trait, for all transports — so adding a
//! transport means writing `listen`, `accept`, `connect` and the link's
//! `read`/`write`.
//!
//! # The contract
//!
//! * `listen` creates every kernel and filesystem object the transport needs,
//!   owner-only (mode 0600) and inside [`Config::dir`] unless the user named
//!   another place; a stale object left by a dead server is detected and
//!   replaced, and a live server on the same endpoint is reported with
//!   [`io::ErrorKind::AddrInUse`], never stolen.
//! * Dropping the [`Listener`] removes every object `listen` created — and
//!   only those.
//! * [`Listener::accept`] waits at most the time it is given and returns
//!   `Ok(None)` when no client came, so the server can notice Ctrl-C.
//! * Every [`Link`] has bounded blocking: a read or write that cannot make
//!   progress fails within the configured timeout ([`Config::timeout`] on the
//!   client; [`Config::idle_timeout`] for a server waiting for a request), so
//!   a dead or frozen peer becomes an error, never a hang.
//! * A link reports the peer going away as end of stream (`read` returns 0)
//!   or an error — never silence.
//! * `connect` with no server running fails within [`Config::timeout`] with a
//!   message that says what is missing.
//! * A link carries bytes unchanged, in order, with nothing lost or added.
//! * [`Transport::capabilities`] tells the truth: a transport that serves one
//!   client at a time says so and answers a second one with a clear error.
//!
//! Every transport must pass the conformance suite in `tests/conformance.rs`;
//! a new transport gets the whole suite by adding one line there.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::DEFAULT_MAX_FRAME;
use crate::runtime;

pub mod eventfd;
pub mod fifo;
pub mod flock;
pub mod kit;
pub mod msgq;
pub mod pipe;
pub mod posixmq;
pub mod region;
pub mod shm;
pub mod shm_spin;
pub mod signal;
pub mod tcp;
pub mod udp;
pub mod unix;
pub mod unix_dgram;
pub mod unix_seqpacket;

/// A bidirectional byte link between a client and a server.
///
/// Implemented for everything that is `Read + Write + Send`, so a socket
/// stream is a link as it is.
pub trait Link: Read + Write + Send {}
impl<T: Read + Write + Send + ?Sized> Link for T {}

/// A byte stream (socket, pipe) whose reads block in the kernel with no
/// timer armed, bounded by [`crate::interrupt`]'s wake-up signal instead.
///
/// Why not `SO_RCVTIMEO` or a `poll(2)` before each read: in a ping-pong
/// every read waits, and a receive timeout arms a kernel timer for each wait
/// while `poll` adds a system call. Measured with `ipclab bench unix
/// --sizes 64`, `SO_RCVTIMEO` alone cost 15–30% of a UNIX socket round trip.
/// A read blocked for longer than a quarter second is interrupted (`EINTR`)
/// to look at its deadline, so an idle connection sees four cheap wake-ups a
/// second; a busy one sees none.
pub struct WatchedReads<T> {
    inner: T,
    timeout: Duration,
}

impl<T> WatchedReads<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        WatchedReads { inner, timeout }
    }
}

impl<T: std::os::fd::AsRawFd> Read for WatchedReads<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::interrupt::read(self.inner.as_raw_fd(), buf, self.timeout)
    }
}

impl<T: Write> Write for WatchedReads<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hand the first `limit` bytes of `bufs` to `put`, piece by piece, with
/// each piece's offset in the gathered whole; returns how many bytes that
/// was. The one loop every transport with a message or chunk size of its
/// own uses to pack a header and a payload into one unit.
pub(crate) fn gather(
    bufs: &[io::IoSlice<'_>],
    limit: usize,
    mut put: impl FnMut(usize, &[u8]),
) -> usize {
    let mut n = 0;
    for b in bufs {
        if n == limit {
            break;
        }
        let take = b.len().min(limit - n);
        put(n, &b[..take]);
        n += take;
    }
    n
}

/// The serving side of a transport. Dropping it removes the kernel objects.
pub trait Listener: Send {
    /// Where clients find this server, in words: an address, a path, a name.
    fn endpoint(&self) -> String;

    /// For transports addressed by a network address: the address actually
    /// bound (port 0 resolved). Clients of a spawned server are pointed at it.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Wait at most `wait` for the next client session.
    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>>;

    /// True once no client can ever come again (a pipe server has exactly
    /// one client, its parent); the server then exits when its sessions end.
    fn exhausted(&self) -> bool {
        false
    }

    /// Remove what clients of this server left behind when they died
    /// before their session began — the objects a client creates and the
    /// server would have unlinked once open (a FIFO pair, a queue pair).
    /// Only this server's own instance, only objects whose creator is gone
    /// (the test `ipclab clean` applies). The server calls it about once a
    /// second and when it stops.
    fn sweep(&mut self) {}
}

/// [`Listener::sweep`] for a transport whose clients' leftovers `leftovers`
/// lists: remove the stale ones whose file name starts with `marker` (this
/// server's instance).
pub(crate) fn sweep_leftovers(leftovers: Vec<crate::clean::Leftover>, marker: &str) {
    for mut l in leftovers {
        let ours = l
            .path
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with(marker));
        if ours && l.removable() {
            match l.remove() {
                Ok(()) => eprintln!("ipclab: removed {}: {}", l.object, l.why),
                Err(e) => eprintln!("ipclab: could not remove {}: {e}", l.object),
            }
        }
    }
}

/// Message boundaries as the mechanism itself keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundaries {
    /// A byte stream: the reader may see a write split or merged.
    Stream,
    /// Each write arrives as one whole message.
    Messages,
}

/// What a transport can do, for `ipclab list` and the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Several clients served at once.
    pub multi_client: bool,
    /// Stream or message boundaries, as the kernel mechanism provides them.
    pub boundaries: Boundaries,
    /// Largest message the mechanism itself carries in one piece (`None`:
    /// no limit of its own). Larger protocol messages are carried in pieces.
    pub max_message: Option<usize>,
    /// Works between two machines.
    pub crosses_machines: bool,
    /// The channel exists only between related processes: it is created by
    /// the client and inherited by the server when the client starts it
    /// (anonymous pipes). Such a server has exactly one client, its parent.
    pub inherited: bool,
}

/// Settings shared by the serving and the connecting side.
#[derive(Clone, Debug)]
pub struct Config {
    /// Private runtime directory for filesystem objects (mode 0700).
    pub dir: PathBuf,
    /// Instance name, so several servers of one transport can coexist
    /// (e.g. `<dir>/<name>.sock`).
    pub name: String,
    /// Network address for transports on IP (TCP, UDP).
    pub addr: String,
    /// Bound on every blocking wait of a client, and on a server's writes.
    pub timeout: Duration,
    /// How long a server waits for the next request of a silent client.
    pub idle_timeout: Duration,
    /// Largest payload accepted in one protocol message.
    pub max_frame: usize,
    /// Most client sessions a multi-client server serves at once.
    pub max_clients: usize,
    /// The `ipclab` binary to start servers with (default: this program).
    pub exe: Option<PathBuf>,
    /// UNIX socket servers: refuse clients of another user (`SO_PEERCRED`).
    pub same_user: bool,
}

/// Default TCP address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8008";

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: runtime::default_dir(),
            name: "ipclab".into(),
            addr: DEFAULT_ADDR.into(),
            timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_frame: DEFAULT_MAX_FRAME,
            max_clients: 256,
            exe: None,
            same_user: false,
        }
    }
}

impl Config {
    /// A path for a filesystem object of this instance: `<dir>/<name><suffix>`.
    pub fn object_path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{}", self.name, suffix))
    }

    /// The `ipclab` binary to start a server process with.
    pub fn server_exe(&self) -> io::Result<PathBuf> {
        match &self.exe {
            Some(e) => Ok(e.clone()),
            None => std::env::current_exe(),
        }
    }
}

/// One IPC mechanism.
pub trait Transport: Sync {
    /// Short name used on the command line (`unix`, `tcp`, …).
    fn name(&self) -> &'static str;
    /// One line for `ipclab list`.
    fn description(&self) -> &'static str;
    /// The kernel objects it uses, for `ipclab list`.
    fn kernel_objects(&self) -> &'static str;
    /// A paragraph for `ipclab demo --inspect`: what a student sees in the
    /// inspection of both processes, and why.
    fn inspect_note(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Create the kernel objects and start accepting clients.
    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>>;
    /// Open the server's objects and return a link to it.
    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>>;

    /// Paths of the objects a server for `cfg` creates *outside* the
    /// runtime directory (a `/dev/shm` entry …), so the demo and the tests
    /// can check that they are gone after it stops.
    fn external_objects(&self, _cfg: &Config) -> Vec<PathBuf> {
        Vec::new()
    }

    /// `ipclab clean`: the objects servers of this transport left in `dir`
    /// (or elsewhere, under names derived from `dir`), each judged stale,
    /// live or foreign by the test its server uses at start-up. A transport
    /// whose objects die with their descriptors (pipe, tcp) leaves nothing.
    fn leftovers(&self, _dir: &Path) -> Vec<crate::clean::Leftover> {
        Vec::new()
    }

    /// The SysV objects a live server for `cfg` uses, as (`msg` | `sem` |
    /// `shm`, key), so `demo --inspect` can show their `/proc/sysvipc` rows.
    fn sysv_keys(&self, _cfg: &Config) -> Vec<(&'static str, i32)> {
        Vec::new()
    }
}

impl fmt::Debug for dyn Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every transport ipclab has, in the order `list`, `demo all` and `bench`
/// show them. A new transport is added here.
pub fn all() -> &'static [&'static dyn Transport] {
    &[
        &pipe::Pipe,
        &fifo::Fifo,
        &msgq::Msgq,
        &posixmq::PosixMq,
        &shm::SHM,
        &shm::MMAP,
        &shm_spin::ShmSpin,
        &eventfd::Eventfd,
        &signal::Signal,
        &flock::Flock,
        &unix::Unix,
        &unix_seqpacket::UnixSeqpacket,
        &unix_dgram::UnixDgram,
        &tcp::Tcp,
        &udp::Udp,
    ]
}

/// Look a transport up by name, with an error listing the known ones.
pub fn by_name(name: &str) -> io::Result<&'static dyn Transport> {
    all()
        .iter()
        .copied()
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            let known: Vec<_> = all().iter().map(|t| t.name()).collect();
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("unknown transport '{name}' (known: {})", known.join(", ")),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_stops_at_the_limit_and_tells_each_piece_where_it_goes() {
        let parts = [
            io::IoSlice::new(b"head"),
            io::IoSlice::new(b""),
            io::IoSlice::new(b"payload"),
            io::IoSlice::new(b"more"),
        ];
        let mut out = [0u8; 8];
        let mut at = Vec::new();
        let n = gather(&parts, out.len(), |i, p| {
            at.push(i);
            out[i..i + p.len()].copy_from_slice(p);
        });
        assert_eq!(n, 8);
        assert_eq!(&out, b"headpayl");
        assert_eq!(at, [0, 4, 4]);
        // Less than the limit: everything, once.
        let mut all = Vec::new();
        assert_eq!(gather(&parts, 100, |_, p| all.extend_from_slice(p)), 15);
        assert_eq!(all, b"headpayloadmore");
    }
}
