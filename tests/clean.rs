//! `ipclab clean`: what SIGKILLed servers (and clients) of every transport
//! leave behind is found and removed; a live server's objects, a foreign
//! file and a foreign SysV queue are left alone.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Env, exe, watchdog};
use ipclab::inspect::system::sysv_objects;
use ipclab::process::{ServerProcess, client_args};
use ipclab::protocol::Form;
use ipclab::transport::{self, Config};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

/// A real `ipclab client` process that has had one round trip and now
/// waits on its stdin, holding whatever a client holds.
fn waiting_client(t: &str, cfg: &Config) -> Child {
    let mut c = Command::new(exe())
        .arg("client")
        .arg(t)
        .args(client_args(cfg))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(c.stdin.as_mut().unwrap(), "ping").unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "pong", "{t} client");
    c
}

fn clean(dir: &std::path::Path, force: bool) -> Vec<Value> {
    let mut cmd = Command::new(exe());
    cmd.args(["clean", "--json", "--dir"]).arg(dir);
    if force {
        cmd.arg("--force");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A SysV queue that is not ipclab's, removed when the test ends (even by
/// a panic).
struct ForeignQueue(i32);

impl ForeignQueue {
    fn new() -> ForeignQueue {
        // SAFETY: plain msgget; a queue of nobody's key.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0);
        ForeignQueue(id)
    }
}

impl Drop for ForeignQueue {
    fn drop(&mut self) {
        // SAFETY: our own queue.
        unsafe { libc::msgctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// Runs `ipclab clean --force` on the directory when dropped (also when a
/// failed assertion unwinds).
struct Sweep(std::path::PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        let _ = Command::new(exe())
            .args(["clean", "--force", "--dir"])
            .arg(&self.0)
            .stdout(Stdio::null())
            .output();
    }
}

#[test]
fn removes_what_killed_servers_left_and_nothing_else() {
    watchdog(LIMIT, || {
        // One runtime directory shared by every transport's servers.
        let base = Env::new("unix");
        let dir = base.dir().to_path_buf();
        let foreign = dir.join("notes.txt");
        std::fs::write(&foreign, b"a student's notes").unwrap();
        // Whatever happens below, the dead servers' objects outside the
        // directory do not outlive the test.
        let _sweep = Sweep(dir.clone());
        let foreign_queue = ForeignQueue::new();
        let foreign_q = foreign_queue.0;

        let mut live: Vec<(ServerProcess, Env)> = Vec::new();
        let mut dead_keys = Vec::new();
        let mut dead_external = Vec::new();
        for t in transport::all()
            .iter()
            .filter(|t| !t.capabilities().inherited)
        {
            let mut env = Env::new(t.name());
            env.cfg.dir = dir.clone();
            env.cfg.name = format!("dead-{}", t.name());
            let mut server = env.server();
            let ccfg = server.client_config(&env.cfg);
            let mut client = waiting_client(t.name(), &ccfg);
            dead_keys.extend(t.sysv_keys(&env.cfg));
            dead_external.extend(t.external_objects(&env.cfg));
            server.kill().unwrap();
            client.kill().unwrap();
            client.wait().unwrap();

            let mut env = Env::new(t.name());
            env.cfg.dir = dir.clone();
            env.cfg.name = format!("live-{}", t.name());
            live.push((env.server(), env));
        }

        let gone = {
            let mut c = Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let planted = dir.join(format!("dead-fifo.{gone}-0.reply"));
        nix::unistd::mkfifo(
            &planted,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();

        // Without --force: listed, nothing removed.
        let before = std::fs::read_dir(&dir).unwrap().count();
        let found = clean(&dir, false);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before);
        let stale: Vec<&Value> = found.iter().filter(|l| l["verdict"] == "stale").collect();
        // The killed fifo client left no private FIFO (the server removes
        // their names once both ends are open); one left by a client killed
        // before that — planted here, with the pid of a process that is
        // gone — is found by the pid in its name, and it is the only one.
        let private = |l: &Value| {
            let o = l["object"].as_str().unwrap();
            o.contains("reply FIFO") || o.contains("request FIFO")
        };
        let planted_found: Vec<&&Value> = stale.iter().filter(|l| private(l)).collect();
        assert_eq!(planted_found.len(), 1, "{found:#?}");
        assert!(
            planted_found[0]["object"]
                .as_str()
                .unwrap()
                .ends_with(planted.to_str().unwrap()),
            "the planted reply FIFO of a dead client: {found:#?}"
        );
        let stale: Vec<&Value> = stale.into_iter().filter(|l| !private(l)).collect();
        for l in &stale {
            // The object, or (for a SysV queue) the key file it came from.
            let named = format!("{} {}", l["object"], l["why"]);
            assert!(named.contains("dead-"), "{l:#}");
        }
        for t in [
            "fifo",
            "msgq",
            "posix-mq",
            "shm",
            "mmap",
            "shm-spin",
            "eventfd",
            "signal",
            "flock",
            "unix",
            "unix-seqpacket",
            "unix-dgram",
        ] {
            assert!(
                stale.iter().any(|l| l["transport"] == t),
                "nothing stale found for {t}: {found:#?}"
            );
        }
        // With --force: the dead servers' objects are gone.
        let cleaned = clean(&dir, true);
        assert!(
            cleaned.iter().all(|l| l["result"] != "stale"),
            "{cleaned:#?}"
        );
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("dead-"), "{name} was left behind");
        }
        for p in &dead_external {
            assert!(!p.exists(), "{} was left behind", p.display());
        }
        for (kind, key) in &dead_keys {
            assert!(
                !sysv_objects(kind).iter().any(|o| o.key == *key),
                "SysV {kind} key {key:#x} was left behind"
            );
        }

        // Everything else is untouched, and the live servers still serve.
        assert_eq!(std::fs::read(&foreign).unwrap(), b"a student's notes");
        assert!(
            sysv_objects("msg").iter().any(|o| o.id == foreign_q),
            "the foreign queue was removed"
        );
        for (server, env) in &live {
            let mut c = env.client(server, Form::Binary);
            assert!(c.ping().is_ok(), "{} live server", env.transport.name());
            assert!(
                cleaned.iter().any(|l| l["verdict"] == "live"
                    && l["object"].as_str().unwrap().contains(&env.cfg.name))
                    || env.transport.leftovers(&dir).is_empty(),
                "{}: {cleaned:#?}",
                env.transport.name()
            );
        }
        for (mut server, _) in live {
            assert!(server.stop().unwrap().success());
        }
        std::fs::remove_file(&foreign).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the live servers' objects remain after they stopped"
        );
    });
}

#[test]
fn an_empty_directory_is_fine() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(exe())
            .args(["clean", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("nothing left behind"));
    });
}

/// A name planted in the directory cannot clear the screen or forge a line
/// of `clean`'s report: control characters are printed escaped.
#[test]
fn hostile_names_are_printed_escaped() {
    watchdog(LIMIT, || {
        let dir = tempfile::Builder::new()
            .prefix("ipclab-t")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(dir.path().join("evil\x1b[2J\nSTALE forged.sock"), b"").unwrap();
        let out = Command::new(exe())
            .args(["clean", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.stdout.contains(&0x1b),
            "a raw ESC reached the terminal: {text}"
        );
        assert!(
            text.contains("evil\\x1b[2J\\nSTALE forged.sock"),
            "the planted name is not listed escaped: {text}"
        );
    });
}

/// A client killed after creating its private objects and before the
/// server opened them leaves their names (a FIFO pair, a queue pair). A
/// running server removes its own instance's within seconds, without
/// `clean`; a live client's are left alone.
#[test]
fn a_server_sweeps_what_its_dead_clients_left() {
    watchdog(LIMIT, || {
        let gone = {
            let mut c = Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let me = std::process::id();
        for t in ["fifo", "posix-mq"] {
            let env = Env::new(t);
            let _server = env.server();
            let name = |pid: u32, suffix: &str| match t {
                "fifo" => env.cfg.object_path(&format!(".{pid}-0{suffix}")),
                _ => {
                    let meeting = transport::by_name(t).unwrap().external_objects(&env.cfg);
                    std::path::PathBuf::from(format!("{}.{pid}-0{suffix}", meeting[0].display()))
                }
            };
            let suffixes: &[&str] = match t {
                "fifo" => &[".req", ".reply"],
                _ => &[".req", ".rep"],
            };
            // Planted queues go even if an assertion fails first.
            struct Unplant(Vec<String>);
            impl Drop for Unplant {
                fn drop(&mut self) {
                    for q in &self.0 {
                        let _ = nix::mqueue::mq_unlink(q.as_str());
                    }
                }
            }
            let mut unplant = Unplant(Vec::new());
            let mut planted = Vec::new();
            for pid in [gone, me] {
                for s in suffixes {
                    let path = name(pid, s);
                    match t {
                        "fifo" => nix::unistd::mkfifo(
                            &path,
                            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
                        )
                        .unwrap(),
                        _ => {
                            let q = path.file_name().unwrap().to_str().unwrap();
                            let attr = nix::mqueue::MqAttr::new(0, 2, 64, 0);
                            let fd = nix::mqueue::mq_open(
                                format!("/{q}").as_str(),
                                nix::mqueue::MQ_OFlag::O_CREAT | nix::mqueue::MQ_OFlag::O_RDWR,
                                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
                                Some(&attr),
                            )
                            .unwrap();
                            nix::mqueue::mq_close(fd).unwrap();
                            unplant.0.push(format!("/{q}"));
                        }
                    }
                    planted.push((pid, path));
                }
            }
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while planted.iter().any(|(p, f)| *p == gone && f.exists())
                && std::time::Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            for (pid, path) in &planted {
                if *pid == gone {
                    assert!(
                        !path.exists(),
                        "{t}: {} of a dead client was left",
                        path.display()
                    );
                } else {
                    assert!(
                        path.exists(),
                        "{t}: {} of a live client was removed",
                        path.display()
                    );
                    // (Queues go with `unplant`.)
                    if t == "fifo" {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            }
        }
    });
}
