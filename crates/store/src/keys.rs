//! Redis key and channel names, each with its bound.

use std::time::Duration;

/// The default namespace: keys look like `{icecast-balancer}:snapshot:v1`.
pub const DEFAULT_NAMESPACE: &str = "icecast-balancer";

/// Names of everything the project stores in Redis, under one namespace.
///
/// The namespace is the hash tag, so every key lands on the same Redis Cluster
/// slot; two deployments can share a Redis by using two namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// A namespace that cannot be used as a hash tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {0:?} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")]
pub struct NamespaceError(pub String);

/// How a key is kept from growing without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Written with an expiry; it disappears when its writer stops refreshing it.
    Ttl,
    /// A fixed-size value (a counter) or a collection bounded by the fleet config.
    Fixed,
    /// A pub/sub channel: nothing is stored.
    Channel,
}

/// One key or channel and its bound, for documentation and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The full Redis name.
    pub name: String,
    /// Why it cannot grow without bound.
    pub bound: Bound,
    /// What it holds.
    pub purpose: &'static str,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: format!("{{{DEFAULT_NAMESPACE}}}"),
        }
    }
}

impl Keys {
    /// Keys under `namespace`.
    pub fn new(namespace: &str) -> Result<Self, NamespaceError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if namespace.is_empty() || namespace.len() > 64 || !namespace.chars().all(allowed) {
            return Err(NamespaceError(namespace.to_owned()));
        }
        Ok(Keys {
            prefix: format!("{{{namespace}}}"),
        })
    }

    /// The latest snapshot, an encoded `snapshot.v1.Snapshot`. TTL: [`snapshot_ttl`].
    ///
    /// The schema version is part of the name, so a v2 writer can run beside v1 readers.
    pub fn snapshot(&self) -> String {
        format!("{}:snapshot:v1", self.prefix)
    }

    /// The counter that numbers snapshots (`INCR`); survives poller failover. Fixed size.
    pub fn snapshot_version(&self) -> String {
        format!("{}:snapshot-version", self.prefix)
    }

    /// Pub/sub channel: the version of each new snapshot, right after it is written.
    pub fn snapshot_channel(&self) -> String {
        format!("{}:snapshot-published", self.prefix)
    }

    /// The active poller's lease: its identity, `SET NX PX`. TTL: [`lease_ttl`].
    pub fn poller_lease(&self) -> String {
        format!("{}:poller-lease", self.prefix)
    }

    /// Set of drained server names. Bounded by the fleet config: the poller removes
    /// names no longer in it. No TTL, so a drain survives restarts.
    pub fn drained(&self) -> String {
        format!("{}:drained", self.prefix)
    }

    /// Hash from a second to the slots of the leases redirectors took for one
    /// mount that expire in it; seconds older than the TTL are dropped on every
    /// write, so it holds at most TTL-in-seconds fields (plus the lease life).
    /// TTL: [`reservation_ttl`].
    pub fn reservations(&self, server: &str, mount: &str) -> String {
        format!("{}:reserved:{server}:{mount}", self.prefix)
    }

    /// Since when (ms since the epoch) the reservation ledger is complete: set
    /// when missing, so a Redis that lost its keys fences new grants until the
    /// leases it forgot have expired. One integer.
    pub fn reservations_since(&self) -> String {
        format!("{}:reserved-since", self.prefix)
    }

    /// Sorted set of live redirector replicas, scored by their last heartbeat;
    /// stale ones are trimmed on every heartbeat. TTL: 10 s.
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    /// Every key and channel, with its bound. Per-mount keys are shown for one
    /// example mount.
    pub fn all(&self) -> Vec<KeySpec> {
        let spec = |name: String, bound, purpose| KeySpec {
            name,
            bound,
            purpose,
        };
        vec![
            spec(self.snapshot(), Bound::Ttl, "latest fleet snapshot"),
            spec(
                self.snapshot_version(),
                Bound::Fixed,
                "snapshot version counter",
            ),
            spec(
                self.snapshot_channel(),
                Bound::Channel,
                "new-snapshot notifications",
            ),
            spec(self.poller_lease(), Bound::Ttl, "active poller lease"),
            spec(self.drained(), Bound::Fixed, "drained servers"),
            spec(
                self.reservations("server", "/mount.ogg"),
                Bound::Ttl,
                "slots reserved for one mount",
            ),
            spec(
                self.reservations_since(),
                Bound::Fixed,
                "since when the reservation ledger is complete",
            ),
            spec(self.replicas(), Bound::Ttl, "live redirector replicas"),
        ]
    }
}

/// How long a snapshot lives in Redis without being rewritten: ten poll
/// intervals, at least 30 s. When polling stops, the data expires instead of
/// steering players for ever (django-icecast-balancer's data never did).
pub fn snapshot_ttl(poll_interval: Duration) -> Duration {
    (poll_interval * 10).max(Duration::from_secs(30))
}

/// How long the poller lease lasts unless renewed: three poll intervals, at least 3 s.
/// A standby takes over within two lease periods of the leader's death.
pub fn lease_ttl(poll_interval: Duration) -> Duration {
    (poll_interval * 3).max(Duration::from_secs(3))
}

/// How long a lease is remembered: until no replica can use a poll whose
/// window still counts it, i.e. its life, plus the connect grace, plus the
/// oldest data a replica may use (`max_data_age`), plus a margin.
pub fn reservation_ttl(
    lease: Duration,
    connect_grace: Duration,
    max_data_age: Duration,
) -> Duration {
    (lease + connect_grace + max_data_age + Duration::from_secs(5)).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        for keys in [Keys::default(), Keys::new("radio-2").expect("valid")] {
            let specs = keys.all();
            let tag = specs[0].name.split(':').next().expect("prefix").to_owned();
            assert!(tag.starts_with('{') && tag.ends_with('}'), "{tag}");
            for spec in &specs {
                // Redis hashes only the part between the first '{' and the next '}'.
                let first_open = spec.name.find('{').expect("has a tag");
                let close = spec.name[first_open..].find('}').expect("closed") + first_open;
                assert_eq!(&spec.name[first_open..=close], tag, "{}", spec.name);
                assert_eq!(first_open, 0, "{}", spec.name);
            }
        }
    }

    #[test]
    fn names_are_distinct() {
        let specs = Keys::default().all();
        let mut names: Vec<_> = specs.iter().map(|s| &s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), specs.len());
    }

    #[test]
    fn namespaces_that_would_break_the_tag_are_refused() {
        for bad in ["", "a}b", "{x", "a b", &"x".repeat(65)] {
            assert!(Keys::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bounds_scale_with_the_interval() {
        assert_eq!(
            snapshot_ttl(Duration::from_secs(2)),
            Duration::from_secs(30)
        );
        assert_eq!(
            snapshot_ttl(Duration::from_secs(60)),
            Duration::from_secs(600)
        );
        assert_eq!(
            lease_ttl(Duration::from_millis(500)),
            Duration::from_secs(3)
        );
        let (lease, grace) = (Duration::from_secs(2), Duration::from_secs(3));
        assert_eq!(
            reservation_ttl(lease, grace, Duration::from_secs(15)),
            Duration::from_secs(25)
        );
        assert_eq!(
            reservation_ttl(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Duration::from_secs(10)
        );
    }
}
