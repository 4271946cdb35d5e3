//! Attacks on the shared-memory transports (`shm`, `mmap`, `shm-spin`): a
//! peer that maps the session region as its client and writes what a liar
//! writes — lengths over the area, ring indices past the capacity, garbage
//! in every field — and a client that outlives its session.
//!
//! What each checks, beyond the harness's survival checks: the server ends
//! the lying session (the region is marked closed) instead of going on, and
//! every payload byte it echoes is one the attacker put in its area
//! ([`PATTERN`]): never bytes of the server's own memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Attack;
use crate::common::{Env, exe, payload};
use ipclab::client::Client;
use ipclab::process::ServerProcess;
use ipclab::protocol::{self, Form, kind};
use ipclab::transport::kit::futex::Sem;
use ipclab::transport::region::peer::Raw;
use ipclab::transport::{shm, shm_spin};

/// The attacks on `transport` (`shm`, `mmap` or `shm-spin`).
pub fn attacks(transport: &str) -> Vec<Attack> {
    let a = |name, run: fn(&Env, &ServerProcess)| Attack {
        name,
        run,
        grow_kib: 4096,
    };
    let mut list = if transport == "shm-spin" {
        vec![
            a("ring head past the capacity", spin_forged_head),
            a("ring tail past the head", spin_forged_tail),
        ]
    } else {
        vec![a("chunk lengths over the area", shm_lengths_over_the_area)]
    };
    list.extend([
        a("garbage in every field", garbage_everywhere),
        a(
            "a client outliving its idle session",
            stale_client_after_idle_timeout,
        ),
        a(
            "the session region truncated (in a session, and on offer)",
            truncated_session_region,
        ),
        a("the meeting region truncated", truncated_meeting_region),
        a(
            "closed and server_pid forged in the meeting region",
            forged_liveness_words,
        ),
    ]);
    list
}

/// What the attacker's area holds after its frame header.
const PATTERN: u8 = 0x5c;

fn join(env: &Env, server: &ServerProcess) -> Raw {
    let cfg = server.client_config(&env.cfg);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match Raw::join(env.transport.name(), &cfg) {
            Ok(raw) => return raw,
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{}: cannot join: {e}", env.transport.name()),
        }
    }
}

/// The 64-bit word at `off` of the session region (checked in bounds).
fn u64_at(raw: &Raw, off: usize) -> &AtomicU64 {
    let (base, len) = raw.session();
    assert!(off + 8 <= len && off.is_multiple_of(8));
    unsafe { &*(base.add(off) as *const AtomicU64) }
}

fn u32_at(raw: &Raw, off: usize) -> &AtomicU32 {
    let (base, len) = raw.session();
    assert!(off + 4 <= len && off.is_multiple_of(4));
    unsafe { &*(base.add(off) as *const AtomicU32) }
}

/// An echo frame announcing `announced` bytes, then PATTERN, into `area`.
fn plant_request(raw: &Raw, area: usize, size: usize, announced: usize) {
    let (base, _) = raw.session();
    let mut bytes = vec![PATTERN; size];
    bytes[..protocol::HEADER_LEN].copy_from_slice(&protocol::header(kind::ECHO, announced));
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(area), size) };
}

/// Every DATA reply the server wrote into `[area, area + size)` echoes
/// only PATTERN bytes.
fn echoed_only_what_was_sent(raw: &Raw, area: usize, size: usize, what: &str) {
    let (base, _) = raw.session();
    let bytes = unsafe { std::slice::from_raw_parts(base.add(area), size) }.to_vec();
    let mut at = 0;
    while at + protocol::HEADER_LEN <= size && bytes[at] == protocol::MAGIC {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(size)];
        if bytes[at + 2] == kind::DATA {
            let foreign = body.iter().filter(|&&b| b != PATTERN).count();
            assert_eq!(
                foreign,
                0,
                "{what}: the server echoed {foreign} bytes that were never sent (of {})",
                body.len()
            );
        }
        at += 8 + len;
    }
}

/// The server ends the session within `limit`.
fn ends(raw: &Raw, limit: Duration, what: &str) {
    let until = Instant::now() + limit;
    while !raw.closed() {
        assert!(
            Instant::now() < until,
            "{what}: the server went on with the session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Post the semaphore at `off` of the session region.
fn post(raw: &Raw, off: usize) {
    let (base, len) = raw.session();
    assert!(off + 4 <= len && off.is_multiple_of(4));
    unsafe { &*(base.add(off) as *const Sem) }.post().unwrap();
}

/// shm-spin: the client→server ring's `head` set past `tail + capacity`
/// (and behind the tail): the server must not copy out of its area.
pub fn spin_forged_head(env: &Env, server: &ServerProcess) {
    let (head0, _, _) = shm_spin::layout::fields(0);
    let (area0, cap) = shm_spin::layout::area(0);
    let (area1, _) = shm_spin::layout::area(1);
    for forged in [
        cap as u64 + 1,
        16 * cap as u64,
        u64::MAX,
        1 << 63,
        cap as u64 * 3 + 8,
    ] {
        let raw = join(env, server);
        plant_request(&raw, area0, cap, 1 << 20);
        u64_at(&raw, head0).store(forged, Ordering::SeqCst);
        let what = format!("shm-spin head = {forged}");
        ends(&raw, Duration::from_secs(5), &what);
        echoed_only_what_was_sent(&raw, area1, cap, &what);
    }
}

/// shm-spin: the server→client ring's `tail` (the consumer's, ours) set
/// past the server's head while the server waits for room.
pub fn spin_forged_tail(env: &Env, server: &ServerProcess) {
    let (head0, tail0, _) = shm_spin::layout::fields(0);
    let (head1, tail1, _) = shm_spin::layout::fields(1);
    let (area0, cap) = shm_spin::layout::area(0);
    let (area1, _) = shm_spin::layout::area(1);
    for forged in [u64::MAX, 4 * cap as u64, (cap as u64) << 40] {
        let raw = join(env, server);
        // A real 200 KiB echo request, fed through the ring as a producer.
        let len = 200 * 1024;
        let mut req = protocol::header(kind::ECHO, len).to_vec();
        req.resize(8 + len, PATTERN);
        let (base, _) = raw.session();
        let mut sent = 0usize;
        let until = Instant::now() + Duration::from_secs(10);
        while sent < req.len() && Instant::now() < until {
            let room = cap - (sent - u64_at(&raw, tail0).load(Ordering::SeqCst) as usize);
            let n = room.min(req.len() - sent).min(cap - sent % cap);
            unsafe {
                std::ptr::copy_nonoverlapping(
                    req.as_ptr().add(sent),
                    base.add(area0 + sent % cap),
                    n,
                )
            };
            sent += n;
            u64_at(&raw, head0).store(sent as u64, Ordering::SeqCst);
            // Wake the server if it sleeps on reader_sleeps (two cache lines after head).
            ipclab::transport::kit::futex::wake(u32_at(&raw, shm_spin::layout::fields(0).0 + 256));
            std::thread::sleep(Duration::from_millis(2));
        }
        // The reply fills our ring; we never consume it, but lie about it.
        let until = Instant::now() + Duration::from_secs(5);
        while u64_at(&raw, head1).load(Ordering::SeqCst) < cap as u64 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        u64_at(&raw, tail1).store(forged, Ordering::SeqCst);
        let what = format!("shm-spin tail = {forged}");
        ends(&raw, Duration::from_secs(5), &what);
        echoed_only_what_was_sent(&raw, area1, cap, &what);
    }
}

/// shm, mmap: chunk lengths over the 64 KiB area, after a valid chunk.
pub fn shm_lengths_over_the_area(env: &Env, server: &ServerProcess) {
    let (full0, _, len0) = shm::layout::fields(0);
    let (_, _, len1) = shm::layout::fields(1);
    let (area0, area1, cap) = (shm::layout::area(0), shm::layout::area(1), shm::CAPACITY);
    for forged in [cap as u32 + 1, u32::MAX, 2 * cap as u32] {
        let raw = join(env, server);
        // A valid echo of 100 bytes first: it is answered.
        plant_request(&raw, area0, 108, 100);
        u32_at(&raw, len0).store(108, Ordering::SeqCst);
        post(&raw, full0);
        let until = Instant::now() + Duration::from_secs(5);
        while u32_at(&raw, len1).load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < until, "no answer to a valid chunk");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Then one announced longer than the area.
        plant_request(&raw, area0, cap, 1 << 20);
        u32_at(&raw, len0).store(forged, Ordering::SeqCst);
        post(&raw, full0);
        let what = format!("{} chunk length {forged}", env.transport.name());
        ends(&raw, Duration::from_secs(5), &what);
        echoed_only_what_was_sent(&raw, area1, cap, &what);
    }
}

/// All three: garbage in the session region's header page (the kit's
/// fields, ring indices, sleep words, eof, lengths, shm's semaphore words),
/// then in the words of the meeting region a client writes (the slot, held
/// by "pid 1", alive and never joining; the connect counter).
///
/// The semaphore words included: with glibc's `sem_t` there, garbage in its
/// `private` word made glibc abort the server ("The futex facility returned
/// an unexpected error code").
pub fn garbage_everywhere(env: &Env, server: &ServerProcess) {
    let spin = env.transport.name() == "shm-spin";
    let area1 = if spin {
        shm_spin::layout::area(1).0
    } else {
        shm::layout::area(1)
    };
    let area0 = area1 - 64 * 1024;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..4 {
        let raw = join(env, server);
        plant_request(&raw, area0, 64 * 1024, 1 << 20);
        for off in (0..4096).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = match round {
                0 => x,
                1 => u64::MAX,
                2 => x | (1 << 63),
                _ => 0x0001_0000_0001_0001,
            };
            u64_at(&raw, off).store(v, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(600));
        echoed_only_what_was_sent(&raw, area1, 64 * 1024, "garbage in the header page");
    }
    // The meeting region, mapped as any process of ours could.
    let path = match env.transport.name() {
        "mmap" => server.client_config(&env.cfg).object_path(".mmap"),
        _ => env
            .transport
            .external_objects(&server.client_config(&env.cfg))[0]
            .clone(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut m = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    // Offsets in the kit's header: connect at 20, slot at 24.
    let (connect, slot) = unsafe {
        (
            &*(m.as_mut_ptr().add(20) as *const AtomicU32),
            &*(m.as_mut_ptr().add(24) as *const AtomicU64),
        )
    };
    while slot
        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        assert!(Instant::now() < until, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    connect.fetch_add(12345, Ordering::SeqCst);
    ipclab::transport::kit::futex::wake(connect);
}

/// All three: a client silent past the server's `--idle-timeout` writes
/// again. Its bytes must not reach the next client's session, and it must
/// not be told its echo succeeded.
pub fn stale_client_after_idle_timeout(env: &Env, _server: &ServerProcess) {
    let own = Env::new(env.transport.name());
    let mut cfg = own.cfg.clone();
    cfg.idle_timeout = Duration::from_secs(2);
    let mut server = ServerProcess::spawn(&exe(), own.transport, &cfg, &["--quiet"]).unwrap();
    let ccfg = server.client_config(&cfg);
    let connect = || {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match server.connect(own.transport, &ccfg) {
                Ok(link) => return Client::from_link(link, cfg.max_frame, Form::Binary),
                Err(e) if Instant::now() < until => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{}: no session: {e}", own.transport.name()),
            }
        }
    };
    let secret = payload(3000, 0x5ec);
    for order in ["after the next client came", "before the next client came"] {
        let mut late = connect();
        late.ping().unwrap();
        std::thread::sleep(Duration::from_millis(3200));
        let mut next = None;
        if order.starts_with("after") {
            next = Some(connect());
            next.as_mut().unwrap().ping().unwrap();
        }
        let r = late.echo(&secret);
        assert!(
            r.is_err(),
            "{} ({order}): a client whose session ended was told its echo succeeded",
            own.transport.name()
        );
        let mut next = next.unwrap_or_else(connect);
        let mine = payload(2000, 0xb0b);
        for _ in 0..3 {
            let echo = next.echo(&mine).unwrap();
            assert!(
                echo == &mine[..],
                "{} ({order}): the next client got another session's bytes",
                own.transport.name()
            );
        }
        drop(next);
        drop(late);
    }
    assert!(server.stop().unwrap().success());
    let left: Vec<_> = own
        .transport
        .leftovers(own.dir())
        .into_iter()
        .filter(|l| l.path.as_ref().is_some_and(|p| p.exists()))
        .collect();
    assert!(left.is_empty(), "{}: left {left:?}", own.transport.name());
    assert!(own.leftovers().is_empty(), "{:?}", own.leftovers());
}

/// The paths of the server's meeting region and of the session region it
/// offers to the next client (`<meeting>.session`, for `mmap`
/// `<name>.session.mmap`).
fn region_paths(env: &Env, server: &ServerProcess) -> (PathBuf, PathBuf) {
    let cfg = server.client_config(&env.cfg);
    match env.transport.name() {
        "mmap" => (cfg.object_path(".mmap"), cfg.object_path(".session.mmap")),
        _ => {
            let meeting = env.transport.external_objects(&cfg)[0].clone();
            let mut session = meeting.clone().into_os_string();
            session.push(".session");
            (meeting, session.into())
        }
    }
}

fn open_rw(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Join the server's session as its client, holding a descriptor of the
/// session region too (opened by its name before joining; the same object,
/// checked by a marker written through the mapping and read through the
/// descriptor).
fn join_with_file(env: &Env, server: &ServerProcess) -> (Raw, File) {
    let (_, session) = region_paths(env, server);
    for _ in 0..50 {
        let Ok(file) = File::options().read(true).write(true).open(&session) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let raw = join(env, server);
        // An unused word of the kit's header (below the transport's, at 256).
        u32_at(&raw, MARK_AT).store(0x7275_6e63, Ordering::SeqCst);
        let mut word = [0u8; 4];
        // Not the region joined (one being replaced): try again.
        if file.read_exact_at(&mut word, MARK_AT as u64).is_ok()
            && u32::from_le_bytes(word) == 0x7275_6e63
        {
            return (raw, file);
        }
    }
    panic!(
        "{}: could not join the offered session region",
        env.transport.name()
    );
}

const MARK_AT: usize = 200;

/// Wake whoever sleeps in the session: shm — post the client → server
/// `full` semaphore (its word is in the header page); shm-spin — publish a
/// `head` of one frame header and wake the server's reader.
fn wake_the_server(env: &Env, raw: &Raw) {
    if env.transport.name() == "shm-spin" {
        let (head0, _, _) = shm_spin::layout::fields(0);
        u64_at(raw, head0).store(protocol::HEADER_LEN as u64, Ordering::SeqCst);
        ipclab::transport::kit::futex::wake(u32_at(raw, head0 + 256));
    } else {
        let (full0, _, len0) = shm::layout::fields(0);
        u32_at(raw, len0).store(protocol::HEADER_LEN as u32, Ordering::SeqCst);
        post(raw, full0);
    }
}

/// All three: `ftruncate(2)` of the session region in a session, and of
/// the region offered to the next client before anyone joined it. A page
/// touched past the new end of a shared file raises SIGBUS, which kills
/// the process that touches it: the server must survive (the harness
/// checks it, and that it serves the next client), its session must end.
///
/// In a session: to nothing while the server waits for a request (its next
/// look at its semaphore or sleep word is past the end), and to the header
/// page alone before a request is announced (the server copies from a
/// data area past the end). Between sessions: truncated by someone who
/// never claims the slot (the server must offer a fresh region before the
/// next client comes); and by an attacker that claims the slot
/// in the meeting region, writes its pid into the offered region as a
/// joining client does, truncates the region to nothing and rings the
/// meeting's `connect` word (the server reads the region to check the
/// joiner), then leaves.
pub fn truncated_session_region(env: &Env, server: &ServerProcess) {
    // In a session, to nothing.
    let (raw, file) = join_with_file(env, server);
    file.set_len(0).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    drop(raw);
    // In a session, to the header page: the request lies past the end.
    let (raw, file) = join_with_file(env, server);
    file.set_len(4096).unwrap();
    wake_the_server(env, &raw);
    std::thread::sleep(Duration::from_millis(800));
    drop(raw);
    // The region on offer, truncated by someone who never claims the slot:
    // the server replaces it on its own, and the next client is served at
    // its first attempt (not only after one has failed on it and left).
    let (meeting, session) = region_paths(env, server);
    let until = Instant::now() + Duration::from_secs(10);
    let offered = loop {
        // Wait for the region of the next session (the last one's client
        // has just left).
        if let Ok(f) = File::options().read(true).write(true).open(&session)
            && f.metadata().unwrap().len() > 4096
        {
            break f;
        }
        assert!(Instant::now() < until, "no region on offer");
        std::thread::sleep(Duration::from_millis(20));
    };
    offered.set_len(0).unwrap();
    drop(offered);
    std::thread::sleep(Duration::from_millis(800));
    let cfg = server.client_config(&env.cfg);
    let mut first = Client::from_link(
        server
            .connect(env.transport, &cfg)
            .unwrap_or_else(|e| panic!("after the region on offer was truncated: {e}")),
        cfg.max_frame,
        Form::Binary,
    );
    first
        .ping()
        .unwrap_or_else(|e| panic!("after the region on offer was truncated: {e}"));
    drop(first);
    // The region on offer, truncated by a "client" that claimed the slot
    // and rings the server.
    let meeting = open_rw(&meeting);
    let m = unsafe { memmap2::MmapMut::map_mut(&meeting) }.unwrap();
    let (connect, slot) = unsafe {
        (
            &*(m.as_ptr().add(20) as *const AtomicU32),
            &*(m.as_ptr().add(24) as *const AtomicU64),
        )
    };
    let me = std::process::id() as u64;
    let until = Instant::now() + Duration::from_secs(10);
    while slot
        .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        assert!(Instant::now() < until, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let offered = open_rw(&session);
    let s = unsafe { memmap2::MmapMut::map_mut(&offered) }.unwrap();
    // client_pid, at 40 in the kit's header.
    unsafe { &*(s.as_ptr().add(40) as *const AtomicU32) }.store(me as u32, Ordering::SeqCst);
    drop(s);
    offered.set_len(0).unwrap();
    connect.fetch_add(1, Ordering::SeqCst);
    ipclab::transport::kit::futex::wake(connect);
    std::thread::sleep(Duration::from_millis(800));
    // Leave, as a client does.
    let _ = slot.compare_exchange(me, me | 1 << 32, Ordering::SeqCst, Ordering::SeqCst);
}

/// All three: `ftruncate(2)` of the meeting region (the server reads its
/// `connect` word and slot on every turn of its accept loop). The server
/// must survive and serve the next client.
pub fn truncated_meeting_region(env: &Env, server: &ServerProcess) {
    let (meeting, _) = region_paths(env, server);
    open_rw(&meeting).set_len(0).unwrap();
    std::thread::sleep(Duration::from_millis(800));
}

/// A client served now, through `server`'s transport, or panic saying
/// `after` what it was not.
fn served(env: &Env, server: &ServerProcess, after: &str) {
    let cfg = server.client_config(&env.cfg);
    let link = server
        .connect(env.transport, &cfg)
        .unwrap_or_else(|e| panic!("{}: after {after}: {e}", env.transport.name()));
    let mut c = Client::from_link(link, cfg.max_frame, Form::Binary);
    c.ping()
        .unwrap_or_else(|e| panic!("{}: after {after}: {e}", env.transport.name()));
}

/// All three: a peer writes `closed = 1` (offset 16) and a dead pid into
/// `server_pid` (offset 12) of the meeting region, which every client maps
/// read-write. Liveness is judged by the server's pid file in the 0700
/// runtime directory, not by these words: (a) the next client is served;
/// (b) `ipclab clean --force` removes nothing of the live server, which
/// still serves; (c) a second `serve` on the same name fails with "already
/// in use" and does not disturb the first.
pub fn forged_liveness_words(env: &Env, server: &ServerProcess) {
    let t = env.transport.name();
    let (meeting, _) = region_paths(env, server);
    // A pid that is surely gone: a child of ours, reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let forge = || {
        let f = open_rw(&meeting);
        f.write_all_at(&dead.to_ne_bytes(), 12).unwrap();
        f.write_all_at(&1u32.to_ne_bytes(), 16).unwrap();
    };
    forge();
    // (a)
    served(env, server, "closed and server_pid were forged");
    // (b)
    forge();
    let out = std::process::Command::new(exe())
        .args(["clean", "--force", "--dir"])
        .arg(&env.cfg.dir)
        .output()
        .unwrap();
    assert!(
        meeting.exists(),
        "{t}: `ipclab clean --force` removed the live server's meeting region {}: {}",
        meeting.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    served(env, server, "the forged words and `ipclab clean --force`");
    // (c)
    forge();
    let cfg = server.client_config(&env.cfg);
    let mut second = std::process::Command::new(exe())
        .arg("serve")
        .arg(t)
        .args(ipclab::process::serve_args(&cfg))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= until {
            // It started: stop it (SIGTERM: it removes what it made).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(second.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let s = second.wait().unwrap();
            panic!(
                "{t}: a second server started on the name of a live one whose words were forged ({s})"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        !status.success() && err.contains("already in use"),
        "{t}: a second server on the name of a live one whose words were forged: {status} {err}"
    );
    assert!(
        meeting.exists(),
        "{t}: the second server removed the live server's meeting region"
    );
    served(env, server, "a second `serve` on the same name");
}
