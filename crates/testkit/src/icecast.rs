//! Real `icecast2` servers fed by `ffmpeg` test-tone sources.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::ChildProcess;

/// Where Debian's icecast2 package keeps its web and admin XSLT files.
const ICECAST_SHARE: &str = "/usr/share/icecast2";
/// How long an Icecast may take to answer HTTP, and its mounts to go live.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How many fresh ports to try when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// Credentials every test Icecast uses.
const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "testkit-admin";
const SOURCE_PASSWORD: &str = "testkit-source";

/// The audio a source sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ogg Vorbis; ffmpeg must be told `-content_type application/ogg`.
    Ogg,
    /// MPEG-1 Layer III.
    Mp3,
}

/// One mount of a test Icecast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The mount path, e.g. `/live.ogg`.
    pub path: String,
    /// What the source sends.
    pub format: Format,
    /// `<max-listeners>`; `None` leaves the mount unlimited.
    pub max_listeners: Option<u32>,
    /// Whether a source feeds it from the start.
    pub live: bool,
    /// Stream name the source announces (`ice-name`), if any.
    pub stream_name: Option<String>,
    /// Genre the source announces (`ice-genre`), if any.
    pub genre: Option<String>,
    /// Icecast asks this URL before admitting a listener (`<authentication
    /// type="url">` with `listener_add`); a backend that is down makes it
    /// refuse every listener while its status pages stay fine.
    pub listener_auth_url: Option<String>,
    /// The song title the source sends in its stream (an Ogg comment), if any.
    pub song_title: Option<String>,
}

impl MountSpec {
    /// An Ogg Vorbis mount with a live source and no listener limit.
    pub fn ogg(path: &str) -> Self {
        MountSpec {
            path: path.to_owned(),
            format: Format::Ogg,
            max_listeners: None,
            live: true,
            stream_name: None,
            genre: None,
            listener_auth_url: None,
            song_title: None,
        }
    }

    /// An MP3 mount with a live source and no listener limit.
    pub fn mp3(path: &str) -> Self {
        MountSpec {
            format: Format::Mp3,
            ..MountSpec::ogg(path)
        }
    }

    /// Sets `<max-listeners>`.
    pub fn max_listeners(mut self, limit: u32) -> Self {
        self.max_listeners = Some(limit);
        self
    }

    /// Sets the stream name and genre the source announces, e.g. to reproduce
    /// Icecast's status-json quirks with values that look like numbers.
    pub fn announce(mut self, stream_name: &str, genre: &str) -> Self {
        self.stream_name = Some(stream_name.to_owned());
        self.genre = Some(genre.to_owned());
        self
    }

    /// Admits listeners only when `url` says yes (Icecast's URL listener
    /// authentication).
    pub fn listener_auth(mut self, url: &str) -> Self {
        self.listener_auth_url = Some(url.to_owned());
        self
    }

    /// Makes the source send `title` as the song now playing, as an encoder
    /// fed by a playout system does (and as anyone with the source password can).
    pub fn song_title(mut self, title: &str) -> Self {
        self.song_title = Some(title.to_owned());
        self
    }

    /// Declares the mount in the config but starts no source for it.
    pub fn without_source(mut self) -> Self {
        self.live = false;
        self
    }
}

/// What a test Icecast looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcecastSpec {
    /// Its mounts.
    pub mounts: Vec<MountSpec>,
    /// `<limits><clients>`: the server-wide client limit (listeners, sources and
    /// admin requests together, as Icecast counts them).
    pub client_limit: u32,
    /// `<source-timeout>`: seconds Icecast keeps a source that sends nothing.
    pub source_timeout: u32,
}

impl IcecastSpec {
    /// A server with these mounts and a client limit of 100.
    pub fn new(mounts: impl IntoIterator<Item = MountSpec>) -> Self {
        IcecastSpec {
            mounts: mounts.into_iter().collect(),
            client_limit: 100,
            source_timeout: 10,
        }
    }

    /// Sets how long Icecast keeps a source that sends nothing (default 10 s).
    pub fn source_timeout(mut self, seconds: u32) -> Self {
        self.source_timeout = seconds;
        self
    }

    /// Sets the server-wide client limit.
    pub fn client_limit(mut self, limit: u32) -> Self {
        self.client_limit = limit;
        self
    }
}

/// A running `icecast2` with its own config, logs and web root (holding the
/// project's `load.xsl`), and one ffmpeg source per live mount.
pub struct IcecastServer {
    spec: IcecastSpec,
    port: u16,
    dir: TempDir,
    process: Option<ChildProcess>,
    sources: Vec<(String, ChildProcess)>,
    http: reqwest::Client,
}

impl IcecastServer {
    /// Starts a server and waits until every live mount has its source connected.
    pub async fn start(spec: IcecastSpec) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("testkit-icecast-")
            .tempdir()
            .expect("temp dir for icecast");
        prepare_dir(dir.path());
        let mut server = IcecastServer {
            spec,
            port: 0,
            dir,
            process: None,
            sources: Vec::new(),
            http: crate::http()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("HTTP client"),
        };
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            // A server whose sources cannot reach it (seen rarely on a busy
            // machine: started, then nothing listening) is started again on
            // another port, like a port that was taken.
            let started = match server.launch().await {
                Ok(()) => server.try_start_sources().await,
                Err(failure) => Err(failure),
            };
            match started {
                Ok(()) => return server,
                Err(failure) => {
                    server.kill();
                    last_failure = failure;
                }
            }
        }
        panic!("icecast2 did not start after {PORT_ATTEMPTS} attempts: {last_failure}");
    }

    /// Starts several servers at once.
    pub async fn start_many(specs: impl IntoIterator<Item = IcecastSpec>) -> Vec<Self> {
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|spec| tokio::spawn(IcecastServer::start(spec)))
            .collect();
        let mut servers = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(server) => servers.push(server),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        servers
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of a mount.
    pub fn mount_url(&self, mount: &str) -> String {
        format!("{}{mount}", self.base_url())
    }

    /// The admin user name.
    pub fn admin_user(&self) -> &'static str {
        ADMIN_USER
    }

    /// The admin password.
    pub fn admin_password(&self) -> &'static str {
        ADMIN_PASSWORD
    }

    /// What it was started with.
    pub fn spec(&self) -> &IcecastSpec {
        &self.spec
    }

    /// Process ids of icecast2 and its sources, for checking nothing is left behind.
    pub fn pids(&self) -> Vec<u32> {
        let icecast = self.process.as_ref().and_then(ChildProcess::pid);
        let sources = self.sources.iter().filter_map(|(_, s)| s.pid());
        icecast.into_iter().chain(sources).collect()
    }

    /// Kills icecast2 and its sources with SIGKILL, as in a crash.
    pub fn kill(&mut self) {
        self.sources.clear();
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port with the same mounts and sources.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(failure) = self.launch().await {
            panic!("icecast2 did not restart on port {}: {failure}", self.port);
        }
        self.start_sources().await;
    }

    /// Sends `signal` to the source process of `mount` (SIGSTOP: a source
    /// that stays connected and sends nothing; SIGCONT: it goes on).
    pub fn signal_source(&self, mount: &str, signal: i32) {
        for (_, source) in self.sources.iter().filter(|(m, _)| m == mount) {
            source.signal(signal);
        }
    }

    /// Disconnects the source of `mount` and waits until Icecast drops the mount.
    pub async fn stop_source(&mut self, mount: &str) {
        self.sources.retain(|(m, _)| m != mount);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.live_mounts().await.iter().any(|m| m == mount) {
            assert!(
                Instant::now() < deadline,
                "{mount} still listed after its source stopped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects a source to `mount` and waits until it is live.
    pub async fn start_source(&mut self, mount: &str) {
        let spec = self
            .spec
            .mounts
            .iter()
            .find(|m| m.path == mount)
            .unwrap_or_else(|| panic!("{mount} is not a mount of this server"))
            .clone();
        self.sources.retain(|(m, _)| m != mount);
        let source = self.spawn_source(&spec);
        self.sources.push((spec.path.clone(), source));
        self.wait_live(&[spec]).await;
    }

    /// The body of `/admin/stats`, or `None` if the request fails.
    pub async fn admin_stats(&self) -> Option<String> {
        let response = self
            .http
            .get(format!("{}/admin/stats", self.base_url()))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    /// Mounts Icecast currently lists, i.e. those with a connected source.
    pub async fn live_mounts(&self) -> Vec<String> {
        let stats = self.admin_stats().await.unwrap_or_default();
        stats
            .split("<source mount=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    /// The listener count Icecast reports for `mount`, if it lists the mount.
    pub async fn listeners(&self, mount: &str) -> Option<u32> {
        let stats = self.admin_stats().await?;
        let start = stats.find(&format!("<source mount=\"{mount}\""))?;
        let section = &stats[start..];
        let section = &section[..section.find("</source>")?];
        let value = section.split("<listeners>").nth(1)?.split('<').next()?;
        value.trim().parse().ok()
    }

    /// The last lines of Icecast's error log, for failure messages.
    pub fn error_log_tail(&self) -> String {
        crate::process::log_tail(&self.dir.path().join("log/error.log"))
    }

    async fn launch(&mut self) -> Result<(), String> {
        let config = self.dir.path().join("icecast.xml");
        std::fs::write(&config, self.config_xml()).expect("write icecast.xml");
        let mut command = Command::new("icecast2");
        command.arg("-c").arg(&config);
        self.process = Some(ChildProcess::spawn(
            "icecast2",
            &mut command,
            &self.dir.path().join("stdout.log"),
        ));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let process = self.process.as_mut().expect("started above");
            if let Some(status) = process.exited() {
                let failure = format!(
                    "icecast2 exited ({status}): {}{}",
                    process.log_tail(),
                    self.error_log_tail()
                );
                self.kill();
                return Err(failure);
            }
            let answered = self
                .http
                .get(format!("{}/status-json.xsl", self.base_url()))
                .send()
                .await
                .ok();
            if let Some(response) = answered {
                // Only our icecast2, still running, counts: not whatever
                // else may answer on a port that was free a moment ago.
                let ours = response
                    .text()
                    .await
                    .is_ok_and(|body| body.contains("icestats"));
                let running = self.process.as_mut().is_some_and(|p| p.exited().is_none());
                if ours && running {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let failure = format!(
                    "no HTTP answer within {START_TIMEOUT:?}: {}",
                    self.error_log_tail()
                );
                self.kill();
                return Err(failure);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start_sources(&mut self) {
        if let Err(failure) = self.try_start_sources().await {
            panic!("{failure}");
        }
    }

    async fn try_start_sources(&mut self) -> Result<(), String> {
        let live: Vec<MountSpec> = self
            .spec
            .mounts
            .iter()
            .filter(|m| m.live)
            .cloned()
            .collect();
        for mount in &live {
            let source = self.spawn_source(mount);
            self.sources.push((mount.path.clone(), source));
        }
        self.try_wait_live(&live).await
    }

    /// Waits until every mount in `mounts` is listed, restarting sources that gave up.
    async fn wait_live(&mut self, mounts: &[MountSpec]) {
        if let Err(failure) = self.try_wait_live(mounts).await {
            panic!("{failure}");
        }
    }

    /// Like [`IcecastServer::wait_live`], with the failure as a value.
    async fn try_wait_live(&mut self, mounts: &[MountSpec]) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let listed = self.live_mounts().await;
            if mounts.iter().all(|m| listed.contains(&m.path)) {
                return Ok(());
            }
            for spec in mounts {
                let exited = self
                    .sources
                    .iter_mut()
                    .find(|(m, _)| *m == spec.path)
                    .is_some_and(|(_, s)| s.exited().is_some());
                if exited {
                    self.sources.retain(|(m, _)| *m != spec.path);
                    let source = self.spawn_source(spec);
                    self.sources.push((spec.path.clone(), source));
                }
            }
            if Instant::now() > deadline {
                let logs: String = self.sources.iter().map(|(_, s)| s.log_tail()).collect();
                return Err(format!(
                    "mounts not live within {START_TIMEOUT:?}: want {:?}, listed {listed:?}\nsources: {logs}\nicecast: {}",
                    mounts.iter().map(|m| &m.path).collect::<Vec<_>>(),
                    self.error_log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn_source(&self, mount: &MountSpec) -> ChildProcess {
        let (codec, content_type, muxer) = match mount.format {
            Format::Ogg => ("libvorbis", "application/ogg", "ogg"),
            Format::Mp3 => ("libmp3lame", "audio/mpeg", "mp3"),
        };
        let target = format!(
            "icecast://source:{SOURCE_PASSWORD}@127.0.0.1:{}{}",
            self.port, mount.path
        );
        let mut command = Command::new("ffmpeg");
        command
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050"])
            .args(["-ac", "1", "-c:a", codec, "-b:a", "32k"])
            .args(["-content_type", content_type]);
        if let Some(name) = &mount.stream_name {
            command.args(["-ice_name", name]);
        }
        if let Some(genre) = &mount.genre {
            command.args(["-ice_genre", genre]);
        }
        if let Some(title) = &mount.song_title {
            command.arg("-metadata").arg(format!("title={title}"));
        }
        command.args(["-f", muxer]).arg(target);
        let log = self
            .dir
            .path()
            .join(format!("source{}.log", mount.path.replace('/', "_")));
        ChildProcess::spawn("ffmpeg", &mut command, &log)
    }

    fn config_xml(&self) -> String {
        let dir = self.dir.path().display();
        let sources = self.spec.mounts.len() + 2;
        let mut mounts = String::new();
        for m in &self.spec.mounts {
            let _ = write!(
                mounts,
                "  <mount type=\"normal\">\n    <mount-name>{}</mount-name>\n",
                m.path
            );
            if let Some(limit) = m.max_listeners {
                let _ = writeln!(mounts, "    <max-listeners>{limit}</max-listeners>");
            }
            if let Some(url) = &m.listener_auth_url {
                let _ = writeln!(
                    mounts,
                    "    <authentication type=\"url\">\n      \
                     <option name=\"listener_add\" value=\"{url}\"/>\n      \
                     <option name=\"auth_header\" value=\"icecast-auth-user: 1\"/>\n    \
                     </authentication>"
                );
            }
            mounts.push_str("  </mount>\n");
        }
        // Icecast refuses to run as root unless it may change to another user.
        let security = match unprivileged_user() {
            Some((user, group)) => format!(
                "<security><chroot>0</chroot><changeowner><user>{user}</user><group>{group}</group></changeowner></security>"
            ),
            None => "<security><chroot>0</chroot></security>".to_owned(),
        };
        format!(
            r#"<icecast>
  <location>testkit</location>
  <admin>testkit@localhost</admin>
  <hostname>127.0.0.1</hostname>
  <limits>
    <clients>{clients}</clients>
    <sources>{sources}</sources>
    <queue-size>524288</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>{source_timeout}</source-timeout>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>16384</burst-size>
  </limits>
  <authentication>
    <source-password>{SOURCE_PASSWORD}</source-password>
    <relay-password>{SOURCE_PASSWORD}</relay-password>
    <admin-user>{ADMIN_USER}</admin-user>
    <admin-password>{ADMIN_PASSWORD}</admin-password>
  </authentication>
  <listen-socket>
    <port>{port}</port>
    <bind-address>127.0.0.1</bind-address>
  </listen-socket>
{mounts}  <fileserve>1</fileserve>
  <paths>
    <basedir>{dir}</basedir>
    <logdir>{dir}/log</logdir>
    <webroot>{dir}/web</webroot>
    <adminroot>{ICECAST_SHARE}/admin</adminroot>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>3</loglevel>
    <logsize>10000</logsize>
  </logging>
  {security}
</icecast>
"#,
            clients = self.spec.client_limit,
            source_timeout = self.spec.source_timeout,
            port = self.port,
        )
    }
}

/// Lays out the web root (Icecast's XSLT files plus our load.xsl) and a log
/// directory the unprivileged Icecast user can write.
fn prepare_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let web = dir.join("web");
    let log = dir.join("log");
    std::fs::create_dir_all(&web).expect("create web root");
    std::fs::create_dir_all(&log).expect("create log dir");
    let share = PathBuf::from(ICECAST_SHARE).join("web");
    let entries = std::fs::read_dir(&share).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; is icecast2 installed? `cargo xtask test` installs it",
            share.display()
        )
    });
    for entry in entries.flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), web.join(entry.file_name())).expect("copy web file");
        }
    }
    std::fs::write(web.join("load.xsl"), crate::LOAD_XSL).expect("install load.xsl");
    // Icecast drops root privileges before reading the web root and writing logs.
    let open = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    open(dir, 0o755);
    open(&web, 0o755);
    open(&log, 0o777);
}

/// The user and group Icecast should switch to when started as root.
fn unprivileged_user() -> Option<(&'static str, &'static str)> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return None;
    }
    // Debian's icecast2 package creates icecast2:icecast; nobody:nogroup exists everywhere.
    let has_user = std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.starts_with("icecast2:")))
        .unwrap_or(false);
    Some(if has_user {
        ("icecast2", "icecast")
    } else {
        ("nobody", "nogroup")
    })
}
