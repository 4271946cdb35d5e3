//! Security, for every transport in the registry: ipclab never follows a
//! symbolic link planted where it will create an object, never removes or
//! rewrites a file it did not create, creates everything owner-only, and
//! binds network transports to 127.0.0.1 unless told otherwise.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Env, exe, watchdog};
use ipclab::inspect::system::sysv_objects;
use ipclab::process::ServerProcess;
use ipclab::transport::{self, Config, Transport};

/// The files a server of `t` creates when it starts (in the runtime
/// directory and elsewhere), found by starting one.
fn objects_of(t: &'static dyn Transport, env: &Env) -> Vec<PathBuf> {
    let mut server = env.server();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.extend(
        t.external_objects(&env.cfg)
            .into_iter()
            .filter(|p| p.exists()),
    );
    // Every one owner-only, and so are SysV objects.
    for p in &paths {
        let mode = std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
        assert_eq!(
            mode,
            0o600,
            "{}: {} has mode {mode:o}",
            t.name(),
            p.display()
        );
    }
    for (kind, key) in t.sysv_keys(&env.cfg) {
        for o in sysv_objects(kind).iter().filter(|o| o.key == key) {
            assert_eq!(
                o.perms.trim_start_matches('0'),
                "600",
                "{}: {o:?}",
                t.name()
            );
        }
    }
    assert!(server.stop().unwrap().success());
    // /dev/mqueue holds no ordinary files to plant: skip its entries.
    paths.retain(|p| !p.starts_with("/dev/mqueue"));
    paths
}

fn start(env: &Env) -> std::io::Result<ServerProcess> {
    ServerProcess::spawn(&exe(), env.transport, &env.cfg, &["--quiet"])
}

#[test]
fn planted_symlinks_and_foreign_files_survive() {
    watchdog(Duration::from_secs(300), || {
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("precious");
        for t in transport::all()
            .iter()
            .copied()
            .filter(|t| !t.capabilities().inherited)
        {
            let env = Env::new(t.name());
            for path in objects_of(t, &env) {
                // A symbolic link to someone's file, where the object goes.
                std::fs::write(&victim, b"precious").unwrap();
                std::os::unix::fs::symlink(&victim, &path).unwrap();
                let started = start(&env);
                assert!(
                    started.is_err(),
                    "{}: started over a symlink at {}",
                    t.name(),
                    path.display()
                );
                assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{}", t.name());
                assert!(
                    std::fs::symlink_metadata(&path)
                        .unwrap()
                        .file_type()
                        .is_symlink(),
                    "{}: the planted link at {} was removed",
                    t.name(),
                    path.display()
                );
                std::fs::remove_file(&path).unwrap();

                // A file ipclab did not make, at the same place.
                std::fs::write(&path, b"someone else's notes").unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                let started = start(&env);
                assert!(
                    started.is_err(),
                    "{}: started over a foreign file at {}",
                    t.name(),
                    path.display()
                );
                let msg = started.err().unwrap().to_string();
                assert!(!msg.is_empty());
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    b"someone else's notes",
                    "{}: {} was changed ({msg})",
                    t.name(),
                    path.display()
                );
                // And `ipclab clean` leaves it alone too.
                let out = Command::new(exe())
                    .args(["clean", "--force", "--dir"])
                    .arg(env.dir())
                    .output()
                    .unwrap();
                assert!(out.status.success());
                assert!(
                    path.exists(),
                    "{}: clean removed {}",
                    t.name(),
                    path.display()
                );
                std::fs::remove_file(&path).unwrap();
            }
            // With the obstacles gone, the server starts again.
            let mut server = start(&env).unwrap();
            assert!(server.stop().unwrap().success());
        }
    });
}

#[test]
fn network_transports_bind_loopback_by_default() {
    let cfg = Config::default();
    assert!(
        cfg.addr.starts_with("127.0.0.1:"),
        "the default address is {}",
        cfg.addr
    );
    watchdog(Duration::from_secs(60), || {
        for t in transport::all()
            .iter()
            .filter(|t| t.capabilities().crosses_machines)
        {
            let mut env = Env::new(t.name());
            // The default host, on a port of this test's own.
            env.cfg.addr = "127.0.0.1:0".into();
            let server = env.server();
            let bound = server.client_config(&env.cfg).addr;
            assert!(bound.starts_with("127.0.0.1:"), "{}: {bound}", t.name());
        }
    });
}

#[test]
fn same_user_refuses_other_users_by_their_credentials() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    watchdog(Duration::from_secs(60), || {
        // The server runs as `nobody`; this test (root) connects as the
        // other user — root may open any socket file, --same-user refuses it.
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root to run a server as another user");
            return;
        }
        let nobody = 65534;
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("rt");
        std::fs::create_dir(&rt).unwrap();
        std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody)).unwrap();
        std::os::unix::fs::chown(&rt, Some(nobody), Some(nobody)).unwrap();
        let probe = Command::new(exe())
            .arg("--version")
            .uid(nobody)
            .gid(nobody)
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("SKIPPED: nobody cannot run {}", exe().display());
            return;
        }
        for (transport, file) in [("unix", "ipclab.sock"), ("unix-dgram", "ipclab.dgram")] {
            let server = Command::new(exe())
                .args(["serve", transport, "--same-user", "--quiet", "--dir"])
                .arg(&rt)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .uid(nobody)
                .gid(nobody)
                .spawn()
                .unwrap();
            // Killed if an assertion below fails first.
            struct Reaped(std::process::Child);
            impl Drop for Reaped {
                fn drop(&mut self) {
                    let _ = self.0.kill();
                    let _ = self.0.wait();
                }
            }
            let mut server = Reaped(server);
            let sock = rt.join(file);
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while !sock.exists() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(100));
            // Root: refused, told why — on the stream socket as a plain
            // program sees it, on the datagram socket through ipclab's
            // client (a datagram server talks only to clients that greet).
            let got = if transport == "unix" {
                let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(b"ping\n");
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                got
            } else {
                let out = Command::new(exe())
                    .args(["client", transport, "--dir"])
                    .arg(&rt)
                    .arg("ping")
                    .output()
                    .unwrap();
                assert!(!out.status.success(), "{out:?}");
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            };
            assert!(
                got.contains("ERR refused") && got.contains("uid 0"),
                "{transport}: {got:?}"
            );
            // Its own user: served.
            let out = Command::new(exe())
                .args(["client", transport, "--dir"])
                .arg(&rt)
                .arg("ping")
                .uid(nobody)
                .gid(nobody)
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "pong",
                "{out:?}"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(server.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            assert!(server.0.wait().unwrap().success());
            let mut log = String::new();
            server
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            assert!(
                log.contains("refused a client of uid 0"),
                "{transport}: {log}"
            );
        }
    });
}
