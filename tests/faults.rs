//! Fault injection, for every transport in the registry: peers killed with
//! SIGKILL at random points of their round trips, many times over. The
//! survivor must report a clear error within its timeout, the server must
//! go on serving the next client, and the next echo must be byte-exact.
//!
//! `IPCLAB_FAULT_ROUNDS` sets the rounds per transport (default 4); the
//! random seed is printed, and `IPCLAB_FAULT_SEED` replays one.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, exe, next_client_is_served, payload, watchdog};
use ipclab::client::Client;
use ipclab::process::client_args;
use ipclab::protocol::Form;
use ipclab::transport::{self, Transport};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    std::env::var("IPCLAB_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn rounds() -> u64 {
    std::env::var("IPCLAB_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

const SIZES: [usize; 4] = [0, 4096, 256 * 1024, 1 << 20];

fn faults(t: &'static dyn Transport, rng: &mut Rng) {
    let env = Env::new(t.name());
    let mut server = env.server();
    for round in 0..rounds() {
        // A client process killed at a random point of its round trips.
        let size = SIZES[rng.below(4) as usize];
        let mut client = Command::new(exe())
            .arg("client")
            .arg(t.name())
            .args(client_args(&server.client_config(&env.cfg)))
            .args(["--fill", &size.to_string(), "--count", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        let _ = client.kill();
        let _ = client.wait();
        next_client_is_served(&env, &server, Duration::from_secs(8));

        // The server killed at a random point while this process echoes.
        let size = SIZES[1 + rng.below(3) as usize];
        let cfg = server.client_config(&env.cfg);
        let link = server.connect(t, &cfg).unwrap();
        let pid = server.pid();
        let echoer = std::thread::spawn(move || {
            let mut c = Client::from_link(link, cfg.max_frame, Form::Binary);
            let data = payload(size, round);
            let started = Instant::now();
            loop {
                match c.echo(&data) {
                    Ok(echo) => assert!(echo == &data[..], "a wrong echo before the fault"),
                    Err(e) => return (e, started.elapsed()),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the server was never killed?"
                );
            }
        });
        std::thread::sleep(Duration::from_millis(5 + rng.below(40)));
        kill(pid, Signal::SIGKILL).unwrap();
        let killed_at = Instant::now();
        let (err, _) = echoer.join().unwrap();
        let noticed = killed_at.elapsed();
        assert!(
            noticed < env.cfg.timeout + Duration::from_secs(2),
            "{}: the client noticed the dead server after {noticed:?}",
            t.name()
        );
        assert!(!err.to_string().is_empty());
        let _ = server.wait_timeout(Duration::from_secs(5));
        // A new server replaces the dead one's objects and serves.
        server = env.server();
        next_client_is_served(&env, &server, Duration::from_secs(8));
    }
    assert!(server.stop().unwrap().success());
    assert!(
        env.leftovers().is_empty(),
        "{}: {:?}",
        t.name(),
        env.leftovers()
    );
    let _ = Pid::this();
}

#[test]
fn peers_killed_at_random_points() {
    let seed = seed();
    eprintln!("fault seed {seed} (IPCLAB_FAULT_SEED={seed} replays it)");
    watchdog(Duration::from_secs(600), move || {
        let mut rng = Rng(seed);
        for t in transport::all()
            .iter()
            .copied()
            // The pipe's server is its client's own child: covered by the
            // conformance suite's kill cases.
            .filter(|t| !t.capabilities().inherited)
        {
            let t0 = Instant::now();
            faults(t, &mut rng);
            eprintln!(
                "{:<15} {} rounds of client and server kills survived in {:.1} s",
                t.name(),
                rounds(),
                t0.elapsed().as_secs_f64()
            );
        }
    });
}

/// The flake this file had: a client that reconnects the instant its
/// previous session ended must wait for the server to free the slot, never
/// be told "busy" (the slot's holder and its "leaving" mark are one word).
#[test]
fn reconnecting_at_once_is_never_busy() {
    watchdog(Duration::from_secs(120), || {
        for t in ["shm", "mmap", "shm-spin"] {
            let env = Env::new(t);
            let mut server = env.server();
            let cfg = server.client_config(&env.cfg);
            for i in 0..150 {
                let link = server
                    .connect(env.transport, &cfg)
                    .unwrap_or_else(|e| panic!("{t}: reconnection {i}: {e}"));
                let mut c = Client::from_link(link, cfg.max_frame, Form::Binary);
                assert_eq!(c.echo(b"again").unwrap(), b"again");
            }
            assert!(server.stop().unwrap().success());
            assert!(env.leftovers().is_empty(), "{t}: {:?}", env.leftovers());
        }
    });
}
