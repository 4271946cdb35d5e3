//! `ipclab demo`: a server process, a scripted session against it, a clean
//! stop; with `all`, every transport and a summary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use clap::builder::PossibleValuesParser;

use ipclab::demo;
use ipclab::transport::{self, Transport};
use ipclab::units::{fmt_duration, parse_secs};

/// Accepts "all" or the name of any transport of this build.
fn demo_targets() -> PossibleValuesParser {
    PossibleValuesParser::new(
        std::iter::once("all").chain(transport::all().iter().map(|t| t.name())),
    )
}

#[derive(Args)]
pub struct DemoArgs {
    /// A transport, or "all"
    #[arg(value_parser = demo_targets())]
    target: String,
    /// Runtime directory [default: $XDG_RUNTIME_DIR/ipclab, or /tmp/ipclab-<uid>]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds any blocking wait may take before it is an error
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    timeout: Duration,
    /// Pause mid-session and show what both processes hold (like `ipclab inspect`)
    #[arg(long)]
    inspect: bool,
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the ipclab binary to start servers")?;
    let cfg = super::local_config(a.dir, a.timeout)?;
    let targets: Vec<&dyn Transport> = if a.target == "all" {
        transport::all().to_vec()
    } else {
        vec![transport::by_name(&a.target)?]
    };
    let mut out = crate::stdout();
    let outcomes: Vec<demo::Outcome> = targets
        .iter()
        .map(|t| demo::run(&exe, *t, &cfg, a.inspect, &mut out))
        .collect();
    if targets.len() > 1 {
        writeln!(
            out,
            "Summary (round-trip times of single requests: an illustration, not a measurement)"
        )?;
        writeln!(
            out,
            "{:<15} {:>10} {:>14}  RESULT",
            "TRANSPORT", "PING", "ECHO 64 KiB"
        )?;
        for o in &outcomes {
            let d = |x: Option<Duration>| x.map_or("-".into(), fmt_duration);
            let result = o
                .error
                .as_deref()
                .map_or("ok".to_string(), |e| format!("FAILED: {e}"));
            writeln!(
                out,
                "{:<15} {:>10} {:>14}  {result}",
                o.transport,
                d(o.ping),
                d(o.echo_64k)
            )?;
        }
    }
    Ok(if outcomes.iter().all(|o| o.error.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
