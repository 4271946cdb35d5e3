//! A thin, safe layer over POSIX unnamed semaphores placed in memory shared
//! between processes (`sem_init(3)` with `pshared = 1`), which nix does not
//! wrap.
//!
//! A semaphore is a counter in memory plus a kernel wait queue (a futex):
//! `post` adds one and wakes a waiter if there is one; `wait` takes one, or
//! sleeps in the kernel until it can. When the counter is positive neither
//! makes a system call — the fast path is one atomic instruction.
//!
//! Waits here are always bounded: [`SharedSem::wait`] sleeps in slices of at
//! most [`SLICE`] with `sem_clockwait(3)` on the monotonic clock (immune to
//! changes of the wall clock), and between slices asks the caller whether
//! the peer is still alive.
//!
//! See `sem_overview(7)`, `sem_init(3)`, `sem_post(3)`, `sem_wait(3)`.

use std::cell::UnsafeCell;
use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// The longest single sleep of a wait before the peer's liveness is checked.
pub const SLICE: Duration = Duration::from_millis(250);

unsafe extern "C" {
    // glibc >= 2.30; the libc crate does not declare it.
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// Storage for one semaphore inside a `#[repr(C)]` shared structure.
#[repr(C)]
pub struct SemCell(UnsafeCell<libc::sem_t>);

// SAFETY: a sem_t is designed to be used concurrently by many threads and
// processes; all access goes through the sem_* functions.
unsafe impl Sync for SemCell {}
unsafe impl Send for SemCell {}

/// A process-shared semaphore living in a [`SemCell`].
pub struct SharedSem<'a>(&'a SemCell);

impl<'a> SharedSem<'a> {
    /// Initialise the semaphore in `cell` with `value`, shared between
    /// processes.
    ///
    /// # Safety
    /// `cell` must be in memory every user maps shared (or process-private
    /// memory, for threads), and no one may be using the semaphore while it
    /// is (re)initialised.
    pub unsafe fn init(cell: &'a SemCell, value: u32) -> io::Result<Self> {
        // SAFETY: per the contract above.
        if unsafe { libc::sem_init(cell.0.get(), 1, value) } == -1 {
            return Err(io::Error::other(format!("sem_init: {}", Errno::last())));
        }
        Ok(SharedSem(cell))
    }

    /// Use a semaphore someone already initialised.
    ///
    /// # Safety
    /// `cell` must hold an initialised semaphore.
    pub unsafe fn existing(cell: &'a SemCell) -> Self {
        SharedSem(cell)
    }

    /// Add one, waking a waiter.
    pub fn post(&self) -> io::Result<()> {
        // SAFETY: initialised per the constructors' contracts.
        if unsafe { libc::sem_post(self.0.0.get()) } == -1 {
            let e = Errno::last();
            let why = if e == Errno::EOVERFLOW {
                " (the value would exceed SEM_VALUE_MAX)"
            } else {
                ""
            };
            return Err(io::Error::other(format!("sem_post: {e}{why}")));
        }
        Ok(())
    }

    /// Take one if that is possible without waiting.
    pub fn try_wait(&self) -> bool {
        // SAFETY: as in post.
        unsafe { libc::sem_trywait(self.0.0.get()) == 0 }
    }

    /// Take one, waiting until `deadline` at the latest. Every [`SLICE`],
    /// `alive` is asked whether it is still worth waiting (the peer exists);
    /// its error ends the wait.
    pub fn wait(
        &self,
        deadline: Instant,
        waiting: &str,
        mut alive: impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        if self.try_wait() {
            return Ok(());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out {waiting} (--timeout sets the limit)"),
                ));
            }
            let abstime = monotonic_after(left.min(SLICE));
            // SAFETY: as in post; abstime is a valid timespec.
            let r = unsafe { sem_clockwait(self.0.0.get(), libc::CLOCK_MONOTONIC, &abstime) };
            if r == 0 {
                return Ok(());
            }
            match Errno::last() {
                Errno::ETIMEDOUT => alive()?,
                Errno::EINTR => {}
                e => return Err(io::Error::other(format!("sem_clockwait: {e}"))),
            }
        }
    }

    /// The current value (for tests and inspection).
    pub fn value(&self) -> i32 {
        let mut v = 0;
        // SAFETY: as in post.
        unsafe { libc::sem_getvalue(self.0.0.get(), &mut v) };
        v
    }
}

fn monotonic_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let mut nsec = now.tv_nsec + d.subsec_nanos() as libc::c_long;
    let mut sec = now.tv_sec + d.as_secs() as libc::time_t;
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec += 1;
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    fn cell() -> Box<SemCell> {
        // SAFETY: a sem_t is plain bytes until sem_init.
        Box::new(SemCell(UnsafeCell::new(unsafe {
            MaybeUninit::zeroed().assume_init()
        })))
    }

    #[test]
    fn post_then_wait_and_bounded_waits() {
        let c = cell();
        let s = unsafe { SharedSem::init(&c, 1) }.unwrap();
        assert!(s.try_wait());
        assert!(!s.try_wait());
        s.post().unwrap();
        assert_eq!(s.value(), 1);
        s.wait(Instant::now() + Duration::from_secs(1), "t", || Ok(()))
            .unwrap();

        let start = Instant::now();
        let e = s
            .wait(
                Instant::now() + Duration::from_millis(300),
                "waiting",
                || Ok(()),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(300));

        let e = s
            .wait(Instant::now() + Duration::from_secs(30), "waiting", || {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer died"))
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn wakes_a_waiter_in_another_thread() {
        let c: &'static SemCell = Box::leak(cell());
        let s = unsafe { SharedSem::init(c, 0) }.unwrap();
        let t = std::thread::spawn(move || {
            let s = unsafe { SharedSem::existing(c) };
            s.wait(Instant::now() + Duration::from_secs(5), "t", || Ok(()))
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(20));
        s.post().unwrap();
        t.join().unwrap();
    }
}
