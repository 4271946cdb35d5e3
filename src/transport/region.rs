//! The region kit: the life of a shared memory region, written once for the
//! three transports that talk through one (`shm`, `mmap`, `shm-spin`).
//!
//! A transport file holds its mechanism — how bytes and wake-ups cross a
//! mapped area — and this file holds what they all need around it:
//!
//! * **naming, creating and mapping** regions, in [`super::kit::objects`]:
//!   a POSIX shared memory object `/dev/shm/ipclab-<uid>-<hash>-<name>` or
//!   a regular file `<dir>/<name>.mmap`, only ever one of ours (owner, size
//!   and magic checked on the opened descriptor), mapped through the kit's
//!   [`Mapped`], which survives a peer that truncates the region;
//! * **the one-client slot and its sessions**, below (the client's side,
//!   joining, in [`super::kit::join`]);
//! * **leftovers**, for `ipclab clean` and for a starting server (also in
//!   [`super::kit::objects`]).
//!
//! # Two kinds of region: a meeting point and one region per session
//! The server creates a small **meeting region** under the well-known name.
//! It holds the server's pid and a `closed` flag (hints; the pid file says
//! whether the server runs), the one-client **slot** (the
//! pid of the client holding it, plus a "leaving" bit), a `connect` word the
//! server sleeps on in `futex(2)`, and the number of the **session region**
//! that is ready for the next client, `<name>.session`, made in advance so
//! that a full `/dev/shm` is an error at start-up.
//!
//! ```text
//!   client                                   server
//!   read <name>.<transport>.pid: alive?      (holds that pid file)
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
//! The peer maps the same pages and can write any byte of them. Whether
//! the server is alive is therefore never read from a region: the server
//! holds a pid file, `<dir>/<name>.<transport>.pid`, in its 0700 runtime
//! directory from before its first region to after its last, and clients,
//! `ipclab clean` and a starting server judge by it (see
//! [`super::kit::objects`]); the meeting's `server_pid` and `closed` words
//! are only hints. The slot is
//! one 64-bit word, so "held by a live client" and "being left" are read
//! together; a claim that never became a session is freed after the
//! timeout; sizes are the transport's constants, never a field of the
//! region; and each transport checks every index or length the peer wrote
//! against its area before using it.
//!
//! # A peer that truncates a region
//! Either side can `ftruncate(2)` a region it has open; the other side's
//! next touch of a page past the new end would be `SIGBUS`. The kit's
//! `SIGBUS` guard ([`super::kit::sigbus`], a process-wide handler) turns the
//! mapping into zero pages instead, and marks it: `Session::check`, asked
//! between the slices of every wait, and the transports after each copy out
//! of a region, end the session with an error. A truncated meeting region
//! is replaced by a fresh one by the server's accept loop, a truncated
//! region on offer by a fresh region.
//!
//! # System calls
//! Those of [`super::kit::objects`] (`shm_open(3)`, `open(2)`,
//! `ftruncate(2)`, `mmap(2)` …), `futex(2)` (`FUTEX_WAIT`, `FUTEX_WAKE`),
//! `kill(2)` with signal 0, `sigaction(2)` (`SIGBUS`, once per process).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Config;
use super::kit::futex;
pub(crate) use super::kit::join::join;
#[doc(hidden)]
pub use super::kit::join::peer;
use super::kit::objects::{Names, ready_region};
pub(crate) use super::kit::objects::{external_objects, leftovers};
use crate::runtime::{self, CreatedPath, pid_alive};

pub(crate) use super::kit::futex::SLICE;
pub(crate) use super::kit::objects::{
    DATA_OFFSET, LEAVING, MEETING, OWN_HEADER, PAGE, Region, SESSION, Spec, Store,
};

/// One side's view of a session: its region and who is at the other end.
pub(crate) struct Session {
    pub region: Region,
    /// The meeting region: the client sees the server stop in it, the
    /// server sees the client leave.
    pub(crate) meeting: Option<Arc<Region>>,
    pub peer: i32,
    pub server_side: bool,
    /// The client's: the server's pid file, which says whether the
    /// server still runs when the meeting region's `closed` (a word any
    /// peer can write) says it stopped.
    pub(crate) pid_file: Option<PathBuf>,
}

impl Session {
    /// Is the session still on? Asked between the slices of every wait.
    pub(crate) fn check(&self) -> io::Result<()> {
        let gone = |why: String| Err(io::Error::new(io::ErrorKind::BrokenPipe, why));
        let peer = self.peer;
        self.region.map.intact("the session region")?;
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
        // A hint, re-checked: a peer can write the meeting's `closed`, not
        // the server's pid file.
        if self
            .meeting
            .as_ref()
            .is_some_and(|m| m.common().closed.load(Ordering::SeqCst) != 0)
            && self
                .pid_file
                .as_ref()
                .is_none_or(|p| runtime::read_pid_file(p).ok() != Some(peer))
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
pub(crate) struct State {
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
    /// The meeting region's name (None: being replaced).
    file: Option<CreatedPath>,
    /// The `connect` count already answered.
    seen: u32,
    /// A claim of the slot not (yet) followed by a session, and since when.
    claim: Option<(u64, Instant)>,
    timeout: Duration,
    /// `<dir>/<name>.<transport>.pid`: what says this server is alive
    /// ([`super::kit::objects`]). Last, so it goes after the regions.
    _pid_file: CreatedPath,
}

impl Meeting {
    /// Create the meeting region and the first session region (so a full
    /// `/dev/shm` is an error now); a dead server's are replaced.
    ///
    /// Process-wide side effect: installs the kit's `SIGBUS` handler
    /// ([`super::kit::sigbus`]) if no mapping has yet.
    pub(crate) fn listen(spec: &'static Spec, cfg: &Config) -> io::Result<Meeting> {
        runtime::prepare_dir(&cfg.dir)?;
        let names = Names::new(spec, cfg);
        // First: a live server's pid file makes this one fail "already in
        // use", and any region under our names is then a dead server's.
        let pid_file = runtime::create_pid_file(&names.pid_path())?;
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
            file: Some(file),
            claim: None,
            timeout: cfg.timeout,
            _pid_file: pid_file,
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
            let _ = futex::wait(
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
        // The next client's region, before this session's first reply:
        // a server stopped (or killed) once it has answered leaves none
        // half-made.
        st.prepare_or_say();
        self.claim = None;
        let session = Arc::new(Session {
            region,
            meeting: Some(Arc::clone(&self.meeting)),
            peer: pid,
            server_side: true,
            pid_file: None,
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
        let state = Arc::clone(&self.state);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if self.meeting.map.truncated() {
            self.replace_meeting(&mut st);
        }
        // A region on offer truncated by someone: its last page is gone.
        if st.ready.as_ref().is_some_and(|(r, _, _)| !r.map.probe()) {
            st.ready = None;
        }
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

impl Meeting {
    /// Someone truncated the meeting region: put a fresh one under its
    /// name (a session going on keeps the old one, which only it reads).
    fn replace_meeting(&mut self, st: &mut State) {
        self.file = None; // removes the name, if it is still our object's
        match ready_region(&st.names, 0, MEETING, PAGE) {
            Ok((meeting, file)) => {
                eprintln!("ipclab: the meeting region was truncated (by a client?); replaced it");
                self.meeting = Arc::new(meeting);
                self.file = Some(file);
                self.seen = 0;
                self.claim = None;
                st.meeting = Arc::clone(&self.meeting);
                // A fresh region on offer, numbered in the new meeting.
                st.ready = None;
            }
            Err(e) => {
                let e = format!("cannot replace the truncated meeting region: {e}");
                if st.failing.as_ref() != Some(&e) {
                    eprintln!("ipclab: {e}; retrying");
                    st.failing = Some(e);
                }
            }
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
    pub(crate) session: Option<Arc<Session>>,
    /// The server's state (None on the client's side).
    pub(crate) state: Option<Arc<Mutex<State>>>,
    pub(crate) meeting: Arc<Region>,
    pub(crate) me: i32,
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
