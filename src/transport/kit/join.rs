//! The client's side of the region kit ([`crate::transport::region`]):
//! learn from the server's pid file whether it runs (never from the
//! meeting region's words, which any peer can write), claim the one-client
//! slot in the meeting region, map the session region on offer, check it is
//! the one the meeting names, and tell the server.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::futex;
use super::objects::{Names, map};
use crate::runtime::{self, pid_alive};
use crate::transport::Config;
use crate::transport::region::{LEAVING, MEETING, SESSION, Seat, Session, Spec};

/// The client's side: claim the slot, join the session on offer.
///
/// Process-wide side effect: the regions are mapped through
/// [`super::mapped::Mapped`], so the first call installs the kit's
/// `SIGBUS` handler for the whole process ([`super::sigbus`]).
pub(crate) fn join(spec: &'static Spec, cfg: &Config) -> io::Result<(Arc<Session>, Seat)> {
    let names = Names::new(spec, cfg);
    let obj = names.meeting();
    let name = obj.shown();
    let t = spec.transport;
    // Whether the server runs: its pid file, which no peer can write (the
    // meeting region's `server_pid` and `closed` words are any peer's).
    let pid_file = names.pid_path();
    let server = runtime::live_server_pid(&pid_file, t)?;
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
    // Its number is the server's pid and a count: the region of this server.
    if sc.session.load(Ordering::SeqCst) != id || (id >> 32) as i32 != server {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{sname} is not the session region of server pid {server}"),
        ));
    }
    sc.client_pid.store(me, Ordering::SeqCst);
    c.connect.fetch_add(1, Ordering::SeqCst);
    futex::wake(&c.connect);
    let session = Arc::new(Session {
        region,
        meeting: Some(meeting),
        peer: server,
        server_side: false,
        pid_file: Some(pid_file),
    });
    Ok((session, seat))
}

/// For the hostile-peer tests: join a server's session as its client would
/// and get the raw mapping, to write what a lying peer writes.
#[doc(hidden)]
pub mod peer {
    use super::*;
    use crate::transport::{shm, shm_spin};

    /// A joined session, held until dropped.
    pub struct Raw {
        session: Arc<Session>,
        _seat: Seat,
    }

    impl Raw {
        /// Join the server of `transport` (`shm`, `mmap`, `shm-spin`).
        pub fn join(transport: &str, cfg: &Config) -> io::Result<Raw> {
            let spec = match transport {
                "shm" | "mmap" => shm::spec_of(transport),
                "shm-spin" => &shm_spin::SPEC,
                t => return Err(io::Error::other(format!("{t} has no region"))),
            };
            let (session, _seat) = join(spec, cfg)?;
            Ok(Raw { session, _seat })
        }
        /// The session region: its first byte and its size.
        pub fn session(&self) -> (*mut u8, usize) {
            let m = &self.session.region.map;
            (m.ptr(), m.size())
        }
        /// The meeting region (one page), as the client maps it.
        pub fn meeting(&self) -> *mut u8 {
            self.session
                .meeting
                .as_ref()
                .map_or(std::ptr::null_mut(), |m| m.map.ptr())
        }
        /// Has the server ended this session?
        pub fn closed(&self) -> bool {
            self.session.region.common().closed.load(Ordering::SeqCst) != 0
        }
    }
}
