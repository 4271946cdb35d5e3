//! `ipclab clean`: what servers killed with SIGKILL left behind.
//!
//! A server removes its objects when it stops, even on Ctrl-C or SIGTERM;
//! only SIGKILL (or a power cut) gives it no chance. What is left then
//! depends on the mechanism: the kernel frees everything that lives only
//! as long as a descriptor does (pipes, sockets, locks), but not names in a
//! filesystem (socket files, FIFOs, pid and key files, `/dev/shm` entries)
//! nor SysV objects, which live until `IPC_RMID`.
//!
//! Each transport finds its own leftovers ([`Transport::leftovers`]) in the
//! runtime directory — and, for objects elsewhere, only by names derived
//! from it (the `/dev/shm` prefix, the `ftok` keys of the key files): never
//! by guessing. Each is judged by the same test its server uses to replace
//! a stale object at start-up (a server answers on the socket; somebody
//! reads the FIFO; the pid in the file is alive; somebody holds the lock):
//! a live server's objects and anything not ours are reported and left
//! alone.
//!
//! [`Transport::leftovers`]: crate::transport::Transport::leftovers

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::getuid;
use serde::Serialize;

use crate::transport::{self, Transport};

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
        if let Err(e) = crate::runtime::check_ours(path, is_kind, what) {
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

/// The verdict on an object whose owner is process `pid` (`who`: "server"
/// or "client"): `Ok` (live, why) or `Err` (stale, why), as
/// [`Leftover::judge_file`] takes it.
pub fn pid_verdict(who: &str, pid: i32) -> Result<String, String> {
    if crate::interrupt::pid_alive(pid) {
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

/// Everything every transport left in `dir` (and elsewhere under names
/// derived from `dir`), plus the files in `dir` no transport claims.
pub fn survey(dir: &Path) -> Vec<Leftover> {
    survey_with(dir, transport::all())
}

pub fn survey_with(dir: &Path, transports: &[&dyn Transport]) -> Vec<Leftover> {
    let mut found: Vec<Leftover> = transports.iter().flat_map(|t| t.leftovers(dir)).collect();
    if let Ok(entries) = fs::read_dir(dir) {
        let mut others: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !found.iter().any(|l| l.path.as_deref() == Some(p)))
            .collect();
        others.sort();
        for p in others {
            found.push(Leftover::kept(
                "-",
                p.display().to_string(),
                Verdict::Foreign,
                "not an object of any ipclab transport".into(),
                Some(&p),
            ));
        }
    }
    found
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

    #[test]
    fn unclaimed_files_are_foreign() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
        let found = survey(tmp.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verdict, Verdict::Foreign);
        assert!(!found[0].removable());
    }
}
