//! Answering one HTTP request: 302, playlist, 404, 405, 451 or 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::client_ip::{TrustedProxies, client_ip, client_scheme};
use crate::follow::Views;
use crate::index::{self, IndexMode, IndexPage};
use crate::metrics::RedirectorMetrics;
use crate::playlist;
use crate::route::route;
use crate::select::{Decision, Selector};

/// Everything a request needs, shared by all connections.
pub struct App {
    /// Selection and reservations.
    pub selector: Arc<Selector>,
    /// The current fleet view.
    pub views: Arc<Views>,
    /// Proxies whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// django-icecast-balancer's URL prefix, e.g. `/icecast_balancer`.
    pub prefix: String,
    /// Request counters and latency.
    pub metrics: RedirectorMetrics,
    /// The range a 503's `Retry-After` is drawn from.
    pub retry_after: crate::cli::RetryAfter,
    /// What the public stream index shows.
    pub index: crate::index::IndexMode,
}

/// Answers `request` from `peer`. Never fails: every problem is a status code.
pub async fn handle(
    app: &App,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let head_only = request.method() == Method::HEAD;
    let mut response = answer(app, &request, peer).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if head_only {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

async fn answer(app: &App, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        app.metrics.request(None, "method_not_allowed");
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Only GET and HEAD are supported.\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if has_body(request) {
        return text(
            StatusCode::BAD_REQUEST,
            "A request for a stream has no body.\n",
        );
    }
    if let Some(page) = index::page(request.uri().path(), &app.prefix) {
        return index_page(app, page);
    }
    let Some(route) = route(request.uri().path(), &app.prefix) else {
        return text(StatusCode::NOT_FOUND, "No such stream.\n");
    };
    let Some(view) = app.views.load() else {
        return unavailable(
            app,
            "The balancer has no data about the servers yet. Please try again later.\n",
        );
    };
    let client = client_ip(peer.ip(), request.headers(), &app.trusted);
    let scheme = client_scheme(peer.ip(), request.headers(), &app.trusted);
    let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
    // A HEAD request is a probe, not a player: it takes no slot.
    let reserve = request.method() != Method::HEAD;
    let now = now_ms();
    let started = std::time::Instant::now();
    let decision = app
        .selector
        .decide(
            &view,
            route.stream,
            client,
            scheme,
            route.format,
            reserve,
            &mut rng,
            now,
        )
        .await;
    app.metrics
        .selection_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &decision {
        Decision::Redirect(_) => "redirect",
        Decision::Playlist(_) => "playlist",
        Decision::NotFound => "not_found",
        Decision::Denied => "denied",
        Decision::Full => "full",
    };
    // Only streams of the fleet become label values, never what a stranger typed.
    let stream = view.streams.get(route.stream).map(|s| &s.name);
    app.metrics.request(stream, outcome);
    match decision {
        Decision::Redirect(url) => redirect(&url, request.uri().query()),
        Decision::Playlist(urls) => {
            let urls: Vec<String> = urls
                .iter()
                .map(|u| with_query(u, request.uri().query()))
                .collect();
            let (content_type, body) = playlist::render(route.format, route.stream, &urls);
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Decision::NotFound => text(StatusCode::NOT_FOUND, "No such stream.\n"),
        Decision::Denied => text(
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            "This stream is not available in your country.\n",
        ),
        Decision::Full => unavailable(
            app,
            "No relay available at the moment. Please try again later.\n",
        ),
    }
}

/// A page of the public stream index, from the current snapshot.
fn index_page(app: &App, page: IndexPage) -> Response<Full<Bytes>> {
    if app.index == IndexMode::Off {
        return text(StatusCode::NOT_FOUND, "No such stream.\n");
    }
    app.metrics.request(None, "index");
    let (content_type, body) = match page {
        IndexPage::Css => (
            "text/css; charset=utf-8",
            Bytes::from_static(index::CSS.as_bytes()),
        ),
        IndexPage::Html | IndexPage::Json => {
            let Some(view) = app.views.load() else {
                return unavailable(
                    app,
                    "The balancer has no data about the servers yet. Please try again later.\n",
                );
            };
            let pages = view.stream_index(app.index);
            match page {
                IndexPage::Json => ("application/json", pages.json.clone()),
                _ => ("text/html; charset=utf-8", pages.html.clone()),
            }
        }
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(index::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A GET with a body (or announcing one) is refused rather than read.
fn has_body(request: &Request<Incoming>) -> bool {
    request.headers().contains_key(header::TRANSFER_ENCODING)
        || request.body().size_hint().lower() > 0
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The URL with the request's query string, if it can travel in a header
/// (printable ASCII only; anything else drops the query, never the URL).
pub fn with_query(url: &str, query: Option<&str>) -> String {
    match query.filter(|q| !q.is_empty() && q.bytes().all(|b| b.is_ascii_graphic())) {
        Some(query) => format!("{url}?{query}"),
        None => url.to_owned(),
    }
}

fn redirect(url: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let target = with_query(url, query);
    let location = HeaderValue::from_str(&target)
        .or_else(|_| HeaderValue::from_str(url))
        .unwrap_or_else(|_| HeaderValue::from_static("/"));
    let mut response = text(StatusCode::FOUND, "Redirecting to a relay.\n");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// 503, with a `Retry-After` drawn from the configured range.
fn unavailable(app: &App, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, body);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(app.retry_after.draw()),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
