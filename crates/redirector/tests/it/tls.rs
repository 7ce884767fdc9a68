//! Public URLs per scheme behind real TLS terminators (HAProxy with a
//! certificate from a CA made by the test, in front of Icecast and in front
//! of the redirector): the poller's canaries listen over https, players keep
//! the scheme they arrived with (from the connection, or a trusted proxy's
//! `X-Forwarded-Proto`), an https player and ffmpeg really play, and a dead
//! terminator takes the server out after `fall` canaries and back after `rise`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use balancer_testkit::{ChildProcess, IcecastServer, IcecastSpec, MountSpec, RedisServer};
use balancer_testkit::{free_port, wait_until};
use tempfile::TempDir;

use crate::control::{ctl, sample, scrape};
use crate::support::*;

/// A test CA and a certificate for `localhost` and 127.0.0.1 signed by it.
struct TestCa {
    dir: TempDir,
}

impl TestCa {
    fn make() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl is missing: `cargo xtask test` installs it");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        run(&[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=icecast-balancer test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        run(&[
            &["req", "-new", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        let chain = [
            std::fs::read_to_string(dir.path().join("server.crt")).unwrap(),
            std::fs::read_to_string(dir.path().join("server.key")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.path().join("server.pem"), chain).unwrap();
        TestCa { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn server_pem(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
}

/// HAProxy terminating TLS on `front` for one Icecast, as a station runs it.
struct TlsTerminator {
    process: ChildProcess,
    _dir: TempDir,
}

impl TlsTerminator {
    /// TLS in front of an Icecast (TCP passed through, as for audio).
    async fn start(front: SocketAddr, certificate: &Path, icecast: &IcecastServer) -> Self {
        let config = format!(
            "\
defaults
  mode tcp
  timeout connect 1s
  timeout client 30s
  timeout server 30s

frontend tls
  bind {front} ssl crt {}
  default_backend icecast

backend icecast
  server icecast 127.0.0.1:{}
",
            certificate.display(),
            icecast.port()
        );
        TlsTerminator::run(front, config).await
    }

    /// TLS in front of a redirector, as an operator offers
    /// `https://radio.example/<stream>`: HTTP mode, telling the redirector
    /// the player's address and that it came over https.
    async fn for_balancer(front: SocketAddr, certificate: &Path, redirector: &Service) -> Self {
        let config = format!(
            "\
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s

frontend players
  bind {front} ssl crt {}
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  default_backend redirector

backend redirector
  server redirector {}
",
            certificate.display(),
            redirector.listen
        );
        TlsTerminator::run(front, config).await
    }

    async fn run(front: SocketAddr, config: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let process = start_haproxy(dir.path(), &config, front).await;
        TlsTerminator { process, _dir: dir }
    }
}

/// Asks for `/s` as a player that arrived over `proto` (through the trusted
/// proxy at 127.0.0.1 when `proto` is given); the status and `Location`.
async fn ask(redirector: &Service, proto: Option<&str>) -> (u16, String) {
    let mut request = client().get(redirector.url("/s"));
    if let Some(proto) = proto {
        request = request.header("X-Forwarded-Proto", proto);
    }
    let response = request.send().await.unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_players_get_https_and_canaries_watch_the_tls_terminator() {
    let ca = TestCa::make();
    let (redis, icecast) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new([
            MountSpec::ogg("/s.ogg").max_listeners(100)
        ]))
    );
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut terminator = TlsTerminator::start(front, &ca.server_pem(), &icecast).await;
    let https_base = format!("https://localhost:{}", front.port());
    let fleet = format!(
        "[poller]\ninterval = \"500ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3\n\
         canary_interval = \"200ms\"\ncanary_timeout = \"2s\"\nca_file = \"{}\"\n{}\
         [[stream]]\nname = \"s\"\nmounts = [{{ server = \"one\", mount = \"/s.ogg\" }}]\n",
        ca.ca().display(),
        server_block(
            "one",
            &icecast,
            &format!(
                "public_url = [\"{}\", \"{https_base}\"]\ncross_scheme = false",
                icecast.base_url()
            )
        ),
    );
    let (poller, mut replicas) =
        balancer(&redis, &fleet, 1, &["--trusted-proxy", "127.0.0.1/32"]).await;
    let redirector = replicas.remove(0);
    let http_url = icecast.mount_url("/s.ogg");
    let https_url = format!("{https_base}/s.ogg");

    // Canaries listen at both public URLs and succeed, the https one through
    // the terminator with the fleet's CA.
    wait_until("canaries to succeed at both URLs", PATIENCE, || async {
        let samples = scrape(poller.admin).await;
        (sample(&samples, "icb_canaries_total", &["result=\"ok\""]) >= 4.0).then_some(())
    })
    .await;
    // (The very first canaries may have waited for a source that had just
    // started; they are not counted against anything here.)

    // Each player keeps its scheme: from the connection (http), or from the
    // trusted proxy's header.
    assert_eq!(ask(&redirector, None).await, (302, http_url.clone()));
    assert_eq!(
        ask(&redirector, Some("http")).await,
        (302, http_url.clone())
    );
    assert_eq!(
        ask(&redirector, Some("https")).await,
        (302, https_url.clone())
    );

    // A real https player: it asks the balancer over https (through a TLS
    // terminator in front of the redirector), is sent to the https URL and
    // plays, verifying every certificate against the test CA.
    let balancer_front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _balancer_tls =
        TlsTerminator::for_balancer(balancer_front, &ca.server_pem(), &redirector).await;
    let stream_url = format!("https://localhost:{}/s", balancer_front.port());
    let certificate = reqwest::Certificate::from_pem(&std::fs::read(ca.ca()).unwrap()).unwrap();
    let player = balancer_testkit::http()
        .tls_certs_merge([certificate])
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let mut response = player.get(&stream_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.url().as_str(),
        https_url,
        "followed to the https mount"
    );
    let mut bytes = 0;
    while bytes < 4096 {
        bytes += response
            .chunk()
            .await
            .unwrap()
            .expect("audio keeps coming")
            .len();
    }
    drop(response);
    // ... and so does ffmpeg.
    let ca_file = ca.ca();
    let url = stream_url.clone();
    let ffmpeg = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-tls_verify",
                "1",
                "-ca_file",
            ])
            .arg(&ca_file)
            .args(["-t", "1", "-i", &url, "-f", "null", "-"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        ffmpeg.status.success(),
        "ffmpeg could not play {stream_url}: {}",
        String::from_utf8_lossy(&ffmpeg.stderr)
    );

    // The terminator dies while Icecast's status stays fine: after `fall`
    // failed canaries at the https URL the server takes no players.
    assert_eq!(
        ask(&redirector, None).await,
        (302, http_url.clone()),
        "in service before the terminator dies: {}",
        poller.process.log_tail()
    );
    let taken_out = Instant::now();
    terminator.process.kill();
    let _ = terminator.process.wait_exit(Duration::from_secs(5)).await;
    wait_until("the server to be taken out", PATIENCE, || async {
        (ask(&redirector, None).await.0 == 503).then_some(())
    })
    .await;
    println!(
        "taken out {:?} after the terminator died",
        taken_out.elapsed()
    );
    let (_, servers, _) = ctl(poller.admin, &["servers"]);
    assert!(
        servers.contains("canary failed")
            && servers.contains(&https_url)
            && servers.contains("cannot connect"),
        "balancerctl servers names the failing canary and why: {servers}"
    );

    // Back up on the same address: after `rise` good canaries, players return.
    let _terminator = TlsTerminator::start(front, &ca.server_pem(), &icecast).await;
    wait_until("the server to take players again", PATIENCE, || async {
        (ask(&redirector, Some("https")).await == (302, https_url.clone())).then_some(())
    })
    .await;
    assert_eq!(ask(&redirector, None).await, (302, http_url));
    drop(terminator);
}
