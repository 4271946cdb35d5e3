//! `ipclab client`: one request, a stream of them from stdin, or `--fill`
//! echoes of a generated payload, each checked.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use ipclab::client::Client;
use ipclab::protocol::{self, Form, Message, Reply};
use ipclab::transport::{self, Config};
use ipclab::units::{fmt_duration, fmt_size, parse_size};

use super::{Common, transport_names};

#[derive(Args)]
pub struct ClientArgs {
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

pub fn run(a: ClientArgs) -> Result<ExitCode> {
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
    let mut out = crate::stdout();
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
