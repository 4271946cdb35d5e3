//! `ipclab serve`: a server in the foreground until Ctrl-C or SIGTERM.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use ipclab::units::parse_secs;
use ipclab::{runtime, server, transport};

use super::{Common, transport_names};

#[derive(Args)]
pub struct ServeArgs {
    /// The transport to serve
    #[arg(value_parser = transport_names())]
    transport: String,
    #[command(flatten)]
    common: Common,
    /// Seconds a server waits for the next request of a silent client
    #[arg(long, default_value = "300", value_parser = parse_secs, value_name = "SECS")]
    idle_timeout: Duration,
    /// Most clients served at once (multi-client transports)
    #[arg(long, default_value_t = 256)]
    max_clients: usize,
    /// No status lines on stderr (errors are still reported)
    #[arg(long, short)]
    quiet: bool,
    /// Pin the server (all its threads) to this CPU
    #[arg(long, value_name = "CPU")]
    pin_cpu: Option<usize>,
    /// UNIX socket transports (unix, unix-seqpacket, unix-dgram, eventfd):
    /// refuse clients of another user (checked with SO_PEERCRED; root can open
    /// any user's socket file); refused as an option elsewhere
    #[arg(long)]
    same_user: bool,
    /// Write "ready <addr> <endpoint>" to this inherited fd once listening
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    let t = transport::by_name(&a.transport)?;
    let mut cfg = a.common.config();
    cfg.idle_timeout = a.idle_timeout;
    cfg.max_clients = a.max_clients;
    if a.same_user && !t.capabilities().peer_credentials {
        let knowing: Vec<&str> = transport::all()
            .iter()
            .filter(|t| t.capabilities().peer_credentials)
            .map(|t| t.name())
            .collect();
        anyhow::bail!(
            "--same-user cannot be enforced on {}: its server does not learn a client's uid from the kernel \
             (it does on {}); run without --same-user, or use one of those",
            t.name(),
            knowing.join(", ")
        );
    }
    cfg.same_user = a.same_user;
    if let Some(cpu) = a.pin_cpu {
        // Before any thread exists: the session threads inherit it.
        ipclab::sys::cpu::pin_this_thread(cpu)
            .with_context(|| format!("cannot pin the server to CPU {cpu}"))?;
    }
    // Registered before any object exists, so a Ctrl-C at any moment still
    // leads to the cleanup below.
    let stop = runtime::stop_flag().context("cannot install the Ctrl-C handler")?;
    let listener = t
        .listen(&cfg)
        .with_context(|| format!("cannot start the {} server", t.name()))?;
    let endpoint = listener.endpoint();
    // Status goes to stderr: a pipe server's stdout is its reply channel.
    if !a.quiet {
        eprintln!(
            "listening on {} {} (pid {}); Ctrl-C stops",
            t.name(),
            endpoint,
            std::process::id()
        );
    }
    if let Some(fd) = a.ready_fd {
        // SAFETY: the parent passed us this fd for this one purpose; we own it.
        let mut f = unsafe { File::from_raw_fd(fd) };
        let addr = listener
            .local_addr()
            .map_or("-".to_string(), |a| a.to_string());
        writeln!(f, "ready {addr} {endpoint}").context("cannot signal readiness")?;
    }
    let multi_client = t.capabilities().multi_client;
    server::run(listener, &cfg, multi_client, &stop, !a.quiet)
        .with_context(|| format!("the {} server failed", t.name()))?;
    if !a.quiet {
        eprintln!(
            "ipclab: {} server stopped; its objects are removed",
            t.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
