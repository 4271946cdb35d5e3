//! `ipclab bench`: the transports measured side by side. The measuring is
//! the library's ([`ipclab::bench`]); here the plan is made from the
//! arguments, the progress shown, the exports saved after each transport,
//! and the tables printed.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use ipclab::bench::export::{Exports, Format};
use ipclab::bench::raw::RawKind;
use ipclab::bench::{self, Environment, Placement, Plan, Report};
use ipclab::transport::{self, Transport};
use ipclab::units::{parse_secs, parse_size};

use super::transport_names;

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlacementArg {
    /// Client and server pinned to one CPU (wake-ups are cheap: shows what differs)
    SameCore,
    /// Client and server pinned to two CPUs
    CrossCore,
    /// Not pinned: the scheduler decides
    None,
    /// same-core, then cross-core
    Both,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Transports to compare, by name or comma-separated [default: all]
    #[arg(value_delimiter = ',', value_parser = transport_names())]
    names: Vec<String>,
    /// Transports to compare, comma-separated (the same as naming them)
    #[arg(long, value_delimiter = ',', value_parser = transport_names())]
    transports: Vec<String>,
    /// Payload sizes, comma-separated, with K/M suffixes
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "64,4K,64K,1M")]
    sizes: Vec<usize>,
    /// Most measured round trips per transport and size
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Most seconds measured per transport and size (whichever ends first)
    #[arg(long, default_value = "0.5", value_parser = parse_secs, value_name = "SECS")]
    time: Duration,
    /// Round trips discarded before measuring (at most a tenth of --time)
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// Where client and server run
    #[arg(long, value_enum, default_value = "same-core")]
    placement: PlacementArg,
    /// Write the results as JSON ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    export_json: Option<String>,
    /// Write the results as CSV, one row per transport and size ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    export_csv: Option<String>,
    /// Write the results as Markdown tables ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    export_markdown: Option<String>,
    /// Runtime directory [default: $XDG_RUNTIME_DIR/ipclab, or /tmp/ipclab-<uid>]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds any blocking wait may take before it is an error
    #[arg(long, default_value = "10", value_parser = parse_secs, value_name = "SECS")]
    timeout: Duration,
    /// Skip the raw-syscall reference rows (raw-pipe, raw-unix, raw-tcp)
    #[arg(long)]
    no_baselines: bool,
    /// Measure a server already running at HOST:PORT (e.g. `ipclab serve tcp
    /// --addr 0.0.0.0:8008` on another machine) instead of starting one:
    /// network transports only (default: tcp); no placement, no baselines
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Draw p50 (with a p99 whisker) against payload size, log-log, as SVG or PNG
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the ipclab binary to start servers")?;
    let transports = chosen_transports(&a)?;
    if let Some(p) = &a.plot {
        bench::plot::check_path(p)?;
    }
    let placements = match (a.placement, &a.connect) {
        // The server is not ours to pin.
        (_, Some(_)) => vec![Placement::None],
        (PlacementArg::SameCore, _) => vec![Placement::SameCore],
        (PlacementArg::CrossCore, _) => vec![Placement::CrossCore],
        (PlacementArg::None, _) => vec![Placement::None],
        (PlacementArg::Both, _) => vec![Placement::SameCore, Placement::CrossCore],
    };
    let cfg = super::local_config(a.dir.clone(), a.timeout)?;
    let exports = Exports::new([
        (Format::Json, a.export_json.as_deref()),
        (Format::Csv, a.export_csv.as_deref()),
        (Format::Markdown, a.export_markdown.as_deref()),
    ]);

    let cpus = ipclab::sys::cpu::allowed_cpus();
    let floors = bench::floors(&cpus);
    let (cpu_model, kernel) = bench::report::machine();
    let mut report = Report {
        environment: Environment {
            ipclab_version: env!("CARGO_PKG_VERSION").into(),
            cpu_model,
            cores: cpus.len(),
            kernel,
            date_utc: bench::report::utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            placements: placements.clone(),
            sizes_bytes: a.sizes.clone(),
            iterations: a.iterations,
            time_limit_s: a.time.as_secs_f64(),
            warmup: a.warmup,
            remote_server: a.connect.clone(),
        },
        floors,
        results: Vec::new(),
    };
    let plan = Plan {
        transports: transports.clone(),
        sizes: a.sizes.clone(),
        placements: placements.clone(),
        iterations: a.iterations,
        time: a.time,
        warmup: a.warmup,
        cfg,
        exe,
    };
    // Nothing was started for a remote server: nothing to compare it with.
    let baselines: Vec<RawKind> = if a.no_baselines || a.connect.is_some() {
        Vec::new()
    } else {
        RawKind::ALL
            .into_iter()
            .filter(|k| transports.iter().any(|t| t.name() == k.transport()))
            .collect()
    };
    let cells = (transports.len() + baselines.len()) * a.sizes.len() * placements.len();
    let bar = progress_bar(cells as u64);
    for &placement in &placements {
        for &t in &transports {
            bar.set_message(format!("{} ({placement})", t.name()));
            let results = match &a.connect {
                Some(addr) => bench::run_remote(&plan, t, addr, |_| bar.inc(1)),
                // A transport and its raw baseline are measured in turns, so
                // that drift of the machine does not fall between the two.
                None => {
                    let kind = baselines
                        .iter()
                        .copied()
                        .find(|k| k.transport() == t.name());
                    bench::run_transport(&plan, t, placement, kind, |_| bar.inc(1))
                }
            };
            report.results.extend(results);
            // Rewritten after each transport: a crash keeps what was measured.
            exports.save(&report)?;
        }
    }
    bar.finish_and_clear();
    if let Some(p) = &a.plot {
        bench::plot::draw(&report, p)?;
        eprintln!("plot written to {}", p.display());
    }
    // An export to stdout ("-") gets stdout to itself; the tables go to stderr.
    if exports.to_stdout() {
        print_tables(&report, &mut io::stderr().lock())?;
        exports.write_stdout(&report, &mut crate::stdout())?;
    } else {
        print_tables(&report, &mut crate::stdout())?;
    }
    for w in report.warnings() {
        eprintln!("warning: {w}");
    }
    let failed = report.results.iter().any(|c| c.error.is_some());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The transports named (by argument or `--transports`), checked against
/// the other arguments; none named: all of them, or tcp for `--connect`.
fn chosen_transports(a: &BenchArgs) -> Result<Vec<&'static dyn Transport>> {
    let names: Vec<&String> = a.names.iter().chain(&a.transports).collect();
    let transports: Vec<&'static dyn Transport> = if names.is_empty() {
        if a.connect.is_some() {
            vec![transport::by_name("tcp")?]
        } else {
            transport::all().to_vec()
        }
    } else {
        names
            .iter()
            .map(|n| transport::by_name(n))
            .collect::<io::Result<_>>()?
    };
    if a.sizes.is_empty() {
        bail!("--sizes names no size");
    }
    if a.connect.is_some()
        && let Some(t) = transports
            .iter()
            .find(|t| !t.capabilities().crosses_machines)
    {
        bail!(
            "--connect measures a server on another machine: {} does not cross machines (try tcp or udp)",
            t.name()
        );
    }
    Ok(transports)
}

/// A progress bar on a terminal that takes colour; nothing elsewhere.
fn progress_bar(cells: u64) -> ProgressBar {
    let fancy = io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    if !fancy {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(cells);
    b.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// The run for people: what it ran on, a table per size and placement, a
/// summary line each.
fn print_tables(report: &Report, out: &mut dyn Write) -> Result<()> {
    let e = &report.environment;
    match &e.remote_server {
        Some(addr) => writeln!(
            out,
            "ipclab bench: {} CPU(s), {}; round trips to the server at {addr} (its CPU time is not in CPU/RTT)",
            e.cores, e.cpu_model
        )?,
        None => writeln!(
            out,
            "ipclab bench: {} CPU(s), {}; round trips between two processes",
            e.cores, e.cpu_model
        )?,
    }
    report.write_tables(out)?;
    writeln!(out)?;
    for line in report.summary() {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
