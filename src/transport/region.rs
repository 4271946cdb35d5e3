//! The region kit: the life of a shared memory region, written once for the
//! three transports that talk through one (`shm`, `mmap`, `shm-spin`).
//!
//! A transport file holds its mechanism — how bytes and wake-ups cross a
//! mapped area — and this file holds what they all need around it:
//!
//! * **naming**: a POSIX shared memory object `/dev/shm/ipclab-<uid>-<hash>-<name>`
//!   (`shm_open(3)`) or a regular file `<dir>/<name>.mmap` (`open(2)`),
//!   both derived from the runtime directory so `ipclab clean` can find them;
//! * **creating** a region, replacing one left by a dead server (and only a
//!   region of ours: owner and magic are checked on the opened descriptor),
//!   and **mapping** an existing one after checking its size and magic;
//! * **the one-client slot and its sessions**, below;
//! * **leftovers**, for `ipclab clean` and for a starting server.
//!
//! # Two kinds of region: a meeting point and one region per session
//! The server creates a small **meeting region** under the well-known name.
//! It holds the server's pid, a `closed` flag, the one-client **slot** (the
//! pid of the client holding it, plus a "leaving" bit), a `connect` word the
//! server sleeps on in `futex(2)`, and the number of the **session region**
//! that is ready for the next client, `<name>.session`, made in advance so
//! that a full `/dev/shm` is an error at start-up.
//!
//! ```text
//!   client                                   server
//!   map the meeting region
//!   CAS slot 0 → my pid   (else: "busy")
//!   read the ready session's number n
//!   map <name>.session, check n, write my pid
//!   connect += 1, futex wake ───────────────▶ accept: slot holder = the pid in
//!                                               the session? unlink its name,
//!                                               serve the session
//!   … the transport's own protocol in the session region …
//!   drop: slot |= leaving                     end: session `closed` = 1,
//!                                               a new <name>.session (n+1),
//!                                               slot = 0
//! ```
//!
//! A session region is used by one session only. When it ends — the client
//! left, died, or stayed silent past the server's `--idle-timeout` — the
//! server marks it closed, lets go of it and offers a *fresh* region to the
//! next client. A client that outlived its session can still write into its
//! old mapping, but nobody reads it any more: its bytes cannot reach the next
//! session, and it learns within a quarter second that its session is over.
//! (The earlier design re-initialised one shared channel for every session,
//! under the feet of a late client that might still be blocked on it.)
//!
//! # Nothing a peer writes is trusted
//! The peer maps the same pages and can write any byte of them. The slot is
//! one 64-bit word, so "held by a live client" and "being left" are read
//! together; a claim that never became a session is freed after the
//! timeout; sizes are the transport's constants, never a field of the
//! region; and each transport checks every index or length the peer wrote
//! against its area before using it.
//!
//! # System calls
//! `shm_open(3)`/`open(2)` with `O_CREAT | O_EXCL`, `fstat(2)`,
//! `ftruncate(2)`, `posix_fallocate(3)`, `mmap(2)`, `shm_unlink(3)`/
//! `unlink(2)`, `futex(2)` (`FUTEX_WAIT`, `FUTEX_WAKE`), `kill(2)` with
//! signal 0.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{ftruncate, getuid};

use super::Config;
// `clean::` below is the objects layer under its old name (transitional).
use crate::objects::{self as clean, Leftover};
use crate::runtime::{self, CreatedPath, pid_alive};

/// Size of a meeting region.
const PAGE: usize = 4096;
/// Where a transport's own header starts in a session region.
pub(crate) const OWN_HEADER: usize = 256;
/// Where a session region's data areas start.
pub(crate) const DATA_OFFSET: usize = 4096;
/// The longest single sleep before a waiter looks at its peer.
pub(crate) const SLICE: Duration = Duration::from_millis(250);

const MEETING: u32 = 1;
const SESSION: u32 = 2;
/// In the slot word, above the holder's pid: the holder has left.
const LEAVING: u64 = 1 << 32;

/// What a transport tells the kit about its regions.
pub(crate) struct Spec {
    pub transport: &'static str,
    pub magic: u64,
    pub store: Store,
    /// Size of a session region (header page and data areas).
    pub session_size: usize,
    /// Initialise the transport's header of a fresh session region.
    pub init: fn(&Region) -> io::Result<()>,
}

/// Where regions live.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// `/dev/shm/ipclab-<tag><uid>-<hash>-<name>`, via `shm_open(3)`.
    Shm { tag: &'static str },
    /// `<dir>/<name><suffix>`, a regular file.
    File { suffix: &'static str },
}

/// The fields every region begins with.
#[repr(C)]
struct Common {
    magic: AtomicU64,
    kind: AtomicU32,
    server_pid: AtomicI32,
    /// Meeting: the server stopped. Session: the server ended the session.
    closed: AtomicU32,
    /// Meeting: bumped (then woken) by a client that joined a session.
    connect: AtomicU32,
    /// Meeting: the slot (holder pid | LEAVING). Session: unused.
    slot: AtomicU64,
    /// Meeting: number of the session region ready (0: none). Session: its own.
    session: AtomicU64,
    /// Session: the client that joined it.
    client_pid: AtomicI32,
}

const _: () = assert!(size_of::<Common>() <= OWN_HEADER);

/// One mapped region.
pub(crate) struct Region {
    map: MmapRaw,
}

impl Region {
    fn common(&self) -> &Common {
        // SAFETY: every region is at least a page, page-aligned; Common is
        // atomics only, valid for any bit pattern a peer may write.
        unsafe { &*(self.map.as_ptr() as *const Common) }
    }

    /// The transport's own header.
    ///
    /// # Safety
    /// `T` must be `#[repr(C)]`, fit between [`OWN_HEADER`] and
    /// [`DATA_OFFSET`], be aligned to at most 256, and consist of fields
    /// meant to be shared (atomics, semaphores).
    pub(crate) unsafe fn own<T>(&self) -> &T {
        unsafe { &*(self.map.as_ptr().add(OWN_HEADER) as *const T) }
    }

    /// Start of data area `i` of a session region whose areas are `cap` bytes.
    pub(crate) fn area(&self, i: usize, cap: usize) -> *mut u8 {
        debug_assert!(DATA_OFFSET + (i + 1) * cap <= self.map.len());
        // SAFETY: within the mapping, whose size was checked when mapped.
        unsafe { self.map.as_mut_ptr().add(DATA_OFFSET + i * cap) }
    }
}

/// The names of one server's regions.
#[derive(Clone)]
struct Names {
    spec: &'static Spec,
    dir: PathBuf,
    name: String,
}

/// One region's name: for `shm_open` and as a path.
struct Object {
    store: Store,
    shm: String,
    path: PathBuf,
}

impl Names {
    fn new(spec: &'static Spec, cfg: &Config) -> Names {
        let (dir, name) = (cfg.dir.clone(), cfg.name.clone());
        Names { spec, dir, name }
    }

    fn meeting(&self) -> Object {
        self.object(&self.name)
    }

    /// The session region on offer: `<name>.session`. (Its number is in
    /// its header; the name is free again once a client has it mapped.)
    fn session(&self) -> Object {
        self.object(&format!("{}.session", self.name))
    }

    fn object(&self, name: &str) -> Object {
        match self.spec.store {
            Store::Shm { tag } => {
                let shm = format!("{}{name}", prefix(tag, &self.dir));
                let path = PathBuf::from(format!("/dev/shm{shm}"));
                Object {
                    store: self.spec.store,
                    shm,
                    path,
                }
            }
            Store::File { suffix } => Object {
                store: self.spec.store,
                shm: String::new(),
                path: self.dir.join(format!("{name}{suffix}")),
            },
        }
    }
}

/// `/ipclab-<tag><uid>-<hash of dir>-`: the names of every server of `dir`.
fn prefix(tag: &str, dir: &Path) -> String {
    // FNV-1a: small, stable across runs and versions.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
    }
    format!("/ipclab-{tag}{}-{h:08x}-", getuid())
}

impl Object {
    fn open(&self, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
        match self.store {
            Store::Shm { .. } => shm_open(self.shm.as_str(), flags, mode),
            Store::File { .. } => nix::fcntl::open(&self.path, flags | OFlag::O_NOFOLLOW, mode),
        }
    }

    fn unlink(&self) -> nix::Result<()> {
        match self.store {
            Store::Shm { .. } => shm_unlink(self.shm.as_str()),
            Store::File { .. } => nix::unistd::unlink(&self.path),
        }
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Create, sized `size`, pages reserved; a dead server's region there is
    /// replaced, a live server's is an error, anything not ours is left alone.
    fn create(&self, spec: &Spec, size: usize) -> io::Result<(MmapRaw, CreatedPath)> {
        let name = self.shown();
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let mode = Mode::S_IRUSR | Mode::S_IWUSR;
        let fd = match self.open(flags, mode) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                let old = self.open(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
                let old = map(old, &name, spec, None)
                    .map_err(|e| io::Error::new(e.kind(), format!("{e}; not removing it")))?;
                let (pid, closed) = (
                    old.common().server_pid.load(Ordering::SeqCst),
                    old.common().closed.load(Ordering::SeqCst),
                );
                if pid_alive(pid) && closed == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "{name} is already in use by a live server (pid {pid}; pick another --name)"
                        ),
                    ));
                }
                self.unlink()?;
                self.open(flags, mode)?
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot create {name}: {e}"),
                ));
            }
        };
        let file = CreatedPath::adopt(self.path.clone())?;
        fchmod(&fd, mode)?;
        ftruncate(&fd, size as libc::off_t).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot size {name} to {size} bytes: {e}"),
            )
        })?;
        // Reserve the pages now: on a full tmpfs a sparse file maps fine and
        // the first store into a missing page kills the process with SIGBUS.
        nix::fcntl::posix_fallocate(&fd, 0, size as libc::off_t).map_err(|e| {
            let hint = if e == Errno::ENOSPC {
                " (/dev/shm is full: see `df -h /dev/shm` and `ipclab limits`)"
            } else {
                ""
            };
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot reserve {size} bytes for {name}: {e}{hint}"),
            )
        })?;
        Ok((MmapOptions::new().len(size).map_raw(&File::from(fd))?, file))
    }
}

/// Map an existing region of `spec` (of `kind`, or either): ours (owner
/// checked on the descriptor), exactly the size of its kind, with our magic.
fn map(fd: OwnedFd, name: &str, spec: &Spec, kind: Option<u32>) -> io::Result<Region> {
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != getuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{name} is not a file of ours (uid {})", meta.uid()),
        ));
    }
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not an ipclab {} region", spec.transport),
        )
    };
    let size = meta.len() as usize;
    let size_kind = match size {
        PAGE => MEETING,
        s if s == spec.session_size => SESSION,
        _ => return Err(bad()),
    };
    let region = Region {
        map: MmapOptions::new().len(size).map_raw(&file)?,
    };
    let c = region.common();
    if c.magic.load(Ordering::Acquire) != spec.magic
        || c.kind.load(Ordering::SeqCst) != size_kind
        || kind.is_some_and(|k| k != size_kind)
    {
        return Err(bad());
    }
    Ok(region)
}

fn ready_region(
    names: &Names,
    id: u64,
    kind: u32,
    size: usize,
) -> io::Result<(Region, CreatedPath)> {
    let (map, file) = names.object_for(kind).create(names.spec, size)?;
    let region = Region { map };
    let c = region.common();
    c.kind.store(kind, Ordering::SeqCst);
    c.server_pid
        .store(std::process::id() as i32, Ordering::SeqCst);
    c.session
        .store(if kind == SESSION { id } else { 0 }, Ordering::SeqCst);
    if kind == SESSION {
        (names.spec.init)(&region)?;
    }
    c.magic.store(names.spec.magic, Ordering::Release);
    Ok((region, file))
}

impl Names {
    fn object_for(&self, kind: u32) -> Object {
        if kind == MEETING {
            self.meeting()
        } else {
            self.session()
        }
    }
}

/// `futex(2)` `FUTEX_WAIT` on a word in shared memory (not private: the word
/// is in memory of two processes). EINTR, EAGAIN and ETIMEDOUT all return.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid, aligned u32 in memory that stays mapped; the kernel
    // only compares it and sleeps.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts,
            0usize,
            0,
        )
    };
}

/// `FUTEX_WAKE` every waiter on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0,
        )
    };
}

/// One side's view of a session: its region and who is at the other end.
pub(crate) struct Session {
    pub region: Region,
    /// The meeting region: the client sees the server stop in it, the
    /// server sees the client leave.
    meeting: Option<Arc<Region>>,
    pub peer: i32,
    pub server_side: bool,
}

impl Session {
    /// Is the session still on? Asked between the slices of every wait.
    pub(crate) fn check(&self) -> io::Result<()> {
        let gone = |why: String| Err(io::Error::new(io::ErrorKind::BrokenPipe, why));
        let peer = self.peer;
        if self.server_side {
            let slot = self
                .meeting
                .as_ref()
                .map(|m| m.common().slot.load(Ordering::SeqCst));
            if slot == Some(peer as u32 as u64 | LEAVING) {
                return gone(format!("the client (pid {peer}) left"));
            }
            return if pid_alive(peer) {
                Ok(())
            } else {
                gone(format!("the client (pid {peer}) died"))
            };
        }
        if self.region.common().closed.load(Ordering::SeqCst) != 0 {
            return gone("the server ended the session (silent for longer than its --idle-timeout, or it is stopping); connect again".into());
        }
        if self
            .meeting
            .as_ref()
            .is_some_and(|m| m.common().closed.load(Ordering::SeqCst) != 0)
        {
            return gone("the server stopped".into());
        }
        if !pid_alive(peer) {
            return gone(format!("the server (pid {peer}) died"));
        }
        Ok(())
    }
}

/// The server's side of the meeting region and of the sessions it hands out.
struct State {
    names: Names,
    meeting: Arc<Region>,
    /// The session region offered to the next client, and its name.
    ready: Option<(Region, CreatedPath, u64)>,
    count: u32,
    in_session: bool,
    stopped: bool,
    /// The last error preparing a region, said once.
    failing: Option<String>,
}

impl State {
    /// Offer a fresh session region, if none is offered.
    fn prepare(&mut self) -> io::Result<()> {
        if self.ready.is_some() || self.stopped {
            return Ok(());
        }
        self.count = self.count.wrapping_add(1).max(1);
        let id = (std::process::id() as u64) << 32 | self.count as u64;
        let (region, file) = ready_region(&self.names, id, SESSION, self.names.spec.session_size)?;
        self.meeting.common().session.store(id, Ordering::Release);
        self.ready = Some((region, file, id));
        Ok(())
    }

    fn prepare_or_say(&mut self) {
        match self.prepare() {
            Ok(()) => self.failing = None,
            Err(e) => {
                self.meeting.common().session.store(0, Ordering::SeqCst);
                let e = e.to_string();
                if self.failing.as_ref() != Some(&e) {
                    eprintln!("ipclab: cannot prepare a session region: {e}; retrying");
                    self.failing = Some(e);
                }
            }
        }
    }
}

/// The serving side: the meeting region and the session on offer.
pub(crate) struct Meeting {
    state: Arc<Mutex<State>>,
    meeting: Arc<Region>,
    shown: String,
    _file: CreatedPath,
    /// The `connect` count already answered.
    seen: u32,
    /// A claim of the slot not (yet) followed by a session, and since when.
    claim: Option<(u64, Instant)>,
    timeout: Duration,
}

impl Meeting {
    /// Create the meeting region and the first session region (so a full
    /// `/dev/shm` is an error now); a dead server's are replaced.
    pub(crate) fn listen(spec: &'static Spec, cfg: &Config) -> io::Result<Meeting> {
        runtime::prepare_dir(&cfg.dir)?;
        let names = Names::new(spec, cfg);
        let (meeting, file) = ready_region(&names, 0, MEETING, PAGE)?;
        let meeting = Arc::new(meeting);
        let shown = names.meeting().shown();
        let mut state = State {
            names,
            meeting: Arc::clone(&meeting),
            ready: None,
            count: 0,
            in_session: false,
            stopped: false,
            failing: None,
        };
        state.prepare()?;
        Ok(Meeting {
            seen: meeting.common().connect.load(Ordering::SeqCst),
            state: Arc::new(Mutex::new(state)),
            meeting,
            shown,
            _file: file,
            claim: None,
            timeout: cfg.timeout,
        })
    }

    pub(crate) fn endpoint(&self) -> String {
        self.shown.clone()
    }

    /// Wait at most `wait` for a client that joined the session on offer.
    pub(crate) fn accept(&mut self, wait: Duration) -> io::Result<Option<(Arc<Session>, Seat)>> {
        let deadline = Instant::now() + wait;
        loop {
            self.tend();
            let c = self.meeting.common().connect.load(Ordering::SeqCst);
            if c != self.seen {
                self.seen = c;
                if let Some(joined) = self.take() {
                    return Ok(Some(joined));
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            futex_wait(
                &self.meeting.common().connect,
                c,
                (deadline - now).min(SLICE),
            );
        }
    }

    /// The client holding the slot has joined the session on offer: it is
    /// its session now, and its name goes (the client has it mapped).
    fn take(&mut self) -> Option<(Arc<Session>, Seat)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self.meeting.common().slot.load(Ordering::SeqCst);
        let pid = slot as u32 as i32;
        let (region, _, _) = st.ready.as_ref()?;
        if st.in_session
            || slot & LEAVING != 0
            || pid <= 0
            || region.common().client_pid.load(Ordering::SeqCst) != pid
            || !pid_alive(pid)
        {
            return None;
        }
        let (region, name, _) = st.ready.take()?;
        drop(name);
        st.in_session = true;
        self.claim = None;
        let session = Arc::new(Session {
            region,
            meeting: Some(Arc::clone(&self.meeting)),
            peer: pid,
            server_side: true,
        });
        let seat = Seat {
            session: Some(Arc::clone(&session)),
            state: Some(Arc::clone(&self.state)),
            meeting: Arc::clone(&self.meeting),
            me: pid,
        };
        Some((session, seat))
    }

    /// Offer a region if none is; between sessions, free a slot whose
    /// holder left, died, or claimed it without joining within the timeout
    /// (offering a fresh region: the old one was in the claimant's hands).
    fn tend(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Also during a session: the next client's region is then ready
        // when this session ends.
        st.prepare_or_say();
        if st.in_session {
            return;
        }
        let slot = &self.meeting.common().slot;
        let v = slot.load(Ordering::SeqCst);
        let abandoned = v != 0
            && (v & LEAVING != 0
                || !pid_alive(v as u32 as i32)
                || self
                    .claim
                    .is_some_and(|(c, t)| c == v && t.elapsed() > self.timeout));
        if abandoned {
            // The claimant may have mapped the region on offer, and may
            // still write into it: the next client gets a fresh one.
            st.ready = None;
            st.prepare_or_say();
            let _ = slot.compare_exchange(v, 0, Ordering::SeqCst, Ordering::SeqCst);
            self.claim = None;
        } else if v != 0 && self.claim.is_none_or(|(c, _)| c != v) {
            self.claim = Some((v, Instant::now()));
        }
    }
}

impl Drop for Meeting {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.stopped = true;
        st.ready = None;
        self.meeting.common().closed.store(1, Ordering::SeqCst);
    }
}

/// A side's hold on its session. The server's ends the session when
/// dropped (after the link's own goodbye): the region is marked closed, a
/// fresh one offered, the slot freed. The client's marks the slot "leaving".
pub(crate) struct Seat {
    session: Option<Arc<Session>>,
    state: Option<Arc<Mutex<State>>>,
    meeting: Arc<Region>,
    me: i32,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let slot = &self.meeting.common().slot;
        let Some(state) = &self.state else {
            // Client: leaving, if the slot is still ours.
            let _ = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v as u32 as i32 == self.me).then_some(v | LEAVING)
            });
            return;
        };
        if let Some(s) = &self.session {
            s.region.common().closed.store(1, Ordering::SeqCst);
        }
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.in_session = false;
        st.prepare_or_say();
        slot.store(0, Ordering::SeqCst);
    }
}

/// The client's side: claim the slot, join the session on offer.
pub(crate) fn join(spec: &'static Spec, cfg: &Config) -> io::Result<(Arc<Session>, Seat)> {
    let names = Names::new(spec, cfg);
    let obj = names.meeting();
    let name = obj.shown();
    let t = spec.transport;
    let fd = obj
        .open(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| match e {
            Errno::ENOENT => io::Error::new(
                io::ErrorKind::NotFound,
                format!("no server: {name} does not exist (start one with `ipclab serve {t}`)"),
            ),
            e => io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot open {name}: {e}"),
            ),
        })?;
    let meeting = Arc::new(map(fd, &name, spec, Some(MEETING))?);
    let c = meeting.common();
    let server = c.server_pid.load(Ordering::SeqCst);
    if c.closed.load(Ordering::SeqCst) != 0 || !pid_alive(server) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the server of {name} (pid {server}) is gone: a stale region"),
        ));
    }
    // Claim the slot. One whose holder left or died is being freed by the
    // server: wait for that, within the timeout.
    let me = std::process::id() as i32;
    let deadline = Instant::now() + cfg.timeout;
    while let Err(v) =
        c.slot
            .compare_exchange(0, me as u32 as u64, Ordering::SeqCst, Ordering::SeqCst)
    {
        let holder = v as u32 as i32;
        if v & LEAVING == 0 && pid_alive(holder) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "busy: the {t} server serves one client at a time, and pid {holder} is connected"
                ),
            ));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server did not free the slot of departed client pid {holder} in time"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // From here on, a failure leaves the slot (the seat marks it).
    let seat = Seat {
        session: None,
        state: None,
        meeting: Arc::clone(&meeting),
        me,
    };
    let id = c.session.load(Ordering::Acquire);
    let sobj = names.session();
    let sname = sobj.shown();
    let fd = sobj
        .open(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "the server offers no session region ({sname}: {e}); see the server's messages"
                ),
            )
        })?;
    let region = map(fd, &sname, spec, Some(SESSION))?;
    let sc = region.common();
    if sc.session.load(Ordering::SeqCst) != id || sc.server_pid.load(Ordering::SeqCst) != server {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{sname} is not the session region of server pid {server}"),
        ));
    }
    sc.client_pid.store(me, Ordering::SeqCst);
    c.connect.fetch_add(1, Ordering::SeqCst);
    futex_wake(&c.connect);
    let session = Arc::new(Session {
        region,
        meeting: Some(meeting),
        peer: server,
        server_side: false,
    });
    Ok((session, seat))
}

/// `ipclab clean`: the regions of `dir`'s servers, judged by their server.
pub(crate) fn leftovers(spec: &'static Spec, dir: &Path) -> Vec<Leftover> {
    let (what, paths): (&str, Vec<PathBuf>) = match spec.store {
        Store::Shm { tag } => {
            let prefix = prefix(tag, dir);
            let Ok(entries) = std::fs::read_dir("/dev/shm") else {
                return Vec::new();
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix[1..]))
                .map(|n| PathBuf::from(format!("/dev/shm/{n}")))
                .collect();
            found.sort();
            ("POSIX shm object", found)
        }
        Store::File { suffix } => (
            "mapped file",
            clean::files_with_suffix(dir, suffix)
                .into_iter()
                .map(|(_, p)| p)
                .collect(),
        ),
    };
    paths
        .into_iter()
        .map(|path| {
            let obj = match spec.store {
                Store::Shm { .. } => {
                    let n = path.file_name().unwrap_or_default().to_string_lossy();
                    Object {
                        store: spec.store,
                        shm: format!("/{n}"),
                        path: path.clone(),
                    }
                }
                Store::File { .. } => Object {
                    store: spec.store,
                    shm: String::new(),
                    path: path.clone(),
                },
            };
            Leftover::judge_file(
                spec.transport,
                what,
                &path,
                |t| t.is_file(),
                || {
                    let fd = obj.open(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
                    // Not a region of ours (or one whose server died in the
                    // instant between creating and initialising it: the two
                    // cannot be told apart, so it is left alone).
                    let r = map(fd, &obj.shown(), spec, None)?;
                    let pid = r.common().server_pid.load(Ordering::SeqCst);
                    Ok(if r.common().closed.load(Ordering::SeqCst) == 0 {
                        clean::pid_verdict("server", pid)
                    } else {
                        Err(format!("its server, pid {pid}, has stopped"))
                    })
                },
            )
        })
        .collect()
}

/// The meeting region of a server of `cfg`, if outside its runtime
/// directory. (The session region's name exists only between sessions;
/// `leftovers` finds both.)
pub(crate) fn external_objects(spec: &'static Spec, cfg: &Config) -> Vec<PathBuf> {
    let names = Names::new(spec, cfg);
    match spec.store {
        Store::Shm { .. } => vec![names.meeting().path],
        Store::File { .. } => Vec::new(),
    }
}

/// For the hostile-peer tests: join a server's session as its client would
/// and get the raw mapping, to write what a lying peer writes.
#[doc(hidden)]
pub mod peer {
    use super::*;

    /// A joined session, held until dropped.
    pub struct Raw {
        session: Arc<Session>,
        _seat: Seat,
    }

    impl Raw {
        /// Join the server of `transport` (`shm`, `mmap`, `shm-spin`).
        pub fn join(transport: &str, cfg: &Config) -> io::Result<Raw> {
            let spec = match transport {
                "shm" | "mmap" => super::super::shm::spec_of(transport),
                "shm-spin" => &super::super::shm_spin::SPEC,
                t => return Err(io::Error::other(format!("{t} has no region"))),
            };
            let (session, _seat) = join(spec, cfg)?;
            Ok(Raw { session, _seat })
        }
        /// The session region: its first byte and its size.
        pub fn session(&self) -> (*mut u8, usize) {
            let m = &self.session.region.map;
            (m.as_mut_ptr(), m.len())
        }
        /// The meeting region (one page), as the client maps it.
        pub fn meeting(&self) -> *mut u8 {
            self.session
                .meeting
                .as_ref()
                .map_or(std::ptr::null_mut(), |m| m.map.as_mut_ptr())
        }
        /// Has the server ended this session?
        pub fn closed(&self) -> bool {
            self.session.region.common().closed.load(Ordering::SeqCst) != 0
        }
    }
}
