//! The `ipclab` binary as a user runs it, and interoperability with
//! third-party clients (socat), against real server processes.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, exe, watchdog};
use ipclab::process::client_args;
use ipclab::transport;

const LIMIT: Duration = Duration::from_secs(60);

fn ipclab(args: &[&str]) -> Output {
    Command::new(exe()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn list_shows_every_transport() {
    watchdog(LIMIT, || {
        let out = ipclab(&["list"]);
        assert!(out.status.success());
        let s = text(&out.stdout);
        for t in transport::all() {
            assert!(
                s.lines().any(|l| l.starts_with(&format!("{} ", t.name()))),
                "{} missing from:\n{s}",
                t.name()
            );
        }
    });
}

#[test]
fn demo_all_runs_every_transport() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let out = ipclab(&["demo", "all", "--dir", dir.path().to_str().unwrap()]);
        let s = text(&out.stdout);
        assert!(out.status.success(), "{s}\n{}", text(&out.stderr));
        for t in transport::all() {
            assert!(s.contains(&format!("== {}:", t.name())), "{s}");
        }
        assert!(s.contains("identical") && s.contains("pong") && s.contains("ERR unknown command"));
        assert!(!s.contains("FAILED"), "{s}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "demo left objects behind"
        );
    });
}

#[test]
fn client_commands_against_a_server() {
    watchdog(LIMIT, || {
        for t in ["unix", "tcp"] {
            let env = Env::new(t);
            let server = env.server();
            let args = client_args(&server.client_config(&env.cfg));
            let run = |extra: &[&str]| {
                let out = Command::new(exe())
                    .arg("client")
                    .arg(t)
                    .args(&args)
                    .args(extra)
                    .output()
                    .unwrap();
                (out.status.code(), text(&out.stdout))
            };
            assert_eq!(run(&["ping"]), (Some(0), "pong\n".into()));
            assert_eq!(
                run(&["echo", "hello", "world"]),
                (Some(0), "hello world\n".into())
            );
            assert_eq!(run(&["--binary", "echo", "bin"]), (Some(0), "bin\n".into()));
            let (code, out) = run(&["dance"]);
            assert_eq!(code, Some(1));
            assert!(out.starts_with("ERR unknown command"), "{out}");
            let (code, out) = run(&["--fill", "64K", "--count", "50"]);
            assert_eq!(code, Some(0));
            assert!(
                out.contains("50 round trip(s) of 64 KiB: every echo identical"),
                "{out}"
            );

            // Interactive: requests from stdin, one per line.
            let mut child = Command::new(exe())
                .arg("client")
                .arg(t)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"ping\necho one two\nquit\n")
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(text(&out.stdout), "pong\none two\nbye\n");
        }
    });
}

#[test]
fn missing_server_is_a_clear_error() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for (t, want) in [("unix", "no server at"), ("tcp", "no server listens there")] {
            let start = Instant::now();
            let out = ipclab(&[
                "client",
                t,
                "--dir",
                d,
                "--addr",
                "127.0.0.1:1",
                "--timeout",
                "1",
                "ping",
            ]);
            assert_eq!(out.status.code(), Some(1));
            let err = text(&out.stderr);
            assert!(err.starts_with("Error: ") && err.contains(want), "{err}");
            assert!(start.elapsed() < Duration::from_secs(3));
        }
    });
}

#[test]
fn stale_socket_is_replaced_and_live_server_is_not_stolen() {
    watchdog(LIMIT, || {
        let env = Env::new("unix");
        let path = env.cfg.object_path(".sock");
        // A socket file whose server is gone (bound, never unlinked).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = env.server();
        env.client(&server, ipclab::protocol::Form::Text)
            .ping()
            .unwrap();

        // A second server on the same name meets a live one: refused.
        let mut args = vec!["serve".to_string(), "unix".into()];
        args.extend(ipclab::process::serve_args(&env.cfg));
        let out = Command::new(exe()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("already in use by a live server"),
            "{}",
            text(&out.stderr)
        );
        env.client(&server, ipclab::protocol::Form::Text)
            .ping()
            .unwrap();
    });
}

#[test]
fn stale_fifo_is_replaced_and_live_server_is_not_stolen() {
    watchdog(LIMIT, || {
        let env = Env::new("fifo");
        let path = env.cfg.object_path(".fifo");
        // A request FIFO whose server was SIGKILLed: nobody reads it.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let server = env.server();
        env.client(&server, ipclab::protocol::Form::Text)
            .ping()
            .unwrap();

        let mut args = vec!["serve".to_string(), "fifo".into()];
        args.extend(ipclab::process::serve_args(&env.cfg));
        let out = Command::new(exe()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("already in use by a live server"),
            "{}",
            text(&out.stderr)
        );
        env.client(&server, ipclab::protocol::Form::Text)
            .ping()
            .unwrap();
    });
}

#[test]
fn a_foreign_file_is_never_removed() {
    watchdog(LIMIT, || {
        let env = Env::new("unix");
        let path = env.cfg.object_path(".sock");
        std::fs::write(&path, b"not ours").unwrap();
        let mut args = vec!["serve".to_string(), "unix".into()];
        args.extend(ipclab::process::serve_args(&env.cfg));
        let out = Command::new(exe()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("is not a socket; not removing it"));
        assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
    });
}

#[test]
fn tcp_port_in_use_is_reported() {
    watchdog(LIMIT, || {
        let env = Env::new("tcp");
        let server = env.server();
        let taken = server.client_config(&env.cfg).addr;
        let out = ipclab(&["serve", "tcp", "--addr", &taken]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("already in use"),
            "{}",
            text(&out.stderr)
        );
    });
}

#[test]
fn runtime_dir_is_private_and_unsafe_ones_are_refused() {
    watchdog(LIMIT, || {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("fresh");
        let env = Env::new("unix");
        let mut cfg = env.cfg.clone();
        cfg.dir = fresh.clone();
        let server =
            ipclab::process::ServerProcess::spawn(&exe(), env.transport, &cfg, &["--quiet"])
                .unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&cfg.object_path(".sock")), 0o600);
        drop(server);

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = ipclab(&["serve", "unix", "--dir", open.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("writable by group or others"));
    });
}

/// socat is a third-party client: it knows nothing of ipclab and types the
/// text form, as a person with nc or telnet would.
#[test]
fn socat_talks_to_our_servers() {
    if Command::new("socat").arg("-V").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("socat is not installed, and CI must run this test (.ci/run installs it)");
        }
        eprintln!(
            "SKIPPED socat_talks_to_our_servers: socat is not installed (apt-get install socat)"
        );
        return;
    }
    watchdog(LIMIT, || {
        for t in ["tcp", "unix"] {
            let env = Env::new(t);
            let server = env.server();
            let target = match t {
                "tcp" => format!("TCP:{}", server.client_config(&env.cfg).addr),
                _ => format!("UNIX-CONNECT:{}", env.cfg.object_path(".sock").display()),
            };
            let mut child = Command::new("socat")
                .args(["-T", "5", "-", &target])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"ping\r\necho hello world\nfrobnicate\nquit\n")
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let s = text(&out.stdout);
            let lines: Vec<&str> = s.lines().collect();
            assert_eq!(lines.len(), 4, "{t}: {s} {}", text(&out.stderr));
            assert_eq!(lines[0], "pong");
            assert_eq!(lines[1], "hello world");
            assert!(lines[2].starts_with("ERR unknown command 'frobnicate'"));
            assert_eq!(lines[3], "bye");
        }
    });
}

#[test]
fn limits_are_read_live() {
    watchdog(LIMIT, || {
        let out = ipclab(&["limits"]);
        assert!(out.status.success());
        let s = text(&out.stdout);
        let msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").unwrap();
        assert!(s.contains(&format!("msgmax: {}", msgmax.trim())), "{s}");
        for name in [
            "pipe capacity",
            "PIPE_BUF",
            "msgmnb",
            "/dev/shm",
            "RLIMIT_SIGPENDING",
            "RLIMIT_NOFILE",
            "somaxconn",
        ] {
            assert!(s.contains(name), "{name} missing from:\n{s}");
        }
        let json = ipclab(&["limits", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert!(
            v.as_array()
                .unwrap()
                .iter()
                .all(|l| l["when_reached"].as_str().is_some_and(|w| !w.is_empty()))
        );
    });
}

/// `--same-user` on a transport whose server cannot learn a client's uid
/// is refused with a reason, not accepted and ignored; where the server can,
/// it starts.
#[test]
fn same_user_is_refused_where_it_cannot_be_enforced() {
    watchdog(LIMIT, || {
        for t in transport::all() {
            if t.capabilities().peer_credentials || t.capabilities().inherited {
                continue;
            }
            let env = Env::new(t.name());
            let mut child = Command::new(exe())
                .arg("serve")
                .arg(t.name())
                .args(ipclab::process::serve_args(&env.cfg))
                .arg("--same-user")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let started = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break Some(s);
                }
                if started.elapsed() > Duration::from_secs(3) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                matches!(status, Some(s) if !s.success())
                    && err.contains("--same-user cannot be enforced"),
                "{}: serve --same-user was not refused ({status:?}): {err}",
                t.name()
            );
        }
    });
}
