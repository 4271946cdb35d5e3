//! `futex(2)`: sleeping on a 32-bit word of shared memory, and a
//! process-shared semaphore built on one such word.
//!
//! A futex is the kernel half of every blocking primitive on Linux: memory
//! holds the state, and the kernel only keeps a queue of sleepers per word.
//! `FUTEX_WAIT(word, expected)` sleeps if the word still holds `expected`
//! (checked atomically against a concurrent change, so a wake-up cannot be
//! lost between looking and sleeping); `FUTEX_WAKE(word)` wakes the
//! sleepers. The word lives in a page both processes map, so these are the
//! *shared* operations (no `FUTEX_PRIVATE_FLAG`): the kernel finds the
//! sleepers by the page, not by the address.
//!
//! # A semaphore whose every state is legal
//! [`Sem`] is a counting semaphore in one word: bits 0–30 are the count,
//! bit 31 says "someone sleeps on it". `post` adds one and, if the bit was
//! set, clears it and wakes the sleepers; `wait` takes one, or sets the bit
//! and sleeps. When the count is positive neither makes a system call.
//!
//! The word is in memory an untrusted peer writes. It can put any 32-bit
//! value there, and every one of them means something: a count (at worst a
//! spurious token, which the transport checks like any other message) with
//! or without sleepers (at worst a spurious wake-up). The only operations
//! are the two `futex` calls above on a word we pass ourselves, so no value
//! can make them fail in a way we cannot handle — unlike glibc's `sem_t`,
//! which keeps flags in the shared memory too and aborts the whole process
//! when a garbled flag makes `futex` fail ("The futex facility returned an
//! unexpected error code"). A count at its maximum makes `post` an error.
//!
//! Waits are always bounded: [`Sem::wait`] sleeps in slices of at most
//! [`SLICE`] (`FUTEX_WAIT`'s timeout is relative, on the monotonic clock)
//! and between slices asks the caller whether the peer is still there.
//!
//! See `futex(2)`, `futex(7)`, and Ulrich Drepper, "Futexes Are Tricky".

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// The longest single sleep before a waiter looks at its peer.
pub const SLICE: Duration = Duration::from_millis(250);

/// How a [`wait`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// Woken, interrupted, or the word no longer held the expected value:
    /// look at the state again.
    Again,
    /// The timeout passed.
    TimedOut,
}

/// `FUTEX_WAIT`: sleep at most `timeout` while `word` holds `expected`.
/// An error only if the word's page is gone (`EFAULT`).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> io::Result<Woke> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the kernel only reads the word (a valid, aligned u32 that
    // stays mapped while borrowed) and the timespec. nix has no futex.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts,
            0usize,
            0u32,
        )
    };
    if r == 0 {
        return Ok(Woke::Again);
    }
    match Errno::last() {
        Errno::ETIMEDOUT => Ok(Woke::TimedOut),
        Errno::EAGAIN | Errno::EINTR => Ok(Woke::Again),
        e => Err(io::Error::other(format!("futex(FUTEX_WAIT): {e}"))),
    }
}

/// `FUTEX_WAKE`: wake every sleeper on `word`.
pub fn wake(word: &AtomicU32) {
    // SAFETY: as in wait; the kernel does not even read the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        )
    };
}

/// In a [`Sem`]'s word: someone sleeps on it.
const SLEEPERS: u32 = 1 << 31;
/// In a [`Sem`]'s word: the count.
const COUNT: u32 = SLEEPERS - 1;

/// A process-shared semaphore: one word in shared memory (zero: count 0,
/// nobody asleep), used in place; see the module doc.
#[repr(transparent)]
pub struct Sem(AtomicU32);

impl Sem {
    /// Set the count of a semaphore nobody uses yet.
    pub fn init(&self, count: u32) {
        self.0.store(count & COUNT, Ordering::SeqCst);
    }

    /// Add one, waking the sleepers if there are any.
    pub fn post(&self) -> io::Result<()> {
        let mut v = self.0.load(Ordering::Relaxed);
        loop {
            if v & COUNT == COUNT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a shared semaphore's count is {COUNT}, its maximum (written by a broken or hostile peer)"
                    ),
                ));
            }
            match self.0.compare_exchange_weak(
                v,
                (v & COUNT) + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if v & SLEEPERS != 0 {
            wake(&self.0);
        }
        Ok(())
    }

    /// Take one if that is possible without waiting.
    pub fn try_wait(&self) -> bool {
        let mut v = self.0.load(Ordering::Relaxed);
        while v & COUNT != 0 {
            match self
                .0
                .compare_exchange_weak(v, v - 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
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
        loop {
            if self.try_wait() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out {waiting} (--timeout sets the limit)"),
                ));
            }
            // Count 0: say we sleep, then sleep while nothing changes.
            let v = self.0.load(Ordering::Relaxed);
            if v & COUNT != 0
                || (v & SLEEPERS == 0
                    && self
                        .0
                        .compare_exchange(v, v | SLEEPERS, Ordering::SeqCst, Ordering::Relaxed)
                        .is_err())
            {
                continue;
            }
            if wait(&self.0, v | SLEEPERS, left.min(SLICE))? == Woke::TimedOut {
                alive()?;
            }
        }
    }

    /// The current count (for tests and inspection).
    pub fn value(&self) -> u32 {
        self.0.load(Ordering::SeqCst) & COUNT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_then_wait_and_bounded_waits() {
        let s = Sem(AtomicU32::new(0));
        s.init(1);
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
        let s: &'static Sem = Box::leak(Box::new(Sem(AtomicU32::new(0))));
        let t = std::thread::spawn(move || {
            s.wait(Instant::now() + Duration::from_secs(5), "t", || Ok(()))
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        s.post().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn every_value_a_peer_writes_is_survived() {
        for v in [u32::MAX, COUNT, SLEEPERS, SLEEPERS | 1, 0xdead_beef, 7] {
            let s = Sem(AtomicU32::new(v));
            // A full count: post is an error, not an overflow.
            assert_eq!(s.post().is_err(), v & COUNT == COUNT, "{v:#x}");
            let s = Sem(AtomicU32::new(v));
            let r = s.wait(Instant::now() + Duration::from_millis(50), "t", || Ok(()));
            // A count takes at once; "sleepers" with count 0 times out.
            assert_eq!(r.is_ok(), v & COUNT != 0, "{v:#x}");
        }
    }
}
