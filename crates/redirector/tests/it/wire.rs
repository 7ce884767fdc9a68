//! The player port's HTTP/1.1, byte for byte over a raw socket: pipelining,
//! keep-alive of HTTP/1.1 and 1.0, HEAD, and every classic hole refused with
//! a status and a closed connection.

use std::time::Duration;

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `request` on a new connection; returns everything read until the
/// server closes (or 5 s pass: then `closed` is false).
async fn exchange(service: &Service, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(service.listen).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream).await
}

async fn read_until_closed(stream: &mut TcpStream) -> (String, bool) {
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer))
        .await
        .is_ok();
    (String::from_utf8_lossy(&buffer).into_owned(), closed)
}

/// Reads one answer (head and `content-length` bytes of body) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.push(byte[0]);
    }
    let head = String::from_utf8(buffer).unwrap();
    let length: usize = header(&head, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// Reads the next answer on `stream` and checks that it sends the player to
/// `mount` with the request's `query`.
async fn expect_redirect(stream: &mut TcpStream, mount: &str, query: &str) {
    let answer = read_answer(stream).await;
    assert!(
        answer.contains(&format!("location: {mount}?{query}\r\n")),
        "{query}: {answer}"
    );
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// One Icecast with one mount of 500 slots, and a healthy standalone
/// redirector for it; returns them with the mount's URL.
async fn one_mount_redirector() -> (IcecastServer, Service, String) {
    let icecast = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/s.ogg").max_listeners(500)
    ]))
    .await;
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    let redirector = Service::standalone(&fleet, &[]).await;
    wait_health(&redirector, true).await;
    let mount = icecast.mount_url("/s.ogg");
    (icecast, redirector, mount)
}

#[tokio::test]
async fn the_player_port_speaks_http_1_1_and_refuses_every_classic_hole() {
    let (_icecast, redirector, mount) = one_mount_redirector().await;

    // Pipelined requests in one write: answered in order, the last one closes.
    let (answers, closed) = exchange(
        &redirector,
        b"GET /s?a=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(closed, "Connection: close was not honoured: {answers}");
    let starts: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answers[i..i + 12])
        .collect();
    assert_eq!(
        starts,
        ["HTTP/1.1 302", "HTTP/1.1 302", "HTTP/1.1 404"],
        "{answers}"
    );
    assert!(
        answers.contains(&format!("location: {mount}?a=1\r\n")),
        "{answers}"
    );
    // The HEAD answer has a length but no body: the 404 follows its blank line.
    let head_answer = &answers[answers.match_indices("HTTP/1.1 302").nth(1).unwrap().0..];
    let blank = head_answer.find("\r\n\r\n").unwrap();
    assert!(
        head_answer[blank + 4..].starts_with("HTTP/1.1 404"),
        "{answers}"
    );
    assert_ne!(header(head_answer, "content-length"), Some("0"));
    assert!(header(&answers, "date").is_some_and(|d| d.ends_with(" GMT")));

    // HTTP/1.1 keeps the connection; several requests, one at a time.
    let mut kept = TcpStream::connect(redirector.listen).await.unwrap();
    for _ in 0..3 {
        kept.write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut kept).await;
        assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
        assert_eq!(header(&answer, "connection"), None, "{answer}");
    }

    // HTTP/1.0: closed after the answer, unless the client asks to keep it.
    let (answer, closed) = exchange(&redirector, b"GET /s HTTP/1.0\r\n\r\n").await;
    assert!(closed && answer.starts_with("HTTP/1.1 302"), "{answer}");
    assert_eq!(header(&answer, "connection"), Some("close"), "{answer}");
    let mut kept10 = TcpStream::connect(redirector.listen).await.unwrap();
    for _ in 0..2 {
        kept10
            .write_all(b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut kept10).await;
        assert_eq!(
            header(&answer, "connection"),
            Some("keep-alive"),
            "{answer}"
        );
    }

    // Refused, answered, closed.
    let mut tls_hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    tls_hello.extend_from_slice(&[0x5a; 32]);
    let refused: &[(&str, &[u8], &str)] = &[
        ("HTTP/1.1 without Host", b"GET /s HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            "a body",
            b"GET /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 400",
        ),
        (
            "Transfer-Encoding with Content-Length",
            b"GET /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "two Content-Lengths",
            b"GET /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 7\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("HTTP/0.9", b"GET /s\r\n", "HTTP/1.1 400"),
        ("garbage", b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        ("a TLS handshake", &tls_hello, "HTTP/1.1 400"),
        (
            "HTTP/2 without upgrade",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "another method, with a body",
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd",
            "HTTP/1.1 405",
        ),
    ];
    for (what, request, status) in refused {
        let (answer, closed) = exchange(&redirector, request).await;
        assert!(answer.starts_with(status), "{what}: {answer:?}");
        assert!(closed, "{what}: the connection stayed open");
        assert_eq!(header(&answer, "connection"), Some("close"), "{what}");
    }
    // A refused request's pipelined follower is not answered.
    let (answer, _) = exchange(
        &redirector,
        b"GET /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nGET /s HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");

    // A 405 for other methods without a body keeps the connection, and says what is allowed.
    let mut options = TcpStream::connect(redirector.listen).await.unwrap();
    options
        .write_all(b"DELETE /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut options).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(header(&answer, "allow"), Some("GET, HEAD"));
    options
        .write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut options).await.starts_with("HTTP/1.1 302"));
}

/// A kept-alive connection that went to a task (here for pipelining; a wait
/// for a slot lease does the same) rests again once all it sent is answered:
/// the metrics show it open and waiting, as nginx's `stub_status` would, and
/// closing it leaves neither.
#[tokio::test]
async fn a_connection_served_by_a_task_rests_again_and_the_metrics_show_it() {
    use crate::control::scrape;
    let (_icecast, redirector, mount) = one_mount_redirector().await;
    let admin = redirector.admin;
    // Summed over the player threads: the kernel picks the connection's.
    let counts = || async move {
        let samples = scrape(admin).await;
        let of = |name: &str| -> f64 {
            samples
                .iter()
                .filter(|(n, _)| n.split('{').next() == Some(name))
                .map(|(_, v)| v)
                .sum()
        };
        (
            of("icb_player_connections_open"),
            of("icb_player_connections_waiting"),
        )
    };
    let settled = |want: (f64, f64), what: &'static str| {
        wait_until(what, Duration::from_secs(10), move || async move {
            (counts().await == want).then_some(())
        })
    };

    let mut kept = TcpStream::connect(redirector.listen).await.unwrap();
    // Two requests in the first write: a task answers them.
    kept.write_all(b"GET /s?a=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /s?b=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for query in ["a=1", "b=2"] {
        expect_redirect(&mut kept, &mount, query).await;
    }
    settled((1.0, 1.0), "the connection to rest: 1 open, 1 waiting").await;

    // Answered again from the resting set, and still resting after it.
    kept.write_all(b"GET /s?c=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    expect_redirect(&mut kept, &mount, "c=3").await;
    settled((1.0, 1.0), "the connection to rest again").await;

    drop(kept);
    settled((0.0, 0.0), "the closed connection to leave both counts").await;
}

/// A kept-alive connection rests between requests outside any task (see
/// `resting.rs`); whatever comes next is served as on a new connection:
/// pipelined requests in order, a head in pieces, garbage refused.
#[tokio::test]
async fn a_resting_connection_serves_what_comes_next_like_a_new_one() {
    let (_icecast, redirector, mount) = one_mount_redirector().await;

    let mut kept = TcpStream::connect(redirector.listen).await.unwrap();
    kept.write_all(b"GET /s?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    expect_redirect(&mut kept, &mount, "a=1").await;

    // Two requests in one write, to a connection at rest: both, in order.
    kept.write_all(b"GET /s?b=2 HTTP/1.1\r\nHost: x\r\n\r\nGET /s?c=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for query in ["b=2", "c=3"] {
        expect_redirect(&mut kept, &mount, query).await;
    }

    // A head written in two pieces (which may arrive as one).
    kept.write_all(b"GET /s?d=4 HTTP/1.1\r\nHo").await.unwrap();
    kept.flush().await.unwrap();
    tokio::task::yield_now().await;
    kept.write_all(b"st: x\r\n\r\n").await.unwrap();
    expect_redirect(&mut kept, &mount, "d=4").await;

    // Another request on a fresh connection, then garbage on it at rest:
    // 400, and closed.
    let mut other = TcpStream::connect(redirector.listen).await.unwrap();
    other
        .write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut other).await.starts_with("HTTP/1.1 302"));
    other
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(closed, "garbage left the connection open");
}
