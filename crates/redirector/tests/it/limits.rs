//! What strangers send: slow heads, huge heads, bodies, garbage; and the
//! django-icecast-balancer URL with a server polled through load.xsl.

use std::time::{Duration, Instant};

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn read_all(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut buffer)).await;
    (
        String::from_utf8_lossy(&buffer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn strangers_get_clear_errors_and_slow_ones_are_cut_off() {
    let (redis, icecast) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new([
            MountSpec::ogg("/s.ogg").max_listeners(50)
        ]))
    );
    let fleet = one_stream_fleet(&[("lx", &icecast, "")], "load-xsl");
    let (_poller, replicas) = balancer(&redis, &fleet, 1, &["--header-timeout", "1s"]).await;
    let redirector = &replicas[0];

    // django-icecast-balancer's URL, a server polled through load.xsl, a real player.
    let outcome = Player::play(&redirector.url("/icecast_balancer/s/"))
        .await
        .unwrap();
    assert!(outcome.played(), "{outcome:?}");

    // A head that never completes is cut off after the header timeout.
    let mut slow = TcpStream::connect(redirector.listen).await.unwrap();
    slow.write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, waited) = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(
        waited < Duration::from_secs(3),
        "a slow head held the connection {waited:?}"
    );

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(redirector.listen).await.unwrap();
    idle.write_all(b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, waited) = read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    assert!(
        waited < Duration::from_secs(3),
        "an idle connection stayed open {waited:?}"
    );

    // Each request gives a keep-alive connection the whole timeout again:
    // requests 0.6 s apart keep it open past the first timeout, and it
    // closes a timeout after the last.
    let mut busy = TcpStream::connect(redirector.listen).await.unwrap();
    let mut answer = [0u8; 1024];
    for _ in 0..4 {
        busy.write_all(b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let read = busy.read(&mut answer).await.unwrap();
        assert!(
            answer[..read].starts_with(b"HTTP/1.1 302"),
            "closed too early"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let (_, waited) = read_all(&mut busy, Duration::from_secs(5)).await;
    assert!(
        waited < Duration::from_secs(2),
        "a connection idle after requests stayed open {waited:?}"
    );

    // The next head on a kept-alive connection has the timeout counted
    // from the last answer, not from its first bytes: one that starts late
    // and never completes is cut off a timeout after the answer.
    let mut late = TcpStream::connect(redirector.listen).await.unwrap();
    late.write_all(b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let read = late.read(&mut answer).await.unwrap();
    let answered = Instant::now();
    assert!(answer[..read].starts_with(b"HTTP/1.1 302"), "no answer");
    tokio::time::sleep(Duration::from_millis(800)).await;
    late.write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let _ = read_all(&mut late, Duration::from_secs(5)).await;
    let held = answered.elapsed();
    assert!(
        held < Duration::from_millis(1500),
        "a late slow head held the connection {held:?} after the last answer"
    );

    // A head over 16 KiB: 431.
    let mut huge = TcpStream::connect(redirector.listen).await.unwrap();
    let filler = "a".repeat(20 * 1024);
    let request = format!("GET /s HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
    let _ = huge.write_all(request.as_bytes()).await;
    let (answer, _) = read_all(&mut huge, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A body: 400. Garbage: 400. A path that tries to leave the fleet: 404.
    let client = client();
    let with_body = client
        .get(redirector.url("/s"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(with_body.status(), 400);
    for garbage in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET /s\0 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(redirector.listen).await.unwrap();
        stream.write_all(garbage.as_bytes()).await.unwrap();
        let (answer, _) = read_all(&mut stream, Duration::from_secs(5)).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{garbage:?}: {answer}"
        );
    }
    // Sent raw: an HTTP client would resolve the dots to `/`, the index.
    let mut dots = TcpStream::connect(redirector.listen).await.unwrap();
    dots.write_all(b"GET /s/../.. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_all(&mut dots, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "/s/../..: {answer}");
    for evil in [
        "//evil.example/s",
        "/%2F%2Fevil.example",
        "/s%0d%0aLocation:%20http://evil",
    ] {
        let response = client.get(redirector.url(evil)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{evil}");
    }
    // The query string is kept, but only printable ASCII ever reaches Location.
    let response = client
        .get(redirector.url("/s?a=1&b=%0d%0a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        location(&response),
        format!("{}?a=1&b=%0d%0a", icecast.mount_url("/s.ogg"))
    );
}
