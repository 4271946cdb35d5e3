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
//! by guessing. Each is judged ([`crate::objects`]) by the same test its
//! server uses to replace a stale object at start-up (a server answers on
//! the socket; somebody reads the FIFO; the pid in the file is alive;
//! somebody holds the lock): a live server's objects and anything not ours
//! are reported and left alone. This module asks every transport of the
//! list and adds what none of them claims.
//!
//! [`Transport::leftovers`]: crate::transport::Transport::leftovers

use std::fs;
use std::path::{Path, PathBuf};

use crate::objects::{Leftover, Verdict};
use crate::transport::{self, Transport};

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
    fn unclaimed_files_are_foreign() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
        let found = survey(tmp.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verdict, Verdict::Foreign);
        assert!(!found[0].removable());
    }
}
