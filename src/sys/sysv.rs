//! A thin, safe layer over System V IPC (`msgget`, `msgsnd`, `msgrcv`,
//! `msgctl`, `ftok`), which nix does not wrap.
//!
//! Conventions, after nix: one check per system call, errno turned into an
//! [`io::Error`] whose message says in plain words what went wrong and what
//! limit was hit; the kernel object is released in `Drop` by its owner (the
//! process that created it) and only by it.
//!
//! See `sysvipc(7)`, `msgget(2)`, `msgop(2)`, `msgctl(2)`, `ftok(3)`; the
//! objects are listed by `ipcs -q` and in `/proc/sysvipc/msg`.
//!
//! The blocking calls ([`MsgQueue::send_raw`], [`MsgQueue::recv_raw`]) fail
//! with a [`SysvError`], which [`crate::sys::interrupt::bounded`] retries on
//! `EINTR` and otherwise words with [`explain`].
//!
//! # Safety
//! Every `unsafe` here is one call into libc: `ftok(3)` gets a
//! NUL-terminated path; `msgget(2)` and `msgctl(2)` (`IPC_RMID`, and
//! `IPC_STAT` into a zeroed `msqid_ds` it fills) take plain integers;
//! `msgsnd(2)`/`msgrcv(2)` (see `msgop(2)`) get a buffer that begins with
//! the `long` mtype word and the length of the text after it, never more
//! than the buffer holds.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// A System V IPC key.
pub type Key = libc::key_t;

/// `ftok(3)`: a key from a file's device and inode numbers and a project id.
/// Two different files give different keys unless their inode numbers agree
/// in the low 16 bits (on one device): rare, and caught by `IPC_EXCL`.
pub fn ftok(path: &Path, project: u8) -> io::Result<Key> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY (ftok(3)): `c` is a valid NUL-terminated string.
    let key = unsafe { libc::ftok(c.as_ptr(), project as libc::c_int) };
    if key == -1 {
        return Err(explain(Errno::last(), &format!("ftok({})", path.display())));
    }
    Ok(key)
}

/// Turn errno into an error that says why, in words.
pub fn explain(e: Errno, call: &str) -> io::Error {
    let why = match e {
        Errno::ENOSPC => {
            "the system-wide limit of message queues (/proc/sys/kernel/msgmni) is reached"
        }
        Errno::EEXIST => "an object with this key already exists",
        Errno::ENOENT => "no object with this key exists",
        Errno::EACCES | Errno::EPERM => {
            "permission denied: the object belongs to another user or mode"
        }
        Errno::EIDRM => "the object was removed (its owner stopped)",
        Errno::E2BIG => "the message is larger than the buffer given",
        Errno::EINVAL => "invalid argument (a message larger than msgmax, or a removed object)",
        Errno::ENOMEM => "the kernel is out of memory",
        _ => "",
    };
    let kind = match e {
        Errno::ENOENT => io::ErrorKind::NotFound,
        Errno::EEXIST => io::ErrorKind::AlreadyExists,
        Errno::EACCES | Errno::EPERM => io::ErrorKind::PermissionDenied,
        Errno::EIDRM => io::ErrorKind::ConnectionAborted,
        Errno::EINTR => io::ErrorKind::Interrupted,
        Errno::EAGAIN | Errno::ENOMSG => io::ErrorKind::WouldBlock,
        _ => io::Error::from(e).kind(),
    };
    if why.is_empty() {
        io::Error::new(kind, format!("{call}: {e}"))
    } else {
        io::Error::new(kind, format!("{call}: {why} ({e})"))
    }
}

/// The errno of a failed `msgsnd(2)` or `msgrcv(2)`: `EINTR` is retried by
/// [`crate::sys::interrupt::bounded`]; anything else is worded by
/// [`explain`], which knows what the System V errors mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysvError(pub Errno);

impl std::fmt::Display for SysvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SysvError {}

impl crate::sys::interrupt::CallError for SysvError {
    fn interrupted(&self) -> bool {
        self.0 == Errno::EINTR
    }
    fn explain(self, waiting: &str) -> io::Error {
        explain(self.0, waiting)
    }
}

/// Read a kernel limit from `/proc/sys/kernel/<name>` (`msgmax`, `msgmnb` …).
pub fn kernel_limit(name: &str) -> io::Result<usize> {
    let path = format!("/proc/sys/kernel/{name}");
    let text = std::fs::read_to_string(&path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: not a number: {text:?}"),
        )
    })
}

/// A System V message queue. Removed (`IPC_RMID`) on drop if we created it.
#[derive(Debug)]
pub struct MsgQueue {
    id: libc::c_int,
    owner: bool,
    /// Set once removed: a late drop must not remove a reused id.
    removed: std::sync::atomic::AtomicBool,
}

/// Size of the `mtype` field that precedes every message's text.
pub const MTYPE_LEN: usize = std::mem::size_of::<libc::c_long>();

impl MsgQueue {
    /// Create a new queue for `key`, mode 0600; fails if one exists.
    pub fn create(key: Key) -> io::Result<Self> {
        // SAFETY (msgget(2)): integers only.
        let id = unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        if id == -1 {
            return Err(explain(Errno::last(), "msgget(IPC_CREAT)"));
        }
        Ok(MsgQueue {
            id,
            owner: true,
            removed: Default::default(),
        })
    }

    /// Open the existing queue for `key`.
    pub fn open(key: Key) -> io::Result<Self> {
        // SAFETY (msgget(2)): integers only.
        let id = unsafe { libc::msgget(key, 0) };
        if id == -1 {
            return Err(explain(Errno::last(), "msgget"));
        }
        Ok(MsgQueue {
            id,
            owner: false,
            removed: Default::default(),
        })
    }

    /// The queue's identifier, as `ipcs -q` shows it.
    pub fn id(&self) -> libc::c_int {
        self.id
    }

    /// `msgsnd(2)`: `msg` holds the message *including* its leading
    /// `mtype` word (see [`set_mtype`]); its text is `msg[MTYPE_LEN..]`.
    /// Blocks while the queue is full, unless `nowait`.
    pub fn send_raw(&self, msg: &[u8], nowait: bool) -> Result<(), SysvError> {
        assert!(msg.len() >= MTYPE_LEN);
        let flags = if nowait { libc::IPC_NOWAIT } else { 0 };
        // SAFETY (msgop(2)): `msg` starts with a c_long mtype followed by
        // the text; the kernel reads exactly `msg.len() - MTYPE_LEN` text
        // bytes.
        let r = unsafe { libc::msgsnd(self.id, msg.as_ptr().cast(), msg.len() - MTYPE_LEN, flags) };
        Errno::result(r).map(drop).map_err(SysvError)
    }

    /// `msgrcv(2)` of the first message of type `mtype` into `buf` (mtype
    /// word + text); returns the text length. Blocks until one comes,
    /// unless `nowait`.
    pub fn recv_raw(
        &self,
        buf: &mut [u8],
        mtype: libc::c_long,
        nowait: bool,
    ) -> Result<usize, SysvError> {
        assert!(buf.len() >= MTYPE_LEN);
        let flags = if nowait { libc::IPC_NOWAIT } else { 0 };
        // SAFETY (msgop(2)): the kernel writes at most `buf.len() -
        // MTYPE_LEN` text bytes after the mtype word; `buf` is that large.
        let r = unsafe {
            libc::msgrcv(
                self.id,
                buf.as_mut_ptr().cast(),
                buf.len() - MTYPE_LEN,
                mtype,
                flags,
            )
        };
        Errno::result(r).map(|n| n as usize).map_err(SysvError)
    }

    /// Discard every waiting message of type `mtype` (a dead peer's).
    pub fn purge(&self, mtype: libc::c_long) {
        let mut buf = [0u8; MTYPE_LEN];
        loop {
            // MSG_NOERROR: take a message of any size, truncating it.
            // SAFETY (msgop(2)): as in recv_raw, with a text size of 0.
            let r = unsafe {
                libc::msgrcv(
                    self.id,
                    buf.as_mut_ptr().cast(),
                    0,
                    mtype,
                    libc::IPC_NOWAIT | libc::MSG_NOERROR,
                )
            };
            if r == -1 {
                break;
            }
        }
    }

    /// `msgctl(IPC_STAT)`.
    pub fn stat(&self) -> io::Result<libc::msqid_ds> {
        // SAFETY (msgctl(2)): msqid_ds is plain data, valid zeroed; the
        // kernel fills it.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::msgctl(self.id, libc::IPC_STAT, &mut ds) };
        if r == -1 {
            return Err(explain(Errno::last(), "msgctl(IPC_STAT)"));
        }
        Ok(ds)
    }

    /// `msgctl(IPC_RMID)`: remove the queue now; blocked peers get `EIDRM`.
    pub fn remove(&self) -> io::Result<()> {
        if self.removed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        // SAFETY (msgctl(2)): IPC_RMID takes no buffer.
        let r = unsafe { libc::msgctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
        if r == -1 {
            return Err(explain(Errno::last(), "msgctl(IPC_RMID)"));
        }
        Ok(())
    }
}

impl Drop for MsgQueue {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.remove();
        }
    }
}

/// Write `mtype` into the first word of a message buffer.
pub fn set_mtype(msg: &mut [u8], mtype: libc::c_long) {
    msg[..MTYPE_LEN].copy_from_slice(&mtype.to_ne_bytes());
}

/// The `mtype` word of a received message.
pub fn mtype(msg: &[u8]) -> libc::c_long {
    let mut w = [0u8; MTYPE_LEN];
    w.copy_from_slice(&msg[..MTYPE_LEN]);
    libc::c_long::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_round_trip_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, b"").unwrap();
        let key = ftok(&f, b'T').unwrap();
        let q = MsgQueue::create(key).unwrap();
        assert_eq!(
            MsgQueue::create(key).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let ds = q.stat().unwrap();
        assert_eq!(ds.msg_perm.mode & 0o777, 0o600);

        let mut msg = vec![0u8; MTYPE_LEN + 5];
        set_mtype(&mut msg, 7);
        msg[MTYPE_LEN..].copy_from_slice(b"hello");
        q.send_raw(&msg, false).unwrap();
        set_mtype(&mut msg, 9);
        q.send_raw(&msg, false).unwrap();

        let mut buf = vec![0u8; MTYPE_LEN + 64];
        // Only type 9 is asked for: the type-7 message stays queued.
        assert_eq!(q.recv_raw(&mut buf, 9, true).unwrap(), 5);
        assert_eq!(mtype(&buf), 9);
        assert_eq!(q.recv_raw(&mut buf, 9, true), Err(SysvError(Errno::ENOMSG)));
        q.purge(7);
        assert_eq!(q.recv_raw(&mut buf, 7, true), Err(SysvError(Errno::ENOMSG)));

        let id = q.id();
        drop(q);
        let gone = unsafe { libc::msgctl(id, libc::IPC_STAT, std::ptr::null_mut()) };
        assert_eq!(gone, -1, "the owner's drop removes the queue");
        assert_eq!(
            MsgQueue::open(key).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_bounded_queue_call_explains_sysv_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, b"").unwrap();
        let q = MsgQueue::create(ftok(&f, b'E').unwrap()).unwrap();
        q.remove().unwrap();
        let mut buf = vec![0u8; MTYPE_LEN + 8];
        // A removed queue: msgrcv fails (EINVAL or EIDRM), in SysV words.
        let err = crate::sys::interrupt::bounded(
            std::time::Instant::now() + std::time::Duration::from_secs(1),
            "waiting for a message",
            || Ok(()),
            || q.recv_raw(&mut buf, 1, false),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("waiting for a message: "), "{text}");
        // explain's words ("a removed object", "the object was removed"),
        // not only strerror's.
        assert!(text.contains("object"), "{text}");
    }

    #[test]
    fn limits_are_read_live() {
        assert!(kernel_limit("msgmax").unwrap() >= 1024);
        assert!(kernel_limit("msgmnb").unwrap() >= 1024);
    }
}
