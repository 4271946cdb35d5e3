//! Sockets as the kernel lists them: `/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}`
//! (per network namespace, so they are read through the inspected process)
//! and UNIX socket peers from the socket-diagnostics netlink interface
//! (`sock_diag(7)`), which `/proc/net/unix` does not show.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One row of `/proc/net/tcp*` or `/proc/net/udp*`.
#[derive(Clone, Debug)]
pub struct InetSocket {
    pub proto: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub inode: u64,
}

/// One row of `/proc/net/unix`, with its peer when `sock_diag` told us.
#[derive(Clone, Debug)]
pub struct UnixSocket {
    pub inode: u64,
    pub kind: &'static str,
    pub state: &'static str,
    pub path: Option<String>,
    pub peer: Option<u64>,
}

/// The socket tables of one network namespace.
#[derive(Debug, Default)]
pub struct Tables {
    pub inet: HashMap<u64, InetSocket>,
    pub unix: HashMap<u64, UnixSocket>,
    /// Why UNIX peers are missing, when they are.
    pub unix_peer_note: Option<String>,
}

impl Tables {
    /// Read the tables as `pid` sees them (its network namespace).
    pub fn read(pid: i32) -> Tables {
        let mut t = Tables::default();
        for proto in ["tcp", "tcp6", "udp", "udp6"] {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{proto}")) else {
                continue;
            };
            for s in text
                .lines()
                .skip(1)
                .filter_map(|l| parse_inet_line(proto, l))
            {
                t.inet.insert(s.inode, s);
            }
        }
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/unix")) {
            for s in text.lines().skip(1).filter_map(parse_unix_line) {
                t.unix.insert(s.inode, s);
            }
        }
        // sock_diag answers for the namespace of the asking socket, which is
        // ours; only use it when the inspected process shares it.
        let same_ns = fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            == fs::read_link("/proc/self/ns/net").ok();
        if !same_ns {
            t.unix_peer_note =
                Some("the process is in another network namespace; peers not resolved".into());
        } else {
            match unix_peers() {
                Ok(peers) => {
                    for (ino, peer) in peers {
                        if let Some(s) = t.unix.get_mut(&ino) {
                            s.peer = Some(peer);
                        }
                    }
                }
                Err(e) => {
                    t.unix_peer_note = Some(format!(
                        "UNIX socket peers need the sock_diag netlink interface (unix_diag module): {e}"
                    ))
                }
            }
        }
        t
    }

    /// The TCP socket at the other end of `s`: the one whose local address
    /// is our remote one and whose remote address is our local one.
    pub fn inet_peer(&self, s: &InetSocket) -> Option<&InetSocket> {
        if s.remote.port() == 0 {
            return None;
        }
        self.inet.values().find(|o| {
            o.proto == s.proto && o.local == s.remote && o.remote == s.local && o.inode != s.inode
        })
    }
}

fn tcp_state(code: u8) -> &'static str {
    match code {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "?",
    }
}

/// `0100007F:1F40` (IPv4) or 32 hex digits (IPv6), each 32-bit word in the
/// kernel's byte order (little-endian here), then the port in big-endian hex.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::from_be);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?.to_be_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = word(&ip[i * 8..i * 8 + 8])?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn parse_inet_line(proto: &str, line: &str) -> Option<InetSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let udp = proto.starts_with("udp");
    Some(InetSocket {
        proto: match proto {
            "tcp" | "tcp6" => "tcp",
            _ => "udp",
        },
        local: parse_addr(f[1])?,
        remote: parse_addr(f[2])?,
        // UDP reuses the TCP codes: 07 unconnected, 01 connected.
        state: match (udp, state) {
            (true, 0x07) => "UNCONN",
            (true, 0x01) => "CONNECTED",
            _ => tcp_state(state),
        },
        inode: f[9].parse().ok()?,
    })
}

/// `Num RefCount Protocol Flags Type St Inode [Path]`.
fn parse_unix_line(line: &str) -> Option<UnixSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 7 {
        return None;
    }
    let flags = u32::from_str_radix(f[3], 16).ok()?;
    let kind = match u16::from_str_radix(f[4], 16).ok()? {
        1 => "stream",
        2 => "dgram",
        5 => "seqpacket",
        _ => "?",
    };
    let listening = flags & 0x0001_0000 != 0; // __SO_ACCEPTCON
    let state = match (listening, u8::from_str_radix(f[5], 16).ok()?) {
        (true, _) => "LISTEN",
        (_, 1) => "UNCONNECTED",
        (_, 2) => "CONNECTING",
        (_, 3) => "CONNECTED",
        (_, 4) => "DISCONNECTING",
        _ => "?",
    };
    Some(UnixSocket {
        inode: f[6].parse().ok()?,
        kind,
        state,
        path: f.get(7).map(|p| p.to_string()),
        peer: None,
    })
}

// <linux/sock_diag.h>, <linux/unix_diag.h>
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UNIX_DIAG_PEER: u16 = 2;

#[repr(C)]
struct UnixDiagRequest {
    nlh: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// Every UNIX socket of our network namespace with its peer's inode: one
/// `SOCK_DIAG_BY_FAMILY` dump request on a `NETLINK_SOCK_DIAG` socket; each
/// answer is a `unix_diag_msg` (16 bytes: family, type, state, pad, inode,
/// cookie) followed by attributes, of which `UNIX_DIAG_PEER` carries the
/// peer's inode.
pub fn unix_peers() -> io::Result<HashMap<u64, u64>> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // The kernel answers at once; the timeout only guards against surprises.
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: valid fd and option of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let req = UnixDiagRequest {
        nlh: libc::nlmsghdr {
            nlmsg_len: size_of::<UnixDiagRequest>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        ino: 0,
        show: UDIAG_SHOW_PEER,
        cookie: [u32::MAX; 2],
    };
    // SAFETY: a sockaddr_nl for the kernel (pid 0), zeroed then filled.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the request and the address are valid for their sizes.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            (&req as *const UnixDiagRequest).cast(),
            size_of::<UnixDiagRequest>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut peers = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            if len < 16 || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a truncated netlink message",
                ));
            }
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(peers),
                libc::NLMSG_ERROR => {
                    let errno = msgs
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(0);
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => {}
            }
            if let Some((ino, peer)) = parse_unix_diag(&msgs[16..len]) {
                peers.insert(ino, peer);
            }
            let next = len.next_multiple_of(4).min(msgs.len());
            msgs = &msgs[next..];
        }
    }
}

/// A `unix_diag_msg` and its attributes: the socket's inode and, if it is
/// connected, its peer's.
fn parse_unix_diag(msg: &[u8]) -> Option<(u64, u64)> {
    let ino = u32::from_ne_bytes(msg.get(4..8)?.try_into().ok()?) as u64;
    let mut attrs = msg.get(16..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == UNIX_DIAG_PEER && len >= 8 {
            let peer = u32::from_ne_bytes(attrs[4..8].try_into().ok()?) as u64;
            return Some((ino, peer));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn addresses_decode() {
        assert_eq!(
            parse_addr("0100007F:1F48").unwrap(),
            "127.0.0.1:8008".parse().unwrap()
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0050").unwrap(),
            "[::1]:80".parse().unwrap()
        );
    }

    #[test]
    fn a_socketpair_is_seen_with_its_peer() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let t = Tables::read(std::process::id() as i32);
        let sa = &t.unix[&ino(&a)];
        assert_eq!(sa.kind, "stream");
        match &t.unix_peer_note {
            None => assert_eq!(sa.peer, Some(ino(&b))),
            Some(note) => eprintln!("skipped the peer check: {note}"),
        }
    }

    #[test]
    fn tcp_peers_match_by_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let t = Tables::read(std::process::id() as i32);
        let ino = |fd: i32| fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let cs = &t.inet[&ino(c.as_raw_fd())];
        assert_eq!(cs.state, "ESTABLISHED");
        assert_eq!(t.inet_peer(cs).unwrap().inode, ino(s.as_raw_fd()));
        assert_eq!(t.inet[&ino(l.as_raw_fd())].state, "LISTEN");
    }
}
