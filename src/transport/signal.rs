//! `signal` — the payload carried by real-time signals, eight bytes at a time.
//!
//! # What it is
//! A signal is the kernel's smallest message: a number delivered to a
//! process. The classic signals (SIGUSR1 …) carry nothing else and are not
//! queued: if SIGUSR1 arrives while one is already pending, the second is
//! simply merged into the first — data sent that way would be lost.
//! *Real-time* signals (SIGRTMIN … SIGRTMAX) are different: each one sent
//! with `sigqueue(3)` carries a word of data (`sigval`, pointer-sized: 8
//! bytes on 64-bit Linux), they are queued rather than merged, and signals
//! of one number are delivered in the order they were sent. That is enough
//! to carry a byte stream — slowly, at one system call per 8 bytes. This
//! transport exists to show exactly that cost.
//!
//! # How data and synchronisation flow
//! ```text
//!   client thread (signals blocked)                     server (signals blocked in every thread)
//!   sigqueue(server pid, SIGRTMIN+2, HELLO|nonce|tid) ─▶ sigtimedwait: a new client, known by si_pid
//!   sigtimedwait ◀── rt_tgsigqueueinfo(pid, tid, SIGRTMIN+2, WELCOME|nonce)
//!   sigqueue(server, SIGRTMIN+1, word) × n ────────────▶ main thread: sigtimedwait, forwards the words
//!                                                         to the session thread
//!   sigtimedwait ◀── rt_tgsigqueueinfo(pid, tid, SIGRTMIN+1, word) × n  (the reply)
//!   ACKs travel on SIGRTMIN+2 both ways
//! ```
//! * **Receiving without a handler.** Both sides block the signals
//!   (`pthread_sigmask(2)`) and take them synchronously with
//!   `sigtimedwait(2)`, which also returns the sender's pid (`si_pid`) and
//!   the data word (`si_value`). Nothing runs in an asynchronous handler, so
//!   there is nothing to get wrong about async-signal safety.
//! * **Words in order.** All data words of one direction use one signal
//!   number (SIGRTMIN+1), because only signals *of the same number* keep
//!   their order (lower numbers are delivered first). Each `write` becomes a
//!   word holding the byte count, then the bytes packed eight to a word.
//! * **Replies to a thread, not a process.** A signal sent to a process goes
//!   to any thread that does not block it — in a client that is a library in
//!   someone else's program (the test harness, say), that thread would be
//!   killed by the default action. So the client tells the server its thread
//!   id in its HELLO, blocks the signals in that thread only, and the server
//!   sends to exactly that thread with `rt_tgsigqueueinfo(2)`. (A signal link
//!   must therefore be used from the thread that opened it; it checks.)
//!
//! # Flow control
//! Queued real-time signals count against the receiving user's
//! `RLIMIT_SIGPENDING` (`ulimit -i`, about 96,000 here, shared by all of
//! that user's processes); a 1 MiB echo is 131,072 signals each way and
//! would overflow it. So the sender keeps at most [`WINDOW`] words
//! unacknowledged, and the receiver acknowledges every `WINDOW / 2` words
//! with a control signal (SIGRTMIN+2) holding the count. Control signals are
//! cumulative counts, so their order relative to data does not matter.
//!
//! # Clients
//! One at a time: the server knows its client by `si_pid`, and one process
//! could hold several connections that it could not tell apart. A second
//! client's HELLO is answered with BUSY. The slot is taken only once the
//! WELCOME has been sent: a client that greeted and vanished while the
//! server was stopped (SIGSTOP), or that named a thread not its own, gets
//! no session and blocks nobody. A client that gives up waiting for its
//! WELCOME says BYE, so a server that wakes up late ends that session at
//! once. Each connection has a nonce, carried by its HELLO and by every
//! WELCOME, BUSY and BYE: a late answer meant for an earlier connection of
//! the same thread is never taken for the current one's.
//!
//! # Who is speaking
//! Any process allowed to signal the server (same user, or privileged) can
//! queue our signal numbers to it. The server takes only `SI_QUEUE` signals
//! (a `kill(2)` carries no word) and gives a session only the words whose
//! `si_pid` and `si_uid` are its client's. That keeps out strangers and
//! accidents — but not a determined impostor of the same user: the kernel
//! lets a process put any `si_pid` in a signal it queues with
//! `rt_sigqueueinfo(2)` (only the codes the kernel itself uses are
//! refused). Signals carry no proof of their sender; a mechanism that must
//! know its peer should use a UNIX socket's `SO_PEERCRED`.
//!
//! # Timeouts
//! Every wait is a `sigtimedwait` of at most a quarter second; between waits
//! the peer's pid is checked with `kill(pid, 0)`. The client finds the
//! server through a pid file in the runtime directory, checked to be alive.
//!
//! # Costs and limits
//! Two system calls (send and receive) per 8 bytes, plus a wake-up of the
//! receiver per word when it is waiting, plus the acknowledgements.
//!
//! # System calls
//! `sigqueue(3)` (`rt_sigqueueinfo(2)`), `rt_tgsigqueueinfo(2)`,
//! `sigtimedwait(2)`, `pthread_sigmask(3)`, `gettid(2)`, `kill(2)` with
//! signal 0; see `signal(7)` ("Real-time signals").

use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{self, Leftover};
use crate::runtime::{self, CreatedPath, pid_alive};

/// Data words a sender may have unacknowledged.
pub const WINDOW: u32 = 256;
/// Largest byte count carried by one write (one count word).
const MAX_WRITE: usize = 64 * 1024;
const SLICE: Duration = Duration::from_millis(250);

const HELLO: u64 = 1;
const WELCOME: u64 = 2;
const BUSY: u64 = 3;
const ACK: u64 = 4;
const BYE: u64 = 5;

fn sig_data() -> libc::c_int {
    libc::SIGRTMIN() + 1
}
fn sig_ctrl() -> libc::c_int {
    libc::SIGRTMIN() + 2
}
const ARG: u64 = (1 << 56) - 1;
fn ctrl(kind: u64, arg: u64) -> u64 {
    (kind << 56) | (arg & ARG)
}

/// A HELLO's argument: the client's thread id in the low 22 bits (thread
/// ids are below `PID_MAX_LIMIT`, 2²²), a nonce above them. WELCOME, BUSY
/// and BYE carry the nonce back, so a late answer to an earlier connection
/// is never taken for this one's.
const TID_BITS: u32 = 22;
const NONCE: u64 = ARG >> TID_BITS;

/// A nonce for a new connection: different for each in this process.
fn next_nonce() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed) & NONCE
}

fn our_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig_data());
        libc::sigaddset(&mut set, sig_ctrl());
        set
    }
}

/// Block our two signals in the calling thread (threads it starts inherit
/// the mask).
fn block_in_this_thread() -> io::Result<()> {
    let set = our_set();
    // SAFETY: valid set pointer.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// One received signal: which, from whom (pid and real uid, as the sender
/// put them in its `siginfo`), and its word.
#[derive(Clone, Copy, Debug)]
struct Received {
    sig: libc::c_int,
    from: libc::pid_t,
    uid: libc::uid_t,
    value: u64,
}

/// `sigtimedwait(2)` for one of our signals, at most `timeout`.
fn wait_signal(timeout: Duration) -> io::Result<Option<Received>> {
    let set = our_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: plain data out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let sig = unsafe { libc::sigtimedwait(&set, &mut info, &ts) };
    if sig == -1 {
        return match Errno::last() {
            Errno::EAGAIN | Errno::EINTR => Ok(None),
            e => Err(io::Error::other(format!("sigtimedwait: {e}"))),
        };
    }
    // Only words sent with sigqueue(3) or rt_tgsigqueueinfo(2) are ours: a
    // kill(2) of the same number by someone else carries no word.
    if info.si_code != libc::SI_QUEUE {
        return Ok(None);
    }
    // SAFETY: the kernel filled a SI_QUEUE siginfo, which has pid, uid and
    // value.
    let (from, uid, value) = unsafe {
        (
            info.si_pid(),
            info.si_uid(),
            info.si_value().sival_ptr as usize as u64,
        )
    };
    Ok(Some(Received {
        sig,
        from,
        uid,
        value,
    }))
}

fn send_error(e: Errno, to: libc::pid_t) -> io::Error {
    match e {
        Errno::ESRCH => io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("the peer (pid {to}) is gone"),
        ),
        Errno::EAGAIN => io::Error::new(
            io::ErrorKind::OutOfMemory,
            "the queue of pending real-time signals is full (RLIMIT_SIGPENDING, see `ulimit -i`)",
        ),
        e => io::Error::other(format!("sending a signal to pid {to}: {e}")),
    }
}

/// `sigqueue(3)`: a word to a process.
fn send_to_process(pid: libc::pid_t, sig: libc::c_int, value: u64) -> io::Result<()> {
    let v = libc::sigval {
        sival_ptr: value as usize as *mut libc::c_void,
    };
    // SAFETY: plain system call.
    if unsafe { libc::sigqueue(pid, sig, v) } == -1 {
        return Err(send_error(Errno::last(), pid));
    }
    Ok(())
}

/// The start of a `siginfo_t` as `rt_tgsigqueueinfo(2)` reads it for
/// `SI_QUEUE` on 64-bit Linux (the rest of the 128 bytes is padding).
#[repr(C)]
struct QueueInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    pid: libc::pid_t,
    uid: libc::uid_t,
    value: u64,
    _rest: [u8; 128 - 32],
}

/// `rt_tgsigqueueinfo(2)`: a word to one thread of a process.
fn send_to_thread(
    pid: libc::pid_t,
    tid: libc::pid_t,
    sig: libc::c_int,
    value: u64,
) -> io::Result<()> {
    let info = QueueInfo {
        signo: sig,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid: std::process::id() as libc::pid_t,
        uid: nix::unistd::getuid().as_raw(),
        value,
        _rest: [0; 96],
    };
    // SAFETY: info is a valid, fully initialised siginfo layout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid,
            sig,
            &info as *const QueueInfo,
        )
    };
    if r == -1 {
        return Err(send_error(Errno::last(), pid));
    }
    Ok(())
}

fn gettid() -> libc::pid_t {
    nix::unistd::gettid().as_raw()
}

/// The real-time signal transport.
///
/// # Side effects on the calling thread
/// Signals are taken with `sigtimedwait(2)`, not a handler, so they must be
/// blocked where they arrive:
/// * `connect` blocks SIGRTMIN+1 and SIGRTMIN+2 in the **calling thread**
///   (`pthread_sigmask(3)`), and leaves them blocked after the link is
///   dropped; threads that thread starts later inherit the mask. A program
///   that uses those two signals itself must connect from a thread of its
///   own.
/// * `listen` blocks them in the calling thread before any session thread
///   exists, so the whole server inherits the mask.
///
/// Waits also go through [`crate::sys::interrupt`], whose first use
/// installs a `SIGRTMAX` handler and starts a watchdog thread.
pub struct Signal;

impl Transport for Signal {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "signal",
            description: "real-time signals carrying 8 bytes each (sigqueue/sigtimedwait), windowed, one client",
            kernel_objects: "queued signals SIGRTMIN+1 (data) and SIGRTMIN+2 (control); pid file <dir>/<name>.signal.pid",
            inspect_note: "Signals are not held through descriptors: look at the signals line. Both processes block the real-time signals they use (blocked) and take them with sigtimedwait(2) instead of a handler, so they are never delivered asynchronously; queued counts this user's queued signals against RLIMIT_SIGPENDING. The pid file is the transport's only file: it tells the client which process to sigqueue(3) to.",
            capabilities: Capabilities::messages()
                .max_message(std::mem::size_of::<libc::sigval>())
                .one_client(),
        };
        &ABOUT
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        objects::files_with_suffix(dir, ".signal.pid")
            .into_iter()
            .map(|(_, path)| objects::judge_pid_file("signal", &path))
            .collect()
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        // Before any session thread exists, so they all inherit the mask.
        block_in_this_thread()?;
        let pid_file = runtime::create_pid_file(&pid_path(cfg))?;
        Ok(Box::new(SignalServer {
            _pid_file: pid_file,
            current: None,
            deferred: Vec::new(),
            cfg: cfg.clone(),
            path: pid_path(cfg),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let server = runtime::live_server_pid(&pid_path(cfg), "signal")?;
        block_in_this_thread()?;
        // Anything still pending for this thread belongs to an old session.
        while wait_signal(Duration::ZERO)?.is_some() {}
        let tid = gettid();
        let nonce = next_nonce();
        send_to_process(
            server,
            sig_ctrl(),
            ctrl(HELLO, (nonce << TID_BITS) | tid as u64),
        )?;
        let deadline = Instant::now() + cfg.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // If the server still answers, it may start a session for
                // this HELLO: tell it the client gave up.
                let _ = send_to_process(server, sig_ctrl(), ctrl(BYE, nonce));
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the signal server (pid {server}) did not answer within --timeout"),
                ));
            }
            match wait_signal(left.min(SLICE))? {
                Some(r) if r.from == server && r.sig == sig_ctrl() && r.value & ARG == nonce => {
                    match r.value >> 56 {
                        WELCOME => break,
                        BUSY => {
                            return Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                format!(
                                    "busy: the signal server (pid {server}) serves one client at a time"
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
                // Someone else's, or a late answer to an earlier connection.
                Some(_) => {}
                None if !pid_alive(server) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("the signal server (pid {server}) died"),
                    ));
                }
                None => {}
            }
        }
        let mut link = SigLink::new(ClientSide { server }, nonce, cfg.timeout, cfg.timeout);
        link.owner = Some(tid);
        Ok(Box::new(link))
    }
}

fn pid_path(cfg: &Config) -> PathBuf {
    cfg.object_path(".signal.pid")
}

/// How each side gets and sends words.
trait Side {
    /// Wait at most `timeout` for words from the peer; append them.
    fn next(&mut self, timeout: Duration, out: &mut Vec<Received>) -> io::Result<()>;
    fn send(&mut self, sig: libc::c_int, value: u64) -> io::Result<()>;
    fn peer_alive(&self) -> io::Result<()>;
}

struct ClientSide {
    server: libc::pid_t,
}

impl Side for ClientSide {
    fn next(&mut self, timeout: Duration, out: &mut Vec<Received>) -> io::Result<()> {
        let mut wait = timeout;
        while let Some(r) = wait_signal(wait)? {
            if r.from == self.server {
                out.push(r);
            }
            wait = Duration::ZERO;
            if out.len() >= WINDOW as usize {
                break;
            }
        }
        Ok(())
    }
    fn send(&mut self, sig: libc::c_int, value: u64) -> io::Result<()> {
        send_to_process(self.server, sig, value)
    }
    fn peer_alive(&self) -> io::Result<()> {
        if pid_alive(self.server) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the server (pid {}) died", self.server),
            ))
        }
    }
}

struct ServerSide {
    rx: mpsc::Receiver<Vec<Received>>,
    client: libc::pid_t,
    tid: libc::pid_t,
    nonce: u64,
    done: Arc<AtomicBool>,
}

impl Side for ServerSide {
    fn next(&mut self, timeout: Duration, out: &mut Vec<Received>) -> io::Result<()> {
        match self.rx.recv_timeout(timeout) {
            Ok(batch) => out.extend(batch),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The listener forgot us: treat as the client leaving.
            Err(mpsc::RecvTimeoutError::Disconnected) => out.push(Received {
                sig: sig_ctrl(),
                from: self.client,
                uid: 0,
                value: ctrl(BYE, self.nonce),
            }),
        }
        Ok(())
    }
    fn send(&mut self, sig: libc::c_int, value: u64) -> io::Result<()> {
        send_to_thread(self.client, self.tid, sig, value)
    }
    fn peer_alive(&self) -> io::Result<()> {
        if pid_alive(self.client) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the client (pid {}) died", self.client),
            ))
        }
    }
}

/// A byte stream over signal words, with windowed flow control.
struct SigLink<S: Side> {
    side: S,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Thread that must use this link (the client's receiving thread).
    owner: Option<libc::pid_t>,
    /// The connection's nonce, which every BYE carries.
    nonce: u64,
    // Receiving.
    pending: Vec<u8>,
    pos: usize,
    frame_left: u64,
    unacked_in: u32,
    eof: bool,
    // Sending.
    unacked_out: u32,
    events: Vec<Received>,
    scratch: Vec<u8>,
}

impl<S: Side> SigLink<S> {
    fn new(side: S, nonce: u64, read_timeout: Duration, write_timeout: Duration) -> Self {
        SigLink {
            side,
            read_timeout,
            write_timeout,
            owner: None,
            nonce,
            pending: Vec::new(),
            pos: 0,
            frame_left: 0,
            unacked_in: 0,
            eof: false,
            unacked_out: 0,
            events: Vec::with_capacity(WINDOW as usize),
            scratch: Vec::new(),
        }
    }

    /// Wait (bounded) for at least one event from the peer and take in all
    /// that came.
    fn pump(&mut self, deadline: Instant, waiting: &str) -> io::Result<()> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.events.clear();
            self.side.next(left.min(SLICE), &mut self.events)?;
            if !self.events.is_empty() {
                break;
            }
            self.side.peer_alive()?;
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out {waiting} (--timeout sets the limit)"),
                ));
            }
        }
        for i in 0..self.events.len() {
            let r = self.events[i];
            if r.sig == sig_data() {
                self.take_word(r.value);
            } else {
                match r.value >> 56 {
                    ACK => {
                        self.unacked_out = self
                            .unacked_out
                            .saturating_sub((r.value & 0xffff_ffff) as u32)
                    }
                    BYE if r.value & ARG == self.nonce => self.eof = true,
                    _ => {}
                }
            }
        }
        if self.unacked_in >= WINDOW / 2 {
            let n = std::mem::take(&mut self.unacked_in);
            self.side.send(sig_ctrl(), ctrl(ACK, n as u64))?;
        }
        Ok(())
    }

    fn take_word(&mut self, w: u64) {
        self.unacked_in += 1;
        if self.frame_left == 0 {
            self.frame_left = w.min(MAX_WRITE as u64);
        } else {
            let n = self.frame_left.min(8) as usize;
            self.pending.extend_from_slice(&w.to_le_bytes()[..n]);
            self.frame_left -= n as u64;
        }
    }

    fn check_thread(&self) -> io::Result<()> {
        match self.owner {
            Some(t) if t != gettid() => Err(io::Error::other(
                "a signal link must be used by the thread that opened it (replies are sent to that thread)",
            )),
            _ => Ok(()),
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.check_thread()?;
        let n = bytes.len().min(MAX_WRITE);
        let deadline = Instant::now() + self.write_timeout;
        let words = std::iter::once(n as u64).chain(bytes[..n].chunks(8).map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        }));
        for w in words {
            while self.unacked_out >= WINDOW {
                if self.eof {
                    // The peer ended the session (it may have said why in
                    // what it sent before its BYE: that is still readable).
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the peer ended the session while we were sending",
                    ));
                }
                self.pump(deadline, "waiting for the peer to acknowledge")?;
            }
            self.side.send(sig_data(), w)?;
            self.unacked_out += 1;
        }
        Ok(n)
    }
}

impl<S: Side> Read for SigLink<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_thread()?;
        let deadline = Instant::now() + self.read_timeout;
        while self.pos == self.pending.len() {
            self.pending.clear();
            self.pos = 0;
            if self.eof {
                return Ok(0);
            }
            self.pump(deadline, "waiting for the peer to send")?;
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: Side> Write for SigLink<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.send_bytes(buf)
    }

    /// Header and payload as one count word: gather them first.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        super::gather(bufs, MAX_WRITE, |_, p| scratch.extend_from_slice(p));
        let r = if scratch.is_empty() {
            Ok(0)
        } else {
            self.send_bytes(&scratch)
        };
        self.scratch = scratch;
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Side> Drop for SigLink<S> {
    fn drop(&mut self) {
        let _ = self.side.send(sig_ctrl(), ctrl(BYE, self.nonce));
    }
}

impl Drop for ServerSide {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// The session in the one slot, and whose signals are its words.
struct Current {
    pid: libc::pid_t,
    uid: libc::uid_t,
    nonce: u64,
    tx: mpsc::Sender<Vec<Received>>,
    done: Arc<AtomicBool>,
    /// The client said BYE: its session is ending, not busy.
    left: bool,
}

impl Current {
    /// Is `r` from this session's client? Its pid and uid, as the sender
    /// wrote them: the kernel lets a process of the same user put any pid
    /// in a `sigqueue` siginfo, so this keeps out strangers and mistakes,
    /// not a determined impostor of our own user (see the module doc).
    fn owns(&self, r: &Received) -> bool {
        r.from == self.pid && r.uid == self.uid
    }
}

/// HELLOs kept for later (the slot is being freed) at most; more are BUSY.
const MAX_DEFERRED: usize = 64;

struct SignalServer {
    _pid_file: CreatedPath,
    path: PathBuf,
    current: Option<Current>,
    /// HELLOs that came while the previous client was dead or leaving but
    /// its session not yet finished; answered on a later call.
    deferred: Vec<Received>,
    cfg: Config,
}

impl Listener for SignalServer {
    fn endpoint(&self) -> String {
        format!(
            "pid {} (pid file {})",
            std::process::id(),
            self.path.display()
        )
    }

    /// The one receiver of every signal sent to the server: starts sessions
    /// on HELLO and forwards the session's words to it in batches.
    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let mut batch = std::mem::take(&mut self.deferred);
        batch.retain(|r| pid_alive(r.from));
        let wait = if batch.is_empty() {
            wait
        } else {
            wait.min(Duration::from_millis(20))
        };
        if let Some(first) = wait_signal(wait)? {
            batch.push(first);
        }
        if batch.is_empty() {
            return Ok(None);
        }
        while batch.len() < 4096 {
            match wait_signal(Duration::ZERO)? {
                Some(r) => batch.push(r),
                None => break,
            }
        }
        let mut new_link: Option<Box<dyn Link>> = None;
        let mut forward = Vec::new();
        for r in batch {
            if r.sig == sig_ctrl() && r.value >> 56 == HELLO {
                let Some((tid, nonce)) = check_hello(&r) else {
                    continue;
                };
                let slot_taken = self
                    .current
                    .as_ref()
                    .is_some_and(|c| !c.done.load(Ordering::SeqCst));
                if new_link.is_some() || slot_taken {
                    let leaving = self
                        .current
                        .as_ref()
                        .is_some_and(|c| c.left || !pid_alive(c.pid));
                    if (new_link.is_some() || leaving) && self.deferred.len() < MAX_DEFERRED {
                        // The slot is being freed: answer on a later call.
                        self.deferred.push(r);
                    } else {
                        let _ = send_to_thread(r.from, tid, sig_ctrl(), ctrl(BUSY, nonce));
                    }
                    continue;
                }
                // The slot is taken only once the WELCOME is out: a client
                // that vanished while the server was stopped, or that named a
                // thread that is not its own, leaves it free.
                if send_to_thread(r.from, tid, sig_ctrl(), ctrl(WELCOME, nonce)).is_err() {
                    continue;
                }
                self.flush(&mut forward);
                let (tx, rx) = mpsc::channel();
                let done = Arc::new(AtomicBool::new(false));
                self.current = Some(Current {
                    pid: r.from,
                    uid: r.uid,
                    nonce,
                    tx,
                    done: Arc::clone(&done),
                    left: false,
                });
                let side = ServerSide {
                    rx,
                    client: r.from,
                    tid,
                    nonce,
                    done,
                };
                new_link = Some(Box::new(SigLink::new(
                    side,
                    nonce,
                    self.cfg.idle_timeout,
                    self.cfg.timeout,
                )));
            } else if let Some(c) = self.current.as_mut()
                && c.owns(&r)
            {
                if r.sig == sig_ctrl() && r.value >> 56 == BYE {
                    if r.value & ARG != c.nonce {
                        continue; // an earlier connection's goodbye
                    }
                    c.left = true;
                }
                forward.push(r);
            }
        }
        self.flush(&mut forward);
        Ok(new_link)
    }
}

/// A HELLO's sender and fields, checked: a live process that is not this
/// server (a WELCOME to one of our own threads would be a signal we do not
/// wait for), a thread id. Returns (tid, nonce).
fn check_hello(r: &Received) -> Option<(libc::pid_t, u64)> {
    let arg = r.value & ARG;
    let tid = (arg & ((1 << TID_BITS) - 1)) as libc::pid_t;
    let nonce = arg >> TID_BITS;
    let ok =
        r.from > 0 && tid > 0 && r.from != std::process::id() as libc::pid_t && pid_alive(r.from);
    ok.then_some((tid, nonce))
}

impl SignalServer {
    fn flush(&mut self, forward: &mut Vec<Received>) {
        if forward.is_empty() {
            return;
        }
        if let Some(c) = &self.current {
            let _ = c.tx.send(std::mem::take(forward));
        }
        forward.clear();
    }
}
