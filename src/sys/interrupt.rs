//! Bounded waits for system calls that have no timeout of their own.
//!
//! `msgrcv(2)` and `msgsnd(2)` block until a message (or room) comes, with
//! no timeout argument — a peer that dies would leave us waiting forever.
//! Polling with `IPC_NOWAIT` would bound the wait but ruin the latency we
//! want to measure.
//!
//! Instead: `signal(7)` guarantees that these calls are *never restarted*
//! after a signal handler ran; they fail with `EINTR`. So a thread about to
//! block publishes "in wait number N" in a slot of its own, and "done" after
//! it: two plain stores per call, no system call and no clock read on the
//! fast path. One watchdog thread per process looks at the slots every
//! [`TICK`]; a thread found in the same wait for [`PERIOD`] gets a signal
//! ([`wake_signal`], with an empty handler). The interrupted thread checks
//! its deadline and whether its peer is alive, then either reports an error
//! or blocks again.
//!
//! The clock is read only once a call has been interrupted: a deadline given
//! as a duration ([`Deadline::After`]) starts counting then, so a wait can
//! last up to [`PERIOD`] + [`TICK`] longer than asked. (Reading the clock
//! before every `read(2)` cost about 2% of a same-core pipe round trip.)
//!
//! A wake signal that arrives just after the call returned interrupts some
//! later system call instead, which then fails with `EINTR`; every blocking
//! call in ipclab retries on `EINTR`, so that is harmless.
//!
//! # Side effects on the whole process
//! The first bounded call in a process (any [`bounded`] or [`read`], which
//! every transport's blocking wait goes through) does two things that last
//! as long as the process:
//! * it installs a handler for [`wake_signal`] (`SIGRTMAX`) with
//!   `sigaction(2)`, without `SA_RESTART`, replacing any handler the
//!   program had for that signal;
//! * it starts one watchdog thread, `ipclab-wake`, which never ends.
//!
//! A program that embeds ipclab must leave `SIGRTMAX` to it and must not
//! block it in threads that make bounded calls (they would then wait out
//! their whole deadline instead of a quarter second at a time).
//!
//! # Errors
//! A call that fails with anything but `EINTR` ends the wait. How its errno
//! is worded is the caller's: [`CallError`] is implemented generically for
//! [`Errno`] (the call that was waiting, and the errno's own text), and a
//! layer with errors of its own words them itself (System V IPC:
//! [`crate::sys::sysv::SysvError`]).
//!
//! # Safety
//! The `unsafe` here: `sigaction(2)` installs an empty handler (nothing in
//! it, so it is async-signal-safe, `signal-safety(7)`); `pthread_kill(3)`
//! targets only threads whose slot says they are alive; `pthread_self(3)`
//! has no preconditions; `read(2)` gets a buffer of the length it is told.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// How long a blocked call may wait before it is woken to check.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How often the watchdog looks: a blocked call is woken between
/// [`PERIOD`] and [`PERIOD`] + `TICK` after it began.
pub const TICK: Duration = Duration::from_millis(50);

/// When a bounded wait gives up.
#[derive(Clone, Copy, Debug)]
pub enum Deadline {
    /// At this instant.
    At(Instant),
    /// This long after the call was first interrupted (see the module doc):
    /// nothing is computed unless the call blocks for a while.
    After(Duration),
}

/// The signal used to wake blocked threads: the highest real-time signal
/// (the low ones are left to the signal transport).
pub fn wake_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

struct Slot {
    thread: libc::pthread_t,
    /// Written by the thread only: the number of its waits so far times
    /// two, plus one while it is in one.
    state: AtomicU64,
    /// Read and written by the watchdog only: the state it saw, and when
    /// it first saw it.
    seen: AtomicU64,
    seen_at: Mutex<Option<Instant>>,
    gone: AtomicBool,
}

static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
static START: Once = Once::new();

extern "C" fn on_wake(_: libc::c_int) {}

fn start_watchdog() {
    START.call_once(|| {
        // SAFETY (sigaction(2), signal-safety(7)): installs an empty handler
        // without SA_RESTART; the handler does nothing, so it is
        // async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(wake_signal(), &sa, std::ptr::null_mut());
        }
        std::thread::Builder::new()
            .name("ipclab-wake".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                loop {
                    std::thread::sleep(TICK);
                    let now = Instant::now();
                    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
                    slots.retain(|s| !s.gone.load(Ordering::SeqCst));
                    for s in slots.iter() {
                        let state = s.state.load(Ordering::Acquire);
                        let mut at = s.seen_at.lock().unwrap_or_else(|p| p.into_inner());
                        if state & 1 == 0 {
                            *at = None;
                            continue;
                        }
                        if s.seen.swap(state, Ordering::Relaxed) != state || at.is_none() {
                            // A wait begun since the last look.
                            *at = Some(now);
                        } else if at.is_some_and(|t| now - t >= PERIOD) {
                            // SAFETY (pthread_kill(3)): the thread is alive: a
                            // thread marks its slot gone under this lock
                            // before it exits.
                            unsafe { libc::pthread_kill(s.thread, wake_signal()) };
                            *at = Some(now);
                        }
                    }
                }
            })
            .expect("cannot start the wake-up thread");
    });
}

struct Registration(Arc<Slot>);

impl From<Instant> for Deadline {
    fn from(t: Instant) -> Deadline {
        Deadline::At(t)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _guard = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        self.0.gone.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    static SLOT: Registration = {
        start_watchdog();
        // SAFETY (pthread_self(3)): no preconditions.
        let slot = Arc::new(Slot {
            thread: unsafe { libc::pthread_self() },
            state: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            seen_at: Mutex::new(None),
            gone: AtomicBool::new(false),
        });
        SLOTS.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&slot));
        Registration(slot)
    };
}

/// The error of a call that [`bounded`] runs: it tells `EINTR` apart from
/// the other failures, and puts those in words.
pub trait CallError {
    /// Did the call fail with `EINTR` (a signal handler ran)?
    fn interrupted(&self) -> bool;
    /// The failure as an error for people; `waiting` says what the call
    /// was waiting for.
    fn explain(self, waiting: &str) -> io::Error;
}

/// Any system call's errno, worded generically: what was being waited
/// for, then the errno's own text (`strerror(3)`), with the matching
/// [`io::ErrorKind`].
impl CallError for Errno {
    fn interrupted(&self) -> bool {
        *self == Errno::EINTR
    }
    fn explain(self, waiting: &str) -> io::Error {
        io::Error::new(io::Error::from(self).kind(), format!("{waiting}: {self}"))
    }
}

/// Run `call` — a blocking system call that fails with `EINTR` when a
/// signal handler runs — until it succeeds, fails otherwise (worded by its
/// [`CallError`]), `deadline` passes (`TimedOut` saying `waiting`), or
/// `alive` reports the peer gone.
///
/// The first call in a process installs the `SIGRTMAX` handler and starts
/// the watchdog thread (see the module doc).
pub fn bounded<T, E: CallError>(
    deadline: impl Into<Deadline>,
    waiting: &str,
    mut alive: impl FnMut() -> io::Result<()>,
    mut call: impl FnMut() -> Result<T, E>,
) -> io::Result<T> {
    let mut deadline = deadline.into();
    SLOT.with(|reg| {
        let state = &reg.0.state;
        loop {
            // Only this thread writes `state`: no read-modify-write needed.
            let waiting_now = (state.load(Ordering::Relaxed) | 1) + 2;
            state.store(waiting_now, Ordering::Release);
            let r = call();
            state.store(waiting_now - 1, Ordering::Release);
            match r {
                Ok(v) => return Ok(v),
                Err(e) if e.interrupted() => {
                    alive()?;
                    let now = Instant::now();
                    let at = match deadline {
                        Deadline::At(t) => t,
                        Deadline::After(d) => now + d,
                    };
                    deadline = Deadline::At(at);
                    if now >= at {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("timed out {waiting} (--timeout sets the limit)"),
                        ));
                    }
                }
                Err(e) => return Err(e.explain(waiting)),
            }
        }
    })
}

/// `read(2)` on a blocking `fd`, bounded by `timeout`: a plain read, with
/// no timer armed and no `poll` before it; the wake-up signal lets it look
/// at its deadline every [`PERIOD`]. Like [`bounded`], the first call
/// installs the `SIGRTMAX` handler and starts the watchdog thread.
pub fn read(fd: std::os::fd::RawFd, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
    bounded(
        Deadline::After(timeout),
        "waiting for the peer to send",
        || Ok(()),
        || {
            // SAFETY (read(2)): the kernel writes at most `buf.len()` bytes
            // into `buf`; a bad fd is an error (EBADF), not undefined.
            Errno::result(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
                .map(|n| n as usize)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_blocking_call_is_bounded() {
        // A pipe nobody writes to: read(2) would block forever.
        let (r, _w) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        let err = bounded(
            Instant::now() + Duration::from_millis(600),
            "reading an idle pipe",
            || Ok(()),
            || nix::unistd::read(&r, &mut [0u8; 8]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn a_relative_deadline_counts_from_the_first_wake_up() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        let err = read(r.as_raw_fd(), &mut [0u8; 8], Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Woken after PERIOD (+ up to a TICK), then 300 ms more.
        let took = start.elapsed();
        assert!(
            took >= PERIOD + Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn a_dead_peer_ends_the_wait() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let err = bounded(
            Instant::now() + Duration::from_secs(30),
            "reading",
            || Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer died")),
            || nix::unistd::read(&r, &mut [0u8; 8]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_failed_call_is_worded_generically() {
        // A pipe read's failure is not a System V error: no word of
        // message queues in it.
        let err = bounded(
            Deadline::After(Duration::from_secs(1)),
            "waiting for the peer to send",
            || Ok(()),
            || Err::<(), _>(Errno::EINVAL),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.starts_with("waiting for the peer to send: "), "{text}");
        assert!(!text.contains("msgmax"), "{text}");
    }
}
