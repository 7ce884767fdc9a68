//! A player's socket read and written with bare system calls, for the
//! answers given in place (a new connection's first request, a resting
//! connection's next one).
//!
//! glibc's `recv` and `send`, which the standard library calls, are
//! cancellation points: in a process of more than one thread each call
//! switches asynchronous cancellation on before the system call and off
//! after it, two atomic read-modify-writes of the thread's state. nginx's
//! worker has one thread, and glibc skips them there; the redirector has its
//! control plane's threads beside the players', and paid them twice a
//! request (1.2% of its CPU in a `perf` profile, more than any one of its
//! own functions but two). Nothing here is ever cancelled, so the calls go
//! straight to the kernel through `syscall(2)`, with the same arguments the
//! standard library passes.

use std::io;
use std::os::fd::AsRawFd;

/// What `read` on the socket would do: `recvfrom` without flags.
pub(crate) fn recv(socket: &impl AsRawFd, buffer: &mut [u8]) -> io::Result<usize> {
    #[allow(unsafe_code)]
    // SAFETY: recvfrom(2) on a descriptor the caller holds open, writing at
    // most `buffer.len()` bytes into `buffer`, and no source address.
    let result = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            socket.as_raw_fd(),
            buffer.as_mut_ptr(),
            buffer.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    outcome(result)
}

/// What `write` on the socket does in the standard library: `sendto` with
/// `MSG_NOSIGNAL`, so a player gone away is an error (`EPIPE`), not a signal.
pub(crate) fn send(socket: &impl AsRawFd, bytes: &[u8]) -> io::Result<usize> {
    #[allow(unsafe_code)]
    // SAFETY: sendto(2) on a descriptor the caller holds open, reading at
    // most `bytes.len()` bytes from `bytes`, and no destination address.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            socket.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    outcome(result)
}

/// A byte count, or the error `errno` holds.
fn outcome(result: libc::c_long) -> io::Result<usize> {
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn bytes_go_both_ways_and_errors_are_the_kernels() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut player = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();

        let mut buffer = [0u8; 64];
        let nothing = recv(&ours, &mut buffer).unwrap_err();
        assert_eq!(nothing.kind(), ErrorKind::WouldBlock);

        // Blocking from here: each call waits for what the player does.
        ours.set_nonblocking(false).unwrap();
        player.write_all(b"GET /s HTTP/1.1\r\n\r\n").unwrap();
        let read = recv(&ours, &mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"GET /s HTTP/1.1\r\n\r\n");

        assert_eq!(send(&ours, b"HTTP/1.1 302 Found\r\n").unwrap(), 20);
        let mut answer = [0u8; 20];
        player.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 302 Found\r\n");

        // The player leaves: the end of its input, then EPIPE or a reset
        // rather than SIGPIPE (which would end this test's process).
        drop(player);
        assert_eq!(recv(&ours, &mut buffer).unwrap(), 0);
        let failed = (0..100).find_map(|_| send(&ours, &[b'x'; 64]).err());
        let kind = failed.expect("writing to a closed connection fails").kind();
        assert!(
            matches!(kind, ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{kind:?}"
        );
    }
}
