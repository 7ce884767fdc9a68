//! The audience across all relays: how many listen to each stream, from which
//! country, with which player, for how long. Icecast knows this per server
//! (`/admin/listclients`); no relay setup adds it up. The poller reads each
//! live mount's listener list at its own slower cadence and publishes
//! aggregates only: never an address or a user agent, and labels from fixed
//! lists (ISO country codes, a fixed set of player families, fixed session
//! buckets), so metrics stay bounded.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::status::ParseError;

/// One listener as `/admin/listclients` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address Icecast saw.
    pub ip: Option<IpAddr>,
    /// The player's `User-Agent`, empty if none.
    pub user_agent: String,
    /// Seconds since it connected.
    pub connected_secs: u64,
}

/// Parses `/admin/listclients?mount=...` (Icecast 2.4):
/// `<icestats><source mount="/m"><listener><IP>..</IP><UserAgent>..</UserAgent><Connected>..</Connected>...`.
/// A listener entry that cannot be read is skipped; a document that is not
/// XML is an error.
pub fn parse_listclients(body: &str) -> Result<Vec<Listener>, ParseError> {
    let root = crate::status::xml_root(body)?;
    if root.name != "icestats" {
        return Err(ParseError::Shape(format!(
            "root element is <{}>, not <icestats>",
            root.name
        )));
    }
    let listeners = root
        .children
        .iter()
        .filter(|c| c.name == "source")
        .flat_map(|source| source.children.iter())
        .filter(|c| c.name.eq_ignore_ascii_case("listener"))
        .map(|listener| {
            let text = |name: &str| {
                listener
                    .children
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(name))
                    .map(|c| c.text.trim())
            };
            Listener {
                ip: text("IP").and_then(|ip| ip.parse().ok()),
                user_agent: text("UserAgent").unwrap_or("").to_owned(),
                connected_secs: text("Connected").and_then(|s| s.parse().ok()).unwrap_or(0),
            }
        })
        .collect();
    Ok(listeners)
}

/// Players, in a fixed list so metric labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// VLC and LibVLC-based players.
    Vlc,
    /// mpv.
    Mpv,
    /// Web browsers (an `<audio>` tag, a station's web player).
    Browser,
    /// ffmpeg and programs built on its libraries (`Lavf/`).
    Ffmpeg,
    /// The Music Player Daemon.
    Mpd,
    /// Smart speakers and hardware internet radios.
    Hardware,
    /// Anything else.
    Other,
}

impl Family {
    /// Every family, in label order.
    pub const ALL: [Family; 7] = [
        Family::Vlc,
        Family::Mpv,
        Family::Browser,
        Family::Ffmpeg,
        Family::Mpd,
        Family::Hardware,
        Family::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Vlc => "vlc",
            Family::Mpv => "mpv",
            Family::Browser => "browser",
            Family::Ffmpeg => "ffmpeg",
            Family::Mpd => "mpd",
            Family::Hardware => "hardware",
            Family::Other => "other",
        }
    }

    /// The family of a `User-Agent`.
    pub fn of(user_agent: &str) -> Family {
        let ua = user_agent.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| ua.contains(n));
        if has(&["vlc/", "libvlc"]) {
            Family::Vlc
        } else if ua.starts_with("mpv") || has(&[" mpv/", "libmpv"]) {
            Family::Mpv
        } else if has(&["music player daemon", "mpd/"]) || ua.starts_with("mpd") {
            Family::Mpd
        } else if has(&["lavf/", "ffmpeg", "ffplay"]) {
            Family::Ffmpeg
        } else if has(&[
            "sonos",
            "alexa",
            "echo",
            "roku",
            "frontier",
            "reciva",
            "bose",
            "denon",
            "heos",
            "yamaha",
            "onkyo",
            "crkey",
            "googlecast",
            "squeezebox",
            "squeezeplay",
            "tivo",
            "vtuner",
            "internet radio",
        ]) {
            Family::Hardware
        } else if ua.starts_with("mozilla/") || has(&["chrome/", "firefox/", "safari/"]) {
            Family::Browser
        } else {
            Family::Other
        }
    }
}

/// Upper bounds of the session-length buckets, in seconds (the last bucket is open).
pub const SESSION_BUCKETS: [u64; 7] = [60, 300, 900, 1800, 3600, 7200, 14_400];

/// One stream's audience at one moment, across every relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamAudience {
    /// Listeners by ISO country code; `unknown` when geo cannot place them.
    pub countries: BTreeMap<String, u64>,
    /// Listeners by player family.
    pub families: BTreeMap<Family, u64>,
    /// Listeners connected for at most each of [`SESSION_BUCKETS`] (cumulative,
    /// like a Prometheus histogram), then all of them.
    pub sessions: [u64; SESSION_BUCKETS.len() + 1],
}

impl StreamAudience {
    /// Counts one listener placed in `country`.
    pub fn add(&mut self, listener: &Listener, country: Option<String>) {
        *self
            .countries
            .entry(country.unwrap_or_else(|| "unknown".to_owned()))
            .or_default() += 1;
        *self
            .families
            .entry(Family::of(&listener.user_agent))
            .or_default() += 1;
        for (i, bound) in SESSION_BUCKETS.iter().enumerate() {
            if listener.connected_secs <= *bound {
                self.sessions[i] += 1;
            }
        }
        self.sessions[SESSION_BUCKETS.len()] += 1;
    }

    /// Listeners counted.
    pub fn total(&self) -> u64 {
        self.sessions[SESSION_BUCKETS.len()]
    }
}

/// A round's figures as JSON, for the operator console: per stream the
/// listeners by country, by player family, and by session length (each
/// bucket counted alone, labelled by its upper bound; `more` is the rest).
/// `at_ms` dates the round; `null` before the first.
pub fn to_json(audience: &BTreeMap<String, StreamAudience>, at_ms: Option<i64>) -> String {
    let streams: serde_json::Map<String, serde_json::Value> = audience
        .iter()
        .map(|(stream, seen)| {
            let families: BTreeMap<&str, u64> = seen
                .families
                .iter()
                .map(|(f, n)| (f.as_str(), *n))
                .collect();
            let mut below = 0;
            let mut sessions: Vec<(String, u64)> = Vec::new();
            for (i, cumulative) in seen.sessions.iter().enumerate() {
                let label = SESSION_BUCKETS
                    .get(i)
                    .map_or_else(|| "more".to_owned(), |b| format!("{b}s"));
                sessions.push((label, cumulative - below));
                below = *cumulative;
            }
            let value = serde_json::json!({
                "listeners": seen.total(),
                "countries": seen.countries,
                "families": families,
                "sessions": sessions,
            });
            (stream.clone(), value)
        })
        .collect();
    serde_json::json!({ "at_ms": at_ms, "streams": streams }).to_string()
}

/// Whether a listener is one of our own canaries, which are no audience.
pub fn is_canary(listener: &Listener) -> bool {
    listener.user_agent.starts_with("icecast-balancer-canary/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listclients_as_icecast_prints_it() {
        let body = r#"<?xml version="1.0"?>
<icestats><source mount="/s.ogg"><Listeners>2</Listeners>
<listener id="5"><IP>127.0.0.2</IP><UserAgent>VLC/3.0.18 LibVLC/3.0.18</UserAgent><Connected>42</Connected><ID>5</ID></listener>
<listener id="6"><IP>2001:db8::1</IP><UserAgent></UserAgent><Connected>7300</Connected><ID>6</ID></listener>
<listener id="7"><IP>garbage</IP><Connected>x</Connected></listener>
</source></icestats>"#;
        let listeners = parse_listclients(body).unwrap();
        assert_eq!(listeners.len(), 3);
        assert_eq!(listeners[0].ip, "127.0.0.2".parse().ok());
        assert_eq!(listeners[0].connected_secs, 42);
        assert_eq!(listeners[1].user_agent, "");
        assert_eq!((listeners[2].ip, listeners[2].connected_secs), (None, 0));
        assert!(parse_listclients("<html>nope</html>").is_err());
        assert!(parse_listclients("not xml at all <<<").is_err());
    }

    #[test]
    fn player_families() {
        let cases = [
            ("VLC/3.0.18 LibVLC/3.0.18", Family::Vlc),
            ("mpv 0.35.1", Family::Mpv),
            ("libmpv", Family::Mpv),
            ("Music Player Daemon 0.23.12", Family::Mpd),
            ("Lavf/59.27.100", Family::Ffmpeg),
            ("Sonos/70.3-35220 (ZPS1)", Family::Hardware),
            (
                "AlexaMediaPlayer/2.1.4676.0 (Linux;Android 5.1.1)",
                Family::Hardware,
            ),
            ("Frontier Silicon Internet Radio", Family::Hardware),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
                Family::Browser,
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
                Family::Browser,
            ),
            ("curl/7.88.1", Family::Other),
            ("", Family::Other),
        ];
        for (ua, family) in cases {
            assert_eq!(Family::of(ua), family, "{ua}");
        }
    }

    #[test]
    fn console_figures_count_each_bucket_alone() {
        let mut seen = StreamAudience::default();
        for (agent, secs) in [
            ("VLC/3.0.20 LibVLC/3.0.20", 30),
            ("mpv 0.37", 400),
            ("mpv 0.37", 90_000),
        ] {
            let listener = Listener {
                ip: None,
                user_agent: agent.to_owned(),
                connected_secs: secs,
            };
            seen.add(&listener, Some("DE".to_owned()));
        }
        let json: serde_json::Value = serde_json::from_str(&to_json(
            &BTreeMap::from([("jazz".to_owned(), seen)]),
            Some(5),
        ))
        .unwrap();
        let jazz = &json["streams"]["jazz"];
        assert_eq!(jazz["listeners"], 3);
        assert_eq!(jazz["countries"]["DE"], 3);
        assert_eq!(jazz["families"]["mpv"], 2);
        let sessions = jazz["sessions"].as_array().unwrap();
        assert_eq!(sessions[0], serde_json::json!(["60s", 1]));
        assert_eq!(sessions[2], serde_json::json!(["900s", 1]));
        assert_eq!(sessions[7], serde_json::json!(["more", 1]));
        assert_eq!(json["at_ms"], 5);
    }

    #[test]
    fn aggregates_are_cumulative_and_bounded() {
        let mut audience = StreamAudience::default();
        let listener = |ua: &str, secs| Listener {
            ip: None,
            user_agent: ua.into(),
            connected_secs: secs,
        };
        audience.add(&listener("VLC/3", 30), Some("AT".into()));
        audience.add(&listener("Lavf/59", 400), Some("DE".into()));
        audience.add(&listener("x", 20_000), None);
        assert_eq!(audience.total(), 3);
        assert_eq!(audience.countries["AT"], 1);
        assert_eq!(audience.countries["unknown"], 1);
        assert_eq!(audience.families[&Family::Ffmpeg], 1);
        assert_eq!(audience.sessions, [1, 1, 2, 2, 2, 2, 2, 3]);
    }
}
