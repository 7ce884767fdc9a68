//! Standalone mode: one process, one fleet file, no Redis.

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player};

use crate::support::*;

#[tokio::test]
async fn standalone_redirects_without_redis() {
    let icecast = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/a.ogg").max_listeners(50)
    ]))
    .await;
    let fleet = format!(
        "{POLLER_TABLE}{}[[stream]]\nname = \"a\"\nmounts = [{{ server = \"ice\", mount = \"/a.ogg\" }}]\n",
        server_block("ice", &icecast, "")
    );
    let redirector = Service::standalone(&fleet, &[]).await;
    let response = wait_status(&redirector.url("/a?token=x1"), 302).await;
    assert_eq!(
        location(&response),
        format!("{}?token=x1", icecast.mount_url("/a.ogg"))
    );
    assert_eq!(response.headers()["cache-control"], "no-store");

    // A real player follows the redirect and plays.
    let outcome = Player::play(&redirector.url("/a")).await.unwrap();
    assert!(outcome.played(), "{outcome:?}");
    assert_eq!(outcome.port(), Some(icecast.port()));

    let client = client();
    assert_eq!(
        client
            .get(redirector.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .post(redirector.url("/a"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let head = client.head(redirector.url("/a")).send().await.unwrap();
    assert_eq!(head.status(), 302);
    let compat = client
        .get(redirector.url("/icecast_balancer/a/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        compat.status(),
        302,
        "django-icecast-balancer's URL keeps working: {}",
        redirector.process.log()
    );
    let m3u = client.get(redirector.url("/a.m3u")).send().await.unwrap();
    assert_eq!(m3u.headers()["content-type"], "audio/x-mpegurl");
    assert!(
        m3u.text()
            .await
            .unwrap()
            .contains(&icecast.mount_url("/a.ogg"))
    );
    // The embedded poller's metrics are on the same /metrics as the redirector's.
    let samples = crate::control::scrape(redirector.admin).await;
    let up = crate::control::sample(&samples, "icb_server_up", &["server=\"ice\""]);
    let requests =
        crate::control::sample(&samples, "icb_requests_total", &["outcome=\"redirect\""]);
    assert_eq!(up, 1.0, "poller metrics in standalone mode");
    assert!(requests > 0.0, "and the redirector's");
}
