//! systemd's readiness protocol (`sd_notify`): with `Type=notify`, systemd
//! considers a unit started only once it says `READY=1`, so dependants and
//! `systemctl start` wait for a service that can really serve. Outside systemd
//! (no `NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is ready (its health turned SERVING).
pub fn notify_ready() {
    notify("READY=1\nSTATUS=serving");
}

/// Tells systemd the service is shutting down, so it reports "deactivating".
pub fn notify_stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

/// Sends `state` to `$NOTIFY_SOCKET`; returns whether it was sent.
fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = send(&path, state);
    if let Err(e) = &sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    sent.is_ok()
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // A leading '@' names a socket in the abstract namespace.
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)?;
        }
        None => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}
