//! systemd's readiness protocol: with `NOTIFY_SOCKET` set, the redirector
//! says READY=1 once it can serve players and STOPPING=1 on SIGTERM; the
//! poller says READY=1 once started (active or standby).

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use balancer_testkit::{
    ChildProcess, IcecastServer, IcecastSpec, MountSpec, RedisServer, free_port,
};

use crate::support::*;

/// A socket standing in for systemd's, and the messages it received.
struct FakeSystemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        FakeSystemd {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message, waiting up to PATIENCE (off the async runtime).
    async fn next(&self) -> String {
        let socket = self.socket.try_clone().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut buffer = [0u8; 1024];
            let n = socket.recv(&mut buffer).expect("a notification in time");
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        })
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn both_services_tell_systemd_when_they_are_ready_and_stopping() {
    let (redis, icecast) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new([MountSpec::ogg("/s.ogg")]))
    );
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(&fleet, one_stream_fleet(&[("one", &icecast, "")], "admin")).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_icecast-redirector"));

    // The redirector first: it has no snapshot yet, so it must not say READY.
    let redirector_systemd = FakeSystemd::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(bin);
    command
        .args(["--redis", &redis.url(), "--listen", &listen])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .env("NOTIFY_SOCKET", &redirector_systemd.path);
    let redirector = ChildProcess::spawn(
        "icecast-redirector",
        &mut command,
        &dir.path().join("r.log"),
    );
    redirector_systemd
        .socket
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut early = [0u8; 64];
    assert!(
        redirector_systemd.socket.recv(&mut early).is_err(),
        "READY before any snapshot: {}",
        String::from_utf8_lossy(&early)
    );
    redirector_systemd
        .socket
        .set_read_timeout(Some(PATIENCE))
        .unwrap();

    let poller_systemd = FakeSystemd::new();
    let mut command = Command::new(bin.with_file_name("icecast-poller"));
    command
        .arg("--config")
        .arg(&fleet)
        .args(["--redis", &redis.url()])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .env("NOTIFY_SOCKET", &poller_systemd.path);
    let _poller = ChildProcess::spawn("icecast-poller", &mut command, &dir.path().join("p.log"));
    let message = poller_systemd.next().await;
    assert!(message.contains("READY=1"), "poller: {message:?}");

    // Once the poller published, the redirector can serve and says so.
    let message = redirector_systemd.next().await;
    assert!(message.contains("READY=1"), "redirector: {message:?}");
    // HEAD: routed like a GET, without waiting for a slot lease from Redis.
    let response = client()
        .head(format!("http://{listen}/s"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302, "READY means players are answered");

    redirector.signal(libc::SIGTERM);
    let message = redirector_systemd.next().await;
    assert!(message.contains("STOPPING=1"), "redirector: {message:?}");
}
