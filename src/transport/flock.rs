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
//! The owner of turn t ends it by writing the chunk's length *and the turn
//! number t* into the header. The next owner checks both before it reads a
//! byte: the number must be the turn that just ended and the length must fit
//! the 64 KiB area (or be the end-of-stream mark). A lock obtained because
//! the peer *died* mid-turn (the kernel released its locks) carries an old
//! turn number, and so does anything a lying peer writes out of turn: the
//! session ends with an error, never with a copy of bytes that were not
//! sent in this turn.
//!
//! # Who is there, and one fresh file per session
//! Two more lock bytes say who is there: **V**, held by the server on its
//! current file, and **S**, the one client slot. A client takes S without
//! waiting (`F_OFD_SETLK`): if it is taken, the server is busy with
//! another client. The header's *state* word says where the file is in its
//! life: `FRESH` (written by the server), `CLAIMED` (written by the client
//! that holds S, once it is set up), `RETIRED` (written by the server when
//! the session is over).
//!
//! Every session gets a file of its own. When a session ends — the client
//! left, broke the protocol, or stayed silent for longer than
//! `--idle-timeout` — the server prepares a fresh file under a temporary
//! name and `rename(2)`s it over `<name>.flock` (an atomic replacement: a
//! client opening the path gets the old file or the new one, never
//! nothing), marks the old one `RETIRED` and closes it. So:
//! * a client that is stopped (`SIGSTOP`) or idle keeps S only on the *old*
//!   file: the slot on the new one is free for the next client;
//! * the locks a stopped or dead client still holds are on the old file:
//!   they cannot wedge the server;
//! * a stale client that wakes up and writes again writes into the old file,
//!   which no one reads: its next wait ends at once (the server's locks on
//!   it are gone), it sees `RETIRED`, and reports that the server ended its
//!   session. Its bytes cannot reach the next session, whose file is
//!   another inode.
//!
//! A client also refuses a file that is not `FRESH`: the one a session just
//! ended on is `CLAIMED` for a moment before the server replaces it, and
//! the client then tries the path again (bounded by `--timeout`).
//!
//! # The one place that polls
//! A lock can only wake a waiter when someone *releases* it; a client that
//! *arrives* releases nothing. So the server's accept loop checks S
//! (`F_OFD_GETLK`) and the state word once per tick of the server loop
//! (100 ms) — a bounded, fixed-period check, not busy polling. A client that
//! holds S on a fresh file without finishing its set-up within `--timeout`
//! (stopped in the middle of it) gets its file retired too. Everything else
//! blocks in the kernel.
//!
//! # Layout of the file
//! ```text
//!  0     header: magic, server pid, state, c2s length, s2c length,
//!        c2s turn, s2c turn   (a length of u32::MAX = end of stream)
//!  4096  client → server area (64 KiB)
//!  4096 + 64 KiB  server → client area (64 KiB)
//!  lock bytes at offset 2^30 + {0,1,2} (rotation), +3 (S), +4 (V): beyond
//!  the end of the file, which is allowed — a lock is only a claim on a range.
//! ```
//! Every word a peer can write is checked before it is used; nothing in the
//! header is trusted as an offset or a size.
//!
//! # A peer that truncates the file
//! Whoever can write the file can also `ftruncate(2)` it, and touching a
//! mapped page past the end of a file raises `SIGBUS`, which kills. A
//! `SIGBUS` handler (`sigaction(2)`, the kit's guard, see
//! [`super::kit::sigbus`]: one handler for the whole process) maps zero
//! pages over the mapping the fault hit and marks it; the
//! session checks the mark before it uses what it read, and ends with an
//! error. The file is then used up, like any other.
//!
//! # Timeouts
//! `F_OFD_SETLKW` has no timeout, but fails with `EINTR` when a signal
//! handler runs; [`crate::sys::interrupt`] wakes it every quarter second to check
//! the deadline and the peer's presence lock.
//!
//! # Costs and limits
//! Each turn is two `fcntl` calls (release one lock, wait for the next) and
//! a wake-up; a round trip two turns. One client at a time; a new file per
//! session (`open`, `ftruncate`, `mmap`, `rename` once per session, not per
//! round trip).
//!
//! # System calls
//! `open(2)` (`O_EXCL` for the fresh file), `ftruncate(2)`, `mmap(2)`,
//! `rename(2)`, `fcntl(2)` (`F_OFD_SETLK`, `F_OFD_SETLKW`, `F_OFD_GETLK`),
//! `unlink(2)`, `sigaction(2)` (`SIGBUS`); see `fcntl(2)` "Open file description locks". See the
//! locks: `cat /proc/locks` (type `OFDLCK`).

use std::fs::{self, File};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use super::kit::mapped::Mapped;
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::{self, Leftover};
use crate::runtime::{self, CreatedPath};
use crate::sys::interrupt::{self, Deadline};

const MAGIC: u64 = 0x6970_636c_6162_464c; // "ipclabFL"
const DATA_OFFSET: usize = 4096;
/// Bytes in each direction's area.
pub const CAPACITY: usize = 64 * 1024;
const FILE_LEN: usize = DATA_OFFSET + 2 * CAPACITY;
const LOCKS: i64 = 1 << 30;
const S: i64 = 3;
const V: i64 = 4;
/// A chunk length meaning "end of stream".
const END: u32 = u32::MAX;
/// The turn number a fresh file starts with: no turn has ended yet.
const NO_TURN: u32 = u32::MAX;

// Header field offsets.
const H_MAGIC: usize = 0;
const H_SERVER_PID: usize = 8;
const H_STATE: usize = 12;
const H_LEN: [usize; 2] = [16, 20]; // c2s, s2c
const H_TURN: [usize; 2] = [24, 28]; // the turn in which H_LEN was written

// The file's life (H_STATE).
const FRESH: u32 = 0x4652_4553; // "FRES"
const CLAIMED: u32 = 0x434c_4149; // "CLAI"
const RETIRED: u32 = 0x5245_5449; // "RETI"

/// Suffix of a fresh file while the server prepares it.
const NEW_SUFFIX: &str = ".flock-new";

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
    match fcntl(f.as_fd(), FcntlArg::F_OFD_SETLK(&fl)) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN | Errno::EACCES) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the lock is held",
        )),
        Err(e) => Err(io::Error::other(format!("fcntl(F_OFD_SETLK): {e}"))),
    }
}

fn unlock(f: &File, byte: i64) {
    let fl = lock_struct(libc::F_UNLCK as libc::c_short, byte);
    let _ = fcntl(f.as_fd(), FcntlArg::F_OFD_SETLK(&fl));
}

/// `F_OFD_GETLK`: is `byte` held by another open file description?
fn held_by_other(f: &File, byte: i64) -> bool {
    let mut fl = lock_struct(libc::F_WRLCK as libc::c_short, byte);
    fcntl(f.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl)).is_ok()
        && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// `F_OFD_SETLKW` on `byte`, bounded by `deadline`; `alive` is asked each
/// time the wait is woken.
fn lock_wait(
    f: &File,
    byte: i64,
    deadline: impl Into<Deadline>,
    alive: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    let fl = lock_struct(libc::F_WRLCK as libc::c_short, byte);
    interrupt::bounded(
        deadline,
        "waiting for the peer to end its turn",
        alive,
        || fcntl(f.as_fd(), FcntlArg::F_OFD_SETLKW(&fl)).map(drop),
    )
}

/// The shared file, mapped (through the kit's SIGBUS guard).
struct Shared {
    file: File,
    map: Mapped,
}

impl Shared {
    /// Map `file`, which must be [`FILE_LEN`] bytes long.
    fn map(file: File) -> io::Result<Shared> {
        let map = Mapped::new(&file, FILE_LEN)?;
        Ok(Shared { file, map })
    }
    /// A peer shrank the file under us (or its pages could not be had):
    /// our mapping now reads zeros, and nothing read from it may be used.
    fn check_intact(&self) -> io::Result<()> {
        self.map.intact("the shared file")
    }
    fn u32_at(&self, off: usize) -> u32 {
        // SAFETY: within the mapping (off is one of the header constants);
        // access is ordered by the locks (each fcntl is a system call, a
        // full barrier). A peer writing out of turn can only make the value
        // wrong, which every reader checks.
        unsafe { std::ptr::read_volatile(self.map.ptr().add(off) as *const u32) }
    }
    fn set_u32(&self, off: usize, v: u32) {
        // SAFETY: as above; only the turn's owner writes.
        unsafe { std::ptr::write_volatile(self.map.ptr().add(off) as *mut u32, v) }
    }
    fn magic(&self) -> u64 {
        // SAFETY: as in u32_at.
        unsafe { std::ptr::read_volatile(self.map.ptr().add(H_MAGIC) as *const u64) }
    }
    fn state(&self) -> u32 {
        self.u32_at(H_STATE)
    }
    fn area(&self, dir: usize) -> *mut u8 {
        // SAFETY: within the mapping.
        unsafe { self.map.ptr().add(DATA_OFFSET + dir * CAPACITY) }
    }
}

/// The file-lock transport.
pub struct Flock;

fn data_path(cfg: &Config) -> PathBuf {
    cfg.object_path(".flock")
}

impl Transport for Flock {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "flock",
            description: "a mapped file; strict turns by a rotation of three OFD locks, one client",
            kernel_objects: "file <dir>/<name>.flock (mmap; a fresh one per session), OFD locks on it (see /proc/locks)",
            inspect_note: "Both processes open the same file <name>.flock and map it (the shared file mapping); the payload travels through that mapping. The locks decide whose turn it is: they are OFD locks (open file description locks, pid -1 in /proc/locks, because they belong to the open file and not to a process), and whoever holds the write lock on a byte owns that step of the rotation. Each session has a file of its own: when it ends, the server renames a fresh file over the path.",
            capabilities: Capabilities::messages().max_message(CAPACITY).one_client(),
        };
        &ABOUT
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let judge = |path: PathBuf, what: &'static str, needs_magic: bool| {
            Leftover::judge_file(
                "flock",
                what,
                &path,
                |t| t.is_file(),
                || {
                    if needs_magic && !looks_like_ours(&path) {
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
        };
        let data = objects::files_with_suffix(dir, ".flock")
            .into_iter()
            .map(|(_, path)| judge(path, "data file", true));
        // A fresh file being prepared, left by a server killed in the
        // moment between creating it and renaming it into place.
        let fresh = objects::files_with_suffix(dir, NEW_SUFFIX)
            .into_iter()
            .map(|(_, path)| judge(path, "fresh data file", false));
        data.chain(fresh).collect()
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let path = data_path(cfg);
        // Claim the name (V on whatever is there now), then put a fresh file
        // in its place: nothing a client of an earlier server still has
        // mapped is ever reused.
        let claim = claim_name(&path)?;
        let first = publish(&path)?;
        drop(claim);
        Ok(Box::new(FlockServer {
            slot: Arc::new(Slot {
                path,
                current: Mutex::new(Some(first)),
                in_session: AtomicBool::new(false),
            }),
            cfg: cfg.clone(),
            unclaimed_since: None,
            reported: None,
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let path = data_path(cfg);
        let deadline = Instant::now() + cfg.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(link) = try_connect(cfg, &path, deadline)? {
                return Ok(link);
            }
            // The file at the path is one a session has ended on, and the
            // server is about to rename a fresh one over it: try again.
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the flock server did not offer a fresh session file at {} within {:?} \
                         (is it stuck? see `ipclab inspect` on its pid)",
                        path.display(),
                        cfg.timeout
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// One attempt to start a session on the file now at `path`: a link, or
/// `None` when that file is used up (try again), or an error to report.
fn try_connect(cfg: &Config, path: &Path, deadline: Instant) -> io::Result<Option<Box<dyn Link>>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
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
    // Judge what was opened, not the path.
    let meta = file.metadata()?;
    let not_ours = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not an ipclab flock file ({why}); not using it",
                path.display()
            ),
        )
    };
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(not_ours(format!(
            "a {:?} of uid {}",
            meta.file_type(),
            meta.uid()
        )));
    }
    if meta.len() != FILE_LEN as u64 {
        return Err(not_ours(format!("{} bytes", meta.len())));
    }
    if !held_by_other(&file, V) {
        // Retired and already replaced, or its server was killed.
        if renamed_since(path, &meta) {
            return Ok(None);
        }
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "no server holds {} (a stale file; start one with `ipclab serve flock`)",
                path.display()
            ),
        ));
    }
    let shared = Shared::map(file)?;
    if shared.magic() != MAGIC {
        return Err(not_ours("no magic number".into()));
    }
    let busy = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "busy: the flock server serves one client at a time",
        )
    };
    match shared.state() {
        FRESH => {}
        RETIRED => return Ok(None),
        // Claimed (or scribbled on) by a client: in use while that client
        // holds S — unless it is a session that just ended and the server
        // has already put a fresh file in its place; about to be replaced
        // once it has left.
        _ if held_by_other(&shared.file, S) && !renamed_since(path, &meta) => {
            return Err(busy());
        }
        _ => return Ok(None),
    }
    match try_lock(&shared.file, S) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(busy()),
        Err(e) => return Err(e),
    }
    let shared = Arc::new(shared);
    let file = &shared.file;
    let release = || {
        for b in [S, 0, 1] {
            unlock(file, b);
        }
    };
    // The client before us may have claimed the file between our look at
    // the state and our taking S (and left again): not ours then.
    if shared.state() != FRESH {
        release();
        return Ok(None);
    }
    // Turn 0 is ours: locks 0 and 1. Free on a fresh file, unless someone
    // who is not a client took them: bounded by our timeout.
    let alive = || server_present(&shared);
    let setup =
        lock_wait(file, 0, deadline, alive).and_then(|()| lock_wait(file, 1, deadline, alive));
    if let Err(e) = setup {
        release();
        return Err(e);
    }
    if !held_by_other(file, 2) {
        // A fresh file comes with the server holding 2: this one was
        // retired while we set up.
        release();
        return Ok(None);
    }
    shared.set_u32(H_STATE, CLAIMED);
    Ok(Some(Box::new(TurnLink::new(
        shared,
        None,
        Some(0),
        cfg.timeout,
        cfg.timeout,
    ))))
}

/// Does `path` now name another file than the one `opened` describes?
fn renamed_since(path: &Path, opened: &fs::Metadata) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) != (opened.dev(), opened.ino()))
}

/// Take V on the file now at `path`, if there is one: that the file's
/// server is gone is proved by getting V, and a live server's name is not
/// taken. Anything that is not our regular file is left alone.
fn claim_name(path: &Path) -> io::Result<Option<File>> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    runtime::check_ours(path, fs::FileType::is_file, "a data file")?;
    // Only a file that a server of ours made is taken over.
    if !looks_like_ours(path) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not an ipclab flock data file; not touching it",
                path.display()
            ),
        ));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    let in_use = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is already in use by a live server (pick another --name)",
                path.display()
            ),
        )
    };
    match try_lock(&file, V) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(in_use()),
        Err(e) => return Err(e),
    }
    // A server starting at the same moment may have replaced it meanwhile.
    if renamed_since(path, &file.metadata()?) {
        return Err(in_use());
    }
    Ok(Some(file))
}

/// The size and the magic number of our data files.
fn looks_like_ours(path: &Path) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 8];
    f.metadata().is_ok_and(|m| m.len() == FILE_LEN as u64)
        && f.read_exact(&mut magic).is_ok()
        && u64::from_ne_bytes(magic) == MAGIC
}

/// The file a server offers at its path, and what it knows of it.
struct Published {
    shared: Arc<Shared>,
    /// Removes the path when dropped, if it still names this file.
    _path: CreatedPath,
    /// A session was started on it: it is never offered again. (The
    /// server's own memory: the state word in the file is a peer's to
    /// scribble on.)
    used: bool,
}

/// Prepare a fresh file under a temporary name — sized, mapped, V and 2
/// held, header written — and rename it over `path`.
fn publish(path: &Path) -> io::Result<Published> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let tmp = path.with_file_name(format!(
        "{}.{}-{}{NEW_SUFFIX}",
        path.file_stem().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", tmp.display())))?;
    let prepared = (|| -> io::Result<Shared> {
        // V for as long as we offer it; 2 while we wait for the client
        // (the rotation's starting point).
        try_lock(&file, V)?;
        try_lock(&file, 2)?;
        file.set_len(FILE_LEN as u64)?;
        let shared = Shared::map(file.try_clone()?)?;
        shared.set_u32(H_SERVER_PID, std::process::id());
        shared.set_u32(H_LEN[0], 0);
        shared.set_u32(H_LEN[1], 0);
        shared.set_u32(H_TURN[0], NO_TURN);
        shared.set_u32(H_TURN[1], NO_TURN);
        shared.set_u32(H_STATE, FRESH);
        // SAFETY: within the mapping.
        unsafe { std::ptr::write_volatile(shared.map.ptr().add(H_MAGIC) as *mut u64, MAGIC) };
        fs::rename(&tmp, path)?;
        Ok(shared)
    })();
    let shared = match prepared {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot prepare a fresh {}: {e}", path.display()),
            ));
        }
    };
    // `file` (a duplicate of shared.file) closes here; the locks belong to
    // the open file description, which shared.file keeps.
    drop(file);
    let meta = shared.file.metadata()?;
    if renamed_since(path, &meta) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} was replaced by someone else", path.display()),
        ));
    }
    let guard = CreatedPath::adopt(path.to_path_buf()).inspect_err(|_| {
        // Not offered after all: do not leave it behind.
        if !renamed_since(path, &meta) {
            let _ = fs::remove_file(path);
        }
    })?;
    Ok(Published {
        shared: Arc::new(shared),
        _path: guard,
        used: false,
    })
}

/// What the listener and its session share.
struct Slot {
    path: PathBuf,
    /// The file offered now; None once the listener is gone.
    current: Mutex<Option<Published>>,
    in_session: AtomicBool,
}

impl Slot {
    /// Offer a fresh file in place of `current`, and retire the old one:
    /// whoever still has it (a stopped or lingering client) can no longer
    /// reach us through it.
    fn renew(&self, current: &mut Published) -> io::Result<()> {
        let fresh = publish(&self.path)?;
        let old = std::mem::replace(current, fresh);
        old.shared.set_u32(H_STATE, RETIRED);
        // Dropping `old` closes our descriptor once the session's link has
        // let go too: our locks on it are released, and a client waiting
        // on one of them wakes to see RETIRED.
        Ok(())
    }
}

struct FlockServer {
    slot: Arc<Slot>,
    cfg: Config,
    /// Since when a client has held S on the current file without claiming it.
    unclaimed_since: Option<Instant>,
    /// The last renewal error said (said once, not every tick).
    reported: Option<String>,
}

impl FlockServer {
    fn renew(&mut self, current: &mut Published) {
        self.unclaimed_since = None;
        match self.slot.renew(current) {
            Ok(()) => {
                if self.reported.take().is_some() {
                    eprintln!("ipclab: flock: a fresh session file is offered again");
                }
            }
            Err(e) => {
                let said = e.to_string();
                if self.reported.as_deref() != Some(&said) {
                    eprintln!("ipclab: flock: {said}; no new client until it works (retrying)");
                    self.reported = Some(said);
                }
            }
        }
    }
}

impl Drop for FlockServer {
    /// Remove the path now, even while a session still runs on its own
    /// thread (it holds the slot): no fresh file is offered after this.
    fn drop(&mut self) {
        let taken = self
            .slot
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(last) = taken {
            last.shared.set_u32(H_STATE, RETIRED);
        }
    }
}

impl Listener for FlockServer {
    fn endpoint(&self) -> String {
        self.slot.path.display().to_string()
    }

    /// A client is there when it holds S on the current file and has
    /// claimed it; checked once per call (the server loop calls every
    /// 100 ms) — see the module doc.
    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        if !self.slot.in_session.load(Ordering::SeqCst) {
            let slot = Arc::clone(&self.slot);
            let mut guard = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            let Some(current) = guard.as_mut() else {
                return Ok(None);
            };
            let state = current.shared.state();
            let s_held = held_by_other(&current.shared.file, S);
            if current.used
                || !matches!(state, FRESH | CLAIMED)
                || (state == CLAIMED && !s_held)
                || current.shared.check_intact().is_err()
            {
                // Used up: by a session, by a client that claimed it and
                // left before we looked, or by someone scribbling on it.
                self.renew(current);
            } else if state == CLAIMED {
                current.used = true;
                self.unclaimed_since = None;
                self.slot.in_session.store(true, Ordering::SeqCst);
                return Ok(Some(Box::new(TurnLink::new(
                    Arc::clone(&current.shared),
                    Some(Arc::clone(&self.slot)),
                    None,
                    self.cfg.idle_timeout,
                    self.cfg.timeout,
                ))));
            } else if s_held {
                // A client is setting up; one that stops half-way must
                // not keep the slot.
                let since = *self.unclaimed_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.cfg.timeout {
                    eprintln!(
                        "ipclab: flock: a client took the slot and did not finish setting up \
                         within {:?}; offering a fresh file",
                        self.cfg.timeout
                    );
                    self.renew(current);
                }
            } else {
                self.unclaimed_since = None;
            }
        }
        std::thread::sleep(wait);
        Ok(None)
    }
}

/// One party of the turn-taking.
struct TurnLink {
    shared: Arc<Shared>,
    /// The server's slot (None on the client side).
    slot: Option<Arc<Slot>>,
    /// The turn we own or last owned (None: the server before its first turn).
    turn: Option<i64>,
    /// We hold the locks of `turn` now. False after a failed wait: the
    /// session cannot go on.
    owned: bool,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Incoming chunk of the current turn: length and how much is read.
    in_len: usize,
    in_off: usize,
    /// Incoming bytes saved before we wrote over the turn.
    stash: Vec<u8>,
    stash_off: usize,
    eof: bool,
}

impl TurnLink {
    fn new(
        shared: Arc<Shared>,
        slot: Option<Arc<Slot>>,
        turn: Option<i64>,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        TurnLink {
            shared,
            slot,
            owned: turn.is_some(),
            turn,
            read_timeout,
            write_timeout,
            in_len: 0,
            in_off: 0,
            stash: Vec::new(),
            stash_off: 0,
            eof: false,
        }
    }

    fn server_side(&self) -> bool {
        self.slot.is_some()
    }
    fn rx(&self) -> usize {
        if self.server_side() { 0 } else { 1 }
    }
    fn tx(&self) -> usize {
        1 - self.rx()
    }
    fn peer(&self) -> &'static str {
        if self.server_side() {
            "client"
        } else {
            "server"
        }
    }
}

/// The client is there while it holds S (no other client takes S on a file
/// that is not fresh).
fn client_present(shared: &Shared) -> io::Result<()> {
    if held_by_other(&shared.file, S) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the client is gone",
        ))
    }
}

/// The server is there while it holds V and has not retired the file.
fn server_present(shared: &Shared) -> io::Result<()> {
    if shared.state() == RETIRED {
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the flock server ended this session (it waits --idle-timeout for a request, \
             or the session broke); connect again",
        ))
    } else if held_by_other(&shared.file, V) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the server is gone",
        ))
    }
}

impl TurnLink {
    fn peer_present(&self) -> io::Result<()> {
        if self.server_side() {
            client_present(&self.shared)
        } else {
            server_present(&self.shared)
        }
    }

    /// End our turn having put `out_len` bytes (or END) in our area; wait
    /// for our next turn and take in what the peer left.
    fn pass_turn(&mut self, out_len: u32, timeout: impl Into<Deadline>) -> io::Result<()> {
        if self.turn.is_some() && !self.owned {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier wait for the peer failed: this session cannot go on",
            ));
        }
        // Save unread incoming bytes: the peer reuses its area next turn.
        if self.in_off < self.in_len {
            let area = self.shared.area(self.rx());
            // SAFETY: in_len ≤ CAPACITY (checked in take_turn): within the
            // area.
            let rest = unsafe {
                std::slice::from_raw_parts(area.add(self.in_off), self.in_len - self.in_off)
            };
            self.stash.extend_from_slice(rest);
            self.in_off = self.in_len;
            self.shared.check_intact()?;
        }
        let next = match self.turn {
            Some(t) => {
                self.shared.set_u32(H_LEN[self.tx()], out_len);
                self.shared.set_u32(H_TURN[self.tx()], t as u32);
                unlock(&self.shared.file, (2 * t).rem_euclid(3));
                t + 2
            }
            None => 1, // the server's first turn: wait for lock 0
        };
        self.owned = false;
        let shared = &self.shared;
        let server_side = self.server_side();
        let alive = || {
            if server_side {
                client_present(shared)
            } else {
                server_present(shared)
            }
        };
        // Ending turn t we wait for lock 2t+2 mod 3 = 2·next − 2 mod 3.
        lock_wait(&shared.file, (2 * next - 2).rem_euclid(3), timeout, alive)?;
        self.turn = Some(next);
        self.owned = true;
        self.take_turn(next)
    }

    /// Check what the peer left for turn `next` before using any of it.
    fn take_turn(&mut self, next: i64) -> io::Result<()> {
        let len = self.shared.u32_at(H_LEN[self.rx()]);
        let ended = self.shared.u32_at(H_TURN[self.rx()]);
        self.shared.check_intact()?;
        if !self.server_side() && self.shared.state() == RETIRED {
            return server_present(&self.shared);
        }
        if ended != (next - 1) as u32 {
            // The lock came without the peer ending its turn: it died in
            // it (its presence lock is free then), or it broke the order.
            self.peer_present()?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the {} broke the turn order (it marked turn {ended}, turn {} was due); \
                     ending the session",
                    self.peer(),
                    next - 1
                ),
            ));
        }
        if len == END {
            self.eof = true;
            self.in_len = 0;
        } else if len as usize > CAPACITY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the {} announced a chunk of {len} bytes in a {CAPACITY}-byte area; \
                     ending the session",
                    self.peer()
                ),
            ));
        } else {
            self.in_len = len as usize;
        }
        self.in_off = 0;
        Ok(())
    }
}

impl Read for TurnLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Empty turns count against one read timeout together, so two
        // parties that both wait to read end in an error, not a loop. The
        // clock is read only when a turn has to be passed.
        let mut deadline = None;
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
                // SAFETY: in_off < in_len ≤ CAPACITY: within the area; the
                // peer does not write it while we own the turn.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.shared.area(self.rx()).add(self.in_off),
                        buf.as_mut_ptr(),
                        n,
                    )
                };
                self.shared.check_intact()?;
                self.in_off += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            // Nothing to read: give the peer a turn (sending nothing).
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.read_timeout);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out waiting for the peer to send (only empty turns came)",
                ));
            }
            self.pass_turn(0, deadline)?;
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
            self.pass_turn(0, Deadline::After(self.write_timeout))?;
        }
        if !self.owned {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier wait for the peer failed: this session cannot go on",
            ));
        }
        let area = self.shared.area(self.tx());
        let n = super::gather(bufs, CAPACITY, |at, p| {
            // SAFETY: our own area, during our turn; gather keeps
            // at + p.len() ≤ CAPACITY.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), area.add(at), p.len()) }
        });
        if n == 0 {
            return Ok(0);
        }
        self.shared.check_intact()?;
        // Ending a turn also waits for the next one, which comes when the
        // peer next acts: for a server that has just replied, that is the
        // client's next request, so the wait is bounded by the read
        // (idle) timeout, not the write timeout — an idle client must not
        // end its session after `--timeout`.
        self.pass_turn(
            n as u32,
            Deadline::After(self.read_timeout.max(self.write_timeout)),
        )?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TurnLink {
    fn drop(&mut self) {
        let f = &self.shared.file;
        // End of stream for the peer, if the turn is ours to end.
        if let (Some(t), true) = (self.turn, self.owned) {
            self.shared.set_u32(H_LEN[self.tx()], END);
            self.shared.set_u32(H_TURN[self.tx()], t as u32);
        }
        let Some(slot) = &self.slot else {
            // Client: let go of everything, S first (a server that wakes
            // without an END sees that we left). The file is used up.
            for b in [S, 0, 1, 2] {
                unlock(f, b);
            }
            return;
        };
        // Server: this file is done with. Offer a fresh one now; if that
        // fails, the accept loop retries it (the file is marked used).
        self.shared.set_u32(H_STATE, RETIRED);
        {
            let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(current) = current.as_mut()
                && Arc::ptr_eq(&current.shared, &self.shared)
            {
                let _ = slot.renew(current);
            }
        }
        slot.in_session.store(false, Ordering::SeqCst);
    }
}
