//! Attacks on the `udp` transport, spoken with plain `std::net::UdpSocket`s:
//! the 16-byte HELLO, the WELCOME from the session's own port, and session
//! datagrams with a 12-byte header (kind, flags, sequence number,
//! cumulative acknowledgement) whose every field the attacker chooses.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::Attack;
use crate::common::{Env, exe, proc_stat};
use ipclab::client::Client;
use ipclab::process::ServerProcess;
use ipclab::protocol::{self, Form, HEADER_LEN, kind};
use ipclab::transport::udp::{ACK, ACK_NOW, CHUNK, DATA, FIN, HEADER, MAGIC, WINDOW};

const MIB: u64 = 1024;

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "udp: a sender that never acknowledges",
            run: never_acking_sender,
            // A session's buffers are bounded by the window (a few 32 KiB
            // datagrams each way) plus the 256 KiB frame it is echoing.
            grow_kib: 8 * MIB,
        },
        Attack {
            name: "udp: 300 forged HELLOs",
            run: forged_hello_flood,
            grow_kib: 8 * MIB,
        },
        Attack {
            name: "udp: a HELLO flood at RLIMIT_NOFILE 64",
            run: hello_flood_under_fd_limit,
            grow_kib: 8 * MIB,
        },
        Attack {
            name: "udp: lying sequence numbers, acknowledgements and lengths",
            run: lying_numbers,
            grow_kib: 8 * MIB,
        },
    ]
}

/// The server's address, as it announced it.
fn server_addr(env: &Env, server: &ServerProcess) -> SocketAddr {
    server
        .client_config(&env.cfg)
        .addr
        .parse()
        .expect("a udp server announces its address")
}

fn hello(pid: i32, nonce: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&pid.to_le_bytes());
    h[8..].copy_from_slice(&nonce.to_le_bytes());
    h
}

/// A session datagram with every field chosen by the caller.
fn dgram(kind: u8, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; HEADER];
    d[0] = kind;
    d[1] = flags;
    d[4..8].copy_from_slice(&seq.to_le_bytes());
    d[8..12].copy_from_slice(&ack.to_le_bytes());
    d.extend_from_slice(payload);
    d
}

fn field(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// A handshake as the real client does it: HELLO, WELCOME from the
/// session's port, connect to it, acknowledge. Returns the socket,
/// connected to the session.
fn session(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    loop {
        assert!(Instant::now() < until, "udp: no WELCOME within 5 s");
        s.send_to(&hello(std::process::id() as i32, 42), addr)
            .unwrap();
        match s.recv_from(&mut buf) {
            Ok((8, from)) if &buf[..4] == MAGIC => {
                s.connect(from).unwrap();
                s.send(&dgram(ACK, 0, 0, 0, &[])).unwrap();
                return s;
            }
            _ => continue,
        }
    }
}

/// A frame of the ping/echo protocol: an ECHO of `payload`.
fn echo_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = protocol::header(kind::ECHO, payload.len()).to_vec();
    f.extend_from_slice(payload);
    f
}

/// A client that sends in order, as fast as the server takes it (it reads
/// the server's ACKs and goes back to the first datagram not taken), but
/// never acknowledges anything the server sends. Its stream is ECHO
/// requests of 256 KiB, so the server soon has a reply it cannot finish
/// sending, and receives while it waits. The server must keep only what
/// its window allows (the harness checks its peak memory) and end the
/// session with an error within its timeout.
fn never_acking_sender(env: &Env, server: &ServerProcess) {
    const FRAME: usize = 256 * 1024;
    let s = session(server_addr(env, server));
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    // Byte `o` of an endless stream of ECHO frames of FRAME bytes each.
    let head = protocol::header(kind::ECHO, FRAME);
    let byte = |o: usize| {
        let i = o % (HEADER_LEN + FRAME);
        if i < HEADER_LEN { head[i] } else { 0x5a }
    };
    let pid = server.pid();
    let rss0 = proc_stat::status_kib(pid, "VmRSS");
    let start = Instant::now();
    let give_up = env.cfg.timeout + Duration::from_secs(3);
    let (mut next, mut taken) = (1u32, 0u32);
    let mut buf = vec![0u8; HEADER + CHUNK];
    let mut sent_bytes = 0u64;
    let mut checked = Instant::now();
    let ended = 'attack: loop {
        if start.elapsed() > give_up {
            break false;
        }
        if checked.elapsed() > Duration::from_millis(100) {
            checked = Instant::now();
            let rss = proc_stat::status_kib(pid, "VmRSS");
            assert!(
                rss < rss0 + 64 * MIB,
                "udp: a client that never acknowledges raised the server's memory from \
                 {rss0} to {rss} KiB in {:?} ({} MiB sent)",
                start.elapsed(),
                sent_bytes >> 20
            );
        }
        // Fill the window past what the server took.
        while next <= taken + WINDOW as u32 {
            let at = (next as usize - 1) * CHUNK;
            let payload: Vec<u8> = (at..at + CHUNK).map(byte).collect();
            let flags = if next == taken + WINDOW as u32 {
                ACK_NOW
            } else {
                0
            };
            match s.send(&dgram(DATA, flags, next, 0, &payload)) {
                Ok(_) => sent_bytes += CHUNK as u64,
                // ICMP port unreachable: the session's socket is closed.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break 'attack true,
                Err(e) => panic!("udp: send: {e}"),
            }
            next += 1;
        }
        match s.recv(&mut buf) {
            Ok(n) if n >= HEADER && buf[0] == FIN => break true,
            Ok(n) if n >= HEADER => {
                let ack = field(&buf, 8);
                if ack > taken {
                    taken = ack;
                } else if buf[0] == ACK {
                    next = taken + 1; // a gap was seen: go back
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                next = taken + 1; // nothing taken lately: go back
            }
            // ICMP port unreachable: the session's socket is closed.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break true,
            Err(e) => panic!("udp: recv: {e}"),
        }
    };
    assert!(
        ended,
        "udp: a client that sends but never acknowledges still had its session after {:?} \
         (timeout {:?}; {} MiB sent, {} datagrams taken)",
        start.elapsed(),
        env.cfg.timeout,
        sent_bytes >> 20,
        taken
    );
}

/// 300 HELLOs with pid 1 (always alive) from 300 sockets that stay open
/// and never answer the WELCOMEs, and 50 from sockets closed at once: none of
/// them completes its handshake. A real client must then be served at
/// once (not refused as "busy", not after the idle timeout), and the
/// half-open sessions must be gone within `--timeout`.
fn forged_hello_flood(env: &Env, server: &ServerProcess) {
    let addr = server_addr(env, server);
    let pid = server.pid();
    let fds0 = proc_stat::fds(pid);
    let held: Vec<UdpSocket> = (0..300u64)
        .map(|nonce| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(&hello(1, nonce), addr).unwrap();
            s
        })
        .collect();
    for nonce in 0..50u64 {
        let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
        gone.send_to(&hello(1, nonce), addr).unwrap();
    }
    let flooded = Instant::now();
    let link = server
        .connect(env.transport, &server.client_config(&env.cfg))
        .unwrap_or_else(|e| panic!("udp: after 350 forged HELLOs a client cannot connect: {e}"));
    let mut c = Client::from_link(link, env.cfg.max_frame, Form::Binary);
    match c.echo(b"after the flood") {
        Ok(e) => assert_eq!(e, b"after the flood", "udp: the echo differs"),
        Err(e) => panic!("udp: after 350 forged HELLOs a client was not served: {e}"),
    }
    assert!(
        flooded.elapsed() < Duration::from_secs(2),
        "udp: after 350 forged HELLOs a client was served only after {:?}",
        flooded.elapsed()
    );
    drop(c);
    let fds = proc_stat::fds(pid);
    assert!(
        fds <= fds0 + env.cfg.max_clients + 2,
        "udp: 350 forged HELLOs left the server with {fds} descriptors (before: {fds0}; \
         at most --max-clients {} half-open sessions)",
        env.cfg.max_clients
    );
    // The half-open sessions end within --timeout (the held sockets are
    // still open, so no ICMP error ends them).
    let until = flooded + env.cfg.timeout + Duration::from_secs(2);
    let mut fds = proc_stat::fds(pid);
    while fds > fds0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        fds = proc_stat::fds(pid);
    }
    assert!(
        fds <= fds0,
        "udp: {:?} after 350 forged HELLOs the server still holds {fds} descriptors \
         (before: {fds0}; --timeout {:?})",
        flooded.elapsed(),
        env.cfg.timeout
    );
    drop(held);
}

/// A server of our own whose RLIMIT_NOFILE is lowered to 64 (`prlimit(2)`
/// on its pid) gets 1,100 HELLOs from distinct ports (128 senders held open
/// at a time): running out of descriptors is an error it reports and
/// recovers from, never a crash. Afterwards it serves a client and gives
/// its descriptors back.
fn hello_flood_under_fd_limit(env: &Env, _server: &ServerProcess) {
    let mut cfg = env.cfg.clone();
    cfg.name = format!("{}-nofile", cfg.name);
    let mut own = ServerProcess::spawn(&exe(), env.transport, &cfg, &["--quiet"])
        .expect("a second udp server starts");
    let pid = own.pid();
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: a valid pointer to a filled rlimit, and a null old-limit pointer.
    let r = unsafe {
        libc::prlimit(
            pid.as_raw(),
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let fds0 = proc_stat::fds(pid);
    let addr = server_addr(env, &own);
    let mut senders = std::collections::VecDeque::new();
    for i in 0..1100u64 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&hello(std::process::id() as i32, i), addr)
            .unwrap();
        senders.push_back(s);
        if senders.len() > 128 {
            senders.pop_front();
        }
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
            assert!(
                proc_stat::alive(pid),
                "udp: the server died after {} HELLOs at RLIMIT_NOFILE 64",
                i + 1
            );
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        proc_stat::alive(pid),
        "udp: the server died under 1,100 HELLOs at RLIMIT_NOFILE 64"
    );
    // It serves again at once: the held senders' half-open sessions must
    // not keep a real client out until they expire.
    let flooded = Instant::now();
    let served = loop {
        let attempt = own
            .connect(env.transport, &own.client_config(&cfg))
            .and_then(|link| {
                Client::from_link(link, cfg.max_frame, Form::Binary)
                    .echo(b"still serving")
                    .map(|e| e == b"still serving")
            });
        match attempt {
            Ok(true) => break Ok(()),
            Ok(false) => panic!("udp: the echo differs"),
            Err(e) if flooded.elapsed() < Duration::from_secs(2) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = served {
        panic!(
            "udp: after the flood at RLIMIT_NOFILE 64 no client was served within {:?}: {e}",
            flooded.elapsed()
        );
    }
    drop(senders);
    let until = Instant::now() + cfg.timeout + Duration::from_secs(2);
    let mut fds = proc_stat::fds(pid);
    while fds > fds0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        fds = proc_stat::fds(pid);
    }
    assert!(
        fds <= fds0,
        "udp: after the flood the server holds {fds} descriptors (before: {fds0})"
    );
    assert!(
        proc_stat::alive(pid),
        "udp: the server died after the flood"
    );
    let status = own.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "udp: the server exited {status}");
}

/// Wait (5 s at most) for the server's DATA with sequence number `seq` and
/// return its payload; acknowledgements and retransmissions are skipped.
fn data_from(s: &UdpSocket, seq: u32) -> Vec<u8> {
    let until = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < until {
        match s.recv(&mut buf) {
            Ok(n) if n >= HEADER && buf[0] == DATA && field(&buf, 4) == seq => {
                return buf[HEADER..n].to_vec();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("udp: the session failed: {e}"),
        }
    }
    panic!("udp: no reply (DATA {seq}) within 5 s");
}

/// Datagrams whose numbers and lengths lie — sequence numbers 0, far
/// ahead and u32::MAX, a FIN out of turn, acknowledgements of data never
/// sent, a datagram larger than the protocol's chunk, a truncated header —
/// must neither crash the server nor be taken as data: the truthful
/// request that follows gets exactly its own echo.
fn lying_numbers(env: &Env, server: &ServerProcess) {
    let addr = server_addr(env, server);
    let reply = |payload: &[u8]| {
        let mut f = protocol::header(kind::DATA, payload.len()).to_vec();
        f.extend_from_slice(payload);
        f
    };
    // 1. Extreme numbers, then a datagram longer than CHUNK whose frame
    //    would continue in the next one: the server must not take its
    //    first CHUNK bytes as if that were all of it.
    let s = session(addr);
    let junk = echo_frame(b"never sent in order");
    for d in [
        vec![DATA, 0, 0],
        dgram(DATA, 0, 0, 0, &junk),
        dgram(DATA, ACK_NOW, u32::MAX, 0, &junk),
        dgram(DATA, ACK_NOW, 2, 0, &junk),
        dgram(DATA, 0, 1 << 31, u32::MAX, &junk),
        dgram(FIN, 0, 9, 0, &[]),
        dgram(FIN, 0, u32::MAX, u32::MAX, &[]),
        dgram(ACK, 0, 0, u32::MAX, &[]),
        dgram(0x7f, 0xff, 1, 0, &junk),
        dgram(DATA, 0, 1, 0, &echo_frame(&vec![0x33; CHUNK + 1000])),
    ] {
        s.send(&d).unwrap();
    }
    s.send(&dgram(DATA, 0, 1, 0, &echo_frame(b"truthful")))
        .unwrap();
    assert_eq!(
        data_from(&s, 1),
        reply(b"truthful"),
        "udp: the reply to the first truthful request is not its echo"
    );
    s.send(&dgram(FIN, 0, 2, 1, &[])).unwrap();

    // 2. A request whose acknowledgement claims data the server never
    //    sent is a forgery: it must not be taken.
    let s = session(addr);
    s.send(&dgram(DATA, 0, 1, 1000, &echo_frame(b"forged ack")))
        .unwrap();
    s.send(&dgram(DATA, 0, 1, 0, &echo_frame(b"truthful")))
        .unwrap();
    assert_eq!(
        data_from(&s, 1),
        reply(b"truthful"),
        "udp: a request acknowledging data never sent was taken"
    );
    s.send(&dgram(FIN, 0, 2, 1, &[])).unwrap();
}
