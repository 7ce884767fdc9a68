//! The poller's run loop: hold the lease, poll every server each interval,
//! publish one snapshot per cycle, reload the fleet on request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use balancer_fleet::{Fleet, Server};
use balancer_proto::snapshot::v1::{Mount, Snapshot};
use balancer_store::{PollerStore, StoreError, lease_ttl, snapshot_ttl};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::audience::StreamAudience;
use crate::canary::{Canary, CanaryError, Probe};
use crate::fetch::{Fetcher, PollResult};
use crate::health::{ServerHealth, ServerStateKind, build_snapshot, wire_mount};
use crate::metrics::PollerMetrics;

/// Longest wait between two attempts to publish while Redis is unavailable.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(2);
/// First wait after a failed publish.
const MIN_PUBLISH_BACKOFF: Duration = Duration::from_millis(100);

/// A mount's listener list, or why it could not be read.
type ListResult = Result<Vec<crate::audience::Listener>, crate::fetch::PollError>;

/// A canary that ended: for which server and public URL scheme (0 http, 1 https).
struct CanaryDone {
    server: String,
    scheme: usize,
    /// `None` when no slot could be leased for it, so it did not listen.
    result: Option<Result<(), CanaryFailure>>,
}

/// A failed canary and the URL it listened at (a public URL: no secret).
#[derive(Debug, thiserror::Error)]
#[error("{url}: {error}")]
pub struct CanaryFailure {
    /// The mount at the public URL.
    pub url: String,
    /// What went wrong.
    pub error: CanaryError,
}

/// What the poller is doing, for health checks and the control API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Holds the lease, so polls and publishes.
    pub leader: bool,
    /// The last attempt to publish succeeded.
    pub published: bool,
    /// Version of the last snapshot published.
    pub snapshot_version: u64,
    /// When it was published (ms since the epoch), 0 if none.
    pub published_at_ms: i64,
}

impl Status {
    /// SERVING in gRPC health terms: leading and able to write to Redis.
    pub fn serving(&self) -> bool {
        self.leader && self.published
    }
}

/// Requests from signals or the control API.
#[derive(Debug)]
pub enum Command {
    /// Re-read the fleet file; a bad one is logged and the running one kept.
    Reload,
    /// Re-read the fleet file and report: the new summary, or the error.
    ReloadAndReport(oneshot::Sender<Result<String, String>>),
    /// Poll every server now and publish; replies with the published version
    /// (0 if this poller is not the leader or could not publish in time).
    PollNow(oneshot::Sender<u64>),
    /// The servers and mounts as the last cycle saw them.
    Servers(oneshot::Sender<Vec<ServerReport>>),
}

/// One server as the control API shows it.
#[derive(Debug, Clone)]
pub struct ServerReport {
    /// The server as it would be published.
    pub server: balancer_proto::snapshot::v1::Server,
    /// Its mounts, each with the stream it carries.
    pub mounts: Vec<(String, Mount)>,
    /// How long its last poll took.
    pub last_poll_ms: u32,
}

/// Reads the environment for `admin_password_env`; injected so tests need no `set_var`.
pub type EnvLookup = fn(&str) -> Option<String>;

/// The poller. Build it with [`Poller::new`], then [`Poller::run`] it. It
/// publishes to Redis ([`balancer_store::RedisStore`]) or, in the standalone
/// redirector, to memory ([`balancer_store::MemoryStore`]).
pub struct Poller<S: PollerStore> {
    fleet_path: PathBuf,
    env: EnvLookup,
    fleet: Fleet,
    store: S,
    identity: String,
    fetcher: Fetcher,
    canary: Canary,
    /// The next canary's server (index into the fleet's servers), and per
    /// server the number of canaries sent, to rotate over mounts and schemes.
    canary_turn: (usize, HashMap<String, usize>),
    health: HashMap<String, ServerHealth>,
    /// Places listeners for the audience figures; disabled without a database.
    geo: Arc<balancer_geo::GeoDb>,
    drained: BTreeSet<String>,
    status: watch::Sender<Status>,
    /// The role last logged, so each change is logged once.
    logged_role: Option<bool>,
    /// Whether the last lease call reached Redis, so an outage is logged once.
    redis_reachable: bool,
    metrics: Option<PollerMetrics>,
    /// The last audience round as JSON, for the operator console.
    audience: watch::Sender<Arc<str>>,
}

impl<S: PollerStore> Poller<S> {
    /// A poller for `fleet` (read from `fleet_path`, re-read on reload) that
    /// publishes to `store` under the lease name `identity`. Fails when the
    /// fleet's `ca_file` holds certificates TLS cannot use.
    pub fn new(
        fleet_path: PathBuf,
        env: EnvLookup,
        fleet: Fleet,
        store: S,
        identity: String,
    ) -> Result<(Self, watch::Receiver<Status>), String> {
        let (status, status_rx) = watch::channel(Status::default());
        let ca = fleet.poller.ca.as_ref();
        let (fetcher, canary) = (Fetcher::new(ca)?, Canary::new(ca)?);
        let poller = Poller {
            fleet_path,
            env,
            fleet,
            store,
            identity,
            fetcher,
            canary,
            canary_turn: (0, HashMap::new()),
            health: HashMap::new(),
            geo: Arc::new(balancer_geo::GeoDb::disabled()),
            drained: BTreeSet::new(),
            status,
            logged_role: None,
            redis_reachable: true,
            metrics: None,
            audience: watch::Sender::new(crate::audience::to_json(&BTreeMap::new(), None).into()),
        };
        Ok((poller, status_rx))
    }

    /// Places listeners with `geo` for the audience figures.
    pub fn with_geo(mut self, geo: Arc<balancer_geo::GeoDb>) -> Self {
        self.geo = geo;
        self
    }

    /// The audience figures of each round as JSON (see
    /// [`crate::audience::to_json`]), for the operator console.
    pub fn audience_feed(&self) -> watch::Receiver<Arc<str>> {
        self.audience.subscribe()
    }

    /// Records Prometheus metrics while running.
    pub fn with_metrics(mut self, metrics: PollerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `shutdown` completes, then gives the lease up so a standby
    /// takes over at once.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.forget_removed_drains().await;
        let (snapshots, latest) = watch::channel(None::<Snapshot>);
        let publisher = tokio::spawn(publish_loop(
            self.store.clone(),
            self.identity.clone(),
            latest,
            self.status.clone(),
            self.metrics.clone(),
        ));
        let mut ticker = self.ticker();
        let mut canary_ticker = self.canary_ticker();
        let mut canaries = JoinSet::new();
        let mut audience_ticker = self.audience_ticker();
        let mut audience_round = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = next_tick(&mut canary_ticker) => self.send_canary(&mut canaries),
                () = next_tick(&mut audience_ticker) => {
                    // One round at a time: a slow fleet skips a turn.
                    if audience_round.is_empty() {
                        self.read_audience(&mut audience_round);
                    }
                }
                Some(Ok(lists)) = audience_round.join_next() => self.record_audience(lists),
                Some(Ok(done)) = canaries.join_next() => self.record_canary(done),
                Some(command) = commands.recv() => match command {
                    Command::Reload | Command::ReloadAndReport(_) => {
                        let interval = self.fleet.poller.interval;
                        let canary_period = self.canary_period();
                        let audience_interval = self.fleet.poller.audience_interval;
                        let outcome = self.reload().await;
                        if self.fleet.poller.interval != interval {
                            ticker = self.ticker();
                        }
                        if self.canary_period() != canary_period {
                            canary_ticker = self.canary_ticker();
                        }
                        if self.fleet.poller.audience_interval != audience_interval {
                            audience_ticker = self.audience_ticker();
                        }
                        if let Command::ReloadAndReport(reply) = command {
                            let _ = reply.send(outcome);
                        }
                    }
                    Command::PollNow(reply) => {
                        let before = self.status.borrow().snapshot_version;
                        let version = match self.cycle().await {
                            Some(snapshot) => {
                                snapshots.send_replace(Some(snapshot));
                                self.wait_published(before).await
                            }
                            None => 0,
                        };
                        let _ = reply.send(version);
                    }
                    Command::Servers(reply) => {
                        let _ = reply.send(self.servers_report());
                    }
                },
                _ = ticker.tick() => {
                    if let Some(snapshot) = self.cycle().await {
                        snapshots.send_replace(Some(snapshot));
                    }
                }
            }
        }
        publisher.abort();
        if self.status.borrow().leader {
            match self.store.release_lease(&self.identity).await {
                Ok(()) => tracing::info!("lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the lease; it expires by itself")
                }
            }
        }
    }

    /// Time between two canaries: the canary interval spread over the
    /// servers, so each server gets one per interval and they never bunch up.
    fn canary_period(&self) -> Option<Duration> {
        let servers = u32::try_from(self.fleet.servers.len())
            .unwrap_or(u32::MAX)
            .max(1);
        self.fleet
            .poller
            .canary_interval
            .map(|every| (every / servers).max(Duration::from_millis(1)))
    }

    fn canary_ticker(&self) -> Option<tokio::time::Interval> {
        let period = self.canary_period()?;
        // The first canary after one period, not at once: the first polls
        // come first, and a canary needs to know a mount has a free slot.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(ticker)
    }

    /// Sends the next server's canary, if this poller leads and the server
    /// has a live mount with a free slot. The canary's slot is leased from
    /// the ledger like a player's, so it never takes a slot a player was
    /// promised.
    fn send_canary(&mut self, canaries: &mut JoinSet<CanaryDone>) {
        // Not before this poller's first publication: it is what tells the
        // ledger that a fresh deployment has no lost history (a lease taken
        // earlier would fence every poll for a lease's life).
        let published = {
            let status = self.status.borrow();
            status.leader && status.snapshot_version > 0
        };
        if !published || self.fleet.servers.is_empty() {
            return;
        }
        let index = self.canary_turn.0 % self.fleet.servers.len();
        self.canary_turn.0 = index + 1;
        let server = &self.fleet.servers[index];
        let Some(health) = self.health.get(&server.name) else {
            return;
        };
        let observed_at_ms = match &health.last_report {
            Some((_, at)) if server.canary && health.state != ServerStateKind::Down => *at,
            _ => return,
        };
        let stall_after = self.fleet.poller.stall_after;
        let open: Vec<(&balancer_fleet::MountRef, u32)> = self
            .fleet
            .streams
            .iter()
            .flat_map(|stream| &stream.mounts)
            .filter(|m| m.server == server.name)
            .map(|m| (m, wire_mount(m, server, health, stall_after)))
            .filter(|(_, w)| {
                w.state() == balancer_proto::snapshot::v1::MountState::Live && w.free_slots > 0
            })
            .map(|(m, w)| (m, w.free_slots))
            .collect();
        let urls: Vec<&balancer_fleet::Url> = server.public_urls.iter().collect();
        let turn = self.canary_turn.1.entry(server.name.clone()).or_default();
        let Some(&(mount, free_slots)) = open.get(*turn % open.len().max(1)) else {
            return;
        };
        let base = urls[(*turn / open.len()) % urls.len()];
        let scheme = usize::from(base.scheme() == "https");
        *turn += 1;
        let deadline = self.fleet.poller.canary_timeout;
        let request = balancer_store::ReserveRequest {
            server: server.name.as_str().into(),
            mount: mount.mount.as_str().into(),
            now_ms: now_ms(),
            // Counted from well before the poll: a generous connect grace
            // only makes the ledger count more leases, never fewer.
            polls: vec![balancer_store::PollSeen {
                window_start_ms: observed_at_ms
                    - i64::try_from(balancer_store::MAX_CONNECT_GRACE.as_millis())
                        .unwrap_or(i64::MAX),
                free_slots,
            }],
            want: 1,
            replicas: 1,
            lease: deadline,
            ttl: balancer_store::reservation_ttl(
                deadline,
                balancer_store::MAX_CONNECT_GRACE,
                Duration::from_secs(60),
            ),
        };
        let probe = Probe {
            url: format!("{}{}", base.as_str().trim_end_matches('/'), mount.mount),
            expected: health.last_report.as_ref().and_then(|(report, _)| {
                report
                    .mounts
                    .iter()
                    .find(|m| m.mount == mount.mount)
                    .and_then(|m| m.content_type.clone())
            }),
            deadline,
        };
        let (canary, store, name) = (self.canary.clone(), self.store.clone(), server.name.clone());
        // Leasing and listening happen in the canary's own task: a slow
        // Redis or a slow public URL never holds up polls or other canaries.
        canaries.spawn(async move {
            let result = match store.reserve_slots(request).await {
                Ok(grant) if grant.granted > 0 => Some(canary.listen(&probe).await),
                // Every slot is promised to players: try at the next turn.
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "no slot for a canary now");
                    None
                }
            };
            let result = result.map(|r| {
                r.map_err(|error| CanaryFailure {
                    url: probe.url,
                    error,
                })
            });
            match &result {
                Some(Ok(())) => tracing::debug!(server = %name, "canary heard the stream"),
                Some(Err(e)) => tracing::debug!(server = %name, error = %e, "canary failed"),
                None => {}
            }
            CanaryDone {
                server: name,
                scheme,
                result,
            }
        });
    }

    fn audience_ticker(&self) -> Option<tokio::time::Interval> {
        let every = self.fleet.poller.audience_interval?;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(ticker)
    }

    /// Starts a round of reading the listener list of every live mount of
    /// every server polled through `/admin/stats` (the only ones whose admin
    /// credentials we have), all at once, each within the poll timeout.
    fn read_audience(&self, round: &mut JoinSet<Vec<(String, ListResult)>>) {
        if !self.status.borrow().leader {
            return;
        }
        let mut lists = Vec::new();
        for stream in &self.fleet.streams {
            for mount in &stream.mounts {
                let Some(server) = self.fleet.server(&mount.server) else {
                    continue;
                };
                let live = self.health.get(&server.name).is_some_and(|h| {
                    h.state == ServerStateKind::Up
                        && h.last_report.as_ref().is_some_and(|(report, _)| {
                            report.mounts.iter().any(|m| m.mount == mount.mount)
                        })
                });
                if server.status == balancer_fleet::StatusSource::Admin && live {
                    lists.push((stream.name.clone(), server.clone(), mount.mount.clone()));
                }
            }
        }
        let (fetcher, timeout) = (self.fetcher.clone(), self.fleet.poller.timeout);
        round.spawn(async move {
            let mut reads = JoinSet::new();
            for (stream, server, mount) in lists {
                let fetcher = fetcher.clone();
                reads.spawn(async move {
                    let listed = fetcher.listclients(&server, &mount, timeout).await;
                    if let Err(e) = &listed {
                        tracing::debug!(server = %server.name, mount, error = %e, "cannot list listeners");
                    }
                    (stream, listed)
                });
            }
            let mut lists = Vec::new();
            while let Some(joined) = reads.join_next().await {
                if let Ok(read) = joined {
                    lists.push(read);
                }
            }
            lists
        });
    }

    /// Adds up a round's listener lists per stream, placing each listener
    /// with geo; publishes the figures as metrics. Our own canaries are no
    /// audience; a mount whose list could not be read is left out.
    fn record_audience(&self, lists: Vec<(String, ListResult)>) {
        let mut audience: BTreeMap<String, StreamAudience> = self
            .fleet
            .streams
            .iter()
            .map(|s| (s.name.clone(), StreamAudience::default()))
            .collect();
        for (stream, listed) in lists {
            let (Some(seen), Ok(listeners)) = (audience.get_mut(&stream), listed) else {
                continue;
            };
            for listener in listeners.iter().filter(|l| !crate::audience::is_canary(l)) {
                let country = listener
                    .ip
                    .and_then(|ip| self.geo.lookup(ip).country)
                    .map(|c| c.to_string());
                seen.add(listener, country);
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.observe_audience(&audience);
        }
        let listeners: u64 = audience.values().map(StreamAudience::total).sum();
        tracing::debug!(listeners, "audience round done");
        self.audience
            .send_replace(crate::audience::to_json(&audience, Some(now_ms())).into());
    }

    /// Takes a canary's result into the server's health.
    fn record_canary(&mut self, done: CanaryDone) {
        let (rise, fall) = (self.fleet.poller.rise, self.fleet.poller.fall);
        let Some(result) = done.result else {
            return; // no slot was free for it: nothing learnt
        };
        let server = done.server.as_str();
        let Some(health) = self.health.get_mut(server) else {
            return;
        };
        let canary = &mut health.canary[done.scheme];
        let was_failing = canary.failing;
        canary.record(&result, rise, fall);
        if let Some(metrics) = &self.metrics {
            metrics.observe_canary(server, result.is_ok());
        }
        match (was_failing, canary.failing) {
            (false, true) => tracing::warn!(
                server,
                error = %canary.last_error,
                "canaries fail at a public URL: no new players until it plays again"
            ),
            (true, false) => tracing::info!(server, "canaries play again at the public URL"),
            _ => {}
        }
    }

    fn ticker(&self) -> tokio::time::Interval {
        let mut ticker = tokio::time::interval(self.fleet.poller.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    }

    /// One cycle: renew or take the lease, then (as leader) poll and build a snapshot.
    async fn cycle(&mut self) -> Option<Snapshot> {
        let was_leader = self.status.borrow().leader;
        let lease = self
            .store
            .hold_lease(&self.identity, lease_ttl(self.fleet.poller.interval))
            .await;
        let leader = match lease {
            Ok(held) => {
                if !self.redis_reachable {
                    tracing::info!("Redis reachable again");
                    self.redis_reachable = true;
                }
                if self.logged_role != Some(held) {
                    if held {
                        tracing::info!(identity = %self.identity, "holding the lease: polling and publishing");
                    } else {
                        tracing::warn!(identity = %self.identity, "another poller holds the lease: standing by");
                    }
                    self.logged_role = Some(held);
                }
                held
            }
            Err(e) => {
                // Keep doing what we did: a leader keeps polling and publishes once Redis is back.
                if self.redis_reachable {
                    tracing::warn!(error = %e, "cannot reach Redis to renew the lease; carrying on");
                    self.redis_reachable = false;
                } else {
                    tracing::debug!(error = %e, "Redis still unreachable");
                }
                was_leader
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics.leader.set(i64::from(leader));
        }
        if leader != was_leader {
            self.status.send_modify(|s| {
                s.leader = leader;
                if !leader {
                    s.published = false;
                }
            });
        }
        if !leader {
            return None;
        }
        match self.store.drained().await {
            Ok(drained) => self.drained = drained,
            Err(e) => tracing::debug!(error = %e, "cannot read drains; keeping the last known"),
        }
        let started = std::time::Instant::now();
        self.poll_all().await;
        let up = self
            .health
            .values()
            .filter(|h| h.state == ServerStateKind::Up)
            .count();
        tracing::debug!(
            servers = self.fleet.servers.len(),
            up,
            took_ms = started.elapsed().as_millis() as u64,
            "cycle done"
        );
        let snapshot = self.snapshot();
        if let Some(metrics) = &self.metrics {
            metrics.observe_snapshot(&snapshot);
        }
        Some(snapshot)
    }

    /// Polls every server at once; each poll ends within the timeout, so one
    /// slow server never delays the others' data beyond that.
    async fn poll_all(&mut self) {
        let timeout = self.fleet.poller.timeout;
        let mut polls = JoinSet::new();
        for server in &self.fleet.servers {
            let (fetcher, server) = (self.fetcher.clone(), server.clone());
            polls.spawn(async move {
                let (result, took) = fetcher.poll(&server, timeout).await;
                (server, result, took)
            });
        }
        let (rise, fall) = (self.fleet.poller.rise, self.fleet.poller.fall);
        while let Some(joined) = polls.join_next().await {
            let Ok((server, result, took)) = joined else {
                continue;
            };
            let health = self.health.entry(server.name.clone()).or_default();
            let before = health.state;
            let took_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
            health.record(&result, now_ms(), took_ms, rise, fall);
            log_change(&server, before, health, &result);
            if let Some(metrics) = &self.metrics {
                metrics.observe_poll(&server.name, &result, took);
            }
        }
    }

    /// Waits (at most a second) until a snapshot newer than `before` is published.
    async fn wait_published(&self, before: u64) -> u64 {
        let mut status = self.status.subscribe();
        let published = tokio::time::timeout(
            Duration::from_secs(1),
            status.wait_for(|s| s.snapshot_version > before),
        )
        .await;
        match published {
            Ok(Ok(status)) => status.snapshot_version,
            _ => 0,
        }
    }

    /// The snapshot of what is known now (its version is set when published).
    fn snapshot(&self) -> Snapshot {
        build_snapshot(
            &self.fleet,
            &self.health,
            &self.drained,
            now_ms(),
            &self.identity,
        )
    }

    fn servers_report(&self) -> Vec<ServerReport> {
        let snapshot = self.snapshot();
        // Each server's mounts, found in one pass over the streams: this runs
        // in the poll loop, and a console asks for it every second.
        let mut mounts_of: HashMap<&str, Vec<(String, Mount)>> = HashMap::new();
        for stream in &snapshot.streams {
            for mount in &stream.mounts {
                mounts_of
                    .entry(mount.server.as_str())
                    .or_default()
                    .push((stream.name.clone(), mount.clone()));
            }
        }
        snapshot
            .servers
            .iter()
            .map(|server| {
                let mounts = mounts_of.remove(server.name.as_str()).unwrap_or_default();
                let last_poll_ms = self.health.get(&server.name).map_or(0, |h| h.last_poll_ms);
                ServerReport {
                    server: server.clone(),
                    mounts,
                    last_poll_ms,
                }
            })
            .collect()
    }

    async fn reload(&mut self) -> Result<String, String> {
        for error in self.geo.reload() {
            tracing::error!(%error, "GeoIP reload refused; the loaded database stays");
        }
        match balancer_fleet::load(&self.fleet_path, &self.env) {
            Ok(fleet) => {
                if fleet.poller.ca != self.fleet.poller.ca {
                    let ca = fleet.poller.ca.as_ref();
                    match Fetcher::new(ca).and_then(|f| Ok((f, Canary::new(ca)?))) {
                        Ok((fetcher, canary)) => (self.fetcher, self.canary) = (fetcher, canary),
                        Err(e) => {
                            tracing::error!(error = %e, "reload refused; the running fleet config stays");
                            return Err(e);
                        }
                    }
                }
                // Keep what is known about servers whose polling and public
                // URLs did not change.
                let unchanged = |old: &Server| {
                    fleet.server(&old.name).is_some_and(|new| {
                        new.url == old.url
                            && new.status == old.status
                            && new.public_urls == old.public_urls
                    })
                };
                let old_servers = std::mem::take(&mut self.fleet.servers);
                self.health
                    .retain(|name, _| old_servers.iter().any(|s| &s.name == name && unchanged(s)));
                tracing::info!(config = %self.fleet_path.display(), summary = %fleet.summary(), "fleet reloaded");
                let summary = format!("{}: {}", self.fleet_path.display(), fleet.summary());
                self.fleet = fleet;
                self.forget_removed_drains().await;
                Ok(summary)
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running fleet config stays");
                Err(e.to_string())
            }
        }
    }
}

impl<S: PollerStore> Poller<S> {
    /// Drops drains of servers no longer in the fleet, so the drained set stays
    /// bounded by the config. Best effort: a later start or reload retries.
    async fn forget_removed_drains(&self) {
        let names: BTreeSet<String> = self.fleet.servers.iter().map(|s| s.name.clone()).collect();
        if let Err(e) = self.store.forget_drains_except(&names).await {
            tracing::debug!(error = %e, "cannot prune drains now");
        }
    }
}

/// The next tick of an optional ticker; never, when there is none.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Publishes the latest snapshot; while Redis is unavailable, retries with
/// backoff, always with the newest snapshot.
async fn publish_loop<S: PollerStore>(
    store: S,
    identity: String,
    mut latest: watch::Receiver<Option<Snapshot>>,
    status: watch::Sender<Status>,
    metrics: Option<PollerMetrics>,
) {
    let mut backoff = MIN_PUBLISH_BACKOFF;
    while latest.changed().await.is_ok() {
        loop {
            let Some(mut snapshot) = latest.borrow_and_update().clone() else {
                break;
            };
            let ttl = snapshot_ttl(Duration::from_millis(u64::from(snapshot.poll_interval_ms)));
            let floor = status.borrow().snapshot_version;
            match store
                .publish_snapshot(&identity, &mut snapshot, ttl, floor)
                .await
            {
                Ok(version) => {
                    if let Some(metrics) = &metrics {
                        metrics.published.inc();
                    }
                    if !status.borrow().published {
                        tracing::info!(version, "publishing snapshots");
                    }
                    status.send_modify(|s| {
                        s.published = true;
                        s.snapshot_version = version;
                        s.published_at_ms = snapshot.published_at_ms;
                    });
                    backoff = MIN_PUBLISH_BACKOFF;
                    break;
                }
                Err(StoreError::NotLeader) => {
                    tracing::warn!("lost the lease before publishing");
                    status.send_modify(|s| {
                        s.leader = false;
                        s.published = false;
                    });
                    break;
                }
                Err(e) => {
                    if status.borrow().published {
                        tracing::warn!(error = %e, "cannot publish; retrying with backoff");
                    }
                    status.send_modify(|s| s.published = false);
                    if let Some(metrics) = &metrics {
                        metrics.publish_errors.inc();
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        changed = latest.changed() => if changed.is_err() { return },
                    }
                    backoff = (backoff * 2).min(MAX_PUBLISH_BACKOFF);
                }
            }
        }
    }
}

fn log_change(server: &Server, before: ServerStateKind, after: &ServerHealth, result: &PollResult) {
    if let PollResult::Report(report) = result {
        for skipped in &report.skipped {
            tracing::debug!(server = %server.name, %skipped, "mount left out of the status");
        }
    }
    if before == after.state {
        return;
    }
    match after.state {
        ServerStateKind::Down => {
            tracing::warn!(server = %server.name, url = %server.url, error = %after.last_error, "server down")
        }
        ServerStateKind::Full => {
            tracing::warn!(server = %server.name, "server full (Icecast answers 403)")
        }
        ServerStateKind::Up => tracing::info!(server = %server.name, "server up"),
        ServerStateKind::Unknown => {}
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
