//! Attacks on `msgq`, speaking the System V queue directly (`msgsnd`,
//! `msgrcv`, `msgctl` through `ipclab::sys::sysv`): a client frozen mid-echo and
//! then killed, messages left on an ended session's types, forged and
//! duplicated HELLOs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Attack;
use crate::common::{Env, exe, payload};
use ipclab::process::{ServerProcess, client_args};
use ipclab::protocol::{self, kind};
use ipclab::sys::sysv::{self, MTYPE_LEN, MsgQueue};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "client frozen mid-echo, then killed",
            run: frozen_then_killed,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "messages left on an ended session's types",
            run: leftovers_are_swept,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "forged and duplicated HELLOs",
            run: forged_hellos,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "replies planted for the sessions to come",
            run: planted_replies,
            grow_kib: 8 * 1024,
        },
    ]
}

const HELLO: libc::c_long = 1;

/// The server's queue, as any process of the user can open it.
struct Raw {
    q: MsgQueue,
    chunk: usize,
}

impl Raw {
    fn open(env: &Env) -> Raw {
        let key = env.transport.sysv_keys(&env.cfg)[0].1;
        let chunk = sysv::kernel_limit("msgmax")
            .unwrap()
            .min(sysv::kernel_limit("msgmnb").unwrap());
        Raw {
            q: MsgQueue::open(key).unwrap(),
            chunk,
        }
    }

    fn send(&self, mtype: libc::c_long, text: &[u8]) {
        let mut m = vec![0u8; MTYPE_LEN + text.len()];
        sysv::set_mtype(&mut m, mtype);
        m[MTYPE_LEN..].copy_from_slice(text);
        let until = Instant::now() + Duration::from_secs(5);
        while let Err(e) = self.q.send_raw(&m, true) {
            assert!(Instant::now() < until, "msgsnd on type {mtype}: {e}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next message of `mtype`, waiting at most `limit`.
    fn recv(&self, mtype: libc::c_long, limit: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MTYPE_LEN + self.chunk];
        let until = Instant::now() + limit;
        loop {
            match self.q.recv_raw(&mut buf, mtype, true) {
                Ok(n) => return Some(buf[MTYPE_LEN..MTYPE_LEN + n].to_vec()),
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => return None,
            }
        }
    }

    /// (messages, bytes) queued.
    fn queued(&self) -> (u64, u64) {
        let ds = self.q.stat().unwrap();
        (ds.msg_qnum, ds.__msg_cbytes)
    }

    /// Wait up to `limit` for the queue to be empty; panic with `what`.
    fn drains(&self, limit: Duration, what: &str) {
        let until = Instant::now() + limit;
        while self.queued().0 > 0 {
            assert!(
                Instant::now() < until,
                "msgq: {what}: {:?} (messages, bytes) still queued after {limit:?}",
                self.queued()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process that is alive for as long as the attack needs a client pid.
struct Stand(Child);

impl Stand {
    fn new() -> Stand {
        Stand(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn die(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn welcome_type(pid: i32, number: u32) -> libc::c_long {
    (1 << 62) + ((pid as libc::c_long) << 16) + number as libc::c_long
}

fn hello(pid: i32, number: u32, nonce: u64) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&pid.to_le_bytes());
    t.extend_from_slice(&number.to_le_bytes());
    t.extend_from_slice(&nonce.to_le_bytes());
    t
}

/// Greet as `pid`/`number`; the session number the server gives.
fn greet(raw: &Raw, pid: i32, number: u32, nonce: u64) -> u64 {
    raw.send(HELLO, &hello(pid, number, nonce));
    let w = raw
        .recv(welcome_type(pid, number), Duration::from_secs(5))
        .expect("msgq: no WELCOME for a valid HELLO");
    assert_eq!(w.len(), 16, "msgq: a WELCOME of {} bytes", w.len());
    assert_eq!(w[..8], nonce.to_le_bytes(), "msgq: the WELCOME's nonce");
    u64::from_le_bytes(w[8..].try_into().unwrap())
}

/// One binary echo on session `s`, chunked as the client does.
fn echo(raw: &Raw, s: u64, data: &[u8]) -> Vec<u8> {
    let (request, reply) = (2 * s as libc::c_long, 2 * s as libc::c_long + 1);
    let mut msg = protocol::header(kind::ECHO, data.len()).to_vec();
    msg.extend_from_slice(data);
    for c in msg.chunks(raw.chunk) {
        raw.send(request, c);
    }
    let mut got = Vec::new();
    while got.len() < msg.len() {
        match raw.recv(reply, Duration::from_secs(5)) {
            Some(m) if !m.is_empty() => got.extend_from_slice(&m),
            other => panic!(
                "msgq: session {s} ended its reply after {} bytes ({other:?})",
                got.len()
            ),
        }
    }
    let header = protocol::header(kind::DATA, data.len());
    assert_eq!(got[..header.len()], header, "msgq: the reply's header");
    got.split_off(header.len())
}

/// A client stopped (SIGSTOP) while the server is sending it a 1 MiB reply
/// fills the queue (`msgmnb`, shared by every conversation); killed then,
/// nobody will ever read what it left. The server must clear it: the next
/// client is served (checked by the harness) and the queue is empty again.
fn frozen_then_killed(env: &Env, server: &ServerProcess) {
    let raw = Raw::open(env);
    let mut client = Command::new(exe())
        .arg("client")
        .arg("msgq")
        .args(client_args(&server.client_config(&env.cfg)))
        .args(["--fill", "1M", "--count", "1000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(client.id() as i32);
    std::thread::sleep(Duration::from_millis(300));
    // Stop it until it is caught mid-reply: the queue full of replies.
    let mut caught = false;
    for _ in 0..200 {
        kill(pid, Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let (_, bytes) = raw.queued();
        let room = raw.q.stat().unwrap().msg_qbytes;
        if bytes + raw.chunk as u64 > room {
            caught = true;
            break;
        }
        kill(pid, Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(caught, "msgq: never caught the client with the queue full");
    // Long enough for the server's send to time out and the session to end
    // while the client is still alive (stopped).
    std::thread::sleep(env.cfg.timeout + Duration::from_secs(2));
    kill(pid, Signal::SIGKILL).unwrap();
    client.wait().unwrap();
    raw.drains(
        Duration::from_secs(4),
        "what a frozen, then killed client left",
    );
}

/// A session's types hold what its client wrote after the session ended
/// (late requests) and what the server sent it unread (an end-of-stream),
/// then the client dies. The sweep must clear both; and a new client that
/// gets the same pid and connection number (pids wrap) must get a session
/// of its own, not the old one's leftovers.
fn leftovers_are_swept(env: &Env, server: &ServerProcess) {
    let raw = Raw::open(env);
    // Real clients that ping and leave: nothing of them may stay queued.
    for _ in 0..30 {
        let mut c = env.client(server, ipclab::protocol::Form::Binary);
        c.ping().unwrap();
    }
    raw.drains(Duration::from_secs(4), "30 ping sessions left messages");

    let stand = Stand::new();
    let s = greet(&raw, stand.pid(), 7, 1);
    assert_eq!(echo(&raw, s, b"first"), b"first");
    let (request, reply) = (2 * s as libc::c_long, 2 * s as libc::c_long + 1);
    // End the session (end of stream), then keep writing as a confused or
    // late client would; and leave an unread message of our own on the
    // reply type.
    raw.send(request, &[]);
    std::thread::sleep(Duration::from_millis(300));
    raw.send(request, &protocol::header(kind::ECHO, 64));
    raw.send(request, b"late");
    raw.send(reply, b"stale reply nobody reads");
    // The same pid and number again, as after a pid wrap: the new session
    // is another one, and its echo is its own, not the old leftovers.
    let again = greet(&raw, stand.pid(), 7, 2);
    assert_ne!(again, s, "msgq: a session number was reused");
    let data = payload(20_000, 3);
    assert_eq!(
        echo(&raw, again, &data),
        data,
        "msgq: the new session's echo"
    );
    raw.send(2 * again as libc::c_long, &[]);
    stand.die();
    raw.drains(
        Duration::from_secs(4),
        "messages on a dead client's session types",
    );
}

/// HELLOs of every wrong length and with lying fields: none may crash the
/// server or start a session; a HELLO repeated for a connection that has
/// a session gets a session of its own, never a share of the first one.
fn forged_hellos(env: &Env, server: &ServerProcess) {
    let raw = Raw::open(env);
    let stand = Stand::new();
    let dead = {
        let s = Stand::new();
        let pid = s.pid();
        s.die();
        pid
    };
    for len in [0, 1, 12, 15, 17, 64, raw.chunk] {
        raw.send(HELLO, &vec![0xa5; len]);
    }
    let own = server.pid().as_raw();
    let bad = [
        (0, 1),
        (-1, 1),
        (i32::MIN, 1),
        (own, 1),
        (dead, 1),
        (stand.pid(), 0x1_0000),
        (stand.pid(), u32::MAX),
    ];
    for (pid, number) in bad {
        raw.send(HELLO, &hello(pid, number, 9));
    }
    // A valid one after them is answered: they were all read and refused.
    let s1 = greet(&raw, stand.pid(), 1, 10);
    for (pid, number) in bad {
        if pid > 0 && number <= 0xffff {
            assert!(
                raw.recv(welcome_type(pid, number), Duration::ZERO)
                    .is_none(),
                "msgq: a session started for a HELLO of pid {pid} number {number}"
            );
        }
    }
    // The same connection greets again: a second, separate session.
    let s2 = greet(&raw, stand.pid(), 1, 11);
    assert_ne!(s1, s2, "msgq: two HELLOs got one session");
    let a = payload(30_000, 1);
    let b = payload(30_000, 2);
    assert_eq!(echo(&raw, s1, &a), a, "msgq: session {s1}'s echo");
    assert_eq!(echo(&raw, s2, &b), b, "msgq: session {s2}'s echo");
    for s in [s1, s2] {
        raw.send(2 * s as libc::c_long, &[]);
    }
    stand.die();
    raw.drains(Duration::from_secs(4), "after forged HELLOs");
}

/// A client that learned its own session number `s` plants forged DATA
/// replies on the reply types of the next sessions (s+1 … s+64), as the red
/// team did; the clients that come next must get their own echoes, never a
/// planted one.
fn planted_replies(env: &Env, server: &ServerProcess) {
    let raw = Raw::open(env);
    let stand = Stand::new();
    let s = greet(&raw, stand.pid(), 1, 0x5eed);
    let mut forged = protocol::header(kind::DATA, 6).to_vec();
    forged.extend_from_slice(b"pwned!");
    let planted: Vec<libc::c_long> = (1..=64).map(|k| 2 * (s + k) as libc::c_long + 1).collect();
    for &t in &planted {
        raw.send(t, &forged);
    }
    for i in 0..5u8 {
        let link = server
            .connect(env.transport, &server.client_config(&env.cfg))
            .unwrap();
        let mut c = ipclab::client::Client::from_link(
            link,
            env.cfg.max_frame,
            ipclab::protocol::Form::Binary,
        );
        let data = [i; 6];
        let echo = c.echo(&data).expect("msgq: a client after the plants");
        assert_eq!(echo, &data[..], "msgq: a client was given a planted reply");
    }
    for t in planted {
        while raw.recv(t, Duration::ZERO).is_some() {}
    }
    // End the attacker's own session.
    raw.send(2 * s as libc::c_long, b"");
    stand.die();
}
