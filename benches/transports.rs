//! `cargo bench`: every transport's round trip per payload size, next to
//! raw-syscall baselines, with criterion's statistics.
//!
//! One `benchmark_group` per payload size; inside it, one benchmark per
//! transport (`BenchmarkId::new(transport, size)`). Each server is a real
//! `ipclab serve` process started once, outside the timed closure, and kept
//! for every size; the client is pinned to the same CPU as the server
//! (same-core, as `ipclab bench` does by default). `iter_custom` times the
//! echoes the client makes. Groups of 4 KiB and up use flat sampling and
//! few samples: the signal transport takes milliseconds to seconds there.
//!
//! `cargo test --benches` runs each benchmark once, to keep them working.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ipclab::bench::raw::{RawKind, RawPeer};
use ipclab::bench::{Placement, cpus_for};
use ipclab::client::Client;
use ipclab::process::ServerProcess;
use ipclab::protocol::Form;
use ipclab::sys::cpu::pin_this_thread;
use ipclab::transport::{self, Config};
use ipclab::units::fmt_size;

const SIZES: [usize; 4] = [64, 4096, 64 * 1024, 1 << 20];

fn round_trips(c: &mut Criterion) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ipclab"));
    let dir = tempfile::Builder::new()
        .prefix("ipclab-bench")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let (client_cpu, server_cpu) = cpus_for(Placement::SameCore).expect("a CPU");
    let _mask = client_cpu.map(|c| pin_this_thread(c).expect("pin the client"));
    let pin = server_cpu.map(|c| c.to_string()).unwrap_or_default();

    // Servers and clients first, outside every timed closure.
    let mut peers: Vec<(&str, ServerProcess, Client)> = Vec::new();
    for t in transport::all() {
        let cfg = Config {
            dir: dir.path().to_path_buf(),
            name: format!("cb-{}", t.name()),
            addr: "127.0.0.1:0".into(),
            timeout: Duration::from_secs(30),
            ..Config::default()
        };
        let mut extra = vec!["--quiet"];
        if server_cpu.is_some() {
            extra.extend(["--pin-cpu", pin.as_str()]);
        }
        let server = ServerProcess::spawn(&exe, *t, &cfg, &extra).expect("server starts");
        let link = server.connect(*t, &cfg).expect("client connects");
        peers.push((
            t.name(),
            server,
            Client::from_link(link, cfg.max_frame, Form::Binary),
        ));
    }

    for size in SIZES {
        let mut group = c.benchmark_group(format!("round_trip/{}", fmt_size(size)));
        group.throughput(Throughput::Bytes(size as u64));
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(2));
        if size >= 4096 {
            group.sampling_mode(SamplingMode::Flat).sample_size(10);
        }
        let mut payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        for (name, _server, client) in peers.iter_mut() {
            group.bench_with_input(BenchmarkId::new(*name, size), &size, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for i in 0..iters {
                        payload[0] = i as u8;
                        let echo = client.echo(&payload).expect("echo");
                        assert_eq!(echo.len(), size);
                    }
                    start.elapsed()
                })
            });
        }
        for kind in RawKind::ALL {
            let mut raw = RawPeer::start(kind, size, server_cpu).expect("raw peer");
            group.bench_with_input(BenchmarkId::new(kind.name(), size), &size, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let echo = raw.echo(&payload).expect("raw echo");
                        assert_eq!(echo.len(), size);
                    }
                    start.elapsed()
                })
            });
        }
        group.finish();
    }
    drop(peers);
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
