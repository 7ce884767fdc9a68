//! The public stream index on the player port: `GET /` (an HTML page) and
//! `GET /streams.json` (the same for scripts and station websites), as
//! django-icecast-balancer's root page listed every stream with a link.
//!
//! Rendered once per snapshot and shared by every request until the next.
//! It names only stream names, their metadata and the balancer's own links:
//! never a server, an address or a credential. Every text comes from the
//! fleet file or from a source client (which sets the song title), so it is
//! escaped, and the page runs no script: its Content-Security-Policy allows
//! nothing but its own stylesheet.

use bytes::Bytes;
use serde_json::json;

use crate::view::{FleetView, StreamView};

/// What `--index` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexMode {
    /// The index, without listener counts.
    On,
    /// The index with each stream's listeners across all relays.
    Listeners,
    /// No index: `/` and `/streams.json` answer 404.
    Off,
}

/// The pages of the index, rendered for one snapshot.
#[derive(Debug, Clone)]
pub struct StreamIndex {
    /// `text/html` for `/`.
    pub html: Bytes,
    /// `application/json` for `/streams.json`.
    pub json: Bytes,
}

/// Which page of the index a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexPage {
    /// The HTML list.
    Html,
    /// The JSON list.
    Json,
    /// The stylesheet the HTML links to.
    Css,
}

/// The page at `path`: `/` and the old prefix (`/icecast_balancer/`) list
/// the streams; `/streams.json` and `/streams.css` go with them.
pub fn page(path: &str, prefix: &str) -> Option<IndexPage> {
    let under_prefix = !prefix.is_empty()
        && path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest == "/");
    match path {
        "/" => Some(IndexPage::Html),
        "/streams.json" => Some(IndexPage::Json),
        "/streams.css" => Some(IndexPage::Css),
        _ if under_prefix => Some(IndexPage::Html),
        _ => None,
    }
}

/// The stylesheet: small, no external fonts or images, readable on a phone.
pub const CSS: &str = "\
body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;max-width:46rem;padding:1rem;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 1rem}
ul{list-style:none;margin:0;padding:0}
li{background:#fff;border:1px solid #ddd;border-radius:.5rem;margin:0 0 .75rem;padding:.75rem 1rem}
h2{font-size:1.1rem;margin:0}
p{margin:.25rem 0}
.meta,.now{color:#555;font-size:.9rem}
.off{color:#a00}
a{color:#0645ad}
.listen{font-weight:600;margin-right:1rem}
.links a{margin-right:.75rem}
";

/// The header lines sent with every page of the index. The policy lets
/// nothing load or run but the stylesheet, so an injected tag could do
/// nothing even if escaping failed.
pub const HEADERS: &str = "content-security-policy: default-src 'none'; style-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n\
     x-content-type-options: nosniff\r\n";

/// One stream as the index shows it.
struct Entry<'a> {
    name: &'a str,
    title: &'a str,
    description: &'a str,
    genre: &'a str,
    content_type: &'a str,
    bitrate_kbps: u32,
    now_playing: &'a str,
    live: bool,
    listeners: u64,
}

impl<'a> Entry<'a> {
    /// The fleet file's title and description, else what the first live
    /// mount that says anything announces.
    fn of(stream: &'a StreamView) -> Entry<'a> {
        let live = || stream.mounts.iter().filter(|m| m.is_live());
        let announced = |field: fn(&'a crate::view::MountView) -> &'a str| {
            live()
                .map(field)
                .find(|text| !text.is_empty())
                .unwrap_or("")
        };
        let or = |own: &'a str, other: &'a str| if own.is_empty() { other } else { own };
        Entry {
            name: &stream.name,
            title: or(&stream.title, announced(|m| &m.info.name)),
            description: or(&stream.description, announced(|m| &m.info.description)),
            genre: announced(|m| &m.info.genre),
            content_type: announced(|m| &m.info.content_type),
            bitrate_kbps: live()
                .map(|m| m.info.bitrate_kbps)
                .find(|&b| b > 0)
                .unwrap_or(0),
            now_playing: announced(|m| &m.info.title),
            live: live().next().is_some(),
            listeners: stream.mounts.iter().map(|m| u64::from(m.listeners)).sum(),
        }
    }
}

/// A short name for a media type: "MP3", "Ogg", "AAC", "Opus", else the type.
fn format_name(content_type: &str) -> &str {
    match content_type {
        "audio/mpeg" | "audio/mp3" => "MP3",
        "application/ogg" | "audio/ogg" | "audio/vorbis" => "Ogg",
        "audio/aac" | "audio/aacp" | "audio/x-aac" => "AAC",
        "audio/opus" => "Opus",
        "audio/flac" | "audio/x-flac" => "FLAC",
        other => other,
    }
}

/// Renders both pages from `view`, streams sorted by name.
pub fn render(view: &FleetView, mode: IndexMode) -> StreamIndex {
    let mut streams: Vec<&StreamView> = view.streams.values().collect();
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    let entries: Vec<Entry<'_>> = streams.into_iter().map(Entry::of).collect();
    let with_listeners = mode == IndexMode::Listeners;
    StreamIndex {
        html: Bytes::from(html(&entries, with_listeners)),
        json: Bytes::from(json(&entries, with_listeners)),
    }
}

fn html(entries: &[Entry<'_>], with_listeners: bool) -> String {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Streams</title><link rel=\"stylesheet\" href=\"/streams.css\"></head>\n\
         <body><h1>Streams</h1>\n<ul>\n",
    );
    for e in entries {
        let name = escape(e.name);
        let title = if e.title.is_empty() { e.name } else { e.title };
        page.push_str(&format!("<li><h2>{}</h2>\n", escape(title)));
        if !e.description.is_empty() {
            page.push_str(&format!("<p>{}</p>\n", escape(e.description)));
        }
        let mut meta = Vec::new();
        if !e.content_type.is_empty() {
            meta.push(escape(format_name(e.content_type)));
        }
        if e.bitrate_kbps > 0 {
            meta.push(format!("{} kbit/s", e.bitrate_kbps));
        }
        if !e.genre.is_empty() {
            meta.push(escape(e.genre));
        }
        if with_listeners {
            meta.push(format!(
                "{} listener{}",
                e.listeners,
                if e.listeners == 1 { "" } else { "s" }
            ));
        }
        if !meta.is_empty() {
            page.push_str(&format!("<p class=\"meta\">{}</p>\n", meta.join(" · ")));
        }
        if !e.live {
            page.push_str("<p class=\"off\">Off the air</p>\n");
        } else if !e.now_playing.is_empty() {
            page.push_str(&format!(
                "<p class=\"now\">Now playing: {}</p>\n",
                escape(e.now_playing)
            ));
        }
        page.push_str(&format!(
            "<p class=\"links\"><a class=\"listen\" href=\"/{name}\">Listen</a>\
             <a href=\"/{name}.m3u\">M3U</a><a href=\"/{name}.pls\">PLS</a>\
             <a href=\"/{name}.xspf\">XSPF</a></p></li>\n"
        ));
    }
    if entries.is_empty() {
        page.push_str("<li>No streams are configured.</li>\n");
    }
    page.push_str("</ul></body></html>\n");
    page
}

fn json(entries: &[Entry<'_>], with_listeners: bool) -> String {
    let streams: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let mut stream = json!({
                "name": e.name,
                "title": if e.title.is_empty() { e.name } else { e.title },
                "description": e.description,
                "genre": e.genre,
                "format": format_name(e.content_type),
                "content_type": e.content_type,
                "bitrate_kbps": (e.bitrate_kbps > 0).then_some(e.bitrate_kbps),
                "now_playing": e.now_playing,
                "live": e.live,
                "listen": format!("/{}", e.name),
                "playlists": {
                    "m3u": format!("/{}.m3u", e.name),
                    "pls": format!("/{}.pls", e.name),
                    "xspf": format!("/{}.xspf", e.name),
                },
            });
            if with_listeners {
                stream["listeners"] = json!(e.listeners);
            }
            stream
        })
        .collect();
    let mut text = json!({ "streams": streams }).to_string();
    text.push('\n');
    text
}

/// Text made safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let prefix = "/icecast_balancer";
        assert_eq!(page("/", prefix), Some(IndexPage::Html));
        assert_eq!(page("/icecast_balancer", prefix), Some(IndexPage::Html));
        assert_eq!(page("/icecast_balancer/", prefix), Some(IndexPage::Html));
        assert_eq!(page("/streams.json", prefix), Some(IndexPage::Json));
        assert_eq!(page("/streams.css", prefix), Some(IndexPage::Css));
        assert_eq!(page("/fm4", prefix), None);
        assert_eq!(page("/icecast_balancer/fm4/", prefix), None);
        assert_eq!(page("/icecast_balancerx", prefix), None);
        assert_eq!(page("", ""), None);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"><img onerror=alert(1)>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;&gt;&lt;img onerror=alert(1)&gt;"
        );
    }
}
