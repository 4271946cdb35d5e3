//! The hostile-peer suite: a peer that lies, takes too much, stops or dies,
//! against every transport in the registry. See "Threat model" in the
//! README: whatever a peer writes, the server must not crash, must keep its
//! memory and descriptors bounded by what was actually received, must not
//! wait beyond its timeouts, must never hand one session's bytes to another
//! and must serve the next client correctly; a client must never report a
//! round trip that did not happen.
//!
//! Two kinds of attack:
//! * generic ones, over the transport's own client link or the `ipclab
//!   client` binary (announced-but-never-sent lengths, a request over the
//!   server's limit, a server killed under a client's loop), instantiated
//!   for every transport by one line at the bottom;
//! * mechanism-specific ones in `tests/attacks/<transport>.rs`, which speak
//!   the mechanism directly (write into a shared region, forge a handshake,
//!   pass extra descriptors …), listed in [`attacks::for_transport`].
//!
//! After every attack the same checks: the server process is alive, its
//! descriptors are back to what they were, its peak memory grew by less
//! than the attack's bound, and the next client's 64 KiB echo is byte-exact.
//!
//! Run it for one transport: `cargo test --test hostile_peers shm_spin::`

mod attacks;
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, exe, next_client_is_served, proc_stat, watchdog};
use ipclab::process::{ServerProcess, client_args};
use ipclab::protocol::{self, kind};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long one case may take before the watchdog fails it.
const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1024;

fn run(transport: &'static str, case: fn(Env)) {
    watchdog(LIMIT, move || case(Env::new(transport)));
}

/// The server's state before an attack, to hold it to afterwards.
pub struct Baseline {
    pid: Pid,
    fds: usize,
    rss_kib: u64,
}

impl Baseline {
    pub fn take(server: &ServerProcess) -> Baseline {
        let pid = server.pid();
        // Restart the kernel's peak-RSS count (VmHWM) from the current RSS,
        // so an earlier attack's peak is not charged to this one.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        Baseline {
            pid,
            fds: proc_stat::fds(pid),
            rss_kib: proc_stat::status_kib(pid, "VmRSS"),
        }
    }

    /// The server survived, its peak memory grew by less than `grow_kib`,
    /// its descriptors came back to the baseline (within 5 s: sessions end
    /// asynchronously) and the next client is served correctly.
    pub fn holds(&self, env: &Env, server: &ServerProcess, grow_kib: u64, what: &str) {
        let name = env.transport.name();
        assert!(
            proc_stat::alive(self.pid),
            "{name}: the server died under '{what}'"
        );
        let hwm = proc_stat::status_kib(self.pid, "VmHWM");
        assert!(
            hwm <= self.rss_kib + grow_kib,
            "{name}: under '{what}' the server's peak memory reached {hwm} KiB \
             (from {} KiB; bound +{grow_kib} KiB)",
            self.rss_kib
        );
        eprintln!(
            "hostile: {name:<15} {what:<45} server peak memory +{} KiB (bound +{grow_kib} KiB)",
            hwm.saturating_sub(self.rss_kib)
        );
        next_client_is_served(env, server, Duration::from_secs(15));
        let until = Instant::now() + Duration::from_secs(5);
        let mut fds = proc_stat::fds(self.pid);
        while fds > self.fds && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            fds = proc_stat::fds(self.pid);
        }
        assert!(
            fds <= self.fds,
            "{name}: after '{what}' the server holds {fds} descriptors (before: {})",
            self.fds
        );
        assert!(
            proc_stat::alive(self.pid),
            "{name}: the server died after '{what}'"
        );
    }
}

/// Peers that announce the largest frame the server accepts and then send
/// one byte of it: the server must not allocate what was announced.
pub fn announced_lengths_are_not_allocated(env: Env) {
    let server = env.server();
    let base = Baseline::take(&server);
    let peers =
        if env.transport.capabilities().multi_client && !env.transport.capabilities().inherited {
            16
        } else {
            1
        };
    let mut held = Vec::new();
    for _ in 0..peers {
        let mut link = server
            .connect(env.transport, &server.client_config(&env.cfg))
            .unwrap();
        let mut bytes = protocol::header(kind::ECHO, env.cfg.max_frame).to_vec();
        bytes.push(0x5a);
        link.write_all(&bytes).unwrap();
        let _ = link.flush();
        held.push(link);
    }
    // Give the sessions time to read what there is.
    std::thread::sleep(Duration::from_millis(500));
    let hwm = proc_stat::status_kib(base.pid, "VmHWM");
    // 16 MiB announced per peer; a buffer that grows with what arrived
    // stays at its initial 64 KiB (plus a thread stack) per peer.
    let bound = peers as u64 * MIB + 8 * MIB;
    assert!(
        hwm <= base.rss_kib + bound,
        "{}: {peers} peer(s) announcing {} bytes each raised the server's peak memory \
         from {} to {hwm} KiB (bound +{bound} KiB)",
        env.transport.name(),
        env.cfg.max_frame,
        base.rss_kib
    );
    drop(held);
    if env.transport.capabilities().inherited {
        return; // the pipe server's one client is gone: it exits
    }
    base.holds(&env, &server, bound, "announced lengths");
}

/// A request over the server's `--max-frame` gets the server's error reply,
/// naming the limit, and the client exits non-zero with it.
pub fn oversized_request_gets_the_error(mut env: Env) {
    env.cfg.max_frame = 1 << 20;
    let server = env.server();
    let base = Baseline::take(&server);
    let mut cfg = server.client_config(&env.cfg);
    cfg.max_frame = 4 << 20;
    let out = Command::new(exe())
        .arg("client")
        .arg(env.transport.name())
        .args(client_args(&cfg))
        .args(["--fill", &(3 << 20).to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}: a refused request exited {} (stdout {:?})",
        env.transport.name(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("exceeds the limit of"),
        "{}: the server's refusal did not reach the client: {stderr}",
        env.transport.name()
    );
    base.holds(&env, &server, 16 * MIB, "oversized request");
}

/// A peer that begins a message and then sends a byte now and then
/// (slowloris) loses its session within about `--timeout`: with one session
/// allowed, the next client is served while the trickle goes on.
pub fn trickling_peer_loses_its_session(mut env: Env) {
    env.cfg.max_clients = 1;
    env.cfg.timeout = Duration::from_secs(1);
    let server = env.server();
    let base = Baseline::take(&server);
    let mut link = server
        .connect(env.transport, &server.client_config(&env.cfg))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = link.write_all(b"echo ");
            let _ = link.flush();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(300));
                if link.write_all(b"z").and_then(|()| link.flush()).is_err() {
                    break; // the server let go of us
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // Served within 5 s: --timeout (1 s) for the trickler to lose its
    // session, and the server's own tick.
    next_client_is_served(&env, &server, Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trickling.join().unwrap();
    base.holds(&env, &server, 8 * MIB, "a peer that trickles a message");
}

/// An `ipclab client --fill 1M` process looping for good, 0.4 s into its
/// round trips.
fn endless_fill_client(env: &Env, cfg: &ipclab::transport::Config) -> std::process::Child {
    let client = Command::new(exe())
        .arg("client")
        .arg(env.transport.name())
        .args(client_args(cfg))
        .args(["--fill", &(1 << 20).to_string(), "--count", "1000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    client
}

/// The server killed under a client's `--fill` loop: the client exits
/// non-zero and says what happened, within its timeout.
pub fn killed_server_fails_the_client(env: Env) {
    let server = env.server();
    let client = endless_fill_client(&env, &server.client_config(&env.cfg));
    kill(server.pid(), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let out = client.wait_with_output().unwrap();
    let noticed = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}: the client exited {} after its server was killed (stderr {stderr:?})",
        env.transport.name(),
        out.status
    );
    assert!(
        stderr.contains("Error"),
        "{}: no error said: {stderr:?}",
        env.transport.name()
    );
    assert!(
        noticed < env.cfg.timeout + Duration::from_secs(2),
        "{}: noticed after {noticed:?}",
        env.transport.name()
    );
    // The killed server could not remove its objects: the next one on the
    // same name replaces them, and removes them when it stops.
    let mut server = server;
    let _ = server.wait_timeout(Duration::from_secs(5));
    let mut next = env.server();
    assert!(next.stop().unwrap().success());
    assert!(
        env.leftovers().is_empty(),
        "{}: left behind: {:?}",
        env.transport.name(),
        env.leftovers()
    );
}

/// The same for a pipe client, whose server is its own child.
pub fn killed_pipe_server_fails_the_client(env: Env) {
    let client = endless_fill_client(&env, &env.cfg);
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", client.id())).unwrap();
    let child: i32 = children
        .split_whitespace()
        .next()
        .expect("the pipe client started its server")
        .parse()
        .unwrap();
    kill(Pid::from_raw(child), Signal::SIGKILL).unwrap();
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "pipe: exit {} ({stderr:?})",
        out.status
    );
    assert!(stderr.contains("Error"), "pipe: no error said: {stderr:?}");
}

/// Every mechanism-specific attack for this transport, each followed by
/// the survival checks.
pub fn mechanism_attacks(env: Env) {
    let server = env.server();
    for attack in attacks::for_transport(env.transport.name()) {
        let base = Baseline::take(&server);
        (attack.run)(&env, &server);
        base.holds(&env, &server, attack.grow_kib, attack.name);
    }
}

#[test]
fn every_transport_is_attacked() {
    let src = include_str!("hostile_peers.rs");
    for t in ipclab::transport::all() {
        assert!(
            src.contains(&format!("\"{}\");", t.name()))
                || src.contains(&format!("hostile!({});", t.name()))
                || src.contains(&format!("const T: &str = \"{}\";", t.name())),
            "{} has no hostile!(…) line at the bottom of tests/hostile_peers.rs",
            t.name()
        );
    }
}

/// `hostile!(tcp);` or `hostile!(unix_dgram => "unix-dgram");`.
macro_rules! hostile {
    ($t:ident) => {
        hostile!($t => stringify!($t));
    };
    ($m:ident => $name:expr) => {
        mod $m {
            const T: &str = $name;
            #[test] fn announced_lengths_are_not_allocated() { super::run(T, super::announced_lengths_are_not_allocated) }
            #[test] fn oversized_request_gets_the_error() { super::run(T, super::oversized_request_gets_the_error) }
            #[test] fn killed_server_fails_the_client() { super::run(T, super::killed_server_fails_the_client) }
            #[test] fn trickling_peer_loses_its_session() { super::run(T, super::trickling_peer_loses_its_session) }
            #[test] fn mechanism_attacks() { super::run(T, super::mechanism_attacks) }
        }
    };
}

// The pipe's server is its client's own child, started with the client's
// own --max-frame: it has the announced-length attack and its own kill case.
mod pipe {
    const T: &str = "pipe";
    #[test]
    fn announced_lengths_are_not_allocated() {
        super::run(T, super::announced_lengths_are_not_allocated)
    }
    #[test]
    fn killed_server_fails_the_client() {
        super::run(T, super::killed_pipe_server_fails_the_client)
    }
}

hostile!(fifo);
hostile!(msgq);
hostile!(posix_mq => "posix-mq");
hostile!(shm);
hostile!(mmap);
hostile!(shm_spin => "shm-spin");
hostile!(eventfd);
hostile!(signal);
hostile!(flock);
hostile!(unix);
hostile!(unix_seqpacket => "unix-seqpacket");
hostile!(unix_dgram => "unix-dgram");
hostile!(tcp);
hostile!(udp);
