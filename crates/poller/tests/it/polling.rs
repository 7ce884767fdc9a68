//! What the poller sees: listeners, limits, dead servers, stopped sources, hung servers.

use std::time::{Duration, Instant};

use balancer_proto::snapshot::v1::{MountState, ServerState};
use balancer_testkit::{
    DribblingServer, IcecastServer, IcecastSpec, MountSpec, Player, RedisServer,
};

use crate::support::*;

#[tokio::test]
async fn players_connecting_and_leaving_show_in_the_snapshot() {
    let (redis, icecast) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new(
            [MountSpec::ogg("/a.ogg").max_listeners(5)]
        ))
    );
    let fleet = format!(
        "{POLLER_TABLE}{}[[stream]]\nname = \"a\"\nmounts = [{{ server = \"ice\", mount = \"/a.ogg\" }}]\n",
        server_block("ice", &icecast.base_url(), "admin")
    );
    let _poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    let first = wait_snapshot(&store, "the mount live with 5 free", |s| {
        let m = mount(s, "a", "ice", "/a.ogg");
        m.state() == MountState::Live && m.free_slots == 5
    })
    .await;
    assert_eq!(mount(&first, "a", "ice", "/a.ogg").max_listeners, Some(5));

    let connected = Instant::now();
    let player = Player::connect(&icecast.mount_url("/a.ogg")).await.unwrap();
    assert_eq!(player.status(), 200);
    wait_snapshot(&store, "one listener", |s| {
        let m = mount(s, "a", "ice", "/a.ogg");
        m.listeners == 1 && m.free_slots == 4
    })
    .await;
    let seen_in = connected.elapsed();
    println!("a connecting player showed in the snapshot after {seen_in:?}");
    assert!(seen_in < Duration::from_secs(3), "{seen_in:?}");

    drop(player);
    let left = Instant::now();
    wait_snapshot(&store, "no listener", |s| {
        mount(s, "a", "ice", "/a.ogg").listeners == 0
    })
    .await;
    println!(
        "a leaving player showed in the snapshot after {:?}",
        left.elapsed()
    );
}

#[tokio::test]
async fn all_three_status_sources_against_real_icecast() {
    let spec = IcecastSpec::new([
        MountSpec::ogg("/hq.ogg").max_listeners(4),
        MountSpec::mp3("/open.mp3"),
    ]);
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec.clone(), spec.clone(), spec])
    );
    let mut fleet = POLLER_TABLE.to_owned();
    for (name, status, server) in [
        ("adm", "admin", &servers[0]),
        ("jsn", "json", &servers[1]),
        ("lxs", "load-xsl", &servers[2]),
    ] {
        fleet += &server_block(name, &server.base_url(), status);
    }
    fleet += "[[stream]]\nname = \"hq\"\nmounts = [{ server = \"adm\", mount = \"/hq.ogg\" }, \
              { server = \"jsn\", mount = \"/hq.ogg\", max_listeners = 7 }, { server = \"lxs\", mount = \"/hq.ogg\" }]\n";
    fleet += "[[stream]]\nname = \"open\"\nmounts = [{ server = \"adm\", mount = \"/open.mp3\" }, \
              { server = \"jsn\", mount = \"/open.mp3\", max_listeners = \"unlimited\" }, { server = \"lxs\", mount = \"/open.mp3\" }]\n";
    let _players = [
        Player::connect(&servers[0].mount_url("/hq.ogg"))
            .await
            .unwrap(),
        Player::connect(&servers[1].mount_url("/hq.ogg"))
            .await
            .unwrap(),
        Player::connect(&servers[2].mount_url("/hq.ogg"))
            .await
            .unwrap(),
    ];
    let _poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    let snapshot = wait_snapshot(&store, "every mount live with its listener", |s| {
        ["adm", "jsn", "lxs"].iter().all(|name| {
            let hq = mount(s, "hq", name, "/hq.ogg");
            hq.state() == MountState::Live && hq.listeners == 1
        })
    })
    .await;
    // admin: Icecast's own limit.
    let adm = mount(&snapshot, "hq", "adm", "/hq.ogg");
    assert_eq!((adm.max_listeners, adm.free_slots), (Some(4), 3));
    // json: no limit in the document, so the config's.
    let jsn = mount(&snapshot, "hq", "jsn", "/hq.ogg");
    assert_eq!((jsn.max_listeners, jsn.free_slots), (Some(7), 6));
    // load-xsl: free slots as load.xsl computed them.
    let lxs = mount(&snapshot, "hq", "lxs", "/hq.ogg");
    assert_eq!(lxs.free_slots, 3);
    // A mount without max-listeners: explicitly unlimited, never NaN.
    for name in ["adm", "jsn", "lxs"] {
        let open = mount(&snapshot, "open", name, "/open.mp3");
        assert_eq!(open.state(), MountState::Live, "{name}");
        assert_eq!(
            (open.max_listeners, open.free_slots),
            (None, u32::MAX),
            "{name}"
        );
    }
}

#[tokio::test]
async fn dead_servers_fall_and_rise_and_sources_come_and_go() {
    let spec = IcecastSpec::new([
        MountSpec::ogg("/a.ogg").max_listeners(5),
        MountSpec::ogg("/b.ogg").max_listeners(5),
    ]);
    let (redis, mut servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec.clone(), spec])
    );
    let fleet = format!(
        "{POLLER_TABLE}{}{}[[stream]]\nname = \"a\"\nmounts = [{{ server = \"one\", mount = \"/a.ogg\" }}, {{ server = \"two\", mount = \"/a.ogg\" }}]\n\
         [[stream]]\nname = \"b\"\nmounts = [{{ server = \"one\", mount = \"/b.ogg\" }}]\n",
        server_block("one", &servers[0].base_url(), "admin"),
        server_block("two", &servers[1].base_url(), "admin"),
    );
    let _poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    wait_snapshot(&store, "both servers up", |s| {
        server(s, "one").state() == ServerState::Up && server(s, "two").state() == ServerState::Up
    })
    .await;

    // A stopped source: the mount is not live, its server and other mount are.
    servers[0].stop_source("/b.ogg").await;
    let s = wait_snapshot(&store, "/b.ogg without source", |s| {
        mount(s, "b", "one", "/b.ogg").state() == MountState::NoSource
    })
    .await;
    assert_eq!(mount(&s, "a", "one", "/a.ogg").state(), MountState::Live);
    assert_eq!(mount(&s, "b", "one", "/b.ogg").free_slots, 0);

    // Killed: down after `fall` (3) failed polls, not before.
    servers[1].kill();
    let first_failure = wait_snapshot(&store, "a failed poll of two", |s| {
        !server(s, "two").last_error.is_empty()
    })
    .await;
    assert_eq!(
        server(&first_failure, "two").state(),
        ServerState::Up,
        "one failure does not take it down"
    );
    let down = wait_snapshot(&store, "two down", |s| {
        server(s, "two").state() == ServerState::Down
    })
    .await;
    let cycles = down.version - first_failure.version;
    assert!(
        (1..=2).contains(&cycles),
        "down {cycles} cycles after the first failure, fall is 3"
    );
    assert_eq!(mount(&down, "a", "two", "/a.ogg").free_slots, 0);
    assert_eq!(
        server(&down, "one").state(),
        ServerState::Up,
        "the other server is unaffected"
    );

    // Restarted: up again after `rise` (2) good polls.
    servers[1].restart().await;
    let first_good = wait_snapshot(&store, "a good poll of two", |s| {
        server(s, "two").last_error.is_empty()
    })
    .await;
    let up = wait_snapshot(&store, "two up", |s| {
        server(s, "two").state() == ServerState::Up
    })
    .await;
    assert!(
        up.version > first_good.version || server(&first_good, "two").state() == ServerState::Up
    );
    assert!(up.version - first_good.version <= 1, "up within rise polls");
    assert_eq!(
        server(&first_good, "two").state(),
        ServerState::Down,
        "one good poll is not enough"
    );
}

#[tokio::test]
async fn a_hung_server_does_not_delay_the_others() {
    let (redis, icecast, hung) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new(
            [MountSpec::ogg("/a.ogg").max_listeners(5)]
        )),
        DribblingServer::start()
    );
    let fleet = format!(
        "{POLLER_TABLE}{}{}[[stream]]\nname = \"a\"\nmounts = [{{ server = \"good\", mount = \"/a.ogg\" }}, {{ server = \"hung\", mount = \"/a.ogg\" }}]\n",
        server_block("good", &icecast.base_url(), "admin"),
        server_block("hung", &hung.base_url(), "admin"),
    );
    let _poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    let s = wait_snapshot(&store, "the hung server down", |s| {
        server(s, "hung").state() == ServerState::Down
    })
    .await;
    assert!(
        server(&s, "hung")
            .last_error
            .contains("no complete answer within 200ms"),
        "{}",
        server(&s, "hung").last_error
    );
    // Every later snapshot has fresh data from the good server: the hung one
    // costs at most the timeout per cycle.
    let mut previous = s.version;
    for _ in 0..5 {
        let s = wait_snapshot(&store, "the next snapshot", |n| n.version > previous).await;
        previous = s.version;
        let good = server(&s, "good");
        assert_eq!(good.state(), ServerState::Up);
        let age = s.published_at_ms - good.observed_at_ms;
        assert!(
            age < 450,
            "the good server's data is {age} ms old at publication"
        );
    }
}

#[tokio::test]
async fn a_full_icecast_is_full_not_down() {
    // Icecast counts sources as clients: 1 source + 2 players fill a limit of 3.
    let (redis, icecast) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new([MountSpec::ogg("/a.ogg")]).client_limit(3))
    );
    // Polled half as often as elsewhere: a poll in flight holds the third
    // slot, and on a loaded machine a poll can take most of a short interval,
    // leaving the players little chance to get in.
    let table = POLLER_TABLE.replace("interval = \"250ms\"", "interval = \"500ms\"");
    assert_ne!(table, POLLER_TABLE);
    let fleet = format!(
        "{table}{}[[stream]]\nname = \"a\"\nmounts = [{{ server = \"ice\", mount = \"/a.ogg\" }}]\n",
        server_block("ice", &icecast.base_url(), "admin")
    );
    let _poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    wait_snapshot(&store, "ice up", |s| {
        server(s, "ice").state() == ServerState::Up
    })
    .await;
    let url = icecast.mount_url("/a.ogg");
    let _players = [admitted(&url).await, admitted(&url).await];
    let s = wait_snapshot(&store, "ice full", |s| {
        server(s, "ice").state() == ServerState::Full
    })
    .await;
    assert_eq!(mount(&s, "a", "ice", "/a.ogg").free_slots, 0);
    // It stays full, never down, while the players stay.
    for _ in 0..8 {
        let previous = s.version;
        let s = wait_snapshot(&store, "the next snapshot", |n| n.version > previous).await;
        assert_eq!(server(&s, "ice").state(), ServerState::Full);
    }
}

/// A player that Icecast admitted. While the poller's own status request is
/// open it holds one of the 3 client slots, and Icecast refuses a player that
/// arrives then (a 403 sent before reading the request, which the HTTP
/// client may report as an error): that player tries again a second later,
/// as a radio would.
///
/// Not sooner: after each refusal Icecast 2.4 sleeps 400 ms and goes back to
/// accepting, and it reads the requests it has already accepted only when no
/// connection is waiting. A player retrying every 50 ms kept a poll that was
/// accepted just before the limit (and counted as a client) unread for good,
/// and so the server full of it: the player was never admitted (1 run in 40).
async fn admitted(url: &str) -> Player {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Player::connect(url).await {
            Ok(player) if player.status() == 200 => return player,
            other => assert!(
                Instant::now() < deadline,
                "Icecast never admitted the player: {:?}",
                other.map(|p| p.status())
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A server that answers every request with `response`, then closes.
async fn canned_server(response: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 2048];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(&response).await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn huge_garbage_and_failing_answers_mark_servers_down_with_the_reason() {
    let redis = RedisServer::start().await;
    let huge = {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<icestats>".to_vec();
        r.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
        r
    };
    let cases = [
        ("huge", huge, "larger than 1048576 bytes"),
        (
            "garbage",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot xml!!".to_vec(),
            "malformed XML",
        ),
        (
            "dtd",
            b"HTTP/1.1 200 OK\r\n\r\n<!DOCTYPE x [<!ENTITY a \"b\">]><icestats>&a;</icestats>"
                .to_vec(),
            "DTD",
        ),
        (
            "error",
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "HTTP 500",
        ),
        (
            "auth",
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "credentials were refused",
        ),
    ];
    let mut fleet = POLLER_TABLE.to_owned();
    let mut servers = Vec::new();
    for (name, response, _) in &cases {
        let (url, task) = canned_server(response.clone()).await;
        fleet += &server_block(name, &url, "admin");
        servers.push(task);
    }
    fleet += "[[stream]]\nname = \"a\"\nmounts = [{ server = \"huge\", mount = \"/a.ogg\" }]\n";
    let _poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    let s = wait_snapshot(&store, "every server down", |s| {
        s.servers.iter().all(|sv| sv.state() == ServerState::Down)
    })
    .await;
    for (name, _, reason) in &cases {
        let error = &server(&s, name).last_error;
        assert!(
            error.contains(reason),
            "{name}: {error:?} should mention {reason:?}"
        );
    }
}
