//! The transport kit: pieces several transports share, written once.
//!
//! * [`message_link`] — a chunked byte link over any message channel
//!   (msgq, posix-mq, unix-seqpacket, unix-dgram).
//! * [`futex`] — sleeping on a word of shared memory (`futex(2)`), and
//!   [`futex::Sem`], a process-shared semaphore in one such word whose
//!   every value is legal: `shm` and `mmap` take turns with it, `shm-spin`
//!   and the region kit's meeting sleep on plain futex words.
//! * [`mapped`] — a file mapped `MAP_SHARED`, guarded by [`sigbus`]:
//!   `shm`, `mmap`, `shm-spin` (through [`super::region`]) and `flock` map
//!   everything they share with a peer through it.
//! * [`sigbus`] — the `SIGBUS` guard (a process-wide signal handler).
//! * [`objects`] — where the region kit's regions live: names, creating
//!   and replacing, opening and checking, leftovers; [`join`] — the
//!   client's side of the region kit. (The server's side and the protocol
//!   are [`super::region`].)
//!
//! # Why a guard, and not a file the peer cannot truncate
//! A peer that can write a shared file can also `ftruncate(2)` it, and a
//! touch of a mapped page past the new end raises `SIGBUS`, which kills.
//! Making truncation impossible would need a file whose size is sealed:
//! `memfd_create(2)` with `F_SEAL_SHRINK` (as the `eventfd` transport's
//! memfds could be), but the POSIX shared memory objects of `shm` and
//! `shm-spin` (`shm_open(3)`) and the regular files of `mmap` and `flock`
//! cannot be sealed, and the peer must be able to open them read-write by
//! name. So the kit survives truncation instead: every shared mapping is
//! registered with one `SIGBUS` handler that replaces a truncated mapping
//! with zero pages and marks it, and whoever uses the mapping checks the
//! mark and ends that session with an error. The cost is a process-wide
//! side effect — the handler — documented at [`mapped::Mapped`].

pub mod futex;
pub mod join;
pub mod mapped;
pub mod message_link;
pub mod objects;
pub mod sigbus;
