//! `ipclab limits`: the kernel limits that shape each mechanism, read live
//! from this machine (`/proc/sys`, `getrlimit(2)`, `fcntl(F_GETPIPE_SZ)`,
//! `statvfs(3)`), each with the transport it affects and what happens when
//! it is reached.

use std::io;

use serde::Serialize;

/// One limit, as read now.
#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    pub name: String,
    /// The value as read, or why it could not be read.
    pub value: String,
    /// Where it was read from.
    pub source: String,
    pub transports: String,
    pub when_reached: String,
}

fn proc_value(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) => format!("unreadable ({e})"),
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> String {
    // SAFETY: plain out-parameter.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return format!("unreadable ({})", io::Error::last_os_error());
    }
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    format!("soft {} / hard {}", show(r.rlim_cur), show(r.rlim_max))
}

/// The default capacity of a new pipe, by asking one.
fn pipe_capacity() -> String {
    match nix::unistd::pipe() {
        Ok((r, _w)) => {
            // SAFETY: valid fd.
            let n = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&r), libc::F_GETPIPE_SZ) };
            if n < 0 {
                format!("unreadable ({})", io::Error::last_os_error())
            } else {
                format!("{n} bytes")
            }
        }
        Err(e) => format!("unreadable ({e})"),
    }
}

fn dev_shm_size() -> String {
    match nix::sys::statvfs::statvfs("/dev/shm") {
        Ok(s) => {
            let total = s.blocks() * s.fragment_size();
            let free = s.blocks_available() * s.fragment_size();
            format!(
                "{} total, {} free",
                crate::units::fmt_size(total as usize),
                crate::units::fmt_size(free as usize)
            )
        }
        Err(e) => format!("unreadable ({e})"),
    }
}

/// Every limit, read now.
pub fn read_all() -> Vec<Limit> {
    let l = |name: &str, value: String, source: &str, transports: &str, when: &str| Limit {
        name: name.into(),
        value,
        source: source.into(),
        transports: transports.into(),
        when_reached: when.into(),
    };
    vec![
        l(
            "pipe capacity",
            pipe_capacity(),
            "fcntl(F_GETPIPE_SZ) on a new pipe",
            "pipe, fifo",
            "a writer blocks (ipclab: waits in poll, bounded by --timeout) until the reader drains the pipe",
        ),
        l(
            "pipe-max-size",
            proc_value("/proc/sys/fs/pipe-max-size"),
            "/proc/sys/fs/pipe-max-size",
            "pipe, fifo",
            "F_SETPIPE_SZ beyond it fails with EPERM for unprivileged users",
        ),
        l(
            "PIPE_BUF",
            format!("{} bytes", libc::PIPE_BUF),
            "<limits.h> (fixed on Linux)",
            "fifo",
            "writes larger than this may interleave with other writers' bytes: the FIFO transport's 12-byte HELLOs on its shared FIFO stay below it",
        ),
        l(
            "msgmax",
            proc_value("/proc/sys/kernel/msgmax"),
            "/proc/sys/kernel/msgmax",
            "msgq",
            "msgsnd of a larger message fails with EINVAL: ipclab sends chunks of at most this size",
        ),
        l(
            "msgmnb",
            proc_value("/proc/sys/kernel/msgmnb"),
            "/proc/sys/kernel/msgmnb",
            "msgq",
            "a full queue makes msgsnd block (ipclab: bounded by --timeout, with a liveness check of the peer)",
        ),
        l(
            "msgmni",
            proc_value("/proc/sys/kernel/msgmni"),
            "/proc/sys/kernel/msgmni",
            "msgq",
            "msgget fails with ENOSPC: no more queues system-wide",
        ),
        l(
            "sem (SEMMSL SEMMNS SEMOPM SEMMNI)",
            proc_value("/proc/sys/kernel/sem"),
            "/proc/sys/kernel/sem",
            "(SysV semaphores; ipclab's shm uses its own futex semaphores in shared memory)",
            "semget or semop fail with ENOSPC / E2BIG",
        ),
        l(
            "shmmax / shmall / shmmni",
            format!(
                "{} / {} / {}",
                proc_value("/proc/sys/kernel/shmmax"),
                proc_value("/proc/sys/kernel/shmall"),
                proc_value("/proc/sys/kernel/shmmni")
            ),
            "/proc/sys/kernel/shm{max,all,mni}",
            "(SysV shared memory; ipclab's shm is POSIX, bounded by /dev/shm)",
            "shmget fails with EINVAL or ENOSPC",
        ),
        l(
            "/dev/shm",
            dev_shm_size(),
            "statvfs(/dev/shm)",
            "shm",
            "ftruncate of a new region fails with ENOSPC, or a page fault on it raises SIGBUS",
        ),
        l(
            "RLIMIT_SIGPENDING",
            rlimit(libc::RLIMIT_SIGPENDING),
            "getrlimit(RLIMIT_SIGPENDING) (ulimit -i)",
            "signal",
            "sigqueue fails with EAGAIN: ipclab's window of 256 unacknowledged words stays far below it",
        ),
        l(
            "RLIMIT_MSGQUEUE",
            rlimit(libc::RLIMIT_MSGQUEUE),
            "getrlimit(RLIMIT_MSGQUEUE) (ulimit -q)",
            "posix-mq",
            "mq_open fails with EMFILE; each posix-mq connection reserves about 33 KiB of it, so about 24 connections per user by default",
        ),
        l(
            "mqueue msg_max / msgsize_max",
            format!(
                "{} / {}",
                proc_value("/proc/sys/fs/mqueue/msg_max"),
                proc_value("/proc/sys/fs/mqueue/msgsize_max")
            ),
            "/proc/sys/fs/mqueue/",
            "posix-mq",
            "mq_open with larger attributes fails with EINVAL; posix-mq asks for at most 2 × 8 KiB per connection queue",
        ),
        l(
            "socket buffers rmem / wmem default, max",
            format!(
                "{}, {} / {}, {}",
                proc_value("/proc/sys/net/core/rmem_default"),
                proc_value("/proc/sys/net/core/rmem_max"),
                proc_value("/proc/sys/net/core/wmem_default"),
                proc_value("/proc/sys/net/core/wmem_max")
            ),
            "/proc/sys/net/core/{r,w}mem_{default,max}",
            "unix",
            "a full send buffer makes write block (ipclab: SO_SNDTIMEO, --timeout)",
        ),
        l(
            "tcp_rmem / tcp_wmem (min default max)",
            format!(
                "{} / {}",
                proc_value("/proc/sys/net/ipv4/tcp_rmem"),
                proc_value("/proc/sys/net/ipv4/tcp_wmem")
            ),
            "/proc/sys/net/ipv4/tcp_{r,w}mem",
            "tcp",
            "a full send buffer makes write block (ipclab: SO_SNDTIMEO, --timeout)",
        ),
        l(
            "somaxconn",
            proc_value("/proc/sys/net/core/somaxconn"),
            "/proc/sys/net/core/somaxconn",
            "unix, tcp",
            "connections beyond the listen backlog wait (ipclab's unix client retries until --timeout)",
        ),
        l(
            "RLIMIT_NOFILE",
            rlimit(libc::RLIMIT_NOFILE),
            "getrlimit(RLIMIT_NOFILE) (ulimit -n)",
            "every transport",
            "accept, open, pipe fail with EMFILE: the server reports it and retries after a tick",
        ),
    ]
}
