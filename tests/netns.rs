//! Two simulated hosts: the TCP (and UDP) server in one network namespace,
//! the client in another, joined by a veth pair with private addresses
//! chosen here. Skipped, with the reason printed, where the machine does
//! not allow it (not root, no `ip`, no namespaces).

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{exe, watchdog};

/// The namespaces and the veth pair, removed when dropped (deleting a
/// namespace also deletes the veth end inside it, and with it the pair).
struct Hosts {
    a: String,
    b: String,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Host A (`10.213.N.1`) and host B (`10.213.N.2`), or why not.
fn two_hosts(n: u32) -> Result<Hosts, String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    let id = std::process::id();
    let hosts = Hosts {
        a: format!("ipclab-a-{id}"),
        b: format!("ipclab-b-{id}"),
    };
    let (va, vb) = (format!("ipa{id}"), format!("ipb{id}"));
    ip(&["netns", "add", &hosts.a])?;
    ip(&["netns", "add", &hosts.b])?;
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
    ip(&["link", "set", &va, "netns", &hosts.a])?;
    ip(&["link", "set", &vb, "netns", &hosts.b])?;
    for (ns, dev, addr) in [
        (&hosts.a, &va, format!("10.213.{n}.1/30")),
        (&hosts.b, &vb, format!("10.213.{n}.2/30")),
    ] {
        ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(hosts)
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(exe()).args(args);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

/// Kill the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tcp_and_udp_cross_between_two_network_namespaces() {
    watchdog(Duration::from_secs(60), || {
        let n = std::process::id() % 250;
        let hosts = match two_hosts(n) {
            Ok(h) => h,
            Err(why) => {
                eprintln!("SKIPPED: cannot make two network namespaces here: {why}");
                return;
            }
        };
        let server_addr = format!("10.213.{n}.1:8008");
        let dir = tempfile::tempdir().unwrap();
        let dir_s = dir.path().to_str().unwrap();
        for t in ["tcp", "udp"] {
            let _server = Server(
                in_ns(
                    &hosts.a,
                    &[
                        "serve",
                        t,
                        "--addr",
                        &server_addr,
                        "--dir",
                        dir_s,
                        "--quiet",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
            );
            // From host B, the server is only reachable over the veth pair.
            let deadline = Instant::now() + Duration::from_secs(10);
            let out = loop {
                let out = run(in_ns(
                    &hosts.b,
                    &[
                        "client",
                        t,
                        "--addr",
                        &server_addr,
                        "--timeout",
                        "1",
                        "ping",
                    ],
                ));
                if out.status.success() || Instant::now() >= deadline {
                    break out;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                out.status.success(),
                "{t}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pong");

            // The same, measured: bench --connect from the other host.
            let out = run(in_ns(
                &hosts.b,
                &[
                    "bench",
                    t,
                    "--connect",
                    &server_addr,
                    "--sizes",
                    "64,64K",
                    "--time",
                    "0.2",
                    "--warmup",
                    "10",
                    "--dir",
                    dir_s,
                ],
            ));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{t}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains(&format!("the server at {server_addr}")),
                "{text}"
            );
            assert!(
                text.lines().any(|l| l.starts_with(t) && l.contains("µs")),
                "{text}"
            );
            // And host A's own loopback is not host B's: 127.0.0.1 there
            // has no server.
            let out = run(in_ns(
                &hosts.b,
                &[
                    "client",
                    t,
                    "--addr",
                    "127.0.0.1:8008",
                    "--timeout",
                    "1",
                    "ping",
                ],
            ));
            assert!(!out.status.success(), "{t} reached across loopback");
        }
        drop(hosts);
    });
}
