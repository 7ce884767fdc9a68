//! Fetching one server's status document over HTTP, bounded in time and size.

use std::time::{Duration, Instant};

use balancer_fleet::{CaBundle, Server};
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
/// that names us in Icecast's access log, and TLS (rustls with ring) that
/// trusts the system's certificate authorities plus the fleet's `ca_file`.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// A client shared by all polls (it pools connections per server).
    /// Fails only when `ca` holds a certificate TLS cannot use.
    pub fn new(ca: Option<&CaBundle>) -> Result<Self, String> {
        let builder = client_builder(ca)?
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "icecast-balancer-poller/",
                env!("CARGO_PKG_VERSION")
            ))
            .pool_max_idle_per_host(1);
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Fetcher { client })
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
        let body = match read_capped(&mut response).await {
            Ok(body) => body,
            Err(e) => return PollResult::Failed(e),
        };
        let text = String::from_utf8_lossy(&body);
        match status::parse(server.status, &text) {
            Ok(report) => PollResult::Report(report),
            Err(e) => PollResult::Failed(PollError::Parse(e)),
        }
    }
}

impl Fetcher {
    /// The listener list of `mount` on `server` (`/admin/listclients`,
    /// needs the admin credentials), within `timeout`.
    pub async fn listclients(
        &self,
        server: &Server,
        mount: &str,
        timeout: Duration,
    ) -> Result<Vec<crate::audience::Listener>, PollError> {
        let Some(admin) = &server.admin else {
            return Err(PollError::Unauthorized);
        };
        let mut url = server.url.clone();
        url.set_path(&format!(
            "{}/admin/listclients",
            server.url.path().trim_end_matches('/')
        ));
        url.query_pairs_mut().append_pair("mount", mount);
        let request = self
            .client
            .get(url)
            .basic_auth(&admin.user, Some(admin.password.expose()));
        let exchange = async {
            let mut response = request
                .send()
                .await
                .map_err(|e| PollError::Connect(describe(&e)))?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::UNAUTHORIZED => return Err(PollError::Unauthorized),
                other => return Err(PollError::Status(other.as_u16())),
            }
            let body = read_capped(&mut response).await?;
            Ok(crate::audience::parse_listclients(
                &String::from_utf8_lossy(&body),
            )?)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(PollError::Timeout(timeout)))
    }
}

/// The body, refused beyond [`MAX_BODY_BYTES`] (announced or read).
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, PollError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(PollError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(PollError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(PollError::Connect(describe(&e))),
        }
    }
}

/// A client builder with TLS set up: ring as rustls's crypto (installed for
/// the process if nothing else was), the system's roots and `ca`'s
/// certificates, no proxy from the environment.
pub(crate) fn client_builder(ca: Option<&CaBundle>) -> Result<reqwest::ClientBuilder, String> {
    // Another part of the process may have chosen already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().no_proxy().tls_backend_rustls();
    if let Some(ca) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(&ca.pem)
            .map_err(|e| format!("{}: not usable as certificates: {e}", ca.path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder)
}

/// reqwest's error with its causes, without the URL (logged separately).
pub(crate) fn describe(error: &reqwest::Error) -> String {
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
