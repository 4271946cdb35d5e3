//! ipclab — every classic Linux IPC mechanism side by side.
//!
//! One protocol ([`protocol`]), framed once for every transport ([`conn`]),
//! served once ([`server`]) and spoken once ([`client`]); one trait that each
//! mechanism implements ([`transport`]); real server processes
//! ([`process`]). Below the transports: the thin layer over the system
//! ([`sys`]), the runtime directory ([`runtime`]) and the objects a server
//! leaves and their judges ([`objects`]). The `ipclab` binary puts a command
//! line on top.

pub mod bench;
pub mod clean;
pub mod client;
pub mod conn;
pub mod demo;
pub mod inspect;
pub mod limits;
pub mod objects;
pub mod process;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod sys;
pub mod transport;
pub mod units;

/// The guide for course assignments (`docs/guide.md`), here so that
/// `cargo test` compiles and runs its example transport.
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
