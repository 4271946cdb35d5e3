//! Attacks on the `eventfd` transport by a client that speaks its
//! handshake itself: it connects to the socket file, hands over
//! descriptors of its own choosing with `SCM_RIGHTS`, and writes what it
//! likes into the shared page and the counters.
//!
//! A client the server must refuse is expected to get an `ERR …` line on
//! the socket saying why, then the end of the connection — within seconds,
//! not at the server's idle timeout: a server that keeps such a client
//! accepted what it should not have. The harness then checks the server's
//! descriptors are back to the baseline.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipclab::process::ServerProcess;
use ipclab::protocol::{self, kind};
use ipclab::transport::eventfd::{CAPACITY, DATA_OFFSET, FDS, REGION, SUFFIX};
use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use super::Attack;
use crate::common::{Env, payload, proc_stat};

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "an unsealed region, truncated under the server",
            run: unsealed_region_truncated,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "a sealed region, resized after the handshake",
            run: sealed_region_resized,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "eight descriptors instead of five (and four, and none)",
            run: wrong_number_of_descriptors,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "descriptors of the wrong kind",
            run: wrong_kinds_of_descriptors,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "garbage lengths and flags in the shared page",
            run: garbage_in_the_shared_page,
            grow_kib: 8 * 1024,
        },
        Attack {
            name: "an eventfd counter filled to its maximum",
            run: counter_filled,
            grow_kib: 8 * 1024,
        },
    ]
}

/// Positions of the four eventfds, in the order a client hands them over
/// after the region.
const C2S_FULL: usize = 0;
const S2C_FULL: usize = 2;
const S2C_EMPTY: usize = 3;
/// How long a refused client may wait for the server to say so.
const REFUSAL: Duration = Duration::from_secs(10);

fn connect(env: &Env) -> UnixStream {
    UnixStream::connect(env.cfg.object_path(SUFFIX)).expect("connect to the eventfd socket")
}

/// A memfd of `size` bytes carrying `seals`.
fn region(seals: SealFlag, size: usize) -> OwnedFd {
    let fd = memfd_create(
        "ipclab-attack",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    nix::unistd::ftruncate(&fd, size as libc::off_t).unwrap();
    if !seals.is_empty() {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    fd
}

/// The seals an ipclab client puts on its region.
fn proper_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

fn eventfd(flags: EfdFlags) -> OwnedFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | flags)
        .unwrap()
        .into()
}

fn eventfds() -> [OwnedFd; 4] {
    std::array::from_fn(|_| eventfd(EfdFlags::empty()))
}

/// Send the handshake byte with `fds` attached.
fn hand_over(sock: &UnixStream, fds: &[BorrowedFd<'_>]) {
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(b"E")],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg with SCM_RIGHTS");
}

fn map(fd: &OwnedFd) -> MmapRaw {
    MmapOptions::new()
        .len(REGION)
        .map_raw(&std::fs::File::from(fd.try_clone().unwrap()))
        .unwrap()
}

/// Word `i` of direction `dir`'s line in the header page (0 length,
/// 1 slot busy, 2 sender waits), as the transport lays it out.
fn word(map: &MmapRaw, dir: usize, i: usize) -> &AtomicU32 {
    assert!(dir < 2 && i < 3);
    // SAFETY: within the mapping, aligned; used atomically only.
    unsafe { &*(map.as_ptr().add(dir * 64 + i * 4) as *const AtomicU32) }
}

fn signal(efd: &OwnedFd, value: u64) {
    nix::unistd::write(efd, &value.to_ne_bytes()).expect("eventfd write");
}

/// Put `bytes` in the client-to-server slot and say so, as a client does.
fn send_chunk(map: &MmapRaw, efds: &[OwnedFd; 4], bytes: &[u8]) {
    assert!(bytes.len() <= CAPACITY);
    // SAFETY: the client's own area, which the server reads only after
    // the signal below.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            map.as_mut_ptr().add(DATA_OFFSET),
            bytes.len(),
        )
    };
    word(map, 0, 0).store(bytes.len() as u32, Ordering::SeqCst);
    word(map, 0, 1).store(1, Ordering::SeqCst);
    signal(&efds[C2S_FULL], 1);
}

/// The server's next chunk, within 5 s.
fn recv_chunk(map: &MmapRaw, efds: &[OwnedFd; 4]) -> Vec<u8> {
    let mut fds = [PollFd::new(efds[S2C_FULL].as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
    assert_eq!(n, 1, "eventfd: the server sent no reply within 5 s");
    let mut v = [0u8; 8];
    nix::unistd::read(&efds[S2C_FULL], &mut v).unwrap();
    let len = word(map, 1, 0).load(Ordering::SeqCst) as usize;
    assert!(
        len <= CAPACITY,
        "eventfd: the server wrote a length of {len}"
    );
    let mut out = vec![0u8; len];
    // SAFETY: the server's area, which it does not touch until we free it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            map.as_ptr().add(DATA_OFFSET + CAPACITY),
            out.as_mut_ptr(),
            len,
        )
    };
    word(map, 1, 1).store(0, Ordering::SeqCst);
    if word(map, 1, 2).load(Ordering::SeqCst) != 0 {
        signal(&efds[S2C_EMPTY], 1);
    }
    out
}

/// A client made as an ipclab client makes itself, through the socket.
struct Raw {
    sock: UnixStream,
    memfd: OwnedFd,
    map: MmapRaw,
    efds: [OwnedFd; 4],
}

impl Raw {
    fn connect(env: &Env) -> Raw {
        let sock = connect(env);
        let memfd = region(proper_seals(), REGION);
        let efds = eventfds();
        let mut fds = vec![memfd.as_fd()];
        fds.extend(efds.iter().map(|e| e.as_fd()));
        hand_over(&sock, &fds);
        let map = map(&memfd);
        Raw {
            sock,
            memfd,
            map,
            efds,
        }
    }

    /// Echo `data` over the shared region; the reply must be exactly it.
    fn echo(&self, data: &[u8]) {
        let mut req = protocol::header(kind::ECHO, data.len()).to_vec();
        req.extend_from_slice(data);
        send_chunk(&self.map, &self.efds, &req);
        let mut want = protocol::header(kind::DATA, data.len()).to_vec();
        want.extend_from_slice(data);
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.extend(recv_chunk(&self.map, &self.efds));
        }
        assert_eq!(got, want, "eventfd: the echo over the region differs");
    }
}

/// The server must end this connection within [`REFUSAL`], having said
/// `ERR …` with `why` in it; it must still be alive.
fn turned_away(mut sock: UnixStream, server: &ServerProcess, what: &str, why: &str) {
    let said = ended(&mut sock, server, what);
    assert!(
        said.starts_with("ERR ") && said.contains(why),
        "eventfd: the server did not tell a client that {what} why (expected ERR … {why:?}; it said {said:?})"
    );
}

/// Wait for the server to close `sock` (within [`REFUSAL`]); what it said
/// before. Fails if it died or kept the connection.
fn ended(sock: &mut UnixStream, server: &ServerProcess, what: &str) -> String {
    sock.set_read_timeout(Some(REFUSAL)).unwrap();
    let started = Instant::now();
    let mut said = Vec::new();
    let r = sock.read_to_end(&mut said);
    assert!(
        proc_stat::alive(server.pid()),
        "eventfd: the server died under a client that {what}"
    );
    match r {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!(
            "eventfd: the server kept a client that {what} for {:?}: it should have ended the session",
            started.elapsed()
        ),
        Err(e) => panic!("eventfd: reading the server's answer: {e}"),
    }
    String::from_utf8_lossy(&said).into_owned()
}

/// The region is the right size but unsealed. A server that accepts it
/// (it has not turned the client away within a second) maps it; then the
/// client shrinks it to nothing and signals the request waiting in its
/// slot: the server's first look at the header page would kill it with
/// SIGBUS — and every other client's session with it.
fn unsealed_region_truncated(env: &Env, server: &ServerProcess) {
    let sock = connect(env);
    let memfd = region(SealFlag::empty(), REGION);
    let efds = eventfds();
    let map = map(&memfd);
    // A valid request waits in the slot, so the server reads the page.
    let ping = protocol::header(kind::PING, 0);
    // SAFETY: our own mapping, still full size.
    unsafe { std::ptr::copy_nonoverlapping(ping.as_ptr(), map.as_mut_ptr().add(DATA_OFFSET), 8) };
    word(&map, 0, 0).store(8, Ordering::SeqCst);
    word(&map, 0, 1).store(1, Ordering::SeqCst);
    drop(map);
    let mut fds = vec![memfd.as_fd()];
    fds.extend(efds.iter().map(|e| e.as_fd()));
    hand_over(&sock, &fds);
    let mut watch = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    if poll(&mut watch, PollTimeout::from(1000u16)).unwrap() == 0 {
        // Accepted: the size it checked (if any) is no longer the size.
        nix::unistd::ftruncate(&memfd, 0).expect("an unsealed memfd can be truncated");
        signal(&efds[C2S_FULL], 1);
    }
    turned_away(sock, server, "handed over an unsealed region", "not sealed");
}

/// A proper client's region cannot change size once handed over — not
/// even by the client that made it — and its session goes on serving.
fn sealed_region_resized(env: &Env, server: &ServerProcess) {
    let raw = Raw::connect(env);
    raw.echo(&payload(1000, 1));
    for size in [0, 4096, REGION + 4096, 2 * REGION] {
        assert_eq!(
            nix::unistd::ftruncate(&raw.memfd, size as libc::off_t),
            Err(Errno::EPERM),
            "eventfd: a sealed region could be resized to {size} bytes"
        );
    }
    assert_eq!(
        fcntl(&raw.memfd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)),
        Err(Errno::EPERM),
        "eventfd: a seal could be added to a region sealed with F_SEAL_SEAL"
    );
    raw.echo(&payload(CAPACITY - protocol::HEADER_LEN, 2));
    let Raw { mut sock, .. } = raw;
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = ended(&mut sock, server, "hung up");
}

/// Eight descriptors where five belong: the kernel installs what fits the
/// server's control buffer (six) and drops the rest, flagging
/// `MSG_CTRUNC`; every one that arrived must be closed again. Four, and
/// none at all, are refused too.
fn wrong_number_of_descriptors(env: &Env, server: &ServerProcess) {
    let memfd = region(proper_seals(), REGION);
    let extra: Vec<OwnedFd> = (0..7).map(|_| eventfd(EfdFlags::empty())).collect();
    for n in [8, FDS - 1] {
        let sock = connect(env);
        let mut fds = vec![memfd.as_fd()];
        fds.extend(extra.iter().take(n - 1).map(|e| e.as_fd()));
        hand_over(&sock, &fds);
        turned_away(
            sock,
            server,
            &format!("sent {n} descriptors"),
            "descriptors where a client sends 5",
        );
    }
    let mut sock = connect(env);
    sock.write_all(b"E").unwrap();
    turned_away(sock, server, "sent no descriptors", "sent 0 descriptors");
}

/// Each descriptor must be what its place says: an eventfd (in blocking
/// mode) where an eventfd goes, a sealed memfd of the right size, not
/// sealed against writing, where the region goes.
fn wrong_kinds_of_descriptors(env: &Env, server: &ServerProcess) {
    let sealed = region(proper_seals(), REGION);
    // A pipe in each eventfd's place.
    for place in 0..4 {
        let (r, w) = nix::unistd::pipe().unwrap();
        let efds = eventfds();
        let mut fds = vec![sealed.as_fd()];
        fds.extend(efds.iter().map(|e| e.as_fd()));
        fds[1 + place] = if place % 2 == 0 { r.as_fd() } else { w.as_fd() };
        let sock = connect(env);
        hand_over(&sock, &fds);
        turned_away(
            sock,
            server,
            &format!("handed over a pipe as eventfd {place}"),
            "not an eventfd",
        );
    }
    // A non-blocking eventfd: every wait on it would fail at once.
    {
        let efds = eventfds();
        let nonblocking = eventfd(EfdFlags::EFD_NONBLOCK);
        let mut fds = vec![sealed.as_fd()];
        fds.extend(efds.iter().map(|e| e.as_fd()));
        fds[2] = nonblocking.as_fd();
        let sock = connect(env);
        hand_over(&sock, &fds);
        turned_away(
            sock,
            server,
            "handed over a non-blocking eventfd",
            "non-blocking",
        );
    }
    // The region itself where an eventfd goes.
    {
        let efds = eventfds();
        let other = region(proper_seals(), REGION);
        let mut fds = vec![sealed.as_fd()];
        fds.extend(efds.iter().map(|e| e.as_fd()));
        fds[1] = other.as_fd();
        let sock = connect(env);
        hand_over(&sock, &fds);
        turned_away(
            sock,
            server,
            "handed over a memfd as an eventfd",
            "not an eventfd",
        );
    }
    // Wrong regions: a regular file of the right size (unlinked), an
    // eventfd, a sealed memfd of the wrong size, one sealed against writing.
    let file = tempfile::tempfile_in(env.dir()).unwrap();
    file.set_len(REGION as u64).unwrap();
    let file = OwnedFd::from(file);
    let not_a_region = eventfd(EfdFlags::empty());
    let small = region(proper_seals(), 4096);
    let write_sealed = region(proper_seals() - SealFlag::F_SEAL_SEAL, REGION);
    fcntl(
        &write_sealed,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL),
    )
    .unwrap();
    for (fd, what, why) in [
        (&file, "a regular file", "region"),
        (&not_a_region, "an eventfd", "region"),
        (&small, "a 4096-byte memfd", "4096 bytes long"),
        (
            &write_sealed,
            "a write-sealed memfd",
            "sealed against writing",
        ),
    ] {
        let efds = eventfds();
        let mut fds = vec![fd.as_fd()];
        fds.extend(efds.iter().map(|e| e.as_fd()));
        let sock = connect(env);
        hand_over(&sock, &fds);
        turned_away(
            sock,
            server,
            &format!("handed over {what} as its region"),
            why,
        );
    }
}

/// A proper handshake, then lies in the header page: chunk lengths past a
/// slot's end (which a server that clamped or trusted them would read
/// past, or treat as data never sent), and a "slot busy" flag that never
/// clears (the server may wait for its slot only until its timeout).
fn garbage_in_the_shared_page(env: &Env, server: &ServerProcess) {
    for len in [CAPACITY as u32 + 1, 0x8000_0000, u32::MAX] {
        let raw = Raw::connect(env);
        raw.echo(b"before the lie");
        word(&raw.map, 0, 0).store(len, Ordering::SeqCst);
        word(&raw.map, 0, 1).store(1, Ordering::SeqCst);
        signal(&raw.efds[C2S_FULL], 1);
        turned_away(
            raw.sock,
            server,
            &format!("wrote a chunk length of {len}"),
            "chunk length",
        );
    }
    // The server's slot never frees: its reply cannot go out.
    let raw = Raw::connect(env);
    word(&raw.map, 1, 1).store(0xdead_beef, Ordering::SeqCst);
    let ping = protocol::header(kind::PING, 0);
    send_chunk(&raw.map, &raw.efds, &ping);
    let Raw { mut sock, .. } = raw;
    let _ = ended(&mut sock, server, "never freed the server's slot");
}

/// The counter the server signals a reply on, filled to its maximum
/// (0xffff_ffff_ffff_fffe) by the client that shares it: the server's
/// `write(2)` of 1 would block for ever. It must give up within its
/// timeout and end the session, with the client still connected.
fn counter_filled(env: &Env, server: &ServerProcess) {
    let raw = Raw::connect(env);
    raw.echo(b"before the lie");
    signal(&raw.efds[S2C_FULL], u64::MAX - 1);
    let ping = protocol::header(kind::PING, 0);
    send_chunk(&raw.map, &raw.efds, &ping);
    let Raw { mut sock, .. } = raw;
    let _ = ended(&mut sock, server, "filled the server's reply counter");
}
