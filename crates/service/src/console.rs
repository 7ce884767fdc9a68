//! The operator console: a web page on the admin address that shows what this
//! process knows (fleet, streams, audience, Explain) and offers the actions of
//! `balancerctl` (drain, undrain, poll now, reload).
//!
//! The page itself is static and embedded (no data in it, no external asset,
//! no build step). It reads and acts through the JSON endpoints under
//! `/console/api/`, which call this process's own [`Control`] implementation
//! in-process: a click does exactly what the same `balancerctl` command does.
//!
//! Guards, all on the JSON endpoints:
//! - with an admin token, every call carries `Authorization: Bearer <token>`
//!   (the page keeps the token in session storage);
//! - without one (admin on loopback, or an explicit `--admin-insecure`), the
//!   `Host` must be an address or `localhost`, so a hostile web page cannot
//!   reach the console through DNS rebinding;
//! - actions are POSTs that carry the `X-ICB-Console` header and no foreign
//!   `Origin` or `Sec-Fetch-Site`: a cross-site form cannot send that header,
//!   and a cross-site script would need a CORS preflight nobody answers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use balancer_proto::control::v1 as api;
use balancer_proto::control::v1::control_server::Control;
use serde_json::{Value, json};
use tokio::sync::watch;
use tonic::{Code, Request};

use crate::control_json;

/// How often the console records each stream's listeners for its chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// How much listener history the console keeps in memory: two hours.
const HISTORY_SAMPLES: usize = 480;

/// The largest action body accepted (a server name in JSON).
const MAX_BODY: usize = 4096;

/// The header every console action carries; see the module documentation.
const ACTION_HEADER: &str = "x-icb-console";

const PAGE: &str = include_str!("../assets/console.html");
const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// The page may load its own script and style and talk to its own origin;
/// nothing else, and no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// What the console of one process is built from.
pub struct Console<C> {
    /// This process's control API, called in-process.
    pub control: Arc<C>,
    /// The admin token; `None` when the admin address needs none.
    pub token: Option<String>,
    /// The poller's latest audience figures as JSON, where this process polls.
    pub audience: Option<watch::Receiver<Arc<str>>>,
}

/// Listeners per stream over time, sampled every [`SAMPLE_EVERY`].
#[derive(Default)]
struct History {
    samples: VecDeque<(i64, BTreeMap<String, u64>)>,
}

impl History {
    fn record(&mut self, at_ms: i64, totals: BTreeMap<String, u64>) {
        if self.samples.len() == HISTORY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at_ms, totals));
    }

    fn to_json(&self) -> Value {
        Value::Array(
            self.samples
                .iter()
                .map(|(t, totals)| json!({ "t": t, "listeners": totals }))
                .collect(),
        )
    }
}

struct Shared<C> {
    console: Console<C>,
    history: Mutex<History>,
}

/// The console's routes, to merge into the admin router, and the task that
/// samples listener history (run it beside the admin server, abort it after).
pub fn routes<C: Control>(
    console: Console<C>,
) -> (axum::Router, impl Future<Output = ()> + Send + 'static) {
    let shared = Arc::new(Shared {
        console,
        history: Mutex::new(History::default()),
    });
    let router = axum::Router::new()
        .route("/", get(|| async { redirect_to_console() }))
        .route(
            "/console",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/console/api/status", get(status::<C>))
        .route("/console/api/servers", get(servers::<C>))
        .route("/console/api/streams", get(streams::<C>))
        .route("/console/api/audience", get(audience::<C>))
        .route("/console/api/explain", get(explain::<C>))
        .route("/console/api/drain", post(drain::<C>))
        .route("/console/api/undrain", post(undrain::<C>))
        .route("/console/api/poll", post(poll::<C>))
        .route("/console/api/reload", post(reload::<C>))
        .with_state(Arc::clone(&shared));
    (router, sample_history(shared))
}

fn redirect_to_console() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/console")]).into_response()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An answer of the JSON API: the body, or an error in words with its status.
type Answer = Result<Value, (StatusCode, String)>;

fn reply(answer: Answer) -> Response {
    let (status, body) = match answer {
        Ok(body) => (StatusCode::OK, body),
        Err((status, error)) => (status, json!({ "error": error })),
    };
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    secure_headers(headers);
    response
}

/// Why a request may not use the API, if it may not; see the module documentation.
fn refuse(
    method: &Method,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Option<(StatusCode, String)> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or("");
    match token {
        Some(token) => {
            let presented = text(header::AUTHORIZATION)
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !crate::admin::constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Some((
                    StatusCode::UNAUTHORIZED,
                    "this console needs the admin token".to_owned(),
                ));
            }
        }
        None if !is_address_or_localhost(host) => {
            return Some((
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not an address: open the console by its address, \
                     or set an admin token"
                ),
            ));
        }
        None => {}
    }
    if method == Method::POST {
        let site = text(header::HeaderName::from_static("sec-fetch-site"));
        let origin_ok = text(header::ORIGIN).is_none_or(|origin| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
        if headers.get(ACTION_HEADER).is_none()
            || !origin_ok
            || site.is_some_and(|s| s != "same-origin" && s != "none")
        {
            return Some((
                StatusCode::FORBIDDEN,
                "actions are taken from the console's own page only".to_owned(),
            ));
        }
    }
    None
}

/// `127.0.0.1:7070`, `[::1]:7070`, `localhost:7070`, with or without the port.
fn is_address_or_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The HTTP status that says what a control error means.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn failed(status: &tonic::Status) -> (StatusCode, String) {
    (http_status(status.code()), status.message().to_owned())
}

/// The console's state, as handlers receive it.
type ConsoleState<C> = State<Arc<Shared<C>>>;

macro_rules! guarded {
    ($state:expr, $method:expr, $headers:expr) => {
        if let Some(refusal) = refuse(&$method, &$headers, $state.console.token.as_deref()) {
            return reply(Err(refusal));
        }
    };
}

/// A control call's answer as the API's JSON, or its error in words.
fn reply_with<T>(
    answer: Result<tonic::Response<T>, tonic::Status>,
    json: impl FnOnce(&T) -> Value,
) -> Response {
    reply(answer.map(|r| json(r.get_ref())).map_err(|e| failed(&e)))
}

async fn status<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap) -> Response {
    guarded!(s, Method::GET, headers);
    let control = &s.console.control;
    reply_with(
        control.status(Request::new(api::StatusRequest {})).await,
        control_json::status,
    )
}

async fn servers<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap) -> Response {
    guarded!(s, Method::GET, headers);
    let control = &s.console.control;
    reply_with(
        control
            .list_servers(Request::new(api::ListServersRequest {}))
            .await,
        |servers| control_json::servers(servers, now_ms()),
    )
}

/// Listeners per stream now, and the history behind the chart.
async fn streams<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap) -> Response {
    guarded!(s, Method::GET, headers);
    let control = &s.console.control;
    let answer = control
        .list_servers(Request::new(api::ListServersRequest {}))
        .await;
    reply_with(answer, |servers| {
        let history = s.history.lock().map(|h| h.to_json()).unwrap_or_default();
        json!({
            "now": stream_totals(servers),
            "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
            "history": history,
        })
    })
}

async fn audience<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap) -> Response {
    guarded!(s, Method::GET, headers);
    let answer = match &s.console.audience {
        Some(feed) => serde_json::from_str(&feed.borrow()).map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("audience figures unreadable: {e}"),
            )
        }),
        None => Err((
            StatusCode::NOT_IMPLEMENTED,
            "this process does not read listener lists: the poller's console shows the audience"
                .to_owned(),
        )),
    };
    reply(answer)
}

async fn explain<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap, uri: Uri) -> Response {
    guarded!(s, Method::GET, headers);
    let mut request = api::ExplainRequest::default();
    for (key, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "stream" => request.stream = value.into_owned(),
            "ip" => request.client_ip = value.into_owned(),
            "scheme" => request.scheme = value.into_owned(),
            _ => {}
        }
    }
    let control = &s.console.control;
    reply_with(
        control.explain(Request::new(request)).await,
        control_json::explain,
    )
}

/// The server an action names: `{"server": "name"}`.
fn server_named(body: &[u8]) -> Result<String, (StatusCode, String)> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    if body.len() > MAX_BODY {
        return Err(bad(format!("the body is over {MAX_BODY} bytes")));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    match value.get("server").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(bad(
            "the body names no server: send {\"server\": \"name\"}".to_owned()
        )),
    }
}

async fn drain<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap, body: Bytes) -> Response {
    guarded!(s, Method::POST, headers);
    set_drained(&*s.console.control, &body, true).await
}

async fn undrain<C: Control>(
    State(s): ConsoleState<C>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    guarded!(s, Method::POST, headers);
    set_drained(&*s.console.control, &body, false).await
}

/// Drains or undrains the server `body` names, as `balancerctl drain` and `undrain` do.
async fn set_drained<C: Control>(control: &C, body: &[u8], drained: bool) -> Response {
    let server = match server_named(body) {
        Ok(server) => server,
        Err(e) => return reply(Err(e)),
    };
    let answer = if drained {
        let request = api::DrainRequest {
            server: server.clone(),
        };
        control
            .drain(Request::new(request))
            .await
            .map(|r| r.get_ref().changed)
    } else {
        let request = api::UndrainRequest {
            server: server.clone(),
        };
        control
            .undrain(Request::new(request))
            .await
            .map(|r| r.get_ref().changed)
    };
    reply(
        answer
            .map(|changed| json!({ "server": server, "drained": drained, "changed": changed }))
            .map_err(|e| failed(&e)),
    )
}

async fn poll<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap) -> Response {
    guarded!(s, Method::POST, headers);
    let control = &s.console.control;
    reply_with(
        control.poll_now(Request::new(api::PollNowRequest {})).await,
        |r| json!({ "snapshot_version": r.snapshot_version }),
    )
}

async fn reload<C: Control>(State(s): ConsoleState<C>, headers: HeaderMap) -> Response {
    guarded!(s, Method::POST, headers);
    let everything = api::ReloadRequest {
        fleet: false,
        geoip: false,
    };
    let control = &s.console.control;
    reply_with(
        control.reload(Request::new(everything)).await,
        |r| json!({ "reloaded": r.reloaded }),
    )
}

/// Listeners per stream, summed over every server that carries it.
fn stream_totals(servers: &api::ListServersResponse) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for mount in servers.servers.iter().flat_map(|s| &s.mounts) {
        let listeners = mount.mount.as_ref().map_or(0, |m| m.listeners);
        *totals.entry(mount.stream.clone()).or_default() += u64::from(listeners);
    }
    totals
}

/// Records the listener totals every [`SAMPLE_EVERY`], for as long as this
/// process can list servers (a Redis-mode redirector cannot: it has no chart).
async fn sample_history<C: Control>(shared: Arc<Shared<C>>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let listed = shared
            .console
            .control
            .list_servers(Request::new(api::ListServersRequest {}))
            .await;
        match listed {
            Ok(servers) => {
                let totals = stream_totals(servers.get_ref());
                if let Ok(mut history) = shared.history.lock() {
                    history.record(now_ms(), totals);
                }
            }
            Err(e) if e.code() == Code::Unimplemented => return,
            Err(_) => {}
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn hosts_that_are_addresses() {
        for host in [
            "127.0.0.1:7070",
            "[::1]:7070",
            "localhost:7070",
            "LOCALHOST",
            "10.0.0.1",
            "[::1]",
        ] {
            assert!(is_address_or_localhost(host), "{host}");
        }
        for host in [
            "evil.example:7070",
            "evil.example",
            "",
            "127.0.0.1.nip.io:7070",
        ] {
            assert!(!is_address_or_localhost(host), "{host}");
        }
    }

    #[test]
    fn reads_need_the_token_or_an_address_host() {
        let get = Method::GET;
        assert!(refuse(&get, &headers(&[("host", "127.0.0.1:7070")]), None).is_none());
        let rebound = refuse(&get, &headers(&[("host", "attacker.example:7070")]), None);
        assert_eq!(rebound.unwrap().0, StatusCode::FORBIDDEN);
        let no_token = refuse(
            &get,
            &headers(&[("host", "127.0.0.1:7070")]),
            Some("s3cret"),
        );
        let (status, message) = no_token.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!message.contains("s3cret"));
        let wrong = headers(&[("host", "a.example"), ("authorization", "Bearer nope")]);
        assert!(refuse(&get, &wrong, Some("s3cret")).is_some());
        let right = headers(&[("host", "a.example"), ("authorization", "Bearer s3cret")]);
        assert!(refuse(&get, &right, Some("s3cret")).is_none());
    }

    #[test]
    fn actions_come_from_the_console_page_only() {
        let post = Method::POST;
        let host = ("host", "127.0.0.1:7070");
        let mark = (ACTION_HEADER, "1");
        assert!(refuse(&post, &headers(&[host, mark]), None).is_none());
        let same = [
            host,
            mark,
            ("origin", "http://127.0.0.1:7070"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(refuse(&post, &headers(&same), None).is_none());
        // A cross-site form cannot add the header; a script that could is
        // named by its Origin and Sec-Fetch-Site.
        for forged in [
            vec![host],
            vec![host, mark, ("origin", "https://attacker.example")],
            vec![host, mark, ("sec-fetch-site", "cross-site")],
            vec![host, mark, ("sec-fetch-site", "same-site")],
        ] {
            let (status, _) = refuse(&post, &headers(&forged), None).unwrap();
            assert_eq!(status, StatusCode::FORBIDDEN, "{forged:?}");
        }
    }

    #[test]
    fn action_bodies_name_a_server() {
        assert_eq!(server_named(br#"{"server":"eu-1"}"#).unwrap(), "eu-1");
        for bad in [
            &b"eu-1"[..],
            br#"{"server":""}"#,
            br#"{"name":"eu-1"}"#,
            &[b' '; 5000],
        ] {
            assert_eq!(server_named(bad).unwrap_err().0, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn history_keeps_two_hours() {
        let mut history = History::default();
        for i in 0..HISTORY_SAMPLES + 10 {
            history.record(i as i64, BTreeMap::from([("s".to_owned(), i as u64)]));
        }
        let json = history.to_json();
        assert_eq!(json.as_array().unwrap().len(), HISTORY_SAMPLES);
        assert_eq!(json[0]["t"], 10);
    }
}
