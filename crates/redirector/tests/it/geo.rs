//! Geo: players go to their own country's server while it has room; forwarding
//! headers count only from trusted proxies; licensing rules answer 451.

use std::net::IpAddr;
use std::time::Duration;

use balancer_testkit::geoip::{CityNet, city_db};
use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer};

use crate::support::*;

const AT: &str = "127.0.0.2";
const DE: &str = "127.0.0.3";

fn from(ip: &str) -> reqwest::Client {
    balancer_testkit::http()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn players_go_to_their_country_while_it_has_room() {
    let specs = [
        IcecastSpec::new([
            MountSpec::ogg("/s.ogg").max_listeners(2),
            MountSpec::ogg("/at-only.ogg"),
        ]),
        IcecastSpec::new([
            MountSpec::ogg("/s.ogg").max_listeners(50),
            MountSpec::ogg("/at-only.ogg"),
        ]),
    ];
    let (redis, servers) = tokio::join!(RedisServer::start(), IcecastServer::start_many(specs));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    std::fs::write(
        &db,
        city_db(&[
            CityNet {
                network: "127.0.0.2/32",
                country: "AT",
                continent: "EU",
                location: (48.21, 16.37),
            },
            CityNet {
                network: "127.0.0.3/32",
                country: "DE",
                continent: "EU",
                location: (52.52, 13.40),
            },
        ]),
    )
    .unwrap();
    let mut fleet = one_stream_fleet(
        &[
            (
                "vie",
                &servers[0],
                "country = \"AT\"\nlocation = { lat = 48.21, lon = 16.37 }",
            ),
            (
                "ber",
                &servers[1],
                "country = \"DE\"\nlocation = { lat = 52.52, lon = 13.40 }",
            ),
        ],
        "admin",
    );
    fleet += "[[stream]]\nname = \"licensed\"\nmounts = [{ server = \"vie\", mount = \"/at-only.ogg\" }]\nallow_countries = [\"AT\"]\n";
    let geoip = db.display().to_string();
    let poller = Service::poller(&fleet, &redis).await;
    let plain = Service::following(&redis, &["--geoip-city", &geoip]).await;
    let behind_proxy =
        Service::following(&redis, &["--geoip-city", &geoip, "--trusted-proxy", DE]).await;
    wait_health(&plain, true).await;
    wait_health(&behind_proxy, true).await;
    let (vienna, berlin) = (
        servers[0].mount_url("/s.ogg"),
        servers[1].mount_url("/s.ogg"),
    );

    // HEAD probes take no slot: check the headers first.
    let spoofed = from(DE)
        .head(plain.url("/s"))
        .header("x-forwarded-for", AT)
        .send()
        .await
        .unwrap();
    assert_eq!(
        location(&spoofed),
        berlin,
        "a header from an untrusted peer changes nothing"
    );
    let proxied = from(DE)
        .head(behind_proxy.url("/s"))
        .header("x-forwarded-for", AT)
        .send()
        .await
        .unwrap();
    assert_eq!(
        location(&proxied),
        vienna,
        "a trusted proxy's X-Forwarded-For places the player"
    );

    // Licensing: only Austria may play `licensed`.
    assert_eq!(
        from(DE)
            .get(plain.url("/licensed"))
            .send()
            .await
            .unwrap()
            .status(),
        451
    );
    assert_eq!(
        from(AT)
            .head(plain.url("/licensed"))
            .send()
            .await
            .unwrap()
            .status(),
        302
    );

    // German players go to Berlin; Austrian ones to Vienna until its 2 slots are taken, then Berlin.
    for _ in 0..3 {
        assert_eq!(
            location(&from(DE).get(plain.url("/s")).send().await.unwrap()),
            berlin
        );
    }
    let mut austrians = Vec::new();
    for _ in 0..4 {
        austrians.push(location(
            &from(AT).get(plain.url("/s")).send().await.unwrap(),
        ));
    }
    assert_eq!(
        austrians,
        [
            vienna.clone(),
            vienna.clone(),
            berlin.clone(),
            berlin.clone()
        ]
    );

    // A real player from Austria, bound to its address, plays in Berlin now.
    let player = Player::connect_from(&plain.url("/s"), AT.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (player.status(), player.port()),
        (200, Some(servers[1].port()))
    );
    drop(poller);
}
