//! A player: follows redirects like VLC or mpv and keeps reading audio.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Url;
use reqwest::redirect::Policy;
use tokio::task::JoinHandle;

use crate::wait::wait_until;

/// How many redirects a player follows, like common players do.
const MAX_REDIRECTS: usize = 10;
/// Audio a player must receive to count as playing.
const PLAYING_BYTES: u64 = 1024;

/// A connected listener. While it lives it reads the stream (so Icecast counts
/// it); dropping it hangs up.
pub struct Player {
    status: u16,
    url: Url,
    bytes: Arc<AtomicU64>,
    reader: JoinHandle<()>,
}

/// What a short listen ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayOutcome {
    /// The status of the last response (after redirects).
    pub status: u16,
    /// The URL the player ended on.
    pub final_url: Url,
    /// Audio bytes received.
    pub audio_bytes: u64,
}

impl PlayOutcome {
    /// The port of the server the player ended on, to tell test Icecasts apart.
    pub fn port(&self) -> Option<u16> {
        self.final_url.port_or_known_default()
    }

    /// Whether it got a 200 and audio.
    pub fn played(&self) -> bool {
        self.status == 200 && self.audio_bytes >= PLAYING_BYTES
    }
}

impl Player {
    /// Requests `url`, follows redirects, and keeps reading the body in the background.
    pub async fn connect(url: &str) -> Result<Player, reqwest::Error> {
        Player::connect_with(url, None).await
    }

    /// Like [`Player::connect`], with the connection's source address bound to
    /// `local` (e.g. `127.0.0.2`), so geo tests can play from another network.
    pub async fn connect_from(url: &str, local: IpAddr) -> Result<Player, reqwest::Error> {
        Player::connect_with(url, Some(local)).await
    }

    /// Like [`Player::connect_from`], announcing itself as `user_agent`, as
    /// VLC, a browser or a hardware radio would.
    pub async fn connect_as(
        url: &str,
        local: IpAddr,
        user_agent: &str,
    ) -> Result<Player, reqwest::Error> {
        Player::connect_with_agent(url, Some(local), user_agent).await
    }

    async fn connect_with(url: &str, local: Option<IpAddr>) -> Result<Player, reqwest::Error> {
        Player::connect_with_agent(url, local, "balancer-testkit-player/1").await
    }

    async fn connect_with_agent(
        url: &str,
        local: Option<IpAddr>,
        user_agent: &str,
    ) -> Result<Player, reqwest::Error> {
        let client = crate::http()
            .redirect(Policy::limited(MAX_REDIRECTS))
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(10))
            .local_address(local)
            .user_agent(user_agent)
            .build()?;
        let mut response = client.get(url).send().await?;
        let status = response.status().as_u16();
        let final_url = response.url().clone();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&bytes);
        let reader = tokio::spawn(async move {
            while let Ok(Some(chunk)) = response.chunk().await {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        Ok(Player {
            status,
            url: final_url,
            bytes,
            reader,
        })
    }

    /// The status of the last response (after redirects).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The URL the player ended on.
    pub fn final_url(&self) -> &Url {
        &self.url
    }

    /// The port of the server it ended on.
    pub fn port(&self) -> Option<u16> {
        self.url.port_or_known_default()
    }

    /// Bytes of body received so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits until `n` bytes have arrived; false if `timeout` passes first or
    /// the stream ends.
    pub async fn wait_for_bytes(&self, n: u64, timeout: Duration) -> bool {
        let waited = tokio::time::timeout(
            timeout,
            wait_until("audio bytes", timeout + Duration::from_secs(1), || async {
                (self.bytes_read() >= n || self.reader.is_finished()).then_some(())
            }),
        )
        .await;
        waited.is_ok() && self.bytes_read() >= n
    }

    /// Connects, listens until some audio arrived (or 10 s passed), and hangs up.
    pub async fn play(url: &str) -> Result<PlayOutcome, reqwest::Error> {
        let player = Player::connect(url).await?;
        if player.status == 200 {
            player
                .wait_for_bytes(PLAYING_BYTES, Duration::from_secs(10))
                .await;
        }
        Ok(PlayOutcome {
            status: player.status,
            final_url: player.url.clone(),
            audio_bytes: player.bytes_read(),
        })
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
