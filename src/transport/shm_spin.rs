//! `shm-spin` — shared memory with lock-free rings and busy-waiting: the
//! fastest honest way for two processes to talk.
//!
//! # What it is
//! The `shm` transport shares memory too, but waits with semaphores: every
//! hand-off that finds the peer asleep costs a `futex` system call and a
//! wake-up. Here nobody sleeps while a conversation is going on. Each
//! direction is a **single-producer/single-consumer ring** of bytes in a
//! POSIX shared memory object; the writer copies bytes in and publishes a
//! new `head`, the reader watches `head` in a loop, copies the bytes out and
//! publishes a new `tail`. The only thing that crosses between the CPUs is
//! cache lines: no system call, no scheduler, on the fast path.
//!
//! ```text
//!  /dev/shm/ipclab-spin-<uid>-<hash>-<name>
//!  ┌ header ─────────────────────────────────────────────────────────────┐
//!  │ magic, server_pid, client_pid (slot), closed, connect, released     │
//!  │ ring[0] client→server: head │ tail │ reader_sleeps │ writer_sleeps │ eof
//!  │ ring[1] server→client: head │ tail │ …   (each on its own cache line)│
//!  ├ data[0]: 64 KiB ────────────────────────────────────────────────────┤
//!  ├ data[1]: 64 KiB ────────────────────────────────────────────────────┤
//!  └─────────────────────────────────────────────────────────────────────┘
//! ```
//! `head` (bytes ever written) is written only by the producer and `tail`
//! (bytes ever read) only by the consumer, so no lock is needed: the ring
//! holds `head − tail` bytes, at `index mod 64 KiB`. Each index sits on a
//! cache line of its own (`crossbeam_utils::CachePadded`): if `head` and
//! `tail` shared a line, every update by one side would steal the line the
//! other side is polling ("false sharing"). A release store of `head` after
//! the copy, and an acquire load before reading, make the bytes visible in
//! order.
//!
//! # Waiting: spin, then yield, then sleep
//! A reader that finds the ring empty
//! 1. **spins** for up to [`SPIN`] (2 µs), re-reading `head` with a
//!    `spin_loop` hint — this is what makes a cross-core round trip cost
//!    a few cache-line transfers instead of two wake-ups;
//! 2. then **yields** the CPU (`sched_yield(2)`) for up to [`YIELD`]: if
//!    the peer runs on the *same* CPU, spinning would only delay it, and
//!    yielding lets it run;
//! 3. then **sleeps** in `futex(2)` on its `*_sleeps` word, after setting
//!    it to 1 and re-checking `head` (the writer, after publishing, looks
//!    at that word and wakes it: both sides use sequentially consistent
//!    operations, so one of them always sees the other — no lost wake-up).
//!    An idle connection therefore costs nothing, and sleeps in slices of
//!    250 ms to check that its peer is still alive.
//!
//! Spinning is not free: while a conversation runs, both processes keep a
//! CPU busy. `ipclab bench` shows it in the CPU/RTT column (about twice the
//! round trip time cross-core: both CPUs are busy the whole time). The
//! writer waits the same way when the ring is full (large messages).
//!
//! # Clients
//! One at a time, like `shm`: a client claims the slot with a
//! compare-and-swap of `client_pid`, then bumps `connect` and wakes the
//! server. When the session ends, the server waits for the client to set
//! `released` (or to die), resets the rings and frees the slot.
//!
//! # Limits
//! * The ring is 64 KiB per direction; a larger message flows through it
//!   while the reader drains it (the 1 MiB echo included).
//! * Busy-waiting pays off only when each process has a CPU of its own; on
//!   one shared CPU it is about as fast as the blocking `shm` transport (the
//!   yields hand the CPU over), never faster.
//!
//! # System calls
//! `shm_open(3)`, `ftruncate(2)`, `mmap(2)` (set-up only), then on the fast
//! path none; `sched_yield(2)` and `futex(2)` (`FUTEX_WAIT`, `FUTEX_WAKE`,
//! shared, not private: the word is in memory of two processes) when a
//! wait goes on; `kill(2)` with signal 0 to check a peer.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
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

/// How long a waiter spins before it starts yielding.
pub const SPIN: Duration = Duration::from_micros(2);
/// How long it yields before it sleeps.
pub const YIELD: Duration = Duration::from_micros(200);
/// The longest one futex sleep lasts before the peer is checked.
const SLICE: Duration = Duration::from_millis(250);

const MAGIC: u64 = u64::from_le_bytes(*b"ipclspin");
/// Bytes per direction (a power of two).
const CAPACITY: usize = 64 * 1024;
const DATA_OFFSET: usize = 4096;
const REGION: usize = DATA_OFFSET + 2 * CAPACITY;

#[repr(C)]
struct Ring {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    reader_sleeps: CachePadded<AtomicU32>,
    writer_sleeps: CachePadded<AtomicU32>,
    eof: CachePadded<AtomicU32>,
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    server_pid: AtomicI32,
    client_pid: AtomicI32,
    closed: AtomicU32,
    released: AtomicU32,
    connect: CachePadded<AtomicU32>,
    rings: [Ring; 2],
}

const _: () = assert!(size_of::<Header>() <= DATA_OFFSET);

/// The mapped region.
struct Region {
    map: MmapRaw,
}

// SAFETY: all shared state in the mapping is atomics, and the data areas
// are handed over by the ring protocol (one writer, one reader).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least REGION bytes, page-aligned, and
        // the header is only atomics (valid for any bit pattern, zero included).
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn ring(&self, dir: usize) -> &Ring {
        &self.header().rings[dir]
    }

    fn data(&self, dir: usize) -> *mut u8 {
        // SAFETY: within the mapping.
        unsafe { self.map.as_mut_ptr().add(DATA_OFFSET + dir * CAPACITY) }
    }

    /// Both rings empty, nobody asleep, no end of stream.
    fn reset_rings(&self) {
        for r in &self.header().rings {
            r.head.store(0, Ordering::SeqCst);
            r.tail.store(0, Ordering::SeqCst);
            r.reader_sleeps.store(0, Ordering::SeqCst);
            r.writer_sleeps.store(0, Ordering::SeqCst);
            r.eof.store(0, Ordering::SeqCst);
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid, aligned u32 in memory that stays mapped; the kernel
    // only compares it and sleeps. EINTR, EAGAIN and ETIMEDOUT all just
    // return to the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts,
            std::ptr::null::<u32>(),
            0,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    };
}

/// After publishing: wake the other side if it went to sleep on `sleeps`.
fn wake_if_asleep(sleeps: &AtomicU32) {
    if sleeps.load(Ordering::SeqCst) != 0 {
        sleeps.store(0, Ordering::SeqCst);
        futex_wake(sleeps);
    }
}

/// Wait until `ready()`: spin, yield, then sleep on `sleeps` in slices,
/// asking `alive()` between them, until `deadline`.
fn wait_until(
    ready: impl Fn() -> bool,
    spin: Duration,
    sleeps: &AtomicU32,
    deadline: Instant,
    waiting: &str,
    mut alive: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    if ready() {
        return Ok(());
    }
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        std::hint::spin_loop();
        if ready() {
            return Ok(());
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(32) && start.elapsed() >= spin {
            break;
        }
    }
    while start.elapsed() < spin + YIELD {
        // SAFETY: no preconditions.
        unsafe { libc::sched_yield() };
        if ready() {
            return Ok(());
        }
    }
    loop {
        sleeps.store(1, Ordering::SeqCst);
        if ready() {
            sleeps.store(0, Ordering::SeqCst);
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            sleeps.store(0, Ordering::SeqCst);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out {waiting} (--timeout sets the limit)"),
            ));
        }
        futex_wait(sleeps, 1, (deadline - now).min(SLICE));
        sleeps.store(0, Ordering::SeqCst);
        if ready() {
            return Ok(());
        }
        alive()?;
    }
}

/// The busy-waiting shared memory transport.
pub struct ShmSpin;

fn region_name(cfg: &Config) -> String {
    format!("{}{}", prefix(&cfg.dir), cfg.name)
}

/// `/ipclab-spin-<uid>-<hash of dir>-`: apart from the `shm` transport's
/// names, so neither judges the other's regions.
fn prefix(dir: &Path) -> String {
    let shm = super::shm::shm_prefix(dir);
    format!("/ipclab-spin-{}", &shm["/ipclab-".len()..])
}

impl Transport for ShmSpin {
    fn name(&self) -> &'static str {
        "shm-spin"
    }
    fn description(&self) -> &'static str {
        "POSIX shared memory, lock-free rings, busy-waiting (spin, yield, then futex), one client"
    }
    fn kernel_objects(&self) -> &'static str {
        "shared memory object /dev/shm/ipclab-spin-<uid>-<hash>-<name>; its rings and futex words live inside it"
    }
    fn inspect_note(&self) -> &'static str {
        "Like shm, both processes map the same /dev/shm object and hold nothing else: no socket, no pipe, not even a semaphore. The two rings and their head and tail indices are plain memory in that mapping. While a conversation runs, neither process enters the kernel: each watches the other's index in a loop (look at the CPU time of both processes with `ps -o pid,time,cmd`), and only an idle side goes to sleep in futex(2) on a word inside the mapping."
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_client: false,
            boundaries: Boundaries::Stream,
            max_message: None,
            crosses_machines: false,
            inherited: false,
        }
    }

    fn external_objects(&self, cfg: &Config) -> Vec<PathBuf> {
        vec![PathBuf::from(format!("/dev/shm{}", region_name(cfg)))]
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        runtime::prepare_dir(&cfg.dir)?;
        let name = region_name(cfg);
        let fd = create_replacing_stale(&name)?;
        let file = CreatedPath::adopt(PathBuf::from(format!("/dev/shm{name}")))?;
        fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)?;
        ftruncate(&fd, REGION as i64).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot size {name} to {REGION} bytes: {e} (is /dev/shm full? see df -h /dev/shm)"),
            )
        })?;
        // Reserve the pages now: on a full tmpfs a sparse file maps fine
        // and the first store into a missing page kills the process with
        // SIGBUS; reserved, a full /dev/shm is an error here instead.
        super::shm::reserve(&fd, REGION, &name)?;
        let map = MmapOptions::new().len(REGION).map_raw(&File::from(fd))?;
        let region = Arc::new(Region { map });
        let h = region.header();
        region.reset_rings();
        h.server_pid
            .store(std::process::id() as i32, Ordering::SeqCst);
        h.client_pid.store(0, Ordering::SeqCst);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(Box::new(SpinServer {
            seen: h.connect.load(Ordering::SeqCst),
            region,
            name,
            file: Some(file),
            in_session: Arc::new(AtomicBool::new(false)),
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let name = region_name(cfg);
        let fd = match shm_open(
            name.as_str(),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no server: /dev/shm{name} does not exist (start one with `ipclab serve shm-spin`)"
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("shm_open({name}): {e}"),
                ));
            }
        };
        let region = Arc::new(map_existing(fd, &name)?);
        let h = region.header();
        let server = h.server_pid.load(Ordering::SeqCst);
        if h.closed.load(Ordering::SeqCst) != 0 || !pid_alive(server) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the server of /dev/shm{name} (pid {server}) is gone: a stale region"),
            ));
        }
        // Claim the slot; one whose client just left is being reset by the
        // server: wait for that, within the timeout.
        let me = std::process::id() as i32;
        let deadline = Instant::now() + cfg.timeout;
        loop {
            match h
                .client_pid
                .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                // A live client that has not let go: busy, at once.
                Err(other) if pid_alive(other) && h.released.load(Ordering::SeqCst) == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "busy: the shm-spin server serves one client at a time, and pid {other} is connected"
                        ),
                    ));
                }
                // One that left (or died): the server is freeing the slot.
                Err(other) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server did not free the slot of departed client pid {other} in time"
                        ),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        // The slot is ours: we have not let go of it yet.
        h.released.store(0, Ordering::SeqCst);
        h.connect.fetch_add(1, Ordering::SeqCst);
        futex_wake(&h.connect);
        Ok(Box::new(SpinLink::new(
            region,
            false,
            server,
            cfg.timeout,
            cfg.timeout,
            None,
        )))
    }

    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        let prefix = prefix(dir);
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
            .map(|n| {
                let path = PathBuf::from(format!("/dev/shm/{n}"));
                Leftover::judge_file(
                    "shm-spin",
                    "POSIX shm object",
                    &path,
                    |t| t.is_file(),
                    || {
                        let fd = shm_open(
                            format!("/{n}").as_str(),
                            OFlag::O_RDWR | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )?;
                        Ok(match map_existing(fd, &n) {
                            Ok(r) => {
                                let h = r.header();
                                let pid = h.server_pid.load(Ordering::SeqCst);
                                if h.closed.load(Ordering::SeqCst) == 0 {
                                    clean::pid_verdict("server", pid)
                                } else {
                                    Err(format!("its server, pid {pid}, has stopped"))
                                }
                            }
                            // Not ours, or (indistinguishably) one whose
                            // server died while creating it: left alone.
                            Err(e) => return Err(e),
                        })
                    },
                )
            })
            .collect()
    }
}

/// Create the object exclusively; a leftover whose server is dead is
/// replaced, a live server's is an error.
fn create_replacing_stale(name: &str) -> io::Result<std::os::fd::OwnedFd> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    match shm_open(name, flags, mode) {
        Ok(fd) => return Ok(fd),
        Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("shm_open({name}): {e}"),
            ));
        }
    }
    let fd = shm_open(name, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    let meta = File::from(fd.try_clone()?).metadata()?;
    if meta.uid() != getuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "/dev/shm{name} belongs to uid {}; not removing it",
                meta.uid()
            ),
        ));
    }
    // Only a region a server of ours made is replaced.
    let region = map_existing(fd, name).map_err(|e| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{e}; not removing it"),
        )
    })?;
    {
        let h = region.header();
        let pid = h.server_pid.load(Ordering::SeqCst);
        if pid_alive(pid) && h.closed.load(Ordering::SeqCst) == 0 {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "/dev/shm{name} is already in use by a live server (pid {pid}; pick another --name)"
                ),
            ));
        }
    }
    shm_unlink(name)?;
    Ok(shm_open(name, flags, mode)?)
}

/// Map an existing region after checking its size and magic.
fn map_existing(fd: std::os::fd::OwnedFd, name: &str) -> io::Result<Region> {
    let file = File::from(fd);
    if file.metadata()?.len() as usize != REGION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/dev/shm{name} is not an ipclab shm-spin region"),
        ));
    }
    let region = Region {
        map: MmapOptions::new().len(REGION).map_raw(&file)?,
    };
    if region.header().magic.load(Ordering::Acquire) != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/dev/shm{name} is not an ipclab shm-spin region"),
        ));
    }
    Ok(region)
}

struct SpinServer {
    region: Arc<Region>,
    name: String,
    file: Option<CreatedPath>,
    /// The `connect` count already answered.
    seen: u32,
    in_session: Arc<AtomicBool>,
    cfg: Config,
}

impl Drop for SpinServer {
    fn drop(&mut self) {
        self.region.header().closed.store(1, Ordering::SeqCst);
        for r in &self.region.header().rings {
            futex_wake(&r.reader_sleeps);
            futex_wake(&r.writer_sleeps);
        }
        drop(self.file.take());
    }
}

impl Listener for SpinServer {
    fn endpoint(&self) -> String {
        format!("/dev/shm{}", self.name)
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let h = self.region.header();
        let deadline = Instant::now() + wait;
        loop {
            let now_seen = h.connect.load(Ordering::SeqCst);
            if now_seen != self.seen && !self.in_session.load(Ordering::SeqCst) {
                self.seen = now_seen;
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            futex_wait(&h.connect, now_seen, deadline - now);
        }
        let client = h.client_pid.load(Ordering::SeqCst);
        self.in_session.store(true, Ordering::SeqCst);
        let mut link = SpinLink::new(
            Arc::clone(&self.region),
            true,
            client,
            self.cfg.idle_timeout,
            self.cfg.timeout,
            Some(Arc::clone(&self.in_session)),
        );
        link.idle_timeout = self.cfg.idle_timeout;
        Ok(Some(Box::new(link)))
    }
}

/// One side of the session: reads ring `rx`, writes ring `1 - rx`.
struct SpinLink {
    region: Arc<Region>,
    rx: usize,
    peer: i32,
    server_side: bool,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Server side: cleared when the slot is free again.
    in_session: Option<Arc<AtomicBool>>,
    idle_timeout: Duration,
    /// The consumer's `tail` of our outgoing ring as last read: room is
    /// computed from it, and the shared `tail` (a cache line the consumer
    /// writes) is read again only when that room is not enough.
    tail_cache: u64,
    /// How long a wait spins: [`SPIN`], or nothing when both processes
    /// are pinned to one and the same CPU (the peer cannot run while we
    /// spin there).
    spin: Duration,
}

/// [`SPIN`], unless this thread and process `peer` may only run on the
/// same single CPU.
fn spin_for(peer: i32) -> Duration {
    use nix::sched::sched_getaffinity;
    use nix::unistd::Pid;
    let single = |set: nix::sched::CpuSet| {
        let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect();
        (cpus.len() == 1).then(|| cpus[0])
    };
    match (
        sched_getaffinity(Pid::from_raw(0)).ok().and_then(single),
        sched_getaffinity(Pid::from_raw(peer)).ok().and_then(single),
    ) {
        (Some(a), Some(b)) if a == b => Duration::ZERO,
        _ => SPIN,
    }
}

impl SpinLink {
    fn new(
        region: Arc<Region>,
        server_side: bool,
        peer: i32,
        read_timeout: Duration,
        write_timeout: Duration,
        in_session: Option<Arc<AtomicBool>>,
    ) -> SpinLink {
        SpinLink {
            region,
            rx: if server_side { 0 } else { 1 },
            peer,
            server_side,
            read_timeout,
            write_timeout,
            in_session,
            idle_timeout: read_timeout,
            tail_cache: 0,
            spin: spin_for(peer),
        }
    }
}

/// Is the peer still there? (asked between the sleeps of a long wait)
fn peer_check(region: &Region, peer: i32, server_side: bool) -> io::Result<()> {
    if !server_side && region.header().closed.load(Ordering::SeqCst) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the server stopped",
        ));
    }
    if !pid_alive(peer) {
        let who = if server_side { "client" } else { "server" };
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("the {who} (pid {peer}) died"),
        ));
    }
    Ok(())
}

impl SpinLink {
    /// Copy as much of `bufs` as fits into the outgoing ring, waiting for
    /// room if there is none; publish it with one store of `head`.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let tx = 1 - self.rx;
        let (peer, server_side) = (self.peer, self.server_side);
        let region: &Region = &self.region;
        let ring = region.ring(tx);
        let head = ring.head.load(Ordering::Relaxed);
        let mut room = CAPACITY - (head - self.tail_cache) as usize;
        if room < total.min(CAPACITY) {
            self.tail_cache = ring.tail.load(Ordering::SeqCst);
            room = CAPACITY - (head - self.tail_cache) as usize;
            if room == 0 {
                wait_until(
                    || head - ring.tail.load(Ordering::SeqCst) < CAPACITY as u64,
                    self.spin,
                    &ring.writer_sleeps,
                    Instant::now() + self.write_timeout,
                    "waiting for the peer to drain the ring",
                    || peer_check(region, peer, server_side),
                )?;
                self.tail_cache = ring.tail.load(Ordering::SeqCst);
                room = CAPACITY - (head - self.tail_cache) as usize;
            }
        }
        let data = region.data(tx);
        let n = super::gather(bufs, room.min(total), |at, p| {
            copy_in(data, head + at as u64, p)
        });
        // A plain release store, then a full fence before looking at the
        // sleeper's word (the store-load order the no-lost-wake-up argument
        // needs). On x86 this lets the stores of the data and of `head`
        // claim their cache lines together; a sequentially consistent store
        // (`xchg`) would first wait for the data, then claim `head`. (An
        // A/B run against `xchg` on this VM was within its noise.)
        ring.head.store(head + n as u64, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
        wake_if_asleep(&ring.reader_sleeps);
        Ok(n)
    }
}

/// Copy `src` into the ring at byte position `at`, wrapping around.
fn copy_in(data: *mut u8, at: u64, src: &[u8]) {
    let off = (at as usize) & (CAPACITY - 1);
    let first = src.len().min(CAPACITY - off);
    // SAFETY: both pieces lie within the data area; the consumer does not
    // read these bytes before `head` is published.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(off), first);
        std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
    }
}

impl Read for SpinLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (peer, server_side) = (self.peer, self.server_side);
        let region: &Region = &self.region;
        let ring = region.ring(self.rx);
        let tail = ring.tail.load(Ordering::Relaxed);
        let ready =
            || ring.head.load(Ordering::SeqCst) != tail || ring.eof.load(Ordering::SeqCst) != 0;
        wait_until(
            ready,
            self.spin,
            &ring.reader_sleeps,
            Instant::now() + self.read_timeout,
            "waiting for the peer to send",
            || peer_check(region, peer, server_side),
        )?;
        let avail = (ring.head.load(Ordering::SeqCst) - tail) as usize;
        if avail == 0 {
            return Ok(0); // end of stream
        }
        let n = avail.min(buf.len());
        let off = (tail as usize) & (CAPACITY - 1);
        let first = n.min(CAPACITY - off);
        let data = region.data(self.rx);
        // SAFETY: [tail, tail + n) was published by the producer, which
        // does not overwrite it before we publish the new tail.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(off), buf.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, buf.as_mut_ptr().add(first), n - first);
        }
        ring.tail.store(tail + n as u64, Ordering::SeqCst);
        wake_if_asleep(&ring.writer_sleeps);
        Ok(n)
    }
}

impl Write for SpinLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SpinLink {
    fn drop(&mut self) {
        let h = self.region.header();
        let tx = self.region.ring(1 - self.rx);
        tx.eof.store(1, Ordering::SeqCst);
        futex_wake(&tx.reader_sleeps);
        tx.reader_sleeps.store(0, Ordering::SeqCst);
        if !self.server_side {
            // Our last touch of the region.
            h.released.store(1, Ordering::SeqCst);
            futex_wake(&h.released);
            return;
        }
        // Server: wait (bounded) until the client has let go, then reset
        // the rings and free the slot for the next client.
        let deadline = Instant::now() + self.idle_timeout;
        while h.released.load(Ordering::SeqCst) == 0
            && pid_alive(self.peer)
            && h.closed.load(Ordering::SeqCst) == 0
            && Instant::now() < deadline
        {
            futex_wait(&h.released, 0, SLICE);
        }
        // `released` stays 1 until the next client claims the slot: a
        // client that finds the slot still taken then knows it is only
        // being freed, not busy.
        self.region.reset_rings();
        h.client_pid.store(0, Ordering::SeqCst);
        if let Some(s) = &self.in_session {
            s.store(false, Ordering::SeqCst);
        }
    }
}
