//! The audience across relays, checked against known players: listeners from
//! addresses the test GeoIP database places in two countries, with the user
//! agents of different players, on two icecast2 servers carrying one stream,
//! land in the right buckets of the poller's metrics.

use std::net::SocketAddr;

use balancer_testkit::geoip::{CityNet, city_db};
use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer, wait_until};

use crate::support::*;

/// The samples of `/metrics` on `admin` whose line starts with `prefix`.
async fn samples(admin: SocketAddr, prefix: &str) -> Vec<String> {
    let Ok(response) = balancer_testkit::http_get(format!("http://{admin}/metrics")).await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn listeners_are_counted_by_country_player_and_session_across_relays() {
    let spec = || IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(20)]);
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    let place = |network, country, location| CityNet {
        network,
        country,
        continent: "EU",
        location,
    };
    std::fs::write(
        &db,
        city_db(&[
            place("127.0.0.2/32", "AT", (48.21, 16.37)),
            place("127.0.0.3/32", "DE", (52.52, 13.40)),
        ]),
    )
    .unwrap();
    let fleet = format!(
        "[poller]\ninterval = \"250ms\"\ntimeout = \"200ms\"\naudience_interval = \"300ms\"\n\
         canary_interval = \"off\"\n{}{}\
         [[stream]]\nname = \"s\"\nmounts = [{{ server = \"one\", mount = \"/s.ogg\" }}, \
         {{ server = \"two\", mount = \"/s.ogg\" }}]\n",
        server_block("one", &servers[0].base_url(), "admin"),
        server_block("two", &servers[1].base_url(), "admin"),
    );
    let poller =
        PollerProcess::start_with(&fleet, &redis, &["--geoip-city", &db.display().to_string()])
            .await;
    let at = "127.0.0.2".parse().unwrap();
    let de = "127.0.0.3".parse().unwrap();
    let vlc = "VLC/3.0.18 LibVLC/3.0.18";
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
    // One listener in Austria on server one; two in Germany, one per server.
    let players = [
        Player::connect_as(&servers[0].mount_url("/s.ogg"), at, vlc)
            .await
            .unwrap(),
        Player::connect_as(&servers[0].mount_url("/s.ogg"), de, "Lavf/59.27.100")
            .await
            .unwrap(),
        Player::connect_as(&servers[1].mount_url("/s.ogg"), de, firefox)
            .await
            .unwrap(),
    ];
    assert!(players.iter().all(|p| p.status() == 200));
    let want = [
        "icb_audience_listeners{stream=\"s\",country=\"AT\"} 1",
        "icb_audience_listeners{stream=\"s\",country=\"DE\"} 2",
        "icb_audience_players{stream=\"s\",family=\"vlc\"} 1",
        "icb_audience_players{stream=\"s\",family=\"ffmpeg\"} 1",
        "icb_audience_players{stream=\"s\",family=\"browser\"} 1",
        "icb_audience_players{stream=\"s\",family=\"other\"} 0",
        "icb_audience_sessions{stream=\"s\",le=\"60\"} 3",
        "icb_audience_sessions{stream=\"s\",le=\"+Inf\"} 3",
    ];
    let seen = wait_until(
        "the audience figures of the 3 players",
        PATIENCE,
        || async {
            let seen = samples(poller.admin, "icb_audience_").await;
            want.iter()
                .all(|w| seen.iter().any(|s| s == w))
                .then_some(seen)
        },
    )
    .await;
    // Aggregates only: no address and no user agent reaches the metrics.
    let all = samples(poller.admin, "").await.join("\n");
    assert!(
        !all.contains("127.0.0.") && !all.contains("Firefox"),
        "{all}"
    );
    println!("{}", seen.join("\n"));

    // The operator console shows the same figures, also without an address.
    let console =
        balancer_testkit::http_get(format!("http://{}/console/api/audience", poller.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    let figures: serde_json::Value = serde_json::from_str(&console).unwrap();
    let s = &figures["streams"]["s"];
    assert_eq!(s["listeners"], 3, "{console}");
    assert_eq!(
        s["countries"],
        serde_json::json!({ "AT": 1, "DE": 2 }),
        "{console}"
    );
    assert_eq!(
        s["families"],
        serde_json::json!({ "browser": 1, "ffmpeg": 1, "vlc": 1 }),
        "{console}"
    );
    assert_eq!(s["sessions"][0], serde_json::json!(["60s", 3]), "{console}");
    assert!(
        !console.contains("127.0.0.") && !console.contains("Firefox"),
        "{console}"
    );

    // A listener who leaves is gone from the next round.
    drop(players);
    wait_until("the audience to empty", PATIENCE, || async {
        let seen = samples(
            poller.admin,
            "icb_audience_sessions{stream=\"s\",le=\"+Inf\"}",
        )
        .await;
        (seen == ["icb_audience_sessions{stream=\"s\",le=\"+Inf\"} 0"]).then_some(())
    })
    .await;
    drop(dir);
}
