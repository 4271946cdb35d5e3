//! The objects a server makes outside its descriptors, and the judges of
//! what a dead one left.
//!
//! A kernel object with a name — a socket file, a FIFO, a pid or key file
//! in the runtime directory, a `/dev/shm` entry, a System V queue — outlives
//! a server killed with SIGKILL. Whoever finds one (a server starting on
//! the same name, `ipclab clean`, a server sweeping its dead clients'
//! objects, the tests) must decide whether it is stale, live or not ours,
//! and must never remove what is not provably ours and provably dead. The
//! pieces of that decision are here, below every transport:
//!
//! * [`Leftover`]: one object found, with its [`Verdict`] and the reason,
//!   and for a stale one the way to remove it (a file only if the path
//!   still names the inode that was judged, `O_PATH` pinned);
//! * [`Leftover::judge_file`]: a file judged by its transport's own test;
//! * [`pid_verdict`]: live or gone, by the recorded pid;
//! * [`files_with_suffix`]: the files of every instance of a transport;
//! * [`socket_file_leftovers`]: a UNIX socket file, judged by whether a
//!   server answers on it (`connect(2)`: `ECONNREFUSED` means nobody).
//!
//! The objects a live server creates (the runtime directory, its files
//! removed on drop, pid files) are made by [`crate::runtime`].

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::SockType;
use nix::unistd::getuid;
use serde::Serialize;

use crate::runtime::{self, pid_alive};
use crate::sys::unix_socket::connect_socket;

/// How an object was judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its server is gone: ours to remove.
    Stale,
    /// A live server (or client) uses it: left alone.
    Live,
    /// Not ours, or not an ipclab object: left alone.
    Foreign,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Stale => "STALE",
            Verdict::Live => "LIVE",
            Verdict::Foreign => "FOREIGN",
        })
    }
}

type Remover = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// One object found by `clean`.
#[derive(Serialize)]
pub struct Leftover {
    pub transport: String,
    /// What it is, e.g. `FIFO /run/user/1000/ipclab/x.fifo`.
    pub object: String,
    pub verdict: Verdict,
    /// Why it was judged so.
    pub why: String,
    /// The file it is, if it is one in the runtime directory.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    #[serde(skip)]
    remove: Option<Remover>,
}

impl fmt::Debug for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.verdict, self.object, self.why)
    }
}

impl Leftover {
    /// A stale object that `remove` deletes.
    pub fn stale(
        transport: &str,
        object: String,
        why: String,
        remove: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> Leftover {
        Leftover {
            transport: transport.into(),
            object,
            verdict: Verdict::Stale,
            why,
            path: None,
            remove: Some(Box::new(remove)),
        }
    }

    /// A stale file: removed only if the path still names the object that
    /// was judged (same device and inode) and it is still ours.
    pub fn stale_file(transport: &str, what: &str, path: &Path, why: String) -> Leftover {
        // An O_PATH descriptor pins the inode, so its number cannot be
        // reused by a file created after us (see `runtime::CreatedPath`).
        let pin = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok();
        let id = pin
            .as_ref()
            .and_then(|fd| nix::sys::stat::fstat(fd).ok())
            .map(|st| (st.st_dev, st.st_ino));
        let p = path.to_path_buf();
        Leftover {
            path: Some(p.clone()),
            ..Leftover::stale(
                transport,
                format!("{what} {}", path.display()),
                why,
                move || {
                    let _pin = pin;
                    let m = fs::symlink_metadata(&p)?;
                    if id.is_none()
                        || Some((m.dev(), m.ino())) != id
                        || m.uid() != getuid().as_raw()
                    {
                        return Err(io::Error::other(format!(
                            "{} changed since it was judged; not removing it",
                            p.display()
                        )));
                    }
                    fs::remove_file(&p)
                },
            )
        }
    }

    /// An object left alone.
    pub fn kept(
        transport: &str,
        object: String,
        verdict: Verdict,
        why: String,
        path: Option<&Path>,
    ) -> Leftover {
        Leftover {
            transport: transport.into(),
            object,
            verdict,
            why,
            path: path.map(Path::to_path_buf),
            remove: None,
        }
    }

    /// A file judged by `check`: `Ok(None)` stale (with the reason in
    /// `stale_why`), `Ok(Some(why))` live, `Err` not ours.
    pub fn judge_file(
        transport: &str,
        what: &str,
        path: &Path,
        is_kind: impl Fn(&fs::FileType) -> bool,
        check: impl FnOnce() -> io::Result<Result<String, String>>,
    ) -> Leftover {
        let object = format!("{what} {}", path.display());
        if let Err(e) = runtime::check_ours(path, is_kind, what) {
            return Leftover::kept(
                transport,
                object,
                Verdict::Foreign,
                e.to_string(),
                Some(path),
            );
        }
        match check() {
            Ok(Err(stale_why)) => Leftover::stale_file(transport, what, path, stale_why),
            Ok(Ok(live_why)) => {
                Leftover::kept(transport, object, Verdict::Live, live_why, Some(path))
            }
            Err(e) => Leftover::kept(
                transport,
                object,
                Verdict::Foreign,
                format!("cannot judge it: {e}"),
                Some(path),
            ),
        }
    }

    pub fn removable(&self) -> bool {
        self.verdict == Verdict::Stale && self.remove.is_some()
    }

    /// Remove a stale object.
    pub fn remove(&mut self) -> io::Result<()> {
        match self.remove.take() {
            Some(f) if self.verdict == Verdict::Stale => f(),
            _ => Err(io::Error::other(format!(
                "{} is not stale; not removing it",
                self.object
            ))),
        }
    }
}

/// A server's pid file (`<dir>/<name>.<transport>.pid`), judged by whether
/// the pid it names is alive: the one rule every transport with a pid file
/// uses.
pub fn judge_pid_file(transport: &'static str, path: &Path) -> Leftover {
    Leftover::judge_file(
        transport,
        "pid file",
        path,
        |t| t.is_file(),
        || {
            let pid = runtime::read_pid_file(path)?;
            Ok(pid_verdict("server", pid))
        },
    )
}

/// The verdict on an object whose owner is process `pid` (`who`: "server"
/// or "client"): `Ok` (live, why) or `Err` (stale, why), as
/// [`Leftover::judge_file`] takes it.
pub fn pid_verdict(who: &str, pid: i32) -> Result<String, String> {
    if pid_alive(pid) {
        Ok(format!("its {who}, pid {pid}, is running"))
    } else {
        Err(format!("its {who}, pid {pid}, is gone"))
    }
}

/// Files in `dir` whose names end with `suffix`, as (instance name, path).
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let instance = name.strip_suffix(suffix)?.to_string();
            (!instance.is_empty()).then(|| (instance, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// `ipclab clean` for a transport whose server listens on a UNIX socket
/// file `<dir>/<name><suffix>` of `kind`: stale when nobody listens on it
/// (`ECONNREFUSED`), live when a server accepts or holds it.
pub fn socket_file_leftovers(
    dir: &Path,
    suffix: &str,
    kind: SockType,
    transport: &'static str,
) -> Vec<Leftover> {
    files_with_suffix(dir, suffix)
        .into_iter()
        .map(|(_, path)| {
            Leftover::judge_file(
                transport,
                "socket file",
                &path,
                |t| t.is_socket(),
                || match connect_socket(&path, kind, transport, Duration::from_secs(1)) {
                    Ok(_) => Ok(Ok("a server answers on it".into())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        Ok(Err("nobody listens on it: its server was killed".into()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        Ok(Ok("a server holds it but does not accept (stopped?)".into()))
                    }
                    Err(e) => Err(e),
                },
            )
        })
        .collect()
}

/// The files of instance `name` still in `dir` (those whose names begin
/// with it), by file name: what a demo checks is gone after its server
/// stopped.
pub fn instance_files(dir: &Path, name: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.sock");
        fs::write(&p, b"old").unwrap();
        let mut l = Leftover::stale_file("unix", "socket file", &p, "test".into());
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"someone else's").unwrap();
        assert!(l.remove().is_err());
        assert!(p.exists());
    }
}
