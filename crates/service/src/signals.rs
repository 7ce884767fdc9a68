//! Unix signals as a stream of what they mean to a service.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What an operator asked for by signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read configuration.
    Reload,
    /// SIGTERM or SIGINT: stop gracefully.
    Terminate,
}

/// Starts listening for SIGHUP, SIGTERM and SIGINT. Call from within a Tokio runtime.
pub fn signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = hup.recv() => Signal::Reload,
                Some(()) = term.recv() => Signal::Terminate,
                Some(()) = int.recv() => Signal::Terminate,
                else => break,
            };
            if tx.send(signal).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
