//! The command line after its split into `src/cli/`: every subcommand still
//! writes through the one standard output that tells a closed stdout from a
//! dead peer, `bench --connect` measures the server it names, and the
//! exports of one run (to stdout and to files) are one report.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{exe, watchdog};
use ipclab::bench::Report;

/// Run ipclab with a standard output whose reader is already gone: every
/// write to it fails with EPIPE.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    Command::new(exe())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    watchdog(Duration::from_secs(120), || {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bench.json");
        let cases: Vec<Vec<&str>> = vec![
            vec!["list"],
            vec!["limits"],
            vec!["limits", "--json"],
            vec!["report", docs],
            vec!["report", docs, "--against", docs],
            vec!["clean", "--dir", d],
            vec!["clean", "--dir", d, "--json"],
            vec![
                "bench",
                "unix",
                "--sizes",
                "64",
                "--time",
                "0.02",
                "--warmup",
                "5",
                "--no-baselines",
                "--dir",
                d,
            ],
            vec![
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
                d,
            ],
        ];
        for args in cases {
            let out = with_closed_stdout(&args);
            assert_eq!(
                out.status.code(),
                Some(0),
                "ipclab {args:?} into a closed stdout: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("Error"), "ipclab {args:?}: {stderr}");
        }
    });
}

#[test]
fn bench_connect_measures_the_named_server_not_one_of_its_own() {
    watchdog(Duration::from_secs(60), || {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("r.json");
        // Port 1 on loopback: nobody listens there.
        let out = Command::new(exe())
            .args(["bench", "tcp", "--connect", "127.0.0.1:1", "--sizes", "64"])
            .args(["--time", "0.02", "--warmup", "5", "--export-json"])
            .arg(&json)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a server nobody runs was measured: {stdout}{stderr}"
        );
        assert!(
            stdout.contains("FAILED: cannot connect to 127.0.0.1:1"),
            "{stdout}"
        );
        let report: Report =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report.results.len(), 1, "{:?}", report.results);
        assert_eq!(report.results[0].round_trips, 0);
    });
}

#[test]
fn exports_to_stdout_and_to_files_are_one_report() {
    watchdog(Duration::from_secs(60), || {
        let dir = tempfile::tempdir().unwrap();
        let (csv, md) = (dir.path().join("r.csv"), dir.path().join("r.md"));
        let out = Command::new(exe())
            .args(["bench", "pipe,unix", "--sizes", "64", "--time", "0.02"])
            .args(["--warmup", "5", "--export-json", "-", "--export-csv"])
            .arg(&csv)
            .arg("--export-markdown")
            .arg(&md)
            .arg("--dir")
            .arg(dir.path().join("run"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // stdout is the JSON alone; the tables went to stderr.
        let report: Report = serde_json::from_slice(&out.stdout).expect("stdout is the JSON");
        assert!(String::from_utf8_lossy(&out.stderr).contains("64 B payload, same-core"));
        let mut rows = csv::Reader::from_path(&csv).unwrap();
        let header = rows.headers().unwrap().clone();
        let p50 = header.iter().position(|h| h == "p50_ns").unwrap();
        let csv_p50: Vec<u64> = rows
            .records()
            .map(|r| r.unwrap()[p50].parse().unwrap())
            .collect();
        let json_p50: Vec<u64> = report.results.iter().map(|c| c.p50_ns).collect();
        assert_eq!(
            csv_p50, json_p50,
            "the CSV file and the JSON on stdout differ"
        );
        let text = std::fs::read_to_string(&md).unwrap();
        assert!(text.contains(&report.environment.date_utc), "{text}");
        assert_eq!(report.results.len(), 4, "pipe, unix and their baselines");
    });
}
