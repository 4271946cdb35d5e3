//! `msgq` — a System V message queue shared by the server and all clients.
//!
//! # What it is
//! A message queue is a kernel object holding a list of messages, each a
//! `long` *type* followed by up to `msgmax` bytes of text. `msgsnd(2)`
//! appends a message; `msgrcv(2)` takes the first message of a given type —
//! so one queue can carry many independent conversations, told apart by
//! type. Message boundaries are kept: one `msgsnd` is one `msgrcv`. The queue
//! outlives the processes that use it until someone removes it
//! (`IPC_RMID`): see it with `ipcs -q` or in `/proc/sysvipc/msg`.
//!
//! # How data and synchronisation flow
//! ```text
//!            one queue, key = ftok(<dir>/<name>.msgq, 'Q'), mode 0600
//!   client ── type 1: HELLO {connection id, pid} ───────────▶ server main thread
//!   client ── type 2+2·id: request chunks ──────────────────▶ session thread for id
//!   client ◀─ type 3+2·id: reply chunks ──────────────────── session thread for id
//! ```
//! The classic design puts every request on one type and each reply on the
//! client's pid. ipclab gives each *connection* its own request type as
//! well (`id` = pid·2¹⁶ + a per-process counter, so one process can hold
//! several connections): each session thread then blocks in `msgrcv` on its
//! own type and is woken by the kernel directly, with no demultiplexing
//! thread in between — type 1 carries only the HELLO of a new client.
//!
//! Each `msgsnd` copies the message into the kernel; each `msgrcv` copies it
//! out and wakes the receiver that waits for that type. A zero-length
//! message on a conversation's type means "end of stream" (the client left,
//! or the session ended).
//!
//! # Limits (read live from `/proc/sys/kernel/`)
//! * `msgmax` (8192 by default): the largest message. A protocol message
//!   above it — the 1 MiB echo — is carried in chunks of at most
//!   `min(msgmax, msgmnb)` bytes; the receiver's framing joins them.
//! * `msgmnb` (16384 by default): the most bytes queued at once, for *all*
//!   conversations together. When the queue is full, `msgsnd` blocks until a
//!   receiver makes room: a 1 MiB echo flows through the queue two chunks at
//!   a time. No deadlock is possible, because every queued message has a
//!   reader that is not itself blocked sending (a client reads only after it
//!   has sent its whole request; a server session writes only after it has
//!   read it). A client that dies leaves messages nobody will read: its
//!   session notices (see below) and purges its types.
//! * `msgmni` (32000): queues system-wide.
//!
//! # Bounded waits
//! `msgrcv` and `msgsnd` have no timeout. They do fail with `EINTR` when a
//! signal handler runs, and are never restarted, so [`crate::interrupt`]
//! wakes a call blocked for longer than a quarter second; the waiter then
//! checks its deadline and whether its peer's pid still exists, and waits
//! again or fails. When the server stops it removes the queue, and every
//! blocked client gets `EIDRM` at once.
//!
//! # Keys
//! The key comes from `ftok(3)` on a file the server creates in the runtime
//! directory (holding its pid), never a fixed number. A key file whose pid
//! is dead marks a stale queue of a server killed with SIGKILL: the next
//! server removes that queue (if it is ours) and starts afresh.
//!
//! # System calls
//! `ftok(3)`, `msgget(2)`, `msgsnd(2)`, `msgrcv(2)`, `msgctl(2)` (`IPC_STAT`,
//! `IPC_RMID`), `kill(2)` with signal 0, `pthread_kill(3)`; see `sysvipc(7)`.

use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::getuid;

use super::{Boundaries, Capabilities, Config, Link, Listener, Transport};
use crate::clean::{self, Leftover};
use crate::interrupt::{self, pid_alive};
use crate::runtime::{self, CreatedPath};
use crate::sysv::{self, MTYPE_LEN, MsgQueue};

const PROJECT: u8 = b'Q';
const HELLO: libc::c_long = 1;

/// The System V message queue transport.
pub struct Msgq;

impl Transport for Msgq {
    fn name(&self) -> &'static str {
        "msgq"
    }
    fn description(&self) -> &'static str {
        "System V message queue: one queue, a message type per direction and client"
    }
    fn kernel_objects(&self) -> &'static str {
        "a SysV message queue (ipcs -q), key = ftok(<dir>/<name>.msgq); the key file holds the server pid"
    }
    fn sysv_keys(&self, cfg: &Config) -> Vec<(&'static str, i32)> {
        let key_path = cfg.object_path(".msgq");
        read_key_file(&key_path)
            .and_then(|(_, project)| sysv::ftok(&key_path, project))
            .map(|key| vec![("msg", key)])
            .unwrap_or_default()
    }
    fn inspect_note(&self) -> &'static str {
        "A SysV message queue is not held through a descriptor, so the descriptor tables show nothing of it: it is named by a key and listed by `ipcs -q` and /proc/sysvipc/msg (qnum messages and cbytes bytes waiting, lspid/lrpid the last sender and receiver). The key file in the runtime directory only derives that key with ftok(3) and records the server pid. The queue outlives every process until msgctl(IPC_RMID) removes it, which is why a SIGKILLed server leaves it behind and `ipclab clean` exists."
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let mut found = Vec::new();
        for (_, path) in clean::files_with_suffix(dir, ".msgq") {
            let recorded = read_key_file(&path);
            let file = Leftover::judge_file(
                "msgq",
                "key file",
                &path,
                |t| t.is_file(),
                || {
                    let (pid, _) = read_key_file(&path)?;
                    Ok(clean::pid_verdict("server", pid))
                },
            );
            // The queue goes first: its key is derived from the file.
            if file.removable()
                && let Ok((pid, project)) = recorded
                && let Ok(key) = sysv::ftok(&path, project)
                && let Ok(q) = MsgQueue::open(key)
                && q.stat()
                    .is_ok_and(|ds| ds.msg_perm.uid == getuid().as_raw())
            {
                found.push(Leftover::stale(
                    "msgq",
                    format!("SysV message queue key 0x{key:08x} id {}", q.id()),
                    format!(
                        "its server, pid {pid}, is gone (key from {})",
                        path.display()
                    ),
                    move || q.remove(),
                ));
            }
            found.push(file);
        }
        found
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: true,
            boundaries: Boundaries::Messages,
            max_message: sysv::kernel_limit("msgmax").ok(),
            crosses_machines: false,
            inherited: false,
        }
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let key_path = cfg.object_path(".msgq");
        remove_stale(&key_path)?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&key_path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", key_path.display()),
                )
            })?;
        let file = CreatedPath::adopt(key_path.clone())?;
        // ftok keys can collide (files whose inode numbers agree in the low
        // 16 bits): then try the next project id, never touching the other
        // queue. The key file records which one we used.
        let (key, project, queue) = (0..32u8)
            .find_map(|i| {
                let project = PROJECT.wrapping_add(i);
                let key = sysv::ftok(&key_path, project).ok()?;
                match MsgQueue::create(key) {
                    Ok(q) => Some(Ok((key, project, q))),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .unwrap_or_else(|| {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "every ftok key of the key file is taken by other queues (see `ipcs -q`)",
                ))
            })?;
        writeln!(f, "{} {project}", std::process::id())?;
        let chunk = chunk_size()?;
        Ok(Box::new(MsgqServer {
            queue: Arc::new(queue),
            key,
            _file: file,
            cfg: cfg.clone(),
            hello: vec![0; MTYPE_LEN + 64],
            chunk,
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let key_path = cfg.object_path(".msgq");
        let (server_pid, project) = match read_key_file(&key_path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no server at {}: the key file does not exist (start one with `ipclab serve msgq`)",
                        key_path.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        if !pid_alive(server_pid) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the server of {} (pid {server_pid}) is gone: a stale queue (start a new server to replace it)",
                    key_path.display()
                ),
            ));
        }
        let queue = Arc::new(MsgQueue::open(sysv::ftok(&key_path, project)?)?);
        let pid = std::process::id();
        let id = ((pid as libc::c_long) << 16)
            | (NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff) as libc::c_long;
        let link = MsgLink::new(
            queue,
            2 + 2 * id + 1,
            2 + 2 * id,
            server_pid,
            cfg.timeout,
            cfg.timeout,
            chunk_size()?,
            false,
        );
        let mut hello = [0u8; MTYPE_LEN + 12];
        sysv::set_mtype(&mut hello, HELLO);
        hello[MTYPE_LEN..MTYPE_LEN + 8].copy_from_slice(&(id as u64).to_le_bytes());
        hello[MTYPE_LEN + 8..].copy_from_slice(&(pid as i32).to_le_bytes());
        link.send(&hello)?;
        Ok(Box::new(link))
    }
}

/// The size of one chunk: the largest message the queue can hold.
fn chunk_size() -> io::Result<usize> {
    Ok(sysv::kernel_limit("msgmax")?
        .min(sysv::kernel_limit("msgmnb")?)
        .max(1))
}

/// The key file holds "<server pid> <ftok project id>".
fn read_key_file(path: &Path) -> io::Result<(i32, u8)> {
    let text = fs::read_to_string(path)?;
    let mut words = text.split_whitespace();
    match (
        words.next().and_then(|w| w.parse().ok()),
        words.next().and_then(|w| w.parse().ok()),
    ) {
        (Some(pid), Some(project)) => Ok((pid, project)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: expected '<pid> <project>'", path.display()),
        )),
    }
}

/// A key file left by a server that is gone marks a stale queue: remove the
/// queue (only if it is ours) and the file. A live server is an error.
fn remove_stale(key_path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(key_path) {
        Ok(_) => runtime::check_ours(key_path, fs::FileType::is_file, "a key file")?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    // Not a key file we wrote: not ours to remove.
    let recorded = read_key_file(key_path).map_err(|e| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{e}: it is not an ipclab key file; not removing it"),
        )
    });
    let recorded: io::Result<(i32, u8)> = Ok(recorded?);
    if let Ok((pid, _)) = recorded
        && pid_alive(pid)
    {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is already in use by a live server (pid {pid}; stop it, or pick another --name)",
                key_path.display()
            ),
        ));
    }
    if let Ok((_, project)) = recorded
        && let Ok(key) = sysv::ftok(key_path, project)
        && let Ok(q) = MsgQueue::open(key)
        && q.stat()
            .is_ok_and(|ds| ds.msg_perm.uid == getuid().as_raw())
    {
        q.remove()?;
    }
    fs::remove_file(key_path)
}

struct MsgqServer {
    queue: Arc<MsgQueue>,
    key: sysv::Key,
    _file: CreatedPath,
    cfg: Config,
    hello: Vec<u8>,
    chunk: usize,
}

impl Drop for MsgqServer {
    /// Sessions may still hold the queue; the listener's contract is to
    /// remove its objects when dropped, so remove it now: blocked sessions
    /// and clients get `EIDRM`.
    fn drop(&mut self) {
        let _ = self.queue.remove();
    }
}

impl Listener for MsgqServer {
    fn endpoint(&self) -> String {
        format!("queue id {} (key {:#x})", self.queue.id(), self.key)
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let q = Arc::clone(&self.queue);
        let hello = &mut self.hello;
        let n = match interrupt::bounded(
            Instant::now() + wait,
            "waiting for clients",
            || Ok(()),
            || q.recv_raw(hello, HELLO, false),
        ) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e),
        };
        if n != 12 {
            return Ok(None); // not a HELLO of ours: ignore it
        }
        let t = &self.hello[MTYPE_LEN..];
        let id = u64::from_le_bytes(t[..8].try_into().expect("8 bytes")) as libc::c_long;
        let pid = i32::from_le_bytes(t[8..12].try_into().expect("4 bytes"));
        Ok(Some(Box::new(MsgLink::new(
            Arc::clone(&self.queue),
            2 + 2 * id,
            2 + 2 * id + 1,
            pid,
            self.cfg.idle_timeout,
            self.cfg.timeout,
            self.chunk,
            true,
        ))))
    }
}

/// One side of a conversation: receives on `rx_type`, sends on `tx_type`.
struct MsgLink {
    queue: Arc<MsgQueue>,
    rx_type: libc::c_long,
    tx_type: libc::c_long,
    peer: i32,
    read_timeout: Duration,
    write_timeout: Duration,
    chunk: usize,
    /// Received message (mtype word + text) and how much of it is read.
    rbuf: Vec<u8>,
    rlen: usize,
    roff: usize,
    /// The message being sent (mtype word + text).
    sbuf: Vec<u8>,
    server_side: bool,
}

impl MsgLink {
    #[allow(clippy::too_many_arguments)]
    fn new(
        queue: Arc<MsgQueue>,
        rx_type: libc::c_long,
        tx_type: libc::c_long,
        peer: i32,
        read_timeout: Duration,
        write_timeout: Duration,
        chunk: usize,
        server_side: bool,
    ) -> Self {
        let mut sbuf = vec![0; MTYPE_LEN + chunk];
        sysv::set_mtype(&mut sbuf, tx_type);
        MsgLink {
            queue,
            rx_type,
            tx_type,
            peer,
            read_timeout,
            write_timeout,
            chunk,
            rbuf: vec![0; MTYPE_LEN + chunk],
            rlen: 0,
            roff: 0,
            sbuf,
            server_side,
        }
    }

    fn peer_check(&self) -> impl FnMut() -> io::Result<()> + use<> {
        let peer = self.peer;
        let who = if self.server_side { "client" } else { "server" };
        move || {
            if pid_alive(peer) {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("the {who} (pid {peer}) died"),
                ))
            }
        }
    }

    /// Send one whole message (mtype word + text) with a bounded wait.
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let q = &self.queue;
        interrupt::bounded(
            Instant::now() + self.write_timeout,
            "waiting for room in the message queue (msgmnb is full)",
            self.peer_check(),
            || q.send_raw(msg, false),
        )
    }

    /// Send the first `n` text bytes of the send buffer as one message.
    fn send_text(&self, n: usize) -> io::Result<usize> {
        self.send(&self.sbuf[..MTYPE_LEN + n])?;
        Ok(n)
    }
}

impl Read for MsgLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.roff == self.rlen {
            let check = self.peer_check();
            let (q, rbuf, t) = (&self.queue, &mut self.rbuf, self.rx_type);
            let n = interrupt::bounded(
                Instant::now() + self.read_timeout,
                "waiting for a message",
                check,
                || q.recv_raw(rbuf, t, false),
            )?;
            if n == 0 {
                return Ok(0); // end of stream
            }
            self.rlen = n;
            self.roff = 0;
        }
        let n = buf.len().min(self.rlen - self.roff);
        let at = MTYPE_LEN + self.roff;
        buf[..n].copy_from_slice(&self.rbuf[at..at + n]);
        self.roff += n;
        Ok(n)
    }
}

impl Write for MsgLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.chunk);
        self.sbuf[MTYPE_LEN..MTYPE_LEN + n].copy_from_slice(&buf[..n]);
        self.send_text(n)
    }

    /// Gather as much as fits into one message: a small protocol message
    /// (header + payload) is one `msgsnd`.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let text = &mut self.sbuf[MTYPE_LEN..];
        let n = super::gather(bufs, self.chunk, |at, p| {
            text[at..at + p.len()].copy_from_slice(p)
        });
        if n == 0 {
            return Ok(0);
        }
        self.send_text(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for MsgLink {
    fn drop(&mut self) {
        // Tell the peer the stream ended (an empty message), if it is there
        // to read it; otherwise clear what it will never read.
        if pid_alive(self.peer) {
            let mut eof = [0u8; MTYPE_LEN];
            sysv::set_mtype(&mut eof, self.tx_type);
            match self.queue.send_raw(&eof, true) {
                Ok(()) | Err(Errno::EIDRM) | Err(Errno::EINVAL) => {}
                Err(_) => {} // queue full: the peer's liveness check ends its wait
            }
        } else {
            self.queue.purge(self.tx_type);
        }
        self.queue.purge(self.rx_type);
    }
}
