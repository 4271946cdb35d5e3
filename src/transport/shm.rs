//! `shm` — POSIX shared memory, synchronised with process-shared semaphores.
//!
//! # What it is
//! Shared memory is the one IPC mechanism in which the kernel does not copy
//! the data: after `shm_open(3)` and `mmap(2)`, the same physical pages
//! appear in both processes' address spaces, and a byte stored by one is
//! visible to the other. The kernel's only job is setting up the mapping —
//! and, because memory itself has no way to say "there is data for you now",
//! waking the other process up. That is what the semaphores are for.
//!
//! ipclab uses POSIX shared memory (a named object in `/dev/shm`, mapped with
//! `memmap2`) rather than System V `shmget`: it has a name derived from the
//! runtime directory, permissions like a file, and is sized with
//! `ftruncate(2)`. The semaphores are POSIX *unnamed* semaphores placed in
//! the region itself with `pshared = 1` (see [`crate::sem`]): no extra
//! kernel objects to name or clean up, and their fast path (a free slot) is
//! one atomic instruction with no system call. They block in the kernel (a
//! futex): this is the honest, blocking variant — no spinning.
//!
//! # Layout of the region
//! ```text
//!  offset 0     ┌────────────────────────────────────────────────┐
//!               │ Header (#[repr(C)])                            │
//!               │   magic, server_pid, client_pid (0 = free),   │
//!               │   closed, capacity                             │
//!               │   connect  : sem  (client → server: "I'm in")  │
//!               │   released : sem  (client → server: "I left")  │
//!               │   c2s: full sem, empty sem, len   (requests)   │
//!               │   s2c: full sem, empty sem, len   (replies)    │
//!  offset 4096  ├────────────────────────────────────────────────┤
//!               │ c2s data area  (capacity bytes, 64 KiB)        │  written by the client
//!               ├────────────────────────────────────────────────┤
//!               │ s2c data area  (capacity bytes, 64 KiB)        │  written by the server
//!               └────────────────────────────────────────────────┘
//! ```
//! The data areas start on a page boundary; each semaphore and atomic is
//! naturally aligned inside the `#[repr(C)]` header.
//!
//! # How data and synchronisation flow
//! Each direction is a one-slot bounded buffer (the classic producer/
//! consumer with two semaphores). The writer waits on `empty`, copies a
//! chunk of up to `capacity` bytes into its area, stores its length and
//! posts `full`; the reader waits on `full`, copies the chunk out, and posts
//! `empty`. The semaphore operations also order the memory accesses: what
//! was written before a `post` is visible after the matching `wait`.
//!
//! ```text
//!   client                         server
//!   wait(c2s.empty) ─ copy in ─ post(c2s.full) ──▶ wait(c2s.full) ─ copy out ─ post(c2s.empty)
//!   wait(s2c.full) ◀─ post(s2c.full) ─ copy in ─ wait(s2c.empty)
//!   copy out ─ post(s2c.empty)
//! ```
//! The payload really is copied into and out of the shared region on every
//! round trip. A message larger than the area (the 1 MiB echo) goes through
//! in chunks; the framing above joins them. A chunk of length 0 means "end
//! of stream".
//!
//! # Clients
//! One at a time. A client claims the region by compare-and-swap of
//! `client_pid` from 0 to its pid and posts `connect`; a second client finds
//! the slot taken and gets a clear "busy" error. When a session ends, the
//! server sends end-of-stream, waits for the client to post `released` (or
//! to die), re-initialises the semaphores and frees the slot.
//!
//! # Bounded waits and dead peers
//! Every wait is `sem_clockwait` in slices of a quarter second; between
//! slices the waiter checks that the peer's pid still exists (and, for a
//! client, that the server has not marked the region `closed`). A killed
//! peer is therefore an error within the timeout, never a hang. A region
//! left by a server killed with SIGKILL is recognised by the next server
//! (its `server_pid` is dead) and replaced.
//!
//! # The `mmap` variant: a regular file
//! The same code serves a second transport, `mmap`, whose region is not a
//! POSIX shared memory object but an ordinary file, `<dir>/<name>.mmap`,
//! opened with `open(2)` and mapped `MAP_SHARED` by both processes. To the
//! processes it is the same: shared pages, the same header, the same
//! semaphores. The difference is what the pages belong to. A `/dev/shm`
//! object lives in a tmpfs: memory, never written anywhere. A regular
//! file's pages are its page cache: dirty pages are written back to the
//! file system by the kernel's flusher threads (every few seconds), which
//! on a disk-backed directory is I/O the `shm` transport never does, and the
//! file survives a reboot. `shm_open` is, on Linux, exactly `open` on
//! `/dev/shm`; the POSIX API exists so that a program does not need to know
//! where a memory-only file system is mounted.
//!
//! # Limits
//! * `/dev/shm` is a tmpfs whose size (`df -h /dev/shm`, half the RAM by
//!   default) bounds all shared memory objects together.
//! * `SEM_VALUE_MAX` (2³¹−1) bounds a semaphore's count; ours never exceed 1.
//! * See the objects: `ls -l /dev/shm` (`ipclab-<uid>-<hash>-<name>`).
//!
//! # System calls
//! `shm_open(3)` (`open(2)` on `/dev/shm`), `ftruncate(2)`, `fchmod(2)`,
//! `mmap(2)`, `munmap(2)`, `shm_unlink(3)`; `sem_init(3)`, `sem_post(3)`,
//! `sem_clockwait(3)` (`futex(2)`), `kill(2)` with signal 0.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{ftruncate, getuid};

use super::{Boundaries, Capabilities, Config, Link, Listener, Transport};
use crate::clean::{self, Leftover};
use crate::interrupt::pid_alive;
use crate::runtime::{self, CreatedPath};
use crate::sem::{SemCell, SharedSem};

const MAGIC: u64 = 0x6970_636c_6162_5348; // "ipclabSH"
const DATA_OFFSET: usize = 4096;
/// Bytes in each direction's data area.
pub const CAPACITY: usize = 64 * 1024;

#[repr(C)]
struct Direction {
    full: SemCell,
    empty: SemCell,
    len: AtomicU32,
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    server_pid: AtomicI32,
    client_pid: AtomicI32,
    closed: AtomicU32,
    /// Set by a client that has left, until the server has reset the slot.
    leaving: AtomicU32,
    capacity: AtomicU32,
    connect: SemCell,
    released: SemCell,
    c2s: Direction,
    s2c: Direction,
}

const _: () = assert!(size_of::<Header>() <= DATA_OFFSET);

/// The mapped region.
struct Region {
    map: MmapRaw,
    cap: usize,
}

impl Region {
    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least DATA_OFFSET bytes, page-aligned, and
        // Header consists of atomics and semaphores, which are meant to be
        // shared.
        unsafe { &*(self.map.as_mut_ptr() as *const Header) }
    }

    /// Start of a direction's data area (0 = c2s, 1 = s2c).
    fn area(&self, dir: usize) -> *mut u8 {
        // SAFETY: within the mapping (size checked when mapped).
        unsafe { self.map.as_mut_ptr().add(DATA_OFFSET + dir * self.cap) }
    }

    fn dir(&self, d: usize) -> &Direction {
        if d == 0 {
            &self.header().c2s
        } else {
            &self.header().s2c
        }
    }

    /// (Re)initialise the semaphores of a free channel.
    ///
    /// # Safety
    /// No other thread or process may use them meanwhile.
    unsafe fn reset_channel(&self) -> io::Result<()> {
        let h = self.header();
        unsafe {
            SharedSem::init(&h.released, 0)?;
            for d in [&h.c2s, &h.s2c] {
                SharedSem::init(&d.full, 0)?;
                SharedSem::init(&d.empty, 1)?;
                d.len.store(0, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// The shared memory transport, over one of two backings.
pub struct Shm {
    backing: Backing,
}

/// What the shared region is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A POSIX shared memory object in `/dev/shm` (`shm_open(3)`).
    PosixShm,
    /// A regular file in the runtime directory, `<dir>/<name>.mmap`.
    File,
}

/// `shm`: POSIX shared memory.
pub const SHM: Shm = Shm {
    backing: Backing::PosixShm,
};
/// `mmap`: the same protocol over a memory-mapped regular file.
pub const MMAP: Shm = Shm {
    backing: Backing::File,
};

const MMAP_SUFFIX: &str = ".mmap";

/// The object of one server: its name for `shm_open`, or its file.
struct Object {
    backing: Backing,
    /// `/ipclab-…` for a POSIX object.
    name: String,
    path: PathBuf,
}

impl Object {
    fn of(backing: Backing, cfg: &Config) -> Object {
        let name = shm_name(cfg);
        let path = match backing {
            Backing::PosixShm => PathBuf::from(format!("/dev/shm{name}")),
            Backing::File => cfg.object_path(MMAP_SUFFIX),
        };
        Object {
            backing,
            name,
            path,
        }
    }

    fn open_with(&self, flags: OFlag, mode: Mode) -> nix::Result<std::os::fd::OwnedFd> {
        match self.backing {
            Backing::PosixShm => shm_open(self.name.as_str(), flags, mode),
            Backing::File => nix::fcntl::open(&self.path, flags | OFlag::O_NOFOLLOW, mode),
        }
    }

    fn unlink(&self) -> nix::Result<()> {
        match self.backing {
            Backing::PosixShm => shm_unlink(self.name.as_str()),
            Backing::File => nix::unistd::unlink(&self.path),
        }
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }
}

/// `/ipclab-<uid>-<hash of the runtime dir>-<name>`: unique per server,
/// derived from the runtime directory, and recognisable by `ipclab clean`.
pub fn shm_name(cfg: &Config) -> String {
    format!("{}{}", shm_prefix(&cfg.dir), cfg.name)
}

/// `/ipclab-<uid>-<hash of dir>-`: the names of every server of `dir`.
pub(crate) fn shm_prefix(dir: &Path) -> String {
    // FNV-1a: small, stable across runs and versions.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
    }
    format!("/ipclab-{}-{h:08x}-", getuid())
}

/// For `clean`: is the region `obj` a live server's?
fn judge_region(obj: &Object) -> io::Result<Result<String, String>> {
    let fd = obj.open_with(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    match map_existing(fd, &obj.shown()) {
        Ok(region) => {
            let h = region.header();
            let pid = h.server_pid.load(Ordering::SeqCst);
            Ok(if h.closed.load(Ordering::SeqCst) == 0 {
                clean::pid_verdict("server", pid)
            } else {
                Err(format!("its server, pid {pid}, has stopped"))
            })
        }
        // Not a region of ours (or one whose server died in the instant
        // between creating and initialising it: the two cannot be told
        // apart, so it is left alone).
        Err(e) => Err(e),
    }
}

impl Transport for Shm {
    fn name(&self) -> &'static str {
        match self.backing {
            Backing::PosixShm => "shm",
            Backing::File => "mmap",
        }
    }
    fn description(&self) -> &'static str {
        match self.backing {
            Backing::PosixShm => {
                "POSIX shared memory, process-shared semaphores (blocking), one client"
            }
            Backing::File => {
                "a memory-mapped regular file, process-shared semaphores inside it (blocking), one client"
            }
        }
    }
    fn kernel_objects(&self) -> &'static str {
        match self.backing {
            Backing::PosixShm => {
                "shared memory object /dev/shm/ipclab-<uid>-<hash>-<name>; semaphores live inside it"
            }
            Backing::File => {
                "file <dir>/<name>.mmap mapped MAP_SHARED by both; semaphores live inside it"
            }
        }
    }
    fn inspect_note(&self) -> &'static str {
        if self.backing == Backing::File {
            return "Both processes map the same regular file, <name>.mmap in the runtime directory: their mappings show its path with s (shared) in the permissions, as for shm, but this is an ordinary file on an ordinary file system. Its pages are the file's page-cache pages, so the kernel also writes them back to the file from time to time (dirty pages); on a tmpfs such as /run/user that costs nothing, on a disk it is I/O the shm transport never does. The semaphores live inside the mapping.";
        }
        "Both processes map the same /dev/shm object (POSIX shared memory: a file in a tmpfs). Their mappings name the same path with s (shared) in the permissions, and neither holds a socket or pipe for it: after shm_open(3) and mmap(2) the descriptor is no longer needed. The payload is copied into the mapping and out of it; the semaphores that say whose turn it is live inside the mapping (process-shared sem_t), so they appear nowhere else."
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let name = self.name();
        // The objects of `dir`'s servers, as (instance name, object).
        let objects: Vec<Object> = match self.backing {
            Backing::PosixShm => {
                let prefix = shm_prefix(dir);
                let Ok(entries) = std::fs::read_dir("/dev/shm") else {
                    return Vec::new();
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix[1..]))
                    .collect();
                names.sort();
                names
                    .into_iter()
                    .map(|n| Object {
                        backing: Backing::PosixShm,
                        path: PathBuf::from(format!("/dev/shm/{n}")),
                        name: format!("/{n}"),
                    })
                    .collect()
            }
            Backing::File => clean::files_with_suffix(dir, MMAP_SUFFIX)
                .into_iter()
                .map(|(_, path)| Object {
                    backing: Backing::File,
                    name: String::new(),
                    path,
                })
                .collect(),
        };
        let what = match self.backing {
            Backing::PosixShm => "POSIX shm object",
            Backing::File => "mapped file",
        };
        objects
            .iter()
            .map(|o| Leftover::judge_file(name, what, &o.path, |t| t.is_file(), || judge_region(o)))
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

    fn external_objects(&self, cfg: &Config) -> Vec<PathBuf> {
        match self.backing {
            Backing::PosixShm => vec![Object::of(self.backing, cfg).path],
            Backing::File => Vec::new(),
        }
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let obj = Object::of(self.backing, cfg);
        let name = obj.shown();
        let size = DATA_OFFSET + 2 * CAPACITY;
        let fd = create_replacing_stale(&obj)?;
        let file = CreatedPath::adopt(obj.path.clone())?;
        fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)?;
        ftruncate(&fd, size as libc::off_t).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot size {name} to {size} bytes: {e} (is its file system full? see df -h)"
                ),
            )
        })?;
        // Reserve the pages now: on a full tmpfs a sparse file maps fine
        // and the first store into a missing page kills the process with
        // SIGBUS; reserved, a full /dev/shm is an error here instead.
        reserve(&fd, size, &name)?;
        let map = MmapOptions::new().len(size).map_raw(&File::from(fd))?;
        let region = Region { map, cap: CAPACITY };
        let h = region.header();
        // SAFETY: the region is new; nobody else can use it before `magic`.
        unsafe {
            SharedSem::init(&h.connect, 0)?;
            region.reset_channel()?;
        }
        h.server_pid
            .store(std::process::id() as i32, Ordering::SeqCst);
        h.client_pid.store(0, Ordering::SeqCst);
        h.closed.store(0, Ordering::SeqCst);
        h.leaving.store(0, Ordering::SeqCst);
        h.capacity.store(CAPACITY as u32, Ordering::SeqCst);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(Box::new(ShmServer {
            region: Arc::new(region),
            name,
            file: Some(file),
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let obj = Object::of(self.backing, cfg);
        let name = obj.shown();
        let fd = match obj.open_with(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no server: {name} does not exist (start one with `ipclab serve {}`)",
                        self.name()
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot open {name}: {e}"),
                ));
            }
        };
        let region = map_existing(fd, &name)?;
        let h = region.header();
        let server = h.server_pid.load(Ordering::SeqCst);
        if h.closed.load(Ordering::SeqCst) != 0 || !pid_alive(server) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the server of {name} (pid {server}) is gone: a stale region"),
            ));
        }
        // Claim the one client slot. A slot whose client has left or died is
        // being reclaimed by the server: wait for that, within the timeout.
        let me = std::process::id() as i32;
        let deadline = Instant::now() + cfg.timeout;
        loop {
            match h
                .client_pid
                .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(holder) if pid_alive(holder) && h.leaving.load(Ordering::SeqCst) == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "busy: the {} server serves one client at a time, and pid {holder} is connected",
                            self.name()
                        ),
                    ));
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(holder) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server did not free the slot of departed client pid {holder} in time"
                        ),
                    ));
                }
            }
        }
        // SAFETY: initialised by the server before it set `magic`.
        unsafe { SharedSem::existing(&h.connect) }.post()?;
        let region = Arc::new(region);
        Ok(Box::new(ShmLink::new(
            region,
            false,
            server,
            cfg.timeout,
            cfg.timeout,
        )))
    }
}

/// Create the object exclusively; a leftover whose server is dead is
/// replaced, a live server's is an error, and anything not ours is left
/// alone.
fn create_replacing_stale(obj: &Object) -> io::Result<std::os::fd::OwnedFd> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let name = obj.shown();
    match obj.open_with(flags, mode) {
        Ok(fd) => return Ok(fd),
        Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot create {name}: {e}"),
            ));
        }
    }
    // A symbolic link (or anything else) planted there is not ours.
    runtime::check_ours(&obj.path, |t| t.is_file(), "a region")?;
    let fd = obj.open_with(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    // Only a region a server of ours made is replaced.
    let region = map_existing(fd, &name).map_err(|e| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{e}; not removing it"),
        )
    })?;
    let pid = region.header().server_pid.load(Ordering::SeqCst);
    if pid_alive(pid) && region.header().closed.load(Ordering::SeqCst) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{name} is already in use by a live server (pid {pid}; pick another --name)"),
        ));
    }
    obj.unlink()?;
    Ok(obj.open_with(flags, mode)?)
}

/// Map an existing region after checking its size and magic (so a short
/// or foreign object cannot make us read past its end).
fn map_existing(fd: std::os::fd::OwnedFd, name: &str) -> io::Result<Region> {
    let file = File::from(fd);
    let size = file.metadata()?.len() as usize;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not an ipclab region"),
        )
    };
    if size < DATA_OFFSET {
        return Err(bad());
    }
    let map = MmapOptions::new().len(size).map_raw(&file)?;
    let region = Region { map, cap: 0 };
    if region.header().magic.load(Ordering::Acquire) != MAGIC {
        return Err(bad());
    }
    let cap = region.header().capacity.load(Ordering::SeqCst) as usize;
    if cap == 0 || DATA_OFFSET + 2 * cap > size {
        return Err(bad());
    }
    Ok(Region { cap, ..region })
}

struct ShmServer {
    region: Arc<Region>,
    name: String,
    file: Option<CreatedPath>,
    cfg: Config,
}

impl Drop for ShmServer {
    fn drop(&mut self) {
        // Clients see `closed` at their next check; the object's name goes
        // now (the memory itself goes with the last mapping).
        self.region.header().closed.store(1, Ordering::SeqCst);
        drop(self.file.take());
    }
}

impl Listener for ShmServer {
    fn endpoint(&self) -> String {
        self.name.clone()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let h = self.region.header();
        // SAFETY: initialised in listen.
        let connect = unsafe { SharedSem::existing(&h.connect) };
        match connect.wait(Instant::now() + wait, "waiting for a client", || Ok(())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e),
        }
        let client = h.client_pid.load(Ordering::SeqCst);
        Ok(Some(Box::new(ShmLink::new(
            Arc::clone(&self.region),
            true,
            client,
            self.cfg.idle_timeout,
            self.cfg.timeout,
        ))))
    }
}

/// One side of the session: reads one direction, writes the other.
struct ShmLink {
    region: Arc<Region>,
    server_side: bool,
    peer: i32,
    read_timeout: Duration,
    write_timeout: Duration,
    /// The chunk being read: its length (None: none taken yet) and how much
    /// of it is consumed.
    chunk: Option<usize>,
    off: usize,
    eof: bool,
}

impl ShmLink {
    fn new(
        region: Arc<Region>,
        server_side: bool,
        peer: i32,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        ShmLink {
            region,
            server_side,
            peer,
            read_timeout,
            write_timeout,
            chunk: None,
            off: 0,
            eof: false,
        }
    }

    fn rx(&self) -> usize {
        if self.server_side { 0 } else { 1 }
    }

    fn tx(&self) -> usize {
        1 - self.rx()
    }

    /// Is the peer still there? (checked between slices of every wait)
    fn alive(&self) -> impl FnMut() -> io::Result<()> + use<> {
        let (region, peer, server_side) = (Arc::clone(&self.region), self.peer, self.server_side);
        move || {
            if server_side {
                if pid_alive(peer) {
                    return Ok(());
                }
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("the client (pid {peer}) died"),
                ));
            }
            if region.header().closed.load(Ordering::SeqCst) != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the server stopped",
                ));
            }
            if !pid_alive(peer) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("the server (pid {peer}) died"),
                ));
            }
            Ok(())
        }
    }

    /// Put one chunk (`fill` writes at most `cap` bytes, returns how many)
    /// into the outgoing area.
    fn send_chunk(
        &self,
        timeout: Duration,
        fill: impl FnOnce(*mut u8, usize) -> usize,
    ) -> io::Result<usize> {
        let (tx, alive) = (self.tx(), self.alive());
        let d = self.region.dir(tx);
        // SAFETY: initialised by the server before any link exists.
        let empty = unsafe { SharedSem::existing(&d.empty) };
        empty.wait(
            Instant::now() + timeout,
            "waiting for the peer to take the last chunk",
            alive,
        )?;
        let n = fill(self.region.area(tx), self.region.cap);
        d.len.store(n as u32, Ordering::SeqCst);
        unsafe { SharedSem::existing(&d.full) }.post()?;
        Ok(n)
    }
}

impl Read for ShmLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let rx = self.rx();
        let len = match self.chunk {
            Some(len) => len,
            None => {
                let alive = self.alive();
                let d = self.region.dir(rx);
                // SAFETY: initialised by the server before any link exists.
                let full = unsafe { SharedSem::existing(&d.full) };
                full.wait(
                    Instant::now() + self.read_timeout,
                    "waiting for the peer to send",
                    alive,
                )?;
                let len = d.len.load(Ordering::SeqCst) as usize;
                if len == 0 {
                    // End of stream. Leave the slot consumed.
                    unsafe { SharedSem::existing(&d.empty) }.post()?;
                    self.eof = true;
                    return Ok(0);
                }
                self.chunk = Some(len.min(self.region.cap));
                self.off = 0;
                len.min(self.region.cap)
            }
        };
        let n = buf.len().min(len - self.off);
        // SAFETY: [off, off + n) lies in the area; the writer does not touch
        // it until we post `empty`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.region.area(rx).add(self.off), buf.as_mut_ptr(), n)
        };
        self.off += n;
        if self.off == len {
            self.chunk = None;
            unsafe { SharedSem::existing(&self.region.dir(rx).empty) }.post()?;
        }
        Ok(n)
    }
}

impl Write for ShmLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.send_chunk(self.write_timeout, |area, cap| {
            let n = buf.len().min(cap);
            // SAFETY: n <= cap bytes into our own area, which the reader
            // does not touch until we post `full`.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), area, n) };
            n
        })
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.send_chunk(self.write_timeout, |area, cap| {
            super::gather(bufs, cap, |at, p| {
                // SAFETY: as in write.
                unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), area.add(at), p.len()) }
            })
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ShmLink {
    fn drop(&mut self) {
        let h = self.region.header();
        let short = Duration::from_secs(1);
        if !self.server_side {
            // Tell the server the stream ended, then that we are gone.
            if h.closed.load(Ordering::SeqCst) == 0 {
                let _ = self.send_chunk(short, |_, _| 0);
            }
            h.leaving.store(1, Ordering::SeqCst);
            let _ = unsafe { SharedSem::existing(&h.released) }.post();
            return;
        }
        // Server: end the client's stream, wait until it has left (or
        // died), then make the channel fresh and free the slot.
        let alive = self.alive();
        if pid_alive(self.peer) {
            let _ = self.send_chunk(short, |_, _| 0);
            let released = unsafe { SharedSem::existing(&h.released) };
            let _ = released.wait(
                Instant::now() + self.read_timeout,
                "waiting for the client to leave",
                alive,
            );
        }
        // SAFETY: the client is gone (released, dead, or past the idle
        // timeout); no one else uses the channel until client_pid is 0.
        if unsafe { self.region.reset_channel() }.is_ok() {
            h.leaving.store(0, Ordering::SeqCst);
            h.client_pid.store(0, Ordering::SeqCst);
        }
    }
}

/// `posix_fallocate(3)` over the whole region, with the error in words.
/// Shared with `shm-spin`.
pub(crate) fn reserve(fd: &std::os::fd::OwnedFd, size: usize, name: &str) -> io::Result<()> {
    nix::fcntl::posix_fallocate(fd, 0, size as libc::off_t).map_err(|e| {
        let hint = if e == Errno::ENOSPC {
            " (/dev/shm is full: see `df -h /dev/shm` and `ipclab limits`)"
        } else {
            ""
        };
        io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot reserve {size} bytes for {name}: {e}{hint}"),
        )
    })
}
