//! Bounded waits for system calls that have no timeout of their own.
//!
//! `msgrcv(2)` and `msgsnd(2)` block until a message (or room) comes, with
//! no timeout argument — a peer that dies would leave us waiting forever.
//! Polling with `IPC_NOWAIT` would bound the wait but ruin the latency we
//! want to measure.
//!
//! Instead: `signal(7)` guarantees that these calls are *never restarted*
//! after a signal handler ran; they fail with `EINTR`. So a thread about to
//! block publishes "waiting since T" in a slot of its own (two atomic stores
//! per call — no system call on the fast path), and one watchdog thread per
//! process wakes every [`PERIOD`] and sends a signal ([`wake_signal`], with an
//! empty handler) to every thread that has been blocked longer than that.
//! The interrupted thread checks its deadline and whether its peer is alive,
//! then either reports an error or blocks again.
//!
//! A wake signal that arrives just after the call returned interrupts some
//! later system call instead, which then fails with `EINTR`; every blocking
//! call in ipclab retries on `EINTR`, so that is harmless.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// How long a blocked call may wait before it is woken to check.
pub const PERIOD: Duration = Duration::from_millis(250);

/// The signal used to wake blocked threads: the highest real-time signal
/// (the low ones are left to the signal transport).
pub fn wake_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

struct Slot {
    thread: libc::pthread_t,
    /// Nanoseconds since [`epoch`] when the current wait began; 0 = not waiting.
    since: AtomicU64,
    gone: AtomicBool,
}

static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
static START: Once = Once::new();

fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

extern "C" fn on_wake(_: libc::c_int) {}

fn start_watchdog() {
    START.call_once(|| {
        // SAFETY: installs an empty handler without SA_RESTART; the handler
        // does nothing, so it is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(wake_signal(), &sa, std::ptr::null_mut());
        }
        let _ = epoch();
        std::thread::Builder::new()
            .name("ipclab-wake".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                loop {
                    std::thread::sleep(PERIOD);
                    let now = now_ns();
                    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
                    slots.retain(|s| !s.gone.load(Ordering::SeqCst));
                    for s in slots.iter() {
                        let since = s.since.load(Ordering::SeqCst);
                        if since != 0 && now.saturating_sub(since) >= PERIOD.as_nanos() as u64 {
                            // SAFETY: the thread is alive: a thread marks its
                            // slot gone under this lock before it exits.
                            unsafe { libc::pthread_kill(s.thread, wake_signal()) };
                        }
                    }
                }
            })
            .expect("cannot start the wake-up thread");
    });
}

struct Registration(Arc<Slot>);

impl Drop for Registration {
    fn drop(&mut self) {
        let _guard = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        self.0.gone.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    static SLOT: Registration = {
        start_watchdog();
        // SAFETY: pthread_self has no preconditions.
        let slot = Arc::new(Slot { thread: unsafe { libc::pthread_self() }, since: AtomicU64::new(0), gone: AtomicBool::new(false) });
        SLOTS.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&slot));
        Registration(slot)
    };
}

/// Run `call` — a blocking system call that fails with `EINTR` when a
/// signal handler runs — until it succeeds, fails otherwise, `deadline`
/// passes (`TimedOut` saying `waiting`), or `alive` reports the peer gone.
pub fn bounded<T>(
    deadline: Instant,
    waiting: &str,
    mut alive: impl FnMut() -> io::Result<()>,
    mut call: impl FnMut() -> nix::Result<T>,
) -> io::Result<T> {
    SLOT.with(|reg| {
        loop {
            reg.0.since.store(now_ns(), Ordering::SeqCst);
            let r = call();
            reg.0.since.store(0, Ordering::SeqCst);
            match r {
                Ok(v) => return Ok(v),
                Err(Errno::EINTR) => {
                    alive()?;
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("timed out {waiting} (--timeout sets the limit)"),
                        ));
                    }
                }
                Err(e) => return Err(crate::sysv::explain(e, waiting)),
            }
        }
    })
}

/// `read(2)` on a blocking `fd`, bounded by `timeout`: a plain read, with
/// no timer armed and no `poll` before it; the wake-up signal lets it look
/// at its deadline every [`PERIOD`].
pub fn read(fd: std::os::fd::RawFd, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
    bounded(
        Instant::now() + timeout,
        "waiting for the peer to send",
        || Ok(()),
        || {
            // SAFETY: a valid fd and buffer.
            Errno::result(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
                .map(|n| n as usize)
        },
    )
}

/// Is process `pid` still there and running? `kill(pid, 0)` says whether
/// the pid exists; a killed process whose parent has not reaped it yet (a
/// zombie, state `Z` in `/proc/<pid>/stat`) still exists but will never
/// answer, so it counts as gone.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH)
    {
        return false;
    }
    // "pid (comm) S …": the state follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(pid_alive(pid));
        child.kill().unwrap();
        // Killed but not reaped yet: a zombie.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

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
}
