//! The `ipclab` command line: list, serve, client, demo.

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};

use ipclab::client::Client;
use ipclab::protocol::{self, Form, Message, Reply};
use ipclab::transport::{self, Config, DEFAULT_ADDR};
use ipclab::units::{fmt_duration, fmt_size, parse_secs, parse_size};
use ipclab::{demo, runtime, server};

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
}

fn transport_names() -> PossibleValuesParser {
    PossibleValuesParser::new(transport::all().iter().map(|t| t.name()))
}

fn demo_targets() -> PossibleValuesParser {
    PossibleValuesParser::new(
        std::iter::once("all").chain(transport::all().iter().map(|t| t.name())),
    )
}

/// Where a server lives and how long anyone waits for it.
#[derive(Args)]
struct Common {
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

#[derive(Args)]
struct ServeArgs {
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
    /// Write "ready <addr> <endpoint>" to this inherited fd once listening
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
}

#[derive(Args)]
struct ClientArgs {
    /// The transport to connect over
    #[arg(value_parser = transport_names())]
    transport: String,
    #[command(flatten)]
    common: Common,
    /// Send binary frames instead of text lines
    #[arg(long)]
    binary: bool,
    /// Echo a generated binary payload of this size and check it comes back intact
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    fill: Option<usize>,
    /// With --fill: how many round trips
    #[arg(long, default_value_t = 1, requires = "fill")]
    count: u64,
    /// Test aid: send half of a --fill frame, then die by SIGKILL
    #[arg(long, hide = true, requires = "fill")]
    die_mid_message: bool,
    /// The request: ping | echo TEXT... | quit (none: read requests from stdin)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    request: Vec<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// A transport, or "all"
    #[arg(value_parser = demo_targets())]
    target: String,
    /// Runtime directory [default: $XDG_RUNTIME_DIR/ipclab, or /tmp/ipclab-<uid>]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds any blocking wait may take before it is an error
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::List => list(),
        Cmd::Serve(a) => serve(a),
        Cmd::Client(a) => client(a),
        Cmd::Demo(a) => demo(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Output piped into `head` is not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn list() -> Result<ExitCode> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<10} {:<8} {:<10} {:<12} DESCRIPTION",
        "TRANSPORT", "CLIENTS", "BOUNDARY", "MAX MESSAGE"
    )?;
    for t in transport::all() {
        let c = t.capabilities();
        writeln!(
            out,
            "{:<10} {:<8} {:<10} {:<12} {}",
            t.name(),
            if c.multi_client { "many" } else { "one" },
            match c.boundaries {
                transport::Boundaries::Stream => "stream",
                transport::Boundaries::Messages => "messages",
            },
            c.max_message.map_or("no limit".into(), fmt_size),
            t.description()
        )?;
        writeln!(
            out,
            "{:<10} kernel objects: {}{}",
            "",
            t.kernel_objects(),
            if c.crosses_machines {
                "; works between machines"
            } else {
                ""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    let t = transport::by_name(&a.transport)?;
    let mut cfg = a.common.config();
    cfg.idle_timeout = a.idle_timeout;
    cfg.max_clients = a.max_clients;
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
    server::run(
        listener,
        &cfg,
        t.capabilities().multi_client,
        &stop,
        !a.quiet,
    )
    .with_context(|| format!("the {} server failed", t.name()))?;
    if !a.quiet {
        eprintln!(
            "ipclab: {} server stopped; its objects are removed",
            t.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn client(a: ClientArgs) -> Result<ExitCode> {
    let t = transport::by_name(&a.transport)?;
    let cfg = a.common.config();
    let form = if a.binary || a.fill.is_some() {
        Form::Binary
    } else {
        Form::Text
    };
    if a.die_mid_message {
        return die_mid_message(t, &cfg, a.fill.unwrap_or(0));
    }
    let mut c = Client::connect(t, &cfg, form)
        .with_context(|| format!("cannot reach the {} server", t.name()))?;
    let mut out = io::stdout().lock();
    if let Some(size) = a.fill {
        return fill(&mut c, &mut out, size, a.count);
    }
    if a.request.is_empty() {
        return interactive(&mut c, &mut out);
    }
    let line = a.request.join(" ");
    if form == Form::Text {
        // Sent as typed: this also works against any line-based echo server.
        match c.send_line(line.as_bytes())? {
            Some(reply) => {
                out.write_all(&reply)?;
                writeln!(out)?;
                let err = reply.starts_with(b"ERR ");
                Ok(if err {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            }
            None => bail!("the server closed the session without replying"),
        }
    } else {
        let req = protocol::parse_request(&Message::Line(line.as_bytes()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        print_reply(&mut out, &c.request(&req)?)
    }
}

/// Read requests from stdin, one per line, like a telnet session.
fn interactive(c: &mut Client, out: &mut impl Write) -> Result<ExitCode> {
    let stdin = io::stdin();
    let mut code = ExitCode::SUCCESS;
    for line in stdin.lock().split(b'\n') {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let quitting = line.trim_ascii().eq_ignore_ascii_case(b"quit");
        if c.form() == Form::Text {
            match c.send_line(&line)? {
                Some(reply) => {
                    out.write_all(&reply)?;
                    writeln!(out)?;
                }
                None => {
                    eprintln!("ipclab: the server closed the session");
                    break;
                }
            }
        } else {
            match protocol::parse_request(&Message::Line(&line)) {
                Ok(req) => code = print_reply(out, &c.request(&req)?)?,
                Err(e) => eprintln!("ipclab: {e}"),
            }
        }
        out.flush()?;
        if quitting {
            break;
        }
    }
    Ok(code)
}

fn print_reply(out: &mut impl Write, reply: &Reply<'_>) -> Result<ExitCode> {
    match reply {
        Reply::Pong => writeln!(out, "pong")?,
        Reply::Bye => writeln!(out, "bye")?,
        Reply::Data(d) => {
            out.write_all(d)?;
            writeln!(out)?;
        }
        Reply::Error(e) => {
            writeln!(out, "ERR {}", String::from_utf8_lossy(e))?;
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Echo a generated payload `count` times, check each echo, report RTTs.
fn fill(c: &mut Client, out: &mut impl Write, size: usize, count: u64) -> Result<ExitCode> {
    let mut payload = vec![0u8; size];
    let mut rtts = Vec::with_capacity(count.min(1 << 20) as usize);
    for i in 0..count {
        for (j, b) in payload.iter_mut().enumerate() {
            *b = (j as u64).wrapping_mul(31).wrapping_add(i) as u8;
        }
        let start = Instant::now();
        let echo = c.echo(&payload)?;
        rtts.push(start.elapsed());
        if echo != payload.as_slice() {
            bail!(
                "round trip {i}: the echo differs from the request ({} bytes sent, {} received)",
                payload.len(),
                echo.len()
            );
        }
    }
    rtts.sort();
    writeln!(
        out,
        "{count} round trip(s) of {}: every echo identical; RTT min {} / median {} / max {}",
        fmt_size(size),
        fmt_duration(rtts[0]),
        fmt_duration(rtts[rtts.len() / 2]),
        fmt_duration(rtts[rtts.len() - 1])
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Test aid: a client that dies in the middle of sending a message.
fn die_mid_message(t: &dyn transport::Transport, cfg: &Config, size: usize) -> Result<ExitCode> {
    let mut link = t.connect(cfg)?;
    link.write_all(&protocol::header(protocol::kind::ECHO, size))?;
    link.write_all(&vec![0x5a; size / 2])?;
    link.flush()?;
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
    unreachable!("SIGKILL cannot be caught")
}

fn demo(a: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the ipclab binary to start servers")?;
    let mut cfg = Config::default();
    if let Some(d) = a.dir {
        cfg.dir = d;
    }
    cfg.timeout = a.timeout;
    runtime::prepare_dir(&cfg.dir)?;
    let targets: Vec<&dyn transport::Transport> = if a.target == "all" {
        transport::all().to_vec()
    } else {
        vec![transport::by_name(&a.target)?]
    };
    let mut out = io::stdout().lock();
    let outcomes: Vec<demo::Outcome> = targets
        .iter()
        .map(|t| demo::run(&exe, *t, &cfg, &mut out))
        .collect();
    if targets.len() > 1 {
        writeln!(
            out,
            "Summary (round-trip times of single requests, not a benchmark: see `ipclab bench`)"
        )?;
        writeln!(
            out,
            "{:<10} {:>10} {:>14}  RESULT",
            "TRANSPORT", "PING", "ECHO 64 KiB"
        )?;
        for o in &outcomes {
            let d = |x: Option<Duration>| x.map_or("-".into(), fmt_duration);
            writeln!(
                out,
                "{:<10} {:>10} {:>14}  {}",
                o.transport,
                d(o.ping),
                d(o.echo_64k),
                o.error
                    .as_deref()
                    .map_or("ok".to_string(), |e| format!("FAILED: {e}"))
            )?;
        }
    }
    Ok(if outcomes.iter().all(|o| o.error.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
