//! `ipclab bench` as a user runs it: real transports, tiny budgets, and the
//! exported schema pinned by parsing it back with `deny_unknown_fields`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{exe, watchdog};
use ipclab::bench::{Placement, Report};

#[test]
fn bench_exports_parse_back_and_agree() {
    watchdog(Duration::from_secs(120), || {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (json, csv, md) = (d.join("r.json"), d.join("r.csv"), d.join("r.md"));
        let out = Command::new(exe())
            .args([
                "bench",
                "pipe",
                "--transports",
                "unix,msgq",
                "--sizes",
                "64,4K",
                "--time",
                "0.05",
            ])
            .args(["--warmup", "10", "--dir"])
            .arg(d.join("run"))
            .arg("--export-json")
            .arg(&json)
            .arg("--export-csv")
            .arg(&csv)
            .arg("--export-markdown")
            .arg(&md)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The schema: unknown or missing fields fail here.
        let report: Report =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report.environment.sizes_bytes, vec![64, 4096]);
        assert_eq!(report.environment.placements, vec![Placement::SameCore]);
        assert!(
            report
                .floors
                .iter()
                .any(|f| f.name == "null system call" && f.ns > 0.0)
        );
        // 3 transports × 2 sizes, and the raw baselines of pipe and unix.
        assert_eq!(report.results.iter().filter(|c| !c.baseline).count(), 6);
        let raw: Vec<&str> = report
            .results
            .iter()
            .filter(|c| c.baseline)
            .map(|c| c.transport.as_str())
            .collect();
        assert_eq!(
            raw,
            ["raw-pipe", "raw-pipe", "raw-unix", "raw-unix"],
            "each right after its transport"
        );
        for c in &report.results {
            assert!(c.error.is_none(), "{c:?}");
            assert!(c.round_trips > 0);
            assert!(
                c.min_ns <= c.p50_ns && c.p50_ns <= c.p99_ns && c.p99_ns <= c.max_ns,
                "{c:?}"
            );
            let mib = 2.0 * c.size_bytes as f64 * c.rtt_per_s / (1 << 20) as f64;
            assert!((c.mib_per_s - mib).abs() < 1e-6 * mib.max(1.0));
            assert!(c.cpu_per_rtt_ns > 0.0, "CPU time is measured: {c:?}");
        }

        // CSV: a header and one row per cell, with the same figures.
        let text = std::fs::read_to_string(&csv).unwrap();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let header = rows.headers().unwrap().clone();
        for col in [
            "transport",
            "placement",
            "size_bytes",
            "p50_ns",
            "p99_ns",
            "mib_per_s",
            "error",
        ] {
            assert!(header.iter().any(|h| h == col), "CSV lacks {col}");
        }
        assert_eq!(rows.records().count(), 10);

        // Markdown and the terminal: one table per size; a summary line each.
        let md = std::fs::read_to_string(&md).unwrap();
        assert!(
            md.contains("## 64 B payload, same-core") && md.contains("## 4 KiB payload, same-core")
        );
        assert!(stdout.contains("at 64 B (same-core):") && stdout.contains("fastest"));
        assert!(
            stdout.contains("ipclab overhead at 64 B (same-core): pipe")
                && stdout.contains("× raw")
        );
        for t in ["pipe", "unix", "msgq"] {
            assert!(stdout.contains(t), "{t} missing from:\n{stdout}");
        }
        assert_eq!(
            std::fs::read_dir(d.join("run")).unwrap().count(),
            0,
            "bench left objects behind"
        );
    });
}

#[test]
fn json_to_stdout_keeps_stdout_clean() {
    watchdog(Duration::from_secs(60), || {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(exe())
            .args([
                "bench",
                "unix",
                "--sizes",
                "64",
                "--time",
                "0.02",
                "--warmup",
                "5",
                "--export-json",
                "-",
                "--dir",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let report: Report =
            serde_json::from_slice(&out.stdout).expect("stdout is exactly the JSON");
        assert_eq!(report.results.len(), 2, "unix and raw-unix");
    });
}

#[test]
fn plot_is_an_svg_or_png_with_every_transport() {
    watchdog(Duration::from_secs(60), || {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("p.svg");
        let out = Command::new(exe())
            .args([
                "bench",
                "pipe,unix",
                "--sizes",
                "64,4K",
                "--time",
                "0.02",
                "--warmup",
                "5",
            ])
            .arg("--dir")
            .arg(dir.path().join("run"))
            .arg("--plot")
            .arg(&svg)
            .arg("--export-json")
            .arg(dir.path().join("run.json"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "not an SVG");
        for label in [
            "pipe",
            "unix",
            "raw-pipe (reference)",
            "floor: null system call",
            "64 B",
            "4 KiB",
            "same-core",
        ] {
            assert!(text.contains(label), "the plot lacks {label:?}");
        }

        // The same run as PNG, drawn again from the saved JSON.
        let png = dir.path().join("p.png");
        let out = Command::new(exe())
            .arg("report")
            .arg(dir.path().join("run.json"))
            .arg("--plot")
            .arg(&png)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((dim(16), dim(20)), (2560, 1360), "2× the SVG's 1280 × 680");

        let bad = Command::new(exe())
            .args(["bench", "unix", "--plot"])
            .arg(dir.path().join("p.gif"))
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("--plot writes SVG or PNG"));
    });
}

#[test]
fn saved_runs_are_shown_plotted_and_compared_by_the_script() {
    watchdog(Duration::from_secs(90), || {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["before.json", "after.json"] {
            let out = Command::new(exe())
                .args([
                    "bench",
                    "unix",
                    "--sizes",
                    "64",
                    "--time",
                    "0.02",
                    "--warmup",
                    "5",
                    "--no-baselines",
                ])
                .arg("--dir")
                .arg(d.join("run"))
                .arg("--export-json")
                .arg(d.join(name))
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-report.sh");
        let run = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("bash")
                .arg(script)
                .args(args)
                .env("IPCLAB", exe())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (b, a, svg) = (d.join("before.json"), d.join("after.json"), d.join("p.svg"));
        let cmp = run(&["compare".as_ref(), b.as_os_str(), a.as_os_str()]);
        assert!(
            cmp.contains("p50 BEFORE")
                && cmp
                    .lines()
                    .any(|l| l.starts_with("unix") && l.contains("×")),
            "{cmp}"
        );
        run(&["plot".as_ref(), a.as_os_str(), svg.as_os_str()]);
        assert!(std::fs::read_to_string(&svg).unwrap().contains("unix"));
        let shown = run(&["show".as_ref(), a.as_os_str()]);
        assert!(shown.contains("64 B payload, same-core"), "{shown}");

        // A file that is not a run gets a clear error.
        std::fs::write(d.join("bad.json"), br#"{"results": 1}"#).unwrap();
        let out = Command::new(exe())
            .arg("report")
            .arg(d.join("bad.json"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a run saved by"));
    });
}

#[test]
fn connect_measures_a_running_server_and_refuses_local_only_transports() {
    watchdog(Duration::from_secs(60), || {
        for t in ["tcp", "udp"] {
            let env = common::Env::new(t);
            let server = env.server();
            let addr = server.client_config(&env.cfg).addr;
            let json = env.dir().join("remote.json");
            let out = Command::new(exe())
                .args([
                    "bench",
                    t,
                    "--connect",
                    &addr,
                    "--sizes",
                    "64",
                    "--time",
                    "0.05",
                ])
                .args(["--warmup", "5", "--export-json"])
                .arg(&json)
                .args(["--dir"])
                .arg(env.dir().join("run"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{t}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains(&format!("the server at {addr}")), "{text}");
            let report: Report =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            assert_eq!(
                report.environment.remote_server.as_deref(),
                Some(addr.as_str())
            );
            let cell = &report.results[0];
            assert_eq!(
                (cell.transport.as_str(), cell.placement),
                (t, Placement::None)
            );
            assert!(cell.error.is_none() && cell.round_trips > 0, "{cell:?}");
            // Nothing was started: no baseline rows.
            assert!(report.results.iter().all(|c| !c.baseline));
        }
        let out = Command::new(exe())
            .args(["bench", "shm", "--connect", "127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not cross machines"));
    });
}
