//! `flock` — a shared file, and file locks as the only synchronisation.
//!
//! # What it is
//! A file lock says "this byte range is mine" and makes anyone else who asks
//! for it wait until it is released — nothing more. Locks carry no data and
//! wake no one on purpose: they only order access. Here the data goes
//! through a regular file in the runtime directory, mapped into both
//! processes with `mmap(2)` (`memmap2`), and the locks decide whose turn it
//! is to use it. No semaphores, no signals, no polling of the file.
//!
//! ipclab uses **open-file-description locks** (`F_OFD_SETLKW`, `fcntl(2)`).
//! Classic POSIX record locks (`F_SETLKW`) belong to a *process*: two
//! connections in one process would share them, and closing *any* fd of the
//! file drops them all. `flock(2)` locks only whole files. OFD locks belong
//! to the open file (each connection opens its own), cover byte ranges, and
//! are released by the kernel when the owner dies — which is how a peer's
//! death becomes visible.
//!
//! # Strict turn-taking with three locks
//! Locks are not fair: a process that releases a lock and asks for it again
//! may get it straight back, before a waiting peer. So "release, then take
//! again" cannot pass a turn. The rotation below never asks for the lock it
//! just released:
//!
//! ```text
//!  three lock bytes 0 1 2. The owner of turn t holds {2t mod 3, 2t+1 mod 3};
//!  the other party holds the third and is blocked on 2t mod 3.
//!  To end its turn the owner releases 2t mod 3 and blocks on 2t+2 mod 3.
//!
//!  turn  client holds   server holds   what happens
//!   0    {0,1}          {2} waits 0    client writes a request chunk, releases 0, waits 2
//!   1    {1}   waits 2  {2,0}          server reads it, writes a reply, releases 2, waits 1
//!   2    {1,2}          {0}   waits 1  client reads the reply …, releases 1, waits 0
//!   3    {2}   waits 0  {0,1}          …
//! ```
//! Every lock a party waits for is held by the other party, and the lock it
//! releases is the one the other is waiting for (or is about to wait for):
//! under every interleaving the turns alternate strictly. Each turn carries
//! one chunk (up to 64 KiB) from its owner to the other party, or nothing
//! when the owner is only waiting to read; a protocol round trip is two
//! turns.
//!
//! Two more lock bytes say who is there: **V**, held by the server for its
//! whole life, and **S**, held by the connected client. A client takes S
//! without waiting (`F_OFD_SETLK`): if it is taken, the server is busy with
//! another client. After every wait, the winner checks that its peer's
//! presence lock is still held: a lock obtained because the peer *died*
//! (the kernel released its locks) is then recognised as such. A lock says
//! only that *someone* holds S, so a client also writes a session id into
//! the header (zero the moment it takes S, its own id once set up): a
//! server session whose client died and whose S was taken by the next
//! client sees the id change and ends, instead of taking the newcomer's
//! turns for its dead client's. And a reader's empty turns share one
//! deadline, so two parties that both wait to read end in a timeout, never
//! in a loop.
//!
//! # The one place that polls
//! A lock can only wake a waiter when someone *releases* it; a client that
//! *arrives* releases nothing. So the server's accept loop checks S
//! (`F_OFD_GETLK`) once per tick of the server loop (100 ms) — a bounded,
//! fixed-period check, not busy polling. Everything else blocks in the
//! kernel.
//!
//! # Layout of the file
//! ```text
//!  0     header: magic, server pid, c2s length, s2c length (u32::MAX = end)
//!  4096  client → server area (64 KiB)
//!  4096 + 64 KiB  server → client area (64 KiB)
//!  lock bytes at offset 2^30 + {0,1,2} (rotation), +3 (S), +4 (V): beyond
//!  the end of the file, which is allowed — a lock is only a claim on a range.
//! ```
//!
//! # Timeouts
//! `F_OFD_SETLKW` has no timeout, but fails with `EINTR` when a signal
//! handler runs; [`crate::interrupt`] wakes it every quarter second to check
//! the deadline and the peer's presence lock.
//!
//! # Costs and limits
//! Each turn is at least two `fcntl` calls and a wake-up; a round trip two
//! turns. One client at a time.
//!
//! # System calls
//! `open(2)`, `ftruncate(2)`, `mmap(2)`, `fcntl(2)` (`F_OFD_SETLK`,
//! `F_OFD_SETLKW`, `F_OFD_GETLK`), `unlink(2)`; see `fcntl(2)` "Open file
//! description locks". See the locks: `cat /proc/locks` (type `OFDLCK`).

use std::fs::{self, File};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;

use super::{Boundaries, Capabilities, Config, Link, Listener, Transport};
use crate::clean::{self, Leftover};
use crate::interrupt;
use crate::runtime::{self, CreatedPath};

const MAGIC: u64 = 0x6970_636c_6162_464c; // "ipclabFL"
const DATA_OFFSET: usize = 4096;
/// Bytes in each direction's area.
pub const CAPACITY: usize = 64 * 1024;
const FILE_LEN: usize = DATA_OFFSET + 2 * CAPACITY;
const LOCKS: i64 = 1 << 30;
const S: i64 = 3;
const V: i64 = 4;
const END: u32 = u32::MAX;

// Header field offsets.
const H_MAGIC: usize = 0;
const H_SERVER_PID: usize = 8;
const H_LEN: [usize; 2] = [16, 20]; // c2s, s2c
const H_SESSION: usize = 24; // u64, written by a client once it is set up

/// One lock byte request.
fn lock_struct(kind: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCKS + byte;
    fl.l_len = 1;
    fl.l_pid = 0; // required for OFD locks
    fl
}

/// `F_OFD_SETLK`: take `byte` now or fail with `WouldBlock`.
fn try_lock(f: &File, byte: i64) -> io::Result<()> {
    let fl = lock_struct(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: valid fd and flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == -1 {
        let e = Errno::last();
        return Err(match e {
            Errno::EAGAIN | Errno::EACCES => {
                io::Error::new(io::ErrorKind::WouldBlock, "the lock is held")
            }
            e => io::Error::other(format!("fcntl(F_OFD_SETLK): {e}")),
        });
    }
    Ok(())
}

fn unlock(f: &File, byte: i64) {
    let fl = lock_struct(libc::F_UNLCK as libc::c_short, byte);
    // SAFETY: valid fd and flock.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
}

/// `F_OFD_GETLK`: is `byte` held by another open file description?
fn held_by_other(f: &File, byte: i64) -> bool {
    let mut fl = lock_struct(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: valid fd and flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// `F_OFD_SETLKW` on `byte`, bounded by `deadline`; `alive` is asked each
/// time the wait is woken.
fn lock_wait(
    f: &File,
    byte: i64,
    deadline: Instant,
    alive: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    let fl = lock_struct(libc::F_WRLCK as libc::c_short, byte);
    let fd = f.as_raw_fd();
    interrupt::bounded(
        deadline,
        "waiting for the peer to end its turn",
        alive,
        || {
            // SAFETY: valid fd and flock.
            Errno::result(unsafe { libc::fcntl(fd, libc::F_OFD_SETLKW, &fl) }).map(drop)
        },
    )
}

/// The shared file, mapped.
struct Shared {
    file: File,
    map: MmapRaw,
}

impl Shared {
    fn u32_at(&self, off: usize) -> u32 {
        // SAFETY: within the mapping; access is ordered by the locks (each
        // fcntl is a system call, a full barrier).
        unsafe { std::ptr::read_volatile(self.map.as_mut_ptr().add(off) as *const u32) }
    }
    fn set_u32(&self, off: usize, v: u32) {
        // SAFETY: as above; only the turn's owner writes.
        unsafe { std::ptr::write_volatile(self.map.as_mut_ptr().add(off) as *mut u32, v) }
    }
    fn u64_at(&self, off: usize) -> u64 {
        // SAFETY: as in u32_at.
        unsafe { std::ptr::read_volatile(self.map.as_mut_ptr().add(off) as *const u64) }
    }
    fn set_u64(&self, off: usize, v: u64) {
        // SAFETY: as in set_u32.
        unsafe { std::ptr::write_volatile(self.map.as_mut_ptr().add(off) as *mut u64, v) }
    }
    fn area(&self, dir: usize) -> *mut u8 {
        // SAFETY: within the mapping.
        unsafe { self.map.as_mut_ptr().add(DATA_OFFSET + dir * CAPACITY) }
    }
}

/// The file-lock transport.
pub struct Flock;

fn data_path(cfg: &Config) -> PathBuf {
    cfg.object_path(".flock")
}

impl Transport for Flock {
    fn name(&self) -> &'static str {
        "flock"
    }
    fn description(&self) -> &'static str {
        "a mapped file; strict turns by a rotation of three OFD locks, one client"
    }
    fn kernel_objects(&self) -> &'static str {
        "file <dir>/<name>.flock (mmap), OFD locks on it (see /proc/locks)"
    }
    fn inspect_note(&self) -> &'static str {
        "Both processes open the same file <name>.flock and map it (the shared file mapping); the payload travels through that mapping. The locks decide whose turn it is: they are OFD locks (open file description locks, pid -1 in /proc/locks, because they belong to the open file and not to a process), and whoever holds the write lock on a byte owns that step of the rotation."
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        clean::files_with_suffix(dir, ".flock")
            .into_iter()
            .map(|(_, path)| {
                Leftover::judge_file(
                    "flock",
                    "data file",
                    &path,
                    |t| t.is_file(),
                    || {
                        if !looks_like_ours(&path) {
                            return Err(io::Error::other("not an ipclab flock data file"));
                        }
                        let file = fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                            .open(&path)?;
                        // Asking (F_OFD_GETLK) does not take the lock, so a
                        // server starting now is not disturbed.
                        Ok(if held_by_other(&file, V) {
                            Ok("a server holds its presence lock".into())
                        } else {
                            Err("nobody holds its presence lock: its server was killed".into())
                        })
                    },
                )
            })
            .collect()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: false,
            boundaries: Boundaries::Messages,
            max_message: Some(CAPACITY),
            crosses_machines: false,
            inherited: false,
        }
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let path = data_path(cfg);
        let file = open_replacing_stale(&path)?;
        let created = CreatedPath::adopt(path.clone())?;
        file.set_len(FILE_LEN as u64)?;
        let map = MmapOptions::new().len(FILE_LEN).map_raw(&file)?;
        let shared = Arc::new(Shared { file, map });
        // V for our whole life; 2 while idle (the rotation's starting point).
        try_lock(&shared.file, 2)?;
        shared.set_u32(H_SERVER_PID, std::process::id());
        shared.set_u32(H_LEN[0], 0);
        shared.set_u32(H_LEN[1], 0);
        shared.set_u64(H_SESSION, 0);
        // SAFETY: within the mapping.
        unsafe {
            std::ptr::write_volatile(shared.map.as_mut_ptr().add(H_MAGIC) as *mut u64, MAGIC)
        };
        Ok(Box::new(FlockServer {
            shared,
            _file: created,
            path,
            in_session: Arc::new(AtomicBool::new(false)),
            last_session: 0,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let path = data_path(cfg);
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no server at {}: the file does not exist (start one with `ipclab serve flock`)",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        if !held_by_other(&file, V) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "no server holds {} (a stale file; start one with `ipclab serve flock`)",
                    path.display()
                ),
            ));
        }
        if file.metadata()?.len() < FILE_LEN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not an ipclab flock file", path.display()),
            ));
        }
        match try_lock(&file, S) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "busy: the flock server serves one client at a time",
                ));
            }
            Err(e) => return Err(e),
        }
        // S is ours: say at once that whoever held it before is gone (a
        // server session still serving a client that died checks this, and
        // ends instead of taking our turns for its client's).
        let map = MmapOptions::new().len(FILE_LEN).map_raw(&file)?;
        let shared = Arc::new(Shared { file, map });
        shared.set_u64(H_SESSION, 0);
        let file = &shared.file;
        // Turn 0 is ours: locks 0 and 1. A session that is just ending may
        // still hold one of them for a moment: wait (bounded).
        let deadline = Instant::now() + cfg.timeout;
        let server_alive = |f: &File| {
            if held_by_other(f, V) {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the server is gone",
                ))
            }
        };
        let setup = (|| {
            lock_wait(file, 0, deadline, || server_alive(file))?;
            lock_wait(file, 1, deadline, || server_alive(file))?;
            // The rotation starts with the server holding 2; an ending
            // session takes it back at once. Setup-time only: a bounded
            // check with back-off.
            let mut pause = Duration::from_millis(1);
            while !held_by_other(file, 2) {
                server_alive(file)?;
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the flock server did not get ready in time",
                    ));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Ok(())
        })();
        if let Err(e) = setup {
            for b in [0, 1, S] {
                unlock(file, b);
            }
            return Err(e);
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let session =
            ((std::process::id() as u64) << 32) | NEXT.fetch_add(1, Ordering::Relaxed) as u64;
        shared.set_u64(H_SESSION, session);
        Ok(Box::new(TurnLink::new(
            shared,
            false,
            Some(0),
            cfg.timeout,
            cfg.timeout,
            None,
            session,
        )))
    }
}

/// Open the data file: a new one, or one whose server is gone (nobody holds
/// V) — then taking V makes it ours. A live server's file is an error, and
/// anything that is not our regular file is left alone.
fn open_replacing_stale(path: &Path) -> io::Result<File> {
    if fs::symlink_metadata(path).is_ok() {
        runtime::check_ours(path, fs::FileType::is_file, "a data file")?;
        // Only a file that a server of ours made is taken over (and resized).
        if !looks_like_ours(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not an ipclab flock data file; not touching it",
                    path.display()
                ),
            ));
        }
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    match try_lock(&file, V) {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is already in use by a live server (pick another --name)",
                path.display()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// The size and the magic number of our data files.
fn looks_like_ours(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 8];
    f.metadata().is_ok_and(|m| m.len() == FILE_LEN as u64)
        && f.read_exact(&mut magic).is_ok()
        && u64::from_ne_bytes(magic) == MAGIC
}

struct FlockServer {
    shared: Arc<Shared>,
    _file: CreatedPath,
    path: PathBuf,
    in_session: Arc<AtomicBool>,
    /// The session id of the last client served: a client that lingers
    /// after its session ended does not start another.
    last_session: u64,
    cfg: Config,
}

impl Listener for FlockServer {
    fn endpoint(&self) -> String {
        self.path.display().to_string()
    }

    /// A client is there when it holds S; checked once per call (the
    /// server loop calls every 100 ms) — see the module doc.
    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let session = self.shared.u64_at(H_SESSION);
        if self.in_session.load(Ordering::SeqCst)
            || session == 0
            || session == self.last_session
            || !held_by_other(&self.shared.file, S)
        {
            std::thread::sleep(wait);
            return Ok(None);
        }
        self.last_session = session;
        self.in_session.store(true, Ordering::SeqCst);
        Ok(Some(Box::new(TurnLink::new(
            Arc::clone(&self.shared),
            true,
            None,
            self.cfg.idle_timeout,
            self.cfg.timeout,
            Some(Arc::clone(&self.in_session)),
            session,
        ))))
    }
}

/// One party of the turn-taking.
struct TurnLink {
    shared: Arc<Shared>,
    server_side: bool,
    /// The turn we own (None: the server before its first turn).
    turn: Option<i64>,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Incoming chunk of the current turn: length and how much is read.
    in_len: usize,
    in_off: usize,
    /// Incoming bytes saved before we wrote over the turn.
    stash: Vec<u8>,
    stash_off: usize,
    eof: bool,
    in_session: Option<Arc<AtomicBool>>,
    /// The session id of this conversation (see `H_SESSION`).
    session: u64,
}

impl TurnLink {
    fn new(
        shared: Arc<Shared>,
        server_side: bool,
        turn: Option<i64>,
        read_timeout: Duration,
        write_timeout: Duration,
        in_session: Option<Arc<AtomicBool>>,
        session: u64,
    ) -> Self {
        TurnLink {
            shared,
            server_side,
            turn,
            read_timeout,
            write_timeout,
            in_len: 0,
            in_off: 0,
            stash: Vec::new(),
            stash_off: 0,
            eof: false,
            in_session,
            session,
        }
    }

    fn rx(&self) -> usize {
        if self.server_side { 0 } else { 1 }
    }
    fn tx(&self) -> usize {
        1 - self.rx()
    }

    fn peer_present(&self) -> io::Result<()> {
        present(&self.shared, self.server_side, self.session)
    }
}

/// Is the peer of a conversation still there? The server is, while it
/// holds V. The client is while it holds S *and* the session id is still
/// its own: a new client that took S after this one died zeroes it.
fn present(shared: &Shared, server_side: bool, session: u64) -> io::Result<()> {
    let (byte, who) = if server_side {
        (S, "client")
    } else {
        (V, "server")
    };
    if held_by_other(&shared.file, byte) && (!server_side || shared.u64_at(H_SESSION) == session) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("the {who} is gone"),
        ))
    }
}

impl TurnLink {
    /// End our turn having put `out_len` bytes (or END) in our area; wait
    /// for our next turn and take in what the peer left.
    fn pass_turn(&mut self, out_len: u32, timeout: Duration) -> io::Result<()> {
        // Save unread incoming bytes: the peer reuses its area next turn.
        if self.in_off < self.in_len {
            let area = self.shared.area(self.rx());
            // SAFETY: within the area; we own the turn.
            let rest = unsafe {
                std::slice::from_raw_parts(area.add(self.in_off), self.in_len - self.in_off)
            };
            self.stash.extend_from_slice(rest);
            self.in_off = self.in_len;
        }
        let f = &self.shared.file;
        self.shared.set_u32(H_LEN[self.tx()], out_len);
        let next = match self.turn {
            Some(t) => {
                unlock(f, (2 * t).rem_euclid(3));
                t + 2
            }
            None => 1, // the server's first turn: wait for lock 0
        };
        let shared = Arc::clone(&self.shared);
        let (server_side, session) = (self.server_side, self.session);
        let alive = move || present(&shared, server_side, session);
        // Ending turn t we wait for lock 2t+2 mod 3 = 2·next − 2 mod 3.
        lock_wait(
            f,
            (2 * next - 2).rem_euclid(3),
            Instant::now() + timeout,
            alive,
        )?;
        self.turn = Some(next);
        // We may have the lock because the peer died and the kernel let go.
        self.peer_present()?;
        let len = self.shared.u32_at(H_LEN[self.rx()]);
        if len == END {
            self.eof = true;
            self.in_len = 0;
        } else {
            self.in_len = (len as usize).min(CAPACITY);
        }
        self.in_off = 0;
        Ok(())
    }
}

impl Read for TurnLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = Instant::now() + self.read_timeout;
        loop {
            if self.stash_off < self.stash.len() {
                let n = buf.len().min(self.stash.len() - self.stash_off);
                buf[..n].copy_from_slice(&self.stash[self.stash_off..self.stash_off + n]);
                self.stash_off += n;
                if self.stash_off == self.stash.len() {
                    self.stash.clear();
                    self.stash_off = 0;
                }
                return Ok(n);
            }
            if self.in_off < self.in_len {
                let n = buf.len().min(self.in_len - self.in_off);
                // SAFETY: within the area; the peer does not write it while
                // we own the turn.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.shared.area(self.rx()).add(self.in_off),
                        buf.as_mut_ptr(),
                        n,
                    )
                };
                self.in_off += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            // Nothing to read: give the peer a turn (sending nothing). Empty
            // turns count against one read timeout together, so two parties
            // that both wait to read end in an error, not a loop.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out waiting for the peer to send (only empty turns came)",
                ));
            }
            self.pass_turn(0, left)?;
        }
    }
}

impl Write for TurnLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.turn.is_none() {
            // The server must first be given a turn by its client.
            self.pass_turn(0, self.write_timeout)?;
        }
        let area = self.shared.area(self.tx());
        let n = super::gather(bufs, CAPACITY, |at, p| {
            // SAFETY: our own area, during our turn.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), area.add(at), p.len()) }
        });
        if n == 0 {
            return Ok(0);
        }
        // Ending a turn also waits for the next one, which comes when the
        // peer next acts: for a server that has just replied, that is the
        // client's next request, so the wait is bounded by the read
        // (idle) timeout, not the write timeout — an idle client must not
        // end its session after `--timeout`.
        self.pass_turn(n as u32, self.read_timeout.max(self.write_timeout))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TurnLink {
    fn drop(&mut self) {
        let f = &self.shared.file;
        if !self.server_side {
            // End of stream for the server, then let go of everything: the
            // server's wait ends, and it sees END (or S free).
            if self.turn.is_some() {
                self.shared.set_u32(H_LEN[self.tx()], END);
            }
            for b in [0, 1, 2, S] {
                unlock(f, b);
            }
            return;
        }
        // Server: end the client's stream, and get back to the idle state
        // (holding 2 only) — bounded by the idle timeout. The client may
        // linger; a new one is recognised by its new session id.
        if let Some(t) = self.turn {
            self.shared.set_u32(H_LEN[self.tx()], END);
            for b in [(2 * t).rem_euclid(3), (2 * t + 1).rem_euclid(3)] {
                if b != 2 {
                    unlock(f, b);
                }
            }
        }
        let deadline = Instant::now() + self.read_timeout;
        let idle = lock_wait(f, 2, deadline, || Ok(()));
        if idle.is_ok()
            && let Some(flag) = &self.in_session
        {
            flag.store(false, Ordering::SeqCst);
        }
    }
}
