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
//!   client ── type 1: HELLO {pid, number, nonce} ────────────▶ server main thread
//!   client ◀─ type 2⁶²+pid·2¹⁶+number: WELCOME {nonce, s} ─── session thread for s
//!   client ── type 2s: request chunks ──────────────────────▶ session thread for s
//!   client ◀─ type 2s+1: reply chunks ────────────────────── session thread for s
//! ```
//! The classic design puts every request on one type and each reply on the
//! client's pid. ipclab gives each *session* its own request type as well:
//! each session thread then blocks in `msgrcv` on its own type and is woken
//! by the kernel directly, with no demultiplexing thread in between — type 1
//! carries only the HELLO of a new client.
//!
//! The session number `s` is the server's: it grows by a random step from
//! one session to the next, so it is never reused while the server lives
//! and cannot be guessed from a number a client was given; both of a new
//! session's types are emptied before its client learns them. That matters because a queue outlives its
//! conversations: a message nobody read stays in it. Were the types made
//! from the client's pid, a later client that happens to get the same pid
//! (pids wrap) would read an old session's leftover as its own reply. The
//! client learns `s` from the WELCOME, which it awaits on a type of its own
//! (its pid and a per-process connection number, so one process can hold
//! several connections) and recognises by the nonce its HELLO carried: a
//! stale WELCOME meant for an earlier process with the same pid is skipped.
//!
//! Each `msgsnd` copies the message into the kernel; each `msgrcv` copies it
//! out and wakes the receiver that waits for that type. A zero-length
//! message on a conversation's type means "end of stream" (the client left,
//! or the session ended); it is sent only to a peer that has not ended the
//! stream itself, so a client that leaves is not sent one it will never read.
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
//! signal handler runs, and are never restarted, so [`crate::sys::interrupt`]
//! wakes a call blocked for longer than a quarter second; the waiter then
//! checks its deadline and whether its peer's pid still exists, and waits
//! again or fails. When the server stops it removes the queue, and every
//! blocked client gets `EIDRM` at once.
//!
//! # Leftovers
//! Nobody but the server cleans the queue, so the server does, by type
//! (`msgrcv` with `IPC_NOWAIT` on a type until it is empty):
//! * a session that ends drops whatever is still queued for it (its request
//!   type), and its unread replies too if its last send failed (the client
//!   stopped reading: the reply is incomplete anyway);
//! * the types of every ended session are remembered, and
//!   [`Listener::sweep`] (once a second) drops what is on them once the
//!   client is dead, or once it has had `--timeout` to read its last reply:
//!   an end-of-stream it will never read, the replies of a client that was
//!   frozen and then killed, a request it sent after its session ended.
//!
//! # Keys
//! The key comes from `ftok(3)` on a file the server creates in the runtime
//! directory (holding its pid), never a fixed number. A key file whose pid
//! is dead marks a stale queue of a server killed with SIGKILL: the next
//! server removes that queue (if it is ours) and starts afresh.
//!
//! # What a peer writes
//! The queue is mode 0600, so only processes of our user can write to it,
//! and any of them can write any type: a HELLO's fields are checked (length,
//! a live pid that is not the server's, a connection number below 2¹⁶), and
//! a message of any length is received whole or refused, never overflowed.
//! What no check can stop is a process of the same user reading or writing
//! another session's types directly: the mechanism has no notion of sender.
//!
//! # System calls
//! `ftok(3)`, `msgget(2)`, `msgsnd(2)`, `msgrcv(2)`, `msgctl(2)` (`IPC_STAT`,
//! `IPC_RMID`), `kill(2)` with signal 0, `pthread_kill(3)`; see `sysvipc(7)`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::getuid;

use super::kit::message_link::{self, MessageChannel, MessageLink, peer_alive};
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{self, Leftover};
use crate::runtime::{self, CreatedPath, pid_alive};
use crate::sys::interrupt::{self, Deadline};
use crate::sys::sysv::{self, MTYPE_LEN, MsgQueue};

const PROJECT: u8 = b'Q';
const HELLO: libc::c_long = 1;

/// The System V message queue transport.
pub struct Msgq;

impl Transport for Msgq {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "msgq",
            description: "System V message queue: one queue, a message type per direction and client",
            kernel_objects: "a SysV message queue (ipcs -q), key = ftok(<dir>/<name>.msgq); the key file holds the server pid",
            inspect_note: "A SysV message queue is not held through a descriptor, so the descriptor tables show nothing of it: it is named by a key and listed by `ipcs -q` and /proc/sysvipc/msg (qnum messages and cbytes bytes waiting, lspid/lrpid the last sender and receiver). The key file in the runtime directory only derives that key with ftok(3) and records the server pid. The queue outlives every process until msgctl(IPC_RMID) removes it, which is why a SIGKILLed server leaves it behind and `ipclab clean` exists.",
            // `msgmax` is read from the running kernel: see `capabilities`.
            capabilities: Capabilities::messages(),
        };
        &ABOUT
    }
    fn sysv_keys(&self, cfg: &Config) -> Vec<(&'static str, i32)> {
        let key_path = cfg.object_path(".msgq");
        read_key_file(&key_path)
            .and_then(|(_, project)| sysv::ftok(&key_path, project))
            .map(|key| vec![("msg", key)])
            .unwrap_or_default()
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let mut found = Vec::new();
        for (_, path) in objects::files_with_suffix(dir, ".msgq") {
            let recorded = read_key_file(&path);
            let file = Leftover::judge_file(
                "msgq",
                "key file",
                &path,
                |t| t.is_file(),
                || {
                    let (pid, _) = read_key_file(&path)?;
                    Ok(objects::pid_verdict("server", pid))
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
            max_message: sysv::kernel_limit("msgmax").ok(),
            ..self.about().capabilities
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
            // As large as any message can be: a longer one, which could only
            // fail `msgrcv` with E2BIG and stay queued, cannot exist.
            hello: vec![0; MTYPE_LEN + chunk],
            chunk,
            sessions: 0,
            ended: Arc::default(),
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
        let chunk = chunk_size()?;
        let pid = std::process::id() as i32;
        let number = NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff;
        let reply_to = welcome_type(pid, number);
        // Different for every connection that could ever get this pid and
        // number: a WELCOME meant for an earlier one does not match.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut chan = MsgChannel::new(queue, reply_to, HELLO, server_pid, cfg, None);
        let mut hello = [0u8; MTYPE_LEN + HELLO_LEN];
        let text = &mut hello[MTYPE_LEN..];
        text[..4].copy_from_slice(&pid.to_le_bytes());
        text[4..8].copy_from_slice(&number.to_le_bytes());
        text[8..].copy_from_slice(&nonce.to_le_bytes());
        chan.send(&mut hello)?;
        let deadline = Instant::now() + cfg.timeout;
        let mut buf = vec![0u8; MTYPE_LEN + chunk];
        let session = loop {
            let n = chan.take(&mut buf, deadline, "waiting for the server's WELCOME")?;
            let text = &buf[MTYPE_LEN..MTYPE_LEN + n];
            if n == WELCOME_LEN && text[..8] == nonce.to_le_bytes() {
                break u64::from_le_bytes(text[8..].try_into().expect("8 bytes"));
            }
            // A stale WELCOME for an earlier process with our pid: skip it.
        };
        if session == 0 || session > MAX_SESSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server (pid {server_pid}) sent an invalid session number {session}"),
            ));
        }
        let (request, reply) = session_types(session);
        (chan.rx_type, chan.tx_type) = (reply, request);
        chan.begun = true;
        Ok(Box::new(MessageLink::new(chan, chunk)))
    }
}

/// The HELLO's text: the client's pid (i32), its connection number (u32,
/// below 2¹⁶), a nonce (u64), little-endian.
const HELLO_LEN: usize = 16;
/// The WELCOME's text: the HELLO's nonce, then the session number (u64s).
const WELCOME_LEN: usize = 16;
/// Session numbers stay far below the WELCOME types (2⁶² and up).
const MAX_SESSION: u64 = 1 << 60;

/// The type a client awaits its WELCOME on: 2⁶² + pid·2¹⁶ + number.
fn welcome_type(pid: i32, number: u32) -> libc::c_long {
    (1 << 62) + ((pid as libc::c_long) << 16) + (number & 0xffff) as libc::c_long
}

/// Session `s` (1, 2, …) sends requests on type 2s and replies on 2s+1.
fn session_types(s: u64) -> (libc::c_long, libc::c_long) {
    let request = 2 * s as libc::c_long;
    (request, request + 1)
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
    /// The last session number given out.
    sessions: u64,
    /// Sessions that ended, whose types may still hold messages.
    ended: Ended,
}

/// The types of ended sessions, for [`Listener::sweep`] to clear.
type Ended = Arc<Mutex<Vec<EndedSession>>>;

struct EndedSession {
    /// Request, reply and WELCOME types.
    types: [libc::c_long; 3],
    client: i32,
    at: Instant,
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
        let Some((pid, number, nonce)) = parse_hello(&self.hello[MTYPE_LEN..MTYPE_LEN + n]) else {
            return Ok(None); // not a HELLO of ours: ignore it
        };
        if self.sessions >= MAX_SESSION {
            return Ok(None); // a billion billion sessions: no number is left
        }
        // The next number, a random step (up to 2^20) after the last: never
        // reused while the server lives, and not guessable from the number a
        // client was given, so a departed client cannot plant "replies" on
        // the types of the sessions to come.
        let step = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), self.sessions);
        self.sessions += 1 + (step & 0xf_ffff);
        let (request, reply) = session_types(self.sessions);
        // And whatever is already on them is not this session's.
        self.queue.purge(request);
        self.queue.purge(reply);
        let reply_to = welcome_type(pid, number);
        let mut welcome = vec![0u8; MTYPE_LEN + WELCOME_LEN];
        sysv::set_mtype(&mut welcome, reply_to);
        welcome[MTYPE_LEN..MTYPE_LEN + 8].copy_from_slice(&nonce.to_le_bytes());
        welcome[MTYPE_LEN + 8..].copy_from_slice(&self.sessions.to_le_bytes());
        let chan = MsgChannel::new(
            Arc::clone(&self.queue),
            request,
            reply,
            pid,
            &self.cfg,
            Some(ServerSession {
                welcome: Some(welcome),
                welcome_type: reply_to,
                ended: Arc::clone(&self.ended),
            }),
        );
        Ok(Some(Box::new(MessageLink::new(chan, self.chunk))))
    }

    /// Clear the types of ended sessions whose client is dead, or has had
    /// `--timeout` to read its last reply; forget them once the client is
    /// dead or four timeouts have passed.
    fn sweep(&mut self) {
        let grace = self.cfg.timeout;
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.retain(|e| {
            let dead = !pid_alive(e.client);
            let age = e.at.elapsed();
            if dead || age >= grace {
                for t in e.types {
                    self.queue.purge(t);
                }
            }
            !dead && age < 4 * grace
        });
    }
}

/// A HELLO's text, checked: a live pid that is not ours, a connection
/// number below 2¹⁶. Returns (pid, number, nonce).
fn parse_hello(text: &[u8]) -> Option<(i32, u32, u64)> {
    if text.len() != HELLO_LEN {
        return None;
    }
    let pid = i32::from_le_bytes(text[..4].try_into().ok()?);
    let number = u32::from_le_bytes(text[4..8].try_into().ok()?);
    let nonce = u64::from_le_bytes(text[8..].try_into().ok()?);
    let ok = pid > 0 && pid != std::process::id() as i32 && number <= 0xffff && pid_alive(pid);
    ok.then_some((pid, number, nonce))
}

/// One side of a conversation: receives on `rx_type`, sends on `tx_type`,
/// one queue message per link message (the link, with its end-of-stream
/// message, is [`MessageLink`]). A message longer than the buffer is not
/// cut: `msgrcv` refuses it (`E2BIG`) and leaves it queued, and the link
/// ends with that error.
struct MsgChannel {
    queue: Arc<MsgQueue>,
    rx_type: libc::c_long,
    tx_type: libc::c_long,
    peer: i32,
    read_timeout: Duration,
    write_timeout: Duration,
    /// The conversation has begun: the peer is owed an end-of-stream
    /// message when it ends (unless the peer ended it).
    begun: bool,
    /// A send failed: the peer stopped reading, what it left is unread.
    broken: bool,
    /// Set on the server's side of a session.
    server: Option<ServerSession>,
}

struct ServerSession {
    /// The WELCOME, sent by the session's thread before its first message
    /// (so a full queue never stalls the accepting thread).
    welcome: Option<Vec<u8>>,
    /// The type the WELCOME goes to.
    welcome_type: libc::c_long,
    ended: Ended,
}

impl MsgChannel {
    /// A server's side waits for its client's next request up to the idle
    /// timeout; every other wait is bounded by `--timeout`.
    fn new(
        queue: Arc<MsgQueue>,
        rx_type: libc::c_long,
        tx_type: libc::c_long,
        peer: i32,
        cfg: &Config,
        server: Option<ServerSession>,
    ) -> Self {
        let idle = if server.is_some() {
            cfg.idle_timeout
        } else {
            cfg.timeout
        };
        MsgChannel {
            queue,
            rx_type,
            tx_type,
            peer,
            read_timeout: idle,
            write_timeout: cfg.timeout,
            begun: false,
            broken: false,
            server,
        }
    }

    fn who(&self) -> &'static str {
        if self.server.is_some() {
            "client"
        } else {
            "server"
        }
    }

    /// Send one whole message (mtype word + text) with a bounded wait.
    fn put(&mut self, msg: &[u8]) -> io::Result<()> {
        let q = &self.queue;
        let sent = interrupt::bounded(
            Deadline::After(self.write_timeout),
            "waiting for room in the message queue (msgmnb is full)",
            peer_alive(self.peer, self.who()),
            || q.send_raw(msg, false),
        );
        self.broken |= sent.is_err();
        sent
    }

    /// Receive the next message of `rx_type` into `buf` (mtype word +
    /// text), waiting until `deadline` at most; returns its text length.
    fn take(
        &mut self,
        buf: &mut [u8],
        deadline: impl Into<Deadline>,
        waiting: &str,
    ) -> io::Result<usize> {
        let (q, t, room) = (&self.queue, self.rx_type, buf.len() - MTYPE_LEN);
        let mut refused = false;
        let n = interrupt::bounded(
            deadline,
            waiting,
            peer_alive(self.peer, self.who()),
            || match q.recv_raw(buf, t, false) {
                Err(sysv::SysvError(Errno::E2BIG)) => {
                    refused = true;
                    Ok(0)
                }
                r => r,
            },
        )?;
        if refused {
            return Err(message_link::cut(None, room));
        }
        Ok(n)
    }

    /// On the server's side, send the WELCOME if it is still owed.
    fn greet(&mut self) -> io::Result<()> {
        if let Some(welcome) = self.server.as_mut().and_then(|s| s.welcome.take()) {
            self.begun = true;
            self.put(&welcome)?;
        }
        Ok(())
    }
}

impl MessageChannel for MsgChannel {
    const HEAD: usize = MTYPE_LEN;

    fn send(&mut self, msg: &mut [u8]) -> io::Result<()> {
        self.greet()?;
        sysv::set_mtype(msg, self.tx_type);
        self.put(msg)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.greet()?;
        let wait = Deadline::After(self.read_timeout);
        self.take(buf, wait, "waiting for a message")
    }

    /// Tell a peer that is still in the conversation that it ended (an
    /// empty message), without waiting: a full queue drops it, and the
    /// peer's liveness check or timeout ends its wait. A peer that stopped
    /// reading will not read the rest of what we sent either: cleared.
    fn end(&mut self) {
        if self.broken {
            self.queue.purge(self.tx_type);
            self.broken = false;
        }
        if self.begun && pid_alive(self.peer) {
            let mut eof = [0u8; MTYPE_LEN];
            sysv::set_mtype(&mut eof, self.tx_type);
            let _ = self.queue.send_raw(&eof, true);
        }
    }
}

impl Drop for MsgChannel {
    fn drop(&mut self) {
        // Nothing more will be read here.
        self.queue.purge(self.rx_type);
        // A peer that ended the stream and stopped reading (a failed
        // handshake sent only on the shared HELLO type: not ours to clear).
        if self.broken && self.begun {
            self.queue.purge(self.tx_type);
        }
        // The server remembers the session's types for `sweep`: whatever
        // the client leaves on them is cleared once it is gone.
        if let Some(s) = &self.server {
            let (request, reply) = (self.rx_type, self.tx_type);
            s.ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(EndedSession {
                    types: [request, reply, s.welcome_type],
                    client: self.peer,
                    at: Instant::now(),
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A message longer than the link's chunk (a peer whose msgmax is
    /// larger: root raised it) is refused by msgrcv, not cut: the read is
    /// an error, and the message is cleared when the link goes.
    #[test]
    fn a_message_longer_than_the_chunk_is_an_error_not_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, b"").unwrap();
        let queue = Arc::new(MsgQueue::create(sysv::ftok(&f, b'L').unwrap()).unwrap());
        let me = std::process::id() as i32;
        let cfg = Config::default();
        let mut chan = MsgChannel::new(Arc::clone(&queue), 6, 7, me, &cfg, None);
        chan.begun = true;
        let mut link = MessageLink::new(chan, 16);
        let mut long = vec![0u8; MTYPE_LEN + 17];
        sysv::set_mtype(&mut long, 6);
        queue.send_raw(&long, false).unwrap();
        let mut buf = [0u8; 64];
        let e = link.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        drop(link);
        let mut any = vec![0u8; MTYPE_LEN + 64];
        assert_eq!(
            queue.recv_raw(&mut any, 6, true),
            Err(sysv::SysvError(Errno::ENOMSG))
        );
        // The end-of-stream message the dropped link owed its peer.
        assert_eq!(queue.recv_raw(&mut any, 7, true), Ok(0));
    }
}
