//! Real server processes: start one, know when it is ready, stop it.
//!
//! `demo`, `bench` and the tests never run a server in a thread of their
//! own: they re-execute the `ipclab` binary as `ipclab serve <transport>`, a
//! separate process, so every round trip crosses a real process boundary.
//!
//! Readiness without sleeping: the parent makes a pipe and the child
//! inherits its write end as fd 3 (`--ready-fd 3`). When the server has
//! created its kernel objects it writes one line, `ready <addr> <endpoint>`,
//! and closes the fd. If it fails instead, the pipe reaches end of file when
//! the child exits, so the parent learns that at once too. The wait is
//! bounded.
//!
//! No orphans: the child asks the kernel (`prctl(PR_SET_PDEATHSIG)`) for a
//! SIGTERM when the thread that started it ends, so a crashed or killed test
//! or demo does not leave a server holding kernel objects. Dropping a
//! [`ServerProcess`] stops the server (SIGTERM, then SIGKILL after a bound).

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::runtime;
use crate::sys::fd_link::{self, FdLink};
use crate::transport::{Config, Link, Transport};

/// The fd number the readiness pipe gets in the server child.
pub const READY_FD: i32 = 3;

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `ipclab serve` child process.
pub struct ServerProcess {
    child: Child,
    exited: Option<ExitStatus>,
    endpoint: String,
    local_addr: Option<SocketAddr>,
    /// The parent's ends of an inherited channel, until a client takes them.
    link: Mutex<Option<FdLink>>,
    inherited: bool,
}

/// Command-line flags that give a `client` process `cfg`.
pub fn client_args(cfg: &Config) -> Vec<String> {
    vec![
        "--dir".into(),
        cfg.dir.display().to_string(),
        "--name".into(),
        cfg.name.clone(),
        "--addr".into(),
        cfg.addr.clone(),
        "--timeout".into(),
        cfg.timeout.as_secs_f64().to_string(),
        "--max-frame".into(),
        cfg.max_frame.to_string(),
    ]
}

/// Command-line flags that give a `serve` process `cfg`.
pub fn serve_args(cfg: &Config) -> Vec<String> {
    let mut args = client_args(cfg);
    args.extend([
        "--idle-timeout".into(),
        cfg.idle_timeout.as_secs_f64().to_string(),
        "--max-clients".into(),
        cfg.max_clients.to_string(),
    ]);
    if cfg.same_user {
        args.push("--same-user".into());
    }
    args
}

impl ServerProcess {
    /// Start `exe serve <transport>` configured by `cfg` (plus `extra`
    /// flags) and wait until it is ready to accept clients.
    pub fn spawn(
        exe: &Path,
        transport: &dyn Transport,
        cfg: &Config,
        extra: &[&str],
    ) -> io::Result<Self> {
        let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let inherited = transport.capabilities().inherited;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg(transport.name())
            .args(serve_args(cfg))
            .arg("--ready-fd")
            .arg(READY_FD.to_string())
            .args(extra);
        let link = if inherited {
            // The channel itself: the child's stdin and stdout are pipes
            // whose other ends stay here.
            let (child_in, child_out, link) = fd_link::make_pipes(cfg.timeout)?;
            cmd.stdin(Stdio::from(child_in))
                .stdout(Stdio::from(child_out));
            Some(link)
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            None
        };
        let w = ready_w.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls (dup2,
        // fcntl, prctl) are made, and no memory is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if w == READY_FD {
                    if libc::fcntl(w, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(w, READY_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // Close our copies of the child's ends (the readiness write end, and
        // for pipes the child's stdin/stdout ends, which `cmd` holds): only
        // then do we see end of file when the child goes.
        drop(cmd);
        drop(ready_w);
        let child = spawned.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", exe.display()))
        })?;
        let mut server = ServerProcess {
            child,
            exited: None,
            endpoint: String::new(),
            local_addr: None,
            link: Mutex::new(link),
            inherited,
        };
        let line = match read_ready_line(std::fs::File::from(ready_r)) {
            Ok(line) => line,
            Err(e) => {
                let status = server.kill().ok();
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "the {} server did not become ready: {e}{}",
                        transport.name(),
                        status
                            .map(|s| format!(" (it exited: {s})"))
                            .unwrap_or_default()
                    ),
                ));
            }
        };
        let mut parts = line.trim_end().splitn(3, ' ');
        let (Some("ready"), Some(addr), Some(endpoint)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server announced '{line}' instead of 'ready <addr> <endpoint>'"),
            ));
        };
        server.local_addr = addr.parse().ok();
        server.endpoint = endpoint.to_string();
        Ok(server)
    }

    /// A link to this server: for most transports a new connection; for a
    /// transport whose channel is inherited (pipes), the channel made at
    /// spawn — once, since such a server has exactly one client.
    pub fn connect(&self, transport: &dyn Transport, cfg: &Config) -> io::Result<Box<dyn Link>> {
        if !self.inherited {
            return transport.connect(&self.client_config(cfg));
        }
        match self.link.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(link) => Ok(Box::new(link)),
            None => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "busy: a {} server has exactly one client, the process that started it",
                    transport.name()
                ),
            )),
        }
    }

    /// For an inherited channel: a link that owns this server process, which
    /// ends when the link is dropped.
    pub fn into_link(self) -> io::Result<Box<dyn Link>> {
        let link = self
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                io::Error::other("this server's channel is not inherited, or already taken")
            })?;
        Ok(Box::new(PipeClientLink::new(link, self)))
    }

    /// The server's process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Where the server listens, as it said.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `cfg` pointed at this server (the bound address, if it has one).
    pub fn client_config(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        if let Some(a) = self.local_addr {
            c.addr = a.to_string();
        }
        c
    }

    /// Send `sig` to the server.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        if self.exited.is_some() {
            return Ok(());
        }
        kill(self.pid(), sig).map_err(io::Error::from)
    }

    /// Wait at most `limit` for the server to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.exited {
            return Ok(Some(s));
        }
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.exited = Some(s);
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Stop the server as Ctrl-C would (SIGTERM) and wait for it; SIGKILL
    /// if it has not exited within five seconds.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        // A stopped (SIGSTOP) server would hold SIGTERM pending until it is
        // continued, and then be killed without cleaning up: continue it.
        self.signal(Signal::SIGCONT)?;
        match self.wait_timeout(Duration::from_secs(5))? {
            Some(s) => Ok(s),
            None => {
                let s = self.kill()?;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the server ignored SIGTERM for 5 s and was killed ({s})"),
                ))
            }
        }
    }

    /// Kill the server with SIGKILL (no cleanup possible) and reap it.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        match self.wait_timeout(Duration::from_secs(5))? {
            Some(s) => Ok(s),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server survived SIGKILL",
            )),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.exited.is_none() && self.stop().is_err() {
            let _ = self.kill();
        }
    }
}

/// The client's side of a pipe server: the two pipe ends, and the server
/// child, which is told to go (its stdin reaches end of file) and reaped
/// when the link is dropped.
pub struct PipeClientLink {
    link: Option<FdLink>,
    server: ServerProcess,
}

impl PipeClientLink {
    fn new(link: FdLink, server: ServerProcess) -> Self {
        PipeClientLink {
            link: Some(link),
            server,
        }
    }

    fn link(&mut self) -> &mut FdLink {
        self.link.as_mut().expect("present until drop")
    }
}

impl Read for PipeClientLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.link().read(buf)
    }
}

impl Write for PipeClientLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.link().write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.link().write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeClientLink {
    fn drop(&mut self) {
        // Closing our ends is the server's signal to go: its read sees end of
        // file. Give it a moment, then ServerProcess's drop stops it for sure.
        drop(self.link.take());
        let _ = self.server.wait_timeout(Duration::from_secs(1));
    }
}

/// Read the one readiness line, within [`READY_TIMEOUT`].
fn read_ready_line(mut f: std::fs::File) -> io::Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !runtime::wait_readable(&f, left)? {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no readiness line within 20 s",
                ));
            }
            continue;
        }
        let n = f.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "it exited before it was ready (see its error above)",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
