//! `ipclab clean`: what servers killed with SIGKILL left behind, listed;
//! removed with `--force`, or when a person at a terminal says yes.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use ipclab::clean;
use ipclab::objects::{Leftover, Verdict};
use ipclab::runtime;
use ipclab::units::printable;

#[derive(Args)]
pub struct CleanArgs {
    /// Runtime directory to clean [default: $XDG_RUNTIME_DIR/ipclab, or /tmp/ipclab-<uid>]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Remove the stale objects without asking
    #[arg(long, short)]
    force: bool,
    /// Print what was found as JSON (removes nothing unless --force)
    #[arg(long)]
    json: bool,
}

pub fn run(a: CleanArgs) -> Result<ExitCode> {
    let dir = a.dir.unwrap_or_else(runtime::default_dir);
    let mut found = clean::survey(&dir);
    let mut out = crate::stdout();
    let stale = found.iter().filter(|l| l.removable()).count();
    let asking = !a.json && stale > 0 && io::stdin().is_terminal() && io::stderr().is_terminal();
    let remove = a.force || (asking && ask(&found, stale, &mut out)?);
    let (mut removed, mut failed) = (0, 0);
    let results: Vec<String> = found
        .iter_mut()
        .map(|l| {
            if !(remove && l.removable()) {
                let kept = if l.verdict == Verdict::Stale {
                    "stale"
                } else {
                    "left alone"
                };
                return kept.to_string();
            }
            match l.remove() {
                Ok(()) => {
                    removed += 1;
                    "removed".to_string()
                }
                Err(e) => {
                    failed += 1;
                    format!("NOT removed: {e}")
                }
            }
        })
        .collect();
    if a.json {
        let rows: Vec<serde_json::Value> = found
            .iter()
            .zip(&results)
            .map(|(l, r)| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["result"] = r.clone().into();
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        if found.is_empty() {
            writeln!(
                out,
                "nothing left behind in {}",
                printable(&dir.display().to_string())
            )?;
        }
        for (l, r) in found.iter().zip(&results) {
            writeln!(
                out,
                "{:<7} {:<14} {}",
                l.verdict,
                l.transport,
                printable(&l.object)
            )?;
            writeln!(out, "                       {}; {r}", printable(&l.why))?;
        }
        if stale > 0 && !remove {
            writeln!(
                out,
                "{stale} stale object(s); run `ipclab clean --force` to remove them"
            )?;
        } else if remove {
            writeln!(out, "removed {removed} stale object(s)")?;
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A person at a terminal: show what was found, ask before removing.
fn ask(found: &[Leftover], stale: usize, out: &mut impl Write) -> Result<bool> {
    for l in found {
        writeln!(
            out,
            "{:<7} {:<14} {}  ({})",
            l.verdict,
            l.transport,
            printable(&l.object),
            printable(&l.why)
        )?;
    }
    eprint!("Remove the {stale} stale object(s)? [y/N] ");
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
