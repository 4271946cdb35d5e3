//! The chunked message link: a byte link over a channel of whole messages.
//!
//! # What it is for
//! Four mechanisms carry *messages*, not a byte stream: a System V message
//! queue (`msgq`), a POSIX message queue (`posix-mq`), a UNIX packet socket
//! (`unix-seqpacket`) and a connected UNIX datagram socket (`unix-dgram`).
//! Each send is one message of at most some size (`msgmax`, the queue's
//! `msgsize`, ipclab's 64 KiB packets), each receive takes one whole
//! message. ipclab's framing ([`crate::conn`]) wants a byte link, so
//! [`MessageLink`] turns the one into the other, the same way for all four:
//!
//! * **Writing.** One `write` or `write_vectored` is one message: the parts
//!   of a protocol message (header and payload) are gathered into one, so a
//!   small round trip is one message each way. A larger write sends its
//!   first `max` bytes and says so; the framing's write loop sends the rest,
//!   message by message. A mechanism that can send parts as they lie
//!   (`writev(2)` on a socket) does, without the copy.
//! * **Reading.** A message is received whole, into the link's buffer — or
//!   straight into the reader's when that has room for any message — and
//!   handed out across as many reads as the reader needs.
//! * **End of stream.** A mechanism without connections does not tell a
//!   receiver that its peer is gone. So an **empty message** means "the
//!   stream ended" (ipclab never sends an empty message otherwise), sent
//!   without waiting when a link is dropped, unless the peer ended first
//!   (or the mechanism tells the peer itself: a packet socket's close). A
//!   read then returns 0, and goes on returning 0.
//! * **Nothing lost.** A message longer than the buffer it is received into
//!   would be *cut*: the kernel drops its rest (`MSG_TRUNC` on a socket).
//!   Every channel reports a message's real length, and a cut one ends the
//!   link with an error instead of handing out a stream with a hole in it.
//!
//! What stays with each mechanism is the [`MessageChannel`]: how to send
//! and receive one message, how long to wait (a bounded wait of its own,
//! see [`crate::sys::interrupt`]), and how to tell that the peer died
//! ([`peer_alive`]). The link is generic over it, so each transport gets
//! its own compiled copy with the channel's calls inlined: no indirect call
//! per message.

use std::io::{self, IoSlice, Read, Write};

/// One message channel of a transport: sends and receives whole messages
/// of at most a fixed size, with the transport's own bounded waits.
pub(crate) trait MessageChannel {
    /// Bytes in front of every message in the link's buffers for the
    /// channel's own use: msgq's `mtype` word, which `msgsnd(2)` and
    /// `msgrcv(2)` want right before the text. 0 for the others.
    const HEAD: usize = 0;

    /// Send one message: `msg[HEAD..]`, 1 byte to the link's maximum.
    /// `msg[..HEAD]` is the channel's to fill.
    fn send(&mut self, msg: &mut [u8]) -> io::Result<()>;

    /// Send one message given in parts (together 1 byte to the maximum)
    /// as they lie, without gathering them first, where the mechanism can
    /// (`write(2)` of one part, `writev(2)` of several). `None`: it cannot,
    /// and the link gathers them for [`send`](Self::send).
    fn send_parts(&mut self, _parts: &[IoSlice<'_>]) -> Option<io::Result<()>> {
        None
    }

    /// Receive the next message into `buf[HEAD..]`, waiting as the
    /// transport bounds it. Returns the message's **real** length, even
    /// when that is more than `buf` had room for (the kernel cut it), or an
    /// error if the mechanism refuses a longer message without telling its
    /// length ([`cut`]).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// The link is dropped and the peer has not ended the stream: tell it,
    /// without waiting, with an empty message — unless the mechanism tells
    /// it itself (the default: nothing to do).
    fn end(&mut self) {}
}

/// A byte link over a [`MessageChannel`]. See the module doc.
pub(crate) struct MessageLink<C: MessageChannel> {
    chan: C,
    /// The largest message, in bytes after the channel's head.
    max: usize,
    /// The last message received (after `HEAD` bytes); `rbuf[C::HEAD..]
    /// [at..len]` is not handed out yet. Allocated when first needed.
    rbuf: Vec<u8>,
    len: usize,
    at: usize,
    /// Where parts are gathered into one message. Allocated when needed.
    sbuf: Vec<u8>,
    /// The peer ended the stream: reads return 0, and we owe it no end.
    ended: bool,
    /// A message was cut: the stream has a hole, every read is an error.
    cut: bool,
}

impl<C: MessageChannel> MessageLink<C> {
    /// A link over `chan`, whose messages carry at most `max` bytes.
    pub(crate) fn new(chan: C, max: usize) -> Self {
        MessageLink {
            chan,
            max: max.max(1),
            rbuf: Vec::new(),
            len: 0,
            at: 0,
            sbuf: Vec::new(),
            ended: false,
            cut: false,
        }
    }

    /// Receive one message into `into` (`HEAD` bytes, then room for the
    /// text); its text length, checked against that room.
    fn take(&mut self, into: &mut [u8]) -> io::Result<usize> {
        if self.cut {
            return Err(cut(None, self.max));
        }
        let n = self.chan.recv(into)?;
        let room = into.len() - C::HEAD;
        if n > room {
            self.cut = true;
            return Err(cut(Some(n), room));
        }
        self.ended = n == 0;
        Ok(n)
    }
}

/// The error for a message longer than the buffer it was received into
/// (`len`: its real length, where the mechanism tells it).
pub(crate) fn cut(len: Option<usize>, room: usize) -> io::Error {
    let what = match len {
        Some(n) => format!("a message of {n} bytes"),
        None => "a message".to_string(),
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "received {what} longer than the {room} bytes this link's messages may have: \
             its rest is lost, so the session ends (is the peer another program?)"
        ),
    )
}

/// The liveness rule of a bounded wait (see [`crate::sys::interrupt::bounded`]):
/// the peer's process still exists. `pid` 0 is a peer we cannot watch (in
/// a pid namespace we do not see): taken as alive. `who` names it.
pub(crate) fn peer_alive(pid: i32, who: &'static str) -> impl Fn() -> io::Result<()> + Copy {
    move || {
        if pid > 0 && !crate::runtime::pid_alive(pid) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the {who} (pid {pid}) died"),
            ));
        }
        Ok(())
    }
}

impl<C: MessageChannel> Read for MessageLink<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.len {
            if self.ended {
                return Ok(0);
            }
            if C::HEAD == 0 && buf.len() >= self.max {
                // Room for any message: straight into the reader's buffer.
                return self.take(buf);
            }
            let mut rbuf = std::mem::take(&mut self.rbuf);
            rbuf.resize(C::HEAD + self.max, 0);
            let n = self.take(&mut rbuf);
            self.rbuf = rbuf;
            (self.len, self.at) = (n?, 0);
        }
        let n = buf.len().min(self.len - self.at);
        let from = C::HEAD + self.at;
        buf[..n].copy_from_slice(&self.rbuf[from..from + n]);
        self.at += n;
        Ok(n)
    }
}

impl<C: MessageChannel> Write for MessageLink<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// One message: the parts as they lie where the channel can send them
    /// so, else the first `max` bytes gathered.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0); // an empty message would end the stream
        }
        if total <= self.max
            && let Some(sent) = self.chan.send_parts(bufs)
        {
            return sent.map(|()| total);
        }
        self.sbuf.resize(C::HEAD + self.max, 0);
        let text = &mut self.sbuf[C::HEAD..];
        let n = crate::transport::gather(bufs, text.len(), |at, p| {
            text[at..at + p.len()].copy_from_slice(p)
        });
        self.chan.send(&mut self.sbuf[..C::HEAD + n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<C: MessageChannel> Drop for MessageLink<C> {
    fn drop(&mut self) {
        if !self.ended {
            self.chan.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::Duration;

    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

    use super::*;
    use crate::transport::unix_seqpacket::{PACKET, Packets};

    /// A real connected pair: our link on one end, the raw peer on the other.
    fn pair(ty: SockType, peer: Option<i32>) -> (MessageLink<Packets>, OwnedFd) {
        let (a, b) = socket::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
            .expect("socketpair");
        let t = Duration::from_secs(5);
        (Packets::link(a, t, t, peer).expect("link"), b)
    }

    /// The peer's next message, within a second.
    fn recv(fd: &OwnedFd) -> Vec<u8> {
        let tv = nix::sys::time::TimeVal::new(1, 0);
        socket::setsockopt(fd, socket::sockopt::ReceiveTimeout, &tv).unwrap();
        let mut buf = vec![0u8; 2 * PACKET];
        let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn parts_go_as_one_message_and_a_message_is_handed_out_across_reads() {
        let (mut link, peer) = pair(SockType::SeqPacket, None);
        let parts = [IoSlice::new(b"head"), IoSlice::new(b"payload")];
        assert_eq!(link.write_vectored(&parts).unwrap(), 11);
        assert_eq!(recv(&peer), b"headpayload");
        // Larger than a message: its first PACKET bytes, gathered.
        let big = vec![7u8; PACKET + 10];
        let parts = [IoSlice::new(b"hd"), IoSlice::new(&big)];
        assert_eq!(link.write_vectored(&parts).unwrap(), PACKET);
        assert_eq!(recv(&peer).len(), PACKET);

        socket::send(peer.as_raw_fd(), b"abcdefg", MsgFlags::empty()).unwrap();
        socket::send(peer.as_raw_fd(), b"hi", MsgFlags::empty()).unwrap();
        let mut got = Vec::new();
        let mut three = [0u8; 3];
        while got.len() < 7 {
            let n = link.read(&mut three).unwrap();
            got.extend_from_slice(&three[..n]);
        }
        // Nothing of the next message is mixed into the first one.
        assert_eq!(got, b"abcdefg");
        // A reader with room for any message gets it straight.
        let mut room = vec![0u8; PACKET];
        assert_eq!(link.read(&mut room).unwrap(), 2);
        assert_eq!(&room[..2], b"hi");
    }

    #[test]
    fn a_message_longer_than_the_link_is_an_error_not_a_hole() {
        for room in [16, PACKET] {
            let (mut link, peer) = pair(SockType::SeqPacket, None);
            socket::setsockopt(&peer, socket::sockopt::SndBuf, &(1 << 20)).unwrap();
            let long = vec![1u8; PACKET + 1];
            socket::send(peer.as_raw_fd(), &long, MsgFlags::empty()).unwrap();
            socket::send(peer.as_raw_fd(), b"next", MsgFlags::empty()).unwrap();
            let mut buf = vec![0u8; room];
            let e = link.read(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains(&format!("{}", PACKET + 1)), "{e}");
            // And it stays one: the next message does not follow the hole.
            assert_eq!(
                link.read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }
    }

    #[test]
    fn an_empty_message_ends_the_stream_and_a_dropped_link_sends_one() {
        let me = std::process::id() as i32;
        let (mut link, peer) = pair(SockType::Datagram, Some(me));
        assert_eq!(link.write(&[]).unwrap(), 0, "no empty message as data");
        socket::send(peer.as_raw_fd(), &[], MsgFlags::empty()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(link.read(&mut buf).unwrap(), 0);
        assert_eq!(link.read(&mut buf).unwrap(), 0, "the end stays the end");
        // The peer ended the stream: it is owed no end.
        drop(link);
        let tv = nix::sys::time::TimeVal::new(0, 100_000);
        socket::setsockopt(&peer, socket::sockopt::ReceiveTimeout, &tv).unwrap();
        assert!(socket::recv(peer.as_raw_fd(), &mut buf, MsgFlags::empty()).is_err());

        let (link, peer) = pair(SockType::Datagram, Some(me));
        drop(link);
        assert_eq!(recv(&peer), b"", "the end-of-stream datagram");
    }
}
