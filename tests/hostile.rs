//! Hostile input over TCP and UNIX sockets, from real clients (socat where
//! it is installed, raw sockets otherwise): every case gets an error reply
//! or a clean disconnect, and the server keeps serving others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, watchdog};
use ipclab::process::ServerProcess;
use ipclab::protocol::Form;

const LIMIT: Duration = Duration::from_secs(120);

/// A raw connection to the server of `env`.
enum Raw {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Raw {
    fn open(env: &Env, server: &ServerProcess) -> Raw {
        let r = match env.transport.name() {
            "tcp" => Raw::Tcp(TcpStream::connect(server.client_config(&env.cfg).addr).unwrap()),
            _ => Raw::Unix(UnixStream::connect(env.cfg.object_path(".sock")).unwrap()),
        };
        let t = Some(Duration::from_secs(10));
        match &r {
            Raw::Tcp(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
            Raw::Unix(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
        }
        r
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Raw::Tcp(s) => s,
            Raw::Unix(s) => s,
        }
    }

    /// Send `bytes`, then read until `want` bytes came or the server closed.
    fn exchange(&mut self, bytes: &[u8], want: usize) -> Vec<u8> {
        let s = self.stream();
        s.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the reply: {e}"),
            }
        }
        got
    }

    /// True when the server has closed the connection (end of file or reset).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.stream().read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn still_serves(env: &Env, server: &ServerProcess) {
    let t0 = Instant::now();
    let mut c = env.client(server, Form::Binary);
    c.ping().expect("the server still serves");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "a normal client waited {:?}",
        t0.elapsed()
    );
}

fn socat_target(env: &Env, server: &ServerProcess) -> String {
    match env.transport.name() {
        "tcp" => format!("TCP:{}", server.client_config(&env.cfg).addr),
        _ => format!("UNIX-CONNECT:{}", env.cfg.object_path(".sock").display()),
    }
}

fn have_socat() -> bool {
    Command::new("socat").arg("-V").output().is_ok()
}

fn hostile_inputs(transport: &'static str) {
    watchdog(LIMIT, move || {
        let mut env = Env::new(transport);
        env.cfg.max_frame = 1 << 20; // 1 MiB, so the long line is refused soon
        let server = env.server();

        // A 100 MiB line with no newline: refused at the frame limit, and
        // the connection closed; from socat when there is one.
        if have_socat() {
            let mut child = Command::new("socat")
                .args(["-t", "5", "-T", "20", "-", &socat_target(&env, &server)])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let writer = std::thread::spawn(move || {
                let chunk = vec![b'a'; 1 << 20];
                for _ in 0..100 {
                    if stdin.write_all(&chunk).is_err() {
                        break; // socat gave up: the server closed on it
                    }
                }
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.starts_with("ERR ") && text.contains("exceeds"),
                "{text}"
            );
        } else {
            eprintln!("socat not installed: the 100 MiB line goes from a raw socket");
            let mut r = Raw::open(&env, &server);
            let chunk = vec![b'a'; 1 << 20];
            let mut sent = 0;
            while sent < 100 && r.stream().write_all(&chunk).is_ok() {
                sent += 1;
            }
            assert!(sent < 100, "the server read 100 MiB of one line");
        }
        still_serves(&env, &server);

        // A frame header announcing 4 GiB: an error before any allocation.
        let mut r = Raw::open(&env, &server);
        let got = r.exchange(&[0xA5, 1, 2, 0, 0xFF, 0xFF, 0xFF, 0xFF], 8);
        assert_eq!(got[2], 0x83, "not an error frame: {got:?}");
        assert!(
            r.closed(),
            "the session goes on after an untrustworthy header"
        );

        // NUL bytes and invalid UTF-8 in text commands: answered, and the
        // session goes on.
        let mut r = Raw::open(&env, &server);
        let got = r.exchange(b"echo a\0b\n", 4);
        assert_eq!(got, b"a\0b\n");
        let got = r.exchange(b"\0\0\0\n", 4);
        assert!(got.starts_with(b"ERR "), "{got:?}");
        let got = r.exchange(b"\xff\xfe\xfd\n", 4);
        assert!(got.starts_with(b"ERR "), "{got:?}");
        let got = r.exchange(b"echo \xff\xc0\n", 3);
        assert_eq!(got, b"\xff\xc0\n");
        let got = r.exchange(b"ping\n", 5);
        assert_eq!(got, b"pong\n");

        // Slowloris: idle clients, and clients halfway through a line,
        // hold up nobody else.
        let mut idle: Vec<Raw> = (0..20).map(|_| Raw::open(&env, &server)).collect();
        for r in idle.iter_mut().step_by(2) {
            r.stream().write_all(b"pin").unwrap();
        }
        still_serves(&env, &server);

        // A client that sends requests and never reads the replies: its
        // session blocks on a full socket buffer; others go on.
        let mut greedy = Raw::open(&env, &server);
        match &greedy {
            Raw::Tcp(s) => s
                .set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap(),
            Raw::Unix(s) => s
                .set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap(),
        }
        let mut req = b"echo ".to_vec();
        req.extend(std::iter::repeat_n(b'x', 60_000));
        req.push(b'\n');
        for _ in 0..50 {
            if greedy.stream().write_all(&req).is_err() {
                break; // our own buffer is full too: enough
            }
        }
        still_serves(&env, &server);
        drop((idle, greedy));

        // And it still stops cleanly, leaving nothing.
        let mut server = server;
        assert!(server.stop().unwrap().success());
        assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    });
}

#[test]
fn hostile_inputs_over_tcp() {
    hostile_inputs("tcp");
}

#[test]
fn hostile_inputs_over_unix() {
    hostile_inputs("unix");
}
