//! Resource exhaustion: the open-file limit lowered until accept fails, a
//! full message queue, a full /dev/shm. Each gives a clear error naming the
//! limit — never a crash — and the server recovers when the resource is
//! back.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, exe, watchdog};
use ipclab::process::{client_args, serve_args};
use ipclab::sys::sysv::{self, MsgQueue};
use ipclab::transport::Transport;
use ipclab::transport::msgq::Msgq;

fn ping(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if s.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut b = [0u8; 5];
    s.read_exact(&mut b).is_ok() && &b == b"pong\n"
}

/// A server child that is killed if the test fails before stopping it.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn open_file_limit_reached_then_recovered() {
    watchdog(Duration::from_secs(60), || {
        let env = Env::new("unix");
        let log = env.dir().join("server.log");
        let mut server = Command::new(exe());
        server
            .args(["serve", "unix"])
            .args(serve_args(&env.cfg))
            .arg("--quiet")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            server.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 16,
                    rlim_max: 16,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut server = Reaped(server.spawn().unwrap());
        let sock = env.cfg.object_path(".sock");
        // Ready when it accepts a connection (the file exists from bind(2)
        // on, a moment before listen(2)).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = UnixStream::connect(&sock).is_ok_and(|mut probe| ping(&mut probe));
            if ready {
                break;
            }
            assert!(Instant::now() < until, "the server never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        // More clients than the server has descriptors for: the first are
        // served, the rest wait in the backlog.
        let mut clients: Vec<UnixStream> = (0..24)
            .map(|_| UnixStream::connect(&sock).unwrap())
            .collect();
        let mut served = 0;
        for c in clients.iter_mut() {
            if ping(c) {
                served += 1;
            }
        }
        assert!(served > 0 && served < 24, "{served} of 24 served");
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("Too many open files") && text.contains("RLIMIT_NOFILE"),
            "{text}"
        );
        // Once per episode of failing, not every tick (a session that ends
        // frees a descriptor, and the next accept may fail anew).
        assert_eq!(
            text.matches("accept failed").count(),
            text.matches("accepting clients again").count() + 1,
            "the error is said once per episode, not every tick: {text}"
        );
        assert!(server.0.try_wait().unwrap().is_none(), "the server died");
        // Resources back (every client gone): a new client is served.
        drop(clients);
        let mut fresh = UnixStream::connect(&sock).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let mut ok = false;
        while !ok && Instant::now() < until {
            ok = ping(&mut fresh) || {
                fresh = UnixStream::connect(&sock).unwrap();
                false
            };
        }
        assert!(ok, "the server did not recover");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("accepting clients again"), "{text}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(server.0.wait().unwrap().success());
    });
}

#[test]
fn full_message_queue_then_drained() {
    watchdog(Duration::from_secs(60), || {
        let env = Env::new("msgq");
        let server = env.server();
        let key = Msgq.sysv_keys(&env.cfg)[0].1;
        let q = MsgQueue::open(key).unwrap();
        // Someone (of ours) fills the queue with messages nobody reads.
        let mut junk = vec![0u8; sysv::MTYPE_LEN + 1024];
        sysv::set_mtype(&mut junk, 999);
        let mut filled = 0;
        while q.send_raw(&junk, true).is_ok() {
            filled += 1;
        }
        assert!(filled > 0);
        let mut short = server.client_config(&env.cfg);
        short.timeout = Duration::from_secs(1);
        let out = Command::new(exe())
            .args(["client", "msgq"])
            .args(client_args(&short))
            .arg("ping")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("msgmnb"), "{err}");
        // Drained: served again.
        q.purge(999);
        let out = Command::new(exe())
            .args(["client", "msgq"])
            .args(client_args(&server.client_config(&env.cfg)))
            .arg("ping")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pong");
    });
}

#[test]
fn full_dev_shm_is_an_error_not_a_crash() {
    watchdog(Duration::from_secs(60), || {
        // A private /dev/shm of 64 KiB, in a mount namespace of its own.
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0
            || Command::new("unshare").arg("--version").output().is_err()
        {
            eprintln!("SKIPPED: a private /dev/shm needs root and unshare(1)");
            return;
        }
        for t in ["shm", "shm-spin"] {
            let env = Env::new(t);
            let out = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"mount -t tmpfs -o size=64k tmpfs /dev/shm || exit 77; exec "$@""#)
                .arg("sh")
                .arg(exe())
                .args(["serve", t])
                .args(serve_args(&env.cfg))
                .arg("--quiet")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.code() == Some(77) {
                eprintln!("SKIPPED: cannot mount a tmpfs here");
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{t} started on a 64 KiB /dev/shm");
            assert!(
                err.contains("No space left") && err.contains("/dev/shm is full"),
                "{t}: {err}"
            );
            // No signal death (SIGBUS): an ordinary error exit.
            assert_eq!(out.status.code(), Some(1), "{t}: {}", out.status);
            // With the real /dev/shm, it starts.
            let mut server = env.server();
            let mut c = env.client(&server, ipclab::protocol::Form::Binary);
            c.ping().unwrap();
            drop(c);
            assert!(server.stop().unwrap().success());
        }
    });
}
