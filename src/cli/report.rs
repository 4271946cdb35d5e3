//! `ipclab report`: a run saved by `bench --export-json` shown again (its
//! tables and summary), compared with an earlier run, or plotted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use ipclab::bench::{Report, plot};
use ipclab::units::{fmt_duration, fmt_size};

#[derive(Args)]
pub struct ReportArgs {
    /// A run saved with `ipclab bench --export-json`
    run: PathBuf,
    /// Compare with this earlier run (before → after, per transport and size)
    #[arg(long, value_name = "BEFORE.json")]
    against: Option<PathBuf>,
    /// Draw the run as `bench --plot` does (SVG or PNG)
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> Result<ExitCode> {
    let run = load(&a.run)?;
    let mut out = crate::stdout();
    match &a.against {
        None => {
            let e = &run.environment;
            writeln!(out, "{} ({}, {})", a.run.display(), e.date_utc, e.cpu_model)?;
            run.write_tables(&mut out)?;
            writeln!(out)?;
            for line in run.summary() {
                writeln!(out, "{line}")?;
            }
        }
        Some(before_path) => compare(&load(before_path)?, before_path, &run, &a.run, &mut out)?,
    }
    if let Some(p) = &a.plot {
        plot::draw(&run, p)?;
        eprintln!("plot written to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a run saved by this version of `ipclab bench --export-json`",
            path.display()
        )
    })
}

/// Before → after: the two runs' provenance, then p50 per transport, size
/// and placement measured in both.
fn compare(
    before: &Report,
    before_path: &Path,
    after: &Report,
    after_path: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let (b, n) = (&before.environment, &after.environment);
    for (label, path, e) in [("before:", before_path, b), ("after: ", after_path, n)] {
        writeln!(
            out,
            "{label} {} ({}, ipclab {}, {})",
            path.display(),
            e.date_utc,
            e.ipclab_version,
            e.cpu_model
        )?;
    }
    if b.cpu_model != n.cpu_model || b.kernel != n.kernel || b.cores != n.cores {
        writeln!(
            out,
            "note: the runs come from different machines or kernels; compare with care"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<15} {:>8} {:<10} {:>11} {:>11} {:>8}  CHANGE",
        "TRANSPORT", "SIZE", "PLACEMENT", "p50 BEFORE", "p50 AFTER", "RATIO"
    )?;
    let d = |ns: u64| fmt_duration(Duration::from_nanos(ns));
    for c in after.changes_since(before) {
        writeln!(
            out,
            "{:<15} {:>8} {:<10} {:>11} {:>11} {:>7.2}×  {}",
            c.transport,
            fmt_size(c.size_bytes),
            c.placement.to_string(),
            d(c.before_p50_ns),
            d(c.after_p50_ns),
            c.ratio(),
            c.verdict()
        )?;
    }
    Ok(())
}
