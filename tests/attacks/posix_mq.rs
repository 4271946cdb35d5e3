//! Attacks on the `posix-mq` transport's handshake: an 8-byte HELLO
//! {pid, n} on the meeting queue that names a request/reply queue pair the
//! client created.
//!
//! The attacker sends into the meeting queue directly and creates (or does
//! not create) the queues its HELLOs name, with the wrong owner, the wrong
//! attributes, or already full. The server must not start a session on a
//! queue it cannot prove its client made for it, must not stall its accept
//! loop (a real client is served within 2 s meanwhile), and must not start
//! a thread per forged HELLO.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr, MqdT, mq_close, mq_getattr, mq_open, mq_send, mq_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, fchown};

use super::Attack;
use crate::common::{Env, next_client_is_served, proc_stat};
use ipclab::process::ServerProcess;
use ipclab::transport::Transport;
use ipclab::transport::posixmq::PosixMq;

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "posix-mq: truncated HELLOs on the meeting queue",
            run: truncated_hellos,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "posix-mq: a flood of HELLOs naming no queues",
            run: flood_of_forged_hellos,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "posix-mq: HELLOs naming queues of another user",
            run: queues_of_another_user,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "posix-mq: HELLOs naming queues with the wrong attributes",
            run: queues_with_the_wrong_attributes,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "posix-mq: HELLOs naming a full reply queue",
            run: full_reply_queues_do_not_stall_accept,
            grow_kib: 4 * 1024,
        },
    ]
}

/// The connection queues' attributes a real client uses.
const MAXMSG: i64 = 2;
const MSGSIZE: i64 = 8192;

fn me() -> u32 {
    std::process::id()
}

/// The meeting queue's name: `/dev/mqueue/<name>` is what the transport
/// lists as its external object.
fn meeting(env: &Env) -> String {
    let path = PosixMq.external_objects(&env.cfg).remove(0);
    path.to_string_lossy()
        .strip_prefix("/dev/mqueue")
        .expect("a queue under /dev/mqueue")
        .to_string()
}

fn names(env: &Env, n: u32) -> (String, String) {
    let base = format!("{}.{}-{n}", meeting(env), me());
    (format!("{base}.req"), format!("{base}.rep"))
}

fn open_meeting(env: &Env) -> MqdT {
    mq_open(
        meeting(env).as_str(),
        MQ_OFlag::O_WRONLY | MQ_OFlag::O_CLOEXEC,
        Mode::empty(),
        None,
    )
    .expect("the meeting queue")
}

fn hello(pid: u32, n: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&pid.to_le_bytes());
    h[4..].copy_from_slice(&n.to_le_bytes());
    h
}

/// A queue the attacker creates (read and write, so it can look at it).
struct Queue {
    name: String,
    q: Option<MqdT>,
}

impl Queue {
    fn create(name: &str, maxmsg: i64, msgsize: i64) -> Queue {
        Self::open(name, maxmsg, msgsize)
            .unwrap_or_else(|e| panic!("mq_open({name}, {maxmsg} x {msgsize}): {e}"))
    }
    /// `None` where the kernel refuses this size to this process.
    fn try_create(name: &str, maxmsg: i64, msgsize: i64) -> Option<Queue> {
        match Self::open(name, maxmsg, msgsize) {
            Ok(q) => Some(q),
            Err(Errno::EINVAL | Errno::EPERM | Errno::EMFILE) if msgsize > MSGSIZE => None,
            Err(e) => panic!("mq_open({name}, {maxmsg} x {msgsize}): {e}"),
        }
    }
    fn open(name: &str, maxmsg: i64, msgsize: i64) -> nix::Result<Queue> {
        let _ = mq_unlink(name);
        let q = mq_open(
            name,
            MQ_OFlag::O_RDWR | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
            Some(&MqAttr::new(0, maxmsg, msgsize, 0)),
        )?;
        Ok(Queue {
            name: name.to_string(),
            q: Some(q),
        })
    }
    fn q(&self) -> &MqdT {
        self.q.as_ref().unwrap()
    }
    fn messages(&self) -> i64 {
        mq_getattr(self.q()).unwrap().curmsgs()
    }
    fn give_to_nobody(&self) {
        fchown(
            self.q().as_fd(),
            Some(Uid::from_raw(65534)),
            Some(Gid::from_raw(65534)),
        )
        .unwrap();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(q) = self.q.take() {
            let _ = mq_close(q);
        }
        let _ = mq_unlink(self.name.as_str());
    }
}

fn served_promptly(env: &Env, server: &ServerProcess, during: &str) {
    let t = Instant::now();
    next_client_is_served(env, server, Duration::from_secs(2));
    eprintln!(
        "posix-mq: a real client was served in {:?} {during}",
        t.elapsed()
    );
}

fn threads(server: &ServerProcess) -> u64 {
    proc_stat::status_kib(server.pid(), "Threads")
}

/// Messages of 0 to 7 bytes on the meeting queue are no HELLO: nothing
/// opens, and the next client is served at once.
fn truncated_hellos(env: &Env, server: &ServerProcess) {
    let m = open_meeting(env);
    let (req, rep) = names(env, 100);
    let _req = Queue::create(&req, MAXMSG, MSGSIZE);
    let rep = Queue::create(&rep, MAXMSG, MSGSIZE);
    let h = hello(me(), 100);
    for len in 0..8 {
        mq_send(&m, &h[..len], 0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rep.messages(),
        0,
        "posix-mq: a truncated HELLO opened a session"
    );
    let _ = mq_close(m);
    served_promptly(env, server, "after truncated HELLOs");
}

/// 300 HELLOs naming queues that do not exist, sent while a real client
/// connects: it is served within 2 s, and no thread is started for them.
fn flood_of_forged_hellos(env: &Env, server: &ServerProcess) {
    const N: u32 = 300;
    let before = threads(server);
    let meeting = meeting(env);
    let flood = std::thread::spawn(move || {
        let m = mq_open(
            meeting.as_str(),
            MQ_OFlag::O_WRONLY | MQ_OFlag::O_CLOEXEC,
            Mode::empty(),
            None,
        )
        .unwrap();
        for n in 0..N {
            // The meeting queue holds 10: each send waits for room.
            mq_send(&m, &hello(me(), 10_000 + n), 0).unwrap();
        }
        let _ = mq_close(m);
    });
    std::thread::sleep(Duration::from_millis(5));
    served_promptly(env, server, &format!("during a flood of {N} forged HELLOs"));
    let peak = threads(server);
    flood.join().unwrap();
    assert!(
        peak <= before + 2,
        "posix-mq: forged HELLOs raised the server's threads from {before} to {peak}"
    );
}

/// A queue pair with the right attributes and names, but one queue (or
/// both) belongs to another user: no WELCOME, no session.
fn queues_of_another_user(env: &Env, server: &ServerProcess) {
    let m = open_meeting(env);
    for (n, foreign) in [(200, "both"), (201, "request"), (202, "reply")] {
        let (req, rep) = names(env, n);
        let req = Queue::create(&req, MAXMSG, MSGSIZE);
        let rep = Queue::create(&rep, MAXMSG, MSGSIZE);
        if foreign != "reply" {
            req.give_to_nobody();
        }
        if foreign != "request" {
            rep.give_to_nobody();
        }
        mq_send(&m, &hello(me(), n), 0).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            rep.messages(),
            0,
            "posix-mq: the server welcomed a HELLO naming queues of which {foreign} belong(s) \
             to another user"
        );
    }
    let _ = mq_close(m);
    served_promptly(env, server, "after HELLOs naming queues of another user");
}

/// A pair whose request queue takes 1 MiB messages (the server would have
/// to receive into a buffer that large, or fail at the first request after
/// having welcomed the client), or whose reply queue takes 16-byte
/// messages (every reply would fail), or that holds 10 messages: refused
/// before any WELCOME, and the server's memory does not follow.
fn queues_with_the_wrong_attributes(env: &Env, server: &ServerProcess) {
    let m = open_meeting(env);
    // (what, request queue (maxmsg, msgsize), reply queue (maxmsg, msgsize))
    type Sizes = (i64, i64);
    let cases: [(&str, Sizes, Sizes); 4] = [
        ("a 1 MiB request queue", (1, 1 << 20), (MAXMSG, MSGSIZE)),
        ("a 16-byte reply queue", (MAXMSG, MSGSIZE), (MAXMSG, 16)),
        (
            "a 10-message request queue",
            (10, MSGSIZE),
            (MAXMSG, MSGSIZE),
        ),
        ("a 4 KiB request queue", (MAXMSG, 4096), (MAXMSG, MSGSIZE)),
    ];
    for (i, (what, (rqn, rqs), (rpn, rps))) in cases.into_iter().enumerate() {
        let n = 300 + i as u32;
        let (req, rep) = names(env, n);
        // Over /proc/sys/fs/mqueue/msgsize_max (8 KiB) only a process
        // with CAP_SYS_RESOURCE may create a queue, and it counts against
        // RLIMIT_MSGQUEUE (800 KiB): where the kernel refuses the attacker
        // itself, that case cannot be made (said, not passed silently).
        let Some(req) = Queue::try_create(&req, rqn, rqs) else {
            eprintln!(
                "posix-mq: the kernel refuses this attacker {what} (no CAP_SYS_RESOURCE?): \
                 that case is not made here"
            );
            continue;
        };
        let rep = Queue::create(&rep, rpn, rps);
        mq_send(&m, &hello(me(), n), 0).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            rep.messages(),
            0,
            "posix-mq: the server welcomed a HELLO naming {what}"
        );
        drop((req, rep));
    }
    let _ = mq_close(m);
    served_promptly(env, server, "after HELLOs naming queues of the wrong size");
}

/// Pairs whose reply queue the attacker has filled before its HELLO: the
/// server's WELCOME cannot go in. Waiting for room held up every other
/// client for `--timeout` per HELLO; such a pair is refused at once.
fn full_reply_queues_do_not_stall_accept(env: &Env, server: &ServerProcess) {
    let m = open_meeting(env);
    let mut held = Vec::new();
    for n in 400..403 {
        let (req, rep) = names(env, n);
        let req = Queue::create(&req, MAXMSG, MSGSIZE);
        let rep = Queue::create(&rep, MAXMSG, MSGSIZE);
        for _ in 0..MAXMSG {
            mq_send(rep.q(), b"not from the server", 0).unwrap();
        }
        assert_eq!(rep.messages(), MAXMSG);
        mq_send(&m, &hello(me(), n), 0).unwrap();
        held.push((req, rep));
    }
    let _ = mq_close(m);
    served_promptly(env, server, "while 3 HELLOs named full reply queues");
    drop(held);
}
