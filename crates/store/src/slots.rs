//! The slot ledger: how redirectors lease a mount's free slots so that all of
//! them together never hand out more than a poll saw free.
//!
//! A grant is a *lease*: `granted` slots that its replica may hand out until
//! `expires_ms`, and never after. The ledger records each grant under the
//! second of its expiry, not of the grant. A grant made for a poll taken at
//! `T` counts every lease that expires at or after `T - grace`. Every slot
//! that could be handed out after `T - grace` is therefore counted, even by a
//! replica that has not seen that poll yet. A player handed a slot that
//! expired before `T - grace` connected before `T` (players connect within
//! `grace` of their redirect), so the poll's listener count holds it.
//!
//! The same rules exist twice: as a Lua script that runs in Redis
//! ([`RESERVE_SCRIPT`]), and as [`SlotLedger`], the in-process ledger of the
//! standalone redirector and of the simulation tests. A test runs random
//! request sequences through both and compares every answer.
//!
//! A Redis that restarts loses the ledger. So that its lost grants cannot be
//! granted again, the ledger has a "history since" marker. When the marker is
//! missing, the ledger is new, and grants are refused until the poll's window
//! starts after `since + lease life` (the last moment a lost lease could be
//! used). The poller's first publication to a fresh Redis, before any
//! redirector has a snapshot, sets the marker to 0: a new deployment has no
//! history to lose.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::StoreError;

/// The longest connect grace a replica may use (`--connect-grace`): the time
/// a redirected player may take to connect. Part of the ledger's contract: a
/// caller that cannot know the replicas' grace (the poller's canary) counts
/// leases from this far before a poll, which is never fewer than any
/// replica's grant counts.
pub const MAX_CONNECT_GRACE: Duration = Duration::from_secs(10);

/// How long a redirector's heartbeat counts it as alive. The ledger divides
/// what is left among the replicas alive by this measure (see
/// [`RESERVE_SCRIPT`]), and replicas beat well within it.
pub const REPLICA_ALIVE: Duration = Duration::from_secs(5);

/// One replica's request for slots of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The server's name.
    pub server: Arc<str>,
    /// The mount.
    pub mount: Arc<str>,
    /// Now, in ms since the epoch (the replica's clock).
    pub now_ms: i64,
    /// Recent polls of the mount this replica has seen, each as its window
    /// start (the poll's time minus the connect grace: leases expiring at or
    /// after it are not yet in the poll's listener count) and the free slots
    /// it saw. The ledger grants against the one that leaves the most room.
    /// Any poll is a sound bound, and an older one does not count twice the
    /// players who connected since (which a newer one does, in its listener
    /// count and in its window).
    pub polls: Vec<PollSeen>,
    /// How many the replica would like.
    pub want: u32,
    /// The live replicas, for the fair-share cap: no replica takes more than
    /// what is left divided by the replicas (rounded up), so that the last
    /// slots are spread over the replicas that still have players.
    pub replicas: u32,
    /// How long the lease lasts: its slots may be handed out until `now_ms + lease`.
    pub lease: Duration,
    /// How long the ledger keeps entries (at least lease + grace + the
    /// oldest data a replica may still use).
    pub ttl: Duration,
}

impl ReserveRequest {
    /// When the lease this request may get expires.
    pub fn expires_ms(&self) -> i64 {
        self.now_ms.saturating_add(millis_i64(self.lease))
    }
}

/// One poll of a mount, as the ledger needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSeen {
    /// The poll's time minus the connect grace.
    pub window_start_ms: i64,
    /// Free slots the poll saw.
    pub free_slots: u32,
}

/// The ledger's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// Slots leased to the caller (0 to `want`).
    pub granted: u32,
    /// Slots left for this poll after the grant. 0 means: do not ask again
    /// until a newer poll (the mount is exhausted, or the ledger is fenced
    /// after a restart).
    pub remaining: u32,
}

/// Where a replica leases slots: Redis, or the in-process ledger.
///
/// The future is boxed, so a replica can hold any store behind one pointer;
/// it is created once per refill, not per redirect.
pub trait SlotStore: Send + Sync + 'static {
    /// Leases up to `request.want` slots, recorded before the answer is sent.
    /// The answer may take up to the lease's life (a store that stalls still
    /// records the grant when it resumes); the caller decides how long to
    /// wait before it counts the call as failed.
    fn reserve(
        &self,
        request: ReserveRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, StoreError>> + Send>>;
}

/// The reservation ledger of one mount in Redis: KEYS[1] is a hash from a
/// second to the slots of the leases expiring in it, KEYS[2] the "history
/// since" marker shared by all mounts, KEYS[3] the replicas' heartbeats.
/// ARGV: now ms, want, replicas, lease ms, ttl ms, how long a heartbeat
/// counts (ms), then pairs of (window start ms, free) for the polls to grant
/// against. Returns `{granted, remaining}`.
///
/// A grant is at most what is left divided by the live replicas: the more of
/// the replica's own count and the heartbeats the script counts itself. A
/// replica learns the count only at its own heartbeat, up to a second late,
/// so a replica that just joined would otherwise find the first one taking
/// whole mounts, and enter a stream's headroom while the other held the
/// slots above it.
///
/// Keep in step with [`SlotLedger::reserve`]; `crates/store/tests/it` compares them.
pub(crate) const RESERVE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local live = redis.call('ZCOUNT', KEYS[3], now - tonumber(ARGV[6]), '+inf')
local replicas = math.max(1, tonumber(ARGV[3]), live)
local lease = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local since = redis.call('GET', KEYS[2])
if not since then
  redis.call('SET', KEYS[2], now)
  since = now
else
  since = tonumber(since)
end
local oldest = math.floor(now / 1000) - math.ceil(ttl / 1000)
local buckets = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #buckets, 2 do
  local second = tonumber(buckets[i])
  if second < oldest then
    redis.call('HDEL', KEYS[1], buckets[i])
  else
    live[#live + 1] = {second, tonumber(buckets[i + 1])}
  end
end
local left = 0
for p = 7, #ARGV - 1, 2 do
  local window = tonumber(ARGV[p])
  if window >= since + lease then
    local from = math.floor(window / 1000)
    local used = 0
    for _, bucket in ipairs(live) do
      if bucket[1] >= from then
        used = used + bucket[2]
      end
    end
    left = math.max(left, tonumber(ARGV[p + 1]) - used)
  end
end
if left <= 0 then
  return {0, 0}
end
local share = math.ceil(left / replicas)
local grant = math.min(want, left, share)
if grant <= 0 then
  return {0, left}
end
redis.call('HINCRBY', KEYS[1], math.floor((now + lease) / 1000), grant)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {grant, left - grant}
";

/// The ledger of every mount, in process: the standalone redirector's, and
/// the model the simulation tests run against. Same rules as [`RESERVE_SCRIPT`].
#[derive(Debug, Clone, Default)]
pub struct SlotLedger {
    /// The "history since" marker; `None` as in a Redis that lost its keys.
    since_ms: Option<i64>,
    /// Per mount: expiry second to slots leased.
    mounts: BTreeMap<(Arc<str>, Arc<str>), BTreeMap<i64, u64>>,
}

impl SlotLedger {
    /// A ledger with complete history: nothing was ever leased before it.
    pub fn new() -> Self {
        SlotLedger {
            since_ms: Some(0),
            mounts: BTreeMap::new(),
        }
    }

    /// A ledger that lost its history (a Redis restarted without its keys).
    pub fn lost() -> Self {
        SlotLedger {
            since_ms: None,
            mounts: BTreeMap::new(),
        }
    }

    /// Sets the "history since" marker if it is missing (what the poller's
    /// publication does).
    pub fn mark_history_since(&mut self, since_ms: i64) {
        self.since_ms.get_or_insert(since_ms);
    }

    /// Leases slots as [`RESERVE_SCRIPT`] does.
    pub fn reserve(&mut self, r: &ReserveRequest) -> Grant {
        self.reserve_against(r).0
    }

    /// Leases slots as [`RESERVE_SCRIPT`] does, and says which of the
    /// request's polls bound the grant (for the simulation's checks).
    pub fn reserve_against(&mut self, r: &ReserveRequest) -> (Grant, Option<PollSeen>) {
        let since = *self.since_ms.get_or_insert(r.now_ms);
        let oldest = r.now_ms.div_euclid(1000) - ceil_seconds(r.ttl);
        let buckets = self
            .mounts
            .entry((r.server.clone(), r.mount.clone()))
            .or_default();
        buckets.retain(|&second, _| second >= oldest);
        let mut best: Option<(i64, PollSeen)> = None;
        for poll in &r.polls {
            if poll.window_start_ms < since.saturating_add(millis_i64(r.lease)) {
                continue;
            }
            let used: u64 = buckets
                .range(poll.window_start_ms.div_euclid(1000)..)
                .map(|(_, n)| n)
                .sum();
            let left = i64::from(poll.free_slots) - i64::try_from(used).unwrap_or(i64::MAX);
            if best.is_none_or(|(most, _)| left > most) {
                best = Some((left, *poll));
            }
        }
        let Some((left, poll)) = best.filter(|(left, _)| *left > 0) else {
            return (Grant::default(), None);
        };
        let replicas = i64::from(r.replicas.max(1));
        let share = (left + replicas - 1) / replicas;
        let grant = i64::from(r.want).min(left).min(share);
        if grant <= 0 {
            let remaining = to_u32(left);
            return (
                Grant {
                    granted: 0,
                    remaining,
                },
                None,
            );
        }
        *buckets.entry(r.expires_ms().div_euclid(1000)).or_default() += grant.unsigned_abs();
        let grant = Grant {
            granted: to_u32(grant),
            remaining: to_u32(left - grant),
        };
        (grant, Some(poll))
    }

    /// Slots of a mount whose leases expire at or after `since_ms` (what a
    /// poll's window counts).
    pub fn reserved(&self, server: &str, mount: &str, since_ms: i64) -> u32 {
        let from = since_ms.div_euclid(1000);
        self.mounts
            .iter()
            .filter(|((s, m), _)| &**s == server && &**m == mount)
            .flat_map(|(_, buckets)| buckets.range(from..))
            .map(|(_, &n)| to_u32(i64::try_from(n).unwrap_or(i64::MAX)))
            .fold(0u32, u32::saturating_add)
    }
}

/// The in-process ledger as a [`SlotStore`]: answers at once, never fails.
#[derive(Debug, Clone, Default)]
pub struct LocalSlots {
    ledger: Arc<std::sync::Mutex<SlotLedger>>,
}

impl LocalSlots {
    /// A new ledger with complete history.
    pub fn new() -> Self {
        LocalSlots {
            ledger: Arc::new(std::sync::Mutex::new(SlotLedger::new())),
        }
    }

    /// Slots of a mount whose leases expire at or after `since_ms`.
    pub fn reserved(&self, server: &str, mount: &str, since_ms: i64) -> u32 {
        self.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserved(server, mount, since_ms)
    }
}

impl SlotStore for LocalSlots {
    fn reserve(
        &self,
        request: ReserveRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, StoreError>> + Send>> {
        let grant = self
            .ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(&request);
        Box::pin(std::future::ready(Ok(grant)))
    }
}

fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ceil_seconds(d: Duration) -> i64 {
    millis_i64(d).saturating_add(999) / 1000
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(now: i64, window: i64, free: u32, want: u32) -> ReserveRequest {
        ReserveRequest {
            server: Arc::from("s"),
            mount: Arc::from("/m"),
            now_ms: now,
            polls: vec![PollSeen {
                window_start_ms: window,
                free_slots: free,
            }],
            want,
            replicas: 1,
            lease: Duration::from_secs(1),
            ttl: Duration::from_secs(20),
        }
    }

    #[test]
    fn grants_never_exceed_the_free_slots_of_a_window() {
        let mut ledger = SlotLedger::new();
        let g = ledger.reserve(&request(10_000, 9_000, 10, 4));
        assert_eq!(
            g,
            Grant {
                granted: 4,
                remaining: 6
            }
        );
        let g = ledger.reserve(&request(10_100, 9_000, 10, 100));
        assert_eq!(
            g,
            Grant {
                granted: 6,
                remaining: 0
            },
            "one replica may take all that is left"
        );
        let total: u32 = (0..10)
            .map(|i| ledger.reserve(&request(10_300 + i, 9_000, 10, 100)).granted)
            .sum();
        assert_eq!(total, 0, "10 free in all");
        assert_eq!(
            ledger.reserve(&request(10_500, 9_000, 10, 1)),
            Grant::default()
        );
    }

    #[test]
    fn leases_count_until_a_window_starts_after_their_expiry() {
        let mut ledger = SlotLedger::new();
        // Leased at 10.0 s for 1 s: expires at 11.0 s.
        assert_eq!(ledger.reserve(&request(10_000, 9_000, 2, 2)).granted, 2);
        // A poll whose window starts at 10.9 s still counts them.
        assert_eq!(ledger.reserve(&request(12_000, 10_900, 2, 2)).granted, 0);
        // One whose window starts at 12 s does not.
        assert_eq!(ledger.reserve(&request(15_000, 12_000, 2, 2)).granted, 2);
    }

    #[test]
    fn a_ledger_that_lost_its_history_waits_for_a_lease_life() {
        let mut ledger = SlotLedger::lost();
        // The first call sets the marker to now (20 s); a lost lease could be
        // used until 21 s, so windows starting before that are refused.
        assert_eq!(
            ledger.reserve(&request(20_000, 19_000, 5, 1)),
            Grant::default()
        );
        assert_eq!(
            ledger.reserve(&request(22_000, 20_999, 5, 1)),
            Grant::default()
        );
        assert_eq!(ledger.reserve(&request(22_000, 21_000, 5, 1)).granted, 1);
        // A marker set before anyone asked (the poller's first publication) wins.
        let mut fresh = SlotLedger::lost();
        fresh.mark_history_since(0);
        assert_eq!(fresh.reserve(&request(20_000, 19_000, 5, 1)).granted, 1);
    }

    #[test]
    fn an_older_poll_does_not_count_connected_players_twice() {
        let mut ledger = SlotLedger::new();
        // A poll at 10 s (window from 9 s) saw 10 free; a crowd takes 5 at 11 s.
        let before = PollSeen {
            window_start_ms: 9_000,
            free_slots: 10,
        };
        let mut r = request(11_000, 9_000, 10, 5);
        r.replicas = 2;
        assert_eq!(ledger.reserve(&r).granted, 5);
        // The poll at 11.5 s sees them connected: 5 free, and its window still
        // counts their leases. Alone it would leave nothing.
        let after = PollSeen {
            window_start_ms: 10_500,
            free_slots: 5,
        };
        let mut alone = request(11_600, 0, 0, 5);
        alone.replicas = 2;
        alone.polls = vec![after];
        assert_eq!(ledger.clone().reserve(&alone), Grant::default());
        // With the poll before the crowd, the 5 left are found.
        let mut both = alone.clone();
        both.polls = vec![before, after];
        let (grant, bound) = ledger.reserve_against(&both);
        assert_eq!(
            (grant.granted, grant.remaining),
            (3, 2),
            "5 / 2, rounded up"
        );
        assert_eq!(bound, Some(before));
    }

    #[test]
    fn the_fair_share_spreads_the_last_slots_over_replicas() {
        let mut ledger = SlotLedger::new();
        let mut r = request(10_000, 9_000, 100, 1000);
        r.replicas = 4;
        assert_eq!(ledger.reserve(&r).granted, 25, "100 / 4");
        assert_eq!(ledger.reserve(&r).granted, 19, "75 / 4, rounded up");
    }
}
