//! A snapshot prepared for answering players: streams indexed by name, server
//! places looked up once, reservation pools attached to their mounts.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::Arc;

use balancer_geo::{Candidate, Code, Coordinates, CountryRule, GeoDb, KeyHasher, Place};
use balancer_proto::snapshot::v1::{MountInfo, MountState, ServerState, Snapshot};

use crate::client_ip::Scheme;
use crate::reserve::{Observed, Reservations, SlotPool};

/// Which slots of a mount a player may take: above the headroom, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Normal operation: slots above the mount's headroom.
    Soft,
    /// Every mount of the stream is at its soft limit: the headroom too.
    Headroom,
}

/// Why a mount cannot take a player now, for logs and `Explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Its server is down (or not yet polled).
    Down,
    /// Its server is drained.
    Drained,
    /// Its server's data is older than the staleness limit.
    Stale,
    /// No source is connected.
    NoSource,
    /// A source is connected but sends nothing.
    Stalled,
    /// No free slot.
    Full,
    /// Only its headroom is free, and the player's tier may not use it.
    Headroom,
}

/// One snapshot, ready for selection. Immutable; swapped whole when a newer one arrives.
pub struct FleetView {
    /// Unique to this view in this process (views of one snapshot version
    /// may differ, e.g. after GeoIP is reloaded): what is derived from a view
    /// and kept elsewhere is keyed by it.
    pub id: u64,
    /// The snapshot's version.
    pub version: u64,
    /// When the poller published it (ms since the epoch).
    pub published_at_ms: i64,
    /// Servers, in snapshot order.
    pub servers: Vec<ServerView>,
    /// Streams by name. Every request looks its stream up here, so the
    /// names are hashed with [`KeyHasher`] rather than SipHash: the table is
    /// built from the fleet file, and a player's name only looks it up.
    pub streams: HashMap<String, StreamView, BuildHasherDefault<KeyHasher>>,
    /// The public stream index, rendered on first use.
    index: std::sync::OnceLock<crate::index::StreamIndex>,
}

/// A server as selection needs it.
pub struct ServerView {
    /// Its name, shared with reservation requests.
    pub name: Arc<str>,
    /// Health after hysteresis.
    pub state: ServerState,
    /// Drained by an operator.
    pub drained: bool,
    /// When its data was read (ms since the epoch).
    pub observed_at_ms: i64,
    /// Where it is.
    pub place: Place,
    /// Operator weight.
    pub weight: u32,
    /// Reachable over IPv4 (its public address is not an IPv6 literal).
    pub ipv4: bool,
    /// Reachable over IPv6 (its public address is not an IPv4 literal).
    pub ipv6: bool,
    /// Why its last poll failed, if it did.
    pub last_error: String,
    /// Players may be sent to the other scheme when it has no URL in theirs.
    pub cross_scheme: bool,
    /// Its public URL as the snapshot gave it, and the literal address in its
    /// host, if any: kept so that the next view of an unchanged URL does not
    /// parse it again.
    public_url: (Arc<str>, Option<IpAddr>),
}

/// A stream.
pub struct StreamView {
    /// Its name, shared with metric labels.
    pub name: Arc<str>,
    /// Its mounts, in config order.
    pub mounts: Vec<MountView>,
    /// What ranking needs of each mount, per player scheme
    /// ([`Scheme::index`]), index-aligned with `mounts` and prepared once per
    /// snapshot, with the slots above the headroom. A mount that cannot take
    /// players for a reason the snapshot fixes (server down or drained, no
    /// source, full, no URL for the scheme) has no free slots here, so
    /// ranking skips it.
    pub candidates: [Vec<Candidate>; 2],
    /// Per scheme, the lineage of `candidates`: an id shared with this
    /// stream in earlier views for as long as its candidates changed in
    /// nothing but free slots (see [`Candidate::differs_only_in_free_slots`]).
    /// Rankings kept for an earlier view of the lineage are rebased to the
    /// new free slots rather than made anew (see `rankings`).
    pub lineages: [u64; 2],
    /// Whether any mount keeps headroom, so a second tier may be tried.
    pub has_headroom: bool,
    /// The oldest observation among the servers of mounts with free slots in
    /// `candidates`: while it is recent enough, a request ranks `candidates`
    /// as they are, without checking each mount again.
    pub oldest_observation_ms: i64,
    /// The stream to use when every mount is full.
    pub fallback: Option<String>,
    /// Where it may be played.
    pub rule: CountryRule,
    /// Its request counters, taken by the first request that counts one.
    pub outcomes: std::sync::OnceLock<crate::metrics::StreamOutcomes>,
    /// Its name in the public index, from the fleet file; empty when not set.
    pub title: String,
    /// Its description in the public index, from the fleet file; empty when not set.
    pub description: String,
}

/// A mount of a stream.
pub struct MountView {
    /// Index into [`FleetView::servers`].
    pub server: usize,
    /// The mount path, shared with reservation requests.
    pub mount: Arc<str>,
    /// Live or not.
    pub state: MountState,
    /// Free slots the poll saw.
    pub free_slots: u32,
    /// Of those, the slots kept free until the stream's other mounts are at
    /// their soft limit.
    pub headroom: u32,
    /// The mount's listener limit; `None` when unlimited.
    pub limit: Option<u32>,
    /// Where players are sent, per scheme ([`Scheme::index`]): public URL
    /// and mount, without a query; `None` where the server has no URL.
    pub urls: [Option<Arc<str>>; 2],
    /// This replica's reservations for the mount above its headroom; shared across views.
    pub slots: Arc<SlotPool>,
    /// This replica's reservations of the mount's headroom.
    pub spare: Arc<SlotPool>,
    /// What its source announces (for the public index); shared with the
    /// next view while it announces the same.
    pub info: Arc<MountInfo>,
    /// Listeners the last poll counted.
    pub listeners: u32,
}

impl FleetView {
    /// Prepares `snapshot`, placing servers with `geo` and attaching the pools of `reservations`.
    ///
    /// What did not change since `previous` (the view it replaces) is taken
    /// from it rather than made again: names, parsed URLs, the mounts' URLs
    /// and what their sources announce. A snapshot comes every poll, and
    /// mostly only its counts differ from the last; made anew, those parts
    /// were two fifths of the work of a view of 500 mounts.
    pub fn build(
        snapshot: &Snapshot,
        geo: &GeoDb,
        reservations: &Reservations,
        previous: Option<&FleetView>,
    ) -> FleetView {
        let servers: Vec<ServerView> = snapshot
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let before = previous
                    .and_then(|p| p.servers.get(i))
                    .filter(|b| *b.name == *s.name);
                let public_url = match before {
                    Some(b) if *b.public_url.0 == *s.public_url => b.public_url.clone(),
                    _ => (
                        Arc::from(s.public_url.as_str()),
                        host_address(&s.public_url),
                    ),
                };
                let address = public_url.1;
                let location = s
                    .location
                    .as_ref()
                    .and_then(|l| Coordinates::new(l.lat, l.lon).ok());
                ServerView {
                    name: before.map_or_else(|| Arc::from(s.name.as_str()), |b| b.name.clone()),
                    state: s.state(),
                    drained: s.drained,
                    observed_at_ms: s.observed_at_ms,
                    place: geo.server_place(location, Code::new(&s.country), address),
                    weight: s.weight.max(1),
                    ipv4: !matches!(address, Some(IpAddr::V6(_))),
                    ipv6: !matches!(address, Some(IpAddr::V4(_))),
                    last_error: s.last_error.clone(),
                    cross_scheme: s.cross_scheme || legacy_urls(s),
                    public_url,
                }
            })
            .collect();
        let index: HashMap<&str, usize> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (&*s.name, i))
            .collect();
        let public_urls: HashMap<&str, [Option<&str>; 2]> = snapshot
            .servers
            .iter()
            .map(|s| (s.name.as_str(), base_urls(s)))
            .collect();
        let streams = snapshot
            .streams
            .iter()
            .enumerate()
            .map(|(position, stream)| {
                if position > 0 {
                    yield_core();
                }
                let mounts_before = previous
                    .and_then(|p| Some((p, p.streams.get(&stream.name)?)))
                    .map(|(p, before)| (&p.servers, &before.mounts[..]));
                let mounts: Vec<MountView> = stream
                    .mounts
                    .iter()
                    .enumerate()
                    .filter_map(|(j, m)| {
                        let server = *index.get(m.server.as_str())?;
                        let bases = public_urls.get(m.server.as_str())?;
                        // The same mount of the same server at the same place
                        // in the stream's list, as in nearly every snapshot.
                        let before = mounts_before.and_then(|(servers_before, mounts)| {
                            let b = mounts.get(j)?;
                            (*b.mount == *m.mount && *servers_before[b.server].name == *m.server)
                                .then_some(b)
                        });
                        let url = |scheme: usize| {
                            let base = bases[scheme]?.trim_end_matches('/');
                            let kept = before.and_then(|b| b.urls[scheme].as_ref()).filter(|u| {
                                u.len() == base.len() + m.mount.len()
                                    && u.starts_with(base)
                                    && u.ends_with(m.mount.as_str())
                            });
                            Some(kept.cloned().unwrap_or_else(|| {
                                let mut url = String::with_capacity(base.len() + m.mount.len());
                                url.push_str(base);
                                url.push_str(&m.mount);
                                Arc::from(url)
                            }))
                        };
                        let info = match (before, &m.info) {
                            (Some(b), Some(info)) if *b.info == *info => b.info.clone(),
                            (Some(b), None) if *b.info == MountInfo::default() => b.info.clone(),
                            (_, info) => Arc::new(info.clone().unwrap_or_default()),
                        };
                        let [slots, spare] = reservations.pools(&m.server, &m.mount);
                        let view = MountView {
                            server,
                            mount: before
                                .map_or_else(|| Arc::from(m.mount.as_str()), |b| b.mount.clone()),
                            state: m.state(),
                            free_slots: m.free_slots,
                            headroom: m.headroom.min(m.free_slots),
                            limit: m.max_listeners,
                            urls: [url(0), url(1)],
                            slots,
                            spare,
                            info,
                            listeners: m.listeners,
                        };
                        if view.state == MountState::Live && servers[server].observed_at_ms > 0 {
                            for tier in [Tier::Soft, Tier::Headroom] {
                                let poll = view.observed(&servers[server], tier);
                                let now = snapshot.published_at_ms.max(poll.observed_at_ms);
                                reservations.note_poll(view.pool(tier), &poll, now);
                            }
                        }
                        Some(view)
                    })
                    .collect();
                let codes =
                    |list: &[String]| list.iter().filter_map(|c| Code::new(c)).collect::<Vec<_>>();
                let rule = if !stream.allow_countries.is_empty() {
                    CountryRule::Only(codes(&stream.allow_countries))
                } else if !stream.deny_countries.is_empty() {
                    CountryRule::Except(codes(&stream.deny_countries))
                } else {
                    CountryRule::Anyone
                };
                let candidates = Scheme::ALL.map(|scheme| {
                    mounts
                        .iter()
                        .map(|m| {
                            let server = &servers[m.server];
                            let mut candidate = candidate_of(server, m, Tier::Soft);
                            if !m.takes_players_in(server) || m.url(scheme, server).is_none() {
                                candidate.free_slots = 0;
                            }
                            candidate
                        })
                        .collect()
                });
                let has_headroom = mounts.iter().any(|m| m.headroom > 0);
                let oldest_observation_ms = mounts
                    .iter()
                    .filter(|m| m.takes_players_in(&servers[m.server]))
                    .map(|m| servers[m.server].observed_at_ms)
                    .min()
                    .unwrap_or(i64::MAX);
                let view = StreamView {
                    name: Arc::from(stream.name.as_str()),
                    mounts,
                    candidates,
                    lineages: [next_id(), next_id()],
                    has_headroom,
                    oldest_observation_ms,
                    fallback: Some(stream.fallback.clone()).filter(|f| !f.is_empty()),
                    rule,
                    outcomes: std::sync::OnceLock::new(),
                    title: stream.title.clone(),
                    description: stream.description.clone(),
                };
                (stream.name.clone(), view)
            })
            .collect();
        FleetView {
            id: next_id(),
            version: snapshot.version,
            published_at_ms: snapshot.published_at_ms,
            servers,
            streams,
            index: std::sync::OnceLock::new(),
        }
    }

    /// Continues the lineages of `previous`'s streams whose candidates
    /// changed in nothing but free slots: called before the view is shared.
    pub fn continue_lineages(&mut self, previous: &FleetView) {
        for (name, stream) in &mut self.streams {
            let Some(before) = previous.streams.get(name) else {
                continue;
            };
            for scheme in Scheme::ALL {
                let (old, new) = (
                    &before.candidates[scheme.index()],
                    &stream.candidates[scheme.index()],
                );
                if old.len() == new.len()
                    && old
                        .iter()
                        .zip(new)
                        .all(|(old, new)| old.differs_only_in_free_slots(new))
                {
                    stream.lineages[scheme.index()] = before.lineages[scheme.index()];
                }
            }
        }
    }

    /// The public stream index of this snapshot, rendered by the first
    /// request that asks and shared by all others.
    pub fn stream_index(&self, mode: crate::index::IndexMode) -> &crate::index::StreamIndex {
        self.index.get_or_init(|| crate::index::render(self, mode))
    }

    /// The newest observation of any server, to judge if the whole view is stale.
    pub fn newest_observation_ms(&self) -> i64 {
        self.servers
            .iter()
            .map(|s| s.observed_at_ms)
            .max()
            .unwrap_or(0)
    }
}

impl MountView {
    /// Why the snapshot rules this mount out, if it does: its server is down
    /// or drained, it has no source or no free slot. Only the age of the data
    /// is left to judge per request (`Selector::usable`).
    pub fn ruled_out_in(&self, server: &ServerView) -> Option<Unusable> {
        if server.state != ServerState::Up {
            Some(Unusable::Down)
        } else if server.drained {
            Some(Unusable::Drained)
        } else if self.state == MountState::Stalled {
            Some(Unusable::Stalled)
        } else if self.state != MountState::Live {
            Some(Unusable::NoSource)
        } else if self.free_slots == 0 {
            Some(Unusable::Full)
        } else {
            None
        }
    }

    /// Whether the snapshot lets this mount take players.
    pub fn takes_players_in(&self, server: &ServerView) -> bool {
        self.ruled_out_in(server).is_none()
    }

    /// The one rule for "can this mount take a player of `tier` now": what
    /// the snapshot fixes, plus the age of its server's data at `now_ms`.
    /// Requests and `Explain` both use it.
    pub fn usable(
        &self,
        server: &ServerView,
        now_ms: i64,
        max_age_ms: i64,
        tier: Tier,
    ) -> Result<(), Unusable> {
        let stale = now_ms - server.observed_at_ms > max_age_ms;
        // Reasons in order of weight: a down or drained server before stale data.
        match self.ruled_out_in(server) {
            Some(reason @ (Unusable::Down | Unusable::Drained)) => Err(reason),
            _ if stale => Err(Unusable::Stale),
            Some(reason) => Err(reason),
            None if self.free_in(tier) == 0 => Err(Unusable::Headroom),
            None => Ok(()),
        }
    }

    /// Whether a source feeds it (stalled or not): its stream is on the air.
    pub fn is_live(&self) -> bool {
        matches!(self.state, MountState::Live | MountState::Stalled)
    }

    /// The free slots a player of `tier` may take: those above the headroom,
    /// or all of them.
    pub fn free_in(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Soft => self.free_slots - self.headroom,
            Tier::Headroom => self.free_slots,
        }
    }

    /// The pool that hands out the slots of `tier`.
    pub fn pool(&self, tier: Tier) -> &Arc<SlotPool> {
        match tier {
            Tier::Soft => &self.slots,
            Tier::Headroom => &self.spare,
        }
    }

    /// Where a player that arrived over `scheme` is sent: the server's URL in
    /// that scheme, else in the other where the server allows crossing.
    pub fn url(&self, scheme: Scheme, server: &ServerView) -> Option<&Arc<str>> {
        let own = self.urls[scheme.index()].as_ref();
        let other = || {
            self.urls[scheme.other().index()]
                .as_ref()
                .filter(|_| server.cross_scheme)
        };
        own.or_else(other)
    }

    /// What reservation needs to know of the mount's last poll, for `tier`.
    pub fn observed<'a>(&'a self, server: &'a ServerView, tier: Tier) -> Observed<'a> {
        Observed {
            server: &server.name,
            mount: &self.mount,
            observed_at_ms: server.observed_at_ms,
            free_slots: self.free_in(tier),
            limit: self.limit,
        }
    }
}

/// What ranking needs to know about a mount and its server, for `tier`.
pub fn candidate_of(server: &ServerView, mount: &MountView, tier: Tier) -> Candidate {
    Candidate {
        place: server.place,
        free_slots: mount.free_in(tier),
        limit: mount.limit.map(|l| match tier {
            Tier::Soft => l.saturating_sub(mount.headroom),
            Tier::Headroom => l,
        }),
        weight: server.weight,
        ipv4: server.ipv4,
        ipv6: server.ipv6,
    }
}

/// A snapshot from a poller that predates per-scheme URLs: its one public
/// URL serves every player, as it always did.
/// A new id for a view or a lineage, unique in this process.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn legacy_urls(server: &balancer_proto::snapshot::v1::Server) -> bool {
    server.public_url_http.is_empty() && server.public_url_https.is_empty()
}

/// The server's public base URLs per scheme ([`Scheme::index`]).
fn base_urls(server: &balancer_proto::snapshot::v1::Server) -> [Option<&str>; 2] {
    fn some(url: &str) -> Option<&str> {
        Some(url).filter(|u| !u.is_empty())
    }
    if legacy_urls(server) {
        let legacy = some(&server.public_url);
        return if server.public_url.starts_with("https:") {
            [None, legacy]
        } else {
            [legacy, None]
        };
    }
    [
        some(&server.public_url_http),
        some(&server.public_url_https),
    ]
}

/// Lets a player thread waiting for this core have it before the next part
/// of a snapshot's preparation.
///
/// Preparing a view (a snapshot of 500 mounts: about 2 ms) runs on the
/// control runtime, and a thread that has the core keeps it until it blocks
/// or the scheduler's tick comes: a player thread on the same core (the
/// bench pins the whole process to one; with `--threads` at the core count
/// every core has one) then waits the whole 2 ms, with every request it
/// holds, once per snapshot. Yielding between the parts (the decoding, each
/// stream) bounds that wait to one part. A `sched_yield` costs a syscall per
/// part, nothing when no other thread wants the core.
pub(crate) fn yield_core() {
    std::thread::yield_now();
}

/// The IP address in a URL's host, if the host is a literal address.
fn host_address(url: &str) -> Option<IpAddr> {
    let host = url::Url::parse(url).ok()?.host()?.to_owned();
    match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}
