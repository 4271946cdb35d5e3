//! Descriptors a peer passes over a UNIX socket (`SCM_RIGHTS`, see
//! `unix(7)` and `cmsg(3)`): received so that every one that arrived is
//! owned — and so closed — whatever happens next, and checked for what it
//! claims to be before anything is done with it. A peer may pass more
//! descriptors than asked for, fewer, or descriptors of another kind (a
//! pipe where an eventfd belongs, an unsealed file where a sealed memfd
//! belongs, which it could then shrink under us: `SIGBUS`).
//!
//! Calls: `recvmsg(2)`, `fcntl(2)` `F_GET_SEALS`/`F_GETFL` (see
//! `memfd_create(2)`), `fstat(2)`, `readlink(2)` of `/proc/self/fd/<n>`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};

/// What one `recvmsg` brought.
pub struct Received {
    /// Bytes of ordinary data.
    pub bytes: usize,
    /// Every descriptor that arrived, owned.
    pub fds: Vec<OwnedFd>,
    /// The kernel cut the descriptors short (`MSG_CTRUNC`): the peer sent
    /// more than `max_fds`; the rest were closed by the kernel.
    pub truncated: bool,
}

/// Most descriptors [`recv_with_fds`] can take in one call.
pub const MAX_FDS: usize = 16;

/// One `recvmsg(2)` of up to `data.len()` bytes and up to `max_fds`
/// descriptors (at most [`MAX_FDS`]), with `MSG_CMSG_CLOEXEC`.
///
/// Raw `libc` rather than nix's `recvmsg`: nix refuses to walk a truncated
/// control buffer (`cmsgs()` fails with `ENOBUFS`), which would leave the
/// descriptors the kernel did install open with no owner — leaked for good
/// on every connection of a peer that sends too many.
pub fn recv_with_fds(sock: &OwnedFd, data: &mut [u8], max_fds: usize) -> io::Result<Received> {
    const FD: usize = std::mem::size_of::<RawFd>();
    assert!(max_fds <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64s: the control buffer must be aligned for `cmsghdr`.
    let mut space = [0u64; 2 + MAX_FDS / 2 + 2];
    // SAFETY: CMSG_SPACE is arithmetic.
    let room = unsafe { libc::CMSG_SPACE((max_fds * FD) as u32) } as usize;
    assert!(room <= std::mem::size_of_val(&space));
    // SAFETY: a zeroed msghdr is valid (no name, no control).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = space.as_mut_ptr().cast();
    hdr.msg_controllen = room as _;
    let bytes = loop {
        // SAFETY: hdr points at live buffers of the lengths it states.
        match Errno::result(unsafe {
            libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC)
        }) {
            Err(Errno::EINTR) => continue,
            r => break r? as usize,
        }
    };
    let mut fds = Vec::new();
    let end = space.as_ptr() as usize + (hdr.msg_controllen as usize).min(room);
    // SAFETY: the kernel filled `hdr` and the control buffer; CMSG_FIRSTHDR
    // and CMSG_NXTHDR stay within msg_controllen, and each descriptor's
    // bytes are read only below `end`. Each descriptor read is one the
    // kernel installed for us, owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len.min(end.saturating_sub(data as usize)) / FD;
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok(Received {
        bytes,
        fds,
        truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// `fd` must be a memfd carrying at least the seals `required`, not sealed
/// against writing, and exactly `size` bytes long. `Err` says, in words,
/// what it is instead.
pub fn check_sealed_memfd(fd: &OwnedFd, required: SealFlag, size: usize) -> Result<(), String> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map_err(|e| format!("it is not a memfd (F_GET_SEALS: {e}); memfd_create(2) makes one"))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(required) {
        return Err(format!(
            "the memfd is not sealed against resizing (it has {seals:?}; it needs {required:?}, \
             or its owner could shrink it under us)"
        ));
    }
    if seals.intersects(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_FUTURE_WRITE) {
        return Err(format!(
            "the memfd is sealed against writing ({seals:?}): we could not write in it"
        ));
    }
    let len = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("fstat: {e}"))?
        .st_size;
    if len != size as libc::off_t {
        return Err(format!("the memfd is {len} bytes long, not {size}"));
    }
    Ok(())
}

/// `fd` must be an eventfd (`anon_inode:[eventfd]`, which no file with a
/// path can imitate) in blocking mode (a non-blocking one would turn every
/// wait into an error). `Err` says what it is instead.
pub fn check_blocking_eventfd(fd: &OwnedFd) -> Result<(), String> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let target =
        nix::fcntl::readlink(link.as_str()).map_err(|e| format!("cannot read {link}: {e}"))?;
    if target != "anon_inode:[eventfd]" {
        return Err(format!(
            "it is {target:?}, not an eventfd (anon_inode:[eventfd])"
        ));
    }
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(|e| e.to_string())?);
    if flags.contains(OFlag::O_NONBLOCK) {
        return Err("it is a non-blocking eventfd (EFD_NONBLOCK)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
    use std::io::IoSlice;

    #[test]
    fn too_many_descriptors_are_all_owned_and_said_truncated() {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let raws = [r.as_raw_fd(); 8];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &[ControlMessage::ScmRights(&raws)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut byte = [0u8; 1];
        let got = recv_with_fds(&b, &mut byte, 5).unwrap();
        assert_eq!(got.bytes, 1);
        assert!(got.truncated);
        assert!(!got.fds.is_empty() && got.fds.len() <= 6);
        assert!(
            check_blocking_eventfd(&got.fds[0])
                .unwrap_err()
                .contains("pipe")
        );
        assert!(check_sealed_memfd(&got.fds[0], SealFlag::F_SEAL_SHRINK, 4096).is_err());
        drop(w);
    }
}
