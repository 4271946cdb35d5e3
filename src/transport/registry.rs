//! The list of transports: the one place that knows every transport by
//! name. It stands above them all (each transport knows only the trait in
//! [`super`]), so nothing below it — the process that starts a server, the
//! objects a server leaves — depends on the whole list.

use std::io;

use super::{
    Transport, eventfd, fifo, flock, msgq, pipe, posixmq, shm, shm_spin, signal, tcp, udp, unix,
    unix_dgram, unix_seqpacket,
};

/// Every transport ipclab has, in the order `list`, `demo all` and `bench`
/// show them. A new transport is added here.
pub fn all() -> &'static [&'static dyn Transport] {
    &[
        &pipe::Pipe,
        &fifo::Fifo,
        &msgq::Msgq,
        &posixmq::PosixMq,
        &shm::SHM,
        &shm::MMAP,
        &shm_spin::ShmSpin,
        &eventfd::Eventfd,
        &signal::Signal,
        &flock::Flock,
        &unix::Unix,
        &unix_seqpacket::UnixSeqpacket,
        &unix_dgram::UnixDgram,
        &tcp::Tcp,
        &udp::Udp,
    ]
}

/// Look a transport up by name, with an error listing the known ones.
pub fn by_name(name: &str) -> io::Result<&'static dyn Transport> {
    all()
        .iter()
        .copied()
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            let known: Vec<_> = all().iter().map(|t| t.name()).collect();
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("unknown transport '{name}' (known: {})", known.join(", ")),
            )
        })
}
