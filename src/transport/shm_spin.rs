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
//!  /dev/shm/ipclab-spin-<uid>-<hash>-<name>.session   (one per session)
//!  ┌ header ─────────────────────────────────────────────────────────────┐
//!  │ the region kit's: magic, server_pid, client_pid, closed             │
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
//! The peer can write those indices too, so they are never trusted: each
//! side keeps the index it owns (the producer its `head`, the consumer its
//! `tail`) in its own memory and only *publishes* it; the peer's index is
//! read and checked — it may only move forward, and never make the ring
//! hold more than 64 KiB or less than nothing. A peer index that breaks
//! that ends the session with an error: no copy ever leaves the data area.
//! The peer can also `ftruncate(2)` the region under us: the kit's
//! `SIGBUS` guard ([`super::kit::sigbus`]) turns the mapping into zero
//! pages instead of killing us, and each side checks after every copy that
//! this did not happen (the session then ends with an error).
//!
//! # Waiting: spin, then yield, then sleep
//! A reader that finds the ring empty
//! 1. **spins** for up to [`SPIN`] (2 µs), re-reading `head` with a
//!    `spin_loop` hint — this is what makes a cross-core round trip cost
//!    a few cache-line transfers instead of two wake-ups;
//! 2. then **yields** the CPU (`sched_yield(2)`) for up to [`YIELD`]: if
//!    the peer runs on the *same* CPU, spinning would only delay it, and
//!    yielding lets it run;
//! 3. then **sleeps** in `futex(2)` on its `*_sleeps` word (the kit's
//!    [`super::kit::futex`], shared with `shm`), after setting
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
//! One at a time, like `shm`, through the same region kit
//! ([`super::region`]): a client claims the one slot of a small meeting
//! region, maps the session region on offer and wakes the server with a
//! `futex(2)` on the meeting region's `connect` word. When the session ends
//! the server sets its `eof`, closes the session region and offers a fresh
//! one to the next client: a client that outlived its session writes only
//! into a ring nobody reads any more.
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
//! wait goes on; `kill(2)` with signal 0 to check a peer; `sigaction(2)`
//! once (the `SIGBUS` guard).

use std::io::{self, IoSlice, Read, Write};
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::kit::futex;
use super::region::{self, DATA_OFFSET, Meeting, OWN_HEADER, SLICE, Seat, Session, Spec, Store};
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::Leftover;

/// How long a waiter spins before it starts yielding.
pub const SPIN: Duration = Duration::from_micros(2);
/// How long it yields before it sleeps.
pub const YIELD: Duration = Duration::from_micros(200);

/// Bytes per direction (a power of two).
const CAPACITY: usize = 64 * 1024;

#[repr(C)]
struct Ring {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    reader_sleeps: CachePadded<AtomicU32>,
    writer_sleeps: CachePadded<AtomicU32>,
    eof: CachePadded<AtomicU32>,
}

/// This transport's header in a session region.
#[repr(C)]
struct Rings([Ring; 2]);

const _: () = assert!(OWN_HEADER + size_of::<Rings>() <= DATA_OFFSET);

pub(crate) const SPEC: Spec = Spec {
    transport: "shm-spin",
    magic: u64::from_le_bytes(*b"ipclspin"),
    // `/ipclab-spin-…`: apart from the `shm` transport's names.
    store: Store::Shm { tag: "spin-" },
    session_size: DATA_OFFSET + 2 * CAPACITY,
    // A fresh region is zeroed: both rings empty, nobody asleep.
    init: |_| Ok(()),
};

fn ring(s: &Session, dir: usize) -> &Ring {
    // SAFETY: Rings is #[repr(C)], atomics only (valid for any bit pattern
    // a peer writes), aligned to 128, and fits.
    &unsafe { s.region.own::<Rings>() }.0[dir]
}

/// After publishing: wake the other side if it went to sleep on `sleeps`.
fn wake_if_asleep(sleeps: &AtomicU32) {
    if sleeps.load(Ordering::SeqCst) != 0 {
        sleeps.store(0, Ordering::SeqCst);
        futex::wake(sleeps);
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
        let _ = futex::wait(sleeps, 1, (deadline - now).min(SLICE));
        sleeps.store(0, Ordering::SeqCst);
        if ready() {
            return Ok(());
        }
        alive()?;
    }
}

/// The busy-waiting shared memory transport.
pub struct ShmSpin;

impl Transport for ShmSpin {
    fn about(&self) -> &'static About {
        static ABOUT: About = About {
            name: "shm-spin",
            description: "POSIX shared memory, lock-free rings, busy-waiting (spin, yield, then futex), one client",
            kernel_objects: "shared memory objects /dev/shm/ipclab-spin-<uid>-<hash>-<name> (meeting) and …-<name>.session (a session); rings and futex words live inside; pid file <dir>/<name>.shm-spin.pid",
            inspect_note: "Like shm, both processes map the same /dev/shm objects (one to meet, one per session) and hold nothing else: no socket, no pipe, not even a semaphore. The two rings and their head and tail indices are plain memory in that mapping. While a conversation runs, neither process enters the kernel: each watches the other's index in a loop (look at the CPU time of both processes with `ps -o pid,time,cmd`), and only an idle side goes to sleep in futex(2) on a word inside the mapping.",
            capabilities: Capabilities::stream().one_client(),
        };
        &ABOUT
    }

    fn external_objects(&self, cfg: &Config) -> Vec<PathBuf> {
        region::external_objects(&SPEC, cfg)
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(SpinServer {
            meeting: Meeting::listen(&SPEC, cfg)?,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let (session, seat) = region::join(&SPEC, cfg)?;
        Ok(Box::new(SpinLink::new(
            session,
            seat,
            cfg.timeout,
            cfg.timeout,
        )))
    }

    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        region::leftovers(&SPEC, dir)
    }
}

struct SpinServer {
    meeting: Meeting,
    cfg: Config,
}

impl Listener for SpinServer {
    fn endpoint(&self) -> String {
        self.meeting.endpoint()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let Some((session, seat)) = self.meeting.accept(wait)? else {
            return Ok(None);
        };
        let link = SpinLink::new(session, seat, self.cfg.idle_timeout, self.cfg.timeout);
        Ok(Some(Box::new(link)))
    }
}

/// One side of the session: reads ring `rx`, writes ring `1 - rx`.
struct SpinLink {
    session: Arc<Session>,
    /// Ends the session when the link is dropped (after `Drop::drop`).
    _seat: Seat,
    rx: usize,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Our own indices, kept here, only published in the region: the
    /// `head` of the ring we write, the `tail` of the ring we read.
    head: u64,
    tail: u64,
    /// The consumer's `tail` of our outgoing ring as last read (and
    /// checked): room is computed from it, and the shared `tail` (a cache
    /// line the consumer writes) is read again only when that room is not
    /// enough.
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

/// A peer's index that breaks the ring's invariant.
fn broken(what: &str, got: u64, ours: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the peer set the ring's {what} to {got} (ours is {ours}, capacity {CAPACITY}): a broken or hostile peer; ending the session"
        ),
    )
}

impl SpinLink {
    fn new(
        session: Arc<Session>,
        seat: Seat,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> SpinLink {
        SpinLink {
            rx: if session.server_side { 0 } else { 1 },
            spin: spin_for(session.peer),
            session,
            _seat: seat,
            read_timeout,
            write_timeout,
            head: 0,
            tail: 0,
            tail_cache: 0,
        }
    }

    /// Copy as much of `bufs` as fits into the outgoing ring, waiting for
    /// room if there is none; publish it with one store of `head`.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let session: &Session = &self.session;
        let ring = ring(session, 1 - self.rx);
        let head = self.head;
        // Both ours: head − tail_cache <= CAPACITY always holds.
        let mut room = CAPACITY - (head - self.tail_cache) as usize;
        if room < total.min(CAPACITY) {
            self.tail_cache = peer_tail(ring, self.tail_cache, head)?;
            room = CAPACITY - (head - self.tail_cache) as usize;
            if room == 0 {
                let seen = self.tail_cache;
                wait_until(
                    || ring.tail.load(Ordering::SeqCst) != seen,
                    self.spin,
                    &ring.writer_sleeps,
                    Instant::now() + self.write_timeout,
                    "waiting for the peer to drain the ring",
                    || session.check(),
                )?;
                self.tail_cache = peer_tail(ring, self.tail_cache, head)?;
                room = CAPACITY - (head - self.tail_cache) as usize;
            }
        }
        let data = session.region.area(1 - self.rx, CAPACITY);
        let n = super::gather(bufs, room.min(total), |at, p| {
            copy_in(data, head + at as u64, p)
        });
        session.region.map.intact("the session region")?;
        self.head = head + n as u64;
        // A plain release store, then a full fence before looking at the
        // sleeper's word (the store-load order the no-lost-wake-up argument
        // needs). On x86 this lets the stores of the data and of `head`
        // claim their cache lines together; a sequentially consistent store
        // (`xchg`) would first wait for the data, then claim `head`. (An
        // A/B run against `xchg` on this VM was within its noise.)
        ring.head.store(self.head, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
        wake_if_asleep(&ring.reader_sleeps);
        Ok(n)
    }
}

/// The consumer's `tail` of our outgoing ring, checked: between the last
/// one seen and our `head`.
fn peer_tail(ring: &Ring, seen: u64, head: u64) -> io::Result<u64> {
    let t = ring.tail.load(Ordering::SeqCst);
    if t.wrapping_sub(seen) > head - seen {
        return Err(broken("tail", t, head));
    }
    Ok(t)
}

/// Copy `src` (at most `CAPACITY` bytes) into the ring at byte position
/// `at`, wrapping around.
fn copy_in(data: *mut u8, at: u64, src: &[u8]) {
    let off = (at as usize) & (CAPACITY - 1);
    let first = src.len().min(CAPACITY - off);
    // SAFETY: both pieces lie within the data area (src.len() <= room <=
    // CAPACITY); the consumer does not read these bytes before `head` is
    // published.
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
        let session: &Session = &self.session;
        let ring = ring(session, self.rx);
        let tail = self.tail;
        let ready =
            || ring.head.load(Ordering::SeqCst) != tail || ring.eof.load(Ordering::SeqCst) != 0;
        wait_until(
            ready,
            self.spin,
            &ring.reader_sleeps,
            Instant::now() + self.read_timeout,
            "waiting for the peer to send",
            || session.check(),
        )?;
        // Written by the peer: at most CAPACITY ahead of our tail (and
        // not a zero read from a region truncated under us).
        let head = ring.head.load(Ordering::SeqCst);
        session.region.map.intact("the session region")?;
        let avail = head.wrapping_sub(tail);
        if avail > CAPACITY as u64 {
            return Err(broken("head", head, tail));
        }
        if avail == 0 {
            return Ok(0); // end of stream
        }
        let n = (avail as usize).min(buf.len());
        let off = (tail as usize) & (CAPACITY - 1);
        let first = n.min(CAPACITY - off);
        let data = session.region.area(self.rx, CAPACITY);
        // SAFETY: n <= CAPACITY, so both pieces lie in the data area;
        // [tail, tail + n) was published by the producer, which does not
        // overwrite it before we publish the new tail.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(off), buf.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, buf.as_mut_ptr().add(first), n - first);
        }
        session.region.map.intact("the session region")?;
        self.tail = tail + n as u64;
        ring.tail.store(self.tail, Ordering::SeqCst);
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
        // End the peer's stream; the seat then ends the session.
        let tx = ring(&self.session, 1 - self.rx);
        tx.eof.store(1, Ordering::SeqCst);
        futex::wake(&tx.reader_sleeps);
    }
}

/// For the hostile-peer tests: where a peer finds ring `d`'s `head`,
/// `tail` and `eof`, and its data area.
#[doc(hidden)]
pub mod layout {
    use super::*;
    /// Offsets of ring `d`'s `head`, `tail`, `eof`.
    pub fn fields(d: usize) -> (usize, usize, usize) {
        let at = OWN_HEADER + d * size_of::<Ring>();
        (
            at + offset_of!(Ring, head),
            at + offset_of!(Ring, tail),
            at + offset_of!(Ring, eof),
        )
    }
    /// Offset of ring `d`'s data area; its size.
    pub fn area(d: usize) -> (usize, usize) {
        (DATA_OFFSET + d * CAPACITY, CAPACITY)
    }
}
