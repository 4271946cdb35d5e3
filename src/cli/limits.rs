//! `ipclab limits`: the kernel limits that shape each mechanism, read live.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

pub fn run(json: bool) -> Result<ExitCode> {
    let all = ipclab::limits::read_all();
    let mut out = crate::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for l in &all {
        writeln!(out, "{}: {}", l.name, l.value)?;
        writeln!(out, "    read from {}; affects {}", l.source, l.transports)?;
        writeln!(out, "    when reached: {}", l.when_reached)?;
    }
    Ok(ExitCode::SUCCESS)
}
