//! A server whose status page is fine but which refuses every listener (its
//! listener-authentication backend is down): the poll cannot tell, the
//! canaries can, and players stop going there.

use std::net::SocketAddr;

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer};
use balancer_testkit::{free_port, wait_until};

use crate::control::ctl;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_listeners_behind_a_fine_status_page_gets_no_players() {
    // Nothing listens at the auth backend's address: Icecast refuses every listener.
    let dead_backend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let refusing = IcecastSpec::new([MountSpec::ogg("/s.ogg")
        .max_listeners(100)
        .listener_auth(&format!("http://{dead_backend}/auth"))]);
    let healthy = IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(100)]);
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([refusing, healthy])
    );
    // The scenario is real: a player is refused, and the status page says the mount is live.
    let refused = Player::connect(&servers[0].mount_url("/s.ogg")).await;
    assert!(
        refused.as_ref().map_or(true, |p| p.status() >= 400),
        "the auth backend is down, so Icecast must refuse: {:?}",
        refused.map(|p| p.status())
    );
    let fleet = format!(
        "[poller]\ninterval = \"250ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 3\n\
         canary_interval = \"300ms\"\ncanary_timeout = \"5s\"\n{}{}\
         [[stream]]\nname = \"s\"\nmounts = [{{ server = \"refusing\", mount = \"/s.ogg\" }}, \
         {{ server = \"healthy\", mount = \"/s.ogg\" }}]\n",
        server_block("refusing", &servers[0], ""),
        server_block("healthy", &servers[1], ""),
    );
    let (poller, mut replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = replicas.remove(0);
    let healthy_url = servers[1].mount_url("/s.ogg");
    let client = client();
    wait_until(
        "every player to go to the healthy server",
        PATIENCE,
        || async {
            for _ in 0..40 {
                let response = client.head(redirector.url("/s")).send().await.ok()?;
                let sent_to = response.headers().get("location")?.to_str().ok()?;
                if sent_to != healthy_url {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let (_, servers_text, _) = ctl(poller.admin, &["servers"]);
    println!("{servers_text}");
    assert!(
        servers_text.contains("canary failed") && servers_text.contains("HTTP 40"),
        "balancerctl servers says why: {servers_text}"
    );
    // And it stays so: players keep going to the healthy server only.
    for _ in 0..100 {
        let response = client.head(redirector.url("/s")).send().await.unwrap();
        assert_eq!(location(&response), healthy_url);
    }
}
