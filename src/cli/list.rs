//! `ipclab list`: every transport of this build, its capabilities and its
//! kernel objects.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use ipclab::transport::{self, Boundaries};
use ipclab::units::fmt_size;

pub fn run() -> Result<ExitCode> {
    let mut out = crate::stdout();
    writeln!(
        out,
        "{:<15} {:<8} {:<10} {:<12} DESCRIPTION",
        "TRANSPORT", "CLIENTS", "BOUNDARY", "MAX MESSAGE"
    )?;
    for t in transport::all() {
        let c = t.capabilities();
        writeln!(
            out,
            "{:<15} {:<8} {:<10} {:<12} {}",
            t.name(),
            if c.multi_client { "many" } else { "one" },
            match c.boundaries {
                Boundaries::Stream => "stream",
                Boundaries::Messages => "messages",
            },
            c.max_message.map_or("no limit".into(), fmt_size),
            t.description()
        )?;
        let crosses = if c.crosses_machines {
            "; works between machines"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<15} kernel objects: {}{crosses}",
            "",
            t.kernel_objects()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
