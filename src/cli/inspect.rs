//! `ipclab inspect PID…`: what processes hold, each descriptor resolved.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// Process ids (a server's pid is printed by `serve` and `demo`)
    #[arg(required = true, value_name = "PID")]
    pids: Vec<i32>,
    /// Print JSON instead of tables
    #[arg(long)]
    json: bool,
}

pub fn run(a: InspectArgs) -> Result<ExitCode> {
    let procs = ipclab::inspect::inspect(&a.pids)?;
    let mut out = crate::stdout();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&procs)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (i, p) in procs.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        ipclab::inspect::render(p, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
