//! `ipclab demo`: a scripted session against a real server process.
//!
//! The server is started as a separate child process (the `ipclab` binary
//! re-executed as `ipclab serve <transport>`), the client runs in this
//! process, and each request of a short script is shown with its reply and
//! its round-trip time. Then the server is stopped as Ctrl-C would, and the
//! demo checks that its objects are gone.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::inspect::{self, system};
use crate::objects;
use crate::process::ServerProcess;
use crate::protocol::{Form, Reply, Request};
use crate::transport::{Config, Transport};
use crate::units::{fmt_duration, fmt_size};

/// What one transport's demo showed, for the summary of `demo all`.
#[derive(Debug)]
pub struct Outcome {
    pub transport: &'static str,
    pub ping: Option<Duration>,
    pub echo_64k: Option<Duration>,
    pub error: Option<String>,
}

/// Run the scripted session for `t`, writing the transcript to `out`; with
/// `inspect`, pause at the midpoint to show both processes' kernel objects.
pub fn run(
    exe: &Path,
    t: &dyn Transport,
    base: &Config,
    inspect: bool,
    out: &mut dyn Write,
) -> Outcome {
    let mut outcome = Outcome {
        transport: t.name(),
        ping: None,
        echo_64k: None,
        error: None,
    };
    if let Err(e) = script(exe, t, base, inspect, out, &mut outcome) {
        let _ = writeln!(out, "   FAILED: {e}");
        outcome.error = Some(e.to_string());
    }
    let _ = writeln!(out);
    outcome
}

fn script(
    exe: &Path,
    t: &dyn Transport,
    base: &Config,
    inspect: bool,
    out: &mut dyn Write,
    o: &mut Outcome,
) -> io::Result<()> {
    let mut cfg = base.clone();
    // A name and a port of the demo's own, so it never meets a server the
    // user started by hand.
    cfg.name = format!("demo-{}-{}", std::process::id(), t.name());
    cfg.addr = "127.0.0.1:0".into();

    writeln!(out, "== {}: {}", t.name(), t.description())?;
    let mut server = ServerProcess::spawn(exe, t, &cfg, &["--quiet"])?;
    let ccfg = server.client_config(&cfg);
    writeln!(
        out,
        "   server pid {} listening on {}; client pid {}",
        server.pid(),
        server.endpoint(),
        std::process::id()
    )?;
    let mut c = Client::from_link(server.connect(t, &ccfg)?, ccfg.max_frame, Form::Text);

    let binary: Vec<u8> = [0u8, b'\n', 0xff, b'\r', 0x7f, b' ', 0x80, 0]
        .iter()
        .cycle()
        .take(16)
        .copied()
        .collect();
    let big: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();

    let t0 = step(out, &mut c, Form::Text, &Request::Ping, "ping".into())?;
    o.ping = Some(t0);
    step(
        out,
        &mut c,
        Form::Text,
        &Request::Echo(b"hello, world"),
        "echo hello, world".into(),
    )?;
    // An unknown command: the server answers with an error and goes on.
    let start = Instant::now();
    let reply = c.send_line(b"frobnicate")?;
    let rtt = start.elapsed();
    show(
        out,
        "text",
        "frobnicate",
        &lossy(&reply.unwrap_or_default()),
        rtt,
    )?;
    step(
        out,
        &mut c,
        Form::Binary,
        &Request::Echo(&binary),
        format!("echo {} bytes: {}", binary.len(), hex(&binary)),
    )?;
    if inspect {
        show_inspection(t, &cfg, server.pid().as_raw(), out)?;
    }
    o.echo_64k = Some(step(
        out,
        &mut c,
        Form::Binary,
        &Request::Echo(&big),
        format!("echo {} of binary data", fmt_size(big.len())),
    )?);
    step(out, &mut c, Form::Binary, &Request::Ping, "ping".into())?;
    step(out, &mut c, Form::Text, &Request::Quit, "quit".into())?;
    drop(c);

    let status = server.stop()?;
    let mut left = leftovers(&cfg);
    left.extend(
        t.external_objects(&cfg)
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string()),
    );
    let gone = server.connect(
        t,
        &Config {
            timeout: Duration::from_millis(200),
            ..ccfg
        },
    );
    write!(out, "   server stopped with SIGTERM: {status}; ")?;
    if !status.success() {
        return Err(io::Error::other(format!("the server exited with {status}")));
    }
    if !left.is_empty() {
        return Err(io::Error::other(format!(
            "objects left behind: {}",
            left.join(", ")
        )));
    }
    if gone.is_ok() {
        return Err(io::Error::other(
            "a client can still connect after the server stopped",
        ));
    }
    writeln!(out, "its objects are gone and a new client is refused")?;
    Ok(())
}

/// The midpoint pause of `demo --inspect`: both processes' descriptors that
/// belong to the session, the system-wide objects, and what they mean.
fn show_inspection(
    t: &dyn Transport,
    cfg: &Config,
    server: i32,
    out: &mut dyn Write,
) -> io::Result<()> {
    let client = std::process::id() as i32;
    writeln!(
        out,
        "\n   -- paused mid-session: what the two processes hold (ipclab inspect {server} {client}) --"
    )?;
    let procs = inspect::inspect(&[server, client])?;
    for (p, (role, peer)) in procs.iter().zip([("server", client), ("client", server)]) {
        let (shown, hidden): (Vec<_>, Vec<_>) = p
            .descriptors
            .iter()
            .cloned()
            .partition(|d| belongs_to_session(&d.object, cfg, p.pid, peer));
        let view = inspect::Process {
            descriptors: shown,
            ..p.clone()
        };
        write!(out, "\n   {role} ")?;
        let mut table = Vec::new();
        inspect::render(&view, &mut table)?;
        for line in String::from_utf8_lossy(&table).lines() {
            writeln!(out, "   {line}")?;
        }
        if !hidden.is_empty() {
            let fds: Vec<String> = hidden.iter().map(|d| d.fd.to_string()).collect();
            writeln!(
                out,
                "     (not shown: fd {}: the terminal, /dev/null and descriptors not part of this session)",
                fds.join(", ")
            )?;
        }
    }
    writeln!(out, "\n   system-wide objects of this server:")?;
    let mut any = false;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cfg.dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&cfg.name))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.extend(t.external_objects(cfg));
    for f in files.iter().filter(|f| f.exists()) {
        writeln!(out, "     {}", system::ls_line(f))?;
        any = true;
    }
    for (kind, key) in t.sysv_keys(cfg) {
        for o in system::sysv_objects(kind).iter().filter(|o| o.key == key) {
            writeln!(out, "     {} (/proc/sysvipc/{kind})", o.line())?;
            any = true;
        }
    }
    if !any {
        writeln!(
            out,
            "     none: this mechanism exists only as the descriptors above"
        )?;
    }
    writeln!(out, "\n{}\n", wrap(t.inspect_note(), 76, "   "))?;
    writeln!(out, "   -- session continues --")?;
    Ok(())
}

/// Is this descriptor part of the IPC session between `me` and `peer`
/// (rather than a terminal, a log file or a pipe inherited from a shell)?
fn belongs_to_session(o: &inspect::Object, cfg: &Config, me: i32, peer: i32) -> bool {
    use inspect::Object;
    let to_peer = |h: &[inspect::Holder]| h.iter().any(|h| h.pid == peer);
    // A pipe shared with others (a terminal's, a shell's) is not the session's.
    let only_us =
        |h: &[inspect::Holder]| to_peer(h) && h.iter().all(|h| h.pid == peer || h.pid == me);
    let in_dir = |p: &str| Path::new(p).starts_with(&cfg.dir);
    match o {
        Object::Tcp { state, peer: h, .. } => state == "LISTEN" || to_peer(h),
        Object::Unix { path, peer: h, .. } => path.as_deref().is_some_and(in_dir) || to_peer(h),
        Object::Pipe { other_end, .. } => only_us(other_end),
        Object::Fifo { path, .. } => in_dir(path),
        Object::File { path, locks, .. } => !locks.is_empty() || in_dir(path),
        Object::MessageQueue { .. } | Object::Udp { .. } | Object::AnonInode { .. } => true,
        Object::Socket { .. } | Object::Other { .. } => false,
    }
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut lines = vec![String::from(indent)];
    for word in text.split_whitespace() {
        let last = lines.last_mut().unwrap();
        if last.len() > indent.len() && last.len() + 1 + word.len() > width {
            lines.push(format!("{indent}{word}"));
        } else {
            if last.len() > indent.len() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines.join("\n")
}

/// Files of this instance still in the runtime directory.
pub fn leftovers(cfg: &Config) -> Vec<String> {
    objects::instance_files(&cfg.dir, &cfg.name)
}

fn step(
    out: &mut dyn Write,
    c: &mut Client,
    form: Form,
    req: &Request<'_>,
    shown: String,
) -> io::Result<Duration> {
    c.set_form(form);
    let start = Instant::now();
    let reply = c.request(req)?;
    let rtt = start.elapsed();
    let described = match (req, &reply) {
        (Request::Echo(p), Reply::Data(d)) if form == Form::Binary => {
            if d == p {
                format!("{} back, identical", fmt_size(d.len()))
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the echo differs from the request",
                ));
            }
        }
        (_, Reply::Pong) => "pong".into(),
        (_, Reply::Bye) => "bye".into(),
        (_, Reply::Data(d)) => lossy(d),
        (_, Reply::Error(e)) => format!("ERR {}", lossy(e)),
    };
    show(out, &form.to_string(), &shown, &described, rtt)?;
    Ok(rtt)
}

fn show(out: &mut dyn Write, form: &str, req: &str, reply: &str, rtt: Duration) -> io::Result<()> {
    writeln!(
        out,
        "   {form:<6} -> {req:<46} <- {reply:<28} {:>9}",
        fmt_duration(rtt)
    )
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.into_owned()
    }
}

fn hex(b: &[u8]) -> String {
    let shown: Vec<String> = b.iter().take(8).map(|x| format!("{x:02x}")).collect();
    format!("{}{}", shown.join(" "), if b.len() > 8 { " …" } else { "" })
}
