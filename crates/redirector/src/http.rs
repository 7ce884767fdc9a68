//! Answering one HTTP request: 302, playlist, index page, 404, 405, 451 or 503.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::client_ip::{Scheme, TrustedProxies, client};
use crate::follow::Views;
use crate::index::{self, IndexMode, IndexPage};
use crate::metrics::RedirectorMetrics;
use crate::playlist;
use crate::route::route;
use crate::select::{Decision, Selector};
use crate::view::FleetView;
use crate::wire::{Head, Location, Method, Reply, Status};

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

/// A request as its answer needs it: what was asked, by whom, over which
/// scheme. Built from the head without waiting, so the head's header lines
/// need not be kept while the answer is worked out.
#[derive(Debug, Clone, Copy)]
pub struct Request<'b> {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: &'b str,
    /// The query string, without `?`.
    pub query: Option<&'b str>,
    /// The player's address (the peer, or what a trusted proxy says).
    pub client: IpAddr,
    /// The scheme the player used.
    pub scheme: Scheme,
}

impl<'b> Request<'b> {
    /// The request `head` sent by `peer`.
    pub fn new(head: &Head<'b, '_>, peer: IpAddr, trusted: &TrustedProxies) -> Request<'b> {
        let (client, scheme) = client(peer, head.headers, trusted);
        Request {
            method: head.method,
            path: head.path,
            query: head.query,
            client,
            scheme,
        }
    }
}

/// Answers `head` at `now_ms` (milliseconds since the epoch, read once per
/// batch of requests). Never fails: every problem is a status code.
pub async fn handle(app: &App, head: &Request<'_>, now_ms: i64) -> Reply {
    let view = app.views.load();
    handle_in(app, view.as_deref(), head, now_ms).await
}

/// [`handle`] with the current view given (`None` before the first
/// snapshot), as a player thread holds it ([`crate::follow::ThreadView`]).
pub async fn handle_in(
    app: &App,
    view: Option<&FleetView>,
    head: &Request<'_>,
    now_ms: i64,
) -> Reply {
    if head.method == Method::Other {
        app.metrics.request_without_stream("method_not_allowed");
        return method_not_allowed();
    }
    if let Some(page) = index::page(head.path, &app.prefix) {
        return index_page(app, page);
    }
    let Some(route) = route(head.path, &app.prefix) else {
        return Reply::text(Status::NotFound, "No such stream.\n");
    };
    let Some(view) = view else {
        return unavailable(
            app,
            "The balancer has no data about the servers yet. Please try again later.\n",
        );
    };
    let Some(stream) = view.streams.get(route.stream) else {
        // Only streams of the fleet become label values, never what a stranger typed.
        app.metrics.request_without_stream("not_found");
        return Reply::text(Status::NotFound, "No such stream.\n");
    };
    let (client, scheme) = (head.client, head.scheme);
    let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
    // A HEAD request is a probe, not a player: it takes no slot.
    let reserve = head.method == Method::Get;
    // Counted once the selection is done: a selection dropped mid-way (a
    // player thread retries it in a task) leaves the count, and the sample, as it was.
    let selection = SELECTIONS.with(std::cell::Cell::get);
    let started = selection
        .is_multiple_of(TIMED_EVERY)
        .then(std::time::Instant::now);
    let decision = app
        .selector
        .decide(
            view,
            stream,
            client,
            scheme,
            route.format,
            reserve,
            &mut rng,
            now_ms,
        )
        .await;
    SELECTIONS.with(|count| count.set(selection.wrapping_add(1)));
    if let Some(started) = started {
        app.metrics
            .selection_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    let outcomes = stream
        .outcomes
        .get_or_init(|| app.metrics.stream_outcomes(&stream.name));
    match &decision {
        Decision::Redirect(_) => outcomes.redirect.inc(),
        Decision::Playlist(_) => outcomes.playlist.inc(),
        Decision::Denied => outcomes.denied.inc(),
        Decision::Full => outcomes.full.inc(),
    };
    match decision {
        Decision::Redirect(url) => redirect(url, head.query),
        Decision::Playlist(urls) => {
            let urls: Vec<String> = urls.iter().map(|u| with_query(u, head.query)).collect();
            let (content_type, body) = playlist::render(route.format, route.stream, &urls);
            Reply {
                content_type,
                body: Bytes::from(body),
                ..Reply::text(Status::Ok, "")
            }
        }
        Decision::Denied => Reply::text(
            Status::LegalReasons,
            "This stream is not available in your country.\n",
        ),
        Decision::Full => unavailable(
            app,
            "No relay available at the moment. Please try again later.\n",
        ),
    }
}

/// 405, naming the methods there are.
pub fn method_not_allowed() -> Reply {
    Reply {
        extra: "allow: GET, HEAD\r\n",
        ..Reply::text(
            Status::MethodNotAllowed,
            "Only GET and HEAD are supported.\n",
        )
    }
}

/// A page of the public stream index, from the current snapshot.
fn index_page(app: &App, page: IndexPage) -> Reply {
    if app.index == IndexMode::Off {
        return Reply::text(Status::NotFound, "No such stream.\n");
    }
    app.metrics.request_without_stream("index");
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
    Reply {
        content_type,
        body,
        extra: index::HEADERS,
        ..Reply::text(Status::Ok, "")
    }
}

/// The request's query string, if it can travel in a header (printable
/// ASCII only; anything else drops the query, never the URL).
fn printable_query(query: Option<&str>) -> Option<&str> {
    query.filter(|q| !q.is_empty() && q.bytes().all(|b| b.is_ascii_graphic()))
}

/// The URL with the request's query string, if it can travel in a header.
pub fn with_query(url: &str, query: Option<&str>) -> String {
    match printable_query(query) {
        Some(query) => format!("{url}?{query}"),
        None => url.to_owned(),
    }
}

fn redirect(url: Arc<str>, query: Option<&str>) -> Reply {
    Reply {
        location: Some(Location {
            url,
            query: printable_query(query).map(str::to_owned),
        }),
        ..Reply::text(Status::Found, "Redirecting to a relay.\n")
    }
}

/// 503, with a `Retry-After` drawn from the configured range.
fn unavailable(app: &App, body: &'static str) -> Reply {
    Reply {
        retry_after: Some(app.retry_after.draw()),
        ..Reply::text(Status::Unavailable, body)
    }
}

/// One selection in this many (each thread's first among them) is timed for
/// `icb_selection_seconds`, to spare the clock.
const TIMED_EVERY: u32 = 16;

thread_local! {
    /// Selections made on this thread, to time one in [`TIMED_EVERY`].
    static SELECTIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
