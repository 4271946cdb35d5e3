//! Shared test support: a private environment per test, real server
//! processes, and a watchdog that turns a deadlock into a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use ipclab::client::Client;
use ipclab::process::ServerProcess;
use ipclab::protocol::Form;
use ipclab::transport::{self, Config, Link, Transport};

/// The `ipclab` binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ipclab"))
}

/// Run `f` on its own thread; fail the test if it takes longer than `limit`.
/// A panic inside `f` fails the test with that panic.
pub fn watchdog<F: FnOnce() + Send + 'static>(limit: Duration, f: F) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "watchdog: the test did not finish within {limit:?} (a deadlock or a missing timeout)"
            )
        }
    }
}

/// A test's own runtime directory, instance name and ephemeral TCP port, so
/// tests run in parallel without meeting each other.
pub struct Env {
    pub transport: &'static dyn Transport,
    pub cfg: Config,
    dir: tempfile::TempDir,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Env {
    pub fn new(transport: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ipclab-t")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // Like the real runtime directory: private.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let cfg = Config {
            dir: dir.path().to_path_buf(),
            name: format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst)),
            addr: "127.0.0.1:0".into(),
            timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            exe: Some(exe()),
            ..Config::default()
        };
        Env {
            transport: transport::by_name(transport).expect("known transport"),
            cfg,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start a real server process for this environment.
    pub fn server(&self) -> ServerProcess {
        ServerProcess::spawn(&exe(), self.transport, &self.cfg, &["--quiet"])
            .expect("server starts")
    }

    /// A client of `server`, speaking `form`.
    pub fn client(&self, server: &ServerProcess, form: Form) -> Client {
        Client::from_link(self.link(server), self.cfg.max_frame, form)
    }

    /// A raw link to `server` (for inherited channels: the one made at spawn).
    pub fn link(&self, server: &ServerProcess) -> Box<dyn Link> {
        server
            .connect(self.transport, &self.cfg)
            .expect("client connects")
    }

    /// Whatever is left in the runtime directory, and the transport's
    /// objects outside it that still exist.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = std::fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.extend(
            self.transport
                .external_objects(&self.cfg)
                .into_iter()
                .filter(|p| p.exists())
                .map(|p| p.display().to_string()),
        );
        left.sort();
        left
    }
}

/// A payload of `len` bytes that contains NUL, `\n`, `\r` and 0xFF and
/// differs with `seed`.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    const SPECIAL: [u8; 4] = [0, b'\n', 0xff, b'\r'];
    (0..len)
        .map(|i| {
            if i % 5 == 0 {
                SPECIAL[(i / 5) % 4]
            } else {
                (i as u64).wrapping_mul(2654435761).wrapping_add(seed) as u8
            }
        })
        .collect()
}

/// What the kernel says of a live process, for bounds under attack.
pub mod proc_stat {
    use nix::unistd::Pid;

    /// Open descriptors of `pid`.
    pub fn fds(pid: Pid) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(pid: Pid, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether `pid` is alive and not a zombie.
    pub fn alive(pid: Pid) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    }
}

/// A client that gets its byte-exact 64 KiB echo within `limit`. A
/// one-client server may still be freeing the slot of the previous client;
/// "busy" is what a user would see then, and retry, so it is retried.
pub fn next_client_is_served(env: &Env, server: &ServerProcess, limit: Duration) {
    let data = payload(64 * 1024, 7);
    let until = std::time::Instant::now() + limit;
    loop {
        let attempt = server
            .connect(env.transport, &server.client_config(&env.cfg))
            .and_then(|link| {
                let mut c = Client::from_link(link, env.cfg.max_frame, Form::Binary);
                c.echo(&data).map(|echo| echo == &data[..])
            });
        match attempt {
            Ok(true) => return,
            Ok(false) => panic!("{}: the next client's echo differs", env.transport.name()),
            Err(e) if std::time::Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!(
                "{}: no client served within {limit:?}: {e}",
                env.transport.name()
            ),
        }
    }
}
