//! The canary against a real icecast2 with a real ffmpeg source.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, wait_until};
use icecast_poller::canary::{Canary, CanaryError, Probe};

#[tokio::test]
async fn a_canary_reads_a_live_mount_and_names_what_is_wrong_elsewhere() {
    let icecast = IcecastServer::start(IcecastSpec::new([MountSpec::ogg("/s.ogg")])).await;
    let canary = Canary::new(None).unwrap();
    let probe = |url: String, expected: Option<&str>| Probe {
        url,
        expected: expected.map(str::to_owned),
        deadline: Duration::from_secs(2),
    };
    // Right after a source starts, Icecast has no burst to give yet and the
    // first listener waits for the stream's next pages: wait for it to flow.
    let live = probe(icecast.mount_url("/s.ogg"), Some("application/ogg"));
    wait_until(
        "the canary to hear the stream",
        Duration::from_secs(20),
        || async { canary.listen(&live).await.ok() },
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(canary.listen(&live).await, Ok(()));
    println!("a canary on a flowing stream took {:?}", started.elapsed());
    let wrong = canary
        .listen(&probe(icecast.mount_url("/s.ogg"), Some("audio/mpeg")))
        .await;
    assert!(
        matches!(wrong, Err(CanaryError::WrongType { .. })),
        "{wrong:?}"
    );
    let missing = canary
        .listen(&probe(icecast.mount_url("/nothing.ogg"), None))
        .await;
    assert_eq!(missing, Err(CanaryError::Status(404)));
    let closed = format!("http://127.0.0.1:{}/s.ogg", balancer_testkit::free_port());
    let refused = canary.listen(&probe(closed, None)).await;
    assert!(
        matches!(refused, Err(CanaryError::Connect(_))),
        "{refused:?}"
    );
}
