//! `ipclab bench`: every transport side by side, measured honestly.
//!
//! # The method
//! * **Ping-pong between two processes.** The server is a separate
//!   `ipclab serve` child; the client is this process. Both use exactly the
//!   code that `serve` and `client` use — nothing is special-cased for the
//!   benchmark.
//! * **The full payload both ways, checked.** Before each round trip the
//!   client writes fresh bytes (the round trip's number) into both ends of
//!   the payload; after it, it checks the length and both ends of the echo,
//!   and every 256th round trip the whole content. A transport that returned
//!   a stale or short buffer fails the cell instead of being credited.
//! * **Timing.** Each round trip is timed with the monotonic clock and
//!   recorded in an HDR histogram (3 significant digits, constant-time
//!   record); the measuring loop allocates nothing. Warm-up round trips
//!   (`--warmup`, bounded by a tenth of the time budget) are discarded.
//! * **Bounded effort.** A cell (transport × size × placement) stops after
//!   `--iterations` round trips or `--time` seconds, whichever comes first,
//!   so slow mechanisms (signals, file locks) finish too.
//! * **Cost.** User and system CPU time and context switches of both
//!   processes during the measured phase (`getrusage(2)` for the client,
//!   `/proc/<pid>/stat` and `/proc/<pid>/task/*/status` for the server).
//! * **Placement.** `same-core` pins client and server to one CPU,
//!   `cross-core` to two, `none` leaves it to the scheduler. On a virtual
//!   machine a cross-core wake-up costs tens of microseconds and hides the
//!   differences between blocking mechanisms, so the default is same-core.
//! * **Floors**, measured in the same run: a null system call, and the
//!   round trip of one cache line between the two pinned CPUs.
//!
//! Throughput is payload bytes moved per second in *both* directions:
//! `2 × size × round trips per second`.

pub mod compare;
pub mod export;
pub mod plot;
pub mod raw;
pub mod report;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Client;
use crate::process::ServerProcess;
use crate::protocol::Form;
use crate::sys::cpu::{self, allowed_cpus, pin_this_thread};
use crate::transport::{Config, Transport};
pub use report::{Cell, Environment, Floor, Placement, Report};

/// What to measure.
pub struct Plan {
    pub transports: Vec<&'static dyn Transport>,
    pub sizes: Vec<usize>,
    pub placements: Vec<Placement>,
    pub iterations: u64,
    pub time: Duration,
    pub warmup: u64,
    pub cfg: Config,
    pub exe: PathBuf,
}

/// (client CPU, server CPU) for a placement, if it can be had here.
pub fn cpus_for(p: Placement) -> Option<(Option<usize>, Option<usize>)> {
    let cpus = allowed_cpus();
    match p {
        Placement::None => Some((None, None)),
        Placement::SameCore => cpus.first().map(|&c| (Some(c), Some(c))),
        Placement::CrossCore if cpus.len() >= 2 => Some((Some(cpus[0]), Some(cpus[1]))),
        Placement::CrossCore => None,
    }
}

/// CPU time and context switches of a process, summed over its threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub user: Duration,
    pub system: Duration,
    pub voluntary: u64,
    pub involuntary: u64,
}

impl Usage {
    fn plus(self, o: Usage) -> Usage {
        Usage {
            user: self.user + o.user,
            system: self.system + o.system,
            voluntary: self.voluntary + o.voluntary,
            involuntary: self.involuntary + o.involuntary,
        }
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
}

/// This process, by `getrusage(RUSAGE_SELF)`.
pub fn own_usage() -> Usage {
    // SAFETY: plain out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        user: tv(ru.ru_utime),
        system: tv(ru.ru_stime),
        voluntary: ru.ru_nvcsw as u64,
        involuntary: ru.ru_nivcsw as u64,
    }
}

/// Another process, from `/proc/<pid>/stat` (CPU) and the `status` file of
/// each of its threads (context switches).
pub fn process_usage(pid: i32) -> Usage {
    let mut u = Usage::default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some(after) = stat.rfind(')')
    {
        // Fields after "comm)": state is field 3; utime 14, stime 15.
        let f: Vec<&str> = stat[after + 2..].split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        u.user = Duration::from_nanos(ticks(14) * 1_000_000_000 / hz);
        u.system = Duration::from_nanos(ticks(15) * 1_000_000_000 / hz);
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            for line in status.lines() {
                let num = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("voluntary_ctxt_switches") {
                    u.voluntary += num(line);
                } else if line.starts_with("nonvoluntary_ctxt_switches") {
                    u.involuntary += num(line);
                }
            }
        }
    }
    u
}

/// Nanoseconds per null system call (`getppid`, not cached by libc).
pub fn null_syscall_ns() -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let n = 200_000;
        let start = Instant::now();
        for _ in 0..n {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

/// The floors of a run, measured now: a null system call and, with two CPUs
/// allowed, a cache line's round trip between the first two.
pub fn floors(cpus: &[usize]) -> Vec<Floor> {
    let mut floors = vec![Floor {
        name: "null system call".into(),
        placement: Placement::None,
        ns: null_syscall_ns(),
    }];
    if let [a, b, ..] = *cpus
        && let Some(ns) = cache_line_rtt_ns(a, b, Duration::from_millis(300))
    {
        floors.push(Floor {
            name: format!("cache line round trip, CPU {a} <-> CPU {b}"),
            placement: Placement::CrossCore,
            ns,
        });
    }
    floors
}

/// Nanoseconds for one cache line to go from CPU `a` to CPU `b` and back:
/// two threads, pinned, spinning on one atomic. Bounded by `limit`.
pub fn cache_line_rtt_ns(a: usize, b: usize, limit: Duration) -> Option<f64> {
    let line = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + limit;
    let other = {
        let line = Arc::clone(&line);
        std::thread::spawn(move || {
            pin_this_thread(b).ok()?;
            let mut expect = 1u64;
            loop {
                let mut spins = 0u64;
                loop {
                    let v = line.load(Ordering::Acquire);
                    if v == expect {
                        break;
                    }
                    if v == u64::MAX {
                        return Some(());
                    }
                    spins += 1;
                    if spins.is_multiple_of(4096) && Instant::now() > stop + Duration::from_secs(1)
                    {
                        return None;
                    }
                    std::hint::spin_loop();
                }
                line.store(expect + 1, Ordering::Release);
                expect += 2;
            }
        })
    };
    let old = pin_this_thread(a).ok()?;
    let mut rounds = 0u64;
    let start = Instant::now();
    let mut next = 1u64;
    'outer: while Instant::now() < stop && rounds < 2_000_000 {
        for _ in 0..1000 {
            line.store(next, Ordering::Release);
            let mut spins = 0u64;
            while line.load(Ordering::Acquire) != next + 1 {
                spins += 1;
                if spins.is_multiple_of(4096) && Instant::now() > stop + Duration::from_secs(1) {
                    break 'outer;
                }
                std::hint::spin_loop();
            }
            next += 2;
            rounds += 1;
        }
    }
    let elapsed = start.elapsed();
    line.store(u64::MAX, Ordering::Release);
    let _ = cpu::restore(&old);
    other.join().ok()??;
    (rounds > 0).then(|| elapsed.as_nanos() as f64 / rounds as f64)
}

/// Something that echoes a payload: an ipclab client, or a raw peer.
pub trait Echo {
    fn echo_payload<'a>(&'a mut self, payload: &[u8]) -> io::Result<&'a [u8]>;
}

impl Echo for Client {
    fn echo_payload<'a>(&'a mut self, payload: &[u8]) -> io::Result<&'a [u8]> {
        self.echo(payload)
    }
}

impl Echo for raw::RawPeer {
    fn echo_payload<'a>(&'a mut self, payload: &[u8]) -> io::Result<&'a [u8]> {
        self.echo(payload)
    }
}

/// Measure one cell over an open client (the first round trip, before the
/// warm-up, is recorded apart).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    client: &mut impl Echo,
    server_pid: i32,
    transport: &str,
    placement: Placement,
    size: usize,
    iterations: u64,
    time: Duration,
    warmup: u64,
) -> Cell {
    let mut run = || -> io::Result<Tally> {
        let mut t = Tally::new(size)?;
        t.warm_up(client, warmup, time)?;
        t.slice(client, server_pid, iterations, time)?;
        Ok(t)
    };
    Tally::finish(run(), transport, placement, size)
}

/// A cell being measured, possibly in several slices: its histogram, round
/// trips, time and CPU usage so far.
struct Tally {
    hist: Histogram<u64>,
    n: u64,
    elapsed: Duration,
    client: Usage,
    server: Usage,
    first_rtt_ns: u64,
    payload: Vec<u8>,
}

impl Tally {
    fn new(size: usize) -> io::Result<Tally> {
        Ok(Tally {
            hist: Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
                .map_err(io::Error::other)?,
            n: 0,
            elapsed: Duration::ZERO,
            client: Usage::default(),
            server: Usage::default(),
            first_rtt_ns: 0,
            payload: (0..size).map(|i| (i as u8).wrapping_mul(31)).collect(),
        })
    }

    /// Discarded round trips, bounded by count and by a tenth of `time`;
    /// the very first one is kept apart (connection set-up, cold caches).
    fn warm_up(&mut self, client: &mut impl Echo, warmup: u64, time: Duration) -> io::Result<()> {
        let warm_until = Instant::now() + time / 10;
        for i in 0..warmup.max(1) {
            let t0 = Instant::now();
            round_trip(client, &mut self.payload, u64::MAX - i, true)?;
            if i == 0 {
                self.first_rtt_ns = t0.elapsed().as_nanos() as u64;
            }
            if Instant::now() >= warm_until {
                break;
            }
        }
        Ok(())
    }

    /// Measure at most `iterations` round trips or `time`, whichever ends first.
    fn slice(
        &mut self,
        client: &mut impl Echo,
        server_pid: i32,
        iterations: u64,
        time: Duration,
    ) -> io::Result<()> {
        let client_before = own_usage();
        let server_before = process_usage(server_pid);
        let start = Instant::now();
        let mut i = 0u64;
        while i < iterations.max(1) {
            let n = self.n + i;
            let t0 = Instant::now();
            round_trip(client, &mut self.payload, n, n.is_multiple_of(256))?;
            let t1 = Instant::now();
            self.hist
                .saturating_record((t1 - t0).as_nanos().max(1) as u64);
            i += 1;
            if t1 - start >= time {
                break;
            }
        }
        self.elapsed += start.elapsed();
        self.n += i;
        self.client = self.client.plus(own_usage().since(client_before));
        self.server = self
            .server
            .plus(process_usage(server_pid).since(server_before));
        Ok(())
    }

    fn finish(t: io::Result<Tally>, transport: &str, placement: Placement, size: usize) -> Cell {
        let mut cell = Cell::empty(transport, placement, size);
        match t {
            Ok(t) => {
                cell.first_rtt_ns = t.first_rtt_ns;
                cell.fill(&t.hist, t.n, t.elapsed, t.client, t.server);
            }
            Err(e) => cell.error = Some(e.to_string()),
        }
        cell
    }
}

/// Slices a paired cell is cut into: the transport and its raw baseline
/// take turns, so that both see the same machine (on a VM, the host's
/// load drifts by tens of percent within seconds).
pub const PAIRED_SLICES: u32 = 10;

/// Measure `client` and its raw baseline `raw` in alternating slices.
#[allow(clippy::too_many_arguments)]
fn measure_paired(
    client: &mut Client,
    server_pid: i32,
    raw: &mut raw::RawPeer,
    t: &str,
    kind: raw::RawKind,
    placement: Placement,
    size: usize,
    plan: &Plan,
) -> (Cell, Cell) {
    let raw_pid = raw.pid().as_raw();
    let (mut a, mut b) = match (Tally::new(size), Tally::new(size)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let e = || Err(io::Error::new(e.kind(), e.to_string()));
            return (
                Tally::finish(e(), t, placement, size),
                Tally::finish(e(), kind.name(), placement, size),
            );
        }
    };
    let mut ra = a.warm_up(client, plan.warmup, plan.time);
    let mut rb = b.warm_up(raw, plan.warmup, plan.time);
    let (iters, time) = (
        plan.iterations.div_ceil(PAIRED_SLICES as u64),
        plan.time / PAIRED_SLICES,
    );
    for _ in 0..PAIRED_SLICES {
        if ra.is_ok() {
            ra = a.slice(client, server_pid, iters, time);
        }
        if rb.is_ok() {
            rb = b.slice(raw, raw_pid, iters, time);
        }
    }
    (
        Tally::finish(ra.map(|()| a), t, placement, size),
        Tally::finish(rb.map(|()| b), kind.name(), placement, size),
    )
}

/// One checked echo of `payload`, stamped with `stamp` at both ends.
fn round_trip(
    client: &mut impl Echo,
    payload: &mut [u8],
    stamp: u64,
    full_check: bool,
) -> io::Result<()> {
    let s = stamp.to_le_bytes();
    let len = payload.len();
    let k = len.min(8);
    payload[..k].copy_from_slice(&s[..k]);
    payload[len - k..].copy_from_slice(&s[8 - k..]);
    let echo = client.echo_payload(payload)?;
    let bad = echo.len() != len
        || echo[..k] != payload[..k]
        || echo[len - k..] != payload[len - k..]
        || (full_check && echo != &payload[..]);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "round trip {stamp}: the echo differs from the request ({} bytes sent, {} received)",
                len,
                echo.len()
            ),
        ));
    }
    Ok(())
}

/// Run every cell of `plan` for one transport and placement; with a
/// `baseline`, its raw rows too, measured in turns with the transport
/// ([`PAIRED_SLICES`]). `on_cell` is called after each cell (progress).
pub fn run_transport(
    plan: &Plan,
    t: &'static dyn Transport,
    placement: Placement,
    baseline: Option<raw::RawKind>,
    mut on_cell: impl FnMut(&Cell),
) -> Vec<Cell> {
    let fail_all = |e: String| -> Vec<Cell> {
        plan.sizes
            .iter()
            .map(|&s| {
                let mut c = Cell::empty(t.name(), placement, s);
                c.error = Some(e.clone());
                c
            })
            .collect()
    };
    let Some((client_cpu, server_cpu)) = cpus_for(placement) else {
        return fail_all("cross-core needs at least 2 CPUs".into());
    };
    let mut cfg = plan.cfg.clone();
    cfg.name = format!("bench-{}-{}", std::process::id(), t.name());
    cfg.addr = "127.0.0.1:0".into();
    let pin_arg = server_cpu.map(|c| c.to_string());
    let mut extra = vec!["--quiet"];
    if let Some(c) = &pin_arg {
        extra.extend(["--pin-cpu", c.as_str()]);
    }
    let mut server = match ServerProcess::spawn(&plan.exe, t, &cfg, &extra) {
        Ok(s) => s,
        Err(e) => return fail_all(e.to_string()),
    };
    let old_mask = match client_cpu.map(pin_this_thread) {
        Some(Err(e)) => return fail_all(format!("cannot pin the client: {e}")),
        Some(Ok(m)) => Some(m),
        None => None,
    };
    let mut cells = Vec::new();
    match server.connect(t, &cfg) {
        Ok(link) => {
            let mut client = Client::from_link(link, cfg.max_frame, Form::Binary);
            let mut raw_cells = Vec::new();
            for &size in &plan.sizes {
                let pid = server.pid().as_raw();
                let cell = match baseline.map(|k| (k, raw::RawPeer::start(k, size, server_cpu))) {
                    Some((kind, Ok(mut peer))) => {
                        let (cell, mut raw_cell) = measure_paired(
                            &mut client,
                            pid,
                            &mut peer,
                            t.name(),
                            kind,
                            placement,
                            size,
                            plan,
                        );
                        raw_cell.baseline = true;
                        on_cell(&raw_cell);
                        raw_cells.push(raw_cell);
                        cell
                    }
                    other => {
                        if let Some((kind, Err(e))) = other {
                            let mut c = Cell::empty(kind.name(), placement, size);
                            c.baseline = true;
                            c.error = Some(e.to_string());
                            on_cell(&c);
                            raw_cells.push(c);
                        }
                        measure(
                            &mut client,
                            pid,
                            t.name(),
                            placement,
                            size,
                            plan.iterations,
                            plan.time,
                            plan.warmup,
                        )
                    }
                };
                on_cell(&cell);
                let failed = cell.error.is_some();
                cells.push(cell);
                if failed {
                    break;
                }
            }
            cells.extend(raw_cells);
        }
        Err(e) => cells = fail_all(e.to_string()),
    }
    if let Some(m) = old_mask {
        let _ = cpu::restore(&m);
    }
    let _ = server.stop();
    cells
}

/// `bench --connect ADDR`: measure a server that is already running at
/// `addr` (possibly on another machine) over network transport `t`. The
/// client is not pinned and the server's CPU time is unknown (zero).
pub fn run_remote(
    plan: &Plan,
    t: &'static dyn Transport,
    addr: &str,
    mut on_cell: impl FnMut(&Cell),
) -> Vec<Cell> {
    let mut cfg = plan.cfg.clone();
    cfg.addr = addr.to_string();
    let mut cells = Vec::new();
    match t.connect(&cfg) {
        Ok(link) => {
            let mut client = Client::from_link(link, cfg.max_frame, Form::Binary);
            for &size in &plan.sizes {
                // pid 0: no process of ours to read the usage of.
                let cell = measure(
                    &mut client,
                    0,
                    t.name(),
                    Placement::None,
                    size,
                    plan.iterations,
                    plan.time,
                    plan.warmup,
                );
                on_cell(&cell);
                let failed = cell.error.is_some();
                cells.push(cell);
                if failed {
                    break;
                }
            }
        }
        Err(e) => {
            let mut c = Cell::empty(t.name(), Placement::None, plan.sizes[0]);
            c.error = Some(format!("cannot connect to {addr}: {e}"));
            on_cell(&c);
            cells.push(c);
        }
    }
    cells
}
