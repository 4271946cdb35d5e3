//! The subcommands of the `ipclab` binary, one file each: its arguments
//! (clap) and the little it does beyond calling the library — parse the
//! arguments, call, print. `main.rs` only parses and dispatches.

pub mod bench;
pub mod clean;
pub mod client;
pub mod demo;
pub mod inspect;
pub mod limits;
pub mod list;
pub mod report;
pub mod serve;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::builder::PossibleValuesParser;

use ipclab::transport::{self, Config, DEFAULT_ADDR};
use ipclab::units::{parse_secs, parse_size};

/// Accepts the name of any transport of this build.
fn transport_names() -> PossibleValuesParser {
    PossibleValuesParser::new(transport::all().iter().map(|t| t.name()))
}

/// Where a server lives and how long anyone waits for it.
#[derive(Args)]
pub struct Common {
    /// Runtime directory for sockets, FIFOs and other files
    /// [default: $XDG_RUNTIME_DIR/ipclab, or /tmp/ipclab-<uid>]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Instance name, so several servers of one transport can coexist
    #[arg(long, default_value = "ipclab")]
    name: String,
    /// Address of a network transport (tcp); 127.0.0.1 unless you say otherwise
    #[arg(long, default_value = DEFAULT_ADDR, value_name = "HOST:PORT")]
    addr: String,
    /// Seconds any blocking wait may take before it is an error
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    timeout: Duration,
    /// Largest payload of one message (K/M suffixes)
    #[arg(long, default_value = "16M", value_parser = parse_size, value_name = "BYTES")]
    max_frame: usize,
}

impl Common {
    fn config(&self) -> Config {
        let mut cfg = Config::default();
        if let Some(d) = &self.dir {
            cfg.dir = d.clone();
        }
        cfg.name = self.name.clone();
        cfg.addr = self.addr.clone();
        cfg.timeout = self.timeout;
        cfg.max_frame = self.max_frame;
        cfg
    }
}

/// The configuration of a command that starts its own servers (`demo`,
/// `bench`): the runtime directory, prepared, and the timeout.
fn local_config(dir: Option<PathBuf>, timeout: Duration) -> anyhow::Result<Config> {
    let mut cfg = Config::default();
    if let Some(d) = dir {
        cfg.dir = d;
    }
    cfg.timeout = timeout;
    ipclab::runtime::prepare_dir(&cfg.dir)?;
    Ok(cfg)
}
