//! Canaries: the poller opens a mount at its public URL, as a player would,
//! and reads a little audio. The status document comes from the server's
//! `url`; players go to `public_url`, often a TLS terminator, a CDN or a NAT
//! address that polls never touch. A canary catches what only players see:
//! an expired certificate, a proxy that is down, a closed port, a server that
//! answers status requests but refuses or starves listeners.

use std::time::Duration;

use balancer_fleet::{CANARY_BYTES, CaBundle};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::status::media_type;

/// One canary: where to listen, what the stream's type should be, how long
/// it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The mount at a public URL.
    pub url: String,
    /// The stream's media type as Icecast reports it, when it does.
    pub expected: Option<String>,
    /// The whole exchange, [`CANARY_BYTES`] of audio included, ends within this.
    pub deadline: Duration,
}

/// Why a canary failed; shown to operators as "canary failed: <reason>".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanaryError {
    /// No connection, TLS or HTTP exchange.
    #[error("{0}")]
    Connect(String),
    /// Not enough audio in time.
    #[error("{got} of {CANARY_BYTES} bytes within {deadline:?}")]
    Slow {
        /// Bytes read when the deadline passed.
        got: usize,
        /// The deadline.
        deadline: Duration,
    },
    /// The mount answered with another status than 200.
    #[error("HTTP {0}")]
    Status(u16),
    /// The answer is not the stream.
    #[error("Content-Type {got:?} where {expected} was expected")]
    WrongType {
        /// What came back.
        got: String,
        /// What the status document says the stream is (or "audio").
        expected: String,
    },
    /// The stream ended before [`CANARY_BYTES`].
    #[error("the stream ended after {0} bytes")]
    Ended(usize),
}

/// The canaries' HTTP client: like a player, it follows a few redirects and
/// asks for no metadata; connections are not kept, since each canary stops
/// reading mid-stream.
#[derive(Clone)]
pub struct Canary {
    client: reqwest::Client,
}

impl Canary {
    /// A client that trusts the system's roots and `ca`'s certificates.
    pub fn new(ca: Option<&CaBundle>) -> Result<Self, String> {
        let client = crate::fetch::client_builder(ca)?
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!(
                "icecast-balancer-canary/",
                env!("CARGO_PKG_VERSION")
            ))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("cannot set up the canary's HTTP client: {e}"))?;
        Ok(Canary { client })
    }

    /// Listens to `probe.url` until [`CANARY_BYTES`] bytes of the stream
    /// arrived, or fails with the reason.
    pub async fn listen(&self, probe: &Probe) -> Result<(), CanaryError> {
        let mut got = 0;
        let listened = tokio::time::timeout(probe.deadline, self.read(probe, &mut got)).await;
        match listened {
            Ok(result) => result,
            Err(_) => Err(CanaryError::Slow {
                got,
                deadline: probe.deadline,
            }),
        }
    }

    async fn read(&self, probe: &Probe, got: &mut usize) -> Result<(), CanaryError> {
        let mut response = self
            .client
            .get(&probe.url)
            .send()
            .await
            .map_err(|e| CanaryError::Connect(crate::fetch::describe(&e)))?;
        if response.status() != StatusCode::OK {
            return Err(CanaryError::Status(response.status().as_u16()));
        }
        let got_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !type_matches(got_type, probe.expected.as_deref()) {
            return Err(CanaryError::WrongType {
                got: got_type.chars().take(64).collect(),
                expected: probe.expected.clone().unwrap_or_else(|| "audio".to_owned()),
            });
        }
        while *got < CANARY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => *got += chunk.len(),
                Ok(None) => return Err(CanaryError::Ended(*got)),
                Err(e) => return Err(CanaryError::Connect(crate::fetch::describe(&e))),
            }
        }
        Ok(())
    }
}

/// Whether a mount's `Content-Type` fits the stream: the same media type as
/// the status document's, or, when that is unknown, any audio (Ogg included).
fn type_matches(got: &str, expected: Option<&str>) -> bool {
    let Some(got) = media_type(got) else {
        return false;
    };
    match expected {
        Some(expected) => got == expected,
        None => got.starts_with("audio/") || got == "application/ogg" || got == "video/ogg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(type_matches("audio/mpeg", Some("audio/mpeg")));
        assert!(type_matches("Audio/MPEG; charset=x", Some("audio/mpeg")));
        assert!(!type_matches("text/html", Some("audio/mpeg")));
        assert!(!type_matches("audio/ogg", Some("audio/mpeg")));
        assert!(type_matches("application/ogg", None));
        assert!(type_matches("audio/aac", None));
        assert!(!type_matches("text/html; charset=utf-8", None));
        assert!(!type_matches("", None));
    }
}
