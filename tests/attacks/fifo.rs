//! Attacks on the `fifo` transport's handshake: the 12-byte HELLO on the
//! well-known FIFO that names a private request/reply FIFO pair.
//!
//! The attacker writes into the well-known FIFO directly and makes (or does
//! not make) the FIFOs its HELLOs name. The server must not stall its
//! accept loop on any of them (a real client is served within 2 s
//! meanwhile), must not open or remove anything that is not a FIFO of its
//! own user, and must not start a thread per forged HELLO.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, chown, mkfifo};

use super::Attack;
use crate::common::{Env, next_client_is_served, proc_stat};
use ipclab::process::ServerProcess;

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "fifo: a truncated HELLO, then a real client",
            run: truncated_hello_then_a_client,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "fifo: HELLOs naming what is not a FIFO of ours",
            run: hellos_naming_foreign_objects,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "fifo: HELLOs whose reply FIFO is already full",
            run: full_reply_fifos_do_not_stall_accept,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "fifo: a flood of HELLOs naming pairs never opened",
            run: flood_of_hellos_naming_unopened_pairs,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "fifo: clients that open their pair and stop",
            run: clients_that_open_their_pair_and_stop,
            grow_kib: 16 * 1024,
        },
    ]
}

/// The attacker's own pid: the FIFO names it makes are of a live process,
/// so the server's sweep of dead clients' leftovers does not remove them.
fn me() -> u32 {
    std::process::id()
}

fn well_known(env: &Env) -> File {
    File::from(open_nb(&env.cfg.object_path(".fifo"), OFlag::O_WRONLY))
}

fn pair(env: &Env, conn: u32) -> (PathBuf, PathBuf) {
    let base = format!(".{}-{conn}", me());
    (
        env.cfg.object_path(&format!("{base}.req")),
        env.cfg.object_path(&format!("{base}.reply")),
    )
}

fn hello(pid: u32, conn: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&pid.to_le_bytes());
    h[4..8].copy_from_slice(&conn.to_le_bytes());
    h[8] = 1;
    h
}

fn open_nb(path: &Path, flags: OFlag) -> OwnedFd {
    open(
        path,
        flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn fifo(path: &Path) {
    mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
}

fn remove(paths: &[&Path]) {
    for p in paths {
        let _ = fs::remove_file(p);
    }
}

/// A real client gets its byte-exact echo within 2 s.
fn served_promptly(env: &Env, server: &ServerProcess, during: &str) {
    let t = Instant::now();
    next_client_is_served(env, server, Duration::from_secs(2));
    eprintln!(
        "fifo: a real client was served in {:?} {during}",
        t.elapsed()
    );
}

fn threads(server: &ServerProcess) -> u64 {
    proc_stat::status_kib(server.pid(), "Threads")
}

/// One write of fewer than 12 bytes (or 16 bytes of garbage, which leave
/// four) on the well-known FIFO must not swallow the next real client's
/// HELLO: its bytes follow the fragment in the same pipe. Before the fix
/// the server took the fragment and the HELLO for one malformed packet,
/// dropped both, and the client waited out its whole timeout.
fn truncated_hello_then_a_client(env: &Env, server: &ServerProcess) {
    let fragments: [&[u8]; 3] = [&hello(me(), 7)[..5], b"GET / HTTP/1.0\r\n", &[1u8; 11]];
    for fragment in fragments {
        let mut w = well_known(env);
        w.write_all(fragment).unwrap();
        drop(w);
        // Let the server read the fragment alone first.
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let mut cfg = server.client_config(&env.cfg);
        cfg.timeout = Duration::from_secs(2);
        let link = ipclab::transport::by_name("fifo").unwrap().connect(&cfg);
        assert!(
            link.is_ok(),
            "fifo: after a {}-byte write on the well-known FIFO the next client was not \
             let in ({:?} after {:?})",
            fragment.len(),
            link.err(),
            t.elapsed()
        );
        drop(link);
        served_promptly(env, server, "after a truncated HELLO");
    }
}

/// An `IN_OPEN` watch on each path: the server must open none of them.
fn watch_opens(paths: &[&Path]) -> Inotify {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    for p in paths {
        ino.add_watch(*p, AddWatchFlags::IN_OPEN | AddWatchFlags::IN_DONT_FOLLOW)
            .unwrap();
    }
    ino
}

fn opens_seen(ino: &Inotify) -> usize {
    match ino.read_events() {
        Ok(events) => events.len(),
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => panic!("inotify: {e}"),
    }
}

/// HELLOs naming a regular file, a symbolic link to a live FIFO pair, and
/// FIFOs that belong to another user (`nobody`): the server must neither
/// open them (watched with inotify; a FIFO opened by someone else wakes
/// its other end, and a foreign writer blocked in `open` would be let in
/// and then hit EPIPE) nor remove them, nor start a session on them.
fn hellos_naming_foreign_objects(env: &Env, server: &ServerProcess) {
    let mut w = well_known(env);
    let mut conn = 1000;

    // 1. Both names regular files of ours.
    let (req, reply) = pair(env, conn);
    File::create(&req).unwrap();
    File::create(&reply).unwrap();
    let ino = watch_opens(&[&req, &reply]);
    w.write_all(&hello(me(), conn)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        opens_seen(&ino),
        0,
        "fifo: the server opened regular files named by a HELLO"
    );
    assert!(
        req.exists() && reply.exists(),
        "fifo: the server removed regular files"
    );
    remove(&[&req, &reply]);

    // 2. Symbolic links to a FIFO pair with a reader and a writer in place.
    conn += 1;
    let (req, reply) = pair(env, conn);
    let (treq, treply) = (
        env.dir().join("target-of-link.req"),
        env.dir().join("target-of-link.reply"),
    );
    fifo(&treq);
    fifo(&treply);
    let reply_reader = File::from(open_nb(&treply, OFlag::O_RDONLY));
    let _req_placeholder = open_nb(&treq, OFlag::O_RDONLY);
    let _req_writer = open_nb(&treq, OFlag::O_WRONLY);
    symlink(&treq, &req).unwrap();
    symlink(&treply, &reply).unwrap();
    w.write_all(&hello(me(), conn)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut byte = [0u8; 1];
    assert!(
        !matches!((&reply_reader).read(&mut byte), Ok(n) if n > 0),
        "fifo: the server followed a symbolic link to a FIFO and wrote into it"
    );
    assert!(
        fs::symlink_metadata(&req).is_ok() && fs::symlink_metadata(&reply).is_ok(),
        "fifo: the server removed symbolic links"
    );
    assert!(treq.exists() && treply.exists());
    remove(&[&req, &reply, &treq, &treply]);

    // 3. Another user's FIFOs, each with its other end open (so that an
    //    open by the server would succeed).
    for foreign in ["both", "request only", "reply only"] {
        conn += 1;
        let (req, reply) = pair(env, conn);
        fifo(&req);
        fifo(&reply);
        let nobody = (Some(Uid::from_raw(65534)), Some(Gid::from_raw(65534)));
        if foreign != "reply only" {
            chown(&req, nobody.0, nobody.1).unwrap();
        }
        if foreign != "request only" {
            chown(&reply, nobody.0, nobody.1).unwrap();
        }
        let reply_reader = File::from(open_nb(&reply, OFlag::O_RDONLY));
        let req_placeholder = open_nb(&req, OFlag::O_RDONLY);
        let _req_writer = open_nb(&req, OFlag::O_WRONLY);
        drop(req_placeholder);
        let ino = watch_opens(&[&req, &reply]);
        w.write_all(&hello(me(), conn)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let opened = opens_seen(&ino);
        assert!(
            !matches!((&reply_reader).read(&mut byte), Ok(n) if n > 0),
            "fifo: the server welcomed a client on FIFOs of another user ({foreign})"
        );
        assert!(
            req.exists() && reply.exists(),
            "fifo: a HELLO naming FIFOs of which {foreign} belong(s) to another user made \
             the server remove a name (request {}, reply {})",
            req.exists(),
            reply.exists()
        );
        assert_eq!(
            opened, 0,
            "fifo: the server opened FIFOs of which {foreign} belong(s) to another user"
        );
        remove(&[&req, &reply]);
    }
    served_promptly(env, server, "after HELLOs naming foreign objects");
}

/// HELLOs naming pairs whose reply FIFO the attacker has already filled:
/// the server's WELCOME cannot go in. It must refuse such a pair at once:
/// waiting for room held up every other client for `--timeout` each.
fn full_reply_fifos_do_not_stall_accept(env: &Env, server: &ServerProcess) {
    let mut w = well_known(env);
    let mut held = Vec::new();
    let mut names = Vec::new();
    for conn in 2000..2004 {
        let (req, reply) = pair(env, conn);
        fifo(&req);
        fifo(&reply);
        let reply_reader = open_nb(&reply, OFlag::O_RDONLY);
        let mut filler = File::from(open_nb(&reply, OFlag::O_WRONLY));
        loop {
            match filler.write(&[0x55; 4096]) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let req_placeholder = open_nb(&req, OFlag::O_RDONLY);
        let req_writer = open_nb(&req, OFlag::O_WRONLY);
        held.push((reply_reader, filler, req_placeholder, req_writer));
        names.push((req, reply));
        w.write_all(&hello(me(), conn)).unwrap();
    }
    served_promptly(env, server, "while 4 HELLOs named full reply FIFOs");
    drop(held);
    for (req, reply) in &names {
        remove(&[req, reply]);
    }
}

/// Hundreds of HELLOs naming FIFO pairs that exist but that nobody opened,
/// and hundreds naming nothing at all: no thread each, no stall (a real
/// client queued behind them is served within 2 s), nothing removed.
fn flood_of_hellos_naming_unopened_pairs(env: &Env, server: &ServerProcess) {
    const N: u32 = 300;
    let before = threads(server);
    let mut names = Vec::new();
    for conn in 3000..3000 + N {
        let (req, reply) = pair(env, conn);
        fifo(&req);
        fifo(&reply);
        names.push((req, reply));
    }
    let mut w = well_known(env);
    let mut peak = before;
    for conn in 3000..3000 + N {
        w.write_all(&hello(me(), conn)).unwrap();
        w.write_all(&hello(me(), conn + 10 * N)).unwrap(); // names nothing
        if conn % 50 == 0 {
            peak = peak.max(threads(server));
        }
    }
    served_promptly(env, server, &format!("behind {} forged HELLOs", 2 * N));
    peak = peak.max(threads(server));
    assert!(
        peak <= before + 2,
        "fifo: {} forged HELLOs raised the server's threads from {before} to {peak}",
        2 * N
    );
    let removed = names
        .iter()
        .filter(|(q, r)| !q.exists() || !r.exists())
        .count();
    assert_eq!(
        removed, 0,
        "fifo: the server removed {removed} FIFO pair(s) it never opened"
    );
    for (req, reply) in &names {
        remove(&[req, reply]);
    }
}

/// Clients that make and open their pair, send their HELLO and then stop
/// (never read the WELCOME, never send): each is a session like an idle
/// client's, held until the idle timeout, but the accept loop goes on (a
/// real client is served within 2 s), and once they close, their sessions
/// end and their descriptors are released (the harness checks).
fn clients_that_open_their_pair_and_stop(env: &Env, server: &ServerProcess) {
    const N: u32 = 20;
    let mut w = well_known(env);
    let mut held = Vec::new();
    for conn in 4000..4000 + N {
        let (req, reply) = pair(env, conn);
        fifo(&req);
        fifo(&reply);
        let reply_reader = open_nb(&reply, OFlag::O_RDONLY);
        let req_placeholder = open_nb(&req, OFlag::O_RDONLY);
        let req_writer = open_nb(&req, OFlag::O_WRONLY);
        held.push((reply_reader, req_placeholder, req_writer, req, reply));
        w.write_all(&hello(me(), conn)).unwrap();
    }
    served_promptly(env, server, &format!("while {N} clients had stopped"));
    // Each got its WELCOME (they are real sessions), and the server has
    // removed their names.
    for (reply_reader, _, _, req, reply) in &held {
        let mut fds = [PollFd::new(reply_reader.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
        let mut byte = [0u8; 1];
        let got = File::from(reply_reader.try_clone().unwrap()).read(&mut byte);
        assert!(
            matches!(got, Ok(1)) && byte[0] == b'W',
            "fifo: a stopped client's pair got no WELCOME: {got:?}"
        );
        assert!(!req.exists() && !reply.exists());
    }
}
