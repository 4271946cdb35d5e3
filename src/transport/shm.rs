//! `shm` — POSIX shared memory, synchronised with process-shared semaphores
//! (futex words).
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
//! `ftruncate(2)`. The semaphores live in the region itself: each is one
//! 32-bit word, a count and a "sleepers" bit, on which a waiter sleeps with
//! `futex(2)` ([`super::kit::futex::Sem`]). No extra kernel objects to name
//! or clean up, and their fast path (a free slot) is one atomic instruction
//! with no system call. They block in the kernel: this is the honest,
//! blocking variant — no spinning.
//!
//! Why not POSIX semaphores (`sem_init(3)` with `pshared = 1`), which are
//! the same idea? glibc keeps flags inside the `sem_t`, in memory the peer
//! can write, and aborts the whole process when a garbled flag makes
//! `futex` fail. Our word has no state that is not legal: whatever the peer
//! writes there is at worst a spurious turn, which the checks below catch.
//!
//! # Regions and layout
//! The server offers each client a **fresh session region** and meets
//! clients in a one-page **meeting region** under the well-known name; both
//! are made, named, claimed and cleaned up by the region kit shared with
//! `mmap` and `shm-spin` ([`super::region`], read it for the one-client
//! slot and why a session never reuses a region). A session region:
//! ```text
//!  offset 0     ┌────────────────────────────────────────────────┐
//!               │ the kit's header: magic, server_pid,           │
//!               │   client_pid, closed (the session is over)     │
//!  offset 256   │ Channel (#[repr(C)])                           │
//!               │   c2s: full, empty (futex words), len  (requests) │
//!               │   s2c: full, empty (futex words), len  (replies)  │
//!  offset 4096  ├────────────────────────────────────────────────┤
//!               │ c2s data area  (64 KiB)                        │  written by the client
//!               ├────────────────────────────────────────────────┤
//!               │ s2c data area  (64 KiB)                        │  written by the server
//!               └────────────────────────────────────────────────┘
//! ```
//! The data areas start on a page boundary; each semaphore and atomic is
//! naturally aligned inside the `#[repr(C)]` header.
//!
//! # How data and synchronisation flow
//! Each direction is a one-slot bounded buffer (the classic producer/
//! consumer with two semaphores). The writer waits on `empty`, copies a
//! chunk of up to 64 KiB into its area, stores its length and posts
//! `full`; the reader waits on `full`, copies the chunk out, and posts
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
//! of stream". The length is written by the peer, so it is checked: a
//! chunk announced longer than the area ends the session with an error.
//!
//! # Clients
//! One at a time: a second client finds the slot taken and gets a clear
//! "busy" error. When a session ends the server sends end-of-stream if it
//! can, marks the region closed and lets go of it; the next client gets a
//! new one, so nothing of one session can reach the next.
//!
//! # Bounded waits and dead peers
//! Every wait is `FUTEX_WAIT` in slices of a quarter second; between
//! slices the waiter checks that the peer's pid still exists (and, for a
//! client, that the server has not closed the session or stopped). A killed
//! peer is therefore an error within the timeout, never a hang. Regions
//! left by a server killed with SIGKILL are recognised by the next server
//! (their `server_pid` is dead) and replaced or removed.
//!
//! # The `mmap` variant: a regular file
//! The same code serves a second transport, `mmap`, whose region is not a
//! POSIX shared memory object but an ordinary file, `<dir>/<name>.mmap`,
//! opened with `open(2)` and mapped `MAP_SHARED` by both processes (and one
//! `<dir>/<name>.session.mmap` per session). To the
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
//! * A semaphore's count has 31 bits; ours never exceed 1.
//! * A peer can `ftruncate(2)` a region: the kit's `SIGBUS` guard
//!   ([`super::kit::sigbus`]) turns that into an error of the session.
//! * See the objects: `ls -l /dev/shm` (`ipclab-<uid>-<hash>-<name>`, and
//!   `…-<name>.session`, the session on offer).
//!
//! # System calls
//! `shm_open(3)` (`open(2)` on `/dev/shm`), `ftruncate(2)`, `fchmod(2)`,
//! `mmap(2)`, `munmap(2)`, `shm_unlink(3)`; `futex(2)` (`FUTEX_WAIT`,
//! `FUTEX_WAKE`, only when a side sleeps), `kill(2)` with signal 0,
//! `sigaction(2)` (the `SIGBUS` guard).

use std::io::{self, IoSlice, Read, Write};
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::kit::futex::Sem;
use super::region::{self, DATA_OFFSET, Meeting, OWN_HEADER, Seat, Session, Spec, Store};
use super::{About, Capabilities, Config, Link, Listener, Transport};
use crate::objects::Leftover;

/// Bytes in each direction's data area.
pub const CAPACITY: usize = 64 * 1024;

#[repr(C)]
struct Direction {
    full: Sem,
    empty: Sem,
    len: AtomicU32,
}

/// This transport's header in a session region: one channel per direction
/// (0: client → server, 1: server → client).
#[repr(C)]
struct Channel([Direction; 2]);

const _: () = assert!(OWN_HEADER + size_of::<Channel>() <= DATA_OFFSET);

/// A fresh session's semaphores: nothing to read, room to write.
fn init(r: &region::Region) -> io::Result<()> {
    // The region is new: nobody uses it before its magic is set.
    for d in &channel(r).0 {
        d.full.init(0);
        d.empty.init(1);
    }
    Ok(())
}

fn channel(r: &region::Region) -> &Channel {
    // SAFETY: Channel is #[repr(C)], semaphores and atomics (valid for any
    // bit pattern a peer writes), and fits.
    unsafe { r.own::<Channel>() }
}

const fn spec(transport: &'static str, store: Store) -> Spec {
    Spec {
        transport,
        magic: 0x6970_636c_6162_5348, // "ipclabSH"
        store,
        session_size: DATA_OFFSET + 2 * CAPACITY,
        init,
    }
}

const SHM_SPEC: Spec = spec("shm", Store::Shm { tag: "" });
const MMAP_SPEC: Spec = spec("mmap", Store::File { suffix: ".mmap" });

pub(crate) fn spec_of(transport: &str) -> &'static Spec {
    if transport == "mmap" {
        &MMAP_SPEC
    } else {
        &SHM_SPEC
    }
}

/// The shared memory transport, over one of two backings.
pub struct Shm {
    spec: &'static Spec,
}

/// `shm`: POSIX shared memory.
pub const SHM: Shm = Shm { spec: &SHM_SPEC };
/// `mmap`: the same protocol over a memory-mapped regular file.
pub const MMAP: Shm = Shm { spec: &MMAP_SPEC };

impl Shm {
    fn file_backed(&self) -> bool {
        matches!(self.spec.store, Store::File { .. })
    }
}

impl Transport for Shm {
    fn about(&self) -> &'static About {
        const CAPABILITIES: Capabilities =
            Capabilities::messages().max_message(CAPACITY).one_client();
        static SHM_ABOUT: About = About {
            name: "shm",
            description: "POSIX shared memory, process-shared semaphores (blocking), one client",
            kernel_objects: "shared memory objects /dev/shm/ipclab-<uid>-<hash>-<name> (meeting) and …-<name>.session (a session); semaphores live inside; pid file <dir>/<name>.shm.pid",
            inspect_note: "Both processes map the same /dev/shm objects (POSIX shared memory: files in a tmpfs), one to meet and one per session (its name removed once both have it mapped, hence (deleted)). Their mappings name the same paths with s (shared) in the permissions, and neither holds a socket or pipe for them: after shm_open(3) and mmap(2) the descriptor is no longer needed. The payload is copied into the mapping and out of it; the semaphores that say whose turn it is live inside the mapping (futex words), so they appear nowhere else.",
            capabilities: CAPABILITIES,
        };
        static MMAP_ABOUT: About = About {
            name: "mmap",
            description: "a memory-mapped regular file, process-shared semaphores inside it (blocking), one client",
            kernel_objects: "files <dir>/<name>.mmap (meeting) and <name>.session.mmap (a session) mapped MAP_SHARED by both; semaphores live inside; pid file <dir>/<name>.mmap.pid",
            inspect_note: "Both processes map the same regular files in the runtime directory, <name>.mmap to meet and one <name>.session.mmap per session (its name removed once both have it mapped): their mappings show the path with s (shared) in the permissions, as for shm, but these are ordinary files on an ordinary file system. Their pages are the files' page-cache pages, so the kernel also writes them back from time to time (dirty pages); on a tmpfs such as /run/user that costs nothing, on a disk it is I/O the shm transport never does. The semaphores live inside the mapping.",
            capabilities: CAPABILITIES,
        };
        if self.file_backed() {
            &MMAP_ABOUT
        } else {
            &SHM_ABOUT
        }
    }
    fn leftovers(&self, dir: &Path) -> Vec<Leftover> {
        region::leftovers(self.spec, dir)
    }
    fn external_objects(&self, cfg: &Config) -> Vec<PathBuf> {
        region::external_objects(self.spec, cfg)
    }

    fn listen(&self, cfg: &Config) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(ShmServer {
            meeting: Meeting::listen(self.spec, cfg)?,
            cfg: cfg.clone(),
        }))
    }

    fn connect(&self, cfg: &Config) -> io::Result<Box<dyn Link>> {
        let (session, seat) = region::join(self.spec, cfg)?;
        Ok(Box::new(ShmLink::new(
            session,
            seat,
            cfg.timeout,
            cfg.timeout,
        )))
    }
}

struct ShmServer {
    meeting: Meeting,
    cfg: Config,
}

impl Listener for ShmServer {
    fn endpoint(&self) -> String {
        self.meeting.endpoint()
    }

    fn accept(&mut self, wait: Duration) -> io::Result<Option<Box<dyn Link>>> {
        let Some((session, seat)) = self.meeting.accept(wait)? else {
            return Ok(None);
        };
        let link = ShmLink::new(session, seat, self.cfg.idle_timeout, self.cfg.timeout);
        Ok(Some(Box::new(link)))
    }
}

/// One side of the session: reads one direction, writes the other.
struct ShmLink {
    session: Arc<Session>,
    /// Ends the session when the link is dropped (after `Drop::drop`).
    _seat: Seat,
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
        session: Arc<Session>,
        seat: Seat,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        ShmLink {
            session,
            _seat: seat,
            read_timeout,
            write_timeout,
            chunk: None,
            off: 0,
            eof: false,
        }
    }

    fn rx(&self) -> usize {
        if self.session.server_side { 0 } else { 1 }
    }

    fn dir(&self, d: usize) -> &Direction {
        &channel(&self.session.region).0[d]
    }

    fn area(&self, d: usize) -> *mut u8 {
        self.session.region.area(d, CAPACITY)
    }

    /// Put one chunk (`fill` writes at most `CAPACITY` bytes, returns how
    /// many) into the outgoing area, waiting until `deadline` for room.
    fn send_chunk(
        &self,
        deadline: Instant,
        fill: impl FnOnce(*mut u8) -> usize,
    ) -> io::Result<usize> {
        let tx = 1 - self.rx();
        let d = self.dir(tx);
        let s = &self.session;
        d.empty.wait(
            deadline,
            "waiting for the peer to take the last chunk",
            || s.check(),
        )?;
        let n = fill(self.area(tx));
        s.region.map.intact("the session region")?;
        d.len.store(n as u32, Ordering::SeqCst);
        d.full.post()?;
        Ok(n)
    }
}

impl Read for ShmLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let rx = self.rx();
        let d = &channel(&self.session.region).0[rx];
        let len = match self.chunk {
            Some(len) => len,
            None => {
                let s = &self.session;
                let deadline = Instant::now() + self.read_timeout;
                d.full
                    .wait(deadline, "waiting for the peer to send", || s.check())?;
                // Written by the peer: checked against the area (and a
                // region truncated under us reads 0, not end of stream).
                let len = d.len.load(Ordering::SeqCst) as usize;
                s.region.map.intact("the session region")?;
                if len > CAPACITY {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the peer announced a chunk of {len} bytes in a {CAPACITY}-byte area (a broken or hostile peer); ending the session"
                        ),
                    ));
                }
                if len == 0 {
                    // End of stream. Leave the slot consumed.
                    d.empty.post()?;
                    self.eof = true;
                    return Ok(0);
                }
                self.chunk = Some(len);
                self.off = 0;
                len
            }
        };
        let n = buf.len().min(len - self.off);
        // SAFETY: [off, off + n) lies in the area (len <= CAPACITY); the
        // writer does not touch it until we post `empty`.
        let area = self.session.region.area(rx, CAPACITY);
        unsafe { std::ptr::copy_nonoverlapping(area.add(self.off), buf.as_mut_ptr(), n) };
        self.session.region.map.intact("the session region")?;
        self.off += n;
        if self.off == len {
            self.chunk = None;
            d.empty.post()?;
        }
        Ok(n)
    }
}

impl Write for ShmLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.send_chunk(Instant::now() + self.write_timeout, |area| {
            super::gather(bufs, CAPACITY, |at, p| {
                // SAFETY: at most CAPACITY bytes into our own area, which the
                // reader does not touch until we post `full`.
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
        // End the peer's stream: the client waits a little for room, the
        // server only takes room that is there (a client that does not read
        // sees the session closed at its next check instead). Then the seat
        // ends the session.
        let wait = if self.session.server_side {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        if self.session.check().is_ok() {
            let _ = self.send_chunk(Instant::now() + wait, |_| 0);
        }
    }
}

/// For the hostile-peer tests: where a peer finds the fields of a session
/// region, as (full, empty, len) offsets per direction, and the data areas.
#[doc(hidden)]
pub mod layout {
    use super::*;
    /// Offsets of direction `d`'s `full`, `empty` and `len`.
    pub fn fields(d: usize) -> (usize, usize, usize) {
        let at = OWN_HEADER + d * size_of::<Direction>();
        (
            at + offset_of!(Direction, full),
            at + offset_of!(Direction, empty),
            at + offset_of!(Direction, len),
        )
    }
    /// Offset of direction `d`'s data area.
    pub fn area(d: usize) -> usize {
        DATA_OFFSET + d * CAPACITY
    }
}
