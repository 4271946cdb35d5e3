//! The `ipclab` command line: parse the arguments, run the subcommand (each
//! in its own file under `src/cli/`), turn the outcome into an exit code.

mod cli;

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cli::bench::BenchArgs;
use cli::clean::CleanArgs;
use cli::client::ClientArgs;
use cli::demo::DemoArgs;
use cli::inspect::InspectArgs;
use cli::report::ReportArgs;
use cli::serve::ServeArgs;

#[derive(Parser)]
#[command(
    name = "ipclab",
    version,
    about = "Every classic Linux IPC mechanism side by side: one ping/echo protocol, real processes",
    after_help = "Try: ipclab list; ipclab demo all; ipclab serve tcp (then: nc 127.0.0.1 8008)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every transport: what it is, its kernel objects, its capabilities
    List,
    /// Run a server in the foreground until Ctrl-C or SIGTERM
    Serve(ServeArgs),
    /// Send one request (or, with none, read requests line by line from stdin)
    Client(ClientArgs),
    /// Start a server process, run a scripted session against it, stop it
    Demo(DemoArgs),
    /// Compare transports: round-trip times between two processes per payload size
    Bench(BenchArgs),
    /// Show a saved `bench --export-json` run again: tables, plot, or a comparison with another run
    Report(ReportArgs),
    /// What processes hold: each descriptor resolved to its kernel object and peer
    Inspect(InspectArgs),
    /// Find (and with --force remove) what servers killed with SIGKILL left behind
    Clean(CleanArgs),
    /// The kernel limits that shape each mechanism, read live from this machine
    Limits {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let result: Result<ExitCode> = match Cli::parse().cmd {
        Cmd::List => cli::list::run(),
        Cmd::Serve(a) => cli::serve::run(a),
        Cmd::Client(a) => cli::client::run(a),
        Cmd::Demo(a) => cli::demo::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Report(a) => cli::report::run(a),
        Cmd::Inspect(a) => cli::inspect::run(a),
        Cmd::Clean(a) => cli::clean::run(a),
        Cmd::Limits { json } => cli::limits::run(json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Output piped into `head` is not an error; but only a closed
            // *stdout* is: a peer that went away (EPIPE on a socket, a pipe,
            // a FIFO) means the work was not done.
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .is_some_and(|inner| inner.is::<StdoutClosed>())
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Marks the error of a write to a stdout whose reader has gone (`ipclab
/// list | head`): the one broken pipe that is not a failure.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Standard output, whose broken pipe is told apart from a peer's. Every
/// subcommand writes its output through this, never through `println!`.
struct Stdout(io::StdoutLock<'static>);

fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

impl Stdout {
    fn mark<T>(r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
            } else {
                e
            }
        })
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::mark(self.0.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Self::mark(self.0.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Self::mark(self.0.flush())
    }
}
