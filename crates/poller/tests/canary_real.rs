//! The canary against a real icecast2 with a real ffmpeg source.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec};
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
    let started = std::time::Instant::now();
    let heard = canary
        .listen(&probe(icecast.mount_url("/s.ogg"), Some("application/ogg")))
        .await;
    println!("canary took {:?}", started.elapsed());
    assert_eq!(heard, Ok(()));
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
