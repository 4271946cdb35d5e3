//! The conformance suite: every case written once, generic over the
//! transport, and instantiated for each transport by one line at the bottom.
//! Every case runs against a real `ipclab serve` process, under a watchdog.
//!
//! Run it for one transport: `cargo test --test conformance unix::`

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Env, exe, payload, watchdog};
use ipclab::conn::FramedConn;
use ipclab::process::client_args;
use ipclab::protocol::{self, Form, Reply, Request, kind, parse_reply};
use nix::sys::signal::{Signal, kill};

/// How long one case may take before the watchdog fails it.
const LIMIT: Duration = Duration::from_secs(90);

/// The server process ends by itself within 5 s, with exit status 0.
fn exits_cleanly(server: &mut ipclab::process::ServerProcess, why: &str) {
    let status = server
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap_or_else(|| panic!("the server did not exit ({why})"));
    assert!(status.success(), "{why}: exit status {status}");
}

fn run(transport: &'static str, case: fn(Env)) {
    watchdog(LIMIT, move || case(Env::new(transport)));
}

pub fn ping(env: Env) {
    let server = env.server();
    let mut c = env.client(&server, Form::Binary);
    c.ping().unwrap();
    c.set_form(Form::Text);
    c.ping().unwrap();
}

pub fn text_form(env: Env) {
    let server = env.server();
    let mut c = env.client(&server, Form::Text);
    c.ping().unwrap();
    assert_eq!(c.echo(b"hello world").unwrap(), b"hello world");
    assert_eq!(c.echo(b"").unwrap(), b"");
    // A text reply that starts with the binary magic byte is still a line
    // (found by the fuzz test).
    assert_eq!(c.echo(b"\xa5\x01\x82 x").unwrap(), b"\xa5\x01\x82 x");
    assert_eq!(c.send_line(b"echo with CR\r").unwrap().unwrap(), b"with CR");
    c.quit().unwrap();
}

pub fn echo_sizes(env: Env) {
    let server = env.server();
    let mut c = env.client(&server, Form::Binary);
    for (i, size) in [0, 1, 7, 8, 9, 4095, 4096, 4097, 64 << 10, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let p = payload(size, i as u64);
        let echo = c.echo(&p).unwrap();
        assert_eq!(echo.len(), size, "echo of {size} bytes: wrong length");
        assert!(
            echo == p.as_slice(),
            "echo of {size} bytes: content differs"
        );
    }
}

pub fn sequential_round_trips(env: Env) {
    let server = env.server();
    let mut c = env.client(&server, Form::Binary);
    let mut p = Vec::new();
    for i in 0..10_000u64 {
        p.clear();
        p.extend_from_slice(&i.to_le_bytes());
        p.extend(payload((i % 57) as usize, i));
        assert_eq!(c.echo(&p).unwrap(), p.as_slice(), "round trip {i}");
    }
}

/// A raw framed connection, to send what the client API refuses to.
fn raw(
    env: &Env,
    server: &ipclab::process::ServerProcess,
) -> FramedConn<Box<dyn ipclab::transport::Link>> {
    FramedConn::new(env.link(server), env.cfg.max_frame)
}

fn error_reply(conn: &mut FramedConn<Box<dyn ipclab::transport::Link>>) -> String {
    let msg = conn.recv().unwrap().expect("a reply");
    match parse_reply(&msg, &Request::Ping).unwrap() {
        Reply::Error(e) => String::from_utf8_lossy(e).into_owned(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

pub fn unknown_command_continues(env: Env) {
    let server = env.server();
    let mut conn = raw(&env, &server);
    conn.link_mut()
        .write_all(&protocol::header(0x7e, 3))
        .unwrap();
    conn.link_mut().write_all(b"abc").unwrap();
    assert!(error_reply(&mut conn).contains("unknown frame kind"));
    conn.link_mut().write_all(b"frobnicate\n").unwrap();
    assert!(error_reply(&mut conn).contains("unknown command"));
    conn.link_mut()
        .write_all(&protocol::header(kind::PING, 1))
        .unwrap();
    conn.link_mut().write_all(b"x").unwrap();
    assert!(error_reply(&mut conn).contains("no payload"));
    conn.send_request(Form::Binary, &Request::Echo(b"still here"))
        .unwrap();
    let msg = conn.recv().unwrap().unwrap();
    assert_eq!(
        parse_reply(&msg, &Request::Echo(b"")).unwrap(),
        Reply::Data(b"still here")
    );
}

pub fn oversized_frame(env: Env) {
    let inherited = env.transport.capabilities().inherited;
    let mut server = env.server();
    for announced in [env.cfg.max_frame as u64 + 1, u32::MAX as u64] {
        if inherited && announced == u32::MAX as u64 {
            // The one client of a pipe server is gone: a new server.
            server = env.server();
        }
        let mut conn = raw(&env, &server);
        let mut h = protocol::header(kind::ECHO, 0);
        h[4..8].copy_from_slice(&(announced as u32).to_le_bytes());
        conn.link_mut().write_all(&h).unwrap();
        let e = error_reply(&mut conn);
        assert!(e.contains("exceeds the limit"), "{e}");
        // The session ends: the stream cannot be trusted after that header.
        assert!(matches!(conn.recv(), Ok(None) | Err(_)));
    }
    if inherited {
        // A server with exactly one client exits when that session ends.
        exits_cleanly(&mut server, "its one client is gone");
        return;
    }
    let mut c = env.client(&server, Form::Binary);
    c.ping().unwrap();
    assert_eq!(c.echo(b"after").unwrap(), b"after");
}

pub fn quit_then_next_client(env: Env) {
    let mut server = env.server();
    let mut conn = raw(&env, &server);
    conn.send_request(Form::Binary, &Request::Quit).unwrap();
    let msg = conn.recv().unwrap().unwrap();
    assert_eq!(parse_reply(&msg, &Request::Quit).unwrap(), Reply::Bye);
    assert!(
        matches!(conn.recv(), Ok(None) | Err(_)),
        "the session ends after quit"
    );
    drop(conn);
    if env.transport.capabilities().inherited {
        // Its one client has quit: the server exits, cleanly.
        exits_cleanly(&mut server, "its one client is gone");
        return;
    }
    let mut next = env.client(&server, Form::Binary);
    next.ping().unwrap();
    next.quit().unwrap();
}

pub fn connect_without_server(env: Env) {
    let mut cfg = env.cfg.clone();
    cfg.timeout = Duration::from_secs(1);
    cfg.addr = "127.0.0.1:1".into();
    // A client that starts its own server (pipe) meets "no server" when the
    // server cannot be started.
    cfg.exe = Some("/nonexistent/ipclab".into());
    let start = Instant::now();
    let err = env
        .transport
        .connect(&cfg)
        .err()
        .expect("no server: connect must fail");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.to_string().len() > 20, "a clear error, not '{err}'");
}

pub fn server_killed_mid_session(env: Env) {
    let mut cfg = env.cfg.clone();
    cfg.timeout = Duration::from_secs(2);
    let mut server = env.server();
    let link = server.connect(env.transport, &cfg).unwrap();
    let mut c = ipclab::client::Client::from_link(link, cfg.max_frame, Form::Binary);
    c.ping().unwrap();
    let pid = server.pid();
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            // Said before the kill: the client may notice the death before
            // this thread runs again.
            done.store(true, Ordering::SeqCst);
            let _ = kill(pid, Signal::SIGKILL);
        })
    };
    // Large echoes until the server dies under us: the client must see an
    // error within its timeout, never hang.
    let big = payload(1 << 20, 1);
    let err = loop {
        let start = Instant::now();
        match c.echo(&big) {
            Ok(e) => assert_eq!(e.len(), big.len()),
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(4),
                    "error took {:?}",
                    start.elapsed()
                );
                break e;
            }
        }
    };
    assert!(done.load(Ordering::SeqCst), "failed before the kill: {err}");
    killer.join().unwrap();
    server.kill().ok();
    assert!(c.ping().is_err());
    drop(c);
    // SIGKILL is the one death no program can clean up after: the next
    // server on the same name must recognise what is left as stale, replace
    // it, and leave nothing behind when it stops.
    let mut next = env.server();
    env.client(&next, Form::Binary).ping().unwrap();
    assert!(next.stop().unwrap().success());
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// A client that pauses longer than the server's `--timeout` (but not its
/// idle timeout) keeps its session: waiting for the next request is idle
/// time, not a stuck write.
pub fn idle_client_keeps_its_session(env: Env) {
    let mut cfg = env.cfg.clone();
    cfg.timeout = Duration::from_secs(1);
    let server =
        ipclab::process::ServerProcess::spawn(&exe(), env.transport, &cfg, &["--quiet"]).unwrap();
    let link = server.connect(env.transport, &cfg).unwrap();
    let mut c = ipclab::client::Client::from_link(link, cfg.max_frame, Form::Binary);
    c.ping().unwrap();
    std::thread::sleep(Duration::from_millis(1600));
    c.ping()
        .expect("the session survives a pause longer than --timeout");
    let p = payload(100_000, 3);
    assert_eq!(c.echo(&p).unwrap(), p.as_slice());
}

pub fn frozen_server_times_out(env: Env) {
    let mut cfg = env.cfg.clone();
    cfg.timeout = Duration::from_secs(1);
    // Spawned with the short timeout: a pipe's link is made at spawn.
    let mut server =
        ipclab::process::ServerProcess::spawn(&exe(), env.transport, &cfg, &["--quiet"]).unwrap();
    let link = server.connect(env.transport, &cfg).unwrap();
    let mut c = ipclab::client::Client::from_link(link, cfg.max_frame, Form::Binary);
    c.ping().unwrap();
    server.signal(Signal::SIGSTOP).unwrap();
    // kill(2) returns before the stop takes effect: wait until it has.
    let stat = format!("/proc/{}/stat", server.pid());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&stat)
        .unwrap_or_default()
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('T'))
    {
        assert!(Instant::now() < deadline, "the server never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    let err = c.ping().expect_err("a frozen server cannot answer");
    let took = start.elapsed();
    server.signal(Signal::SIGCONT).unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    drop(c);
    if env.transport.capabilities().inherited {
        // Its one client is gone: the thawed server exits cleanly.
        exits_cleanly(&mut server, "its one client is gone");
        return;
    }
    // Thawed, it serves the next client.
    let mut next = env.client(&server, Form::Binary);
    next.ping().unwrap();
    assert_eq!(next.echo(b"after the thaw").unwrap(), b"after the thaw");
}

pub fn client_killed_mid_message(env: Env) {
    let server = env.server();
    let before = env.leftovers();
    let status = Command::new(exe())
        .arg("client")
        .arg(env.transport.name())
        .args(client_args(&server.client_config(&env.cfg)))
        .args(["--fill", "1M", "--die-mid-message"])
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the client should die by SIGKILL: {status}"
    );
    let mut c = env.client(&server, Form::Binary);
    let p = payload(100_000, 9);
    assert_eq!(c.echo(&p).unwrap(), p.as_slice());
    drop(c);
    // Whatever the dead client left in the runtime directory is cleared by
    // the server within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.leftovers() != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        env.leftovers(),
        before,
        "the killed client's objects stayed"
    );
}

pub fn objects_are_owner_only(env: Env) {
    use std::os::unix::fs::PermissionsExt;
    let server = env.server();
    let mut c = env.client(&server, Form::Binary);
    c.ping().unwrap();
    let dir_mode = std::fs::metadata(env.dir()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "runtime directory mode {dir_mode:o}");
    let mut objects: Vec<std::path::PathBuf> = std::fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    objects.extend(env.transport.external_objects(&env.cfg));
    for path in objects {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
}

pub fn concurrent_clients(env: Env) {
    let server = env.server();
    if !env.transport.capabilities().multi_client {
        // One client at a time: a second one gets a clear "busy" error.
        let mut first = env.client(&server, Form::Binary);
        first.ping().unwrap();
        let second = server.connect(env.transport, &env.cfg).and_then(|link| {
            ipclab::client::Client::from_link(link, env.cfg.max_frame, Form::Binary).ping()
        });
        let e = second.expect_err("a second client must be refused");
        assert!(e.to_string().contains("busy"), "{e}");
        first.ping().unwrap();
        return;
    }
    let ccfg = server.client_config(&env.cfg);
    let transport = env.transport;
    let threads: Vec<_> = (0..16u64)
        .map(|id| {
            let ccfg = ccfg.clone();
            std::thread::spawn(move || {
                let mut c =
                    ipclab::client::Client::connect(transport, &ccfg, Form::Binary).unwrap();
                let mut p = Vec::new();
                for i in 0..1000u64 {
                    p.clear();
                    p.extend_from_slice(&id.to_le_bytes());
                    p.extend_from_slice(&i.to_le_bytes());
                    // Mostly small, sometimes several FIFO packets long.
                    let len = if i % 50 == 7 {
                        20_000
                    } else {
                        ((id * 131 + i) % 300) as usize
                    };
                    p.extend(payload(len, id ^ i));
                    let echo = c.echo(&p).unwrap();
                    assert!(
                        echo == p.as_slice(),
                        "client {id} round trip {i}: crosstalk or corruption"
                    );
                }
                c.quit().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn stops_clean(env: Env, sig: Signal) {
    let mut server = env.server();
    let mut c = env.client(&server, Form::Binary);
    c.ping().unwrap();
    // A client is still connected when the signal comes.
    server.signal(sig).unwrap();
    let status = server
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("the server exits promptly on the signal");
    assert!(status.success(), "{sig}: exit status {status}");
    // The client sees the server gone, then removes its own objects (a FIFO
    // client's reply FIFO) as it goes.
    assert!(c.ping().is_err(), "a request after {sig} must fail");
    drop(c);
    assert_eq!(
        env.leftovers(),
        Vec::<String>::new(),
        "objects left behind after {sig}"
    );
    let mut cfg = env.cfg.clone();
    cfg.timeout = Duration::from_secs(1);
    assert!(
        server.connect(env.transport, &cfg).is_err(),
        "still reachable after {sig}"
    );
}

pub fn stops_clean_on_sigterm(env: Env) {
    stops_clean(env, Signal::SIGTERM)
}

pub fn stops_clean_on_sigint(env: Env) {
    stops_clean(env, Signal::SIGINT)
}

/// In-process: dropping the listener removes every object it created.
pub fn listener_drop_removes_objects(env: Env) {
    if env.transport.capabilities().inherited {
        eprintln!(
            "SKIPPED {}::listener_drop_removes_objects: its listener adopts this process's \
             stdin/stdout; stops_clean_* cover its cleanup",
            env.transport.name()
        );
        return;
    }
    let listener = env.transport.listen(&env.cfg).unwrap();
    drop(listener);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// Instantiate the whole suite for one transport:
/// `conformance!(tcp);` or, for a name that is not an identifier,
/// `conformance!(unix_dgram => "unix-dgram");`.
macro_rules! conformance {
    ($t:ident) => {
        conformance!($t => stringify!($t));
    };
    ($m:ident => $name:expr) => {
        mod $m {
            const T: &str = $name;
            #[test] fn ping() { super::run(T, super::ping) }
            #[test] fn text_form() { super::run(T, super::text_form) }
            #[test] fn echo_sizes() { super::run(T, super::echo_sizes) }
            #[test] fn sequential_round_trips() { super::run(T, super::sequential_round_trips) }
            #[test] fn unknown_command_continues() { super::run(T, super::unknown_command_continues) }
            #[test] fn oversized_frame() { super::run(T, super::oversized_frame) }
            #[test] fn quit_then_next_client() { super::run(T, super::quit_then_next_client) }
            #[test] fn connect_without_server() { super::run(T, super::connect_without_server) }
            #[test] fn server_killed_mid_session() { super::run(T, super::server_killed_mid_session) }
            #[test] fn client_killed_mid_message() { super::run(T, super::client_killed_mid_message) }
            #[test] fn frozen_server_times_out() { super::run(T, super::frozen_server_times_out) }
            #[test] fn concurrent_clients() { super::run(T, super::concurrent_clients) }
            #[test] fn stops_clean_on_sigterm() { super::run(T, super::stops_clean_on_sigterm) }
            #[test] fn stops_clean_on_sigint() { super::run(T, super::stops_clean_on_sigint) }
            #[test] fn listener_drop_removes_objects() { super::run(T, super::listener_drop_removes_objects) }
            #[test] fn objects_are_owner_only() { super::run(T, super::objects_are_owner_only) }
            #[test] fn idle_client_keeps_its_session() { super::run(T, super::idle_client_keeps_its_session) }
        }
    };
}

conformance!(pipe);
conformance!(fifo);
conformance!(msgq);
conformance!(posix_mq => "posix-mq");
conformance!(shm);
conformance!(mmap);
conformance!(shm_spin => "shm-spin");
conformance!(eventfd);
conformance!(signal);
conformance!(flock);
conformance!(unix);
conformance!(unix_seqpacket => "unix-seqpacket");
conformance!(unix_dgram => "unix-dgram");
conformance!(tcp);
conformance!(udp);
