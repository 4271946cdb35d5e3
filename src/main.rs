//! The `ipclab` command line: list, serve, client, demo.

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Write};
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

#[derive(Args)]
struct CleanArgs {
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

#[derive(Args)]
struct InspectArgs {
    /// Process ids (a server's pid is printed by `serve` and `demo`)
    #[arg(required = true, value_name = "PID")]
    pids: Vec<i32>,
    /// Print JSON instead of tables
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// A run saved with `ipclab bench --export-json`
    run: PathBuf,
    /// Compare with this earlier run (before → after, per transport and size)
    #[arg(long, value_name = "BEFORE.json")]
    against: Option<PathBuf>,
    /// Draw the run as `bench --plot` does (SVG or PNG)
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
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
    /// Pin the server (all its threads) to this CPU
    #[arg(long, value_name = "CPU")]
    pin_cpu: Option<usize>,
    /// UNIX socket transports: refuse clients of another user (checked with
    /// SO_PEERCRED; root can open any user's socket file)
    #[arg(long)]
    same_user: bool,
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
    /// Pause mid-session and show what both processes hold (like `ipclab inspect`)
    #[arg(long)]
    inspect: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlacementArg {
    /// Client and server pinned to one CPU (wake-ups are cheap: shows what differs)
    SameCore,
    /// Client and server pinned to two CPUs
    CrossCore,
    /// Not pinned: the scheduler decides
    None,
    /// same-core, then cross-core
    Both,
}

#[derive(Args)]
struct BenchArgs {
    /// Transports to compare, by name or comma-separated [default: all]
    #[arg(value_delimiter = ',', value_parser = transport_names())]
    names: Vec<String>,
    /// Transports to compare, comma-separated (the same as naming them)
    #[arg(long, value_delimiter = ',', value_parser = transport_names())]
    transports: Vec<String>,
    /// Payload sizes, comma-separated, with K/M suffixes
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "64,4K,64K,1M")]
    sizes: Vec<usize>,
    /// Most measured round trips per transport and size
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Most seconds measured per transport and size (whichever ends first)
    #[arg(long, default_value = "0.5", value_parser = parse_secs, value_name = "SECS")]
    time: Duration,
    /// Round trips discarded before measuring (at most a tenth of --time)
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// Where client and server run
    #[arg(long, value_enum, default_value = "same-core")]
    placement: PlacementArg,
    /// Write the results as JSON ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    export_json: Option<String>,
    /// Write the results as CSV, one row per transport and size ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    export_csv: Option<String>,
    /// Write the results as Markdown tables ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    export_markdown: Option<String>,
    /// Runtime directory [default: $XDG_RUNTIME_DIR/ipclab, or /tmp/ipclab-<uid>]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds any blocking wait may take before it is an error
    #[arg(long, default_value = "10", value_parser = parse_secs, value_name = "SECS")]
    timeout: Duration,
    /// Skip the raw-syscall reference rows (raw-pipe, raw-unix, raw-tcp)
    #[arg(long)]
    no_baselines: bool,
    /// Measure a server already running at HOST:PORT (e.g. `ipclab serve tcp
    /// --addr 0.0.0.0:8008` on another machine) instead of starting one:
    /// network transports only (default: tcp); no placement, no baselines
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Draw p50 (with a p99 whisker) against payload size, log-log, as SVG or PNG
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::List => list(),
        Cmd::Serve(a) => serve(a),
        Cmd::Client(a) => client(a),
        Cmd::Demo(a) => demo(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Report(a) => report(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Clean(a) => clean(a),
        Cmd::Limits { json } => limits(json),
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

/// Standard output, whose broken pipe is told apart from a peer's.
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

fn list() -> Result<ExitCode> {
    let mut out = stdout();
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
                transport::Boundaries::Stream => "stream",
                transport::Boundaries::Messages => "messages",
            },
            c.max_message.map_or("no limit".into(), fmt_size),
            t.description()
        )?;
        writeln!(
            out,
            "{:<15} kernel objects: {}{}",
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
    cfg.same_user = a.same_user;
    if let Some(cpu) = a.pin_cpu {
        // Before any thread exists: the session threads inherit it.
        ipclab::bench::pin_this_thread(cpu)
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
    let mut out = stdout();
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
        let echo = c
            .echo(&payload)
            .with_context(|| format!("round trip {} of {count} did not complete", i + 1))?;
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
    let mut out = stdout();
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
            writeln!(
                out,
                "{:<15} {:>10} {:>14}  {}",
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

fn bench(a: BenchArgs) -> Result<ExitCode> {
    use ipclab::bench::{self, Environment, Floor, Placement, Plan, Report};
    use std::io::IsTerminal;

    let exe = std::env::current_exe().context("cannot find the ipclab binary to start servers")?;
    let mut names = a.names.clone();
    names.extend(a.transports.iter().cloned());
    let transports: Vec<&'static dyn transport::Transport> = if names.is_empty() {
        if a.connect.is_some() {
            vec![transport::by_name("tcp")?]
        } else {
            transport::all().to_vec()
        }
    } else {
        names
            .iter()
            .map(|n| transport::by_name(n))
            .collect::<io::Result<_>>()?
    };
    if a.sizes.is_empty() {
        bail!("--sizes names no size");
    }
    if a.connect.is_some()
        && let Some(t) = transports
            .iter()
            .find(|t| !t.capabilities().crosses_machines)
    {
        bail!(
            "--connect measures a server on another machine: {} does not cross machines (try tcp or udp)",
            t.name()
        );
    }
    if let Some(p) = &a.plot {
        ipclab::bench::plot::check_path(p)?;
    }
    let placements = match (a.placement, &a.connect) {
        // The server is not ours to pin.
        (_, Some(_)) => vec![Placement::None],
        (PlacementArg::SameCore, _) => vec![Placement::SameCore],
        (PlacementArg::CrossCore, _) => vec![Placement::CrossCore],
        (PlacementArg::None, _) => vec![Placement::None],
        (PlacementArg::Both, _) => vec![Placement::SameCore, Placement::CrossCore],
    };
    let mut cfg = Config::default();
    if let Some(d) = &a.dir {
        cfg.dir = d.clone();
    }
    cfg.timeout = a.timeout;
    runtime::prepare_dir(&cfg.dir)?;

    let cpus = bench::allowed_cpus();
    let (cpu_model, kernel) = bench::report::machine();
    let mut floors = vec![Floor {
        name: "null system call".into(),
        placement: Placement::None,
        ns: bench::null_syscall_ns(),
    }];
    if cpus.len() >= 2
        && let Some(ns) = bench::cache_line_rtt_ns(cpus[0], cpus[1], Duration::from_millis(300))
    {
        floors.push(Floor {
            name: format!("cache line round trip, CPU {} <-> CPU {}", cpus[0], cpus[1]),
            placement: Placement::CrossCore,
            ns,
        });
    }
    let mut report = Report {
        environment: Environment {
            ipclab_version: env!("CARGO_PKG_VERSION").into(),
            cpu_model,
            cores: cpus.len(),
            kernel,
            date_utc: bench::report::utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            placements: placements.clone(),
            sizes_bytes: a.sizes.clone(),
            iterations: a.iterations,
            time_limit_s: a.time.as_secs_f64(),
            warmup: a.warmup,
            remote_server: a.connect.clone(),
        },
        floors,
        results: Vec::new(),
    };
    let plan = Plan {
        transports: transports.clone(),
        sizes: a.sizes.clone(),
        placements: placements.clone(),
        iterations: a.iterations,
        time: a.time,
        warmup: a.warmup,
        cfg,
        exe,
    };

    let fancy = io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let baselines: Vec<bench::raw::RawKind> = if a.no_baselines || a.connect.is_some() {
        Vec::new()
    } else {
        bench::raw::RawKind::ALL
            .into_iter()
            .filter(|k| transports.iter().any(|t| t.name() == k.transport()))
            .collect()
    };
    let cells = ((transports.len() + baselines.len()) * a.sizes.len() * placements.len()) as u64;
    let bar = if fancy {
        let b = indicatif::ProgressBar::new(cells);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    for &placement in &placements {
        for &t in &transports {
            bar.set_message(format!("{} ({placement})", t.name()));
            // A transport and its raw baseline are measured in turns, so
            // that drift of the machine does not fall between the two.
            let kind = baselines
                .iter()
                .copied()
                .find(|k| k.transport() == t.name());
            let results = bench::run_transport(&plan, t, placement, kind, |_| bar.inc(1));
            report.results.extend(results);
            // Rewritten after each transport: a crash keeps what was measured.
            write_exports(&a, &report)?;
        }
    }
    bar.finish_and_clear();
    if let Some(p) = &a.plot {
        bench::plot::draw(&report, p)?;
        eprintln!("plot written to {}", p.display());
    }

    // An export to stdout ("-") gets stdout to itself; the tables go to stderr.
    let to_stdout: Vec<String> = [
        (&a.export_json, report.to_json()),
        (&a.export_csv, report.to_csv()?),
        (&a.export_markdown, report.to_markdown()),
    ]
    .into_iter()
    .filter(|(t, _)| t.as_deref() == Some("-"))
    .map(|(_, text)| text)
    .collect();
    let mut out: Box<dyn Write> = if to_stdout.is_empty() {
        Box::new(stdout())
    } else {
        Box::new(io::stderr().lock())
    };
    match &report.environment.remote_server {
        Some(addr) => writeln!(
            out,
            "ipclab bench: {} CPU(s), {}; round trips to the server at {addr} (its CPU time is not in CPU/RTT)",
            report.environment.cores, report.environment.cpu_model
        )?,
        None => writeln!(
            out,
            "ipclab bench: {} CPU(s), {}; round trips between two processes",
            report.environment.cores, report.environment.cpu_model
        )?,
    }
    report.write_tables(&mut out)?;
    writeln!(out)?;
    for line in report.summary() {
        writeln!(out, "{line}")?;
    }
    drop(out);
    for text in to_stdout {
        stdout().write_all(text.as_bytes())?;
    }
    for w in report.warnings() {
        eprintln!("warning: {w}");
    }
    let failed = report.results.iter().any(|c| c.error.is_some());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn write_exports(a: &BenchArgs, report: &ipclab::bench::Report) -> Result<()> {
    let targets = [
        (&a.export_json, report.to_json()),
        (&a.export_csv, report.to_csv()?),
        (&a.export_markdown, report.to_markdown()),
    ];
    for (target, text) in targets {
        match target.as_deref() {
            None => {}
            Some("-") => {}
            Some(path) => {
                std::fs::write(path, text).with_context(|| format!("cannot write {path}"))?
            }
        }
    }
    Ok(())
}

fn load_report(path: &std::path::Path) -> Result<ipclab::bench::Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a run saved by this version of `ipclab bench --export-json`",
            path.display()
        )
    })
}

fn report(a: ReportArgs) -> Result<ExitCode> {
    let run = load_report(&a.run)?;
    let mut out = stdout();
    match &a.against {
        None => {
            writeln!(
                out,
                "{} ({}, {})",
                a.run.display(),
                run.environment.date_utc,
                run.environment.cpu_model
            )?;
            run.write_tables(&mut out)?;
            writeln!(out)?;
            for line in run.summary() {
                writeln!(out, "{line}")?;
            }
        }
        Some(before_path) => {
            let before = load_report(before_path)?;
            let (b, n) = (&before.environment, &run.environment);
            writeln!(
                out,
                "before: {} ({}, ipclab {}, {})",
                before_path.display(),
                b.date_utc,
                b.ipclab_version,
                b.cpu_model
            )?;
            writeln!(
                out,
                "after:  {} ({}, ipclab {}, {})",
                a.run.display(),
                n.date_utc,
                n.ipclab_version,
                n.cpu_model
            )?;
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
            for c in run
                .results
                .iter()
                .filter(|c| c.error.is_none() && c.round_trips > 0)
            {
                let Some(old) = before.results.iter().find(|o| {
                    o.transport == c.transport
                        && o.size_bytes == c.size_bytes
                        && o.placement == c.placement
                        && o.error.is_none()
                        && o.round_trips > 0
                }) else {
                    continue;
                };
                let ratio = c.p50_ns as f64 / old.p50_ns.max(1) as f64;
                let change = if ratio < 0.95 {
                    format!("{:.0}% faster", (1.0 - ratio) * 100.0)
                } else if ratio > 1.05 {
                    format!("{:.0}% slower", (ratio - 1.0) * 100.0)
                } else {
                    "same (within 5%)".to_string()
                };
                let d = |ns: u64| fmt_duration(Duration::from_nanos(ns));
                writeln!(
                    out,
                    "{:<15} {:>8} {:<10} {:>11} {:>11} {:>7.2}×  {change}",
                    c.transport,
                    fmt_size(c.size_bytes),
                    c.placement.to_string(),
                    d(old.p50_ns),
                    d(c.p50_ns),
                    ratio
                )?;
            }
        }
    }
    if let Some(p) = &a.plot {
        ipclab::bench::plot::draw(&run, p)?;
        eprintln!("plot written to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn limits(json: bool) -> Result<ExitCode> {
    let all = ipclab::limits::read_all();
    let mut out = stdout();
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

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let procs = ipclab::inspect::inspect(&a.pids)?;
    let mut out = stdout();
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

fn clean(a: CleanArgs) -> Result<ExitCode> {
    use ipclab::clean::{self, Verdict};
    let dir = a.dir.unwrap_or_else(runtime::default_dir);
    let mut found = clean::survey(&dir);
    let mut out = stdout();
    let stale = found.iter().filter(|l| l.removable()).count();
    let remove = if a.force {
        true
    } else if !a.json && stale > 0 && io::stdin().is_terminal() && io::stderr().is_terminal() {
        for l in &found {
            writeln!(
                out,
                "{:<7} {:<14} {}  ({})",
                l.verdict, l.transport, l.object, l.why
            )?;
        }
        eprint!("Remove the {stale} stale object(s)? [y/N] ");
        let mut answer = String::new();
        io::stdin().lock().read_line(&mut answer)?;
        matches!(answer.trim(), "y" | "Y" | "yes")
    } else {
        false
    };
    let mut failed = 0;
    let mut removed = 0;
    let mut results = Vec::new();
    for l in found.iter_mut() {
        let result = if remove && l.removable() {
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
        } else if l.verdict == Verdict::Stale {
            "stale".to_string()
        } else {
            "left alone".to_string()
        };
        results.push(result);
    }
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
            writeln!(out, "nothing left behind in {}", dir.display())?;
        }
        for (l, r) in found.iter().zip(&results) {
            writeln!(out, "{:<7} {:<14} {}", l.verdict, l.transport, l.object)?;
            writeln!(out, "                       {}; {r}", l.why)?;
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
