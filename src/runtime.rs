//! The private runtime directory, objects we created there, pid files and
//! whether their process lives, and stop signals.
//!
//! Filesystem objects (socket files, FIFOs, pid files …) live in one
//! directory that only we can enter: `$XDG_RUNTIME_DIR/ipclab`, or
//! `/tmp/ipclab-<uid>` when there is no `XDG_RUNTIME_DIR`, mode 0700.
//! A directory that exists but is not ours, is a symlink, or is writable by
//! group or others is refused: someone else could plant or swap files in it.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use nix::unistd::getuid;

/// The default runtime directory.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() && Path::new(&d).is_dir() => PathBuf::from(d).join("ipclab"),
        _ => PathBuf::from(format!("/tmp/ipclab-{}", getuid())),
    }
}

/// Create `dir` (mode 0700) if it is missing, and check it is safe to use.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot create runtime directory {}: {e} (choose another with --dir)",
                    dir.display()
                ),
            ));
        }
    }
    let meta = fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing runtime directory {}: {why} (choose another with --dir)",
                dir.display()
            ),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link");
    }
    if !meta.is_dir() {
        return refuse("it is not a directory");
    }
    if meta.uid() != getuid().as_raw() {
        return refuse(&format!("it belongs to uid {}, not to us", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(&format!(
            "it is writable by group or others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// A filesystem object this process created; dropping it removes it — but
/// only if the path still names the very object we made, so we never unlink
/// a file someone put there after us. We hold an `O_PATH` descriptor on the
/// object: while it is open the inode cannot be freed and its number reused,
/// so (device, inode) identifies it exactly (timestamps would not: every
/// write to a FIFO changes them).
#[derive(Debug)]
pub struct CreatedPath {
    path: PathBuf,
    _pin: OwnedFd,
    id: (u64, u64),
}

impl CreatedPath {
    /// Record the object now at `path` as ours, and make it owner-only.
    pub fn adopt(path: PathBuf) -> io::Result<Self> {
        let pin = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let meta = fs::File::from(pin.try_clone()?).metadata()?;
        if meta.file_type().is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is a symbolic link; refusing it", path.display()),
            ));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(CreatedPath {
            path,
            _pin: pin,
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CreatedPath {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Something already exists at `path`: make sure it is ours and of the
/// expected kind before anyone replaces it; otherwise refuse, naming it.
/// (A symlink is never "ours": `is_kind` sees the link itself.)
pub fn check_ours(
    path: &Path,
    is_kind: impl Fn(&fs::FileType) -> bool,
    kind: &str,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !is_kind(&meta.file_type()) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not {kind}; not removing it",
                path.display()
            ),
        ));
    }
    if meta.uid() != getuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}; not removing it",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Create `path` holding our pid, owner-only. A pid file whose process is
/// gone is stale and replaced; one whose process lives means a live server
/// (`AddrInUse`); anything that is not our regular file is left alone.
pub fn create_pid_file(path: &Path) -> io::Result<CreatedPath> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if fs::symlink_metadata(path).is_ok() {
        check_ours(path, fs::FileType::is_file, "a pid file")?;
        match read_pid_file(path) {
            Ok(pid) if pid_alive(pid) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is already in use by a live server (pid {pid}; stop it, or pick another --name)",
                        path.display()
                    ),
                ));
            }
            Ok(_) => fs::remove_file(path)?,
            // Not a pid file we wrote: not ours to remove.
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{e}: it is not an ipclab pid file; not removing it"),
                ));
            }
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    writeln!(f, "{}", std::process::id())?;
    CreatedPath::adopt(path.to_path_buf())
}

/// The pid in a pid file.
pub fn read_pid_file(path: &Path) -> io::Result<i32> {
    let text = fs::read_to_string(path)?;
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no pid in it", path.display()),
            )
        })
}

/// The pid of the live server whose pid file is `path`, or an error that
/// says there is none (`NotFound`) or that it died (`ConnectionRefused`).
pub fn live_server_pid(path: &Path, transport: &str) -> io::Result<i32> {
    let pid = read_pid_file(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no server at {}: the pid file does not exist (start one with `ipclab serve {transport}`)",
                    path.display()
                ),
            )
        } else {
            e
        }
    })?;
    if !pid_alive(pid) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "the server of {} (pid {pid}) is gone: a stale pid file",
                path.display()
            ),
        ));
    }
    Ok(pid)
}

/// A flag raised by SIGINT, SIGTERM and SIGHUP, so a server can leave its
/// loop and remove its objects. (The handler only stores to an atomic,
/// which is async-signal-safe.)
pub fn stop_flag() -> io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Wait at most `wait` for `fd` to become readable (or hung up).
/// `Ok(false)` means the time ran out.
pub fn wait_readable<F: AsFd>(fd: &F, wait: Duration) -> io::Result<bool> {
    wait_fd(fd, PollFlags::POLLIN, wait)
}

/// Wait at most `wait` for `events` on `fd` (a hang-up or error counts as
/// ready: the next read or write reports it). `Ok(false)` means the time ran
/// out. A signal interrupting the wait does not shorten or lengthen it.
pub fn wait_fd<F: AsFd>(fd: &F, events: PollFlags, wait: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up, so a sub-millisecond remainder still waits.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), events)];
        match poll(&mut fds, timeout) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Is process `pid` still there and running? `kill(pid, 0)` says whether
/// the pid exists; a killed process whose parent has not reaped it yet (a
/// zombie, state `Z` in `/proc/<pid>/stat`) still exists but will never
/// answer, so it counts as gone.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH)
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
    fn refuses_unsafe_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good");
        prepare_dir(&good).unwrap();
        assert_eq!(fs::metadata(&good).unwrap().mode() & 0o777, 0o700);

        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            prepare_dir(&open)
                .unwrap_err()
                .to_string()
                .contains("writable")
        );

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(
            prepare_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
    }

    #[test]
    fn created_path_never_removes_a_replacement() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("obj");
        fs::write(&p, b"ours").unwrap();
        let ours = CreatedPath::adopt(p.clone()).unwrap();
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"someone else's").unwrap();
        drop(ours);
        assert_eq!(fs::read(&p).unwrap(), b"someone else's");

        let ours = CreatedPath::adopt(p.clone()).unwrap();
        drop(ours);
        assert!(!p.exists());
    }

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
}
