//! Free loopback ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Ports this process has handed out, so two calls never return the same one
/// (the kernel may give a just-released port again, e.g. a service's listen
/// and admin port).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free a moment ago and that this process has not handed out
/// before. Another process may take it before the caller binds it, so starters
/// retry with a fresh port when a bind fails.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("the kernel must hand out a free loopback port");
        if handed_out.insert(port) {
            return port;
        }
    }
}
