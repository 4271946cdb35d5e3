//! System-wide objects, not held through a descriptor: SysV message queues,
//! semaphore sets and segments (`/proc/sysvipc/{msg,sem,shm}`, what `ipcs`
//! prints), and files — FIFOs, socket files, `/dev/shm` entries — shown as
//! `ls -l` would.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde::Serialize;

/// One row of `/proc/sysvipc/{msg,sem,shm}`.
#[derive(Clone, Debug, Serialize)]
pub struct SysvObject {
    /// `msg`, `sem` or `shm`.
    pub kind: String,
    pub key: i32,
    pub id: i32,
    /// Permission bits, e.g. `600`.
    pub perms: String,
    pub uid: u32,
    /// The interesting columns of its kind (qnum, cbytes, nsems, size, nattch …).
    pub details: Vec<(String, String)>,
}

/// Every SysV object of `kind` (`msg`, `sem`, `shm`) we can see. The
/// header line names the columns, so they are read by name.
pub fn sysv_objects(kind: &str) -> Vec<SysvObject> {
    let Ok(text) = fs::read_to_string(format!("/proc/sysvipc/{kind}")) else {
        return Vec::new();
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let shown: &[&str] = match kind {
        "msg" => &["qnum", "cbytes", "lspid", "lrpid"],
        "sem" => &["nsems"],
        _ => &["size", "nattch", "cpid", "lpid"],
    };
    lines
        .filter_map(|l| {
            let row: HashMap<&str, &str> =
                names.iter().copied().zip(l.split_whitespace()).collect();
            let id = row.get("msqid").or(row.get("semid")).or(row.get("shmid"))?;
            Some(SysvObject {
                kind: kind.into(),
                key: row.get("key")?.parse().ok()?,
                id: id.parse().ok()?,
                // Already octal in /proc/sysvipc.
                perms: row.get("perms")?.to_string(),
                uid: row.get("uid")?.parse().ok()?,
                details: shown
                    .iter()
                    .filter_map(|k| Some((k.to_string(), row.get(k)?.to_string())))
                    .collect(),
            })
        })
        .collect()
}

impl SysvObject {
    pub fn line(&self) -> String {
        let what = match self.kind.as_str() {
            "msg" => "message queue",
            "sem" => "semaphore set",
            _ => "shared memory segment",
        };
        let d: Vec<String> = self
            .details
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "SysV {what} key 0x{:08x} id {} mode {} uid {} {}",
            self.key,
            self.id,
            self.perms,
            self.uid,
            d.join(" ")
        )
    }
}

/// `ls -l`-style line for a file: type and mode, owner, size, path.
pub fn ls_line(path: &Path) -> String {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return format!("{}: {e}", path.display()),
    };
    let ft = m.file_type();
    let (t, what) = if ft.is_fifo() {
        ('p', "FIFO")
    } else if ft.is_socket() {
        ('s', "socket file")
    } else if ft.is_dir() {
        ('d', "directory")
    } else if ft.is_symlink() {
        ('l', "symbolic link")
    } else if path.starts_with("/dev/mqueue") {
        ('-', "POSIX message queue")
    } else if path.starts_with("/dev/shm") {
        ('-', "POSIX shared memory")
    } else {
        ('-', "regular file")
    };
    let mode = m.mode();
    let bits: String = (0..9)
        .map(|i| {
            if mode & (0o400 >> i) != 0 {
                ['r', 'w', 'x'][i % 3]
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "{t}{bits} uid {} {:>8} {}  ({what}, inode {})",
        m.uid(),
        m.len(),
        path.display(),
        m.ino()
    )
}
