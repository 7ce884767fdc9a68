//! Fetching one server's status document over HTTP, bounded in time and size.

use std::time::{Duration, Instant};

use balancer_fleet::Server;
use reqwest::StatusCode;

use crate::status::{self, MAX_BODY_BYTES, ParseError, StatusReport};

/// What one poll of one server found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollResult {
    /// The server answered with a status document.
    Report(StatusReport),
    /// The server refused with 403: Icecast does that when it is at its client
    /// limit. It is alive, but has no room.
    Full,
    /// The server could not be polled.
    Failed(PollError),
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// No TCP connection or HTTP exchange.
    #[error("connection failed: {0}")]
    Connect(String),
    /// No complete answer within the timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// Wrong admin credentials.
    #[error("HTTP 401: the admin credentials were refused")]
    Unauthorized,
    /// Another unexpected HTTP status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body exceeded [`MAX_BODY_BYTES`].
    #[error("the status document is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body was not a status document.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// An HTTP client for status documents: no redirects, no proxy, a user agent
/// that names us in Icecast's access log.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

impl Fetcher {
    /// A client shared by all polls (it pools connections per server).
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!(
                "icecast-balancer-poller/",
                env!("CARGO_PKG_VERSION")
            ))
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_default();
        Fetcher { client }
    }

    /// Polls `server` once; the whole exchange, body included, ends within `timeout`.
    /// Returns the result and how long it took.
    pub async fn poll(&self, server: &Server, timeout: Duration) -> (PollResult, Duration) {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.fetch(server)).await {
            Ok(result) => result,
            Err(_) => PollResult::Failed(PollError::Timeout(timeout)),
        };
        (result, started.elapsed())
    }

    async fn fetch(&self, server: &Server) -> PollResult {
        let url = format!(
            "{}{}",
            server.url.as_str().trim_end_matches('/'),
            status::path(server.status)
        );
        let mut request = self.client.get(&url);
        if let Some(admin) = &server.admin {
            request = request.basic_auth(&admin.user, Some(admin.password.expose()));
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return PollResult::Failed(PollError::Connect(describe(&e))),
        };
        match response.status() {
            StatusCode::OK => {}
            // A full Icecast answers 403 and resets the connection: do not read on.
            StatusCode::FORBIDDEN => return PollResult::Full,
            StatusCode::UNAUTHORIZED => return PollResult::Failed(PollError::Unauthorized),
            other => return PollResult::Failed(PollError::Status(other.as_u16())),
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return PollResult::Failed(PollError::TooLarge);
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return PollResult::Failed(PollError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return PollResult::Failed(PollError::Connect(describe(&e))),
            }
        }
        let text = String::from_utf8_lossy(&body);
        match status::parse(server.status, &text) {
            Ok(report) => PollResult::Report(report),
            Err(e) => PollResult::Failed(PollError::Parse(e)),
        }
    }
}

/// reqwest's error with its causes, without the URL (logged separately).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_connect() {
        "cannot connect".to_owned()
    } else if error.is_body() || error.is_decode() {
        "reading the body failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
