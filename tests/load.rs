//! Load: for every multi-client transport (found in the registry, so a new
//! one is covered without a change here), 64 concurrent clients × 2,000
//! round trips with random payload sizes from 0 B to 64 KiB, each reply
//! checked byte for byte against its own request: nothing lost, crossed or
//! corrupted. The server's peak memory is reported and must stay bounded.
//!
//! `IPCLAB_LOAD_ROUNDS` changes the round trips per client. The soak test
//! runs the same for minutes: `IPCLAB_SOAK_SECS=600 cargo test --release
//! --test load -- --ignored`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Env, watchdog};
use ipclab::protocol::Form;
use ipclab::transport::{self, Transport};

const CLIENTS: usize = 64;
const MAX_SIZE: usize = 64 * 1024;
/// Far above what 64 sessions need (64 × (64 KiB buffers + a thread)).
const RSS_BOUND_KIB: u64 = 256 * 1024;

fn rounds() -> usize {
    std::env::var("IPCLAB_LOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A small deterministic generator (xorshift), one per client.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// POSIX message queues count against RLIMIT_MSGQUEUE (per user): raise it
/// for this process if we may, and say how many clients fit otherwise.
fn clients_for(t: &dyn Transport) -> usize {
    if t.name() != "posix-mq" {
        return CLIENTS;
    }
    let want = 8 << 20;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain out-parameter / in-parameter calls.
    unsafe {
        libc::getrlimit(libc::RLIMIT_MSGQUEUE, &mut r);
        if r.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: r.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_MSGQUEUE, &raised) != 0 {
                let soft = r.rlim_max.min(want);
                let _ = libc::setrlimit(
                    libc::RLIMIT_MSGQUEUE,
                    &libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: r.rlim_max,
                    },
                );
                libc::getrlimit(libc::RLIMIT_MSGQUEUE, &mut r);
            } else {
                r = raised;
            }
        }
    }
    // About 33 KiB per connection, and headroom for other tests' queues.
    let fit = (r.rlim_cur as usize / (34 * 1024)).saturating_sub(4);
    if fit < CLIENTS {
        eprintln!(
            "posix-mq: RLIMIT_MSGQUEUE is {} bytes and cannot be raised: {fit} clients instead of {CLIENTS}",
            r.rlim_cur
        );
    }
    fit.clamp(1, CLIENTS)
}

fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Run the load against one transport; returns the line for the report.
fn load(t: &'static dyn Transport, rounds: usize) -> String {
    let env = Arc::new(Env::new(t.name()));
    let server = Arc::new(env.server());
    let clients = clients_for(t);
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|id| {
            let (env, server, bytes) = (Arc::clone(&env), Arc::clone(&server), Arc::clone(&bytes));
            std::thread::spawn(move || {
                let mut c = env.client(&server, Form::Binary);
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1000_0001));
                // Random bytes made once; each request is a random window of
                // them (cheap to make even in a debug build), stamped below.
                let noise: Vec<u8> = (0..2 * MAX_SIZE).map(|_| rng.next() as u8).collect();
                let mut payload = Vec::with_capacity(MAX_SIZE);
                for round in 0..rounds {
                    let size = (rng.next() % (MAX_SIZE as u64 + 1)) as usize;
                    let at = (rng.next() % MAX_SIZE as u64) as usize;
                    payload.clear();
                    payload.extend_from_slice(&noise[at..at + size]);
                    // Who and when, so a crossed reply cannot pass for ours.
                    let stamp = ((id as u64) << 32 | round as u64).to_le_bytes();
                    let k = size.min(8);
                    payload[..k].copy_from_slice(&stamp[..k]);
                    let echo = c.echo(&payload).unwrap_or_else(|e| {
                        panic!("{}: client {id}, round {round}: {e}", env.transport.name())
                    });
                    assert!(
                        echo == &payload[..],
                        "{}: client {id}, round {round}: a reply of {} bytes is not the echo of {size}",
                        env.transport.name(),
                        echo.len()
                    );
                    bytes.fetch_add(size as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for th in threads {
        if let Err(p) = th.join() {
            std::panic::resume_unwind(p);
        }
    }
    let elapsed = start.elapsed();
    let rss = peak_rss_kib(server.pid().as_raw());
    let line = format!(
        "{:<15} {clients} clients × {rounds} round trips, {} MiB each way, {:.1} s, 0 lost/crossed/corrupted, server peak RSS {:.1} MiB",
        t.name(),
        bytes.load(Ordering::Relaxed) >> 20,
        elapsed.as_secs_f64(),
        rss as f64 / 1024.0
    );
    assert!(
        rss < RSS_BOUND_KIB,
        "{}: the server's peak RSS is {rss} KiB",
        t.name()
    );
    let mut server = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("clients still hold it"));
    assert!(server.stop().unwrap().success());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    line
}

fn multi_client() -> Vec<&'static dyn Transport> {
    transport::all()
        .iter()
        .copied()
        .filter(|t| t.capabilities().multi_client && !t.capabilities().inherited)
        .collect()
}

#[test]
fn every_multi_client_transport_holds_64_clients() {
    watchdog(Duration::from_secs(900), || {
        let rounds = rounds();
        let lines: Vec<String> = multi_client()
            .into_iter()
            .map(|t| load(t, rounds))
            .collect();
        eprintln!("\n{}", lines.join("\n"));
    });
}

/// The same load, again and again, for `IPCLAB_SOAK_SECS` (default 600).
#[test]
#[ignore = "a soak run takes minutes: cargo test --release --test load -- --ignored"]
fn soak() {
    let secs: u64 = std::env::var("IPCLAB_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let until = Instant::now() + Duration::from_secs(secs);
    watchdog(Duration::from_secs(secs + 900), move || {
        let mut pass = 0;
        while Instant::now() < until {
            pass += 1;
            for t in multi_client() {
                eprintln!("pass {pass}: {}", load(t, rounds()));
            }
        }
    });
}
