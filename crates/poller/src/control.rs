//! The control API as the poller serves it: status, servers, drain, poll now,
//! reload. `Explain` belongs to redirectors (they place players).

use std::time::{Duration, Instant};

use balancer_proto::control::v1 as api;
use balancer_proto::control::v1::control_server::Control;
use balancer_store::PollerStore;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::service::{Command, Status as PollerStatus};

/// The redirectors' default `--connect-grace`, for counting reserved slots.
const DEFAULT_CONNECT_GRACE_MS: i64 = 3000;

/// How long a control call waits for the poller loop to answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the control API from a running [`crate::service::Poller`].
pub struct PollerControl<S: PollerStore> {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<PollerStatus>,
    store: S,
    started: Instant,
}

impl<S: PollerStore> PollerControl<S> {
    /// Control over the poller reached through `commands`, whose state `status` reports.
    pub fn new(
        commands: mpsc::Sender<Command>,
        status: watch::Receiver<PollerStatus>,
        store: S,
    ) -> Self {
        PollerControl {
            commands,
            status,
            store,
            started: Instant::now(),
        }
    }

    /// Sends a command and waits for its reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| Status::unavailable("the poller is shutting down"))?;
        tokio::time::timeout(LOOP_TIMEOUT, answer)
            .await
            .map_err(|_| Status::deadline_exceeded("the poller did not answer in time"))?
            .map_err(|_| Status::unavailable("the poller is shutting down"))
    }

    async fn drain(&self, server: &str, drained: bool) -> Result<bool, Status> {
        let known = self.ask(Command::Servers).await?;
        if !known.iter().any(|s| s.server.name == server) {
            return Err(Status::not_found(format!(
                "no server named {server:?} in the fleet"
            )));
        }
        let changed = self
            .store
            .set_drained(server, drained)
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the drain: {e}")))?;
        // Publish at once, so redirectors stop (or resume) sending players within a second.
        self.ask(Command::PollNow).await?;
        Ok(changed)
    }
}

#[tonic::async_trait]
impl<S: PollerStore> Control for PollerControl<S> {
    async fn status(
        &self,
        _: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let status = self.status.borrow().clone();
        let age = (status.published_at_ms > 0)
            .then(|| u64::try_from(crate::service::now_ms() - status.published_at_ms).unwrap_or(0));
        Ok(Response::new(api::StatusResponse {
            role: api::Role::Poller.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            snapshot_version: status.snapshot_version,
            snapshot_age_ms: age,
            leader: status.leader,
            redis_ok: status.published,
        }))
    }

    async fn list_servers(
        &self,
        _: Request<api::ListServersRequest>,
    ) -> Result<Response<api::ListServersResponse>, Status> {
        let reports = self.ask(Command::Servers).await?;
        // Slots handed out since each server's poll, minus the redirectors'
        // default connect grace: one round trip for every mount.
        let queries: Vec<(&str, &str, i64)> = reports
            .iter()
            .flat_map(|report| {
                let since = report.server.observed_at_ms - DEFAULT_CONNECT_GRACE_MS;
                report.mounts.iter().map(move |(_, mount)| {
                    (report.server.name.as_str(), mount.mount.as_str(), since)
                })
            })
            .collect();
        let reserved = self
            .store
            .reserved_many(&queries)
            .await
            .unwrap_or_else(|_| vec![0; queries.len()]);
        let mut reserved = reserved.into_iter();
        let mut servers = Vec::with_capacity(reports.len());
        for report in reports {
            let mounts = report
                .mounts
                .into_iter()
                .map(|(stream, mount)| api::MountStatus {
                    stream,
                    mount: Some(mount),
                    reserved: reserved.next().unwrap_or(0),
                })
                .collect();
            servers.push(api::ServerStatus {
                server: Some(report.server),
                mounts,
                last_poll_ms: report.last_poll_ms,
            });
        }
        Ok(Response::new(api::ListServersResponse { servers }))
    }

    async fn drain(
        &self,
        request: Request<api::DrainRequest>,
    ) -> Result<Response<api::DrainResponse>, Status> {
        let changed = PollerControl::drain(self, &request.into_inner().server, true).await?;
        Ok(Response::new(api::DrainResponse { changed }))
    }

    async fn undrain(
        &self,
        request: Request<api::UndrainRequest>,
    ) -> Result<Response<api::UndrainResponse>, Status> {
        let changed = PollerControl::drain(self, &request.into_inner().server, false).await?;
        Ok(Response::new(api::UndrainResponse { changed }))
    }

    async fn poll_now(
        &self,
        _: Request<api::PollNowRequest>,
    ) -> Result<Response<api::PollNowResponse>, Status> {
        let version = self.ask(Command::PollNow).await?;
        if version == 0 {
            return Err(Status::failed_precondition(
                "no snapshot published: this poller is standing by or Redis is unavailable",
            ));
        }
        Ok(Response::new(api::PollNowResponse {
            snapshot_version: version,
        }))
    }

    async fn reload(
        &self,
        request: Request<api::ReloadRequest>,
    ) -> Result<Response<api::ReloadResponse>, Status> {
        let request = request.into_inner();
        if request.geoip && !request.fleet {
            return Err(Status::unimplemented(
                "the poller has no GeoIP databases: reload them on a redirector",
            ));
        }
        match self.ask(Command::ReloadAndReport).await? {
            Ok(summary) => Ok(Response::new(api::ReloadResponse {
                reloaded: vec![summary],
            })),
            Err(error) => Err(Status::invalid_argument(format!(
                "reload refused, the running config stays: {error}"
            ))),
        }
    }

    async fn explain(
        &self,
        _: Request<api::ExplainRequest>,
    ) -> Result<Response<api::ExplainResponse>, Status> {
        Err(Status::unimplemented(
            "the poller does not place players: ask a redirector's admin address (balancerctl --admin ADDR explain)",
        ))
    }
}
