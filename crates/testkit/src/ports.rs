//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

/// A port that was free a moment ago. Another process may take it before the
/// caller binds it, so starters retry with a fresh port when a bind fails.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the kernel must hand out a free loopback port")
}
