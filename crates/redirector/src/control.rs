//! The control API as a redirector serves it: status, explain, GeoIP reload.
//! A standalone redirector also drains, lists servers and polls, through its
//! in-process poller; a Redis-mode one sends those to the poller.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use balancer_geo::{Client, Closeness, GeoDb, Place, closeness, rank};
use balancer_proto::control::v1 as api;
use balancer_proto::control::v1::control_server::Control;
use balancer_proto::snapshot::v1::Location;
use balancer_store::MemoryStore;
use icecast_poller::control::PollerControl;
use tonic::{Request, Response, Status};

use crate::client_ip::Scheme;
use crate::follow::Views;
use crate::http::now_ms;
use crate::select::{Exclusion, Selector};
use crate::view::Unusable;

/// Serves the control API from a running redirector.
pub struct RedirectorControl {
    /// The selection logic (GeoIP, reservations, staleness).
    pub selector: Arc<Selector>,
    /// The current view.
    pub views: Arc<Views>,
    /// GeoIP databases, for reloads.
    pub geo: Arc<GeoDb>,
    /// The in-process poller, in standalone mode.
    pub poller: Option<PollerControl<MemoryStore>>,
    /// When the process started.
    pub started: Instant,
}

fn ask_the_poller(call: &str) -> Status {
    Status::unimplemented(format!(
        "{call} is the poller's job: use balancerctl --admin <the poller's admin address>"
    ))
}

#[tonic::async_trait]
impl Control for RedirectorControl {
    async fn status(
        &self,
        _: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let view = self.views.load();
        let now = now_ms();
        Ok(Response::new(api::StatusResponse {
            role: if self.poller.is_some() {
                api::Role::Standalone
            } else {
                api::Role::Redirector
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            snapshot_version: view.as_ref().map_or(0, |v| v.version),
            snapshot_age_ms: view.map(|v| u64::try_from(now - v.published_at_ms).unwrap_or(0)),
            leader: false,
            redis_ok: !self.selector.reservations.redis_trouble(now),
        }))
    }

    async fn list_servers(
        &self,
        request: Request<api::ListServersRequest>,
    ) -> Result<Response<api::ListServersResponse>, Status> {
        match &self.poller {
            Some(poller) => poller.list_servers(request).await,
            None => Err(ask_the_poller("ListServers")),
        }
    }

    async fn drain(
        &self,
        request: Request<api::DrainRequest>,
    ) -> Result<Response<api::DrainResponse>, Status> {
        match &self.poller {
            Some(poller) => poller.drain(request).await,
            None => Err(ask_the_poller("Drain")),
        }
    }

    async fn undrain(
        &self,
        request: Request<api::UndrainRequest>,
    ) -> Result<Response<api::UndrainResponse>, Status> {
        match &self.poller {
            Some(poller) => poller.undrain(request).await,
            None => Err(ask_the_poller("Undrain")),
        }
    }

    async fn poll_now(
        &self,
        request: Request<api::PollNowRequest>,
    ) -> Result<Response<api::PollNowResponse>, Status> {
        match &self.poller {
            Some(poller) => poller.poll_now(request).await,
            None => Err(ask_the_poller("PollNow")),
        }
    }

    async fn reload(
        &self,
        request: Request<api::ReloadRequest>,
    ) -> Result<Response<api::ReloadResponse>, Status> {
        let wanted = request.into_inner();
        let everything = !wanted.fleet && !wanted.geoip;
        let mut reloaded = Vec::new();
        if wanted.geoip || everything {
            let errors = self.geo.reload();
            if !errors.is_empty() {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return Err(Status::invalid_argument(format!(
                    "GeoIP reload refused, the loaded databases stay: {}",
                    errors.join("; ")
                )));
            }
            reloaded.push(format!(
                "GeoIP: {}",
                if self.geo.is_enabled() {
                    "reloaded"
                } else {
                    "not configured"
                }
            ));
        }
        if wanted.fleet || everything {
            match &self.poller {
                Some(poller) => {
                    let fleet = api::ReloadRequest {
                        fleet: true,
                        geoip: false,
                    };
                    reloaded.extend(
                        poller
                            .reload(Request::new(fleet))
                            .await?
                            .into_inner()
                            .reloaded,
                    );
                }
                None if wanted.fleet => return Err(ask_the_poller("Reload of the fleet")),
                None => {}
            }
        }
        Ok(Response::new(api::ReloadResponse { reloaded }))
    }

    async fn explain(
        &self,
        request: Request<api::ExplainRequest>,
    ) -> Result<Response<api::ExplainResponse>, Status> {
        let request = request.into_inner();
        let ip: IpAddr = request.client_ip.trim().parse().map_err(|_| {
            Status::invalid_argument(format!("{:?} is not an IP address", request.client_ip))
        })?;
        let view = self
            .views
            .load()
            .ok_or_else(|| Status::unavailable("no snapshot yet"))?;
        let stream = view
            .streams
            .get(&request.stream)
            .ok_or_else(|| Status::not_found(format!("no stream named {:?}", request.stream)))?;
        let place = self.selector.geo.lookup(ip);
        let client = Client {
            place,
            ipv6: ip.is_ipv6(),
        };
        let scheme = match request.scheme.as_str() {
            "" => Scheme::Http,
            text => Scheme::parse(text).ok_or_else(|| {
                Status::invalid_argument(format!("{text:?} is not a scheme: use http or https"))
            })?,
        };
        let now = now_ms();
        // The same tier, pass and ranking as a request's.
        let tier = self.selector.tier_for(&view, stream, &client, scheme, now);
        let filtered = self
            .selector
            .filter(&view, stream, &client, scheme, tier, now, &|_| false);
        let excluded = filtered
            .excluded
            .iter()
            .map(|&(index, why)| {
                let mount = &stream.mounts[index];
                let server = &view.servers[mount.server];
                let (reason, detail) = match why {
                    Exclusion::DeniedCountry => (
                        api::ExclusionReason::DeniedCountry,
                        "the stream is not licensed in the client's country".to_owned(),
                    ),
                    Exclusion::AddressFamily => (
                        api::ExclusionReason::AddressFamily,
                        "not reachable over the client's IP version".to_owned(),
                    ),
                    Exclusion::Scheme => (
                        api::ExclusionReason::Scheme,
                        format!(
                            "no {} public URL, and cross_scheme is off",
                            match scheme {
                                Scheme::Http => "http",
                                Scheme::Https => "https",
                            }
                        ),
                    ),
                    Exclusion::Unusable(Unusable::Headroom) => (
                        api::ExclusionReason::Headroom,
                        format!(
                            "{} free, all kept as headroom while another mount is below its soft limit",
                            mount.free_slots
                        ),
                    ),
                    Exclusion::Unusable(Unusable::Down) => {
                        (api::ExclusionReason::Down, server.last_error.clone())
                    }
                    Exclusion::Unusable(Unusable::Drained) => {
                        (api::ExclusionReason::Drained, String::new())
                    }
                    Exclusion::Unusable(Unusable::Stale) => (
                        api::ExclusionReason::Stale,
                        format!("data is {} s old", (now - server.observed_at_ms) / 1000),
                    ),
                    Exclusion::Unusable(Unusable::NoSource) => {
                        (api::ExclusionReason::NoSource, String::new())
                    }
                    Exclusion::Unusable(Unusable::Stalled) => (
                        api::ExclusionReason::NoSource,
                        "the source is connected but has sent nothing (stalled)".to_owned(),
                    ),
                    Exclusion::Unusable(Unusable::Full) => {
                        (api::ExclusionReason::Full, String::new())
                    }
                };
                api::Excluded {
                    server: server.name.to_string(),
                    mount: mount.mount.to_string(),
                    reason: reason.into(),
                    detail,
                }
            })
            .collect();
        let candidates: Vec<_> = filtered.accepted.iter().map(|(_, c)| *c).collect();
        let mut rng = fastrand::Rng::new();
        let order = rank(&client, &candidates, &self.selector.policy, &mut rng);
        let candidates = order
            .into_iter()
            .map(|i| {
                let mount = &stream.mounts[filtered.accepted[i].0];
                let server = &view.servers[mount.server];
                api::Candidate {
                    server: server.name.to_string(),
                    mount: mount.mount.to_string(),
                    url: mount
                        .url(scheme, server)
                        .map(|u| u.to_string())
                        .unwrap_or_default(),
                    free_slots: mount.free_slots,
                    distance_km: place
                        .location
                        .zip(server.place.location)
                        .map(|(a, b)| a.distance_km(b)),
                    rank_reason: rank_reason(&place, &server.place),
                }
            })
            .collect();
        Ok(Response::new(api::ExplainResponse {
            client: Some(api::ClientLocation {
                country: place.country.map(|c| c.to_string()).unwrap_or_default(),
                continent: place.continent.map(|c| c.to_string()).unwrap_or_default(),
                location: place.location.map(|l| Location {
                    lat: l.lat(),
                    lon: l.lon(),
                }),
                asn: place.asn.unwrap_or(0),
            }),
            candidates,
            excluded,
        }))
    }
}

/// Why a server ranks where it does, in words: the tier ranking used.
fn rank_reason(client: &Place, server: &Place) -> String {
    let code = |c: Option<balancer_geo::Code>| c.map(|c| c.to_string()).unwrap_or_default();
    match closeness(client, server) {
        Closeness::SameNetwork => format!("same network (AS{})", client.asn.unwrap_or(0)),
        Closeness::SameCountry => format!("same country ({})", code(client.country)),
        Closeness::SameContinent => format!("same continent ({})", code(client.continent)),
        Closeness::Elsewhere if client.location.is_some() && server.location.is_some() => {
            "by distance".to_owned()
        }
        Closeness::Elsewhere => "by free slots and weight (no location)".to_owned(),
    }
}
