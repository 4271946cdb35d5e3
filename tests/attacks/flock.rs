//! Attacks on the `flock` transport, speaking its mechanism: the test opens
//! and maps `<name>.flock`, takes the OFD locks as a client would, and
//! writes into the header what a lying, stopped or stale client would.
//!
//! The layout and the lock bytes below mirror `src/transport/flock.rs`
//! (read its module doc): header words at 12 (state), 16/20 (c2s/s2c
//! length), 24/28 (c2s/s2c turn number), data areas at 4096, lock bytes at
//! 2^30 + {0,1,2} (rotation), +3 (S, the client slot), +4 (V, the server).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipclab::client::Client;
use ipclab::process::{ServerProcess, client_args};
use ipclab::protocol::{self, Form, kind};
use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Attack;
use crate::common::{Env, exe, payload};

const LOCKS: i64 = 1 << 30;
const S: i64 = 3;
const DATA: usize = 4096;
const CAPACITY: usize = 64 * 1024;
const FILE_LEN: usize = DATA + 2 * CAPACITY;
const H_STATE: usize = 12;
const H_LEN: [usize; 2] = [16, 20];
const H_TURN: [usize; 2] = [24, 28];
const FRESH: u32 = 0x4652_4553;
const CLAIMED: u32 = 0x434c_4149;
const RETIRED: u32 = 0x5245_5449;
const END: u32 = u32::MAX;

/// How long the test waits for the server to act on the file.
const PATIENCE: Duration = Duration::from_secs(10);

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "lying chunk lengths and turn numbers end the session, unanswered",
            run: lying_header_words,
            grow_kib: 4096,
        },
        Attack {
            name: "a file truncated under the server (in a session, or before one) ends that session, not the server",
            run: truncated_file,
            grow_kib: 4096,
        },
        Attack {
            name: "a SIGSTOPped client loses the slot after --idle-timeout and cannot reach the next session",
            run: stopped_client_loses_the_slot,
            grow_kib: 4096,
        },
        Attack {
            name: "locks held by a frozen client (in a session, or half set up) do not wedge the server",
            run: held_locks_do_not_wedge_the_server,
            grow_kib: 4096,
        },
    ]
}

/// The data file as a client sees it: one open file description (its own
/// OFD locks) and a shared mapping.
struct Raw {
    file: File,
    map: MmapRaw,
}

fn lock_req(kind: i32, byte: i64) -> libc::flock {
    // SAFETY: plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCKS + byte;
    fl.l_len = 1;
    fl
}

impl Raw {
    fn open(path: &PathBuf) -> Raw {
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        assert_eq!(file.metadata().unwrap().len(), FILE_LEN as u64);
        let map = MmapOptions::new().len(FILE_LEN).map_raw(&file).unwrap();
        Raw { file, map }
    }
    fn try_lock(&self, byte: i64) -> bool {
        fcntl(
            self.file.as_fd(),
            FcntlArg::F_OFD_SETLK(&lock_req(libc::F_WRLCK, byte)),
        )
        .is_ok()
    }
    /// Take `byte`, waiting at most `limit` (polled: a test may not block
    /// without a bound).
    fn lock_within(&self, byte: i64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while !self.try_lock(byte) {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
    fn unlock(&self, byte: i64) {
        fcntl(
            self.file.as_fd(),
            FcntlArg::F_OFD_SETLK(&lock_req(libc::F_UNLCK, byte)),
        )
        .unwrap();
    }
    fn get(&self, off: usize) -> u32 {
        // SAFETY: a header word within the mapping.
        unsafe { std::ptr::read_volatile(self.map.as_mut_ptr().add(off) as *const u32) }
    }
    fn set(&self, off: usize, v: u32) {
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(self.map.as_mut_ptr().add(off) as *mut u32, v) }
    }
    /// Put `bytes` at the start of the client → server area.
    fn put_request(&self, bytes: &[u8]) {
        assert!(bytes.len() <= CAPACITY);
        // SAFETY: within the c2s area.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(DATA),
                bytes.len(),
            )
        };
    }
    fn ino(&self) -> u64 {
        self.file.metadata().unwrap().ino()
    }

    /// Set up a session as a client does: a fresh file, S, locks 0 and 1
    /// (turn 0 is ours), CLAIMED. Retries while the server is between files
    /// or busy.
    fn connect(path: &PathBuf) -> Raw {
        let until = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < until,
                "flock: no fresh file to claim at {} within {PATIENCE:?}",
                path.display()
            );
            let raw = Raw::open(path);
            if raw.get(H_STATE) == FRESH && raw.try_lock(S) {
                if raw.get(H_STATE) == FRESH && raw.try_lock(0) && raw.try_lock(1) {
                    raw.set(H_STATE, CLAIMED);
                    return raw;
                }
                for b in [S, 0, 1] {
                    raw.unlock(b);
                }
            }
            drop(raw);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// End turn 0 with `len` and turn number `turn` in the header; wait
    /// for lock 2 (the server ending turn 1, or letting go of the file).
    fn end_turn_0(&self, len: u32, turn: u32) {
        self.set(H_LEN[0], len);
        self.set(H_TURN[0], turn);
        self.unlock(0);
        assert!(
            self.lock_within(2, PATIENCE),
            "flock: the server neither answered nor ended the session within {PATIENCE:?}"
        );
    }

    /// What the server did in turn 1: a reply (length, turn number) of
    /// data, or nothing (end of stream, or the file retired).
    fn replied(&self) -> Option<(u32, u32)> {
        let (len, turn) = (self.get(H_LEN[1]), self.get(H_TURN[1]));
        (self.get(H_STATE) != RETIRED && turn == 1 && len != END).then_some((len, turn))
    }
}

/// A session whose client lies in the header words of its first turn:
/// a chunk longer than the area (announcing bytes it never wrote), or a
/// turn number that is not the one just ended. The server must end the
/// session without a reply: a reply would be made of bytes the client
/// never sent (the area beyond what it wrote) or of a turn that never was.
fn lying_header_words(env: &Env, _server: &ServerProcess) {
    let path = env.cfg.object_path(".flock");
    // An echo request announcing 1000 bytes of which only 10 are written.
    let mut frame = protocol::header(kind::ECHO, 1000).to_vec();
    frame.extend_from_slice(b"0123456789");
    // A complete, honest echo request, for the wrong-turn cases.
    let mut whole = protocol::header(kind::ECHO, 10).to_vec();
    whole.extend_from_slice(b"0123456789");
    let cases: [(&str, &[u8], u32, u32); 6] = [
        (
            "a length one past the area",
            &frame,
            (CAPACITY + 1) as u32,
            0,
        ),
        ("a length of 2^31", &frame, 1 << 31, 0),
        ("a length of u32::MAX - 1", &frame, END - 1, 0),
        (
            "the turn number of a turn not yet played",
            &whole,
            whole.len() as u32,
            2,
        ),
        (
            "the turn number a fresh file starts with",
            &whole,
            whole.len() as u32,
            u32::MAX,
        ),
        (
            "the turn number of an earlier session",
            &whole,
            whole.len() as u32,
            40,
        ),
    ];
    for (what, bytes, len, turn) in cases {
        let raw = Raw::connect(&path);
        raw.put_request(bytes);
        raw.end_turn_0(len, turn);
        if let Some((len, turn)) = raw.replied() {
            panic!(
                "flock: a client that wrote {what} got a reply of {len} bytes in turn {turn}: \
                 the server used a header word it should have refused"
            );
        }
        // The session is over for the server: the file is retired.
        let until = Instant::now() + PATIENCE;
        while raw.get(H_STATE) != RETIRED {
            assert!(
                Instant::now() < until,
                "flock: after {what} the server did not retire the session's file"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `ftruncate(2)` of the shared file: the server's next touch of a page
/// past the new end would raise SIGBUS. Once by a client in its session,
/// between writing a request and ending its turn; once by anyone, on the
/// fresh file the server offers. The server must survive both (the
/// harness checks it serves the next client), and offer a new file.
fn truncated_file(env: &Env, _server: &ServerProcess) {
    let path = env.cfg.object_path(".flock");
    let raw = Raw::connect(&path);
    let mut frame = protocol::header(kind::ECHO, 10).to_vec();
    frame.extend_from_slice(b"0123456789");
    raw.put_request(&frame);
    raw.set(H_LEN[0], frame.len() as u32);
    raw.set(H_TURN[0], 0);
    let ino = raw.ino();
    raw.file.set_len(0).unwrap();
    // From here on our own mapping is past the end of the file too: only
    // locks, no header reads.
    raw.unlock(0);
    assert!(
        raw.lock_within(2, PATIENCE),
        "flock: the server neither answered nor ended a session on a truncated file"
    );
    let until = Instant::now() + PATIENCE;
    while std::fs::metadata(&path).unwrap().ino() == ino {
        assert!(
            Instant::now() < until,
            "flock: no fresh file after a session's file was truncated"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(raw);

    // The fresh file, truncated by someone who never took the slot.
    let fresh = Raw::open(&path);
    let ino = fresh.ino();
    fresh.file.set_len(0).unwrap();
    drop(fresh);
    let until = Instant::now() + PATIENCE;
    loop {
        let now = std::fs::metadata(&path).unwrap();
        if now.ino() != ino && now.len() == FILE_LEN as u64 {
            break;
        }
        assert!(
            Instant::now() < until,
            "flock: the truncated fresh file is still offered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server of our own on the same directory, with short timeouts.
fn quick_server(env: &Env, tag: &str) -> (ServerProcess, ipclab::transport::Config) {
    let mut cfg = env.cfg.clone();
    cfg.name = format!("{}-{tag}", env.cfg.name);
    cfg.idle_timeout = Duration::from_secs(1);
    cfg.timeout = Duration::from_secs(1);
    let server = ServerProcess::spawn(&exe(), env.transport, &cfg, &["--quiet"])
        .expect("the quick server starts");
    (server, cfg)
}

/// Stop a quick server and check that it left nothing in the directory.
fn stop_clean(env: &Env, mut server: ServerProcess, cfg: &ipclab::transport::Config) {
    assert!(server.stop().unwrap().success());
    let left: Vec<String> = std::fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}.", cfg.name)))
        .collect();
    assert!(left.is_empty(), "flock: left behind: {left:?}");
}

/// A client that is served within `limit`, "busy" being retried; it stays
/// connected for the caller.
fn next_client_within(
    env: &Env,
    cfg: &ipclab::transport::Config,
    limit: Duration,
    what: &str,
) -> Client {
    let start = Instant::now();
    loop {
        let attempt = env.transport.connect(cfg).and_then(|link| {
            let mut c = Client::from_link(link, cfg.max_frame, Form::Binary);
            c.ping().map(|()| c)
        });
        match attempt {
            Ok(c) => {
                assert!(
                    start.elapsed() <= limit,
                    "flock: {what}: the next client was served only after {:?} (limit {limit:?})",
                    start.elapsed()
                );
                return c;
            }
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("flock: {what}: no next client served within {limit:?}: {e}"),
        }
    }
}

/// Byte-exact echoes, several sizes: nothing of another session mixed in.
fn echoes_are_exact(c: &mut Client, what: &str) {
    for (i, len) in [1usize, 64, 5000, 70_000].into_iter().enumerate() {
        let p = payload(len, 100 + i as u64);
        let echo = c
            .echo(&p)
            .unwrap_or_else(|e| panic!("flock: {what}: echo failed: {e}"));
        assert!(
            echo == p.as_slice(),
            "flock: {what}: the echo of {len} bytes differs (another session's bytes?)"
        );
    }
}

fn wait_stopped(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let until = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&stat)
        .unwrap_or_default()
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('T'))
    {
        assert!(Instant::now() < until, "the client never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A real `ipclab client flock` that pings, then is stopped with SIGSTOP:
/// the next client is served within --idle-timeout and a margin; the
/// stopped client, continued and asked to echo, fails with an error, and
/// the next client never sees its bytes.
fn stopped_client_loses_the_slot(env: &Env, _server: &ServerProcess) {
    let (server, cfg) = quick_server(env, "stop");
    let mut stale = Command::new(exe())
        .arg("client")
        .arg("flock")
        .args(client_args(&server.client_config(&cfg)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = stale.stdin.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = stale.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    writeln!(stdin, "ping").unwrap();
    let first = lines
        .recv_timeout(PATIENCE)
        .expect("the client's first reply");
    assert_eq!(first, "pong");
    kill(Pid::from_raw(stale.id() as i32), Signal::SIGSTOP).unwrap();
    wait_stopped(stale.id());

    // Its session is idle from now: it ends after --idle-timeout.
    let limit = cfg.idle_timeout + Duration::from_secs(3);
    let mut next = next_client_within(env, &cfg, limit, "a SIGSTOPped client");
    echoes_are_exact(&mut next, "the client after a stopped one");

    // The stopped client wakes up and asks for an echo of a secret.
    let secret = "STALE-SESSION-SECRET";
    kill(Pid::from_raw(stale.id() as i32), Signal::SIGCONT).unwrap();
    writeln!(stdin, "echo {secret}").unwrap();
    drop(stdin);
    let until = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = stale.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "flock: the stale client neither failed nor finished within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    reader.join().unwrap();
    let replies: Vec<String> = lines.try_iter().collect();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut stale.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !replies.iter().any(|l| l.contains(secret)),
        "flock: the stale client got an echo after its session had ended: {replies:?}"
    );
    assert!(
        !status.success() && stderr.contains("Error"),
        "flock: the stale client's request after its session ended did not fail \
         ({status}; stderr {stderr:?}; stdout {replies:?})"
    );
    // The next client is untouched by it.
    echoes_are_exact(&mut next, "the client after a stale one wrote again");
    next.quit().unwrap();
    drop(next);
    stop_clean(env, server, &cfg);
}

/// The test itself freezes with the locks held: once in a session (S, its
/// turn's locks, CLAIMED), once half-way through setting up (S on a fresh
/// file, never claimed). Each time the next client is served within the
/// server's timeout and a margin; the frozen session, when it writes a
/// request and passes its turn afterwards, is told its file was retired,
/// and its bytes never reach the next session.
fn held_locks_do_not_wedge_the_server(env: &Env, _server: &ServerProcess) {
    let (server, cfg) = quick_server(env, "held");
    let path = cfg.object_path(".flock");

    // In a session, frozen before its first request.
    let frozen = Raw::connect(&path);
    let limit = cfg.idle_timeout + Duration::from_secs(3);
    let mut next = next_client_within(env, &cfg, limit, "a session frozen with its locks");
    assert_ne!(
        Raw::open(&path).ino(),
        frozen.ino(),
        "flock: the next session runs on the frozen session's file"
    );
    // The frozen client wakes: a request of its own, its turn passed.
    let secret = b"FROZEN-SESSION-SECRET";
    let mut frame = protocol::header(kind::ECHO, secret.len()).to_vec();
    frame.extend_from_slice(secret);
    frozen.put_request(&frame);
    frozen.end_turn_0(frame.len() as u32, 0);
    assert!(
        frozen.replied().is_none(),
        "flock: a session that had ended got an answer"
    );
    assert_eq!(
        frozen.get(H_STATE),
        RETIRED,
        "flock: the frozen client is not told that its session ended"
    );
    echoes_are_exact(&mut next, "the client after a frozen one wrote again");
    next.quit().unwrap();
    drop(next);
    drop(frozen);

    // Half set up: S on a fresh file and the turn-0 locks, never claimed.
    let until = Instant::now() + PATIENCE;
    let half = loop {
        assert!(Instant::now() < until, "flock: no fresh file to half-claim");
        let raw = Raw::open(&path);
        if raw.get(H_STATE) == FRESH && raw.try_lock(S) && raw.try_lock(0) && raw.try_lock(1) {
            break raw;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let limit = cfg.timeout + Duration::from_secs(3);
    let mut next = next_client_within(env, &cfg, limit, "a client frozen while setting up");
    echoes_are_exact(&mut next, "the client after a half set-up one");
    next.quit().unwrap();
    drop(next);
    drop(half);
    stop_clean(env, server, &cfg);
}
