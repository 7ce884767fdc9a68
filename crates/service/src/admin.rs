//! The admin address: gRPC health (the standard `grpc.health.v1`) for load
//! balancers, Kubernetes probes and `grpcurl`; the control API joins it later.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The health a service reports for itself (the empty service name, which is
/// what probes ask about by default).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Reports SERVING when `serving` is true, NOT_SERVING otherwise.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

/// Serves the admin gRPC API on `listener` until `shutdown` completes, then
/// lets in-flight calls finish. Returns the health handle before serving, via
/// `on_ready`, so the caller can flip it.
pub async fn serve_admin(
    listener: TcpListener,
    on_ready: impl FnOnce(Health),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health { reporter };
    health.set(false).await;
    on_ready(health);
    Server::builder()
        .add_service(health_service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
