//! Pieces shared by several transports: each written once, used by every
//! mechanism that works the same way.

pub mod message_link;
