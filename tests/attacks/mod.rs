//! Mechanism-specific attacks: each speaks one transport's mechanism
//! directly, as a lying peer on the same machine would, and panics if the
//! server does something visible to the attacker that it must not (echoes
//! bytes that were never sent, hands over another session's data). The
//! survival checks after each attack are in `tests/hostile_peers.rs`.
//!
//! A transport with shared state or a handshake adds its file here and a
//! line to [`for_transport`].

mod eventfd;
mod fifo;
mod flock;
mod msgq;
mod posix_mq;
mod shm;
mod signal;
mod udp;
mod unix_dgram;
mod unix_seqpacket;

use crate::common::Env;
use ipclab::process::ServerProcess;

/// One attack.
pub struct Attack {
    pub name: &'static str,
    /// Act against the running server; panic on a violation seen.
    pub run: fn(&Env, &ServerProcess),
    /// How much the server's peak memory may grow under it, in KiB.
    pub grow_kib: u64,
}

/// The attacks written for `transport`.
pub fn for_transport(transport: &str) -> Vec<Attack> {
    match transport {
        "eventfd" => eventfd::attacks(),
        "flock" => flock::attacks(),
        "fifo" => fifo::attacks(),
        "posix-mq" => posix_mq::attacks(),
        "unix-dgram" => unix_dgram::attacks(),
        "unix-seqpacket" => unix_seqpacket::attacks(),
        "shm" | "mmap" | "shm-spin" => shm::attacks(transport),
        "msgq" => msgq::attacks(),
        "signal" => signal::attacks(),
        "udp" => udp::attacks(),
        _ => Vec::new(),
    }
}
