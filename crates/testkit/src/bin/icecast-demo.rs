//! `icecast-demo`: the whole balancer on one machine, for people to try.
//!
//! Started by `cargo xtask demo` (which installs the packages and builds the
//! binaries first). It starts three real Icecast servers with test-tone
//! sources and different listener limits, Redis, one poller and two
//! redirector replicas (or, with `--standalone`, one redirector polling
//! in-process), prints how to listen and how to watch, and stops everything
//! on Ctrl-C or SIGTERM.
//!
//! ```text
//! icecast-demo [--standalone] [--bin-dir DIR] [--any-ports]
//! ```
//!
//! `--bin-dir` is where `icecast-poller`, `icecast-redirector` and
//! `balancerctl` are (default: beside this program). The services listen on
//! 8000/8001 and 7070-7072 when those are free; `--any-ports` always picks
//! free ports, so tests can run several demos at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use balancer_testkit::geoip::{CityNet, city_db};
use balancer_testkit::{
    ChildProcess, IcecastServer, IcecastSpec, MountSpec, RedisServer, process_exists,
};

/// The demo's servers: name, country, coordinates and listener limit per mount.
const SERVERS: [(&str, &str, (f64, f64), u32); 3] = [
    ("vienna", "AT", (48.21, 16.37), 3),
    ("graz", "AT", (47.07, 15.44), 5),
    ("berlin", "DE", (52.52, 13.40), 10),
];
/// How long the services may take to redirect their first player.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Options {
    standalone: bool,
    bin_dir: PathBuf,
    any_ports: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        standalone: false,
        any_ports: false,
        bin_dir: std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--standalone" => options.standalone = true,
            "--any-ports" => options.any_ports = true,
            "--bin-dir" => {
                options.bin_dir = args.next().ok_or("--bin-dir needs a value")?.into();
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    for binary in ["icecast-poller", "icecast-redirector", "balancerctl"] {
        if !options.bin_dir.join(binary).is_file() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release` or use `cargo xtask demo`",
                options.bin_dir.join(binary).display()
            ));
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!(
                "icecast-demo: {e}\nusage: icecast-demo [--standalone] [--bin-dir DIR] [--any-ports]"
            );
            return ExitCode::from(64);
        }
    };
    // Children get SIGKILL when this thread ends (testkit's ChildProcess), and
    // are killed on drop: whatever way the demo ends, nothing stays behind.
    let demo = match Demo::start(&options).await {
        Ok(demo) => demo,
        Err(e) => {
            eprintln!("icecast-demo: {e}");
            return ExitCode::from(70);
        }
    };
    demo.print_instructions(&options);
    let stop = wait_for_stop().await;
    eprintln!("\n{stop}: stopping everything the demo started");
    let pids = demo.pids();
    drop(demo);
    let left: Vec<u32> = pids.into_iter().filter(|p| process_exists(*p)).collect();
    if left.is_empty() {
        eprintln!("stopped; nothing is left running");
        ExitCode::SUCCESS
    } else {
        eprintln!("processes still running: {left:?}");
        ExitCode::from(70)
    }
}

async fn wait_for_stop() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return "cannot watch signals";
    };
    tokio::select! {
        _ = interrupt.recv() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// Everything the demo runs; dropping it stops all of it.
struct Demo {
    dir: tempfile::TempDir,
    /// Free ports only, never the well-known ones.
    any_ports: bool,
    icecasts: Vec<IcecastServer>,
    redis: Option<RedisServer>,
    services: Vec<Service>,
}

/// One of our binaries, running.
struct Service {
    name: String,
    process: ChildProcess,
    listen: Option<SocketAddr>,
    admin: SocketAddr,
}

impl Demo {
    async fn start(options: &Options) -> Result<Demo, String> {
        let dir = tempfile::Builder::new()
            .prefix("icecast-demo-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        eprintln!("starting 3 Icecast servers with test-tone sources...");
        let specs = SERVERS.map(|(_, _, _, limit)| {
            IcecastSpec::new([
                MountSpec::ogg("/demo.ogg")
                    .max_listeners(limit)
                    .announce("Demo tone (Ogg)", "test"),
                MountSpec::mp3("/demo.mp3")
                    .max_listeners(limit)
                    .announce("Demo tone (MP3)", "test"),
            ])
        });
        let redis_start = async {
            if options.standalone {
                None
            } else {
                Some(RedisServer::start().await)
            }
        };
        let (icecasts, redis) = tokio::join!(IcecastServer::start_many(specs), redis_start);
        let fleet = dir.path().join("fleet.toml");
        std::fs::write(&fleet, fleet_toml(&icecasts))
            .map_err(|e| format!("cannot write {}: {e}", fleet.display()))?;
        // Players on this machine come from 127.0.0.1: place it in Vienna.
        let geoip = dir.path().join("city.mmdb");
        let db = city_db(&[CityNet {
            network: "127.0.0.0/8",
            country: "AT",
            continent: "EU",
            location: (48.21, 16.37),
        }]);
        std::fs::write(&geoip, db).map_err(|e| format!("cannot write {}: {e}", geoip.display()))?;

        let mut demo = Demo {
            dir,
            any_ports: options.any_ports,
            icecasts,
            redis,
            services: Vec::new(),
        };
        let bin = |name: &str| options.bin_dir.join(name);
        let geoip_args = ["--geoip-city".to_owned(), geoip.display().to_string()];
        match &demo.redis {
            None => {
                let mut args = vec!["--fleet".to_owned(), fleet.display().to_string()];
                args.extend(geoip_args);
                let service =
                    demo.spawn("redirector", &bin("icecast-redirector"), args, 8000, 7071);
                demo.services.push(service);
            }
            Some(redis) => {
                let redis_url = redis.url();
                let mut poller_args = vec![
                    "--config".to_owned(),
                    fleet.display().to_string(),
                    "--redis".to_owned(),
                    redis_url.clone(),
                ];
                // Places listeners for the console's audience figures.
                poller_args.extend(geoip_args.clone());
                let poller = demo.spawn("poller", &bin("icecast-poller"), poller_args, 0, 7070);
                demo.services.push(poller);
                for (i, (listen, admin)) in [(8000, 7071), (8001, 7072)].into_iter().enumerate() {
                    let mut args = vec!["--redis".to_owned(), redis_url.clone()];
                    args.extend(geoip_args.clone());
                    let name = format!("redirector-{}", i + 1);
                    let service =
                        demo.spawn(&name, &bin("icecast-redirector"), args, listen, admin);
                    demo.services.push(service);
                }
            }
        }
        demo.wait_ready().await?;
        Ok(demo)
    }

    /// Starts one of our binaries, on `listen` and `admin` ports when they are
    /// free (so the printed commands are short), else on free ones.
    fn spawn(
        &self,
        name: &str,
        binary: &Path,
        mut args: Vec<String>,
        listen: u16,
        admin: u16,
    ) -> Service {
        let port = |wanted: u16| loopback(if self.any_ports { 0 } else { wanted });
        let listen = (listen != 0).then(|| port(listen));
        let admin = port(admin);
        if let Some(listen) = listen {
            args.extend(["--listen".to_owned(), listen.to_string()]);
        }
        args.extend(["--admin".to_owned(), admin.to_string()]);
        let mut command = Command::new(binary);
        command.args(&args).env("RUST_LOG", "info");
        let log = self.dir.path().join(format!("{name}.log"));
        Service {
            name: name.to_owned(),
            process: ChildProcess::spawn(name, &mut command, &log),
            listen,
            admin,
        }
    }

    /// Waits until every redirector answers a player with a 302.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = balancer_testkit::http()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        for service in &mut self.services {
            let Some(listen) = service.listen else {
                continue;
            };
            let url = format!("http://{listen}/demo");
            loop {
                if let Some(status) = service.process.exited() {
                    return Err(format!(
                        "{} exited ({status}):\n{}",
                        service.name,
                        service.process.log_tail()
                    ));
                }
                let answer = client.head(&url).send().await.map(|r| r.status().as_u16());
                if matches!(answer, Ok(302)) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} did not redirect within {READY_TIMEOUT:?} (last: {answer:?}):\n{}",
                        service.name,
                        service.process.log_tail()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn print_instructions(&self, options: &Options) {
        let first = self.services.iter().find_map(|s| s.listen);
        let Some(listen) = first else { return };
        let ctl = options.bin_dir.join("balancerctl");
        let ctl = ctl.display();
        println!(
            "\nicecast-balancer demo is running (logs and config in {})\n",
            self.dir.path().display()
        );
        for (icecast, (name, _, _, limit)) in self.icecasts.iter().zip(SERVERS) {
            println!(
                "  icecast {name:<7} {}  /demo.ogg and /demo.mp3, {limit} listeners each",
                icecast.base_url()
            );
        }
        if let Some(redis) = &self.redis {
            println!("  redis            {}", redis.url());
        }
        for service in &self.services {
            match service.listen {
                Some(listen) => println!(
                    "  {:<16} http://{listen}  (admin {})",
                    service.name, service.admin
                ),
                None => println!("  {:<16} admin {}", service.name, service.admin),
            }
        }
        println!("\nOpen in a browser:\n  stream index     http://{listen}/");
        if let Some(console) = self.services.first() {
            // The poller's console has the fleet, or the standalone redirector's.
            println!("  console          http://{}/console", console.admin);
        }
        println!(
            "\nListen (the stream names are demo and demo-mp3):
  vlc http://{listen}/demo          # or: mpv http://{listen}/demo
  ffmpeg -i http://{listen}/demo-mp3 -t 10 -f null -
  curl -si http://{listen}/demo     # the 302 itself
  curl -s http://{listen}/demo.m3u  # a playlist

Watch (players from this machine count as Vienna: they fill vienna, then graz, then berlin):"
        );
        for service in &self.services {
            println!("  {ctl} --admin {} status", service.admin);
        }
        // The poller's view, or the standalone redirector's.
        if let Some(service) = self.services.first() {
            println!("  {ctl} --admin {} servers", service.admin);
        }
        for service in self.services.iter().filter(|s| s.listen.is_some()) {
            println!("  {ctl} --admin {} explain demo 127.0.0.1", service.admin);
            println!("  curl -s http://{}/metrics", service.admin);
        }
        println!("\nPress Ctrl-C to stop everything.");
    }

    /// Every process the demo started.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.icecasts.iter().flat_map(IcecastServer::pids).collect();
        pids.extend(self.redis.as_ref().and_then(RedisServer::pid));
        pids.extend(self.services.iter().filter_map(|s| s.process.pid()));
        pids
    }
}

/// `127.0.0.1:port` if that port is free, else a free port (`port` 0: always a free one).
fn loopback(port: u16) -> SocketAddr {
    let wanted = SocketAddr::from(([127, 0, 0, 1], port));
    if port != 0 && std::net::TcpListener::bind(wanted).is_ok() {
        wanted
    } else {
        SocketAddr::from(([127, 0, 0, 1], balancer_testkit::free_port()))
    }
}

/// The demo's fleet: two streams, each on one mount of every server.
fn fleet_toml(icecasts: &[IcecastServer]) -> String {
    let mut fleet = String::from(
        "# Written by icecast-demo.\n[poller]\ninterval = \"1s\"\ntimeout = \"800ms\"\naudience_interval = \"10s\"\n\n",
    );
    for (icecast, (name, country, (lat, lon), _)) in icecasts.iter().zip(SERVERS) {
        fleet += &format!(
            "[[server]]\nname = \"{name}\"\nurl = \"{}\"\nadmin_user = \"{}\"\nadmin_password = \"{}\"\n\
             country = \"{country}\"\nlocation = {{ lat = {lat}, lon = {lon} }}\n\n",
            icecast.base_url(),
            icecast.admin_user(),
            icecast.admin_password(),
        );
    }
    for (stream, mount) in [("demo", "/demo.ogg"), ("demo-mp3", "/demo.mp3")] {
        let mounts: Vec<String> = SERVERS
            .iter()
            .map(|(name, ..)| format!("{{ server = \"{name}\", mount = \"{mount}\" }}"))
            .collect();
        fleet += &format!(
            "[[stream]]\nname = \"{stream}\"\nmounts = [{}]\n\n",
            mounts.join(", ")
        );
    }
    fleet
}
