//! `icecast-sim`: many simulated Icecast servers in one process, for load tests.
//!
//! Each server listens on its own loopback port and answers every request with
//! an `/admin/stats` document for `--mounts` live mounts whose listener counts
//! drift. It writes a fleet config naming all of them, then serves until killed.
//! Like a real network, each mount path is one stream carried by every server:
//! `sim0` is `/m0.ogg` on all servers, `sim1` is `/m1.ogg`, and so on.
//!
//! ```text
//! icecast-sim --servers 1000 --mounts 5 --interval 1s --fleet /tmp/fleet.toml
//! ```
//!
//! `--limit N` sets every mount's `max_listeners` (default 100); `--geoip PATH`
//! also writes a City database placing all of 127.0.0.0/8 in Vienna, and gives
//! the servers locations across Europe, so a redirector has real ranking work.
//! The database also places a crowd: 198.18.0.0/15 (the benchmarking range) in
//! 2,048 networks of 64 addresses, each at its own spot around one of the
//! cities in `CROWD`, for load that arrives through a proxy from many places
//! ([`crowd_address`] names its addresses).
//! `--players on` makes the servers behave like Icecast towards players: a GET
//! of a mount is a listener (200, kept open and counted in the stats) until
//! it hangs up, or a 403 when the mount is at its limit; counts then start at
//! 0 and do not drift. The saturation benchmark uses it. Without it, a GET of
//! a mount is a short stream: 200 and 8 KiB of Ogg-typed bytes, then the end,
//! enough for a poller's canary. `--canary-interval VALUE` writes the
//! poller's `canary_interval` into the fleet (default `off`), and
//! `--audience-interval VALUE` its `audience_interval` (default `off`);
//! `/admin/listclients` lists as many listeners as the stats count, with
//! varied addresses, players and connection times.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Options {
    servers: usize,
    mounts: usize,
    interval: String,
    fleet: String,
    limit: u32,
    geoip: Option<String>,
    players: bool,
    canary_interval: String,
    audience_interval: String,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        servers: 1000,
        mounts: 5,
        interval: "1s".into(),
        fleet: "fleet.toml".into(),
        limit: 100,
        geoip: None,
        players: false,
        canary_interval: "off".into(),
        audience_interval: "off".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--servers" => {
                options.servers = value.parse().map_err(|e| format!("--servers: {e}"))?
            }
            "--mounts" => options.mounts = value.parse().map_err(|e| format!("--mounts: {e}"))?,
            "--interval" => options.interval = value,
            "--fleet" => options.fleet = value,
            "--limit" => options.limit = value.parse().map_err(|e| format!("--limit: {e}"))?,
            "--geoip" => options.geoip = Some(value),
            "--players" => options.players = value == "on",
            "--canary-interval" => options.canary_interval = value,
            "--audience-interval" => options.audience_interval = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!(
                "icecast-sim: {e}\nusage: icecast-sim --servers N --mounts M --interval 1s --fleet PATH"
            );
            return std::process::ExitCode::from(64);
        }
    };
    let requests = Arc::new(AtomicU64::new(0));
    let mut fleet = format!(
        "[poller]\ninterval = \"{}\"\ntimeout = \"{}\"\ncanary_interval = \"{}\"\naudience_interval = \"{}\"\n\n",
        options.interval, options.interval, options.canary_interval, options.audience_interval
    );
    let mut streams: Vec<String> = (0..options.mounts)
        .map(|m| format!("[[stream]]\nname = \"sim{m}\"\nmounts = [\n"))
        .collect();
    for server in 0..options.servers {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("icecast-sim: cannot bind server {server}: {e}");
                return std::process::ExitCode::from(69);
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = write!(
            fleet,
            "[[server]]\nname = \"sim-{server}\"\nurl = \"http://127.0.0.1:{port}\"\nadmin_user = \"admin\"\nadmin_password = \"sim\"\n"
        );
        if options.geoip.is_some() {
            let (country, lat, lon) = PLACES[server % PLACES.len()];
            let jitter = (server / PLACES.len()) as f64 * 0.01;
            let _ = writeln!(
                fleet,
                "country = \"{country}\"\nlocation = {{ lat = {:.2}, lon = {:.2} }}",
                lat + jitter,
                lon + jitter
            );
        }
        fleet.push('\n');
        for (mount, stream) in streams.iter_mut().enumerate() {
            let _ = writeln!(
                stream,
                "  {{ server = \"sim-{server}\", mount = \"/m{mount}.ogg\" }},"
            );
        }
        let players = options
            .players
            .then(|| Arc::new((0..options.mounts).map(|_| AtomicU32::new(0)).collect()));
        tokio::spawn(serve(
            listener,
            Mounts {
                count: options.mounts,
                limit: options.limit,
                players,
            },
            server,
            Arc::clone(&requests),
        ));
    }
    for stream in &streams {
        fleet.push_str(stream);
        fleet.push_str("]\n");
    }
    if let Some(path) = &options.geoip {
        let crowd: Vec<(String, usize)> = (0..CROWD_NETWORKS)
            .map(|network| (format!("{}/26", crowd_address(network, 0)), network))
            .collect();
        let mut networks = vec![balancer_testkit::geoip::CityNet {
            network: "127.0.0.0/8",
            country: "AT",
            continent: "EU",
            location: (48.21, 16.37),
        }];
        networks.extend(crowd.iter().map(|(network, index)| {
            let (country, continent, lat, lon) = CROWD[index % CROWD.len()];
            // Each network at its own spot, up to about 40 km from its city.
            let spread = (index / CROWD.len()) as f64 * 0.005;
            balancer_testkit::geoip::CityNet {
                network,
                country,
                continent,
                location: (lat + spread, lon - spread),
            }
        }));
        let db = balancer_testkit::geoip::city_db(&networks);
        if let Err(e) = std::fs::write(path, db) {
            eprintln!("icecast-sim: cannot write {path}: {e}");
            return std::process::ExitCode::from(73);
        }
    }
    if let Err(e) = std::fs::write(&options.fleet, fleet) {
        eprintln!("icecast-sim: cannot write {}: {e}", options.fleet);
        return std::process::ExitCode::from(73);
    }
    println!(
        "ready: {} servers x {} mounts, fleet in {}",
        options.servers, options.mounts, options.fleet
    );
    std::future::pending::<()>().await;
    std::process::ExitCode::SUCCESS
}

/// Where simulated servers stand: country and coordinates.
const PLACES: [(&str, f64, f64); 8] = [
    ("AT", 48.21, 16.37),
    ("AT", 47.07, 15.44),
    ("DE", 52.52, 13.40),
    ("DE", 48.14, 11.58),
    ("CH", 47.37, 8.54),
    ("FR", 48.86, 2.35),
    ("IT", 45.46, 9.19),
    ("NL", 52.37, 4.90),
];

/// Networks of the crowd in the GeoIP database.
const CROWD_NETWORKS: usize = 2_048;

/// Address `host` (0..64) of crowd network `network` (0..2048), in
/// 198.18.0.0/15. The benchmark's load generator computes the same addresses.
fn crowd_address(network: usize, host: usize) -> std::net::Ipv4Addr {
    let offset = (network * 64 + host % 64) as u32;
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + offset)
}

/// Where the crowd comes from: the servers' countries and their neighbours,
/// and some players from far away.
const CROWD: [(&str, &str, f64, f64); 32] = [
    ("AT", "EU", 48.21, 16.37),
    ("AT", "EU", 47.07, 15.44),
    ("AT", "EU", 47.80, 13.04),
    ("AT", "EU", 47.27, 11.40),
    ("AT", "EU", 48.31, 14.29),
    ("DE", "EU", 52.52, 13.40),
    ("DE", "EU", 48.14, 11.58),
    ("DE", "EU", 53.55, 9.99),
    ("DE", "EU", 50.94, 6.96),
    ("DE", "EU", 50.11, 8.68),
    ("CH", "EU", 47.37, 8.54),
    ("CH", "EU", 46.20, 6.14),
    ("FR", "EU", 48.86, 2.35),
    ("FR", "EU", 45.76, 4.84),
    ("IT", "EU", 45.46, 9.19),
    ("IT", "EU", 41.90, 12.50),
    ("NL", "EU", 52.37, 4.90),
    ("BE", "EU", 50.85, 4.35),
    ("CZ", "EU", 50.08, 14.44),
    ("HU", "EU", 47.50, 19.04),
    ("PL", "EU", 52.23, 21.01),
    ("SK", "EU", 48.15, 17.11),
    ("SI", "EU", 46.06, 14.51),
    ("HR", "EU", 45.81, 15.98),
    ("DK", "EU", 55.68, 12.57),
    ("SE", "EU", 59.33, 18.07),
    ("ES", "EU", 40.42, -3.70),
    ("GB", "EU", 51.51, -0.13),
    ("US", "NA", 40.71, -74.01),
    ("CA", "NA", 43.65, -79.38),
    ("BR", "SA", -23.55, -46.63),
    ("AU", "OC", -33.87, 151.21),
];

/// When the simulator started.
static STARTED: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// The mounts of one simulated server.
#[derive(Clone)]
struct Mounts {
    count: usize,
    limit: u32,
    /// With `--players on`: listeners connected to each mount.
    players: Option<Arc<Vec<AtomicU32>>>,
}

async fn serve(listener: TcpListener, mounts: Mounts, server: usize, requests: Arc<AtomicU64>) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let (requests, mounts) = (Arc::clone(&requests), mounts.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            let mut filled = 0;
            loop {
                let Ok(n) = socket.read(&mut buffer[filled..]).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                filled += n;
                // Answer each complete request head; bodies are never sent to us.
                while let Some(end) = find_head_end(&buffer[..filled]) {
                    if let Some(mount) = listener_mount(&buffer[..end], &mounts) {
                        listen(socket, &mounts, mount).await;
                        return;
                    }
                    let count = requests.fetch_add(1, Ordering::Relaxed);
                    let body = match listclients_mount(&buffer[..end], &mounts) {
                        Some(mount) => listclients(&mounts, server, mount, count),
                        None => stats(&mounts, server, count),
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if socket.write_all(head.as_bytes()).await.is_err()
                        || socket.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                    buffer.copy_within(end..filled, 0);
                    filled -= end;
                }
                if filled == buffer.len() {
                    return;
                }
            }
        });
    }
}

/// The mount a `GET /mN.ogg` asks for.
fn listener_mount(head: &[u8], mounts: &Mounts) -> Option<usize> {
    let line = head.split(|&b| b == b'\r').next()?;
    let path = std::str::from_utf8(line).ok()?.strip_prefix("GET /m")?;
    let number = path.split(".ogg").next()?;
    number.parse().ok().filter(|&m| m < mounts.count)
}

/// A listener on `mount`: 200 and counted until it hangs up, or 403 when full.
async fn listen(mut socket: tokio::net::TcpStream, mounts: &Mounts, mount: usize) {
    let Some(players) = &mounts.players else {
        // A short stream, for canaries: the type and a burst of bytes.
        let _ = socket
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/ogg\r\n\r\n")
            .await;
        let _ = socket.write_all(&[0u8; 8192]).await;
        return;
    };
    let counter = &players[mount];
    let admitted = counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < mounts.limit).then_some(n + 1)
        })
        .is_ok();
    if !admitted {
        let _ = socket
            .write_all(b"HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    if socket
        .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/ogg\r\n\r\n")
        .await
        .is_ok()
    {
        let mut sink = [0u8; 256];
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    }
    counter.fetch_sub(1, Ordering::SeqCst);
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The mount a `GET /admin/listclients?mount=/mN.ogg` asks for.
fn listclients_mount(head: &[u8], mounts: &Mounts) -> Option<usize> {
    let line = head.split(|&b| b == b'\r').next()?;
    let query = std::str::from_utf8(line)
        .ok()?
        .strip_prefix("GET /admin/listclients?mount=")?;
    let number = query
        .strip_prefix("%2Fm")
        .or_else(|| query.strip_prefix("/m"))?;
    number
        .split(".ogg")
        .next()?
        .parse()
        .ok()
        .filter(|&m| m < mounts.count)
}

/// The player user agents simulated listeners take turns with.
const AGENTS: [&str; 6] = [
    "VLC/3.0.18 LibVLC/3.0.18",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Lavf/59.27.100",
    "mpv 0.35.1",
    "Sonos/70.3-35220 (ZPS1)",
    "curl/7.88.1",
];

/// An /admin/listclients document shaped like Icecast 2.4's: as many
/// listeners as the stats count, with varied addresses, players and ages.
fn listclients(mounts: &Mounts, server: usize, mount: usize, count: u64) -> String {
    let listeners = match &mounts.players {
        Some(players) => players[mount].load(Ordering::SeqCst) as usize,
        None => (count as usize + server + mount * 7) % 90,
    };
    let mut body = format!(
        "<?xml version=\"1.0\"?>\n<icestats><source mount=\"/m{mount}.ogg\"><Listeners>{listeners}</Listeners>"
    );
    for i in 0..listeners {
        let _ = write!(
            body,
            "<listener id=\"{i}\"><IP>10.{}.{}.{}</IP><UserAgent>{}</UserAgent><Connected>{}</Connected><ID>{i}</ID></listener>",
            server % 256,
            mount,
            i % 256,
            AGENTS[(server + i) % AGENTS.len()],
            (i as u64 * 97 + count) % 20_000
        );
    }
    body.push_str("</source></icestats>");
    body
}

/// An /admin/stats document shaped like Icecast 2.4's, with drifting counts.
fn stats(mounts: &Mounts, server: usize, count: u64) -> String {
    // A live source: its byte count grows, in Icecast's 5 s steps (4 KB/s),
    // so the poller never takes the simulated sources for stalled ones.
    let bytes_read = STARTED.elapsed().as_secs() / 5 * 5 * 4000;
    let mut body = String::from(
        "<?xml version=\"1.0\"?>\n<icestats><admin>sim@localhost</admin><host>127.0.0.1</host><server_id>Icecast 2.4.4</server_id>",
    );
    let mut total = 0;
    let mut sources = String::new();
    let limit = mounts.limit;
    for mount in 0..mounts.count {
        let listeners = match &mounts.players {
            Some(players) => players[mount].load(Ordering::SeqCst) as usize,
            None => (count as usize + server + mount * 7) % 90,
        };
        total += listeners;
        let _ = write!(
            sources,
            "<source mount=\"/m{mount}.ogg\"><genre>various</genre><listener_peak>90</listener_peak><listeners>{listeners}</listeners>\
             <listenurl>http://127.0.0.1/m{mount}.ogg</listenurl><max_listeners>{limit}</max_listeners><public>0</public>\
             <server_name>Simulated</server_name><server_type>application/ogg</server_type><slow_listeners>0</slow_listeners>\
             <source_ip>127.0.0.1</source_ip><total_bytes_read>{bytes_read}</total_bytes_read><total_bytes_sent>0</total_bytes_sent></source>"
        );
    }
    let _ = write!(
        body,
        "<listeners>{total}</listeners><sources>{}</sources>{sources}</icestats>",
        mounts.count
    );
    body
}
