//! The `SIGBUS` guard: a peer that truncates a shared file must not kill us.
//!
//! Whoever can write a file can also `ftruncate(2)` it, and touching a
//! mapped page past the new end of a file raises `SIGBUS`, whose default
//! action kills the process. So a `SIGBUS` handler (`sigaction(2)`,
//! `SA_SIGINFO`) looks the faulting address (`si_addr`) up among the
//! mappings registered here; if it is in one, it maps anonymous zero pages
//! over that whole mapping (`mmap(2)` with `MAP_FIXED`), marks it hit and
//! returns. The faulting access is retried and reads zeros (or writes into
//! private pages nobody reads), and the owner of the mapping checks the
//! mark before it uses anything it read. Any other `SIGBUS` goes to the
//! handler that was there before (Rust's own), or kills the process as it
//! would have.
//!
//! **A process-wide side effect**: a process has one handler per signal, so
//! the first `watch` installs this one for the whole process, for good.
//! Code that installs its own `SIGBUS` handler afterwards disables the
//! guard; code that installed one before is chained to. Only
//! [`super::mapped::Mapped`] calls `watch`.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// How many mappings one process can have watched at once.
const SLOTS: usize = 256;
/// Start and length of each watched mapping (length 0: a free slot;
/// usize::MAX: being filled in).
static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static HIT: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
static PREVIOUS: OnceLock<SigHandler> = OnceLock::new();

/// Watch `len` bytes mapped at `start` (installing the handler on first
/// use, for the whole process); returns the slot to ask [`hit`] and to
/// [`forget`] before the mapping goes.
pub(super) fn watch(start: usize, len: usize) -> io::Result<usize> {
    PREVIOUS.get_or_init(|| {
        let action = SigAction::new(
            SigHandler::SigAction(on_sigbus),
            SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
            SigSet::empty(),
        );
        // SAFETY: the handler only reads atomics, calls mmap(2) and the
        // previous handler — async-signal-safe.
        match unsafe { sigaction(Signal::SIGBUS, &action) } {
            Ok(old) => old.handler(),
            Err(_) => SigHandler::SigDfl,
        }
    });
    for i in 0..SLOTS {
        if LEN[i]
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            START[i].store(start, Ordering::Release);
            HIT[i].store(false, Ordering::Release);
            LEN[i].store(len, Ordering::Release);
            return Ok(i);
        }
    }
    Err(io::Error::other(format!(
        "more than {SLOTS} shared file mappings in one process"
    )))
}

/// Did a `SIGBUS` replace the mapping of `slot` with zero pages?
pub(super) fn hit(slot: usize) -> bool {
    HIT[slot].load(Ordering::Relaxed)
}

/// Stop watching `slot` (before its mapping is unmapped).
pub(super) fn forget(slot: usize) {
    LEN[slot].store(0, Ordering::Release);
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO.
    let addr = unsafe { (*info).si_addr() } as usize;
    for i in 0..SLOTS {
        let len = LEN[i].load(Ordering::Acquire);
        let start = START[i].load(Ordering::Acquire);
        if len != 0 && len != usize::MAX && addr >= start && addr - start < len {
            // Raw libc: the one call a signal handler may make here.
            // SAFETY: replaces our own mapping, same range, with zeros.
            unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            HIT[i].store(true, Ordering::Release);
            return;
        }
    }
    match PREVIOUS.get() {
        Some(SigHandler::SigAction(f)) => f(sig, info, ctx),
        Some(SigHandler::Handler(f)) => f(sig),
        _ => {
            // Not ours: die of it as if we had not been here.
            // SAFETY: resetting a disposition is async-signal-safe.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
    }
}
