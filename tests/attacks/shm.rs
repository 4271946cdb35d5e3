//! Attacks on the shared-memory transports (`shm`, `mmap`, `shm-spin`): a
//! peer that maps the session region as its client and writes what a liar
//! writes — lengths over the area, ring indices past the capacity, garbage
//! in every field — and a client that outlives its session.
//!
//! What each checks, beyond the harness's survival checks: the server ends
//! the lying session (the region is marked closed) instead of going on, and
//! every payload byte it echoes is one the attacker put in its area
//! ([`PATTERN`]): never bytes of the server's own memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Env, exe, payload};
use ipclab::client::Client;
use ipclab::process::ServerProcess;
use ipclab::protocol::{self, Form, kind};
use ipclab::transport::region::peer::Raw;
use ipclab::transport::{shm, shm_spin};

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

fn futex_wake(word: &AtomicU32) {
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0,
        )
    };
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
            futex_wake(u32_at(&raw, shm_spin::layout::fields(0).0 + 256));
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
        let (base, _) = raw.session();
        let post = |off: usize| unsafe { libc::sem_post(base.add(off) as *mut libc::sem_t) };
        // A valid echo of 100 bytes first: it is answered.
        plant_request(&raw, area0, 108, 100);
        u32_at(&raw, len0).store(108, Ordering::SeqCst);
        assert_eq!(post(full0), 0);
        let until = Instant::now() + Duration::from_secs(5);
        while u32_at(&raw, len1).load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < until, "no answer to a valid chunk");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Then one announced longer than the area.
        plant_request(&raw, area0, cap, 1 << 20);
        u32_at(&raw, len0).store(forged, Ordering::SeqCst);
        assert_eq!(post(full0), 0);
        let what = format!("{} chunk length {forged}", env.transport.name());
        ends(&raw, Duration::from_secs(5), &what);
        echoed_only_what_was_sent(&raw, area1, cap, &what);
    }
}

/// All three: garbage in the session region's header page (the kit's
/// fields, ring indices, sleep words, eof, lengths), then in the words of
/// the meeting region a client writes (the slot, held by "pid 1", alive and
/// never joining; the connect counter).
///
/// Not the bytes of shm's `sem_t`s: glibc aborts the process ("The futex
/// facility returned an unexpected error code") on a semaphore whose
/// `private` word is garbage — an open defect of `src/sem.rs` (glibc
/// semaphores cannot live in memory an untrusted peer writes), left to a
/// change of that file.
pub fn garbage_everywhere(env: &Env, server: &ServerProcess) {
    let spin = env.transport.name() == "shm-spin";
    let area1 = if spin {
        shm_spin::layout::area(1).0
    } else {
        shm::layout::area(1)
    };
    let area0 = area1 - 64 * 1024;
    let sems: Vec<(usize, usize)> = if spin {
        Vec::new()
    } else {
        let (f0, _, l0) = shm::layout::fields(0);
        let (_, _, l1) = shm::layout::fields(1);
        vec![(f0, l0), (l0 + 8, l1)]
            .into_iter()
            .map(|(a, b)| (a & !7, b & !7))
            .collect()
    };
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..4 {
        let raw = join(env, server);
        plant_request(&raw, area0, 64 * 1024, 1 << 20);
        for off in (0..4096).step_by(8) {
            if sems.iter().any(|&(a, b)| off >= a && off < b) {
                continue;
            }
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
    futex_wake(connect);
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
