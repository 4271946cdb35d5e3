//! `ipclab inspect`: what a process holds, resolved to kernel objects.
//!
//! The classic exercise — start an echo server, look at `/proc/<pid>/fd`
//! (`socket:[24931]`, `pipe:[19390]`, `anon_inode:[eventpoll]`) and match
//! the inode numbers with `lsof` — as one command, without lsof:
//!
//! - `/proc/<pid>/fd/<n>` is a symbolic link naming the object;
//!   `/proc/<pid>/fdinfo/<n>` gives the open flags (read/write, non-blocking),
//!   the file position, the locks held through that descriptor, and the
//!   state of `anon_inode` objects (an eventfd's counter, a signalfd's mask).
//! - sockets are looked up by inode in `/proc/<pid>/net/{tcp,tcp6,udp,udp6}`
//!   (addresses and state) and `/proc/<pid>/net/unix` (path, type); the peer
//!   of a UNIX socket comes from `sock_diag(7)`, the peer of a TCP socket is
//!   the socket with the mirrored addresses.
//! - the other end of a pipe, FIFO or socket is found by looking for the
//!   same object in every process we may look at (`/proc/*/fd`), as lsof does.
//! - locks on a regular file come from `/proc/locks`, matched by device and
//!   inode; shared memory mappings from `/proc/<pid>/maps` (`s` in the
//!   permissions: `/dev/shm/…` is POSIX shared memory, `/SYSV…` a SysV
//!   segment).
//! - signals: the pending, blocked and caught sets of `/proc/<pid>/status`.
//!
//! A process of another user cannot be inspected (the kernel hides its
//! descriptors); that is reported, not guessed around.

pub mod net;
pub mod system;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde::Serialize;

use crate::units::fmt_size;
use net::Tables;

/// Another process's descriptor on the same object.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    pub pid: i32,
    /// The process's real user id (`/proc/<pid>/status`): for a socket
    /// peer, the credentials `SO_PEERCRED` would give the server.
    pub uid: Option<u32>,
    pub command: String,
    pub fd: i32,
    /// `r`, `w` or `rw`, from its fdinfo.
    pub access: String,
}

/// One lock on a file, as `/proc/locks` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Lock {
    /// `FLOCK`, `POSIX` or `OFDLCK` (open file description lock).
    pub class: String,
    /// `READ` or `WRITE`.
    pub access: String,
    /// The owner for POSIX locks and flock; `None` for OFD locks (owned by
    /// an open file description, not a process).
    pub pid: Option<i32>,
    pub start: u64,
    /// `None` means to the end of the file.
    pub end: Option<u64>,
    /// A waiter (`->` in /proc/locks) rather than a holder.
    pub blocked: bool,
    /// Held through this very descriptor (it is in this fd's fdinfo).
    pub this_fd: bool,
}

/// What a descriptor refers to.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Object {
    Tcp {
        inode: u64,
        local: String,
        remote: String,
        state: String,
        /// Who holds the socket at the other end (loopback connections).
        peer: Vec<Holder>,
    },
    Udp {
        inode: u64,
        local: String,
        remote: String,
        state: String,
    },
    Unix {
        inode: u64,
        socket_type: String,
        state: String,
        path: Option<String>,
        peer_inode: Option<u64>,
        peer: Vec<Holder>,
        /// Why the peer is unknown, when it is.
        note: Option<String>,
    },
    /// A socket of another family (netlink …) or one not in the tables.
    Socket {
        inode: u64,
    },
    Pipe {
        inode: u64,
        other_end: Vec<Holder>,
    },
    Fifo {
        path: String,
        inode: u64,
        other_end: Vec<Holder>,
    },
    File {
        path: String,
        size: u64,
        locks: Vec<Lock>,
    },
    /// A POSIX message queue (on Linux, a file of the mqueue filesystem).
    MessageQueue {
        name: String,
        /// Its name was removed (`mq_unlink`) while it stays open.
        deleted: bool,
        /// `QSIZE` from `/dev/mqueue/<name>`: bytes queued, when readable.
        queued_bytes: Option<u64>,
        other_holders: Vec<Holder>,
    },
    AnonInode {
        name: String,
        /// State from fdinfo: `eventfd-count`, `sigmask`, `tfd` …
        details: Vec<(String, String)>,
    },
    Other {
        target: String,
    },
}

impl Object {
    /// A short name for the table's KIND column.
    pub fn kind(&self) -> String {
        match self {
            Object::Tcp { .. } => "tcp".into(),
            Object::Udp { .. } => "udp".into(),
            Object::Unix { socket_type, .. } => format!("unix/{socket_type}"),
            Object::Socket { .. } => "socket".into(),
            Object::Pipe { .. } => "pipe".into(),
            Object::Fifo { .. } => "fifo".into(),
            Object::File { .. } => "file".into(),
            Object::MessageQueue { .. } => "posix mqueue".into(),
            Object::AnonInode { .. } => "anon_inode".into(),
            Object::Other { target } if target.starts_with("/dev/") => "device".into(),
            Object::Other { .. } => "other".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Descriptor {
    pub fd: i32,
    /// The `/proc/<pid>/fd/<n>` link, as `ls -l` shows it.
    pub target: String,
    pub access: String,
    pub nonblocking: bool,
    pub object: Object,
}

/// A shared mapping from `/proc/<pid>/maps`.
#[derive(Clone, Debug, Serialize)]
pub struct Mapping {
    pub start: String,
    pub end: String,
    pub size: u64,
    pub perms: String,
    /// `POSIX shm`, `SysV shm`, `memfd`, `shared file`.
    pub kind: String,
    pub path: String,
}

/// The signal sets of `/proc/<pid>/status`, as signal names.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Signals {
    /// Queued signals of the owner / its limit (`SigQ`).
    pub queued: String,
    pub pending: Vec<String>,
    pub blocked: Vec<String>,
    pub caught: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Process {
    pub pid: i32,
    pub command: String,
    pub descriptors: Vec<Descriptor>,
    pub shared_mappings: Vec<Mapping>,
    pub signals: Signals,
}

/// Inspect `pids` (each error names its pid: gone, or not ours).
pub fn inspect(pids: &[i32]) -> io::Result<Vec<Process>> {
    let index = HolderIndex::scan();
    let locks = read_locks("/proc/locks");
    let mut tables: HashMap<i32, Tables> = HashMap::new();
    pids.iter()
        .map(|&pid| {
            let t = tables.entry(pid).or_insert_with(|| Tables::read(pid));
            inspect_one(pid, t, &index, &locks)
        })
        .collect()
}

fn inspect_one(
    pid: i32,
    t: &Tables,
    index: &HolderIndex,
    locks: &[FileLock],
) -> io::Result<Process> {
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::NotFound => "no such process".to_string(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (a process of another user: run as its owner)".to_string()
            }
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("cannot inspect pid {pid}: {why}"))
    })?;
    let mut fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut descriptors = Vec::new();
    for fd in fds {
        // A descriptor closed while we read is simply skipped.
        if let Some(d) = describe(pid, fd, t, index, locks) {
            descriptors.push(d);
        }
    }
    Ok(Process {
        pid,
        command: command_line(pid),
        descriptors,
        shared_mappings: shared_mappings(pid),
        signals: signals(pid),
    })
}

/// The command line, with NULs as spaces (or the comm name for kernel threads).
pub fn command_line(pid: i32) -> String {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(b) if !b.is_empty() => {
            let s: Vec<String> = b
                .split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            s.join(" ")
        }
        _ => comm(pid),
    }
}

fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

struct FdInfo {
    access: String,
    nonblocking: bool,
    locks: Vec<FileLock>,
    extra: Vec<(String, String)>,
}

fn fdinfo(pid: i32, fd: i32) -> Option<FdInfo> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let mut info = FdInfo {
        access: "?".into(),
        nonblocking: false,
        locks: Vec::new(),
        extra: Vec::new(),
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "flags" => {
                let flags = i32::from_str_radix(value, 8).unwrap_or(0);
                info.access = match flags & libc::O_ACCMODE {
                    libc::O_RDONLY => "r",
                    libc::O_WRONLY => "w",
                    _ => "rw",
                }
                .into();
                info.nonblocking = flags & libc::O_NONBLOCK != 0;
            }
            "lock" => info.locks.extend(parse_lock_line(value)),
            "pos" | "mnt_id" | "ino" => {}
            _ => info.extra.push((key.to_string(), value.to_string())),
        }
    }
    Some(info)
}

fn describe(
    pid: i32,
    fd: i32,
    t: &Tables,
    index: &HolderIndex,
    locks: &[FileLock],
) -> Option<Descriptor> {
    let link = format!("/proc/{pid}/fd/{fd}");
    let target = fs::read_link(&link).ok()?.to_string_lossy().into_owned();
    let info = fdinfo(pid, fd)?;
    let others = |key: &str| index.others(key, pid, fd);
    let object = if let Some(ino) = bracketed(&target, "socket:") {
        if let Some(s) = t.inet.get(&ino) {
            if s.proto == "tcp" {
                Object::Tcp {
                    inode: ino,
                    local: s.local.to_string(),
                    remote: s.remote.to_string(),
                    state: s.state.into(),
                    peer: t
                        .inet_peer(s)
                        .map(|p| others(&format!("socket:[{}]", p.inode)))
                        .unwrap_or_default(),
                }
            } else {
                Object::Udp {
                    inode: ino,
                    local: s.local.to_string(),
                    remote: s.remote.to_string(),
                    state: s.state.into(),
                }
            }
        } else if let Some(u) = t.unix.get(&ino) {
            Object::Unix {
                inode: ino,
                socket_type: u.kind.into(),
                state: u.state.into(),
                path: u.path.clone(),
                peer_inode: u.peer,
                peer: u
                    .peer
                    .map(|p| others(&format!("socket:[{p}]")))
                    .unwrap_or_default(),
                note: t.unix_peer_note.clone(),
            }
        } else {
            Object::Socket { inode: ino }
        }
    } else if let Some(ino) = bracketed(&target, "pipe:") {
        Object::Pipe {
            inode: ino,
            other_end: others(&target),
        }
    } else if let Some(name) = target.strip_prefix("anon_inode:") {
        Object::AnonInode {
            name: name.trim_start_matches('[').trim_end_matches(']').into(),
            details: info.extra.clone(),
        }
    } else {
        match fs::metadata(&link) {
            Ok(m) if m.file_type().is_fifo() => Object::Fifo {
                path: target.clone(),
                inode: m.ino(),
                other_end: others(&file_key(&m)),
            },
            Ok(m) if is_mqueue(&link) => {
                let deleted = target.ends_with(" (deleted)");
                let name = target.trim_end_matches(" (deleted)").to_string();
                let queued_bytes = (!deleted)
                    .then(|| fs::read_to_string(format!("/dev/mqueue{name}")).ok())
                    .flatten()
                    .and_then(|t| {
                        t.split_whitespace()
                            .find_map(|w| w.strip_prefix("QSIZE:"))
                            .and_then(|v| v.parse().ok())
                    });
                Object::MessageQueue {
                    name,
                    deleted,
                    queued_bytes,
                    other_holders: others(&file_key(&m)),
                }
            }
            Ok(m) if m.is_file() => {
                let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
                let locks = locks
                    .iter()
                    .filter(|l| l.dev == (major, minor) && l.ino == m.ino())
                    .map(|l| Lock {
                        this_fd: info.locks.iter().any(|o| o.same_lock(l)),
                        ..l.lock.clone()
                    })
                    .collect();
                Object::File {
                    path: target.clone(),
                    size: m.len(),
                    locks,
                }
            }
            _ => Object::Other {
                target: target.clone(),
            },
        }
    };
    Some(Descriptor {
        fd,
        target,
        access: info.access,
        nonblocking: info.nonblocking,
        object,
    })
}

/// Is the descriptor at `link` a POSIX message queue? (Its file lives on
/// the mqueue filesystem, `MQUEUE_MAGIC` in `statfs(2)`.)
// f_type is 64 bits wide on x86_64 but not everywhere.
#[allow(clippy::unnecessary_cast)]
fn is_mqueue(link: &str) -> bool {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    nix::sys::statfs::statfs(link).is_ok_and(|s| s.filesystem_type().0 as i64 == MQUEUE_MAGIC)
}

/// `socket:[123]` → 123.
fn bracketed(target: &str, prefix: &str) -> Option<u64> {
    target
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn file_key(m: &fs::Metadata) -> String {
    format!("file:{}:{}", m.dev(), m.ino())
}

/// Every descriptor of every process we may look at, by object: the link
/// text for pipes and sockets, device and inode for FIFOs.
struct HolderIndex {
    by_object: HashMap<String, Vec<(i32, i32)>>,
}

impl HolderIndex {
    fn scan() -> HolderIndex {
        let mut by_object: HashMap<String, Vec<(i32, i32)>> = HashMap::new();
        let Ok(procs) = fs::read_dir("/proc") else {
            return HolderIndex { by_object };
        };
        for p in procs.filter_map(|e| e.ok()) {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for e in fds.filter_map(|e| e.ok()) {
                let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(target) = fs::read_link(e.path()) else {
                    continue;
                };
                let target = target.to_string_lossy();
                let key = if target.starts_with("pipe:") || target.starts_with("socket:") {
                    target.into_owned()
                } else if target.starts_with('/') {
                    // FIFOs and POSIX queues: by device and inode.
                    match fs::metadata(e.path()) {
                        Ok(m) if m.file_type().is_fifo() || m.is_file() => file_key(&m),
                        _ => continue,
                    }
                } else {
                    continue;
                };
                by_object.entry(key).or_default().push((pid, fd));
            }
        }
        HolderIndex { by_object }
    }

    /// The holders of `key` other than (`pid`, `fd`) itself.
    fn others(&self, key: &str, pid: i32, fd: i32) -> Vec<Holder> {
        self.by_object
            .get(key)
            .into_iter()
            .flatten()
            .filter(|&&(p, f)| (p, f) != (pid, fd))
            .map(|&(p, f)| Holder {
                pid: p,
                uid: uid_of(p),
                command: comm(p),
                fd: f,
                access: fdinfo(p, f).map(|i| i.access).unwrap_or_else(|| "?".into()),
            })
            .collect()
    }
}

/// A line of /proc/locks with the file it is on.
#[derive(Clone, Debug)]
struct FileLock {
    lock: Lock,
    dev: (u32, u32),
    ino: u64,
}

impl FileLock {
    fn same_lock(&self, o: &FileLock) -> bool {
        (self.dev, self.ino) == (o.dev, o.ino)
            && self.lock.class == o.lock.class
            && self.lock.access == o.lock.access
            && self.lock.start == o.lock.start
            && self.lock.end == o.lock.end
    }
}

fn read_locks(path: &str) -> Vec<FileLock> {
    fs::read_to_string(path)
        .map(|t| t.lines().filter_map(parse_lock_line).collect())
        .unwrap_or_default()
}

/// `1: OFDLCK ADVISORY  WRITE -1 00:1a:567 0 EOF` or, for a waiter,
/// `1: -> POSIX ADVISORY WRITE 1234 08:01:99 0 EOF`. The device is
/// `major:minor` in hex.
fn parse_lock_line(line: &str) -> Option<FileLock> {
    let mut f: Vec<&str> = line.split_whitespace().skip(1).collect();
    let blocked = f.first() == Some(&"->");
    if blocked {
        f.remove(0);
    }
    if f.len() < 7 {
        return None;
    }
    let (class, access, pid, file, start, end) = (f[0], f[2], f[3], f[4], f[5], f[6]);
    let mut parts = file.split(':');
    let major = u32::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
    let ino = parts.next()?.parse().ok()?;
    let pid: i32 = pid.parse().ok()?;
    Some(FileLock {
        lock: Lock {
            class: class.into(),
            access: access.into(),
            pid: (pid > 0).then_some(pid),
            start: start.parse().ok()?,
            end: if end == "EOF" {
                None
            } else {
                Some(end.parse().ok()?)
            },
            blocked,
            this_fd: false,
        },
        dev: (major, minor),
        ino,
    })
}

fn shared_mappings(pid: i32) -> Vec<Mapping> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let (range, perms) = (f[0], f[1]);
        let path = f[5..].join(" ");
        let kind = if path.starts_with("/dev/shm/") {
            "POSIX shm"
        } else if path.starts_with("/SYSV") {
            "SysV shm"
        } else if path.starts_with("/memfd:") {
            "memfd"
        } else if perms.ends_with('s') && path.starts_with('/') {
            "shared file"
        } else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let size = u64::from_str_radix(end, 16)
            .ok()
            .zip(u64::from_str_radix(start, 16).ok())
            .map(|(e, s)| e - s)
            .unwrap_or(0);
        out.push(Mapping {
            start: start.into(),
            end: end.into(),
            size,
            perms: perms.into(),
            kind: kind.into(),
            path,
        });
    }
    out
}

fn signals(pid: i32) -> Signals {
    let mut s = Signals::default();
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return s;
    };
    let mut pending = 0u64;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let mask = || u64::from_str_radix(value, 16).unwrap_or(0);
        match key {
            "SigQ" => s.queued = value.into(),
            "SigPnd" | "ShdPnd" => pending |= mask(),
            "SigBlk" => s.blocked = signal_names(mask()),
            "SigCgt" => s.caught = signal_names(mask()),
            _ => {}
        }
    }
    s.pending = signal_names(pending);
    s
}

/// Bit n-1 of a /proc signal mask is signal n.
pub fn signal_names(mask: u64) -> Vec<String> {
    (1..=64)
        .filter(|n| mask & (1u64 << (n - 1)) != 0)
        .map(|n: i32| {
            if n > libc::SIGSYS && n < libc::SIGRTMIN() {
                format!("signal {n} (C library internal)")
            } else if n >= libc::SIGRTMIN() {
                match libc::SIGRTMAX() - n {
                    0 => "SIGRTMAX".into(),
                    d if d < 8 => format!("SIGRTMAX-{d}"),
                    _ => format!("SIGRTMIN+{}", n - libc::SIGRTMIN()),
                }
            } else {
                nix::sys::signal::Signal::try_from(n)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {n}"))
            }
        })
        .collect()
}

fn holders(h: &[Holder]) -> String {
    h.iter()
        .map(|h| {
            let uid = h.uid.map(|u| format!(" uid {u}")).unwrap_or_default();
            format!(
                "pid {} ({}){uid} fd {} {}",
                h.pid, h.command, h.fd, h.access
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The OBJECT and CONNECTED TO columns for one descriptor.
pub fn describe_text(o: &Object) -> (String, String) {
    match o {
        Object::Tcp {
            inode,
            local,
            remote,
            state,
            peer,
        } => {
            let obj = if state == "LISTEN" {
                format!("{local} LISTEN  socket:[{inode}]")
            } else {
                format!("{local} -> {remote} {state}  socket:[{inode}]")
            };
            let to = if peer.is_empty() && state != "LISTEN" {
                format!("{remote} (not a process we can see)")
            } else {
                holders(peer)
            };
            (obj, to)
        }
        Object::Udp {
            inode,
            local,
            remote,
            state,
        } => (
            format!("{local} -> {remote} {state}  socket:[{inode}]"),
            String::new(),
        ),
        Object::Unix {
            inode,
            state,
            path,
            peer_inode,
            peer,
            note,
            ..
        } => {
            let obj = format!(
                "{} {state}  socket:[{inode}]",
                path.as_deref().unwrap_or("(unnamed)")
            );
            let to = match (peer_inode, note) {
                (Some(p), _) if peer.is_empty() => format!("socket:[{p}]"),
                (Some(p), _) => format!("socket:[{p}] held by {}", holders(peer)),
                (None, Some(n)) if state != "LISTEN" => n.clone(),
                _ => String::new(),
            };
            (obj, to)
        }
        Object::Socket { inode } => (
            format!("socket:[{inode}] (not TCP, UDP or UNIX)"),
            String::new(),
        ),
        Object::Pipe { inode, other_end } => (
            format!("pipe:[{inode}]"),
            if other_end.is_empty() {
                "nobody else holds it".into()
            } else {
                holders(other_end)
            },
        ),
        Object::Fifo {
            path,
            inode,
            other_end,
        } => (
            format!("{path} (inode {inode})"),
            if other_end.is_empty() {
                "nobody else holds it".into()
            } else {
                holders(other_end)
            },
        ),
        Object::File { path, size, locks } => {
            let l: Vec<String> = locks
                .iter()
                .map(|l| {
                    let range = match l.end {
                        Some(e) if e == l.start => format!("byte {e}"),
                        Some(e) => format!("bytes {}-{e}", l.start),
                        None => format!("bytes {}-EOF", l.start),
                    };
                    format!(
                        "{}{} {} {range}{}{}",
                        if l.blocked { "waiting " } else { "" },
                        l.class,
                        l.access,
                        l.pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
                        if l.this_fd { " (this fd)" } else { "" }
                    )
                })
                .collect();
            (
                format!("{path} ({})", fmt_size(*size as usize)),
                if l.is_empty() {
                    String::new()
                } else {
                    format!("locks: {}", l.join("; "))
                },
            )
        }
        Object::MessageQueue {
            name,
            deleted,
            queued_bytes,
            other_holders,
        } => (
            format!(
                "{name}{}{}",
                if *deleted { " (name removed)" } else { "" },
                queued_bytes
                    .map(|q| format!(" {q} B queued"))
                    .unwrap_or_default()
            ),
            holders(other_holders),
        ),
        Object::AnonInode { name, details } => {
            let d: Vec<String> = details
                .iter()
                .filter(|(k, _)| k != "flags")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (format!("[{name}] {}", d.join(" ")), String::new())
        }
        Object::Other { target } => (target.clone(), String::new()),
    }
}

/// The readable table for one process.
pub fn render(p: &Process, out: &mut dyn io::Write) -> io::Result<()> {
    use crate::units::printable;
    writeln!(out, "pid {}: {}", p.pid, printable(&p.command))?;
    let rows: Vec<(String, String)> = p
        .descriptors
        .iter()
        .map(|d| {
            let (obj, to) = describe_text(&d.object);
            (printable(&obj).into_owned(), printable(&to).into_owned())
        })
        .collect();
    let width = rows
        .iter()
        .map(|(o, _)| o.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 72);
    writeln!(
        out,
        "  {:>3} {:<5} {:<14} {:<width$}  CONNECTED TO / LOCKS",
        "FD", "MODE", "KIND", "OBJECT"
    )?;
    for (d, (obj, to)) in p.descriptors.iter().zip(rows) {
        let mode = format!("{}{}", d.access, if d.nonblocking { ",nb" } else { "" });
        writeln!(
            out,
            "  {:>3} {:<5} {:<14} {obj:<width$}  {to}",
            d.fd,
            mode,
            d.object.kind(),
        )?;
    }
    if p.descriptors.is_empty() {
        writeln!(out, "  (no descriptors shown)")?;
    }
    if !p.shared_mappings.is_empty() {
        writeln!(out, "  shared memory mappings:")?;
        for m in &p.shared_mappings {
            writeln!(
                out,
                "      {}-{} {} {:>9}  {:<11} {}",
                m.start,
                m.end,
                m.perms,
                fmt_size(m.size as usize),
                m.kind,
                printable(&m.path)
            )?;
        }
    }
    let s = &p.signals;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(" ")
        }
    };
    writeln!(
        out,
        "  signals: queued {}; pending {}; blocked {}; caught {}",
        s.queued,
        list(&s.pending),
        list(&s.blocked),
        list(&s.caught)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines_parse() {
        let l = parse_lock_line("1: OFDLCK ADVISORY  WRITE -1 00:1a:567 0 EOF").unwrap();
        assert_eq!(l.lock.class, "OFDLCK");
        assert_eq!(l.lock.pid, None);
        assert_eq!(l.lock.end, None);
        assert_eq!((l.dev, l.ino), ((0, 0x1a), 567));
        let w = parse_lock_line("2: -> POSIX  ADVISORY  READ 1234 08:01:99 10 19").unwrap();
        assert!(w.lock.blocked);
        assert_eq!(w.lock.pid, Some(1234));
        assert_eq!(w.lock.end, Some(19));
    }

    #[test]
    fn signal_masks_name_signals() {
        assert_eq!(signal_names(0x4002), vec!["SIGINT", "SIGTERM"]);
        let rtmax = 1u64 << (libc::SIGRTMAX() - 1);
        assert_eq!(signal_names(rtmax), vec!["SIGRTMAX"]);
    }

    #[test]
    fn a_pipe_shows_its_other_end() {
        let (r, w) = nix::unistd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let p = &inspect(&[me]).unwrap()[0];
        let d = p
            .descriptors
            .iter()
            .find(|d| d.fd == r.as_raw_fd())
            .unwrap();
        assert_eq!(d.access, "r");
        match &d.object {
            Object::Pipe { other_end, .. } => {
                assert!(
                    other_end
                        .iter()
                        .any(|h| h.pid == me && h.fd == w.as_raw_fd() && h.access == "w")
                );
            }
            o => panic!("not a pipe: {o:?}"),
        }
    }
}
