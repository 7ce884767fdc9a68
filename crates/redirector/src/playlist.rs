//! Playlists for players that do not follow redirects.

use std::fmt::Write as _;

use crate::route::Format;

/// The content type and body of a playlist of `urls` (best first) for `stream`.
pub fn render(format: Format, stream: &str, urls: &[String]) -> (&'static str, String) {
    let mut body = String::new();
    match format {
        Format::M3u | Format::Redirect => {
            body.push_str("#EXTM3U\n");
            for url in urls {
                let _ = write!(body, "#EXTINF:-1,{stream}\n{url}\n");
            }
            ("audio/x-mpegurl", body)
        }
        Format::Pls => {
            body.push_str("[playlist]\n");
            for (i, url) in urls.iter().enumerate() {
                let n = i + 1;
                let _ = write!(body, "File{n}={url}\nTitle{n}={stream}\nLength{n}=-1\n");
            }
            let _ = write!(body, "NumberOfEntries={}\nVersion=2\n", urls.len());
            ("audio/x-scpls", body)
        }
        Format::Xspf => {
            body.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<playlist version=\"1\" xmlns=\"http://xspf.org/ns/0/\">\n  <trackList>\n");
            for url in urls {
                let _ = writeln!(
                    body,
                    "    <track><location>{}</location><title>{}</title></track>",
                    escape(url),
                    escape(stream)
                );
            }
            body.push_str("  </trackList>\n</playlist>\n");
            ("application/xspf+xml", body)
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let urls = [
            "http://a:8000/s.ogg?x=1&y=2".to_owned(),
            "http://b/s.ogg".to_owned(),
        ];
        let (kind, m3u) = render(Format::M3u, "s", &urls);
        assert_eq!(kind, "audio/x-mpegurl");
        assert_eq!(
            m3u,
            "#EXTM3U\n#EXTINF:-1,s\nhttp://a:8000/s.ogg?x=1&y=2\n#EXTINF:-1,s\nhttp://b/s.ogg\n"
        );
        let (kind, pls) = render(Format::Pls, "s", &urls);
        assert_eq!(kind, "audio/x-scpls");
        assert!(pls.starts_with(
            "[playlist]\nFile1=http://a:8000/s.ogg?x=1&y=2\nTitle1=s\nLength1=-1\nFile2="
        ));
        assert!(pls.ends_with("NumberOfEntries=2\nVersion=2\n"));
        let (kind, xspf) = render(Format::Xspf, "s", &urls);
        assert_eq!(kind, "application/xspf+xml");
        assert!(xspf.contains("<location>http://a:8000/s.ogg?x=1&amp;y=2</location>"));
    }
}
