//! Where the region kit's regions live ([`crate::transport::region`]):
//! their names, creating one (replacing a dead server's), opening and
//! checking an existing one, and finding leftovers for `ipclab clean`.
//!
//! A region is a POSIX shared memory object
//! `/dev/shm/ipclab-<tag><uid>-<hash>-<name>` (`shm_open(3)`) or a regular
//! file `<dir>/<name><suffix>` (`open(2)`), both derived from the runtime
//! directory so `ipclab clean` can find them. Only a region of ours is
//! ever used or replaced: owner, size and magic are checked on the opened
//! descriptor. Every region is mapped through [`Mapped`], so a peer that
//! truncates it cannot kill us with `SIGBUS`.
//!
//! # Who says a server is alive: its pid file, never the region
//! Every client maps the meeting region read-write, so its `server_pid`
//! and `closed` words say only what the last writer wanted: a peer could
//! write `closed = 1` or a dead pid there and have clients turn away, and
//! `ipclab clean` or a second server remove a live server's region. So the
//! server first creates `<dir>/<name>.<transport>.pid` in the 0700 runtime
//! directory (which no peer of the mechanism can write), and holds it until
//! it stops, after its regions are gone. A client, `ipclab clean` and a
//! starting server judge "is the server alive" by that file and
//! `kill(pid, 0)`; the region's words are at most hints, re-checked
//! against it. A starting server that holds the pid file knows any region
//! under its names is a dead server's, and replaces it.
//!
//! System calls: `shm_open(3)`/`open(2)` with `O_CREAT | O_EXCL`,
//! `fstat(2)`, `fchmod(2)`, `ftruncate(2)`, `posix_fallocate(3)`, `mmap(2)`,
//! `shm_unlink(3)`/`unlink(2)`.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{ftruncate, getuid};

use super::mapped::Mapped;
use crate::objects::{self, Leftover, Verdict};
use crate::runtime::CreatedPath;
use crate::transport::Config;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

// The layout every region of the kit shares (re-exported by
// `transport::region`, whose protocol uses it).

/// Size of a meeting region.
pub(crate) const PAGE: usize = 4096;
/// Where a transport's own header starts in a session region.
pub(crate) const OWN_HEADER: usize = 256;
/// Where a session region's data areas start.
pub(crate) const DATA_OFFSET: usize = 4096;

pub(crate) const MEETING: u32 = 1;
pub(crate) const SESSION: u32 = 2;
/// In the slot word, above the holder's pid: the holder has left.
pub(crate) const LEAVING: u64 = 1 << 32;

/// What a transport tells the kit about its regions.
pub(crate) struct Spec {
    pub transport: &'static str,
    pub magic: u64,
    pub store: Store,
    /// Size of a session region (header page and data areas).
    pub session_size: usize,
    /// Initialise the transport's header of a fresh session region.
    pub init: fn(&Region) -> io::Result<()>,
}

/// Where regions live.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// `/dev/shm/ipclab-<tag><uid>-<hash>-<name>`, via `shm_open(3)`.
    Shm { tag: &'static str },
    /// `<dir>/<name><suffix>`, a regular file.
    File { suffix: &'static str },
}

/// The fields every region begins with.
#[repr(C)]
pub(crate) struct Common {
    pub magic: AtomicU64,
    pub kind: AtomicU32,
    pub server_pid: AtomicI32,
    /// Meeting: the server stopped. Session: the server ended the session.
    pub closed: AtomicU32,
    /// Meeting: bumped (then woken) by a client that joined a session.
    pub connect: AtomicU32,
    /// Meeting: the slot (holder pid | LEAVING). Session: unused.
    pub slot: AtomicU64,
    /// Meeting: number of the session region ready (0: none). Session: its own.
    pub session: AtomicU64,
    /// Session: the client that joined it.
    pub client_pid: AtomicI32,
}

const _: () = assert!(size_of::<Common>() <= OWN_HEADER);

/// One mapped region.
pub(crate) struct Region {
    pub(crate) map: Mapped,
}

impl Region {
    pub(crate) fn common(&self) -> &Common {
        // SAFETY: every region is at least a page, page-aligned; Common is
        // atomics only, valid for any bit pattern a peer may write.
        unsafe { &*(self.map.ptr() as *const Common) }
    }

    /// The transport's own header.
    ///
    /// # Safety
    /// `T` must be `#[repr(C)]`, fit between [`OWN_HEADER`] and
    /// [`DATA_OFFSET`], be aligned to at most 256, and consist of fields
    /// meant to be shared (atomics, semaphores).
    pub(crate) unsafe fn own<T>(&self) -> &T {
        unsafe { &*(self.map.ptr().add(OWN_HEADER) as *const T) }
    }

    /// Start of data area `i` of a session region whose areas are `cap` bytes.
    pub(crate) fn area(&self, i: usize, cap: usize) -> *mut u8 {
        debug_assert!(DATA_OFFSET + (i + 1) * cap <= self.map.size());
        // SAFETY: within the mapping, whose size was checked when mapped.
        unsafe { self.map.ptr().add(DATA_OFFSET + i * cap) }
    }
}

/// The names of one server's regions.
#[derive(Clone)]
pub(crate) struct Names {
    pub spec: &'static Spec,
    dir: PathBuf,
    name: String,
}

/// One region's name: for `shm_open` and as a path.
pub(crate) struct Object {
    store: Store,
    shm: String,
    pub path: PathBuf,
}

impl Names {
    pub(crate) fn new(spec: &'static Spec, cfg: &Config) -> Names {
        let (dir, name) = (cfg.dir.clone(), cfg.name.clone());
        Names { spec, dir, name }
    }

    /// `<dir>/<name>.<transport>.pid`: the server's pid, which says
    /// whether it is alive (see the module doc).
    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.{}.pid", self.name, self.spec.transport))
    }

    pub(crate) fn meeting(&self) -> Object {
        self.object(&self.name)
    }

    /// The session region on offer: `<name>.session`. (Its number is in
    /// its header; the name is free again once a client has it mapped.)
    pub(crate) fn session(&self) -> Object {
        self.object(&format!("{}.session", self.name))
    }

    fn object(&self, name: &str) -> Object {
        match self.spec.store {
            Store::Shm { tag } => {
                let shm = format!("{}{name}", prefix(tag, &self.dir));
                let path = PathBuf::from(format!("/dev/shm{shm}"));
                Object {
                    store: self.spec.store,
                    shm,
                    path,
                }
            }
            Store::File { suffix } => Object {
                store: self.spec.store,
                shm: String::new(),
                path: self.dir.join(format!("{name}{suffix}")),
            },
        }
    }
}

/// `/ipclab-<tag><uid>-<hash of dir>-`: the names of every server of `dir`.
fn prefix(tag: &str, dir: &Path) -> String {
    // FNV-1a: small, stable across runs and versions.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
    }
    format!("/ipclab-{tag}{}-{h:08x}-", getuid())
}

impl Object {
    pub(crate) fn open(&self, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
        match self.store {
            Store::Shm { .. } => shm_open(self.shm.as_str(), flags, mode),
            Store::File { .. } => nix::fcntl::open(&self.path, flags | OFlag::O_NOFOLLOW, mode),
        }
    }

    pub(crate) fn unlink(&self) -> nix::Result<()> {
        match self.store {
            Store::Shm { .. } => shm_unlink(self.shm.as_str()),
            Store::File { .. } => nix::unistd::unlink(&self.path),
        }
    }

    pub(crate) fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Create, sized `size`, pages reserved; a region of ours already
    /// there is a dead server's (the caller holds the pid file, see the
    /// module doc) and is replaced; anything not ours is left alone.
    ///
    /// The region says whose it is (magic, `kind`, our pid) from the moment
    /// it has its size: a server killed while preparing it leaves a region
    /// that `ipclab clean` and the next server recognise as a dead server's,
    /// not an unknown file they must leave alone.
    fn create(&self, spec: &Spec, size: usize, kind: u32) -> io::Result<(Mapped, CreatedPath)> {
        let name = self.shown();
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let mode = Mode::S_IRUSR | Mode::S_IWUSR;
        let fd = match self.open(flags, mode) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                let old = self.open(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
                map(old, &name, spec, None)
                    .map_err(|e| io::Error::new(e.kind(), format!("{e}; not removing it")))?;
                self.unlink()?;
                self.open(flags, mode)?
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot create {name}: {e}"),
                ));
            }
        };
        // First the size and who we are (two system calls after the name
        // appears), then the rest.
        let identified = ftruncate(&fd, size as libc::off_t)
            .and_then(|()| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&spec.magic.to_ne_bytes());
                id[8..12].copy_from_slice(&kind.to_ne_bytes());
                id[12..].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
                nix::sys::uio::pwrite(&fd, &id, 0).map(drop)
            })
            .map_err(|e| {
                // Not offered after all: remove it, if the name is still it.
                let ours = |m: std::fs::Metadata| (m.dev(), m.ino());
                let fd_meta = nix::sys::stat::fstat(&fd).map(|m| (m.st_dev, m.st_ino));
                if std::fs::symlink_metadata(&self.path).map(ours).ok() == fd_meta.ok() {
                    let _ = self.unlink();
                }
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot size {name} to {size} bytes: {e}"),
                )
            });
        identified?;
        let file = CreatedPath::adopt(self.path.clone())?;
        fchmod(&fd, mode)?;
        // Reserve the pages now: on a full tmpfs a sparse file maps fine and
        // the first store into a missing page kills the process with SIGBUS.
        nix::fcntl::posix_fallocate(&fd, 0, size as libc::off_t).map_err(|e| {
            let hint = if e == Errno::ENOSPC {
                " (/dev/shm is full: see `df -h /dev/shm` and `ipclab limits`)"
            } else {
                ""
            };
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot reserve {size} bytes for {name}: {e}{hint}"),
            )
        })?;
        Ok((Mapped::new(&File::from(fd), size)?, file))
    }
}

/// Map an existing region of `spec` (of `kind`, or either): ours (owner
/// checked on the descriptor), exactly the size of its kind, with our magic.
pub(crate) fn map(fd: OwnedFd, name: &str, spec: &Spec, kind: Option<u32>) -> io::Result<Region> {
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != getuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{name} is not a file of ours (uid {})", meta.uid()),
        ));
    }
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not an ipclab {} region", spec.transport),
        )
    };
    let size = meta.len() as usize;
    let size_kind = match size {
        PAGE => MEETING,
        s if s == spec.session_size => SESSION,
        _ => return Err(bad()),
    };
    let region = Region {
        map: Mapped::new(&file, size)?,
    };
    let c = region.common();
    if c.magic.load(Ordering::Acquire) != spec.magic
        || c.kind.load(Ordering::SeqCst) != size_kind
        || kind.is_some_and(|k| k != size_kind)
    {
        return Err(bad());
    }
    Ok(region)
}

pub(crate) fn ready_region(
    names: &Names,
    id: u64,
    kind: u32,
    size: usize,
) -> io::Result<(Region, CreatedPath)> {
    // Magic, kind and server pid are written by `create`.
    let (map, file) = names.object_for(kind).create(names.spec, size, kind)?;
    let region = Region { map };
    if kind == SESSION {
        (names.spec.init)(&region)?;
        // Last: a client takes the region only if it bears the number the
        // meeting region names.
        region.common().session.store(id, Ordering::Release);
    }
    Ok((region, file))
}

impl Names {
    pub(crate) fn object_for(&self, kind: u32) -> Object {
        if kind == MEETING {
            self.meeting()
        } else {
            self.session()
        }
    }
}

/// `ipclab clean`: the pid files of `dir`'s servers, judged by their pid,
/// and their regions, judged by the pid file of their name (never by the
/// words in the region, which a peer can write).
pub(crate) fn leftovers(spec: &'static Spec, dir: &Path) -> Vec<Leftover> {
    let t = spec.transport;
    let mut found = Vec::new();
    // The regions of servers whose pid file is live (or not ours to judge).
    let mut guarded: Vec<(PathBuf, String)> = Vec::new();
    for (instance, path) in objects::files_with_suffix(dir, &format!(".{t}.pid")) {
        let file = objects::judge_pid_file(t, &path);
        if !file.removable() {
            let names = Names {
                spec,
                dir: dir.to_path_buf(),
                name: instance,
            };
            let why = format!("its server's pid file {} is kept", path.display());
            guarded.push((names.meeting().path, why.clone()));
            guarded.push((names.session().path, why));
        }
        found.push(file);
    }
    let (what, paths): (&str, Vec<PathBuf>) = match spec.store {
        Store::Shm { tag } => {
            let prefix = prefix(tag, dir);
            let Ok(entries) = std::fs::read_dir("/dev/shm") else {
                return found;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix[1..]))
                .map(|n| PathBuf::from(format!("/dev/shm/{n}")))
                .collect();
            found.sort();
            ("POSIX shm object", found)
        }
        Store::File { suffix } => (
            "mapped file",
            objects::files_with_suffix(dir, suffix)
                .into_iter()
                .map(|(_, p)| p)
                .collect(),
        ),
    };
    found.extend(paths.into_iter().map(|path| {
        if let Some((_, why)) = guarded.iter().find(|(p, _)| *p == path) {
            let object = format!("{what} {}", path.display());
            return Leftover::kept(t, object, Verdict::Live, why.clone(), Some(&path));
        }
        let obj = match spec.store {
            Store::Shm { .. } => {
                let n = path.file_name().unwrap_or_default().to_string_lossy();
                Object {
                    store: spec.store,
                    shm: format!("/{n}"),
                    path: path.clone(),
                }
            }
            Store::File { .. } => Object {
                store: spec.store,
                shm: String::new(),
                path: path.clone(),
            },
        };
        Leftover::judge_file(
            t,
            what,
            &path,
            |t| t.is_file(),
            || {
                let fd = obj.open(OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
                // Not a region of ours (or one whose server died in the
                // instant between creating and initialising it: the two
                // cannot be told apart, so it is left alone).
                map(fd, &obj.shown(), spec, None)?;
                // A server creates its pid file before its regions and
                // removes it after them: without a live one, nobody serves.
                Ok(Err(format!(
                    "no live server has its name (no live pid file .{t}.pid for it)"
                )))
            },
        )
    }));
    found
}

/// The meeting region of a server of `cfg`, if outside its runtime
/// directory. (The session region's name exists only between sessions;
/// `leftovers` finds both.)
pub(crate) fn external_objects(spec: &'static Spec, cfg: &Config) -> Vec<PathBuf> {
    let names = Names::new(spec, cfg);
    match spec.store {
        Store::Shm { .. } => vec![names.meeting().path],
        Store::File { .. } => Vec::new(),
    }
}
