//! Attacks on `signal`, speaking real-time signals directly: greetings that
//! are abandoned while the server is stopped, and words from processes that
//! are not the session's client (`kill(2)`, and `rt_sigqueueinfo(2)` with a
//! `siginfo` of someone else's pid or uid).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Attack;
use crate::common::{Env, exe, payload};
use ipclab::client::Client;
use ipclab::process::{ServerProcess, client_args};
use ipclab::protocol::Form;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "greetings abandoned while the server is stopped",
            run: greet_then_vanish,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "signals from processes that are not the client",
            run: strangers,
            grow_kib: 8 * 1024,
        },
    ]
}

const HELLO: u64 = 1;
const ACK: u64 = 4;
const BYE: u64 = 5;

fn sig_data() -> libc::c_int {
    libc::SIGRTMIN() + 1
}
fn sig_ctrl() -> libc::c_int {
    libc::SIGRTMIN() + 2
}
fn ctrl(kind: u64, arg: u64) -> u64 {
    (kind << 56) | (arg & ((1 << 56) - 1))
}

/// A `siginfo_t` for `SI_QUEUE` on 64-bit Linux, as `rt_sigqueueinfo(2)`
/// reads it: the sender's pid and uid are whatever we write.
#[repr(C)]
struct QueueInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    pid: libc::pid_t,
    uid: libc::uid_t,
    value: u64,
    _rest: [u8; 96],
}

/// Queue `sig` with `value` to `to`, claiming to come from `pid`/`uid`.
fn queue_as(to: Pid, sig: libc::c_int, value: u64, pid: libc::pid_t, uid: libc::uid_t) {
    let info = QueueInfo {
        signo: sig,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid,
        uid,
        value,
        _rest: [0; 96],
    };
    // SAFETY: a valid siginfo layout for SI_QUEUE.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigqueueinfo,
            to.as_raw(),
            sig,
            &info as *const QueueInfo,
        )
    };
    assert_eq!(r, 0, "rt_sigqueueinfo: {}", std::io::Error::last_os_error());
}

fn own_pid() -> libc::pid_t {
    std::process::id() as libc::pid_t
}
fn own_uid() -> libc::uid_t {
    nix::unistd::getuid().as_raw()
}

/// A live process that is not us.
fn stand() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

/// While the server is stopped (SIGSTOP), clients greet it and give up:
/// one exits, one stays alive but gives up, one greeting names a process
/// that is gone, one a thread that is not its sender's. When the server
/// continues, none of them may hold the one slot.
fn greet_then_vanish(env: &Env, server: &ServerProcess) {
    let cfg = server.client_config(&env.cfg);
    kill(server.pid(), Signal::SIGSTOP).unwrap();
    // A real client that gives up and exits.
    let mut short = cfg.clone();
    short.timeout = Duration::from_secs(1);
    let out = Command::new(exe())
        .arg("client")
        .arg("signal")
        .args(client_args(&short))
        .arg("ping")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "signal: a stopped server answered a ping"
    );
    // A client in this (live) process that gives up, on a thread that
    // stays alive while the server wakes up.
    let (gave_up, wait) = std::sync::mpsc::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let transport = env.transport;
    let holder = std::thread::spawn(move || {
        let r = transport.connect(&short).map(drop);
        gave_up.send(r).unwrap();
        let _ = held.recv_timeout(Duration::from_secs(10));
    });
    assert!(
        wait.recv().unwrap().is_err(),
        "signal: a stopped server welcomed a client"
    );
    // A greeting from a process that is gone.
    let gone = {
        let mut s = stand();
        let pid = s.id() as libc::pid_t;
        s.kill().unwrap();
        s.wait().unwrap();
        pid
    };
    queue_as(server.pid(), sig_ctrl(), ctrl(HELLO, 1234), gone, own_uid());
    // A greeting from a live process (this one) naming a thread that is
    // not its own (1: init's).
    queue_as(
        server.pid(),
        sig_ctrl(),
        ctrl(HELLO, (77 << 22) | 1),
        own_pid(),
        own_uid(),
    );
    kill(server.pid(), Signal::SIGCONT).unwrap();
    // The harness's next client must be served while the thread that gave
    // up is still alive.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(8));
        let _ = release.send(());
    });
    drop(holder); // detached: it ends by itself within 10 s
}

/// A live session, and signals from others thrown at the server meanwhile:
/// `kill(2)` of both signal numbers (no word), data words, ACKs, BYEs and
/// a HELLO claiming a stranger's pid, and data words claiming the client's
/// pid under another uid. The client's echoes must stay byte-exact.
fn strangers(env: &Env, server: &ServerProcess) {
    let cfg = server.client_config(&env.cfg);
    let transport = env.transport;
    let max_frame = env.cfg.max_frame;
    let (started, go) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let link = transport
            .connect(&cfg)
            .expect("signal: the client connects");
        let mut c = Client::from_link(link, max_frame, Form::Binary);
        started.send(()).unwrap();
        for seed in 0..6 {
            let data = payload(16 * 1024, seed);
            let echo = c
                .echo(&data)
                .expect("signal: an echo under strangers' signals");
            assert!(
                echo == &data[..],
                "signal: an echo differs under strangers' signals"
            );
        }
    });
    go.recv().unwrap();
    let mut stranger = stand();
    let spid = stranger.id() as libc::pid_t;
    let to = server.pid();
    for i in 0..300u64 {
        // nix's Signal has no real-time numbers: kill(2) itself.
        for sig in [sig_data(), sig_ctrl()] {
            // SAFETY: plain system call.
            assert_eq!(unsafe { libc::kill(to.as_raw(), sig) }, 0);
        }
        queue_as(to, sig_data(), 0x4141_4141_4141_4141 ^ i, spid, own_uid());
        queue_as(to, sig_ctrl(), ctrl(ACK, 200), spid, own_uid());
        queue_as(to, sig_ctrl(), ctrl(BYE, i), spid, own_uid());
        queue_as(
            to,
            sig_data(),
            0x4242_4242_4242_4242 ^ i,
            own_pid(),
            own_uid() + 1,
        );
        queue_as(to, sig_ctrl(), ctrl(BYE, i), own_pid(), own_uid() + 1);
        if i % 100 == 0 {
            // Its tid (1) is no thread of the stranger: no answer can go out.
            queue_as(to, sig_ctrl(), ctrl(HELLO, (5 << 22) | 1), spid, own_uid());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    client
        .join()
        .expect("signal: the client under strangers' signals");
    let _ = stranger.kill();
    let _ = stranger.wait();
}
