//! Attacks on the `unix-dgram` transport's handshake: a greeting datagram
//! to the bound file, a welcome from a new autobound session socket, and
//! the client's "ready" to it.
//!
//! The attacker speaks datagrams directly. Greetings that are never
//! completed must not take session slots or threads beyond `--timeout`,
//! and a session socket must hear its own client alone.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrLike, UnixAddr};

use super::Attack;
use crate::common::{Env, next_client_is_served, payload, proc_stat};
use ipclab::process::ServerProcess;
use ipclab::protocol::{self, kind};

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "unix-dgram: a flood of greetings never completed",
            run: half_open_greetings_flood,
            grow_kib: 16 * 1024,
        },
        Attack {
            name: "unix-dgram: greetings from sockets that then close",
            run: greetings_from_sockets_that_close,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "unix-dgram: a third party writes to a session socket",
            run: third_party_datagrams_to_a_session,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "unix-dgram: greetings and readies of the wrong size",
            run: lying_sizes,
            grow_kib: 4 * 1024,
        },
        Attack {
            name: "unix-dgram: a datagram longer than the server's in a session",
            run: a_datagram_longer_than_the_servers,
            grow_kib: 8 * 1024,
        },
    ]
}

const HELLO: &[u8] = b"ipclab unix-dgram hello 1";
const WELCOME: &[u8] = b"ipclab unix-dgram welcome 1";
const READY: &[u8] = b"ipclab unix-dgram ready 1";

/// A datagram socket with an autobound (abstract) address.
fn bound_socket() -> OwnedFd {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::bind(fd.as_raw_fd(), &UnixAddr::new_unnamed()).unwrap();
    fd
}

fn server_addr(env: &Env) -> UnixAddr {
    UnixAddr::new(&env.cfg.object_path(".dgram")).unwrap()
}

fn greet(fd: &OwnedFd, to: &UnixAddr) -> nix::Result<usize> {
    socket::sendto(fd.as_raw_fd(), HELLO, to, MsgFlags::MSG_DONTWAIT)
}

/// The next datagram on `fd` within `wait`, with its sender.
fn recv_within(fd: &OwnedFd, wait: Duration) -> Option<(Vec<u8>, Option<UnixAddr>)> {
    let until = Instant::now() + wait;
    let mut buf = vec![0u8; 70_000];
    loop {
        match socket::recvfrom::<UnixAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            Err(Errno::EAGAIN) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(Errno::EAGAIN) => return None,
            Err(e) => panic!("recvfrom: {e}"),
        }
    }
}

fn nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
}

fn served_promptly(env: &Env, server: &ServerProcess, during: &str) {
    let t = Instant::now();
    next_client_is_served(env, server, Duration::from_secs(2));
    eprintln!(
        "unix-dgram: a real client was served in {:?} {during}",
        t.elapsed()
    );
}

fn threads(server: &ServerProcess) -> u64 {
    proc_stat::status_kib(server.pid(), "Threads")
}

/// The server's descriptors and threads once it has served a client (the
/// first session starts the server's long-lived wake-up thread).
fn settled(env: &Env, server: &ServerProcess) -> (usize, u64) {
    next_client_is_served(env, server, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    (proc_stat::fds(server.pid()), threads(server))
}

/// Within `--timeout` (plus a second), the server's threads and
/// descriptors are back to what they were before the attack.
fn reaped_within_timeout(env: &Env, server: &ServerProcess, fds: usize, threads0: u64, what: &str) {
    let until = Instant::now() + env.cfg.timeout + Duration::from_secs(1);
    let pid = server.pid();
    loop {
        let (f, t) = (proc_stat::fds(pid), threads(server));
        if f <= fds && t <= threads0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "unix-dgram: {what}: {:?} after the attack the server still holds {f} descriptors \
             (before: {fds}) and {t} threads (before: {threads0}): half-open sessions are \
             not closed within --timeout ({:?})",
            env.cfg.timeout + Duration::from_secs(1),
            env.cfg.timeout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 30 sockets send 10 greetings each and never say "ready" (they stay
/// open, in a live process: the pid check cannot end them). Before the
/// fix each greeting was a session with a thread until the idle timeout,
/// and 256 of them made the server answer every real client "busy". Now
/// no thread is started for them, a real client is served within 2 s
/// meanwhile, and they are closed within --timeout.
fn half_open_greetings_flood(env: &Env, server: &ServerProcess) {
    let (fds0, threads0) = settled(env, server);
    let to = server_addr(env);
    let socks: Vec<OwnedFd> = (0..30).map(|_| bound_socket()).collect();
    let mut sent = 0;
    for round in 0..10 {
        for s in &socks {
            match greet(s, &to) {
                Ok(_) => sent += 1,
                Err(Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("greeting {round}: {e}"),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let peak = threads(server);
    served_promptly(
        env,
        server,
        &format!("after {sent} greetings never completed"),
    );
    assert!(
        peak <= threads0 + 2,
        "unix-dgram: {sent} greetings never completed raised the server's threads from \
         {threads0} to {peak}"
    );
    reaped_within_timeout(env, server, fds0, threads0, "greetings never completed");
    drop(socks);
}

/// Greetings whose sender reads its welcome and closes its socket (its
/// process lives on): the half-open session is closed within --timeout.
fn greetings_from_sockets_that_close(env: &Env, server: &ServerProcess) {
    let (fds0, threads0) = settled(env, server);
    let to = server_addr(env);
    for _ in 0..20 {
        let s = bound_socket();
        nonblocking(&s);
        greet(&s, &to).unwrap();
        let (w, _) = recv_within(&s, Duration::from_secs(2)).expect("a welcome");
        assert_eq!(w, WELCOME);
    }
    served_promptly(env, server, "after 20 greeters closed");
    reaped_within_timeout(env, server, fds0, threads0, "greeters that closed");
}

/// A session made by hand: greeted, welcomed, connected, ready. Returns
/// the client socket and the session socket's address.
fn session_by_hand(env: &Env) -> (OwnedFd, UnixAddr) {
    let s = bound_socket();
    nonblocking(&s);
    greet(&s, &server_addr(env)).unwrap();
    let (w, from) = recv_within(&s, Duration::from_secs(2)).expect("a welcome");
    assert_eq!(w, WELCOME);
    let session = from.expect("the welcome's sender");
    socket::connect(s.as_raw_fd(), &session).unwrap();
    socket::send(s.as_raw_fd(), READY, MsgFlags::empty()).unwrap();
    (s, session)
}

fn echo_frame(data: &[u8]) -> Vec<u8> {
    let mut f = protocol::header(kind::ECHO, data.len()).to_vec();
    f.extend_from_slice(data);
    f
}

/// A third socket sends a forged "ready" to a half-open session, and a
/// forged request to a live session, by the session socket's address: the
/// kernel refuses both (a connected datagram socket hears its peer alone),
/// and the session's own client gets exactly its own echo.
fn third_party_datagrams_to_a_session(env: &Env, _: &ServerProcess) {
    let third = bound_socket();
    nonblocking(&third);

    // A half-open session: greeted and welcomed, not ready.
    let victim = bound_socket();
    nonblocking(&victim);
    greet(&victim, &server_addr(env)).unwrap();
    let (_, from) = recv_within(&victim, Duration::from_secs(2)).expect("a welcome");
    let half_open = from.unwrap();
    assert_eq!(
        socket::sendto(third.as_raw_fd(), READY, &half_open, MsgFlags::MSG_DONTWAIT),
        Err(Errno::EPERM),
        "unix-dgram: a third party could send a 'ready' to another client's session socket"
    );

    let (client, session) = session_by_hand(env);
    let forged = echo_frame(b"forged by a third party");
    assert_eq!(
        socket::sendto(third.as_raw_fd(), &forged, &session, MsgFlags::MSG_DONTWAIT),
        Err(Errno::EPERM),
        "unix-dgram: a third party could write into another client's session"
    );
    let mine = payload(1000, 3);
    socket::send(client.as_raw_fd(), &echo_frame(&mine), MsgFlags::empty()).unwrap();
    let (reply, _) = recv_within(&client, Duration::from_secs(5)).expect("an echo");
    let mut want = protocol::header(kind::DATA, mine.len()).to_vec();
    want.extend_from_slice(&mine);
    assert!(
        reply == want,
        "unix-dgram: the session answered {} bytes that are not its client's echo",
        reply.len()
    );
    assert!(
        recv_within(&third, Duration::from_millis(200)).is_none(),
        "unix-dgram: the third party got a datagram"
    );
    // End the session: the empty datagram.
    socket::send(client.as_raw_fd(), &[], MsgFlags::empty()).unwrap();
}

/// A greeting padded to 100 KiB (longer than the server's buffer: cut,
/// so it must not be taken for a greeting), a greeting with a byte too
/// many, and a "ready" followed by 100 KiB: no session for any of them.
fn lying_sizes(env: &Env, server: &ServerProcess) {
    let to = server_addr(env);
    let s = bound_socket();
    nonblocking(&s);
    // Room for 100 KiB datagrams.
    socket::setsockopt(&s, socket::sockopt::SndBuf, &(1 << 20)).unwrap();
    for greeting in [
        [HELLO, &vec![0u8; 100 << 10]].concat(),
        [HELLO, b"!"].concat(),
        HELLO[..HELLO.len() - 1].to_vec(),
    ] {
        socket::sendto(s.as_raw_fd(), &greeting, &to, MsgFlags::empty()).unwrap();
        let (answer, _) = recv_within(&s, Duration::from_secs(2)).expect("an answer");
        assert!(
            answer.starts_with(b"ERR "),
            "unix-dgram: a {}-byte greeting was answered {:?}",
            greeting.len(),
            String::from_utf8_lossy(&answer[..answer.len().min(60)])
        );
    }
    let (fds0, threads0) = settled(env, server);
    let s = bound_socket();
    nonblocking(&s);
    socket::setsockopt(&s, socket::sockopt::SndBuf, &(1 << 20)).unwrap();
    greet(&s, &to).unwrap();
    let (_, from) = recv_within(&s, Duration::from_secs(2)).expect("a welcome");
    let session = from.unwrap();
    assert!(session.len() as usize > std::mem::size_of::<libc::sa_family_t>());
    socket::connect(s.as_raw_fd(), &session).unwrap();
    socket::send(
        s.as_raw_fd(),
        &[READY, &vec![0u8; 100 << 10]].concat(),
        MsgFlags::empty(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // No session: nothing answers a request, and the server let it go.
    let _ = socket::send(s.as_raw_fd(), &echo_frame(b"x"), MsgFlags::MSG_DONTWAIT);
    assert!(
        recv_within(&s, Duration::from_millis(300)).is_none(),
        "unix-dgram: a 'ready' of 100 KiB opened a session"
    );
    reaped_within_timeout(env, server, fds0, threads0, "a ready of 100 KiB");
}

/// In a live session, one echo request of 100 KiB in one datagram (the
/// server reads 64 KiB at most), then 36 KiB more: the server must end the
/// session or answer the exact echo, never echo the hole filled with the
/// next datagram's bytes (see [`super::unix_seqpacket`]).
fn a_datagram_longer_than_the_servers(env: &Env, _: &ServerProcess) {
    let (client, _) = session_by_hand(env);
    socket::setsockopt(&client, socket::sockopt::SndBuf, &(1 << 20)).unwrap();
    let raw = client.as_raw_fd();
    super::unix_seqpacket::over_long_message_is_not_cut_silently(
        "unix-dgram",
        |m| socket::send(raw, m, MsgFlags::MSG_DONTWAIT),
        || recv_within(&client, Duration::from_millis(200)).map(|(m, _)| m),
    );
}
