//! The control plane with real services and the real `balancerctl`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use balancer_testkit::geoip::{CityNet, city_db};
use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, RedisServer, free_port, wait_until};

use crate::support::*;

/// Runs `balancerctl --admin ADDR ARGS...`; returns exit code, stdout, stderr.
pub(crate) fn ctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_icecast-redirector"))
        .with_file_name("balancerctl");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p balancerctl`",
        binary.display()
    );
    let output = Command::new(binary)
        .arg("--admin")
        .arg(admin.to_string())
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn spec() -> IcecastSpec {
    IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(500)])
}

#[tokio::test]
async fn drain_takes_effect_within_a_second_and_survives_a_poller_restart() {
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let (poller, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = &replicas[0];

    let (code, out, err) = ctl(poller.admin, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("role      poller") && out.contains("held (active)"),
        "{out}"
    );
    let (code, out, _) = ctl(poller.admin, &["servers"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("one") && out.contains("two") && out.contains("/s.ogg"),
        "{out}"
    );
    // A redirect reserves a slot; the poller's list shows it.
    assert_eq!(
        client()
            .get(redirector.url("/s"))
            .send()
            .await
            .unwrap()
            .status(),
        302
    );
    let (code, out, _) = ctl(poller.admin, &["--json", "servers"]);
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["servers"].as_array().unwrap().len(), 2);
    let reserved: u64 = parsed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["mounts"].as_array().unwrap())
        .map(|m| m["reserved"].as_u64().unwrap())
        .sum();
    assert!(reserved >= 1, "{out}");

    let (code, out, err) = ctl(poller.admin, &["drain", "two"]);
    assert_eq!((code, out.trim()), (0, "two: drained"), "{err}");
    let drained = Instant::now();
    let only = servers[0].mount_url("/s.ogg");
    let took = all_sent_within_a_second(redirector, &only, drained).await;
    println!("drain effective {took:?} after balancerctl returned");
    let (code, _, err) = ctl(poller.admin, &["drain", "nope"]);
    assert_eq!(code, 69);
    assert!(err.contains("no server named \"nope\""), "{err}");

    // A new poller still knows the drain (it lives in Redis).
    drop(poller);
    let poller = Service::poller(&fleet, &redis).await;
    let (_, out, _) = ctl(poller.admin, &["--json", "servers"]);
    let deadline = Instant::now() + PATIENCE;
    let mut out = out;
    while !out.contains("\"drained\":true") {
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        out = ctl(poller.admin, &["--json", "servers"]).1;
    }
    let client = client();
    for _ in 0..20 {
        assert_eq!(
            location(&client.head(redirector.url("/s")).send().await.unwrap()),
            only
        );
    }
    let (code, out, _) = ctl(poller.admin, &["undrain", "two"]);
    assert_eq!((code, out.trim()), (0, "two: undrained"));

    // The redirector answers what it can and says clearly what it cannot.
    let (code, out, _) = ctl(redirector.admin, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("role      redirector"), "{out}");
    let (code, _, err) = ctl(redirector.admin, &["drain", "two"]);
    assert_eq!(code, 69);
    assert!(err.contains("the poller's job"), "{err}");
}

#[tokio::test]
async fn explain_matches_what_the_redirector_does() {
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    std::fs::write(
        &db,
        city_db(&[CityNet {
            network: "127.0.0.2/32",
            country: "AT",
            continent: "EU",
            location: (48.21, 16.37),
        }]),
    )
    .unwrap();
    let fleet = one_stream_fleet(
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
    let (_poller, replicas) = balancer(
        &redis,
        &fleet,
        1,
        &["--geoip-city", &db.display().to_string()],
    )
    .await;
    let redirector = &replicas[0];
    let (code, out, err) = ctl(redirector.admin, &["explain", "s", "127.0.0.2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("client: country AT, continent EU"), "{out}");
    let first = out.lines().nth(1).unwrap();
    assert!(
        first.contains("vie /s.ogg") && first.contains("same country (AT)"),
        "{out}"
    );
    let local = balancer_testkit::http()
        .redirect(reqwest::redirect::Policy::none())
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let actual = location(&local.head(redirector.url("/s")).send().await.unwrap());
    assert!(
        first.contains(&actual),
        "explain said {first:?}, the redirector sent {actual}"
    );
    let (code, _, err) = ctl(redirector.admin, &["explain", "s", "not-an-ip"]);
    assert_eq!(code, 69);
    assert!(err.contains("not an IP address"), "{err}");
}

#[tokio::test]
async fn the_admin_api_beyond_loopback_needs_a_token() {
    let redis = RedisServer::start().await;
    let icecast = IcecastServer::start(spec()).await;
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, &fleet).unwrap();
    let poller_binary = std::path::Path::new(env!("CARGO_BIN_EXE_icecast-redirector"))
        .with_file_name("icecast-poller");
    let port = free_port();
    let exposed = format!("0.0.0.0:{port}");
    let refused = Command::new(&poller_binary)
        .arg("--config")
        .arg(&path)
        .args(["--redis", &redis.url(), "--admin", &exposed])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--admin-token"));

    let mut command = Command::new(&poller_binary);
    command
        .arg("--config")
        .arg(&path)
        .args(["--redis", &redis.url(), "--admin", &exposed])
        .env("ICB_ADMIN_TOKEN", "s3cret-token");
    let mut poller = balancer_testkit::ChildProcess::spawn(
        "icecast-poller",
        &mut command,
        &dir.path().join("p.log"),
    );
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(
            poller.exited().is_none() && Instant::now() < deadline,
            "{}",
            poller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _, err) = ctl(admin, &["status"]);
    assert_eq!(code, 69);
    assert!(err.contains("missing or wrong bearer token"), "{err}");
    let (code, _, err) = ctl(admin, &["--token", "wrong", "status"]);
    assert_eq!(code, 69);
    assert!(
        !err.contains("wrong") || err.contains("missing or wrong"),
        "{err}"
    );
    let (code, out, err) = ctl(admin, &["--token", "s3cret-token", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("role      poller"));
    assert!(
        !poller.log().contains("s3cret-token"),
        "the token must never reach the log"
    );
}

/// The text of `/metrics` on an admin address.
async fn metrics_text(admin: SocketAddr) -> String {
    balancer_testkit::http_get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Scrapes `/metrics` on an admin address; every sample line must parse.
pub(crate) async fn scrape(admin: SocketAddr) -> Vec<(String, f64)> {
    let text = metrics_text(admin).await;
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF: {text}"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("unparsable sample {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("unparsable value in {line:?}"));
            (name.to_owned(), value)
        })
        .collect()
}

pub(crate) fn sample(samples: &[(String, f64)], name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n.starts_with(name) && labels.iter().all(|l| n.contains(l)))
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn metrics_parse_and_count_a_redirect_that_just_happened() {
    let (redis, icecast) = tokio::join!(RedisServer::start(), IcecastServer::start(spec()));
    // A server nobody answers for, so poll errors have a series too.
    let dead = format!(
        "[[server]]\nname = \"dead\"\nurl = \"http://127.0.0.1:{}\"\nstatus = \"json\"\n\n",
        free_port()
    );
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin").replacen(
        "[[stream]]",
        &format!("{dead}[[stream]]"),
        1,
    );
    let (poller, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = &replicas[0];
    let redirect = ["stream=\"s\"", "outcome=\"redirect\""];
    let before = sample(
        &scrape(redirector.admin).await,
        "icb_requests_total",
        &redirect,
    );
    assert_eq!(
        client()
            .get(redirector.url("/s"))
            .send()
            .await
            .unwrap()
            .status(),
        302
    );
    assert_eq!(
        client()
            .get(redirector.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let after = scrape(redirector.admin).await;
    assert_eq!(
        sample(&after, "icb_requests_total", &redirect),
        before + 1.0
    );
    assert!(
        sample(
            &after,
            "icb_requests_total",
            &["stream=\"-\"", "outcome=\"not_found\""]
        ) >= 1.0
    );
    assert!(sample(&after, "icb_reservations_total", &["result=\"granted\""]) >= 1.0);
    assert!(sample(&after, "icb_selection_seconds_count", &[]) >= 1.0);
    assert!(sample(&after, "icb_snapshot_version", &[]) >= 1.0);

    wait_until("a failed poll of the dead server", PATIENCE, || async {
        (sample(
            &scrape(poller.admin).await,
            "icb_poll_errors_total",
            &["server=\"dead\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    let polled = scrape(poller.admin).await;
    let mount = ["server=\"one\"", "mount=\"/s.ogg\"", "stream=\"s\""];
    assert_eq!(sample(&polled, "icb_mount_limit", &mount), 500.0);
    assert!(sample(&polled, "icb_mount_live", &mount) == 1.0);
    assert!(sample(&polled, "icb_server_up", &["server=\"one\""]) == 1.0);
    assert!(
        sample(
            &polled,
            "icb_poll_duration_seconds_count",
            &["server=\"one\""]
        ) >= 1.0
    );
    assert!(sample(&polled, "icb_snapshots_published_total", &[]) >= 1.0);
    assert!(
        polled
            .iter()
            .any(|(n, _)| n.starts_with("icb_stream_listeners{stream=\"s\"}"))
    );

    // Every metric the shipped alert rules use is one these services export.
    let mut families = metric_families(redirector.admin).await;
    families.extend(metric_families(poller.admin).await);
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/alerts.yaml"
    ))
    .unwrap();
    let mut used: Vec<&str> = rules
        .match_indices("icb_")
        .map(|(at, _)| {
            let rest = &rules[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 10, "{used:?}");
    for name in used {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            families.iter().any(|f| f == family),
            "alerts.yaml uses {name}, which no service exports; exported: {families:?}"
        );
    }
}

/// The metric families (`# TYPE` lines) an admin address exports, series or not.
async fn metric_families(admin: SocketAddr) -> Vec<String> {
    metrics_text(admin)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}
