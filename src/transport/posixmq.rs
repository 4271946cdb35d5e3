//! `posix-mq` — POSIX message queues: a well-known queue to meet at, and a
//! private pair of queues per connection.
//!
//! # What it is
//! A POSIX message queue is a kernel object with a name (`/something`)
//! holding up to `maxmsg` messages of at most `msgsize` bytes each.
//! `mq_send(3)` appends a message (with a priority; we always use 0, so the
//! queue is first in, first out); `mq_receive(3)` takes the oldest. Message
//! boundaries are kept: one send is one receive. Unlike the SysV queues of
//! the `msgq` transport, a POSIX queue is opened by *name* and used through
//! a *descriptor* (on Linux a real file descriptor, which `poll(2)` can
//! wait on and `/proc/<pid>/fd` shows), and its limits are set per queue
//! when it is created. Queues live in a small filesystem of their own,
//! usually mounted on `/dev/mqueue`, where `cat` shows their fill level.
//!
//! # How data and synchronisation flow
//! ```text
//!   server creates   /ipclab-<uid>-<hash>-<name>                 (the meeting point)
//!   client creates   /ipclab-<uid>-<hash>-<name>.<pid>-<n>.req   (client → server)
//!                    /ipclab-<uid>-<hash>-<name>.<pid>-<n>.rep   (server → client)
//!
//!   client ── HELLO {pid, n} ──────────▶ meeting queue ──▶ server: opens .req and .rep
//!   client ◀─ WELCOME ─────────────────── .rep
//!   client: mq_unlink(.req), mq_unlink(.rep)   — names gone, queues live on
//!   client ── request chunks ──▶ .req ──▶ session thread
//!   client ◀─ reply chunks ───── .rep ◀── session thread
//! ```
//! Each connection has its own pair of queues, so each session thread
//! blocks in `mq_receive` on its own queue and is woken by the kernel
//! directly: no demultiplexing thread, as in the `msgq` transport.
//!
//! **Unlink after open.** Once both processes have a queue open, its name
//! is no longer needed: the client removes both names right after the
//! WELCOME, and the queues live on, nameless, until the last descriptor is
//! closed — by exit, by a crash, even by SIGKILL. So an open connection
//! can never leave a queue behind; only the meeting queue has a name for
//! the whole life of the server (the same idiom as a temporary file
//! unlinked after `open`). A client killed in the instant between creating
//! its pair and the WELCOME does leave the two names: its server removes
//! them within a second, by the dead pid in their names
//! ([`Listener::sweep`]), and so does `ipclab clean`.
//!
//! **Trusting a HELLO.** Anyone who can send to the meeting queue can
//! name any pid in a HELLO, and queue names are global: any user may
//! create a queue under ipclab's names. So the server takes the pair it
//! opens as its client's only when the opened descriptors prove it:
//! `fstat(2)` says the server's own user owns both queues, and
//! `mq_getattr(3)` gives them exactly the attributes a client creates
//! (`maxmsg` 2, `msgsize` 8 KiB) — a reply queue of smaller messages could
//! carry no reply, a request queue of larger ones no request. The WELCOME
//! is sent without waiting (`O_NONBLOCK`, then `mq_setattr(3)` makes the
//! descriptor blocking again): a client's new reply queue is empty, so a
//! full one is no client's, and waiting for room in it would hold up
//! every other client for `--timeout`.
//!
//! A message of zero bytes means end of stream (the client left, or the
//! session ended). A protocol message larger than `msgsize` — the 1 MiB
//! echo — is sent in chunks, which the receiver's framing joins.
//!
//! # Limits (read live from `/proc/sys/fs/mqueue/`; see `ipclab limits`)
//! * `msg_max` (10) and `msgsize_max` (8192): the most messages per queue
//!   and the largest message an unprivileged process may ask for.
//! * `RLIMIT_MSGQUEUE` (800 KiB by default): the bytes *all* queues of one
//!   user may reserve, about `maxmsg × (msgsize + 88)` each, counted
//!   against the user, not the process, and enforced even for root. This is
//!   the limit that bites: ipclab's connection queues are small
//!   (`maxmsg` 2 × 8 KiB ≈ 16.5 KiB each, 33 KiB per connection, so a user
//!   can hold about 24 connections); beyond it `mq_open` fails with
//!   `EMFILE`, reported as such.
//! * `queues_max` (256): queues system-wide.
//!
//! # Bounded waits
//! `mq_timedsend` and `mq_timedreceive` take an absolute `CLOCK_REALTIME`
//! deadline, but a receive with a deadline arms a kernel timer every time
//! it has to wait — in a ping-pong, every time. So a connection uses the
//! plain `mq_send` and `mq_receive`, and a watchdog thread interrupts a
//! call that has waited a quarter second (`EINTR`), which then checks its
//! overall deadline and whether the peer's pid still exists (see
//! [`crate::sys::interrupt`], shared with `msgq` and the pipes). Measured with
//! `ipclab bench posix-mq pipe --sizes 64`, five runs of each build in
//! turns: 7.35 µs p50 with `mq_timedreceive` in 250 ms slices, 6.64 µs
//! with `mq_receive` (the pipe: 5.5 µs in both). Only the server's accept
//! loop, which must come back within a tenth of a second, still uses
//! `mq_timedreceive`.
//! The server's pid is in a pid file in the runtime directory.
//!
//! # System calls
//! `mq_open(3)` (`O_CREAT | O_EXCL`, mode 0600, `struct mq_attr`),
//! `mq_send(3)`, `mq_receive(3)`, `mq_timedreceive(3)`, `mq_unlink(3)`, `mq_close(3)`,
//! `clock_gettime(2)`, `kill(2)` with signal 0; see `mq_overview(7)`.

use std::ffi::CString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr, MqdT, mq_open, mq_unlink};
use nix::sys::stat::Mode;
use nix::unistd::getuid;

use super::kit::message_link::{MessageChannel, MessageLink, peer_alive};
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{self, Leftover};
use crate::runtime::{self, CreatedPath};
use crate::sys::interrupt::{self, Deadline};

/// The POSIX message queue transport.
pub struct PosixMq;

/// Messages one connection queue holds, and the largest message.
const CONN_MAXMSG: i64 = 2;
const CONN_MSGSIZE: i64 = 8192;
/// The meeting queue carries only HELLOs: {pid u32, n u32}.
const HELLO_LEN: usize = 8;
const WELCOME: &[u8] = b"W";

/// `/ipclab-<uid>-<hash of the runtime dir>-`, like the shm transport's
/// names: unique per runtime directory and recognisable by `ipclab clean`.
fn prefix(dir: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
    }
    format!("/ipclab-{}-{h:08x}-", getuid())
}

fn meeting_name(cfg: &Config) -> String {
    format!("{}{}", prefix(&cfg.dir), cfg.name)
}

fn conn_names(cfg: &Config, pid: u32, n: u32) -> (String, String) {
    let base = format!("{}.{pid}-{n}", meeting_name(cfg));
    (format!("{base}.req"), format!("{base}.rep"))
}

fn pid_path(cfg: &Config) -> PathBuf {
    cfg.object_path(".posix-mq.pid")
}

/// `mq_open` errors in words, with the limit that causes them.
fn explain(e: Errno, name: &str) -> io::Error {
    let why = match e {
        Errno::EMFILE => format!(
            "mq_open({name}): this user's queues would exceed RLIMIT_MSGQUEUE \
             (`ipclab limits`; close other clients or raise `ulimit -q`), or too many open files"
        ),
        Errno::ENOSPC => format!(
            "mq_open({name}): the system-wide queue limit /proc/sys/fs/mqueue/queues_max is reached"
        ),
        Errno::EINVAL => {
            format!("mq_open({name}): queue size above /proc/sys/fs/mqueue/msg_max or msgsize_max")
        }
        Errno::ENOENT => format!("mq_open({name}): no such queue"),
        e => format!("mq_open({name}): {e}"),
    };
    io::Error::new(io::Error::from(e).kind(), why)
}

/// An open queue, closed on drop (nix's `MqdT` does not close itself).
struct Mq(Option<MqdT>);

impl Mq {
    fn create(name: &str, maxmsg: i64, msgsize: i64, flags: MQ_OFlag) -> io::Result<Mq> {
        let attr = MqAttr::new(0, maxmsg, msgsize, 0);
        let oflag = flags | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_CLOEXEC;
        mq_open(name, oflag, Mode::S_IRUSR | Mode::S_IWUSR, Some(&attr))
            .map(|q| Mq(Some(q)))
            .map_err(|e| explain(e, name))
    }

    fn open(name: &str, flags: MQ_OFlag) -> io::Result<Mq> {
        mq_open(name, flags | MQ_OFlag::O_CLOEXEC, Mode::empty(), None)
            .map(|q| Mq(Some(q)))
            .map_err(|e| explain(e, name))
    }

    fn fd(&self) -> libc::mqd_t {
        self.0.as_ref().expect("open").as_raw_fd()
    }

    /// `mq_send` (a plain blocking send: no timer armed), bounded by
    /// [`interrupt::bounded`]: `limit` from the first wake-up, `alive`
    /// asked at each one.
    fn send(
        &self,
        msg: &[u8],
        limit: Duration,
        what: &str,
        alive: impl Fn() -> io::Result<()>,
    ) -> io::Result<()> {
        let fd = self.fd();
        interrupt::bounded(Deadline::After(limit), what, alive, || {
            // SAFETY: valid descriptor and buffer.
            Errno::result(unsafe { libc::mq_send(fd, msg.as_ptr().cast(), msg.len(), 0) })
        })
        .map(drop)
    }

    /// `mq_receive` into `buf` (at least `msgsize` bytes), bounded like
    /// [`Mq::send`].
    fn recv(
        &self,
        buf: &mut [u8],
        limit: Duration,
        what: &str,
        alive: impl Fn() -> io::Result<()>,
    ) -> io::Result<usize> {
        let fd = self.fd();
        interrupt::bounded(Deadline::After(limit), what, alive, || {
            let mut prio = 0u32;
            // SAFETY: valid descriptor and buffer.
            Errno::result(unsafe {
                libc::mq_receive(fd, buf.as_mut_ptr().cast(), buf.len(), &mut prio)
            })
        })
        .map(|n| n as usize)
    }

    /// `mq_timedreceive` for at most `wait` (the accept loop's short
    /// waits, shorter than the watchdog's period): `None` when nothing came.
    fn recv_within(&self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + wait;
        loop {
            // An absolute CLOCK_REALTIME deadline, as mq_timedreceive wants.
            let left = deadline.saturating_duration_since(Instant::now());
            let end = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                + left;
            let abs = libc::timespec {
                tv_sec: end.as_secs() as libc::time_t,
                tv_nsec: end.subsec_nanos() as libc::c_long,
            };
            let mut prio = 0u32;
            // SAFETY: valid descriptor, buffer and timespec.
            let r = unsafe {
                libc::mq_timedreceive(
                    self.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut prio,
                    &abs,
                )
            };
            if r >= 0 {
                return Ok(Some(r as usize));
            }
            match Errno::last() {
                Errno::EINTR => {}
                Errno::ETIMEDOUT => return Ok(None),
                e => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("mq_timedreceive: {e}"),
                    ));
                }
            }
        }
    }
}

impl Drop for Mq {
    fn drop(&mut self) {
        if let Some(q) = self.0.take() {
            // SAFETY: we own the descriptor; closing it is mq_close(3) on Linux.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(q.into_raw_fd()) });
        }
    }
}

/// A name that is ours to remove when nobody uses it any more.
struct Unlink(CString);

impl Unlink {
    fn new(name: &str) -> Unlink {
        Unlink(CString::new(name).expect("no NUL in queue names"))
    }
}

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = mq_unlink(self.0.as_c_str());
    }
}

impl Transport for PosixMq {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "posix-mq",
            description: "POSIX message queues: a meeting queue, then a private queue pair per client",
            kernel_objects: "POSIX queue /ipclab-<uid>-<hash>-<name> (ls /dev/mqueue) + two nameless queues per client; pid file <dir>/<name>.posix-mq.pid",
            inspect_note: "Each process holds POSIX message queue descriptors: on Linux they are real file descriptors on the mqueue filesystem. The server holds the meeting queue, whose name is listed in /dev/mqueue for as long as the server runs, and for each client a request queue (read) and a reply queue (write); the client holds the same two queues the other way round. Those two have no names any more (deleted): the client removed the names with mq_unlink(3) as soon as the server had opened them, so the queues live exactly as long as someone holds them.",
            capabilities: Capabilities::messages().max_message(CONN_MSGSIZE as usize),
        };
        &ABOUT
    }

    fn external_objects(&self, cfg: &Config) -> Vec<PathBuf> {
        vec![PathBuf::from(format!("/dev/mqueue{}", meeting_name(cfg)))]
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        // A live server's pid file is an error; a dead one's is replaced,
        // and so is its meeting queue.
        let pid_file = runtime::create_pid_file(&pid_path(cfg))?;
        let name = meeting_name(cfg);
        let meeting = match Mq::create(
            &name,
            10.min(msg_max()),
            HELLO_LEN as i64,
            MQ_OFlag::O_RDONLY,
        ) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                mq_unlink(name.as_str())?;
                Mq::create(
                    &name,
                    10.min(msg_max()),
                    HELLO_LEN as i64,
                    MQ_OFlag::O_RDONLY,
                )?
            }
            other => other?,
        };
        Ok(Box::new(MqServer {
            meeting,
            _unlink: Unlink::new(&name),
            _pid_file: pid_file,
            name,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = runtime::live_server_pid(&pid_path(cfg), "posix-mq")?;
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (req_name, rep_name) = conn_names(cfg, pid, n);
        // Names with our pid can only be left by a dead process that had
        // our pid before us: ours to replace.
        let _ = mq_unlink(req_name.as_str());
        let _ = mq_unlink(rep_name.as_str());
        let tx = Mq::create(&req_name, CONN_MAXMSG, CONN_MSGSIZE, MQ_OFlag::O_WRONLY)?;
        let unlink_req = Unlink::new(&req_name);
        let rx = Mq::create(&rep_name, CONN_MAXMSG, CONN_MSGSIZE, MQ_OFlag::O_RDONLY)?;
        let unlink_rep = Unlink::new(&rep_name);

        let meeting = Mq::open(&meeting_name(cfg), MQ_OFlag::O_WRONLY).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "the server (pid {server}) has no meeting queue: it is starting or stopping"
                    ),
                )
            } else {
                e
            }
        })?;
        let alive = peer_alive(server, "server");
        let mut hello = [0u8; HELLO_LEN];
        hello[..4].copy_from_slice(&pid.to_le_bytes());
        hello[4..].copy_from_slice(&n.to_le_bytes());
        meeting.send(
            &hello,
            cfg.timeout,
            "waiting for room in the meeting queue",
            alive,
        )?;
        let mut buf = vec![0u8; CONN_MSGSIZE as usize];
        let got = rx.recv(
            &mut buf,
            cfg.timeout,
            "waiting for the server to accept",
            alive,
        )?;
        if &buf[..got] != WELCOME {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the server did not accept the connection",
            ));
        }
        // Both ends are open: the names can go (see "Unlink after open").
        drop((unlink_req, unlink_rep));
        Ok(Box::new(
            MqChannel {
                tx,
                rx,
                peer: server,
                who: "server",
                read_timeout: cfg.timeout,
                write_timeout: cfg.timeout,
            }
            .link(),
        ))
    }

    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let mut found = Vec::new();
        let prefix = prefix(dir);
        for (instance, path) in objects::files_with_suffix(dir, ".posix-mq.pid") {
            let pid = runtime::read_pid_file(&path);
            let file = objects::judge_pid_file("posix-mq", &path);
            // The meeting queue's name comes from the pid file's.
            let name = format!("{prefix}{instance}");
            if file.removable() && queue_exists(&name) {
                let why = format!("its server, pid {}, is gone", pid.unwrap_or(0));
                found.push(Leftover::stale(
                    "posix-mq",
                    format!("POSIX message queue {name}"),
                    why,
                    move || mq_unlink(name.as_str()).map_err(io::Error::from),
                ));
            }
            found.push(file);
        }
        // Connection queues keep their names only between a client's
        // creating them and the server's WELCOME; a client killed in that
        // moment leaves them. They are listed only where /dev/mqueue is
        // mounted.
        if let Ok(entries) = std::fs::read_dir("/dev/mqueue") {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.starts_with(&prefix[1..]) && (n.ends_with(".req") || n.ends_with(".rep"))
                })
                .collect();
            names.sort();
            for n in names {
                let path = PathBuf::from(format!("/dev/mqueue/{n}"));
                let pid = n
                    .rsplit('.')
                    .nth(1)
                    .and_then(|pn| pn.split_once('-'))
                    .and_then(|(p, _)| p.parse::<i32>().ok());
                found.push(Leftover::judge_file(
                    "posix-mq",
                    "POSIX message queue",
                    &path,
                    |t| t.is_file(),
                    || match pid {
                        Some(p) => Ok(objects::pid_verdict("client", p)),
                        None => Err(io::Error::other("no client pid in its name")),
                    },
                ));
            }
        }
        found
    }
}

/// `/proc/sys/fs/mqueue/msg_max`, the most messages a queue may hold.
fn msg_max() -> i64 {
    std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(10)
}

fn queue_exists(name: &str) -> bool {
    Mq::open(name, MQ_OFlag::O_RDONLY | MQ_OFlag::O_NONBLOCK).is_ok()
}

struct MqServer {
    meeting: Mq,
    name: String,
    // Dropped after the queue is closed: the name goes with the server.
    _unlink: Unlink,
    _pid_file: CreatedPath,
    cfg: Config,
}

impl Listener for MqServer {
    fn endpoint(&self) -> String {
        format!("POSIX message queue {}", self.name)
    }

    /// A client killed between creating its queue pair and the WELCOME
    /// leaves two named queues; this server's own ones (`<meeting name>.`)
    /// whose client is gone are removed.
    fn sweep(&mut self) {
        let marker = format!("{}.", &self.name[1..]);
        super::sweep_leftovers(PosixMq.leftovers(&self.cfg.dir), &marker);
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let mut hello = [0u8; HELLO_LEN];
        let Some(n) = self.meeting.recv_within(&mut hello, wait)? else {
            return Ok(None);
        };
        if n != HELLO_LEN {
            return Ok(None); // not a HELLO of ours: ignore it
        }
        let pid = u32::from_le_bytes(hello[..4].try_into().expect("4 bytes"));
        let conn = u32::from_le_bytes(hello[4..].try_into().expect("4 bytes"));
        // No process has pid 0 or one above i32::MAX (kill(2) would take
        // them for a group, or for every process).
        let Ok(peer @ 1..) = i32::try_from(pid) else {
            return Ok(None);
        };
        let (req, rep) = conn_names(&self.cfg, pid, conn);
        // A client that died (or a forged HELLO) leaves nothing to open.
        let (Ok(rx), Ok(tx)) = (
            Mq::open(&req, MQ_OFlag::O_RDONLY),
            Mq::open(&rep, MQ_OFlag::O_WRONLY | MQ_OFlag::O_NONBLOCK),
        ) else {
            return Ok(None);
        };
        // See "Trusting a HELLO": the descriptors, not the names.
        if let Err(why) = client_made(&rx).and_then(|()| client_made(&tx)) {
            eprintln!("ipclab: posix-mq: no session for client pid {pid} ({conn}): {why}");
            return Ok(None);
        }
        let q = tx.0.as_ref().expect("open");
        match nix::mqueue::mq_send(q, WELCOME, 0) {
            Ok(()) => {}
            Err(e) => {
                eprintln!(
                    "ipclab: posix-mq: no session for client pid {pid} ({conn}): {}",
                    if e == Errno::EAGAIN {
                        "its reply queue was full before its session began: no client of ours made it"
                            .to_string()
                    } else {
                        format!("the WELCOME could not be sent: {e}")
                    }
                );
                return Ok(None);
            }
        }
        nix::mqueue::mq_remove_nonblock(q)?;
        let chan = MqChannel {
            tx,
            rx,
            peer,
            who: "client",
            read_timeout: self.cfg.idle_timeout,
            write_timeout: self.cfg.timeout,
        };
        Ok(Some(Box::new(chan.link())))
    }
}

/// Whether an opened connection queue is one a client of ours created for
/// this purpose: owned by our user, with a client's attributes.
fn client_made(q: &Mq) -> Result<(), String> {
    let q = q.0.as_ref().expect("open");
    let st = nix::sys::stat::fstat(q.as_fd()).map_err(|e| format!("fstat: {e}"))?;
    if st.st_uid != getuid().as_raw() {
        return Err(format!(
            "its queue belongs to uid {}, not to this server's user",
            st.st_uid
        ));
    }
    let attr = nix::mqueue::mq_getattr(q).map_err(|e| format!("mq_getattr: {e}"))?;
    if (attr.maxmsg(), attr.msgsize()) != (CONN_MAXMSG, CONN_MSGSIZE) {
        return Err(format!(
            "its queue holds {} messages of {} bytes, not ipclab's {CONN_MAXMSG} of {CONN_MSGSIZE}",
            attr.maxmsg(),
            attr.msgsize()
        ));
    }
    Ok(())
}

/// One side of a connection: receives on `rx`, sends on `tx`, one queue
/// message per link message (the link, with its end-of-stream message, is
/// [`MessageLink`]). `mq_receive(3)` cannot cut a message: it refuses a
/// buffer smaller than the queue's `msgsize`, and both queues' `msgsize`
/// is [`CONN_MSGSIZE`] (the client made them; the server checked them).
struct MqChannel {
    tx: Mq,
    rx: Mq,
    peer: i32,
    who: &'static str,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl MqChannel {
    fn link(self) -> MessageLink<MqChannel> {
        MessageLink::new(self, CONN_MSGSIZE as usize)
    }

    fn put(&self, msg: &[u8]) -> io::Result<()> {
        self.tx.send(
            msg,
            self.write_timeout,
            "waiting for room in the queue (its maxmsg messages are all full)",
            peer_alive(self.peer, self.who),
        )
    }
}

impl MessageChannel for MqChannel {
    fn send(&mut self, msg: &mut [u8]) -> io::Result<()> {
        self.put(msg)
    }

    /// One part (ipclab gathers small messages) goes as it lies.
    fn send_parts(&mut self, parts: &[IoSlice<'_>]) -> Option<io::Result<()>> {
        match parts {
            [one] => Some(self.put(one)),
            _ => None,
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let alive = peer_alive(self.peer, self.who);
        self.rx
            .recv(buf, self.read_timeout, "waiting for a message", alive)
    }

    /// The empty message, if there is room within a moment (a peer that
    /// does not read any more learns it from our pid).
    fn end(&mut self) {
        let wait = Duration::from_millis(100);
        let _ = self.tx.send(&[], wait, "ending the stream", || Ok(()));
    }
}
