//! The thin layer over the system: what nix does not wrap, and the system
//! code several transports share. Nothing here knows a transport; each
//! module names the man pages it follows, and its `unsafe` (if any) in a
//! `# Safety` section.
//!
//! * [`interrupt`] — bounded waits for blocking calls with no timeout of
//!   their own (`msgrcv`, `read`, `F_OFD_SETLKW` …), by a wake-up signal;
//! * [`sysv`] — System V message queues and `ftok`;
//! * [`fd_link`] — a link over a pair of pipe or FIFO descriptors;
//! * [`unix_socket`] — UNIX socket files: bind, connect, `--same-user`;
//! * [`passed_fds`] — descriptors a peer passes (`SCM_RIGHTS`): owned at
//!   once, checked for what they claim to be;
//! * [`cpu`] — pinning a thread to a CPU.
//!
//! (`crate::transport::kit::futex` — `futex(2)` and a process-shared
//! semaphore on it — is the same kind of layer; it lives in the transport
//! kit beside the shared regions that use it.)

pub mod cpu;
pub mod fd_link;
pub mod interrupt;
pub mod passed_fds;
pub mod sysv;
pub mod unix_socket;
