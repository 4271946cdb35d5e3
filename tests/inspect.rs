//! `ipclab inspect` and `ipclab demo --inspect`, checked against objects
//! and processes the tests create themselves (never a fixed output).

mod common;

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use common::{Env, exe, watchdog};
use ipclab::protocol::Form;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// `ipclab inspect --json` of `pids`, run as a user would.
fn inspect(pids: &[i32]) -> Vec<Value> {
    let out = Command::new(exe())
        .arg("inspect")
        .args(pids.iter().map(|p| p.to_string()))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn fd_entry(p: &Value, fd: i32) -> Value {
    p["descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["fd"] == fd)
        .unwrap_or_else(|| panic!("fd {fd} missing from {p:#}"))["object"]
        .clone()
}

fn holds(holders: &Value, pid: i32, fd: i32) -> bool {
    holders
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["pid"] == pid && h["fd"] == fd)
}

#[test]
fn resolves_objects_this_process_holds() {
    watchdog(LIMIT, || {
        let me = std::process::id() as i32;
        let dir = tempfile::tempdir().unwrap();

        let tl = TcpListener::bind("127.0.0.1:0").unwrap();
        let tc = TcpStream::connect(tl.local_addr().unwrap()).unwrap();
        let (ts, _) = tl.accept().unwrap();

        let upath = dir.path().join("s.sock");
        let ul = UnixListener::bind(&upath).unwrap();
        let uc = UnixStream::connect(&upath).unwrap();
        let (us, _) = ul.accept().unwrap();

        let (pr, pw) = nix::unistd::pipe().unwrap();

        let fpath = dir.path().join("f.fifo");
        nix::unistd::mkfifo(&fpath, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fifo = File::options().read(true).write(true).open(&fpath).unwrap();

        let lpath = dir.path().join("locked");
        let mut locked = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&lpath)
            .unwrap();
        locked.write_all(&[0; 4096]).unwrap();
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = 10;
        fl.l_len = 5;
        assert_eq!(
            unsafe { libc::fcntl(locked.as_raw_fd(), libc::F_OFD_SETLK, &fl) },
            0
        );
        let map = unsafe { memmap2::MmapMut::map_mut(&locked).unwrap() };

        let p = &inspect(&[me])[0];
        assert_eq!(p["pid"], me);

        let listen = fd_entry(p, tl.as_raw_fd());
        assert_eq!(listen["kind"], "tcp");
        assert_eq!(listen["state"], "LISTEN");
        assert_eq!(listen["local"], tl.local_addr().unwrap().to_string());
        let client = fd_entry(p, tc.as_raw_fd());
        assert_eq!(client["state"], "ESTABLISHED");
        assert_eq!(client["remote"], tl.local_addr().unwrap().to_string());
        assert!(holds(&client["peer"], me, ts.as_raw_fd()), "{client:#}");

        let listen = fd_entry(p, ul.as_raw_fd());
        assert_eq!(listen["kind"], "unix");
        assert_eq!(listen["state"], "LISTEN");
        assert_eq!(listen["path"], upath.to_str().unwrap());
        let client = fd_entry(p, uc.as_raw_fd());
        if client["note"].is_null() {
            assert!(holds(&client["peer"], me, us.as_raw_fd()), "{client:#}");
        } else {
            eprintln!("UNIX peers not checked: {}", client["note"]);
        }

        let read_end = fd_entry(p, pr.as_raw_fd());
        assert_eq!(read_end["kind"], "pipe");
        assert!(holds(&read_end["other_end"], me, pw.as_raw_fd()));

        let f = fd_entry(p, fifo.as_raw_fd());
        assert_eq!(f["kind"], "fifo");
        assert_eq!(f["path"], fpath.to_str().unwrap());

        let l = fd_entry(p, locked.as_raw_fd());
        assert_eq!(l["kind"], "file");
        let locks = l["locks"].as_array().unwrap();
        assert!(
            locks.iter().any(|k| k["class"] == "OFDLCK"
                && k["access"] == "WRITE"
                && k["start"] == 10
                && k["end"] == 14
                && k["this_fd"] == true),
            "{l:#}"
        );
        assert!(
            p["shared_mappings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["path"] == lpath.to_str().unwrap() && m["kind"] == "shared file"),
            "{p:#}"
        );
        drop(map);
    });
}

#[test]
fn finds_the_peer_in_a_server_process() {
    for name in ["tcp", "unix"] {
        watchdog(LIMIT, move || {
            let env = Env::new(name);
            let server = env.server();
            let mut c = env.client(&server, Form::Binary);
            c.ping().unwrap();
            let me = std::process::id() as i32;
            let procs = inspect(&[server.pid().as_raw(), me]);
            let (srv, cli) = (&procs[0], &procs[1]);
            // The client's socket is connected to one of the server's.
            let mine: Vec<&Value> = cli["descriptors"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    let o = &d["object"];
                    o["kind"] == name
                        && o["peer"]
                            .as_array()
                            .is_some_and(|h| h.iter().any(|h| h["pid"] == server.pid().as_raw()))
                })
                .collect();
            if name == "unix" && mine.is_empty() {
                let note = cli["descriptors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|d| d["object"]["note"].as_str().map(String::from));
                if let Some(n) = note {
                    eprintln!("UNIX peers not checked: {n}");
                    return;
                }
            }
            assert_eq!(mine.len(), 1, "{name}: {cli:#}");
            let theirs_fd = mine[0]["object"]["peer"][0]["fd"].as_i64().unwrap() as i32;
            let theirs = fd_entry(srv, theirs_fd);
            assert_eq!(theirs["kind"], name);
            assert!(holds(
                &theirs["peer"],
                me,
                mine[0]["fd"].as_i64().unwrap() as i32
            ));
            // And the server's listening socket is there too.
            assert!(
                srv["descriptors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["object"]["state"] == "LISTEN")
            );
        });
    }
}

#[test]
fn demo_tcp_inspect_shows_three_sockets_with_matching_ports() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(exe())
            .args(["demo", "tcp", "--inspect", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{s}");
        let sockets: Vec<&str> = s.lines().filter(|l| l.contains(" tcp ")).collect();
        let listen: Vec<&str> = sockets
            .iter()
            .copied()
            .filter(|l| l.contains("LISTEN"))
            .collect();
        let est: Vec<&str> = sockets
            .iter()
            .copied()
            .filter(|l| l.contains("ESTABLISHED"))
            .collect();
        assert_eq!((listen.len(), est.len()), (1, 2), "{s}");
        // "127.0.0.1:A -> 127.0.0.1:B ESTABLISHED": the two ends mirror
        // each other, and the server's local port is the listening port.
        let ends = |l: &str| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "->").unwrap();
            (w[i - 1].to_string(), w[i + 1].to_string())
        };
        let (a, b) = (ends(est[0]), ends(est[1]));
        assert_eq!(
            (a.0.clone(), a.1.clone()),
            (b.1.clone(), b.0.clone()),
            "{s}"
        );
        let port = listen[0]
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap();
        assert!(a.0 == port || b.0 == port, "{s}");
        assert!(s.contains("lsof"), "the explanation is missing: {s}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    });
}

#[test]
fn demo_inspect_shows_each_transports_objects() {
    // What each transport's inspection must contain.
    let expect: &[(&str, &str)] = &[
        ("pipe", " pipe "),
        ("fifo", " fifo "),
        ("msgq", "SysV message queue key"),
        ("posix-mq", "posix mqueue"),
        ("shm", "POSIX shm"),
        ("shm-spin", "ipclab-spin-"),
        ("mmap", "shared file"),
        ("eventfd", "[eventfd] eventfd-count"),
        ("signal", "blocked SIGRT"),
        ("flock", "OFDLCK WRITE"),
        ("unix", "unix/stream"),
        ("unix-seqpacket", "unix/seqpacket"),
        ("unix-dgram", "unix/dgram"),
        ("udp", "CONNECTED"),
    ];
    for &(t, needle) in expect {
        watchdog(LIMIT, move || {
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new(exe())
                .args(["demo", t, "--inspect", "--dir"])
                .arg(dir.path())
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{s}");
            assert!(s.contains(needle), "{t}: no '{needle}' in\n{s}");
        });
    }
}

#[test]
fn a_missing_process_is_a_clear_error() {
    watchdog(LIMIT, || {
        let out = Command::new(exe())
            .args(["inspect", "999999999"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("no such process"), "{e}");
    });
}

/// A name chosen by another process (here: a file this test opens) cannot
/// clear the screen or forge a line of `inspect`'s output: control
/// characters are printed escaped.
#[test]
fn hostile_names_are_printed_escaped() {
    let dir = tempfile::Builder::new()
        .prefix("ipclab-t")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("evil\x1b[2J\nforged line");
    let f = File::create(&path).unwrap();
    let out = Command::new(exe())
        .arg("inspect")
        .arg(std::process::id().to_string())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !out.stdout.contains(&0x1b),
        "a raw ESC reached the terminal"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("evil\\x1b[2J\\nforged line"),
        "the name is not shown escaped: {text}"
    );
    drop(f);
}
