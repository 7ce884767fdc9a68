//! icecast2 with ffmpeg sources: limits, load.xsl, outages, cleanup.

use std::time::Duration;

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, process_exists, wait_until};

#[tokio::test]
async fn two_servers_with_ogg_and_mp3_sources_then_nothing_left() {
    let spec = IcecastSpec::new([
        MountSpec::ogg("/a.ogg").max_listeners(5),
        MountSpec::mp3("/b.mp3"),
    ]);
    let servers = IcecastServer::start_many([spec.clone(), spec]).await;
    assert_ne!(servers[0].port(), servers[1].port());

    let mut pids = Vec::new();
    for server in &servers {
        let mut live = server.live_mounts().await;
        live.sort();
        assert_eq!(live, ["/a.ogg", "/b.mp3"]);
        for mount in ["/a.ogg", "/b.mp3"] {
            let outcome = Player::play(&server.mount_url(mount)).await.unwrap();
            assert!(
                outcome.played(),
                "{mount} on {}: {outcome:?}",
                server.port()
            );
            assert_eq!(outcome.port(), Some(server.port()));
        }
        pids.extend(server.pids());
    }
    assert_eq!(pids.len(), 6, "two icecast2 and four ffmpeg processes");
    drop(servers);
    for pid in pids {
        assert!(
            !process_exists(pid),
            "process {pid} still running after drop"
        );
    }
}

#[tokio::test]
async fn max_listeners_is_enforced_and_counted() {
    let server = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/one.ogg").max_listeners(1)
    ]))
    .await;
    let url = server.mount_url("/one.ogg");
    let first = Player::connect(&url).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.wait_for_bytes(1024, Duration::from_secs(10)).await);
    wait_until(
        "Icecast to count the listener",
        Duration::from_secs(10),
        || async { (server.listeners("/one.ogg").await == Some(1)).then_some(()) },
    )
    .await;

    let second = Player::play(&url).await.unwrap();
    assert_ne!(second.status, 200, "a full mount must refuse: {second:?}");

    drop(first);
    wait_until(
        "Icecast to count the hang-up",
        Duration::from_secs(10),
        || async { (server.listeners("/one.ogg").await == Some(0)).then_some(()) },
    )
    .await;
    let third = Player::play(&url).await.unwrap();
    assert!(third.played(), "a freed slot is usable again: {third:?}");
}

#[tokio::test]
async fn load_xsl_prints_free_slots_and_never_nan() {
    let server = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/limited.ogg").max_listeners(3),
        MountSpec::mp3("/open.mp3"),
    ]))
    .await;
    let _listener = Player::connect(&server.mount_url("/limited.ogg"))
        .await
        .unwrap();
    let url = format!("{}/load.xsl", server.base_url());
    let body = wait_until(
        "load.xsl to count the listener",
        Duration::from_secs(10),
        || async {
            let body = balancer_testkit::http_get(&url)
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            body.contains(r#"<mount name="/limited.ogg" listeners="1" max_listeners="3">2</mount>"#)
                .then_some(body)
        },
    )
    .await;
    assert!(body.contains("<load>"), "{body}");
    assert!(
        body.contains(
            r#"<mount name="/open.mp3" listeners="0" max_listeners="unlimited">unlimited</mount>"#
        ),
        "{body}"
    );
    assert!(!body.contains("NaN"), "{body}");
}

#[tokio::test]
async fn kill_restart_and_source_outages() {
    let mut server = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/x.ogg"),
        MountSpec::ogg("/y.ogg").without_source(),
    ]))
    .await;
    assert_eq!(
        server.live_mounts().await,
        ["/x.ogg"],
        "a mount without source is not listed"
    );

    server.start_source("/y.ogg").await;
    server.stop_source("/x.ogg").await;
    assert_eq!(server.live_mounts().await, ["/y.ogg"]);

    let port = server.port();
    let pids = server.pids();
    server.kill();
    assert!(
        server.admin_stats().await.is_none(),
        "a killed server must not answer"
    );
    for pid in pids {
        assert!(!process_exists(pid), "process {pid} survived kill");
    }
    server.restart().await;
    assert_eq!(server.port(), port);
    let mut live = server.live_mounts().await;
    live.sort();
    assert_eq!(
        live,
        ["/x.ogg"],
        "restart brings back the configured live sources"
    );
}
