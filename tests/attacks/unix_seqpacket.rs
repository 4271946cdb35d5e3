//! Attacks on the `unix-seqpacket` transport: a peer that speaks packets
//! directly, and sends one larger than the server's 64 KiB packets.
//!
//! A packet read into a smaller buffer is cut: the kernel drops its rest.
//! The server must say so (end the session), never hand the framing a
//! stream with a hole in it — a hole that the next packet fills with other
//! bytes, which the server would then echo as if they had been sent there.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use super::Attack;
use crate::common::{Env, payload};
use ipclab::process::ServerProcess;
use ipclab::protocol::{self, HEADER_LEN, kind};

pub fn attacks() -> Vec<Attack> {
    vec![Attack {
        name: "unix-seqpacket: a packet longer than the server's packets",
        run: a_packet_longer_than_the_servers,
        grow_kib: 8 * 1024,
    }]
}

/// The largest packet the transport sends and reads.
pub const PACKET: usize = 64 * 1024;

/// One over-long message and what follows it, sent with `send`; replies
/// read with `recv` (`None`: nothing within its wait; an empty message:
/// the end of the stream).
///
/// The message is one whole echo request of 100 KiB (header and payload
/// in one packet or datagram). If the server reads only its first 64 KiB
/// and goes on, the frame is short of 36 KiB, and the next message — 36
/// KiB of 0xEE — completes it: the echo then carries bytes that were never
/// sent there. Allowed: an error reply, the end of the stream, or the
/// exact echo (a server that reads the whole message).
pub fn over_long_message_is_not_cut_silently(
    transport: &str,
    mut send: impl FnMut(&[u8]) -> nix::Result<usize>,
    mut recv: impl FnMut() -> Option<Vec<u8>>,
) {
    let total = 100 * 1024;
    let sent = payload(total - HEADER_LEN, 11);
    let mut frame = protocol::header(kind::ECHO, sent.len()).to_vec();
    frame.extend_from_slice(&sent);
    send(&frame).unwrap_or_else(|e| panic!("{transport}: sending the 100 KiB message: {e}"));
    // What a server that dropped the rest waits for. Refused by a server
    // that ended the session already: that is the end of the stream (on a
    // datagram socket the refusal also purges what the server sent last).
    match send(&vec![0xEE; total - PACKET]) {
        Ok(_) => {}
        Err(Errno::ECONNREFUSED | Errno::ECONNRESET | Errno::EPIPE) => return,
        Err(e) => panic!("{transport}: sending the rest: {e}"),
    }
    let until = Instant::now() + Duration::from_secs(10);
    let mut reply = Vec::new();
    loop {
        if reply.len() >= HEADER_LEN {
            let (k, len) = (
                reply[2],
                u32::from_le_bytes(reply[4..8].try_into().unwrap()),
            );
            if k != kind::DATA || reply.len() >= HEADER_LEN + len as usize {
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "{transport}: after an over-long message the server neither answered nor \
             ended the session within 10 s ({} bytes of reply)",
            reply.len()
        );
        match recv() {
            Some(m) if m.is_empty() => break, // the end of the stream
            Some(m) => reply.extend_from_slice(&m),
            None => {}
        }
    }
    if reply.len() >= HEADER_LEN && reply[2] == kind::DATA {
        let echoed = &reply[HEADER_LEN..];
        let same = echoed.len() == sent.len() && echoed == &sent[..];
        let filler = echoed.iter().rev().take_while(|&&b| b == 0xEE).count();
        assert!(
            same,
            "{transport}: the server cut a {total}-byte message to its first {PACKET} bytes \
             without a word and echoed {} bytes whose last {filler} are the 0xEE of the \
             next message: bytes lost, and others echoed in their place",
            echoed.len()
        );
    }
}

fn a_packet_longer_than_the_servers(env: &Env, _: &ServerProcess) {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(&env.cfg.object_path(".seqpacket")).unwrap();
    socket::connect(fd.as_raw_fd(), &addr).unwrap();
    socket::setsockopt(&fd, socket::sockopt::SndBuf, &(1 << 20)).unwrap();
    let tv = nix::sys::time::TimeVal::new(0, 200_000);
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv).unwrap();
    socket::setsockopt(&fd, socket::sockopt::SendTimeout, &tv).unwrap();
    let raw = fd.as_raw_fd();
    let mut buf = vec![0u8; 256 * 1024];
    over_long_message_is_not_cut_silently(
        "unix-seqpacket",
        |m| socket::send(raw, m, MsgFlags::MSG_NOSIGNAL),
        || match socket::recv(raw, &mut buf, MsgFlags::empty()) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(Errno::EAGAIN | Errno::EINTR) => None,
            // The server closed with our packet unread: the end, too.
            Err(Errno::ECONNRESET) => Some(Vec::new()),
            Err(e) => panic!("unix-seqpacket: recv: {e}"),
        },
    );
}
