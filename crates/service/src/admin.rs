//! The admin address: gRPC health (the standard `grpc.health.v1`) for load
//! balancers, Kubernetes probes and `grpcurl`, the control API behind a bearer
//! token when one is set, and server reflection. The same health as plain
//! HTTP (`GET /healthz`) for checkers that cannot speak gRPC, such as
//! HAProxy's `option httpchk`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use balancer_proto::control::v1::control_server::{Control, ControlServer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The health a service reports for itself (the empty service name, which is
/// what probes ask about by default).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// The same status, for `GET /healthz`.
    serving: Arc<AtomicBool>,
}

impl Health {
    /// Reports SERVING when `serving` is true, NOT_SERVING otherwise.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.serving.store(serving, Ordering::Relaxed);
        self.reporter.set_service_status("", status).await;
    }
}

/// Why the admin address may not be used as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--admin {0} is reachable beyond this machine: set --admin-token (or ICB_ADMIN_TOKEN), \
     or pass --admin-insecure if a network policy protects it"
)]
pub struct ExposedAdmin(pub SocketAddr);

/// Refuses an admin address beyond loopback without a token, unless the
/// operator explicitly accepts the risk.
pub fn check_admin_exposure(
    addr: SocketAddr,
    token: Option<&str>,
    insecure: bool,
) -> Result<(), ExposedAdmin> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) || insecure {
        Ok(())
    } else {
        Err(ExposedAdmin(addr))
    }
}

/// What the admin address serves besides health.
pub struct Admin<C> {
    /// This process's control API (gRPC, and in-process for the console).
    pub control: Arc<C>,
    /// The bearer token control calls and the console must carry; `None`
    /// when the admin address is on loopback (or explicitly insecure).
    pub token: Option<String>,
    /// Prometheus metrics, for `GET /metrics`.
    pub metrics: Arc<Registry>,
    /// The poller's latest audience figures as JSON, for the console; `None`
    /// where this process reads no listener lists.
    pub audience: Option<watch::Receiver<Arc<str>>>,
}

/// Serves health, reflection, the control API, the operator console
/// (`/console`, see [`crate::console`]), Prometheus metrics (`GET /metrics`,
/// HTTP/1.1) and health over HTTP (`GET /healthz`: 200 `SERVING` or 503
/// `NOT_SERVING`) on `listener` until `shutdown` completes. With a token,
/// control calls must carry `authorization: Bearer <token>`; health and
/// metrics stay open for probes and scrapers. `on_ready` receives the health
/// handle before serving starts.
pub async fn serve_admin<C: Control>(
    listener: TcpListener,
    on_ready: impl FnOnce(Health),
    admin: Admin<C>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let serving = Arc::new(AtomicBool::new(false));
    let health = Health {
        reporter,
        serving: Arc::clone(&serving),
    };
    health.set(false).await;
    on_ready(health);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(balancer_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let token = admin.token.filter(|t| !t.is_empty());
    let grpc_token = token.clone();
    let control = InterceptedService::new(
        ControlServer::from_arc(Arc::clone(&admin.control)),
        move |request: Request<()>| authorize(request, grpc_token.as_deref()),
    );
    let (console, sample_history) = crate::console::routes(crate::console::Console {
        control: admin.control,
        token,
        audience: admin.audience,
    });
    let sampler = tokio::spawn(sample_history);
    let mut routes = Routes::new(health_service);
    if let Some(reflection) = reflection {
        routes = routes.add_service(reflection);
    }
    let metrics = admin.metrics;
    let router = routes
        .add_service(control)
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { prometheus_text(&metrics) }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || std::future::ready(http_health(&serving))),
        )
        .merge(console);
    let served = Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    sampler.abort();
    served
}

/// The admin address served in a task of its own: its health handle, and
/// the way to stop it. Both services start and stop it the same way.
pub struct AdminServer {
    /// The health this service reports.
    pub health: Health,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl AdminServer {
    /// Starts serving `admin` on `listener`; returns once health can be set
    /// (it starts NOT_SERVING).
    pub async fn start<C: Control>(
        listener: TcpListener,
        admin: Admin<C>,
    ) -> Result<AdminServer, crate::Failure> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (health_tx, health_rx) = oneshot::channel();
        let task = tokio::spawn(serve_admin(
            listener,
            |health| {
                let _ = health_tx.send(health);
            },
            admin,
            async {
                let _ = stopped.await;
            },
        ));
        let health = health_rx
            .await
            .map_err(|_| crate::Failure::unavailable("the admin server did not start"))?;
        Ok(AdminServer { health, stop, task })
    }

    /// Stops serving. Calls in flight get `grace`; open health Watch streams
    /// never end by themselves, so after it the server is cut off.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Health for HTTP checkers: the status code says it, the body repeats it.
fn http_health(serving: &AtomicBool) -> (axum::http::StatusCode, &'static str) {
    if serving.load(Ordering::Relaxed) {
        (axum::http::StatusCode::OK, "SERVING\n")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    }
}

/// The registry in Prometheus text format, with the content type scrapers expect.
fn prometheus_text(registry: &Registry) -> ([(&'static str, &'static str); 1], String) {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        text = format!("# metrics could not be encoded: {e}\n");
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([("content-type", content_type)], text)
}

/// Lets a call through when no token is set or it carries the right one.
fn authorize(request: Request<()>, token: Option<&str>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(request);
    };
    let presented = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        Ok(request)
    } else {
        // Never echo what was presented: it may be a mistyped secret.
        Err(Status::unauthenticated("missing or wrong bearer token"))
    }
}

/// Compares without stopping at the first difference, so timing does not
/// reveal how much of a guessed token was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        difference |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret!", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn exposure_needs_a_token_or_consent() {
        let public: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert!(check_admin_exposure(local, None, false).is_ok());
        assert!(check_admin_exposure("[::1]:7070".parse().unwrap(), None, false).is_ok());
        let err = check_admin_exposure(public, None, false).unwrap_err();
        assert!(err.to_string().contains("--admin-token"));
        assert!(check_admin_exposure(public, Some(""), false).is_err());
        assert!(check_admin_exposure(public, Some("t"), false).is_ok());
        assert!(check_admin_exposure(public, None, true).is_ok());
    }

    #[test]
    fn calls_need_the_token_when_one_is_set() {
        let with = |header: Option<&str>| {
            let mut request = Request::new(());
            if let Some(h) = header {
                request
                    .metadata_mut()
                    .insert("authorization", h.parse().unwrap());
            }
            request
        };
        assert!(authorize(with(None), None).is_ok());
        assert!(authorize(with(Some("Bearer s3cret")), Some("s3cret")).is_ok());
        for wrong in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let status = authorize(with(wrong), Some("s3cret")).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("s3cret"));
        }
    }
}
